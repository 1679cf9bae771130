//! Spooling list responses: a list is read from the store as fast as the store produces it
//! into a [`Spool`] (memory up to [`MEMORY_BYTES`], then an unnamed temporary file), and only
//! then sent to the client at whatever pace the client reads. So a client that reads slowly, or
//! not at all, holds a file and a connection slot, never a store connection; and memory stays
//! at [`MEMORY_BYTES`] per list however long the list is.
//!
//! Files are bounded too: all spools of a server together may hold at most
//! [`SpoolBudget::new`]'s bytes on disk; a list that would exceed it is refused with a 503
//! (retry later) rather than filling the disk.

use std::io::SeekFrom;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::error::ApiError;

/// What a spool keeps in memory before it moves to a file.
pub const MEMORY_BYTES: usize = 1024 * 1024;
/// Size of the chunks a spool is sent in.
const CHUNK: usize = 64 * 1024;

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

/// Bytes written once, then read back once.
pub struct Spool {
    memory: Vec<u8>,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    on_disk: usize,
    budget: SpoolBudget,
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.budget.give_back(self.on_disk);
    }
}

fn spool_failed(error: std::io::Error) -> ApiError {
    ApiError::unavailable(format!("cannot buffer the response in a temporary file: {error}"))
}

impl Spool {
    /// An empty spool drawing on `budget` once it moves to disk.
    pub fn new(budget: SpoolBudget) -> Spool {
        Spool { memory: Vec::new(), file: None, on_disk: 0, budget }
    }

    /// Appends bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        if self.file.is_none() && self.memory.len() + bytes.len() <= MEMORY_BYTES {
            self.memory.extend_from_slice(bytes);
            return Ok(());
        }
        if !self.budget.take(bytes.len()) {
            return Err(ApiError::unavailable(
                "too many large lists are being sent at once; retry shortly (or list with a label selector)",
            ));
        }
        self.on_disk += bytes.len();
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = tokio::task::spawn_blocking(tempfile::tempfile)
                    .await
                    .map_err(|error| spool_failed(std::io::Error::other(error)))?
                    .map_err(spool_failed)?;
                self.file.insert(tokio::io::BufWriter::with_capacity(CHUNK, tokio::fs::File::from_std(file)))
            }
        };
        file.write_all(bytes).await.map_err(spool_failed)
    }

    /// The spooled bytes as a stream of chunks: memory first, then the file.
    pub async fn into_stream(
        mut self,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, ApiError> {
        let mut file = match self.file.take() {
            Some(mut writer) => {
                writer.flush().await.map_err(spool_failed)?;
                let mut file = writer.into_inner();
                file.seek(SeekFrom::Start(0)).await.map_err(spool_failed)?;
                Some(file)
            }
            None => None,
        };
        let memory = Bytes::from(std::mem::take(&mut self.memory));
        let mut pieces: Vec<Bytes> = (0..memory.len())
            .step_by(CHUNK)
            .map(|start| memory.slice(start..memory.len().min(start + CHUNK)))
            .collect();
        pieces.reverse();
        // The spool stays alive (and its budget taken) until the file has been sent.
        Ok(futures::stream::unfold((pieces, file.take(), self), |(mut pieces, mut file, spool)| async move {
            if let Some(piece) = pieces.pop() {
                return Some((Ok(piece), (pieces, file, spool)));
            }
            let reader = file.as_mut()?;
            let mut buffer = vec![0u8; CHUNK];
            match reader.read(&mut buffer).await {
                Ok(0) => None,
                Ok(read) => {
                    buffer.truncate(read);
                    Some((Ok(Bytes::from(buffer)), (pieces, file, spool)))
                }
                Err(error) => Some((Err(error), (pieces, None, spool))),
            }
        }))
    }
}
