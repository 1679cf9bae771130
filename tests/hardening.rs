//! The landed core attacked as a hostile client or a careless user would, over real HTTP
//! against the real `cloud server` binary (SQLite and PostgreSQL): apply atomicity and races,
//! path injection, status bodies, watches from the future, logs without a container.

mod common;

use common::server::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";

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

on_both_backends!(
    apply_is_all_or_nothing,
    concurrent_applies_of_one_object_all_succeed,
    apply_racing_delete_never_fails,
);
