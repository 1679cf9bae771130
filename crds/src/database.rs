//! `ManagedDatabase`: a database container with generated, encrypted credentials, scheduled
//! backups with retention, restore, and a deletion policy.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;

/// Desired state of a managed database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedDatabaseSpec {
    /// Database engine.
    pub engine: Engine,
    /// Engine version, e.g. `15` for PostgreSQL 15.
    pub version: String,
    /// Persistent storage.
    #[serde(default)]
    pub storage: Storage,
    /// Name of the database created for the application. Defaults to `app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// Scheduled backups; absent means no scheduled backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPolicy>,
    /// Restore the new database from this backup of another (or this) database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreSource>,
    /// What happens to the data when the object is deleted. Defaults to `Snapshot`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Network to join. Defaults to the namespace's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// Supported engines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL (version `15`).
    #[default]
    Postgres,
    /// MariaDB, MySQL-compatible (version `10.11`).
    Mysql,
    /// Redis, the "CloudCache" (version `7`).
    Redis,
}

impl Engine {
    /// The engine as manifests write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Redis => "redis",
        }
    }

    /// The versions this installation has images for.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Engine::Postgres => &["15"],
            Engine::Mysql => &["10.11"],
            Engine::Redis => &["7"],
        }
    }
}

/// The Secret holding a database's generated credentials: `NAME-credentials` (the name
/// shortened so that it stays a DNS label).
pub fn credentials_secret_name(database: &str) -> String {
    let prefix: String = database.chars().take(51).collect();
    format!("{}-credentials", prefix.trim_end_matches('-'))
}

/// The smallest storage a database gets.
pub(crate) const MIN_STORAGE_BYTES: u64 = 100 * 1024 * 1024;

/// Annotation asking for a backup now (`cloud db backup`): a request id, answered in
/// `status.lastBackupRequest` once the backup is taken (or failed).
pub const BACKUP_REQUEST_ANNOTATION: &str = "minicloud.dev/backup-request";
/// Annotation asking for a restore (`cloud db restore`): `REQUEST-ID BACKUP-NAME`, answered in
/// `status.lastRestore`.
pub const RESTORE_REQUEST_ANNOTATION: &str = "minicloud.dev/restore-request";

/// A new id for a backup or restore request: unique enough with a random `salt`, and ordered
/// by time for a human reading the annotation.
pub fn request_id(now: chrono::DateTime<chrono::Utc>, salt: u16) -> String {
    format!("{}-{salt:04x}", now.format("%Y%m%dT%H%M%S%.3f"))
}
/// Annotation (`"true"`) that lets a `Snapshot` deletion go on without its final backup, as
/// RDS's `SkipFinalSnapshot` does (`cloud delete db NAME --skip-final-snapshot`): the way out
/// when the final backup cannot be taken.
pub const SKIP_FINAL_SNAPSHOT_ANNOTATION: &str = "minicloud.dev/skip-final-snapshot";

/// Persistent storage of the database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storage {
    /// Size hint with a suffix (`1Gi`, `500Mi`). Defaults to `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// Backup schedule and retention.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupPolicy {
    /// Cron schedule with five fields (`0 3 * * *`: daily at 03:00 UTC).
    pub schedule: String,
    /// How many backups to keep; older ones are removed. Defaults to 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub retention: Option<u32>,
}

/// A backup to restore from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreSource {
    /// Name of the backup, as listed in a database's `status.backups`.
    pub backup: String,
}

/// Fate of the data on deletion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove the container and its data.
    Delete,
    /// Remove the container, keep the data volume.
    Retain,
    /// Take a final backup, then remove container and data.
    #[default]
    Snapshot,
}

/// One backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupRecord {
    /// Backup name, usable in `restoreFrom.backup` and `cloud db restore --backup`.
    pub name: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the dump, checked before a restore.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// `Scheduled`, `Manual` or `Final` (taken before deletion).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The last restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRecord {
    /// The request id of `cloud db restore`, or absent for `spec.restoreFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The backup restored.
    pub backup: String,
    /// When it finished.
    pub time: DateTime<Utc>,
    /// Whether it worked.
    pub succeeded: bool,
    /// What happened.
    pub message: String,
}

/// Where clients connect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseEndpoint {
    /// Host address for clients on the host (127.0.0.1).
    pub host: String,
    /// Published port.
    pub port: u16,
}

/// Observed state of a managed database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedDatabaseStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `ContainerRunning`, `Accepting` (the engine answers its own readiness check),
    /// `BackedUp` (the last backup worked) and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where clients connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<DatabaseEndpoint>,
    /// Name of the Secret holding the generated credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Backups that exist, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupRecord>,
    /// When the last backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<DateTime<Utc>>,
    /// When the next scheduled backup is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_backup_time: Option<DateTime<Utc>>,
    /// The last on-demand backup request handled (see `minicloud.dev/backup-request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_request: Option<String>,
    /// The last restore (`cloud db restore` or `spec.restoreFrom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore: Option<RestoreRecord>,
    /// The `spec.restoreFrom` backup already restored into this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}
