//! One server per SQLite store. SQLite cannot be shared between hosts, and two servers on one
//! file would both run the controllers; so `cloud server` takes an exclusive `flock` on
//! `FILE.server.lock` beside the database before it opens it, and a second server on the same
//! file refuses to start. The lock goes with the process (SIGKILL included), so a restart never
//! finds a stale one. PostgreSQL stores need no such lock: replicas share them, and leases say
//! which replica runs what.

use std::path::{Path, PathBuf};

/// What can stop a server from claiming its SQLite store.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "another cloud server already runs on the SQLite store {database} (it holds {lock}): a SQLite store \
         belongs to one server, and SQLite cannot be shared between hosts. Stop that server first, or keep the \
         store in PostgreSQL (--database-url postgres://...) to run several replicas"
    )]
    Taken { database: PathBuf, lock: PathBuf },
    #[error("cannot take the lock {lock} of the SQLite store: {reason}")]
    Io { lock: PathBuf, reason: String },
}

/// The held claim: the store is this process's until it is dropped or the process ends.
#[derive(Debug)]
pub struct SoleServer {
    _file: std::fs::File,
}

/// The database file of a SQLite URL (`None`: not SQLite, or in memory).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let file = path.split('?').next().unwrap_or(path);
    let in_memory = file.is_empty() || file == ":memory:" || path.contains("mode=memory");
    (!in_memory).then(|| PathBuf::from(file))
}

/// Claims the SQLite store at `url` for this process; `Ok(None)` for stores that need no claim
/// (PostgreSQL, in memory).
pub fn claim(url: &str) -> Result<Option<SoleServer>, ClaimError> {
    let Some(database) = sqlite_file(url) else { return Ok(None) };
    let lock = PathBuf::from(format!("{}.server.lock", database.display()));
    let io = |error: std::io::Error| ClaimError::Io { lock: lock.clone(), reason: error.to_string() };
    if let Some(parent) = Path::new(&database).parent().filter(|parent| !parent.as_os_str().is_empty()) {
        minicloud_model::files::create_private_dir(parent).map_err(io)?;
    }
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock).map_err(io)?;
    if flock_exclusive(&file) {
        Ok(Some(SoleServer { _file: file }))
    } else {
        Err(ClaimError::Taken { database, lock })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_files_are_claimed() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/m/minicloud.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/m/minicloud.db"))
        );
        assert_eq!(sqlite_file("sqlite:relative.db"), Some(PathBuf::from("relative.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://file?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u:p@h/db"), None);
    }

    #[test]
    fn a_second_claim_on_one_file_is_refused_until_the_first_is_dropped() {
        let directory = tempfile::tempdir().expect("directory");
        let url = format!("sqlite://{}/minicloud.db", directory.path().display());
        let first = claim(&url).expect("claimed").expect("a SQLite file");
        let refused = claim(&url).expect_err("held");
        assert!(matches!(refused, ClaimError::Taken { .. }), "{refused}");
        assert!(refused.to_string().contains("PostgreSQL"), "says what to do: {refused}");
        drop(first);
        assert!(claim(&url).expect("free again").is_some());
    }
}
