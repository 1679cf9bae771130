//! Event endpoints: `GET /apis/minicloud.dev/v1/events` (every namespace),
//! `GET /apis/minicloud.dev/v1/namespaces/{ns}/events[?kind=Instance&name=web]`, and
//! `POST /apis/minicloud.dev/v1/namespaces/{ns}/events`, by which a process outside the server
//! (`cloud sync`) reports on an object it looks after.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use minicloud_crds::{Kind, ObjectKey};
use serde_json::{json, Value};

use super::error::ApiError;
use minicloud_model::answers::MAX_EVENT_MESSAGE_BYTES as MAX_MESSAGE_BYTES;

use super::AppState;
use crate::store::{EventType, NewEvent, StoreError};

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
    super::request::check_name("namespace", &namespace)?;
    let object = match (params.get("kind"), params.get("name")) {
        (Some(kind), Some(name)) => {
            super::request::check_name("name", name)?;
            let kind = Kind::from_cli_name(kind)
                .ok_or_else(|| ApiError::bad_request(format!("unknown kind {kind:?} in the event filter")))?;
            Some(ObjectKey::new(kind, namespace.clone(), name.clone()))
        }
        (None, None) => None,
        _ => return Err(ApiError::bad_request("filter events with both kind and name")),
    };
    Ok(events_body(state.store.events(Some(&namespace), object.as_ref()).await?))
}

/// An event as a client reports it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReportedEvent {
    involved_object: InvolvedObject,
    #[serde(rename = "type")]
    event_type: String,
    reason: String,
    message: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InvolvedObject {
    kind: String,
    name: String,
}

/// Records an event about an existing object of the namespace:
/// `{"involvedObject": {"kind": "Sync", "name": "site"}, "type": "Normal", "reason": "Synced",
/// "message": "..."}`. A repeat of the last one raises its count.
pub async fn create(
    State(state): State<AppState>,
    Path(namespace): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    super::request::check_name("namespace", &namespace)?;
    let body = super::request::parse_body(body, &state.limits).await?;
    let reported: ReportedEvent = serde_json::from_value(body).map_err(|error| {
        ApiError::bad_request(format!(
            "{error}; send {{\"involvedObject\": {{\"kind\": \"Sync\", \"name\": \"NAME\"}}, \"type\": \"Normal\", \"reason\": \"Reason\", \"message\": \"...\"}}"
        ))
    })?;
    let kind = Kind::from_kind_name(&reported.involved_object.kind).ok_or_else(|| {
        ApiError::bad_request(format!("involvedObject.kind: unknown kind {:?}", reported.involved_object.kind))
    })?;
    super::request::check_name("involvedObject.name", &reported.involved_object.name)?;
    let event_type = match reported.event_type.as_str() {
        "Normal" => EventType::Normal,
        "Warning" => EventType::Warning,
        other => return Err(ApiError::bad_request(format!("type: {other:?} is neither Normal nor Warning"))),
    };
    check_reason(&reported.reason)?;
    if reported.message.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::bad_request(format!(
            "message: {} bytes; at most {MAX_MESSAGE_BYTES} are kept",
            reported.message.len()
        )));
    }
    let key = ObjectKey::new(kind, namespace, reported.involved_object.name);
    let object = match state.store.get(&key).await {
        Ok(object) => object,
        Err(StoreError::NotFound(_)) => {
            return Err(ApiError::not_found(format!("{key} does not exist; events are about existing objects")))
        }
        Err(error) => return Err(error.into()),
    };
    let event = NewEvent {
        object: key,
        uid: object.metadata.uid.unwrap_or_default(),
        event_type,
        reason: reported.reason,
        message: reported.message,
    };
    let recorded = state.store.record_event(event).await?;
    Ok((StatusCode::CREATED, Json(json!(recorded))))
}

/// A reason is one CamelCase word, as the server's own are.
fn check_reason(reason: &str) -> Result<(), ApiError> {
    let mut characters = reason.chars();
    let starts_upper = characters.next().is_some_and(|first| first.is_ascii_uppercase());
    if starts_upper && reason.len() <= 64 && characters.all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "reason: {reason:?} is not one CamelCase word (letters and digits, at most 64, e.g. SyncFailed)"
        )))
    }
}
