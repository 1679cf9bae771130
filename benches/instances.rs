//! Instance benchmark with the real Docker engine and the real `cloud server` (release build),
//! each figure next to its baseline measured in the same run:
//!
//! - one Instance, apply → Ready and apply → serving, against a bare `docker run -d` of the same
//!   image + wait until serving, and against one set up as an Instance's container is (the
//!   control plane's overhead is the difference of medians);
//! - 20 Instances, apply → all serving (median of three), against 20 `docker run -d` in
//!   parallel set up as an Instance's container is (a user-defined network with a name on it,
//!   an init process), on the default bridge, and against `docker-compose up -d` of an
//!   equivalent compose file;
//! - recovery: an Instance's container removed with `docker rm -f` → the replacement serving,
//!   against `docker restart -t 0` of a plain container on a user network with a fixed
//!   published port → serving; both timed from the command with a client trying all along
//!   (`back_after_outage`);
//! - idle cost: CPU used by `cloud server` over 30 s with 200 Ready Instances and nothing
//!   changing.
//!
//! Run: `cargo bench --bench instances` (needs `scripts/local-images.sh web`). Everything it
//! starts carries `minicloud.dev/test=bench-...` and is removed at the end.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    apply, back_after_outage, cpu_ticks, docker, median, ms, published_port, start_server, wait_serving,
    RemoveLabelled, Server,
};
use serde_json::{json, Value};

const IMAGE: &str = "minicloud/web:local";
const RUNS: usize = 5;

fn instance(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": IMAGE, "ports": [{"containerPort": 8080}]}
    })
}

fn list(http: &reqwest::blocking::Client, server: &Server, namespace: &str) -> Vec<Value> {
    let list: Value = http
        .get(format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/instances", server.url))
        .send()
        .expect("list")
        .json()
        .expect("json");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn ready_port(object: &Value) -> Option<u16> {
    let ready = object["status"]["conditions"].as_array()?.iter().any(|c| {
        c["type"] == "Ready" && c["status"] == "True" && c["observedGeneration"] == object["metadata"]["generation"]
    });
    if !ready {
        return None;
    }
    object["status"]["ports"][0]["hostPort"].as_u64().map(|p| p as u16)
}

/// Waits until `count` Instances of the namespace are Ready; returns their host ports.
fn wait_ready(http: &reqwest::blocking::Client, server: &Server, namespace: &str, count: usize) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ports: Vec<u16> = list(http, server, namespace).iter().filter_map(ready_port).collect();
        if ports.len() == count {
            return ports;
        }
        assert!(Instant::now() < deadline, "{} of {count} Ready", ports.len());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts 20 containers of the image with `docker run -d` in parallel (with `extra` options) and
/// waits until each serves; returns the time that took and their ids.
fn twenty_docker_runs(label: &str, extra: &[&str]) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let runs: Vec<Child> = (0..20)
        .map(|_| {
            Command::new("docker")
                .args(["run", "-d", "--label", label, "-p", "127.0.0.1::8080"])
                .args(extra)
                .arg(IMAGE)
                .stdout(Stdio::piped())
                .spawn()
                .expect("docker run")
        })
        .collect();
    let ids: Vec<String> = runs
        .into_iter()
        .map(|child| String::from_utf8_lossy(&child.wait_with_output().expect("wait").stdout).trim().to_owned())
        .collect();
    for id in &ids {
        wait_serving(published_port(id, 8080));
    }
    (started.elapsed(), ids)
}

fn main() {
    let run = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let label = format!("minicloud.dev/test={run}");
    let data = tempfile::tempdir().expect("tempdir");
    let _remove = RemoveLabelled(label.clone());
    let server = start_server(data.path(), &label);
    let http = reqwest::blocking::Client::new();
    println!("Instance benchmark (medians of {RUNS} runs where repeated); baselines from the same run");
    println!();
    println!("| what | minicloud | baseline | ratio / overhead |");
    println!("|---|---|---|---|");

    // One Instance in a new namespace (its Docker network is created first), then one at a
    // time in a namespace whose network exists — the usual case.
    let started = Instant::now();
    apply(&http, &server, vec![instance("first", "web")]);
    wait_serving(wait_ready(&http, &server, "first", 1)[0]);
    let first_in_namespace = started.elapsed();
    let mut to_ready = Vec::new();
    let mut to_serving = Vec::new();
    let mut bare = Vec::new();
    let mut bare_alike = Vec::new();
    // The like-for-like baselines run containers set up as an Instance's is: on a user-defined
    // network, with a name on it, and an init process.
    let network = format!("{run}-alike");
    docker(&["network", "create", "--label", &label, &network]);
    let alike = ["--init", "--network", network.as_str(), "--network-alias", "web"];
    for index in 0..RUNS {
        let started = Instant::now();
        apply(&http, &server, vec![instance("first", &format!("web-{index}"))]);
        let port = loop {
            let ready: Vec<u16> = list(&http, &server, "first")
                .iter()
                .filter(|o| o["metadata"]["name"] == format!("web-{index}"))
                .filter_map(ready_port)
                .collect();
            if let Some(port) = ready.first() {
                break *port;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        to_ready.push(started.elapsed());
        wait_serving(port);
        to_serving.push(started.elapsed());

        let started = Instant::now();
        let id = docker(&["run", "-d", "--label", &label, "-p", "127.0.0.1::8080", IMAGE]);
        wait_serving(published_port(&id, 8080));
        bare.push(started.elapsed());

        let started = Instant::now();
        let id = docker(&[&["run", "-d"][..], &alike, &["--label", &label, "-p", "127.0.0.1::8080", IMAGE]].concat());
        wait_serving(published_port(&id, 8080));
        bare_alike.push(started.elapsed());
    }
    let (ready, serving, bare, bare_alike) = (median(to_ready), median(to_serving), median(bare), median(bare_alike));
    println!(
        "| one Instance: apply → serving (apply → Ready: {}) | {} | `docker run -d` + wait until serving: {}; set up as an Instance's (user network, name, init): {} | overhead {:+.0} ms ({:+.0} ms) |",
        ms(ready),
        ms(serving),
        ms(bare),
        ms(bare_alike),
        (serving.as_secs_f64() - bare.as_secs_f64()) * 1e3,
        (serving.as_secs_f64() - bare_alike.as_secs_f64()) * 1e3
    );
    println!(
        "| the first Instance of a namespace (creates its network) | {} | (one run) | {:+.0} ms vs docker run |",
        ms(first_in_namespace),
        (first_in_namespace.as_secs_f64() - bare.as_secs_f64()) * 1e3
    );

    // Twenty Instances, three times, against 20 parallel `docker run -d` of plain containers
    // (default bridge) and of containers set up as an Instance's are (a user-defined network
    // with a name on it, an init process): the like-for-like baseline.
    const TWENTY_RUNS: usize = 3;
    let (mut twenty, mut plain_runs, mut alike_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut ids: Vec<String> = Vec::new();
    for round in 0..TWENTY_RUNS {
        // Earlier rounds' containers keep running on both sides alike.
        let namespace = format!("twenty-{round}");
        let started = Instant::now();
        apply(&http, &server, (0..20).map(|i| instance(&namespace, &format!("web-{i}"))).collect());
        let ports = wait_ready(&http, &server, &namespace, 20);
        for port in &ports {
            wait_serving(*port);
        }
        twenty.push(started.elapsed());
        let (elapsed, plain) = twenty_docker_runs(&label, &[]);
        plain_runs.push(elapsed);
        for id in &plain {
            docker(&["rm", "-f", id]);
        }
        let (elapsed, alike_ids) = twenty_docker_runs(&label, &alike);
        alike_runs.push(elapsed);
        ids.extend(alike_ids);
    }
    let (twenty, parallel, parallel_alike) = (median(twenty), median(plain_runs), median(alike_runs));
    let compose_dir = data.path().join("compose");
    std::fs::create_dir_all(&compose_dir).expect("dir");
    let mut compose = String::from("version: \"2.4\"\nservices:\n");
    for index in 0..20 {
        compose.push_str(&format!(
            "  web{index}:\n    image: {IMAGE}\n    ports: [\"127.0.0.1::8080\"]\n    labels: [\"{label}\"]\n"
        ));
    }
    std::fs::write(compose_dir.join("docker-compose.yml"), compose).expect("compose file");
    let started = Instant::now();
    let status = Command::new("docker-compose")
        .args(["-p", &run, "up", "-d"])
        .current_dir(&compose_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker-compose");
    assert!(status.success());
    for index in 0..20 {
        let published = Command::new("docker-compose")
            .args(["-p", &run, "port", &format!("web{index}"), "8080"])
            .current_dir(&compose_dir)
            .output()
            .expect("port");
        let port: u16 = String::from_utf8_lossy(&published.stdout)
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        wait_serving(port);
    }
    let compose_time = started.elapsed();
    println!(
        "| 20 Instances: apply → all serving | {} | 20 × `docker run -d` in parallel on a user network (as an Instance's): {}; on the default bridge: {}; `docker-compose up -d`: {} | {:.2}× (bridge: {:.2}×) |",
        ms(twenty),
        ms(parallel_alike),
        ms(parallel),
        ms(compose_time),
        twenty.as_secs_f64() / parallel_alike.as_secs_f64(),
        twenty.as_secs_f64() / parallel.as_secs_f64()
    );
    let _ = Command::new("docker-compose")
        .args(["-p", &run, "down"])
        .current_dir(&compose_dir)
        .stderr(Stdio::null())
        .status();

    for id in &ids {
        docker(&["rm", "-f", id]);
    }

    // Recovery, both sides timed alike: from the disrupting command, with a client trying all
    // along, until it is served again. The baseline is the engine restarting a plain container
    // set up as an Instance's is, with a fixed published port.
    let fixed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("address").port();
    let published = format!("127.0.0.1:{fixed_port}:8080");
    let plain = docker(&[&["run", "-d"][..], &alike, &["--label", &label, "-p", &published, IMAGE]].concat());
    wait_serving(fixed_port);
    let mut recoveries = Vec::new();
    let mut restarts = Vec::new();
    let mut quiet_restarts = Vec::new();
    for index in 0..RUNS {
        let object = list(&http, &server, "twenty-0")
            .into_iter()
            .find(|o| o["metadata"]["name"] == format!("web-{index}"))
            .expect("object");
        let port = ready_port(&object).expect("ready");
        let container = server.instance_container("twenty-0", &format!("web-{index}"));
        recoveries.push(back_after_outage(port, move || {
            docker(&["rm", "-f", &container]);
        }));
        let id = plain.clone();
        restarts.push(back_after_outage(fixed_port, move || {
            docker(&["restart", "-t", "0", &id]);
        }));
        // The engine's restart once more, with the client starting only when the command has
        // returned: it then never meets the stall a client trying during the restart meets.
        let started = Instant::now();
        docker(&["restart", "-t", "0", &plain]);
        wait_serving(fixed_port);
        quiet_restarts.push(started.elapsed());
    }
    let recovery = median(recoveries);
    println!(
        "| recovery: `docker rm -f` → replacement serving on the same port, a client trying all along | {} | `docker restart -t 0` → serving, a client trying all along: {}; the client starting when the command returned: {} | {:.2}× ({:.2}×) |",
        ms(recovery),
        ms(median(restarts.clone())),
        ms(median(quiet_restarts.clone())),
        recovery.as_secs_f64() / median(restarts).as_secs_f64(),
        recovery.as_secs_f64() / median(quiet_restarts).as_secs_f64()
    );
    docker(&["rm", "-f", &plain]);
    docker(&["network", "rm", &network]);

    // Idle cost with 200 Ready Instances.
    apply(&http, &server, (0..200).map(|i| instance("idle", &format!("web-{i}"))).collect());
    wait_ready(&http, &server, "idle", 200);
    std::thread::sleep(Duration::from_secs(5));
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let pid = server.child.id();
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let used = (cpu_ticks(pid) - before) as f64 / ticks_per_second;
    println!(
        "| idle: `cloud server` with 200 Ready Instances, nothing changing, over {}s | {:.2}% of one core | — | — |",
        window.as_secs(),
        used / window.as_secs_f64() * 100.0
    );
}
