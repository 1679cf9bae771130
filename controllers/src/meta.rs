//! The metadata controllers write on objects: finalizers (added before anything outside the
//! store is created, removed once it is cleaned up — [`crate::reconciler`] does both for every
//! controller), owner references (children are deleted with their owner and wake it when they
//! change) and the draining annotation.

use minicloud_crds::meta::OwnerReference;
use minicloud_crds::{Object, API_VERSION};

use minicloud_store::{Store, StoreError};

/// The annotation a scaling group puts on a member it is about to delete (value: when, RFC
/// 3339): load balancers take the member out of rotation, letting its requests finish, and the
/// group deletes it once no load balancer lists it.
pub(crate) const DRAINING_ANNOTATION: &str = "minicloud.dev/draining";

/// What adding or removing a finalizer did.
#[derive(Debug)]
pub(crate) enum FinalizerUpdate {
    /// The object as stored now.
    Done(Box<Object>),
    /// Someone else wrote the object meanwhile: reconcile again.
    Conflict,
}

/// Adds `finalizer` to the object unless it is already there.
pub(crate) async fn ensure_finalizer(
    store: &dyn Store,
    object: Object,
    finalizer: &str,
) -> Result<FinalizerUpdate, StoreError> {
    if object.metadata.finalizers.iter().any(|f| f == finalizer) {
        return Ok(FinalizerUpdate::Done(Box::new(object)));
    }
    let mut guarded = object;
    guarded.metadata.finalizers.push(finalizer.to_owned());
    match store.update(guarded).await {
        Ok(updated) => Ok(FinalizerUpdate::Done(Box::new(updated))),
        Err(StoreError::Conflict { .. }) => Ok(FinalizerUpdate::Conflict),
        Err(error) => Err(error),
    }
}

/// Removes `finalizer`; the store deletes a terminating object when its last one goes.
pub(crate) async fn remove_finalizer(
    store: &dyn Store,
    object: &Object,
    finalizer: &str,
) -> Result<FinalizerUpdate, StoreError> {
    if !object.metadata.finalizers.iter().any(|f| f == finalizer) {
        return Ok(FinalizerUpdate::Done(Box::new(object.clone())));
    }
    let mut released = object.clone();
    released.metadata.finalizers.retain(|f| f != finalizer);
    match store.update(released.clone()).await {
        Ok(updated) => Ok(FinalizerUpdate::Done(Box::new(updated))),
        Err(StoreError::NotFound(_)) => Ok(FinalizerUpdate::Done(Box::new(released))),
        Err(StoreError::Conflict { .. }) => Ok(FinalizerUpdate::Conflict),
        Err(error) => Err(error),
    }
}

/// A reference to `owner` for a child's `metadata.ownerReferences` (the owner controls it).
pub(crate) fn owner_reference(owner: &Object) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.to_owned(),
        kind: owner.kind.clone(),
        name: owner.metadata.name.clone(),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use minicloud_store::{Deleted, MemoryStore};

    #[tokio::test]
    async fn finalizers_hold_and_release_and_owners_cascade() {
        let store = MemoryStore::new();
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Stack", "metadata": {"name": "blog"}, "spec": {}
        }))
        .expect("object");
        let owner = store.create(object).await.expect("create");
        let FinalizerUpdate::Done(guarded) =
            ensure_finalizer(&store, owner.clone(), "test/cleanup").await.expect("add")
        else {
            panic!("no conflict expected")
        };
        assert_eq!(guarded.metadata.finalizers, ["test/cleanup"]);
        let FinalizerUpdate::Done(again) =
            ensure_finalizer(&store, (*guarded).clone(), "test/cleanup").await.expect("add")
        else {
            panic!("no conflict expected")
        };
        assert_eq!(again.metadata.resource_version, guarded.metadata.resource_version, "no write when present");
        assert!(
            matches!(ensure_finalizer(&store, owner, "other").await, Ok(FinalizerUpdate::Conflict)),
            "stale object"
        );

        let mut child: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "blog-web"}, "spec": {"image": "web"}
        }))
        .expect("child");
        child.metadata.owner_references = vec![owner_reference(&guarded)];
        store.create(child).await.expect("child");

        let key = guarded.key().expect("key");
        let Ok(Deleted::Terminating(terminating)) = store.delete(&key, None).await else {
            panic!("held by the finalizer")
        };
        remove_finalizer(&store, &terminating, "test/cleanup").await.expect("release");
        assert!(matches!(store.get(&key).await, Err(StoreError::NotFound(_))));
        let child_key = minicloud_crds::ObjectKey::new(minicloud_crds::Kind::Instance, "default", "blog-web");
        assert!(matches!(store.get(&child_key).await, Err(StoreError::NotFound(_))), "deleted with its owner");
    }
}
