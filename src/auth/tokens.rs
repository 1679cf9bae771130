//! API tokens: how they look, how they are kept and what the store holds about them.
//!
//! A token is `mc_` followed by 43 base64url characters: 256 random bits. The server keeps only
//! its SHA-256 (a salted slow hash buys nothing against guessing 256 random bits, and a fast one
//! lets every request be checked by an index lookup), with the token's name, role, namespace,
//! expiry, last use and revocation. The token itself is shown once, when it is created.

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::audit::{AuditEntry, AuditQuery, AuditRecord};
use super::Role;

/// What every token starts with (so that a leaked one is recognisable, e.g. by secret scanners).
pub const PREFIX: &str = "mc_";
/// Random bytes in a token.
const SECRET_BYTES: usize = 32;
/// Characters after the prefix: 32 bytes in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// What goes wrong with tokens in the store.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("a token named {0:?} already exists; revoke it first or choose another name")]
    AlreadyExists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A newly made token: the text to hand out once, and the hash to keep.
pub struct Secret {
    pub text: String,
    pub hash: String,
}

/// Makes a new random token.
pub fn generate() -> Secret {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::fill(&mut bytes);
    let text = format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    Secret { hash: hash(&text), text }
}

/// The hex SHA-256 of a token, as the store keeps it.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `text` has a token's shape (checked before any lookup).
pub fn well_formed(text: &str) -> bool {
    text.strip_prefix(PREFIX).is_some_and(|secret| {
        secret.len() == SECRET_CHARS
            && secret.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    })
}

/// A token to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub namespace: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the store knows about a token (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// `None`: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Updated at most once a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// `active`, `expired` or `revoked` at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|expiry| expiry <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// Tokens and the audit log, as the store keeps them (the SQL store implements it; tokens and
/// audit entries are not objects: they are neither watched nor applied).
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Creates a token with the hash of its secret; a revoked token of the same name is
    /// replaced, a live one is `AlreadyExists`.
    async fn create_token(&self, token: &NewToken, hash: &str) -> Result<TokenRecord, AccessError>;
    /// The token whose secret hashes to `hash`, revoked and expired ones included.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, AccessError>;
    /// Every token (of one namespace when given), by name.
    async fn list_tokens(&self, namespace: Option<&str>) -> Result<Vec<TokenRecord>, AccessError>;
    /// One token by name.
    async fn token(&self, name: &str) -> Result<Option<TokenRecord>, AccessError>;
    /// Marks a token revoked (it stays listed, and requests with it say so).
    async fn revoke_token(&self, name: &str) -> Result<TokenRecord, AccessError>;
    /// Records that a token was used at `time`.
    async fn touch_token(&self, name: &str, time: DateTime<Utc>) -> Result<(), AccessError>;
    /// Tokens neither revoked nor expired.
    async fn count_active_tokens(&self) -> Result<u64, AccessError>;
    /// Appends audit entries (one transaction).
    async fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), AccessError>;
    /// Audit entries matching `query`, oldest first.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, AccessError>;
    /// The id of the newest audit entry (0 when there is none): it moves when one is written.
    async fn audit_head(&self) -> Result<i64, AccessError>;
    /// Removes entries older than `older_than` and beyond the `keep` newest.
    async fn prune_audit(&self, older_than: DateTime<Utc>, keep: usize) -> Result<u64, AccessError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_unique_and_hashed() {
        let first = generate();
        let second = generate();
        assert!(well_formed(&first.text), "{}", first.text);
        assert_ne!(first.text, second.text);
        assert_eq!(first.hash, hash(&first.text));
        assert_eq!(first.hash.len(), 64);
        assert!(!first.hash.contains(&first.text[PREFIX.len()..]));
    }

    #[test]
    fn malformed_tokens_are_recognised_without_a_lookup() {
        let good = generate().text;
        for bad in
            ["", "mc_", "Bearer x", &good[1..], &format!("{good}x"), &good.replace('_', "/"), &good.to_uppercase()]
        {
            if bad == good {
                continue;
            }
            assert!(!well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn state_reads_revocation_then_expiry() {
        let now = Utc::now();
        let mut record = TokenRecord {
            name: "a".into(),
            role: Role::View,
            namespace: None,
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(1)),
            last_used_at: None,
            revoked_at: None,
        };
        assert_eq!(record.state(now), "active");
        assert_eq!(record.state(now + chrono::Duration::seconds(1)), "expired");
        record.revoked_at = Some(now);
        assert_eq!(record.state(now), "revoked");
    }
}
