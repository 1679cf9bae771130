//! Apply with an applyset: the server keeps the inventory of what one set of manifests applied
//! (an `ApplySet` object) and prunes what the set no longer holds — and nothing else.
//!
//! The inventory is written in the same store transaction as the batch, holding the new members
//! and the prune candidates; the candidates are then deleted one by one, and the inventory is
//! written again without them. A control plane killed in between finds the candidates still in
//! the inventory and prunes them next time. Databases are pruned only when asked
//! (`pruneStateful`); otherwise they stay in the set and are reported as kept.

use std::collections::BTreeSet;

use chrono::Utc;
use minicloud_crds::applyset::{ApplySetMember, ApplySetSpec, ApplySetStatus, PART_OF_ANNOTATION};
use minicloud_crds::meta::ObjectMeta;
use minicloud_crds::{Kind, Object, ObjectKey, API_VERSION};
use serde_json::json;

use minicloud_model::answers::Pruned;

use super::error::ApiError;
use crate::store::{EventType, NewEvent, Store, StoreError};

/// How an apply treats its applyset.
#[derive(Clone, Debug)]
pub struct ApplySetRequest {
    pub name: String,
    pub namespace: String,
    pub prune: bool,
    pub prune_stateful: bool,
}

fn member_of(key: &ObjectKey) -> ApplySetMember {
    ApplySetMember { kind: key.kind.as_str().to_owned(), namespace: key.namespace.clone(), name: key.name.clone() }
}

pub fn key_of(member: &ApplySetMember) -> Option<ObjectKey> {
    Some(ObjectKey::new(Kind::from_kind_name(&member.kind)?, member.namespace.clone(), member.name.clone()))
}

fn label(member: &ApplySetMember) -> String {
    format!("{}/{}/{}", member.kind.to_ascii_lowercase(), member.namespace, member.name)
}

/// The mark members of the set carry (`NAMESPACE/NAME`).
pub fn owner(request: &ApplySetRequest) -> String {
    format!("{}/{}", request.namespace, request.name)
}

/// Marks every object of the batch as a member of the set.
pub fn claim(objects: &mut [Object], request: &ApplySetRequest) {
    for object in objects {
        object.metadata.annotations.insert(PART_OF_ANNOTATION.to_owned(), owner(request));
    }
}

/// Refuses a batch holding an object that another applyset manages: one object, one set, or
/// the sets would fight over it and one's prune would delete the other's object. An object
/// whose set no longer exists is free to take.
pub async fn check_owners(store: &dyn Store, request: &ApplySetRequest, keys: &[ObjectKey]) -> Result<(), ApiError> {
    let mine = owner(request);
    let mut causes = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let live = match store.get(key).await {
            Ok(live) => live,
            Err(StoreError::NotFound(_)) => continue,
            Err(error) => return Err(error.into()),
        };
        let Some(other) = live.metadata.annotations.get(PART_OF_ANNOTATION).filter(|other| **other != mine) else {
            continue;
        };
        if !set_exists(store, other).await? {
            continue;
        }
        causes.push(super::error::Cause {
            field: format!("items[{index}]"),
            message: format!(
                "{key} belongs to applyset {other}; to move it, apply it once without --applyset (that releases it: \
                 {other} will not prune it), remove it from {other}'s manifests, then apply it with this set"
            ),
        });
    }
    if causes.is_empty() {
        return Ok(());
    }
    let summary = causes.iter().map(|cause| format!("{}: {}", cause.field, cause.message)).collect::<Vec<_>>();
    let mut error = ApiError::not_possible(format!(
        "nothing was applied: {} object(s) belong to another applyset: {}",
        causes.len(),
        summary.join("; ")
    ));
    error.causes = causes;
    Err(error)
}

/// Whether the applyset a member's mark (`NAMESPACE/NAME`) names still exists; a mark that
/// names no valid set counts as none.
async fn set_exists(store: &dyn Store, mark: &str) -> Result<bool, ApiError> {
    let Some((namespace, name)) = mark.split_once('/') else { return Ok(false) };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Ok(false);
    }
    match store.get(&ObjectKey::new(Kind::ApplySet, namespace, name)).await {
        Ok(_) => Ok(true),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The applyset's key.
pub fn set_key(request: &ApplySetRequest) -> ObjectKey {
    ObjectKey::new(Kind::ApplySet, request.namespace.clone(), request.name.clone())
}

/// The plan for an applyset: the inventory object to write with the batch (members and
/// candidates), and the candidates to prune afterwards.
pub struct Plan {
    pub inventory: Object,
    pub prune: Vec<ApplySetMember>,
    pub keep: Vec<ApplySetMember>,
}

/// Reads the inventory and decides what the batch `applied` makes of it.
pub async fn plan(store: &dyn Store, request: &ApplySetRequest, applied: &[ObjectKey]) -> Result<Plan, ApiError> {
    let key = set_key(request);
    let previous: Vec<ApplySetMember> = match store.get(&key).await {
        Ok(object) => serde_json::from_value::<ApplySetSpec>(object.spec).map(|spec| spec.members).unwrap_or_default(),
        Err(StoreError::NotFound(_)) => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let now: BTreeSet<ApplySetMember> = applied.iter().map(member_of).collect();
    let gone: Vec<ApplySetMember> = previous.into_iter().filter(|member| !now.contains(member)).collect();
    let (mut prune, mut keep) = (Vec::new(), Vec::new());
    for member in gone {
        let stateful = member.kind == Kind::ManagedDatabase.as_str();
        if request.prune && (!stateful || request.prune_stateful) {
            prune.push(member);
        } else {
            keep.push(member);
        }
    }
    let mut members: Vec<ApplySetMember> =
        now.into_iter().chain(prune.iter().cloned()).chain(keep.iter().cloned()).collect();
    members.sort();
    members.dedup();
    Ok(Plan { inventory: inventory(request, members), prune, keep })
}

/// The ApplySet object holding `members`.
fn inventory(request: &ApplySetRequest, members: Vec<ApplySetMember>) -> Object {
    Object {
        api_version: API_VERSION.to_owned(),
        kind: Kind::ApplySet.as_str().to_owned(),
        metadata: ObjectMeta {
            name: request.name.clone(),
            namespace: Some(request.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: json!(ApplySetSpec { members }),
        status: serde_json::Value::Null,
    }
}

/// After the batch (and the inventory with the candidates) committed: deletes the candidates,
/// then writes the inventory without them and what happened into its status.
pub async fn prune(store: &dyn Store, request: &ApplySetRequest, plan: &Plan) -> Result<Vec<Pruned>, ApiError> {
    let mut outcome = Vec::new();
    let mut left = Vec::new();
    let mine = owner(request);
    for member in &plan.prune {
        let Some(key) = key_of(member) else { continue };
        let action = match delete_member(store, &key, &mine).await {
            Ok(action) => action,
            Err(error) => {
                tracing::warn!(%error, member = %label(member), "prune failed; the member stays in the applyset");
                left.push(member.clone());
                continue;
            }
        };
        outcome.push(Pruned {
            kind: member.kind.clone(),
            namespace: member.namespace.clone(),
            name: member.name.clone(),
            action: action.into(),
        });
    }
    outcome.extend(plan.keep.iter().map(|member| Pruned {
        kind: member.kind.clone(),
        namespace: member.namespace.clone(),
        name: member.name.clone(),
        action: "kept".into(),
    }));
    // The inventory without what was pruned.
    let key = set_key(request);
    for _ in 0..5 {
        let mut current = match store.get(&key).await {
            Ok(current) => current,
            Err(error) => return Err(error.into()),
        };
        let pruned: BTreeSet<&ApplySetMember> = plan.prune.iter().filter(|m| !left.contains(m)).collect();
        let written = if pruned.is_empty() {
            Ok(current)
        } else {
            let spec: ApplySetSpec = serde_json::from_value(current.spec.clone()).unwrap_or_default();
            let members: Vec<ApplySetMember> = spec.members.into_iter().filter(|m| !pruned.contains(m)).collect();
            current.spec = json!(ApplySetSpec { members });
            store.update(current).await
        };
        match written {
            Ok(mut updated) => {
                let status = ApplySetStatus {
                    last_apply_time: Some(Utc::now()),
                    last_pruned: outcome
                        .iter()
                        .filter(|p| p.action == "deleted")
                        .map(|p| format!("{}/{}/{}", p.kind.to_ascii_lowercase(), p.namespace, p.name))
                        .collect(),
                    kept: plan.keep.iter().map(label).collect(),
                };
                updated.status = json!(status);
                record_events(store, &updated, &outcome).await;
                match store.update_status(updated).await {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
                return Ok(outcome);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(ApiError::not_possible(format!("applyset {} kept changing while it was pruned; apply again", request.name)))
}

/// Events on the applyset for what prune did, so that `cloud events` shows deletions nobody
/// typed.
async fn record_events(store: &dyn Store, set: &Object, outcome: &[Pruned]) {
    let Some(key) = set.key() else { return };
    for pruned in outcome {
        let object = format!("{}/{}/{}", pruned.kind.to_ascii_lowercase(), pruned.namespace, pruned.name);
        let (event_type, reason, message) = match pruned.action.as_str() {
            "deleted" => (EventType::Normal, "Pruned", format!("deleted {object}: no longer in the applied manifests")),
            "kept" => (
                EventType::Warning,
                "PruneSkipped",
                format!("kept {object}: a database is pruned only with --prune-stateful"),
            ),
            "released" => (
                EventType::Normal,
                "Released",
                format!("let go of {object}: it was applied outside the set since; not deleted"),
            ),
            _ => continue,
        };
        let event = NewEvent {
            object: key.clone(),
            uid: set.metadata.uid.clone().unwrap_or_default(),
            event_type,
            reason: reason.into(),
            message,
        };
        if let Err(error) = store.record_event(event).await {
            tracing::warn!(%error, "cannot record a prune event");
        }
    }
}

/// Deletes one member no longer applied, if it still carries the set's mark and is unchanged
/// since it was read (a conflict leaves it in the set for the next apply).
async fn delete_member(store: &dyn Store, key: &ObjectKey, mine: &str) -> Result<&'static str, StoreError> {
    let live = match store.get(key).await {
        Ok(live) => live,
        Err(StoreError::NotFound(_)) => return Ok("gone"),
        Err(error) => return Err(error),
    };
    if live.metadata.annotations.get(PART_OF_ANNOTATION).map(String::as_str) != Some(mine) {
        return Ok("released");
    }
    match store.delete(key, live.metadata.resource_version.as_deref()).await {
        Ok(_) => Ok("deleted"),
        Err(StoreError::NotFound(_)) => Ok("gone"),
        Err(error) => Err(error),
    }
}

/// What prune would do, for a dry run: nothing is deleted.
pub async fn preview(store: &dyn Store, request: &ApplySetRequest, plan: &Plan) -> Result<Vec<Pruned>, ApiError> {
    let mine = owner(request);
    let row = |member: &ApplySetMember, action: &str| Pruned {
        kind: member.kind.clone(),
        namespace: member.namespace.clone(),
        name: member.name.clone(),
        action: action.into(),
    };
    let mut rows = Vec::new();
    for member in &plan.prune {
        let Some(key) = key_of(member) else { continue };
        let action = match store.get(&key).await {
            Err(StoreError::NotFound(_)) => "gone",
            Err(error) => return Err(error.into()),
            Ok(live) if live.metadata.annotations.get(PART_OF_ANNOTATION) != Some(&mine) => "released",
            Ok(_) => "deleted",
        };
        rows.push(row(member, action));
    }
    rows.extend(plan.keep.iter().map(|member| row(member, "kept")));
    Ok(rows)
}
