//! The ManagedDatabase controller with the real engines (PostgreSQL, Redis, MariaDB images
//! built by `scripts/local-images.sh postgres redis mariadb`), real Docker and the real `cloud`
//! binary: connect with the generated credentials through the published port, back up, break
//! the data, restore, compare; a backup interrupted by SIGKILL of the control plane; bad
//! manifests; re-applies; and what each deletion policy keeps.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::cluster::{condition, Harness};
use crate::common::docker::docker;
use minicloud_controllers::docker::names;
use serde_json::{json, Value};

const PREFIX: &str = "db";

fn database(harness: &Harness, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "ManagedDatabase",
        "metadata": {"name": name, "namespace": harness.namespace},
        "spec": spec
    })
}

fn ready(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
        && condition(object, "Ready") == Some(("True", "Accepting"))
}

async fn wait_ready(harness: &Harness, name: &str) -> Value {
    harness.wait_for("manageddatabases", name, "Ready", ready).await
}

fn port(object: &Value) -> u16 {
    object["status"]["endpoint"]["port"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("an endpoint")
}

/// `cloud ARGS -n NAMESPACE`, which must succeed; its standard output.
fn cloud_ok(harness: &Harness, arguments: &[&str]) -> String {
    let mut all = arguments.to_vec();
    all.extend(["-n", harness.namespace.as_str()]);
    let (ok, stdout, stderr) = harness.cloud(&all);
    assert!(ok, "cloud {all:?} failed: {stderr}");
    stdout
}

fn reveal(harness: &Harness, secret: &str, key: &str) -> String {
    cloud_ok(harness, &["secret", "reveal", secret, key]).trim().to_owned()
}

/// Runs SQL with the host's `psql` through the published port; the unaligned output.
fn psql(port: u16, password: &str, database: &str, sql: &str) -> String {
    let output = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The newest backup of a database, by name.
fn newest_backup(harness: &Harness, name: &str) -> String {
    cloud_ok(harness, &["db", "backups", name, "-o", "name"]).lines().last().expect("a backup").to_owned()
}

const CHECKSUM: &str = "SELECT count(*) || ':' || md5(string_agg(id || '=' || v, ',' ORDER BY id)) FROM items";

#[tokio::test]
async fn postgres_rows_come_back_identical_after_backup_drop_and_restore() {
    let harness = Harness::start(PREFIX).await;
    let manifest = database(&harness, "pg", json!({"engine": "postgres", "version": "15", "databaseName": "shop"}));
    harness.apply(vec![manifest.clone()]).await;
    let object = wait_ready(&harness, "pg").await;
    assert_eq!(object["status"]["credentialsSecret"], "pg-credentials");
    let password = reveal(&harness, "pg-credentials", "password");
    assert!(password.len() >= 24 && password.chars().all(|c| c.is_ascii_alphanumeric()), "{password}");
    assert_eq!(reveal(&harness, "pg-credentials", "username"), "app");
    assert_eq!(reveal(&harness, "pg-credentials", "database"), "shop");
    assert_eq!(reveal(&harness, "pg-credentials", "url"), format!("postgres://app:{password}@pg:5432/shop"));

    let port = port(&object);
    psql(port, &password, "shop", "CREATE TABLE items (id int PRIMARY KEY, v text)");
    psql(port, &password, "shop", "INSERT INTO items SELECT i, md5(i::text) FROM generate_series(1, 5000) i");
    let before = psql(port, &password, "shop", CHECKSUM);
    assert!(before.starts_with("5000:"), "{before}");

    let said = cloud_ok(&harness, &["db", "backup", "pg"]);
    assert!(said.contains("backup pg-") && said.contains("sha256"), "{said}");
    let backup = newest_backup(&harness, "pg");
    let table = cloud_ok(&harness, &["db", "backups", "pg"]);
    assert!(table.starts_with("NAME") && table.contains(&backup) && table.contains("Manual"), "{table}");

    psql(port, &password, "shop", "DROP TABLE items");
    let said = cloud_ok(&harness, &["db", "restore", "pg", "--backup", &backup]);
    assert!(said.contains(&format!("restored backup {backup}")), "{said}");
    assert_eq!(psql(port, &password, "shop", CHECKSUM), before, "identical rows after the restore");

    // A dump changed on disk is refused before anything is restored.
    let dump = harness.data_dir.path().join("backups").join(&harness.namespace).join(format!("{backup}.pgdump"));
    let mut bytes = std::fs::read(&dump).expect("dump");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&dump, &bytes).expect("tamper");
    psql(port, &password, "shop", "DELETE FROM items WHERE id > 4000");
    let (ok, _, stderr) = harness.cloud(&["db", "restore", "pg", "--backup", &backup, "-n", &harness.namespace]);
    assert!(
        !ok && stderr.contains("does not match its checksum") && stderr.contains("nothing was restored"),
        "{stderr}"
    );
    assert!(psql(port, &password, "shop", CHECKSUM).starts_with("4000:"), "the database was not touched");
    let events = harness.events("ManagedDatabase", "pg").await;
    assert!(events.iter().any(|e| e.starts_with("RestoreFailed:")), "{events:?}");
    psql(port, &password, "shop", "DROP TABLE items");
    bytes[middle] ^= 0x55;
    std::fs::write(&dump, &bytes).expect("repair");
    cloud_ok(&harness, &["db", "restore", "pg", "--backup", &backup]);
    assert_eq!(psql(port, &password, "shop", CHECKSUM), before);

    // /metrics: the manual backup, its size, two restores that worked and the refused one.
    let labels = format!(r#"namespace="{}",name="pg""#, harness.namespace);
    let manual = format!(r#"minicloud_database_backups_total{{{labels},reason="Manual",result="succeeded"}}"#);
    assert_eq!(harness.metric(&manual).await, Some(1.0));
    let size = harness.metric(&format!("minicloud_database_last_backup_bytes{{{labels}}}")).await;
    assert_eq!(size, Some(bytes.len() as f64));
    let restores = |result: &str| format!(r#"minicloud_database_restores_total{{{labels},result="{result}"}}"#);
    assert_eq!(harness.metric(&restores("succeeded")).await, Some(2.0));
    assert_eq!(harness.metric(&restores("failed")).await, Some(1.0));

    // A re-apply of the same manifest keeps the credentials (and the data).
    harness.apply(vec![manifest]).await;
    wait_ready(&harness, "pg").await;
    assert_eq!(reveal(&harness, "pg-credentials", "password"), password);
    assert_eq!(psql(port, &password, "shop", CHECKSUM), before);

    // `cloud get db` columns.
    let (_, table, _) = harness.cloud(&["get", "db", "-n", &harness.namespace]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ENGINE", "VERSION", "READY", "ENDPOINT", "LAST", "BACKUP", "AGE"], "{table}");
    assert!(
        table.contains("postgres") && table.contains(&format!("127.0.0.1:{port}")) && table.contains(" ago"),
        "{table}"
    );
    harness.finish().await;
}

/// One command in Redis's protocol (RESP).
fn encode(command: &[&str]) -> String {
    let mut request = format!("*{}\r\n", command.len());
    for part in command {
        request.push_str(&format!("${}\r\n{part}\r\n", part.len()));
    }
    request
}

/// One reply: a status or error line, or a bulk string (`(nil)` for none).
fn reply(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reply");
    if let Some(length) = line.strip_prefix('$').and_then(|n| n.trim().parse::<i64>().ok()) {
        if length < 0 {
            return "(nil)".into();
        }
        let mut value = vec![0u8; length as usize + 2];
        reader.read_exact(&mut value).expect("bulk");
        return String::from_utf8_lossy(&value[..length as usize]).into_owned();
    }
    line.trim().to_owned()
}

/// Sends `commands` on one connection to Redis on 127.0.0.1:`port`; the last reply (each
/// earlier one must be `+OK`).
fn redis(port: u16, commands: &[&[&str]]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for command in commands {
        stream.write_all(encode(command).as_bytes()).expect("send");
    }
    let mut reader = BufReader::new(stream);
    for command in &commands[..commands.len() - 1] {
        assert_eq!(reply(&mut reader), "+OK", "{command:?}");
    }
    reply(&mut reader)
}

#[tokio::test]
async fn redis_keeps_its_password_and_comes_back_from_a_backup() {
    let harness = Harness::start(PREFIX).await;
    harness.apply(vec![database(&harness, "cache", json!({"engine": "redis", "version": "7"}))]).await;
    let object = wait_ready(&harness, "cache").await;
    let port = port(&object);
    let password = reveal(&harness, "cache-credentials", "password");
    let auth: &[&str] = &["AUTH", "default", &password];
    assert!(redis(port, &[&["GET", "k"]]).starts_with("-NOAUTH"), "a password is required");
    assert!(redis(port, &[&["AUTH", "default", "wrong"]]).starts_with("-WRONGPASS"));
    assert_eq!(redis(port, &[auth, &["SET", "session:1", "alice"]]), "+OK");

    // Requests at once: each is answered by a backup taken after it asked.
    let racing: Vec<std::process::Child> = (0..4)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
                .args([
                    "--server",
                    &harness.server().url,
                    "db",
                    "backup",
                    "cache",
                    "-n",
                    &harness.namespace,
                    "--timeout",
                    "60s",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("cloud db backup")
        })
        .collect();
    for mut child in racing {
        assert!(child.wait().expect("wait").success(), "every racing backup request is answered");
    }
    let backup = newest_backup(&harness, "cache");
    assert_eq!(redis(port, &[auth, &["SET", "session:1", "mallory"]]), "+OK");
    assert_eq!(redis(port, &[auth, &["SET", "session:2", "bob"]]), "+OK");

    cloud_ok(&harness, &["db", "restore", "cache", "--backup", &backup]);
    let object = wait_ready(&harness, "cache").await;
    assert_eq!(self::port(&object), port, "the same endpoint after the restart");
    assert_eq!(redis(port, &[auth, &["GET", "session:1"]]), "alice");
    assert_eq!(redis(port, &[auth, &["GET", "session:2"]]), "(nil)", "what the backup did not hold is gone");
    harness.finish().await;
}

#[tokio::test]
async fn mariadb_backs_up_and_restores_through_its_own_client() {
    let harness = Harness::start(PREFIX).await;
    harness.apply(vec![database(&harness, "maria", json!({"engine": "mysql", "version": "10.11"}))]).await;
    wait_ready(&harness, "maria").await;
    let password = reveal(&harness, "maria-credentials", "password");
    let container = harness.database_container("maria").await;
    let sql = |statement: &str| {
        docker(&[
            "exec",
            "-e",
            &format!("MYSQL_PWD={password}"),
            &container,
            "mariadb",
            "-h",
            "127.0.0.1",
            "-u",
            "app",
            "-N",
            "app",
            "-e",
            statement,
        ])
    };
    sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(64)); INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    assert_eq!(sql("SELECT COUNT(*) FROM items"), "2");
    cloud_ok(&harness, &["db", "backup", "maria"]);
    let backup = newest_backup(&harness, "maria");
    sql("DROP TABLE items");
    cloud_ok(&harness, &["db", "restore", "maria", "--backup", &backup]);
    assert_eq!(sql("SELECT GROUP_CONCAT(v ORDER BY id) FROM items"), "one,two");
    harness.finish().await;
}

/// The files in the run's backup directory.
fn backup_files(harness: &Harness) -> Vec<String> {
    let directory: PathBuf = harness.data_dir.path().join("backups").join(&harness.namespace);
    std::fs::read_dir(directory)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_backup_killed_midway_is_never_listed_and_the_next_scheduled_one_works() {
    let mut harness = Harness::start(PREFIX).await;
    let spec = json!({"engine": "postgres", "version": "15", "backup": {"schedule": "* * * * *", "retention": 10}});
    harness.apply(vec![database(&harness, "big", spec)]).await;
    let object = wait_ready(&harness, "big").await;
    let (port, password) = (port(&object), reveal(&harness, "big-credentials", "password"));
    // Enough data that a dump takes a while.
    psql(port, &password, "app", "CREATE TABLE items AS SELECT i AS id, md5(i::text) || md5((i * 7)::text) AS v FROM generate_series(1, 1500000) i");

    // A backup on request; the control plane is killed while its partial file grows.
    let mut requester = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["--server", &harness.server().url, "db", "backup", "big", "-n", &harness.namespace])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cloud db backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !backup_files(&harness).iter().any(|f| f.starts_with(".partial-big-")) {
        assert!(Instant::now() < deadline, "no backup started: {:?}", backup_files(&harness));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let database = harness.server.take().expect("server").crash();
    let _ = requester.kill();
    let _ = requester.wait();
    let left = backup_files(&harness);
    let partial = left.iter().find(|f| f.starts_with(".partial-")).unwrap_or_else(|| panic!("{left:?}"));
    // The killed backup is not described, so not listed. (A scheduled one may have finished
    // before it, the schedule being every minute: that one is whole, as checked below.)
    let stem = partial.trim_start_matches(".partial-").trim_end_matches(".pgdump");
    assert!(!left.contains(&format!("{stem}.json")), "the killed backup is not described: {left:?}");
    for description in left.iter().filter(|f| f.ends_with(".json")) {
        let dump = description.replace(".json", ".pgdump");
        assert!(left.contains(&dump), "a described backup has its dump: {left:?}");
    }

    // Back up: the partial file goes, every listed backup is whole, and a scheduled one comes.
    let described_before: Vec<String> =
        left.iter().filter_map(|file| file.strip_suffix(".json")).map(str::to_owned).collect();
    harness.server = Some(harness.start_server(database).await);
    // The schedule is every minute: the next one may be up to a minute away, plus the dump.
    let object = harness
        .wait_for_within(
            "manageddatabases",
            "big",
            "a scheduled backup after the restart",
            Duration::from_secs(150),
            |o| {
                o["status"]["backups"].as_array().is_some_and(|backups| {
                    backups.iter().any(|backup| {
                        let name = backup["name"].as_str().unwrap_or("");
                        backup["reason"] == "Scheduled" && !described_before.iter().any(|before| before == name)
                    })
                })
            },
        )
        .await;
    let files = backup_files(&harness);
    assert!(!files.iter().any(|f| f.starts_with(".partial-")), "the partial file was removed: {files:?}");
    for backup in object["status"]["backups"].as_array().expect("backups") {
        let name = backup["name"].as_str().expect("name");
        let path = harness.data_dir.path().join("backups").join(&harness.namespace).join(format!("{name}.pgdump"));
        let bytes = std::fs::read(&path).expect("the dump of a listed backup");
        assert_eq!(bytes.len() as u64, backup["sizeBytes"].as_u64().expect("size"), "{name}");
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, backup["sha256"], "{name} is whole");
    }
    assert_eq!(condition(&object, "BackedUp").map(|c| c.0), Some("True"));
    harness.finish().await;
}

#[tokio::test]
async fn bad_database_manifests_are_refused_where_they_are_wrong() {
    let harness = Harness::start(PREFIX).await;
    let directory = tempfile::tempdir().expect("dir");
    let path = directory.path().join("db.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: minicloud.dev/v1\nkind: ManagedDatabase\nmetadata:\n  name: bad\n  namespace: {ns}\nspec:\n  engine: postgres\n  version: \"9\"\n  storage:\n    size: 10Mi\n  backup:\n    schedule: \"0 25 * * *\"\n---\napiVersion: minicloud.dev/v1\nkind: ManagedDatabase\nmetadata:\n  name: odd\n  namespace: {ns}\nspec:\n  engine: oracle\n  version: \"19\"\n",
            ns = harness.namespace
        ),
    )
    .expect("manifest");
    let file = path.display().to_string();
    let (ok, _, stderr) = harness.cloud(&["apply", "-f", &file]);
    assert!(!ok, "{stderr}");
    for expected in [
        format!("{file}:8:12: spec.version: postgres \"9\" is not available"),
        format!("{file}:10:11: spec.storage.size: 10Mi is too small"),
        format!("{file}:12:15: spec.backup.schedule: schedule \"0 25 * * *\": \"25\" is not a valid hour"),
        format!("{file}:20:11: spec.engine:"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(harness.list("manageddatabases").await.is_empty(), "nothing was created");
    harness.finish().await;
}

#[tokio::test]
async fn each_deletion_policy_keeps_what_it_says() {
    let harness = Harness::start(PREFIX).await;
    let spec = |policy: &str| json!({"engine": "postgres", "version": "15", "deletionPolicy": policy});
    harness
        .apply(vec![
            database(&harness, "gone", spec("Delete")),
            database(&harness, "kept", spec("Retain")),
            database(&harness, "snap", spec("Snapshot")),
        ])
        .await;
    for name in ["gone", "kept", "snap"] {
        let object = wait_ready(&harness, name).await;
        let password = reveal(&harness, &format!("{name}-credentials"), "password");
        psql(port(&object), &password, "app", &format!("CREATE TABLE marker AS SELECT '{name}'::text AS v"));
    }
    let kept_password = reveal(&harness, "kept-credentials", "password");
    let cluster = harness.server().cluster().await;
    let volume = |name: &str| names::database_volume(&cluster, &harness.namespace, name);
    let volume_exists =
        |name: &str| !docker(&["volume", "ls", "-q", "--filter", &format!("name=^{}$", volume(name))]).is_empty();
    for name in ["gone", "kept", "snap"] {
        harness.http.delete(harness.url("manageddatabases", name)).send().await.expect("delete");
    }
    for name in ["gone", "kept", "snap"] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while harness.get("manageddatabases", name).await.is_some() {
            assert!(Instant::now() < deadline, "{name} was not deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            docker(&["ps", "-aq", "--filter", &format!("name=^{}$", harness.database_container(name).await)])
                .is_empty(),
            "{name}: container gone"
        );
    }
    // Delete: volume and credentials gone.
    assert!(!volume_exists("gone"));
    assert!(harness.get("secrets", "gone-credentials").await.is_none());
    // Retain: the volume and the credentials stay; a new database of that name takes both up.
    assert!(volume_exists("kept"));
    assert!(harness.get("secrets", "kept-credentials").await.is_some());
    // Snapshot: a final backup, then volume and credentials gone.
    assert!(!volume_exists("snap"));
    let finals: Vec<String> =
        backup_files(&harness).into_iter().filter(|f| f.starts_with("snap-") && f.ends_with(".json")).collect();
    assert_eq!(finals.len(), 1, "{:?}", backup_files(&harness));
    let description: Value = serde_json::from_slice(
        &std::fs::read(harness.data_dir.path().join("backups").join(&harness.namespace).join(&finals[0]))
            .expect("description"),
    )
    .expect("json");
    assert_eq!(description["reason"], "Final");
    let snapshot = description["name"].as_str().expect("name").to_owned();

    harness
        .apply(vec![
            database(&harness, "kept", spec("Delete")),
            database(
                &harness,
                "reborn",
                json!({"engine": "postgres", "version": "15", "restoreFrom": {"backup": snapshot}}),
            ),
        ])
        .await;
    let kept = wait_ready(&harness, "kept").await;
    assert_eq!(reveal(&harness, "kept-credentials", "password"), kept_password, "the kept credentials are adopted");
    assert_eq!(psql(port(&kept), &kept_password, "app", "SELECT v FROM marker"), "kept", "the kept data is there");
    let reborn = harness
        .wait_for("manageddatabases", "reborn", "restored", |o| ready(o) && o["status"]["restoredFrom"] == snapshot)
        .await;
    let password = reveal(&harness, "reborn-credentials", "password");
    assert_eq!(psql(port(&reborn), &password, "app", "SELECT v FROM marker"), "snap", "the final snapshot restores");
    harness.finish().await;
}

#[tokio::test]
async fn retention_keeps_the_newest_backups_of_the_policy() {
    let harness = Harness::start(PREFIX).await;
    // A schedule that does not fire during the test; retention 2.
    let spec = json!({"engine": "redis", "version": "7", "backup": {"schedule": "0 3 1 1 *", "retention": 2}});
    harness.apply(vec![database(&harness, "kv", spec)]).await;
    let object = wait_ready(&harness, "kv").await;
    assert!(
        object["status"]["nextBackupTime"].as_str().is_some_and(|t| t.contains("-01-01T03:00:00")),
        "{}",
        object["status"]
    );
    let mut taken = Vec::new();
    for _ in 0..4 {
        cloud_ok(&harness, &["db", "backup", "kv"]);
        taken.push(newest_backup(&harness, "kv"));
    }
    let listed: Vec<String> =
        cloud_ok(&harness, &["db", "backups", "kv", "-o", "name"]).lines().map(str::to_owned).collect();
    assert_eq!(listed, taken[2..], "the two newest are kept");
    let dumps = backup_files(&harness).into_iter().filter(|f| f.ends_with(".rdb")).count();
    assert_eq!(dumps, 2, "the older dumps are removed from disk: {:?}", backup_files(&harness));

    // Without spec.backup, manual backups keep the default retention (7).
    harness.apply(vec![database(&harness, "plain", json!({"engine": "redis", "version": "7"}))]).await;
    wait_ready(&harness, "plain").await;
    let mut taken = Vec::new();
    for _ in 0..9 {
        cloud_ok(&harness, &["db", "backup", "plain"]);
        taken.push(newest_backup(&harness, "plain"));
    }
    let listed: Vec<String> =
        cloud_ok(&harness, &["db", "backups", "plain", "-o", "name"]).lines().map(str::to_owned).collect();
    assert_eq!(listed, taken[2..], "the seven newest are kept");
    harness.finish().await;
}

#[tokio::test]
async fn a_failed_backup_is_reported_and_never_listed() {
    let harness = Harness::start(PREFIX).await;
    harness.apply(vec![database(&harness, "fragile", json!({"engine": "postgres", "version": "15"}))]).await;
    let object = wait_ready(&harness, "fragile").await;
    let password = reveal(&harness, "fragile-credentials", "password");
    // The database the dump reads is dropped (through the maintenance database): pg_dump fails.
    psql(port(&object), &password, "postgres", "DROP DATABASE app WITH (FORCE)");
    let (ok, _, stderr) = harness.cloud(&["db", "backup", "fragile", "-n", &harness.namespace]);
    assert!(!ok && stderr.contains("the manual backup failed") && stderr.contains("pg_dump"), "{stderr}");
    let object = harness.get("manageddatabases", "fragile").await.expect("db");
    assert_eq!(condition(&object, "BackedUp"), Some(("False", "BackupFailed")));
    assert!(object["status"]["backups"].as_array().is_none_or(Vec::is_empty), "{}", object["status"]);
    assert!(backup_files(&harness).is_empty(), "no file is left: {:?}", backup_files(&harness));
    let events = harness.events("ManagedDatabase", "fragile").await;
    assert!(events.iter().any(|e| e.starts_with("BackupFailed:") && e.contains("does not exist")), "{events:?}");
    let labels = format!(r#"namespace="{}",name="fragile",reason="Manual""#, harness.namespace);
    let failed = format!(r#"minicloud_database_backups_total{{{labels},result="failed"}}"#);
    assert_eq!(harness.metric(&failed).await, Some(1.0));
    let succeeded = format!(r#"minicloud_database_backups_total{{{labels},result="succeeded"}}"#);
    assert_eq!(harness.metric(&succeeded).await, None);
    harness.finish().await;
}

/// A final snapshot that cannot be taken holds the deletion with a visible condition; `cloud
/// delete db NAME --skip-final-snapshot` is the explicit way out, recorded in the audit log.
#[tokio::test]
async fn a_final_snapshot_that_cannot_be_taken_holds_until_it_is_skipped() {
    let harness = Harness::start(PREFIX).await;
    harness.apply(vec![database(&harness, "stuck", json!({"engine": "postgres", "version": "15"}))]).await;
    let object = wait_ready(&harness, "stuck").await;
    let password = reveal(&harness, "stuck-credentials", "password");
    // The database the credentials name is gone: no dump can be taken of it.
    psql(port(&object), &password, "postgres", "DROP DATABASE app WITH (FORCE)");
    cloud_ok(&harness, &["delete", "db", "stuck"]);
    let held = harness
        .wait_for_within("manageddatabases", "stuck", "FinalSnapshot=False", Duration::from_secs(90), |object| {
            condition(object, "FinalSnapshot") == Some(("False", "SnapshotFailed"))
        })
        .await;
    let message = held["status"]["conditions"].to_string();
    assert!(message.contains("--skip-final-snapshot") && message.contains("data is kept"), "{message}");
    let container = harness.database_container("stuck").await;
    assert!(!docker(&["ps", "-q", "--filter", &format!("name=^{container}$")]).is_empty(), "nothing deleted yet");

    // Other kinds refuse the flag; the database goes with it.
    let (ok, _, stderr) =
        harness.cloud(&["delete", "instance", "x", "--skip-final-snapshot", "-n", &harness.namespace]);
    assert!(!ok && stderr.contains("databases only"), "{stderr}");
    let output = cloud_ok(&harness, &["delete", "db", "stuck", "--skip-final-snapshot", "--wait", "--timeout", "90s"]);
    assert!(output.contains("manageddatabase/stuck"), "{output}");
    assert!(harness.get("manageddatabases", "stuck").await.is_none());
    assert!(docker(&["ps", "-aq", "--filter", &format!("name=^{container}$")]).is_empty(), "container gone");
    let (_, audit, _) = harness.cloud(&["audit", "--since", "1h"]);
    assert!(
        audit.lines().any(|line| line.contains("update") && line.contains("manageddatabases/stuck")),
        "the skip is in the audit log:\n{audit}"
    );
    harness.finish().await;
}
