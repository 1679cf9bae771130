//! Whether HAProxy accepts a configuration, asked before it is ever loaded: the candidate is
//! rendered into the load balancer's directory and checked with `haproxy -c` — inside the
//! running container when there is one, else in a one-off container of the same image. A
//! structure HAProxy refused is remembered and refused again without asking, until the spec
//! changes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use minicloud_crds::ObjectKey;

use super::config::{self, Members};
use super::layout::Layout;
use super::state::write_atomically;
use crate::docker::labels;
use crate::docker::{ContainerDriver, ContainerSpec, DriverError};
use crate::reconciler::ReconcileError;

/// Time allowed for `haproxy -c`.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Part of HAProxy's rejection kept in conditions and events.
const MAX_MESSAGE: usize = 1500;

/// A configuration about to be checked: what it is rendered from and where it is written.
pub(crate) struct Candidate<'a> {
    pub owner: &'a str,
    pub layout: &'a Layout,
    pub members: &'a Members,
    pub directory: &'a Path,
    /// Hash of its structural part: a refusal is remembered by it.
    pub structure: &'a str,
}

/// Why HAProxy refused a configuration.
pub(crate) struct Refusal {
    pub message: String,
    /// Refused just now, not remembered from an earlier round.
    pub first: bool,
}

/// Remembers, per load balancer, the last structure HAProxy refused.
#[derive(Default)]
pub struct Validator {
    rejected: Mutex<HashMap<ObjectKey, (String, String)>>,
}

impl Validator {
    /// Whether HAProxy accepts the candidate: a structure it refused before is refused again
    /// without asking; otherwise the candidate is rendered, written and checked.
    pub async fn check(
        &self,
        driver: &dyn ContainerDriver,
        key: &ObjectKey,
        candidate: &Candidate<'_>,
        running: Option<&str>,
        template: &ContainerSpec,
    ) -> Result<Result<(), Refusal>, ReconcileError> {
        let known = self.rejected.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned();
        if let Some((structure, message)) = known {
            if structure == candidate.structure {
                return Ok(Err(Refusal { message, first: false }));
            }
        }
        let rendered = config::render(candidate.owner, candidate.layout, candidate.members)
            .map_err(|error| ReconcileError::InvalidSpec(error.to_string()))?;
        // The crt-lists the candidate names (their content is part of the structure).
        for listener in candidate.layout.listeners.iter().filter(|l| !l.certificates.is_empty()) {
            write_atomically(
                &candidate.directory.join(config::crt_list_file(&listener.name)),
                &config::crt_list(listener),
            )?;
        }
        write_atomically(&candidate.directory.join(config::CANDIDATE_FILE), &rendered)?;
        match haproxy_check(driver, running, template).await? {
            Ok(()) => {
                self.rejected.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
                Ok(Ok(()))
            }
            Err(message) => {
                self.rejected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone(), (candidate.structure.to_owned(), message.clone()));
                Ok(Err(Refusal { message, first: true }))
            }
        }
    }

    /// Forgets a deleted load balancer.
    pub(crate) fn forget(&self, key: &ObjectKey) {
        self.rejected.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

/// Runs `haproxy -c` on the candidate file: inside the running container when there is one,
/// else in a one-off container of the same image. `Err` holds HAProxy's complaint.
async fn haproxy_check(
    driver: &dyn ContainerDriver,
    running: Option<&str>,
    template: &ContainerSpec,
) -> Result<Result<(), String>, DriverError> {
    let candidate = format!("{}/{}", config::MOUNT, config::CANDIDATE_FILE);
    let command = vec!["/usr/sbin/haproxy".to_owned(), "-c".into(), "-q".into(), "-f".into(), candidate];
    let output = match running {
        Some(container) => driver.exec(container, &command, VALIDATE_TIMEOUT).await?,
        None => {
            let mut check = template.clone();
            check.name = format!("{}-check-{:08x}", template.name, rand::random::<u32>());
            check.entrypoint = Some(command);
            check.ports.clear();
            check.network = "none".into();
            // Labels of no live object: a leftover of a crash is collected as an orphan.
            check.labels.insert(labels::UID.into(), "validation".into());
            driver.run_once(&check, VALIDATE_TIMEOUT).await?
        }
    };
    if output.exit_code == 0 {
        return Ok(Ok(()));
    }
    let mut message = output.output.trim().replace(&format!("{}/", config::MOUNT), "");
    if message.is_empty() {
        message = format!("haproxy -c exited with code {}", output.exit_code);
    }
    if message.len() > MAX_MESSAGE {
        message = message.chars().take(MAX_MESSAGE).collect();
    }
    Ok(Err(message))
}
