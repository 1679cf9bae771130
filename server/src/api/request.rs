//! What a request names and sends, read the same way by every handler: the kind of a plural
//! path segment, the object key of a URL (names checked), the body (bounded in size and
//! time, parsed as JSON), the one check that a body is for the object its URL names, and the
//! query flags (`dryRun` and the like).

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use minicloud_crds::{Kind, Object, ObjectKey};
use minicloud_model::manifest;
use serde_json::{json, Value};

use super::error::ApiError;
use super::Limits;

/// The kind served under a plural path segment.
pub fn kind_for_plural(plural: &str) -> Result<Kind, ApiError> {
    Kind::ALL.into_iter().find(|kind| kind.plural() == plural).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|kind| kind.plural()).collect();
        ApiError::not_found(format!("unknown resource type {plural:?}; this server has: {}", known.join(", ")))
    })
}

/// Refuses a namespace or name that is not a DNS-1123 label.
pub fn check_name(what: &str, value: &str) -> Result<(), ApiError> {
    minicloud_crds::validation::check_dns_label(value)
        .map_err(|reason| ApiError::bad_request(format!("{what}: {reason}")))
}

/// The key of an object named in a URL, with both names checked.
pub fn key(kind: Kind, namespace: &str, name: &str) -> Result<ObjectKey, ApiError> {
    check_name("namespace", namespace)?;
    check_name("name", name)?;
    Ok(ObjectKey::new(kind, namespace, name))
}

pub fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("query parameter {name}={other:?}: use true or false"))),
    }
}

/// How much of an oversized body is still read (and discarded) so that the client, still
/// sending, receives the 413 answer instead of a reset connection.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a request body of at most `limits.body_bytes` bytes, within
/// `limits.body_read_timeout` (408 when the client sends too slowly).
pub async fn read_body(body: Body, limits: &Limits) -> Result<Bytes, ApiError> {
    tokio::time::timeout(limits.body_read_timeout, read_body_bounded(body, limits.body_bytes)).await.map_err(|_| {
        ApiError::request_timeout(format!(
            "the request body did not arrive within {} s; send it at once",
            limits.body_read_timeout.as_secs()
        ))
    })?
}

async fn read_body_bounded(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut data = body.into_data_stream();
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|error| ApiError::bad_request(format!("cannot read the request body: {error}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen > DRAIN_LIMIT {
            break;
        }
        if seen <= limit {
            collected.extend_from_slice(&chunk);
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(collected.freeze())
}

/// Reads and parses a request body as JSON, with a precise message when it is not.
pub async fn parse_body(body: Body, limits: &Limits) -> Result<Value, ApiError> {
    let bytes = read_body(body, limits).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; send the object as JSON"));
    }
    serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request(format!("malformed JSON at line {} column {}: {error}", error.line(), error.column()))
    })
}

/// Validates an object sent for `kind` in `namespace` (and `name`, for replacements) and
/// returns it in stored form, defaults applied.
pub fn accept_object(mut value: Value, kind: Kind, namespace: &str, name: Option<&str>) -> Result<Object, ApiError> {
    check_target(&mut value, kind, namespace, name)?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object with apiVersion, kind, metadata and spec"));
    };
    // Status is not part of what users validate; keep what was sent aside.
    let status = object.remove("status").unwrap_or(Value::Null);
    let typed = manifest::validate_value(value).map_err(|errors| ApiError::invalid(&format!("{kind}"), errors))?;
    let mut object = Object::from_typed(&typed).map_err(|error| ApiError::bad_request(error.to_string()))?;
    object.status = status;
    Ok(object)
}

/// The one check every write path makes (create, replace, status, merge and JSON patch,
/// server-side apply): the body is for the object the URL names — its `kind` is the URL's kind,
/// and `metadata.namespace` and `metadata.name`, when sent, are the URL's (filled in when not).
/// The access layer decided from the URL alone, so a body for another kind, namespace or name
/// would be written with a permission nobody checked.
pub fn check_target(value: &mut Value, kind: Kind, namespace: &str, name: Option<&str>) -> Result<(), ApiError> {
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object with apiVersion, kind, metadata and spec"));
    };
    match object.get("kind") {
        Some(Value::String(sent)) if sent == kind.as_str() => {}
        Some(sent) => {
            return Err(ApiError::bad_request(format!(
                "kind {sent} sent to the {} endpoint; send it to its own kind's URL",
                kind.plural()
            )))
        }
        None => return Err(ApiError::bad_request(format!("missing kind; expected {:?}", kind.as_str()))),
    }
    let metadata = object.entry("metadata").or_insert_with(|| json!({}));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    let mut expect = |field: &str, wanted: &str| match metadata.get(field) {
        None | Some(Value::Null) => {
            metadata.insert(field.to_owned(), json!(wanted));
            Ok(())
        }
        Some(Value::String(sent)) if sent == wanted => Ok(()),
        Some(sent) => Err(ApiError::bad_request(format!(
            "metadata.{field} {sent} does not match the {field} in the URL ({wanted:?})"
        ))),
    };
    expect("namespace", namespace)?;
    if let Some(name) = name {
        expect("name", name)?;
    }
    Ok(())
}

/// Whether the request is a dry run (`dryRun=All`, or `true` as the rest of the API says it).
pub fn dry_run(params: &HashMap<String, String>) -> Result<bool, ApiError> {
    match params.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All" | "true" | "1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("dryRun {other:?}: the only dry run is All"))),
    }
}
