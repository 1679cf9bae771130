//! `PATCH .../{plural}/{name}` as Kubernetes clients send it: a JSON merge patch
//! (`application/merge-patch+json`, RFC 7386: what client-side `kubectl apply` and `kubectl
//! patch --type merge` send), a JSON patch (`application/json-patch+json`, RFC 6902), or a
//! server-side apply (`application/apply-patch+yaml`), which is minicloud's own apply of one
//! object. Strategic merge patches need Go type information minicloud's kinds do not have:
//! they are refused with what to use instead. The patched object is validated like any write
//! and written only if the object did not change meanwhile (read, patch and write again
//! otherwise); `dryRun=All` answers without writing.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::{Extension, Json};
use minicloud_crds::Object;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::objects::shown;
use super::request::{accept_object, check_target, dry_run, key, kind_for_plural, read_body};
use super::AppState;
use crate::auth::Principal;
use crate::store::StoreError;

/// How many times a patch is read, applied and written when other writers get in between.
pub const PATCH_ATTEMPTS: u32 = 8;
/// The largest a document may grow while a JSON patch is applied (a few `copy` operations of
/// the whole document would otherwise double it each time).
const MAX_PATCHED_BYTES: usize = 8 << 20;
/// The most operations one JSON patch may hold (Kubernetes' own limit).
const MAX_PATCH_OPERATIONS: usize = 10_000;
/// The most work one JSON patch may ask for, counted as operations × the document's size in
/// bytes (each operation may walk or copy the whole document): 64 MiB, e.g. 60 operations on
/// a 1 MiB object or 10,000 on one of 6 KiB.
const MAX_PATCH_WORK: usize = 64 << 20;

/// The kinds of patch the API reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PatchType {
    Merge,
    Json,
    Apply,
}

fn patch_type(headers: &HeaderMap) -> Result<PatchType, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim() {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        "application/strategic-merge-patch+json" => Err(ApiError::unsupported_media_type(
            "strategic merge patches need Go type information minicloud's kinds do not have; send a merge patch (kubectl patch --type merge) or a JSON patch (--type json)",
        )),
        other => Err(ApiError::unsupported_media_type(format!(
            "a patch is application/merge-patch+json, application/json-patch+json or application/apply-patch+yaml (got {other:?})"
        ))),
    }
}

/// `PATCH .../namespaces/{ns}/{plural}/{name}`.
pub async fn patch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(HeaderMap, Json<Object>), ApiError> {
    let kind = kind_for_plural(&plural)?;
    let key = key(kind, &namespace, &name)?;
    let patch_type = patch_type(&headers)?;
    let dry_run = dry_run(&params)?;
    let bytes = read_body(body, &state.limits).await?;
    if patch_type == PatchType::Apply {
        return server_side_apply(&state, &principal, &bytes, kind, &namespace, &name, dry_run).await;
    }
    let patch: Value = serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::bad_request(format!("the patch is not valid JSON: {error}")))?;
    let mut attempt = 0;
    loop {
        let live = state.store.get(&key).await?;
        let mut document = serde_json::to_value(&live).map_err(|error| ApiError::bad_request(error.to_string()))?;
        if patch_type == PatchType::Json {
            bound_json_patch(&patch, &document)?;
        }
        if patch_type == PatchType::Merge {
            merge_patch(&mut document, &patch);
        } else {
            if kind == minicloud_crds::Kind::Secret {
                refuse_reading_ops(&patch)?;
            }
            json_patch(&mut document, &patch)?;
        }
        if !document.is_object() {
            return Err(ApiError::bad_request(
                "the patch would replace the object with something that is not an object",
            ));
        }
        // A patch that sets no resourceVersion applies to what was read, not to anything newer.
        if document.pointer("/metadata/resourceVersion").is_none_or(Value::is_null) {
            document["metadata"]["resourceVersion"] = Value::from(live.metadata.resource_version.clone());
        }
        let status = live.status.clone();
        let mut patched = accept_object(document, kind, &namespace, Some(&name))?;
        patched.status = status;
        let verdict = super::objects::admit(&state, &principal, &patched).await?;
        if dry_run {
            return Ok((verdict.headers(), Json(shown(patched))));
        }
        match state.store.update(patched).await {
            Ok(updated) => {
                verdict.record(state.store.as_ref()).await;
                return Ok((verdict.headers(), Json(shown(updated))));
            }
            // The object changed since it was read: patch the newer one, unless the patch
            // itself named the version it applies to.
            Err(StoreError::Conflict { .. })
                if attempt + 1 < PATCH_ATTEMPTS && patch.pointer("/metadata/resourceVersion").is_none() =>
            {
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Server-side apply of one object: minicloud's apply (create or three-way merge with the
/// last-applied record), answered with the object as it is afterwards.
async fn server_side_apply(
    state: &AppState,
    principal: &Principal,
    bytes: &[u8],
    kind: minicloud_crds::Kind,
    namespace: &str,
    name: &str,
    dry_run: bool,
) -> Result<(HeaderMap, Json<Object>), ApiError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("the apply patch is not UTF-8 YAML or JSON"))?;
    let mut documents = minicloud_model::yaml::parse_documents(text)
        .map_err(|error| ApiError::bad_request(format!("the apply patch is not valid YAML: {error}")))?;
    if documents.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "an apply patch holds one object; this one holds {}",
            documents.len()
        )));
    }
    let mut value = documents.remove(0).value;
    check_target(&mut value, kind, namespace, Some(name))?;
    // An apply of metadata only (kubectl's step that takes over client-side apply's fields
    // sends one) changes labels and annotations of the live object and nothing else.
    if value.get("spec").is_none() {
        let live = state.store.get(&key(kind, namespace, name)?).await?;
        let mut document = serde_json::to_value(&live).map_err(|error| ApiError::bad_request(error.to_string()))?;
        for field in ["labels", "annotations"] {
            if let Some(values) = value.pointer(&format!("/metadata/{field}")) {
                merge_patch(&mut document["metadata"][field], values);
            }
        }
        let mut updated = accept_object(document, kind, namespace, Some(name))?;
        updated.status = live.status;
        let verdict = super::objects::admit(state, principal, &updated).await?;
        if dry_run {
            return Ok((verdict.headers(), Json(shown(updated))));
        }
        let updated = state.store.update(updated).await?;
        verdict.record(state.store.as_ref()).await;
        return Ok((verdict.headers(), Json(shown(updated))));
    }
    let objects = super::apply::validate_batch(vec![value])?;
    let key = objects[0].key().ok_or_else(|| ApiError::bad_request("the object has no kind"))?;
    super::admission::check_policy_scope(principal, &objects)?;
    let _serialised = state.apply_lock.lock().await;
    let policies = super::admission::Policies::load(state.store.as_ref(), &objects).await?;
    let (_, verdict) = super::apply::apply_objects(state.store.as_ref(), objects.clone(), dry_run, &policies).await?;
    let headers = verdict.headers();
    if dry_run {
        let live = match state.store.get(&key).await {
            Ok(live) => live,
            Err(StoreError::NotFound(_)) => return Ok((headers, Json(shown(objects[0].clone())))),
            Err(error) => return Err(error.into()),
        };
        return Ok((headers, Json(shown(minicloud_model::merge::merge(&live, &objects[0])))));
    }
    verdict.record(state.store.as_ref()).await;
    Ok((headers, Json(shown(state.store.get(&key).await?))))
}

/// Refuses, before any of it is done, a JSON patch whose work is out of proportion: more than
/// [`MAX_PATCH_OPERATIONS`] operations, or operations × document size beyond
/// [`MAX_PATCH_WORK`].
fn bound_json_patch(patch: &Value, document: &Value) -> Result<(), ApiError> {
    let operations = patch.as_array().map_or(0, Vec::len);
    if operations > MAX_PATCH_OPERATIONS {
        return Err(ApiError::too_large_object(format!(
            "the JSON patch holds {operations} operations (at most {MAX_PATCH_OPERATIONS}); send fewer, or a merge patch"
        )));
    }
    let size = serde_json::to_vec(document).map_or(usize::MAX, |bytes| bytes.len());
    if operations.saturating_mul(size) > MAX_PATCH_WORK {
        return Err(ApiError::too_large_object(format!(
            "the JSON patch holds {operations} operations on a {size}-byte object: more work than one request may ask for ({} operations at this size); send fewer operations, or a merge patch",
            MAX_PATCH_WORK / size.max(1)
        )));
    }
    Ok(())
}

/// A JSON patch on a Secret may write values but not read them: `copy`, `move` and `test`
/// would let a patch move a value where it is shown, or guess it, without the logged reveal.
fn refuse_reading_ops(patch: &Value) -> Result<(), ApiError> {
    let reads = patch
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|operation| operation.get("op").and_then(Value::as_str))
        .find(|op| matches!(*op, "copy" | "move" | "test"));
    match reads {
        Some(op) => Err(ApiError::bad_request(format!(
            "a JSON patch of a Secret cannot {op}: its values are written, never read, by a patch (read one with cloud secret reveal)"
        ))),
        None => Ok(()),
    }
}

/// RFC 7386 on `target` (for the `scale` subresource).
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    merge_patch(target, patch)
}

/// RFC 6902 on `document`, bounded like every JSON patch (for the `scale` subresource).
pub fn apply_json_patch(document: &mut Value, patch: &Value) -> Result<(), ApiError> {
    bound_json_patch(patch, document)?;
    json_patch(document, patch)
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902: `add`, `remove`, `replace`, `move`, `copy` and `test`, in order; the first that
/// cannot be done fails the whole patch.
fn json_patch(document: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Some(operations) = patch.as_array() else {
        return Err(ApiError::bad_request("a JSON patch is an array of operations"));
    };
    // An upper bound of the document's size, grown by what copies add (never re-serialised
    // whole per operation).
    let mut size = serde_json::to_vec(&*document).map_or(usize::MAX, |bytes| bytes.len());
    for (index, operation) in operations.iter().enumerate() {
        let fail = |message: String| ApiError::bad_request(format!("JSON patch operation {index}: {message}"));
        let text = |field: &str| {
            operation
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| fail(format!("{field:?} is missing or not a string")))
        };
        let op = text("op")?;
        let path = pointer(text("path")?).map_err(&fail)?;
        let value = || operation.get("value").cloned().ok_or_else(|| fail("\"value\" is missing".into()));
        match op {
            "add" => add(document, &path, value()?).map_err(&fail)?,
            "remove" => {
                remove(document, &path).map_err(&fail)?;
            }
            "replace" => {
                remove(document, &path).map_err(&fail)?;
                add(document, &path, value()?).map_err(&fail)?;
            }
            "move" | "copy" => {
                let from = pointer(text("from")?).map_err(&fail)?;
                let moved = if op == "move" {
                    if path.len() > from.len() && path[..from.len()] == from[..] {
                        return Err(fail("cannot move a value into itself".into()));
                    }
                    remove(document, &from).map_err(&fail)?
                } else {
                    get(document, &from).cloned().ok_or_else(|| fail(format!("nothing at {:?}", text("from"))))?
                };
                if op == "copy" {
                    let copied = serde_json::to_vec(&moved).map_or(usize::MAX, |bytes| bytes.len());
                    size = size.saturating_add(copied);
                }
                add(document, &path, moved).map_err(&fail)?;
                if size > MAX_PATCHED_BYTES {
                    return Err(ApiError::too_large_object(format!(
                        "JSON patch operation {index}: the object would grow to {size} bytes (at most {MAX_PATCHED_BYTES})"
                    )));
                }
            }
            "test" => {
                if get(document, &path) != Some(&value()?) {
                    return Err(fail(format!("test failed at {:?}", text("path")?)));
                }
            }
            other => return Err(fail(format!("unknown op {other:?}"))),
        }
    }
    Ok(())
}

/// A JSON pointer's reference tokens (`/a~1b/0` → `["a/b", "0"]`).
fn pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("path {text:?} does not start with '/'"));
    };
    Ok(rest.split('/').map(|token| token.replace("~1", "/").replace("~0", "~")).collect())
}

fn get<'v>(document: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(document, |value, token| match value {
        Value::Object(map) => map.get(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|index| items.get(index)),
        _ => None,
    })
}

fn parent<'v>(document: &'v mut Value, path: &[String]) -> Result<(&'v mut Value, String), String> {
    let Some((last, init)) = path.split_last() else {
        return Err("the whole document cannot be added or removed".into());
    };
    let mut value = document;
    for token in init {
        value = match value {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|index| items.get_mut(index)),
            _ => None,
        }
        .ok_or_else(|| format!("nothing at /{}", init.join("/")))?;
    }
    Ok((value, last.clone()))
}

fn add(document: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let (parent, token) = parent(document, path)?;
    match parent {
        Value::Object(map) => {
            map.insert(token, value);
            Ok(())
        }
        Value::Array(items) if token == "-" => {
            items.push(value);
            Ok(())
        }
        Value::Array(items) => match token.parse::<usize>() {
            Ok(index) if index <= items.len() => {
                items.insert(index, value);
                Ok(())
            }
            _ => Err(format!("index {token:?} is out of range")),
        },
        _ => Err(format!("cannot add {token:?} to a value that is neither an object nor an array")),
    }
}

fn remove(document: &mut Value, path: &[String]) -> Result<Value, String> {
    let (parent, token) = parent(document, path)?;
    match parent {
        Value::Object(map) => map.remove(&token).ok_or_else(|| format!("nothing at {token:?}")),
        Value::Array(items) => match token.parse::<usize>() {
            Ok(index) if index < items.len() => Ok(items.remove(index)),
            _ => Err(format!("index {token:?} is out of range")),
        },
        _ => Err(format!("nothing at {token:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches_follow_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}, "list": [3], "new": {"x": 1}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "list": [3], "new": {"x": 1}}));
        let mut scalar = json!("x");
        merge_patch(&mut scalar, &json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
    }

    #[test]
    fn json_patches_follow_rfc_6902() {
        let mut document = json!({"spec": {"ports": [{"p": 1}], "env": []}, "a/b": 1});
        json_patch(
            &mut document,
            &json!([
                {"op": "add", "path": "/spec/ports/-", "value": {"p": 2}},
                {"op": "replace", "path": "/spec/ports/0/p", "value": 5},
                {"op": "copy", "from": "/spec/ports/1", "path": "/spec/env/0"},
                {"op": "move", "from": "/a~1b", "path": "/moved"},
                {"op": "test", "path": "/moved", "value": 1},
                {"op": "remove", "path": "/spec/ports/1"},
            ]),
        )
        .unwrap();
        assert_eq!(document, json!({"spec": {"ports": [{"p": 5}], "env": [{"p": 2}]}, "moved": 1}));
        // Copies that double the document each time stop at the size limit.
        let mut bomb = json!({"a": "x".repeat(1 << 20)});
        let doubling: Vec<Value> =
            (0..12).map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")})).collect();
        let error = json_patch(&mut bomb, &Value::Array(doubling)).expect_err("bounded");
        assert_eq!(error.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE, "{error}");
        assert!(refuse_reading_ops(
            &json!([{"op": "copy", "from": "/spec/stringData/k", "path": "/metadata/labels/x"}])
        )
        .is_err());
        assert!(refuse_reading_ops(&json!([{"op": "test", "path": "/spec/stringData/k", "value": "guess"}])).is_err());
        assert!(refuse_reading_ops(&json!([{"op": "replace", "path": "/spec/stringData/k", "value": "new"}])).is_ok());
        for bad in [
            json!([{"op": "remove", "path": "/nope"}]),
            json!([{"op": "test", "path": "/moved", "value": 2}]),
            json!([{"op": "add", "path": "/spec/ports/9", "value": 1}]),
            json!([{"op": "move", "from": "/spec", "path": "/spec/inner"}]),
            json!([{"op": "frobnicate", "path": "/x"}]),
            json!([{"op": "add", "path": "no-slash", "value": 1}]),
            json!({"op": "add"}),
        ] {
            let before = document.clone();
            assert!(json_patch(&mut document.clone(), &bad).is_err(), "{bad}");
            assert_eq!(document, before);
        }
    }
}
