//! The Instance controller with the real Docker engine, inside the real `cloud server`:
//! manifests become containers that serve, are replaced when killed or changed, and are
//! removed on delete. Needs `minicloud/web:local` (`scripts/local-images.sh web`).
//!
//! Every container a test makes carries `minicloud.dev/test=instances-...`; leftovers of a
//! crashed run are removed at the start.

use std::time::{Duration, Instant};

use crate::common::docker::{docker, remove_marked};
use crate::common::server::TestServer;
use futures::StreamExt;
use minicloud_controllers::docker::names;
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";

/// Removes what earlier (crashed) runs of this file left, once per process, before any test of
/// this run has created anything (tests of one file run in parallel).
fn remove_leftovers_of_earlier_runs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| remove_marked(|run| run.starts_with("instances-")));
}

struct Harness {
    server: TestServer,
    run: String,
    namespace: String,
    http: reqwest::Client,
}

impl Drop for Harness {
    /// A failing test still removes what it started.
    fn drop(&mut self) {
        let run = self.run.clone();
        remove_marked(|label| label == run);
    }
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(&["--resync", "30s"]).await
    }

    async fn start_with(extra: &[&str]) -> Harness {
        remove_leftovers_of_earlier_runs();
        let run = format!("instances-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let label = format!("minicloud.dev/test={run}");
        let mut arguments = vec!["--container-label", label.as_str()];
        arguments.extend_from_slice(extra);
        let server = TestServer::start(crate::common::TestDb::sqlite().await, &arguments).await;
        let namespace = format!("t{}", &run[10..18]);
        Harness { server, run, namespace, http: reqwest::Client::new() }
    }

    /// The Docker container of Instance `name` in this run's namespace.
    async fn container(&self, name: &str) -> String {
        names::instance_container(&self.server.cluster().await, &self.namespace, name)
    }

    fn url(&self, name: &str) -> String {
        format!("{}{V1}/namespaces/{}/instances/{name}", self.server.url, self.namespace)
    }

    async fn apply(&self, object: Value) {
        let response = self
            .http
            .post(format!("{}{V1}/apply", self.server.url))
            .json(&json!({"items": [object]}))
            .send()
            .await
            .expect("apply");
        assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
    }

    async fn get(&self, name: &str) -> Option<Value> {
        let response = self.http.get(self.url(name)).send().await.expect("get");
        response.status().is_success().then_some(response.json().await.expect("json"))
    }

    /// Waits until `check` holds for the object, returning it.
    async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(object) = self.get(name).await {
                if check(&object) {
                    return object;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}: {}",
                        serde_json::to_string_pretty(&object["status"]).unwrap_or_default()
                    );
                }
            } else if Instant::now() > deadline {
                panic!("timed out waiting for {what}: the object is gone");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(database) = self.server.database.take() {
            self.server.terminate();
            database.cleanup().await;
        }
        let left = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=minicloud.dev/test={}", self.run),
            "--format",
            "{{.Names}}",
        ]);
        assert!(left.is_empty(), "containers left behind: {left}");
    }
}

fn instance(namespace: &str, name: &str, env: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "image": "minicloud/web:local",
            "env": [{"name": "MODE", "value": env}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "resources": {"memory": "64Mi", "cpu": "500m"}
        }
    })
}

fn condition<'v>(object: &'v Value, type_: &str) -> Option<&'v str> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?["status"].as_str()
}

fn ready(object: &Value) -> bool {
    condition(object, "Ready") == Some("True")
        && object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

fn host_port(object: &Value) -> u16 {
    object["status"]["ports"][0]["hostPort"].as_u64().expect("a published port") as u16
}

async fn page(port: u16) -> Option<String> {
    reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?.text().await.ok()
}

async fn serves_within(port: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if page(port).await.is_some_and(|text| text.contains("Hello from minicloud")) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing served on 127.0.0.1:{port} within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_heal_update_and_go_away() {
    let harness = Harness::start().await;
    let started = Instant::now();
    harness.apply(instance(&harness.namespace, "web", "a")).await;
    let object = harness.wait_for("web", "Ready", ready).await;
    println!("apply → Ready: {:?}", started.elapsed());
    let port = host_port(&object);
    serves_within(port, Duration::from_secs(10)).await;
    assert_eq!(object["status"]["phase"], "Running");
    assert_eq!(object["metadata"]["finalizers"], json!(["minicloud.dev/container"]));
    let container = harness.container("web").await;
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &container]);
    let labels: Value = serde_json::from_str(&labels).expect("labels");
    for key in ["managed-by", "namespace", "kind", "name", "uid", "spec-hash"] {
        assert!(labels.get(format!("minicloud.dev/{key}")).is_some(), "label minicloud.dev/{key} missing: {labels}");
    }
    assert_eq!(docker(&["inspect", "-f", "{{.HostConfig.Memory}}", &container]), (64u64 << 20).to_string());
    // The Instance controller's watch took the change: its lag is measured.
    let metrics = harness.http.get(format!("{}/metrics", harness.server.url)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    let taken = metrics.lines().find_map(|line| {
        line.strip_prefix(r#"minicloud_watch_lag_seconds_count{watcher="controller",kind="Instance"} "#)?.parse().ok()
    });
    assert!(taken.is_some_and(|count: f64| count >= 1.0), "{metrics}");

    // Logs through the API: busybox httpd logs each request it served.
    let logs = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["logs", "web", "-n", &harness.namespace, "--tail", "5"])
        .env("CLOUD_SERVER", &harness.server.url)
        .output()
        .expect("cloud logs");
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("response:200"),
        "{}",
        String::from_utf8_lossy(&logs.stdout)
    );

    // Killed outside minicloud: replaced on the same host port; Ready goes False, then True.
    let watch = harness
        .http
        .get(format!("{}{V1}/namespaces/{}/instances", harness.server.url, harness.namespace))
        .query(&[("watch", "true"), ("resourceVersion", object["metadata"]["resourceVersion"].as_str().unwrap_or("0"))])
        .send()
        .await
        .expect("watch");
    let first_id = object["status"]["containerId"].as_str().unwrap_or("").to_owned();
    let killed = Instant::now();
    docker(&["rm", "-f", &container]);
    let replaced = harness
        .wait_for("web", "a replacement", |o| {
            ready(o) && o["status"]["containerId"].as_str() != Some(first_id.as_str())
        })
        .await;
    serves_within(port, Duration::from_secs(10)).await;
    println!("container removed → replacement serving: {:?}", killed.elapsed());
    assert_eq!(host_port(&replaced), port, "the endpoint stays valid");
    assert_eq!(replaced["status"]["restartCount"], 1);
    let mut readiness = Vec::new();
    let mut stream = watch.bytes_stream();
    let mut buffer = Vec::new();
    while readiness.last().map(String::as_str) != Some("True") || !readiness.contains(&"False".to_owned()) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch event")
            .expect("open")
            .expect("chunk");
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).expect("line");
            if let Some(state) = condition(&event["object"], "Ready") {
                if readiness.last().map(String::as_str) != Some(state) {
                    readiness.push(state.to_owned());
                }
            }
        }
    }
    assert!(readiness.windows(2).any(|pair| pair == ["False", "True"]), "Ready went False then True: {readiness:?}");

    // A spec change replaces the container.
    let before = replaced["status"]["containerId"].as_str().unwrap_or("").to_owned();
    harness.apply(instance(&harness.namespace, "web", "b")).await;
    let updated = harness
        .wait_for("web", "the new spec", |o| ready(o) && o["status"]["containerId"].as_str() != Some(before.as_str()))
        .await;
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(
        docker(&["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", &container])
            .lines()
            .find(|l| l.starts_with("MODE=")),
        Some("MODE=b")
    );
    let events: Value = harness
        .http
        .get(format!("{}{V1}/namespaces/{}/events", harness.server.url, harness.namespace))
        .query(&[("kind", "Instance"), ("name", "web")])
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let reasons: Vec<&str> =
        events["items"].as_array().expect("items").iter().filter_map(|e| e["reason"].as_str()).collect();
    for reason in ["Started", "Replacing"] {
        assert!(reasons.contains(&reason), "event {reason} missing: {reasons:?}");
    }
    // `docker rm -f` is seen as the container dying (Restarting) or, if the destroy event wins
    // the race, as it missing.
    assert!(reasons.contains(&"Restarting") || reasons.contains(&"ContainerMissing"), "{reasons:?}");

    // Delete: container and network gone, object gone.
    let response = harness.http.delete(harness.url("web")).send().await.expect("delete");
    assert!(response.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while harness.get("web").await.is_some() {
        assert!(Instant::now() < deadline, "the object should go once its container is removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(docker(&["ps", "-a", "--filter", &format!("name=^{container}$"), "--format", "{{.Names}}"]), "");
    let network = names::network(&harness.server.cluster().await, &harness.namespace, None);
    assert_eq!(
        docker(&["network", "ls", "--filter", &format!("name=^{network}$"), "--format", "{{.Name}}"]),
        "",
        "unused network removed"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_secrets_are_reported() {
    let harness = Harness::start().await;
    let mut missing_image = instance(&harness.namespace, "ghost", "a");
    missing_image["spec"]["image"] = json!("minicloud/not-built:1");
    harness.apply(missing_image).await;
    let object = harness
        .wait_for("ghost", "ImagePullFailed", |o| {
            o["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["reason"] == "ImagePullFailed"))
        })
        .await;
    assert_eq!(condition(&object, "Ready"), Some("False"));
    let message = object["status"]["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("scripts/local-images.sh"), "the message says what to do: {message}");

    let mut needs_secret = instance(&harness.namespace, "needy", "a");
    needs_secret["spec"]["env"] =
        json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]);
    harness.apply(needs_secret).await;
    harness
        .wait_for("needy", "SecretNotFound", |o| {
            o["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["reason"] == "SecretNotFound"))
        })
        .await;
    // Once the Secret exists, the Instance converges on its own (retry after backoff).
    harness
        .apply(json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": harness.namespace}, "spec": {"stringData": {"token": "s3cret"}}}))
        .await;
    harness.wait_for("needy", "Ready after the Secret appeared", ready).await;
    let env =
        docker(&["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", &harness.container("needy").await]);
    assert!(env.lines().any(|line| line == "TOKEN=s3cret"), "{env}");

    for name in ["ghost", "needy"] {
        harness.http.delete(harness.url(name)).send().await.expect("delete");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while harness.get("ghost").await.is_some() || harness.get("needy").await.is_some() {
        assert!(Instant::now() < deadline, "objects should go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.stop().await;
}

/// Orphan collection removes this control plane's containers that no object owns, and leaves
/// alone those of another minicloud installation sharing the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_collected_but_other_installations_are_left_alone() {
    let harness = Harness::start_with(&["--resync", "1s"]).await;
    let version: Value = harness
        .http
        .get(format!("{}/version", harness.server.url))
        .send()
        .await
        .expect("version")
        .json()
        .await
        .expect("json");
    let cluster = version["cluster"].as_str().expect("cluster id").to_owned();
    let start = |name: &str, cluster: &str| {
        let labels = [
            format!("minicloud.dev/test={}", harness.run),
            "minicloud.dev/managed-by=minicloud".to_owned(),
            format!("minicloud.dev/cluster={cluster}"),
            "minicloud.dev/kind=Instance".to_owned(),
            format!("minicloud.dev/namespace={}", harness.namespace),
            format!("minicloud.dev/name={name}"),
            "minicloud.dev/uid=no-such-object".to_owned(),
        ];
        let mut args = vec![
            "run".to_owned(),
            "-d".to_owned(),
            "--name".to_owned(),
            format!("mc-orphan-test-{name}-{}", &harness.run[10..]),
        ];
        for label in labels {
            args.push("--label".into());
            args.push(label);
        }
        args.push("minicloud/web:local".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args)
    };
    let ours = start("ours", &cluster);
    let theirs = start("theirs", "another-installation");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !docker(&["ps", "-aq", "--filter", &format!("id={ours}")]).is_empty() {
        assert!(Instant::now() < deadline, "the orphan of this cluster should be removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !docker(&["ps", "-aq", "--filter", &format!("id={theirs}")]).is_empty(),
        "another installation's container stays"
    );
    docker(&["rm", "-f", &theirs]);
    harness.stop().await;
}

/// Named volumes are mounted, and removed with the Instance unless marked `retain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_removed_with_the_instance_unless_retained() {
    let harness = Harness::start().await;
    let mut object = instance(&harness.namespace, "vol", "a");
    object["spec"]["volumes"] = json!([
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "keep", "mountPath": "/keep", "retain": true}
    ]);
    harness.apply(object).await;
    harness.wait_for("vol", "Ready", ready).await;
    let cluster = harness.server.cluster().await;
    let scratch = names::instance_volume(&cluster, &harness.namespace, "vol", "scratch");
    let keep = names::instance_volume(&cluster, &harness.namespace, "vol", "keep");
    let container = harness.container("vol").await;
    let mounts = docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}:{{.Destination}} {{end}}", &container]);
    assert!(mounts.contains(&format!("{scratch}:/scratch")) && mounts.contains(&format!("{keep}:/keep")), "{mounts}");
    harness.http.delete(harness.url("vol")).send().await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while harness.get("vol").await.is_some() {
        assert!(Instant::now() < deadline, "the object should go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let volumes = docker(&["volume", "ls", "-q"]);
    let has = |name: &str| volumes.lines().any(|line| line == name);
    let (scratch_left, keep_left) = (has(&scratch), has(&keep));
    docker(&["volume", "rm", "-f", &keep]);
    docker(&["volume", "rm", "-f", &scratch]);
    assert!(!scratch_left, "the volume without retain is removed");
    assert!(keep_left, "the retained volume stays");
    harness.stop().await;
}
