//! The reconcile runtime shared by every controller. For one kind it:
//!
//! - lists the objects first and only then starts its workers (readiness gate);
//! - watches the store and queues an object when its spec, deletion state, finalizers or labels
//!   change — a status-only write (typically the controller's own) does not re-trigger;
//! - queues the owner of a container named in a Docker event (die, oom, destroy,
//!   health_status), so a killed container is noticed at once, not at the next resync;
//! - queues every object again each resync period, to catch drift;
//! - runs a bounded number of workers over the [`Queue`], which guarantees one reconcile per
//!   object at a time and per-object backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use minicloud_crds::{Kind, Object, ObjectKey};
use tokio::sync::{broadcast, watch};

use super::queue::{Backoff, Queue};
use crate::docker::{labels::Labels, ContainerEvent};
use crate::store::{ChangeType, Query, Store, StoreError};

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

/// A reconcile that failed; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(pub String);

impl From<StoreError> for ReconcileError {
    fn from(error: StoreError) -> ReconcileError {
        ReconcileError(error.to_string())
    }
}

impl From<crate::docker::DriverError> for ReconcileError {
    fn from(error: crate::docker::DriverError) -> ReconcileError {
        ReconcileError(error.to_string())
    }
}

/// One kind's reconcile logic.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The kind reconciled.
    fn kind(&self) -> Kind;
    /// Drives one object toward its spec. `Ok(Some(d))` asks to be called again after `d`.
    async fn reconcile(&self, key: &ObjectKey) -> Result<Option<Duration>, ReconcileError>;
}

/// Counters of one controller (exported as metrics later).
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub errors: AtomicU64,
    pub duration_micros: AtomicU64,
    /// Objects waiting in the queue, as of the last reconcile.
    pub queue_depth: AtomicU64,
}

/// What decides whether a change must trigger a reconcile: everything but status.
fn trigger_fingerprint(object: &Object) -> String {
    let meta = &object.metadata;
    format!(
        "{:?}|{}|{:?}|{:?}|{:?}",
        meta.generation,
        meta.deletion_timestamp.is_some(),
        meta.finalizers,
        meta.labels,
        meta.owner_references
    )
}

fn key_of(object: &Object) -> Option<ObjectKey> {
    object.key()
}

/// Runs one controller until `shutdown` turns true. Returns its metrics handle at once through
/// `metrics`.
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

    let mut workers = Vec::new();
    for _ in 0..config.workers.max(1) {
        let queue = queue.clone();
        let reconciler = reconciler.clone();
        let metrics = metrics.clone();
        workers.push(tokio::spawn(async move {
            while let Some(key) = queue.next().await {
                let started = Instant::now();
                let outcome = reconciler.reconcile(&key).await;
                metrics.reconciles.fetch_add(1, Ordering::Relaxed);
                metrics.duration_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match outcome {
                    Ok(requeue) => {
                        queue.finish(key, true, requeue);
                    }
                    Err(error) => {
                        metrics.errors.fetch_add(1, Ordering::Relaxed);
                        let retry = queue.finish(key.clone(), false, None);
                        tracing::warn!(object = %key, %error, retry_in = ?retry, "reconcile failed");
                    }
                }
                metrics.queue_depth.store(queue.depth() as u64, Ordering::Relaxed);
            }
        }));
    }

    let cluster = store.cluster_id().to_owned();
    let docker_task = tokio::spawn({
        let queue = queue.clone();
        let mut events = docker_events;
        async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if let Some(labels) = Labels::from_map(&event.labels) {
                            if labels.kind == kind && labels.cluster == cluster {
                                queue.schedule_now(ObjectKey::new(kind, labels.namespace, labels.name));
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });

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
                                queue.forget(&key);
                                queue.schedule_now(key);
                            }
                            _ => {
                                let fingerprint = trigger_fingerprint(&event.object);
                                if fingerprints.get(&key) != Some(&fingerprint) {
                                    fingerprints.insert(key.clone(), fingerprint);
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
    docker_task.abort();
    for worker in workers {
        let _ = worker.await;
    }
    tracing::info!(%kind, "controller stopped");
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
