//! ScalingGroup benchmark with the real `cloud server` (release build), real Docker and real
//! HAProxy, each figure next to a baseline measured in the same run:
//!
//! - reaction: CPU load starts inside the only member of an autoscaled group (target 50 %,
//!   10 s window) → a new member answers through the load balancer; against the same group
//!   scaled by hand (`desiredReplicas` 1 → 2) → the new member answers, i.e. what the
//!   autoscaler adds is the time it takes to notice;
//! - stats overhead: the control plane's CPU (and dockerd's) over 30 s with 50 members whose
//!   stats are streamed for the autoscaler, against the same 50 members without autoscaling.
//!
//! Run: `cargo bench --bench scaling` (needs `scripts/local-images.sh web haproxy`);
//! `cargo bench --bench scaling -- reaction` or `-- overhead` runs one part. Everything it
//! starts carries `minicloud.dev/test=bench-sg-...` and is removed at the end.

mod common;

use std::time::{Duration, Instant};

use common::{apply, docker, median, ms, start_server, RemoveLabelled, Server};
use serde_json::{json, Value};

const RUNS: usize = 3;
/// Members of the overhead measurement.
const MEMBERS: u32 = 50;
/// How long the control plane's CPU is counted.
const OVERHEAD_WINDOW: Duration = Duration::from_secs(30);

type Http = reqwest::blocking::Client;

fn object_url(server: &Server, namespace: &str, plural: &str, name: &str) -> String {
    format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}", server.url)
}

fn get(http: &Http, server: &Server, namespace: &str, plural: &str, name: &str) -> Option<Value> {
    let response = http.get(object_url(server, namespace, plural, name)).send().ok()?;
    response.status().is_success().then(|| response.json().ok()).flatten()
}

/// Polls until `check` holds (at most `limit`); panics with the object's status otherwise.
fn wait_until(
    http: &Http,
    server: &Server,
    (namespace, plural, name): (&str, &str, &str),
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let object = get(http, server, namespace, plural, name);
        if let Some(object) = object.as_ref().filter(|o| check(o)) {
            return object.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{plural}/{name} not there in time: {}",
            object.map_or(Value::Null, |o| o["status"].clone())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn condition<'v>(object: &'v Value, type_: &str) -> Option<(&'v str, &'v str)> {
    let found = object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((found["status"].as_str()?, found["reason"].as_str()?))
}

fn settled(object: &Value, count: u64) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
        && object["status"]["readyReplicas"] == count
        && object["status"]["replicas"] == count
        && condition(object, "Progressing") == Some(("False", "Stable"))
}

fn group(namespace: &str, name: &str, desired: u32, max: u32, autoscaling: Option<Value>) -> Value {
    let mut spec = json!({
        "minReplicas": 1, "maxReplicas": max, "desiredReplicas": desired,
        "template": {
            "labels": {"app": name},
            "spec": {"image": "minicloud/web:local", "resources": {"cpu": "500m", "memory": "32Mi"}}
        }
    });
    if let Some(autoscaling) = autoscaling {
        spec["autoscaling"] = autoscaling;
    }
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "ScalingGroup",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec
    })
}

fn load_balancer(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "LoadBalancer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "listeners": [{"name": "http", "targetPort": 8080}],
            "targets": {"scalingGroupRef": {"name": name}},
            "healthCheck": {"path": "/", "intervalMillis": 500, "healthyThreshold": 1, "unhealthyThreshold": 2}
        }
    })
}

/// The hostname (container) that answered `/cgi-bin/whoami` through the load balancer.
fn whoami(http: &Http, port: u16) -> Option<String> {
    let response =
        http.get(format!("http://127.0.0.1:{port}/cgi-bin/whoami")).timeout(Duration::from_secs(5)).send().ok()?;
    response.status().is_success().then(|| response.text().ok().map(|t| t.trim().to_owned())).flatten()
}

/// A group of one member behind a load balancer, serving; returns the LB's port and the
/// member's hostname.
fn one_member_behind_a_load_balancer(
    http: &Http,
    server: &Server,
    namespace: &str,
    autoscaling: Option<Value>,
) -> (u16, String) {
    apply(http, server, vec![group(namespace, "web", 1, 3, autoscaling), load_balancer(namespace, "web")]);
    wait_until(http, server, (namespace, "scalinggroups", "web"), Duration::from_secs(60), |o| settled(o, 1));
    let lb = wait_until(http, server, (namespace, "loadbalancers", "web"), Duration::from_secs(60), |o| {
        condition(o, "Ready") == Some(("True", "Serving"))
    });
    let port = lb["status"]["endpoints"]["http"]
        .as_str()
        .and_then(|url| url.rsplit(':').next()?.parse().ok())
        .expect("an endpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(name) = whoami(http, port) {
            break name;
        }
        assert!(Instant::now() < deadline, "the load balancer does not serve");
        std::thread::sleep(Duration::from_millis(20));
    };
    (port, first)
}

/// Waits until a member other than `first` answers through the load balancer.
fn until_another_member_answers(http: &Http, port: u16, first: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while whoami(http, port).is_none_or(|name| name == first) {
        assert!(Instant::now() < deadline, "no second member answered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove_namespace(http: &Http, server: &Server, namespace: &str) {
    for (plural, name) in [("scalinggroups", "web"), ("loadbalancers", "web")] {
        let _ = http.delete(object_url(server, namespace, plural, name)).send();
    }
    for (plural, name) in [("scalinggroups", "web"), ("loadbalancers", "web")] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(http, server, namespace, plural, name).is_some() {
            assert!(Instant::now() < deadline, "{plural}/{name} was not deleted");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn reaction(http: &Http, server: &Server) {
    println!("### Reaction: CPU load → a new member answering through the load balancer (median of {RUNS})");
    println!();
    let autoscaling = json!({"targetCpuUtilizationPercent": 50, "windowSeconds": 10});
    let (mut decided, mut answered, mut by_hand) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        // Autoscaled: the member's figures first (the autoscaler holds), then the load.
        let namespace = format!("bench-sg-react-{run}");
        let (port, first) = one_member_behind_a_load_balancer(http, server, &namespace, Some(autoscaling.clone()));
        wait_until(http, server, (&namespace, "scalinggroups", "web"), Duration::from_secs(60), |o| {
            condition(o, "Autoscaling") == Some(("True", "Holding"))
        });
        let member = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=minicloud.dev/namespace={namespace}"),
            "--filter",
            "label=minicloud.dev/kind=Instance",
        ]);
        let started = Instant::now();
        for _ in 0..2 {
            docker(&["exec", "-d", &member, "timeout", "60", "sh", "-c", "while :; do :; done"]);
        }
        wait_until(http, server, (&namespace, "scalinggroups", "web"), Duration::from_secs(60), |o| {
            o["status"]["desiredReplicas"].as_u64() > Some(1)
        });
        decided.push(started.elapsed());
        until_another_member_answers(http, port, &first);
        answered.push(started.elapsed());
        remove_namespace(http, server, &namespace);

        // By hand: the same group, desiredReplicas 1 → 2.
        let namespace = format!("bench-sg-hand-{run}");
        let (port, first) = one_member_behind_a_load_balancer(http, server, &namespace, None);
        let started = Instant::now();
        apply(http, server, vec![group(&namespace, "web", 2, 3, None)]);
        until_another_member_answers(http, port, &first);
        by_hand.push(started.elapsed());
        remove_namespace(http, server, &namespace);
    }
    let (decided, answered, by_hand) = (median(decided), median(answered), median(by_hand));
    println!("| what | time |");
    println!("|---|---|");
    println!("| load starts → the autoscaler decides to scale out (10 s window) | {} |", ms(decided));
    println!("| load starts → a new member answers through the load balancer | {} |", ms(answered));
    println!("| baseline: `desiredReplicas` 1 → 2 by hand → the new member answers | {} |", ms(by_hand));
    println!(
        "| what autoscaling adds to scaling by hand (noticing the load) | {} ({:.1}×) |",
        ms(answered.saturating_sub(by_hand)),
        answered.as_secs_f64() / by_hand.as_secs_f64()
    );
    println!();
}

/// The stats streams the control plane has open (its `/metrics`).
fn stats_streams(http: &Http, server: &Server) -> u64 {
    let text = http.get(format!("{}/metrics", server.url)).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines().find_map(|line| line.strip_prefix("minicloud_stats_streams ")?.trim().parse().ok()).unwrap_or(0)
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    let per_second: u64 = String::from_utf8_lossy(
        &std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf").stdout,
    )
    .trim()
    .parse()
    .unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The share of one core `pids` used over [`OVERHEAD_WINDOW`], each.
fn cpu_shares(pids: &[u32]) -> Vec<f64> {
    let before: Vec<Duration> = pids.iter().map(|pid| cpu_time(*pid)).collect();
    let started = Instant::now();
    std::thread::sleep(OVERHEAD_WINDOW);
    let elapsed = started.elapsed().as_secs_f64();
    pids.iter().zip(before).map(|(pid, before)| (cpu_time(*pid) - before).as_secs_f64() / elapsed * 100.0).collect()
}

fn overhead(http: &Http, server: &Server) {
    println!("### Stats overhead: {MEMBERS} members, CPU over {} s", OVERHEAD_WINDOW.as_secs());
    println!();
    let namespace = "bench-sg-fifty";
    let dockerd: u32 =
        String::from_utf8_lossy(&std::process::Command::new("pidof").arg("dockerd").output().expect("pidof").stdout)
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .expect("dockerd runs on this machine");
    let fifty = |autoscaling: Option<Value>| {
        let mut object = group(namespace, "fifty", MEMBERS, MEMBERS, autoscaling);
        object["spec"]["minReplicas"] = json!(MEMBERS);
        object
    };
    apply(http, server, vec![fifty(None)]);
    let started = Instant::now();
    wait_until(http, server, (namespace, "scalinggroups", "fifty"), Duration::from_secs(300), |o| {
        settled(o, u64::from(MEMBERS))
    });
    println!("({MEMBERS} members Ready {} after the apply)", ms(started.elapsed()));
    println!();
    std::thread::sleep(Duration::from_secs(5));
    let quiet_streams = stats_streams(http, server);
    let quiet = cpu_shares(&[server.child.id(), dockerd]);
    apply(http, server, vec![fifty(Some(json!({"targetCpuUtilizationPercent": 90})))]);
    wait_until(http, server, (namespace, "scalinggroups", "fifty"), Duration::from_secs(60), |o| {
        condition(o, "Autoscaling") == Some(("True", "Holding"))
    });
    std::thread::sleep(Duration::from_secs(5));
    let streams = stats_streams(http, server);
    let streaming = cpu_shares(&[server.child.id(), dockerd]);
    println!(
        "| process | without autoscaling ({quiet_streams} stats streams) | with autoscaling ({streams} stats streams, an evaluation per second) | added |"
    );
    println!("|---|---|---|---|");
    for (index, process) in ["cloud server (the control plane)", "dockerd (serves the stats)"].iter().enumerate() {
        println!(
            "| {process} | {:.2} % of a core | {:.2} % of a core | {:+.2} points |",
            quiet[index],
            streaming[index],
            streaming[index] - quiet[index]
        );
    }
    println!();
    let _ = http.delete(object_url(server, namespace, "scalinggroups", "fifty")).send();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !docker(&["ps", "-aq", "--filter", &format!("label=minicloud.dev/namespace={namespace}")]).is_empty() {
        assert!(Instant::now() < deadline, "the members were not removed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() {
    let label = format!("minicloud.dev/test=bench-sg-{}", std::process::id());
    let _cleanup = RemoveLabelled(label.clone());
    let data = tempfile::tempdir().expect("data dir");
    let server = start_server(data.path(), &label);
    let http = Http::new();
    println!("## ScalingGroup benchmark (cargo bench --bench scaling)");
    println!();
    // `cargo bench` passes `--bench`; other arguments name the parts to run.
    let parts: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if wanted("reaction") {
        reaction(&http, &server);
    }
    if wanted("overhead") {
        overhead(&http, &server);
    }
}
