//! The `scale` subresource of ScalingGroups, as Kubernetes clients use it (`kubectl scale`,
//! the Python client's `*_scale` calls, autoscalers): `GET`, `PUT` and `PATCH` of an
//! `autoscaling/v1` `Scale` at `.../namespaces/{ns}/scalinggroups/{name}/scale`.
//!
//! `spec.replicas` is the group's `spec.desiredReplicas`; `status.replicas` the members that
//! exist; `status.selector` the label selector of its members. A change goes through the same
//! path as any update of the group: the kind's rules (`minReplicas ≤ desired ≤ maxReplicas`,
//! with the field path), admission policies (`maxReplicas`), the resourceVersion precondition
//! when the Scale carries one.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::{Extension, Json};
use minicloud_crds::{Kind, Object};
use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::admit;
use super::request::{accept_object, key, read_body};
use super::AppState;
use crate::auth::Principal;

/// A group as a `Scale`.
fn scale_of(group: &Object) -> Value {
    let desired = group.spec.get("desiredReplicas").or_else(|| group.spec.get("minReplicas")).cloned();
    let group_label = minicloud_controllers::scalinggroup::GROUP_LABEL;
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": group.metadata.name,
            "namespace": group.metadata.namespace,
            "uid": group.metadata.uid,
            "resourceVersion": group.metadata.resource_version,
            "creationTimestamp": group.metadata.creation_timestamp,
        },
        "spec": {"replicas": desired.unwrap_or(json!(0))},
        "status": {
            "replicas": group.status.get("replicas").cloned().unwrap_or(json!(0)),
            "selector": format!("{group_label}={}", group.metadata.name),
        },
    })
}

/// `GET .../scalinggroups/{name}/scale`
pub async fn get_scale(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let group = state.store.get(&key(Kind::ScalingGroup, &namespace, &name)?).await?;
    Ok(Json(scale_of(&group)))
}

/// `PUT .../scalinggroups/{name}/scale`: a whole `Scale`.
pub async fn put_scale(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((namespace, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    body: Body,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let sent: Value = serde_json::from_slice(&read_body(body, &state.limits).await?)
        .map_err(|error| ApiError::bad_request(format!("the Scale is not valid JSON: {error}")))?;
    write_scale(&state, &principal, &namespace, &name, &params, |_| Ok(sent.clone())).await
}

/// `PATCH .../scalinggroups/{name}/scale`: a merge or JSON patch of the `Scale`.
pub async fn patch_scale(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((namespace, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let json_patch = match content_type.split(';').next().unwrap_or("").trim() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/json-patch+json" => true,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "a Scale is patched with application/merge-patch+json or application/json-patch+json (got {other:?})"
            )))
        }
    };
    let patch: Value = serde_json::from_slice(&read_body(body, &state.limits).await?)
        .map_err(|error| ApiError::bad_request(format!("the patch is not valid JSON: {error}")))?;
    write_scale(&state, &principal, &namespace, &name, &params, |mut scale| {
        if json_patch {
            super::patch::apply_json_patch(&mut scale, &patch)?;
        } else {
            super::patch::apply_merge_patch(&mut scale, &patch);
        }
        // A patch applies to what was read.
        Ok(scale)
    })
    .await
}

/// Reads the group, makes the new `Scale` from its current one, and writes the group with the
/// new desired count.
async fn write_scale(
    state: &AppState,
    principal: &Principal,
    namespace: &str,
    name: &str,
    params: &HashMap<String, String>,
    next: impl Fn(Value) -> Result<Value, ApiError>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let dry_run = super::request::dry_run(params)?;
    let key = key(Kind::ScalingGroup, namespace, name)?;
    let mut attempt = 0;
    loop {
        let group = state.store.get(&key).await?;
        let mut current = scale_of(&group);
        // What the client sends or patches names a version only if it says one.
        current["metadata"]["resourceVersion"] = Value::Null;
        let scale = next(current)?;
        let named_version = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_owned);
        match write_group(state, principal, namespace, name, group, &scale, named_version.clone(), dry_run).await {
            Err(ApiError { status, .. })
                if status == axum::http::StatusCode::CONFLICT
                    && named_version.is_none()
                    && attempt + 1 < super::patch::PATCH_ATTEMPTS =>
            {
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Writes `group` with the desired count of `scale`, at `version` (the one read when none is
/// named).
#[allow(clippy::too_many_arguments)]
async fn write_group(
    state: &AppState,
    principal: &Principal,
    namespace: &str,
    name: &str,
    group: Object,
    scale: &Value,
    version: Option<String>,
    dry_run: bool,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    for (field, wanted) in [("namespace", namespace), ("name", name)] {
        if let Some(sent) = scale.pointer(&format!("/metadata/{field}")).filter(|sent| !sent.is_null()) {
            if sent.as_str() != Some(wanted) {
                return Err(ApiError::bad_request(format!(
                    "metadata.{field} {sent} does not match the {field} in the URL ({wanted:?})"
                )));
            }
        }
    }
    let replicas = match scale.pointer("/spec/replicas") {
        Some(Value::Number(number)) => number
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ApiError::bad_request(format!("spec.replicas {number} is not a count")))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "a Scale needs spec.replicas as a whole number, got {}",
                other.map_or("nothing".to_owned(), Value::to_string)
            )))
        }
    };
    let mut document = serde_json::to_value(&group).map_err(|error| ApiError::bad_request(error.to_string()))?;
    document["spec"]["desiredReplicas"] = json!(replicas);
    // The Scale's resourceVersion (sent, or the one read) is the group's precondition.
    document["metadata"]["resourceVersion"] = json!(version.or(group.metadata.resource_version.clone()));
    let mut updated = accept_object(document, Kind::ScalingGroup, namespace, Some(name))?;
    updated.status = group.status.clone();
    let verdict = admit(state, principal, &updated).await?;
    if dry_run {
        return Ok((verdict.headers(), Json(scale_of(&updated))));
    }
    let written = state.store.update(updated).await?;
    verdict.record(state.store.as_ref()).await;
    Ok((verdict.headers(), Json(scale_of(&written))))
}
