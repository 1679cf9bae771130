//! `Sync`: a directory of manifests kept applied continuously (`cloud server --sync DIR`,
//! `cloud sync DIR`). The syncing process writes the spec it runs with and, after every round,
//! what it applied (the content revision, the git commit), what it pruned and what went wrong.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;

/// The annotation that asks the syncing process for a round now (the console's "Sync now"):
/// a timestamp; each new value is answered by one round, recorded in `status.lastRequest`.
pub const SYNC_REQUEST_ANNOTATION: &str = "minicloud.dev/sync-requested-at";

/// How a directory is synced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncSpec {
    /// The directory (on the machine of the syncing process).
    pub directory: String,
    /// The applyset the directory's objects belong to (prune scope). Defaults to the sync's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_set: Option<String>,
    /// Seconds between applies when no file changes. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub interval_seconds: Option<u32>,
    /// Prune databases too (they follow their deletion policy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prune_stateful: bool,
}

/// What the last rounds did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncStatus {
    /// The generation the syncing process last ran with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Synced` (the last round applied the directory as it is) and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the directory was last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<DateTime<Utc>>,
    /// SHA-256 of the manifests last applied (their paths and contents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The git commit of the directory when it was last applied (a git work tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Objects the directory holds.
    #[serde(default)]
    pub objects: u32,
    /// What the last round that changed anything created, updated, pruned or released
    /// (`updated instance/web`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_changes: Vec<String>,
    /// Why the last round did not apply (validation problems, an unreachable store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Who syncs: `HOST pid PID` of the process running the loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syncer: Option<String>,
    /// Rounds run since the sync began.
    #[serde(default)]
    pub rounds: u64,
    /// The last request for a round now ([`SYNC_REQUEST_ANNOTATION`]) a round answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
}
