//! What the store keeps for authentication: tokens and the audit log, behind one trait that
//! the SQL store implements (tokens and audit entries are not objects: they are neither
//! watched nor applied).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::audit::{AuditEntry, AuditQuery, AuditRecord};
use super::tokens::{NewToken, TokenRecord};

/// What goes wrong with tokens in the store.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("a token named {0:?} already exists; revoke it first or choose another name")]
    AlreadyExists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] minicloud_store::StoreError),
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
