//! Database backups on disk, under `DATA_DIR/backups/NAMESPACE/` (directories 0700, files
//! 0600): each backup is a dump file `NAME.EXT` and a description `NAME.json` (database, engine,
//! time, size, SHA-256, reason). A dump is written to `.partial-NAME.EXT` and renamed only once
//! it is complete and synced; the description is written (atomically) after it, and a backup
//! exists only when both do. So an interrupted backup is never listed, and what it leaves is a
//! partial file that the next round removes.
//!
//! Backups live by namespace, not by database object: they outlive the database (a final
//! snapshot is there to be restored into a new one with `spec.restoreFrom`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// What can go wrong with backup files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupError {
    #[error("backup file {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("backup {0} does not exist in this namespace; `cloud db backups NAME` lists the backups")]
    Missing(String),
    #[error("backup {name} does not match its checksum (recorded {recorded}, found {found}): the file was changed or damaged; nothing was restored")]
    Checksum { name: String, recorded: String, found: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |error| BackupError::Io { path: path.to_path_buf(), reason: error.to_string() }
}

/// The description of one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BackupMeta {
    pub name: String,
    /// The dump's file name, next to the description.
    pub file: String,
    /// The database it was taken of (name and uid).
    pub database: String,
    pub database_uid: String,
    pub engine: String,
    pub version: String,
    pub time: DateTime<Utc>,
    pub size_bytes: u64,
    pub sha256: String,
    /// `Scheduled`, `Manual` or `Final`.
    pub reason: String,
    /// What the backup answered (a schedule slot, a request), when it answered one.
    #[serde(flatten)]
    pub occasion: Occasion,
}

/// The schedule slot or the manual request a backup answered. A replica that took a backup and
/// died before recording it in status leaves the answer on disk, so the replica that takes over
/// finds it and does not take a second backup for the same slot or request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Occasion {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// Backups of every namespace, under one root directory.
#[derive(Clone, Debug)]
pub(crate) struct BackupStore {
    root: PathBuf,
}

/// A dump being written.
pub(crate) struct PendingBackup {
    pub name: String,
    file_name: String,
    partial: PathBuf,
    directory: PathBuf,
    pub writer: HashingWriter,
}

impl BackupStore {
    pub fn new(root: PathBuf) -> BackupStore {
        BackupStore { root }
    }

    fn directory(&self, namespace: &str) -> PathBuf {
        self.root.join(namespace)
    }

    /// Starts a backup of `database` named after it and `time` (a suffix keeps names unique).
    pub async fn begin(
        &self,
        namespace: &str,
        database: &str,
        extension: &str,
        time: DateTime<Utc>,
    ) -> Result<PendingBackup, BackupError> {
        let directory = self.directory(namespace);
        create_private_dir(&directory).map_err(io(&directory))?;
        let stamp = time.format("%Y%m%d-%H%M%S").to_string();
        let mut name = format!("{database}-{stamp}");
        let mut counter = 1;
        let taken = |name: &str| {
            [format!("{name}.json"), format!("{name}.{extension}"), format!(".partial-{name}.{extension}")]
                .iter()
                .any(|file| directory.join(file).exists())
        };
        while taken(&name) {
            counter += 1;
            name = format!("{database}-{stamp}-{counter}");
        }
        let file_name = format!("{name}.{extension}");
        let partial = directory.join(format!(".partial-{file_name}"));
        let file = private_file(&partial).await.map_err(io(&partial))?;
        Ok(PendingBackup { name, file_name, partial, directory, writer: HashingWriter::new(file) })
    }

    /// Completes a backup: the dump synced and renamed into place, then its description.
    pub async fn commit(&self, mut pending: PendingBackup, mut meta: BackupMeta) -> Result<BackupMeta, BackupError> {
        pending.writer.flush().await.map_err(io(&pending.partial))?;
        let (file, size, sha256) = pending.writer.finish();
        file.sync_all().await.map_err(io(&pending.partial))?;
        drop(file);
        let target = pending.directory.join(&pending.file_name);
        tokio::fs::rename(&pending.partial, &target).await.map_err(io(&target))?;
        meta.name = pending.name.clone();
        meta.file = pending.file_name.clone();
        meta.size_bytes = size;
        meta.sha256 = sha256;
        let description = pending.directory.join(format!("{}.json", pending.name));
        let text = serde_json::to_vec_pretty(&meta)
            .map_err(|e| BackupError::Io { path: description.clone(), reason: e.to_string() })?;
        let staged = pending.directory.join(format!(".partial-{}.json", pending.name));
        let mut file = private_file(&staged).await.map_err(io(&staged))?;
        file.write_all(&text).await.map_err(io(&staged))?;
        file.sync_all().await.map_err(io(&staged))?;
        tokio::fs::rename(&staged, &description).await.map_err(io(&description))?;
        Ok(meta)
    }

    /// Gives up a backup: its partial file goes.
    pub(crate) async fn abandon(&self, pending: PendingBackup) {
        drop(pending.writer);
        let _ = tokio::fs::remove_file(&pending.partial).await;
    }

    /// Removes what interrupted backups of `database` left (partial files). Call it when no
    /// backup of that database runs.
    pub(crate) fn remove_partials(&self, namespace: &str, database: &str) -> usize {
        let Ok(entries) = std::fs::read_dir(self.directory(namespace)) else { return 0 };
        let prefix = format!(".partial-{database}-");
        let mut removed = 0;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Whether a complete backup of the database `uid` in `namespace` answered `occasion`.
    pub fn answered(&self, namespace: &str, uid: &str, occasion: &Occasion) -> bool {
        *occasion != Occasion::default()
            && self.list(namespace).iter().any(|meta| meta.database_uid == uid && &meta.occasion == occasion)
    }

    /// Every complete backup in `namespace`, oldest first.
    pub fn list(&self, namespace: &str) -> Vec<BackupMeta> {
        let directory = self.directory(namespace);
        let Ok(entries) = std::fs::read_dir(&directory) else { return Vec::new() };
        let mut found: Vec<BackupMeta> = entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.ends_with(".json") && !name.starts_with('.')
            })
            .filter_map(|entry| serde_json::from_slice::<BackupMeta>(&std::fs::read(entry.path()).ok()?).ok())
            .filter(|meta| {
                std::fs::metadata(directory.join(&meta.file)).is_ok_and(|file| file.len() == meta.size_bytes)
            })
            .collect();
        found.sort_by(|a, b| a.time.cmp(&b.time).then(a.name.cmp(&b.name)));
        found
    }

    /// One backup by name.
    pub fn find(&self, namespace: &str, name: &str) -> Result<BackupMeta, BackupError> {
        self.list(namespace)
            .into_iter()
            .find(|meta| meta.name == name)
            .ok_or_else(|| BackupError::Missing(name.to_owned()))
    }

    /// Removes a backup (description first: from then on it is not listed).
    pub fn remove(&self, namespace: &str, meta: &BackupMeta) -> Result<(), BackupError> {
        let directory = self.directory(namespace);
        let description = directory.join(format!("{}.json", meta.name));
        std::fs::remove_file(&description).map_err(io(&description))?;
        let file = directory.join(&meta.file);
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io(&file)(error)),
            _ => Ok(()),
        }
    }

    /// Opens a backup's dump after checking it against its recorded size and SHA-256.
    pub(crate) async fn open_verified(
        &self,
        namespace: &str,
        meta: &BackupMeta,
    ) -> Result<tokio::fs::File, BackupError> {
        let path = self.directory(namespace).join(&meta.file);
        let mut file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = tokio::io::AsyncReadExt::read(&mut file, &mut buffer).await.map_err(io(&path))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let found = hex(&hasher.finalize());
        if found != meta.sha256 {
            return Err(BackupError::Checksum { name: meta.name.clone(), recorded: meta.sha256.clone(), found });
        }
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(0)).await.map_err(io(&path))?;
        Ok(file)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a directory (and its parents) with mode 0700 when missing.
fn create_private_dir(directory: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(directory)
}

async fn private_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await
}

/// A file writer that counts and hashes what passes through.
pub(crate) struct HashingWriter {
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
}

impl HashingWriter {
    fn new(file: tokio::fs::File) -> HashingWriter {
        HashingWriter { file, hasher: Sha256::new(), size: 0 }
    }

    /// The file, the bytes written and their SHA-256 (hex).
    fn finish(self) -> (tokio::fs::File, u64, String) {
        (self.file, self.size, hex(&self.hasher.finalize()))
    }
}

impl AsyncWrite for HashingWriter {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(context, buffer) {
            Poll::Ready(Ok(written)) => {
                this.hasher.update(&buffer[..written]);
                this.size += written as u64;
                Poll::Ready(Ok(written))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(database: &str) -> BackupMeta {
        BackupMeta {
            name: String::new(),
            file: String::new(),
            database: database.into(),
            database_uid: "uid-1".into(),
            engine: "postgres".into(),
            version: "15".into(),
            time: Utc::now(),
            size_bytes: 0,
            sha256: String::new(),
            reason: "Manual".into(),
            occasion: Occasion::default(),
        }
    }

    #[tokio::test]
    async fn a_backup_is_listed_only_once_complete_and_a_changed_file_is_refused() {
        let directory = tempfile::tempdir().expect("dir");
        let store = BackupStore::new(directory.path().to_path_buf());
        let time = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let mut pending = store.begin("default", "db", "pgdump", time).await.expect("begin");
        pending.writer.write_all(b"the dump").await.expect("write");
        assert!(store.list("default").is_empty(), "not listed while it is written");
        let second = store.begin("default", "db", "pgdump", time).await.expect("begin");
        assert_ne!(second.name, pending.name, "same second, another name");
        store.abandon(second).await;
        let committed = store.commit(pending, meta("db")).await.expect("commit");
        assert_eq!((committed.size_bytes, committed.name.as_str()), (8, "db-20270115-080000"));
        assert_eq!(committed.sha256, hex(&Sha256::digest(b"the dump")));
        assert_eq!(store.list("default"), std::slice::from_ref(&committed));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(directory.path().join("default")), 0o700);
            assert_eq!(mode(directory.path().join("default").join(&committed.file)), 0o600);
        }
        let mut file = store.open_verified("default", &committed).await.expect("verified");
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut file, &mut text).await.expect("read");
        assert_eq!(text, "the dump");

        std::fs::write(directory.path().join("default").join(&committed.file), b"the dumq").expect("tamper");
        let refused = store.open_verified("default", &committed).await.expect_err("refused").to_string();
        assert!(refused.contains("does not match its checksum"), "{refused}");
        store.remove("default", &committed).expect("remove");
        assert!(store.list("default").is_empty());
    }

    #[tokio::test]
    async fn an_interrupted_backup_leaves_only_a_partial_file_that_is_removed() {
        let directory = tempfile::tempdir().expect("dir");
        let store = BackupStore::new(directory.path().to_path_buf());
        let mut pending = store.begin("default", "db", "rdb", Utc::now()).await.expect("begin");
        pending.writer.write_all(&[1; 4096]).await.expect("write");
        // The process dies here: nothing commits or abandons it.
        std::mem::forget(pending);
        assert!(store.list("default").is_empty());
        assert_eq!(store.remove_partials("default", "other"), 0, "another database's are not touched");
        assert_eq!(store.remove_partials("default", "db"), 1);
        assert_eq!(std::fs::read_dir(directory.path().join("default")).expect("dir").count(), 0);
    }
}
