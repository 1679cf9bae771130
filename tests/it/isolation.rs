//! Namespaces and installations isolated down to Docker, with the real engine and the real
//! `cloud server`: names that concatenate alike, two control planes on one engine, volumes and
//! containers that are someone else's, databases that must not adopt foreign data, an
//! interrupted first start of every engine, containers of an earlier version taken over with
//! their data, and the engine calls an idle object costs.

use std::time::{Duration, Instant};

use crate::common::cluster::{condition, Harness};
use crate::common::docker::docker;
use minicloud_controllers::docker::names;
use serde_json::{json, Value};

const PREFIX: &str = "isolation";

fn ready(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
        && condition(object, "Ready").map(|c| c.0) == Some("True")
}

fn with_namespace(mut object: Value, namespace: &str) -> Value {
    object["metadata"]["namespace"] = json!(namespace);
    object
}

fn database(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "ManagedDatabase",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec
    })
}

fn object_url(harness: &Harness, namespace: &str, plural: &str, name: &str) -> String {
    format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}", harness.server().url)
}

async fn get_in(harness: &Harness, namespace: &str, plural: &str, name: &str) -> Option<Value> {
    let response = harness.http.get(object_url(harness, namespace, plural, name)).send().await.expect("get");
    response.status().is_success().then_some(response.json().await.expect("json"))
}

async fn wait_in(
    harness: &Harness,
    namespace: &str,
    plural: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let object = get_in(harness, namespace, plural, name).await;
        if let Some(object) = &object {
            if check(object) {
                return object.clone();
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {namespace}/{name}: {what}: {object:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delete_in(harness: &Harness, namespace: &str, plural: &str, name: &str) {
    harness.http.delete(object_url(harness, namespace, plural, name)).send().await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_in(harness, namespace, plural, name).await.is_some() {
        assert!(Instant::now() < deadline, "{namespace}/{name} was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn container_id(status: &Value) -> String {
    status["status"]["containerId"].as_str().expect("a container").to_owned()
}

/// Writes `text` into `/data/owner` of a running container.
fn write_marker(container: &str, text: &str) {
    docker(&["exec", container, "sh", "-c", &format!("echo {text} > /data/owner")]);
}

fn read_marker(container: &str) -> String {
    docker(&["exec", container, "cat", "/data/owner"])
}

/// Namespace `N` with Instance `b-web` and namespace `N-b` with `web` got one container name
/// before; likewise networks (`v-default` in `N` and the default of `N-v`) and volumes. Each
/// gets its own now, and neither controller touches the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_whose_names_concatenate_alike_stay_apart() {
    let harness = Harness::start(PREFIX).await;
    let first = harness.namespace.clone();
    let second = format!("{first}-b");
    let third = format!("{first}-v");
    let volume = json!({"volumes": [{"name": "data", "mountPath": "/data"}]});
    let mut on_v_default = volume.clone();
    on_v_default["network"] = json!("v-default");
    harness
        .apply(vec![
            harness.instance("b-web", json!({}), volume.clone()),
            with_namespace(harness.instance("web", json!({}), volume.clone()), &second),
            harness.instance("netuser", json!({}), on_v_default),
            with_namespace(harness.instance("web", json!({}), volume), &third),
        ])
        .await;
    let a = wait_in(&harness, &first, "instances", "b-web", "Ready", ready).await;
    let b = wait_in(&harness, &second, "instances", "web", "Ready", ready).await;
    let n = wait_in(&harness, &first, "instances", "netuser", "Ready", ready).await;
    let v = wait_in(&harness, &third, "instances", "web", "Ready", ready).await;
    let (a_id, b_id) = (container_id(&a), container_id(&b));
    assert_ne!(a_id, b_id, "one container each");

    // Separate volumes: what one writes the other does not see.
    write_marker(&a_id, "first");
    write_marker(&b_id, "second");
    assert_eq!((read_marker(&a_id), read_marker(&b_id)), ("first".to_owned(), "second".to_owned()));
    // Separate networks: `v-default` of the first namespace is not the second's default.
    let networks =
        |id: &str| docker(&["inspect", "-f", "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}", id]);
    assert_ne!(networks(&container_id(&n)), networks(&container_id(&v)));
    // Every volume and network carries its owner's labels.
    let cluster = harness.server().cluster().await;
    let volume_name = names::instance_volume(&cluster, &first, "b-web", "data");
    let labels = docker(&["volume", "inspect", "-f", "{{json .Labels}}", &volume_name]);
    let labels: Value = serde_json::from_str(&labels).expect("volume labels");
    assert_eq!(labels["minicloud.dev/namespace"], json!(first), "{labels}");
    assert_eq!(labels["minicloud.dev/name"], json!("b-web"), "{labels}");

    // Nobody fights over a name: the containers stay what they are across resyncs.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let a = get_in(&harness, &first, "instances", "b-web").await.expect("a");
    let b = get_in(&harness, &second, "instances", "web").await.expect("b");
    assert_eq!((container_id(&a), container_id(&b)), (a_id.clone(), b_id.clone()), "no container was replaced");
    assert_eq!((a["status"]["restartCount"].as_u64(), b["status"]["restartCount"].as_u64()), (Some(0), Some(0)));

    // Deleting one leaves the other's container and data.
    delete_in(&harness, &first, "instances", "b-web").await;
    assert_eq!(read_marker(&b_id), "second");
    harness.finish().await;
}

/// Two control planes (two stores) on one engine, each with Instance `same` in the same
/// namespace: both run, neither replaces the other's container, each removes only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_on_one_engine_leave_each_other_alone() {
    let one = Harness::start(PREFIX).await;
    let mut two = Harness::start(PREFIX).await;
    two.namespace = one.namespace.clone();
    one.apply(vec![one.instance("same", json!({}), json!({}))]).await;
    two.apply(vec![two.instance("same", json!({}), json!({}))]).await;
    let first = container_id(&one.wait_for("instances", "same", "Ready", ready).await);
    let second = container_id(&two.wait_for("instances", "same", "Ready", ready).await);
    assert_ne!(first, second);
    tokio::time::sleep(Duration::from_secs(35)).await;
    let first_now = one.get("instances", "same").await.expect("one");
    let second_now = two.get("instances", "same").await.expect("two");
    assert_eq!((container_id(&first_now), container_id(&second_now)), (first.clone(), second.clone()));
    assert_eq!(first_now["status"]["restartCount"], json!(0));
    assert_eq!(second_now["status"]["restartCount"], json!(0));

    one.http.delete(one.url("instances", "same")).send().await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(60);
    while one.get("instances", "same").await.is_some() {
        assert!(Instant::now() < deadline, "deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(docker(&["ps", "-aq", "--filter", &format!("id={first}")]).is_empty(), "its own container went");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &second]), "true", "the other's still runs");
    one.finish().await;
    two.finish().await;
}

/// A container or volume under the wanted name that is not this object's is never used,
/// replaced or removed: the object says so (`NameConflict`, `VolumeConflict`) and goes on
/// once it is gone. A database never starts on a volume that is not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_ours_is_never_used_or_removed() {
    let harness = Harness::start(PREFIX).await;
    let cluster = harness.server().cluster().await;
    let marker = format!("minicloud.dev/test={}", harness.run);
    // A stranger's container under the Instance's name, and an unlabelled volume under the
    // name of another Instance's volume and of a database's volume.
    let squatter = names::instance_container(&cluster, &harness.namespace, "web");
    let squatter_id = docker(&["run", "-d", "--name", &squatter, "--label", &marker, "minicloud/web:local"]);
    assert!(!squatter_id.is_empty(), "the squatting container runs");
    let volume = names::instance_volume(&cluster, &harness.namespace, "store", "data");
    let db_volume = names::database_volume(&cluster, &harness.namespace, "pg");
    for name in [&volume, &db_volume] {
        docker(&["volume", "create", "--label", &marker, name]);
        docker(&["run", "--rm", "-v", &format!("{name}:/v"), "minicloud/web:local", "sh", "-c", "echo foreign > /v/f"]);
    }
    harness
        .apply(vec![
            harness.instance("web", json!({}), json!({})),
            harness.instance("store", json!({}), json!({"volumes": [{"name": "data", "mountPath": "/data"}]})),
            database(
                &harness.namespace,
                "pg",
                json!({"engine": "postgres", "version": "15", "deletionPolicy": "Delete"}),
            ),
        ])
        .await;
    let reason = |reason: &'static str| move |object: &Value| condition(object, "Ready") == Some(("False", reason));
    let web = harness.wait_for("instances", "web", "NameConflict", reason("NameConflict")).await;
    let message = web["status"]["conditions"].to_string();
    assert!(message.contains(&squatter) && message.contains("not created by minicloud"), "{message}");
    harness.wait_for("instances", "store", "VolumeConflict", reason("VolumeConflict")).await;
    harness.wait_for("manageddatabases", "pg", "VolumeConflict", reason("VolumeConflict")).await;
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &squatter]), squatter_id, "the stranger's container is untouched");

    // Deleting the objects leaves the strangers' volumes (and their data) alone.
    harness.http.delete(harness.url("instances", "store")).send().await.expect("delete");
    harness.http.delete(harness.url("manageddatabases", "pg")).send().await.expect("delete");
    for (plural, name) in [("instances", "store"), ("manageddatabases", "pg")] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while harness.get(plural, name).await.is_some() {
            assert!(Instant::now() < deadline, "{name} deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for name in [&volume, &db_volume] {
        let content = docker(&["run", "--rm", "-v", &format!("{name}:/v"), "minicloud/web:local", "cat", "/v/f"]);
        assert_eq!(content, "foreign", "{name} kept its data");
    }

    // Once the stranger's container is gone, the Instance runs.
    docker(&["rm", "-f", &squatter]);
    harness.wait_for_within("instances", "web", "Ready", Duration::from_secs(120), ready).await;
    harness.finish().await;
}

/// A database whose retained volume holds data made with other credentials (its Secret was
/// deleted meanwhile) is not Ready: `CredentialsInvalid`, because readiness logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_on_data_with_other_credentials_is_not_ready() {
    let harness = Harness::start(PREFIX).await;
    let spec = json!({"engine": "postgres", "version": "15", "deletionPolicy": "Retain"});
    harness.apply(vec![database(&harness.namespace, "pg", spec.clone())]).await;
    harness.wait_for_within("manageddatabases", "pg", "Ready", Duration::from_secs(120), ready).await;
    harness.http.delete(harness.url("manageddatabases", "pg")).send().await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.get("manageddatabases", "pg").await.is_some() {
        assert!(Instant::now() < deadline, "deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The credentials go; the retained volume stays and is this database's by its labels.
    harness.http.delete(harness.url("secrets", "pg-credentials")).send().await.expect("delete secret");
    harness.apply(vec![database(&harness.namespace, "pg", spec)]).await;
    let object = harness
        .wait_for_within("manageddatabases", "pg", "CredentialsInvalid", Duration::from_secs(120), |object| {
            condition(object, "Ready") == Some(("False", "CredentialsInvalid"))
        })
        .await;
    let message = object["status"]["conditions"].to_string();
    assert!(
        message.contains("password authentication failed") && message.contains("secret/pg-credentials"),
        "{message}"
    );
    let events = harness.events("ManagedDatabase", "pg").await;
    assert!(events.iter().any(|e| e.starts_with("CredentialsInvalid:")), "{events:?}");
    // It can be deleted (deletionPolicy Delete) and created anew.
    harness
        .apply(vec![database(
            &harness.namespace,
            "pg",
            json!({"engine": "postgres", "version": "15", "deletionPolicy": "Delete"}),
        )])
        .await;
    harness.http.delete(harness.url("manageddatabases", "pg")).send().await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(120);
    while harness.get("manageddatabases", "pg").await.is_some() {
        assert!(Instant::now() < deadline, "deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    harness.finish().await;
}

/// The first start of each engine interrupted by removing its container a moment after it
/// started: minicloud recreates it and it becomes Ready, logging in with its credentials (the
/// initialisation happens in a scratch directory moved into place when complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_first_start_initialises_again() {
    let harness = Harness::start(PREFIX).await;
    let engines = [("pg", "postgres", "15", 700), ("maria", "mysql", "10.11", 1500), ("cache", "redis", "7", 200)];
    for (name, engine, version, delay) in engines {
        harness
            .apply(vec![database(
                &harness.namespace,
                name,
                json!({"engine": engine, "version": version, "deletionPolicy": "Delete"}),
            )])
            .await;
        let container = harness.database_container(name).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while docker(&["ps", "-q", "--filter", &format!("name=^{container}$")]).is_empty() {
            assert!(Instant::now() < deadline, "{name}: the container starts");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        docker(&["rm", "-f", &container]);
    }
    for (name, _, _, _) in engines {
        harness.wait_for_within("manageddatabases", name, "Ready", Duration::from_secs(180), ready).await;
    }
    harness.finish().await;
}

/// A database container and volume named and made by an earlier minicloud version
/// (`mcdb-NS-NAME`, an unlabelled `mcdb-NS-NAME-data`) are taken over: the data is copied into
/// the new labelled volume, the old container removed, the legacy volume kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_an_earlier_version_are_taken_over_with_their_data() {
    let mut harness = Harness::start(PREFIX).await;
    let spec = json!({"engine": "redis", "version": "7", "deletionPolicy": "Delete"});
    harness.apply(vec![database(&harness.namespace, "cache", spec)]).await;
    harness.wait_for_within("manageddatabases", "cache", "Ready", Duration::from_secs(120), ready).await;
    let password = harness.cloud(&["secret", "reveal", "cache-credentials", "password", "-n", &harness.namespace]).1;
    let password = password.trim().to_owned();
    let current = harness.database_container("cache").await;
    let redis = |container: &str, command: &[&str]| {
        let mut arguments = vec!["exec", "-e", "REDISCLI_AUTH", container, "redis-cli", "--no-auth-warning"];
        arguments.extend_from_slice(command);
        let output = std::process::Command::new("docker")
            .args(&arguments)
            .env("REDISCLI_AUTH", &password)
            .output()
            .expect("docker exec");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(redis(&current, &["SET", "kept", "from-the-old-version"]), "OK");
    assert_eq!(redis(&current, &["SAVE"]), "OK");

    // Make the world an earlier version left: the container under the old name with the same
    // labels, its data on an unlabelled volume under the old name.
    let cluster = harness.server().cluster().await;
    let server = harness.server.take().expect("server");
    let database_kept = server.crash();
    let cluster_volume = names::database_volume(&cluster, &harness.namespace, "cache");
    let legacy_container = names::legacy::database_container(&harness.namespace, "cache");
    let legacy_volume = names::legacy::database_volume(&harness.namespace, "cache");
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &current]);
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", &current]);
    docker(&["rm", "-f", &current]);
    // Unlabelled as an earlier version left it, but for the test run's marker (cleanup).
    docker(&["volume", "create", "--label", &format!("minicloud.dev/test={}", harness.run), &legacy_volume]);
    docker(&[
        "run",
        "--rm",
        "-u",
        "0:0",
        "-v",
        &format!("{cluster_volume}:/from"),
        "-v",
        &format!("{legacy_volume}:/to"),
        "--entrypoint",
        "cp",
        "minicloud/redis:local",
        "-a",
        "/from/.",
        "/to/",
    ]);
    docker(&["volume", "rm", &cluster_volume]);
    let labels: std::collections::BTreeMap<String, String> = serde_json::from_str(&labels).expect("labels");
    let env: Vec<String> = serde_json::from_str(&env).expect("env");
    let mut arguments = vec!["run".to_owned(), "-d".into(), "--name".into(), legacy_container.clone()];
    for (key, value) in &labels {
        arguments.extend(["--label".into(), format!("{key}={value}")]);
    }
    for variable in env.iter().filter(|v| v.starts_with("REDIS_PASSWORD=")) {
        arguments.extend(["-e".into(), variable.clone()]);
    }
    arguments.extend(["-v".into(), format!("{legacy_volume}:/data"), "minicloud/redis:local".into()]);
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    assert!(!docker(&arguments).is_empty(), "the legacy container runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis(&legacy_container, &["GET", "kept"]) != "from-the-old-version" {
        assert!(Instant::now() < deadline, "the legacy container serves the data");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The next start of the control plane takes it over.
    harness.server = Some(harness.start_server(database_kept).await);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let events = harness.events("ManagedDatabase", "cache").await;
        if events.iter().any(|e| e.starts_with("Migrated:") && e.contains(&legacy_volume)) {
            break;
        }
        assert!(Instant::now() < deadline, "no migration: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness.wait_for_within("manageddatabases", "cache", "Ready", Duration::from_secs(120), ready).await;
    assert!(
        docker(&["ps", "-aq", "--filter", &format!("name=^{legacy_container}$")]).is_empty(),
        "legacy container gone"
    );
    let current = harness.database_container("cache").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut value = String::new();
    while Instant::now() < deadline && value.is_empty() {
        value = redis(&current, &["GET", "kept"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(value, "from-the-old-version", "the data came along");
    assert_eq!(docker(&["volume", "ls", "-q", "--filter", &format!("name=^{legacy_volume}$")]), legacy_volume, "kept");
    docker(&["volume", "rm", &legacy_volume]);
    harness.finish().await;
}

/// An idle Ready Instance, LoadBalancer and database cost the engine a bounded number of calls
/// (their own probes wake nobody): counted from the engine's events over 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_objects_cost_the_engine_almost_nothing() {
    let harness = Harness::start(PREFIX).await;
    harness
        .apply(vec![
            harness.instance("web", json!({"app": "web"}), json!({"ports": [{"containerPort": 8080}]})),
            harness.load_balancer(
                "front",
                json!({"listeners": [{"name": "http", "targetPort": 8080}], "targets": {"selector": {"matchLabels": {"app": "web"}}}}),
            ),
            database(&harness.namespace, "pg", json!({"engine": "postgres", "version": "15", "deletionPolicy": "Delete"})),
        ])
        .await;
    harness.wait_for("instances", "web", "Ready", ready).await;
    harness.wait_for("loadbalancers", "front", "Ready", ready).await;
    harness.wait_for_within("manageddatabases", "pg", "Ready", Duration::from_secs(120), ready).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let since = chrono::Utc::now().timestamp();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let until = since + 30;
    let events = docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("label=minicloud.dev/test={}", harness.run),
        "--format",
        "{{.Actor.Attributes.name}} {{.Action}}",
    ]);
    let lines: Vec<&str> = events.lines().filter(|line| !line.is_empty()).collect();
    // A database probe each 30 s is two commands (engine check, login), three events each.
    assert!(lines.len() <= 15, "{} engine events in 30 s of idleness:\n{}", lines.len(), lines.join("\n"));
    assert!(lines.iter().all(|line| line.contains("mcdb.")), "only the database is probed: {lines:?}");
    harness.finish().await;
}
