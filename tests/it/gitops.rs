//! GitOps directories end to end, with the real `cloud` binary against a real `cloud server`
//! on SQLite: `cloud diff` (exit codes, field changes, drift), `cloud apply --prune --applyset`
//! (prune scoped to the set's inventory, nothing pruned after a validation error, databases
//! only with --prune-stateful, one set per object), and continuous sync (`cloud sync`, `cloud
//! server --sync`): edits and deletions picked up by the watcher, drift set back at the
//! interval, broken files pruning nothing, the git commit recorded, and a server killed with
//! SIGKILL while it syncs converging when it comes back. The sync test with controllers runs
//! real containers.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::cluster::{condition, Harness, V1};
use crate::common::server::TestServer;
use crate::common::TestDb;
use serde_json::{json, Value};

fn cloud(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(args)
        .env("CLOUD_SERVER", server)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run cloud")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs cloud; returns (exit code, stdout, stderr).
fn run(server: &str, args: &[&str]) -> (i32, String, String) {
    let output = cloud(server, args);
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

fn ok(server: &str, args: &[&str]) -> String {
    let (code, out, err) = run(server, args);
    assert_eq!(code, 0, "cloud {args:?} failed: {out}{err}");
    out
}

fn write(directory: &Path, file: &str, content: &str) {
    let path = directory.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write manifest");
}

fn secret(name: &str, value: &str) -> String {
    format!(
        "apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata:\n  name: {name}\nspec:\n  stringData:\n    key: \"{value}\"\n"
    )
}

fn instance(name: &str, image: &str, tier: &str) -> String {
    format!(
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: {name}\n  labels:\n    tier: {tier}\nspec:\n  image: {image}\n  ports:\n    - containerPort: 8080\n"
    )
}

fn database(name: &str) -> String {
    format!(
        "apiVersion: minicloud.dev/v1\nkind: ManagedDatabase\nmetadata:\n  name: {name}\nspec:\n  engine: postgres\n  version: \"15\"\n  storage:\n    size: 1Gi\n"
    )
}

async fn get(server: &str, plural: &str, name: &str) -> Option<Value> {
    let response = reqwest::get(format!("{server}{V1}/namespaces/default/{plural}/{name}")).await.expect("get");
    if response.status() == 404 {
        return None;
    }
    Some(response.json().await.expect("json"))
}

async fn names(server: &str, plural: &str) -> Vec<String> {
    let body: Value = reqwest::get(format!("{server}{V1}/namespaces/default/{plural}"))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let mut names: Vec<String> = body["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|item| item["metadata"]["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn members(set: &Value) -> Vec<String> {
    set["spec"]["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| format!("{}/{}", m["kind"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn diff_reports_creates_updates_and_exits_like_kubectl() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let directory = tempfile::tempdir().expect("dir");
    let dir = directory.path().to_str().expect("utf-8 path");
    write(directory.path(), "web.yaml", &instance("web", "minicloud/web:local", "front"));
    write(directory.path(), "secret.yaml", &secret("token", "s3cret-value"));

    let (code, out, err) = run(&url, &["diff", "-f", dir]);
    assert_eq!(code, 1, "new objects are differences: {out}{err}");
    assert!(out.contains("instance/web: create") && out.contains("secret/token: create"), "{out}");
    assert_eq!(names(&url, "instances").await, Vec::<String>::new(), "diff changes nothing");

    ok(&url, &["apply", "-f", dir]);
    let (code, out, _) = run(&url, &["diff", "-f", dir]);
    assert_eq!(code, 0, "no difference after apply: {out}");
    assert!(out.contains("instance/web: unchanged"), "{out}");

    // A spec change replaces the container; a label change is made in place.
    write(directory.path(), "web.yaml", &instance("web", "minicloud/web:v2", "front"));
    write(directory.path(), "secret.yaml", &secret("token", "an0ther-value"));
    let (code, out, _) = run(&url, &["diff", "-f", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("instance/web: update (replaces its container)"), "{out}");
    assert!(out.contains("~ spec.image: \"minicloud/web:local\" → \"minicloud/web:v2\""), "{out}");
    assert!(out.contains("secret/token: update"), "{out}");
    assert!(!out.contains("s3cret-value") && !out.contains("an0ther-value"), "secret values never printed: {out}");
    write(directory.path(), "web.yaml", &instance("web", "minicloud/web:local", "back"));
    write(directory.path(), "secret.yaml", &secret("token", "s3cret-value"));
    let (code, out, _) = run(&url, &["diff", "-f", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("instance/web: update (in place)"), "{out}");
    assert!(out.contains("~ metadata.labels.tier: \"front\" → \"back\""), "{out}");

    // Errors exit 2: a broken file (located), an unreachable server.
    write(
        directory.path(),
        "broken.yaml",
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: Bad_Name\nspec:\n  image: x\n",
    );
    let (code, out, err) = run(&url, &["diff", "-f", dir]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("broken.yaml:4:"), "the error says where: {err}");
    std::fs::remove_file(directory.path().join("broken.yaml")).expect("rm");
    let (code, _, err) = run("http://127.0.0.1:9", &["diff", "-f", dir]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn drift_is_named_after_an_out_of_band_change() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let directory = tempfile::tempdir().expect("dir");
    let dir = directory.path().to_str().expect("utf-8 path");
    write(directory.path(), "web.yaml", &instance("web", "minicloud/web:local", "front"));
    ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);

    // Someone changes the live object with a plain PUT (outside the directory).
    let mut live = get(&url, "instances", "web").await.expect("web");
    live["spec"]["image"] = json!("minicloud/web:hotfix");
    live["metadata"]["labels"]["tier"] = json!("edited");
    let client = reqwest::Client::new();
    let response =
        client.put(format!("{url}{V1}/namespaces/default/instances/web")).json(&live).send().await.expect("put");
    assert!(response.status().is_success(), "{:?}", response.text().await);

    let (code, out, _) = run(&url, &["diff", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("! drift spec.image: applied \"minicloud/web:local\", now \"minicloud/web:hotfix\""), "{out}");
    assert!(out.contains("! drift metadata.labels.tier: applied \"front\", now \"edited\""), "{out}");
    // Applying sets it back, and the drift is gone.
    ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(get(&url, "instances", "web").await.expect("web")["spec"]["image"], "minicloud/web:local");
    let (code, out, _) = run(&url, &["diff", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("drift"), "{out}");
    server.stop().await;
}

#[tokio::test]
async fn prune_deletes_only_what_the_applyset_applied() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let site = tempfile::tempdir().expect("dir");
    let dir = site.path().to_str().expect("utf-8 path");
    write(site.path(), "a.yaml", &secret("a", "1"));
    write(site.path(), "nested/b.yaml", &secret("b", "1"));
    let out = ok(&url, &["apply", "-R", "-f", dir, "--applyset", "site", "--prune"]);
    assert!(out.contains("secret/a created") && out.contains("secret/b created"), "{out}");
    // Objects outside the set: one applied plainly, one by another applyset.
    let other = tempfile::tempdir().expect("dir");
    write(other.path(), "c.yaml", &secret("c", "1"));
    ok(&url, &["apply", "-f", other.path().join("c.yaml").to_str().expect("path")]);
    write(other.path(), "d/d.yaml", &secret("d", "1"));
    ok(&url, &["apply", "-f", other.path().join("d").to_str().expect("path"), "--applyset", "other", "--prune"]);
    let set = get(&url, "applysets", "site").await.expect("the inventory is an object on the server");
    assert_eq!(members(&set), ["Secret/a", "Secret/b"]);

    // b leaves the directory: diff lists it, apply prunes it and nothing else.
    std::fs::remove_file(site.path().join("nested/b.yaml")).expect("rm");
    let (code, out, _) = run(&url, &["diff", "-R", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("secret/b: prune (delete)"), "{out}");
    assert!(!out.contains("secret/c") && !out.contains("secret/d"), "{out}");
    // Without --prune nothing is deleted.
    ok(&url, &["apply", "-R", "-f", dir, "--applyset", "site"]);
    assert_eq!(names(&url, "secrets").await, ["a", "b", "c", "d"]);
    let out = ok(&url, &["apply", "-R", "-f", dir, "--applyset", "site", "--prune"]);
    assert!(out.contains("secret/b pruned"), "{out}");
    assert_eq!(names(&url, "secrets").await, ["a", "c", "d"], "c (plain apply) and d (another set) survive");
    assert_eq!(members(&get(&url, "applysets", "site").await.expect("set")), ["Secret/a"]);
    let events = ok(&url, &["events"]);
    assert!(events.contains("Pruned") && events.contains("deleted secret/default/b"), "{events}");

    // An inventory edited by hand to list c and d (neither carries the set's mark) prunes
    // neither: they are let go as released.
    let mut set = get(&url, "applysets", "site").await.expect("set");
    set["spec"]["members"] = json!([
        {"kind": "Secret", "namespace": "default", "name": "a"},
        {"kind": "Secret", "namespace": "default", "name": "c"},
        {"kind": "Secret", "namespace": "default", "name": "d"},
    ]);
    let response = reqwest::Client::new()
        .put(format!("{url}{V1}/namespaces/default/applysets/site"))
        .json(&set)
        .send()
        .await
        .expect("put");
    assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
    let out = ok(&url, &["apply", "-R", "-f", dir, "--applyset", "site", "--prune"]);
    assert!(out.contains("secret/c released, not deleted") && out.contains("secret/d released"), "{out}");
    assert_eq!(names(&url, "secrets").await, ["a", "c", "d"]);
    assert_eq!(members(&get(&url, "applysets", "site").await.expect("set")), ["Secret/a"]);

    // An empty directory is an error, not "prune everything".
    std::fs::remove_file(site.path().join("a.yaml")).expect("rm");
    let (code, _, err) = run(&url, &["apply", "-R", "-f", dir, "--applyset", "site", "--prune"]);
    assert_ne!(code, 0);
    assert!(err.contains("no .yaml, .yml or .json files found"), "{err}");
    assert_eq!(names(&url, "secrets").await, ["a", "c", "d"]);

    // --prune needs --applyset; the API says so too.
    let (code, _, err) = run(&url, &["apply", "-f", dir, "--prune"]);
    assert_ne!(code, 0, "{err}");
    let response = reqwest::Client::new()
        .post(format!("{url}{V1}/apply?prune=true"))
        .json(&json!({"items": []}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn a_validation_error_anywhere_applies_and_prunes_nothing() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let site = tempfile::tempdir().expect("dir");
    let dir = site.path().to_str().expect("utf-8 path");
    write(site.path(), "a.yaml", &secret("a", "1"));
    write(site.path(), "b.yaml", &secret("b", "1"));
    ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    let before = get(&url, "applysets", "site").await.expect("set");

    // b removed, a changed, and a broken file: nothing happens.
    std::fs::remove_file(site.path().join("b.yaml")).expect("rm");
    write(site.path(), "a.yaml", &secret("a", "2"));
    write(
        site.path(),
        "z.yaml",
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: z\nspec:\n  image: web\n  replicas: 3\n",
    );
    let (code, _, err) = run(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    assert_ne!(code, 0);
    assert!(err.contains("z.yaml:7:") && err.contains("nothing was applied"), "{err}");
    assert_eq!(names(&url, "secrets").await, ["a", "b"], "nothing pruned");
    let after = get(&url, "applysets", "site").await.expect("set");
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "inventory untouched");

    // An error only the server finds (a member of another applyset) prunes nothing either.
    std::fs::remove_file(site.path().join("z.yaml")).expect("rm");
    let elsewhere = tempfile::tempdir().expect("dir");
    write(elsewhere.path(), "x.yaml", &secret("x", "1"));
    ok(&url, &["apply", "-f", elsewhere.path().to_str().expect("path"), "--applyset", "elsewhere"]);
    write(site.path(), "x.yaml", &secret("x", "1"));
    let (code, _, err) = run(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    assert_ne!(code, 0);
    assert!(err.contains("secret/x belongs to applyset default/elsewhere"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(names(&url, "secrets").await, ["a", "b", "x"]);
    let (code, _, _) = run(&url, &["diff", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(code, 2, "diff reports the conflict as an error");

    // Fixed: the next apply converges.
    std::fs::remove_file(site.path().join("x.yaml")).expect("rm");
    ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(names(&url, "secrets").await, ["a", "x"]);
    server.stop().await;
}

#[tokio::test]
async fn sets_racing_for_one_object_cannot_both_take_it() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let client = reqwest::Client::new();
    let item = json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret",
        "metadata": {"name": "shared", "namespace": "default"}, "spec": {"stringData": {"k": "v"}}});
    let requests = (0..8).map(|index| {
        let client = client.clone();
        let url = url.clone();
        let item = item.clone();
        tokio::spawn(async move {
            let response = client
                .post(format!("{url}{V1}/apply?applyset=set-{index}&prune=true"))
                .json(&json!({"items": [item]}))
                .send()
                .await
                .expect("apply");
            (index, response.status().as_u16())
        })
    });
    let mut taken = Vec::new();
    for request in requests {
        let (index, status) = request.await.expect("task");
        match status {
            200 => taken.push(index),
            409 => {}
            other => panic!("set-{index}: unexpected {other}"),
        }
    }
    assert_eq!(taken.len(), 1, "exactly one set takes the object: {taken:?}");
    let shared = get(&url, "secrets", "shared").await.expect("shared");
    assert_eq!(shared["metadata"]["annotations"]["minicloud.dev/applyset"], format!("default/set-{}", taken[0]));
    let sets = names(&url, "applysets").await;
    assert_eq!(sets, [format!("set-{}", taken[0])], "the refused sets wrote no inventory");
    server.stop().await;
}

#[tokio::test]
async fn an_object_taken_over_by_a_plain_apply_is_released_not_pruned() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let site = tempfile::tempdir().expect("dir");
    let dir = site.path().to_str().expect("utf-8 path");
    write(site.path(), "a.yaml", &secret("a", "1"));
    write(site.path(), "b.yaml", &secret("b", "1"));
    ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    // b moves to a file applied on its own, then leaves the directory.
    let loose = tempfile::tempdir().expect("dir");
    std::fs::rename(site.path().join("b.yaml"), loose.path().join("b.yaml")).expect("mv");
    ok(&url, &["apply", "-f", loose.path().join("b.yaml").to_str().expect("path")]);
    let (code, out, _) = run(&url, &["diff", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(code, 0, "releasing changes no object: {out}");
    assert!(out.contains("secret/b: no longer in the manifests; released"), "{out}");
    let out = ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    assert!(out.contains("secret/b released, not deleted"), "{out}");
    assert_eq!(names(&url, "secrets").await, ["a", "b"]);
    assert_eq!(members(&get(&url, "applysets", "site").await.expect("set")), ["Secret/a"]);

    // Released, b can join another set; a third set is refused it and told how to move it ...
    let loose_dir = loose.path().to_str().expect("path");
    ok(&url, &["apply", "-f", loose_dir, "--applyset", "other"]);
    let (code, _, err) = run(&url, &["apply", "-f", loose_dir, "--applyset", "third"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("secret/b belongs to applyset default/other; to move it, apply it once without --applyset"),
        "{err}"
    );
    // ... until that set is deleted: its former members are free to take.
    ok(&url, &["delete", "applyset", "other"]);
    ok(&url, &["apply", "-f", loose_dir, "--applyset", "third"]);
    let b = get(&url, "secrets", "b").await.expect("b");
    assert_eq!(b["metadata"]["annotations"]["minicloud.dev/applyset"], "default/third");
    server.stop().await;
}

#[tokio::test]
async fn databases_are_pruned_only_with_prune_stateful() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let site = tempfile::tempdir().expect("dir");
    let dir = site.path().to_str().expect("utf-8 path");
    write(site.path(), "db.yaml", &database("orders"));
    write(site.path(), "a.yaml", &secret("a", "1"));
    ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    std::fs::remove_file(site.path().join("db.yaml")).expect("rm");

    let (code, out, _) = run(&url, &["diff", "-f", dir, "--applyset", "site", "--prune"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("manageddatabase/orders: no longer in the manifests; kept"), "{out}");
    let out = ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune"]);
    assert!(out.contains("manageddatabase/orders kept") && out.contains("--prune-stateful"), "{out}");
    assert!(get(&url, "manageddatabases", "orders").await.is_some(), "the database stays");
    let set = get(&url, "applysets", "site").await.expect("set");
    assert!(members(&set).contains(&"ManagedDatabase/orders".to_owned()), "it stays in the set: {set}");
    assert_eq!(set["status"]["kept"], json!(["manageddatabase/default/orders"]));
    let events = ok(&url, &["events"]);
    assert!(events.contains("PruneSkipped"), "{events}");

    let (code, out, _) = run(&url, &["diff", "-f", dir, "--applyset", "site", "--prune", "--prune-stateful"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("manageddatabase/orders: prune (delete)"), "{out}");
    let out = ok(&url, &["apply", "-f", dir, "--applyset", "site", "--prune", "--prune-stateful"]);
    assert!(out.contains("manageddatabase/orders pruned"), "{out}");
    assert!(get(&url, "manageddatabases", "orders").await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn clients_record_events_only_about_existing_objects() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let directory = tempfile::tempdir().expect("dir");
    write(directory.path(), "a.yaml", &secret("a", "1"));
    ok(&url, &["apply", "-f", directory.path().to_str().expect("path")]);
    let client = reqwest::Client::new();
    let post = |body: Value| {
        let client = client.clone();
        let url = format!("{url}{V1}/namespaces/default/events");
        async move { client.post(url).json(&body).send().await.expect("post").status().as_u16() }
    };
    let event = |kind: &str, name: &str, type_: &str, reason: &str, message: &str| json!({"involvedObject": {"kind": kind, "name": name}, "type": type_, "reason": reason, "message": message});
    assert_eq!(post(event("Secret", "a", "Normal", "Rotated", "done")).await, 201);
    assert_eq!(post(event("Secret", "missing", "Normal", "Rotated", "done")).await, 404);
    assert_eq!(post(event("Secret", "a/../b", "Normal", "Rotated", "done")).await, 400);
    assert_eq!(post(event("Nonsense", "a", "Normal", "Rotated", "done")).await, 400);
    assert_eq!(post(event("Secret", "a", "Fatal", "Rotated", "done")).await, 400);
    assert_eq!(post(event("Secret", "a", "Normal", "not camel", "done")).await, 400);
    assert_eq!(post(event("Secret", "a", "Normal", "Rotated", &"x".repeat(5000))).await, 400);
    assert_eq!(post(json!({"involvedObject": {"kind": "Secret", "name": "a"}})).await, 400);
    let events = ok(&url, &["events"]);
    assert_eq!(events.matches("Rotated").count(), 1, "{events}");
    server.stop().await;
}

/// Waits (bounded) until `check` holds for the sync object.
async fn wait_for_sync(url: &str, namespace: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = reqwest::get(format!("{url}{V1}/namespaces/{namespace}/syncs/{name}")).await.expect("get");
        let sync: Option<Value> = if response.status() == 200 { response.json().await.ok() } else { None };
        if let Some(sync) = &sync {
            if check(sync) {
                return sync.clone();
            }
        }
        assert!(Instant::now() < deadline, "sync/{name} never became {what}: {sync:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn applied(sync: &Value) -> bool {
    condition(sync, "Synced") == Some(("True", "Applied"))
}

fn git(directory: &Path, args: &[&str]) -> String {
    let output = Command::new("git").arg("-C").arg(directory).args(args).output().expect("git");
    assert!(output.status.success(), "git {args:?}: {}", text(&output.stderr));
    text(&output.stdout).trim().to_owned()
}

fn git_repository(directory: &Path) {
    git(directory, &["init", "-q"]);
    git(directory, &["config", "user.email", "test@minicloud.dev"]);
    git(directory, &["config", "user.name", "test"]);
}

/// A `cloud sync` process, killed when dropped.
struct SyncProcess(std::process::Child);

impl SyncProcess {
    fn start(server: &str, directory: &Path, extra: &[&str]) -> SyncProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(["--server", server, "sync"])
            .arg(directory)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cloud sync");
        SyncProcess(child)
    }
}

impl Drop for SyncProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn cloud_sync_follows_edits_and_deletions_with_real_containers() {
    let harness = Harness::start("gitops").await;
    let url = harness.server().url.clone();
    let namespace = harness.namespace.clone();
    let repository = tempfile::tempdir().expect("dir");
    let root = repository.path();
    git_repository(root);
    let site = root.join("site");
    let in_namespace =
        |manifest: String| manifest.replace("metadata:\n", &format!("metadata:\n  namespace: {namespace}\n"));
    write(&site, "web.yaml", &in_namespace(instance("web", "minicloud/web:local", "front")));
    write(&site, "api.yaml", &in_namespace(instance("api", "minicloud/web:local", "back")));
    // Hidden directories (CI workflows, editors' files) are not manifests.
    write(&site, ".github/workflows/ci.yml", "on: push\njobs: {}\n");
    git(root, &["add", "-A"]);
    git(root, &["commit", "-qm", "site"]);
    let commit = git(root, &["rev-parse", "HEAD"]);

    // A long interval: what happens within seconds is the file watcher's doing.
    let _sync = SyncProcess::start(&url, &site, &["--name", "site", "-n", &namespace, "--interval", "120s"]);
    let sync = wait_for_sync(&url, &namespace, "site", "applied", |s| applied(s) && s["status"]["objects"] == 2).await;
    assert_eq!(sync["status"]["commit"], json!(commit), "the commit applied is recorded");
    let ready = |o: &Value| condition(o, "Ready").map(|c| c.0) == Some("True");
    harness.wait_for("instances", "web", "Ready", ready).await;
    harness.wait_for("instances", "api", "Ready", ready).await;
    assert_eq!(harness.containers("Instance", true).len(), 2);

    // An edit, committed: picked up within seconds, with the new commit.
    let started = Instant::now();
    write(&site, "web.yaml", &in_namespace(instance("web", "minicloud/web:local", "edge")));
    git(root, &["commit", "-qam", "edge"]);
    let edited = json!(git(root, &["rev-parse", "HEAD"]));
    wait_for_sync(&url, &namespace, "site", "at the new commit", |s| applied(s) && s["status"]["commit"] == edited)
        .await;
    let edit_seconds = started.elapsed().as_secs_f64();
    let web = harness.get("instances", "web").await.expect("web");
    assert_eq!(web["metadata"]["labels"]["tier"], "edge");
    assert!(edit_seconds < 30.0, "the watcher, not the 120 s interval, applied the edit ({edit_seconds:.1} s)");

    // A deleted file: the Instance and its container go.
    let started = Instant::now();
    std::fs::remove_file(site.join("api.yaml")).expect("rm");
    wait_for_sync(&url, &namespace, "site", "one object", |s| applied(s) && s["status"]["objects"] == 1).await;
    let delete_seconds = started.elapsed().as_secs_f64();
    assert!(delete_seconds < 30.0, "{delete_seconds:.1} s");
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.get("instances", "api").await.is_some() || harness.containers("Instance", false).len() != 1 {
        assert!(Instant::now() < deadline, "the pruned instance's container was never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(harness.get("instances", "web").await.is_some());
    eprintln!("edit applied after {edit_seconds:.1} s, deletion after {delete_seconds:.1} s");

    // A broken file next to a removed one: the round fails, says where, and prunes nothing.
    write(
        &site,
        "broken.yaml",
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: x\nspec:\n  imagee: web\n",
    );
    std::fs::remove_file(site.join("web.yaml")).expect("rm");
    let broken = wait_for_sync(&url, &namespace, "site", "failed", |s| {
        condition(s, "Synced") == Some(("False", "InvalidManifests"))
    })
    .await;
    let error = broken["status"]["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("broken.yaml:6:") && error.contains("nothing was applied or pruned"), "{error}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(harness.get("instances", "web").await.is_some(), "a broken directory prunes nothing");
    assert_eq!(harness.containers("Instance", true).len(), 1);
    let events = harness.events("Sync", "site").await;
    assert!(events.iter().any(|event| event.contains("SyncFailed")), "{events:?}");

    // `cloud get syncs` and `cloud describe sync` show it.
    let (_, table, _) = harness.cloud(&["get", "syncs", "-n", &namespace, "-o", "wide"]);
    assert!(table.contains("InvalidManifests") && table.contains("site"), "{table}");
    let (_, described, _) = harness.cloud(&["describe", "sync", "site", "-n", &namespace]);
    assert!(described.contains("SyncFailed") && described.contains("broken.yaml"), "{described}");

    // Fixed: the file's removal is applied now.
    std::fs::remove_file(site.join("broken.yaml")).expect("rm");
    write(&site, "other.yaml", &in_namespace(secret("other", "1")));
    wait_for_sync(&url, &namespace, "site", "recovered", |s| applied(s) && s["status"]["objects"] == 1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !harness.containers("Instance", false).is_empty() {
        assert!(Instant::now() < deadline, "web's container was never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness.finish().await;
}

#[tokio::test]
async fn the_interval_sets_drift_back_and_deleting_the_sync_stops_it() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let site = tempfile::tempdir().expect("dir");
    write(site.path(), "web.yaml", &instance("web", "minicloud/web:local", "front"));
    let mut sync = SyncProcess::start(&url, site.path(), &["--name", "site", "--interval", "2s"]);
    let first = wait_for_sync(&url, "default", "site", "applied", applied).await;
    assert_eq!(first["spec"]["intervalSeconds"], 2);
    assert!(first["status"]["commit"].is_null(), "not a git work tree: no commit");

    // Drift made through the API (no file changes): the next interval sets it back.
    let mut live = get(&url, "instances", "web").await.expect("web");
    live["spec"]["image"] = json!("minicloud/web:hotfix");
    let response = reqwest::Client::new()
        .put(format!("{url}{V1}/namespaces/default/instances/web"))
        .json(&live)
        .send()
        .await
        .expect("put");
    assert!(response.status().is_success());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    while get(&url, "instances", "web").await.expect("web")["spec"]["image"] != "minicloud/web:local" {
        assert!(Instant::now() < deadline, "the interval never set the drift back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("drift set back after {:.1} s (interval 2 s)", started.elapsed().as_secs_f64());
    let synced = wait_for_sync(&url, "default", "site", "applied", |s| {
        applied(s) && s["status"]["lastChanges"] == json!(["updated instance/web"])
    })
    .await;
    assert!(synced["status"]["rounds"].as_u64().unwrap_or(0) >= 2, "{synced}");

    // The directory removed under the loop (a careless `rm -rf`, a checkout moving it): the
    // round fails and prunes nothing.
    let moved = tempfile::tempdir().expect("dir");
    let parked = moved.path().join("parked");
    std::fs::rename(site.path(), &parked).expect("move the directory away");
    wait_for_sync(&url, "default", "site", "failed", |s| condition(s, "Synced") == Some(("False", "InvalidManifests")))
        .await;
    assert!(get(&url, "instances", "web").await.is_some(), "a missing directory prunes nothing");
    std::fs::rename(&parked, site.path()).expect("move it back");

    // Deleting the Sync object stops the loop (the process exits with an error).
    let response =
        reqwest::Client::new().delete(format!("{url}{V1}/namespaces/default/syncs/site")).send().await.expect("delete");
    assert!(response.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = sync.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "cloud sync kept running after its Sync was deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    assert!(get(&url, "instances", "web").await.is_some(), "stopping a sync deletes nothing");
    server.stop().await;
}

#[tokio::test]
async fn cloud_sync_once_reports_and_exits() {
    let server = TestServer::sqlite().await;
    let url = server.url.clone();
    let site = tempfile::tempdir().expect("dir");
    let dir = site.path().to_str().expect("path");
    write(site.path(), "a.yaml", &secret("a", "1"));
    let out = ok(&url, &["sync", dir, "--once", "--name", "once"]);
    assert!(out.contains("sync/once: created secret/a"), "{out}");
    let out = ok(&url, &["sync", dir, "--once", "--name", "once"]);
    assert!(out.contains("sync/once: in sync, nothing changed"), "{out}");
    write(site.path(), "b.yaml", "kind: [\n");
    let (code, _, err) = run(&url, &["sync", dir, "--once", "--name", "once"]);
    assert_eq!(code, 1);
    assert!(err.contains("b.yaml:") && err.contains("nothing was applied or pruned"), "{err}");
    let (code, _, err) = run(&url, &["sync", "/nonexistent/dir", "--once"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/dir"), "{err}");
    let (code, _, err) = run(&url, &["sync", dir, "--once", "--name", "Not/A/Name"]);
    assert_eq!(code, 1);
    assert!(err.contains("--name"), "{err}");
    // An interval of 0 would hammer the server; a huge one used to overflow.
    let (code, _, err) = run(&url, &["sync", dir, "--once", "--interval", "0s"]);
    assert_eq!(code, 1);
    assert!(err.contains("from 1s to 24h"), "{err}");
    let (code, _, err) = run(&url, &["sync", dir, "--once", "--interval", "99999999999999999999h"]);
    assert_eq!(code, 2, "a usage error, not a panic: {err}");
    assert!(err.contains("longer than a year"), "{err}");
    server.stop().await;
}

/// The secrets `set` names, each a manifest of its own.
fn fill(directory: &Path, prefix: &str, count: usize) {
    for entry in std::fs::read_dir(directory).expect("read dir").flatten() {
        std::fs::remove_file(entry.path()).expect("rm");
    }
    let mut text = String::new();
    for index in 0..count {
        text.push_str(&secret(&format!("{prefix}{index:03}"), "v"));
        text.push_str("---\n");
    }
    write(directory, "all.yaml", &text);
}

#[tokio::test]
async fn a_server_killed_while_it_syncs_converges_when_it_comes_back_on_sqlite() {
    killed_while_syncing(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn a_server_killed_while_it_syncs_converges_when_it_comes_back_on_postgres() {
    killed_while_syncing(TestDb::postgres().await).await;
}

/// Kills a server that syncs a directory of 300 objects, replaced by another 300, at points
/// spread over the round; every state seen is whole and the last server converges.
async fn killed_while_syncing(database: TestDb) {
    const OBJECTS: usize = 300;
    let site = tempfile::tempdir().expect("dir");
    let dir = site.path().to_str().expect("path").to_owned();
    let arguments = ["--no-controllers", "--sync", dir.as_str(), "--sync-name", "site", "--sync-interval", "1s"];
    fill(site.path(), "a", OBJECTS);
    let server = TestServer::start(database, &arguments).await;
    let started = Instant::now();
    wait_for_sync(&server.url, "default", "site", "applied", |s| applied(s) && s["status"]["objects"] == OBJECTS).await;
    let first_round = started.elapsed();
    let mut database = server.crash();

    // The directory now holds another set: every round from here on creates 300 objects and
    // prunes 300. Kill the server at points spread over its first round.
    fill(site.path(), "b", OBJECTS);
    let mut states = std::collections::BTreeMap::new();
    for step in 1..=6u32 {
        let server = TestServer::start(database, &arguments).await;
        tokio::time::sleep(first_round * step / 3).await;
        let url = server.url.clone();
        let secrets = names(&url, "secrets").await;
        let (old, new) = (
            secrets.iter().filter(|name| name.starts_with('a')).count(),
            secrets.iter().filter(|name| name.starts_with('b')).count(),
        );
        // Every state seen is a whole one: the old set, the new one, or both while pruning.
        assert!(old == OBJECTS || old == 0 || new == OBJECTS, "half-applied: {old} old, {new} new");
        assert!(new == 0 || new == OBJECTS, "half-applied: {new} of {OBJECTS} new");
        *states.entry((old, new)).or_insert(0) += 1;
        database = server.crash();
    }
    eprintln!("first round took {first_round:?}; (old, new) secrets seen just before each kill: {states:?}");

    let server = TestServer::start(database, &arguments).await;
    let url = server.url.clone();
    let sync =
        wait_for_sync(&url, "default", "site", "converged", |s| applied(s) && s["status"]["objects"] == OBJECTS).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let secrets = names(&url, "secrets").await;
        if secrets.len() == OBJECTS && secrets.iter().all(|name| name.starts_with('b')) {
            break;
        }
        assert!(Instant::now() < deadline, "never converged: {} secrets left", secrets.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let set = get(&url, "applysets", "site").await.expect("set");
    assert_eq!(members(&set).len(), OBJECTS, "the inventory holds exactly the directory");
    assert!(members(&set).iter().all(|member| member.starts_with("Secret/b")));
    assert!(sync["status"]["revision"].as_str().is_some_and(|revision| revision.len() == 64));
    server.stop().await;
}
