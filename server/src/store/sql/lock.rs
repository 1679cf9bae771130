//! Which server runs the controllers of a store. Two `cloud server` processes with controllers on
//! one database would both reconcile every object (duplicate containers, load balancers
//! flapping); until leases come (the high-availability work), one lock per store says who runs
//! them: a PostgreSQL session-level advisory lock held on a connection of its own, or an
//! exclusive `flock` on a file beside the SQLite database. The lock goes with the process (or its
//! PostgreSQL session), so a server that stops releases it and another can take over.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::{Connection, PgConnection, Row};

use crate::store::{StoreError, StoreResult};

/// The advisory lock's key: "minicloud" in ASCII, as a number (any fixed value would do).
const ADVISORY_KEY: i64 = 0x6d69_6e69_636c_6f75;
/// How long a check that the lock is still held may take before it counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a store's controller lock lives.
#[derive(Clone, Debug)]
pub(super) enum LockTarget {
    /// A PostgreSQL database: an advisory lock.
    Postgres(String),
    /// A SQLite file: `flock` on `FILE.controllers.lock`.
    File(PathBuf),
    /// An in-memory database: nothing else can open it.
    Memory,
}

/// The held lock: while it exists (and [`ControllerLock::held`] says so), this process runs the
/// controllers.
pub enum ControllerLock {
    Postgres(PgConnection),
    File(std::fs::File),
    Memory,
}

impl LockTarget {
    /// Takes the lock when nobody holds it; `Ok(None)` when another process does.
    pub(super) async fn try_lock(&self) -> StoreResult<Option<ControllerLock>> {
        match self {
            LockTarget::Postgres(url) => {
                let mut connection = PgConnection::connect(url).await.map_err(unavailable)?;
                let row = sqlx::query("SELECT pg_try_advisory_lock($1)")
                    .bind(ADVISORY_KEY)
                    .fetch_one(&mut connection)
                    .await
                    .map_err(unavailable)?;
                let taken: bool = row.try_get(0).map_err(unavailable)?;
                if taken {
                    Ok(Some(ControllerLock::Postgres(connection)))
                } else {
                    let _ = connection.close().await;
                    Ok(None)
                }
            }
            LockTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
                    .map_err(|error| StoreError::Database(Box::new(error)))?;
                if flock_exclusive(&file) {
                    Ok(Some(ControllerLock::File(file)))
                } else {
                    Ok(None)
                }
            }
            LockTarget::Memory => Ok(Some(ControllerLock::Memory)),
        }
    }
}

impl ControllerLock {
    /// Whether the lock is still held: the PostgreSQL session that holds it still answers (a
    /// session that ended, or does not answer within 3 s, may have released it).
    pub async fn held(&mut self) -> bool {
        match self {
            ControllerLock::Postgres(connection) => {
                let check = sqlx::query("SELECT 1").fetch_one(&mut *connection);
                matches!(tokio::time::timeout(CHECK_TIMEOUT, check).await, Ok(Ok(_)))
            }
            ControllerLock::File(_) | ControllerLock::Memory => true,
        }
    }
}

fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Database(Box::new(error))
}

/// An exclusive, non-blocking `flock` (released when the file is closed or the process ends).
#[cfg(unix)]
fn flock_exclusive(file: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows for the call only.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn flock_exclusive(_file: &std::fs::File) -> bool {
    true
}
