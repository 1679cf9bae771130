//! The `cloud` CLI end to end: the real binary against the real `cloud server`, on SQLite and
//! on PostgreSQL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::server::TestServer;
use minicloud_crds::{Kind, ObjectKey};
use minicloud_server::store::{EventType, NewEvent, SqlStore, Store};
use serde_json::{json, Value};

fn cloud(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(args)
        .env("CLOUD_SERVER", &server.url)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run cloud")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(server: &TestServer, args: &[&str]) -> String {
    let output = cloud(server, args);
    assert!(output.status.success(), "cloud {args:?} failed: {}", stderr(&output));
    stdout(&output)
}

async fn apply_get_describe_delete(server: &TestServer) {
    let applied = ok(server, &["apply", "-R", "-f", "examples/"]);
    assert!(applied.contains("instance/hello created"), "{applied}");
    assert_eq!(applied.lines().count(), 20, "{applied}");
    let again = ok(server, &["apply", "-R", "-f", "examples/"]);
    assert_eq!(again.lines().filter(|line| line.ends_with(" unchanged")).count(), 20, "{again}");

    let table = ok(server, &["get", "instances"]);
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "PORTS", "AGE"]);
    assert!(table.lines().any(|line| line.starts_with("hello ")), "{table}");
    let named = ok(server, &["get", "inst", "-l", "app=hello", "-o", "name"]);
    assert_eq!(named, "instance/hello\n");
    let json: Value = serde_json::from_str(&ok(server, &["get", "instance/hello", "-o", "json"])).expect("json output");
    assert_eq!(json["metadata"]["name"], "hello");
    let yaml = ok(server, &["get", "instance", "hello", "-o", "yaml"]);
    let parsed = minicloud_model::yaml::parse_documents(&yaml).expect("yaml output parses");
    assert_eq!(parsed[0].value, json, "yaml and json output agree");
    let everywhere = ok(server, &["get", "lb", "-A"]);
    assert!(everywhere.starts_with("NAMESPACE"), "{everywhere}");
    let wide = ok(server, &["get", "sg", "-o", "wide"]);
    assert!(wide.contains("minicloud/web:local"), "{wide}");

    let described = ok(server, &["describe", "instance", "hello"]);
    for section in ["Name:         hello", "Namespace:    default", "Spec:", "Conditions:", "Events:"] {
        assert!(described.contains(section), "missing {section:?} in\n{described}");
    }

    assert_eq!(ok(server, &["delete", "instance", "hello"]), "instance/hello deleted\n");
    let output = cloud(server, &["get", "instance", "hello"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("instance/hello not found"), "{}", stderr(&output));
    let output = cloud(server, &["get", "stacks", "-n", "empty"]);
    assert!(stderr(&output).contains("No stacks found in namespace empty."), "{}", stderr(&output));
}

async fn invalid_manifests_never_reach_the_server(server: &TestServer) {
    let output = cloud(server, &["apply", "-f", "tests/fixtures/broken.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("tests/fixtures/broken.yaml:6:3: spec.imgae: unknown field `imgae`"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("nothing was applied"));
    let listed = cloud(server, &["get", "instances"]);
    assert!(stderr(&listed).contains("No instances found"), "{}", stderr(&listed));
    // Dry run reports without writing.
    let dry = ok(server, &["apply", "--dry-run", "-f", "examples/hello/"]);
    assert_eq!(dry, "instance/hello created (dry run)\n");
    assert!(stderr(&cloud(server, &["get", "instances"])).contains("No instances found"));
}

async fn set_ready(server: &TestServer, name: &str, observed_generation: i64) {
    let http = reqwest::Client::new();
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/default/instances/{name}", server.url);
    let mut object: Value = http.get(&url).send().await.expect("get").json().await.expect("json");
    object["status"] = json!({"observedGeneration": observed_generation, "conditions": [{
        "type": "Ready", "status": "True", "reason": "ContainerServing", "message": "serving on 127.0.0.1:1",
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": observed_generation
    }]});
    let response = http.put(format!("{url}/status")).json(&object).send().await.expect("status");
    assert!(response.status().is_success());
}

async fn wait_for_conditions_and_deletion(server: &TestServer) {
    ok(server, &["apply", "-f", "examples/hello/"]);
    let output = cloud(server, &["wait", "instance/hello", "--for", "condition=Ready", "--timeout", "1s"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("timed out after 1s waiting for instance/hello: it has no Ready condition yet"),
        "{}",
        stderr(&output)
    );

    // A Ready=True observed at an older generation does not count.
    set_ready(server, "hello", 0).await;
    let output = cloud(server, &["wait", "instance/hello", "--for", "condition=Ready", "--timeout", "1s"]);
    assert_eq!(output.status.code(), Some(1), "stale condition must not satisfy wait");

    let waiter = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["wait", "inst/hello", "--for", "condition=Ready", "--timeout", "30s"])
        .env("CLOUD_SERVER", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wait");
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_ready(server, "hello", 1).await;
    let output =
        tokio::task::spawn_blocking(move || waiter.wait_with_output()).await.expect("join").expect("wait output");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "instance/hello condition met\n");

    // Deletion held by a finalizer: --wait returns once the finalizer is removed.
    let http = reqwest::Client::new();
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/default/instances/hello", server.url);
    let mut object: Value = http.get(&url).send().await.expect("get").json().await.expect("json");
    object["metadata"]["finalizers"] = json!(["minicloud.dev/container"]);
    assert!(http.put(&url).json(&object).send().await.expect("put").status().is_success());
    let deleter = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["delete", "instance", "hello", "--wait", "--timeout", "30s"])
        .env("CLOUD_SERVER", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("delete");
    // Wait (bounded) until the delete has landed and the finalizer holds the object.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut object: Value = loop {
        let object: Value = http.get(&url).send().await.expect("get").json().await.expect("json");
        if object["metadata"]["deletionTimestamp"].is_string() {
            break object;
        }
        assert!(std::time::Instant::now() < deadline, "never terminating: {object}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    object["metadata"]["finalizers"] = json!([]);
    assert!(http.put(&url).json(&object).send().await.expect("put").status().is_success());
    let output = tokio::task::spawn_blocking(move || deleter.wait_with_output()).await.expect("join").expect("output");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "instance/hello deleting (waiting for finalizers)\ninstance/hello deleted\n");
}

async fn get_watch_prints_changes(server: &TestServer) {
    ok(server, &["apply", "-f", "examples/hello/"]);
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["get", "instances", "-w"])
        .env("CLOUD_SERVER", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("get -w");
    let lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let next = || receiver.recv_timeout(Duration::from_secs(10)).expect("a line from get -w");
    let header = next();
    assert!(header.starts_with("NAME"));
    assert!(next().starts_with("hello "));
    let manifest =
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata: {name: web2}\nspec: {image: minicloud/web:local}\n";
    let mut apply = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["apply", "-f", "-"])
        .env("CLOUD_SERVER", &server.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("apply");
    std::io::Write::write_all(&mut apply.stdin.take().expect("stdin"), manifest.as_bytes()).expect("write");
    assert!(apply.wait().expect("apply").success());
    let row = next();
    assert!(row.starts_with("web2 "), "the new object is printed");
    // A row that fits the first table's columns is printed in them.
    assert_eq!(row.find("Unknown"), header.find("READY"), "later rows keep the table's columns:\n{header}\n{row}");
    ok(server, &["delete", "instance", "web2"]);
    assert_eq!(next(), "instance/web2 deleted");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

async fn events_are_listed(server: &TestServer) {
    ok(server, &["apply", "-f", "examples/hello/"]);
    let output = cloud(server, &["events"]);
    assert!(stderr(&output).contains("No events found."), "{}", stderr(&output));
    // Controllers record events through the store; do what one would.
    let url = server.database.as_ref().expect("database").url.clone();
    let store = SqlStore::open(&url, crate::common::test_keys()).await.expect("open store");
    let key = ObjectKey::new(Kind::Instance, "default", "hello");
    let uid = store.get(&key).await.expect("object").metadata.uid.expect("uid");
    for _ in 0..3 {
        let event = NewEvent {
            object: key.clone(),
            uid: uid.clone(),
            event_type: EventType::Warning,
            reason: "ImagePullFailed".into(),
            message: "no registry answers".into(),
        };
        store.record_event(event).await.expect("event");
    }
    store.close().await;
    let listed = ok(server, &["events", "--for", "instance/hello"]);
    let row = listed.lines().nth(1).unwrap_or("");
    for cell in ["Warning", "ImagePullFailed", "instance/hello", "3", "no registry answers"] {
        assert!(row.contains(cell), "{cell:?} missing from {listed}");
    }
    let described = ok(server, &["describe", "inst/hello"]);
    assert!(described.contains("ImagePullFailed") && described.contains("(x3)"), "{described}");
    assert!(ok(server, &["events", "-A"]).starts_with("NAMESPACE"));

    // Stored text cannot drive the terminal: an event message that would clear the screen and
    // retitle the window is shown escaped by every human-readable command, and kept whole in
    // JSON (where it is escaped by JSON itself).
    let hostile = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}gnp.exe";
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/apis/minicloud.dev/v1/namespaces/default/events", server.url))
        .json(&json!({"involvedObject": {"kind": "Instance", "name": "hello"}, "type": "Warning", "reason": "Hostile", "message": hostile}))
        .send()
        .await
        .expect("event");
    assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
    for args in [&["events"][..], &["describe", "instance", "hello"], &["events", "-A"]] {
        let printed = ok(server, args);
        assert!(
            !printed.contains('\u{1b}') && !printed.contains('\u{7}') && !printed.contains('\u{202e}'),
            "cloud {args:?} printed a raw control character"
        );
        assert!(printed.contains("\\x1b[2J\\x1b]0;owned\\x07\\u{202e}gnp.exe"), "cloud {args:?}: {printed}");
    }
}

/// Namespaces and names typed on the command line never change which URL is requested: a
/// hostile `-n` or name is refused with a clear error before anything is sent, and the Secret
/// it aimed at is still there.
async fn hostile_namespaces_and_names_are_refused(server: &TestServer) {
    let http = reqwest::Client::new();
    let secret = json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "name"}, "spec": {"stringData": {"k": "v"}}});
    let secrets = format!("{}/apis/minicloud.dev/v1/namespaces/default/secrets", server.url);
    let response = http.post(&secrets).json(&secret).send().await.expect("create secret");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let attacks: [&[&str]; 10] = [
        &["delete", "instance", "web\nx"],
        &["get", "instance", "x", "-n", "default\r\nX-Evil: 1"],
        &["delete", "instance", "x", "-n", "default/secrets/name?"],
        &["delete", "instance", "x", "-n", "default/secrets/name#"],
        &["delete", "instance", "../secrets/name"],
        &["delete", "instance/..%2Fsecrets%2Fname"],
        &["delete", "instance", "name?x=1", "-n", "default"],
        &["get", "instance", "x", "-n", "../default/secrets/name?"],
        &["describe", "instance", "x", "-n", "default/secrets/name?"],
        &["logs", "x", "-n", "default/secrets/name?"],
    ];
    for args in attacks {
        let output = cloud(server, args);
        assert_eq!(output.status.code(), Some(1), "cloud {args:?} must fail");
        let error = stderr(&output);
        let explained = (error.contains("is not valid") && error.contains("DNS-1123")) || error.contains("KIND/NAME");
        assert!(explained, "cloud {args:?}: {error}");
    }
    let response = http.get(format!("{secrets}/name")).send().await.expect("get secret");
    assert_eq!(response.status(), reqwest::StatusCode::OK, "the secret survived every attempt");
}

on_both_backends!(
    hostile_namespaces_and_names_are_refused,
    apply_get_describe_delete,
    invalid_manifests_never_reach_the_server,
    wait_for_conditions_and_deletion,
    get_watch_prints_changes,
    events_are_listed,
);

/// Commands that need no server, and what happens when there is none.
#[test]
fn offline_commands_and_unreachable_server() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(args)
            .env("CLOUD_SERVER", "http://127.0.0.1:9")
            .output()
            .expect("run cloud")
    };
    let explained = run(&["explain", "sg.spec.autoscaling"]);
    assert!(explained.status.success());
    let text = stdout(&explained);
    assert!(text.contains("FIELD:    spec.autoscaling <Object>") && text.contains("scaleInCooldownSeconds"), "{text}");
    let output = run(&["explain", "instance.spec.nope"]);
    assert_eq!(output.status.code(), Some(1));
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&["completion", shell]);
        assert!(output.status.success() && stdout(&output).contains("cloud"), "{shell}");
    }
    // A reader that goes away (`cloud completion bash | head`): the script (over 100 KB, more
    // than a pipe holds) cannot be written whole, and that is no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["completion", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cloud");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success() && !stderr(&output).contains("panicked"), "{}", stderr(&output));
    let output = run(&["get", "instances"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot reach the minicloud server at http://127.0.0.1:9"), "{}", stderr(&output));
    let output = run(&["version"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("client: cloud"), "{}", stdout(&output));
    let output = run(&["get", "pods"]);
    assert!(stderr(&output).contains("unknown resource type \"pods\""), "{}", stderr(&output));

    // Server options it cannot run with are refused before anything starts (a zero resync
    // period used to panic the controller runtime).
    let data = tempfile::tempdir().expect("data dir");
    let data = data.path().to_str().expect("path");
    for (option, value, expected) in [
        ("--resync", "0s", "--resync 0ns is too short"),
        ("--header-read-timeout", "10ms", "--header-read-timeout 10ms is too short"),
        ("--workers", "0", "--workers 0: write a number from 1 to 1024"),
        ("--timeout", "99999999999999999999h", "longer than a year"),
    ] {
        let output =
            run(&["up", "-f", "examples/hello/", "--data-dir", data, "--listen", "127.0.0.1:0", option, value]);
        assert!(matches!(output.status.code(), Some(1 | 2)), "{option} {value}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{option} {value}: {}", stderr(&output));
    }
    let output = run(&["server", "--data-dir", data, "--listen", "127.0.0.1:0", "--resync", "0s"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--resync 0ns is too short"), "{}", stderr(&output));
}
