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
//! This module decides and writes; the runtime (a later step) gates the controllers on it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use minicloud_crds::lease::{LeaseSpec, SYSTEM_NAMESPACE};
use minicloud_crds::meta::{ObjectMeta, API_VERSION};
use minicloud_crds::{Kind, Object, ObjectKey};
use minicloud_store::{Store, StoreError};

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

/// One replica's hand on one lease.
pub struct Elector {
    store: Arc<dyn Store>,
    key: ObjectKey,
    identity: String,
    timing: LeaseTiming,
}

impl Elector {
    /// The elector of lease `name` (in the system namespace) for replica `identity`.
    pub fn new(store: Arc<dyn Store>, name: &str, identity: impl Into<String>, timing: LeaseTiming) -> Elector {
        Elector { store, key: ObjectKey::new(Kind::Lease, SYSTEM_NAMESPACE, name), identity: identity.into(), timing }
    }

    /// Takes or renews the lease at `now`. `Some(deadline)`: this replica holds it and may act
    /// until `deadline` (unless it renews again before); `None`: another replica holds it, or
    /// another write came first.
    pub async fn acquire_or_renew(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
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
                    Ok(_) => Ok(Some(deadline)),
                    Err(StoreError::AlreadyExists(_)) => Ok(None),
                    Err(error) => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let spec: LeaseSpec = serde_json::from_value(current.spec.clone()).unwrap_or_default();
        let next = match standing(Some(&spec), &self.identity, now) {
            Standing::Taken { .. } => return Ok(None),
            Standing::Mine => LeaseSpec { renew_time: Some(now), lease_duration_seconds: Some(duration), ..spec },
            Standing::Free => {
                let changed_hands =
                    spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty() && h != self.identity);
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
        self.write(current, &next).await.map(|written| written.then_some(deadline))
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
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
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
            let won: Vec<bool> =
                futures::future::join_all(attempts).await.into_iter().map(|r| r.expect("store").is_some()).collect();
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
            a.acquire_or_renew(now).await.expect("store"),
            Some(later(now, 7)),
            "a acts until its renew deadline"
        );
        assert_eq!(b.acquire_or_renew(later(now, 5)).await.expect("store"), None, "held");
        assert!(a.acquire_or_renew(later(now, 6)).await.expect("store").is_some(), "renewed");
        assert_eq!(b.acquire_or_renew(later(now, 15)).await.expect("store"), None, "renewed at +6: held until +16");
        // a stops renewing (cut off): its own deadline (+13) comes before b may take it (+16).
        assert!(b.acquire_or_renew(later(now, 16)).await.expect("store").is_some(), "lapsed: b takes it");
        let taken = lease(&store).await;
        assert_eq!((taken.holder_identity.as_deref(), taken.lease_transitions), (Some("b"), Some(1)));
        assert_eq!(a.acquire_or_renew(later(now, 17)).await.expect("store"), None, "a, back, finds it taken");
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
        assert!(b.acquire_or_renew(later(now, 30)).await.expect("store").is_some());
        let taking =
            LeaseSpec { holder_identity: Some("c".into()), renew_time: Some(later(now, 30)), ..lease(&store).await };
        assert!(!c.write(stale, &taking).await.expect("store"), "the store refuses the stale write");
        assert_eq!(lease(&store).await.holder_identity.as_deref(), Some("b"));
        assert_eq!(c.acquire_or_renew(later(now, 31)).await.expect("store"), None);
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
        assert!(b.acquire_or_renew(later(now, 1)).await.expect("store").is_some(), "no wait for the lapse");
    }

    #[test]
    fn the_renew_deadline_comes_before_the_lease_lapses() {
        let timing = LeaseTiming::default();
        assert!(timing.renew_deadline < timing.duration && timing.retry < timing.renew_deadline);
        assert_eq!(standing(None, "a", Utc::now()), Standing::Free);
    }
}
