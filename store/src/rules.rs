//! The rules of the object lifecycle, independent of any database: what a create, update,
//! status update or delete does to a stored object. Each backend reads the stored object,
//! asks these functions for a [`Plan`], and carries it out in one transaction.

use chrono::{DateTime, Utc};
use minicloud_crds::{Kind, Object, ObjectKey};

use super::{StoreError, StoreResult};

/// Largest encoded size (JSON bytes) of one object, as Kubernetes' 1.5 MiB: the change log
/// keeps a copy of every version, so one huge object would multiply.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Refuses an object whose encoded size exceeds [`MAX_OBJECT_BYTES`].
pub(crate) fn check_size(object: &Object, key: &ObjectKey) -> StoreResult<()> {
    let size = serde_json::to_vec(object)?.len();
    if size > MAX_OBJECT_BYTES {
        return Err(StoreError::TooLarge { key: key.clone(), size, limit: MAX_OBJECT_BYTES });
    }
    Ok(())
}

/// The keys of a batch, refusing one object named twice.
pub fn batch_keys(writes: &[super::Write]) -> StoreResult<Vec<ObjectKey>> {
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::with_capacity(writes.len());
    for write in writes {
        let (super::Write::Create(object) | super::Write::Update(object)) = write;
        let key = key_of(object)?;
        if !seen.insert(key.clone()) {
            return Err(StoreError::Invalid(format!("{key} appears twice in one batch")));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// What a write will do.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Nothing changes; no revision is taken.
    Unchanged(Object),
    /// Store this object (the revision is stamped when it is written).
    Write(Object),
    /// Remove the object; this is its final state.
    Remove(Object),
}

/// The identity of an object, refusing unknown kinds and missing names.
pub fn key_of(object: &Object) -> StoreResult<ObjectKey> {
    let kind = Kind::from_kind_name(&object.kind)
        .ok_or_else(|| StoreError::Invalid(format!("unknown kind {:?}", object.kind)))?;
    if let Err(reason) = minicloud_crds::validation::check_dns_label(&object.metadata.name) {
        return Err(StoreError::Invalid(format!("metadata.name: {reason}")));
    }
    if let Err(reason) = minicloud_crds::validation::check_dns_label(object.namespace()) {
        return Err(StoreError::Invalid(format!("metadata.namespace: {reason}")));
    }
    Ok(ObjectKey::new(kind, object.namespace(), object.metadata.name.clone()))
}

/// Sets the fields the store owns on a new object, refusing one that is too large.
pub fn prepare_create(object: Object, key: &ObjectKey, now: DateTime<Utc>) -> StoreResult<Object> {
    let object = fill_create(object, now);
    check_size(&object, key)?;
    Ok(object)
}

fn fill_create(mut object: Object, now: DateTime<Utc>) -> Object {
    let meta = &mut object.metadata;
    meta.namespace = Some(meta.namespace_or_default().to_owned());
    meta.uid = Some(uuid::Uuid::new_v4().to_string());
    meta.generation = Some(1);
    meta.resource_version = None;
    meta.creation_timestamp = Some(now);
    meta.deletion_timestamp = None;
    object.status = serde_json::Value::Null;
    object
}

/// Stamps the revision a write took.
pub fn stamp(object: &mut Object, revision: i64) {
    object.metadata.resource_version = Some(revision.to_string());
}

/// Refuses a write whose resourceVersion does not match the stored object's.
pub(crate) fn check_version(stored: &Object, key: &ObjectKey, sent: Option<&str>) -> StoreResult<()> {
    let current = stored.metadata.resource_version.clone().unwrap_or_default();
    match sent {
        Some(sent) if !sent.is_empty() && sent != current => {
            Err(StoreError::Conflict { key: key.clone(), sent: sent.to_owned(), current })
        }
        _ => Ok(()),
    }
}

/// An update of spec and user-owned metadata.
pub fn prepare_update(stored: &Object, key: &ObjectKey, incoming: Object) -> StoreResult<Plan> {
    check_version(stored, key, incoming.metadata.resource_version.as_deref())?;
    if let (Some(sent), Some(uid)) = (&incoming.metadata.uid, &stored.metadata.uid) {
        if sent != uid {
            return Err(StoreError::Conflict {
                key: key.clone(),
                sent: format!("uid {sent}"),
                current: format!("uid {uid}"),
            });
        }
    }
    let mut next = stored.clone();
    if stored.metadata.deletion_timestamp.is_some() {
        if let Some(added) = incoming.metadata.finalizers.iter().find(|f| !stored.metadata.finalizers.contains(f)) {
            return Err(StoreError::Invalid(format!(
                "{key} is being deleted; finalizer {added:?} cannot be added now"
            )));
        }
    }
    next.metadata.labels = incoming.metadata.labels;
    next.metadata.annotations = incoming.metadata.annotations;
    next.metadata.finalizers = incoming.metadata.finalizers;
    next.metadata.owner_references = incoming.metadata.owner_references;
    if next.spec != incoming.spec {
        next.spec = incoming.spec;
        next.metadata.generation = Some(stored.metadata.generation.unwrap_or(0) + 1);
    }
    finish(stored, key, next)
}

/// An update of the status only.
pub fn prepare_status(stored: &Object, key: &ObjectKey, incoming: Object) -> StoreResult<Plan> {
    check_version(stored, key, incoming.metadata.resource_version.as_deref())?;
    let mut next = stored.clone();
    next.status = incoming.status;
    finish(stored, key, next)
}

/// A delete request: remove now, or mark for deletion while finalizers remain.
pub fn prepare_delete(stored: &Object, key: &ObjectKey, sent: Option<&str>, now: DateTime<Utc>) -> StoreResult<Plan> {
    check_version(stored, key, sent)?;
    if stored.metadata.finalizers.is_empty() {
        return Ok(Plan::Remove(stored.clone()));
    }
    if stored.metadata.deletion_timestamp.is_some() {
        return Ok(Plan::Unchanged(stored.clone()));
    }
    let mut next = stored.clone();
    next.metadata.deletion_timestamp = Some(now);
    Ok(Plan::Write(next))
}

/// Unchanged when nothing differs; removal when a terminating object lost its last finalizer;
/// otherwise a write, if the result is not too large.
fn finish(stored: &Object, key: &ObjectKey, next: Object) -> StoreResult<Plan> {
    if next.metadata.deletion_timestamp.is_some() && next.metadata.finalizers.is_empty() {
        Ok(Plan::Remove(next))
    } else if &next == stored {
        Ok(Plan::Unchanged(next))
    } else {
        check_size(&next, key)?;
        Ok(Plan::Write(next))
    }
}

/// The owner uids of an object as stored for lookups: ` uid1 uid2 ` (space-delimited, so a
/// `LIKE '% uid %'` match is exact).
pub fn owner_column(object: &Object) -> String {
    let mut column = String::from(" ");
    for owner in &object.metadata.owner_references {
        column.push_str(&owner.uid);
        column.push(' ');
    }
    column
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> Object {
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance",
            "metadata": {"name": "web"}, "spec": spec
        }))
        .expect("object")
    }

    fn stored() -> Object {
        let mut object = prepare_create(object(json!({"image": "a"})), &key(), Utc::now()).expect("small object");
        stamp(&mut object, 7);
        object
    }

    fn key() -> ObjectKey {
        ObjectKey::new(Kind::Instance, "default", "web")
    }

    #[test]
    fn generation_moves_only_with_spec() {
        let stored = stored();
        let mut relabelled = stored.clone();
        relabelled.metadata.labels.insert("app".into(), "web".into());
        let Plan::Write(next) = prepare_update(&stored, &key(), relabelled).expect("plan") else {
            panic!("write expected")
        };
        assert_eq!(next.metadata.generation, Some(1));
        let mut respecced = stored.clone();
        respecced.spec = json!({"image": "b"});
        let Plan::Write(next) = prepare_update(&stored, &key(), respecced).expect("plan") else {
            panic!("write expected")
        };
        assert_eq!(next.metadata.generation, Some(2));
        assert!(matches!(prepare_update(&stored, &key(), stored.clone()), Ok(Plan::Unchanged(_))));
    }

    #[test]
    fn stale_versions_conflict() {
        let stored = stored();
        let mut stale = stored.clone();
        stale.metadata.resource_version = Some("6".into());
        assert!(matches!(prepare_update(&stored, &key(), stale.clone()), Err(StoreError::Conflict { .. })));
        assert!(matches!(prepare_status(&stored, &key(), stale), Err(StoreError::Conflict { .. })));
        assert!(matches!(prepare_delete(&stored, &key(), Some("6"), Utc::now()), Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let mut stored = stored();
        stored.metadata.finalizers = vec!["minicloud.dev/container".into()];
        let Plan::Write(terminating) = prepare_delete(&stored, &key(), None, Utc::now()).expect("plan") else {
            panic!("write expected")
        };
        assert!(terminating.metadata.deletion_timestamp.is_some());
        let mut adding = terminating.clone();
        adding.metadata.finalizers.push("other".into());
        assert!(matches!(prepare_update(&terminating, &key(), adding), Err(StoreError::Invalid(_))));
        let mut released = terminating.clone();
        released.metadata.finalizers.clear();
        assert!(matches!(prepare_update(&terminating, &key(), released), Ok(Plan::Remove(_))));
    }
}
