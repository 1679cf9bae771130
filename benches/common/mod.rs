//! What the Docker benchmarks share: the docker CLI, a real `cloud server` with controllers
//! on a temporary data directory, applying objects, medians, and removing what a run labelled.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Runs `docker ARGS`; returns its trimmed standard output.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A running `cloud server`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cloud server` with its controllers, SQLite in `data`, every container labelled
/// `label` (`KEY=VALUE`).
pub fn start_server(data: &std::path::Path, label: &str) -> Server {
    start_server_with(data, label, &[])
}

/// [`start_server`] with more options.
pub fn start_server_with(data: &std::path::Path, label: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["server", "--listen", "127.0.0.1:0", "--container-label", label, "--resync", "5m"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn,minicloud_server::composition=info")
        // Read only by benchmarks of `--auth` (the admin token is printed there).
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let address = loop {
        let line = lines.next().expect("log").expect("line");
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap_or("").to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url: format!("http://{address}") }
}

impl Server {
    /// The store's cluster id, which every Docker name of this server carries.
    pub fn cluster(&self) -> String {
        let version: Value =
            reqwest::blocking::get(format!("{}/version", self.url)).expect("version").json().expect("json");
        version["cluster"].as_str().expect("cluster id").to_owned()
    }

    /// The container of Instance `namespace`/`name`.
    pub fn instance_container(&self, namespace: &str, name: &str) -> String {
        minicloud_controllers::docker::names::instance_container(&self.cluster(), namespace, name)
    }
}

/// Applies objects through the API; panics on a refusal.
pub fn apply(http: &reqwest::blocking::Client, server: &Server, items: Vec<Value>) {
    apply_at(http, &server.url, items)
}

/// [`apply`] to the server at `url` (for threads that do not own the [`Server`]).
pub fn apply_at(http: &reqwest::blocking::Client, url: &str, items: Vec<Value>) {
    let response =
        http.post(format!("{url}/apis/minicloud.dev/v1/apply")).json(&json!({"items": items})).send().expect("apply");
    assert!(response.status().is_success(), "{}", response.text().unwrap_or_default());
}

/// CPU time a process has used, in clock ticks (USER_HZ, 100 per second on Linux); 0 for a
/// process that is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of /proc/PID/stat; after the ")" they are 12 and 13.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1e3)
}

/// The host port Docker published for `container_port` of a container.
pub fn published_port(container: &str, container_port: u16) -> u16 {
    docker(&["port", container, &container_port.to_string()])
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("a published port")
}

/// Removes what a run labelled when dropped, also when the benchmark panics. Declare it before
/// the [`Server`] so that the server stops first (its controllers would recreate containers).
pub struct RemoveLabelled(pub String);

impl Drop for RemoveLabelled {
    fn drop(&mut self) {
        remove_labelled(&self.0);
    }
}

/// Removes the containers and networks labelled `label`.
pub fn remove_labelled(label: &str) {
    for id in docker(&["ps", "-aq", "--filter", &format!("label={label}")]).lines() {
        docker(&["rm", "-f", id]);
    }
    for id in docker(&["network", "ls", "-q", "--filter", &format!("label={label}")]).lines() {
        docker(&["network", "rm", id]);
    }
}

/// Whether a GET of `/` on the 127.0.0.1 port returns the web image's page.
pub fn serves(port: u16) -> bool {
    serves_within(port, Duration::from_secs(2))
}

/// Whether a GET of `/` on the 127.0.0.1 port returns the web image's page within `timeout`
/// (to connect, and again to answer).
pub fn serves_within(port: u16, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, timeout) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.contains("Hello from minicloud")
}

/// Runs `disrupt` (which takes the service on `port` down and, directly or not, brings it
/// back) while a client keeps trying the way a real one would — a fresh connection every 2 ms,
/// each given 200 ms — and returns the time from the start of `disrupt` until the client is
/// served again after having been refused. Both sides of a recovery comparison are timed so.
pub fn back_after_outage(port: u16, disrupt: impl FnOnce() + Send + 'static) -> Duration {
    let started = Instant::now();
    let action = std::thread::spawn(disrupt);
    let deadline = started + Duration::from_secs(60);
    let mut refused = false;
    loop {
        let served = serves_within(port, Duration::from_millis(200));
        if refused && served {
            break;
        }
        refused |= !served;
        assert!(Instant::now() < deadline, "port {port} did not serve again within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed();
    action.join().expect("the disrupting command");
    elapsed
}

/// Waits (at most 60 s) until the port serves the page.
pub fn wait_serving(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serves(port) {
        assert!(Instant::now() < deadline, "port {port} never served");
        std::thread::sleep(Duration::from_millis(2));
    }
}
