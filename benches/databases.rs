//! ManagedDatabase benchmark with the real `cloud server` (release build), real Docker and the
//! real PostgreSQL image, each figure next to a baseline measured in the same run:
//!
//! - `cloud apply` of a postgres database → Ready, against `docker run -d` of the same image
//!   with a `pg_isready` loop;
//! - backup and restore throughput (MB/s of database) on a database of about 100 MB, against
//!   `docker exec pg_dump -Fc > file` and `docker exec -i pg_restore < file` run by hand.
//!
//! Run: `cargo bench --bench databases` (needs `scripts/local-images.sh postgres` and the
//! host's `psql`). Everything it starts carries `minicloud.dev/test=bench-db-...` and is
//! removed at the end.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{apply, docker, median, ms, start_server, RemoveLabelled, Server};
use serde_json::{json, Value};

const NAMESPACE: &str = "bench-db";
const RUNS: usize = 3;
/// Rows of about 100 bytes: about 100 MB of database.
const ROWS: u32 = 900_000;

type Http = reqwest::blocking::Client;

fn url(server: &Server, name: &str) -> String {
    format!("{}/apis/minicloud.dev/v1/namespaces/{NAMESPACE}/manageddatabases/{name}", server.url)
}

fn get(http: &Http, server: &Server, name: &str) -> Option<Value> {
    let response = http.get(url(server, name)).send().ok()?;
    response.status().is_success().then(|| response.json().ok()).flatten()
}

fn wait(http: &Http, server: &Server, name: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(object) = get(http, server, name).filter(|o| check(o)) {
            return object;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not there in time: {:?}",
            get(http, server, name).map(|o| o["status"].clone())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ready(object: &Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn database(name: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "ManagedDatabase",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"engine": "postgres", "version": "15", "deletionPolicy": "Delete"}
    })
}

fn delete(http: &Http, server: &Server, name: &str) {
    let _ = http.delete(url(server, name)).send();
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(http, server, name).is_some() {
        assert!(Instant::now() < deadline, "{name} was not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cloud(server: &Server, arguments: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["--server", &server.url])
        .args(arguments)
        .output()
        .expect("cloud");
    assert!(output.status.success(), "cloud {arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn psql(port: u16, password: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-qAt",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .output()
        .expect("psql");
    assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn create_to_ready(http: &Http, server: &Server, label: &str) {
    println!("### `cloud apply` of a postgres database → Ready (median of {RUNS})");
    println!();
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let name = format!("ready-{run}");
        let started = Instant::now();
        apply(http, server, vec![database(&name)]);
        wait(http, server, &name, Duration::from_secs(120), ready);
        ours.push(started.elapsed());
        delete(http, server, &name);

        let container = format!("bench-db-raw-{}-{run}", std::process::id());
        let started = Instant::now();
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--label",
            label,
            "-p",
            "127.0.0.1::5432",
            "-e",
            "POSTGRES_USER=app",
            "-e",
            "POSTGRES_PASSWORD=benchmark-password",
            "-e",
            "POSTGRES_DB=app",
            "minicloud/postgres:local",
        ]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ok = Command::new("docker")
                .args(["exec", &container, "pg_isready", "-q", "-h", "/tmp", "-U", "app", "-d", "app"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the raw container never became ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        raw.push(started.elapsed());
        docker(&["rm", "-f", &container]);
    }
    let (ours, raw) = (median(ours), median(raw));
    println!("| what | time | vs baseline |");
    println!("|---|---|---|");
    println!("| baseline: `docker run -d` of the same image + `pg_isready` loop | {} | 1.00× |", ms(raw));
    println!(
        "| minicloud: apply → Ready (credentials Secret, volume, container, the engine's check) | {} | {:.2}× |",
        ms(ours),
        ours.as_secs_f64() / raw.as_secs_f64()
    );
    println!();
}

fn throughput(http: &Http, server: &Server, data: &std::path::Path) {
    println!("### Backup and restore of a database of about 100 MB (median of {RUNS})");
    println!();
    apply(http, server, vec![database("big")]);
    let object = wait(http, server, "big", Duration::from_secs(120), ready);
    let port = object["status"]["endpoint"]["port"].as_u64().expect("port") as u16;
    let password = cloud(server, &["secret", "reveal", "big-credentials", "password", "-n", NAMESPACE]);
    psql(port, &password, &format!(
        "CREATE TABLE items AS SELECT i AS id, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) AS v FROM generate_series(1, {ROWS}) i"
    ));
    let bytes: f64 = psql(port, &password, "SELECT pg_database_size('app')").parse().expect("size");
    let megabytes = bytes / 1e6;
    let checksum = "SELECT md5(string_agg(v, '' ORDER BY id)) FROM items";
    let before = psql(port, &password, checksum);
    let container = minicloud_controllers::docker::names::database_container(&server.cluster(), NAMESPACE, "big");
    let (mut backups, mut restores, mut raw_dumps, mut raw_restores) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut dump_size = 0u64;
    for _ in 0..RUNS {
        let started = Instant::now();
        cloud(server, &["db", "backup", "big", "-n", NAMESPACE]);
        backups.push(started.elapsed());
        let backup = cloud(server, &["db", "backups", "big", "-n", NAMESPACE, "-o", "name"])
            .lines()
            .last()
            .expect("a backup")
            .to_owned();
        let listed = get(http, server, "big").expect("db");
        dump_size = listed["status"]["backups"]
            .as_array()
            .and_then(|b| b.last())
            .and_then(|b| b["sizeBytes"].as_u64())
            .unwrap_or(0);
        psql(port, &password, "DROP TABLE items");
        let started = Instant::now();
        cloud(server, &["db", "restore", "big", "--backup", &backup, "-n", NAMESPACE]);
        restores.push(started.elapsed());
        assert_eq!(psql(port, &password, checksum), before, "the restore is complete");

        // Baseline: the same dump and restore by hand through the docker CLI.
        let file = data.join("raw.pgdump");
        let started = Instant::now();
        let out = std::fs::File::create(&file).expect("file");
        let status = Command::new("docker")
            .args(["exec", &container, "pg_dump", "-Fc", "-h", "/tmp", "-U", "app", "-d", "app"])
            .stdout(out)
            .status()
            .expect("pg_dump");
        assert!(status.success());
        raw_dumps.push(started.elapsed());
        psql(port, &password, "DROP TABLE items");
        let started = Instant::now();
        let input = std::fs::File::open(&file).expect("file");
        let status = Command::new("docker")
            .args([
                "exec",
                "-i",
                &container,
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "-h",
                "/tmp",
                "-U",
                "app",
                "-d",
                "app",
            ])
            .stdin(input)
            .status()
            .expect("pg_restore");
        assert!(status.success());
        raw_restores.push(started.elapsed());
        assert_eq!(psql(port, &password, checksum), before);
    }
    let rate = |time: Duration| megabytes / time.as_secs_f64();
    let (backup, restore, raw_dump, raw_restore) =
        (median(backups), median(restores), median(raw_dumps), median(raw_restores));
    println!(
        "Database: {megabytes:.0} MB (`pg_database_size`), {ROWS} rows; dump (`pg_dump -Fc`): {:.0} MB.",
        dump_size as f64 / 1e6
    );
    println!();
    println!("| what | time | MB/s of database | vs by hand |");
    println!("|---|---|---|---|");
    println!("| by hand: `docker exec pg_dump -Fc > file` | {} | {:.0} | 1.00× |", ms(raw_dump), rate(raw_dump));
    println!(
        "| `cloud db backup` (request → dump streamed, hashed, synced, listed) | {} | {:.0} | {:.2}× |",
        ms(backup),
        rate(backup),
        raw_dump.as_secs_f64() / backup.as_secs_f64()
    );
    println!(
        "| by hand: `docker exec -i pg_restore --clean < file` | {} | {:.0} | 1.00× |",
        ms(raw_restore),
        rate(raw_restore)
    );
    println!(
        "| `cloud db restore` (checksum checked, dump streamed in, Ready again) | {} | {:.0} | {:.2}× |",
        ms(restore),
        rate(restore),
        raw_restore.as_secs_f64() / restore.as_secs_f64()
    );
    println!();
    delete(http, server, "big");
}

fn main() {
    let label = format!("minicloud.dev/test=bench-db-{}", std::process::id());
    let _cleanup = RemoveLabelled(label.clone());
    let data = tempfile::tempdir().expect("data dir");
    let server = start_server(data.path(), &label);
    let http = Http::new();
    println!("## ManagedDatabase benchmark (cargo bench --bench databases)");
    println!();
    create_to_ready(&http, &server, &label);
    throughput(&http, &server, data.path());
}
