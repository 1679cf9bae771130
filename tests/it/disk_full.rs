//! A store whose disk fills up, on a real small filesystem (a tmpfs mounted for the test; the
//! tests need root, as `scripts/test` and CI run them): every write is refused clearly while the
//! disk is full — none is acknowledged without being committed —, `/readyz` says the store
//! cannot write, and once space returns writes work again at once, with nothing to restart.
//! SQLite keeps its data directory there; PostgreSQL a tablespace holding the test database.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::server::TestServer;
use serde_json::{json, Value};
use sqlx::Connection;

const V1: &str = "/apis/minicloud.dev/v1";

/// A tmpfs of a few MiB, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _directory: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size_kib: u64) -> SmallDisk {
        let directory = tempfile::tempdir().expect("mount point");
        let path = directory.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the disk-full tests need root, as scripts/test and CI run them)",
            path.display()
        );
        SmallDisk { path, _directory: directory }
    }

    fn free_kib(&self) -> u64 {
        let output = Command::new("df").args(["-k", "--output=avail"]).arg(&self.path).output().expect("df");
        String::from_utf8_lossy(&output.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("avail")
    }

    /// Fills the disk until `leave_kib` are free.
    fn fill(&self, leave_kib: u64) -> PathBuf {
        let filler = self.path.join("filler");
        let size = self.free_kib().saturating_sub(leave_kib);
        let file = std::fs::File::create(&filler).expect("filler");
        // Real blocks (tmpfs counts written pages, not a sparse length).
        let mut writer = std::io::BufWriter::new(file);
        let block = vec![7u8; 1024];
        for _ in 0..size {
            if std::io::Write::write_all(&mut writer, &block).is_err() {
                break;
            }
        }
        let _ = std::io::Write::flush(&mut writer);
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// An Instance with an incompressible annotation of about 6 KB.
fn padded(name: &str) -> Value {
    let pad: String = (0..6000).map(|_| char::from(b'a' + rand_byte() % 26)).collect();
    json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": "default", "annotations": {"pad": pad}},
        "spec": {"image": "minicloud/web:local"}})
}

fn rand_byte() -> u8 {
    let mut byte = [0u8; 1];
    getrandom::fill(&mut byte).expect("random");
    byte[0]
}

async fn create(http: &reqwest::Client, server: &TestServer, name: &str) -> (u16, Duration) {
    let started = Instant::now();
    let response = http
        .post(format!("{}{V1}/namespaces/default/instances", server.url))
        .json(&padded(name))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("create");
    (response.status().as_u16(), started.elapsed())
}

async fn exists(http: &reqwest::Client, server: &TestServer, name: &str) -> bool {
    let response =
        http.get(format!("{}{V1}/namespaces/default/instances/{name}", server.url)).send().await.expect("get");
    response.status().is_success()
}

async fn readyz(http: &reqwest::Client, server: &TestServer) -> (u16, String) {
    let response = http.get(format!("{}/readyz", server.url)).send().await.expect("readyz");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// Writes until the disk is full, then more: every write is either refused (503) or really
/// there; readiness says the store cannot write; once the filler is gone, writes and
/// readiness come back by themselves. Returns the names acknowledged.
async fn fill_refuse_and_recover(server: &TestServer, disk: &SmallDisk, leave_kib: u64) -> Vec<String> {
    let http = reqwest::Client::new();
    let filler = disk.fill(leave_kib);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for index in 0..80 {
        let name = format!("w{index}");
        let (status, took) = create(&http, server, &name).await;
        match status {
            201 => {
                assert!(exists(&http, server, &name).await, "{name} was acknowledged (201) but is not there");
                acknowledged.push(name.clone());
            }
            503 => refused += 1,
            other => panic!("{name}: unexpected {other}"),
        }
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        if refused >= 20 {
            break;
        }
    }
    assert!(refused >= 20, "the disk never filled ({} writes acknowledged)", acknowledged.len());
    let (status, body) = readyz(&http, server).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot write"), "{body}");

    // Space returns: writes succeed again at once, and so does readiness.
    std::fs::remove_file(&filler).expect("remove the filler");
    let (status, took) = create(&http, server, "after").await;
    assert_eq!(status, 201, "the first write after space returned");
    assert!(took < Duration::from_secs(2), "it took {took:?} (a wedged write lock makes it 10 s and more)");
    assert!(exists(&http, server, "after").await);
    acknowledged.push("after".into());
    for index in 0..10 {
        let name = format!("again{index}");
        let (status, took) = create(&http, server, &name).await;
        assert_eq!(status, 201, "{name}");
        assert!(took < Duration::from_secs(2), "{name} took {took:?}");
        acknowledged.push(name);
    }
    let (status, body) = readyz(&http, server).await;
    assert_eq!(status, 200, "{body}");
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sqlite_refuses_every_write_and_recovers() {
    let disk = SmallDisk::mount(3 * 1024);
    let data = disk.path.join("data");
    let database = crate::common::TestDb::sqlite_at(&data);
    let arguments = ["--no-controllers", "--data-dir", data.to_str().expect("path")];
    let server = TestServer::start(database.shared(), &arguments).await;
    let acknowledged = fill_refuse_and_recover(&server, &disk, 300).await;
    // Everything acknowledged is still there after a restart (committed, not only answered).
    let _ = server.crash();
    let server = TestServer::start(database.shared(), &arguments).await;
    let http = reqwest::Client::new();
    for name in &acknowledged {
        assert!(exists(&http, &server, name).await, "{name} was lost");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_postgresql_refuses_every_write_and_recovers() {
    let admin = crate::common::postgres_admin_url();
    assert!(
        admin.contains("@127.0.0.1") || admin.contains("@localhost"),
        "the PostgreSQL disk-full test puts a tablespace on a local tmpfs: it needs the local server scripts/test starts, not {admin}"
    );
    let disk = SmallDisk::mount(4 * 1024);
    let owned = Command::new("chown").args(["postgres:postgres"]).arg(&disk.path).status().expect("chown");
    assert!(owned.success(), "chown the tablespace directory to postgres");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (tablespace, name) = (format!("small_{}", &suffix[..12]), format!("minicloud_full_{}", &suffix[..12]));
    let mut connection = sqlx::PgConnection::connect(&admin).await.expect("admin connection");
    let location = disk.path.display().to_string();
    sqlx::query(&format!("CREATE TABLESPACE {tablespace} LOCATION '{location}'"))
        .execute(&mut connection)
        .await
        .expect("create tablespace");
    sqlx::query(&format!("CREATE DATABASE {name} TABLESPACE {tablespace}"))
        .execute(&mut connection)
        .await
        .expect("create database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_owned();
    let url = format!("{base}/{name}");
    let data = tempfile::tempdir().expect("data dir");
    let arguments = ["--no-controllers", "--data-dir", data.path().to_str().expect("path")];
    let server = TestServer::start(crate::common::TestDb::at_url(&url), &arguments).await;
    let outcome = std::panic::AssertUnwindSafe(fill_refuse_and_recover(&server, &disk, 200));
    let result = futures::FutureExt::catch_unwind(outcome).await;
    server.stop().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut connection).await.ok();
    sqlx::query(&format!("DROP TABLESPACE IF EXISTS {tablespace}")).execute(&mut connection).await.ok();
    drop(disk);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
