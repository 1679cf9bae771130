//! Whether the database answers. PostgreSQL may go away (restarted, a network cut); then every
//! read and write would wait out the connection pool's 10 s, trying to connect again and again.
//! Instead, once a connection to it fails, reads and writes are refused at once — 503 with the
//! reason — while one prober reconnects every second; the first success lets them through
//! again. (SQLite is a file: it is never "unreachable".)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::{AnyConnection, Connection};

use crate::store::{StoreError, StoreResult};

/// How often the prober tries to connect while the database does not answer.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The database's reachability, shared by the store and its prober.
pub(super) struct Reachability {
    /// The database to probe (`None`: never unreachable).
    url: Option<String>,
    /// Why it does not answer, while it does not.
    down: Mutex<Option<String>>,
    probing: AtomicBool,
}

/// The store's error while the database does not answer.
#[derive(Debug, thiserror::Error)]
#[error("the database does not answer ({0}); retrying every second")]
struct Unreachable(String);

impl Reachability {
    pub(super) fn new(url: Option<String>) -> Reachability {
        Reachability { url, down: Mutex::new(None), probing: AtomicBool::new(false) }
    }

    /// `Err` at once while the database is known not to answer.
    pub(super) fn check(&self) -> StoreResult<()> {
        match self.down.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            Some(reason) => Err(StoreError::Database(Box::new(Unreachable(reason.clone())))),
            None => Ok(()),
        }
    }

    /// Looks at a failed operation: one that could not reach the database marks it down and
    /// starts the prober.
    pub(super) fn observe(self: &Arc<Self>, error: &StoreError) {
        let Some(url) = &self.url else { return };
        let StoreError::Database(inner) = error else { return };
        let Some(error) = inner.downcast_ref::<sqlx::Error>() else { return };
        if !matches!(
            error,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed
        ) {
            return;
        }
        *self.down.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(%error, "the database does not answer: refusing reads and writes until it does");
        let reachability = Arc::clone(self);
        let url = url.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if let Ok(Ok(connection)) = tokio::time::timeout(PROBE_TIMEOUT, AnyConnection::connect(&url)).await {
                    let _ = connection.close().await;
                    *reachability.down.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    reachability.probing.store(false, Ordering::Release);
                    tracing::info!("the database answers again");
                    return;
                }
            }
        });
    }
}
