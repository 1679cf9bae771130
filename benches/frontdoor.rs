//! The front door against Caddy, side by side in one run, with the real `cloud server`
//! (release build), real HAProxy and the real Docker engine:
//!
//! - HTTPS requests/s and p99 latency through a minicloud HTTPS listener (a Route to two web
//!   Instances) against Caddy 2 reverse-proxying the same two Instances with the same
//!   certificate — both proxies in containers on the same Docker network, published on
//!   127.0.0.1 alike, loaded by the same `wrk` command — with keep-alive and with a new TLS
//!   connection per request; plain HTTP through minicloud and Caddy alongside;
//! - a route change → the first request served by the new backend, against the same change made
//!   in Caddy's configuration (`caddy reload`), timed alike (from the moment the change is
//!   handed over to the moment a request is answered by the new backend);
//! - failed requests during 100 route changes and a certificate renewal under load.
//!
//! The backends are HAProxy answering every request themselves (busybox httpd, which forks per
//! connection, would be the bottleneck both proxies measure).
//!
//! Run: `cargo bench --bench frontdoor` (needs `scripts/local-images.sh web haproxy`, and the
//! Debian packages `caddy` and `wrk`; the Caddy and backend images are built here).
//! Everything it starts carries `minicloud.dev/test=bench-fd-...` and is removed at the end.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{apply, apply_at, docker, median, ms, published_port, start_server, RemoveLabelled, Server};
use serde_json::{json, Value};

const NAMESPACE: &str = "bench-fd";
const HOST: &str = "bench.example.com";
const CADDY_IMAGE: &str = "minicloud/caddy:bench";
/// The backends: HAProxy answering every request itself with the Instance's name (busybox
/// httpd forks per connection and would be what both proxies measure).
const BACKEND_IMAGE: &str = "minicloud/fast-backend:bench";
/// `wrk` load: threads, connections, seconds per window; windows per figure.
const THREADS: &str = "2";
const CONNECTIONS: &str = "16";
const WINDOW_SECONDS: &str = "5";
const ROUNDS: usize = 3;
const ROUTE_CHANGE_RUNS: usize = 5;

/// One `wrk` run: requests/s, p99 latency, failures (socket errors and non-2xx/3xx).
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    rps: f64,
    p99_ms: f64,
    failed: u64,
    requests: u64,
}

fn wrk(url: &str, new_connection_per_request: bool, seconds: &str) -> Load {
    let mut command = Command::new("wrk");
    command.args(["-t", THREADS, "-c", CONNECTIONS, "-d", seconds, "--latency", "-H", &format!("Host: {HOST}")]);
    if new_connection_per_request {
        command.args(["-H", "Connection: close"]);
    }
    let output = command.arg(url).output().expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let number = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    let p99 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .map(|value| {
            let value = value.trim();
            let (digits, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(value.len()));
            let digits: f64 = digits.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => digits / 1000.0,
                "s" => digits * 1000.0,
                _ => digits,
            }
        })
        .unwrap_or(f64::NAN);
    let requests = text
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let socket_errors: u64 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Socket errors:"))
        .map(|rest| rest.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    let non_2xx = number("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    if requests == 0 || socket_errors > 0 {
        eprintln!("wrk {url}:\n{text}{}", String::from_utf8_lossy(&output.stderr));
    }
    Load { rps: number("Requests/sec:").unwrap_or(0.0), p99_ms: p99, failed: socket_errors + non_2xx, requests }
}

/// Builds the backend image: the HAProxy image with busybox's shell to write its configuration.
fn build_backend_image() {
    let context = tempfile::tempdir().expect("context");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM minicloud/haproxy:local\nCOPY --from=minicloud/web:local /bin/busybox /bin/busybox\nENTRYPOINT []\n",
    )
    .expect("Dockerfile");
    let built = Command::new("docker")
        .args(["build", "-q", "--label", "minicloud.dev/image=bench", "-t", BACKEND_IMAGE])
        .arg(context.path())
        .output()
        .expect("docker build");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
}

/// Builds the Caddy image from the host's `/usr/bin/caddy` and the libraries it loads.
fn build_caddy_image() {
    let context = tempfile::tempdir().expect("context");
    let root = context.path().join("root");
    std::fs::create_dir_all(root.join("usr/bin")).expect("dirs");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::create_dir_all(root.join("tmp")).expect("tmp");
    std::fs::copy("/usr/bin/caddy", root.join("usr/bin/caddy")).expect("caddy (apt-get install caddy)");
    let ldd = Command::new("ldd").arg("/usr/bin/caddy").output().expect("ldd");
    let libraries = String::from_utf8_lossy(&ldd.stdout).into_owned();
    for library in libraries.split_whitespace().filter(|word| word.starts_with('/')) {
        let target = root.join(library.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("lib dir");
        std::fs::copy(library, &target).expect("library");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/false\n").expect("passwd");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY root /\nENV HOME=/tmp XDG_DATA_HOME=/tmp XDG_CONFIG_HOME=/tmp\nENTRYPOINT [\"/usr/bin/caddy\", \"run\", \"--config\", \"/etc/caddy/Caddyfile\", \"--adapter\", \"caddyfile\"]\n",
    )
    .expect("Dockerfile");
    let built = Command::new("docker")
        .args(["build", "-q", "--label", "minicloud.dev/image=bench", "-t", CADDY_IMAGE])
        .arg(context.path())
        .output()
        .expect("docker build");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
}

fn caddyfile(backends: &[String]) -> String {
    let upstreams = backends.iter().map(|ip| format!("{ip}:8080")).collect::<Vec<_>>().join(" ");
    format!(
        "{{\n  auto_https disable_redirects\n  default_sni {HOST}\n  admin localhost:2019\n}}\n\
         https://{HOST}:8443 {{\n  tls /etc/caddy/cert.pem /etc/caddy/key.pem\n  reverse_proxy {upstreams}\n}}\n\
         http://{HOST}:8080 {{\n  reverse_proxy {upstreams}\n}}\n"
    )
}

/// The address of an Instance on its network, and that network's name.
fn instance_address(server: &Server, name: &str) -> (String, String) {
    let container = server.instance_container(NAMESPACE, name);
    let text = docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{$v.IPAddress}}{{end}}",
        &container,
    ]);
    let (network, address) = text.split_once(' ').expect("network and address");
    (address.to_owned(), network.to_owned())
}

/// The identity page of whichever backend answers `url` (a 404 page that names the Instance).
fn who(url: &str) -> Option<String> {
    let output =
        Command::new("curl").args(["-sk", "--max-time", "2", "-H", &format!("Host: {HOST}"), url]).output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Time from `change` returning until a request to `url` is answered by `expected`.
fn until_served_by(url: &str, expected: &str, change: impl FnOnce()) -> Duration {
    let started = Instant::now();
    change();
    let deadline = started + Duration::from_secs(30);
    loop {
        if who(url).as_deref() == Some(expected) {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "{url} never served by {expected}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn instance(name: &str) -> Value {
    let config = format!(
        "defaults\n  mode http\n  timeout client 30s\n  timeout server 30s\n  timeout connect 1s\nfrontend answer\n  bind :8080\n  http-request return status 200 content-type text/plain string {name}\n"
    );
    json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance",
           "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "fd", "member": name}},
           "spec": {"image": BACKEND_IMAGE,
                    "command": ["/bin/busybox", "sh", "-c", format!("printf '{config}' > /tmp/answer.cfg && exec /usr/sbin/haproxy -db -f /tmp/answer.cfg")]}})
}

fn route(path_backend: &str, header_value: &str) -> Value {
    json!({"apiVersion": "minicloud.dev/v1", "kind": "Route", "metadata": {"name": "bench", "namespace": NAMESPACE},
           "spec": {"parentRefs": [{"name": "edge"}], "hostnames": [HOST], "rules": [
               {"matches": [{"path": {"value": "/switch"}}], "backendRefs": [{"kind": "Instance", "name": path_backend, "port": 8080}]},
               {"filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-Version", "value": header_value}]}}],
                "backendRefs": [{"selector": {"matchLabels": {"app": "fd"}}, "port": 8080}]}]}})
}

fn pair_secret(dir: &std::path::Path, serial: u32) -> Value {
    let run = |arguments: &[&str]| {
        let output = Command::new("openssl").current_dir(dir).args(arguments).output().expect("openssl");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-subj",
        &format!("/CN={HOST}"),
        "-addext",
        &format!("subjectAltName=DNS:{HOST},IP:127.0.0.1"),
        "-set_serial",
        &serial.to_string(),
    ]);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("pem");
    json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "bench-pair", "namespace": NAMESPACE},
           "spec": {"type": "Tls", "stringData": {"tls.crt": read("cert.pem"), "tls.key": read("key.pem")}}})
}

fn main() {
    let run = format!("bench-fd-{}", std::process::id());
    let label = format!("minicloud.dev/test={run}");
    let _cleanup = RemoveLabelled(label.clone());
    build_caddy_image();
    build_backend_image();
    let data = tempfile::tempdir().expect("data");
    let certificates = tempfile::tempdir().expect("certificates");
    let server = start_server(data.path(), &label);
    let http = reqwest::blocking::Client::new();

    apply(
        &http,
        &server,
        vec![
            instance("web-1"),
            instance("web-2"),
            instance("web-3"),
            pair_secret(certificates.path(), 1),
            json!({"apiVersion": "minicloud.dev/v1", "kind": "Certificate", "metadata": {"name": "bench", "namespace": NAMESPACE},
               "spec": {"dnsNames": [HOST], "issuer": {"secretRef": {"name": "bench-pair"}}}}),
            json!({"apiVersion": "minicloud.dev/v1", "kind": "LoadBalancer", "metadata": {"name": "edge", "namespace": NAMESPACE},
               "spec": {"listeners": [{"name": "http"}, {"name": "https", "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "bench"}]}}]}}),
            route("web-1", "1"),
        ],
    );
    // Only web-1 and web-2 serve the main rule: web-3 is the "new backend" of route changes.
    let lb_url = |listener: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let lb: Value = http
                .get(format!("{}/apis/minicloud.dev/v1/namespaces/{NAMESPACE}/loadbalancers/edge", server.url))
                .send()
                .and_then(|r| r.json())
                .unwrap_or(Value::Null);
            let ready = lb["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            if let (true, Some(url)) = (ready, lb["status"]["endpoints"][listener].as_str()) {
                return url.to_owned();
            }
            assert!(Instant::now() < deadline, "the load balancer never became ready: {lb}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (minicloud_http, minicloud_https) = (lb_url("http"), lb_url("https"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while who(&format!("{minicloud_https}/switch")).as_deref() != Some("web-1") {
        assert!(Instant::now() < deadline, "the route never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The main rule selects app=fd: web-1, web-2 and web-3 serve it, behind both proxies.
    let backends: Vec<(String, String)> =
        ["web-1", "web-2", "web-3"].iter().map(|name| instance_address(&server, name)).collect();
    let network = backends[0].1.clone();
    let addresses: Vec<String> = backends.iter().map(|(address, _)| address.clone()).collect();
    let caddy_dir = tempfile::tempdir().expect("caddy dir");
    std::fs::copy(certificates.path().join("cert.pem"), caddy_dir.path().join("cert.pem")).expect("cert");
    std::fs::copy(certificates.path().join("key.pem"), caddy_dir.path().join("key.pem")).expect("key");
    std::fs::write(caddy_dir.path().join("Caddyfile"), caddyfile(&addresses)).expect("Caddyfile");
    let caddy_name = format!("{run}-caddy");
    let volume = format!("{}:/etc/caddy", caddy_dir.path().display());
    docker(&[
        "run",
        "-d",
        "--name",
        &caddy_name,
        "--label",
        &label,
        "--network",
        &network,
        "-p",
        "127.0.0.1::8443",
        "-p",
        "127.0.0.1::8080",
        "-v",
        &volume,
        CADDY_IMAGE,
    ]);
    let caddy_https = format!("https://127.0.0.1:{}", published_port(&caddy_name, 8443));
    let caddy_http = format!("http://127.0.0.1:{}", published_port(&caddy_name, 8080));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !who(&format!("{caddy_https}/")).is_some_and(|page| page.starts_with("web-")) {
        assert!(Instant::now() < deadline, "Caddy never served: {}", docker(&["logs", "--tail", "20", &caddy_name]));
        std::thread::sleep(Duration::from_millis(100));
    }

    println!("front door benchmark: {THREADS} wrk threads, {CONNECTIONS} connections, {WINDOW_SECONDS} s windows, median of {ROUNDS}; three backend Instances behind both proxies");
    let measure = |label: &str, minicloud: &str, caddy: &str, close: bool| {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.push(wrk(&format!("{minicloud}/"), close, WINDOW_SECONDS));
            theirs.push(wrk(&format!("{caddy}/"), close, WINDOW_SECONDS));
        }
        let median_of = |runs: &[Load]| {
            let mut sorted = runs.to_vec();
            sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            sorted[sorted.len() / 2]
        };
        let (ours, theirs) = (median_of(&ours), median_of(&theirs));
        println!(
            "{label:<44} minicloud {:>8.0} req/s p99 {:>6.1} ms | Caddy {:>8.0} req/s p99 {:>6.1} ms | ratio {:.2}× (failed: {} / {})",
            ours.rps,
            ours.p99_ms,
            theirs.rps,
            theirs.p99_ms,
            ours.rps / theirs.rps,
            ours.failed,
            theirs.failed
        );
        (ours, theirs)
    };
    measure("HTTPS, keep-alive", &minicloud_https, &caddy_https, false);
    measure("HTTPS, a new TLS connection per request", &minicloud_https, &caddy_https, true);
    measure("plain HTTP, keep-alive", &minicloud_http, &caddy_http, false);

    // Route change → first request served by the new backend, both sides alike.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for run_index in 0..ROUTE_CHANGE_RUNS {
        let target = if run_index % 2 == 0 { "web-3" } else { "web-1" };
        ours.push(until_served_by(&format!("{minicloud_https}/switch"), target, || {
            apply(&http, &server, vec![route(target, "1")]);
        }));
        let upstream = if target == "web-3" { &addresses[2] } else { &addresses[0] };
        let switched = format!(
            "{{\n  auto_https disable_redirects\n  default_sni {HOST}\n  admin localhost:2019\n}}\n\
             https://{HOST}:8443 {{\n  tls /etc/caddy/cert.pem /etc/caddy/key.pem\n  handle /switch* {{\n    reverse_proxy {upstream}:8080\n  }}\n  handle {{\n    reverse_proxy {}\n  }}\n}}\n\
             http://{HOST}:8080 {{\n  reverse_proxy {}\n}}\n",
            addresses.iter().map(|a| format!("{a}:8080")).collect::<Vec<_>>().join(" "),
            addresses.iter().map(|a| format!("{a}:8080")).collect::<Vec<_>>().join(" "),
        );
        std::fs::write(caddy_dir.path().join("Caddyfile"), switched).expect("Caddyfile");
        theirs.push(until_served_by(&format!("{caddy_https}/switch"), target, || {
            docker(&[
                "exec",
                &caddy_name,
                "/usr/bin/caddy",
                "reload",
                "--config",
                "/etc/caddy/Caddyfile",
                "--adapter",
                "caddyfile",
            ]);
        }));
    }
    let worst = |samples: &[Duration]| samples.iter().max().copied().unwrap_or_default();
    println!(
        "route change → first request by the new backend       minicloud median {} (max {}) | Caddy reload median {} (max {})",
        ms(median(ours.clone())),
        ms(worst(&ours)),
        ms(median(theirs.clone())),
        ms(worst(&theirs))
    );

    // 100 route changes and a certificate renewal under load: failed requests.
    let stop = Arc::new(AtomicBool::new(false));
    let changer = {
        let (stop, url) = (stop.clone(), server.url.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut changes = 0;
            while changes < 100 && !stop.load(Ordering::Relaxed) {
                apply_at(&http, &url, vec![route("web-1", &changes.to_string())]);
                changes += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            changes
        })
    };
    let renewer = {
        let (url, dir) = (server.url.clone(), certificates.path().to_owned());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(5));
            apply_at(&reqwest::blocking::Client::new(), &url, vec![pair_secret(&dir, 2)]);
        })
    };
    let keep_alive = std::thread::spawn({
        let url = format!("{minicloud_https}/");
        move || wrk(&url, false, "25")
    });
    let per_request = wrk(&format!("{minicloud_https}/"), true, "25");
    let keep_alive = keep_alive.join().expect("wrk");
    stop.store(true, Ordering::Relaxed);
    let changes = changer.join().expect("changer");
    renewer.join().expect("renewer");
    let served_serial = String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", &format!("openssl s_client -connect {} -servername {HOST} </dev/null 2>/dev/null | openssl x509 -noout -serial", minicloud_https.trim_start_matches("https://"))])
            .output()
            .expect("openssl")
            .stdout,
    )
    .trim()
    .to_owned();
    println!(
        "{changes} route changes + 1 certificate renewal under load   keep-alive: {} failed of {} | new connection per request: {} failed of {} | serving certificate {served_serial}",
        keep_alive.failed, keep_alive.requests, per_request.failed, per_request.requests
    );
}
