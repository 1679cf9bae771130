//! `GET /apis/minicloud.dev/v1/namespaces/{ns}/instances/{name}/log[?follow=true&tailLines=N]`:
//! an Instance's container output as plain text, streamed (and kept open with `follow`).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::Response;
use futures::StreamExt;
use minicloud_crds::Kind;

use super::error::ApiError;
use super::AppState;
use minicloud_controllers::docker::DriverError;
use minicloud_controllers::owned::{self, Found, Wanted};

/// Streams the logs of an Instance's container.
pub async fn instance_log(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // The object must exist: a 404 names it, rather than a container.
    let instance = state.store.get(&super::request::key(Kind::Instance, &namespace, &name)?).await?;
    let follow = matches!(params.get("follow").map(String::as_str), Some("true") | Some("1"));
    let tail = match params.get("tailLines") {
        None => None,
        Some(text) => Some(text.parse::<u32>().map_err(|_| ApiError::bad_request("tailLines must be a whole number"))?),
    };
    let driver = state.driver.clone().ok_or_else(|| ApiError::unavailable("this server has no Docker engine"))?;
    // Only this Instance's own container (by its labels) is read.
    let uid = instance.metadata.uid.clone().unwrap_or_default();
    let wanted = Wanted::new(state.store.cluster_id(), Kind::Instance, &namespace, &name, &uid);
    let container = match owned::find(driver.as_ref(), &wanted).await {
        Ok(Found::Ours(container)) => Ok(container.id),
        Ok(_) => Err(DriverError::NoSuchContainer(wanted.name.clone())),
        Err(error) => Err(error),
    };
    let stream = match container {
        Ok(id) => driver.logs(&id, follow, tail).await,
        Err(error) => Err(error),
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err(DriverError::NoSuchContainer(_)) => {
            let phase = instance.status.get("phase").and_then(|phase| phase.as_str()).unwrap_or("Pending");
            return Err(ApiError::not_started(format!(
                "instance/{name} has no container yet (phase {phase}); `cloud describe instance {name}` says why, retry when it runs"
            )));
        }
        Err(error) => return Err(ApiError::unavailable(format!("cannot read the logs of instance/{name}: {error}"))),
    };
    let mut shutdown = state.shutdown.clone();
    let stream =
        stream.map(|chunk| chunk.map_err(|error| std::io::Error::other(error.to_string()))).take_until(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .map_err(|error| ApiError::bad_request(error.to_string()))
}
