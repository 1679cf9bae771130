//! Apply: create-or-update a batch of objects from manifests, the way `kubectl apply` does.
//!
//! The whole batch is validated before anything is written. Each object remembers what was last
//! applied (annotation `minicloud.dev/last-applied`: labels, annotations and spec), and an update
//! merges three ways, as `kubectl apply` does: a field removed from the manifest since the last
//! apply is removed from the object, fields set in the manifest win, and fields the manifest
//! never set (added by another client) stay. Lists are replaced whole. With `dryRun` nothing is
//! written and the answer says what would change.
//!
//! With an applyset (`applyset=NAME[&prune=true]`), the server keeps the inventory of what
//! the set applied and prunes what it no longer holds ([`applyset`]).
//!
//! A batch commits in one store transaction or not at all. Applies in one server are
//! serialised (so that two applies of one object never conflict with each other); a race with
//! any other writer (a controller, another replica, a delete) is retried by apply itself.

use std::collections::{BTreeMap, HashSet};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use minicloud_crds::{Kind, Object, ObjectKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::access::AuditNote;
use super::admission::{self, Policies, Verdict};
use super::applyset;
use super::error::{ApiError, Cause};
use super::objects::parse_body;
use super::AppState;
use crate::auth::{Permission, Principal, Verb};
use crate::manifest;
use crate::store::{Store, StoreError, Write};

/// The annotation that records the last applied labels, annotations and spec.
pub const LAST_APPLIED: &str = "minicloud.dev/last-applied";

/// What apply did (or, in a dry run, would do) to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

/// The outcome for one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// Fields that change (for `configured`), e.g. `spec.image`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// The applied configuration kept in the annotation.
#[derive(Default, Serialize, Deserialize)]
struct LastApplied {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    spec: Value,
}

/// `POST /apis/minicloud.dev/v1/apply[?dryRun=true]` with `{"items": [objects...]}`.
pub async fn apply(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    body: axum::body::Body,
) -> Result<(HeaderMap, Extension<AuditNote>, Json<Value>), ApiError> {
    let flag = |name: &str| matches!(params.get(name).map(String::as_str), Some("true") | Some("1") | Some("All"));
    let dry_run = flag("dryRun");
    let set = applyset_request(&params, flag("prune"), flag("pruneStateful"))?;
    let body = parse_body(body, &state.limits).await?;
    let Some(items) = body.get("items").and_then(Value::as_array) else {
        return Err(ApiError::bad_request("send {\"items\": [objects...]}"));
    };
    let mut objects = validate_batch(items.clone())?;
    let keys = objects.iter().map(key_of).collect::<Result<Vec<_>, _>>()?;
    check_permissions(&principal, Verb::Apply, keys.iter())?;
    admission::check_policy_scope(&principal, &objects)?;
    let _serialised = state.apply_lock.lock().await;
    let policies = Policies::load(state.store.as_ref(), &objects).await?;
    let Some(set) = set else {
        let (results, verdict) = apply_objects(state.store.as_ref(), objects, dry_run, &policies).await?;
        let answer = json!({"dryRun": dry_run, "items": results, "warnings": verdict.warnings});
        if !dry_run {
            verdict.record(state.store.as_ref()).await;
        }
        return Ok((verdict.headers(), audit_note(&results, &[], &verdict), Json(answer)));
    };
    // The inventory is written with the batch, in one transaction; pruning follows.
    check_permissions(&principal, Verb::Apply, [&applyset::set_key(&set)].into_iter())?;
    if keys.contains(&applyset::set_key(&set)) {
        return Err(ApiError::bad_request(format!(
            "the batch holds applyset/{} itself; it is written by apply",
            set.name
        )));
    }
    applyset::claim(&mut objects, &set);
    applyset::check_owners(state.store.as_ref(), &set, &keys).await?;
    let plan = applyset::plan(state.store.as_ref(), &set, &keys).await?;
    let pruned_keys: Vec<ObjectKey> = plan.prune.iter().filter_map(applyset::key_of).collect();
    check_permissions(&principal, Verb::Delete, pruned_keys.iter())?;
    objects.push(plan.inventory.clone());
    let (mut results, verdict) = apply_objects(state.store.as_ref(), objects, dry_run, &policies).await?;
    if !dry_run {
        verdict.record(state.store.as_ref()).await;
    }
    results.retain(|item| item.kind != Kind::ApplySet.as_str() || item.name != set.name);
    let pruned = if dry_run {
        applyset::preview(state.store.as_ref(), &set, &plan).await?
    } else {
        applyset::prune(state.store.as_ref(), &set, &plan).await?
    };
    let note = audit_note(&results, &pruned, &verdict);
    let answer = json!({"dryRun": dry_run, "items": results, "applySet": set.name, "pruned": pruned, "warnings": verdict.warnings});
    Ok((verdict.headers(), note, Json(answer)))
}

/// Refuses the whole batch when the caller may not `verb` one of the objects (nothing is
/// written), naming the first refused permission and the object.
fn check_permissions<'k>(
    principal: &Principal,
    verb: Verb,
    keys: impl Iterator<Item = &'k ObjectKey>,
) -> Result<(), ApiError> {
    for key in keys {
        let permission = Permission::new(verb, key.kind.plural(), Some(&key.namespace));
        if let Err(denial) = principal.check(&permission) {
            let mut error = ApiError::forbidden(format!(
                "{}/{} in namespace {:?}: {denial}; nothing was applied",
                key.kind.as_str().to_ascii_lowercase(),
                key.name,
                key.namespace
            ));
            error.target = Some((key.kind.as_str().to_owned(), key.name.clone()));
            return Err(error);
        }
    }
    Ok(())
}

/// What the audit log records of an apply: what changed (unchanged objects are counted),
/// bounded in length.
fn audit_note(results: &[Applied], pruned: &[applyset::Pruned], verdict: &Verdict) -> Extension<AuditNote> {
    const MAX: usize = 2000;
    let mut parts: Vec<String> = results
        .iter()
        .filter(|item| item.action != Action::Unchanged)
        .map(|item| {
            let action = if item.action == Action::Created { "created" } else { "configured" };
            format!("{action} {}/{}/{}", item.kind.to_ascii_lowercase(), item.namespace, item.name)
        })
        .collect();
    parts.extend(pruned.iter().map(|item| {
        format!("pruned ({}) {}/{}/{}", item.action, item.kind.to_ascii_lowercase(), item.namespace, item.name)
    }));
    let unchanged = results.iter().filter(|item| item.action == Action::Unchanged).count();
    if unchanged > 0 {
        parts.push(format!("{unchanged} unchanged"));
    }
    parts.extend(verdict.warnings.iter().map(|warning| format!("warning: {warning}")));
    let mut note = parts.join("; ");
    if note.len() > MAX {
        let cut = (0..=MAX).rev().find(|index| note.is_char_boundary(*index)).unwrap_or(0);
        note.truncate(cut);
        note.push_str(" …");
    }
    Extension(AuditNote(note))
}

/// The applyset an apply names (`applyset`, `applysetNamespace`), if any; `prune` needs one.
fn applyset_request(
    params: &std::collections::HashMap<String, String>,
    prune: bool,
    prune_stateful: bool,
) -> Result<Option<applyset::ApplySetRequest>, ApiError> {
    let Some(name) = params.get("applyset").filter(|name| !name.is_empty()) else {
        if prune {
            return Err(ApiError::bad_request("prune needs an applyset: prune deletes only what that set applied"));
        }
        return Ok(None);
    };
    let namespace =
        params.get("applysetNamespace").cloned().unwrap_or_else(|| minicloud_crds::DEFAULT_NAMESPACE.to_owned());
    super::objects::check_name("applyset", name)?;
    super::objects::check_name("applysetNamespace", &namespace)?;
    Ok(Some(applyset::ApplySetRequest { name: name.clone(), namespace, prune, prune_stateful }))
}

/// Validates every object of a batch; all problems are reported together, prefixed with
/// `items[i]`.
pub fn validate_batch(items: Vec<Value>) -> Result<Vec<Object>, ApiError> {
    let mut objects = Vec::with_capacity(items.len());
    let mut causes = Vec::new();
    let mut seen = HashSet::new();
    for (index, item) in items.into_iter().enumerate() {
        match manifest::validate_value(item) {
            Ok(typed) => match Object::from_typed(&typed) {
                Ok(object) => {
                    let key = ObjectKey::new(typed.kind(), object.namespace(), object.metadata.name.clone());
                    if !seen.insert(key.clone()) {
                        causes.push(Cause {
                            field: format!("items[{index}]"),
                            message: format!("{key} appears twice in the batch"),
                        });
                    }
                    objects.push(object);
                }
                Err(error) => causes.push(Cause { field: format!("items[{index}]"), message: error.to_string() }),
            },
            Err(errors) => causes.extend(
                errors
                    .into_iter()
                    .map(|error| Cause { field: format!("items[{index}].{}", error.path), message: error.message }),
            ),
        }
    }
    if causes.is_empty() {
        Ok(objects)
    } else {
        Err(ApiError::invalid_causes("the batch is invalid; nothing was applied", causes))
    }
}

/// Applies validated objects in one store transaction: the new ones are created, the existing
/// ones that differ are updated, and if any write fails nothing is written. Apply is
/// create-or-update, so losing a race is not the user's problem: when another writer changed,
/// created or deleted one of the objects between our read and our write, the batch is read
/// and merged again and retried (jittered backoff), up to [`APPLY_ATTEMPTS`] times.
/// The policies judge what would be written (creates, and updates as merged), on every
/// attempt; a `Deny` refuses the whole batch before anything is written.
pub async fn apply_objects(
    store: &dyn Store,
    objects: Vec<Object>,
    dry_run: bool,
    policies: &Policies,
) -> Result<(Vec<Applied>, Verdict), ApiError> {
    let keys = objects.iter().map(key_of).collect::<Result<Vec<_>, _>>()?;
    let mut attempt = 0;
    loop {
        let (results, writes) = plan_batch(store, &objects, &keys).await?;
        let verdict = policies.check(writes.iter().map(|write| match write {
            Write::Create(object) | Write::Update(object) => object,
        }))?;
        if dry_run || writes.is_empty() {
            return Ok((results, verdict));
        }
        match store.write_all(writes).await {
            Ok(_) => return Ok((results, verdict)),
            Err(error) if lost_race(&error) && attempt + 1 < APPLY_ATTEMPTS => {
                attempt += 1;
                tracing::debug!(%error, attempt, "apply lost a race; reading the objects again");
                tokio::time::sleep(retry_delay(attempt)).await;
            }
            Err(error) => return Err(batch_error(&keys, error)),
        }
    }
}

/// How many times apply reads, merges and writes a batch before it gives up.
pub const APPLY_ATTEMPTS: u32 = 12;

/// Errors that mean another writer got in between: read again and retry.
fn lost_race(error: &StoreError) -> bool {
    matches!(error, StoreError::Conflict { .. } | StoreError::NotFound(_) | StoreError::AlreadyExists(_))
}

/// Exponential backoff from 5 ms, capped at 320 ms, with full jitter.
fn retry_delay(attempt: u32) -> std::time::Duration {
    let ceiling = 5u64 << attempt.min(6);
    std::time::Duration::from_millis(rand::random_range(1..=ceiling))
}

/// Reads every object of the batch and decides what to write: the outcome per object and the
/// writes (creates for the missing ones, merged updates for those that change).
async fn plan_batch(
    store: &dyn Store,
    objects: &[Object],
    keys: &[ObjectKey],
) -> Result<(Vec<Applied>, Vec<Write>), ApiError> {
    let mut results = Vec::with_capacity(objects.len());
    let mut writes = Vec::new();
    for (object, key) in objects.iter().zip(keys) {
        match store.get(key).await {
            Err(StoreError::NotFound(_)) => {
                results.push(outcome(key, Action::Created, Vec::new()));
                writes.push(Write::Create(with_last_applied(object.clone())));
            }
            Err(error) => return Err(error.into()),
            Ok(live) => {
                let next = merge(&live, object);
                let changes = changed_fields(&live, &next);
                if changes.is_empty() {
                    results.push(outcome(key, Action::Unchanged, changes));
                } else {
                    results.push(outcome(key, Action::Configured, changes));
                    // `next` carries the live resourceVersion: a write in between is a Conflict.
                    writes.push(Write::Update(next));
                }
            }
        }
    }
    Ok((results, writes))
}

/// The error of a batch that was not applied, naming the object that failed (`items[i]`).
fn batch_error(keys: &[ObjectKey], error: StoreError) -> ApiError {
    let failed = match &error {
        StoreError::NotFound(key)
        | StoreError::AlreadyExists(key)
        | StoreError::Conflict { key, .. }
        | StoreError::TooLarge { key, .. } => keys.iter().position(|candidate| candidate == key),
        _ => None,
    };
    let mut api = ApiError::from(error);
    if let Some(index) = failed {
        api.message = format!("nothing was applied: items[{index}] ({}): {}", keys[index], api.message);
        api.causes.push(Cause { field: format!("items[{index}]"), message: api.message.clone() });
    } else {
        api.message = format!("nothing was applied: {}", api.message);
    }
    api
}

fn key_of(object: &Object) -> Result<ObjectKey, ApiError> {
    let kind = Kind::from_kind_name(&object.kind)
        .ok_or_else(|| ApiError::bad_request(format!("unknown kind {:?}", object.kind)))?;
    Ok(ObjectKey::new(kind, object.namespace(), object.metadata.name.clone()))
}

fn outcome(key: &ObjectKey, action: Action, changes: Vec<String>) -> Applied {
    Applied {
        kind: key.kind.as_str().to_owned(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        action,
        changes,
    }
}

/// What an apply records of a manifest. A Secret's values are not kept (the three-way merge
/// needs only which keys the manifest had).
fn last_applied_of(object: &Object) -> LastApplied {
    let mut annotations = object.metadata.annotations.clone();
    annotations.remove(LAST_APPLIED);
    let mut recorded = object.clone();
    crate::secrets::redact_object(&mut recorded);
    LastApplied { labels: object.metadata.labels.clone(), annotations, spec: recorded.spec }
}

fn with_last_applied(mut object: Object) -> Object {
    let record = serde_json::to_string(&last_applied_of(&object)).unwrap_or_default();
    object.metadata.annotations.insert(LAST_APPLIED.into(), record);
    object
}

/// The live object updated by a manifest: spec, labels and annotations merged three ways
/// (removed from the manifest since the last apply → removed; set by others → kept).
pub fn merge(live: &Object, manifest: &Object) -> Object {
    let previous: LastApplied = live
        .metadata
        .annotations
        .get(LAST_APPLIED)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let desired = last_applied_of(manifest);
    let mut next = live.clone();
    // The manifest's own spec: the record keeps no Secret values.
    next.spec = merge_value(Some(&previous.spec), &live.spec, &manifest.spec);
    next.metadata.labels = merge_map(&previous.labels, &live.metadata.labels, &desired.labels);
    next.metadata.annotations = merge_map(&previous.annotations, &live.metadata.annotations, &desired.annotations);
    with_last_applied_record(next, &desired)
}

fn with_last_applied_record(mut object: Object, record: &LastApplied) -> Object {
    let text = serde_json::to_string(record).unwrap_or_default();
    object.metadata.annotations.insert(LAST_APPLIED.into(), text);
    object
}

fn merge_map(
    previous: &BTreeMap<String, String>,
    live: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged: BTreeMap<String, String> = live
        .iter()
        .filter(|(key, _)| !previous.contains_key(*key) || desired.contains_key(*key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    merged.extend(desired.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// Three-way merge of JSON: objects key by key (keys the last apply had and the manifest has no
/// longer are removed, keys the manifest has are merged, other keys stay); anything else is
/// taken from the manifest.
fn merge_value(last: Option<&Value>, live: &Value, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(live_map), Value::Object(desired_map)) => {
            let last_map = last.and_then(Value::as_object);
            let mut merged = live_map.clone();
            if let Some(last_map) = last_map {
                for key in last_map.keys().filter(|key| !desired_map.contains_key(*key)) {
                    merged.remove(key);
                }
            }
            for (key, value) in desired_map {
                let previous = last_map.and_then(|map| map.get(key));
                let current = live_map.get(key).unwrap_or(&Value::Null);
                merged.insert(key.clone(), merge_value(previous, current, value));
            }
            Value::Object(merged)
        }
        _ => desired.clone(),
    }
}

/// The leaf fields (`spec.image`, `metadata.labels.app`) that differ between two objects,
/// ignoring the last-applied bookkeeping.
pub fn changed_fields(before: &Object, after: &Object) -> Vec<String> {
    field_changes(before, after).into_iter().map(|change| change.path).collect()
}

/// One leaf field that differs: its path and its values before and after (`null`: absent).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub before: Value,
    pub after: Value,
}

/// Every leaf field of spec, labels and annotations (but the last-applied record) that differs.
pub fn field_changes(before: &Object, after: &Object) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    diff(&json!(before.spec), &json!(after.spec), "spec", &mut changes);
    diff(&json!(before.metadata.labels), &json!(after.metadata.labels), "metadata.labels", &mut changes);
    let strip = |object: &Object| {
        let mut annotations = object.metadata.annotations.clone();
        annotations.remove(LAST_APPLIED);
        json!(annotations)
    };
    diff(&strip(before), &strip(after), "metadata.annotations", &mut changes);
    changes
}

/// The fields of `live` that differ from what was last applied to it (`None`: it has no
/// record): changes made outside the manifests, to fields the manifests set. Fields the
/// manifests never set (a controller's, another client's) are not drift.
pub fn drift(live: &Object) -> Option<Vec<FieldChange>> {
    let record: LastApplied = serde_json::from_str(live.metadata.annotations.get(LAST_APPLIED)?).ok()?;
    let mut found = Vec::new();
    applied_fields(&record.spec, &json!(live.spec), "spec", &mut found);
    applied_fields(&json!(record.labels), &json!(live.metadata.labels), "metadata.labels", &mut found);
    applied_fields(&json!(record.annotations), &json!(live.metadata.annotations), "metadata.annotations", &mut found);
    // A Secret's record keeps no values: nothing to compare them with.
    found.retain(|change| change.before != json!(crate::secrets::REDACTED));
    Some(found)
}

/// The leaves of `recorded` whose value in `live` is another.
fn applied_fields(recorded: &Value, live: &Value, path: &str, out: &mut Vec<FieldChange>) {
    match (recorded, live) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                applied_fields(value, b.get(key).unwrap_or(&Value::Null), &format!("{path}.{key}"), out);
            }
        }
        (Value::Object(_), _) => {
            out.push(FieldChange { path: path.to_owned(), before: recorded.clone(), after: live.clone() })
        }
        _ if recorded != live => {
            out.push(FieldChange { path: path.to_owned(), before: recorded.clone(), after: live.clone() })
        }
        _ => {}
    }
}

fn diff(before: &Value, after: &Value, path: &str, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = format!("{path}.{key}");
                diff(a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), &child, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &format!("{path}[{index}]"), out);
            }
        }
        _ if before != after => {
            out.push(FieldChange { path: path.to_owned(), before: before.clone(), after: after.clone() })
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(labels: &[(&str, &str)], image: &str) -> Object {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance",
            "metadata": {"name": "web", "namespace": "default", "labels": labels},
            "spec": {"image": image, "env": [{"name": "A", "value": "1"}]}
        }))
        .expect("object")
    }

    #[test]
    fn removed_labels_go_and_foreign_labels_stay() {
        let first = with_last_applied(object(&[("app", "web"), ("tier", "front")], "a"));
        let mut live = first.clone();
        live.metadata.labels.insert("owner".into(), "ops".into());
        let next = merge(&live, &object(&[("app", "web")], "a"));
        let labels: Vec<&str> = next.metadata.labels.keys().map(String::as_str).collect();
        assert_eq!(labels, ["app", "owner"]);
        assert_eq!(changed_fields(&live, &next), ["metadata.labels.tier"]);
    }

    #[test]
    fn spec_fields_set_by_others_survive_and_nested_removals_apply() {
        let mut manifest = object(&[], "a");
        manifest.spec["healthCheck"] = json!({"tcp": {"port": 80}, "retries": 3});
        let mut live = with_last_applied(manifest.clone());
        live.spec["network"] = json!("backend");
        live.spec["healthCheck"]["intervalSeconds"] = json!(5);
        manifest.spec["healthCheck"] = json!({"tcp": {"port": 80}});
        let next = merge(&live, &manifest);
        assert_eq!(next.spec["network"], "backend", "a field the manifest never set stays");
        assert_eq!(next.spec["healthCheck"], json!({"tcp": {"port": 80}, "intervalSeconds": 5}));
    }

    #[test]
    fn spec_fields_removed_from_the_manifest_are_removed() {
        let live = with_last_applied(object(&[], "a"));
        let mut manifest = object(&[], "b");
        manifest.spec.as_object_mut().expect("spec").remove("env");
        let next = merge(&live, &manifest);
        assert_eq!(next.spec, json!({"image": "b"}));
        assert_eq!(changed_fields(&live, &next), ["spec.env", "spec.image"]);
        assert!(changed_fields(&next, &merge(&next, &manifest)).is_empty());
    }
}
