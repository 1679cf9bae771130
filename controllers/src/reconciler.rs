//! The reconcile toolkit every controller is written against.
//!
//! A controller implements [`Controller`]: which kind, which finalizer, and two steps —
//! [`Controller::apply`] (drive a live object toward its spec) and [`Controller::cleanup`]
//! (remove what a deleted object owns). Everything around them is written once, here, in
//! [`reconcile`]: fetch the object, act on NotFound ([`Controller::gone`]), decode it into the
//! kind's typed resource, add the finalizer before anything outside the store is created,
//! and release it once `cleanup` says done. Both steps get a [`Context`]: the object as
//! stored (kept current across status writes), its events and its status.
//!
//! A round ends with an [`Action`] (await a change, come back after a while, retry at once) or
//! a [`ReconcileError`] that keeps its cause, so that the runtime can treat a write conflict
//! (retry now), a spec that cannot work (wait for a change) and an engine outage (back off)
//! differently, and count each apart.

use std::time::Duration;

use async_trait::async_trait;
use minicloud_crds::{Kind, Object, ObjectKey};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::docker::DriverError;
use crate::meta::{ensure_finalizer, remove_finalizer, FinalizerUpdate};
use minicloud_store::{EventType, NewEvent, Store, StoreError};

/// What the runtime does with an object after a round that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the object, a child or a watched kind changes (or the resync comes).
    AwaitChange,
    /// Look again after this long: something is starting, draining or being polled.
    RequeueAfter(Duration),
    /// Someone else wrote the object meanwhile: reconcile again at once, with its new version.
    RetryNow,
}

impl Action {
    /// When to come back, for the queue.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Action::AwaitChange => None,
            Action::RequeueAfter(delay) => Some(delay),
            Action::RetryNow => Some(Duration::ZERO),
        }
    }
}

/// A round that failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store refused or failed (a conflict, an object gone, the database away).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container engine refused or failed.
    #[error(transparent)]
    Engine(#[from] DriverError),
    /// The object cannot work as written; only a change of it helps.
    #[error("{0}")]
    InvalidSpec(String),
    /// Anything else, already reported in the object's status; retried with backoff.
    #[error("{0}")]
    Failed(String),
}

/// What a failed round's error was about, as the runtime's backoff and metrics see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Someone else wrote the object meanwhile: retried at once, without backoff.
    Conflict,
    /// The store failed: backoff.
    Store,
    /// The engine cannot be reached: backoff.
    EngineUnreachable,
    /// The engine refused: backoff.
    Engine,
    /// The spec cannot work: not retried until the object changes.
    InvalidSpec,
    /// Reported in status: backoff.
    Failed,
}

impl Cause {
    /// The label value in `minicloud_reconcile_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Conflict => "conflict",
            Cause::Store => "store",
            Cause::EngineUnreachable => "engine_unreachable",
            Cause::Engine => "engine",
            Cause::InvalidSpec => "invalid_spec",
            Cause::Failed => "failed",
        }
    }
}

impl ReconcileError {
    /// The cause the runtime acts on.
    pub fn cause(&self) -> Cause {
        match self {
            ReconcileError::Store(StoreError::Conflict { .. }) => Cause::Conflict,
            ReconcileError::Store(_) => Cause::Store,
            ReconcileError::Engine(error) if error.is_unreachable() => Cause::EngineUnreachable,
            ReconcileError::Engine(_) => Cause::Engine,
            ReconcileError::InvalidSpec(_) => Cause::InvalidSpec,
            ReconcileError::Failed(_) => Cause::Failed,
        }
    }
}

/// What [`Controller::cleanup`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Everything the object owned is gone: the finalizer is released.
    Done,
    /// Still in progress (a drain, a final snapshot): the finalizer stays.
    Pending(Action),
}

/// One object during one round: as stored (current across the round's own writes), with its
/// events and status.
pub struct Context<'a> {
    store: &'a dyn Store,
    object: Object,
    key: ObjectKey,
}

impl<'a> Context<'a> {
    /// The context of `object` (stored under `key`).
    pub fn new(store: &'a dyn Store, object: Object, key: ObjectKey) -> Context<'a> {
        Context { store, object, key }
    }

    /// The object as stored now.
    pub fn object(&self) -> &Object {
        &self.object
    }

    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    pub fn namespace(&self) -> &str {
        &self.key.namespace
    }

    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn uid(&self) -> &str {
        self.object.metadata.uid.as_deref().unwrap_or_default()
    }

    /// The generation the round works on (`observedGeneration` once done).
    pub fn generation(&self) -> i64 {
        self.object.metadata.generation.unwrap_or(1)
    }

    /// Records an event about the object; a store that cannot take it is logged, not fatal.
    pub async fn event(&self, event_type: EventType, reason: &str, message: impl Into<String>) {
        record_event(self.store, &self.object, event_type, reason, message.into()).await
    }

    /// Writes `status` when it differs from the stored one, keeping the object current (its
    /// new resourceVersion) so that a later write in the same round does not conflict with
    /// this one. A conflict or a vanished object is not an error: its watch event brings the
    /// object back.
    pub(crate) async fn write_status(&mut self, status: &impl Serialize) -> Result<(), ReconcileError> {
        let value = serde_json::to_value(status).map_err(|error| ReconcileError::Failed(error.to_string()))?;
        if value == self.object.status {
            return Ok(());
        }
        let mut next = self.object.clone();
        next.status = value;
        match self.store.update_status(next).await {
            Ok(stored) => {
                self.object = stored;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Replaces the object after the round wrote it through the store itself.
    pub fn stored(&mut self, object: Object) {
        self.object = object;
    }
}

/// Records an event about `object`; a store that cannot take it is logged, not fatal.
pub async fn record_event(store: &dyn Store, object: &Object, event_type: EventType, reason: &str, message: String) {
    let Some(key) = object.key() else { return };
    let event = NewEvent {
        object: key,
        uid: object.metadata.uid.clone().unwrap_or_default(),
        event_type,
        reason: reason.to_owned(),
        message,
    };
    if let Err(error) = store.record_event(event).await {
        tracing::warn!(%error, "cannot record an event");
    }
}

/// One kind's controller, as the toolkit drives it.
#[async_trait]
pub trait Controller: Send + Sync + 'static {
    /// The typed resource an object decodes into.
    type Resource: DeserializeOwned + Send;
    /// The kind reconciled.
    const KIND: Kind;
    /// Held while the object owns something outside the store; `None` when deletion needs no
    /// cleanup outside the store (the store's cascade deletes the children).
    const FINALIZER: Option<&'static str>;

    fn store(&self) -> &dyn Store;

    /// Kinds of the objects this kind owns: any change of one of them (status included) wakes
    /// the owner named in its `ownerReferences`.
    fn child_kinds(&self) -> Vec<Kind> {
        Vec::new()
    }

    /// Kinds whose changes (status included) wake every object of this kind in the same
    /// namespace: for relations found by selectors rather than owner references.
    fn watched_kinds(&self) -> Vec<Kind> {
        Vec::new()
    }

    /// Kinds whose changes (status included) wake every object of this kind, in every
    /// namespace: for relations that cross namespaces (a Route attached to a LoadBalancer of
    /// another namespace).
    fn watched_everywhere(&self) -> Vec<Kind> {
        Vec::new()
    }

    /// Drives a live object toward its spec; the finalizer is in place.
    async fn apply(&self, ctx: &mut Context<'_>, resource: Self::Resource) -> Result<Action, ReconcileError>;

    /// Removes what a deleted object owns. `Cleanup::Done` releases the finalizer.
    async fn cleanup(&self, ctx: &mut Context<'_>, resource: Self::Resource) -> Result<Cleanup, ReconcileError>;

    /// The object is gone from the store (its finalizer released, or removed by hand): forget
    /// what is remembered about it and make sure nothing of it is left.
    async fn gone(&self, _key: &ObjectKey) -> Result<(), ReconcileError> {
        Ok(())
    }
}

/// The object-safe face of a controller, as the runtime calls it.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The kind reconciled.
    fn kind(&self) -> Kind;
    /// See [`Controller::child_kinds`].
    fn child_kinds(&self) -> Vec<Kind>;
    /// See [`Controller::watched_kinds`].
    fn watched_kinds(&self) -> Vec<Kind>;
    /// See [`Controller::watched_everywhere`].
    fn watched_everywhere(&self) -> Vec<Kind>;
    /// One round for the object under `key`.
    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError>;
}

#[async_trait]
impl<C: Controller> Reconciler for C {
    fn kind(&self) -> Kind {
        C::KIND
    }

    fn child_kinds(&self) -> Vec<Kind> {
        Controller::child_kinds(self)
    }

    fn watched_kinds(&self) -> Vec<Kind> {
        Controller::watched_kinds(self)
    }

    fn watched_everywhere(&self) -> Vec<Kind> {
        Controller::watched_everywhere(self)
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        reconcile(self, key).await
    }
}

/// One round: fetch, NotFound, decode, deletion and finalizer, then `apply` or `cleanup`.
pub async fn reconcile<C: Controller>(controller: &C, key: &ObjectKey) -> Result<Action, ReconcileError> {
    let store = controller.store();
    let object = match store.get(key).await {
        Ok(object) => object,
        Err(StoreError::NotFound(_)) => {
            controller.gone(key).await?;
            return Ok(Action::AwaitChange);
        }
        Err(error) => return Err(error.into()),
    };
    let resource: C::Resource = serde_json::to_value(&object)
        .and_then(serde_json::from_value)
        .map_err(|error| ReconcileError::InvalidSpec(format!("{key} does not decode as a {}: {error}", C::KIND)))?;
    let deleting = object.metadata.deletion_timestamp.is_some();
    let object = match (C::FINALIZER, deleting) {
        (Some(finalizer), false) => match ensure_finalizer(store, object, finalizer).await? {
            FinalizerUpdate::Done(object) => *object,
            FinalizerUpdate::Conflict => return Ok(Action::RetryNow),
        },
        _ => object,
    };
    let mut ctx = Context::new(store, object, key.clone());
    if !deleting {
        return controller.apply(&mut ctx, resource).await;
    }
    match controller.cleanup(&mut ctx, resource).await? {
        Cleanup::Pending(action) => Ok(action),
        Cleanup::Done => {
            let Some(finalizer) = C::FINALIZER else { return Ok(Action::AwaitChange) };
            match remove_finalizer(store, &ctx.object, finalizer).await? {
                FinalizerUpdate::Done(_) => Ok(Action::AwaitChange),
                FinalizerUpdate::Conflict => Ok(Action::RetryNow),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The round's plumbing against the in-memory store, with a controller that only records.

    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use minicloud_crds::kinds::Stack;
    use minicloud_store::{Deleted, MemoryStore};

    const FINALIZER: &str = "test/cleanup";

    #[derive(Default)]
    struct Recorder {
        store: Arc<MemoryStore>,
        steps: Mutex<Vec<&'static str>>,
        pending_cleanups: Mutex<u32>,
    }

    #[async_trait]
    impl Controller for Recorder {
        type Resource = Stack;
        const KIND: Kind = Kind::Stack;
        const FINALIZER: Option<&'static str> = Some(FINALIZER);

        fn store(&self) -> &dyn Store {
            self.store.as_ref()
        }

        async fn apply(&self, ctx: &mut Context<'_>, _: Stack) -> Result<Action, ReconcileError> {
            assert!(ctx.object().metadata.finalizers.iter().any(|f| f == FINALIZER), "finalizer first");
            self.steps.lock().expect("lock").push("apply");
            ctx.write_status(&json!({"observedGeneration": ctx.generation()})).await?;
            // A second write in the same round does not conflict with the first.
            ctx.write_status(&json!({"observedGeneration": ctx.generation(), "phase": "Ready"})).await?;
            Ok(Action::AwaitChange)
        }

        async fn cleanup(&self, _: &mut Context<'_>, _: Stack) -> Result<Cleanup, ReconcileError> {
            self.steps.lock().expect("lock").push("cleanup");
            let mut pending = self.pending_cleanups.lock().expect("lock");
            if *pending > 0 {
                *pending -= 1;
                return Ok(Cleanup::Pending(Action::RequeueAfter(Duration::from_secs(1))));
            }
            Ok(Cleanup::Done)
        }

        async fn gone(&self, _: &ObjectKey) -> Result<(), ReconcileError> {
            self.steps.lock().expect("lock").push("gone");
            Ok(())
        }
    }

    fn key() -> ObjectKey {
        ObjectKey::new(Kind::Stack, "default", "blog")
    }

    async fn create(store: &MemoryStore, spec: serde_json::Value) {
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Stack", "metadata": {"name": "blog"}, "spec": spec
        }))
        .expect("object");
        store.create(object).await.expect("create");
    }

    #[tokio::test]
    async fn a_round_guards_applies_cleans_up_and_releases() {
        let recorder = Recorder { pending_cleanups: Mutex::new(1), ..Recorder::default() };
        create(&recorder.store, json!({"resources": []})).await;
        assert_eq!(recorder.reconcile(&key()).await.expect("apply"), Action::AwaitChange);
        let stored = recorder.store.get(&key()).await.expect("stored");
        assert_eq!(stored.metadata.finalizers, [FINALIZER]);
        assert_eq!(stored.status["phase"], "Ready");

        assert!(matches!(recorder.store.delete(&key(), None).await, Ok(Deleted::Terminating(_))));
        let pending = recorder.reconcile(&key()).await.expect("cleanup");
        assert_eq!(pending, Action::RequeueAfter(Duration::from_secs(1)), "the controller's answer");
        assert!(recorder.store.get(&key()).await.is_ok(), "held while the cleanup is pending");
        assert_eq!(recorder.reconcile(&key()).await.expect("cleanup"), Action::AwaitChange);
        assert!(matches!(recorder.store.get(&key()).await, Err(StoreError::NotFound(_))), "released");
        recorder.reconcile(&key()).await.expect("gone");
        assert_eq!(*recorder.steps.lock().expect("lock"), ["apply", "cleanup", "cleanup", "gone"]);
    }

    #[tokio::test]
    async fn an_object_that_does_not_decode_waits_for_a_change() {
        let recorder = Recorder::default();
        create(&recorder.store, json!({"resources": "not a list"})).await;
        let error = recorder.reconcile(&key()).await.expect_err("does not decode");
        assert_eq!(error.cause(), Cause::InvalidSpec);
        assert!(error.to_string().contains("does not decode as a Stack"), "{error}");
        assert!(recorder.steps.lock().expect("lock").is_empty(), "neither step ran");
    }

    #[test]
    fn causes_keep_their_source() {
        let key = key();
        let conflict = ReconcileError::from(StoreError::Conflict { key, sent: "1".into(), current: "2".into() });
        assert_eq!(conflict.cause(), Cause::Conflict);
        assert_eq!(ReconcileError::from(DriverError::Unreachable("gone".into())).cause(), Cause::EngineUnreachable);
        assert_eq!(ReconcileError::from(DriverError::Refused("no".into())).cause(), Cause::Engine);
        assert_eq!(ReconcileError::Failed("x".into()).cause(), Cause::Failed);
    }
}
