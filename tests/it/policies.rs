//! Admission policies with the real `cloud server` over HTTP and the real `cloud` binary: a
//! `Deny` policy refuses an image before anything is written (apply, POST, PUT, merge patch,
//! server-side apply, a Stack's rendered resource, a policy in the same batch), naming the
//! policy, the rule and the reason in the 403 and in `cloud apply`'s output; every rule type;
//! `Warn` (Warning headers, `cloud apply` prints them) and `DryRun` (an event on the policy);
//! who may write policies and for which namespaces; invalid policies located; the audit log
//! of a denial.

use std::time::{Duration, Instant};

use crate::common::server::TestServer;
use crate::common::TestDb;
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";

fn policy(namespace: &str, name: &str, enforcement: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Policy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"enforcement": enforcement, "rules": rules}
    })
}

fn instance(namespace: &str, name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "web"}},
        "spec": {"image": image, "resources": {"cpu": "250m", "memory": "64Mi"}}
    })
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    fn new(server: &TestServer, token: Option<&str>) -> Api {
        Api { http: reqwest::Client::new(), url: server.url.clone(), token: token.map(str::to_owned) }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<String>,
    ) -> (u16, Value, Vec<String>) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", content_type).body(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let warnings =
            response.headers().get_all("warning").iter().map(|value| value.to_str().unwrap_or("").to_owned()).collect();
        (status, response.json().await.unwrap_or(Value::Null), warnings)
    }

    async fn apply(&self, items: Vec<Value>) -> (u16, Value, Vec<String>) {
        self.send(
            reqwest::Method::POST,
            &format!("{V1}/apply"),
            "application/json",
            Some(json!({"items": items}).to_string()),
        )
        .await
    }

    async fn dry_run(&self, items: Vec<Value>) -> (u16, Value) {
        let (status, body, _) = self
            .send(
                reqwest::Method::POST,
                &format!("{V1}/apply?dryRun=true"),
                "application/json",
                Some(json!({"items": items}).to_string()),
            )
            .await;
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = self.send(reqwest::Method::GET, path, "", None).await;
        (status, body)
    }
}

/// `cloud apply -f` of `object` written to a file, against `server`.
fn cloud_apply(server: &TestServer, object: &Value) -> std::process::Output {
    let directory = tempfile::tempdir().expect("dir");
    let manifest = directory.path().join("object.yaml");
    std::fs::write(&manifest, serde_json::to_string(object).expect("json")).expect("write");
    std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["--server", &server.url, "apply", "-f"])
        .arg(&manifest)
        .env("CLOUD_CONFIG", "/nonexistent/minicloud-test-config")
        .output()
        .expect("cloud apply")
}

fn message(body: &Value) -> String {
    body["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_policy_refuses_an_image_on_every_write_path_before_anything_is_written() {
    let server = TestServer::sqlite().await;
    let api = Api::new(&server, None);
    let local_images =
        policy("shop", "local-only", "Deny", json!([{"name": "local-images", "allowedImages": ["minicloud/"]}]));
    assert_eq!(api.apply(vec![local_images]).await.0, 200);

    // apply: refused whole, the policy, rule and reason named, nothing written.
    let (status, body, _) =
        api.apply(vec![instance("shop", "good", "minicloud/web:local"), instance("shop", "bad", "nginx:1.25")]).await;
    assert_eq!(status, 403, "{body}");
    let text = message(&body);
    assert!(text.contains("policy \"local-only\"") && text.contains("rule \"local-images\""), "{text}");
    assert!(text.contains("instance/bad") && text.contains("\"nginx:1.25\"") && text.contains("minicloud/"), "{text}");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.image");
    assert_eq!(api.get(&format!("{V1}/namespaces/shop/instances/good")).await.0, 404, "no partial apply");
    // Another namespace is not covered.
    assert_eq!(api.apply(vec![instance("other", "free", "nginx:1.25")]).await.0, 200);
    // A conforming object goes through.
    assert_eq!(api.apply(vec![instance("shop", "good", "minicloud/web:local")]).await.0, 200);

    // POST, PUT, merge patch and server-side apply are judged on what they would write.
    let (status, body, _) = api
        .send(
            reqwest::Method::POST,
            &format!("{V1}/namespaces/shop/instances"),
            "application/json",
            Some(instance("shop", "posted", "evil/x").to_string()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, live) = api.get(&format!("{V1}/namespaces/shop/instances/good")).await;
    let mut replaced = live.clone();
    replaced["spec"]["image"] = json!("evil/x");
    let (status, body, _) = api
        .send(
            reqwest::Method::PUT,
            &format!("{V1}/namespaces/shop/instances/good"),
            "application/json",
            Some(replaced.to_string()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = api
        .send(
            reqwest::Method::PATCH,
            &format!("{V1}/namespaces/shop/instances/good"),
            "application/merge-patch+json",
            Some(json!({"spec": {"image": "evil/x"}}).to_string()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let server_side = "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: good\n  namespace: shop\nspec:\n  image: evil/x\n";
    let (status, body, _) = api
        .send(
            reqwest::Method::PATCH,
            &format!("{V1}/namespaces/shop/instances/good?fieldManager=kubectl"),
            "application/apply-patch+yaml",
            Some(server_side.to_owned()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, after) = api.get(&format!("{V1}/namespaces/shop/instances/good")).await;
    assert_eq!(after["spec"]["image"], "minicloud/web:local", "nothing was written");
    assert_eq!(after["metadata"]["resourceVersion"], live["metadata"]["resourceVersion"]);

    // A Stack is judged through the resources it renders.
    let stack = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Stack",
        "metadata": {"name": "site", "namespace": "shop"},
        "spec": {
            "parameters": [{"name": "image", "type": "String", "default": "minicloud/web:local"}],
            "values": {"image": "nginx:latest"},
            "resources": [{"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "web"}, "spec": {"image": "${image}"}}]
        }
    });
    let (status, body, _) = api.apply(vec![stack]).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("stack/site resource instance/web"), "{body}");

    // A policy applied with what it governs judges it.
    let batch = vec![
        policy("fresh", "strict", "Deny", json!([{"name": "local-images", "allowedImages": ["minicloud/"]}])),
        instance("fresh", "web", "docker.io/library/nginx"),
    ];
    let (status, body, _) = api.apply(batch).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(api.get(&format!("{V1}/namespaces/fresh/policies/strict")).await.0, 404);

    // cloud apply prints the denial, one cause per line.
    let output = cloud_apply(&server, &instance("shop", "cli", "nginx:1.25"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("denied by policy") && stderr.contains("rule \"local-images\""), "{stderr}");
    assert!(stderr.contains("spec.image:"), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_type_judges_what_it_names() {
    let server = TestServer::sqlite().await;
    let api = Api::new(&server, None);
    let rules = json!([
        {"name": "replicas", "maxReplicas": 5},
        {"name": "cpu", "maxCpu": "500m"},
        {"name": "memory", "maxMemory": "256Mi"},
        {"name": "ports", "forbidPrivilegedHostPorts": true},
        {"name": "labels", "requiredLabels": ["team"]},
        {"name": "engines", "allowedDatabaseEngines": ["postgres"]}
    ]);
    assert_eq!(api.apply(vec![policy("gov", "limits", "Deny", rules)]).await.0, 200);
    let group = |max: u32, cpu: &str| {
        json!({
            "apiVersion": "minicloud.dev/v1", "kind": "ScalingGroup",
            "metadata": {"name": "workers", "namespace": "gov", "labels": {"team": "a"}},
            "spec": {"minReplicas": 1, "maxReplicas": max, "template": {"spec": {"image": "minicloud/web:local", "resources": {"cpu": cpu, "memory": "64Mi"}}}}
        })
    };
    let mut port = instance("gov", "port", "minicloud/web:local");
    port["spec"]["ports"] = json!([{"containerPort": 8080, "hostPort": 80}]);
    let mut unlabelled = instance("gov", "unlabelled", "minicloud/web:local");
    unlabelled["metadata"]["labels"] = json!({});
    let mut greedy = instance("gov", "greedy", "minicloud/web:local");
    greedy["spec"]["resources"] = json!({"cpu": "100m", "memory": "1Gi"});
    let redis = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "ManagedDatabase",
        "metadata": {"name": "cache", "namespace": "gov", "labels": {"team": "a"}},
        "spec": {"engine": "redis", "version": "7", "storage": {"size": "1Gi"}}
    });
    let listener = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "LoadBalancer",
        "metadata": {"name": "front", "namespace": "gov", "labels": {"team": "a"}},
        "spec": {"listeners": [{"name": "web", "port": 443, "targetPort": 8080}], "targets": {"selector": {"matchLabels": {"app": "web"}}}}
    });
    for (object, rule, field) in [
        (group(9, "250m"), "replicas", "spec.maxReplicas"),
        (group(3, "2"), "cpu", "spec.template.spec.resources.cpu"),
        (greedy, "memory", "spec.resources.memory"),
        (port, "ports", "spec.ports[0].hostPort"),
        (listener, "ports", "spec.listeners[0].port"),
        (unlabelled, "labels", "metadata.labels"),
        (redis, "engines", "spec.engine"),
    ] {
        let (status, body) = api.dry_run(vec![object]).await;
        assert_eq!(status, 403, "{rule}: {body}");
        let causes = body["details"]["causes"].as_array().cloned().unwrap_or_default();
        assert!(
            causes.iter().any(|cause| cause["field"] == field
                && cause["message"].as_str().unwrap_or("").contains(&format!("rule \"{rule}\""))),
            "{rule}: {body}"
        );
    }
    assert_eq!(api.dry_run(vec![group(5, "500m")]).await.0, 200, "within every limit");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_answers_warnings_and_dry_run_records_would_deny_events() {
    let server = TestServer::sqlite().await;
    let api = Api::new(&server, None);
    let warn = policy("soft", "advice", "Warn", json!([{"name": "local-images", "allowedImages": ["minicloud/"]}]));
    let dry = policy("soft", "trial", "DryRun", json!([{"name": "small", "maxCpu": "100m"}]));
    assert_eq!(api.apply(vec![warn, dry]).await.0, 200);
    let (status, body, warnings) = api.apply(vec![instance("soft", "web", "nginx:1.25")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        warnings.iter().any(|w| w.starts_with("299 - ") && w.contains("rule \\\"local-images\\\"")),
        "{warnings:?}"
    );
    assert!(body["warnings"][0].as_str().unwrap_or("").contains("\"nginx:1.25\""), "{body}");
    assert_eq!(api.get(&format!("{V1}/namespaces/soft/instances/web")).await.0, 200, "written");
    // DryRun: an event on the policy, nothing refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, events) = api.get(&format!("{V1}/namespaces/soft/events?kind=Policy&name=trial")).await;
        let found = events["items"].as_array().into_iter().flatten().any(|event| {
            event["reason"] == "WouldDeny"
                && event["message"].as_str().unwrap_or("").contains("cpu 250m is more than the 100m allowed")
        });
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no WouldDeny event: {events}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // cloud apply prints the warning.
    let output = cloud_apply(&server, &instance("soft", "other", "nginx:1.25"));
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: policy \"advice\""), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_write_policies_and_only_cluster_wide_ones_cover_other_namespaces() {
    let server = TestServer::start(TestDb::sqlite().await, &["--auth", "--no-controllers"]).await;
    let admin = server.printed_admin_token().expect("admin token");
    let api = Api::new(&server, Some(&admin));
    let mut tokens = std::collections::HashMap::new();
    for (name, role, namespace) in
        [("dev-admin", "admin", Some("dev")), ("editor", "edit", None), ("viewer", "view", None)]
    {
        let mut request = json!({"name": name, "role": role});
        if let Some(namespace) = namespace {
            request["namespace"] = json!(namespace);
        }
        let (status, body, _) = api
            .send(reqwest::Method::POST, &format!("{V1}/tokens"), "application/json", Some(request.to_string()))
            .await;
        assert_eq!(status, 201, "{body}");
        tokens.insert(name, body["token"].as_str().expect("token").to_owned());
    }
    let own = policy("dev", "own", "Deny", json!([{"name": "labels", "requiredLabels": ["team"]}]));
    let mut everywhere =
        policy("dev", "everywhere", "Deny", json!([{"name": "local-images", "allowedImages": ["minicloud/"]}]));
    everywhere["spec"]["namespaces"] = json!(["*"]);

    let editor = Api::new(&server, Some(&tokens["editor"]));
    let (status, body, _) = editor.apply(vec![own.clone()]).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("\"apply policies\""), "{body}");
    // Nor through a Stack, whose resources its controller writes.
    let smuggled = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Stack",
        "metadata": {"name": "smuggler", "namespace": "dev"},
        "spec": {"resources": [{
            "apiVersion": "minicloud.dev/v1", "kind": "Policy", "metadata": {"name": "loose"},
            "spec": {"rules": [{"name": "labels", "requiredLabels": ["x"]}]}
        }]}
    });
    let (status, body, _) = editor.apply(vec![smuggled]).await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("stacks cannot contain policies"), "{body}");
    let dev_admin = Api::new(&server, Some(&tokens["dev-admin"]));
    assert_eq!(dev_admin.apply(vec![own]).await.0, 200, "a namespace's administrator governs it");
    let (status, body, _) = dev_admin.apply(vec![everywhere.clone()]).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("covers other namespaces"), "{body}");
    assert_eq!(api.apply(vec![everywhere]).await.0, 200, "a cluster-wide administrator may");
    // It covers every namespace now; a viewer may read policies.
    let (status, body, _) = editor.apply(vec![instance("prod", "web", "nginx:1.25")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("policy \"everywhere\" (namespace \"dev\")"), "{body}");
    let viewer = Api::new(&server, Some(&tokens["viewer"]));
    let (status, listed) = viewer.get(&format!("{V1}/policies")).await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    // The denial is in the audit log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, audit) = api.get(&format!("{V1}/audit")).await;
        let denied = audit["items"].as_array().into_iter().flatten().any(|entry| {
            entry["principal"] == "editor"
                && entry["code"] == 403
                && entry["message"].as_str().unwrap_or("").contains("denied by policy")
        });
        if denied {
            break;
        }
        assert!(Instant::now() < deadline, "no audit entry for the denial: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_refused_with_every_problem_located() {
    let directory = tempfile::tempdir().expect("dir");
    let file = directory.path().join("policy.yaml");
    std::fs::write(
        &file,
        "apiVersion: minicloud.dev/v1\nkind: Policy\nmetadata:\n  name: broken\nspec:\n  namespaces: [\"Not_A_Namespace\"]\n  rules:\n    - name: two\n      maxReplicas: 3\n      maxCpu: \"1\"\n    - name: none\n    - name: cpu\n      maxCpu: lots\n    - name: engines\n      allowedDatabaseEngines: [oracle]\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .expect("cloud validate");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "spec.namespaces[0]",
        "spec.rules[0]: set exactly one constraint per rule, not maxReplicas and maxCpu",
        "spec.rules[1]: set one constraint",
        "spec.rules[2].maxCpu",
        "spec.rules[3].allowedDatabaseEngines[0]",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(stderr.contains("policy.yaml:"), "located: {stderr}");
}
