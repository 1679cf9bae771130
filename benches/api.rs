//! API and CLI benchmark, end to end with the real binaries, on SQLite and PostgreSQL, each
//! figure next to a baseline measured in the same run:
//!
//! - `cloud apply -f` of a 1,000-document file, against `cloud validate -f` of the same file
//!   (the client-side share: reading, parsing, validating);
//! - `cloud get` of 10,000 objects, against a bare HTTP GET of the same list;
//! - watch delivery latency, write to client, against the round trip of the write itself;
//! - server RSS with 10,000 objects stored, against the same server empty.
//!
//! Run: `cargo bench --bench api` (PostgreSQL at MINICLOUD_TEST_POSTGRES_URL). Figures go to
//! docs/benchmarks.md.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};

const RUNS: usize = 5;

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(database_url: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["server", "--listen", "127.0.0.1:0", "--database-url", database_url, "--no-controllers"])
        .env("RUST_LOG", "warn,minicloud_server::composition=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().expect("server log").expect("log line");
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap_or("").to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url: format!("http://{address}") }
}

fn cloud(server: &Server, args: &[&str]) -> Duration {
    let started = Instant::now();
    let output =
        Command::new(env!("CARGO_BIN_EXE_cloud")).args(args).env("CLOUD_SERVER", &server.url).output().expect("cloud");
    let elapsed = started.elapsed();
    assert!(output.status.success(), "cloud {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * fraction).round() as usize]
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn manifest_file(directory: &std::path::Path, count: usize) -> std::path::PathBuf {
    let mut text = String::new();
    for index in 0..count {
        text.push_str(&format!(
            "---\napiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: web-{index}\n  labels:\n    app: web\nspec:\n  image: minicloud/web:local\n  ports:\n    - containerPort: 8080\n  env:\n    - name: MODE\n      value: production\n"
        ));
    }
    let path = directory.join(format!("instances-{count}.yaml"));
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

async fn bench_backend(name: &str, database_url: &str, directory: &std::path::Path) {
    let server = start_server(database_url);
    let http = reqwest::Client::new();
    let empty_rss = rss_kib(&server);
    let thousand = manifest_file(directory, 1_000);
    let file = thousand.to_str().expect("path");

    // apply of 1,000 documents, each run into a fresh namespace.
    let apply =
        median((0..RUNS).map(|run| cloud(&server, &["apply", "-f", file, "-n", &format!("apply-{run}")])).collect());
    let validate = median((0..RUNS).map(|_| cloud(&server, &["validate", "-f", file])).collect());
    println!(
        "| {name} | `cloud apply -f` 1,000 documents | {} | `cloud validate` same file: {} | {:.2}x |",
        ms(apply),
        ms(validate),
        apply.as_secs_f64() / validate.as_secs_f64()
    );

    // 10,000 objects in one namespace, then `cloud get`.
    let ten_thousand = manifest_file(directory, 10_000);
    cloud(&server, &["apply", "-f", ten_thousand.to_str().expect("path"), "-n", "big"]);
    let get = median((0..RUNS).map(|_| cloud(&server, &["get", "instances", "-n", "big"])).collect());
    let mut raw = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let body = http
            .get(format!("{}/apis/minicloud.dev/v1/namespaces/big/instances", server.url))
            .send()
            .await
            .expect("list")
            .bytes()
            .await
            .expect("body");
        raw.push(started.elapsed());
        assert!(body.len() > 1_000_000);
    }
    let raw = median(raw);
    println!(
        "| {name} | `cloud get` 10,000 objects | {} | bare HTTP GET of the list: {} | {:.2}x |",
        ms(get),
        ms(raw),
        get.as_secs_f64() / raw.as_secs_f64()
    );

    // Watch latency: 300 writes, each timed from just before the request to the event's arrival.
    let response = http
        .get(format!("{}/apis/minicloud.dev/v1/namespaces/latency/instances", server.url))
        .query(&[("watch", "true")])
        .send()
        .await
        .expect("watch");
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut delivered = Vec::new();
    let mut round_trips = Vec::new();
    for index in 0..300 {
        let object = json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": format!("w-{index}")}, "spec": {"image": "minicloud/web:local"}});
        let started = Instant::now();
        let response = http
            .post(format!("{}/apis/minicloud.dev/v1/namespaces/latency/instances", server.url))
            .json(&object)
            .send()
            .await
            .expect("create");
        round_trips.push(started.elapsed());
        assert!(response.status().is_success());
        loop {
            if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line).expect("line");
                if event["type"] == "ADDED" {
                    delivered.push(started.elapsed());
                    break;
                }
                continue;
            }
            let chunk = stream.next().await.expect("stream").expect("chunk");
            buffer.extend_from_slice(&chunk);
        }
    }
    let (p50, p99) = (percentile(&mut delivered, 0.5), percentile(&mut delivered, 0.99));
    let (write50, write99) = (percentile(&mut round_trips, 0.5), percentile(&mut round_trips, 0.99));
    println!(
        "| {name} | watch delivery, write → client (300 writes) | p50 {} / p99 {} | write round trip: p50 {} / p99 {} | {:.2}x (p99) |",
        ms(p50),
        ms(p99),
        ms(write50),
        ms(write99),
        p99.as_secs_f64() / write99.as_secs_f64()
    );

    let worked_rss = rss_kib(&server);
    drop(server);

    // A server over the same store (15,300 objects, 10,000 in one namespace) serving the big
    // list five times: its memory with the objects stored.
    let server = start_server(database_url);
    for _ in 0..RUNS {
        cloud(&server, &["get", "instances", "-n", "big"]);
    }
    let serving_rss = rss_kib(&server);
    let mb = |kib: u64| kib as f64 / 1024.0;
    println!(
        "| {name} | server RSS with the objects stored, after 5 lists of 10,000 | {:.1} MB | empty server: {:.1} MB | {:.2}x |",
        mb(serving_rss),
        mb(empty_rss),
        serving_rss as f64 / empty_rss.max(1) as f64
    );
    println!(
        "| {name} | server RSS right after the runs above (incl. one 10,000-document apply) | {:.1} MB | empty server: {:.1} MB | {:.2}x |",
        mb(worked_rss),
        mb(empty_rss),
        worked_rss as f64 / empty_rss.max(1) as f64
    );
}

#[tokio::main]
async fn main() {
    let directory = tempfile::tempdir().expect("tempdir");
    println!("API benchmark: medians of {RUNS} runs; every figure with its baseline from the same run");
    println!();
    println!("| backend | what | minicloud | baseline | ratio |");
    println!("|---|---|---|---|---|");
    let sqlite_dir = directory.path().join("sqlite");
    bench_backend("SQLite", &minicloud_server::store::sql::sqlite_url(&sqlite_dir), directory.path()).await;

    let admin = std::env::var("MINICLOUD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://minicloud:minicloud@127.0.0.1:5432/postgres".into());
    let mut connection = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL for the benchmark");
    let database = format!("minicloud_bench_{}", uuid::Uuid::new_v4().simple());
    connection.execute(format!("CREATE DATABASE {database}").as_str()).await.expect("create database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    bench_backend("PostgreSQL", &format!("{base}/{database}"), directory.path()).await;
    connection.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str()).await.ok();
}
