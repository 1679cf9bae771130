//! Issuance from an ACME CA, one step per reconcile, resumable after a crash: the order's URL
//! is written to the Certificate's status before anything else is done with it, so a restarted
//! control plane continues that order instead of placing another (at most one order per
//! certificate is in flight). The steps, from the order's state:
//!
//! | order | step |
//! |---|---|
//! | none | place one ([`AcmeClient::new_order`]), remember its URL |
//! | `pending` | publish its HTTP-01 challenges in the status (every HTTP listener answers them), and a moment later tell the CA they are ready |
//! | `ready` | make a key (kept in the Secret `NAME-acme` before it is used), send the CSR |
//! | `processing` | wait |
//! | `valid` | fetch the chain, check it against the key, store the pair |
//! | `invalid`, or an error | report the CA's problem, forget the order, try again after a backoff that doubles |
//!
//! The protocol itself is not here: [`AcmeClient`] is implemented by the server (it is an HTTP
//! client, which this crate does not have).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::certificate::{AcmeIssuer, CertificateStatus, Http01Challenge};

/// How long after publishing the challenges the CA is told to look: load balancers install
/// them through the Runtime API within a round.
pub const PUBLISH_GRACE: Duration = Duration::from_secs(2);
/// The first retry after a failure; it doubles per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What went wrong talking to the CA: its problem document's detail, or the transport error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AcmeError(pub String);

/// The state of an order, as the CA says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
}

/// An order as the controller needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    pub status: OrderStatus,
    /// The HTTP-01 challenges of authorizations not yet valid (answered while the CA looks).
    pub challenges: Vec<Http01Challenge>,
    /// The tokens of those the CA has not been told to look at yet.
    pub to_answer: Vec<String>,
    /// The CA's problem detail when the order (or an authorization) failed.
    pub problem: Option<String>,
}

/// An ACME CA. `account` is the opaque credentials [`AcmeClient::create_account`] returned.
#[async_trait]
pub trait AcmeClient: Send + Sync {
    /// Creates an account; returns its credentials (JSON, kept in a Secret).
    async fn create_account(&self, issuer: &AcmeIssuer) -> Result<String, AcmeError>;
    /// Places an order for `names`; returns its URL.
    async fn new_order(&self, issuer: &AcmeIssuer, account: &str, names: &[String]) -> Result<String, AcmeError>;
    /// The order's state.
    async fn order(&self, issuer: &AcmeIssuer, account: &str, order_url: &str) -> Result<OrderView, AcmeError>;
    /// Tells the CA that the response to the challenge with this token is in place.
    async fn challenge_ready(
        &self,
        issuer: &AcmeIssuer,
        account: &str,
        order_url: &str,
        token: &str,
    ) -> Result<(), AcmeError>;
    /// Sends the CSR (DER).
    async fn finalize(
        &self,
        issuer: &AcmeIssuer,
        account: &str,
        order_url: &str,
        csr_der: &[u8],
    ) -> Result<(), AcmeError>;
    /// The issued chain (PEM), `None` while the CA is still processing.
    async fn certificate(
        &self,
        issuer: &AcmeIssuer,
        account: &str,
        order_url: &str,
    ) -> Result<Option<String>, AcmeError>;
}

/// The wait before the next attempt after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
    doubled.min(MAX_BACKOFF)
}

/// Records a failure: the order is forgotten, the next attempt waits.
pub fn record_failure(status: &mut CertificateStatus, now: DateTime<Utc>) -> Duration {
    let failures = status.failed_attempts.unwrap_or(0).saturating_add(1);
    status.failed_attempts = Some(failures);
    let wait = backoff(failures);
    status.next_attempt_time = chrono::Duration::from_std(wait).ok().map(|wait| now + wait);
    forget_order(status);
    wait
}

/// Forgets the order in flight and its challenges (done, failed, or no longer needed).
pub fn forget_order(status: &mut CertificateStatus) {
    status.order_url = None;
    status.challenges.clear();
    status.challenges_published_time = None;
}

/// Whether the challenges were published long enough ago for the CA to look.
pub fn published_long_enough(status: &CertificateStatus, now: DateTime<Utc>) -> bool {
    status.challenges_published_time.and_then(|at| (now - at).to_std().ok()).is_some_and(|since| since >= PUBLISH_GRACE)
}

/// A CSR (DER) for `names` and the new key (PEM).
pub fn csr(names: &[String]) -> Result<(Vec<u8>, String), AcmeError> {
    let key = rcgen::KeyPair::generate().map_err(|error| AcmeError(error.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|error| AcmeError(error.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let request = params.serialize_request(&key).map_err(|error| AcmeError(error.to_string()))?;
    Ok((request.der().to_vec(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn a_failure_forgets_the_order_and_waits() {
        let now = Utc::now();
        let mut status =
            CertificateStatus { order_url: Some("https://ca/order/1".into()), ..CertificateStatus::default() };
        status.challenges.push(Http01Challenge {
            dns_name: "a".into(),
            token: "t".into(),
            key_authorization: "t.k".into(),
        });
        let wait = record_failure(&mut status, now);
        assert_eq!((status.order_url.clone(), status.challenges.len(), status.failed_attempts), (None, 0, Some(1)));
        assert_eq!(status.next_attempt_time, Some(now + chrono::Duration::from_std(wait).expect("wait")));
        record_failure(&mut status, now);
        assert_eq!(status.failed_attempts, Some(2));
    }

    #[test]
    fn only_well_formed_challenges_are_served() {
        let good =
            Http01Challenge { dns_name: "a".into(), token: "abc_-1".into(), key_authorization: "abc_-1.XYZ".into() };
        assert!(good.is_well_formed());
        for (token, key) in
            [("abc", "abd.x"), ("a b", "a b.x"), ("abc", "abc"), ("abc", "abc.x y"), ("", ".x"), ("a\n", "a\n.x")]
        {
            let bad = Http01Challenge { dns_name: "a".into(), token: token.into(), key_authorization: key.into() };
            assert!(!bad.is_well_formed(), "{token:?} {key:?}");
        }
    }
}
