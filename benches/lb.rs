//! LoadBalancer benchmark with real HAProxy, the real Docker engine and the real `cloud server`
//! (release build), each figure next to its baseline measured in the same run:
//!
//! - requests/s and latency through a load balancer against the same load sent directly to
//!   one backend's published port (same load generator, same connections, same page);
//! - failed requests while 100 membership changes and 20 reloads are made under load, against
//!   the same load with nothing changing;
//! - `cloud apply` of a load balancer → first successful request through it, against a bare
//!   `docker run -d` of the same HAProxy image with a hand-written configuration.
//!
//! Run: `cargo bench --bench lb` (needs `scripts/local-images.sh web haproxy`). Everything it
//! starts carries `minicloud.dev/test=bench-lb-...` and is removed at the end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{apply, docker, median, ms, published_port, start_server, wait_serving, RemoveLabelled, Server};
use serde_json::{json, Value};

const NAMESPACE: &str = "bench-lb";
/// Connections the load generator keeps busy at once.
const CONNECTIONS: usize = 16;
/// Length of one throughput measurement, and how many are made per path.
const WINDOW: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;
const FIRST_REQUEST_RUNS: usize = 5;

/// One client connection speaking HTTP/1.1 (keep-alive unless told otherwise); reconnects
/// when the server closes.
struct Client {
    port: u16,
    keep_alive: bool,
    stream: Option<BufReader<TcpStream>>,
    /// Requests sent again because a reused connection was closed before any byte of the
    /// answer came back (what HTTP clients do for idempotent requests, RFC 9112 §9.3.1).
    retried: u64,
}

impl Client {
    fn new(port: u16, keep_alive: bool) -> Client {
        Client { port, keep_alive, stream: None, retried: 0 }
    }

    fn get(&mut self) -> Result<(), String> {
        let reused = self.stream.is_some();
        match self.exchange() {
            Err(Failure::ClosedBeforeAnswer) if reused => {
                self.retried += 1;
                self.exchange().map_err(|failure| failure.to_string())
            }
            result => result.map_err(|failure| failure.to_string()),
        }
    }

    fn exchange(&mut self) -> Result<(), Failure> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| Failure::Io(e.to_string()))?;
            stream.set_nodelay(true).map_err(|e| Failure::Io(e.to_string()))?;
            stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| Failure::Io(e.to_string()))?;
            self.stream = Some(BufReader::new(stream));
        }
        let result = self.exchange_on_open_stream();
        if !matches!(result, Ok(true)) {
            self.stream = None;
        }
        result.map(|_| ())
    }

    /// Sends one request and reads the answer; `Ok(true)` when the connection stays open.
    fn exchange_on_open_stream(&mut self) -> Result<bool, Failure> {
        let reader = self.stream.as_mut().ok_or(Failure::ClosedBeforeAnswer)?;
        let request: &[u8] = if self.keep_alive {
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: minicloud-bench\r\n\r\n"
        } else {
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: minicloud-bench\r\nConnection: close\r\n\r\n"
        };
        if reader.get_mut().write_all(request).is_err() {
            return Err(Failure::ClosedBeforeAnswer);
        }
        let mut status_line = String::new();
        match reader.read_line(&mut status_line) {
            Ok(0) => return Err(Failure::ClosedBeforeAnswer),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::ClosedBeforeAnswer)
            }
            Err(error) => return Err(Failure::Io(error.to_string())),
        }
        let (mut length, mut close) = (None, status_line.starts_with("HTTP/1.0"));
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).map_err(|e| Failure::Io(e.to_string()))? == 0 {
                return Err(Failure::Io("closed in the headers".into()));
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let mut body = Vec::new();
        match length {
            Some(length) => {
                body.resize(length, 0);
                reader.read_exact(&mut body).map_err(|e| Failure::Io(e.to_string()))?;
            }
            None => {
                close = true;
                reader.read_to_end(&mut body).map_err(|e| Failure::Io(e.to_string()))?;
            }
        }
        if status_line.split_whitespace().nth(1) != Some("200") {
            return Err(Failure::Status(status_line.trim().to_owned()));
        }
        Ok(!close)
    }
}

enum Failure {
    ClosedBeforeAnswer,
    Io(String),
    Status(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ClosedBeforeAnswer => write!(f, "connection closed before the answer"),
            Failure::Io(error) => write!(f, "{error}"),
            Failure::Status(line) => write!(f, "{line}"),
        }
    }
}

/// What a load run measured.
#[derive(Default)]
struct Measured {
    ok: u64,
    failures: Vec<String>,
    retried: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, fraction: f64) -> Duration {
        self.latencies.sort();
        let index = ((self.latencies.len() as f64 * fraction) as usize).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(index).copied().unwrap_or_default()
    }
}

/// Load on `port` from `connections` threads until `stop` is set (at most 10 minutes).
struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    threads: Vec<std::thread::JoinHandle<Measured>>,
}

impl Load {
    fn start(port: u16, connections: usize, keep_alive: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut client = Client::new(port, keep_alive);
                    let mut measured = Measured::default();
                    let deadline = Instant::now() + Duration::from_secs(600);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let started = Instant::now();
                        match client.get() {
                            Ok(()) => {
                                measured.ok += 1;
                                measured.latencies.push(started.elapsed());
                            }
                            Err(error) => measured.failures.push(error),
                        }
                    }
                    measured.retried = client.retried;
                    measured
                })
            })
            .collect();
        Load { stop, started: Instant::now(), threads }
    }

    fn finish(self) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Measured { elapsed: self.started.elapsed(), ..Measured::default() };
        for thread in self.threads {
            let measured = thread.join().expect("load thread");
            total.ok += measured.ok;
            total.retried += measured.retried;
            total.failures.extend(measured.failures);
            total.latencies.extend(measured.latencies);
        }
        total
    }
}

fn measure(port: u16, keep_alive: bool, window: Duration) -> Measured {
    let load = Load::start(port, CONNECTIONS, keep_alive);
    std::thread::sleep(window);
    load.finish()
}

fn instance(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"image": "minicloud/web:local", "ports": [{"containerPort": 8080}]}
    })
}

fn load_balancer(name: &str, selector: Value, algorithm: &str, interval: u64) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "LoadBalancer",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "listeners": [{"name": "http", "targetPort": 8080}],
            "targets": {"selector": {"matchLabels": selector}},
            "algorithm": algorithm,
            "healthCheck": {"path": "/", "intervalMillis": interval, "healthyThreshold": 1, "unhealthyThreshold": 2}
        }
    })
}

fn get(http: &reqwest::blocking::Client, server: &Server, plural: &str, name: &str) -> Option<Value> {
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/{NAMESPACE}/{plural}/{name}", server.url);
    let response = http.get(url).send().ok()?;
    response.status().is_success().then(|| response.json().ok()).flatten()
}

fn wait_until(
    http: &reqwest::blocking::Client,
    server: &Server,
    plural: &str,
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(object) = get(http, server, plural, name) {
            if check(&object) {
                return object;
            }
        }
        assert!(Instant::now() < deadline, "{plural}/{name} never got there");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn condition(object: &Value, type_: &str) -> Option<(String, String)> {
    let found = object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((found["status"].as_str()?.to_owned(), found["reason"].as_str()?.to_owned()))
}

fn current(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

/// Current, Ready and with `count` targets UP.
fn serving_with(object: &Value, count: usize) -> bool {
    let targets = object["status"]["targets"].as_array().cloned().unwrap_or_default();
    current(object)
        && condition(object, "Ready").is_some_and(|c| c.0 == "True")
        && targets.len() == count
        && targets.iter().all(|t| t["state"] == "UP")
}

fn endpoint_port(object: &Value) -> Option<u16> {
    object["status"]["endpoints"]["http"].as_str()?.rsplit(':').next()?.parse().ok()
}

fn delete(http: &reqwest::blocking::Client, server: &Server, plural: &str, name: &str) {
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/{NAMESPACE}/{plural}/{name}", server.url);
    http.delete(url).send().expect("delete");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(http, server, plural, name).is_some() {
        assert!(Instant::now() < deadline, "{plural}/{name} was not deleted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn throughput(direct: u16, through_one: u16, through_two: u16) {
    println!(
        "### Requests/s and latency ({CONNECTIONS} client connections, {ROUNDS} × {}s per path, interleaved; medians)",
        WINDOW.as_secs()
    );
    println!();
    println!("| path | requests/s | p50 | p99 | failed | ratio (requests/s vs direct) |");
    println!("|---|---|---|---|---|---|");
    // busybox httpd closes every connection, so the direct path opens one per request
    // whatever the client asks; through the LB the client's connection can stay open.
    let paths = [
        ("direct to one backend's published port", direct, true),
        ("through the LB, one target (that backend)", through_one, true),
        ("through the LB, one target, a new client connection per request", through_one, false),
        ("through the LB, two targets", through_two, true),
    ];
    // Warm-up: connections, page cache, HAProxy's first checks.
    for (_, port, keep_alive) in paths {
        measure(port, keep_alive, Duration::from_secs(1));
    }
    let mut results: Vec<Vec<Measured>> = paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (index, (_, port, keep_alive)) in paths.iter().enumerate() {
            results[index].push(measure(*port, *keep_alive, WINDOW));
        }
    }
    let summaries: Vec<(f64, Duration, Duration, usize)> = results
        .iter_mut()
        .map(|runs| {
            let mut rates: Vec<f64> = runs.iter().map(Measured::rate).collect();
            rates.sort_by(f64::total_cmp);
            let p50 = median(runs.iter_mut().map(|r| r.percentile(0.5)).collect());
            let p99 = median(runs.iter_mut().map(|r| r.percentile(0.99)).collect());
            let failed = runs.iter().map(|r| r.failures.len()).sum();
            (rates[rates.len() / 2], p50, p99, failed)
        })
        .collect();
    let direct_rate = summaries[0].0;
    for ((what, _, _), (rate, p50, p99, failed)) in paths.iter().zip(&summaries) {
        println!(
            "| {what} | {rate:.0} | {:.2} ms | {:.2} ms | {failed} | {:.2}× |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            rate / direct_rate
        );
    }
    println!();
}

fn churn(http: &reqwest::blocking::Client, server: &Server, through_two: u16) {
    const LOAD: usize = 4;
    println!("### Changes under load ({LOAD} keep-alive connections through the LB with two targets)");
    println!();
    println!("| what | requests | failed | retried on a closed keep-alive connection | p99 | took |");
    println!("|---|---|---|---|---|---|");
    let mut quiet = {
        let load = Load::start(through_two, LOAD, true);
        std::thread::sleep(Duration::from_secs(10));
        load.finish()
    };
    let p99 = quiet.percentile(0.99);
    println!(
        "| baseline: nothing changing, 10 s | {} | {} | {} | {:.2} ms | {} |",
        quiet.ok,
        quiet.failures.len(),
        quiet.retried,
        p99.as_secs_f64() * 1e3,
        ms(quiet.elapsed)
    );

    let bench = json!({"app": "bench"});
    let spare = json!({"app": "spare"});
    let load = Load::start(through_two, LOAD, true);
    for change in 0..100 {
        let name = format!("extra-{}", change % 3 + 1);
        let joining = (change / 3) % 2 == 0;
        let labels = if joining { bench.clone() } else { spare.clone() };
        apply(http, server, vec![instance(&name, labels)]);
        wait_until(http, server, "loadbalancers", "two", |o| {
            let present = o["status"]["targets"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == name));
            present == joining
        });
    }
    let membership_done = load.started.elapsed();
    for change in 0..20 {
        let algorithm = if change % 2 == 0 { "LeastConn" } else { "RoundRobin" };
        apply(http, server, vec![load_balancer("two", bench.clone(), algorithm, 300 + change * 10)]);
        wait_until(http, server, "loadbalancers", "two", |o| {
            current(o) && condition(o, "ConfigApplied").is_some_and(|c| c.0 == "True")
        });
    }
    let mut changing = load.finish();
    // Everything back as before: the two web Instances are the targets.
    apply(http, server, (1..=3).map(|i| instance(&format!("extra-{i}"), spare.clone())).collect());
    wait_until(http, server, "loadbalancers", "two", |o| serving_with(o, 2));
    let p99 = changing.percentile(0.99);
    println!(
        "| 100 membership changes then 20 reloads (membership part: {}) | {} | {} | {} | {:.2} ms | {} |",
        ms(membership_done),
        changing.ok,
        changing.failures.len(),
        changing.retried,
        p99.as_secs_f64() * 1e3,
        ms(changing.elapsed)
    );
    if !changing.failures.is_empty() {
        println!();
        println!("First failures: {:?}", &changing.failures[..changing.failures.len().min(5)]);
    }
    println!();
}

fn first_request(http: &reqwest::blocking::Client, server: &Server, label: &str, data: &std::path::Path) {
    println!(
        "### `cloud apply` of a load balancer → first successful request through it (median of {FIRST_REQUEST_RUNS})"
    );
    println!();
    // Baseline: the same image with a hand-written configuration, on the namespace's network.
    let network = docker(&[
        "inspect",
        &server.instance_container("bench-lb", "web-1"),
        "--format",
        "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
    ]);
    let addresses: Vec<String> = ["web-1", "web-2"]
        .iter()
        .map(|name| {
            let object = get(http, server, "instances", name).expect("instance");
            object["status"]["address"].as_str().expect("an address").to_owned()
        })
        .collect();
    let config = format!(
        "global\n  log stdout format raw local0\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind :8000\n  default_backend be\nbackend be\n  balance roundrobin\n\
         \x20 server web-1 {}:8080 check inter 300\n  server web-2 {}:8080 check inter 300\n",
        addresses[0], addresses[1]
    );
    let config_file = data.join("bare-haproxy.cfg");
    std::fs::write(&config_file, config).expect("config");
    let mount = format!("{}:/usr/local/etc/haproxy/haproxy.cfg:ro", config_file.display());

    let (mut minicloud, mut bare, mut to_ready) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..FIRST_REQUEST_RUNS {
        let name = format!("first-{run}");
        let started = Instant::now();
        apply(http, server, vec![load_balancer(&name, json!({"app": "bench"}), "RoundRobin", 300)]);
        let object = wait_until(http, server, "loadbalancers", &name, |o| endpoint_port(o).is_some());
        wait_serving(endpoint_port(&object).expect("a port"));
        minicloud.push(started.elapsed());
        wait_until(http, server, "loadbalancers", &name, |o| serving_with(o, 2));
        to_ready.push(started.elapsed());

        let started = Instant::now();
        let id = docker(&[
            "run",
            "-d",
            "--label",
            label,
            "--network",
            &network,
            "-p",
            "127.0.0.1::8000",
            "-v",
            &mount,
            "minicloud/haproxy:local",
        ]);
        wait_serving(published_port(&id, 8000));
        bare.push(started.elapsed());
        docker(&["rm", "-f", &id]);
        delete(http, server, "loadbalancers", &name);
    }
    let (minicloud, bare, to_ready) = (median(minicloud), median(bare), median(to_ready));
    println!("| what | minicloud | baseline | ratio / overhead |");
    println!("|---|---|---|---|");
    println!(
        "| apply → first successful request (apply → Ready with 2/2 UP: {}) | {} | `docker run -d` of the same image, hand-written config → first success: {} | {:+.0} ms |",
        ms(to_ready),
        ms(minicloud),
        ms(bare),
        (minicloud.as_secs_f64() - bare.as_secs_f64()) * 1e3
    );
    println!();
}

fn main() {
    let run = format!("bench-lb-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let label = format!("minicloud.dev/test={run}");
    let data = tempfile::tempdir().expect("tempdir");
    let _remove = RemoveLabelled(label.clone());
    let server = start_server(data.path(), &label);
    let http = reqwest::blocking::Client::new();
    println!("LoadBalancer benchmark; baselines from the same run");
    println!();

    let mut objects = vec![
        instance("web-1", json!({"app": "bench", "member": "one"})),
        instance("web-2", json!({"app": "bench"})),
        load_balancer("one", json!({"member": "one"}), "RoundRobin", 300),
        load_balancer("two", json!({"app": "bench"}), "RoundRobin", 300),
    ];
    objects.extend((1..=3).map(|i| instance(&format!("extra-{i}"), json!({"app": "spare"}))));
    apply(&http, &server, objects);
    let one = wait_until(&http, &server, "loadbalancers", "one", |o| serving_with(o, 1));
    let two = wait_until(&http, &server, "loadbalancers", "two", |o| serving_with(o, 2));
    for i in 1..=3 {
        wait_until(&http, &server, "instances", &format!("extra-{i}"), |o| o["status"]["address"].is_string());
    }
    let web_1 = get(&http, &server, "instances", "web-1").expect("web-1");
    let direct = web_1["status"]["ports"][0]["hostPort"].as_u64().expect("web-1's host port") as u16;
    let (through_one, through_two) = (endpoint_port(&one).expect("one"), endpoint_port(&two).expect("two"));

    throughput(direct, through_one, through_two);
    churn(&http, &server, through_two);
    first_request(&http, &server, &label, data.path());
}
