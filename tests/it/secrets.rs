//! Secrets encrypted at rest, with the real `cloud server` on real SQLite and PostgreSQL: a
//! known value is found by no byte search of the SQLite files (WAL included) or of the
//! PostgreSQL tables, and in no answer (GET, list, watch from the first revision, `cloud get -o
//! yaml`, `describe`, the last-applied annotation) but `cloud secret reveal`; five key
//! rotations under a loop of reads leave no moment in which a value cannot be read; files are private; an Instance that reads
//! a Secret is replaced when the Secret changes (real Docker).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::cluster::Harness;
use crate::common::docker::docker;
use crate::common::server::TestServer;
use crate::common::TestDb;
use serde_json::{json, Value};
use sqlx::Connection;

const V1: &str = "/apis/minicloud.dev/v1";

/// Values no byte of storage or of an answer may contain: unusual enough never to occur by
/// chance.
const OLD_VALUE: &str = "Correct-Horse-Battery-4b1d7e2a";
const NEW_VALUE: &str = "Tr0ub4dor-and-3-f9c08e55";
const GONE_VALUE: &str = "deleted-secret-value-71aa30c4";

fn secret(name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"stringData": data}
    })
}

async fn apply(http: &reqwest::Client, server: &TestServer, items: Vec<Value>) -> (u16, Value) {
    let response =
        http.post(format!("{}{V1}/apply", server.url)).json(&json!({"items": items})).send().await.expect("apply");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn cloud(server: &TestServer, arguments: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["--server", &server.url])
        .args(arguments)
        .output()
        .expect("cloud");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// Panics when `text` holds one of the values.
fn assert_no_value(what: &str, text: &str) {
    for value in [OLD_VALUE, NEW_VALUE, GONE_VALUE] {
        assert!(!text.contains(value), "{what} contains {value:?}:\n{}", &text[..text.len().min(4000)]);
    }
}

/// Every byte of every file under `directory`.
fn files_under(directory: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(directory).expect("directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path, bytes));
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Writes the values every way a user would, then looks for them in every answer.
async fn write_and_read_back(server: &TestServer) {
    let http = reqwest::Client::new();
    let (status, body) =
        apply(&http, server, vec![secret("db-creds", json!({"password": OLD_VALUE, "user": "app"}))]).await;
    assert_eq!(status, 200, "{body}");
    apply(&http, server, vec![secret("gone", json!({"token": GONE_VALUE}))]).await;
    let (status, body) =
        apply(&http, server, vec![secret("db-creds", json!({"password": NEW_VALUE, "user": "app"}))]).await;
    assert_eq!(status, 200, "{body}");
    let deleted =
        http.delete(format!("{}{V1}/namespaces/default/secrets/gone", server.url)).send().await.expect("delete");
    assert!(deleted.status().is_success());
    assert_no_value("the delete answer", &deleted.text().await.expect("text"));

    // GET and list: keys with redacted values (the last-applied annotation included).
    let got = http.get(format!("{}{V1}/namespaces/default/secrets/db-creds", server.url)).send().await.expect("get");
    let got: Value = got.json().await.expect("json");
    assert_eq!(got["spec"]["stringData"], json!({"password": "<redacted>", "user": "<redacted>"}));
    assert_no_value("GET", &got.to_string());
    let list = http.get(format!("{}{V1}/secrets", server.url)).send().await.expect("list").text().await.expect("text");
    assert!(list.contains("<redacted>"), "{list}");
    assert_no_value("the list", &list);

    // A watch from the first revision replays every change, the old value's included.
    let watch = http
        .get(format!("{}{V1}/secrets?watch=true&resourceVersion=1&timeoutSeconds=2", server.url))
        .send()
        .await
        .expect("watch")
        .text()
        .await
        .expect("text");
    assert!(watch.matches("\"type\":\"").count() >= 4, "every change is replayed: {watch}");
    assert_no_value("a watch from revision 1", &watch);
    let watch_now =
        http.get(format!("{}{V1}/secrets?watch=true&timeoutSeconds=1", server.url)).send().await.expect("watch");
    assert_no_value("a watch's initial list", &watch_now.text().await.expect("text"));

    // The CLI: get -o yaml / json, describe; reveal prints the one value asked for.
    for output in [["get", "secret", "db-creds", "-o", "yaml"], ["get", "secret", "db-creds", "-o", "json"]] {
        let (ok, stdout, stderr) = cloud(server, &output);
        assert!(ok && stdout.contains("<redacted>"), "{stdout}{stderr}");
        assert_no_value("cloud get", &stdout);
    }
    let (ok, described, _) = cloud(server, &["describe", "secret", "db-creds"]);
    assert!(ok);
    assert_no_value("cloud describe", &described);
    let (ok, revealed, stderr) = cloud(server, &["secret", "reveal", "db-creds", "password"]);
    assert!(ok, "{stderr}");
    assert_eq!(revealed.trim(), NEW_VALUE);
    let (ok, _, stderr) = cloud(server, &["secret", "reveal", "db-creds", "nope"]);
    assert!(!ok && stderr.contains("has no key \"nope\"") && stderr.contains("password, user"), "{stderr}");

    // The placeholder written back as a value is refused where it stands.
    let (status, body) = apply(&http, server, vec![secret("db-creds", json!({"password": "<redacted>"}))]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("spec.stringData.password"), "{body}");
    assert_eq!(cloud(server, &["secret", "reveal", "db-creds", "password"]).1.trim(), NEW_VALUE, "unchanged");
    // Events and the server's log hold no value either.
    let events =
        http.get(format!("{}{V1}/events", server.url)).send().await.expect("events").text().await.expect("text");
    assert_no_value("events", &events);
    assert_no_value("the server log", &server.log.lock().expect("log").join("\n"));
}

#[tokio::test]
async fn secret_values_are_on_no_byte_of_sqlite_and_in_no_answer() {
    let database = TestDb::sqlite().await;
    let file = PathBuf::from(database.url.trim_start_matches("sqlite://"));
    let data_dir = file.parent().expect("data dir").to_path_buf();
    let data = data_dir.display().to_string();
    // The key comes from the data directory's key file, created on first start.
    let server = TestServer::start_with_env(
        database,
        &["--no-controllers", "--data-dir", &data],
        &[(minicloud_server::KEY_ENV, "")],
    )
    .await;
    write_and_read_back(&server).await;

    let key_file = data_dir.join("secret.key");
    #[cfg(unix)]
    {
        assert_eq!(mode(&key_file), 0o600, "the key file");
        assert_eq!(mode(&data_dir), 0o700, "the data directory");
        for suffix in ["", "-wal"] {
            assert_eq!(mode(Path::new(&format!("{}{suffix}", file.display()))), 0o600, "minicloud.db{suffix}");
        }
    }
    // Every byte of the data directory (database, WAL, shared memory) while the server runs.
    let files = files_under(&data_dir);
    assert!(files.iter().any(|(path, _)| path.display().to_string().ends_with("-wal")), "the WAL is searched too");
    for (path, bytes) in &files {
        for value in [OLD_VALUE, NEW_VALUE, GONE_VALUE] {
            assert!(!contains(bytes, value), "{} holds {value:?}", path.display());
        }
    }
    let sealed = files.iter().any(|(_, bytes)| contains(bytes, "mcenc:v1:"));
    assert!(sealed, "the values are there, sealed");
    server.stop().await;
}

#[tokio::test]
async fn secret_values_are_in_no_postgresql_row_and_in_no_answer() {
    let database = TestDb::postgres().await;
    let url = database.url.clone();
    let server = TestServer::start(database, &["--no-controllers"]).await;
    write_and_read_back(&server).await;
    let mut connection = sqlx::PgConnection::connect(&url).await.expect("connect");
    for table in ["objects", "changes"] {
        let rows: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT body FROM {table}")).fetch_all(&mut connection).await.expect("rows");
        let text: String = rows.into_iter().map(|(body,)| body).collect::<Vec<_>>().join("\n");
        assert!(text.contains("mcenc:v1:"), "{table} holds the sealed values");
        assert_no_value(&format!("the {table} table"), &text);
    }
    connection.close().await.ok();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_never_leaves_a_value_unreadable() {
    let database = TestDb::sqlite().await;
    let file = PathBuf::from(database.url.trim_start_matches("sqlite://"));
    let data_dir = file.parent().expect("data dir").to_path_buf();
    let data = data_dir.display().to_string();
    let arguments = ["--no-controllers", "--data-dir", data.as_str()];
    let server = TestServer::start_with_env(database, &arguments, &[(minicloud_server::KEY_ENV, "")]).await;
    let http = reqwest::Client::new();
    let secrets: Vec<Value> =
        (0..20).map(|i| secret(&format!("s{i}"), json!({"value": format!("v{i}-{OLD_VALUE}")}))).collect();
    apply(&http, &server, secrets).await;
    let key_file = data_dir.join("secret.key");
    let first_key = std::fs::read_to_string(&key_file).expect("key file");

    // Reveals run all along while the key is rotated three times.
    let url = server.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let (stop, reads) = (stop.clone(), reads.clone());
        async move {
            let http = reqwest::Client::new();
            let (mut read, mut failed) = (0, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let index = read % 20;
                let answer = http
                    .post(format!("{url}{V1}/namespaces/default/secrets/s{index}/reveal"))
                    .json(&json!({"key": "value"}))
                    .send()
                    .await
                    .expect("reveal");
                let status = answer.status();
                let body: Value = answer.json().await.unwrap_or(Value::Null);
                if !status.is_success() || body["value"] != format!("v{index}-{OLD_VALUE}") {
                    failed.push(format!("{status}: {body}"));
                }
                read += 1;
                reads.store(read, std::sync::atomic::Ordering::Relaxed);
            }
            (read, failed)
        }
    });
    let mut ids = Vec::new();
    for _ in 0..5 {
        // Each rotation starts while reads are running.
        let before = reads.load(std::sync::atomic::Ordering::Relaxed);
        while reads.load(std::sync::atomic::Ordering::Relaxed) < before + 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (ok, stdout, stderr) = cloud(&server, &["secret", "rotate-key"]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("stored rows re-encrypted"), "{stdout}");
        ids.push(stdout.split_whitespace().find(|w| w.len() == 8).unwrap_or_default().to_owned());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (read, failed) = reader.await.expect("reader");
    assert!(read > 20, "reads ran during the rotations ({read})");
    assert!(failed.is_empty(), "{} of {read} reads failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);

    // The file holds the newest key only; every stored value is sealed by it.
    let last_key = std::fs::read_to_string(&key_file).expect("key file");
    assert_ne!(last_key, first_key);
    assert_eq!(last_key.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count(), 1, "{last_key}");
    let newest = ids.last().expect("an id").clone();
    let database = server.crash();
    let store = minicloud_server::store::SqlStore::open(
        &database.url,
        std::sync::Arc::new(minicloud_server::SecretKeys::load(Some(&key_file), &data_dir).expect("keys")),
    )
    .await
    .expect("the store opens with the new key alone");
    let bytes: Vec<u8> = files_under(&data_dir).into_iter().flat_map(|(_, bytes)| bytes).collect();
    assert!(contains(&bytes, &format!("mcenc:v1:{newest}:")), "sealed by {newest}");
    use minicloud_server::store::Store;
    let key = minicloud_crds::ObjectKey::new(minicloud_crds::Kind::Secret, "default", "s7");
    assert_eq!(store.get(&key).await.expect("s7").spec["stringData"]["value"], format!("v7-{OLD_VALUE}"));
    store.close().await;

    // A server restarted on the same directory reads everything.
    let server = TestServer::start_with_env(database, &arguments, &[(minicloud_server::KEY_ENV, "")]).await;
    let (ok, revealed, _) = cloud(&server, &["secret", "reveal", "s3", "value"]);
    assert!(ok && revealed.trim() == format!("v3-{OLD_VALUE}"), "{revealed}");
    server.stop().await;

    // A key from the environment cannot be rotated: said, nothing changes.
    let server = TestServer::start(TestDb::sqlite().await, &["--no-controllers"]).await;
    let (ok, _, stderr) = cloud(&server, &["secret", "rotate-key"]);
    assert!(!ok && stderr.contains("MINICLOUD_SECRET_KEY") && stderr.contains("--secret-key-file"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn an_instance_reading_a_secret_is_replaced_when_the_secret_changes() {
    let harness = Harness::start("secret").await;
    let namespace = harness.namespace.clone();
    let secret_of = |value: &str| {
        json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Secret",
            "metadata": {"name": "app", "namespace": namespace},
            "spec": {"stringData": {"password": value}}
        })
    };
    let env = json!({"env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app", "key": "password"}}}]});
    harness.apply(vec![secret_of(OLD_VALUE), harness.instance("web", json!({}), env)]).await;
    let ready = |o: &Value| {
        o["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    let first = harness.wait_for("instances", "web", "Ready", ready).await;
    let container = harness.instance_container("web").await;
    let environment = || docker(&["inspect", "--format", "{{json .Config.Env}}", &container]);
    assert!(environment().contains(&format!("PASSWORD={OLD_VALUE}")), "{}", environment());

    harness.apply(vec![secret_of(NEW_VALUE)]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !environment().contains(&format!("PASSWORD={NEW_VALUE}")) {
        assert!(Instant::now() < deadline, "the Instance was not replaced: {}", environment());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = harness.wait_for("instances", "web", "Ready again", ready).await;
    assert_ne!(first["status"]["containerId"], second["status"]["containerId"], "a new container");
    let events = harness.events("Instance", "web").await;
    assert!(events.iter().any(|e| e.starts_with("Replacing:")), "{events:?}");
    for event in &events {
        assert_no_value("an event", event);
    }
    harness.finish().await;
}
