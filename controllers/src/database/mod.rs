//! The ManagedDatabase controller: one database container per object (PostgreSQL, MariaDB for
//! `mysql`, or Redis), its credentials generated once into a Secret, its data on a named
//! volume, verified backups on a schedule and on demand, restores, and a deletion policy.
//!
//! The decisions it makes, and where they are:
//!
//! | decision | where |
//! |---|---|
//! | the credentials: made once, kept, adopted after a `Retain` | [`DatabaseController::credentials`] |
//! | keep, replace or create the container | [`DatabaseController::ensure_container`], [`crate::container`] |
//! | whether the engine accepts connections with the credentials | [`DatabaseController::probe`] |
//! | what differs per engine (image, port, readiness, dump and restore commands) | [`engine`] |
//! | when to back up, what to keep, whether a backup is whole | [`DatabaseController::back_up`], [`backups`] |
//! | when to restore, and from which verified backup | [`DatabaseController::restore`] |
//! | what deletion keeps, per deletion policy | [`DatabaseController::release`] |
//!
//! - Credentials: the Secret `NAME-credentials` (type `DatabaseCredentials`; keys `username`,
//!   `password`, `database`, `url`), owned by the database, created once with a 32-character
//!   password from the OS random number generator and never regenerated: a re-applied database
//!   finds and keeps it (and adopts one a `Retain` deletion left behind, with its volume).
//! - Container `mcdb.NAMESPACE.NAME.CLUSTER` on the database's network (alias NAME), its port
//!   published on 127.0.0.1 (the host port is kept across replacements), data on the labelled
//!   volume `mcdb.NAMESPACE.NAME.data.CLUSTER`. A container or volume of those names that is not
//!   this database's (by its labels) is never used or removed: `NameConflict`,
//!   `VolumeConflict`. Readiness is the engine's own check, run inside the container
//!   (`pg_isready`, `mariadb-admin ping`, `redis-cli ping`: condition `Accepting`), and then a
//!   login over TCP with the generated credentials (`CredentialsInvalid` when they fail).
//! - Backups ([`backups`]): consistent dumps streamed out of the container (`pg_dump -Fc`,
//!   `mariadb-dump --single-transaction`, Redis `BGSAVE` then its snapshot file), written to a
//!   partial file, synced, renamed, then described (size, SHA-256); on the cron schedule of
//!   `spec.backup` (retention: the newest N scheduled and manual ones of this database) and on
//!   request (annotation `minicloud.dev/backup-request`, `cloud db backup`). A failed backup is
//!   never listed: `BackedUp=False` and a Warning event say why. Each backup records the slot or
//!   request it answered, and none is taken for one already answered: a controller that died
//!   between a backup and its status write (another replica took over) never causes a second.
//! - Restores verify the dump's SHA-256 first, then stream it into the engine (`pg_restore
//!   --clean`, `mariadb`, Redis: the snapshot put in place and Redis restarted on it): on
//!   request (annotation `minicloud.dev/restore-request`, `cloud db restore`) and once for
//!   `spec.restoreFrom`.
//! - Deletion (finalizer `minicloud.dev/database`): `Snapshot` (default) takes a final backup
//!   first — and keeps everything while it cannot (condition `FinalSnapshot`), unless the
//!   annotation `minicloud.dev/skip-final-snapshot` says to go on without it —, `Retain` keeps
//!   the volume and the credentials Secret, `Delete` removes everything but earlier backups.

pub mod backups;
pub mod engine;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::cron::Schedule;
use minicloud_crds::database::{
    BackupRecord, DatabaseEndpoint, DeletionPolicy, Engine, ManagedDatabaseSpec, ManagedDatabaseStatus, RestoreRecord,
    BACKUP_REQUEST_ANNOTATION, RESTORE_REQUEST_ANNOTATION, SKIP_FINAL_SNAPSHOT_ANNOTATION,
};
use minicloud_crds::instance::RestartPolicy;
use minicloud_crds::kinds::ManagedDatabase;
use minicloud_crds::meta::{ConditionStatus, ObjectMeta};
use minicloud_crds::{Kind, Object, ObjectKey, API_VERSION};
use minicloud_store::{EventType, Store, StoreError};
use serde_json::json;

use self::backups::{BackupMeta, BackupStore, Occasion};
use self::engine::Credentials;
use crate::container::{self, Created, Desired, Settled};
use crate::docker::labels::{spec_hash, Identity, Labels};
use crate::docker::{
    names, short_id, CommandOutput, ContainerDriver, ContainerInfo, ContainerSpec, DriverError, PublishSpec, VolumeSpec,
};
use crate::meta::owner_reference;
use crate::metrics::Metrics;
use crate::owned::{self, Found, OwnedNetwork, OwnedVolume, Wanted};
use crate::reconciler::{record_event, Action, Cleanup, Context, Controller, ReconcileError};
use minicloud_crds::conditions::set_condition;

/// The finalizer that guards a database's container, volume and final snapshot.
pub(crate) const FINALIZER: &str = "minicloud.dev/database";
/// How soon a starting database is checked again.
const STARTING_RECHECK: Duration = Duration::from_secs(1);
/// How often a running database's readiness is checked when nothing else happens.
const HEALTH_POLL: Duration = Duration::from_secs(30);
/// Time allowed for a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a dump or a restore.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Characters of generated passwords.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
/// Length of generated passwords.
const PASSWORD_LENGTH: usize = 32;
/// Scheduled and manual backups kept per database unless the policy says otherwise.
const DEFAULT_RETENTION: usize = 7;

/// Conditions' reasons that say why no container could be used; a Docker error does not
/// overwrite them.
const CONTAINER_REASONS: &[&str] =
    &["ImagePullFailed", "NameConflict", "VolumeConflict", "NetworkConflict", "MigrationFailed"];

/// The data volume of a database: its name, identity and the name an earlier version used.
fn data_volume(cluster: &str, namespace: &str, name: &str) -> OwnedVolume {
    OwnedVolume {
        name: names::database_volume(cluster, namespace, name),
        identity: Identity::volume(cluster, namespace, Kind::ManagedDatabase, name, "data"),
        legacy: names::legacy::database_volume(namespace, name),
    }
}

/// What a database's readiness check found.
enum Probe {
    /// The engine accepts connections and the credentials log in.
    Ready,
    /// Not accepting connections (yet).
    Starting,
    /// It runs, but refuses the generated credentials; the engine's words.
    CredentialsRefused(String),
}

/// The Secret holding a database's credentials.
pub fn credentials_secret(name: &str) -> String {
    minicloud_crds::database::credentials_secret_name(name)
}

/// Reconciles ManagedDatabases.
pub struct DatabaseController {
    store: Arc<dyn Store>,
    driver: Arc<dyn ContainerDriver>,
    extra_labels: HashMap<String, String>,
    backups: BackupStore,
    metrics: Arc<Metrics>,
}

/// What a round works with.
struct Round<'a> {
    object: &'a Object,
    spec: &'a ManagedDatabaseSpec,
    namespace: String,
    name: String,
    uid: String,
    generation: i64,
}

impl<'a> Round<'a> {
    fn new(object: &'a Object, spec: &'a ManagedDatabaseSpec) -> Round<'a> {
        Round {
            object,
            spec,
            namespace: object.namespace().to_owned(),
            name: object.metadata.name.clone(),
            uid: object.metadata.uid.clone().unwrap_or_default(),
            generation: object.metadata.generation.unwrap_or(1),
        }
    }
}

impl DatabaseController {
    /// A controller keeping backups under `state_dir/backups` and counting them in `metrics`.
    pub fn new(
        store: Arc<dyn Store>,
        driver: Arc<dyn ContainerDriver>,
        extra_labels: HashMap<String, String>,
        state_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> DatabaseController {
        DatabaseController {
            store,
            driver,
            extra_labels,
            backups: BackupStore::new(state_dir.join("backups")),
            metrics,
        }
    }

    /// The database's credentials: from its Secret, or generated into a new one. `Err` says
    /// what is wrong with an existing Secret.
    async fn credentials(&self, round: &Round<'_>) -> Result<Result<Credentials, String>, ReconcileError> {
        let secret_name = credentials_secret(&round.name);
        let key = ObjectKey::new(Kind::Secret, round.namespace.clone(), secret_name.clone());
        match self.store.get(&key).await {
            Ok(mut secret) => {
                let data = |key: &str| secret.spec["stringData"][key].as_str().map(str::to_owned);
                let (Some(username), Some(password), Some(database)) =
                    (data("username"), data("password"), data("database"))
                else {
                    return Ok(Err(format!(
                        "secret/{secret_name} exists without the keys username, password and database; delete it to have new credentials generated (the database must then be new too)"
                    )));
                };
                // A Secret a `Retain` deletion left (or one made by hand) is adopted.
                let owned = secret.metadata.owner_references.iter().any(|o| o.uid == round.uid);
                if !owned {
                    secret.metadata.owner_references = vec![owner_reference(round.object)];
                    match self.store.update(secret).await {
                        Ok(_) => {}
                        Err(StoreError::Conflict { .. }) => {
                            return Err(ReconcileError::Failed("the credentials changed; again".into()))
                        }
                        Err(error) => return Err(error.into()),
                    }
                    record_event(
                        self.store.as_ref(),
                        round.object,
                        EventType::Normal,
                        "CredentialsAdopted",
                        format!("using the existing secret/{secret_name}"),
                    )
                    .await;
                }
                Ok(Ok(Credentials { username, password, database }))
            }
            Err(StoreError::NotFound(_)) => {
                let engine = round.spec.engine;
                let credentials = Credentials {
                    username: engine::default_username(engine).to_owned(),
                    password: generate_password()?,
                    database: match engine {
                        Engine::Redis => "0".to_owned(),
                        _ => round.spec.database_name.clone().unwrap_or_else(|| "app".to_owned()),
                    },
                };
                let secret = Object {
                    api_version: API_VERSION.to_owned(),
                    kind: Kind::Secret.as_str().to_owned(),
                    metadata: ObjectMeta {
                        name: secret_name.clone(),
                        namespace: Some(round.namespace.clone()),
                        owner_references: vec![owner_reference(round.object)],
                        ..ObjectMeta::default()
                    },
                    spec: json!({
                        "type": "DatabaseCredentials",
                        "stringData": {
                            "username": credentials.username,
                            "password": credentials.password,
                            "database": credentials.database,
                            "url": engine::url(engine, &credentials, &round.name),
                        }
                    }),
                    status: serde_json::Value::Null,
                };
                match self.store.create(secret).await {
                    Ok(_) => {
                        record_event(
                            self.store.as_ref(),
                            round.object,
                            EventType::Normal,
                            "CredentialsCreated",
                            format!("generated credentials in secret/{secret_name}"),
                        )
                        .await;
                        Ok(Ok(credentials))
                    }
                    Err(StoreError::AlreadyExists(_)) => {
                        Err(ReconcileError::Failed("the credentials Secret appeared meanwhile; again".into()))
                    }
                    Err(error) => Err(error.into()),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    fn container_spec(
        &self,
        round: &Round<'_>,
        credentials: &Credentials,
        status: &ManagedDatabaseStatus,
    ) -> ContainerSpec {
        let engine = round.spec.engine;
        let env = engine::container_env(engine, credentials);
        let hash = spec_hash(&json!({
            "engine": engine.as_str(),
            "version": round.spec.version,
            "network": round.spec.network,
            "image": engine::image(engine),
            "env": spec_hash(&json!(env)),
        }));
        let labels = Labels {
            cluster: self.store.cluster_id().to_owned(),
            namespace: round.namespace.clone(),
            kind: Kind::ManagedDatabase,
            name: round.name.clone(),
            uid: round.uid.clone(),
            spec_hash: hash,
        }
        .to_map(&self.extra_labels);
        let cluster = self.store.cluster_id();
        ContainerSpec {
            name: names::database_container(cluster, &round.namespace, &round.name),
            image: engine::image(engine).to_owned(),
            entrypoint: None,
            command: None,
            env,
            labels,
            ports: vec![PublishSpec {
                container_port: engine::port(engine),
                protocol: "tcp".into(),
                host_ip: "127.0.0.1".into(),
                host_port: status.endpoint.as_ref().map(|endpoint| endpoint.port),
            }],
            network: names::network(cluster, &round.namespace, round.spec.network.as_deref()),
            aliases: vec![round.name.clone()],
            memory_bytes: None,
            nano_cpus: None,
            health: None,
            volumes: vec![VolumeSpec {
                volume: names::database_volume(cluster, &round.namespace, &round.name),
                mount_path: engine::data_path(engine).into(),
                read_only: false,
            }],
            user: None,
        }
    }

    /// The running container, created (or replaced) when needed. `Ok(None)`: not yet (status
    /// says why).
    async fn ensure_container(
        &self,
        ctx: &Context<'_>,
        round: &Round<'_>,
        template: &ContainerSpec,
        status: &mut ManagedDatabaseStatus,
    ) -> Result<Option<ContainerInfo>, ReconcileError> {
        let cluster = self.store.cluster_id();
        let engine = round.spec.engine;
        let desired = Desired {
            wanted: Wanted::new(cluster, Kind::ManagedDatabase, &round.namespace, &round.name, &round.uid),
            spec: template.clone(),
            network: OwnedNetwork::new(cluster, &round.namespace, round.spec.network.as_deref()),
            // Only a volume labelled as this database's (a `Retain`ed one of the same name
            // included) holds its data; any other of the name is never used.
            volumes: vec![data_volume(cluster, &round.namespace, &round.name)],
            // The remembered host port gives way when someone else took it.
            fixed_ports: Vec::new(),
            restart: RestartPolicy::Always,
            noun: format!("{} {} container", engine.as_str(), round.spec.version),
            hash_covers: "engine, version, network or credentials",
        };
        let driver = self.driver.as_ref();
        match container::settle(ctx, driver, &desired, &self.extra_labels).await? {
            Settled::Kept(container) => return Ok(Some(container)),
            Settled::Conflict { reason, message } => return Err(conflict(round, status, reason, message)),
            Settled::Vacant { .. } => {}
        }
        match container::create(ctx, driver, &desired, &self.extra_labels).await {
            Ok(Created::Started(container)) => Ok(Some(container)),
            Ok(Created::NameTaken) => Ok(None),
            Ok(Created::Conflict { reason, message }) => Err(conflict(round, status, reason, message)),
            Err(error @ DriverError::ImageUnavailable { .. }) => {
                let image = match engine {
                    Engine::Postgres => "postgres",
                    Engine::Mysql => "mariadb",
                    Engine::Redis => "redis",
                };
                let message = format!("{error}; build it with `scripts/local-images.sh {image}`");
                not_ready(status, "ImagePullFailed", &message, round.generation, Utc::now());
                Err(ReconcileError::Failed(message))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Whether the engine accepts connections (its own check), and then whether the generated
    /// credentials log in over TCP, as an application's would.
    async fn probe(&self, container: &str, engine: Engine, credentials: &Credentials) -> Probe {
        let check = engine::readiness(engine, credentials);
        let passed = |output: &CommandOutput| {
            output.exit_code == 0
                && engine::readiness_output(engine).is_none_or(|expected| output.output.trim() == expected)
        };
        match self.driver.exec_streaming(container, &check.argv, &check.env, None, None, CHECK_TIMEOUT).await {
            Ok(output) if engine::refuses_credentials(&output.output) => {
                return Probe::CredentialsRefused(output.output.trim().to_owned())
            }
            Ok(output) if passed(&output) => {}
            _ => return Probe::Starting,
        }
        let login = engine::login(engine, credentials);
        match self.driver.exec_streaming(container, &login.argv, &login.env, None, None, CHECK_TIMEOUT).await {
            Ok(output) if passed(&output) => Probe::Ready,
            Ok(output) => {
                let said = output.output.trim();
                Probe::CredentialsRefused(if said.is_empty() {
                    format!("the login exited with code {}", output.exit_code)
                } else {
                    said.chars().take(500).collect()
                })
            }
            Err(error) => Probe::CredentialsRefused(error.to_string()),
        }
    }

    /// Takes a backup; `Err` says why it failed (nothing is listed then).
    async fn backup(
        &self,
        round: &Round<'_>,
        container: &str,
        credentials: &Credentials,
        reason: &str,
        occasion: Occasion,
    ) -> Result<BackupMeta, String> {
        let engine = round.spec.engine;
        if engine == Engine::Redis {
            self.redis_snapshot(container, credentials).await?;
        }
        let time = Utc::now();
        let mut pending = self
            .backups
            .begin(&round.namespace, &round.name, engine::dump_extension(engine), time)
            .await
            .map_err(|error| error.to_string())?;
        let dump = engine::dump(engine, credentials);
        let outcome = self
            .driver
            .exec_streaming(container, &dump.argv, &dump.env, None, Some(&mut pending.writer), TRANSFER_TIMEOUT)
            .await;
        let failure = match outcome {
            Ok(output) if output.exit_code == 0 => None,
            Ok(output) => {
                Some(format!("`{}` exited with code {}: {}", dump.argv[0], output.exit_code, output.output.trim()))
            }
            Err(error) => Some(error.to_string()),
        };
        if let Some(failure) = failure {
            self.backups.abandon(pending).await;
            return Err(failure);
        }
        let meta = BackupMeta {
            name: String::new(),
            file: String::new(),
            database: round.name.clone(),
            database_uid: round.uid.clone(),
            engine: engine.as_str().to_owned(),
            version: round.spec.version.clone(),
            time,
            size_bytes: 0,
            sha256: String::new(),
            reason: reason.to_owned(),
            occasion,
        };
        self.backups.commit(pending, meta).await.map_err(|error| error.to_string())
    }

    /// Redis: a fresh snapshot (`BGSAVE`, then until Redis counts one more snapshot).
    async fn redis_snapshot(&self, container: &str, credentials: &Credentials) -> Result<(), String> {
        let info = engine::redis_persistence(credentials);
        let read = || async {
            let output = self
                .driver
                .exec_streaming(container, &info.argv, &info.env, None, None, CHECK_TIMEOUT)
                .await
                .map_err(|error| error.to_string())?;
            Ok::<_, String>(engine::redis_snapshot_state(&output.output))
        };
        let (_, _, before) = read().await?;
        let start = engine::redis_snapshot(credentials);
        self.driver
            .exec_streaming(container, &start.argv, &start.env, None, None, CHECK_TIMEOUT)
            .await
            .map_err(|error| error.to_string())?;
        let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (idle, ok, saves) = read().await?;
            if idle && saves > before {
                return if ok {
                    Ok(())
                } else {
                    Err("Redis says its snapshot (BGSAVE) failed; see the database's logs".into())
                };
            }
            if idle && !ok {
                return Err("Redis says its snapshot (BGSAVE) failed; see the database's logs".into());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("Redis's snapshot did not finish within an hour".into());
            }
        }
    }

    /// Restores `backup` (checked against its SHA-256 first). `Ok(true)` when the engine has to
    /// start again to load it (Redis).
    async fn restore(
        &self,
        round: &Round<'_>,
        container: &str,
        credentials: &Credentials,
        backup: &str,
    ) -> Result<bool, String> {
        let engine = round.spec.engine;
        let meta = self.backups.find(&round.namespace, backup).map_err(|error| error.to_string())?;
        if meta.engine != engine.as_str() {
            return Err(format!(
                "backup {backup} is a {} dump; database {} runs {}",
                meta.engine,
                round.name,
                engine.as_str()
            ));
        }
        let mut file = self.backups.open_verified(&round.namespace, &meta).await.map_err(|error| error.to_string())?;
        let restore = engine::restore(engine, credentials);
        let output = self
            .driver
            .exec_streaming(container, &restore.argv, &restore.env, Some(&mut file), None, TRANSFER_TIMEOUT)
            .await
            .map_err(|error| error.to_string())?;
        if output.exit_code != 0 {
            return Err(format!(
                "`{}` exited with code {}: {}",
                restore.argv[0],
                output.exit_code,
                output.output.trim()
            ));
        }
        if engine != Engine::Redis {
            return Ok(false);
        }
        let install = engine::redis_install_snapshot(credentials);
        self.driver
            .exec_streaming(container, &install.argv, &install.env, None, None, CHECK_TIMEOUT)
            .await
            .map_err(|error| error.to_string())?;
        Ok(true)
    }

    /// Records a restore's outcome: status, event.
    async fn restored(
        &self,
        round: &Round<'_>,
        status: &mut ManagedDatabaseStatus,
        request: Option<String>,
        backup: &str,
        outcome: &Result<bool, String>,
    ) {
        self.metrics.record_restore(&round.namespace, &round.name, outcome.is_ok());
        let (succeeded, message) = match outcome {
            Ok(_) => (true, format!("restored backup {backup}")),
            Err(error) => (false, format!("restoring backup {backup} failed: {error}")),
        };
        let (event_type, reason) =
            if succeeded { (EventType::Normal, "Restored") } else { (EventType::Warning, "RestoreFailed") };
        record_event(self.store.as_ref(), round.object, event_type, reason, message.clone()).await;
        status.last_restore =
            Some(RestoreRecord { request, backup: backup.to_owned(), time: Utc::now(), succeeded, message });
    }

    /// Takes a backup and records it: status, conditions, event.
    async fn back_up(
        &self,
        round: &Round<'_>,
        status: &mut ManagedDatabaseStatus,
        container: &str,
        credentials: &Credentials,
        reason: &str,
        occasion: Occasion,
    ) -> bool {
        let now = Utc::now();
        let started = std::time::Instant::now();
        let outcome = self.backup(round, container, credentials, reason, occasion).await;
        self.metrics.record_backup(
            &round.namespace,
            &round.name,
            reason,
            started.elapsed().as_secs_f64(),
            outcome.as_ref().ok().map(|meta| (meta.size_bytes, meta.time.timestamp())),
        );
        match outcome {
            Ok(meta) => {
                let message = format!(
                    "backup {} taken ({reason}, {} bytes, sha256 {})",
                    meta.name,
                    meta.size_bytes,
                    &meta.sha256[..12.min(meta.sha256.len())]
                );
                record_event(self.store.as_ref(), round.object, EventType::Normal, "BackedUp", message.clone()).await;
                set_condition(
                    &mut status.conditions,
                    "BackedUp",
                    ConditionStatus::True,
                    "BackupTaken",
                    message,
                    round.generation,
                    now,
                );
                true
            }
            Err(error) => {
                let message = format!("the {} backup failed: {error}", reason.to_ascii_lowercase());
                record_event(self.store.as_ref(), round.object, EventType::Warning, "BackupFailed", message.clone())
                    .await;
                set_condition(
                    &mut status.conditions,
                    "BackedUp",
                    ConditionStatus::False,
                    "BackupFailed",
                    message,
                    round.generation,
                    now,
                );
                false
            }
        }
    }

    async fn converge(&self, ctx: &mut Context<'_>, db: ManagedDatabase) -> Result<Action, ReconcileError> {
        let object = ctx.object().clone();
        let round = Round::new(&object, &db.spec);
        let previous = db.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        status.observed_generation = Some(round.generation);
        status.credentials_secret = Some(credentials_secret(&round.name));
        let now = Utc::now();

        let credentials = match self.credentials(&round).await? {
            Ok(credentials) => credentials,
            Err(message) => {
                not_ready(&mut status, "CredentialsInvalid", &message, round.generation, now);
                ctx.write_status(&status).await?;
                return Ok(Action::RequeueAfter(HEALTH_POLL));
            }
        };
        let template = self.container_spec(&round, &credentials, &status);
        let container = match self.ensure_container(ctx, &round, &template, &mut status).await {
            Ok(Some(container)) => container,
            Ok(None) => return Ok(Action::RequeueAfter(STARTING_RECHECK)),
            Err(error) => {
                if !condition_reason(&status).is_some_and(|reason| CONTAINER_REASONS.contains(&reason)) {
                    not_ready(&mut status, "DockerError", &error.to_string(), round.generation, now);
                }
                ctx.write_status(&status).await?;
                return Err(error);
            }
        };
        if let Some((_, _, host, port)) = container.ports.first() {
            status.endpoint = Some(DatabaseEndpoint { host: host.clone(), port: *port });
        }
        let at = status.endpoint.as_ref().map_or(String::new(), |e| format!(" on {}:{}", e.host, e.port));
        set_condition(
            &mut status.conditions,
            "ContainerRunning",
            ConditionStatus::True,
            "Running",
            format!("container {} is running{at}", short_id(&container.id)),
            round.generation,
            now,
        );
        let refused = match self.probe(&container.id, round.spec.engine, &credentials).await {
            Probe::Ready => None,
            Probe::Starting => {
                set_condition(
                    &mut status.conditions,
                    "Accepting",
                    ConditionStatus::False,
                    "Starting",
                    format!("{} does not accept connections yet", round.spec.engine.as_str()),
                    round.generation,
                    now,
                );
                set_condition(
                    &mut status.conditions,
                    "Ready",
                    ConditionStatus::False,
                    "Starting",
                    "the engine is starting",
                    round.generation,
                    now,
                );
                ctx.write_status(&status).await?;
                return Ok(Action::RequeueAfter(STARTING_RECHECK));
            }
            // Not Ready, but backups and restores asked for are still answered (they report
            // their own failure): a restore may be the way out.
            Probe::CredentialsRefused(said) => Some(format!(
                "{} runs but does not let the credentials in secret/{} log in ({said}). If its data was initialised with other credentials (a volume kept from an earlier database, or a Secret deleted or edited since), restore the earlier Secret, or delete the database with deletionPolicy Delete and create it again",
                round.spec.engine.as_str(),
                credentials_secret(&round.name)
            )),
        };
        set_condition(
            &mut status.conditions,
            "Accepting",
            ConditionStatus::True,
            "Accepting",
            format!("{} accepts connections", round.spec.engine.as_str()),
            round.generation,
            now,
        );
        // Nothing of this database is being backed up now: what is partial is a leftover.
        let removed = self.backups.remove_partials(&round.namespace, &round.name);
        if removed > 0 {
            tracing::info!(database = %round.name, removed, "removed the partial files of interrupted backups");
        }

        // Restores: spec.restoreFrom once, then requests.
        let mut restarting = false;
        if let Some(source) = &round.spec.restore_from {
            let tried = status.last_restore.as_ref().is_some_and(|r| r.request.is_none() && r.backup == source.backup);
            if status.restored_from.as_deref() != Some(source.backup.as_str())
                && !(tried && previous.observed_generation == Some(round.generation))
            {
                let outcome = self.restore(&round, &container.id, &credentials, &source.backup).await;
                if outcome.is_ok() {
                    status.restored_from = Some(source.backup.clone());
                }
                restarting |= matches!(outcome, Ok(true));
                self.restored(&round, &mut status, None, &source.backup, &outcome).await;
            }
        }
        if let Some((request, backup)) = restore_request(&object) {
            if !restarting && status.last_restore.as_ref().and_then(|r| r.request.as_deref()) != Some(request.as_str())
            {
                let outcome = self.restore(&round, &container.id, &credentials, &backup).await;
                restarting |= matches!(outcome, Ok(true));
                self.restored(&round, &mut status, Some(request), &backup, &outcome).await;
            }
        }
        if restarting {
            // Redis stops to load the snapshot at its next start; the next round starts it.
            set_condition(
                &mut status.conditions,
                "Ready",
                ConditionStatus::False,
                "Restoring",
                "the engine restarts to load the restored data",
                round.generation,
                now,
            );
            ctx.write_status(&status).await?;
            return Ok(Action::RequeueAfter(STARTING_RECHECK));
        }

        // Backups: on request, then on schedule.
        if let Some(request) = object.metadata.annotations.get(BACKUP_REQUEST_ANNOTATION).cloned() {
            if status.last_backup_request.as_deref() != Some(request.as_str()) {
                let occasion = Occasion { request: Some(request.clone()), ..Occasion::default() };
                if !self.backups.answered(&round.namespace, &round.uid, &occasion) {
                    self.back_up(&round, &mut status, &container.id, &credentials, "Manual", occasion).await;
                }
                status.last_backup_request = Some(request);
            }
        }
        match &round.spec.backup {
            Some(policy) => {
                let schedule = Schedule::parse(&policy.schedule).map_err(ReconcileError::InvalidSpec)?;
                let due = status.next_backup_time.or_else(|| schedule.next_after(now));
                if let Some(due) = due.filter(|due| *due <= now) {
                    let occasion = Occasion { slot: Some(due), ..Occasion::default() };
                    if !self.backups.answered(&round.namespace, &round.uid, &occasion) {
                        self.back_up(&round, &mut status, &container.id, &credentials, "Scheduled", occasion).await;
                    }
                    status.next_backup_time = schedule.next_after(Utc::now());
                } else {
                    status.next_backup_time = due;
                }
                self.enforce_retention(&round, policy.retention.map_or(DEFAULT_RETENTION, |n| n as usize));
            }
            None => {
                status.next_backup_time = None;
                // Manual backups of a database without a policy keep the default retention.
                self.enforce_retention(&round, DEFAULT_RETENTION);
            }
        }
        self.list_backups(&round, &mut status);

        let endpoint = status.endpoint.as_ref().map_or(String::new(), |e| format!(" at {}:{}", e.host, e.port));
        match refused {
            None => {
                set_condition(
                    &mut status.conditions,
                    "Ready",
                    ConditionStatus::True,
                    "Accepting",
                    format!(
                        "{} {} ready{endpoint} (credentials: secret/{})",
                        round.spec.engine.as_str(),
                        round.spec.version,
                        credentials_secret(&round.name)
                    ),
                    round.generation,
                    now,
                );
            }
            Some(message) => {
                let news = condition_reason(&status) != Some("CredentialsInvalid");
                set_condition(
                    &mut status.conditions,
                    "Ready",
                    ConditionStatus::False,
                    "CredentialsInvalid",
                    message.clone(),
                    round.generation,
                    now,
                );
                if news {
                    record_event(self.store.as_ref(), round.object, EventType::Warning, "CredentialsInvalid", message)
                        .await;
                }
            }
        }
        ctx.write_status(&status).await?;
        let until_backup = status
            .next_backup_time
            .and_then(|due| (due - Utc::now()).to_std().ok())
            .map_or(HEALTH_POLL, |left| left.min(HEALTH_POLL) + Duration::from_millis(50));
        Ok(Action::RequeueAfter(until_backup))
    }

    /// Removes this database's oldest scheduled and manual backups beyond `keep`.
    fn enforce_retention(&self, round: &Round<'_>, keep: usize) {
        let mine: Vec<BackupMeta> = self
            .backups
            .list(&round.namespace)
            .into_iter()
            .filter(|meta| meta.database_uid == round.uid && meta.reason != "Final")
            .collect();
        for meta in mine.iter().take(mine.len().saturating_sub(keep)) {
            match self.backups.remove(&round.namespace, meta) {
                Ok(()) => tracing::info!(backup = %meta.name, "removed by retention"),
                Err(error) => tracing::warn!(%error, "cannot remove an old backup"),
            }
        }
    }

    fn list_backups(&self, round: &Round<'_>, status: &mut ManagedDatabaseStatus) {
        status.backups = self
            .backups
            .list(&round.namespace)
            .into_iter()
            .filter(|meta| meta.database_uid == round.uid)
            .map(|meta| BackupRecord {
                name: meta.name,
                time: meta.time,
                size_bytes: meta.size_bytes,
                sha256: meta.sha256,
                reason: meta.reason,
            })
            .collect();
        status.last_backup_time = status.backups.iter().map(|backup| backup.time).max();
    }

    /// A final snapshot that cannot be taken holds the deletion: the condition `FinalSnapshot`
    /// and an event say why and name the way out; tried again with backoff.
    async fn final_snapshot_failed(
        &self,
        ctx: &mut Context<'_>,
        round: &Round<'_>,
        status: &mut ManagedDatabaseStatus,
        problem: String,
    ) -> Result<Cleanup, ReconcileError> {
        let message = format!(
            "{problem}. Fix it, or delete without the snapshot: cloud delete db {} -n {} --skip-final-snapshot (or set deletionPolicy Delete or Retain)",
            round.name, round.namespace
        );
        set_final_snapshot(status, ConditionStatus::False, "SnapshotFailed", &message, round, Utc::now());
        ctx.write_status(status).await?;
        record_event(self.store.as_ref(), round.object, EventType::Warning, "FinalSnapshotFailed", message.clone())
            .await;
        Err(ReconcileError::Failed(message))
    }

    /// Deletion, as the policy says.
    async fn release(&self, ctx: &mut Context<'_>, db: ManagedDatabase) -> Result<Cleanup, ReconcileError> {
        let object = ctx.object().clone();
        let round = Round::new(&object, &db.spec);
        let mut status = db.status.clone().unwrap_or_default();
        let cluster = self.store.cluster_id();
        let wanted = Wanted::new(cluster, Kind::ManagedDatabase, &round.namespace, &round.name, &round.uid);
        let now = Utc::now();
        let skip = object.metadata.annotations.get(SKIP_FINAL_SNAPSHOT_ANNOTATION).is_some_and(|value| value == "true");
        if round.spec.deletion_policy == DeletionPolicy::Snapshot && skip {
            let message =
                format!("deleting without a final snapshot, as the annotation {SKIP_FINAL_SNAPSHOT_ANNOTATION} asks");
            record_event(self.store.as_ref(), round.object, EventType::Warning, "FinalSnapshotSkipped", message).await;
        } else if round.spec.deletion_policy == DeletionPolicy::Snapshot {
            // Something may hold data: it was started once.
            let started = status.endpoint.is_some()
                || !matches!(owned::find(self.driver.as_ref(), &wanted).await?, Found::Absent);
            if started {
                let credentials = match self.credentials(&round).await? {
                    Ok(credentials) => credentials,
                    Err(message) => {
                        let message = format!("no final snapshot without credentials ({message}); the data is kept");
                        return self.final_snapshot_failed(ctx, &round, &mut status, message).await;
                    }
                };
                let template = self.container_spec(&round, &credentials, &status);
                let container = match self.ensure_container(ctx, &round, &template, &mut status).await {
                    Ok(Some(container)) => container,
                    Ok(None) => return Ok(Cleanup::Pending(Action::RequeueAfter(STARTING_RECHECK))),
                    Err(error) => {
                        let message = format!("no final snapshot: the database cannot run ({error}); the data is kept");
                        return self.final_snapshot_failed(ctx, &round, &mut status, message).await;
                    }
                };
                match self.probe(&container.id, round.spec.engine, &credentials).await {
                    Probe::Ready => {}
                    Probe::Starting => {
                        let message =
                            "waiting for the engine to accept connections to take the final snapshot".to_owned();
                        set_final_snapshot(&mut status, ConditionStatus::Unknown, "Waiting", &message, &round, now);
                        ctx.write_status(&status).await?;
                        return Ok(Cleanup::Pending(Action::RequeueAfter(STARTING_RECHECK)));
                    }
                    Probe::CredentialsRefused(said) => {
                        let message =
                            format!("no final snapshot: the engine refuses the credentials ({said}); the data is kept");
                        return self.final_snapshot_failed(ctx, &round, &mut status, message).await;
                    }
                }
                if !self.back_up(&round, &mut status, &container.id, &credentials, "Final", Occasion::default()).await {
                    let message =
                        "the final snapshot failed (see the BackedUp condition); nothing was deleted".to_owned();
                    return self.final_snapshot_failed(ctx, &round, &mut status, message).await;
                }
            }
        }
        // A clean shutdown: the data a Retain keeps starts without recovery.
        match owned::remove_after(self.driver.as_ref(), &wanted, Some(Duration::from_secs(30))).await? {
            None => {}
            Some(owner) => {
                tracing::info!(container = %wanted.name, %owner, "left a container that is not this database's")
            }
        }
        match round.spec.deletion_policy {
            DeletionPolicy::Retain => {
                // The credentials stay with the data: the Secret is no longer owned by the
                // database, so the store does not delete it with it.
                let key = ObjectKey::new(Kind::Secret, round.namespace.clone(), credentials_secret(&round.name));
                if let Ok(mut secret) = self.store.get(&key).await {
                    if secret.metadata.owner_references.iter().any(|o| o.uid == round.uid) {
                        secret.metadata.owner_references.retain(|o| o.uid != round.uid);
                        match self.store.update(secret).await {
                            Ok(_) | Err(StoreError::NotFound(_)) => {}
                            Err(StoreError::Conflict { .. }) => return Ok(Cleanup::Pending(Action::RetryNow)),
                            Err(error) => return Err(error.into()),
                        }
                    }
                }
                record_event(
                    self.store.as_ref(),
                    round.object,
                    EventType::Normal,
                    "Retained",
                    format!(
                        "volume {} and secret/{} kept",
                        names::database_volume(cluster, &round.namespace, &round.name),
                        credentials_secret(&round.name)
                    ),
                )
                .await;
            }
            DeletionPolicy::Delete | DeletionPolicy::Snapshot => {
                let volume = data_volume(cluster, &round.namespace, &round.name);
                match self.driver.remove_volume(&volume.name, &volume.identity).await {
                    Ok(()) => {}
                    // Not this database's (it never used it): it stays.
                    Err(DriverError::NotOurs { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        let network = OwnedNetwork::new(cluster, &round.namespace, round.spec.network.as_deref());
        self.driver.remove_network_if_unused(&network.name, &network.identity).await?;
        self.metrics.forget_database(&round.namespace, &round.name);
        Ok(Cleanup::Done)
    }
}

/// Sets the `FinalSnapshot` condition (and `Ready` to False while deleting).
fn set_final_snapshot(
    status: &mut ManagedDatabaseStatus,
    state: ConditionStatus,
    reason: &str,
    message: &str,
    round: &Round<'_>,
    now: DateTime<Utc>,
) {
    set_condition(&mut status.conditions, "FinalSnapshot", state, reason, message, round.generation, now);
    set_condition(&mut status.conditions, "Ready", ConditionStatus::False, "Deleting", message, round.generation, now);
}

/// `REQUEST-ID BACKUP` from the restore annotation.
fn restore_request(object: &Object) -> Option<(String, String)> {
    let value = object.metadata.annotations.get(RESTORE_REQUEST_ANNOTATION)?;
    let (request, backup) = value.trim().split_once(' ')?;
    Some((request.to_owned(), backup.trim().to_owned()))
}

fn condition_reason(status: &ManagedDatabaseStatus) -> Option<&str> {
    status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.as_str())
}

fn not_ready(status: &mut ManagedDatabaseStatus, reason: &str, message: &str, generation: i64, now: DateTime<Utc>) {
    set_condition(&mut status.conditions, "Ready", ConditionStatus::False, reason, message, generation, now);
}

/// Something that is not this database's holds a name it needs (the toolkit recorded the
/// event): nothing is touched; the `Ready` condition says what to do. The error retries with
/// backoff.
fn conflict(round: &Round<'_>, status: &mut ManagedDatabaseStatus, reason: &str, message: String) -> ReconcileError {
    not_ready(status, reason, &message, round.generation, Utc::now());
    ReconcileError::Failed(message)
}

/// A password from the operating system's random number generator.
fn generate_password() -> Result<String, ReconcileError> {
    let mut bytes = [0u8; PASSWORD_LENGTH];
    getrandom::fill(&mut bytes)
        .map_err(|error| ReconcileError::Failed(format!("the random number generator failed: {error}")))?;
    // 256 is not a multiple of the alphabet's size: redraw the bytes that would skew it.
    let limit = 256 - (256 % PASSWORD_ALPHABET.len());
    let mut password = String::with_capacity(PASSWORD_LENGTH);
    let mut pool = bytes.to_vec();
    while password.len() < PASSWORD_LENGTH {
        let Some(byte) = pool.pop() else {
            getrandom::fill(&mut bytes)
                .map_err(|error| ReconcileError::Failed(format!("the random number generator failed: {error}")))?;
            pool = bytes.to_vec();
            continue;
        };
        if (byte as usize) < limit {
            password.push(char::from(PASSWORD_ALPHABET[byte as usize % PASSWORD_ALPHABET.len()]));
        }
    }
    Ok(password)
}

#[async_trait]
impl Controller for DatabaseController {
    type Resource = ManagedDatabase;
    const KIND: Kind = Kind::ManagedDatabase;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    async fn apply(&self, ctx: &mut Context<'_>, db: ManagedDatabase) -> Result<Action, ReconcileError> {
        self.converge(ctx, db).await
    }

    async fn cleanup(&self, ctx: &mut Context<'_>, db: ManagedDatabase) -> Result<Cleanup, ReconcileError> {
        self.release(ctx, db).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_and_from_the_alphabet() {
        let first = generate_password().expect("password");
        let second = generate_password().expect("password");
        assert_eq!(first.len(), PASSWORD_LENGTH);
        assert!(first.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)), "{first}");
        assert_ne!(first, second);
    }

    #[test]
    fn names_stay_dns_labels() {
        assert_eq!(credentials_secret("pg"), "pg-credentials");
        let long = "a".repeat(63);
        let secret = credentials_secret(&long);
        assert!(secret.len() <= 63 && minicloud_crds::validation::check_dns_label(&secret).is_ok(), "{secret}");
    }
}
