//! Pulling images: an Instance whose image is only in a registry gets it pulled, with progress
//! shown as events. The registry is Debian's `docker-registry` (install it with
//! `apt-get install docker-registry`; `.ci/run` does), run here on 127.0.0.1, which Docker
//! trusts without TLS. The image pushed is `minicloud/web:local` under a per-run name.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::server::TestServer;
use serde_json::{json, Value};

fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().expect("docker");
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

struct Registry {
    child: Child,
    _storage: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(port: u16) -> Registry {
    let storage = tempfile::tempdir().expect("tempdir");
    let config = storage.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.path().join("data").display()
        ),
    )
    .expect("config");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start docker-registry ({error}); install it: apt-get install docker-registry")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Registry { child, _storage: storage }
}

/// Removes what the test started (containers, networks, the pulled image), also on failure.
struct Cleanup {
    label: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (_, containers) = docker(&["ps", "-aq", "--filter", &format!("label={}", self.label)]);
        for id in containers.lines() {
            docker(&["rm", "-f", id]);
        }
        let (_, networks) = docker(&["network", "ls", "-q", "--filter", &format!("label={}", self.label)]);
        for id in networks.lines() {
            docker(&["network", "rm", id]);
        }
        docker(&["rmi", &self.image]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_pulled_with_progress_in_events() {
    let run = format!("pull-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("address").port();
    let _registry = start_registry(port);
    let image = format!("127.0.0.1:{port}/minicloud/pulltest:{run}");
    let label = format!("minicloud.dev/test={run}");
    let _cleanup = Cleanup { label: label.clone(), image: image.clone() };
    assert!(docker(&["tag", "minicloud/web:local", &image]).0, "needs minicloud/web:local");
    let (pushed, output) = docker(&["push", &image]);
    assert!(pushed, "push to the local registry: {output}");
    assert!(docker(&["rmi", &image]).0, "the engine must not have the image any more");

    let server = TestServer::start(crate::common::TestDb::sqlite().await, &["--container-label", &label]).await;
    let http = reqwest::Client::new();
    let namespace = format!("p{}", &run[5..13]);
    let manifest = json!({"items": [{
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": "pulled", "namespace": namespace},
        "spec": {"image": image, "ports": [{"containerPort": 8080}]}
    }]});
    let response =
        http.post(format!("{}/apis/minicloud.dev/v1/apply", server.url)).json(&manifest).send().await.expect("apply");
    assert!(response.status().is_success());

    let url = format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/instances/pulled", server.url);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let object: Value = http.get(&url).send().await.expect("get").json().await.expect("json");
        let ready = object["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "not Ready: {}", object["status"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events: Value = http
        .get(format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/events", server.url))
        .query(&[("kind", "Instance"), ("name", "pulled")])
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let messages: Vec<String> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| format!("{}: {}", e["reason"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect();
    // The layers are already on this engine (the same image under another name), so Docker
    // fetches the manifest only: the events show the pull and its outcome.
    assert!(messages.iter().any(|m| m.starts_with("Pulling: pulling image")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("Pulled: Status: Downloaded newer image")), "{messages:?}");
    server.stop().await;
}
