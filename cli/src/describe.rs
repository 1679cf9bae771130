//! `cloud describe KIND NAME`: everything about one object — metadata, spec, status, a
//! conditions table and its recent events. The first place to look when something is not Ready.
//! A load balancer's targets and a scaling group's members and scaling history are tables.

use chrono::{DateTime, Utc};
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::output::{age, table, yaml};
use super::parse_targets;
use minicloud_client::Client;
use minicloud_model::merge::LAST_APPLIED;

/// The label naming a scaling group's members (as the controller sets it).
const GROUP_LABEL: &str = "minicloud.dev/scaling-group";
/// Event reasons of a scaling group's changes of its desired count.
const SCALING_REASONS: [&str; 4] = ["ScaledOut", "ScaledIn", "Manual", "Bounds"];

/// Describes every named object.
pub async fn run(client: &Client, targets: &[String], namespace: &str) -> anyhow::Result<()> {
    let targets = parse_targets(targets)?;
    for (index, (kind, name)) in targets.iter().enumerate() {
        let Some(name) = name else {
            anyhow::bail!(
                "name the {} to describe, e.g. `cloud describe {} web`",
                kind.as_str().to_ascii_lowercase(),
                kind.plural()
            )
        };
        if index > 0 {
            say!();
        }
        let object = client.get(*kind, namespace, name).await?;
        let events = client.events(Some(namespace), Some((*kind, name))).await?;
        let members = if *kind == Kind::ScalingGroup {
            let selector = format!("{GROUP_LABEL}={name}");
            Some(client.list(Kind::Instance, Some(namespace), Some(&selector)).await?.items)
        } else {
            None
        };
        show!("{}", render(&object, &events, members.as_deref()));
    }
    Ok(())
}

fn map_text(map: &std::collections::BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = map
        .iter()
        .filter(|(key, _)| key.as_str() != LAST_APPLIED)
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join("\n              ")
    }
}

fn time_text(time: Option<DateTime<Utc>>) -> String {
    time.map_or("<none>".into(), |time| {
        format!("{} ({} ago)", time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), age(Some(time)))
    })
}

/// The whole description as text; `members` are a scaling group's Instances.
pub fn render(object: &Object, events: &[minicloud_store::Event], members: Option<&[Object]>) -> String {
    let meta = &object.metadata;
    let mut out = String::new();
    let mut field = |label: &str, value: String| out.push_str(&format!("{:<14}{value}\n", format!("{label}:")));
    field("Name", meta.name.clone());
    field("Namespace", object.namespace().to_owned());
    field("Kind", object.kind.clone());
    field("Labels", map_text(&meta.labels));
    field("Annotations", map_text(&meta.annotations));
    field("UID", meta.uid.clone().unwrap_or_default());
    field("Version", meta.resource_version.clone().unwrap_or_default());
    let reported = minicloud_crds::Kind::from_kind_name(&object.kind).is_none_or(|kind| kind.reports_conditions());
    let observed = object.status.get("observedGeneration").and_then(Value::as_i64);
    let generation = meta.generation.unwrap_or(0);
    field(
        "Generation",
        match (reported, observed) {
            (false, _) => generation.to_string(),
            (true, None) => format!("{generation} (observed: not yet)"),
            (true, Some(observed)) => format!("{generation} (observed: {observed})"),
        },
    );
    field("Created", time_text(meta.creation_timestamp));
    if meta.deletion_timestamp.is_some() {
        field(
            "Deleting",
            format!("{} — waiting for finalizers: {}", time_text(meta.deletion_timestamp), meta.finalizers.join(", ")),
        );
    } else if !meta.finalizers.is_empty() {
        field("Finalizers", meta.finalizers.join(", "));
    }
    for owner in &meta.owner_references {
        field("Owned by", format!("{}/{}", owner.kind.to_ascii_lowercase(), owner.name));
    }
    out.push_str("Spec:\n");
    out.push_str(&yaml(&object.spec, 2));
    let mut status = object.status.clone();
    let conditions = status.as_object_mut().and_then(|map| map.remove("conditions"));
    // A load balancer's targets read best as a table.
    let targets =
        (object.kind == "LoadBalancer").then(|| status.as_object_mut().and_then(|map| map.remove("targets"))).flatten();
    if let Some(map) = status.as_object_mut() {
        map.remove("observedGeneration");
    }
    if status.as_object().is_some_and(|map| !map.is_empty()) {
        out.push_str("Status:\n");
        out.push_str(&yaml(&status, 2));
    }
    if object.kind == "LoadBalancer" {
        out.push_str("Targets:\n");
        let targets: Vec<Value> = targets.and_then(|t| t.as_array().cloned()).unwrap_or_default();
        if targets.is_empty() {
            out.push_str("  <none>\n");
        } else {
            let rows: Vec<Vec<String>> = targets
                .iter()
                .map(|target| {
                    let text = |key: &str| target.get(key).and_then(Value::as_str).unwrap_or("-").to_owned();
                    vec![text("name"), text("address"), text("state"), text("lastCheck")]
                })
                .collect();
            out.push_str(&indent(&table(&["NAME", "ADDRESS", "STATE", "LAST CHECK"], &rows)));
        }
    }
    if let Some(members) = members {
        out.push_str(&members_table(object, members));
        out.push_str("Scaling history:\n");
        let history: Vec<&minicloud_store::Event> =
            events.iter().filter(|event| SCALING_REASONS.contains(&event.reason.as_str())).collect();
        if history.is_empty() {
            out.push_str("  <none>\n");
        } else {
            let rows: Vec<Vec<String>> = history[history.len().saturating_sub(20)..]
                .iter()
                .map(|event| vec![age(Some(event.last_timestamp)), event.reason.clone(), event.message.clone()])
                .collect();
            out.push_str(&indent(&table(&["AGE", "REASON", "DECISION"], &rows)));
        }
    }
    let conditions: Vec<Value> = conditions.and_then(|c| c.as_array().cloned()).unwrap_or_default();
    // A kind nothing reports on gets no empty section to wonder about.
    if reported || !conditions.is_empty() {
        out.push_str("Conditions:\n");
    }
    if conditions.is_empty() {
        if reported {
            out.push_str("  <none> (no controller has reported on this object yet)\n");
        }
    } else {
        let rows: Vec<Vec<String>> = conditions
            .iter()
            .map(|condition| {
                let text = |key: &str| condition.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
                let since = condition
                    .get("lastTransitionTime")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                vec![text("type"), text("status"), text("reason"), age(since), text("message")]
            })
            .collect();
        out.push_str(&indent(&table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], &rows)));
    }
    out.push_str("Events:\n");
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let recent = &events[events.len().saturating_sub(20)..];
        let rows: Vec<Vec<String>> = recent
            .iter()
            .map(|event| {
                let count = if event.count > 1 { format!(" (x{})", event.count) } else { String::new() };
                vec![
                    format!("{:?}", event.event_type),
                    event.reason.clone(),
                    format!("{}{count}", age(Some(event.last_timestamp))),
                    event.message.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&table(&["TYPE", "REASON", "AGE", "MESSAGE"], &rows)));
    }
    out
}

/// A scaling group's members: readiness, phase, template (current or old) and draining.
fn members_table(group: &Object, members: &[Object]) -> String {
    let mut out = String::from("Members:\n");
    if members.is_empty() {
        out.push_str("  <none>\n");
        return out;
    }
    let current = group.status.get("templateHash").and_then(Value::as_str);
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|member| {
            let ready = member
                .status
                .get("conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")))
                .and_then(|c| c.get("status").and_then(Value::as_str))
                .unwrap_or("Unknown")
                .to_owned();
            let phase = member.status.get("phase").and_then(Value::as_str).unwrap_or("Pending").to_owned();
            let template = member.metadata.labels.get("minicloud.dev/template-hash").map(String::as_str);
            let template = if template.is_some() && template == current { "current" } else { "old" };
            let leaving = if member.metadata.annotations.contains_key("minicloud.dev/draining") {
                "draining"
            } else if member.metadata.deletion_timestamp.is_some() {
                "deleting"
            } else {
                "-"
            };
            vec![
                member.metadata.name.clone(),
                ready,
                phase,
                template.to_owned(),
                leaving.to_owned(),
                age(member.metadata.creation_timestamp),
            ]
        })
        .collect();
    out.push_str(&indent(&table(&["NAME", "READY", "PHASE", "TEMPLATE", "LEAVING", "AGE"], &rows)));
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str) -> Object {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "minicloud.dev/v1",
            "kind": kind,
            "metadata": {"name": "x", "namespace": "default", "generation": 1},
            "spec": {},
        }))
        .expect("object")
    }

    #[test]
    fn kinds_nothing_reports_on_have_no_empty_conditions() {
        for kind in ["Secret", "ApplySet"] {
            let text = render(&object(kind), &[], None);
            assert!(!text.contains("Conditions:") && !text.contains("observed"), "{kind}: {text}");
            assert!(text.contains("Generation:   1\n"), "{text}");
        }
        for kind in ["Instance", "Sync"] {
            let text = render(&object(kind), &[], None);
            assert!(text.contains("observed: not yet") && text.contains("no controller has reported"), "{text}");
        }
    }
}
