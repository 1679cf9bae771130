//! The SQL store, one implementation for SQLite and PostgreSQL (sqlx's `Any` driver with the
//! same statements; the migrations differ per backend, under `migrations/`).
//!
//! Ordering: every write transaction first locks the single `meta` row (an `UPDATE`), then
//! takes its revisions from it. Writers are therefore serialised, a revision is never used by
//! two writes, and a transaction holding revision N commits before any transaction can take
//! N+1. A watcher reading "every change after 4" can thus never see 6 while 5 is still in
//! flight — the gap PostgreSQL sequences would allow. Lists and watch polls read the head
//! revision and the rows in one statement, so they see one consistent snapshot.
//!
//! Two pools: writers use their own connection, so that no number of readers (lists, watch
//! replays, slow clients) can make a write wait for a connection; readers share the other.
//!
//! Secrets: every value is sealed ([`SecretKeys`]) before it is written to an object row or a
//! change-log row, and opened when an object is read back (`get`, `list`, the reads inside a
//! write). Stored documents relayed as they are (`list_raw`, `watch_raw`) hold envelopes only;
//! the API redacts them. Opening the store seals what is still plain (a store from before
//! encryption) or sealed by a key that is no longer the primary.
//!
//! Watches are served by one shared [`Feed`] per store (see `feed.rs`). Wake-ups: writers in
//! this process wake the feed directly; on PostgreSQL, `pg_notify` at commit wakes the feeds of
//! other replicas (LISTEN), and the feed also polls once a second in case a notification was
//! lost.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use minicloud_crds::{Object, ObjectKey};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use tokio::sync::{watch, Mutex, MutexGuard};
use tokio::task::JoinHandle;

mod access;
mod feed;
mod reach;
mod sole_server;

pub use feed::WatchLag;
pub use sole_server::{claim as claim_sqlite, ClaimError, SoleServer};

use self::feed::Feed;
use super::rules::{self, Plan};
use super::{
    ChangeType, Deleted, Event, EventType, NewEvent, ObjectList, Query, RawItem, RawWatchStream, Store, StoreError,
    StoreResult, WatchStream, Write,
};
use crate::secrets::{SecretError, SecretKeys};

/// Turns the database driver's errors into the store contract's.
pub(crate) trait OrStoreError<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> OrStoreError<T> for Result<T, E> {
    fn db(self) -> StoreResult<T> {
        self.map_err(|error| StoreError::Database(Box::new(error)))
    }
}

/// How long a request waits for a database connection before it fails (503).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// What readiness writes to learn whether a store whose write failed can write again.
const WRITE_PROBE_BYTES: usize = 1 << 20;
/// How often readiness may try that write.
const WRITE_PROBE_EVERY: Duration = Duration::from_secs(1);
/// The PostgreSQL notification channel.
const CHANNEL: &str = "minicloud_changes";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A store on SQLite or PostgreSQL.
pub struct SqlStore {
    /// Reads: gets, lists, the change feed and watch replays.
    pool: AnyPool,
    /// Writes only (one writer at a time in this process anyway).
    write_pool: AnyPool,
    feed: Arc<Feed>,
    backend: Backend,
    head: Arc<watch::Sender<i64>>,
    /// Serialises writers in this process (SQLite allows one writer at a time anyway; the lock
    /// spares them from spinning on SQLITE_BUSY).
    write_lock: Mutex<()>,
    listener: Option<JoinHandle<()>>,
    cluster_id: String,
    keys: Arc<SecretKeys>,
    /// Counts the events recorded here (see [`Store::event_signal`]).
    events_recorded: watch::Sender<u64>,
    /// Why the last write failed in the database (disk full, I/O): `None` once one commits.
    write_problem: std::sync::Mutex<Option<String>>,
    /// When readiness last tried a write after one failed.
    last_write_probe: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether the database answers (PostgreSQL): refuses at once while it is known not to.
    reachability: Arc<reach::Reachability>,
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Where the embedded store lives by default: `$XDG_DATA_HOME/minicloud` (on Linux usually
/// `~/.local/share/minicloud`), or `./.minicloud` when the system names no data directory.
pub fn default_data_dir() -> std::path::PathBuf {
    dirs::data_dir().map_or_else(|| std::path::PathBuf::from(".minicloud"), |dir| dir.join("minicloud"))
}

/// The SQLite URL of the embedded store in `data_dir`.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("minicloud.db").display())
}

fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).map(|time| time.with_timezone(&Utc)).unwrap_or_default()
}

impl SqlStore {
    /// Opens (creating if needed) the store at `url` — `sqlite://PATH` or `postgres://...` —,
    /// applies pending migrations, and seals Secret values with `keys` where they are not yet
    /// sealed by its primary key. A SQLite file is created with mode 0600.
    pub async fn open(url: &str, keys: Arc<SecretKeys>) -> StoreResult<SqlStore> {
        install_drivers();
        let (backend, connect_url) =
            if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                if let Some(file) = sole_server::sqlite_file(url) {
                    if let Some(parent) = file.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                        minicloud_model::files::create_private_dir(parent).db()?;
                    }
                    create_private_file(&file).db()?;
                }
                let query = if path.contains('?') { "" } else { "?mode=rwc" };
                (Backend::Sqlite, format!("sqlite://{path}{query}"))
            } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                (Backend::Postgres, url.to_owned())
            } else {
                return Err(StoreError::UnsupportedUrl(url.to_owned()));
            };
        let options = |connections: u32| {
            let options = AnyPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // A connection whose transaction could not be finished (a COMMIT and then its
                // ROLLBACK failed: disk full, I/O) is closed, never reused: closing rolls the
                // transaction back and releases SQLite's write lock. Reused, it would take the
                // next write into a savepoint of that dead transaction and acknowledge it
                // without ever committing it.
                // The pool pings every released connection anyway; only one that still looks
                // inside a transaction is pinged first, which lets a rollback begun when its
                // transaction was dropped finish (SQLite's worker runs it later) before it is
                // judged.
                .after_release(|connection, _| {
                    Box::pin(async move {
                        if sqlx::Connection::is_in_transaction(&*connection) {
                            sqlx::Connection::ping(&mut *connection).await?;
                        }
                        Ok(!sqlx::Connection::is_in_transaction(&*connection))
                    })
                });
            match backend {
                Backend::Sqlite => options.after_connect(|connection, _| {
                    Box::pin(async move {
                        connection
                            .execute(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;",
                            )
                            .await?;
                        Ok(())
                    })
                }),
                // A server cut off from the database in the middle of a write transaction
                // (a network partition drops its packets) would hold the revision row's lock —
                // and with it every other replica's writes, lease renewals included — until
                // PostgreSQL noticed the dead client (TCP keepalive: hours). PostgreSQL ends
                // such a session after 5 s idle inside a transaction: less than the leases'
                // renew deadline (7 s by default), so the other replicas keep their leases.
                Backend::Postgres => options.after_connect(|connection, _| {
                    Box::pin(async move {
                        connection.execute("SET idle_in_transaction_session_timeout = '5s'").await?;
                        Ok(())
                    })
                }),
            }
        };
        let write_pool = options(2).connect(&connect_url).await.db()?;
        let pool = options(8).connect(&connect_url).await.db()?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await.db()?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await.db()?,
        }
        sqlx::query("INSERT INTO cluster (singleton, id) VALUES (1, $1) ON CONFLICT DO NOTHING")
            .bind(uuid::Uuid::new_v4().simple().to_string())
            .execute(&pool)
            .await
            .db()?;
        let cluster_id: String = sqlx::query("SELECT id FROM cluster").fetch_one(&pool).await.db()?.try_get(0).db()?;
        let revision: i64 =
            sqlx::query("SELECT revision FROM meta WHERE id = 1").fetch_one(&pool).await.db()?.try_get(0).db()?;
        let head = Arc::new(watch::Sender::new(revision));
        let listener = match backend {
            Backend::Postgres => Some(tokio::spawn(listen_for_changes(url.to_owned(), head.clone()))),
            Backend::Sqlite => None,
        };
        let feed = Feed::start(pool.clone(), revision, head.subscribe());
        let store = SqlStore {
            pool,
            write_pool,
            feed,
            backend,
            head,
            write_lock: Mutex::new(()),
            listener,
            cluster_id,
            keys,
            events_recorded: watch::Sender::new(0),
            write_problem: std::sync::Mutex::new(None),
            last_write_probe: std::sync::Mutex::new(None),
            reachability: Arc::new(reach::Reachability::new(match backend {
                Backend::Postgres => Some(url.to_owned()),
                Backend::Sqlite => None,
            })),
        };
        let resealed = store.reseal().await?;
        if resealed > 0 {
            tracing::info!(rows = resealed, key = %store.keys.primary_id(), "sealed Secret values with the current key");
        }
        Ok(store)
    }

    /// How long watchers take to take changes (see [`feed`]), for `/metrics`.
    pub fn watch_lag(&self) -> super::WatchLag {
        self.feed.lag()
    }

    /// Seals again every Secret value, in object rows and change-log rows, that is plain or
    /// sealed by another key than the primary; in one transaction. Returns the rows rewritten.
    /// Revisions do not move: the objects have not changed.
    async fn reseal(&self) -> StoreResult<usize> {
        let (_guard, mut transaction) = self.begin_write().await?;
        let mut rewritten = 0;
        let rows = sqlx::query("SELECT namespace, name, body, kind FROM objects WHERE kind IN ('Secret', 'Stack')")
            .fetch_all(&mut *transaction)
            .await
            .db()?;
        for row in rows {
            let mut object: Object = serde_json::from_str(&row.try_get::<String, _>(2).db()?)?;
            if self.keys.reseal_object(&mut object).map_err(sealing)? {
                sqlx::query("UPDATE objects SET body = $1 WHERE kind = $4 AND namespace = $2 AND name = $3")
                    .bind(serde_json::to_string(&object)?)
                    .bind(row.try_get::<String, _>(0).db()?)
                    .bind(row.try_get::<String, _>(1).db()?)
                    .bind(row.try_get::<String, _>(3).db()?)
                    .execute(&mut *transaction)
                    .await
                    .db()?;
                rewritten += 1;
            }
        }
        let rows = sqlx::query("SELECT revision, body FROM changes WHERE kind IN ('Secret', 'Stack')")
            .fetch_all(&mut *transaction)
            .await
            .db()?;
        for row in rows {
            let mut object: Object = serde_json::from_str(&row.try_get::<String, _>(1).db()?)?;
            if self.keys.reseal_object(&mut object).map_err(sealing)? {
                let body = serde_json::to_string(&object)?;
                sqlx::query("UPDATE changes SET body = $1, size = $2 WHERE revision = $3")
                    .bind(&body)
                    .bind(i64::try_from(body.len()).unwrap_or(i64::MAX))
                    .bind(row.try_get::<i64, _>(0).db()?)
                    .execute(&mut *transaction)
                    .await
                    .db()?;
                rewritten += 1;
            }
        }
        transaction.commit().await.db()?;
        Ok(rewritten)
    }

    /// Rotates the Secret key: a new primary key (written to the key file next to the old
    /// one), every value sealed again under it, then the old key dropped from the file. Returns
    /// the new key's id and the rows rewritten.
    pub async fn rotate_secret_key(&self) -> StoreResult<(String, usize)> {
        let id = self.keys.begin_rotation().map_err(sealing)?;
        let rewritten = self.reseal().await?;
        self.keys.finish_rotation().map_err(sealing)?;
        tracing::info!(key = %id, rows = rewritten, "secret key rotated");
        Ok((id, rewritten))
    }

    /// The object as a read returns it: a Secret's values opened.
    fn opened(&self, mut object: Object) -> StoreResult<Object> {
        self.keys.open_object(&mut object).map_err(sealing)?;
        Ok(object)
    }

    /// Which backend this is, for messages: `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
        self.write_pool.close().await;
    }

    /// Runs a read: refused at once while the database is known to be unreachable; a failure
    /// to reach it marks it so.
    async fn guarded<T>(&self, work: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        self.reachability.check()?;
        let outcome = work.await;
        if let Err(error) = &outcome {
            self.reachability.observe(error);
        }
        outcome
    }

    /// Runs a write like [`SqlStore::guarded`], and records what its outcome says about the
    /// store: a database failure (disk full, I/O, unreachable) makes it unwritable until a write
    /// commits; refusals (conflict, not found, invalid) say nothing about it.
    async fn guarded_write<T>(&self, work: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let outcome = self.guarded(work).await;
        let mut problem = self.write_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &outcome {
            Ok(_) => *problem = None,
            Err(StoreError::Database(error)) => *problem = Some(error.to_string()),
            Err(_) => {}
        }
        outcome
    }

    /// Writes a new version of a stored object, as `prepare` plans it from the stored one.
    async fn rewrite(
        &self,
        object: Object,
        prepare: fn(&Object, &ObjectKey, Object) -> StoreResult<Plan>,
    ) -> StoreResult<Object> {
        self.guarded_write(async {
            let key = rules::key_of(&object)?;
            let (_guard, mut transaction) = self.begin_write().await?;
            let stored = read_object(&mut transaction, &self.keys, &key)
                .await?
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            let plan = prepare(&stored, &key, object)?;
            let (object, revision) = apply_plan(&mut transaction, &self.keys, &key, plan).await?;
            self.commit(transaction, revision).await?;
            Ok(object)
        })
        .await
    }

    /// Starts a write: takes the in-process lock, opens a transaction and locks the revision
    /// row, which serialises writers across processes too.
    async fn begin_write(&self) -> StoreResult<(MutexGuard<'_, ()>, Transaction<'static, Any>)> {
        let guard = self.write_lock.lock().await;
        let mut transaction = self.write_pool.begin().await.db()?;
        sqlx::query("UPDATE meta SET revision = revision WHERE id = 1").execute(&mut *transaction).await.db()?;
        Ok((guard, transaction))
    }

    /// Refuses a watch from a revision the change log no longer holds (`Expired`).
    async fn check_retained(&self, revision: i64) -> StoreResult<()> {
        let compacted: i64 = sqlx::query("SELECT compacted_revision FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .db()?
            .try_get(0)
            .db()?;
        if revision < compacted {
            return Err(StoreError::Expired { requested: revision, compacted });
        }
        Ok(())
    }

    /// Commits and wakes watchers.
    async fn commit(&self, mut transaction: Transaction<'static, Any>, last_revision: Option<i64>) -> StoreResult<()> {
        if let (Some(revision), Backend::Postgres) = (last_revision, self.backend) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *transaction)
                .await
                .db()?;
        }
        transaction.commit().await.db()?;
        if let Some(revision) = last_revision {
            super::advance_head(&self.head, revision);
        }
        Ok(())
    }
}

/// `length` letters no compression shrinks much (PostgreSQL compresses large values: a probe
/// of one repeated character would take a few bytes on disk).
fn incompressible(length: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ (length as u64);
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

fn sealing(error: SecretError) -> StoreError {
    StoreError::Secret(error.to_string())
}

/// Creates the SQLite file with mode 0600 unless it exists, and takes group and other access
/// away from an existing one and its journal files (SQLite gives new journal files the mode of
/// the database file).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Just the labels of a stored object, for selector checks without decoding the rest.
#[derive(serde::Deserialize)]
struct LabelsOnly {
    #[serde(default)]
    metadata: LabelsMeta,
}

#[derive(Default, serde::Deserialize)]
struct LabelsMeta {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

/// The labels of a stored JSON document, read without decoding the rest of it.
pub(crate) fn labels_of(document: &str) -> StoreResult<std::collections::BTreeMap<String, String>> {
    Ok(serde_json::from_str::<LabelsOnly>(document)?.metadata.labels)
}

/// The statement listing what a query covers (kind and namespace; the caller applies the label
/// selector), in name order, each row with the revision of the snapshot it was read at.
fn list_statement(query: &Query) -> (String, Vec<String>) {
    let mut sql = String::from("SELECT m.revision, o.body FROM meta m LEFT JOIN objects o ON 1 = 1");
    let mut binds = Vec::new();
    if let Some(kind) = query.kind {
        binds.push(kind.as_str().to_owned());
        sql.push_str(&format!(" AND o.kind = ${}", binds.len()));
    }
    if let Some(namespace) = &query.namespace {
        binds.push(namespace.clone());
        sql.push_str(&format!(" AND o.namespace = ${}", binds.len()));
    }
    sql.push_str(" WHERE m.id = 1 ORDER BY o.kind, o.namespace, o.name");
    (sql, binds)
}

/// Takes `count` new revisions; returns the last one.
async fn take_revisions(transaction: &mut Transaction<'static, Any>, count: i64) -> StoreResult<i64> {
    let row = sqlx::query("UPDATE meta SET revision = revision + $1 WHERE id = 1 RETURNING revision")
        .bind(count)
        .fetch_one(&mut **transaction)
        .await
        .db()?;
    row.try_get(0).db()
}

/// Reads an object inside a write, a Secret's values opened.
async fn read_object(
    transaction: &mut Transaction<'static, Any>,
    keys: &SecretKeys,
    key: &ObjectKey,
) -> StoreResult<Option<Object>> {
    let row = sqlx::query("SELECT body FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3")
        .bind(key.kind.as_str())
        .bind(&key.namespace)
        .bind(&key.name)
        .fetch_optional(&mut **transaction)
        .await
        .db()?;
    match row {
        Some(row) => {
            let mut object: Object = serde_json::from_str(&row.try_get::<String, _>(0).db()?)?;
            keys.open_object(&mut object).map_err(sealing)?;
            Ok(Some(object))
        }
        None => Ok(None),
    }
}

/// Writes one change of one object (already stamped with `revision`) and its change-log row,
/// a Secret's values sealed in both.
async fn write_change(
    transaction: &mut Transaction<'static, Any>,
    keys: &SecretKeys,
    key: &ObjectKey,
    object: &Object,
    revision: i64,
    change: ChangeType,
) -> StoreResult<()> {
    let body = if object.kind == "Secret" || object.kind == "Stack" {
        let mut sealed = object.clone();
        keys.seal_object(&mut sealed).map_err(sealing)?;
        serde_json::to_string(&sealed)?
    } else {
        serde_json::to_string(object)?
    };
    match change {
        ChangeType::Added => {
            let result = sqlx::query(
                "INSERT INTO objects (kind, namespace, name, uid, revision, owners, body) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(key.kind.as_str())
            .bind(&key.namespace)
            .bind(&key.name)
            .bind(object.metadata.uid.clone().unwrap_or_default())
            .bind(revision)
            .bind(rules::owner_column(object))
            .bind(&body)
            .execute(&mut **transaction)
            .await.db()?;
            if result.rows_affected() == 0 {
                return Err(StoreError::AlreadyExists(key.clone()));
            }
        }
        ChangeType::Modified => {
            sqlx::query("UPDATE objects SET revision = $1, owners = $2, body = $3 WHERE kind = $4 AND namespace = $5 AND name = $6")
                .bind(revision)
                .bind(rules::owner_column(object))
                .bind(&body)
                .bind(key.kind.as_str())
                .bind(&key.namespace)
                .bind(&key.name)
                .execute(&mut **transaction)
                .await.db()?;
        }
        ChangeType::Deleted => {
            sqlx::query("DELETE FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3")
                .bind(key.kind.as_str())
                .bind(&key.namespace)
                .bind(&key.name)
                .execute(&mut **transaction)
                .await
                .db()?;
        }
    }
    sqlx::query(
        "INSERT INTO changes (revision, kind, namespace, name, change_type, body, size) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(revision)
    .bind(key.kind.as_str())
    .bind(&key.namespace)
    .bind(&key.name)
    .bind(change.as_str())
    .bind(&body)
    .bind(i64::try_from(body.len()).unwrap_or(i64::MAX))
    .execute(&mut **transaction)
    .await
    .db()?;
    Ok(())
}

/// Carries out a plan for an existing object; returns the resulting object and the last
/// revision taken, if any. A removal cascades to the object's dependents.
async fn apply_plan(
    transaction: &mut Transaction<'static, Any>,
    keys: &SecretKeys,
    key: &ObjectKey,
    plan: Plan,
) -> StoreResult<(Object, Option<i64>)> {
    let removing = matches!(plan, Plan::Remove(_));
    let (object, revision) = write_plan(transaction, keys, key, plan).await?;
    if removing {
        let last = cascade(transaction, keys, &object).await?;
        return Ok((object, last.or(revision)));
    }
    Ok((object, revision))
}

/// Deletes the dependents of a removed object (background cascade: dependents with finalizers
/// become terminating; the rest go at once, and their own dependents after them).
async fn cascade(
    transaction: &mut Transaction<'static, Any>,
    keys: &SecretKeys,
    removed: &Object,
) -> StoreResult<Option<i64>> {
    let mut last_revision = None;
    let mut owners =
        VecDeque::from([(removed.namespace().to_owned(), removed.metadata.uid.clone().unwrap_or_default())]);
    while let Some((namespace, uid)) = owners.pop_front() {
        if uid.is_empty() {
            continue;
        }
        let rows = sqlx::query("SELECT body FROM objects WHERE namespace = $1 AND owners LIKE $2")
            .bind(&namespace)
            .bind(format!("% {uid} %"))
            .fetch_all(&mut **transaction)
            .await
            .db()?;
        for row in rows {
            let dependent: Object = serde_json::from_str(&row.try_get::<String, _>(0).db()?)?;
            let key = rules::key_of(&dependent)?;
            let plan = rules::prepare_delete(&dependent, &key, None, now())?;
            let removed_now = matches!(plan, Plan::Remove(_));
            let (object, revision) = write_plan(transaction, keys, &key, plan).await?;
            last_revision = revision.or(last_revision);
            if removed_now {
                owners.push_back((namespace.clone(), object.metadata.uid.clone().unwrap_or_default()));
            }
        }
    }
    Ok(last_revision)
}

/// Writes what a plan says for one object, without cascading.
async fn write_plan(
    transaction: &mut Transaction<'static, Any>,
    keys: &SecretKeys,
    key: &ObjectKey,
    plan: Plan,
) -> StoreResult<(Object, Option<i64>)> {
    let (mut object, change) = match plan {
        Plan::Unchanged(object) => return Ok((object, None)),
        Plan::Write(object) => (object, ChangeType::Modified),
        Plan::Remove(object) => (object, ChangeType::Deleted),
    };
    let revision = take_revisions(transaction, 1).await?;
    rules::stamp(&mut object, revision);
    write_change(transaction, keys, key, &object, revision, change).await?;
    Ok((object, Some(revision)))
}

fn event_from_row(row: &AnyRow) -> StoreResult<Event> {
    let event_type = match row.try_get::<String, _>("event_type").db()?.as_str() {
        "Warning" => EventType::Warning,
        _ => EventType::Normal,
    };
    Ok(Event {
        id: row.try_get("id").db()?,
        kind: row.try_get("kind").db()?,
        namespace: row.try_get("namespace").db()?,
        name: row.try_get("name").db()?,
        uid: row.try_get("uid").db()?,
        event_type,
        reason: row.try_get("reason").db()?,
        message: row.try_get("message").db()?,
        count: row.try_get("count").db()?,
        first_timestamp: parse_time(&row.try_get::<String, _>("first_time").db()?),
        last_timestamp: parse_time(&row.try_get::<String, _>("last_time").db()?),
    })
}

const EVENT_COLUMNS: &str = "id, kind, namespace, name, uid, event_type, reason, message, count, first_time, last_time";

#[async_trait]
impl Store for SqlStore {
    fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    async fn write_all(&self, writes: Vec<Write>) -> StoreResult<Vec<Object>> {
        self.guarded_write(async {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            let keys = rules::batch_keys(&writes)?;
            // Any error below drops the transaction unfinished, which rolls it back: all or none.
            let (_guard, mut transaction) = self.begin_write().await?;
            // The creates take their revisions in one step (the common batch is all creates).
            let creates = writes.iter().filter(|write| matches!(write, Write::Create(_))).count();
            let count = i64::try_from(creates).map_err(|_| StoreError::Invalid("too many objects".into()))?;
            let mut next_create =
                if count > 0 { take_revisions(&mut transaction, count).await? - count + 1 } else { 0 };
            let mut last = None;
            let mut written = Vec::with_capacity(writes.len());
            let time = now();
            for (write, key) in writes.into_iter().zip(&keys) {
                match write {
                    Write::Create(object) => {
                        let mut object = rules::prepare_create(object, key, time)?;
                        rules::stamp(&mut object, next_create);
                        write_change(&mut transaction, &self.keys, key, &object, next_create, ChangeType::Added)
                            .await?;
                        last = last.max(Some(next_create));
                        next_create += 1;
                        written.push(object);
                    }
                    Write::Update(object) => {
                        let stored = read_object(&mut transaction, &self.keys, key)
                            .await?
                            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                        let plan = rules::prepare_update(&stored, key, object)?;
                        let (object, revision) = apply_plan(&mut transaction, &self.keys, key, plan).await?;
                        last = last.max(revision);
                        written.push(object);
                    }
                }
            }
            self.commit(transaction, last).await?;
            Ok(written)
        })
        .await
    }

    async fn get(&self, key: &ObjectKey) -> StoreResult<Object> {
        self.guarded(async {
            let row = sqlx::query("SELECT body FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3")
                .bind(key.kind.as_str())
                .bind(&key.namespace)
                .bind(&key.name)
                .fetch_optional(&self.pool)
                .await
                .db()?
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            self.opened(serde_json::from_str(&row.try_get::<String, _>(0).db()?)?)
        })
        .await
    }

    async fn list(&self, query: &Query) -> StoreResult<ObjectList> {
        self.guarded(async {
            use futures::TryStreamExt;
            let (sql, binds) = list_statement(query);
            let mut statement = sqlx::query(&sql);
            for bind in binds {
                statement = statement.bind(bind);
            }
            let mut rows = statement.fetch(&self.pool);
            let mut revision = 0;
            let mut items = Vec::new();
            while let Some(row) = rows.try_next().await.db()? {
                revision = row.try_get(0).db()?;
                if let Some(body) = row.try_get::<Option<String>, _>(1).db()? {
                    let object: Object = serde_json::from_str(&body)?;
                    if query.selector.matches(&object.metadata.labels) {
                        items.push(self.opened(object)?);
                    }
                }
            }
            Ok(ObjectList { revision, items })
        })
        .await
    }

    async fn list_raw(&self, query: &Query, sink: tokio::sync::mpsc::Sender<RawItem>) -> StoreResult<()> {
        self.guarded(async {
            use futures::TryStreamExt;
            let (sql, binds) = list_statement(query);
            let mut statement = sqlx::query(&sql);
            for bind in binds {
                statement = statement.bind(bind);
            }
            let mut rows = statement.fetch(&self.pool);
            let mut first = true;
            while let Some(row) = rows.try_next().await.db()? {
                if first {
                    first = false;
                    if sink.send(RawItem::Revision(row.try_get(0).db()?)).await.is_err() {
                        return Ok(());
                    }
                }
                let Some(body) = row.try_get::<Option<String>, _>(1).db()? else { continue };
                if !query.selector.is_empty() && !query.selector.matches(&labels_of(&body)?) {
                    continue;
                }
                if sink.send(RawItem::Document(body)).await.is_err() {
                    return Ok(());
                }
            }
            Ok(())
        })
        .await
    }

    async fn update(&self, object: Object) -> StoreResult<Object> {
        self.rewrite(object, rules::prepare_update).await
    }

    async fn update_status(&self, object: Object) -> StoreResult<Object> {
        self.rewrite(object, rules::prepare_status).await
    }

    async fn delete(&self, key: &ObjectKey, resource_version: Option<&str>) -> StoreResult<Deleted> {
        self.guarded_write(async {
            let (_guard, mut transaction) = self.begin_write().await?;
            let stored = read_object(&mut transaction, &self.keys, key)
                .await?
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            let plan = rules::prepare_delete(&stored, key, resource_version, now())?;
            let gone = matches!(plan, Plan::Remove(_));
            let (object, revision) = apply_plan(&mut transaction, &self.keys, key, plan).await?;
            self.commit(transaction, revision).await?;
            Ok(if gone { Deleted::Gone(object) } else { Deleted::Terminating(object) })
        })
        .await
    }

    async fn watch(&self, query: Query, revision: i64) -> StoreResult<WatchStream> {
        self.guarded(async {
            self.check_retained(revision).await?;
            Ok(self.feed.watch(query, revision))
        })
        .await
    }

    async fn watch_raw(&self, query: Query, revision: i64) -> StoreResult<RawWatchStream> {
        self.guarded(async {
            self.check_retained(revision).await?;
            Ok(self.feed.watch_raw(query, revision))
        })
        .await
    }

    async fn check_writable(&self) -> StoreResult<()> {
        let failed = self.write_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(problem) = failed else { return Ok(()) };
        // At most one probe a second, however often readiness is asked (it needs no token).
        {
            let mut last = self.last_write_probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < WRITE_PROBE_EVERY) {
                return Err(StoreError::Database(problem.into()));
            }
            *last = Some(std::time::Instant::now());
        }
        // A write of some size (a small one can fit in space the database file or WAL already
        // holds while the disk is full), gone again in the same transaction.
        self.guarded_write(async {
            let (_guard, mut transaction) = self.begin_write().await?;
            sqlx::query("INSERT INTO write_probe (id, filler) VALUES (1, $1)")
                .bind(incompressible(WRITE_PROBE_BYTES))
                .execute(&mut *transaction)
                .await
                .db()?;
            sqlx::query("DELETE FROM write_probe WHERE id = 1").execute(&mut *transaction).await.db()?;
            self.commit(transaction, None).await
        })
        .await
    }

    async fn revision(&self) -> StoreResult<i64> {
        self.guarded(async {
            sqlx::query("SELECT revision FROM meta WHERE id = 1").fetch_one(&self.pool).await.db()?.try_get(0).db()
        })
        .await
    }

    async fn compact(&self, revision: i64) -> StoreResult<i64> {
        self.guarded_write(async {
            let (_guard, mut transaction) = self.begin_write().await?;
            let row = sqlx::query("SELECT revision, compacted_revision FROM meta WHERE id = 1")
                .fetch_one(&mut *transaction)
                .await
                .db()?;
            let (head, compacted): (i64, i64) = (row.try_get(0).db()?, row.try_get(1).db()?);
            let target = revision.min(head);
            if target <= compacted {
                return Ok(compacted);
            }
            sqlx::query("DELETE FROM changes WHERE revision <= $1")
                .bind(target)
                .execute(&mut *transaction)
                .await
                .db()?;
            sqlx::query("UPDATE meta SET compacted_revision = $1 WHERE id = 1")
                .bind(target)
                .execute(&mut *transaction)
                .await
                .db()?;
            self.commit(transaction, None).await?;
            Ok(target)
        })
        .await
    }

    async fn compaction_point_for_bytes(&self, bytes: u64) -> StoreResult<i64> {
        // The newest revision whose change, with every newer one, exceeds the budget.
        let row = sqlx::query(
            "SELECT COALESCE(MAX(revision), 0) FROM \
             (SELECT revision, SUM(size) OVER (ORDER BY revision DESC) AS newer FROM changes) sized \
             WHERE newer > $1",
        )
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
        .db()?;
        row.try_get(0).db()
    }

    async fn record_event(&self, event: NewEvent) -> StoreResult<Event> {
        self.guarded_write(async {
            let (_guard, mut transaction) = self.begin_write().await?;
            let time = timestamp(now());
            let existing = sqlx::query(
                "SELECT id FROM events WHERE uid = $1 AND event_type = $2 AND reason = $3 AND message = $4 ORDER BY id DESC LIMIT 1",
            )
            .bind(&event.uid)
            .bind(event.event_type.as_str())
            .bind(&event.reason)
            .bind(&event.message)
            .fetch_optional(&mut *transaction)
            .await.db()?;
            let id: i64 = match existing {
                Some(row) => {
                    let id: i64 = row.try_get(0).db()?;
                    sqlx::query("UPDATE events SET count = count + 1, last_time = $1 WHERE id = $2")
                        .bind(&time)
                        .bind(id)
                        .execute(&mut *transaction)
                        .await.db()?;
                    id
                }
                None => sqlx::query(
                    "INSERT INTO events (kind, namespace, name, uid, event_type, reason, message, count, first_time, last_time) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8) RETURNING id",
                )
                .bind(event.object.kind.as_str())
                .bind(&event.object.namespace)
                .bind(&event.object.name)
                .bind(&event.uid)
                .bind(event.event_type.as_str())
                .bind(&event.reason)
                .bind(&event.message)
                .bind(&time)
                .fetch_one(&mut *transaction)
                .await.db()?
                .try_get(0).db()?,
            };
            let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
                .bind(id)
                .fetch_one(&mut *transaction)
                .await
                .db()?;
            let recorded = event_from_row(&row)?;
            self.commit(transaction, None).await?;
            self.events_recorded.send_modify(|count| *count = count.wrapping_add(1));
            Ok(recorded)
        })
        .await
    }

    async fn prune_events(&self, older_than: DateTime<Utc>, keep: usize) -> StoreResult<u64> {
        let _guard = self.write_lock.lock().await;
        if keep == 0 {
            let pruned = sqlx::query("DELETE FROM events").execute(&self.write_pool).await.db()?;
            return Ok(pruned.rows_affected());
        }
        // Both conditions read `events_by_last_time`; ties at the boundary are kept.
        let pruned = sqlx::query(
            "DELETE FROM events WHERE last_time < $1 \
             OR last_time < (SELECT last_time FROM events ORDER BY last_time DESC LIMIT 1 OFFSET $2)",
        )
        .bind(timestamp(older_than))
        .bind(i64::try_from(keep - 1).unwrap_or(i64::MAX))
        .execute(&self.write_pool)
        .await
        .db()?;
        Ok(pruned.rows_affected())
    }

    async fn events_head(&self) -> StoreResult<String> {
        self.guarded(async {
            // Both from indexes (the id key, `events_by_last_time`).
            let row = sqlx::query("SELECT COALESCE(MAX(id), 0), COALESCE(MAX(last_time), '') FROM events")
                .fetch_one(&self.pool)
                .await
                .db()?;
            let newest: i64 = row.try_get(0).db()?;
            let latest: String = row.try_get(1).db()?;
            Ok(format!("{newest}:{latest}"))
        })
        .await
    }

    fn event_signal(&self) -> Option<watch::Receiver<u64>> {
        Some(self.events_recorded.subscribe())
    }

    async fn events(&self, namespace: Option<&str>, object: Option<&ObjectKey>) -> StoreResult<Vec<Event>> {
        self.guarded(async {
            let rows = match (object, namespace) {
                (Some(key), _) => sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE kind = $1 AND namespace = $2 AND name = $3 ORDER BY id"
                ))
                .bind(key.kind.as_str())
                .bind(&key.namespace)
                .bind(&key.name)
                .fetch_all(&self.pool)
                .await
                .db()?,
                (None, Some(namespace)) => {
                    sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE namespace = $1 ORDER BY id"))
                        .bind(namespace)
                        .fetch_all(&self.pool)
                        .await
                        .db()?
                }
                (None, None) => sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await
                    .db()?,
            };
            rows.iter().map(event_from_row).collect()
        })
        .await
    }
}

/// Wakes local watchers when another replica writes (PostgreSQL LISTEN). Reconnects after
/// failures; watchers' fallback poll covers the gaps.
async fn listen_for_changes(url: String, head: Arc<watch::Sender<i64>>) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if listener.listen(CHANNEL).await.is_ok() {
                    while let Ok(notification) = listener.recv().await {
                        if let Ok(revision) = notification.payload().parse::<i64>() {
                            super::advance_head(&head, revision);
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot listen for store changes; watchers fall back to polling"),
        }
        tokio::time::sleep(feed::FALLBACK_POLL).await;
    }
}
