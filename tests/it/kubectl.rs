//! Kubernetes clients against minicloud. The real `kubectl` against a real `cloud server`
//! with controllers and the real Docker engine: discovery (`api-resources`), client-side and
//! server-side apply of `examples/hello/` until the container serves, `get` with the cloud get
//! columns, `get -w` seeing a change, `describe` with events, merge and JSON patches,
//! `explain`, errors as kubectl prints them, dry runs, and `delete` removing the container.
//! And PATCH as client libraries send it: racing patches, stale versions, invalid results, dry
//! runs, and Secrets whose values a patch can write but never read.
//!
//! kubectl is the one on PATH (`MINICLOUD_KUBECTL` names another binary): Debian's
//! `kubernetes-client` (1.20, OpenAPI v2) and a current one (OpenAPI v3) both pass.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::cluster::{condition, fetch, Harness};
use serde_json::Value;

fn kubectl_binary() -> String {
    std::env::var("MINICLOUD_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// Runs kubectl with the kubeconfig; returns (success, stdout, stderr).
fn kubectl(config: &Path, arguments: &[&str]) -> (bool, String, String) {
    let output = Command::new(kubectl_binary())
        .args(arguments)
        .env("KUBECONFIG", config)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!("run {} (install kubectl: apt-get install kubernetes-client): {error}", kubectl_binary())
        });
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

fn ok(config: &Path, arguments: &[&str]) -> String {
    let (success, out, err) = kubectl(config, arguments);
    assert!(success, "kubectl {arguments:?} failed:\n{out}{err}");
    out
}

#[tokio::test]
async fn kubectl_drives_minicloud_with_real_containers() {
    let harness = Harness::start("kubectl").await;
    let namespace = harness.namespace.clone();
    let directory = tempfile::tempdir().expect("dir");
    let config = directory.path().join("kubeconfig");
    let (made, kubeconfig, err) = harness.cloud(&["kubeconfig", "-n", &namespace]);
    assert!(made, "{err}");
    std::fs::write(&config, kubeconfig).expect("write kubeconfig");
    let (_, version, _) = kubectl(&config, &["version", "--client"]);
    eprintln!("kubectl: {}", version.lines().next().unwrap_or(""));

    // Discovery: the six kinds with their short names.
    let resources = ok(&config, &["api-resources", "--api-group=minicloud.dev"]);
    for (plural, short) in [
        ("instances", "inst"),
        ("loadbalancers", "lb"),
        ("scalinggroups", "sg"),
        ("manageddatabases", "db"),
        ("stacks", ""),
        ("secrets", ""),
    ] {
        let line = resources.lines().find(|line| line.starts_with(plural)).unwrap_or_else(|| panic!("{resources}"));
        assert!(line.contains(short) && line.contains("minicloud.dev/v1"), "{line}");
    }

    // Client-side apply of the example: the Instance is created and its container serves.
    let out = ok(&config, &["apply", "-f", "examples/hello/"]);
    assert!(out.contains("instance.minicloud.dev/hello created"), "{out}");
    let ready =
        harness.wait_for("instances", "hello", "Ready", |o| condition(o, "Ready").map(|c| c.0) == Some("True")).await;
    let port = ready["status"]["ports"][0]["hostPort"].as_u64().expect("a published port");
    let page = fetch(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}/")).await;
    assert!(page.is_ok(), "the container serves: {page:?}");
    let annotations = &ready["metadata"]["annotations"];
    assert!(annotations["kubectl.kubernetes.io/last-applied-configuration"].is_string(), "{annotations}");

    // get: the cloud get columns.
    let table = ok(&config, &["get", "instances"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "PORTS", "AGE"], "{table}");
    let row = lines.next().unwrap_or("");
    assert!(row.starts_with("hello") && row.contains("True") && row.contains(&port.to_string()), "{table}");
    let wide = ok(&config, &["get", "inst", "hello", "-o", "wide"]);
    assert!(wide.contains("IMAGE") && wide.contains("minicloud/web:local"), "{wide}");
    let json: Value = serde_json::from_str(&ok(&config, &["get", "instance", "hello", "-o", "json"])).expect("json");
    assert_eq!(json["spec"]["image"], "minicloud/web:local");

    // describe: metadata, spec and the controller's events.
    let described = ok(&config, &["describe", "instance", "hello"]);
    assert!(described.contains("Name:") && described.contains("hello"), "{described}");
    assert!(described.contains("Events:") && described.contains("minicloud"), "{described}");

    // get -w sees a change made by a merge patch.
    let mut watch = Command::new(kubectl_binary())
        .args(["get", "instances", "-w"])
        .env("KUBECONFIG", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let (lines_sender, lines_receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines_receiver.recv_timeout(Duration::from_secs(20)).expect("the watch prints the table");
    assert!(first.starts_with("NAME"), "{first}");
    lines_receiver.recv_timeout(Duration::from_secs(20)).expect("the watch prints hello");
    let out = ok(
        &config,
        &["patch", "instance", "hello", "--type", "merge", "-p", r#"{"metadata":{"labels":{"tier":"edge"}}}"#],
    );
    assert!(out.contains("patched"), "{out}");
    let changed = lines_receiver.recv_timeout(Duration::from_secs(20)).expect("the watch prints the change");
    assert!(changed.starts_with("hello"), "{changed}");
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(harness.get("instances", "hello").await.expect("hello")["metadata"]["labels"]["tier"], "edge");

    // A JSON patch; a strategic merge patch is refused with what to use instead.
    ok(
        &config,
        &[
            "patch",
            "instance",
            "hello",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/color","value":"blue"}]"#,
        ],
    );
    assert_eq!(harness.get("instances", "hello").await.expect("hello")["metadata"]["labels"]["color"], "blue");
    let (patched, _, err) =
        kubectl(&config, &["patch", "instance", "hello", "-p", r#"{"metadata":{"labels":{"x":"y"}}}"#]);
    assert!(!patched && err.contains("--type merge"), "{err}");

    // explain, from the server's OpenAPI document.
    let explained = ok(&config, &["explain", "instance.spec"]);
    assert!(explained.contains("image") && explained.contains("Container image"), "{explained}");

    // Errors as kubectl prints them: not found, and an invalid manifest refused with the field.
    let (found, _, err) = kubectl(&config, &["get", "instance", "nope"]);
    assert!(!found && err.contains("not found"), "{err}");
    let bad = directory.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: bad\nspec:\n  imgae: x\n")
        .expect("write");
    let (applied, _, err) = kubectl(&config, &["apply", "-f", bad.to_str().expect("path")]);
    assert!(!applied && err.contains("imgae"), "{err}");
    assert!(harness.get("instances", "bad").await.is_none());

    // Server-side dry run and server-side apply.
    let other = directory.path().join("other.yaml");
    std::fs::write(
        &other,
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: other\nspec:\n  image: minicloud/web:local\n",
    )
    .expect("write");
    let other = other.to_str().expect("path");
    let out = ok(&config, &["apply", "--dry-run=server", "-f", other]);
    assert!(out.contains("created (server dry run)"), "{out}");
    assert!(harness.get("instances", "other").await.is_none(), "a dry run creates nothing");
    let out = ok(&config, &["apply", "--server-side", "-f", other]);
    assert!(out.contains("serverside-applied"), "{out}");
    assert!(harness.get("instances", "other").await.is_some());
    ok(&config, &["delete", "-f", other]);

    // Dry runs of deletes change nothing: `delete --dry-run=server` and a dry-run prune.
    let pruned = directory.path().join("pruned");
    std::fs::create_dir(&pruned).expect("dir");
    let labelled = |name: &str| {
        format!(
            "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: {name}\n  labels:\n    set: pruned\nspec:\n  image: minicloud/web:local\n"
        )
    };
    std::fs::write(pruned.join("a.yaml"), labelled("keep-a")).expect("write");
    std::fs::write(pruned.join("b.yaml"), labelled("keep-b")).expect("write");
    let dir = pruned.to_str().expect("path");
    ok(&config, &["apply", "-f", dir, "-l", "set=pruned", "--prune", "--prune-allowlist=minicloud.dev/v1/Instance"]);
    let out = ok(&config, &["delete", "instance", "keep-a", "--dry-run=server"]);
    assert!(out.contains("deleted (server dry run)"), "{out}");
    assert!(harness.get("instances", "keep-a").await.is_some(), "a server dry run deletes nothing");
    std::fs::remove_file(pruned.join("b.yaml")).expect("remove");
    let out = ok(
        &config,
        &[
            "apply",
            "-f",
            dir,
            "-l",
            "set=pruned",
            "--prune",
            "--prune-allowlist=minicloud.dev/v1/Instance",
            "--dry-run=server",
        ],
    );
    assert!(out.contains("keep-b pruned (server dry run)"), "{out}");
    assert!(harness.get("instances", "keep-b").await.is_some(), "a dry-run prune deletes nothing");
    let out = ok(
        &config,
        &["apply", "-f", dir, "-l", "set=pruned", "--prune", "--prune-allowlist=minicloud.dev/v1/Instance"],
    );
    assert!(out.contains("keep-b pruned"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.get("instances", "keep-b").await.is_some() {
        assert!(Instant::now() < deadline, "the real prune deletes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(harness.get("instances", "keep-a").await.is_some());
    ok(&config, &["delete", "instance", "keep-a"]);

    // The scale subresource: `kubectl scale` sets a scaling group's desired count.
    let group = directory.path().join("group.yaml");
    std::fs::write(
        &group,
        "apiVersion: minicloud.dev/v1\nkind: ScalingGroup\nmetadata:\n  name: pool\nspec:\n  minReplicas: 1\n  maxReplicas: 3\n  template:\n    spec:\n      image: minicloud/web:local\n",
    )
    .expect("write");
    ok(&config, &["apply", "-f", group.to_str().expect("path")]);
    let out = ok(&config, &["scale", "sg", "pool", "--replicas", "2"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(harness.get("scalinggroups", "pool").await.expect("pool")["spec"]["desiredReplicas"], 2);
    let (scaled, _, err) = kubectl(&config, &["scale", "sg", "pool", "--replicas", "7"]);
    assert!(!scaled && err.contains("maxReplicas"), "{err}");
    ok(&config, &["delete", "sg", "pool"]);

    // delete: the Instance and its container go.
    let out = ok(&config, &["delete", "instance", "hello"]);
    assert!(out.contains("deleted"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.get("instances", "hello").await.is_some() || !harness.containers("Instance", false).is_empty() {
        assert!(Instant::now() < deadline, "the container was never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness.finish().await;
}

/// PATCH with a raw HTTP client, as client libraries send it.
async fn patch(url: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .patch(url)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("patch");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn patches_race_validate_and_never_read_secret_values() {
    let server = crate::common::server::TestServer::sqlite().await;
    let base = format!("{}/apis/minicloud.dev/v1/namespaces/default", server.url);
    let http = reqwest::Client::new();
    let instance = serde_json::json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": "web"}, "spec": {"image": "minicloud/web:local"}});
    assert!(http.post(format!("{base}/instances")).json(&instance).send().await.expect("create").status().is_success());
    let web = format!("{base}/instances/web");

    // Twenty merge patches racing, each adding its own label: every one lands.
    let racers = (0..20).map(|index| {
        let web = web.clone();
        tokio::spawn(async move {
            patch(&web, "application/merge-patch+json", &format!(r#"{{"metadata":{{"labels":{{"l{index}":"x"}}}}}}"#))
                .await
                .0
        })
    });
    for racer in racers {
        assert_eq!(racer.await.expect("task"), 200);
    }
    let live: Value = http.get(&web).send().await.expect("get").json().await.expect("json");
    assert_eq!(live["metadata"]["labels"].as_object().map(|labels| labels.len()), Some(20), "{live}");

    // A patch naming a stale resourceVersion is a conflict; an invalid result is refused and
    // changes nothing; a dry run changes nothing.
    let (status, body) =
        patch(&web, "application/merge-patch+json", r#"{"metadata":{"resourceVersion":"1"},"spec":{"image":"x"}}"#)
            .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = patch(&web, "application/merge-patch+json", r#"{"spec":{"imgae":"x"}}"#).await;
    assert_eq!(
        (status, body["kind"].as_str(), body["status"].as_str()),
        (400, Some("Status"), Some("Failure")),
        "{body}"
    );
    assert!(body["details"]["causes"][0]["field"].as_str().is_some_and(|field| field.contains("imgae")), "{body}");
    let (status, body) =
        patch(&format!("{web}?dryRun=All"), "application/merge-patch+json", r#"{"spec":{"image":"dry"}}"#).await;
    assert_eq!((status, body["spec"]["image"].as_str()), (200, Some("dry")), "{body}");
    let after: Value = http.get(&web).send().await.expect("get").json().await.expect("json");
    assert_eq!(after["spec"]["image"], "minicloud/web:local");
    assert_eq!(after["metadata"]["resourceVersion"], live["metadata"]["resourceVersion"], "nothing was written");
    // A merge patch that is not an object replaces the whole document: refused, no panic.
    for body in ["true", "[1]", "null", "\"x\""] {
        let (status, answer) = patch(&web, "application/merge-patch+json", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, body) = patch(&web, "application/strategic-merge-patch+json", "{}").await;
    assert_eq!(status, 415, "{body}");
    let (status, _) =
        patch(&web, "application/json-patch+json", r#"[{"op":"copy","from":"","path":"/metadata/annotations/a"}]"#)
            .await;
    assert_eq!(status, 400, "a copy into a string-valued map is not a valid object");

    // A Secret's value cannot be copied where it shows, nor guessed with test.
    let secret = serde_json::json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret",
        "metadata": {"name": "db"}, "spec": {"stringData": {"password": "hunter2"}}});
    assert!(http.post(format!("{base}/secrets")).json(&secret).send().await.expect("create").status().is_success());
    let db = format!("{base}/secrets/db");
    for operations in [
        r#"[{"op":"copy","from":"/spec/stringData/password","path":"/metadata/labels/leak"}]"#,
        r#"[{"op":"move","from":"/spec/stringData/password","path":"/metadata/annotations/leak"}]"#,
        r#"[{"op":"test","path":"/spec/stringData/password","value":"hunter2"}]"#,
    ] {
        let (status, body) = patch(&db, "application/json-patch+json", operations).await;
        assert_eq!(status, 400, "{operations}: {body}");
        assert!(!body.to_string().contains("hunter2"), "{body}");
    }
    // Writing a value works, and the answer shows none.
    let (status, body) = patch(
        &db,
        "application/json-patch+json",
        r#"[{"op":"replace","path":"/spec/stringData/password","value":"s3cond"}]"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("s3cond"), "{body}");
    let (status, body) = patch(&db, "application/merge-patch+json", r#"{"metadata":{"labels":{"tier":"db"}}}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("s3cond") && !body.to_string().contains("hunter2"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn the_official_python_client_creates_lists_patches_watches_and_deletes() {
    let server = crate::common::server::TestServer::sqlite().await;
    let directory = tempfile::tempdir().expect("dir");
    let config = directory.path().join("kubeconfig");
    let kubeconfig = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["kubeconfig", "--server", &server.url])
        .output()
        .expect("cloud kubeconfig");
    assert!(kubeconfig.status.success());
    std::fs::write(&config, &kubeconfig.stdout).expect("write kubeconfig");
    let output = Command::new("python3")
        .arg("tests/fixtures/kube_client.py")
        .arg(&config)
        .output()
        .expect("python3 (the client: pip install kubernetes, as scripts/test does)");
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{out}{err}");
    for expected in [
        "created py",
        "listed py",
        "patched b",
        "watched ADDED:py MODIFIED:py",
        "missing 404",
        "deleted Success",
        "version True",
        "dry-run delete kept True",
        "precondition 409",
        "deleted with precondition 404",
        "scale Scale 1",
        "scaled 4",
        "beyond max 400 True",
    ] {
        assert!(out.lines().any(|line| line == expected), "missing {expected:?} in:\n{out}{err}");
    }
    server.stop().await;
}

#[tokio::test]
async fn field_selectors_pick_one_object_in_lists_and_watches() {
    let server = crate::common::server::TestServer::sqlite().await;
    let base = format!("{}/apis/minicloud.dev/v1/namespaces/default/instances", server.url);
    let http = reqwest::Client::new();
    for name in ["a", "b"] {
        let object = serde_json::json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance",
            "metadata": {"name": name}, "spec": {"image": "minicloud/web:local"}});
        assert!(http.post(&base).json(&object).send().await.expect("create").status().is_success());
    }
    let list: Value = http
        .get(&base)
        .query(&[("fieldSelector", "metadata.name=a")])
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        (list["kind"].as_str(), list["items"][0]["metadata"]["name"].as_str()),
        (Some("InstanceList"), Some("a"))
    );
    for bad in ["spec.image=x", "metadata.name", "metadata.namespace=other"] {
        let response = http.get(&base).query(&[("fieldSelector", bad)]).send().await.expect("list");
        assert_eq!(response.status(), 400, "{bad}");
    }

    // A watch of `a` (as `kubectl get instance a -w` sends it) sees a's changes, not b's.
    let response = http
        .get(&base)
        .query(&[("watch", "1"), ("fieldSelector", "metadata.name=a")])
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .send()
        .await
        .expect("watch");
    assert_eq!(response.headers()["content-type"], "application/json");
    let mut stream = futures::StreamExt::boxed(response.bytes_stream());
    for name in ["b", "a"] {
        let patched = http
            .patch(format!("{base}/{name}"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"metadata":{"labels":{"changed":"yes"}}}"#)
            .send()
            .await
            .expect("patch");
        assert!(patched.status().is_success());
    }
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text.lines().filter(|line| !line.trim().is_empty()).count() < 2 {
        let chunk = tokio::time::timeout_at(deadline.into(), futures::StreamExt::next(&mut stream))
            .await
            .expect("two events within 10 s")
            .expect("stream open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("line"))
        .collect();
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "MODIFIED");
    for event in &events {
        assert_eq!(event["object"]["kind"], "Table", "{event}");
        assert_eq!(event["object"]["rows"][0]["cells"][0], "a", "only a's changes: {event}");
    }
    server.stop().await;
}

/// HAProxy (Debian's, on the host) terminating TLS with a self-signed certificate in front of
/// `upstream`, as docs/security.md tells to run an exposed server; killed when dropped.
struct TlsProxy {
    child: std::process::Child,
    url: String,
    authority: std::path::PathBuf,
    _directory: tempfile::TempDir,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsProxy {
    fn start(upstream: &str) -> TlsProxy {
        let directory = tempfile::tempdir().expect("dir");
        // A private authority, and the proxy's certificate signed by it.
        let file = |name: &str| directory.path().join(name);
        let openssl = |arguments: &[&str]| {
            let made = Command::new("openssl")
                .args(arguments)
                .current_dir(directory.path())
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(made.status.success(), "openssl {arguments:?}: {}", String::from_utf8_lossy(&made.stderr));
        };
        let subject = "/CN=minicloud test authority";
        openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", subject, "-keyout", "ca.key",
            "-out", "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "proxy.csr",
        ]);
        std::fs::write(file("extensions"), "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n")
            .expect("extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "proxy.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "extensions",
            "-out",
            "cert.pem",
        ]);
        let (key, certificate, authority) = (file("key.pem"), file("cert.pem"), file("ca.pem"));
        let bundle = directory.path().join("proxy.pem");
        let mut pem = std::fs::read(&certificate).expect("cert");
        pem.extend(std::fs::read(&key).expect("key"));
        std::fs::write(&bundle, pem).expect("bundle");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let upstream = upstream.trim_start_matches("http://");
        let config = directory.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n\
                 frontend tls\n  bind 127.0.0.1:{port} ssl crt {}\n  http-request set-header X-Forwarded-Proto https\n  default_backend minicloud\n\
                 backend minicloud\n  server api {upstream}\n",
                bundle.display()
            ),
        )
        .expect("haproxy.cfg");
        let child = Command::new("/usr/sbin/haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (apt-get install haproxy)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsProxy { child, url: format!("https://127.0.0.1:{port}"), authority, _directory: directory }
    }
}

#[tokio::test]
async fn behind_a_tls_proxy_cloud_and_kubectl_send_tokens_and_read_refusals() {
    let server = crate::common::server::TestServer::start(
        crate::common::TestDb::sqlite().await,
        &["--auth", "--no-controllers"],
    )
    .await;
    let admin = server.printed_admin_token().expect("admin token");
    let reader =
        server.create_token(&admin, serde_json::json!({"name": "reader", "role": "view", "namespace": "shop"})).await;
    let proxy = TlsProxy::start(&server.url);
    let authority = proxy.authority.to_str().expect("path").to_owned();
    let cloud = |arguments: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(["--server", &proxy.url, "--token", &reader])
            .args(arguments)
            .env("CLOUD_CONFIG", "/nonexistent/minicloud-test-config")
            .env_remove("CLOUD_CERTIFICATE_AUTHORITY")
            .output()
            .expect("cloud");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.success(), text(&output.stdout), text(&output.stderr))
    };

    // The CLI over HTTPS: refused without the proxy's authority, fine with it.
    let (trusted, _, err) = cloud(&["get", "instances", "-n", "shop"]);
    assert!(
        !trusted && err.contains("is not trusted") && err.contains("--certificate-authority"),
        "a private authority is not trusted by default: {err}"
    );
    let (listed, _, err) = cloud(&["--certificate-authority", &authority, "get", "instances", "-n", "shop"]);
    assert!(listed, "{err}");

    // kubectl with the kubeconfig `cloud kubeconfig` writes (token and authority in it).
    let (made, kubeconfig, err) = cloud(&["--certificate-authority", &authority, "kubeconfig", "-n", "shop"]);
    assert!(made && !err.contains("warning"), "{err}");
    let directory = tempfile::tempdir().expect("dir");
    let config = directory.path().join("kubeconfig");
    std::fs::write(&config, kubeconfig).expect("write kubeconfig");
    assert!(ok(&config, &["api-resources", "--api-group=minicloud.dev"]).contains("instances"));
    let (listed, _, err) = kubectl(&config, &["get", "instances"]);
    assert!(listed, "{err}");
    // A write, and a read of another namespace, are refused with the permission named.
    let manifest = directory.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: minicloud/web:local\n",
    )
    .expect("manifest");
    let (applied, out, err) = kubectl(&config, &["apply", "-f", manifest.to_str().expect("path")]);
    assert!(!applied, "{out}");
    assert!(err.contains("lacks the permission"), "{err}");
    let (other, _, err) = kubectl(&config, &["get", "instances", "-n", "default"]);
    assert!(!other && err.contains("good for namespace") && err.contains("shop"), "{err}");
    // `kubectl auth can-i` answers from the token's role and namespace.
    for (arguments, expected) in [
        (vec!["auth", "can-i", "get", "instances"], "yes"),
        (vec!["auth", "can-i", "list", "scalinggroups.minicloud.dev"], "yes"),
        (vec!["auth", "can-i", "create", "instances"], "no"),
        (vec!["auth", "can-i", "get", "instances", "-n", "default"], "no"),
        (vec!["auth", "can-i", "delete", "policies"], "no"),
    ] {
        let (_, out, err) = kubectl(&config, &arguments);
        assert_eq!(out.split_whitespace().next(), Some(expected), "kubectl {arguments:?}: {out}{err}");
    }

    // Over plain HTTP kubectl would not send the token: cloud kubeconfig says so.
    let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["--server", &server.url, "--token", &reader, "kubeconfig"])
        .env("CLOUD_CONFIG", "/nonexistent/minicloud-test-config")
        .output()
        .expect("cloud kubeconfig");
    assert!(String::from_utf8_lossy(&output.stderr).contains("kubectl never sends a token over plain HTTP"));
    drop(proxy);
    server.stop().await;
}

/// kubectl's client-side apply keeps the whole manifest in the annotation
/// `kubectl.kubernetes.io/last-applied-configuration` — a Secret's values included. They never
/// come back (kubectl, cloud, watches) and are on no byte of the store; a second apply still
/// updates the value (kubectl's three-way merge needs only the keys).
#[tokio::test]
async fn kubectl_apply_of_a_secret_leaves_its_values_nowhere_in_clear() {
    const FIRST: &str = "kubectl-first-s3cret-value";
    const SECOND: &str = "kubectl-second-s3cret-value";
    let directory = tempfile::tempdir().expect("dir");
    let data = directory.path().join("data");
    let database = crate::common::TestDb::sqlite_at(&data);
    let server = crate::common::server::TestServer::start(
        database,
        &["--no-controllers", "--data-dir", data.to_str().expect("path")],
    )
    .await;
    let config = directory.path().join("kubeconfig");
    let kubeconfig = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["kubeconfig", "--server", &server.url])
        .output()
        .expect("cloud kubeconfig");
    std::fs::write(&config, &kubeconfig.stdout).expect("write kubeconfig");
    let manifest = directory.path().join("secret.yaml");
    let write = |value: &str| {
        std::fs::write(
            &manifest,
            format!("apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata:\n  name: db\nspec:\n  stringData:\n    password: {value}\n"),
        )
        .expect("manifest")
    };
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/default/secrets?watch=true&resourceVersion=0", server.url);
    let watch = reqwest::Client::new().get(url).send().await.expect("watch");
    write(FIRST);
    ok(&config, &["apply", "-f", manifest.to_str().expect("path")]);
    write(SECOND);
    let out = ok(&config, &["apply", "-f", manifest.to_str().expect("path")]);
    assert!(out.contains("configured"), "{out}");
    let revealed = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["--server", &server.url, "secret", "reveal", "db", "password"])
        .output()
        .expect("reveal");
    assert_eq!(String::from_utf8_lossy(&revealed.stdout).trim(), SECOND, "the second apply changed the value");

    let cloud = |arguments: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(["--server", &server.url])
            .args(arguments)
            .output()
            .expect("cloud");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut answers = vec![
        ok(&config, &["get", "secret", "db", "-o", "yaml"]),
        ok(&config, &["get", "secrets", "-o", "json"]),
        cloud(&["get", "secret", "db", "-o", "yaml"]),
        cloud(&["describe", "secret", "db"]),
    ];
    assert!(answers[0].contains("last-applied-configuration"), "the annotation is there: {}", answers[0]);
    let mut stream = watch.bytes_stream();
    let mut watched = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while watched.matches("\"type\"").count() < 2 && Instant::now() < deadline {
        use futures::StreamExt;
        if let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            watched.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    answers.push(watched);
    for answer in &answers {
        for value in [FIRST, SECOND] {
            assert!(!answer.contains(value), "{value} came back in:\n{answer}");
        }
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).expect("data dir").flatten() {
        if let Ok(bytes) = std::fs::read(entry.path()) {
            files.push((entry.path(), bytes));
        }
    }
    assert!(files.iter().any(|(path, _)| path.display().to_string().ends_with("-wal")), "the WAL is searched too");
    for (path, bytes) in &files {
        for value in [FIRST, SECOND] {
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{} holds {value}", path.display());
        }
    }
    server.stop().await;
}
