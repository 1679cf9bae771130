//! Security with the real `cloud server --auth` over HTTP, on real SQLite (and PostgreSQL for
//! the token store): every role × verb allowed or refused with the missing permission named;
//! expired, revoked, malformed, unknown and missing tokens; the watch stream, the console and
//! `/metrics` without a token; per-token rate and watch limits (429 + Retry-After); the audit
//! log of changes and refusals; the first start's admin token; a server that refuses to listen
//! on the network without authentication; the CLI's contexts.

use std::time::{Duration, Instant};

use crate::common::server::TestServer;
use crate::common::TestDb;
use reqwest::Method;
use serde_json::{json, Value};

const V1: &str = "/apis/minicloud.dev/v1";

/// A client of one server.
struct Api {
    http: reqwest::Client,
    url: String,
}

/// An answer: status, body, headers.
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Api { http, url: server.url.clone() }
    }

    async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            let content_type =
                if method == Method::PATCH { "application/merge-patch+json" } else { "application/json" };
            request = request.header("content-type", content_type).body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if path.contains("watch=true") {
            Value::Null // a stream: the status says enough; dropping it closes the watch
        } else {
            let text = response.text().await.unwrap_or_default();
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer { status, body, headers }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(Method::GET, path, token, None).await
    }

    /// Creates a token with `admin` and returns it.
    async fn token(&self, admin: &str, name: &str, role: &str, namespace: Option<&str>) -> String {
        let mut request = json!({"name": name, "role": role});
        if let Some(namespace) = namespace {
            request["namespace"] = json!(namespace);
        }
        let answer = self.send(Method::POST, &format!("{V1}/tokens"), Some(admin), Some(request)).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["token"].as_str().expect("token").to_owned()
    }

    async fn apply(&self, token: &str, items: Vec<Value>) -> Answer {
        self.send(Method::POST, &format!("{V1}/apply"), Some(token), Some(json!({"items": items}))).await
    }
}

fn instance(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": "minicloud/web:local"}
    })
}

async fn start_with_auth(database: TestDb, extra: &[&str]) -> (TestServer, String) {
    let mut arguments = vec!["--auth", "--no-controllers"];
    arguments.extend_from_slice(extra);
    let server = TestServer::start(database, &arguments).await;
    let admin = server.printed_admin_token().expect("the first start prints `admin token: TOKEN`");
    (server, admin)
}

fn cloud(server: &TestServer, arguments: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"));
    command
        .args(arguments)
        .env("CLOUD_SERVER", &server.url)
        .env_remove("CLOUD_TOKEN")
        .env("CLOUD_CONFIG", "/nonexistent/minicloud-test-config");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("cloud");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// Where a request acts, for the expectations of the role × verb test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scope {
    Dev,
    Prod,
    Everywhere,
    /// Within the token's own scope (discovery, the token and audit lists).
    Own,
}

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Role {
    View,
    Edit,
    Admin,
}

/// One request of the role × verb test: the verb a refusal names, the request, and the least
/// role and the scope it needs.
type Probe = (&'static str, Method, String, Option<Value>, Role, Scope);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_and_verb_is_allowed_or_refused_naming_the_missing_permission() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let api = Api::new(&server);
    let tokens = [
        ("viewer", Role::View, None),
        ("editor", Role::Edit, None),
        ("admin", Role::Admin, None),
        ("dev-editor", Role::Edit, Some("dev")),
        ("dev-admin", Role::Admin, Some("dev")),
    ];
    let mut secrets = Vec::new();
    for (name, role, namespace) in tokens {
        let secret = if name == "admin" {
            admin.clone()
        } else {
            let role_name = format!("{role:?}").to_lowercase();
            api.token(&admin, name, &role_name, namespace).await
        };
        secrets.push(secret);
    }
    let mut setup = vec![instance("dev", "keep"), instance("prod", "keep")];
    for (name, _, _) in tokens {
        setup.push(instance("dev", &format!("del-{name}")));
    }
    setup.push(json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "dev"}, "spec": {"stringData": {"k": "v"}}
    }));
    assert_eq!(api.apply(&admin, setup).await.status, 200);

    for ((name, role, namespace), secret) in tokens.iter().zip(&secrets) {
        let token = Some(secret.as_str());
        let current = api.get(&format!("{V1}/namespaces/dev/instances/keep"), Some(&admin)).await.body;
        let requests: Vec<Probe> = vec![
            ("list", Method::GET, format!("{V1}/namespaces/dev/instances"), None, Role::View, Scope::Dev),
            ("list", Method::GET, format!("{V1}/namespaces/prod/instances"), None, Role::View, Scope::Prod),
            ("list", Method::GET, format!("{V1}/instances"), None, Role::View, Scope::Everywhere),
            ("watch", Method::GET, format!("{V1}/namespaces/dev/instances?watch=true"), None, Role::View, Scope::Dev),
            ("get", Method::GET, format!("{V1}/namespaces/dev/instances/keep"), None, Role::View, Scope::Dev),
            ("get", Method::GET, format!("{V1}/namespaces/dev/instances/keep/log"), None, Role::View, Scope::Dev),
            ("list", Method::GET, format!("{V1}/namespaces/dev/events"), None, Role::View, Scope::Dev),
            ("get", Method::GET, "/metrics".into(), None, Role::View, Scope::Everywhere),
            ("get", Method::GET, "/ui".into(), None, Role::View, Scope::Own),
            ("get", Method::GET, "/ui/namespaces/prod/instances/keep".into(), None, Role::View, Scope::Prod),
            ("discovery", Method::GET, "/version".into(), None, Role::View, Scope::Own),
            (
                "create",
                Method::POST,
                format!("{V1}/namespaces/dev/instances"),
                Some(instance("dev", &format!("new-{name}"))),
                Role::Edit,
                Scope::Dev,
            ),
            (
                "update",
                Method::PUT,
                format!("{V1}/namespaces/dev/instances/keep"),
                Some(current.clone()),
                Role::Edit,
                Scope::Dev,
            ),
            (
                "update",
                Method::PUT,
                format!("{V1}/namespaces/dev/instances/keep/status"),
                Some(current.clone()),
                Role::Edit,
                Scope::Dev,
            ),
            (
                "patch",
                Method::PATCH,
                format!("{V1}/namespaces/dev/instances/keep"),
                Some(json!({"metadata": {"labels": {"patched-by": name}}})),
                Role::Edit,
                Scope::Dev,
            ),
            (
                "delete",
                Method::DELETE,
                format!("{V1}/namespaces/dev/instances/del-{name}"),
                None,
                Role::Edit,
                Scope::Dev,
            ),
            (
                "apply",
                Method::POST,
                format!("{V1}/apply"),
                Some(json!({"items": [instance("dev", "applied")]})),
                Role::Edit,
                Scope::Dev,
            ),
            (
                "apply",
                Method::POST,
                format!("{V1}/apply"),
                Some(json!({"items": [instance("prod", "applied")]})),
                Role::Edit,
                Scope::Prod,
            ),
            (
                "reveal",
                Method::POST,
                format!("{V1}/namespaces/dev/secrets/s/reveal"),
                Some(json!({"key": "k"})),
                Role::Admin,
                Scope::Dev,
            ),
            ("rotate", Method::POST, format!("{V1}/secretkeys/rotate"), None, Role::Admin, Scope::Everywhere),
            (
                "create",
                Method::POST,
                format!("{V1}/tokens"),
                Some(json!({"name": format!("made-by-{name}"), "role": "view", "namespace": "dev"})),
                Role::Admin,
                Scope::Dev,
            ),
            ("list", Method::GET, format!("{V1}/tokens"), None, Role::Admin, Scope::Own),
            ("list", Method::GET, format!("{V1}/audit"), None, Role::Admin, Scope::Own),
        ];
        for (verb, method, path, body, needed, scope) in requests {
            let in_scope = match (namespace, scope) {
                (None, _) | (_, Scope::Own) => true,
                (Some(_), Scope::Dev) => true,
                (Some(_), Scope::Prod | Scope::Everywhere) => false,
            };
            let allowed = *role >= needed && in_scope;
            let answer = api.send(method.clone(), &path, token, body).await;
            if allowed {
                assert!(
                    answer.status < 500 && answer.status != 401 && answer.status != 403,
                    "{name} {method} {path}: expected allowed, got {} {}",
                    answer.status,
                    answer.body
                );
            } else {
                assert_eq!(answer.status, 403, "{name} {method} {path}: expected refused, got {}", answer.body);
                let message = answer.body["message"].as_str().unwrap_or_default();
                assert!(message.contains(&format!("\"{verb} ")), "{name} {method} {path}: {message}");
                assert!(message.contains(&format!("token {name:?}")), "{message}");
            }
        }
    }
    // A namespace's administrator sees its namespace's tokens only.
    let dev_admin = &secrets[4];
    let listed = api.get(&format!("{V1}/tokens"), Some(dev_admin)).await.body;
    let names: Vec<&str> =
        listed["items"].as_array().expect("items").iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(
        names.iter().all(|name| ["dev-editor", "dev-admin", "made-by-dev-admin", "made-by-admin"].contains(name)),
        "{names:?}"
    );
    // ... and cannot make a token for every namespace, nor revoke one outside its namespace.
    let answer = api
        .send(
            Method::POST,
            &format!("{V1}/tokens"),
            Some(dev_admin),
            Some(json!({"name": "escalate", "role": "admin"})),
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(api.send(Method::DELETE, &format!("{V1}/tokens/viewer"), Some(dev_admin), None).await.status, 404);
    server.stop().await;
}

async fn token_lifecycle(server: &TestServer, admin: &str) {
    let api = Api::new(server);
    let who = api.get(&format!("{V1}/whoami"), Some(admin)).await.body;
    assert_eq!(who["role"], "admin", "{who}");
    // Missing, malformed and unknown tokens: 401 with a reason, and WWW-Authenticate.
    let missing = api.get(&format!("{V1}/instances"), None).await;
    assert_eq!(missing.status, 401);
    assert!(missing.headers.get("www-authenticate").is_some());
    assert!(missing.body["message"].as_str().unwrap_or_default().contains("requires a token"), "{}", missing.body);
    for (bad, reason) in [
        ("not-a-token", "malformed"),
        (&admin[..admin.len() - 1], "malformed"),
        ("mc_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not one this server issued"),
    ] {
        let answer = api.get(&format!("{V1}/instances"), Some(bad)).await;
        assert_eq!(answer.status, 401, "{bad}");
        assert!(answer.body["message"].as_str().unwrap_or_default().contains(reason), "{bad}: {}", answer.body);
    }
    // A token with a name a URL could misread, a duplicate and a racing pair.
    for name in ["a/b", "../admin", "UPPER", ""] {
        let answer = api
            .send(Method::POST, &format!("{V1}/tokens"), Some(admin), Some(json!({"name": name, "role": "view"})))
            .await;
        assert_eq!(answer.status, 400, "{name:?}: {}", answer.body);
    }
    let path = format!("{V1}/tokens");
    let create =
        |name: &'static str| api.send(Method::POST, &path, Some(admin), Some(json!({"name": name, "role": "view"})));
    let (first, second) = tokio::join!(create("twin"), create("twin"));
    let mut codes = [first.status, second.status];
    codes.sort_unstable();
    assert_eq!(codes, [201, 409], "two creations of one name: one wins");
    // Expiry.
    let expiring = api
        .send(
            Method::POST,
            &format!("{V1}/tokens"),
            Some(admin),
            Some(json!({"name": "brief", "role": "view", "expiresInSeconds": 1})),
        )
        .await
        .body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(api.get(&format!("{V1}/instances"), Some(&expiring)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = api.get(&format!("{V1}/instances"), Some(&expiring)).await;
    assert_eq!(expired.status, 401);
    assert!(expired.body["message"].as_str().unwrap_or_default().contains("expired"), "{}", expired.body);
    // Revocation takes effect on the next request (the lookup cache is emptied).
    let revoked = api.token(admin, "leaving", "edit", None).await;
    assert_eq!(api.get(&format!("{V1}/instances"), Some(&revoked)).await.status, 200);
    assert_eq!(api.send(Method::DELETE, &format!("{V1}/tokens/leaving"), Some(admin), None).await.status, 200);
    let refused = api.get(&format!("{V1}/instances"), Some(&revoked)).await;
    assert_eq!(refused.status, 401);
    assert!(refused.body["message"].as_str().unwrap_or_default().contains("revoked"), "{}", refused.body);
    // The list shows states and last use, never a token or its hash.
    let listed = api.get(&format!("{V1}/tokens"), Some(admin)).await;
    let text = listed.body.to_string();
    assert!(!text.contains(admin) && !text.contains("\"hash\""), "{text}");
    let state = |name: &str| {
        listed.body["items"].as_array().expect("items").iter().find(|t| t["name"] == name).map(|t| t["state"].clone())
    };
    assert_eq!(state("brief"), Some(json!("expired")));
    assert_eq!(state("leaving"), Some(json!("revoked")));
    // A revoked name can be used again.
    api.token(admin, "leaving", "view", None).await;
    // Last use is recorded (in the background, at most once a minute per token).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = api.get(&format!("{V1}/tokens"), Some(admin)).await.body;
        let used = listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["name"] == "brief" && t["lastUsedAt"].is_string());
        if used {
            break;
        }
        assert!(Instant::now() < deadline, "no last use recorded: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

mod both_backends {
    use super::*;

    async fn tokens_are_created_checked_expired_and_revoked(database: TestDb) {
        let (server, admin) = start_with_auth(database, &[]).await;
        token_lifecycle(&server, &admin).await;
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_tokens_are_created_checked_expired_and_revoked() {
        tokens_are_created_checked_expired_and_revoked(TestDb::sqlite().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tokens_are_created_checked_expired_and_revoked() {
        tokens_are_created_checked_expired_and_revoked(TestDb::postgres().await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_the_console_and_metrics_need_a_token_and_health_does_not() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let api = Api::new(&server);
    for public in ["/healthz", "/readyz"] {
        assert_eq!(api.get(public, None).await.status, 200, "{public}");
    }
    // Console pages send a browser to the sign-in page; everything else answers 401.
    for page in ["/ui", "/ui/instances"] {
        let answer = api.get(page, None).await;
        assert_eq!(answer.status, 303, "{page}");
        assert_eq!(answer.headers["location"], "/ui/login");
    }
    for public in ["/ui/login", "/ui/assets/login.js", "/ui/assets/style.css"] {
        assert_eq!(api.get(public, None).await.status, 200, "{public}");
    }
    for private in [
        "/metrics",
        "/ui/watch",
        "/ui/api/summary",
        "/openapi.json",
        "/apis/minicloud.dev/v1/namespaces/default/instances?watch=true",
        "/apis/minicloud.dev/v1/instances?watch=true",
    ] {
        let answer = api.get(private, None).await;
        assert_eq!(answer.status, 401, "{private}");
    }
    // Signing in: a wrong token is refused, a right one set as an HttpOnly, SameSite=Strict cookie.
    let sign_in = |token: &str| api.send(Method::POST, "/ui/login", None, Some(json!({"token": token})));
    let refused = sign_in("mc_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(refused.status, 401);
    assert!(refused.headers.get("set-cookie").is_none());
    let signed_in = sign_in(&admin).await;
    assert_eq!(signed_in.status, 204);
    let set = signed_in.headers["set-cookie"].to_str().expect("text");
    assert!(set.starts_with(&format!("minicloud_token={admin};")), "{set}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(attribute), "{set}");
    }
    let cross_site = api
        .http
        .post(format!("{}/ui/login", server.url))
        .header("origin", "http://evil.example")
        .header("content-type", "application/json")
        .body(json!({"token": admin}).to_string())
        .send()
        .await
        .expect("cross-site sign-in");
    assert_eq!(cross_site.status(), 403, "another site cannot sign a browser in");
    let signed_out = api.send(Method::POST, "/ui/logout", None, None).await;
    assert!(signed_out.headers["set-cookie"].to_str().expect("text").contains("Max-Age=0"));
    // The console's cookie: good for reads, never for a write.
    let cookie = format!("minicloud_token={admin}");
    let page = api.http.get(format!("{}/ui", server.url)).header("cookie", &cookie).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let write = api
        .http
        .post(format!("{}{V1}/apply", server.url))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body(json!({"items": [instance("default", "sneaky")]}).to_string())
        .send()
        .await
        .expect("write");
    assert_eq!(write.status(), 401, "a cookie cannot make a write");
    // A watch with a token streams.
    let watch = api
        .http
        .get(format!("{}{V1}/namespaces/default/instances?watch=true", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    drop(watch);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_beyond_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &["--rate-limit", "2", "--rate-burst", "5"]).await;
    let api = Api::new(&server);
    // Creating the second token spends one of admin's requests.
    let other = api.token(&admin, "other", "view", None).await;
    let mut limited = None;
    for _ in 0..20 {
        let answer = api.get(&format!("{V1}/instances"), Some(&admin)).await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status, 200);
    }
    let limited = limited.expect("a burst of 5 at 2/s is exhausted within 20 quick requests");
    let retry: u64 = limited.headers["retry-after"].to_str().expect("text").parse().expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(limited.body["message"].as_str().unwrap_or_default().contains("\"admin\""), "{}", limited.body);
    assert_eq!(api.get(&format!("{V1}/instances"), Some(&other)).await.status, 200, "other tokens are unaffected");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(api.get(&format!("{V1}/instances"), Some(&admin)).await.status, 200, "after Retry-After");
    // Requests without a valid token share one rate: a flood of them is cut off with 429 too.
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..300 {
        *codes.entry(api.get(&format!("{V1}/instances"), Some("mc_nonsense")).await.status).or_insert(0) += 1;
    }
    assert!(codes.get(&429).copied().unwrap_or(0) > 0, "{codes:?}");
    assert_eq!(api.get(&format!("{V1}/instances"), Some(&other)).await.status, 200, "valid tokens still pass");
    // Well-formed made-up tokens (each would need a store read) share that rate too; a valid
    // token seen moments ago needs no read and is never held up by them.
    let mut codes = std::collections::BTreeMap::new();
    for index in 0..300 {
        let forged = format!("mc_{:0>43}", index);
        *codes.entry(api.get(&format!("{V1}/instances"), Some(&forged)).await.status).or_insert(0) += 1;
        // (Within the token's own rate of 2 a second in bursts of 5.)
        if index == 150 || index == 299 {
            let answer = api.get(&format!("{V1}/instances"), Some(&other)).await;
            assert_eq!(answer.status, 200, "during the flood: {}", answer.body);
        }
    }
    assert!(codes.get(&429).copied().unwrap_or(0) > 100, "{codes:?}");
    server.stop().await;
}

/// `anonymous` and `system-*` are minicloud's own names: no token may take them (a namespace
/// administrator once named a token like the server's own identity and exhausted its rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_token_names_are_refused() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let api = Api::new(&server);
    for name in ["system-internal", "anonymous", "system-sync"] {
        let request = json!({"name": name, "role": "view", "namespace": "shop"});
        let answer = api.send(Method::POST, &format!("{V1}/tokens"), Some(&admin), Some(request)).await;
        assert_eq!(answer.status, 400, "{name}: {}", answer.body);
        assert!(answer.body.to_string().contains("kept for minicloud"), "{}", answer.body);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holds_at_most_its_watches_and_a_closed_one_frees_its_place() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &["--max-watches-per-token", "2"]).await;
    let api = Api::new(&server);
    let other = api.token(&admin, "other", "view", None).await;
    let open = |token: String| {
        let http = api.http.clone();
        let url = format!("{}{V1}/namespaces/default/instances?watch=true", server.url);
        async move { http.get(url).bearer_auth(token).send().await.expect("watch") }
    };
    let first = open(admin.clone()).await;
    let second = open(admin.clone()).await;
    assert_eq!((first.status(), second.status()), (reqwest::StatusCode::OK, reqwest::StatusCode::OK));
    let third = open(admin.clone()).await;
    assert_eq!(third.status(), 429);
    assert_eq!(open(other.clone()).await.status(), 200, "another token has its own places");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = open(admin.clone()).await;
        if again.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the closed watch's place was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_changes_reveals_and_refusals_with_request_ids() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let api = Api::new(&server);
    let viewer = api.token(&admin, "viewer", "view", None).await;
    let applied = api
        .apply(
            &admin,
            vec![
                instance("default", "audited"),
                json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "s"}, "spec": {"stringData": {"k": "v"}}}),
            ],
        )
        .await;
    assert_eq!(applied.status, 200);
    let refused = api.apply(&viewer, vec![instance("default", "refused")]).await;
    assert_eq!(refused.status, 403);
    let refused_id = refused.headers["x-request-id"].to_str().expect("id").to_owned();
    let revealed = api
        .send(
            Method::POST,
            &format!("{V1}/namespaces/default/secrets/s/reveal"),
            Some(&admin),
            Some(json!({"key": "k"})),
        )
        .await;
    assert_eq!(revealed.status, 200);
    let anonymous = api.get(&format!("{V1}/instances"), None).await;
    assert_eq!(anonymous.status, 401);
    // The writer is asynchronous: wait (bounded) for the entries.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let (ok, stdout, stderr) =
            cloud(&server, &["audit", "--since", "1h", "-o", "json"], &[("CLOUD_TOKEN", &admin)]);
        assert!(ok, "{stderr}");
        let entries: Value = serde_json::from_str(&stdout).expect("json");
        let entries = entries["items"].as_array().cloned().unwrap_or_default();
        if entries.len() >= 5 || Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |check: &dyn Fn(&Value) -> bool| entries.iter().find(|entry| check(entry)).cloned();
    let apply = find(&|e| e["verb"] == "apply" && e["principal"] == "admin").expect("the apply");
    assert_eq!(apply["code"], 200);
    assert!(apply["message"].as_str().unwrap_or_default().contains("created instance/default/audited"), "{apply}");
    let denial = find(&|e| e["code"] == 403).expect("the refused apply");
    assert_eq!(denial["principal"], "viewer");
    assert_eq!(denial["requestId"], refused_id.as_str());
    assert!(denial["message"].as_str().unwrap_or_default().contains("\"apply instances\""), "{denial}");
    let reveal = find(&|e| e["verb"] == "reveal").expect("the reveal");
    assert_eq!((reveal["name"].as_str(), reveal["namespace"].as_str()), (Some("s"), Some("default")));
    assert!(!reveal.to_string().contains("\"v\""), "never the value");
    let unauthenticated = find(&|e| e["code"] == 401).expect("the request without a token");
    assert_eq!(unauthenticated["principal"], "-");
    // The table form, and a viewer may not read the log.
    let (ok, table, _) = cloud(&server, &["audit"], &[("CLOUD_TOKEN", &admin)]);
    assert!(ok && table.starts_with("TIME") && table.contains(&refused_id), "{table}");
    let (ok, _, stderr) = cloud(&server, &["audit"], &[("CLOUD_TOKEN", &viewer)]);
    assert!(!ok && stderr.contains("\"list audit\""), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_prints_an_admin_token_once_and_a_network_listener_needs_auth() {
    let database = TestDb::sqlite().await;
    let server = TestServer::start(database, &["--auth", "--no-controllers"]).await;
    let first = server.printed_admin_token().expect("first start prints the admin token");
    assert!(first.starts_with("mc_"));
    let database = server.crash();
    let server = TestServer::start(database, &["--auth", "--no-controllers"]).await;
    assert_eq!(server.printed_admin_token(), None, "printed only on the first start");
    let api = Api::new(&server);
    assert_eq!(api.get(&format!("{V1}/whoami"), Some(&first)).await.status, 200, "the token outlives restarts");
    let database = server.crash();
    let server = TestServer::start(database, &["--auth", "--new-admin-token", "--no-controllers"]).await;
    let second = server.printed_admin_token().expect("--new-admin-token prints one");
    assert_ne!(first, second);
    assert_eq!(Api::new(&server).get(&format!("{V1}/whoami"), Some(&second)).await.body["role"], "admin");
    server.stop().await;

    // Without --auth, only loopback.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["server", "--no-controllers", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().expect("dir").path())
        .env(minicloud_server::KEY_ENV, crate::common::test_key_base64())
        .output()
        .expect("cloud server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without authentication") && stderr.contains("--auth"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_everyone_is_anonymous_and_changes_are_still_audited() {
    let server = TestServer::sqlite().await;
    let api = Api::new(&server);
    assert!(server.log.lock().expect("log").iter().any(|line| line.contains("authentication is off")));
    let who = api.get(&format!("{V1}/whoami"), None).await.body;
    assert_eq!((who["name"].as_str(), who["authentication"].as_bool()), (Some("anonymous"), Some(false)));
    let applied =
        api.send(Method::POST, &format!("{V1}/apply"), None, Some(json!({"items": [instance("default", "a")]}))).await;
    assert_eq!(applied.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = api.get(&format!("{V1}/audit"), None).await.body;
        if entries["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|e| e["principal"] == "anonymous" && e["verb"] == "apply"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no audit entry: {entries}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_tokens_from_flags_environment_and_private_contexts() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let directory = tempfile::tempdir().expect("dir");
    let config = directory.path().join("minicloud").join("config");
    let config_text = config.to_str().expect("path").to_owned();
    let env = [("CLOUD_CONFIG", config_text.as_str())];
    // No token: a clear 401.
    let (ok, _, stderr) = cloud(&server, &["get", "instances"], &env);
    assert!(!ok && stderr.contains("requires a token"), "{stderr}");
    // Flag and environment.
    let (ok, _, stderr) = cloud(&server, &["--token", &admin, "get", "instances"], &env);
    assert!(ok, "{stderr}");
    // A new token printed alone on stdout, usable at once.
    let (ok, created, stderr) = cloud(
        &server,
        &["auth", "token", "create", "ci", "--role", "edit", "-n", "dev", "--expires", "30d"],
        &[("CLOUD_TOKEN", &admin), env[0]],
    );
    assert!(ok && stderr.contains("shown only now"), "{stderr}");
    let ci = created.trim().to_owned();
    let (ok, whoami, _) = cloud(&server, &["auth", "whoami"], &[("CLOUD_TOKEN", &ci), env[0]]);
    assert!(ok && whoami.contains("ci (role edit in namespace dev)"), "{whoami}");
    // A context holds server and token; the file is private.
    let (ok, _, stderr) =
        cloud(&server, &["config", "set-context", "local", "--server", &server.url, "--token", &ci, "--use"], &env);
    assert!(ok, "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).expect("config").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"));
    let output = command
        .args(["get", "instances", "-n", "dev"])
        .env_remove("CLOUD_SERVER")
        .env_remove("CLOUD_TOKEN")
        .env("CLOUD_CONFIG", &config)
        .output()
        .expect("cloud");
    assert!(output.status.success(), "the context's server and token: {}", String::from_utf8_lossy(&output.stderr));
    let (ok, listed, _) = cloud(&server, &["auth", "token", "list"], &[("CLOUD_TOKEN", &admin), env[0]]);
    assert!(ok && listed.contains("ci") && listed.contains("dev") && listed.contains("in 29d"), "{listed}");
    let (ok, contexts, _) = cloud(&server, &["config", "get-contexts"], &env);
    assert!(ok && contexts.contains("*") && !contexts.contains(&ci), "tokens are not shown: {contexts}");
    let (ok, revoked, _) = cloud(&server, &["auth", "token", "revoke", "ci"], &[("CLOUD_TOKEN", &admin), env[0]]);
    assert!(ok && revoked.contains("revoked"), "{revoked}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_beside_an_authenticated_server_applies_with_its_internal_token() {
    let directory = tempfile::tempdir().expect("dir");
    std::fs::write(
        directory.path().join("web.yaml"),
        serde_json::to_string(&instance("default", "synced")).expect("json"),
    )
    .expect("write");
    let path = directory.path().to_str().expect("path").to_owned();
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &["--sync", &path]).await;
    let api = Api::new(&server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get(&format!("{V1}/namespaces/default/instances/synced"), Some(&admin)).await.status != 200 {
        assert!(Instant::now() < deadline, "the sync never applied: {:?}", server.log.lock().expect("log"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_activity_feed_shows_the_audit_log_live_to_administrators() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let api = Api::new(&server);
    let viewer = api.token(&admin, "viewer", "view", None).await;
    let page = api.get("/ui/events", Some(&admin)).await;
    assert_eq!(page.status, 200);
    let html = page.body.as_str().expect("html").to_owned();
    let attribute = |name: &str| {
        let start =
            html.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("no {name} in the page")) + name.len() + 2;
        html[start..].split('"').next().expect("value").to_owned()
    };
    let (revision, head) = (attribute("data-revision"), attribute("data-events-head"));
    assert!(head.contains('/'), "the activity page follows the audit log too: {head}");
    let mut stream = api
        .http
        .get(format!("{}/ui/watch", server.url))
        .query(&[("resourceVersion", revision.as_str()), ("eventsHead", head.as_str())])
        .bearer_auth(&admin)
        .send()
        .await
        .expect("watch");
    assert_eq!(stream.status(), 200);
    // A refused request: an audit entry, and the page's stream says so.
    let refused = api.apply(&viewer, vec![instance("default", "nope")]).await;
    assert_eq!(refused.status, 403);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("\"EVENTS\"") {
        let chunk = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no EVENTS line within 10 s: {seen}"))
            .expect("stream");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    let fragment = api.get("/ui/events?fragment=1", Some(&admin)).await.body.as_str().expect("html").to_owned();
    assert!(fragment.contains("id=\"requests\""), "{fragment}");
    assert!(fragment.contains("viewer") && fragment.contains("lacks the permission"), "{fragment}");
    // Filtered by text, and hidden from those who may not read the log.
    let filtered =
        api.get("/ui/events?fragment=1&q=no-such-text", Some(&admin)).await.body.as_str().expect("html").to_owned();
    assert!(!filtered.contains("lacks the permission"), "{filtered}");
    let as_viewer = api.get("/ui/events?fragment=1", Some(&viewer)).await.body.as_str().expect("html").to_owned();
    assert!(
        as_viewer.contains("The audit log needs role admin") && !as_viewer.contains("lacks the permission"),
        "{as_viewer}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_an_applyset_needs_delete_on_every_pruned_object() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let api = Api::new(&server);
    let dev_editor = api.token(&admin, "dev-editor", "edit", Some("dev")).await;
    let path = format!("{V1}/apply?applyset=site&applysetNamespace=dev&prune=true");
    let both = json!({"items": [instance("prod", "a"), instance("dev", "b")]});
    assert_eq!(api.send(Method::POST, &path, Some(&admin), Some(both)).await.status, 200);
    // The editor of dev drops prod/a from the set: pruning it needs delete in prod.
    let only_dev = json!({"items": [instance("dev", "b")]});
    let refused = api.send(Method::POST, &path, Some(&dev_editor), Some(only_dev)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let message = refused.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"delete instances\" in namespace \"prod\"") && message.contains("nothing was applied"),
        "{message}"
    );
    assert_eq!(api.get(&format!("{V1}/namespaces/prod/instances/a"), Some(&admin)).await.status, 200, "not pruned");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_of_a_namespaced_token_shows_its_namespace_only() {
    let (server, admin) = start_with_auth(TestDb::sqlite().await, &[]).await;
    let api = Api::new(&server);
    let reader = api.token(&admin, "dev-reader", "view", Some("dev")).await;
    assert_eq!(api.apply(&admin, vec![instance("dev", "dev-web"), instance("prod", "prod-web")]).await.status, 200);
    let page = api.get("/ui/instances", Some(&reader)).await;
    assert_eq!(page.status, 200);
    let html = page.body.as_str().expect("html").to_owned();
    assert!(html.contains("/ui/namespaces/dev/instances/dev-web") && !html.contains("prod-web"), "{html}");
    let summary = api.get("/ui/api/summary", Some(&reader)).await.body;
    assert_eq!(summary["objects"]["Instance"]["total"], 1, "{summary}");
    assert_eq!(api.get("/ui/namespaces/dev/instances/dev-web", Some(&reader)).await.status, 200);
    let other = api.get("/ui/namespaces/prod/instances/prod-web", Some(&reader)).await;
    assert_eq!(other.status, 403);
    // Its live stream carries its namespace's changes only.
    let revision = summary["revision"].to_string();
    let mut stream = api
        .http
        .get(format!("{}/ui/watch", server.url))
        .query(&[("resourceVersion", revision.as_str())])
        .bearer_auth(&reader)
        .send()
        .await
        .expect("watch");
    assert_eq!(stream.status(), 200);
    assert_eq!(api.apply(&admin, vec![instance("prod", "prod-later")]).await.status, 200);
    assert_eq!(api.apply(&admin, vec![instance("dev", "dev-later")]).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("dev-later") {
        let chunk = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("dev-later never came: {seen}"))
            .expect("stream");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    assert!(!seen.contains("prod-later"), "another namespace's change reached the stream: {seen}");
    server.stop().await;
}
