//! A real `cloud server` with its controllers on the real Docker engine, for the tests of
//! controllers: apply and read objects over HTTP, wait for conditions, read events, and a
//! bounded request loop that counts failures. Every container a run makes carries
//! `minicloud.dev/test=PREFIX-...` and is removed when the harness is dropped; leftovers of
//! crashed runs of the same prefix are removed at the start.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use minicloud_controllers::docker::names;

use super::docker::{docker, remove_marked};
use super::server::TestServer;
use super::TestDb;

pub const V1: &str = "/apis/minicloud.dev/v1";

/// Removes what crashed earlier runs of tests with this prefix left behind, once per process
/// (the tests of one file run in parallel: sweeping again would remove a running test's
/// containers).
pub fn remove_leftovers_of_earlier_runs(prefix: &str) {
    static SWEPT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut swept = SWEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if swept.insert(prefix.to_owned()) {
        remove_marked(|run| run.starts_with(&format!("{prefix}-")));
    }
}

pub struct Harness {
    pub server: Option<TestServer>,
    /// `cloud server` arguments beyond the harness's own.
    extra_arguments: Vec<String>,
    pub run: String,
    pub namespace: String,
    pub data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Drop for Harness {
    /// Stops the server first (its controllers would recreate what is removed), then removes
    /// every container, network and volume of this run, passing or failing.
    fn drop(&mut self) {
        drop(self.server.take());
        let run = self.run.clone();
        remove_marked(|label| label == run);
    }
}

impl Harness {
    /// A server with controllers on a fresh SQLite store; `prefix` names the test file's runs.
    pub async fn start(prefix: &str) -> Harness {
        Harness::start_on(prefix, TestDb::sqlite().await, &[]).await
    }

    /// A server with controllers on `database`, with extra `cloud server` arguments.
    pub async fn start_on(prefix: &str, database: TestDb, extra_arguments: &[&str]) -> Harness {
        remove_leftovers_of_earlier_runs(prefix);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let run = format!("{prefix}-{}", &id[..12]);
        let namespace = format!("t{}", &id[..8]);
        let data_dir = tempfile::tempdir().expect("data dir");
        let extra_arguments = extra_arguments.iter().map(|a| a.to_string()).collect();
        let mut harness =
            Harness { server: None, extra_arguments, run, namespace, data_dir, http: reqwest::Client::new() };
        harness.server = Some(harness.start_server(database).await);
        harness
    }

    pub async fn start_server(&self, database: TestDb) -> TestServer {
        let label = format!("minicloud.dev/test={}", self.run);
        let data_dir = self.data_dir.path().display().to_string();
        let mut arguments =
            vec!["--container-label", label.as_str(), "--data-dir", data_dir.as_str(), "--resync", "30s"];
        arguments.extend(self.extra_arguments.iter().map(String::as_str));
        TestServer::start(database, &arguments).await
    }

    /// Stops the server and drops its database (a PostgreSQL one too); `Drop` removes the
    /// containers.
    pub async fn finish(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    pub fn server(&self) -> &TestServer {
        self.server.as_ref().expect("a running server")
    }

    /// The Docker container of Instance `name` in this run's namespace.
    pub async fn instance_container(&self, name: &str) -> String {
        names::instance_container(&self.server().cluster().await, &self.namespace, name)
    }

    /// The Docker container of ManagedDatabase `name` in this run's namespace.
    pub async fn database_container(&self, name: &str) -> String {
        names::database_container(&self.server().cluster().await, &self.namespace, name)
    }

    pub fn url(&self, plural: &str, name: &str) -> String {
        format!("{}{V1}/namespaces/{}/{plural}/{name}", self.server().url, self.namespace)
    }

    /// Applies objects; returns the status code and body.
    pub async fn try_apply(&self, objects: Vec<Value>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{V1}/apply", self.server().url))
            .json(&json!({"items": objects}))
            .send()
            .await
            .expect("apply");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn apply(&self, objects: Vec<Value>) {
        let (status, body) = self.try_apply(objects).await;
        assert!((200..300).contains(&status), "apply failed: {body}");
    }

    pub async fn get(&self, plural: &str, name: &str) -> Option<Value> {
        let response = self.http.get(self.url(plural, name)).send().await.expect("get");
        response.status().is_success().then_some(response.json().await.expect("json"))
    }

    pub async fn wait_for(&self, plural: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(plural, name, what, Duration::from_secs(60), check).await
    }

    /// [`Harness::wait_for`] with its own limit. A timeout shows the object's status and the
    /// server's latest warnings and errors.
    pub async fn wait_for_within(
        &self,
        plural: &str,
        name: &str,
        what: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let object = self.get(plural, name).await;
            if let Some(object) = &object {
                if check(object) {
                    return object.clone();
                }
            }
            if Instant::now() > deadline {
                let status = object.map(|o| o["status"].clone()).unwrap_or(Value::Null);
                let troubles: Vec<String> = self
                    .server()
                    .log
                    .lock()
                    .map(|lines| {
                        let mut troubles: Vec<String> = lines
                            .iter()
                            .rev()
                            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                            .take(20)
                            .cloned()
                            .collect();
                        troubles.reverse();
                        troubles
                    })
                    .unwrap_or_default();
                panic!(
                    "timed out waiting for {what}: {}\nthe server's latest warnings:\n{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                    troubles.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn instance(&self, name: &str, labels: Value, extra: Value) -> Value {
        let mut spec = json!({"image": "minicloud/web:local", "resources": {"memory": "32Mi"}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": spec
        })
    }

    pub fn load_balancer(&self, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "minicloud.dev/v1", "kind": "LoadBalancer",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec
        })
    }

    /// The events of one object, as `REASON: message` lines.
    pub async fn events(&self, kind: &str, name: &str) -> Vec<String> {
        let url = format!("{}{V1}/namespaces/{}/events", self.server().url, self.namespace);
        let response = self.http.get(url).send().await.expect("events");
        let body: Value = response.json().await.expect("json");
        body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|event| event["kind"] == kind && event["name"] == name)
            .map(|event| {
                format!("{}: {}", event["reason"].as_str().unwrap_or(""), event["message"].as_str().unwrap_or(""))
            })
            .collect()
    }

    /// The value of one series (`name{labels}`) at `/metrics`, if it is there.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let url = format!("{}/metrics", self.server().url);
        let text = self.http.get(url).send().await.expect("metrics").text().await.expect("text");
        text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    pub fn lb_containers(&self) -> Vec<String> {
        self.containers("LoadBalancer", false)
    }

    /// Names of this run's containers of objects of `kind` (running ones only, or all).
    pub fn containers(&self, kind: &str, running_only: bool) -> Vec<String> {
        let run = format!("label=minicloud.dev/test={}", self.run);
        let kind = format!("label=minicloud.dev/kind={kind}");
        let mut arguments = vec!["ps", "--filter", &run, "--filter", &kind, "--format", "{{.Names}}"];
        if !running_only {
            arguments.insert(1, "-a");
        }
        let listed = docker(&arguments);
        listed.lines().map(str::to_owned).filter(|name| !name.is_empty()).collect()
    }

    /// The objects of a kind (by plural) in the run's namespace.
    pub async fn list(&self, plural: &str) -> Vec<Value> {
        let url = format!("{}{V1}/namespaces/{}/{plural}", self.server().url, self.namespace);
        let response = self.http.get(url).send().await.expect("list");
        let body: Value = response.json().await.expect("json");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Runs the real `cloud` binary against the server; returns (success, stdout, stderr).
    pub fn cloud(&self, arguments: &[&str]) -> (bool, String, String) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(["--server", &self.server().url])
            .args(arguments)
            .output()
            .expect("cloud");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.success(), text(&output.stdout), text(&output.stderr))
    }
}

pub fn condition<'v>(object: &'v Value, type_: &str) -> Option<(&'v str, &'v str)> {
    let found = object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((found["status"].as_str()?, found["reason"].as_str()?))
}

/// Current (observedGeneration) and Ready with `healthy` of `total` targets UP.
pub fn serving(object: &Value, healthy: usize, total: usize) -> bool {
    let targets = object["status"]["targets"].as_array().cloned().unwrap_or_default();
    let up = targets.iter().filter(|t| t["state"] == "UP").count();
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
        && condition(object, "Ready").map(|c| c.0) == Some("True")
        && up == healthy
        && targets.len() == total
}

pub fn endpoint(object: &Value) -> String {
    object["status"]["endpoints"]["http"].as_str().expect("an endpoint").to_owned()
}

pub async fn whoami(http: &reqwest::Client, endpoint: &str) -> Result<String, String> {
    fetch(http, &format!("{endpoint}/cgi-bin/whoami")).await
}

/// GETs `url`; the body when the answer is a success, else what went wrong.
pub async fn fetch(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = http.get(url).timeout(Duration::from_secs(10)).send().await.map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|error| error.to_string())?;
    if status.is_success() {
        Ok(body.trim().to_owned())
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// A bounded request loop through the load balancer (127.0.0.1 only) that counts failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` loops of `/cgi-bin/whoami` requests.
    pub fn start(endpoint: &str, workers: usize) -> Load {
        Load::start_on(&format!("{endpoint}/cgi-bin/whoami"), workers)
    }

    /// `workers` loops of GET `url`.
    pub fn start_on(url: &str, workers: usize) -> Load {
        let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::default());
        let workers = (0..workers)
            .map(|_| {
                let (stop, ok, failed): (_, _, Arc<std::sync::Mutex<Vec<String>>>) =
                    (stop.clone(), ok.clone(), Arc::clone(&failed));
                let url = url.to_owned();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    // Bounded: ends by itself after 10 minutes even if never told to stop.
                    let deadline = Instant::now() + Duration::from_secs(600);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match fetch(&http, &url).await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(error) => failed.lock().expect("lock").push(error),
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, workers }
    }

    /// Fails unless at least `at_least` requests succeeded and none failed (`during` says when,
    /// for the messages).
    pub fn assert_none_failed(ok: u64, failed: &[String], at_least: u64, during: &str) {
        eprintln!("{ok} requests succeeded {during}; {} failed", failed.len());
        assert!(ok > at_least, "the load ran ({ok} requests)");
        assert!(
            failed.is_empty(),
            "{} of {} requests failed {during}: {:?}",
            failed.len(),
            ok + failed.len() as u64,
            &failed[..failed.len().min(5)]
        );
    }

    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        let failed = self.failed.lock().expect("lock").clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}
