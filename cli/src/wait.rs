//! `cloud wait KIND/NAME --for condition=Ready[=false] | --for delete [--timeout 60s]`.
//! A condition counts only once its observedGeneration has caught up with the object's
//! generation (kubectl's rule): a Ready=True from before the last spec change does not count.

use std::time::Duration;

use futures::StreamExt;
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::get::condition;
use super::parse_targets;
use minicloud_client::Client;

/// What to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Goal {
    Condition { type_: String, status: String },
    Deleted,
}

/// Parses `condition=Ready`, `condition=Ready=false`, `delete`.
pub fn parse_goal(text: &str) -> anyhow::Result<Goal> {
    if text == "delete" {
        return Ok(Goal::Deleted);
    }
    let Some(rest) = text.strip_prefix("condition=") else {
        anyhow::bail!("--for {text:?}: use condition=TYPE[=true|false] or delete");
    };
    let (type_, status) = rest.split_once('=').unwrap_or((rest, "true"));
    let status = match status.to_ascii_lowercase().as_str() {
        "true" => "True",
        "false" => "False",
        "unknown" => "Unknown",
        other => anyhow::bail!("--for {text:?}: condition status {other:?} must be true, false or unknown"),
    };
    if type_.is_empty() {
        anyhow::bail!("--for {text:?}: name the condition, e.g. condition=Ready");
    }
    Ok(Goal::Condition { type_: type_.to_owned(), status: status.to_owned() })
}

/// Whether the object satisfies the goal; the condition must be current.
pub fn satisfied(object: &Object, goal: &Goal) -> bool {
    let Goal::Condition { type_, status } = goal else { return false };
    let Some(found) = condition(object, type_) else { return false };
    let generation = object.metadata.generation.unwrap_or(0);
    let observed = found.get("observedGeneration").and_then(Value::as_i64).unwrap_or(0);
    found.get("status").and_then(Value::as_str) == Some(status.as_str()) && observed >= generation
}

fn describe_state(object: &Object, goal: &Goal) -> String {
    let Goal::Condition { type_, .. } = goal else { return "it still exists".into() };
    match condition(object, type_) {
        None => format!("it has no {type_} condition yet"),
        Some(found) => {
            let text = |key: &str| found.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
            format!("{type_} is {} ({}: {})", text("status"), text("reason"), text("message"))
        }
    }
}

async fn wait_one(client: &Client, kind: Kind, namespace: &str, name: &str, goal: &Goal) -> anyhow::Result<String> {
    let mut latest = match client.get(kind, namespace, name).await {
        Ok(object) => object,
        Err(error) if error.is_not_found() && *goal == Goal::Deleted => return Ok("deleted".into()),
        Err(error) => return Err(error.into()),
    };
    loop {
        if satisfied(&latest, goal) {
            return Ok("condition met".into());
        }
        let version = latest.metadata.resource_version.clone();
        let mut stream = client.watch(kind, Some(namespace), None, version.as_deref()).await?;
        while let Some(line) = stream.next().await {
            let line = line?;
            if line.change == "BOOKMARK" || line.object.pointer("/metadata/name").and_then(Value::as_str) != Some(name)
            {
                continue;
            }
            if line.change == "ERROR" {
                break; // e.g. expired: read the object again and watch anew
            }
            if line.change == "DELETED" {
                if *goal == Goal::Deleted {
                    return Ok("deleted".into());
                }
                anyhow::bail!("{}/{name} was deleted while waiting", kind.as_str().to_ascii_lowercase());
            }
            latest = serde_json::from_value(line.object)?;
            if satisfied(&latest, goal) {
                return Ok("condition met".into());
            }
        }
        latest = client.get(kind, namespace, name).await?;
    }
}

/// Waits for every target, each within `timeout`.
pub async fn run(
    client: &Client,
    targets: &[String],
    goal: &str,
    namespace: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let goal = parse_goal(goal)?;
    for (kind, name) in parse_targets(targets)? {
        let Some(name) = name else { anyhow::bail!("name what to wait for, e.g. instance/web") };
        let label = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
        match tokio::time::timeout(timeout, wait_one(client, kind, namespace, &name, &goal)).await {
            Ok(Ok(outcome)) => say!("{label} {outcome}"),
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                let state = match client.get(kind, namespace, &name).await {
                    Ok(object) => describe_state(&object, &goal),
                    Err(error) => error.to_string(),
                };
                anyhow::bail!("timed out after {timeout:?} waiting for {label}: {state}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(generation: i64, observed: i64, status: &str) -> Object {
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance",
            "metadata": {"name": "web", "generation": generation}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": status, "reason": "R", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": observed}]}
        }))
        .expect("object")
    }

    #[test]
    fn goals_parse() {
        assert_eq!(
            parse_goal("condition=Ready").ok(),
            Some(Goal::Condition { type_: "Ready".into(), status: "True".into() })
        );
        assert_eq!(
            parse_goal("condition=Ready=false").ok(),
            Some(Goal::Condition { type_: "Ready".into(), status: "False".into() })
        );
        assert_eq!(parse_goal("delete").ok(), Some(Goal::Deleted));
        assert!(parse_goal("ready").is_err());
        assert!(parse_goal("condition=Ready=maybe").is_err());
    }

    #[test]
    fn stale_conditions_do_not_count() {
        let ready = parse_goal("condition=Ready").expect("goal");
        assert!(satisfied(&object(2, 2, "True"), &ready));
        assert!(!satisfied(&object(3, 2, "True"), &ready), "observed generation behind the spec");
        assert!(!satisfied(&object(2, 2, "False"), &ready));
    }
}
