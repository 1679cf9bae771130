//! `cloud delete KIND NAME... | -f FILE [--wait] [--skip-final-snapshot]`.

use std::path::PathBuf;
use std::time::Duration;

use minicloud_crds::database::SKIP_FINAL_SNAPSHOT_ANNOTATION;
use minicloud_crds::Kind;

use super::{modify, parse_targets};
use minicloud_client::{Client, ClientError};
use minicloud_model::manifest::{self, ManifestError};

/// How `cloud delete` deletes.
#[derive(Debug, Default)]
pub struct Options {
    /// Wait (this long) until the objects are gone.
    pub wait: Option<Duration>,
    /// Let databases go without their final snapshot.
    pub skip_final_snapshot: bool,
}

/// Deletes the named objects, or those the manifests declare.
pub async fn run(
    client: &Client,
    targets: &[String],
    files: &[PathBuf],
    recursive: bool,
    namespace: &str,
    options: Options,
) -> anyhow::Result<()> {
    let Options { wait, skip_final_snapshot } = options;
    let mut objects: Vec<(Kind, String, String)> = Vec::new();
    if !files.is_empty() {
        let manifests = manifest::load(files, recursive).map_err(|ManifestError::Invalid(problems)| {
            for problem in &problems {
                say_err!("{problem}");
            }
            anyhow::anyhow!("{} problem(s) found; nothing was deleted", problems.len())
        })?;
        for manifest in manifests {
            let key = manifest.key();
            let namespace =
                if manifest.object.metadata().namespace.is_some() { key.namespace } else { namespace.to_owned() };
            objects.push((key.kind, namespace, key.name));
        }
    }
    if !targets.is_empty() {
        for (kind, name) in parse_targets(targets)? {
            let Some(name) = name else {
                anyhow::bail!("name the {} to delete (deleting every object of a kind is not supported)", kind.plural())
            };
            objects.push((kind, namespace.to_owned(), name));
        }
    }
    if objects.is_empty() {
        anyhow::bail!("name what to delete: `cloud delete instance web` or `cloud delete -f FILE`");
    }
    if skip_final_snapshot && objects.iter().any(|(kind, _, _)| *kind != Kind::ManagedDatabase) {
        anyhow::bail!("--skip-final-snapshot applies to databases only; delete other kinds without it");
    }
    let mut failures = 0;
    for (kind, namespace, name) in &objects {
        let label = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
        if skip_final_snapshot {
            // The annotation first (a recorded write), on a database already being deleted too.
            let marked = modify(client, *kind, namespace, name, |object| {
                let annotations = &mut object.metadata.annotations;
                Ok(annotations.insert(SKIP_FINAL_SNAPSHOT_ANNOTATION.to_owned(), "true".to_owned()).as_deref()
                    != Some("true"))
            })
            .await;
            match marked {
                Ok(_) => say_err!("{label}: deleting without a final snapshot"),
                Err(error) => {
                    if !matches!(error.downcast_ref::<ClientError>(), Some(ClientError::Api { status: 404, .. })) {
                        say_err!("error: {error}");
                        failures += 1;
                        continue;
                    }
                }
            }
        }
        match client.delete(*kind, namespace, name).await {
            Ok(answer) if answer.terminating() => say!("{label} deleting (waiting for finalizers)"),
            Ok(_) => say!("{label} deleted"),
            Err(error) => {
                say_err!("error: {error}");
                failures += 1;
            }
        }
    }
    if let Some(timeout) = wait {
        for (kind, namespace, name) in &objects {
            let target = vec![format!("{}/{name}", kind.as_str().to_ascii_lowercase())];
            super::wait::run(client, &target, "delete", namespace, timeout).await?;
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} deletion(s) failed", objects.len());
    }
    Ok(())
}
