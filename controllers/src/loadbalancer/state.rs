//! A LoadBalancer's directory (`DATA/lb/CLUSTER-UID`, mounted into its HAProxy container): the
//! configuration HAProxy loads, the candidate being validated, the saved server states, the
//! Runtime API socket, the HTTPS listeners' crt-lists and certificate files (`certs/`, mode
//! 0600), and `applied.json` — what the running HAProxy was configured from. Every file is
//! replaced through a rename, so a reader sees the old or the new one whole.

use std::path::{Path, PathBuf};

use minicloud_crds::Kind;
use serde::{Deserialize, Serialize};

use super::config;
use super::layout::Layout;
use crate::reconciler::ReconcileError;
use minicloud_store::{Query, Store};

/// Remembers which structure the running HAProxy was configured with.
const APPLIED_FILE: &str = "applied.json";

/// What the running HAProxy was configured from (kept in [`APPLIED_FILE`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    /// Hash of the structural configuration.
    pub structure: String,
    /// The layout that configuration came from: membership changes follow its backends until
    /// a new structure is applied.
    pub layout: Layout,
}

/// The directory of a load balancer under the control plane's state directory:
/// `lb/CLUSTER-UID`, the cluster part (8 characters of the store's id) keeping control planes
/// that share a state directory apart, and the whole short enough for a socket path.
pub fn directory(state_dir: &Path, cluster: &str, uid: &str) -> PathBuf {
    state_dir.join("lb").join(format!("{}-{uid}", cluster_prefix(cluster)))
}

fn cluster_prefix(cluster: &str) -> String {
    cluster.chars().filter(char::is_ascii_alphanumeric).take(8).collect()
}

/// Creates the directory (mode 0700) and returns `UID:GID` of its owner, HAProxy's user.
pub fn prepare(directory: &Path) -> Result<String, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let metadata = std::fs::metadata(directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    // The socket path must fit a Unix socket address (108 bytes).
    let socket = directory.join(config::SOCKET_FILE);
    if socket.as_os_str().len() >= 108 {
        return Err(format!(
            "{} is too long for a Unix socket; start the server with a shorter --data-dir",
            socket.display()
        ));
    }
    Ok(format!("{}:{}", metadata.uid(), metadata.gid()))
}

/// Writes a file through a temporary one and a rename, so readers see the old or the new whole.
pub(crate) fn write_atomically(path: &Path, contents: &str) -> Result<(), ReconcileError> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|error| ReconcileError::Failed(format!("cannot write {}: {error}", path.display())))
}

/// Writes a certificate file (key and chain) under `certs/`, mode 0600, when its content
/// differs. Returns whether it changed.
pub(crate) fn write_certificate(directory: &Path, file: &str, pem: &str) -> Result<bool, ReconcileError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let certs = directory.join(config::CERTS_DIR);
    let path = certs.join(file);
    if std::fs::read_to_string(&path).is_ok_and(|current| current == pem) {
        return Ok(false);
    }
    let failed = |error: std::io::Error| ReconcileError::Failed(format!("cannot write {}: {error}", path.display()));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&certs).map_err(failed)?;
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    std::io::Write::write_all(&mut options.open(&temporary).map_err(failed)?, pem.as_bytes()).map_err(failed)?;
    std::fs::rename(&temporary, &path).map_err(failed)?;
    Ok(true)
}

/// The validated candidate becomes the configuration HAProxy loads (a rename: atomic).
pub(crate) fn install_candidate(directory: &Path) -> Result<(), ReconcileError> {
    std::fs::rename(directory.join(config::CANDIDATE_FILE), directory.join(config::CONFIG_FILE))
        .map_err(|error| ReconcileError::Failed(format!("cannot install the configuration: {error}")))
}

/// Forgets the server states an earlier HAProxy saved (a new container starts fresh).
pub(crate) fn forget_server_states(directory: &Path) {
    let _ = std::fs::remove_file(directory.join(config::STATE_FILE));
}

/// What the running HAProxy was configured from; `None` before the first configuration.
pub(crate) fn read_applied(directory: &Path) -> Option<Applied> {
    let text = std::fs::read_to_string(directory.join(APPLIED_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

pub(crate) fn write_applied(directory: &Path, applied: &Applied) -> Result<(), ReconcileError> {
    let text = serde_json::to_string(applied).map_err(|error| ReconcileError::Failed(error.to_string()))?;
    write_atomically(&directory.join(APPLIED_FILE), &text)
}

/// Removes the directory (deletion).
pub fn remove(directory: &Path) -> Result<(), ReconcileError> {
    match std::fs::remove_dir_all(directory) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ReconcileError::Failed(format!("cannot remove {}: {error}", directory.display()))),
    }
}

/// Removes directories of load balancers that no longer exist (their container goes with the
/// orphan collection). Returns how many were removed.
pub async fn collect_orphan_directories(store: &dyn Store, state_dir: &Path) -> Result<usize, ReconcileError> {
    let root = state_dir.join("lb");
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(0) };
    let live: std::collections::HashSet<String> = store
        .list(&Query { kind: Some(Kind::LoadBalancer), ..Query::default() })
        .await?
        .items
        .into_iter()
        .filter_map(|object| object.metadata.uid)
        .collect();
    let ours = format!("{}-", cluster_prefix(store.cluster_id()));
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Directories of other control planes sharing this state directory are theirs.
        let Some(uid) = name.strip_prefix(&ours) else { continue };
        if !live.contains(uid) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_configuration_survives_a_restart_and_directories_stay_apart() {
        let state = tempfile::tempdir().expect("tempdir");
        let mine = directory(state.path(), "cluster-one", "u-1");
        let theirs = directory(state.path(), "cluster-two", "u-1");
        assert_ne!(mine, theirs, "control planes sharing a state directory keep apart");
        prepare(&mine).expect("prepare");
        assert!(read_applied(&mine).is_none(), "never configured");
        let spec = crate::loadbalancer::plan::tests::spec(serde_json::json!([{"name": "http", "targetPort": 8080}]));
        let layout = crate::loadbalancer::plan::tests::layout(&spec);
        write_applied(&mine, &Applied { structure: "s1".into(), layout: layout.clone() }).expect("write");
        let read = read_applied(&mine).expect("read");
        assert_eq!((read.structure.as_str(), read.layout), ("s1", layout));
        assert!(write_certificate(&mine, "a.pem", "PEM").expect("write"), "new");
        assert!(!write_certificate(&mine, "a.pem", "PEM").expect("write"), "unchanged");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(mine.join("certs/a.pem")).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        remove(&mine).expect("remove");
        remove(&mine).expect("removing twice is fine");
    }

    #[test]
    fn a_state_directory_too_long_for_a_socket_is_refused() {
        let state = tempfile::tempdir().expect("tempdir");
        let long = state.path().join("d".repeat(120));
        let message = prepare(&directory(&long, "c", "u")).expect_err("too long");
        assert!(message.contains("shorter --data-dir"), "{message}");
    }
}
