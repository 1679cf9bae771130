//! Event endpoints: `GET /apis/minicloud.dev/v1/events` (every namespace) and
//! `GET /apis/minicloud.dev/v1/namespaces/{ns}/events[?kind=Instance&name=web]`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use minicloud_crds::{Kind, ObjectKey};
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

fn events_body(events: Vec<crate::store::Event>) -> Json<Value> {
    Json(json!({"apiVersion": minicloud_crds::API_VERSION, "kind": "EventList", "items": events}))
}

/// Every event in every namespace.
pub async fn list_all(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(events_body(state.store.events(None, None).await?))
}

/// Events of a namespace, or of one object with `kind` and `name`.
pub async fn list_namespaced(
    State(state): State<AppState>,
    Path(namespace): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    super::objects::check_name("namespace", &namespace)?;
    let object = match (params.get("kind"), params.get("name")) {
        (Some(kind), Some(name)) => {
            super::objects::check_name("name", name)?;
            let kind = Kind::from_cli_name(kind)
                .ok_or_else(|| ApiError::bad_request(format!("unknown kind {kind:?} in the event filter")))?;
            Some(ObjectKey::new(kind, namespace.clone(), name.clone()))
        }
        (None, None) => None,
        _ => return Err(ApiError::bad_request("filter events with both kind and name")),
    };
    Ok(events_body(state.store.events(Some(&namespace), object.as_ref()).await?))
}
