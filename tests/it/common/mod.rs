//! Test support shared by the integration tests: databases to run the store against (a
//! temporary SQLite file, or a fresh database on a real PostgreSQL server) and object builders.

pub mod cluster;
pub mod docker;
pub mod pebble;
pub mod server;
#[macro_use]
pub mod store_suite;

use std::sync::Arc;

use minicloud_crds::Object;
use minicloud_server::store::{MemoryStore, SqlStore, Store};
use minicloud_server::SecretKeys;
use serde_json::json;
use sqlx::Connection;

/// The key that test stores and test servers (`MINICLOUD_SECRET_KEY`) seal Secrets with, so
/// that a test can open a server's store directly.
pub const TEST_SECRET_KEY: [u8; 32] = [42; 32];

/// [`TEST_SECRET_KEY`] as keys for [`SqlStore::open`].
pub fn test_keys() -> Arc<SecretKeys> {
    Arc::new(SecretKeys::from_bytes(&[TEST_SECRET_KEY]))
}

/// [`TEST_SECRET_KEY`] as `MINICLOUD_SECRET_KEY` holds it.
pub fn test_key_base64() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(TEST_SECRET_KEY)
}

/// Where the PostgreSQL tests connect to create their databases. `scripts/test` and `.ci/run`
/// set it; the default suits a local server with the role `scripts/test` creates.
pub fn postgres_admin_url() -> String {
    std::env::var("MINICLOUD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://minicloud:minicloud@127.0.0.1:5432/postgres".into())
}

/// A database for one test. PostgreSQL databases are dropped by [`TestDb::cleanup`]; SQLite
/// files vanish with their temporary directory.
pub struct TestDb {
    pub url: String,
    directory: Option<tempfile::TempDir>,
    postgres_name: Option<String>,
    memory: Option<MemoryStore>,
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let directory = tempfile::tempdir().expect("temporary directory");
        let url = minicloud_server::store::sql::sqlite_url(directory.path());
        TestDb { url, directory: Some(directory), postgres_name: None, memory: None }
    }

    /// A new, empty database on the test PostgreSQL server. Fails loudly when no server
    /// answers: the PostgreSQL half of the suite is never skipped silently.
    pub async fn postgres() -> TestDb {
        let admin = postgres_admin_url();
        let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|error| {
            panic!(
                "cannot reach the test PostgreSQL at {admin}: {error}. Run the tests with `scripts/test`, which starts PostgreSQL, or set MINICLOUD_TEST_POSTGRES_URL"
            )
        });
        let name = format!("minicloud_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut connection).await.expect("create test database");
        connection.close().await.ok();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_owned();
        TestDb { url: format!("{base}/{name}"), directory: None, postgres_name: Some(name), memory: None }
    }

    /// An in-memory store (every `open` shares it, like replicas sharing a database).
    pub async fn memory() -> TestDb {
        TestDb { url: "memory".into(), directory: None, postgres_name: None, memory: Some(MemoryStore::new()) }
    }

    /// The SQLite store of a data directory the caller owns (`DIR/minicloud.db`).
    pub fn sqlite_at(data_dir: &std::path::Path) -> TestDb {
        TestDb::at_url(&minicloud_server::store::sql::sqlite_url(data_dir))
    }

    /// A database the caller created and removes itself.
    pub fn at_url(url: &str) -> TestDb {
        TestDb { url: url.to_owned(), directory: None, postgres_name: None, memory: None }
    }

    /// The same database for another server (like a replica): dropping or cleaning up this
    /// handle leaves the database alone (the original's does).
    pub fn shared(&self) -> TestDb {
        TestDb { url: self.url.clone(), directory: None, postgres_name: None, memory: self.memory.clone() }
    }

    /// Opens a store on this database (several may be open at once, like replicas).
    pub async fn open(&self) -> Arc<dyn Store> {
        match &self.memory {
            Some(memory) => Arc::new(memory.clone()),
            None => Arc::new(SqlStore::open(&self.url, test_keys()).await.expect("open store")),
        }
    }

    /// Drops the PostgreSQL database.
    pub async fn cleanup(self) {
        if let Some(name) = &self.postgres_name {
            if let Ok(mut connection) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await
                    .ok();
            }
        }
        drop(self.directory);
    }
}

/// An Instance object named `name` in `namespace` with the given labels.
pub fn instance(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Object {
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    serde_json::from_value(json!({
        "apiVersion": "minicloud.dev/v1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"image": "minicloud/web:local", "env": [{"name": "COUNTER", "value": "0"}]}
    }))
    .expect("instance object")
}

/// Instantiates async tests `fn(&TestServer)` once per backend, in modules `sqlite` and
/// `postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let server = $crate::common::server::TestServer::sqlite().await;
                    super::$test(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let server = $crate::common::server::TestServer::postgres().await;
                    super::$test(&server).await;
                    server.stop().await;
                }
            )*
        }
    };
}
