//! `cloud apply -f PATH [--prune --applyset NAME]`: validates every manifest locally first
//! (errors with file:line:col), then sends the batch to the server and prints one line per
//! object — and, with an applyset, one per member pruned (or kept).

use std::path::PathBuf;

use super::output::object_label;
use minicloud_client::{ApplySetOptions, Client};
use minicloud_model::answers::{Action, Applied};
use minicloud_model::manifest::{self, Manifest, ManifestError};

/// Reads and validates manifests, printing every problem; nothing is applied when any exists.
pub fn load(paths: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<Manifest>> {
    match manifest::load(paths, recursive) {
        Ok(manifests) => Ok(manifests),
        Err(ManifestError::Invalid(problems)) => {
            for problem in &problems {
                say_err!("{problem}");
            }
            anyhow::bail!("{} problem(s) found; nothing was applied", problems.len());
        }
    }
}

/// Applies the manifests at `paths` (as the applyset `set`, pruning when it says so).
pub async fn run(
    client: &Client,
    paths: &[PathBuf],
    recursive: bool,
    namespace: Option<&str>,
    dry_run: bool,
    set: Option<&ApplySetOptions>,
) -> anyhow::Result<()> {
    let manifests = load(paths, recursive)?;
    send_with(client, &manifests, namespace, dry_run, set).await.map(|_| ())
}

/// The manifests as the objects to send, in `namespace` when they name none.
pub fn items(manifests: &[Manifest], namespace: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut items = Vec::with_capacity(manifests.len());
    for manifest in manifests {
        let mut object = manifest.to_object()?;
        if let (Some(namespace), None) = (namespace, &object.metadata.namespace) {
            object.metadata.namespace = Some(namespace.to_owned());
        }
        items.push(serde_json::to_value(object)?);
    }
    Ok(items)
}

/// Sends validated manifests to the server and prints one line per object; returns what
/// happened to each.
pub async fn send(
    client: &Client,
    manifests: &[Manifest],
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Vec<Applied>> {
    send_with(client, manifests, namespace, dry_run, None).await
}

/// Like [`send`], as (part of) an applyset; prints what prune did too.
pub async fn send_with(
    client: &Client,
    manifests: &[Manifest],
    namespace: Option<&str>,
    dry_run: bool,
    set: Option<&ApplySetOptions>,
) -> anyhow::Result<Vec<Applied>> {
    let items = items(manifests, namespace)?;
    let answer = client.apply_with(items, dry_run, set).await?;
    let suffix = if answer.dry_run { " (dry run)" } else { "" };
    for item in &answer.items {
        let action = match item.action {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        };
        say!("{} {action}{suffix}", object_label(&item.kind, &item.name, &item.namespace));
        if answer.dry_run {
            for change in &item.changes {
                say!("  ~ {change}");
            }
        }
    }
    for pruned in &answer.pruned {
        let object = object_label(&pruned.kind, &pruned.name, &pruned.namespace);
        match pruned.action.as_str() {
            "kept" => say!(
                "{object} kept: a database no longer in the applyset is pruned only with --prune-stateful (it follows its deletionPolicy)"
            ),
            "gone" => say!("{object} pruned (it was already gone){suffix}"),
            "released" => say!(
                "{object} released, not deleted: it was applied outside the applyset since{suffix}"
            ),
            _ => say!("{object} pruned{suffix}"),
        }
    }
    for warning in &answer.warnings {
        say_err!("warning: {warning}");
    }
    Ok(answer.items)
}
