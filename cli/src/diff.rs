//! `cloud diff -f PATH [-R] [--prune --applyset NAME]`: what an apply of these manifests would
//! do, as `kubectl diff` shows it — per object create / update / unchanged, for an update each
//! field with its values (and whether containers are replaced or the change is made in place),
//! drift (a field the manifests set that was changed outside them), and with an applyset what
//! prune would delete. The server answers a dry-run apply (so the plan is the server's own,
//! Secrets included); values of Secrets are never printed.

use std::io::IsTerminal;
use std::path::PathBuf;

use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::output::object_label;
use minicloud_client::{ApplySetOptions, Client};
use minicloud_model::answers::Action;
use minicloud_model::merge::{drift, field_changes, merge, FieldChange};

/// A line of painted output: every text in it went through [`Paint`], which cleans it, so the
/// line is written as it is (its colour codes are minicloud's own).
macro_rules! painted {
    ($($arg:tt)*) => { super::output::write_data(&format!("{}\n", format_args!($($arg)*))) };
}

/// Terminal colours, or none when the output is not a terminal or `NO_COLOR` is set.
struct Paint {
    on: bool,
}

impl Paint {
    /// The text cleaned of control characters, in colour when on.
    fn paint(&self, code: &str, text: &str) -> String {
        let text = super::output::clean(text);
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.into_owned()
        }
    }
    fn added(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn removed(&self, text: &str) -> String {
        self.paint("31", text)
    }
    fn changed(&self, text: &str) -> String {
        self.paint("33", text)
    }
    fn drifted(&self, text: &str) -> String {
        self.paint("35", text)
    }
}

/// Compares; `Ok(true)` when anything would change.
pub async fn run(
    client: &Client,
    files: &[PathBuf],
    recursive: bool,
    namespace: Option<&str>,
    set: Option<&ApplySetOptions>,
) -> anyhow::Result<bool> {
    let manifests = super::apply::load(files, recursive)?;
    let items = super::apply::items(&manifests, namespace)?;
    let answer = client.apply_with(items.clone(), true, set).await?;
    let paint = Paint { on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() };
    let mut differences = false;
    for (item, manifest) in answer.items.iter().zip(&items) {
        let kind = Kind::from_kind_name(&item.kind);
        let label = object_label(&item.kind, &item.name, &item.namespace);
        let live = match (kind, item.action) {
            (Some(kind), Action::Configured | Action::Unchanged) => {
                Some(client.get(kind, &item.namespace, &item.name).await?)
            }
            _ => None,
        };
        match item.action {
            Action::Created => {
                differences = true;
                painted!("{}", paint.added(&format!("{label}: create")));
            }
            Action::Unchanged => say!("{label}: unchanged"),
            Action::Configured => {
                differences = true;
                let impact = kind.map_or("in place", |kind| minicloud_model::impact::impact(kind, &item.changes));
                painted!("{}", paint.changed(&format!("{label}: update ({impact})")));
                let secret = kind == Some(Kind::Secret);
                let shown = match (&live, secret) {
                    (Some(live), false) => {
                        let mut wanted: Object = serde_json::from_value(manifest.clone())?;
                        if let Some(set) = set {
                            wanted.metadata.annotations.insert(
                                minicloud_crds::applyset::PART_OF_ANNOTATION.to_owned(),
                                format!("{}/{}", set.namespace, set.name),
                            );
                        }
                        field_changes(live, &merge(live, &wanted))
                    }
                    _ => Vec::new(),
                };
                if shown.is_empty() {
                    for path in &item.changes {
                        painted!(
                            "  {}",
                            paint.changed(&format!("~ {path}{}", if secret { " (value not shown)" } else { "" }))
                        );
                    }
                }
                for change in &shown {
                    painted!("  {}", line(&paint, change));
                }
            }
        }
        if let Some(drifted) = live.as_ref().and_then(drift) {
            for change in drifted {
                painted!(
                    "  {}",
                    paint.drifted(&format!(
                        "! drift {}: applied {}, now {} (changed outside these manifests; applying sets it back)",
                        change.path,
                        shown_value(&change.before),
                        shown_value(&change.after)
                    ))
                );
            }
        }
    }
    for pruned in &answer.pruned {
        let label = object_label(&pruned.kind, &pruned.name, &pruned.namespace);
        match pruned.action.as_str() {
            "kept" => {
                painted!(
                    "{}",
                    paint.removed(&format!(
                        "{label}: no longer in the manifests; kept (a database: prune it with --prune-stateful)"
                    ))
                )
            }
            "gone" => {}
            "released" => {
                say!("{label}: no longer in the manifests; released, not deleted (applied outside this applyset since)")
            }
            _ => painted!("{}", paint.removed(&format!("{label}: prune (delete)"))),
        }
        differences |= pruned.action == "deleted" || pruned.action == "kept";
    }
    Ok(differences)
}

/// One changed field: `+ path: new`, `- path: old` or `~ path: old → new`.
fn line(paint: &Paint, change: &FieldChange) -> String {
    match (&change.before, &change.after) {
        (Value::Null, after) => paint.added(&format!("+ {}: {}", change.path, shown_value(after))),
        (before, Value::Null) => paint.removed(&format!("- {}: {}", change.path, shown_value(before))),
        (before, after) => {
            paint.changed(&format!("~ {}: {} → {}", change.path, shown_value(before), shown_value(after)))
        }
    }
}

fn shown_value(value: &Value) -> String {
    match value {
        Value::Null => "(none)".into(),
        other => other.to_string(),
    }
}
