//! Leader election by lease, as client-go's leaderelection does it, with the store as the only
//! arbiter: a replica reads the `Lease`, and writes it back (to take it, renew it or release it)
//! with the `resourceVersion` it read — a write from a stale read is refused by the store, so
//! two replicas never both take a lease. There is no consensus of our own.
//!
//! Timing ([`LeaseTiming`]): a lease lasts `duration` after its last renewal; its holder may act
//! only until `renew_deadline` after its last successful renewal (shorter than `duration`), so a
//! holder cut off from the store stops acting before anyone else may take the lease — Docker
//! actions cannot be fenced by the database, and this ordering is what keeps them single.
//!
//! [`Replica::lead`] runs a piece of work (a controller's runtime, a singleton job) only while
//! this replica holds its lease: it campaigns, starts the work when it wins, renews every
//! `retry`, and stops the work when the lease is lost, when the renew deadline comes without a
//! renewal (work still running then is aborted), or at shutdown — releasing the lease then, so
//! another replica takes over at once instead of after the lease lapses.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use minicloud_crds::lease::{LeaseSpec, SYSTEM_NAMESPACE};
use minicloud_crds::meta::{ObjectMeta, API_VERSION};
use minicloud_crds::{Kind, Object, ObjectKey};
use minicloud_store::{EventType, Store, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::reconciler::record_event;

/// How long leases last and how their holders renew them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// A lease lapses this long after its last renewal.
    pub duration: Duration,
    /// A holder acts at most this long after its last successful renewal (< `duration`).
    pub renew_deadline: Duration,
    /// How often a holder renews, and a candidate tries.
    pub retry: Duration,
}

impl LeaseTiming {
    /// How long before its renew deadline a leader asks its work to stop (work still running
    /// at the deadline itself is aborted): half a retry period.
    pub fn stop_grace(&self) -> Duration {
        self.retry / 2
    }
}

impl Default for LeaseTiming {
    fn default() -> LeaseTiming {
        LeaseTiming {
            duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry: Duration::from_secs(2),
        }
    }
}

/// Where a lease stands for one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// This replica holds it.
    Mine,
    /// Nobody holds it: never taken, released, or lapsed.
    Free,
    /// Another replica holds it until then.
    Taken { holder: String, until: DateTime<Utc> },
}

/// Where `lease` stands for replica `me` at `now`.
pub fn standing(lease: Option<&LeaseSpec>, me: &str, now: DateTime<Utc>) -> Standing {
    let Some(lease) = lease else { return Standing::Free };
    let Some(until) = lease.expires_at() else { return Standing::Free };
    let holder = lease.holder_identity.clone().unwrap_or_default();
    if holder == me {
        Standing::Mine
    } else if now >= until {
        Standing::Free
    } else {
        Standing::Taken { holder, until }
    }
}

/// What one attempt to take or renew a lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease and may act until `deadline` unless it renews before.
    Held { deadline: DateTime<Utc> },
    /// Another replica holds it — until `until` unless it renews (`None`: another replica's
    /// write came first and the lease's new state is not known yet).
    Taken { holder: String, until: Option<DateTime<Utc>> },
}

impl Attempt {
    /// Until when this replica may act, when it holds the lease.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        match self {
            Attempt::Held { deadline } => Some(*deadline),
            Attempt::Taken { .. } => None,
        }
    }
}

/// One replica's hand on one lease.
pub struct Elector {
    store: Arc<dyn Store>,
    key: ObjectKey,
    identity: String,
    timing: LeaseTiming,
    /// This replica is the only server of its store (SQLite, held by its file lock): a lease
    /// held by anyone else is a crashed predecessor's, taken at once instead of after it lapses.
    sole: bool,
    /// Whether this process took the lease (and has not lost or released it since). A lease
    /// naming this identity that this process did not take belongs to another process given
    /// the same identity, or to a crashed predecessor: it is waited out like anyone else's.
    holding: AtomicBool,
}

impl Elector {
    /// The elector of lease `name` (in the system namespace) for replica `identity`.
    pub fn new(store: Arc<dyn Store>, name: &str, identity: impl Into<String>, timing: LeaseTiming) -> Elector {
        let key = ObjectKey::new(Kind::Lease, SYSTEM_NAMESPACE, name);
        Elector { store, key, identity: identity.into(), timing, sole: false, holding: AtomicBool::new(false) }
    }

    /// For the only server of a store: takes leases a predecessor left without waiting.
    pub fn sole(mut self, sole: bool) -> Elector {
        self.sole = sole;
        self
    }

    /// Forgets that this process holds the lease (it stopped acting without releasing it): the
    /// lease is then taken again only once it lapsed.
    pub fn forget(&self) {
        self.holding.store(false, Ordering::SeqCst);
    }

    /// Takes or renews the lease at `now`.
    pub async fn acquire_or_renew(&self, now: DateTime<Utc>) -> Result<Attempt, StoreError> {
        let attempt = self.attempt(now).await;
        self.holding.store(matches!(attempt, Ok(Attempt::Held { .. })), Ordering::SeqCst);
        attempt
    }

    async fn attempt(&self, now: DateTime<Utc>) -> Result<Attempt, StoreError> {
        let deadline = now + chrono::Duration::from_std(self.timing.renew_deadline).unwrap_or_default();
        let duration = i32::try_from(self.timing.duration.as_secs()).unwrap_or(i32::MAX).max(1);
        let current = match self.store.get(&self.key).await {
            Ok(object) => object,
            Err(StoreError::NotFound(_)) => {
                let spec = LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                };
                return match self.store.create(self.lease_object(&spec)?).await {
                    Ok(_) => Ok(Attempt::Held { deadline }),
                    Err(StoreError::AlreadyExists(_)) => Ok(Attempt::Taken { holder: String::new(), until: None }),
                    Err(error) => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let spec: LeaseSpec = serde_json::from_value(current.spec.clone()).unwrap_or_default();
        let standing = match standing(Some(&spec), &self.identity, now) {
            Standing::Mine if !self.holding.load(Ordering::SeqCst) && !self.sole => match spec.expires_at() {
                Some(until) if now < until => Standing::Taken { holder: self.identity.clone(), until },
                _ => Standing::Free,
            },
            other => other,
        };
        let next = match standing {
            Standing::Taken { holder, until } if !self.sole => {
                return Ok(Attempt::Taken { holder, until: Some(until) })
            }
            Standing::Mine => LeaseSpec { renew_time: Some(now), lease_duration_seconds: Some(duration), ..spec },
            Standing::Free | Standing::Taken { .. } => {
                // As in Kubernetes: taking a lease from anyone else, or after a release (no
                // holder), is a transition.
                let changed_hands = spec.holder_identity.as_deref() != Some(self.identity.as_str());
                let transitions = spec.lease_transitions.unwrap_or(0);
                LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now),
                    renew_time: Some(now),
                    lease_transitions: Some(if changed_hands { transitions.saturating_add(1) } else { transitions }),
                }
            }
        };
        let written = self.write(current, &next).await?;
        Ok(if written { Attempt::Held { deadline } } else { Attempt::Taken { holder: String::new(), until: None } })
    }

    /// Gives the lease up (an orderly shutdown), so another replica takes it at once rather
    /// than after it lapses. Nothing happens when this replica does not hold it.
    pub async fn release(&self) -> Result<(), StoreError> {
        let current = match self.store.get(&self.key).await {
            Ok(object) => object,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        let spec: LeaseSpec = serde_json::from_value(current.spec.clone()).unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str())
            || !self.holding.swap(false, Ordering::SeqCst)
        {
            return Ok(());
        }
        let released = LeaseSpec { holder_identity: Some(String::new()), ..spec };
        self.write(current, &released).await.map(|_| ())
    }

    /// Writes `spec` over `current` with the resourceVersion read; `false` when another write
    /// came first.
    async fn write(&self, mut current: Object, spec: &LeaseSpec) -> Result<bool, StoreError> {
        current.spec = serde_json::to_value(spec).map_err(|error| StoreError::Invalid(error.to_string()))?;
        match self.store.update(current).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn lease_object(&self, spec: &LeaseSpec) -> Result<Object, StoreError> {
        Ok(Object {
            api_version: API_VERSION.to_owned(),
            kind: Kind::Lease.as_str().to_owned(),
            metadata: ObjectMeta {
                name: self.key.name.clone(),
                namespace: Some(SYSTEM_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            spec: serde_json::to_value(spec).map_err(|error| StoreError::Invalid(error.to_string()))?,
            status: serde_json::Value::Null,
        })
    }
}

/// A replica waits this long per lease it already holds before trying for a free one, so that
/// replicas starting together (or surviving a crash together) share the leases out.
const COURTESY_PER_LEASE: Duration = Duration::from_millis(50);
/// A candidate tries again this soon after a lease's announced expiry.
const AFTER_EXPIRY: Duration = Duration::from_millis(20);
/// How long a lease event or an orderly release may take.
const BOOKKEEPING_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a replica stopped leading.
#[derive(Debug, PartialEq, Eq)]
enum Stepping {
    /// The server is shutting down: the lease is released.
    Shutdown,
    /// The renew deadline came without a renewal (the store did not answer).
    DeadlinePassed,
    /// Another replica holds the lease (this one's had lapsed in its eyes).
    Taken(String),
    /// The work ended by itself (it failed): the lease is released for another replica.
    WorkEnded,
}

/// This process as a candidate in every election: its identity, its timing, its metrics.
pub struct Replica {
    store: Arc<dyn Store>,
    identity: String,
    timing: LeaseTiming,
    metrics: Arc<Metrics>,
    /// How many leases this replica holds now.
    held: AtomicUsize,
    /// Wakes the candidates of a lease when its holder releases it.
    releases: Arc<Releases>,
    /// Watches the leases for releases, for as long as this replica exists.
    release_watch: tokio::task::JoinHandle<()>,
    /// The only server of its store (see [`Elector::sole`]).
    sole: bool,
}

/// One wake-up per lease name, for the candidates waiting on it.
#[derive(Default)]
struct Releases(std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>);

impl Releases {
    fn of(&self, lease: &str) -> Arc<tokio::sync::Notify> {
        let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(lease.to_owned()).or_default().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.release_watch.abort();
    }
}

impl Replica {
    /// The replica `identity` on `store`; `sole` for the only server of its store (SQLite):
    /// leases a crashed predecessor left are then taken at once, so a restart does not wait for
    /// them to lapse.
    pub fn new(
        store: Arc<dyn Store>,
        identity: String,
        timing: LeaseTiming,
        metrics: Arc<Metrics>,
        sole: bool,
    ) -> Arc<Replica> {
        let releases = Arc::new(Releases::default());
        let release_watch = tokio::spawn(watch_releases(store.clone(), releases.clone()));
        Arc::new(Replica { store, identity, timing, metrics, held: AtomicUsize::new(0), releases, release_watch, sole })
    }

    /// The identity leases name as their holder.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Runs `work` while this replica holds lease `name`, until `shutdown` turns true. `work`
    /// is called each time the lease is won, with a receiver that turns true when the work must
    /// stop; work still running at the renew deadline is aborted (dropped).
    pub async fn lead<W, F>(self: Arc<Self>, name: String, mut shutdown: watch::Receiver<bool>, work: W)
    where
        W: Fn(watch::Receiver<bool>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let elector = Elector::new(self.store.clone(), &name, self.identity.clone(), self.timing).sole(self.sole);
        let name = name.as_str();
        // Every lease this replica campaigns for shows in `/metrics`, 0 until it holds it.
        self.metrics.set_leader(name, false);
        loop {
            let Some(mut stop_at) = self.campaign(&elector, &mut shutdown).await else { return };
            self.held.fetch_add(1, Ordering::SeqCst);
            self.metrics.set_leader(name, true);
            tracing::info!(lease = name, replica = %self.identity, "this replica holds the lease: it runs what the lease guards");
            self.spawn_event(
                &elector,
                EventType::Normal,
                "LeaderElected",
                format!("{} holds the lease", self.identity),
            );

            let (stop, stopped) = watch::channel(false);
            let mut task = tokio::spawn(work(stopped));
            let mut finished = false;
            let why = loop {
                let soft_deadline = stop_at.checked_sub(self.timing.stop_grace()).unwrap_or(stop_at);
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break Stepping::Shutdown,
                    _ = tokio::time::sleep_until(soft_deadline) => break Stepping::DeadlinePassed,
                    _ = &mut task => {
                        finished = true;
                        break Stepping::WorkEnded;
                    }
                    _ = tokio::time::sleep(self.timing.retry) => {
                        let started = Instant::now();
                        match tokio::time::timeout_at(soft_deadline, elector.acquire_or_renew(Utc::now())).await {
                            Ok(Ok(Attempt::Held { .. })) => {
                                self.metrics.record_lease_attempt(name, "held");
                                stop_at = started + self.timing.renew_deadline;
                            }
                            Ok(Ok(Attempt::Taken { holder, .. })) => {
                                self.metrics.record_lease_attempt(name, "taken");
                                break Stepping::Taken(holder);
                            }
                            Ok(Err(error)) => {
                                self.metrics.record_lease_attempt(name, "failed");
                                tracing::warn!(lease = name, %error, "cannot renew the lease; still acting until the renew deadline");
                            }
                            Err(_) => self.metrics.record_lease_attempt(name, "failed"),
                        }
                    }
                }
            };
            let _ = stop.send(true);
            if !finished && tokio::time::timeout_at(stop_at, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
                tracing::warn!(
                    lease = name,
                    "the work guarded by the lease did not stop in time: aborted at the renew deadline"
                );
            }
            self.held.fetch_sub(1, Ordering::SeqCst);
            self.metrics.set_leader(name, false);
            match &why {
                Stepping::Shutdown | Stepping::WorkEnded => {
                    if why == Stepping::WorkEnded {
                        tracing::error!(
                            lease = name,
                            "the work guarded by the lease ended by itself; releasing the lease"
                        );
                    }
                    match tokio::time::timeout(BOOKKEEPING_TIMEOUT, elector.release()).await {
                        Ok(Ok(())) => tracing::info!(lease = name, "lease released"),
                        _ => tracing::warn!(
                            lease = name,
                            "cannot release the lease: another replica takes it when it lapses"
                        ),
                    }
                    // Awaited (bounded), after the release: at shutdown the process ends next.
                    let message = format!("{} released the lease", self.identity);
                    lease_event(self.store.clone(), elector.key.clone(), EventType::Normal, "LeaderReleased", message)
                        .await;
                    if why == Stepping::Shutdown {
                        return;
                    }
                }
                Stepping::DeadlinePassed => {
                    elector.forget();
                    tracing::error!(
                        lease = name,
                        "the lease could not be renewed before the renew deadline: stopped acting (another replica may take it once it lapses)"
                    );
                    self.spawn_event(
                        &elector,
                        EventType::Warning,
                        "LeaderLost",
                        format!("{} could not renew the lease in time and stopped", self.identity),
                    );
                }
                Stepping::Taken(holder) => {
                    elector.forget();
                    tracing::error!(lease = name, %holder, "another replica holds the lease: stopped acting");
                    self.spawn_event(
                        &elector,
                        EventType::Warning,
                        "LeaderLost",
                        format!("{} lost the lease to {holder}", self.identity),
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Tries for the lease until this replica holds it (the moment it must stop acting unless
    /// it renews) or shutdown (`None`).
    async fn campaign(&self, elector: &Elector, shutdown: &mut watch::Receiver<bool>) -> Option<Instant> {
        let name = elector.key.name.as_str();
        let released = self.releases.of(name);
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let started = Instant::now();
            let wait = match tokio::time::timeout(self.timing.retry, elector.acquire_or_renew(Utc::now())).await {
                Ok(Ok(Attempt::Held { .. })) => {
                    self.metrics.record_lease_attempt(name, "held");
                    return Some(started + self.timing.renew_deadline);
                }
                Ok(Ok(Attempt::Taken { until, .. })) => {
                    self.metrics.record_lease_attempt(name, "taken");
                    // Back right after the holder's lease would lapse, or at the next retry.
                    until
                        .and_then(|until| (until - Utc::now()).to_std().ok())
                        .map_or(self.timing.retry, |left| (left + AFTER_EXPIRY).min(self.timing.retry))
                }
                Ok(Err(error)) => {
                    self.metrics.record_lease_attempt(name, "failed");
                    if matches!(error, StoreError::Invalid(_)) {
                        // Not a passing failure: say so where it is seen.
                        tracing::warn!(lease = name, %error, "the store refuses the lease; trying again");
                    } else {
                        tracing::debug!(lease = name, %error, "cannot read the lease; trying again");
                    }
                    self.timing.retry
                }
                Err(_) => {
                    self.metrics.record_lease_attempt(name, "failed");
                    self.timing.retry
                }
            };
            let courtesy = COURTESY_PER_LEASE * u32::try_from(self.held.load(Ordering::SeqCst)).unwrap_or(u32::MAX);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Released (an orderly shutdown): try at once rather than at the next retry.
                _ = released.notified() => {}
                changed = shutdown.changed() => if changed.is_err() { return None },
            }
            tokio::select! {
                _ = tokio::time::sleep(courtesy) => {}
                changed = shutdown.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// Records an event on the lease in the background: a replica cut off from the store
    /// must not wait for it.
    fn spawn_event(&self, elector: &Elector, event_type: EventType, reason: &'static str, message: String) {
        tokio::spawn(lease_event(self.store.clone(), elector.key.clone(), event_type, reason, message));
    }
}

/// Records an event on the lease `key`, giving up after [`BOOKKEEPING_TIMEOUT`].
async fn lease_event(store: Arc<dyn Store>, key: ObjectKey, event_type: EventType, reason: &str, message: String) {
    let _ = tokio::time::timeout(BOOKKEEPING_TIMEOUT, async {
        if let Ok(lease) = store.get(&key).await {
            record_event(store.as_ref(), &lease, event_type, reason, message).await;
        }
    })
    .await;
}

/// Follows the leases and wakes the candidates of each one released, until aborted. A watch
/// that ends is resumed from the current revision (a release missed meanwhile is found at the
/// candidates' next retry).
async fn watch_releases(store: Arc<dyn Store>, releases: Arc<Releases>) {
    let query = minicloud_store::Query::namespaced(Kind::Lease, SYSTEM_NAMESPACE);
    loop {
        if let Ok(revision) = store.revision().await {
            if let Ok(mut changes) = store.watch(query.clone(), revision).await {
                while let Some(Ok(event)) = futures::StreamExt::next(&mut changes).await {
                    let holder = event.object.spec.get("holderIdentity").and_then(|holder| holder.as_str());
                    if holder.is_none_or(str::is_empty) {
                        releases.of(&event.object.metadata.name).notify_one();
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The name of the lease for `what` of kind `prefix` (e.g. `sync` and a Sync's name): `PREFIX-WHAT`,
/// or, when that would be longer than an object name may be (63), `PREFIX-` and the start of
/// `what` followed by a hash of all of it, so distinct long names never share a lease.
pub fn lease_name(prefix: &str, what: &str) -> String {
    let full = format!("{prefix}-{what}");
    if full.len() <= 63 {
        return full;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(what.as_bytes());
    let hash: String = digest.iter().take(4).map(|byte| format!("{byte:02x}")).collect();
    let room = 63 - prefix.len() - 1 - 1 - hash.len();
    let start = what.get(..room).unwrap_or(what).trim_end_matches('-');
    format!("{prefix}-{start}-{hash}")
}

/// This process's identity as a replica when none is given: the host name and a random
/// suffix, so that two processes on one host (or a restarted one) are never taken for each other.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "minicloud".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Refuses a replica identity a lease could not carry readably: empty, longer than 128
/// characters, or with whitespace or control characters.
pub fn check_identity(identity: &str) -> Result<(), String> {
    if identity.is_empty() || identity.chars().count() > 128 {
        return Err(format!("{identity:?}: write 1 to 128 characters"));
    }
    if identity.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{identity:?}: write it without spaces or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use minicloud_store::MemoryStore;

    use super::*;

    fn timing() -> LeaseTiming {
        LeaseTiming::default()
    }

    fn later(now: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
        now + chrono::Duration::seconds(seconds)
    }

    async fn lease(store: &MemoryStore) -> LeaseSpec {
        let object = store.get(&ObjectKey::new(Kind::Lease, SYSTEM_NAMESPACE, "controllers")).await.expect("lease");
        serde_json::from_value(object.spec).expect("spec")
    }

    #[tokio::test]
    async fn replicas_racing_for_a_lease_elect_exactly_one_every_time() {
        for round in 0..50 {
            let store = Arc::new(MemoryStore::new());
            let now = Utc::now();
            let electors: Vec<Elector> =
                (0..3).map(|i| Elector::new(store.clone(), "controllers", format!("replica-{i}"), timing())).collect();
            let attempts = electors.iter().map(|elector| elector.acquire_or_renew(now));
            let won: Vec<bool> = futures::future::join_all(attempts)
                .await
                .into_iter()
                .map(|r| r.expect("store").deadline().is_some())
                .collect();
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}: {won:?}");
        }
    }

    #[tokio::test]
    async fn the_holder_keeps_it_by_renewing_and_another_takes_it_only_after_it_lapses() {
        let store = Arc::new(MemoryStore::new());
        let now = Utc::now();
        let a = Elector::new(store.clone(), "controllers", "a", timing());
        let b = Elector::new(store.clone(), "controllers", "b", timing());
        assert_eq!(
            a.acquire_or_renew(now).await.expect("store").deadline(),
            Some(later(now, 7)),
            "a acts until its renew deadline"
        );
        assert_eq!(b.acquire_or_renew(later(now, 5)).await.expect("store").deadline(), None, "held");
        assert!(a.acquire_or_renew(later(now, 6)).await.expect("store").deadline().is_some(), "renewed");
        assert_eq!(
            b.acquire_or_renew(later(now, 15)).await.expect("store").deadline(),
            None,
            "renewed at +6: held until +16"
        );
        // a stops renewing (cut off): its own deadline (+13) comes before b may take it (+16).
        assert!(b.acquire_or_renew(later(now, 16)).await.expect("store").deadline().is_some(), "lapsed: b takes it");
        let taken = lease(&store).await;
        assert_eq!((taken.holder_identity.as_deref(), taken.lease_transitions), (Some("b"), Some(1)));
        assert_eq!(
            a.acquire_or_renew(later(now, 17)).await.expect("store").deadline(),
            None,
            "a, back, finds it taken"
        );
    }

    #[tokio::test]
    async fn a_write_from_a_stale_read_never_takes_the_lease() {
        let store = Arc::new(MemoryStore::new());
        let now = Utc::now();
        let gone = Elector::new(store.clone(), "controllers", "gone", timing());
        gone.acquire_or_renew(now).await.expect("store");
        let (b, c) = (
            Elector::new(store.clone(), "controllers", "b", timing()),
            Elector::new(store.clone(), "controllers", "c", timing()),
        );
        // c reads the lapsed lease; b takes it meanwhile; c writes with what it read.
        let stale = store.get(&c.key).await.expect("lease");
        assert!(b.acquire_or_renew(later(now, 30)).await.expect("store").deadline().is_some());
        let taking =
            LeaseSpec { holder_identity: Some("c".into()), renew_time: Some(later(now, 30)), ..lease(&store).await };
        assert!(!c.write(stale, &taking).await.expect("store"), "the store refuses the stale write");
        assert_eq!(lease(&store).await.holder_identity.as_deref(), Some("b"));
        assert_eq!(c.acquire_or_renew(later(now, 31)).await.expect("store").deadline(), None);
    }

    #[tokio::test]
    async fn the_only_server_of_a_store_takes_a_crashed_predecessors_lease_at_once() {
        let store = Arc::new(MemoryStore::new());
        let now = Utc::now();
        let crashed = Elector::new(store.clone(), "controllers", "before", timing());
        crashed.acquire_or_renew(now).await.expect("store");
        let restarted = Elector::new(store.clone(), "controllers", "after", timing());
        assert_eq!(restarted.acquire_or_renew(later(now, 1)).await.expect("store").deadline(), None, "a replica waits");
        let sole = Elector::new(store.clone(), "controllers", "after", timing()).sole(true);
        assert!(
            sole.acquire_or_renew(later(now, 1)).await.expect("store").deadline().is_some(),
            "the sole server does not"
        );
        assert_eq!(lease(&store).await.holder_identity.as_deref(), Some("after"));
    }

    #[tokio::test]
    async fn two_processes_given_one_identity_never_both_hold_the_lease() {
        let store = Arc::new(MemoryStore::new());
        let now = Utc::now();
        let first = Elector::new(store.clone(), "controllers", "cp-1", timing());
        let careless = Elector::new(store.clone(), "controllers", "cp-1", timing());
        assert!(first.acquire_or_renew(now).await.expect("store").deadline().is_some());
        for second in 1..5 {
            assert_eq!(careless.acquire_or_renew(later(now, second)).await.expect("store").deadline(), None);
            careless.release().await.expect("release");
            assert!(first.acquire_or_renew(later(now, second)).await.expect("store").deadline().is_some(), "renewed");
        }
        // A holder that stepped down without releasing waits for its own lease to lapse.
        first.forget();
        assert_eq!(first.acquire_or_renew(later(now, 5)).await.expect("store").deadline(), None);
        assert!(first.acquire_or_renew(later(now, 15)).await.expect("store").deadline().is_some(), "lapsed");
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let store = Arc::new(MemoryStore::new());
        let now = Utc::now();
        let a = Elector::new(store.clone(), "controllers", "a", timing());
        let b = Elector::new(store.clone(), "controllers", "b", timing());
        a.acquire_or_renew(now).await.expect("store");
        b.release().await.expect("releasing what one does not hold changes nothing");
        assert_eq!(lease(&store).await.holder_identity.as_deref(), Some("a"));
        a.release().await.expect("release");
        assert!(b.acquire_or_renew(later(now, 1)).await.expect("store").deadline().is_some(), "no wait for the lapse");
        assert_eq!(lease(&store).await.lease_transitions, Some(1), "taking a released lease is a transition");
    }

    #[test]
    fn the_renew_deadline_comes_before_the_lease_lapses() {
        let timing = LeaseTiming::default();
        assert!(timing.renew_deadline < timing.duration && timing.retry < timing.renew_deadline);
        assert_eq!(standing(None, "a", Utc::now()), Standing::Free);
    }

    /// Short timings, so that the runner's tests take a second or two.
    fn quick() -> LeaseTiming {
        LeaseTiming {
            duration: Duration::from_millis(1000),
            renew_deadline: Duration::from_millis(700),
            retry: Duration::from_millis(100),
        }
    }

    /// Work that counts how many replicas run it at once (and the most ever seen).
    fn counted(
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    ) -> impl Fn(watch::Receiver<bool>) -> futures::future::BoxFuture<'static, ()> {
        move |mut stop: watch::Receiver<bool>| {
            let (running, most) = (running.clone(), most.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = stop.wait_for(|stop| *stop).await;
                running.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn one_replica_runs_the_work_and_a_shutdown_hands_it_over_at_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut stops = Vec::new();
        let mut replicas = Vec::new();
        for i in 0..3 {
            let replica = Replica::new(store.clone(), format!("r{i}"), quick(), Arc::default(), false);
            let (stop, shutdown) = watch::channel(false);
            let work = counted(running.clone(), most.clone());
            replicas.push(tokio::spawn(async move { replica.lead("job".to_owned(), shutdown, work).await }));
            stops.push(stop);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(running.load(Ordering::SeqCst), 1, "exactly one replica runs the work");
        let holder = lease_named(store.as_ref(), "job").await.holder_identity.expect("holder");
        let index: usize = holder[1..].parse().expect("index");
        let stepped_down = Instant::now();
        let _ = stops[index].send(true);
        let mut waited = Duration::ZERO;
        while lease_named(store.as_ref(), "job")
            .await
            .holder_identity
            .as_deref()
            .is_none_or(|h| h == holder || h.is_empty())
            || running.load(Ordering::SeqCst) != 1
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
            assert!(waited < Duration::from_secs(5), "another replica takes over");
        }
        // Released: taken at the next retry, long before the lease (1 s) could lapse.
        assert!(stepped_down.elapsed() < Duration::from_millis(600), "handover took {:?}", stepped_down.elapsed());
        for stop in &stops {
            let _ = stop.send(true);
        }
        for replica in replicas {
            tokio::time::timeout(Duration::from_secs(5), replica).await.expect("stops").expect("joined");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two at once");
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    async fn lease_named(store: &dyn Store, name: &str) -> LeaseSpec {
        let object = store.get(&ObjectKey::new(Kind::Lease, SYSTEM_NAMESPACE, name)).await.expect("lease");
        serde_json::from_value(object.spec).expect("spec")
    }

    #[test]
    fn long_names_get_lease_names_that_are_valid_and_distinct() {
        assert_eq!(lease_name("sync", "site"), "sync-site");
        let (a, b) = (format!("{}a", "x".repeat(62)), format!("{}b", "x".repeat(62)));
        let (lease_a, lease_b) = (lease_name("sync", &a), lease_name("sync", &b));
        assert_ne!(lease_a, lease_b);
        for lease in [lease_a, lease_b, lease_name("sync", &format!("{}-{}", "y".repeat(50), "z".repeat(12)))] {
            assert!(minicloud_crds::validation::check_dns_label(&lease).is_ok(), "{lease}");
        }
    }

    #[test]
    fn replica_identities_are_checked() {
        assert!(check_identity(&default_identity()).is_ok());
        assert_ne!(default_identity(), default_identity());
        for bad in ["", "a b", "tab\tthere", &"x".repeat(129)] {
            assert!(check_identity(bad).is_err(), "{bad:?}");
        }
    }
}
