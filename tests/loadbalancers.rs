//! The LoadBalancer controller with real HAProxy and real Docker, inside the real `cloud
//! server`: round robin over Instances, health read back, targets joining and leaving and
//! structural reloads under load with no failed request, refusals of bad input, and adoption
//! after a crash. Needs `minicloud/web:local` and `minicloud/haproxy:local`
//! (`scripts/local-images.sh web haproxy`).
//!
//! Every container a test makes carries `minicloud.dev/test=lb-...`; leftovers of a crashed
//! run are removed at the start.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::docker::{docker, remove_marked};
use common::server::TestServer;
use common::TestDb;
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";

fn remove_leftovers_of_earlier_runs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| remove_marked(|run| run.starts_with("lb-")));
}

struct Harness {
    server: Option<TestServer>,
    /// `cloud server` arguments beyond the harness's own.
    extra_arguments: Vec<String>,
    run: String,
    namespace: String,
    data_dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Harness {
    /// Stops the server first (its controllers would recreate what is removed), then removes
    /// every container and network of this run, passing or failing.
    fn drop(&mut self) {
        drop(self.server.take());
        let run = self.run.clone();
        remove_marked(|label| label == run);
    }
}

impl Harness {
    /// A server with controllers on a fresh SQLite store.
    async fn start() -> Harness {
        Harness::start_on(TestDb::sqlite().await, &[]).await
    }

    /// A server with controllers on `database`, with extra `cloud server` arguments.
    async fn start_on(database: TestDb, extra_arguments: &[&str]) -> Harness {
        remove_leftovers_of_earlier_runs();
        let run = format!("lb-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let namespace = format!("t{}", &run[3..11]);
        let data_dir = tempfile::tempdir().expect("data dir");
        let extra_arguments = extra_arguments.iter().map(|a| a.to_string()).collect();
        let mut harness =
            Harness { server: None, extra_arguments, run, namespace, data_dir, http: reqwest::Client::new() };
        harness.server = Some(harness.start_server(database).await);
        harness
    }

    async fn start_server(&self, database: TestDb) -> TestServer {
        let label = format!("minicloud.dev/test={}", self.run);
        let data_dir = self.data_dir.path().display().to_string();
        let mut arguments =
            vec!["--container-label", label.as_str(), "--data-dir", data_dir.as_str(), "--resync", "30s"];
        arguments.extend(self.extra_arguments.iter().map(String::as_str));
        TestServer::start(database, &arguments).await
    }

    /// Stops the server and drops its database (a PostgreSQL one too); `Drop` removes the
    /// containers.
    async fn finish(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("a running server")
    }

    fn url(&self, plural: &str, name: &str) -> String {
        format!("{}{V1}/namespaces/{}/{plural}/{name}", self.server().url, self.namespace)
    }

    /// Applies objects; returns the status code and body.
    async fn try_apply(&self, objects: Vec<Value>) -> (u16, Value) {
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

    async fn apply(&self, objects: Vec<Value>) {
        let (status, body) = self.try_apply(objects).await;
        assert!((200..300).contains(&status), "apply failed: {body}");
    }

    async fn get(&self, plural: &str, name: &str) -> Option<Value> {
        let response = self.http.get(self.url(plural, name)).send().await.expect("get");
        response.status().is_success().then_some(response.json().await.expect("json"))
    }

    async fn wait_for(&self, plural: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let object = self.get(plural, name).await;
            if let Some(object) = &object {
                if check(object) {
                    return object.clone();
                }
            }
            if Instant::now() > deadline {
                let status = object.map(|o| o["status"].clone()).unwrap_or(Value::Null);
                panic!("timed out waiting for {what}: {}", serde_json::to_string_pretty(&status).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn instance(&self, name: &str, labels: Value, extra: Value) -> Value {
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

    fn load_balancer(&self, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "minicloud.dev/v1", "kind": "LoadBalancer",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec
        })
    }

    /// The events of one object, as `REASON: message` lines.
    async fn events(&self, kind: &str, name: &str) -> Vec<String> {
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

    fn lb_containers(&self) -> Vec<String> {
        let listed = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=minicloud.dev/test={}", self.run),
            "--filter",
            "label=minicloud.dev/kind=LoadBalancer",
            "--format",
            "{{.Names}}",
        ]);
        listed.lines().map(str::to_owned).filter(|name| !name.is_empty()).collect()
    }
}

fn web_lb_spec() -> Value {
    json!({
        "listeners": [{"name": "http", "targetPort": 8080}],
        "targets": {"selector": {"matchLabels": {"app": "web"}}},
        "healthCheck": {"path": "/", "intervalMillis": 300, "healthyThreshold": 1, "unhealthyThreshold": 2}
    })
}

fn condition<'v>(object: &'v Value, type_: &str) -> Option<(&'v str, &'v str)> {
    let found = object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((found["status"].as_str()?, found["reason"].as_str()?))
}

/// Current (observedGeneration) and Ready with `healthy` of `total` targets UP.
fn serving(object: &Value, healthy: usize, total: usize) -> bool {
    let targets = object["status"]["targets"].as_array().cloned().unwrap_or_default();
    let up = targets.iter().filter(|t| t["state"] == "UP").count();
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
        && condition(object, "Ready").map(|c| c.0) == Some("True")
        && up == healthy
        && targets.len() == total
}

fn endpoint(object: &Value) -> String {
    object["status"]["endpoints"]["http"].as_str().expect("an endpoint").to_owned()
}

async fn whoami(http: &reqwest::Client, endpoint: &str) -> Result<String, String> {
    let response = http
        .get(format!("{endpoint}/cgi-bin/whoami"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|error| error.to_string())?;
    if status.is_success() {
        Ok(body.trim().to_owned())
    } else {
        Err(format!("{status}: {body}"))
    }
}

#[tokio::test]
async fn round_robin_health_down_and_up_again_on_sqlite() {
    round_robin_health_down_and_up_again(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn round_robin_health_down_and_up_again_on_postgres() {
    round_robin_health_down_and_up_again(TestDb::postgres().await).await;
}

async fn round_robin_health_down_and_up_again(database: TestDb) {
    let harness = Harness::start_on(database, &[]).await;
    let web = json!({"app": "web"});
    harness
        .apply(vec![
            harness.instance("web-1", web.clone(), json!({})),
            harness.instance("web-2", web.clone(), json!({"restartPolicy": "Never"})),
            harness.load_balancer("web", web_lb_spec()),
        ])
        .await;
    let lb = harness.wait_for("loadbalancers", "web", "2/2 healthy", |o| serving(o, 2, 2)).await;
    let endpoint = endpoint(&lb);
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");

    // Round robin: consecutive requests alternate between the two containers.
    let http = reqwest::Client::new();
    let mut served = Vec::new();
    for _ in 0..10 {
        served.push(whoami(&http, &endpoint).await.expect("served"));
    }
    let distinct: std::collections::BTreeSet<&String> = served.iter().collect();
    assert_eq!(distinct.len(), 2, "both targets serve: {served:?}");
    assert!(served.windows(2).all(|pair| pair[0] != pair[1]), "round robin alternates: {served:?}");

    // `cloud get lb` shows it.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["--server", &harness.server().url, "get", "lb", "-n", &harness.namespace])
        .output()
        .expect("cloud get lb");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("ENDPOINT") && table.contains("2/2") && table.contains("RoundRobin"), "{table}");

    // A stopped target goes DOWN within interval × unhealthy threshold (plus a poll), and no
    // request fails from then on.
    let stopped_at = Instant::now();
    docker(&["stop", "-t", "0", &format!("mc-{}-web-2", harness.namespace)]);
    harness
        .wait_for("loadbalancers", "web", "web-2 DOWN", |o| {
            o["status"]["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "web-2" && t["state"] == "DOWN"))
        })
        .await;
    let noticed = stopped_at.elapsed();
    assert!(noticed < Duration::from_secs(5), "DOWN after {noticed:?}");
    for _ in 0..20 {
        assert!(whoami(&http, &endpoint).await.is_ok(), "a request failed after the target went DOWN");
    }
    let lb = harness.get("loadbalancers", "web").await.expect("lb");
    assert_eq!(condition(&lb, "TargetsHealthy"), Some(("False", "TargetsUnhealthy")));
    assert_eq!(condition(&lb, "Ready"), Some(("True", "Serving")), "one healthy target still serves");
    let events = harness.events("LoadBalancer", "web").await;
    assert!(events.iter().any(|e| e.starts_with("TargetDown: target web-2")), "{events:?}");

    // Replaced (a changed spec makes a new container): UP again.
    harness
        .apply(vec![harness.instance(
            "web-2",
            web.clone(),
            json!({"restartPolicy": "Never", "env": [{"name": "V", "value": "2"}]}),
        )])
        .await;
    harness.wait_for("loadbalancers", "web", "web-2 UP again", |o| serving(o, 2, 2)).await;
    let events = harness.events("LoadBalancer", "web").await;
    assert!(events.iter().any(|e| e.starts_with("TargetUp: target web-2")), "{events:?}");

    // /metrics counts the requests per target.
    let metrics = http.get(format!("{}/metrics", harness.server().url)).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    let series =
        format!(r#"minicloud_lb_requests_total{{namespace="{}",name="web",target="web-1"}}"#, harness.namespace);
    let counted: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert!(counted >= 15.0, "web-1 served at least 15 requests, counted {counted}");
    assert!(text.contains("minicloud_lb_target_up{"), "{text}");
    assert!(text.contains(r#"minicloud_reconciles_total{kind="LoadBalancer"}"#), "{text}");

    // Deletion removes the container and the directory.
    harness.http.delete(harness.url("loadbalancers", "web")).send().await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while harness.get("loadbalancers", "web").await.is_some() {
        assert!(Instant::now() < deadline, "the load balancer was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(harness.lb_containers().is_empty(), "{:?}", harness.lb_containers());
    let left = std::fs::read_dir(harness.data_dir.path().join("lb")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the directory is removed");
    harness.finish().await;
}

/// A bounded request loop through the load balancer (127.0.0.1 only) that counts failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(endpoint: &str, workers: usize) -> Load {
        let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::default());
        let workers = (0..workers)
            .map(|_| {
                let (stop, ok, failed): (_, _, Arc<std::sync::Mutex<Vec<String>>>) =
                    (stop.clone(), ok.clone(), Arc::clone(&failed));
                let endpoint = endpoint.to_owned();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    // Bounded: ends by itself after 10 minutes even if never told to stop.
                    let deadline = Instant::now() + Duration::from_secs(600);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match whoami(&http, &endpoint).await {
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

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        let failed = self.failed.lock().expect("lock").clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

#[tokio::test]
async fn membership_changes_and_reloads_under_load_fail_no_request() {
    let harness = Harness::start().await;
    let web = json!({"app": "web"});
    let spare = json!({"app": "spare"});
    let mut objects: Vec<Value> =
        (1..=2).map(|i| harness.instance(&format!("web-{i}"), web.clone(), json!({}))).collect();
    objects.extend((1..=3).map(|i| harness.instance(&format!("extra-{i}"), spare.clone(), json!({}))));
    objects.push(harness.load_balancer("web", web_lb_spec()));
    harness.apply(objects).await;
    let lb = harness.wait_for("loadbalancers", "web", "2/2 healthy", |o| serving(o, 2, 2)).await;
    for i in 1..=3 {
        harness
            .wait_for("instances", &format!("extra-{i}"), "an address", |o| o["status"]["address"].is_string())
            .await;
    }
    let load = Load::start(&endpoint(&lb), 4);

    // 50 membership changes: extra Instances join (relabelled app=web) and leave again.
    for change in 0..50 {
        let name = format!("extra-{}", change % 3 + 1);
        let joining = (change / 3) % 2 == 0;
        let labels = if joining { web.clone() } else { spare.clone() };
        harness.apply(vec![harness.instance(&name, labels, json!({}))]).await;
        harness
            .wait_for("loadbalancers", "web", "the change applied", |o| {
                let present = o["status"]["targets"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == name));
                present == joining
            })
            .await;
    }
    // 20 structural changes: algorithm and health-check interval, each a validated reload.
    for change in 0..20 {
        let mut spec = web_lb_spec();
        spec["algorithm"] = json!(if change % 2 == 0 { "LeastConn" } else { "RoundRobin" });
        spec["healthCheck"]["intervalMillis"] = json!(300 + change * 10);
        harness.apply(vec![harness.load_balancer("web", spec)]).await;
        harness
            .wait_for("loadbalancers", "web", "the reload", |o| {
                o["status"]["observedGeneration"] == o["metadata"]["generation"]
                    && condition(o, "ConfigApplied") == Some(("True", "Applied"))
            })
            .await;
    }
    let (ok, failed) = load.finish().await;
    eprintln!("{ok} requests succeeded during 50 membership changes and 20 reloads; {} failed", failed.len());
    assert!(ok > 200, "the load ran ({ok} requests)");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    let events = harness.events("LoadBalancer", "web").await;
    assert!(events.iter().filter(|e| e.starts_with("Reloaded")).count() >= 1, "{events:?}");
}

#[tokio::test]
async fn bad_input_is_refused_and_the_last_good_config_keeps_serving() {
    let harness = Harness::start().await;
    let web = json!({"app": "web"});
    harness
        .apply(vec![harness.instance("web-1", web.clone(), json!({})), harness.load_balancer("web", web_lb_spec())])
        .await;
    let lb = harness.wait_for("loadbalancers", "web", "1/1 healthy", |o| serving(o, 1, 1)).await;
    let endpoint = endpoint(&lb);
    let generation = lb["metadata"]["generation"].clone();

    let cases = [
        (json!({"listeners": [{"name": "http", "port": 70000, "targetPort": 8080}]}), "listeners[0].port"),
        (
            json!({"listeners": [{"name": "http", "targetPort": 8080}, {"name": "http", "targetPort": 8081}]}),
            "listeners[1].name",
        ),
        (json!({"healthCheck": {"path": "/ok\n    server evil 10.0.0.1:80 check"}}), "healthCheck.path"),
        (json!({"healthCheck": {"path": "/ok # a comment"}}), "healthCheck.path"),
        (json!({"listeners": [{"name": "http\nfrontend evil", "targetPort": 8080}]}), "listeners[0].name"),
    ];
    for (change, field) in cases {
        let mut spec = web_lb_spec();
        if let (Some(spec), Some(change)) = (spec.as_object_mut(), change.as_object()) {
            spec.extend(change.clone());
        }
        let (status, body) = harness.try_apply(vec![harness.load_balancer("web", spec)]).await;
        assert!(status >= 400, "{change} must be refused: {body}");
        assert!(body.to_string().contains(field), "the error names {field}: {body}");
        assert!(whoami(&reqwest::Client::new(), &endpoint).await.is_ok(), "still serving after {change}");
    }
    let lb = harness.get("loadbalancers", "web").await.expect("lb");
    assert_eq!(lb["metadata"]["generation"], generation, "nothing was applied");
    let config = std::fs::read_dir(harness.data_dir.path().join("lb"))
        .expect("lb dir")
        .flatten()
        .map(|entry| std::fs::read_to_string(entry.path().join("haproxy.cfg")).expect("config"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!config.contains("evil"), "{config}");

    // A selector that matches nothing: NoTargets.
    let mut spec = web_lb_spec();
    spec["targets"] = json!({"selector": {"matchLabels": {"app": "nothing"}}});
    harness.apply(vec![harness.load_balancer("empty", spec)]).await;
    harness
        .wait_for("loadbalancers", "empty", "NoTargets", |o| condition(o, "Ready") == Some(("False", "NoTargets")))
        .await;

    // An Instance on another network matches but is not routed to.
    harness.apply(vec![harness.instance("elsewhere", web.clone(), json!({"network": "backend"}))]).await;
    let lb = harness
        .wait_for("loadbalancers", "web", "OtherNetwork", |o| {
            condition(o, "TargetsOnNetwork") == Some(("False", "OtherNetwork"))
        })
        .await;
    let targets: Vec<&str> =
        lb["status"]["targets"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(targets, ["web-1"], "the Instance on network backend is not a target");
    let events = harness.events("LoadBalancer", "web").await;
    assert!(events.iter().any(|e| e.starts_with("OtherNetwork:") && e.contains("elsewhere")), "{events:?}");
}

#[tokio::test]
async fn a_killed_control_plane_adopts_its_load_balancer_on_sqlite() {
    a_killed_control_plane_adopts_its_load_balancer_and_never_duplicates_it(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn a_killed_control_plane_adopts_its_load_balancer_on_postgres() {
    a_killed_control_plane_adopts_its_load_balancer_and_never_duplicates_it(TestDb::postgres().await).await;
}

async fn a_killed_control_plane_adopts_its_load_balancer_and_never_duplicates_it(database: TestDb) {
    let mut harness = Harness::start_on(database, &[]).await;
    let web = json!({"app": "web"});
    harness
        .apply(vec![
            harness.instance("web-1", web.clone(), json!({})),
            harness.instance("web-2", json!({"app": "spare"}), json!({})),
            harness.load_balancer("web", web_lb_spec()),
        ])
        .await;
    let lb = harness.wait_for("loadbalancers", "web", "1/1 healthy", |o| serving(o, 1, 1)).await;
    let (url, container) = (endpoint(&lb), lb["status"]["containerId"].clone());
    harness.wait_for("instances", "web-2", "an address", |o| o["status"]["address"].is_string()).await;

    // A change in flight, then SIGKILL.
    harness.apply(vec![harness.instance("web-2", web.clone(), json!({}))]).await;
    let database = harness.server.take().expect("server").crash();
    assert!(whoami(&reqwest::Client::new(), &url).await.is_ok(), "HAProxy serves without the control plane");

    harness.server = Some(harness.start_server(database).await);
    let lb = harness.wait_for("loadbalancers", "web", "2/2 healthy after restart", |o| serving(o, 2, 2)).await;
    assert_eq!(lb["status"]["containerId"], container, "adopted, not replaced");
    assert_eq!(endpoint(&lb), url, "same endpoint");
    assert_eq!(harness.lb_containers().len(), 1, "{:?}", harness.lb_containers());
    let http = reqwest::Client::new();
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..6 {
        served.insert(whoami(&http, &url).await.expect("served"));
    }
    assert_eq!(served.len(), 2, "{served:?}");
    harness.finish().await;
}

/// An HAProxy image whose `haproxy -c` refuses any configuration with `balance leastconn`,
/// as an HAProxy version without a feature would: the real binary behind a wrapper. Built
/// from the two local images, no registry needed.
fn strict_haproxy_image() -> &'static str {
    const IMAGE: &str = "minicloud/haproxy-strict:test";
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let context = tempfile::tempdir().expect("build context");
        let wrapper = r#"#!/bin/busybox sh
# A stricter HAProxy for tests: refuses `balance leastconn` when validating (-c).
for argument in "$@"; do config="$argument"; done
case " $* " in
*" -c "*)
    if /bin/busybox grep -q "balance leastconn" "$config"; then
        echo "[ALERT] (test image) 'balance leastconn' is not supported by this HAProxy" >&2
        exit 1
    fi ;;
esac
exec /usr/sbin/haproxy.real "$@"
"#;
        let dockerfile = "FROM minicloud/haproxy:local\n\
            COPY --from=minicloud/web:local /bin/busybox /bin/busybox\n\
            COPY --from=minicloud/haproxy:local /usr/sbin/haproxy /usr/sbin/haproxy.real\n\
            COPY haproxy /usr/sbin/haproxy\n";
        std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
        std::fs::write(context.path().join("haproxy"), wrapper).expect("wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(context.path().join("haproxy"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let output = std::process::Command::new("docker")
            .args(["build", "-q", "--label", "minicloud.dev/image=test", "-t", IMAGE])
            .arg(context.path())
            .output()
            .expect("docker build");
        assert!(output.status.success(), "building {IMAGE}: {}", String::from_utf8_lossy(&output.stderr));
    });
    IMAGE
}

#[tokio::test]
async fn a_config_haproxy_refuses_is_never_installed_and_the_last_good_one_keeps_serving() {
    let harness = Harness::start_on(TestDb::sqlite().await, &["--haproxy-image", strict_haproxy_image()]).await;
    let web = json!({"app": "web"});
    harness
        .apply(vec![
            harness.instance("web-1", web.clone(), json!({})),
            harness.instance("web-2", web.clone(), json!({})),
            harness.instance("web-3", json!({"app": "spare"}), json!({})),
            harness.load_balancer("web", web_lb_spec()),
        ])
        .await;
    let lb = harness.wait_for("loadbalancers", "web", "2/2 healthy", |o| serving(o, 2, 2)).await;
    let (endpoint, container) = (endpoint(&lb), lb["status"]["containerId"].clone());
    let directory = std::fs::read_dir(harness.data_dir.path().join("lb"))
        .expect("lb dir")
        .flatten()
        .next()
        .expect("the load balancer's directory")
        .path();
    let good = std::fs::read_to_string(directory.join("haproxy.cfg")).expect("config");
    assert!(good.contains("balance roundrobin"), "{good}");

    // LeastConn passes minicloud's validation but this HAProxy's `-c` refuses it.
    let mut spec = web_lb_spec();
    spec["algorithm"] = json!("LeastConn");
    harness.apply(vec![harness.load_balancer("web", spec)]).await;
    let lb = harness
        .wait_for("loadbalancers", "web", "ConfigInvalid", |o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && condition(o, "ConfigApplied") == Some(("False", "ConfigInvalid"))
        })
        .await;
    let message = lb["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "ConfigApplied"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("'balance leastconn' is not supported"), "HAProxy's complaint is shown: {message}");
    assert_eq!(std::fs::read_to_string(directory.join("haproxy.cfg")).expect("config"), good, "never installed");
    assert_eq!(lb["status"]["containerId"], container, "the container is kept");

    // The last good configuration keeps serving, round robin, and membership still works.
    let http = reqwest::Client::new();
    let mut served = Vec::new();
    for _ in 0..6 {
        served.push(whoami(&http, &endpoint).await.expect("served by the last good configuration"));
    }
    assert!(served.windows(2).all(|pair| pair[0] != pair[1]), "still round robin: {served:?}");
    harness.apply(vec![harness.instance("web-3", web.clone(), json!({}))]).await;
    harness.wait_for("loadbalancers", "web", "web-3 joins", |o| serving(o, 3, 3)).await;
    assert_eq!(std::fs::read_to_string(directory.join("haproxy.cfg")).expect("config"), good, "still not installed");
    let lb = harness.get("loadbalancers", "web").await.expect("lb");
    assert_eq!(condition(&lb, "ConfigApplied"), Some(("False", "ConfigInvalid")), "the condition still says why");
    let invalid = harness.events("LoadBalancer", "web").await.iter().filter(|e| e.starts_with("ConfigInvalid")).count();
    assert_eq!(invalid, 1, "one event for one bad configuration, not one per round");

    // A load balancer whose very first configuration is refused never starts.
    let mut spec = web_lb_spec();
    spec["algorithm"] = json!("LeastConn");
    harness.apply(vec![harness.load_balancer("first", spec)]).await;
    let first = harness
        .wait_for("loadbalancers", "first", "ConfigInvalid", |o| {
            condition(o, "Ready").map(|c| c.1) == Some("ConfigInvalid")
        })
        .await;
    assert!(first["status"]["containerId"].is_null(), "{}", first["status"]);
    assert_eq!(harness.lb_containers().len(), 1, "{:?}", harness.lb_containers());

    // Back to what is installed: ConfigApplied again.
    harness.apply(vec![harness.load_balancer("web", web_lb_spec())]).await;
    harness
        .wait_for("loadbalancers", "web", "ConfigApplied", |o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && condition(o, "ConfigApplied") == Some(("True", "Applied"))
        })
        .await;
    assert!(whoami(&http, &endpoint).await.is_ok());
    harness.finish().await;
}
