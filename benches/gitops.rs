//! GitOps benchmark, end to end with the real binaries on SQLite and PostgreSQL, each figure
//! next to a baseline measured in the same run. A directory of 1,000 Instances in 50 files:
//!
//! - `cloud apply -R --applyset --prune` of the unchanged directory, against a plain
//!   `cloud apply -R` of the same directory (the cost of the inventory and the ownership check);
//! - `cloud sync --once` of the unchanged directory (adds the Sync status), same baseline;
//! - prune of 100 objects whose files were removed, against doing it by hand: a plain apply of
//!   the rest plus `cloud delete -f` of the removed files;
//! - a running `cloud sync`: an edited file → the change visible through the API, against
//!   `cloud apply -f` of that one file.
//!
//! Run: `cargo bench --bench gitops` (PostgreSQL at MINICLOUD_TEST_POSTGRES_URL). Figures go
//! to docs/benchmarks.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

const RUNS: usize = 5;
const FILES: usize = 50;
const PER_FILE: usize = 20;
const REMOVED_FILES: usize = 5;
const EDITS: usize = 10;
/// Any 32 bytes, base64: the servers seal Secret values with it (none here).
const KEY: &str = "bWluaWNsb3VkLWdpdG9wcy1iZW5jaG1hcmsta2V5ISE=";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(database_url: &str) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["server", "--listen", "127.0.0.1:0", "--database-url", database_url, "--no-controllers"])
        .env("RUST_LOG", "warn,minicloud_server::composition=info")
        .env("MINICLOUD_SECRET_KEY", KEY)
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
    (Process(child), format!("http://{address}"))
}

fn cloud(url: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_cloud")).args(args).env("CLOUD_SERVER", url).output().expect("cloud");
    let elapsed = started.elapsed();
    assert!(output.status.success(), "cloud {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1e3)
}

fn instances(file: usize, mode: &str) -> String {
    let mut text = String::new();
    for index in 0..PER_FILE {
        text.push_str(&format!(
            "---\napiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: web-{file}-{index}\n  labels:\n    app: web\n    mode: {mode}\nspec:\n  image: minicloud/web:local\n  ports:\n    - containerPort: 8080\n"
        ));
    }
    text
}

/// A directory of FILES files (in five subdirectories) of PER_FILE Instances each.
fn site(root: &Path, name: &str) -> PathBuf {
    let directory = root.join(name);
    for file in 0..FILES {
        let path = directory.join(format!("team-{}", file % 5)).join(format!("web-{file}.yaml"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, instances(file, "v0")).expect("write");
    }
    directory
}

fn file_of(directory: &Path, file: usize) -> PathBuf {
    directory.join(format!("team-{}", file % 5)).join(format!("web-{file}.yaml"))
}

fn row(name: &str, what: &str, measured: Duration, baseline_what: &str, baseline: Duration) {
    println!(
        "| {name} | {what} | {} | {baseline_what}: {} | {:.2}x |",
        ms(measured),
        ms(baseline),
        measured.as_secs_f64() / baseline.as_secs_f64()
    );
}

async fn bench_backend(name: &str, database_url: &str, root: &Path) {
    let (_server, url) = start_server(database_url);
    let url = url.as_str();
    let http = reqwest::Client::new();
    let (mut plain, mut set, mut once, mut pruned, mut by_hand) = (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        let plain_dir = site(root, &format!("{name}-plain-{run}"));
        let set_dir = site(root, &format!("{name}-set-{run}"));
        let sync_dir = site(root, &format!("{name}-sync-{run}"));
        let (plain_path, set_path, sync_path) =
            (plain_dir.to_str().expect("path"), set_dir.to_str().expect("path"), sync_dir.to_str().expect("path"));
        let (plain_ns, set_ns, sync_ns) = (format!("plain-{run}"), format!("set-{run}"), format!("sync-{run}"));
        cloud(url, &["apply", "-R", "-f", plain_path, "-n", &plain_ns]);
        cloud(url, &["apply", "-R", "-f", set_path, "-n", &set_ns, "--applyset", "site", "--prune"]);
        cloud(url, &["sync", sync_path, "--once", "--name", "site", "-n", &sync_ns]);

        plain.push(cloud(url, &["apply", "-R", "-f", plain_path, "-n", &plain_ns]));
        set.push(cloud(url, &["apply", "-R", "-f", set_path, "-n", &set_ns, "--applyset", "site", "--prune"]));
        once.push(cloud(url, &["sync", sync_path, "--once", "--name", "site", "-n", &sync_ns]));

        // 100 objects leave: prune them, or apply the rest and delete them by hand.
        let removed = root.join(format!("{name}-removed-{run}"));
        std::fs::create_dir_all(&removed).expect("mkdir");
        for file in 0..REMOVED_FILES {
            std::fs::remove_file(file_of(&set_dir, file)).expect("rm");
            std::fs::rename(file_of(&plain_dir, file), removed.join(format!("web-{file}.yaml"))).expect("mv");
        }
        pruned.push(cloud(url, &["apply", "-R", "-f", set_path, "-n", &set_ns, "--applyset", "site", "--prune"]));
        let removed_path = removed.to_str().expect("path");
        by_hand.push(
            cloud(url, &["apply", "-R", "-f", plain_path, "-n", &plain_ns])
                + cloud(url, &["delete", "-f", removed_path, "-n", &plain_ns]),
        );
        let left = http
            .get(format!("{url}/apis/minicloud.dev/v1/namespaces/{set_ns}/instances"))
            .send()
            .await
            .expect("list")
            .json::<serde_json::Value>()
            .await
            .expect("json");
        assert_eq!(left["items"].as_array().map(Vec::len), Some((FILES - REMOVED_FILES) * PER_FILE));
    }
    let plain = median(plain);
    let baseline = "plain `cloud apply -R`";
    row(name, "`cloud apply -R --applyset --prune`, 1,000 unchanged", median(set), baseline, plain);
    row(name, "`cloud sync --once`, 1,000 unchanged", median(once), baseline, plain);
    row(
        name,
        "prune 100 of 1,000 (5 files removed)",
        median(pruned),
        "apply + `cloud delete -f` by hand",
        median(by_hand),
    );

    // A running sync (interval 1 h: the watcher does the work) against applying the file.
    let live_dir = site(root, &format!("{name}-live"));
    let direct_dir = site(root, &format!("{name}-direct"));
    cloud(url, &["apply", "-R", "-f", direct_dir.to_str().expect("path"), "-n", "direct"]);
    let _sync = Process(
        Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(["sync", live_dir.to_str().expect("path"), "--name", "live", "-n", "live", "--interval", "1h"])
            .env("CLOUD_SERVER", url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cloud sync"),
    );
    let label_of = |object: &str| {
        let http = http.clone();
        let address = format!("{url}/apis/minicloud.dev/v1/namespaces/live/instances/{object}");
        async move {
            let response = http.get(address).send().await.expect("get");
            if !response.status().is_success() {
                return None;
            }
            let object: serde_json::Value = response.json().await.expect("json");
            object["metadata"]["labels"]["mode"].as_str().map(str::to_owned)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while label_of("web-49-19").await.is_none() {
        assert!(Instant::now() < deadline, "the sync never applied the directory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut followed, mut applied) = (vec![], vec![]);
    for edit in 1..=EDITS {
        let file = edit % FILES;
        let mode = format!("v{edit}");
        let started = Instant::now();
        std::fs::write(file_of(&live_dir, file), instances(file, &mode)).expect("edit");
        let deadline = started + Duration::from_secs(60);
        while label_of(&format!("web-{file}-0")).await.as_deref() != Some(mode.as_str()) {
            assert!(Instant::now() < deadline, "the edit was never applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        followed.push(started.elapsed());
        let direct = file_of(&direct_dir, file);
        std::fs::write(&direct, instances(file, &mode)).expect("edit");
        applied.push(cloud(url, &["apply", "-f", direct.to_str().expect("path"), "-n", "direct"]));
        // Let the round finish before the next edit.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    row(
        name,
        "running `cloud sync`: file edited → applied (1,000 objects; 0.5 s debounce)",
        median(followed),
        "`cloud apply -f` of the edited file",
        median(applied),
    );
}

#[tokio::main]
async fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    println!(
        "GitOps benchmark: {FILES} files of {PER_FILE} Instances; medians of {RUNS} runs ({EDITS} edits); baselines from the same run"
    );
    println!();
    println!("| backend | what | minicloud | baseline | ratio |");
    println!("|---|---|---|---|---|");
    let sqlite_dir = root.path().join("sqlite");
    bench_backend("SQLite", &minicloud_server::store::sql::sqlite_url(&sqlite_dir), root.path()).await;

    let admin = std::env::var("MINICLOUD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://minicloud:minicloud@127.0.0.1:5432/postgres".into());
    let mut connection = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL for the benchmark");
    let database = format!("minicloud_bench_{}", uuid::Uuid::new_v4().simple());
    connection.execute(format!("CREATE DATABASE {database}").as_str()).await.expect("create database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    bench_backend("PostgreSQL", &format!("{base}/{database}"), root.path()).await;
    connection.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str()).await.ok();
}
