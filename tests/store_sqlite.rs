//! The shared store suite against SQLite (a temporary file per test).

mod common;

store_suite!(common::TestDb::sqlite);

/// The embedded store creates its directory and file on first use, in WAL mode, and keeps
/// its data across reopening.
#[tokio::test]
async fn sqlite_file_is_created_on_first_use_and_persists() {
    use minicloud::store::{sql, SqlStore, Store};
    let directory = tempfile::tempdir().expect("tempdir");
    let data_dir = directory.path().join("nested").join("data");
    let url = sql::sqlite_url(&data_dir);
    let store = SqlStore::open(&url).await.expect("open");
    store.create(common::instance("default", "web", &[])).await.expect("create");
    store.close().await;
    assert!(data_dir.join("minicloud.db").is_file());
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.expect("connect");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut connection).await.expect("pragma");
    assert_eq!(mode, "wal", "the store file is in WAL mode");
    let reopened = SqlStore::open(&url).await.expect("reopen");
    let key = minicloud_crds::ObjectKey::new(minicloud_crds::Kind::Instance, "default", "web");
    assert_eq!(reopened.get(&key).await.expect("persisted").metadata.name, "web");
    assert!(matches!(
        SqlStore::open("mysql://localhost/x").await,
        Err(minicloud::store::StoreError::UnsupportedUrl(_))
    ));
}
