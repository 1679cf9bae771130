//! `Lease`: who holds a piece of work shared by several control-plane replicas, and until when —
//! Kubernetes' coordination/v1 Lease, with its field names. A replica holds the lease while it
//! renews it; another takes it only once `renewTime + leaseDurationSeconds` has passed. The
//! store's compare-and-swap on `resourceVersion` is the only arbiter: a write from a stale
//! read is refused, so two replicas can never both believe they took it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules::Errors;
use crate::FieldPath;

/// The namespace the control plane keeps its leases in.
pub const SYSTEM_NAMESPACE: &str = "minicloud-system";

/// Who holds the lease and since when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    /// The replica holding the lease (its identity, as it prints at start and in `/version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    /// How long the lease lasts after its last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub lease_duration_seconds: Option<i32>,
    /// When the current holder took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<DateTime<Utc>>,
    /// When the current holder last renewed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<DateTime<Utc>>,
    /// How many times the lease changed hands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_transitions: Option<i32>,
}

impl LeaseSpec {
    /// When the lease lapses if it is not renewed; `None` when it has no holder.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.holder_identity.as_deref().filter(|holder| !holder.is_empty())?;
        let renewed = self.renew_time.or(self.acquire_time)?;
        Some(renewed + chrono::Duration::seconds(i64::from(self.lease_duration_seconds.unwrap_or(0).max(0))))
    }
}

/// A lease has no observed state of its own (as in Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseStatus {}

/// The semantic rules of a lease spec.
pub(crate) fn check_lease_spec(spec: &LeaseSpec, path: &FieldPath, errors: &mut Errors) {
    if let Some(holder) = &spec.holder_identity {
        if holder.len() > 253 || holder.chars().any(|c| c.is_control() || c.is_whitespace()) {
            errors.add(path.key("holderIdentity"), "at most 253 characters, no spaces or control characters");
        }
    }
    if let Some(duration) = spec.lease_duration_seconds {
        if !(1..=3600).contains(&duration) {
            errors.add(path.key("leaseDurationSeconds"), "from 1 to 3600 seconds");
        }
    }
    if spec.lease_transitions.is_some_and(|transitions| transitions < 0) {
        errors.add(path.key("leaseTransitions"), "cannot be negative");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_its_duration_after_its_last_renewal_and_a_free_one_never() {
        let now = Utc::now();
        let held = LeaseSpec {
            holder_identity: Some("replica-a".into()),
            lease_duration_seconds: Some(10),
            acquire_time: Some(now - chrono::Duration::seconds(60)),
            renew_time: Some(now),
            lease_transitions: Some(3),
        };
        assert_eq!(held.expires_at(), Some(now + chrono::Duration::seconds(10)));
        let free = LeaseSpec { holder_identity: None, ..held.clone() };
        assert_eq!(free.expires_at(), None);
        let released = LeaseSpec { holder_identity: Some(String::new()), ..held };
        assert_eq!(released.expires_at(), None, "an empty holder is a released lease");
    }
}
