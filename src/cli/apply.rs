//! `cloud apply -f PATH`: validates every manifest locally first (errors with file:line:col),
//! then sends the batch to the server and prints one line per object.

use std::path::PathBuf;

use crate::api::apply::{Action, Applied};
use crate::client::Client;
use crate::manifest::{self, Manifest, ManifestError};

/// Reads and validates manifests, printing every problem; nothing is applied when any exists.
pub fn load(paths: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<Manifest>> {
    match manifest::load(paths, recursive) {
        Ok(manifests) => Ok(manifests),
        Err(ManifestError::Invalid(problems)) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            anyhow::bail!("{} problem(s) found; nothing was applied", problems.len());
        }
    }
}

/// Applies the manifests at `paths`.
pub async fn run(
    client: &Client,
    paths: &[PathBuf],
    recursive: bool,
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let manifests = load(paths, recursive)?;
    send(client, &manifests, namespace, dry_run).await.map(|_| ())
}

/// Sends validated manifests to the server and prints one line per object; returns what
/// happened to each.
pub async fn send(
    client: &Client,
    manifests: &[Manifest],
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Vec<Applied>> {
    let mut items = Vec::with_capacity(manifests.len());
    for manifest in manifests {
        let mut object = manifest.to_object()?;
        if let (Some(namespace), None) = (namespace, &object.metadata.namespace) {
            object.metadata.namespace = Some(namespace.to_owned());
        }
        items.push(serde_json::to_value(object)?);
    }
    let answer = client.apply(items, dry_run).await?;
    let suffix = if answer.dry_run { " (dry run)" } else { "" };
    for item in &answer.items {
        let action = match item.action {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        };
        let namespace = if item.namespace == minicloud_crds::DEFAULT_NAMESPACE {
            String::new()
        } else {
            format!(" -n {}", item.namespace)
        };
        println!("{}/{}{namespace} {action}{suffix}", item.kind.to_ascii_lowercase(), item.name);
        if answer.dry_run {
            for change in &item.changes {
                println!("  ~ {change}");
            }
        }
    }
    Ok(answer.items)
}
