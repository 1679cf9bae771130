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

use std::collections::HashSet;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use minicloud_crds::{Kind, Object, ObjectKey};
use serde_json::{json, Value};

use super::admission::{self, Policies, Verdict};
use super::applyset;
use super::audit_note::AuditNote;
use super::error::{ApiError, Cause};
use super::request::parse_body;
use super::AppState;
use crate::auth::{Permission, Principal, Verb};
use crate::store::{Store, StoreError, Write};
use minicloud_model::answers::{Action, Applied};
use minicloud_model::manifest;
use minicloud_model::merge::{changed_fields, merge, with_last_applied};

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
fn audit_note(
    results: &[Applied],
    pruned: &[minicloud_model::answers::Pruned],
    verdict: &Verdict,
) -> Extension<AuditNote> {
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
    super::request::check_name("applyset", name)?;
    super::request::check_name("applysetNamespace", &namespace)?;
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
