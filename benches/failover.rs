//! Failover of the control plane: three `cloud server` replicas (release build) on one real
//! PostgreSQL database with the real Docker engine and the default lease (10 s):
//!
//! - SIGKILL of the replica holding the Instance controller's lease, 20 times, at the same
//!   moment as an Instance's container is killed: the time from the kill to the new holder's
//!   Instance controller starting (its first reconcile follows at once), and to the killed
//!   container running again; the baseline, timed alike, is the same container kill with the
//!   holder alive (kill → running again);
//! - SIGTERM of the holder, 10 times: the time from the signal to another replica holding the
//!   lease (target ≤ 1 s);
//! - watch delivery: 2,000 paced writes through replica A, watched on A and on B: p50/p99 of
//!   write-sent → event-received on the same replica against the other replica;
//! - lease load: lease reads and writes per second per replica, and PostgreSQL transactions per
//!   second, with the three replicas idle.
//!
//! Run: `cargo bench --bench failover` (PostgreSQL at MINICLOUD_TEST_POSTGRES_URL, as for the
//! tests; `scripts/local-images.sh web`). Containers carry `minicloud.dev/test=bench-ha-...` and
//! are removed at the end; the database is dropped.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{docker, median, ms, RemoveLabelled};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::Connection;

const NAMESPACE: &str = "bench-ha";
const KILLS: usize = 20;
const TERMS: usize = 10;
const BASELINE_KILLS: usize = 10;
const WRITES: usize = 2000;

/// Log lines, each with the time it was read.
type Log = Arc<Mutex<Vec<(chrono::DateTime<chrono::Utc>, String)>>>;

/// A replica process and what it logged.
struct Replica {
    child: Child,
    url: String,
    log: Log,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(database: &str, data: &std::path::Path, label: &str, extra: &[&str]) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(["server", "--listen", "127.0.0.1:0", "--container-label", label, "--database-url", database])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let _ = address_tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                sink.lock().expect("lock").push((chrono::Utc::now(), line));
            }
        });
        let address = address_rx.recv_timeout(Duration::from_secs(30)).expect("the replica listens");
        Replica { child, url: format!("http://{address}"), log }
    }

    fn identity(&self) -> String {
        let version: Value =
            reqwest::blocking::get(format!("{}/version", self.url)).expect("version").json().expect("json");
        version["replica"].as_str().expect("replica").to_owned()
    }

    /// When this replica first logged a line containing every one of `texts` after `after`.
    fn logged(&self, texts: &[&str], after: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        let lines = self.log.lock().expect("lock");
        lines.iter().find(|(at, line)| *at > after && texts.iter().all(|text| line.contains(text))).map(|(at, _)| *at)
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
    }

    fn metric_sum(&self, prefix: &str) -> f64 {
        let text = reqwest::blocking::get(format!("{}/metrics", self.url)).and_then(|r| r.text()).unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The holder of `lease` now.
fn holder(http: &reqwest::blocking::Client, api: &str, lease: &str) -> String {
    let url = format!("{api}/apis/minicloud.dev/v1/namespaces/minicloud-system/leases/{lease}");
    http.get(url)
        .send()
        .ok()
        .and_then(|response| response.json::<Value>().ok())
        .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn running(container: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", container]) == "true"
}

/// Waits (bounded) until `container` runs, after it stopped; returns when it runs again.
fn until_running_again(container: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    while running(container) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    while !running(container) {
        assert!(Instant::now() < deadline, "{container} runs again");
        std::thread::sleep(Duration::from_millis(5));
    }
    Instant::now()
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}

fn max(samples: &[Duration]) -> Duration {
    samples.iter().copied().max().unwrap_or_default()
}

fn main() {
    let admin = std::env::var("MINICLOUD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://minicloud:minicloud@127.0.0.1:5432/postgres".into());
    let name = format!("minicloud_bench_ha_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let sql = |statement: String| {
        let admin = admin.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let mut connection = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL");
            sqlx::query(&statement).execute(&mut connection).await.expect("statement");
        });
    };
    sql(format!("CREATE DATABASE {name}"));
    let database = format!("{}/{name}", admin.rsplit_once('/').expect("URL").0);
    let run = format!("bench-ha-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let label = format!("minicloud.dev/test={run}");
    let data = tempfile::tempdir().expect("data");
    let cleanup = RemoveLabelled(label.clone());
    let outcome = std::panic::catch_unwind(|| measure(&database, data.path(), &label));
    drop(cleanup);
    sql(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn measure(database: &str, data: &std::path::Path, label: &str) {
    let http = reqwest::blocking::Client::new();
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(database, data, label, &[])).collect();
    let api = replicas[0].url.clone();
    let web = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {"image": "minicloud/web:local", "ports": [{"containerPort": 8080}]}
    });
    common::apply_at(&http, &api, vec![web]);
    let cluster = {
        let version: Value = http.get(format!("{api}/version")).send().expect("version").json().expect("json");
        version["cluster"].as_str().expect("cluster").to_owned()
    };
    let container = minicloud_controllers::docker::names::instance_container(&cluster, NAMESPACE, "web");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !running(&container) {
        assert!(Instant::now() < deadline, "the Instance runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));

    // Baseline: the container killed, the holder alive.
    let mut baseline = Vec::new();
    for _ in 0..BASELINE_KILLS {
        let killed = Instant::now();
        docker(&["kill", &container]);
        baseline.push(until_running_again(&container, Duration::from_secs(30)) - killed);
        std::thread::sleep(Duration::from_secs(1));
    }

    // SIGKILL of the holder, with the container, 20 times.
    let (mut to_reconcile, mut to_replaced) = (Vec::new(), Vec::new());
    for round in 0..KILLS {
        let api = replicas.iter().last().expect("a replica").url.clone();
        let leader = holder(&http, &api, "controller-instance");
        let index = replicas.iter().position(|r| r.identity() == leader).expect("the holder is a replica");
        let at = chrono::Utc::now();
        let killed = Instant::now();
        replicas[index].signal("-KILL");
        docker(&["kill", &container]);
        let replaced = until_running_again(&container, Duration::from_secs(60)) - killed;
        let dead = replicas.remove(index);
        drop(dead);
        let successor = holder(&http, &replicas[0].url, "controller-instance");
        let new = replicas.iter().find(|r| r.identity() == successor).expect("a successor");
        let started =
            new.logged(&["controller started", "kind=Instance"], at).expect("the new holder starts the controller");
        let reconcile = (started - at).to_std().unwrap_or_default();
        println!("kill {round}: first reconcile after {}, container back after {}", ms(reconcile), ms(replaced));
        to_reconcile.push(reconcile);
        to_replaced.push(replaced);
        replicas.push(Replica::start(database, data, label, &[]));
        std::thread::sleep(Duration::from_secs(2));
    }

    // SIGTERM of the holder, 10 times.
    let mut handovers = Vec::new();
    for round in 0..TERMS {
        let api = replicas.iter().last().expect("a replica").url.clone();
        let leader = holder(&http, &api, "controller-instance");
        let index = replicas.iter().position(|r| r.identity() == leader).expect("the holder is a replica");
        let signalled = Instant::now();
        replicas[index].signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = holder(&http, &api, "controller-instance");
            if !now.is_empty() && now != leader {
                break;
            }
            assert!(Instant::now() < deadline, "handed over");
            std::thread::sleep(Duration::from_millis(2));
        }
        let handover = signalled.elapsed();
        println!("SIGTERM {round}: handed over after {}", ms(handover));
        handovers.push(handover);
        let mut stopped = replicas.remove(index);
        let _ = stopped.child.wait();
        replicas.push(Replica::start(database, data, label, &[]));
        std::thread::sleep(Duration::from_secs(2));
    }

    // Lease load with the three replicas idle.
    let window = Duration::from_secs(30);
    let attempts_before: Vec<f64> = replicas.iter().map(|r| r.metric_sum("minicloud_lease_attempts_total")).collect();
    let held_before: Vec<f64> = replicas.iter().map(held_attempts).collect();
    let commits_before = commits(database);
    std::thread::sleep(window);
    let commits_after = commits(database);
    let attempts: Vec<f64> = replicas
        .iter()
        .zip(&attempts_before)
        .map(|(r, before)| (r.metric_sum("minicloud_lease_attempts_total") - before) / window.as_secs_f64())
        .collect();
    let writes: Vec<f64> = replicas
        .iter()
        .zip(&held_before)
        .map(|(r, before)| (held_attempts(r) - before) / window.as_secs_f64())
        .collect();
    let transactions = (commits_after - commits_before) / window.as_secs_f64();

    // Watch delivery, same replica against another.
    let (same, other) = watch_delivery(&replicas[0].url, &replicas[1].url);

    println!();
    println!("## Failover ({KILLS} SIGKILLs of the Instance controller's holder, lease 10 s)");
    println!(
        "kill → first reconcile by the new holder: median {}, max {}",
        ms(median(to_reconcile.clone())),
        ms(max(&to_reconcile))
    );
    println!(
        "kill → killed container running again: median {}, max {} (baseline, holder alive: median {}, max {})",
        ms(median(to_replaced.clone())),
        ms(max(&to_replaced)),
        ms(median(baseline.clone())),
        ms(max(&baseline))
    );
    println!(
        "SIGTERM → another replica holds the lease: median {}, max {}",
        ms(median(handovers.clone())),
        ms(max(&handovers))
    );
    println!(
        "watch delivery (write sent → event received), {WRITES} writes: same replica p50 {} p99 {}; other replica p50 {} p99 {} (ratio p99 {:.2})",
        ms(percentile(same.clone(), 0.5)),
        ms(percentile(same.clone(), 0.99)),
        ms(percentile(other.clone(), 0.5)),
        ms(percentile(other.clone(), 0.99)),
        percentile(other, 0.99).as_secs_f64() / percentile(same, 0.99).as_secs_f64().max(1e-9)
    );
    println!(
        "lease load, 3 idle replicas: attempts/s per replica {:?}, lease writes/s per replica {:?}; PostgreSQL commits/s (whole database) {transactions:.1}",
        attempts.iter().map(|a| format!("{a:.1}")).collect::<Vec<_>>(),
        writes.iter().map(|w| format!("{w:.1}")).collect::<Vec<_>>()
    );
}

/// Successful takes and renewals by one replica (each one a write).
fn held_attempts(replica: &Replica) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", replica.url)).and_then(|r| r.text()).unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("minicloud_lease_attempts_total") && line.contains("result=\"held\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Transactions committed in the database so far (PostgreSQL's own statistics).
fn commits(database: &str) -> f64 {
    let output = Command::new("psql")
        .args([database, "-qAtc", "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0.0)
}

/// Writes through `writer`, watched on `writer` and on `other`: per write, the time from sending
/// it to each watcher receiving its event.
fn watch_delivery(writer: &str, other: &str) -> (Vec<Duration>, Vec<Duration>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let sent: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
        let watch = |base: String| {
            tokio::spawn(async move {
                let url = format!("{base}/apis/minicloud.dev/v1/namespaces/bench-watch/leases?watch=true");
                let response = reqwest::get(url).await.expect("watch");
                let mut body = response.bytes_stream();
                let mut buffer = Vec::new();
                let mut seen = BTreeMap::new();
                while seen.len() < WRITES {
                    let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(30), body.next()).await else {
                        break;
                    };
                    let now = Instant::now();
                    buffer.extend_from_slice(&chunk);
                    while let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                        if event["type"] == "ADDED" {
                            let name = event["object"]["metadata"]["name"].as_str().unwrap_or("").to_owned();
                            seen.insert(name, now);
                        }
                    }
                }
                seen
            })
        };
        let (on_same, on_other) = (watch(writer.to_owned()), watch(other.to_owned()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let http = reqwest::Client::new();
        let url = format!("{writer}/apis/minicloud.dev/v1/namespaces/bench-watch/leases");
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        for index in 0..WRITES {
            pace.tick().await;
            let name = format!("w{index}");
            sent.lock().expect("lock").insert(name.clone(), Instant::now());
            let lease = json!({
                "apiVersion": "minicloud.dev/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "bench-watch"},
                "spec": {"holderIdentity": "bench"}
            });
            let response = http.post(&url).json(&lease).send().await.expect("write");
            assert!(response.status().is_success());
        }
        let (same, other) = (on_same.await.expect("same"), on_other.await.expect("other"));
        let sent = sent.lock().expect("lock").clone();
        let delays = |seen: BTreeMap<String, Instant>| -> Vec<Duration> {
            assert_eq!(seen.len(), WRITES, "every write watched");
            seen.iter().map(|(name, at)| at.saturating_duration_since(sent[name])).collect()
        };
        (delays(same), delays(other))
    })
}
