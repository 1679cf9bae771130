//! The landed core attacked as a hostile client or a careless user would, over real HTTP
//! against the real `cloud server` binary (SQLite and PostgreSQL): apply atomicity and races,
//! path injection, status bodies, watches from the future, logs without a container.

use crate::common::server::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";

/// The machine, shared by this file's tests and the heaviest of others: the 500-watch storms
/// (SQLite and PostgreSQL) and the high-availability chaos and 10,000-write tests load both
/// cores and run alone (`write`); tests that bound a latency (`read`) never run beside them,
/// since on two cores they would measure the load rather than their server.
pub(crate) static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn instance(name: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name},
        "spec": {"image": "minicloud/web:local"}
    })
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// A batch whose update of an existing object fails in the store commits none of the batch's
/// new objects, and the answer names the object that failed.
async fn apply_is_all_or_nothing(server: &TestServer) {
    let http = reqwest::Client::new();
    let apply = format!("{}{V1}/apply", server.url);
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    let (status, body) = send(http.post(&apply).json(&json!({"items": [instance("existing")]}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The update makes the existing object larger than one object may be (the body is not).
    let mut grown = instance("existing");
    grown["metadata"]["annotations"] = json!({"blob": "x".repeat(2 * 1024 * 1024)});
    let batch = json!({"items": [instance("new-one"), instance("new-two"), grown]});
    let (status, body) = send(http.post(&apply).json(&batch)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("nothing was applied") && message.contains("items[2]"), "{body}");
    assert_eq!(body["details"]["name"], "existing", "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "items[2]", "{body}");
    for name in ["new-one", "new-two"] {
        let (status, _) = send(http.get(format!("{collection}/{name}"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name} must not have been created");
    }
    let (_, existing) = send(http.get(format!("{collection}/existing"))).await;
    assert!(existing["metadata"]["annotations"].get("blob").is_none(), "the update was not written");
}

/// Many applies of one object at once: every one succeeds (apply owns the retry), and the
/// object ends as one of them wrote it.
async fn concurrent_applies_of_one_object_all_succeed(server: &TestServer) {
    let http = reqwest::Client::new();
    let apply = format!("{}{V1}/apply", server.url);
    let mut tasks = Vec::new();
    for round in 0..24 {
        let (http, apply) = (http.clone(), apply.clone());
        tasks.push(tokio::spawn(async move {
            let mut object = instance("contended");
            object["metadata"]["labels"] = json!({"round": round.to_string()});
            object["spec"]["env"] = json!([{"name": "ROUND", "value": round.to_string()}]);
            send(http.post(&apply).json(&json!({"items": [object]}))).await
        }));
    }
    for task in tasks {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, StatusCode::OK, "a concurrent apply failed: {body}");
    }
    let (_, stored) = send(http.get(format!("{}{V1}/namespaces/default/instances/contended", server.url))).await;
    let round = stored["metadata"]["labels"]["round"].as_str().expect("a round's label").to_owned();
    assert_eq!(stored["spec"]["env"][0]["value"], round, "labels and spec from the same apply: {stored}");
}

/// Applies racing deletes of the same object: apply is create-or-update, so it never answers
/// 404 or 409, whichever wins.
async fn apply_racing_delete_never_fails(server: &TestServer) {
    let http = reqwest::Client::new();
    let apply = format!("{}{V1}/apply", server.url);
    let item = format!("{}{V1}/namespaces/default/instances/racer", server.url);
    for round in 0..40 {
        let mut object = instance("racer");
        object["spec"]["env"] = json!([{"name": "ROUND", "value": round.to_string()}]);
        let applying = send(http.post(&apply).json(&json!({"items": [object]})));
        let deleting = send(http.delete(&item));
        let ((status, body), (deleted, gone)) = tokio::join!(applying, deleting);
        assert_eq!(status, StatusCode::OK, "round {round}: apply answered {status}: {body}");
        assert!(matches!(deleted, StatusCode::OK | StatusCode::NOT_FOUND), "round {round}: delete: {gone}");
    }
}

/// A status update must carry a status object valid for the kind; anything else is a 400 and
/// the stored status stays as it was.
async fn status_bodies_that_are_not_objects_are_refused(server: &TestServer) {
    let http = reqwest::Client::new();
    let item = format!("{}{V1}/namespaces/default/instances/web", server.url);
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    let (status, created) = send(http.post(collection).json(&instance("web"))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, stored) =
        send(http.put(format!("{item}/status")).json(&json!({"status": {"phase": "Running"}}))).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let bodies = [
        json!("x"),
        json!([1, 2]),
        json!(null),
        json!(7),
        json!({}),
        json!({"status": "x"}),
        json!({"status": [1, 2]}),
        json!({"status": null}),
        json!({"status": {"phase": "Dancing"}}),
        json!({"status": {"phase": "Running"}, "metadata": {"resourceVersion": 5}}),
        json!({"kind": "Secret", "status": {}}),
    ];
    for body in bodies {
        let (status, answer) = send(http.put(format!("{item}/status")).json(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.len() > 10), "{body}: {answer}");
    }
    let (_, after) = send(http.get(&item)).await;
    assert_eq!(after, stored, "the status survived every bad body");
}

/// A watch from a revision the server has not reached is refused at once, not a silent stream.
async fn watch_from_the_future_is_refused(server: &TestServer) {
    let http = reqwest::Client::new();
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    send(http.post(&collection).json(&instance("web"))).await;
    for version in ["999999", "-5", "9223372036854775807", "1e3", "abc"] {
        let request = http.get(&collection).query(&[("watch", "true"), ("resourceVersion", version)]);
        let response = tokio::time::timeout(std::time::Duration::from_secs(5), request.send())
            .await
            .expect("answered at once")
            .expect("request");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::BAD_REQUEST, "resourceVersion={version}: {body}");
    }
    let (_, object) = send(http.get(format!("{collection}/web"))).await;
    let current = object["metadata"]["resourceVersion"].as_str().expect("version").to_owned();
    let request = http.get(&collection).query(&[("watch", "true"), ("resourceVersion", current.as_str())]);
    let response = request.send().await.expect("watch");
    assert_eq!(response.status(), StatusCode::OK, "the current revision is a fine place to start");
}

/// The logs of an Instance whose container does not exist (no controller runs here) are a 409
/// that says why, not a 503; event filters check their name too.
async fn logs_without_a_container_say_not_started(server: &TestServer) {
    let http = reqwest::Client::new();
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    send(http.post(&collection).json(&instance("idle"))).await;
    let (status, body) = send(http.get(format!("{collection}/idle/log"))).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::CONFLICT, Some("NotStarted")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("no container yet")), "{body}");
    let (status, body) = send(http.get(format!("{collection}/missing/log"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let events = format!("{}{V1}/namespaces/default/events", server.url);
    let (status, body) = send(http.get(&events).query(&[("kind", "Instance"), ("name", "../x")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = send(http.get(&events).query(&[("name", "idle")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// The peak resident memory of a process, in MiB.
fn peak_memory_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("a number") / 1024
}

/// A 7 MB apply whose Stack substitutes a 1 MiB parameter 1.5 million times is refused with
/// a 400 before the server allocates the expansion; the server stays small and answers.
async fn stack_parameter_expansion_is_bounded(server: &TestServer) {
    let _timed = MACHINE.read().await;
    let http = reqwest::Client::new();
    let placeholders = "${p}".repeat(1_500_000);
    let stack = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Stack", "metadata": {"name": "bomb"},
        "spec": {
            "parameters": [{"name": "p", "default": "x".repeat(1 << 20)}],
            "resources": [{"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "web"}, "spec": {"image": placeholders}}]
        }
    });
    let started = std::time::Instant::now();
    let (status, body) = send(http.post(format!("{}{V1}/apply", server.url)).json(&json!({"items": [stack]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", body.to_string().chars().take(400).collect::<String>());
    let cause = &body["details"]["causes"][0];
    assert_eq!(cause["field"], "items[0].spec.resources[0]", "{cause}");
    assert!(cause["message"].as_str().is_some_and(|m| m.contains("larger than 1536 KiB")), "{cause}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    let (status, _) = send(http.get(format!("{}/readyz", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    let peak = peak_memory_mib(server.pid());
    assert!(peak < 512, "the server peaked at {peak} MiB");
}

/// A web page the user visits cannot drive the control plane: browser-style cross-origin
/// writes and bodies not declared as JSON are refused before anything is read or written.
async fn cross_site_writes_are_refused(server: &TestServer) {
    let http = reqwest::Client::new();
    let apply = format!("{}{V1}/apply", server.url);
    let item = format!("{}{V1}/namespaces/default/instances/victim", server.url);
    let (status, body) = send(http.post(&apply).json(&json!({"items": [instance("victim")]}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let batch = json!({"items": [instance("planted")]}).to_string();
    let own_origin = server.url.clone();
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        (
            "text/plain from a foreign page",
            http.post(&apply)
                .header("content-type", "text/plain")
                .header("origin", "http://evil.example")
                .body(batch.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "text/plain without an origin",
            http.post(&apply).header("content-type", "text/plain").body(batch.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "form post",
            http.post(&apply).header("content-type", "application/x-www-form-urlencoded").body(batch.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "multipart post",
            http.post(&apply).header("content-type", "multipart/form-data; boundary=x").body(batch.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no content type from a page (as fetch of an untyped Blob sends it)",
            http.post(&apply).header("origin", own_origin.as_str()).body(batch.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no content type with fetch metadata",
            http.post(&apply).header("sec-fetch-site", "same-origin").body(batch.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "JSON from a foreign origin",
            http.post(&apply)
                .header("content-type", "application/json")
                .header("origin", "http://evil.example")
                .body(batch.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "JSON from an opaque origin",
            http.post(&apply).header("content-type", "application/json").header("origin", "null").body(batch.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "lookalike origin",
            http.post(&apply)
                .header("content-type", "application/json")
                .header("origin", format!("{own_origin}.evil.example"))
                .body(batch.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "cross-site fetch",
            http.post(&apply)
                .header("content-type", "application/json")
                .header("sec-fetch-site", "cross-site")
                .body(batch.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "same-site fetch",
            http.post(&apply)
                .header("content-type", "application/json")
                .header("sec-fetch-site", "same-site")
                .body(batch.clone()),
            StatusCode::FORBIDDEN,
        ),
        ("cross-site delete", http.delete(&item).header("origin", "http://evil.example"), StatusCode::FORBIDDEN),
        (
            "cross-site status",
            http.put(format!("{item}/status")).header("sec-fetch-site", "cross-site").json(&json!({"status": {}})),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (name, request, expected) in cases {
        let (status, body) = send(request).await;
        assert_eq!(status, expected, "{name}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| m.len() > 20), "{name}: {body}");
    }
    let (status, _) = send(http.get(format!("{}{V1}/namespaces/default/instances/planted", server.url))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was planted");
    let (status, _) = send(http.get(&item)).await;
    assert_eq!(status, StatusCode::OK, "nothing was deleted");
    // The server's own origin (a future console page) and reads from anywhere still work.
    let (status, body) =
        send(http.post(&apply).header("origin", &own_origin).json(&json!({"items": [instance("mine")]}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) =
        send(http.get(&item).header("origin", "http://evil.example").header("sec-fetch-site", "cross-site")).await;
    assert_eq!(status, StatusCode::OK);
}

/// One object may not exceed 1.5 MiB encoded: ten PUTs of a 7 MB annotation add nothing to
/// the change log, each refused with a 413 that says what to do.
async fn huge_objects_are_refused(server: &TestServer) {
    let http = reqwest::Client::new();
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    let (_, created) = send(http.post(&collection).json(&instance("web"))).await;
    let (_, list) = send(http.get(&collection)).await;
    // (The store's revision moves on with lease renewals; the Instances must not.)
    let before = list["items"].clone();
    let mut huge = created.clone();
    huge["metadata"]["annotations"] = json!({"blob": "x".repeat(7 * 1000 * 1000)});
    for _ in 0..10 {
        let (status, body) = send(http.put(format!("{collection}/web")).json(&huge)).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("RequestEntityTooLarge")),
            "{body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| m.contains("limit of 1572864 bytes per object")), "{body}");
    }
    let (status, body) = send(http.post(&collection).json(&{
        let mut object = instance("other");
        object["metadata"]["annotations"] = json!({"blob": "x".repeat(2 * 1000 * 1000)});
        object
    }))
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = send(
        http.put(format!("{collection}/web/status"))
            .json(&json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "Huge", "lastTransitionTime": "2026-01-01T00:00:00Z", "message": "m".repeat(2_000_000)}]}})),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (_, list) = send(http.get(&collection)).await;
    assert_eq!(list["items"], before, "nothing was written");

    // A JSON patch whose work is out of proportion (30,000 copies of a 1 MB annotation) is
    // refused before any of it is done, and the server stays responsive.
    let mut big = instance("big");
    big["metadata"]["annotations"] = json!({"blob": "x".repeat(1_000_000)});
    let (status, body) = send(http.post(&collection).json(&big)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let copies: Vec<Value> = (0..30_000)
        .map(|i| json!({"op": "copy", "from": "/metadata/annotations/blob", "path": format!("/metadata/annotations/c{i}")}))
        .collect();
    let started = std::time::Instant::now();
    let (status, body) = send(
        http.patch(format!("{collection}/big"))
            .header("content-type", "application/json-patch+json")
            .body(Value::Array(copies).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("operations")), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused at once: {:?}", started.elapsed());
    let (status, _) = send(http.get(format!("{}/healthz", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    let few: Vec<Value> =
        (0..3).map(|i| json!({"op": "add", "path": format!("/metadata/annotations/l{i}"), "value": "v"})).collect();
    let (status, body) = send(
        http.patch(format!("{collection}/big"))
            .header("content-type", "application/json-patch+json")
            .body(Value::Array(few).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a proportionate patch of the same object passes: {body}");
}

/// DNS rebinding: a page whose own name resolves to 127.0.0.1 sends requests with its name in
/// `Host`; without authentication they are refused, whatever they ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_another_host_are_refused_without_authentication() {
    let server = TestServer::start(
        crate::common::TestDb::sqlite().await,
        &["--no-controllers", "--allowed-host", "cloud.example.com"],
    )
    .await;
    let http = reqwest::Client::new();
    let port = server.url.rsplit(':').next().unwrap_or_default().to_owned();
    let secrets = format!("{}{V1}/namespaces/default/secrets", server.url);
    let apply = format!("{}{V1}/apply", server.url);
    for host in ["attacker.example", &format!("attacker.example:{port}"), "127.0.0.1.nip.io"] {
        let (status, body) = send(http.get(&secrets).header("host", host)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| m.contains("--allowed-host")), "{body}");
        let (status, _) =
            send(http.post(&apply).header("host", host).json(&json!({"items": [instance("planted")]}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        let (status, _) = send(http.get(format!("{}/ui", server.url)).header("host", host)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}: the console too");
    }
    let (status, _) = send(http.get(format!("{}{V1}/namespaces/default/instances/planted", server.url))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was planted");
    for host in
        [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "cloud.example.com".into()]
    {
        let (status, body) = send(http.get(&secrets).header("host", host.as_str())).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    let (status, _) = send(http.get(format!("{}/healthz", server.url)).header("host", "probe.internal")).await;
    assert_eq!(status, StatusCode::OK, "health probes may use any name");
    server.stop().await;
}

on_both_backends!(
    huge_objects_are_refused,
    stalled_list_readers_do_not_starve_the_store,
    many_watches_share_their_work,
    cross_site_writes_are_refused,
    stack_parameter_expansion_is_bounded,
    status_bodies_that_are_not_objects_are_refused,
    watch_from_the_future_is_refused,
    logs_without_a_container_say_not_started,
    apply_is_all_or_nothing,
    concurrent_applies_of_one_object_all_succeed,
    apply_racing_delete_never_fails,
);

/// Polls `/readyz` until it answers 200, failing with `failure` after `seconds`.
async fn wait_until_ready(http: &reqwest::Client, server: &TestServer, seconds: u64, failure: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let ready = http.get(format!("{}/readyz", server.url)).send().await;
        if ready.as_ref().is_ok_and(|response| response.status() == StatusCode::OK) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{failure}: {ready:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads from a raw connection until the server closes it or `within` passes; returns what
/// was read and whether the server closed the connection.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into_owned(), true),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
        }
    }
}

/// Slowloris and friends: half-sent headers, a body sent a byte at a time and idle keep-alive
/// connections are closed after their timeouts; beyond the connection limit a connection gets
/// a 503 at once; the server keeps answering others throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_connections_are_closed_and_counted() {
    let _timed = MACHINE.read().await;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let limits = ["--header-read-timeout", "2s", "--body-read-timeout", "3s"];
    let server =
        TestServer::start(crate::common::TestDb::sqlite().await, &[&["--no-controllers"][..], &limits].concat()).await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let http = reqwest::Client::new();

    // 300 connections that never finish their request head.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.expect("partial head");
        slow.push(stream);
    }
    let (status, _) = send(http.get(format!("{}/readyz", server.url))).await;
    assert_eq!(status, StatusCode::OK, "the server answers while they hang");
    // One connection sending its body a byte every half second.
    let mut trickle = TcpStream::connect(&address).await.expect("connect");
    trickle
        .write_all(b"POST /apis/minicloud.dev/v1/apply HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("head");
    let started = std::time::Instant::now();
    let trickling = tokio::spawn(async move {
        let mut answer = String::new();
        for _ in 0..20 {
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
            let (read, closed) = read_until_closed(&mut trickle, std::time::Duration::from_millis(500)).await;
            answer.push_str(&read);
            if closed {
                break;
            }
        }
        answer
    });
    // An idle keep-alive connection after one complete request.
    let mut idle = TcpStream::connect(&address).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("request");

    for (index, stream) in slow.iter_mut().enumerate() {
        let (_, closed) = read_until_closed(stream, std::time::Duration::from_secs(8)).await;
        assert!(closed, "half-sent head {index} still open after {:?}", started.elapsed());
    }
    let (answer, closed) = read_until_closed(&mut idle, std::time::Duration::from_secs(8)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle keep-alive connection is closed");
    let answer = trickling.await.expect("trickle task");
    assert!(answer.starts_with("HTTP/1.1 408"), "a body sent a byte at a time times out: {answer:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(9), "took {:?}", started.elapsed());

    server.stop().await;

    // At the connection limit, one more connection gets a 503 at once, not a hang. Each held
    // connection first completes a request, so it has certainly been accepted.
    let flags = ["--no-controllers", "--max-connections", "40", "--header-read-timeout", "30s"];
    let server = TestServer::start(crate::common::TestDb::sqlite().await, &flags).await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("request");
        let mut answer = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer).await.expect("answer");
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut extra = TcpStream::connect(&address).await.expect("connect");
    extra.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.ok();
    let (answer, closed) = read_until_closed(&mut extra, std::time::Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("open connections"), "{answer:?}");
    assert!(closed);
    drop(held);
    wait_until_ready(&http, &server, 5, "the server did not recover from its connection limit").await;
    server.stop().await;
}

/// Fills the store with `count` Instances carrying a 4 KiB annotation each (in batches).
async fn fill(http: &reqwest::Client, server: &TestServer, prefix: &str, count: usize) {
    let apply = format!("{}{V1}/apply", server.url);
    for batch in 0..count.div_ceil(500) {
        let items: Vec<Value> = (batch * 500..count.min((batch + 1) * 500))
            .map(|index| {
                let mut object = instance(&format!("{prefix}-{index}"));
                object["metadata"]["annotations"] = json!({"padding": "p".repeat(4096)});
                object
            })
            .collect();
        let (status, body) = send(http.post(&apply).json(&json!({"items": items}))).await;
        assert_eq!(status, StatusCode::OK, "{}", body.to_string().chars().take(300).collect::<String>());
    }
}

/// Sends a request on a raw connection and never reads the answer.
async fn request_and_never_read(address: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.expect("request");
    stream
}

/// The time `request` takes, failing beyond `limit`.
async fn within(limit: std::time::Duration, what: &str, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(limit, send(request))
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"));
    eprintln!("{what}: {:?}", started.elapsed());
    answer
}

/// Clients that ask for a large list and never read it hold no store connection: the server
/// stays ready, and gets and creates answer at once; memory stays bounded.
async fn stalled_list_readers_do_not_starve_the_store(server: &TestServer) {
    let _timed = MACHINE.read().await;
    let http = reqwest::Client::new();
    fill(&http, server, "big", 3000).await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let list = format!("{V1}/namespaces/default/instances");
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(request_and_never_read(&address, &list).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let second = std::time::Duration::from_secs(1);
    let (status, body) = within(second, "readyz", http.get(format!("{}/readyz", server.url))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = within(second, "get", http.get(format!("{}{list}/big-7", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    let create = http.post(format!("{}{list}", server.url)).json(&instance("during"));
    let (status, body) = within(second, "create", create).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) =
        within(std::time::Duration::from_secs(5), "a full list", http.get(format!("{}{list}", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"].as_array().map(Vec::len), Some(3001));
    let peak = peak_memory_mib(server.pid());
    assert!(peak < 400, "the server peaked at {peak} MiB with 12 stalled 12 MB lists");
    drop(stalled);
}

/// 250 watches starting with a list and 250 replaying history, all at once: every one gets
/// its answer and its events promptly, and writes are not delayed meanwhile.
async fn many_watches_share_their_work(server: &TestServer) {
    const WATCHES: usize = 500;
    let _alone = MACHINE.write().await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    fill(&http, server, "obj", 600).await;
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    let started = std::time::Instant::now();
    let mut watches = Vec::new();
    for index in 0..WATCHES {
        let mut request = http.get(&collection).query(&[("watch", "true"), ("heartbeatSeconds", "300")]);
        if index % 2 == 1 {
            request = request.query(&[("resourceVersion", "1")]);
        }
        // A list brings the 600 objects (and maybe the late one), a replay from revision 1 the
        // 599 later creations; both then see the late one.
        let expected = if index % 2 == 1 { 600 } else { 601 };
        watches.push(tokio::spawn(async move {
            use futures::StreamExt;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            let response = request.send().await.expect("watch");
            let status = response.status();
            assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap_or_default());
            let answered = std::time::Instant::now();
            let mut stream = response.bytes_stream();
            let mut seen = 0usize;
            while seen < expected {
                let chunk = tokio::time::timeout_at(deadline, stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("only {seen} of {expected} events within a minute"))
                    .expect("stream open")
                    .expect("chunk");
                // Counting line ends (not parsing lines) keeps this client from competing with
                // the server for the machine's two cores; no bookmark comes within the
                // five-minute heartbeat, so every line is an event.
                seen += memchr::memchr_iter(b'\n', &chunk).count();
            }
            assert_eq!(seen, expected, "events delivered twice");
            answered
        }));
    }
    // A write while 500 watches start.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, body) = within(
        std::time::Duration::from_secs(2),
        "create among 500 watches",
        http.post(&collection).json(&instance("late")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut slowest = std::time::Duration::ZERO;
    for watch in watches {
        let answered = watch.await.expect("every watch got its answer and its events");
        slowest = slowest.max(answered - started);
    }
    eprintln!("slowest watch answered after {slowest:?}");
    assert!(slowest < std::time::Duration::from_secs(10), "a watch waited {slowest:?} for its answer");
}

/// Beyond the watch limit a watch is a 429; a watch whose client reads nothing is ended after
/// the send timeout, which frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_are_limited_and_stalled_watches_end() {
    let flags = ["--no-controllers", "--max-watches", "3", "--watch-send-timeout", "2s"];
    let server = TestServer::start(crate::common::TestDb::sqlite().await, &flags).await;
    let http = reqwest::Client::new();
    let address = server.url.trim_start_matches("http://").to_owned();
    let path = format!("{V1}/namespaces/default/instances?watch=true");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(request_and_never_read(&address, &path).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    let (status, body) = send(http.get(&collection).query(&[("watch", "true")])).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("TooManyRequests")), "{body}");
    // Enough changes to fill the stalled clients' socket buffers and queues.
    fill(&http, &server, "flood", 3000).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let response =
            http.get(&collection).query(&[("watch", "true"), ("resourceVersion", "1")]).send().await.expect("watch");
        if response.status() == StatusCode::OK {
            break;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(std::time::Instant::now() < deadline, "stalled watches still hold their slots");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    drop(open);
    server.stop().await;
}

/// When the store cannot answer (here: another session holds PostgreSQL's revision table
/// locked), `/readyz` says so within its 2 s bound instead of hanging, and recovers with the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reflects_a_store_that_cannot_answer() {
    let _timed = MACHINE.read().await;
    use sqlx::Connection;
    let database = crate::common::TestDb::postgres().await;
    let url = database.url.clone();
    let server = TestServer::start(database, &["--no-controllers"]).await;
    let http = reqwest::Client::new();
    let (status, _) = send(http.get(format!("{}/readyz", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    let mut holder = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut holder).await.expect("begin");
    sqlx::query("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE").execute(&mut holder).await.expect("lock");
    let started = std::time::Instant::now();
    let (status, body) = send(http.get(format!("{}/readyz", server.url))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("did not answer")), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "took {:?}", started.elapsed());
    sqlx::query("ROLLBACK").execute(&mut holder).await.expect("unlock");
    holder.close().await.expect("close");
    wait_until_ready(&http, &server, 20, "readiness did not come back").await;
    server.stop().await;
}

/// A TCP proxy to PostgreSQL that can be cut (every connection reset) and mended, so that one
/// test server loses its database while the others keep theirs.
struct DatabaseCable {
    port: u16,
    upstream: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DatabaseCable {
    async fn lay(upstream: &str) -> DatabaseCable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let mut cable = DatabaseCable { port, upstream: upstream.to_owned(), task: None };
        cable.task = Some(tokio::spawn(DatabaseCable::relay(listener, cable.upstream.clone())));
        cable
    }

    async fn relay(listener: tokio::net::TcpListener, upstream: String) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { return };
            let upstream = upstream.clone();
            connections.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }

    /// Cuts it: the listener closes and every relayed connection ends.
    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Mends it on the same port.
    async fn mend(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("bind again");
        self.task = Some(tokio::spawn(DatabaseCable::relay(listener, self.upstream.clone())));
    }
}

/// PostgreSQL gone (its connections reset, nothing listening): reads are refused as clearly
/// and nearly as fast as writes, with the reason, instead of each waiting out the pool's 10 s;
/// once it is back, everything answers again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_gone_is_answered_at_once() {
    let _timed = MACHINE.read().await;
    let database = crate::common::TestDb::postgres().await;
    let (before, after) = database.url.split_once("@127.0.0.1:5432").expect("a local PostgreSQL URL");
    let mut cable = DatabaseCable::lay("127.0.0.1:5432").await;
    let url = format!("{before}@127.0.0.1:{}{after}", cable.port);
    let server = TestServer::start(crate::common::TestDb::at_url(&url), &["--no-controllers"]).await;
    let http = reqwest::Client::new();
    let list = format!("{}{V1}/namespaces/default/instances", server.url);
    let (status, _) = send(http.post(&list).json(&instance("before"))).await;
    assert_eq!(status, StatusCode::CREATED);
    cable.cut();
    // The first request meets the cut; the ones after it are answered at once.
    let _ = within(std::time::Duration::from_secs(15), "the first list", http.get(&list)).await;
    for round in 0..5 {
        let started = std::time::Instant::now();
        let (status, body) = send(http.get(&list)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| m.contains("database")), "{body}");
        let (write, _) = send(http.post(&list).json(&instance(&format!("during-{round}")))).await;
        assert_eq!(write, StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "round {round} took {:?}", started.elapsed());
    }
    let (status, _) = send(http.get(format!("{}/readyz", server.url))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    cable.mend().await;
    wait_until_ready(&http, &server, 20, "readiness did not come back").await;
    let (status, body) = send(http.get(&list)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = send(http.post(&list).json(&instance("after"))).await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
    cable.cut();
    database.cleanup().await;
}
