//! The ScalingGroup controller with real Docker and real HAProxy, inside the real `cloud
//! server`: manual scaling through `cloud scale` with the load balancer following, CPU
//! autoscaling from Docker stats (scale-out within window + cooldown, scale-in only after its
//! cooldown), members that stop for good replaced, a rolling update of four members behind a
//! load balancer under a request loop with no failed request, `Recreate`, and a control plane
//! killed during a scale-out and during a rolling update. Needs `minicloud/web:local` and
//! `minicloud/haproxy:local` (`scripts/local-images.sh web haproxy`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::cluster::{condition, endpoint, serving, Harness, Load};
use crate::common::docker::docker;
use crate::common::TestDb;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Runs of this file are marked `minicloud.dev/test=sg-...`.
const PREFIX: &str = "sg";

fn group(harness: &Harness, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "ScalingGroup",
        "metadata": {"name": name, "namespace": harness.namespace},
        "spec": spec
    })
}

/// A group of web servers, merged with `extra`.
fn web_group_spec(min: u32, max: u32, desired: u32, extra: Value) -> Value {
    let mut spec = json!({
        "minReplicas": min, "maxReplicas": max, "desiredReplicas": desired,
        "template": {
            "labels": {"app": "web"},
            "spec": {"image": "minicloud/web:local", "resources": {"memory": "32Mi"}}
        }
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

/// A load balancer in front of the group `name`.
fn lb_spec(group: &str) -> Value {
    json!({
        "listeners": [{"name": "http", "targetPort": 8080}],
        "targets": {"scalingGroupRef": {"name": group}},
        "healthCheck": {"path": "/", "intervalMillis": 300, "healthyThreshold": 1, "unhealthyThreshold": 2}
    })
}

/// The group has settled at `count` members of its current template, all Ready.
fn settled(object: &Value, count: u64) -> bool {
    let status = &object["status"];
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
        && status["desiredReplicas"] == count
        && status["replicas"] == count
        && status["readyReplicas"] == count
        && status["updatedReplicas"] == count
        && condition(object, "Progressing") == Some(("False", "Stable"))
}

/// The names of the group's members (Instances it owns).
async fn members(harness: &Harness, group: &str) -> BTreeSet<String> {
    harness
        .list("instances")
        .await
        .iter()
        .filter(|instance| {
            instance["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|owners| owners.iter().any(|o| o["kind"] == "ScalingGroup" && o["name"] == group))
        })
        .filter_map(|instance| instance["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the group has exactly `count` members (those being deleted have gone).
async fn wait_for_members(harness: &Harness, group: &str, count: usize) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = members(harness, group).await;
        if found.len() == count {
            return found;
        }
        assert!(Instant::now() < deadline, "expected {count} members of {group}, found {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `count` member containers run and no other container of an Instance exists.
async fn wait_for_containers(harness: &Harness, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = harness.containers("Instance", false);
        let running = harness.containers("Instance", true);
        if all.len() == count && running.len() == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} running member containers, found {all:?} ({running:?} running)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(harness: &Harness, series: &str) -> f64 {
    harness.metric(series).await.unwrap_or(0.0)
}

/// Waits until a metric has `value`.
async fn wait_for_metric(harness: &Harness, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = metric(harness, series).await;
        if found == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {found}, expected {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn manual_scaling_with_cloud_scale_and_the_load_balancer_follows() {
    let harness = Harness::start(PREFIX).await;
    harness
        .apply(vec![
            group(&harness, "web", web_group_spec(1, 5, 1, json!({}))),
            harness.load_balancer("web", lb_spec("web")),
        ])
        .await;
    harness.wait_for("scalinggroups", "web", "1 member", |o| settled(o, 1)).await;
    harness.wait_for("loadbalancers", "web", "1/1 healthy", |o| serving(o, 1, 1)).await;
    wait_for_containers(&harness, 1).await;
    let first = members(&harness, "web").await;
    assert!(first.iter().all(|name| name.starts_with("web-") && name.len() == 9), "{first:?}");

    for (target, count) in [(vec!["sg", "web"], 5u64), (vec!["scalinggroup/web"], 2)] {
        let mut arguments = vec!["scale"];
        arguments.extend(target.iter().copied());
        let replicas = count.to_string();
        arguments.extend(["--replicas", &replicas, "-n", &harness.namespace]);
        let (ok, stdout, stderr) = harness.cloud(&arguments);
        assert!(ok && stdout.contains(&format!("scaled to {count}")), "{stdout}{stderr}");
        harness.wait_for("scalinggroups", "web", "the new count", |o| settled(o, count)).await;
        let count = count as usize;
        harness.wait_for("loadbalancers", "web", "the LB follows", |o| serving(o, count, count)).await;
        wait_for_containers(&harness, count).await;
        let lb = harness.get("loadbalancers", "web").await.expect("lb");
        let targets: BTreeSet<String> = lb["status"]["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(targets, wait_for_members(&harness, "web", count).await, "the LB's targets are the members");
    }

    // Outside min..max: refused with the bounds, nothing changes.
    let (ok, _, stderr) = harness.cloud(&["scale", "sg", "web", "--replicas", "9", "-n", &harness.namespace]);
    assert!(!ok && stderr.contains("minReplicas..maxReplicas (1..5)"), "{stderr}");
    let (ok, _, stderr) = harness.cloud(&["scale", "instance/web-x", "--replicas", "2", "-n", &harness.namespace]);
    assert!(!ok && stderr.contains("only scalinggroups have replicas"), "{stderr}");
    let sg = harness.get("scalinggroups", "web").await.expect("sg");
    assert_eq!(sg["spec"]["desiredReplicas"], 2);

    // The table and the description.
    let (ok, table, _) = harness.cloud(&["get", "sg", "-n", &harness.namespace]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert!(ok && header == ["NAME", "READY", "MIN", "MAX", "CPU", "AGE"], "{table}");
    assert!(
        table.lines().nth(1).is_some_and(|row| row.split_whitespace().take(4).eq(["web", "2/2", "1", "5"])),
        "{table}"
    );
    let (ok, described, _) = harness.cloud(&["describe", "sg", "web", "-n", &harness.namespace]);
    assert!(ok, "{described}");
    assert!(described.contains("Members:") && described.contains("Scaling history:"), "{described}");
    assert!(described.contains("desiredReplicas 1 → 5 (spec)"), "{described}");
    assert!(described.contains("desiredReplicas 5 → 2 (spec)"), "{described}");
    let series = format!(
        r#"minicloud_scaling_decisions_total{{namespace="{}",name="web",direction="manual"}}"#,
        harness.namespace
    );
    assert_eq!(metric(&harness, &series).await, 2.0);
    assert_eq!(metric(&harness, "minicloud_stats_streams").await, 0.0, "no autoscaling, no stats streams");

    // Deleting the group deletes its members and their containers.
    harness.http.delete(harness.url("scalinggroups", "web")).send().await.expect("delete");
    wait_for_containers(&harness, 0).await;
    wait_for_members(&harness, "web", 0).await;
    harness.finish().await;
}

#[tokio::test]
async fn members_that_stop_for_good_are_replaced() {
    let harness = Harness::start(PREFIX).await;
    let spec = web_group_spec(2, 3, 2, json!({}));
    let mut spec = spec;
    spec["template"]["spec"]["restartPolicy"] = json!("Never");
    harness.apply(vec![group(&harness, "web", spec)]).await;
    harness.wait_for("scalinggroups", "web", "2 members", |o| settled(o, 2)).await;
    let before = members(&harness, "web").await;
    let victim = before.iter().next().expect("a member").clone();
    docker(&["kill", &harness.instance_container(&victim).await]);
    harness.wait_for("scalinggroups", "web", "a replacement", |o| settled(o, 2)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while members(&harness, "web").await.contains(&victim) {
        assert!(Instant::now() < deadline, "{victim} was not replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    harness.wait_for("scalinggroups", "web", "2 members again", |o| settled(o, 2)).await;
    wait_for_containers(&harness, 2).await;
    let events = harness.events("ScalingGroup", "web").await;
    assert!(
        events.iter().any(|e| e.starts_with(&format!("MemberDeleted: deleted {victim}: it stopped for good"))),
        "{events:?}"
    );
    harness.finish().await;
}

/// Status samples of the group: (when, desired count, CPU figure).
type Samples = Vec<(Instant, u64, Option<u64>)>;

#[tokio::test]
async fn cpu_load_scales_out_within_window_and_cooldown_and_scales_in_only_after_its_cooldown() {
    let harness = Harness::start(PREFIX).await;
    let scale_in_cooldown = Duration::from_secs(20);
    let extra = json!({
        "autoscaling": {
            "targetCpuUtilizationPercent": 50,
            "windowSeconds": 4,
            "scaleOutCooldownSeconds": 3,
            "scaleInCooldownSeconds": scale_in_cooldown.as_secs(),
            "scaleInStabilizationSeconds": 5
        }
    });
    let mut spec = web_group_spec(1, 3, 1, extra);
    spec["template"]["spec"]["resources"]["cpu"] = json!("500m");
    harness.apply(vec![group(&harness, "busy", spec)]).await;
    harness.wait_for("scalinggroups", "busy", "1 member", |o| settled(o, 1)).await;
    // Idle figures first: the autoscaler sees the member and holds.
    harness
        .wait_for("scalinggroups", "busy", "CPU figures", |o| condition(o, "Autoscaling") == Some(("True", "Holding")))
        .await;

    // Load inside the member: a busy loop bounded by `timeout`, twice its CPU limit.
    let member = members(&harness, "busy").await.into_iter().next().expect("a member");
    let container = harness.instance_container(&member).await;
    let load = Duration::from_secs(15);
    let loop_seconds = load.as_secs().to_string();
    for _ in 0..2 {
        docker(&["exec", "-d", &container, "timeout", &loop_seconds, "sh", "-c", "while :; do :; done"]);
    }
    let loaded_at = Instant::now();
    let mut samples: Samples = Vec::new();
    let mut scaled_out_at = None;
    let deadline = loaded_at + Duration::from_secs(90);
    let mut object;
    loop {
        object = harness.get("scalinggroups", "busy").await.expect("sg");
        let desired = object["status"]["desiredReplicas"].as_u64().unwrap_or(0);
        samples.push((Instant::now(), desired, object["status"]["currentCpuUtilizationPercent"].as_u64()));
        if desired > 1 && scaled_out_at.is_none() {
            scaled_out_at = Some(Instant::now());
            // Each member gets its stats stream.
            wait_for_metric(&harness, "minicloud_stats_streams", desired as f64).await;
        }
        if scaled_out_at.is_some() && desired == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no scale-out and scale-in within 90 s: {samples:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // One stats stream per member: the one of the member that left has stopped.
    wait_for_metric(&harness, "minicloud_stats_streams", 1.0).await;
    let scaled_out_after = scaled_out_at.expect("scaled out") - loaded_at;
    eprintln!("scaled out {scaled_out_after:?} after the load started");
    // Window 4 s (figures must cover half of it) + an evaluation each second + cooldown 3 s.
    assert!(scaled_out_after < Duration::from_secs(10), "scale-out took {scaled_out_after:?}: {samples:?}");

    // The scale-in came only after the scale-in cooldown, counted from the last scale-out.
    let status = &object["status"];
    let time = |field: &str| {
        status[field]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| panic!("{field} in {status}"))
    };
    let gap = (time("lastScaleInTime") - time("lastScaleOutTime")).to_std().expect("scale-in after scale-out");
    assert!(gap >= scale_in_cooldown, "scaled in {gap:?} after scaling out: {samples:?}");
    assert_eq!(status["lastScaling"]["reason"], "ScaledIn");
    let events = harness.events("ScalingGroup", "busy").await;
    let out = events.iter().find(|e| e.starts_with("ScaledOut: cpu ")).expect("a ScaledOut event");
    assert!(out.contains("% > target 50% over 4s: 1 → "), "the decision carries its numbers: {out}");
    assert!(events.iter().any(|e| e.starts_with("ScaledIn: cpu ") && e.ends_with("→ 1")), "{events:?}");
    let series = format!(
        r#"minicloud_scaling_decisions_total{{namespace="{}",name="busy",direction="out"}}"#,
        harness.namespace
    );
    assert!(metric(&harness, &series).await >= 1.0);
    harness.finish().await;
}

#[tokio::test]
async fn a_rolling_update_behind_a_load_balancer_fails_no_request() {
    let harness = Harness::start(PREFIX).await;
    let spec = web_group_spec(1, 6, 4, json!({}));
    harness.apply(vec![group(&harness, "web", spec.clone()), harness.load_balancer("web", lb_spec("web"))]).await;
    harness.wait_for("scalinggroups", "web", "4 members", |o| settled(o, 4)).await;
    let lb = harness.wait_for("loadbalancers", "web", "4/4 healthy", |o| serving(o, 4, 4)).await;
    let before = members(&harness, "web").await;
    // Quick requests, and requests that keep a member busy for 300 ms: a member removed
    // while one runs would cut it.
    let quick = Load::start(&endpoint(&lb), 3);
    let slow = Load::start_on(&format!("{}/cgi-bin/burn?ms=300", endpoint(&lb)), 3);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut changed = spec.clone();
    changed["template"]["spec"]["env"] = json!([{"name": "VERSION", "value": "2"}]);
    harness.apply(vec![group(&harness, "web", changed)]).await;
    harness
        .wait_for("scalinggroups", "web", "the update", |o| o["status"]["observedGeneration"] == 2 && settled(o, 4))
        .await;
    harness.wait_for("loadbalancers", "web", "4/4 healthy again", |o| serving(o, 4, 4)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ((quick_ok, quick_failed), (slow_ok, slow_failed)) = (quick.finish().await, slow.finish().await);
    let (ok, failed) = (quick_ok + slow_ok, [quick_failed, slow_failed].concat());
    Load::assert_none_failed(ok, &failed, 100, &format!("({slow_ok} slow) during the rolling update of 4 members"));
    let after = wait_for_members(&harness, "web", 4).await;
    assert!(after.is_disjoint(&before), "every member was replaced: {before:?} → {after:?}");
    wait_for_containers(&harness, 4).await;
    // Every old member left the load balancer through a drain before it was deleted.
    let events = harness.events("ScalingGroup", "web").await;
    let lb_events = harness.events("LoadBalancer", "web").await;
    for name in &before {
        assert!(
            events.iter().any(|e| e.starts_with(&format!("MemberDraining: draining {name} (old template)"))),
            "{events:?}"
        );
        assert!(events.contains(&format!("MemberDeleted: deleted {name}: drained")), "{events:?}");
        let removed = format!("TargetRemoved: target {name} drained and removed");
        assert!(lb_events.contains(&removed), "{lb_events:?}");
    }

    // Recreate: every old member goes before a new one is created.
    let mut recreate = spec.clone();
    recreate["desiredReplicas"] = json!(2);
    harness.apply(vec![group(&harness, "web", recreate.clone())]).await;
    harness.wait_for("scalinggroups", "web", "2 members", |o| settled(o, 2)).await;
    let old = wait_for_members(&harness, "web", 2).await;
    recreate["updateStrategy"] = json!({"type": "Recreate"});
    recreate["template"]["spec"]["env"] = json!([{"name": "VERSION", "value": "3"}]);
    harness.apply(vec![group(&harness, "web", recreate)]).await;
    harness
        .wait_for("scalinggroups", "web", "recreated", |o| o["status"]["observedGeneration"] == 4 && settled(o, 2))
        .await;
    let events = harness.events("ScalingGroup", "web").await;
    let last_old_deleted = events
        .iter()
        .rposition(|e| old.iter().any(|name| e.starts_with(&format!("MemberDeleted: deleted {name}"))))
        .expect("old members deleted");
    let new_created = events.iter().rposition(|e| e.starts_with("MembersCreated:")).expect("new members created");
    assert!(last_old_deleted < new_created, "Recreate deletes first: {events:?}");
    harness.finish().await;
}

#[tokio::test]
async fn a_killed_control_plane_converges_after_a_scale_out_and_a_rolling_update_on_sqlite() {
    a_killed_control_plane_converges(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn a_killed_control_plane_converges_after_a_scale_out_and_a_rolling_update_on_postgres() {
    a_killed_control_plane_converges(TestDb::postgres().await).await;
}

async fn a_killed_control_plane_converges(database: TestDb) {
    let mut harness = Harness::start_on(PREFIX, database, &[]).await;
    let spec = web_group_spec(1, 6, 1, json!({}));
    harness.apply(vec![group(&harness, "web", spec.clone()), harness.load_balancer("web", lb_spec("web"))]).await;
    harness.wait_for("scalinggroups", "web", "1 member", |o| settled(o, 1)).await;

    // A scale-out, killed while members are being created.
    let mut bigger = spec.clone();
    bigger["desiredReplicas"] = json!(4);
    harness.apply(vec![group(&harness, "web", bigger.clone())]).await;
    harness
        .wait_for("scalinggroups", "web", "the scale-out begun", |o| o["status"]["replicas"].as_u64() > Some(1))
        .await;
    let database = harness.server.take().expect("server").crash();
    harness.server = Some(harness.start_server(database).await);
    harness.wait_for("scalinggroups", "web", "4 members after the restart", |o| settled(o, 4)).await;
    harness.wait_for("loadbalancers", "web", "4/4 healthy", |o| serving(o, 4, 4)).await;
    wait_for_members(&harness, "web", 4).await;
    wait_for_containers(&harness, 4).await;

    // A rolling update, killed halfway.
    let mut updated = bigger;
    updated["template"]["spec"]["env"] = json!([{"name": "VERSION", "value": "2"}]);
    harness.apply(vec![group(&harness, "web", updated)]).await;
    harness
        .wait_for("scalinggroups", "web", "the update halfway", |o| o["status"]["updatedReplicas"].as_u64() >= Some(2))
        .await;
    let database = harness.server.take().expect("server").crash();
    harness.server = Some(harness.start_server(database).await);
    harness
        .wait_for("scalinggroups", "web", "the update finished after the restart", |o| {
            o["status"]["observedGeneration"] == 3 && settled(o, 4)
        })
        .await;
    harness.wait_for("loadbalancers", "web", "4/4 healthy", |o| serving(o, 4, 4)).await;
    wait_for_members(&harness, "web", 4).await;
    wait_for_containers(&harness, 4).await;
    let hash = harness.get("scalinggroups", "web").await.expect("sg")["status"]["templateHash"].clone();
    for instance in harness.list("instances").await {
        assert_eq!(instance["metadata"]["labels"]["minicloud.dev/template-hash"], hash, "{}", instance["metadata"]);
    }
    harness.finish().await;
}
