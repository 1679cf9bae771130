//! The control plane under failure, with the real engine: killed with SIGKILL at random
//! moments while creating Instances, and started while Docker cannot be reached. Containers are
//! marked `minicloud.dev/test=resilience-...`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::docker::{docker, remove_marked};
use crate::common::server::TestServer;
use serde_json::{json, Value};

/// Removes the containers a run marked, also when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let run = self.0.clone();
        remove_marked(|label| label == run);
    }
}

fn instance(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": "minicloud/web:local", "ports": [{"containerPort": 8080}]}
    })
}

async fn list(server: &TestServer, namespace: &str) -> Vec<Value> {
    let list: Value = reqwest::get(format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/instances", server.url))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn is_ready(object: &Value) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|conditions| {
        conditions.iter().any(|c| {
            c["type"] == "Ready" && c["status"] == "True" && c["observedGeneration"] == object["metadata"]["generation"]
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_the_control_plane_converges_without_duplicates_or_orphans() {
    const INSTANCES: usize = 20;
    const CRASHES: usize = 20;
    let run = format!("resilience-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup = Cleanup(run.clone());
    let label = format!("minicloud.dev/test={run}");
    let arguments = ["--container-label", label.as_str(), "--resync", "10s"];
    let namespace = format!("c{}", &run[11..19]);
    let mut server = TestServer::start(crate::common::TestDb::sqlite().await, &arguments).await;
    let items: Vec<Value> = (0..INSTANCES).map(|i| instance(&namespace, &format!("web-{i}"))).collect();
    let response = reqwest::Client::new()
        .post(format!("{}/apis/minicloud.dev/v1/apply", server.url))
        .json(&json!({"items": items}))
        .send()
        .await
        .expect("apply");
    assert!(response.status().is_success());

    for crash in 0..CRASHES {
        let pause = 30 + rand::random::<u64>() % 300;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let running = docker(&["ps", "-q", "--filter", &format!("label={label}")]).lines().count();
        println!("crash {crash}: SIGKILL after {pause} ms, {running} container(s) running");
        let database = server.crash();
        server = TestServer::start(database, &arguments).await;
    }

    let started = Instant::now();
    loop {
        let objects = list(&server, &namespace).await;
        if objects.len() == INSTANCES && objects.iter().all(is_ready) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "not all Ready after the last restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("all {INSTANCES} Ready {:?} after the last restart", started.elapsed());

    let objects = list(&server, &namespace).await;
    let uids: HashSet<String> =
        objects.iter().filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned)).collect();
    let containers = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={label}"),
        "--format",
        "{{.Names}} {{.State}} {{.Label \"minicloud.dev/uid\"}}",
    ]);
    let containers: Vec<&str> = containers.lines().collect();
    assert_eq!(containers.len(), INSTANCES, "exactly one container per Instance: {containers:?}");
    let mut names = HashSet::new();
    for line in &containers {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert!(names.insert(parts[0]), "duplicate container {}", parts[0]);
        assert_eq!(parts[1], "running", "{line}");
        assert!(uids.contains(parts[2]), "orphan: {line}");
    }
    server.stop().await;
}

/// Forwards TCP connections on `listener` to the local Docker socket.
async fn docker_proxy(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_docker_is_reported_and_everything_converges_when_it_returns() {
    let run = format!("resilience-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup = Cleanup(run.clone());
    let label = format!("minicloud.dev/test={run}");
    // A port nothing listens on yet: the engine is "down".
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("address").port()
    };
    let docker_host = format!("tcp://127.0.0.1:{port}");
    let server = TestServer::start_with_env(
        crate::common::TestDb::sqlite().await,
        &["--container-label", &label],
        &[("DOCKER_HOST", docker_host.as_str())],
    )
    .await;
    let namespace = format!("u{}", &run[11..19]);
    let response = reqwest::Client::new()
        .post(format!("{}/apis/minicloud.dev/v1/apply", server.url))
        .json(&json!({"items": [instance(&namespace, "web")]}))
        .send()
        .await
        .expect("apply");
    assert!(response.status().is_success());

    let started = Instant::now();
    loop {
        let objects = list(&server, &namespace).await;
        let unreachable =
            objects.first().and_then(|o| o["status"]["conditions"].as_array().cloned()).is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "False" && c["reason"] == "DockerUnreachable")
            });
        if unreachable {
            let message = objects[0]["status"]["conditions"][0]["message"].as_str().unwrap_or("").to_owned();
            assert!(message.contains("cannot reach the Docker engine"), "{message}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no DockerUnreachable condition: {objects:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The engine "returns".
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the proxy port");
    let proxy = tokio::spawn(docker_proxy(listener));
    let returned = Instant::now();
    loop {
        let objects = list(&server, &namespace).await;
        if objects.first().is_some_and(is_ready) {
            break;
        }
        assert!(returned.elapsed() < Duration::from_secs(90), "did not converge after Docker returned: {objects:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("Ready {:?} after Docker became reachable", returned.elapsed());
    assert_eq!(docker(&["ps", "-q", "--filter", &format!("label={label}")]).lines().count(), 1);
    server.stop().await;
    proxy.abort();
}
