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
    #[default]
    Postgres,
    Mysql,
    Redis,
}

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
    /// Backup name, usable in `restoreFrom.backup`.
    pub name: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Size in bytes.
    pub size_bytes: u64,
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
    /// `ContainerRunning`, `Accepting`, `BackedUp` and `Ready`.
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
}
