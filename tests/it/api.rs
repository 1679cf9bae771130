//! The API over real HTTP, against the real `cloud server` binary on SQLite and on PostgreSQL:
//! status codes, optimistic concurrency, status, selectors, watch, apply, malformed input,
//! request ids, request metrics and graceful shutdown.

use std::time::Duration;

use crate::common::server::TestServer;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";

fn instance(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "labels": labels},
        "spec": {"image": "minicloud/web:local", "ports": [{"containerPort": 8080}]}
    })
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn revision(http: &reqwest::Client, server: &TestServer) -> String {
    let (_, list) = send(http.get(format!("{}{V1}/instances", server.url))).await;
    list["metadata"]["resourceVersion"].as_str().expect("list revision").to_owned()
}

/// Every object a request could write — of each kind discovery lists but leases, which the
/// server's own housekeeping renews every few seconds — as `kind namespace/name` with its
/// resourceVersion. "Nothing was written" compares two of these: the store's revision is no
/// proof, since lease renewals move it on.
async fn stored_objects(http: &reqwest::Client, server: &TestServer) -> std::collections::BTreeMap<String, String> {
    let (_, discovery) = send(http.get(format!("{}{V1}", server.url))).await;
    let plurals: Vec<String> = discovery["resources"]
        .as_array()
        .expect("discovery lists resources")
        .iter()
        .filter_map(|resource| resource["name"].as_str())
        .filter(|plural| !plural.contains('/') && *plural != "leases")
        .map(str::to_owned)
        .collect();
    assert!(plurals.iter().any(|plural| plural == "instances"), "{discovery}");
    let mut objects = std::collections::BTreeMap::new();
    for plural in plurals {
        let (status, list) = send(http.get(format!("{}{V1}/{plural}", server.url))).await;
        assert_eq!(status, StatusCode::OK, "{plural}: {list}");
        for item in list["items"].as_array().expect("items") {
            let meta = &item["metadata"];
            objects.insert(
                format!(
                    "{plural} {}/{}",
                    meta["namespace"].as_str().unwrap_or(""),
                    meta["name"].as_str().unwrap_or("")
                ),
                meta["resourceVersion"].as_str().unwrap_or("").to_owned(),
            );
        }
    }
    objects
}

async fn crud_and_status_codes(server: &TestServer) {
    let http = reqwest::Client::new();
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    let (status, created) = send(http.post(&collection).json(&instance("web", json!({"app": "web"})))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    let (status, body) = send(http.post(&collection).json(&instance("web", json!({})))).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::CONFLICT, Some("AlreadyExists")), "{body}");

    let item = format!("{collection}/web");
    let (status, fetched) = send(http.get(&item)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);

    let mut changed = created.clone();
    changed["spec"]["image"] = json!("minicloud/web:v2");
    let (status, updated) = send(http.put(&item).json(&changed)).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["metadata"]["generation"], 2);
    let (status, body) = send(http.put(&item).json(&changed)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::CONFLICT, Some("Conflict")),
        "stale resourceVersion: {body}"
    );
    assert!(body["message"].as_str().is_some_and(|m| m.contains("get it again")), "{body}");

    let mut with_status = updated.clone();
    with_status["status"] = json!({"phase": "Running", "restartCount": 1});
    let (status, stored) = send(http.put(format!("{item}/status")).json(&with_status)).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["status"]["phase"], "Running");
    assert_eq!(stored["metadata"]["generation"], 2, "status writes leave generation alone");
    let mut bad_status = stored.clone();
    bad_status["status"] = json!({"phase": "Dancing"});
    let (status, body) = send(http.put(format!("{item}/status")).json(&bad_status)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = send(http.delete(format!("{item}?resourceVersion=1"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = send(http.delete(&item)).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("Success")), "{body}");
    assert_eq!((body["kind"].as_str(), body["details"]["name"].as_str()), (Some("Status"), Some("web")));
    let (status, body) = send(http.get(&item)).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::NOT_FOUND, Some("NotFound")));
    assert_eq!(body["details"]["name"], "web");
}

async fn lists_select_by_label_and_span_namespaces(server: &TestServer) {
    let http = reqwest::Client::new();
    for (namespace, name, labels) in [
        ("default", "a", json!({"app": "web", "tier": "front"})),
        ("default", "b", json!({"app": "web", "tier": "db"})),
        ("staging", "c", json!({"app": "web"})),
    ] {
        let (status, body) = send(
            http.post(format!("{}{V1}/namespaces/{namespace}/instances", server.url)).json(&instance(name, labels)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let names = |list: &Value| {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let (_, list) = send(
        http.get(format!("{}{V1}/namespaces/default/instances", server.url))
            .query(&[("labelSelector", "app=web,tier!=db")]),
    )
    .await;
    assert_eq!(list["kind"], "InstanceList");
    assert_eq!(names(&list), ["a"]);
    let (_, all) = send(http.get(format!("{}{V1}/instances", server.url))).await;
    assert_eq!(names(&all), ["a", "b", "c"]);
    let (status, body) =
        send(http.get(format!("{}{V1}/instances", server.url)).query(&[("labelSelector", "app in web")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn next_line(
    lines: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut Vec<u8>,
) -> Value {
    loop {
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            return serde_json::from_slice(&line).expect("JSON line");
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("a watch line in time")
            .expect("stream open")
            .expect("chunk");
        buffer.extend_from_slice(&chunk);
    }
}

async fn watch_streams_changes_and_resumes(server: &TestServer) {
    let http = reqwest::Client::new();
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    send(http.post(&collection).json(&instance("before", json!({})))).await;
    let from = revision(&http, server).await;

    // Without resourceVersion: the current objects first, as ADDED.
    let response = http
        .get(&collection)
        .query(&[("watch", "true"), ("heartbeatSeconds", "1")])
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("watch");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let first = next_line(&mut stream, &mut buffer).await;
    assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("before")));

    let (_, created) = send(http.post(&collection).json(&instance("live", json!({})))).await;
    let line = next_line(&mut stream, &mut buffer).await;
    assert_eq!((line["type"].as_str(), line["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("live")));
    assert_eq!(line["object"]["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
    send(http.delete(format!("{collection}/live"))).await;
    let line = next_line(&mut stream, &mut buffer).await;
    assert_eq!(line["type"], "DELETED");
    // Heartbeats carry the last revision.
    let bookmark = next_line(&mut stream, &mut buffer).await;
    assert_eq!(bookmark["type"], "BOOKMARK", "{bookmark}");

    // Resuming from a revision replays exactly what came after it.
    let response = http
        .get(&collection)
        .query(&[("watch", "true"), ("resourceVersion", from.as_str())])
        .send()
        .await
        .expect("watch");
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let replayed: Vec<(String, String)> = {
        let mut lines = Vec::new();
        for _ in 0..2 {
            let line = next_line(&mut stream, &mut buffer).await;
            lines.push((
                line["type"].as_str().unwrap_or("").to_owned(),
                line["object"]["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            ));
        }
        lines
    };
    assert_eq!(replayed, [("ADDED".to_owned(), "live".to_owned()), ("DELETED".to_owned(), "live".to_owned())]);

    let (status, body) = send(http.get(&collection).query(&[("watch", "true"), ("resourceVersion", "abc")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn apply_creates_configures_and_prunes_fields(server: &TestServer) {
    let http = reqwest::Client::new();
    let apply = format!("{}{V1}/apply", server.url);
    let mut web = instance("web", json!({"app": "web", "tier": "front"}));
    web["spec"]["env"] = json!([{"name": "MODE", "value": "a"}]);
    let batch = json!({"items": [web.clone(), instance("api", json!({}))]});
    let (status, body) = send(http.post(&apply).json(&batch)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let actions = |body: &Value| {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["action"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(actions(&body), ["created", "created"]);
    let (_, body) = send(http.post(&apply).json(&batch)).await;
    assert_eq!(actions(&body), ["unchanged", "unchanged"]);

    // Someone else labels the object; the manifest then drops a label and a spec field.
    let item = format!("{}{V1}/namespaces/default/instances/web", server.url);
    let (_, mut live) = send(http.get(&item)).await;
    live["metadata"]["labels"]["owner"] = json!("ops");
    live["spec"]["network"] = json!("backend");
    let (status, body) = send(http.put(&item).json(&live)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut next = instance("web", json!({"app": "web"}));
    next["spec"]["image"] = json!("minicloud/web:v2");
    let before = stored_objects(&http, server).await;
    let (_, dry) = send(http.post(format!("{apply}?dryRun=true")).json(&json!({"items": [next.clone()]}))).await;
    assert_eq!(dry["dryRun"], true);
    assert_eq!(actions(&dry), ["configured"]);
    let changes: Vec<&str> =
        dry["items"][0]["changes"].as_array().expect("changes").iter().filter_map(Value::as_str).collect();
    assert_eq!(changes, ["spec.env", "spec.image", "metadata.labels.tier"]);
    assert_eq!(stored_objects(&http, server).await, before, "a dry run writes nothing");
    let (_, body) = send(http.post(&apply).json(&json!({"items": [next]}))).await;
    assert_eq!(actions(&body), ["configured"]);
    let (_, stored) = send(http.get(&item)).await;
    assert_eq!(
        stored["metadata"]["labels"],
        json!({"app": "web", "owner": "ops"}),
        "removed label gone, foreign label kept"
    );
    assert!(stored["spec"].get("env").is_none(), "field removed from the manifest is removed: {}", stored["spec"]);
    assert_eq!(stored["spec"]["network"], "backend", "a spec field the manifest never set stays");

    // One invalid object: nothing of the batch is applied, every problem is listed.
    let mut broken = instance("broken", json!({}));
    broken["spec"]["imgae"] = json!("x");
    let before = stored_objects(&http, server).await;
    let (status, body) = send(http.post(&apply).json(&json!({"items": [instance("fine", json!({})), broken]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let fields: Vec<&str> =
        body["details"]["causes"].as_array().expect("causes").iter().filter_map(|c| c["field"].as_str()).collect();
    assert!(fields.contains(&"items[1].spec.imgae"), "{body}");
    assert_eq!(stored_objects(&http, server).await, before);
}

/// Bad input of every sort gets a 4xx with a message, never a 500, and changes nothing.
async fn malformed_input_is_refused_and_changes_nothing(server: &TestServer) {
    let http = reqwest::Client::new();
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    send(http.post(&collection).json(&instance("existing", json!({})))).await;
    let before = stored_objects(&http, server).await;
    let huge = vec![b' '; 10 * 1024 * 1024];
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        ("truncated JSON", http.post(&collection).header("content-type", "application/json").body("{\"apiVersion\": \"minicloud.dev/v1\", \"kind\""), StatusCode::BAD_REQUEST),
        ("YAML body", http.post(&collection).header("content-type", "application/json").body("kind: Instance\n"), StatusCode::BAD_REQUEST),
        ("YAML body without a JSON type", http.post(&collection).body("kind: Instance\n"), StatusCode::BAD_REQUEST),
        ("YAML body without a type from a page", http.post(&collection).header("sec-fetch-mode", "no-cors").body("kind: Instance\n"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("empty body", http.post(&collection), StatusCode::BAD_REQUEST),
        ("array body", http.post(&collection).header("content-type", "application/json").body("[1,2]"), StatusCode::BAD_REQUEST),
        ("wrong types", http.post(&collection).json(&json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "x"}, "spec": {"image": 5, "ports": "many"}})), StatusCode::BAD_REQUEST),
        ("kind mismatch", http.post(&collection).json(&json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "x"}, "spec": {}})), StatusCode::BAD_REQUEST),
        ("namespace mismatch", http.post(&collection).json(&json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "x", "namespace": "other"}, "spec": {"image": "i"}})), StatusCode::BAD_REQUEST),
        ("10 MB body", http.post(&collection).header("content-type", "application/json").body(huge.clone()), StatusCode::PAYLOAD_TOO_LARGE),
        ("10 MB apply", http.post(format!("{}{V1}/apply", server.url)).header("content-type", "application/json").body(huge), StatusCode::PAYLOAD_TOO_LARGE),
        ("unknown kind", http.get(format!("{}{V1}/namespaces/default/databases", server.url)), StatusCode::NOT_FOUND),
        ("unknown path", http.get(format!("{}/api/v1/pods", server.url)), StatusCode::NOT_FOUND),
        ("invalid name", http.get(format!("{collection}/Web_1")), StatusCode::BAD_REQUEST),
        ("path traversal", http.get(format!("{collection}/..%2F..%2Fetc%2Fpasswd")), StatusCode::BAD_REQUEST),
        ("newline in a name", http.get(format!("{collection}/web%0Ax")), StatusCode::BAD_REQUEST),
        ("invalid namespace", http.get(format!("{}{V1}/namespaces/..%2F/instances", server.url)), StatusCode::BAD_REQUEST),
        ("invalid name in body", http.post(&collection).json(&instance("../x", json!({}))), StatusCode::BAD_REQUEST),
        ("name mismatch", http.put(format!("{collection}/existing")).json(&instance("other", json!({}))), StatusCode::BAD_REQUEST),
        ("bad watch flag", http.get(&collection).query(&[("watch", "maybe")]), StatusCode::BAD_REQUEST),
        ("apply without items", http.post(format!("{}{V1}/apply", server.url)).json(&json!({"objects": []})), StatusCode::BAD_REQUEST),
        ("status of a missing object", http.put(format!("{collection}/missing/status")).json(&json!({"status": {}})), StatusCode::NOT_FOUND),
    ];
    for (name, request, expected) in cases {
        let response = request.send().await.expect("request");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{name}: {body}");
        assert_eq!(body["code"], expected.as_u16(), "{name}: JSON error body expected, got {body}");
        assert!(body["message"].as_str().is_some_and(|m| m.len() > 10), "{name}: a useful message: {body}");
    }
    assert_eq!(stored_objects(&http, server).await, before, "nothing changed");
}

async fn health_openapi_and_request_ids(server: &TestServer) {
    let http = reqwest::Client::new();
    let response = http.get(format!("{}/healthz", server.url)).send().await.expect("healthz");
    assert_eq!(response.status(), StatusCode::OK);
    let generated = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(generated.is_some_and(|id| id.len() >= 32), "a request id is generated");
    let response =
        http.get(format!("{}/readyz", server.url)).header("x-request-id", "trace-me-42").send().await.expect("readyz");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "trace-me-42", "a client's request id is kept");
    // The log line is written as the response completes and read by another thread: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logged =
            server.log.lock().map(|lines| lines.iter().any(|line| line.contains("trace-me-42"))).unwrap_or(false);
        if logged {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the request id appears in the server log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, document) = send(http.get(format!("{}/openapi.json", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document, minicloud_model::openapi::document());
    let (_, version) = send(http.get(format!("{}/version", server.url))).await;
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
}

/// `/metrics` as a map from series (`name{labels}`) to value.
async fn metrics(http: &reqwest::Client, server: &TestServer) -> std::collections::HashMap<String, f64> {
    let text = http.get(format!("{}/metrics", server.url)).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn metrics_count_requests_by_route_and_measure_watch_lag(server: &TestServer) {
    let http = reqwest::Client::new();
    let collection = format!("{}{V1}/namespaces/default/instances", server.url);
    let route = "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}";
    let listed = format!(r#"minicloud_api_requests_total{{method="GET",route="{route}",code="200"}}"#);
    let before = metrics(&http, server).await;
    for _ in 0..3 {
        send(http.get(&collection)).await;
    }
    // A write refused by the CSRF guard is counted under its route too.
    let (status, _) =
        send(http.post(&collection).header("sec-fetch-site", "cross-site").json(&instance("x", json!({})))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let after = metrics(&http, server).await;
    let count = |series: &str, map: &std::collections::HashMap<String, f64>| map.get(series).copied().unwrap_or(0.0);
    assert_eq!(count(&listed, &after) - count(&listed, &before), 3.0, "{after:?}");
    let refused = format!(r#"minicloud_api_requests_total{{method="POST",route="{route}",code="403"}}"#);
    assert_eq!(count(&refused, &after), 1.0, "{after:?}");
    let timed = format!(r#"minicloud_api_request_duration_seconds_count{{method="GET",route="{route}"}}"#);
    assert!(count(&timed, &after) >= 3.0, "{after:?}");

    // Whatever paths and methods clients invent, the series stay few.
    let series = |map: &std::collections::HashMap<String, f64>| {
        map.keys().filter(|name| name.starts_with("minicloud_api_requests_total{")).count()
    };
    for attempt in 0..40 {
        let method = reqwest::Method::from_bytes(format!("BREW{attempt}").as_bytes()).expect("method");
        http.request(method, format!("{}/nothing/{attempt}/here", server.url)).send().await.expect("sent");
        http.get(format!("{}/no/such/{attempt}", server.url)).send().await.expect("sent");
    }
    let invented = metrics(&http, server).await;
    assert!(series(&invented) <= series(&after) + 2, "{} series after 80 odd requests", series(&invented));
    assert_eq!(count(r#"minicloud_api_requests_total{method="GET",route="unmatched",code="404"}"#, &invented), 40.0);
    assert_eq!(count(r#"minicloud_api_requests_total{method="other",route="unmatched",code="404"}"#, &invented), 40.0);

    // A watch that takes a change shows in the lag histogram, and as open while it is.
    let lag = r#"minicloud_watch_lag_seconds_count{watcher="client",kind="Instance"}"#;
    let response = http.get(&collection).query(&[("watch", "true")]).send().await.expect("watch");
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    send(http.post(&collection).json(&instance("lagging", json!({})))).await;
    let line = next_line(&mut stream, &mut buffer).await;
    assert_eq!(line["object"]["metadata"]["name"], "lagging");
    let watching = metrics(&http, server).await;
    assert_eq!(count("minicloud_api_watches_open", &watching), 1.0, "{watching:?}");
    assert!(count(lag, &watching) >= 1.0, "{watching:?}");
    // Seconds, not another unit: a sane total for one change (the figure itself is benchmarked).
    let total = count(r#"minicloud_watch_lag_seconds_sum{watcher="client",kind="Instance"}"#, &watching);
    assert!((0.0..10.0).contains(&total), "{total}");
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count("minicloud_api_watches_open", &metrics(&http, server).await) != 0.0 {
        assert!(std::time::Instant::now() < deadline, "a closed watch is no longer counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every write route checks that the body is for the object its URL names — kind, namespace
/// and name — with one shared check: a body for anything else is a 400 and nothing changes
/// (the access layer decided from the URL alone).
async fn every_write_route_refuses_a_body_for_another_object(server: &TestServer) {
    let http = reqwest::Client::new();
    let namespace = "routes";
    let collection = format!("{}{V1}/namespaces/{namespace}/instances", server.url);
    let item = format!("{collection}/web");
    let mut web = instance("web", json!({}));
    web["metadata"]["namespace"] = json!(namespace);
    let (status, body) = send(http.post(&collection).json(&web)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let policy = json!({"apiVersion": "minicloud.dev/v1", "kind": "Policy", "metadata": {"name": "web", "namespace": namespace},
        "spec": {"enforcement": "Deny", "rules": {"allowedImages": ["nothing/*"]}}});
    let as_yaml = |value: &Value| serde_json::to_string(value).expect("json");
    let renamed = |field: &str, value: &str| {
        let mut other = web.clone();
        other["metadata"][field] = json!(value);
        other
    };
    let before = stored_objects(&http, server).await;
    let merge = "application/merge-patch+json";
    let apply = "application/apply-patch+yaml";
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("POST of a Policy to instances", http.post(&collection).json(&policy)),
        ("POST to another namespace", http.post(&collection).json(&renamed("namespace", "other"))),
        ("PUT of a Policy", http.put(&item).json(&policy)),
        ("PUT of another name", http.put(&item).json(&renamed("name", "other"))),
        ("PUT of another namespace", http.put(&item).json(&renamed("namespace", "other"))),
        ("status of a Policy", http.put(format!("{item}/status")).json(&json!({"kind": "Policy", "status": {}}))),
        (
            "status naming another object",
            http.put(format!("{item}/status")).json(&json!({"metadata": {"name": "other"}, "status": {}})),
        ),
        (
            "merge patch turning it into a Policy",
            http.patch(&item).header("content-type", merge).body(r#"{"kind": "Policy"}"#),
        ),
        (
            "merge patch moving it to another namespace",
            http.patch(&item).header("content-type", merge).body(r#"{"metadata": {"namespace": "other"}}"#),
        ),
        (
            "JSON patch renaming it",
            http.patch(&item)
                .header("content-type", "application/json-patch+json")
                .body(r#"[{"op": "replace", "path": "/metadata/name", "value": "other"}]"#),
        ),
        ("server-side apply of a Policy", http.patch(&item).header("content-type", apply).body(as_yaml(&policy))),
        (
            "server-side apply of another name",
            http.patch(&item).header("content-type", apply).body(as_yaml(&renamed("name", "other"))),
        ),
        (
            "server-side apply of another namespace",
            http.patch(&item).header("content-type", apply).body(as_yaml(&renamed("namespace", "other"))),
        ),
    ];
    for (what, request) in cases {
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("URL") || message.contains("endpoint"), "{what}: {message}");
    }
    assert_eq!(stored_objects(&http, server).await, before, "nothing was written");
    let (status, _) = send(http.get(format!("{}{V1}/namespaces/{namespace}/policies/web", server.url))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no Policy was written");
}

on_both_backends!(
    every_write_route_refuses_a_body_for_another_object,
    metrics_count_requests_by_route_and_measure_watch_lag,
    crud_and_status_codes,
    lists_select_by_label_and_span_namespaces,
    watch_streams_changes_and_resumes,
    apply_creates_configures_and_prunes_fields,
    malformed_input_is_refused_and_changes_nothing,
    health_openapi_and_request_ids,
);

/// SIGTERM: open watches end cleanly, the process exits 0, and JSON logs are one object per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_watches() {
    let mut server =
        TestServer::start(crate::common::TestDb::sqlite().await, &["--log-format", "json", "--no-controllers"]).await;
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}{V1}/namespaces/default/instances", server.url))
        .query(&[("watch", "true"), ("heartbeatSeconds", "300")])
        .send()
        .await
        .expect("watch");
    let mut stream = response.bytes_stream();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            chunk.expect("the watch ends cleanly, without a transport error");
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch stream ended when the server shut down");
    let (server, status) = status.await.expect("join");
    assert!(status.is_some_and(|status| status.success()), "exit status {status:?}");
    // The log reader thread may still be draining the pipe: wait (bounded) for the last lines.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = server.log.lock().map(|lines| lines.clone()).unwrap_or_default();
        if lines.iter().any(|line| line.contains("stopped")) || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(lines.iter().any(|line| line.contains("shutting down")), "{lines:?}");
    for line in &lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
    }
    server.stop().await;
}
