//! The audit log's writer. Entries are written by one background task in batches (a burst of
//! requests costs one transaction, not one each), so a request never waits for the log; the
//! server drains the queue when it stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::access::AccessStore;
use super::audit::AuditEntry;

/// Entries waiting to be written at most; beyond, requests wait for the writer.
const QUEUE: usize = 10_000;
/// Entries written in one transaction at most.
const BATCH: usize = 500;

/// The sending end of the log: cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<AuditEntry>,
    /// Counts the batches written (the console follows it).
    written: Arc<tokio::sync::watch::Sender<u64>>,
}

impl AuditLog {
    /// Starts the writer on `store`. It ends (after writing what is queued) when every clone of
    /// the returned log is dropped.
    pub fn start(store: Arc<dyn AccessStore>) -> (AuditLog, JoinHandle<()>) {
        let (queue, mut receiver) = mpsc::channel::<AuditEntry>(QUEUE);
        let written = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let signal = written.clone();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while receiver.recv_many(&mut batch, BATCH).await > 0 {
                write_batch(store.as_ref(), &batch).await;
                batch.clear();
                signal.send_modify(|count| *count = count.wrapping_add(1));
            }
        });
        (AuditLog { queue, written }, writer)
    }

    /// Changes each time entries were written.
    pub fn written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Queues an entry (waits only when the writer is [`QUEUE`] entries behind).
    pub async fn record(&self, entry: AuditEntry) {
        if self.queue.send(entry).await.is_err() {
            tracing::error!("the audit log writer has stopped; an entry is lost");
        }
    }
}

/// Writes a batch, retrying a failing store a few times before giving the entries up (and
/// logging each, so that the server's log still has them).
async fn write_batch(store: &dyn AccessStore, batch: &[AuditEntry]) {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        match store.record_audit(batch).await {
            Ok(()) => return,
            Err(error) if attempt < ATTEMPTS => {
                tracing::warn!(%error, attempt, "cannot write the audit log; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(error) => {
                tracing::error!(%error, entries = batch.len(), "cannot write the audit log; the entries follow");
                for entry in batch {
                    tracing::error!(audit = %serde_json::to_string(entry).unwrap_or_default(), "unwritten audit entry");
                }
            }
        }
    }
}
