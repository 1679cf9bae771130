//! Spooling list responses: a pipe between the store and a client that never makes the store
//! wait. The store side writes as fast as the store yields documents; the client side reads at
//! whatever pace the client takes them. Bytes pass through memory (at most [`MEMORY_BYTES`]
//! waiting); when the client falls that far behind, later bytes overflow into an unnamed
//! temporary file and are read back from it in order. So a fast client never touches the disk,
//! and a client that reads slowly, or not at all, holds a file and a connection slot, never a
//! store connection.
//!
//! Files are bounded too: all spools of a server together may hold at most the
//! [`SpoolBudget`]'s bytes on disk; a list that would exceed it fails (503 before the answer
//! began, a broken response after) rather than filling the disk.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use tokio::sync::Notify;

use super::error::ApiError;

/// Bytes a spool keeps in memory for its client before it overflows into a file.
pub const MEMORY_BYTES: usize = 1024 * 1024;
/// Size of the pieces read back from the file.
const FILE_CHUNK: usize = 256 * 1024;

/// The disk space all spools of a server may use together.
#[derive(Clone, Debug)]
pub struct SpoolBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl SpoolBudget {
    /// A budget of `limit` bytes on disk.
    pub fn new(limit: usize) -> SpoolBudget {
        SpoolBudget { used: Arc::default(), limit }
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What both ends share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the reader (one reader, so a stored permit is never lost).
    readable: Notify,
    budget: SpoolBudget,
}

#[derive(Default)]
struct State {
    memory: VecDeque<Bytes>,
    memory_bytes: usize,
    /// Once the spool overflowed, everything after goes through the file, in order.
    file: Option<Arc<std::fs::File>>,
    written: u64,
    read: u64,
    /// Bytes of the file counted against the budget.
    on_disk: usize,
    finished: bool,
    failed: Option<String>,
    reader_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes before the lock is released: a poisoned lock holds
        // consistent data.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let on_disk = self.lock().on_disk;
        self.budget.give_back(on_disk);
    }
}

/// The store's end of a spool.
pub struct SpoolWriter {
    shared: Arc<Shared>,
}

/// The client's end of a spool.
pub struct SpoolReader {
    shared: Arc<Shared>,
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        self.shared.lock().reader_gone = true;
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // A writer dropped without `finish` (its task failed or was cancelled) breaks the
        // response rather than ending it as if it were complete.
        let mut state = self.shared.lock();
        if !state.finished {
            state.finished = true;
            state.failed.get_or_insert_with(|| "the list ended early".into());
        }
        drop(state);
        self.shared.readable.notify_one();
    }
}

fn spool_failed(error: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("cannot buffer the response in a temporary file: {error}"))
}

/// A new spool drawing on `budget` when it overflows to disk.
pub fn spool(budget: SpoolBudget) -> (SpoolWriter, SpoolReader) {
    let shared = Arc::new(Shared { state: Mutex::new(State::default()), readable: Notify::new(), budget });
    (SpoolWriter { shared: shared.clone() }, SpoolReader { shared })
}

impl SpoolWriter {
    /// Appends bytes; never waits for the reader. Fails when the reader is gone (stop
    /// producing) or the disk budget is spent.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), ApiError> {
        let file = {
            let mut state = self.shared.lock();
            if state.reader_gone {
                return Err(ApiError::unavailable("the client went away"));
            }
            if state.file.is_none() && state.memory_bytes + bytes.len() <= MEMORY_BYTES {
                state.memory_bytes += bytes.len();
                state.memory.push_back(bytes);
                drop(state);
                self.shared.readable.notify_one();
                return Ok(());
            }
            if !self.shared.budget.take(bytes.len()) {
                return Err(ApiError::unavailable(
                    "too many large lists are waiting for their clients; retry shortly (or list with a label selector)",
                ));
            }
            state.on_disk += bytes.len();
            state.file.clone()
        };
        let file = match file {
            Some(file) => file,
            None => {
                let file = Arc::new(
                    tokio::task::spawn_blocking(tempfile::tempfile)
                        .await
                        .map_err(spool_failed)?
                        .map_err(spool_failed)?,
                );
                self.shared.lock().file = Some(file.clone());
                file
            }
        };
        let offset = self.shared.lock().written;
        let length = bytes.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, offset))
            .await
            .map_err(spool_failed)?
            .map_err(spool_failed)?;
        self.shared.lock().written += length;
        self.shared.readable.notify_one();
        Ok(())
    }

    /// Marks the end of the data: the reader ends once it has read everything.
    pub fn finish(self) {
        self.shared.lock().finished = true;
        // Drop sees `finished` and leaves the outcome alone.
    }
}

impl SpoolReader {
    /// The spooled bytes as a stream of chunks, in the order they were written; it ends after
    /// the writer finished, or with an error when the writer failed.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures::stream::unfold(self, |reader| async move {
            let next = reader.next().await;
            next.map(|item| (item, reader))
        })
    }

    async fn next(&self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            let pending_file_read = {
                let mut state = self.shared.lock();
                if let Some(bytes) = state.memory.pop_front() {
                    state.memory_bytes -= bytes.len();
                    return Some(Ok(bytes));
                }
                match &state.file {
                    Some(file) if state.read < state.written => {
                        let length = (state.written - state.read).min(FILE_CHUNK as u64) as usize;
                        Some((file.clone(), state.read, length))
                    }
                    _ if state.finished => {
                        return state.failed.take().map(|error| Err(std::io::Error::other(error)));
                    }
                    _ => None,
                }
            };
            match pending_file_read {
                Some((file, offset, length)) => {
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buffer = vec![0u8; length];
                        file.read_exact_at(&mut buffer, offset).map(|()| buffer)
                    })
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|result| result);
                    return Some(match read {
                        Ok(buffer) => {
                            self.shared.lock().read += buffer.len() as u64;
                            Ok(Bytes::from(buffer))
                        }
                        Err(error) => Err(error),
                    });
                }
                None => self.shared.readable.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    async fn collect(reader: SpoolReader) -> Result<Vec<u8>, std::io::Error> {
        let mut stream = std::pin::pin!(reader.into_stream());
        let mut all = Vec::new();
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn a_slow_reader_overflows_into_the_file_in_order() {
        let budget = SpoolBudget::new(64 * 1024 * 1024);
        let (mut writer, reader) = spool(budget.clone());
        let mut expected = Vec::new();
        for index in 0..600u32 {
            let piece = Bytes::from(vec![(index % 251) as u8; 10_000]);
            expected.extend_from_slice(&piece);
            writer.write(piece).await.expect("never waits for the reader");
        }
        assert!(budget.used.load(Ordering::Acquire) > 0, "the overflow went to disk");
        writer.finish();
        assert_eq!(collect(reader).await.expect("complete"), expected);
        assert_eq!(budget.used.load(Ordering::Acquire), 0, "the budget is given back");
    }

    #[tokio::test]
    async fn the_budget_and_a_failed_writer_are_reported() {
        let (mut writer, reader) = spool(SpoolBudget::new(10));
        writer.write(Bytes::from(vec![1u8; MEMORY_BYTES])).await.expect("fits in memory");
        assert!(writer.write(Bytes::from(vec![2u8; 100])).await.is_err(), "over the disk budget");
        drop(writer);
        assert!(collect(reader).await.is_err(), "an unfinished spool breaks the response");
    }
}
