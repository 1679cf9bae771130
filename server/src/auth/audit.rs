//! The audit log: who did what, to which object, with what result. Every request that can
//! change something (and every secret reveal, a POST) is recorded, and so is every refused
//! request (401, 403) whatever its method, except those refused for arriving too fast (429),
//! which would let a flood of requests fill the log.
//!
//! This module holds what an entry is; [`super::audit_log`] writes them. `cloud audit` reads
//! the log back; it is pruned with the events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One request, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub time: DateTime<Utc>,
    /// The request id (`x-request-id`), to find the request in the server's logs.
    pub request_id: String,
    /// The token's name, `anonymous` without authentication, `-` when no valid token came.
    pub principal: String,
    /// `create`, `apply`, `delete`, `reveal`, ... or the HTTP method when no route matched.
    pub verb: String,
    /// A plural (`instances`), `tokens`, `secretkeys`, ...
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The HTTP status answered.
    pub code: u16,
    /// Why it was refused or failed; for an apply, what it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// An entry read back from the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Which entries to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries about this namespace.
    pub namespace: Option<String>,
    /// At most this many (the newest).
    pub limit: usize,
}
