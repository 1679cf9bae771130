//! An in-memory [`Store`]: the same contract as the SQL store (it passes the same shared test
//! suite), kept in one process's memory. Reconcile decisions are unit-tested against it; it is
//! never the proof that a feature works with a real database.
//!
//! It applies the lifecycle rules of [`super::rules`] exactly as the SQL store does; only the
//! storage differs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::{Object, ObjectKey};
use tokio::sync::watch;

use super::rules::{self, Plan};
use super::{
    ChangeType, Deleted, Event, NewEvent, ObjectList, Query, RawItem, Store, StoreError, StoreResult, WatchEvent,
    WatchStream, Write,
};

#[derive(Default)]
struct State {
    objects: BTreeMap<(String, String, String), Object>,
    changes: Vec<(i64, ChangeType, Object)>,
    revision: i64,
    compacted: i64,
    events: Vec<Event>,
    /// The id of the newest event ever recorded (ids are never reused after pruning).
    last_event_id: i64,
}

/// A store in memory.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    head: Arc<watch::Sender<i64>>,
    cluster_id: String,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

fn slot(key: &ObjectKey) -> (String, String, String) {
    (key.kind.as_str().to_owned(), key.namespace.clone(), key.name.clone())
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore {
            state: Arc::default(),
            head: Arc::new(watch::Sender::new(0)),
            cluster_id: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation below is completed before the lock is released, so a poisoned lock
        // (a panic elsewhere while holding it) leaves consistent data.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, revision: i64) {
        super::advance_head(&self.head, revision);
    }
}

impl State {
    fn record(&mut self, key: &ObjectKey, mut object: Object, change: ChangeType) -> Object {
        self.revision += 1;
        rules::stamp(&mut object, self.revision);
        match change {
            ChangeType::Deleted => {
                self.objects.remove(&slot(key));
            }
            _ => {
                self.objects.insert(slot(key), object.clone());
            }
        }
        self.changes.push((self.revision, change, object.clone()));
        object
    }

    /// Carries out a plan; a removal cascades to dependents (same rules as the SQL store).
    fn apply(&mut self, key: &ObjectKey, plan: Plan) -> StoreResult<Object> {
        match plan {
            Plan::Unchanged(object) => Ok(object),
            Plan::Write(object) => Ok(self.record(key, object, ChangeType::Modified)),
            Plan::Remove(object) => {
                let removed = self.record(key, object, ChangeType::Deleted);
                let mut owners = VecDeque::from([(
                    removed.namespace().to_owned(),
                    removed.metadata.uid.clone().unwrap_or_default(),
                )]);
                while let Some((namespace, uid)) = owners.pop_front() {
                    let dependents: Vec<Object> = self
                        .objects
                        .values()
                        .filter(|o| {
                            o.namespace() == namespace && o.metadata.owner_references.iter().any(|r| r.uid == uid)
                        })
                        .cloned()
                        .collect();
                    for dependent in dependents {
                        let dependent_key = rules::key_of(&dependent)?;
                        match rules::prepare_delete(&dependent, &dependent_key, None, Utc::now())? {
                            Plan::Remove(object) => {
                                let gone = self.record(&dependent_key, object, ChangeType::Deleted);
                                owners.push_back((namespace.clone(), gone.metadata.uid.clone().unwrap_or_default()));
                            }
                            Plan::Write(object) => {
                                self.record(&dependent_key, object, ChangeType::Modified);
                            }
                            Plan::Unchanged(_) => {}
                        }
                    }
                }
                Ok(removed)
            }
        }
    }

    fn stored(&self, key: &ObjectKey) -> StoreResult<Object> {
        self.objects.get(&slot(key)).cloned().ok_or_else(|| StoreError::NotFound(key.clone()))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    async fn write_all(&self, writes: Vec<Write>) -> StoreResult<Vec<Object>> {
        let keys = rules::batch_keys(&writes)?;
        let (written, revision) = {
            let mut state = self.lock();
            // First decide every write against the state before the batch (the objects are
            // distinct), so that a failure leaves the state untouched; then carry them out.
            let now = Utc::now();
            let mut plans = Vec::with_capacity(writes.len());
            for (write, key) in writes.into_iter().zip(&keys) {
                plans.push(match write {
                    Write::Create(object) => {
                        if state.objects.contains_key(&slot(key)) {
                            return Err(StoreError::AlreadyExists(key.clone()));
                        }
                        (ChangeType::Added, Plan::Write(rules::prepare_create(object, key, now)?))
                    }
                    Write::Update(object) => {
                        let stored = state.stored(key)?;
                        (ChangeType::Modified, rules::prepare_update(&stored, key, object)?)
                    }
                });
            }
            let mut written = Vec::with_capacity(plans.len());
            for ((change, plan), key) in plans.into_iter().zip(&keys) {
                written.push(match (change, plan) {
                    (ChangeType::Added, Plan::Write(object)) => state.record(key, object, ChangeType::Added),
                    (_, plan) => state.apply(key, plan)?,
                });
            }
            (written, state.revision)
        };
        self.publish(revision);
        Ok(written)
    }

    async fn get(&self, key: &ObjectKey) -> StoreResult<Object> {
        self.lock().stored(key)
    }

    async fn list(&self, query: &Query) -> StoreResult<ObjectList> {
        let state = self.lock();
        let items = state.objects.values().filter(|object| query.matches(object)).cloned().collect();
        Ok(ObjectList { revision: state.revision, items })
    }

    async fn list_raw(&self, query: &Query, sink: tokio::sync::mpsc::Sender<RawItem>) -> StoreResult<()> {
        let list = self.list(query).await?;
        if sink.send(RawItem::Revision(list.revision)).await.is_err() {
            return Ok(());
        }
        for object in list.items {
            if sink.send(RawItem::Document(serde_json::to_string(&object)?)).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    async fn update(&self, object: Object) -> StoreResult<Object> {
        let key = rules::key_of(&object)?;
        let (updated, revision) = {
            let mut state = self.lock();
            let stored = state.stored(&key)?;
            let plan = rules::prepare_update(&stored, &key, object)?;
            (state.apply(&key, plan)?, state.revision)
        };
        self.publish(revision);
        Ok(updated)
    }

    async fn update_status(&self, object: Object) -> StoreResult<Object> {
        let key = rules::key_of(&object)?;
        let (updated, revision) = {
            let mut state = self.lock();
            let stored = state.stored(&key)?;
            let plan = rules::prepare_status(&stored, &key, object)?;
            (state.apply(&key, plan)?, state.revision)
        };
        self.publish(revision);
        Ok(updated)
    }

    async fn delete(&self, key: &ObjectKey, resource_version: Option<&str>) -> StoreResult<Deleted> {
        let (outcome, revision) = {
            let mut state = self.lock();
            let stored = state.stored(key)?;
            let plan = rules::prepare_delete(&stored, key, resource_version, Utc::now())?;
            let gone = matches!(plan, Plan::Remove(_));
            let object = state.apply(key, plan)?;
            (if gone { Deleted::Gone(object) } else { Deleted::Terminating(object) }, state.revision)
        };
        self.publish(revision);
        Ok(outcome)
    }

    async fn watch(&self, query: Query, revision: i64) -> StoreResult<WatchStream> {
        {
            let state = self.lock();
            if revision < state.compacted {
                return Err(StoreError::Expired { requested: revision, compacted: state.compacted });
            }
        }
        let store = self.clone();
        let head = self.head.subscribe();
        let start = (store, query, revision, head, VecDeque::<WatchEvent>::new(), false);
        Ok(Box::pin(futures::stream::unfold(
            start,
            |(store, query, mut last, mut head, mut buffer, finished)| async move {
                if finished {
                    return None;
                }
                loop {
                    if let Some(event) = buffer.pop_front() {
                        return Some((Ok(event), (store, query, last, head, buffer, false)));
                    }
                    head.borrow_and_update();
                    {
                        let state = store.lock();
                        if last < state.compacted {
                            let error = StoreError::Expired { requested: last, compacted: state.compacted };
                            return Some((Err(error), (store.clone(), query, last, head, buffer, true)));
                        }
                        for (revision, change, object) in
                            state.changes.iter().filter(|(revision, _, _)| *revision > last)
                        {
                            if query.matches(object) {
                                buffer.push_back(WatchEvent {
                                    change: *change,
                                    revision: *revision,
                                    object: object.clone(),
                                });
                            }
                        }
                        last = last.max(state.revision);
                    }
                    if buffer.is_empty() && head.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )))
    }

    async fn revision(&self) -> StoreResult<i64> {
        Ok(self.lock().revision)
    }

    async fn compact(&self, revision: i64) -> StoreResult<i64> {
        let mut state = self.lock();
        let target = revision.min(state.revision);
        if target > state.compacted {
            state.changes.retain(|(change_revision, _, _)| *change_revision > target);
            state.compacted = target;
        }
        Ok(state.compacted)
    }

    async fn compaction_point_for_bytes(&self, bytes: u64) -> StoreResult<i64> {
        let state = self.lock();
        let mut newer = 0u64;
        for (revision, _, object) in state.changes.iter().rev() {
            newer += serde_json::to_vec(object)?.len() as u64;
            if newer > bytes {
                return Ok(*revision);
            }
        }
        Ok(0)
    }

    async fn record_event(&self, event: NewEvent) -> StoreResult<Event> {
        let mut state = self.lock();
        let now = Utc::now();
        if let Some(existing) = state.events.iter_mut().rev().find(|existing| {
            existing.uid == event.uid
                && existing.event_type == event.event_type
                && existing.reason == event.reason
                && existing.message == event.message
        }) {
            existing.count += 1;
            existing.last_timestamp = now;
            return Ok(existing.clone());
        }
        let recorded = Event {
            id: state.last_event_id + 1,
            kind: event.object.kind.as_str().to_owned(),
            namespace: event.object.namespace.clone(),
            name: event.object.name.clone(),
            uid: event.uid,
            event_type: event.event_type,
            reason: event.reason,
            message: event.message,
            count: 1,
            first_timestamp: now,
            last_timestamp: now,
        };
        state.last_event_id = recorded.id;
        state.events.push(recorded.clone());
        Ok(recorded)
    }

    async fn events(&self, namespace: Option<&str>, object: Option<&ObjectKey>) -> StoreResult<Vec<Event>> {
        let state = self.lock();
        Ok(state
            .events
            .iter()
            .filter(|event| match (object, namespace) {
                (Some(key), _) => {
                    event.kind == key.kind.as_str() && event.namespace == key.namespace && event.name == key.name
                }
                (None, Some(namespace)) => event.namespace == namespace,
                (None, None) => true,
            })
            .cloned()
            .collect())
    }

    async fn prune_events(&self, older_than: DateTime<Utc>, keep: usize) -> StoreResult<u64> {
        let mut state = self.lock();
        let before = state.events.len();
        state.events.retain(|event| event.last_timestamp >= older_than);
        if state.events.len() > keep {
            let mut times: Vec<DateTime<Utc>> = state.events.iter().map(|event| event.last_timestamp).collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            match keep.checked_sub(1).map(|index| times[index]) {
                Some(oldest_kept) => state.events.retain(|event| event.last_timestamp >= oldest_kept),
                None => state.events.clear(),
            }
        }
        Ok((before - state.events.len()) as u64)
    }
}
