//! What security costs per request, with the real `cloud server` (release build, API only, SQLite),
//! each figure next to its baseline measured in the same run:
//!
//! - a GET of one object and an apply that changes one object, on a server without
//!   authentication (the baseline), with `--auth` (a bearer token looked up, permission
//!   checked, the request counted against the token's rate, the change audited), and with
//!   `--auth` and ten Policies of five rules each covering the namespace (every apply judged).
//!
//! Rate limits are off (`--rate-limit 0`) so that the cost, not the limit, is measured.
//! Run: `cargo bench --bench security`. Figures go to docs/benchmarks.md.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{start_server_with, Server};
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";
const GETS: usize = 2000;
const APPLIES: usize = 400;
const POLICIES: usize = 10;

/// A server and, with `--auth`, its admin token.
struct Bench {
    server: Server,
    token: Option<String>,
    _data: tempfile::TempDir,
}

fn start(auth: bool) -> Bench {
    let data = tempfile::tempdir().expect("dir");
    let mut extra = vec!["--no-controllers", "--rate-limit", "0"];
    if auth {
        extra.push("--auth");
    }
    let mut server = start_server_with(data.path(), "minicloud.dev/test=bench-security", &extra);
    let token = auth.then(|| {
        let mut stdout = BufReader::new(server.child.stdout.take().expect("stdout")).lines();
        let line = stdout.next().expect("stdout").expect("line");
        line.strip_prefix("admin token: ").expect("admin token line").to_owned()
    });
    Bench { server, token, _data: data }
}

fn request(
    http: &reqwest::blocking::Client,
    bench: &Bench,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> reqwest::blocking::Response {
    let mut builder = http.request(method, format!("{}{path}", bench.server.url));
    if let Some(token) = &bench.token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let response = builder.send().expect("request");
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response
}

fn instance(image_tag: usize) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": "web", "namespace": "bench", "labels": {"team": "bench"}},
        "spec": {"image": format!("minicloud/web:{image_tag}"), "resources": {"cpu": "100m", "memory": "64Mi"}}
    })
}

fn policies() -> Vec<Value> {
    (0..POLICIES)
        .map(|index| {
            json!({
                "apiVersion": "minicloud.dev/v1", "kind": "Policy",
                "metadata": {"name": format!("policy-{index}"), "namespace": "bench"},
                "spec": {"rules": [
                    {"name": "images", "allowedImages": ["minicloud/"]},
                    {"name": "cpu", "maxCpu": "2"},
                    {"name": "memory", "maxMemory": "1Gi"},
                    {"name": "ports", "forbidPrivilegedHostPorts": true},
                    {"name": "labels", "requiredLabels": ["team"]}
                ]}
            })
        })
        .collect()
}

/// Requests a second over `count` sequential calls of `call`, and the median latency.
fn measure(count: usize, mut call: impl FnMut(usize)) -> (f64, Duration) {
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for index in 0..count {
        let one = Instant::now();
        call(index);
        samples.push(one.elapsed());
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    samples.sort_unstable();
    (rate, samples[samples.len() / 2])
}

fn micros(duration: Duration) -> String {
    format!("{} µs", duration.as_micros())
}

fn main() {
    let http = reqwest::blocking::Client::new();
    let mut results = Vec::new();
    for (label, auth, with_policies) in
        [("no auth", false, false), ("--auth", true, false), ("--auth + 10 policies", true, true)]
    {
        let server = start(auth);
        let mut items = vec![instance(0)];
        if with_policies {
            items.extend(policies());
        }
        request(&http, &server, reqwest::Method::POST, &format!("{V1}/apply"), Some(&json!({"items": items})));
        // Warm up the connection and the token cache.
        for _ in 0..50 {
            request(&http, &server, reqwest::Method::GET, &format!("{V1}/namespaces/bench/instances/web"), None);
        }
        let get = measure(GETS, |_| {
            request(&http, &server, reqwest::Method::GET, &format!("{V1}/namespaces/bench/instances/web"), None);
        });
        let apply = measure(APPLIES, |index| {
            let body = json!({"items": [instance(index + 1)]});
            request(&http, &server, reqwest::Method::POST, &format!("{V1}/apply"), Some(&body));
        });
        println!(
            "{label:>22}: GET {:>7.0}/s (median {}), apply {:>6.0}/s (median {})",
            get.0,
            micros(get.1),
            apply.0,
            micros(apply.1)
        );
        results.push((label, get, apply));
    }
    let (base_get, base_apply) = (results[0].1, results[0].2);
    for (label, get, apply) in &results[1..] {
        println!(
            "{label:>22}: GET throughput {:.2}× the baseline, apply throughput {:.2}×",
            get.0 / base_get.0,
            apply.0 / base_apply.0
        );
    }
}
