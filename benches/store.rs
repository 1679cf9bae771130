//! Store benchmark: create 1,000 and 10,000 objects in batches and list them, on SQLite and on
//! PostgreSQL, next to a baseline measured in the same run — the same rows inserted and read
//! with plain SQL (no revision, no change log, no JSON decoding) — and prints the ratio.
//!
//! Run: `cargo bench --bench store` (PostgreSQL at MINICLOUD_TEST_POSTGRES_URL, as for the
//! tests; `scripts/test` starts one). Figures go to docs/benchmarks.md.

use std::time::{Duration, Instant};

use minicloud_crds::{Kind, Object};
use minicloud_server::store::{Query, SqlStore, Store};
use serde_json::json;
use sqlx::{Connection, Executor};

const BATCH: usize = 500;
const LIST_RUNS: usize = 5;

fn object(index: usize) -> Object {
    serde_json::from_value(json!({
        "apiVersion": "minicloud.dev/v1",
        "kind": "Instance",
        "metadata": {"name": format!("web-{index}"), "namespace": "bench", "labels": {"app": "web", "shard": (index % 10).to_string()}},
        "spec": {
            "image": "minicloud/web:local",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "MODE", "value": "production"}],
            "resources": {"cpu": "500m", "memory": "64Mi"},
            "restartPolicy": "Always"
        }
    }))
    .expect("bench object")
}

struct Figures {
    insert: Duration,
    list_median: Duration,
    listed: usize,
}

async fn measure_store(url: &str, count: usize) -> Figures {
    let store = SqlStore::open(url, std::sync::Arc::new(minicloud_server::SecretKeys::from_bytes(&[[1; 32]])))
        .await
        .expect("open store");
    let objects: Vec<Object> = (0..count).map(object).collect();
    let started = Instant::now();
    for batch in objects.chunks(BATCH) {
        store.create_all(batch.to_vec()).await.expect("create batch");
    }
    let insert = started.elapsed();
    let query = Query::namespaced(Kind::Instance, "bench");
    let mut lists = Vec::new();
    let mut listed = 0;
    for _ in 0..LIST_RUNS {
        let started = Instant::now();
        listed = store.list(&query).await.expect("list").items.len();
        lists.push(started.elapsed());
    }
    store.close().await;
    lists.sort();
    Figures { insert, list_median: lists[LIST_RUNS / 2], listed }
}

/// The same rows through plain SQL: one INSERT per row in batch transactions, and a SELECT
/// of the bodies without decoding them.
async fn measure_raw(url: &str, count: usize) -> Figures {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite://") { format!("{url}?mode=rwc") } else { url.to_owned() };
    let mut connection = sqlx::AnyConnection::connect(&url).await.expect("connect");
    if url.starts_with("sqlite") {
        connection.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;").await.expect("pragmas");
    }
    connection
        .execute("CREATE TABLE raw_objects (namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (namespace, name))")
        .await
        .expect("create table");
    let bodies: Vec<(String, String)> =
        (0..count).map(|i| (format!("web-{i}"), serde_json::to_string(&object(i)).expect("json"))).collect();
    let started = Instant::now();
    for batch in bodies.chunks(BATCH) {
        let mut transaction = connection.begin().await.expect("begin");
        for (name, body) in batch {
            sqlx::query("INSERT INTO raw_objects (namespace, name, body) VALUES ($1, $2, $3)")
                .bind("bench")
                .bind(name)
                .bind(body)
                .execute(&mut *transaction)
                .await
                .expect("insert");
        }
        transaction.commit().await.expect("commit");
    }
    let insert = started.elapsed();
    let mut lists = Vec::new();
    let mut listed = 0;
    for _ in 0..LIST_RUNS {
        let started = Instant::now();
        listed = sqlx::query("SELECT body FROM raw_objects WHERE namespace = $1 ORDER BY name")
            .bind("bench")
            .fetch_all(&mut connection)
            .await
            .expect("select")
            .len();
        lists.push(started.elapsed());
    }
    lists.sort();
    Figures { insert, list_median: lists[LIST_RUNS / 2], listed }
}

fn report(backend: &str, count: usize, ours: &Figures, raw: &Figures) {
    assert_eq!(ours.listed, count);
    assert_eq!(raw.listed, count);
    let rate = |figures: &Figures| count as f64 / figures.insert.as_secs_f64();
    println!(
        "| {backend} | {count} | {:.0} obj/s | {:.0} obj/s | {:.2}x | {:.1} ms | {:.1} ms | {:.2}x |",
        rate(ours),
        rate(raw),
        ours.insert.as_secs_f64() / raw.insert.as_secs_f64(),
        ours.list_median.as_secs_f64() * 1e3,
        raw.list_median.as_secs_f64() * 1e3,
        ours.list_median.as_secs_f64() / raw.list_median.as_secs_f64(),
    );
}

async fn postgres_database(admin: &str) -> (String, String) {
    let mut connection = sqlx::PgConnection::connect(admin).await.unwrap_or_else(|error| {
        panic!("cannot reach PostgreSQL at {admin}: {error}; start it with scripts/test or set MINICLOUD_TEST_POSTGRES_URL")
    });
    let name = format!("minicloud_bench_{}", uuid::Uuid::new_v4().simple());
    connection.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
    let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
    (format!("{base}/{name}"), name)
}

async fn drop_postgres_database(admin: &str, name: &str) {
    if let Ok(mut connection) = sqlx::PgConnection::connect(admin).await {
        connection.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok();
    }
}

#[tokio::main]
async fn main() {
    let admin = std::env::var("MINICLOUD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://minicloud:minicloud@127.0.0.1:5432/postgres".into());
    println!("store benchmark: batches of {BATCH}, list = median of {LIST_RUNS} runs; baseline = plain SQL, same rows, same run");
    println!();
    println!("| backend | objects | insert (store) | insert (plain SQL) | time ratio | list (store) | list (plain SQL) | list ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for count in [1_000, 10_000] {
        let directory = tempfile::tempdir().expect("tempdir");
        let ours = measure_store(&minicloud_server::store::sql::sqlite_url(directory.path()), count).await;
        let raw = measure_raw(&format!("sqlite://{}", directory.path().join("raw.db").display()), count).await;
        report("SQLite", count, &ours, &raw);

        let (store_url, store_db) = postgres_database(&admin).await;
        let (raw_url, raw_db) = postgres_database(&admin).await;
        let ours = measure_store(&store_url, count).await;
        let raw = measure_raw(&raw_url, count).await;
        report("PostgreSQL", count, &ours, &raw);
        drop_postgres_database(&admin, &store_db).await;
        drop_postgres_database(&admin, &raw_db).await;
    }
}
