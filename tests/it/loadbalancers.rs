//! The LoadBalancer controller with real HAProxy and real Docker, inside the real `cloud
//! server`: round robin over Instances, health read back, targets joining and leaving and
//! structural reloads under load with no failed request, refusals of bad input, and adoption
//! after a crash. Needs `minicloud/web:local` and `minicloud/haproxy:local`
//! (`scripts/local-images.sh web haproxy`).
//!
//! Every container a test makes carries `minicloud.dev/test=lb-...`; leftovers of a crashed
//! run are removed at the start.

use std::time::{Duration, Instant};

use crate::common::cluster::{condition, endpoint, serving, whoami, Harness, Load};
use crate::common::docker::docker;
use crate::common::TestDb;
use serde_json::{json, Value};

/// Runs of this file are marked `minicloud.dev/test=lb-...`.
const PREFIX: &str = "lb";

fn web_lb_spec() -> Value {
    json!({
        "listeners": [{"name": "http", "targetPort": 8080}],
        "targets": {"selector": {"matchLabels": {"app": "web"}}},
        "healthCheck": {"path": "/", "intervalMillis": 300, "healthyThreshold": 1, "unhealthyThreshold": 2}
    })
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
    let harness = Harness::start_on(PREFIX, database, &[]).await;
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
    docker(&["stop", "-t", "0", &harness.instance_container("web-2").await]);
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
    let labels = format!(r#"{{namespace="{}",name="web",target="web-1"}}"#, harness.namespace);
    let series = format!("minicloud_lb_requests_total{labels}");
    let counted = harness.metric(&series).await.unwrap_or_else(|| panic!("{series} missing"));
    assert!(counted >= 15.0, "web-1 served at least 15 requests, counted {counted}");
    assert!(harness.metric(&format!("minicloud_lb_target_up{labels}")).await.is_some());
    assert!(harness.metric(r#"minicloud_reconciles_total{kind="LoadBalancer"}"#).await.is_some_and(|n| n > 0.0));

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

#[tokio::test]
async fn membership_changes_and_reloads_under_load_fail_no_request() {
    let harness = Harness::start(PREFIX).await;
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
    Load::assert_none_failed(ok, &failed, 200, "during 50 membership changes and 20 reloads");
    let events = harness.events("LoadBalancer", "web").await;
    assert!(events.iter().filter(|e| e.starts_with("Reloaded")).count() >= 1, "{events:?}");
}

#[tokio::test]
async fn bad_input_is_refused_and_the_last_good_config_keeps_serving() {
    let harness = Harness::start(PREFIX).await;
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
    let mut harness = Harness::start_on(PREFIX, database, &[]).await;
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
    let harness = Harness::start_on(PREFIX, TestDb::sqlite().await, &["--haproxy-image", strict_haproxy_image()]).await;
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

/// Targets removed abruptly (`docker rm -f`) under a request loop fail no request: a request
/// that meets the vanishing container is retried on another target. A target that is DOWN
/// leaves at once when it is no longer selected (it never drains), the load balancer can then
/// be deleted, and the namespace's network goes with its last user.
#[tokio::test]
async fn targets_that_vanish_or_are_down_fail_no_request_and_leave_at_once() {
    let harness = Harness::start(PREFIX).await;
    let web = json!({"app": "web"});
    harness
        .apply(vec![
            harness.instance("web-1", web.clone(), json!({})),
            harness.instance("web-2", web.clone(), json!({})),
            harness.instance("web-3", web.clone(), json!({"restartPolicy": "Never"})),
            // The default health check (DOWN after three failed checks 2 s apart): requests
            // keep meeting a vanished target for seconds.
            harness.load_balancer(
                "web",
                json!({"listeners": [{"name": "http", "targetPort": 8080}], "targets": {"selector": {"matchLabels": {"app": "web"}}}}),
            ),
        ])
        .await;
    let lb = harness.wait_for("loadbalancers", "web", "3/3 healthy", |o| serving(o, 3, 3)).await;
    let load = Load::start(&endpoint(&lb), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        // Removed outside minicloud: the controller replaces the container; the load balancer
        // follows; in between, requests that met it go elsewhere.
        let before = harness.get("instances", "web-1").await.expect("web-1")["status"]["containerId"].clone();
        docker(&["rm", "-f", &harness.instance_container("web-1").await]);
        harness
            .wait_for("instances", "web-1", "a new container", |o| {
                o["status"]["containerId"] != before && condition(o, "Ready") == Some(("True", "Running"))
            })
            .await;
        harness.wait_for("loadbalancers", "web", "web-1 back", |o| serving(o, 3, 3)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, failed) = load.finish().await;
    Load::assert_none_failed(ok, &failed, 100, "while a target was removed three times");

    // web-3 stops for good (restartPolicy Never): DOWN. Unselected, it leaves at once.
    docker(&["stop", "-t", "0", &harness.instance_container("web-3").await]);
    harness
        .wait_for("loadbalancers", "web", "web-3 DOWN", |o| {
            o["status"]["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "web-3" && t["state"] == "DOWN"))
        })
        .await;
    let unselected = Instant::now();
    harness.apply(vec![harness.instance("web-3", json!({"app": "spare"}), json!({"restartPolicy": "Never"}))]).await;
    harness
        .wait_for_within("loadbalancers", "web", "web-3 gone", Duration::from_secs(10), |o| {
            o["status"]["targets"].as_array().is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["name"] != "web-3"))
        })
        .await;
    assert!(unselected.elapsed() < Duration::from_secs(5), "left after {:?}", unselected.elapsed());

    // Make web-2 DOWN too, then delete the Instances first and the load balancer last: it
    // goes, and so does the namespace's network once nothing uses it.
    docker(&["stop", "-t", "0", &harness.instance_container("web-2").await]);
    for name in ["web-1", "web-2", "web-3"] {
        harness.http.delete(harness.url("instances", name)).send().await.expect("delete");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !harness.list("instances").await.is_empty() {
        assert!(Instant::now() < deadline, "instances deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    harness.http.delete(harness.url("loadbalancers", "web")).send().await.expect("delete lb");
    let deadline = Instant::now() + Duration::from_secs(30);
    while harness.get("loadbalancers", "web").await.is_some() {
        assert!(Instant::now() < deadline, "the load balancer is deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(harness.lb_containers().is_empty(), "{:?}", harness.lb_containers());
    let network =
        minicloud_controllers::docker::names::network(&harness.server().cluster().await, &harness.namespace, None);
    assert_eq!(
        docker(&["network", "ls", "-q", "--filter", &format!("name=^{network}$")]),
        "",
        "the network went with its last user"
    );
    harness.finish().await;
}
