//! The two ways a Secret's values are handled outside of ordinary objects:
//!
//! - `POST /apis/minicloud.dev/v1/namespaces/{ns}/secrets/{name}/reveal` with `{"key": K}`
//!   answers `{"key": K, "value": V}`: the one way to read a value back (every other answer
//!   redacts them). Each reveal is logged (namespace, name, key, request id; never the value).
//! - `POST /apis/minicloud.dev/v1/secretkeys/rotate` seals every value again under a new key
//!   and answers `{"key": NEW_ID, "rewritten": ROWS}` (`cloud secret rotate-key`).

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::request::{key, parse_body};
use super::AppState;
use crate::store::{SqlStore, StoreError};
use minicloud_crds::Kind;

/// Re-encrypts every Secret under a new key: what the SQL store can do.
#[async_trait]
pub trait KeyRotation: Send + Sync {
    /// The new key's id and the rows sealed again.
    async fn rotate(&self) -> Result<(String, usize), StoreError>;
}

#[async_trait]
impl KeyRotation for SqlStore {
    async fn rotate(&self) -> Result<(String, usize), StoreError> {
        self.rotate_secret_key().await
    }
}

/// Answers one value of a Secret.
pub async fn reveal(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let secret = key(Kind::Secret, &namespace, &name)?;
    let request = parse_body(body, &state.limits).await?;
    let wanted = request
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("send {\"key\": \"NAME\"}: the key whose value to reveal"))?;
    let object = state.store.get(&secret).await?;
    let data = object.spec.get("stringData").and_then(Value::as_object);
    let Some(value) = data.and_then(|data| data.get(wanted)).and_then(Value::as_str) else {
        let keys: Vec<&str> = data.map(|data| data.keys().map(String::as_str).collect()).unwrap_or_default();
        return Err(ApiError::not_found(format!(
            "secret/{name} has no key {wanted:?}; its keys: {}",
            if keys.is_empty() { "none".to_owned() } else { keys.join(", ") }
        )));
    };
    tracing::info!(%namespace, secret = %name, key = %wanted, "secret value revealed");
    Ok(Json(json!({"key": wanted, "value": value})))
}

/// Rotates the key that seals Secret values.
pub async fn rotate_key(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rotation: Arc<dyn KeyRotation> = state
        .key_rotation
        .clone()
        .ok_or_else(|| ApiError::not_possible("this server's store keeps no sealed Secrets (an in-memory store)"))?;
    match rotation.rotate().await {
        Ok((id, rewritten)) => Ok(Json(json!({"key": id, "rewritten": rewritten}))),
        Err(StoreError::Secret(message)) => Err(ApiError::not_possible(message)),
        Err(error) => Err(error.into()),
    }
}
