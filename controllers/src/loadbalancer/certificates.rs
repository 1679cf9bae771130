//! The certificates of a LoadBalancer's HTTPS listeners: read from the Secrets of the
//! Certificates the listeners name, checked ([`crate::tls::inspect`]), written into the load
//! balancer's directory as HAProxy's PEM files (chain, then key), and rotated in the running
//! HAProxy through the Runtime API (`set ssl cert` + `commit ssl cert`, no reload).
//!
//! A pair that does not pass the check never reaches HAProxy: the listener keeps serving the
//! last good file it has, and the problem is reported. A listener with no usable certificate
//! at all serves a placeholder (self-signed for `minicloud.invalid`), so HAProxy can start and
//! the other listeners serve; `Ready` says which certificates are missing.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use minicloud_crds::certificate::{secret_name, CERT_KEY, KEY_KEY};
use minicloud_crds::loadbalancer::{ListenerProtocol, LoadBalancerSpec};
use minicloud_crds::{Kind, ObjectKey};
use minicloud_store::{Store, StoreError};

use super::admin::{AdminError, AdminSocket};
use super::config::{CERTS_DIR, MOUNT};
use super::state;
use crate::reconciler::ReconcileError;
use crate::tls;

/// The placeholder's file: a name no Certificate can have (its names hold no dot).
pub(crate) const PLACEHOLDER_FILE: &str = "placeholder.minicloud.pem";
/// What the placeholder certificate is for.
const PLACEHOLDER_NAME: &str = "minicloud.invalid";

/// The certificate files of one round.
#[derive(Debug, Default)]
pub(crate) struct CertificateFiles {
    /// Per HTTPS listener: its files in crt-list order (the first is served without SNI).
    pub by_listener: BTreeMap<String, Vec<String>>,
    /// Files whose content changed this round, with that content (for the Runtime API).
    pub changed: Vec<(String, String)>,
    /// What is wrong with a named certificate, by certificate name.
    pub problems: BTreeMap<String, String>,
}

impl CertificateFiles {
    pub fn files(&self, listener: &str) -> Vec<String> {
        self.by_listener.get(listener).cloned().unwrap_or_default()
    }
}

/// The file of a Certificate's pair.
pub(crate) fn file_of(certificate: &str) -> String {
    format!("{certificate}.pem")
}

/// Reads, checks and writes the certificates every HTTPS listener of `spec` names.
pub(crate) async fn collect(
    store: &dyn Store,
    namespace: &str,
    spec: &LoadBalancerSpec,
    directory: &Path,
    now: DateTime<Utc>,
) -> Result<CertificateFiles, ReconcileError> {
    let mut files = CertificateFiles::default();
    let mut usable: BTreeMap<String, bool> = BTreeMap::new();
    for listener in spec.listeners.iter().filter(|l| l.protocol == ListenerProtocol::Https) {
        let mut list = Vec::new();
        for reference in listener.tls.iter().flat_map(|tls| &tls.certificate_refs) {
            let name = reference.name.clone();
            let ok = match usable.get(&name) {
                Some(ok) => *ok,
                None => {
                    let ok = load(store, namespace, &name, directory, now, &mut files).await?;
                    usable.insert(name.clone(), ok);
                    ok
                }
            };
            if ok && !list.contains(&file_of(&name)) {
                list.push(file_of(&name));
            }
        }
        if list.is_empty() {
            ensure_placeholder(directory, now)?;
            list.push(PLACEHOLDER_FILE.to_owned());
        }
        files.by_listener.insert(listener.name.clone(), list);
    }
    Ok(files)
}

/// Loads one Certificate's pair into its file. True when a file is there to serve (the new
/// pair, or the last good one).
async fn load(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    directory: &Path,
    now: DateTime<Utc>,
    files: &mut CertificateFiles,
) -> Result<bool, ReconcileError> {
    let file = file_of(name);
    let last_good = directory.join(CERTS_DIR).join(&file).exists();
    let mut problem = |message: String| {
        let kept = if last_good { "; serving the last good certificate" } else { "" };
        files.problems.insert(name.to_owned(), format!("{message}{kept}"));
        Ok(last_good)
    };
    match store.get(&ObjectKey::new(Kind::Certificate, namespace, name)).await {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => return problem(format!("certificate/{name} does not exist")),
        Err(error) => return Err(error.into()),
    }
    let secret = match store.get(&ObjectKey::new(Kind::Secret, namespace, secret_name(name))).await {
        Ok(secret) => secret,
        Err(StoreError::NotFound(_)) => return problem(format!("certificate/{name} is not issued yet")),
        Err(error) => return Err(error.into()),
    };
    let data = |key: &str| secret.spec["stringData"][key].as_str().map(str::to_owned);
    let (Some(chain), Some(key)) = (data(CERT_KEY), data(KEY_KEY)) else {
        return problem(format!("secret/{} lacks {CERT_KEY} or {KEY_KEY}", secret_name(name)));
    };
    if let Err(error) = tls::inspect(&chain, &key, now) {
        return problem(format!("certificate/{name}: {error}"));
    }
    let pem = haproxy_pem(&chain, &key);
    if state::write_certificate(directory, &file, &pem)? {
        files.changed.push((file, pem));
    }
    Ok(true)
}

/// HAProxy's PEM file: the chain, then the key, without empty lines (the Runtime API reads a
/// payload up to the first empty line).
fn haproxy_pem(chain: &str, key: &str) -> String {
    let mut pem = String::new();
    for line in chain.lines().chain(key.lines()).filter(|line| !line.trim().is_empty()) {
        pem.push_str(line.trim_end());
        pem.push('\n');
    }
    pem
}

/// Writes the placeholder once.
fn ensure_placeholder(directory: &Path, now: DateTime<Utc>) -> Result<(), ReconcileError> {
    if directory.join(CERTS_DIR).join(PLACEHOLDER_FILE).exists() {
        return Ok(());
    }
    let (chain, key) = tls::self_signed(&[PLACEHOLDER_NAME.to_owned()], 3650, now)
        .map_err(|error| ReconcileError::Failed(error.to_string()))?;
    state::write_certificate(directory, PLACEHOLDER_FILE, &haproxy_pem(&chain, &key))?;
    Ok(())
}

/// Installs a changed certificate file in the running HAProxy (which serves it from the next
/// handshake on; open connections keep theirs).
pub(crate) async fn rotate(socket: &AdminSocket, file: &str, pem: &str) -> Result<(), AdminError> {
    let path = format!("{MOUNT}/{CERTS_DIR}/{file}");
    let answer = socket.command_with_payload(&format!("set ssl cert {path}"), pem).await?;
    if !answer.contains("Transaction") {
        return Err(AdminError::Refused { command: format!("set ssl cert {path}"), answer: answer.trim().to_owned() });
    }
    let answer = socket.command(&format!("commit ssl cert {path}")).await?;
    if !answer.contains("Success") {
        let _ = socket.command(&format!("abort ssl cert {path}")).await;
        return Err(AdminError::Refused {
            command: format!("commit ssl cert {path}"),
            answer: answer.trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_files_hold_the_chain_then_the_key_without_empty_lines() {
        let pem = haproxy_pem(
            "-----BEGIN CERTIFICATE-----\nAA\n\n-----END CERTIFICATE-----\n\n",
            "-----BEGIN PRIVATE KEY-----\r\nBB\n-----END PRIVATE KEY-----",
        );
        assert_eq!(
            pem,
            "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBB\n-----END PRIVATE KEY-----\n"
        );
        // A Certificate's name is a DNS label (no dot): its file can never be the placeholder's.
        assert!(PLACEHOLDER_FILE.trim_end_matches(".pem").contains('.'));
        assert_eq!(file_of("shop"), "shop.pem");
    }
}
