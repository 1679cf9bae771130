//! The store contract: where objects live. One trait ([`Store`]), implemented over SQL for
//! SQLite (the embedded default) and PostgreSQL (production) by the application (`SqlStore`, in
//! the root package, the only place that knows SQL), and in memory here ([`MemoryStore`]); all
//! pass one shared test suite. This crate has no database driver: the controllers depend on it
//! and see the store only through the trait.
//!
//! What the contract promises:
//! - one global, monotonic revision; every write takes the next one and stamps it on the
//!   object as `metadata.resourceVersion`;
//! - optimistic concurrency: an update naming a stale resourceVersion is a `Conflict`;
//! - `generation` changes only when `spec` changes; status is written separately;
//! - delete honours finalizers (sets `deletionTimestamp`; the object goes with the last
//!   finalizer) and cascades to objects whose `ownerReferences` name it;
//! - watch from any retained revision delivers every later change once, in revision order;
//!   older revisions are compacted and a watch from before them is `Expired` (re-list).
//!
//! The rules that decide what a write does are in [`rules`], independent of any database.
//! [`MemoryStore`] keeps the same contract in memory, for unit tests of reconcile decisions.

pub mod memory;
pub mod rules;
pub mod selector;

use std::pin::Pin;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::Stream;
use minicloud_crds::{Kind, Object, ObjectKey};
use serde::{Deserialize, Serialize};

pub use self::memory::MemoryStore;
pub use self::selector::Selector;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    #[error("conflict on {key}: you sent resourceVersion {sent} but the object is at {current}; get it again, reapply your change and retry")]
    Conflict { key: ObjectKey, sent: String, current: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{key} would take {size} bytes encoded, more than the limit of {limit} bytes per object; keep large data out of annotations and specs (mount it from a volume or a Secret)")]
    TooLarge { key: ObjectKey, size: usize, limit: usize },
    #[error("revision {requested} has been compacted (oldest retained change is after {compacted}); list again and watch from the list's revision")]
    Expired { requested: i64, compacted: i64 },
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// The database failed or could not be reached (the backend's own error inside).
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored object is not valid JSON ({0}); the database may have been edited by hand")]
    Corrupt(#[from] serde_json::Error),
    /// A Secret's values cannot be sealed or opened (a missing key, an altered ciphertext).
    #[error("{0}")]
    Secret(String),
}

/// Moves a watch head forward to `revision` (never back), waking watchers when it moved.
pub fn advance_head(head: &tokio::sync::watch::Sender<i64>, revision: i64) {
    head.send_if_modified(|current| {
        let newer = revision > *current;
        *current = (*current).max(revision);
        newer
    });
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which objects a list or watch covers.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// One kind, or every kind.
    pub kind: Option<Kind>,
    /// One namespace, or every namespace.
    pub namespace: Option<String>,
    /// Only objects whose labels match.
    pub selector: Selector,
}

impl Query {
    /// All objects of one kind in one namespace.
    pub fn namespaced(kind: Kind, namespace: &str) -> Query {
        Query { kind: Some(kind), namespace: Some(namespace.to_owned()), selector: Selector::default() }
    }

    /// Whether an object falls under the query.
    pub fn matches(&self, object: &Object) -> bool {
        self.covers(&object.kind, object.namespace(), &object.metadata.labels)
    }

    /// Whether an object of `kind` in `namespace` with `labels` falls under the query (for
    /// callers that have not decoded the whole object).
    pub fn covers(&self, kind: &str, namespace: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.kind.is_none_or(|wanted| wanted.as_str() == kind)
            && self.namespace.as_deref().is_none_or(|wanted| wanted == namespace)
            && self.selector.matches(labels)
    }
}

/// The result of a list: the objects and the revision they were read at (watch from it).
#[derive(Clone, Debug)]
pub struct ObjectList {
    pub revision: i64,
    pub items: Vec<Object>,
}

/// One piece of a streamed list (see [`Store::list_raw`]).
#[derive(Clone, Debug, PartialEq)]
pub enum RawItem {
    /// First: the revision the list is read at.
    Revision(i64),
    /// Then each object, as its stored JSON document.
    Document(String),
}

/// Kind of change a watch reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }

    pub fn parse(text: &str) -> Option<ChangeType> {
        match text {
            "ADDED" => Some(ChangeType::Added),
            "MODIFIED" => Some(ChangeType::Modified),
            "DELETED" => Some(ChangeType::Deleted),
            _ => None,
        }
    }
}

/// One change, as a watch delivers it: the object as it was right after the change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub change: ChangeType,
    pub revision: i64,
    pub object: Object,
}

/// One write of a batch (see [`Store::write_all`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create this object (`AlreadyExists` when its name is taken).
    Create(Object),
    /// Update spec and user metadata, as [`Store::update`] does (a set resourceVersion must
    /// match).
    Update(Object),
}

/// A never-ending stream of changes; it ends only with an error (e.g. `Expired`).
pub type WatchStream = Pin<Box<dyn Stream<Item = StoreResult<WatchEvent>> + Send>>;

/// One change with the object as its stored JSON document (see [`Store::watch_raw`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RawChange {
    pub change: ChangeType,
    pub revision: i64,
    /// The object right after the change, as JSON; shared between watchers where the backend
    /// can.
    pub document: std::sync::Arc<str>,
}

/// [`WatchStream`] with documents.
pub type RawWatchStream = Pin<Box<dyn Stream<Item = StoreResult<RawChange>> + Send>>;

/// What a delete did.
#[derive(Clone, Debug, PartialEq)]
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Object),
    /// Finalizers hold it: `deletionTimestamp` is set and it goes when they are removed.
    Terminating(Object),
}

/// Normal events record progress; warnings record trouble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An event to record about an object.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub object: ObjectKey,
    pub uid: String,
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
}

/// A recorded event; repeats of the same type, reason and message raise `count`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: i64,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
    pub count: i64,
    pub first_timestamp: DateTime<Utc>,
    pub last_timestamp: DateTime<Utc>,
}

/// The store contract. Reconcilers and the API server see the store only through it.
#[async_trait]
pub trait Store: Send + Sync {
    /// The identity of this store, the same for every replica on one database; stamped on the
    /// Docker objects the control plane creates.
    fn cluster_id(&self) -> &str;

    /// Creates an object; the store assigns uid, generation 1, resourceVersion and
    /// creationTimestamp, and ignores any status. `AlreadyExists` when the name is taken.
    async fn create(&self, object: Object) -> StoreResult<Object> {
        let mut created = self.create_all(vec![object]).await?;
        created.pop().ok_or_else(|| StoreError::Invalid("nothing was created".into()))
    }

    /// Creates several objects atomically: all or none.
    async fn create_all(&self, objects: Vec<Object>) -> StoreResult<Vec<Object>> {
        self.write_all(objects.into_iter().map(Write::Create).collect()).await
    }

    /// Carries out creates and updates in one transaction: all of them or none. The error is
    /// the first failing write's, which names its object; then nothing was written. A batch
    /// naming one object twice is `Invalid`. Returns the objects as stored, in order.
    async fn write_all(&self, writes: Vec<Write>) -> StoreResult<Vec<Object>>;

    /// Reads one object.
    async fn get(&self, key: &ObjectKey) -> StoreResult<Object>;

    /// Lists objects, with the revision they were read at.
    async fn list(&self, query: &Query) -> StoreResult<ObjectList>;

    /// Lists objects like [`Store::list`], streaming the stored JSON documents into `sink`
    /// (first the revision, then the documents in order) without decoding them, so that even a
    /// large list is never held in memory at once. Stops early when the receiver goes away.
    async fn list_raw(&self, query: &Query, sink: tokio::sync::mpsc::Sender<RawItem>) -> StoreResult<()>;

    /// Replaces spec, labels, annotations, finalizers and owner references. A set
    /// resourceVersion must match the stored one (`Conflict` otherwise). An update that
    /// changes nothing writes nothing and returns the object as stored.
    async fn update(&self, object: Object) -> StoreResult<Object>;

    /// Replaces the status only (controllers), with the same resourceVersion rule.
    async fn update_status(&self, object: Object) -> StoreResult<Object>;

    /// Deletes an object (see [`Deleted`]); with `resource_version`, only if it still matches.
    async fn delete(&self, key: &ObjectKey, resource_version: Option<&str>) -> StoreResult<Deleted>;

    /// Watches changes after `revision` (exclusive).
    async fn watch(&self, query: Query, revision: i64) -> StoreResult<WatchStream>;

    /// Like [`Store::watch`], each change with the object as its JSON document instead of
    /// decoded, for relaying to clients. A backend serving many watchers encodes each change
    /// once and shares it; by default every change is encoded for this watcher.
    async fn watch_raw(&self, query: Query, revision: i64) -> StoreResult<RawWatchStream> {
        use futures::StreamExt;
        let events = self.watch(query, revision).await?;
        Ok(Box::pin(events.map(|event| {
            let event = event?;
            let document = serde_json::to_string(&event.object)?;
            Ok(RawChange { change: event.change, revision: event.revision, document: document.into() })
        })))
    }

    /// The newest revision.
    async fn revision(&self) -> StoreResult<i64>;

    /// `Ok` when writes can commit. A store whose last write failed in the database (disk
    /// full, I/O) tries a write now: `Err` says why it cannot write. (For readiness.)
    async fn check_writable(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Drops change-log entries up to and including `revision`; returns the compacted revision.
    async fn compact(&self, revision: i64) -> StoreResult<i64>;

    /// The revision up to which the change log must be compacted so that the changes after it
    /// take at most `bytes` bytes (encoded); 0 when they fit already.
    async fn compaction_point_for_bytes(&self, bytes: u64) -> StoreResult<i64>;

    /// Records an event, folding a repeat into the previous one's count.
    async fn record_event(&self, event: NewEvent) -> StoreResult<Event>;

    /// Events of a namespace (all namespaces when `None`), or of one object, oldest first.
    async fn events(&self, namespace: Option<&str>, object: Option<&ObjectKey>) -> StoreResult<Vec<Event>>;

    /// Deletes the events last seen before `older_than`, then the oldest beyond the newest
    /// `keep` (by last seen); returns how many went.
    async fn prune_events(&self, older_than: DateTime<Utc>, keep: usize) -> StoreResult<u64>;

    /// A token that changes whenever an event is recorded, new or repeated: events are not
    /// objects and have no watch, so a client showing them compares heads to know when to read
    /// them again. By default computed from every event; a backend answers from an index.
    async fn events_head(&self) -> StoreResult<String> {
        let events = self.events(None, None).await?;
        let newest = events.iter().map(|event| event.id).max().unwrap_or(0);
        let latest = events.iter().map(|event| event.last_timestamp).max();
        Ok(format!("{newest}:{}", latest.map(|time| time.to_rfc3339()).unwrap_or_default()))
    }

    /// Wakes whenever this process records an event; `None` when the backend cannot say, and
    /// events recorded by other processes sharing the database are seen only by asking
    /// [`Store::events_head`] again.
    fn event_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// How much of the change log and of the events the compactor keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many revisions.
    pub revisions: i64,
    /// At most this many bytes of changes (one huge object changed often fills bytes long
    /// before it fills revisions).
    pub bytes: u64,
    /// Events last seen longer ago than this go.
    pub event_age: std::time::Duration,
    /// At most this many events (the most recently seen).
    pub events: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            revisions: 100_000,
            bytes: 256 * 1024 * 1024,
            event_age: std::time::Duration::from_secs(7 * 24 * 3600),
            events: 20_000,
        }
    }
}

/// Compacts the change log once to what `retention` keeps; returns the compacted revision.
pub async fn compact_to(store: &dyn Store, retention: Retention) -> StoreResult<i64> {
    let head = store.revision().await?;
    let by_count = head - retention.revisions;
    let by_bytes = store.compaction_point_for_bytes(retention.bytes).await?;
    store.compact(by_count.max(by_bytes).max(0)).await
}

/// Prunes the events `retention` does not keep; returns how many went.
pub(crate) async fn prune_events_to(store: &dyn Store, retention: Retention) -> StoreResult<u64> {
    let age = chrono::Duration::from_std(retention.event_age).unwrap_or(chrono::Duration::MAX);
    let older_than = Utc::now().checked_sub_signed(age).unwrap_or(DateTime::<Utc>::MIN_UTC);
    store.prune_events(older_than, retention.events).await
}

/// Keeps the change log and the events short: every `every`, compacts and prunes what
/// `retention` does not keep. Watchers further behind get `Expired` and re-list. Runs forever
/// (the server runs it under a lease, on one replica at a time).
pub async fn compact_forever(store: std::sync::Arc<dyn Store>, retention: Retention, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if let Err(error) = compact_to(store.as_ref(), retention).await {
            tracing::warn!(%error, "change-log compaction failed; retrying later");
        }
        if let Err(error) = prune_events_to(store.as_ref(), retention).await {
            tracing::warn!(%error, "event pruning failed; retrying later");
        }
    }
}
