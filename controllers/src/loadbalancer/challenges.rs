//! ACME HTTP-01 answers: every HTTP listener of every load balancer answers
//! `/.well-known/acme-challenge/TOKEN` with the key authorization of any Certificate's order in
//! flight (a CA asks whichever load balancer the name resolves to, and there is nothing secret
//! in a key authorization). The answers live in a HAProxy map file, `acme.map`, changed
//! through the Runtime API (`add map`, `del map`) without a reload, and rewritten on disk so a
//! reload keeps them. Only well-formed tokens reach the map
//! ([`minicloud_crds::certificate::Http01Challenge::is_well_formed`]).

use std::collections::BTreeMap;
use std::path::Path;

use minicloud_crds::kinds::Certificate;
use minicloud_crds::Kind;
use minicloud_store::{Query, Store};

use super::admin::{AdminError, AdminSocket};
use super::config::{ACME_MAP_FILE, MOUNT};
use super::state::write_atomically;
use crate::reconciler::ReconcileError;

/// Token to key authorization, for every Certificate's pending challenges.
pub(crate) async fn wanted(store: &dyn Store) -> Result<BTreeMap<String, String>, ReconcileError> {
    let listed = store.list(&Query { kind: Some(Kind::Certificate), ..Query::default() }).await?;
    let mut answers = BTreeMap::new();
    for object in listed.items {
        let Ok(certificate) = serde_json::to_value(&object).and_then(serde_json::from_value::<Certificate>) else {
            continue;
        };
        for challenge in certificate.status.iter().flat_map(|status| &status.challenges) {
            if challenge.is_well_formed() {
                answers.insert(challenge.token.clone(), challenge.key_authorization.clone());
            }
        }
    }
    Ok(answers)
}

/// The map file's text.
fn render(answers: &BTreeMap<String, String>) -> String {
    answers.iter().map(|(token, key)| format!("{token} {key}\n")).collect()
}

/// What the map file holds now.
fn read(directory: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(directory.join(ACME_MAP_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(token, key)| (token.to_owned(), key.to_owned()))
        .collect()
}

/// Makes sure the map file exists (HAProxy refuses a configuration naming a missing map).
pub(crate) fn ensure_file(directory: &Path) -> Result<(), ReconcileError> {
    if directory.join(ACME_MAP_FILE).exists() {
        return Ok(());
    }
    write_atomically(&directory.join(ACME_MAP_FILE), "")
}

/// Brings the running HAProxy's map (when there is one: `socket`) and the file to `answers`.
pub(crate) async fn sync(
    directory: &Path,
    socket: Option<&AdminSocket>,
    answers: &BTreeMap<String, String>,
) -> Result<(), ReconcileError> {
    let current = read(directory);
    if &current == answers {
        return Ok(());
    }
    write_atomically(&directory.join(ACME_MAP_FILE), &render(answers))?;
    let Some(socket) = socket else { return Ok(()) };
    let map = format!("{MOUNT}/{ACME_MAP_FILE}");
    let failed = |error: AdminError| {
        // The file no longer says what HAProxy holds: the next round sends every answer again.
        let _ = std::fs::remove_file(directory.join(ACME_MAP_FILE));
        ReconcileError::Failed(format!("cannot update the ACME answers: {error}"))
    };
    for (token, key) in answers {
        match current.get(token) {
            Some(old) if old == key => {}
            Some(_) => {
                socket.command(&format!("set map {map} {token} {key}")).await.map_err(failed)?;
            }
            None => {
                socket.command(&format!("add map {map} {token} {key}")).await.map_err(failed)?;
            }
        }
    }
    for token in current.keys().filter(|token| !answers.contains_key(*token)) {
        socket.command(&format!("del map {map} {token}")).await.map_err(failed)?;
    }
    Ok(())
}
