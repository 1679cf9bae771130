//! `cloud scale KIND/NAME --replicas N` (or `cloud scale sg NAME --replicas N`): sets a scaling
//! group's `spec.desiredReplicas`. A count outside `minReplicas..maxReplicas` is refused before
//! anything is sent; a concurrent change of the group (409) is met by reading it again.

use minicloud_crds::Kind;
use serde_json::json;

use super::{modify, parse_targets, Modified};
use minicloud_client::Client;

/// Sets the desired count of each named scaling group.
pub async fn run(client: &Client, targets: &[String], namespace: &str, replicas: u32) -> anyhow::Result<()> {
    for (kind, name) in parse_targets(targets)? {
        let Some(name) = name else {
            anyhow::bail!("name the {} to scale, e.g. `cloud scale sg web --replicas 3`", kind.plural())
        };
        if kind != Kind::ScalingGroup {
            anyhow::bail!(
                "{}/{name} cannot be scaled: only scalinggroups have replicas",
                kind.as_str().to_ascii_lowercase()
            );
        }
        scale(client, namespace, &name, replicas).await?;
    }
    Ok(())
}

async fn scale(client: &Client, namespace: &str, name: &str, replicas: u32) -> anyhow::Result<()> {
    let outcome = modify(client, Kind::ScalingGroup, namespace, name, |group| {
        let bound = |field: &str| group.spec.get(field).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let (min, max) = (bound("minReplicas"), bound("maxReplicas"));
        if u64::from(replicas) < min || u64::from(replicas) > max {
            anyhow::bail!(
                "cannot scale scalinggroup/{name} to {replicas}: it must stay within minReplicas..maxReplicas ({min}..{max}); change the bounds in its manifest and apply it first"
            );
        }
        if group.spec.get("desiredReplicas").and_then(serde_json::Value::as_u64) == Some(u64::from(replicas)) {
            return Ok(false);
        }
        if let Some(spec) = group.spec.as_object_mut() {
            spec.insert("desiredReplicas".into(), json!(replicas));
        }
        Ok(true)
    })
    .await?;
    match outcome {
        Modified::Unchanged(_) => say!("scalinggroup/{name} unchanged ({replicas} desired)"),
        Modified::Written(_) => say!("scalinggroup/{name} scaled to {replicas}"),
    }
    Ok(())
}
