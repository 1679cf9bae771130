//! The shared store suite against SQLite (a temporary file per test).

store_suite!(crate::common::TestDb::sqlite);

/// The embedded store creates its directory and file on first use, in WAL mode, and keeps
/// its data across reopening.
#[tokio::test]
async fn sqlite_file_is_created_on_first_use_and_persists() {
    use minicloud_server::store::{sql, SqlStore, Store};
    let directory = tempfile::tempdir().expect("tempdir");
    let data_dir = directory.path().join("nested").join("data");
    let url = sql::sqlite_url(&data_dir);
    let store = SqlStore::open(&url, crate::common::test_keys()).await.expect("open");
    store.create(crate::common::instance("default", "web", &[])).await.expect("create");
    store.close().await;
    assert!(data_dir.join("minicloud.db").is_file());
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.expect("connect");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut connection).await.expect("pragma");
    assert_eq!(mode, "wal", "the store file is in WAL mode");
    let reopened = SqlStore::open(&url, crate::common::test_keys()).await.expect("reopen");
    let key = minicloud_crds::ObjectKey::new(minicloud_crds::Kind::Instance, "default", "web");
    assert_eq!(reopened.get(&key).await.expect("persisted").metadata.name, "web");
    assert!(matches!(
        SqlStore::open("mysql://localhost/x", crate::common::test_keys()).await,
        Err(minicloud_server::store::StoreError::UnsupportedUrl(_))
    ));
}

/// A store written before encryption (a plain value in an object row and in the change log)
/// is sealed when it is opened; a server with another key refuses to open it and says which
/// key it needs.
#[tokio::test]
async fn plain_secrets_are_sealed_on_open_and_another_key_is_refused() {
    use minicloud_server::store::{sql, SqlStore, Store};
    use minicloud_server::SecretKeys;
    let directory = tempfile::tempdir().expect("tempdir");
    let url = sql::sqlite_url(directory.path());
    let store = SqlStore::open(&url, crate::common::test_keys()).await.expect("open");
    let secret: minicloud_crds::Object = serde_json::from_value(serde_json::json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "old"},
        "spec": {"stringData": {"password": "plain-before-encryption-93c1"}}
    }))
    .expect("secret");
    let created = store.create(secret).await.expect("create");
    store.close().await;
    // As an older minicloud stored it: plain JSON in both tables.
    let plain = serde_json::to_string(&created).expect("json");
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.expect("connect");
    for statement in
        ["UPDATE objects SET body = $1 WHERE kind = 'Secret'", "UPDATE changes SET body = $1 WHERE kind = 'Secret'"]
    {
        sqlx::query(statement).bind(&plain).execute(&mut connection).await.expect("plain row");
    }
    let count = |table: &'static str| {
        let url = url.clone();
        async move {
            let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.expect("connect");
            let query = format!("SELECT COUNT(*) FROM {table} WHERE body LIKE '%plain-before-encryption-93c1%'");
            sqlx::query_scalar::<_, i64>(&query).fetch_one(&mut connection).await.expect("count")
        }
    };
    assert_eq!((count("objects").await, count("changes").await), (1, 1));

    let reopened = SqlStore::open(&url, crate::common::test_keys()).await.expect("reopen");
    assert_eq!((count("objects").await, count("changes").await), (0, 0), "sealed on open");
    let key = minicloud_crds::ObjectKey::new(minicloud_crds::Kind::Secret, "default", "old");
    assert_eq!(reopened.get(&key).await.expect("get").spec["stringData"]["password"], "plain-before-encryption-93c1");
    reopened.close().await;

    let other = std::sync::Arc::new(SecretKeys::from_bytes(&[[3; 32]]));
    let error = SqlStore::open(&url, other).await.err().expect("another key is refused").to_string();
    assert!(error.contains("which this server does not have") && error.contains("--secret-key-file"), "{error}");
}
