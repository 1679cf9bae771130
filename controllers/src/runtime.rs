//! The reconcile runtime shared by every controller. For one kind it:
//!
//! - lists the objects first and only then starts its workers (readiness gate);
//! - watches the store and queues an object when its spec, deletion state, finalizers, labels
//!   or annotations change — a status-only write (typically the controller's own) does not
//!   re-trigger;
//! - queues the owner of a container named in a Docker lifecycle event (start, die, oom,
//!   destroy, health_status), so a killed container is noticed at once, not at the next
//!   resync; exec events (a controller's own probes) wake nobody;
//! - queues every object of its kind in a namespace when an object of a kind it watches
//!   ([`Reconciler::watched_kinds`]) changes there (a LoadBalancer follows its Instances);
//! - queues every object again each resync period, to catch drift;
//! - runs a bounded number of workers over the [`Queue`], which guarantees one reconcile per
//!   object at a time and per-object backoff.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use minicloud_crds::{Kind, Object, ObjectKey};
use tokio::sync::{broadcast, watch};

use crate::docker::{is_lifecycle, labels::Labels, ContainerEvent};
use crate::metrics::Metrics;
use crate::queue::{Backoff, Queue};
use crate::reconciler::{Action, Cause, Reconciler};
use minicloud_store::{ChangeType, Query, Store};

/// How a controller runs.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Reconciles running at once.
    pub workers: usize,
    /// Every object is reconciled at least this often.
    pub resync: Duration,
    pub backoff: Backoff,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            workers: 8,
            resync: Duration::from_secs(300),
            backoff: Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(60) },
        }
    }
}

/// The objects a runtime knows, shared with the tasks that wake them.
type Known = Arc<Mutex<BTreeSet<ObjectKey>>>;

fn lock(known: &Known) -> std::sync::MutexGuard<'_, BTreeSet<ObjectKey>> {
    known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What decides whether a change must trigger a reconcile: everything but status
/// (annotations included: some ask for an action, e.g. a database backup).
fn trigger_fingerprint(object: &Object) -> String {
    let meta = &object.metadata;
    format!(
        "{:?}|{}|{:?}|{:?}|{:?}|{:?}",
        meta.generation,
        meta.deletion_timestamp.is_some(),
        meta.finalizers,
        meta.labels,
        meta.annotations,
        meta.owner_references
    )
}

fn key_of(object: &Object) -> Option<ObjectKey> {
    object.key()
}

/// Runs one controller until `shutdown` turns true, recording into `metrics`. Dropping the
/// future (a lease holder past its renew deadline) aborts every task it started.
pub async fn run(
    reconciler: Arc<dyn Reconciler>,
    store: Arc<dyn Store>,
    docker_events: broadcast::Receiver<ContainerEvent>,
    config: RuntimeConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let kind = reconciler.kind();
    let queue = Arc::new(Queue::new(config.backoff));
    let query = Query { kind: Some(kind), ..Query::default() };

    // Readiness gate: the initial list comes first.
    let (mut fingerprints, mut revision) = loop {
        match store.list(&query).await {
            Ok(list) => {
                let fingerprints: HashMap<ObjectKey, String> = list
                    .items
                    .iter()
                    .filter_map(|object| Some((key_of(object)?, trigger_fingerprint(object))))
                    .collect();
                for key in fingerprints.keys() {
                    queue.schedule_now(key.clone());
                }
                break (fingerprints, list.revision);
            }
            Err(error) => {
                tracing::warn!(%kind, %error, "controller cannot list its objects; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    tracing::info!(%kind, objects = fingerprints.len(), "controller started");
    let known: Known = Arc::new(Mutex::new(fingerprints.keys().cloned().collect()));

    // Every task this runtime starts lives in this set: dropping the runtime (a leader whose
    // renew deadline passed aborts it) aborts them all, running reconciles included.
    let mut tasks = tokio::task::JoinSet::new();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..config.workers.max(1) {
        let queue = queue.clone();
        let reconciler = reconciler.clone();
        let metrics = metrics.clone();
        workers.spawn(async move {
            while let Some(key) = queue.next().await {
                let started = Instant::now();
                let outcome = reconciler.reconcile(&key).await;
                let cause = outcome.as_ref().err().map(|error| error.cause());
                metrics.record_reconcile(kind, started.elapsed().as_secs_f64(), cause);
                match outcome {
                    Ok(action) => {
                        queue.finish(key, true, action.delay());
                    }
                    // Someone else wrote the object: the next round reads its new version.
                    Err(error) if error.cause() == Cause::Conflict => {
                        tracing::debug!(object = %key, %error, "reconcile met a conflict; again");
                        queue.finish(key, true, Action::RetryNow.delay());
                    }
                    // Only a change of the object helps: its watch event brings it back.
                    Err(error) if error.cause() == Cause::InvalidSpec => {
                        tracing::warn!(object = %key, %error, "reconcile failed; waiting for a change");
                        queue.finish(key, true, Action::AwaitChange.delay());
                    }
                    Err(error) => {
                        let retry = queue.finish(key.clone(), false, None);
                        tracing::warn!(object = %key, %error, retry_in = ?retry, "reconcile failed");
                    }
                }
                metrics.set_queue_depth(kind, queue.depth());
            }
        });
    }

    let cluster = store.cluster_id().to_owned();
    tasks.spawn({
        let queue = queue.clone();
        let mut events = docker_events;
        async move {
            loop {
                match events.recv().await {
                    Ok(event) if is_lifecycle(&event.action) => {
                        if let Some(labels) = Labels::from_map(&event.labels) {
                            if labels.kind == kind && labels.cluster == cluster {
                                queue.schedule_now(ObjectKey::new(kind, labels.namespace, labels.name));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });

    for child in reconciler.child_kinds() {
        tasks.spawn(wake_owners(store.clone(), queue.clone(), kind, child, revision));
    }
    for watched in reconciler.watched_kinds() {
        tasks.spawn(wake_related(store.clone(), queue.clone(), known.clone(), watched, Scope::Namespace, revision));
    }
    for watched in reconciler.watched_everywhere() {
        tasks.spawn(wake_related(store.clone(), queue.clone(), known.clone(), watched, Scope::Everywhere, revision));
    }

    let mut resync = tokio::time::interval(config.resync);
    resync.tick().await;
    'watching: loop {
        let mut changes = match store.watch(query.clone(), revision).await {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(%kind, %error, "controller cannot watch; re-listing");
                if let Ok(list) = store.list(&query).await {
                    revision = list.revision;
                    for object in &list.items {
                        if let Some(key) = key_of(object) {
                            fingerprints.insert(key.clone(), trigger_fingerprint(object));
                            lock(&known).insert(key.clone());
                            queue.schedule_now(key);
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'watching,
                    _ = shutdown.changed() => break 'watching,
                }
            }
        };
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(event)) => {
                        revision = event.revision;
                        let Some(key) = key_of(&event.object) else { continue };
                        match event.change {
                            ChangeType::Deleted => {
                                fingerprints.remove(&key);
                                lock(&known).remove(&key);
                                queue.forget(&key);
                                queue.schedule_now(key);
                            }
                            _ => {
                                let fingerprint = trigger_fingerprint(&event.object);
                                if fingerprints.get(&key) != Some(&fingerprint) {
                                    fingerprints.insert(key.clone(), fingerprint);
                                    lock(&known).insert(key.clone());
                                    queue.schedule_now(key);
                                }
                            }
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%kind, %error, "watch ended; resuming");
                        continue 'watching;
                    }
                    None => continue 'watching,
                },
                _ = resync.tick() => {
                    for key in fingerprints.keys() {
                        queue.schedule_now(key.clone());
                    }
                }
                _ = shutdown.changed() => break 'watching,
            }
        }
    }
    queue.close();
    tasks.abort_all();
    while workers.join_next().await.is_some() {}
    tracing::info!(%kind, "controller stopped");
}

/// Calls `on_change` with every changed object of `kind` from `revision` on, forever: a watch
/// that ends is resumed; one compacted past resumes from now (resync covers the gap).
async fn follow_changes(store: Arc<dyn Store>, kind: Kind, mut revision: i64, on_change: impl Fn(&Object)) {
    let query = Query { kind: Some(kind), ..Query::default() };
    loop {
        match store.watch(query.clone(), revision).await {
            Ok(mut changes) => {
                while let Some(Ok(event)) = changes.next().await {
                    revision = event.revision;
                    on_change(&event.object);
                }
            }
            Err(_) => {
                if let Ok(current) = store.revision().await {
                    revision = current;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Queues the owner (of kind `owner`) of every changed object of kind `child`.
async fn wake_owners(store: Arc<dyn Store>, queue: Arc<Queue<ObjectKey>>, owner: Kind, child: Kind, revision: i64) {
    follow_changes(store, child, revision, |object| {
        for reference in object.metadata.owner_references.iter().filter(|r| r.kind == owner.as_str()) {
            queue.schedule_now(ObjectKey::new(owner, object.namespace(), reference.name.clone()));
        }
    })
    .await
}

/// Which known objects a change of a watched kind wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Those in the changed object's namespace.
    Namespace,
    /// All of them.
    Everywhere,
}

/// Queues the known objects `scope` names for each changed object of kind `watched`.
async fn wake_related(
    store: Arc<dyn Store>,
    queue: Arc<Queue<ObjectKey>>,
    known: Known,
    watched: Kind,
    scope: Scope,
    revision: i64,
) {
    follow_changes(store, watched, revision, |object| {
        let namespace = object.namespace();
        let woken: Vec<ObjectKey> = lock(&known)
            .iter()
            .filter(|key| scope == Scope::Everywhere || key.namespace == namespace)
            .cloned()
            .collect();
        for key in woken {
            queue.schedule_now(key);
        }
    })
    .await
}

/// Feeds Docker events of managed containers to every controller, reconnecting after the
/// engine goes away.
pub fn spawn_docker_events(
    driver: Arc<dyn crate::docker::ContainerDriver>,
    sender: broadcast::Sender<ContainerEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut events = driver.events();
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let _ = sender.send(event);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "Docker event stream ended");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use minicloud_store::MemoryStore;

    /// A reconciler that only records which objects it was asked about.
    struct Recorder {
        seen: Mutex<Vec<ObjectKey>>,
    }

    #[async_trait::async_trait]
    impl Reconciler for Recorder {
        fn kind(&self) -> Kind {
            Kind::Stack
        }
        fn child_kinds(&self) -> Vec<Kind> {
            vec![Kind::Instance]
        }
        fn watched_kinds(&self) -> Vec<Kind> {
            Vec::new()
        }
        fn watched_everywhere(&self) -> Vec<Kind> {
            Vec::new()
        }
        async fn reconcile(&self, key: &ObjectKey) -> Result<Action, crate::reconciler::ReconcileError> {
            self.seen.lock().expect("lock").push(key.clone());
            Ok(Action::AwaitChange)
        }
    }

    fn object(kind: &str, name: &str, spec: serde_json::Value) -> Object {
        serde_json::from_value(
            json!({"apiVersion": "minicloud.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}),
        )
        .expect("object")
    }

    async fn eventually(recorder: &Recorder, expected: usize) {
        for _ in 0..200 {
            if recorder.seen.lock().expect("lock").len() >= expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {expected} reconciles, saw {:?}", recorder.seen.lock().expect("lock"));
    }

    #[tokio::test]
    async fn spec_changes_and_children_trigger_status_writes_do_not() {
        let store = Arc::new(MemoryStore::new());
        let stack = store.create(object("Stack", "blog", json!({"resources": []}))).await.expect("stack");
        let recorder = Arc::new(Recorder { seen: Mutex::new(Vec::new()) });
        let (stop, shutdown) = watch::channel(false);
        let (_events, receiver) = broadcast::channel(4);
        let config = RuntimeConfig { resync: Duration::from_secs(3600), ..RuntimeConfig::default() };
        let runtime = tokio::spawn(run(recorder.clone(), store.clone(), receiver, config, Arc::default(), shutdown));
        eventually(&recorder, 1).await; // the initial list

        // A status-only write (what the controller itself does) does not trigger.
        let mut with_status = store.get(&ObjectKey::new(Kind::Stack, "default", "blog")).await.expect("get");
        with_status.status = json!({"observedGeneration": 1});
        store.update_status(with_status).await.expect("status");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(recorder.seen.lock().expect("lock").len(), 1, "status-only writes do not re-trigger");

        // A spec change does.
        let mut changed = store.get(&ObjectKey::new(Kind::Stack, "default", "blog")).await.expect("get");
        changed.spec = json!({"resources": [], "values": {"a": 1}});
        store.update(changed).await.expect("update");
        eventually(&recorder, 2).await;

        // A child's change, even status only, wakes the owner.
        let mut child = object("Instance", "blog-web", json!({"image": "web:1"}));
        child.metadata.owner_references = vec![minicloud_crds::meta::OwnerReference {
            api_version: "minicloud.dev/v1".into(),
            kind: "Stack".into(),
            name: "blog".into(),
            uid: stack.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
        }];
        let mut child = store.create(child).await.expect("child");
        eventually(&recorder, 3).await;
        child.status = json!({"phase": "Running"});
        store.update_status(child).await.expect("child status");
        eventually(&recorder, 4).await;
        assert!(recorder.seen.lock().expect("lock").iter().all(|key| key.name == "blog" && key.kind == Kind::Stack));

        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), runtime).await;
    }
}
