//! The store contract as tests. `store_suite!` instantiates every test for one backend, so
//! SQLite and PostgreSQL run exactly the same checks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use minicloud_crds::meta::OwnerReference;
use minicloud_crds::{Kind, ObjectKey};
use minicloud_server::store::{ChangeType, Deleted, EventType, NewEvent, Query, Selector, Store, StoreError, Write};
use serde_json::json;

use super::{instance, TestDb};

/// Instantiates the whole suite for a backend whose `TestDb` constructor is `$make`. The list
/// lives here, once, so every backend runs every test.
#[macro_export]
macro_rules! store_suite {
    ($make:path) => {
        $crate::store_suite!(@tests $make;
            create_assigns_metadata_and_refuses_duplicates,
            list_filters_by_kind_namespace_and_labels,
            updates_use_optimistic_concurrency_and_generations,
            delete_honours_finalizers,
            delete_cascades_to_dependents,
            events_fold_repeats,
            old_and_surplus_events_are_pruned,
            watch_resumes_without_gaps_or_duplicates,
            watch_from_a_compacted_revision_is_expired,
            concurrent_updates_lose_nothing,
            concurrent_writers_watch_sees_everything_in_order,
            compactor_trims_the_change_log,
            cluster_id_is_stable_and_shared,
            batch_writes_commit_all_or_nothing,
            objects_larger_than_the_limit_are_refused,
            watchers_that_fall_behind_replay_without_gaps,
            compaction_keeps_the_change_log_within_its_byte_budget,
        );
    };
    (@tests $make:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let database = $make().await;
                $crate::common::store_suite::$test(&database).await;
                database.cleanup().await;
            }
        )*
    };
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Instance, "default", name)
}

pub async fn create_assigns_metadata_and_refuses_duplicates(database: &TestDb) {
    let store = database.open().await;
    let created = store.create(instance("default", "web", &[("app", "web")])).await.expect("create");
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.creation_timestamp.is_some());
    let revision = created.metadata.revision().expect("numeric resourceVersion");
    assert_eq!(store.revision().await.expect("revision"), revision);
    assert_eq!(store.get(&key("web")).await.expect("get"), created);
    match store.create(instance("default", "web", &[])).await {
        Err(StoreError::AlreadyExists(existing)) => assert_eq!(existing, key("web")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(matches!(store.get(&key("missing")).await, Err(StoreError::NotFound(_))));
    // A batch with one clash writes nothing at all.
    let batch = vec![instance("default", "fresh", &[]), instance("default", "web", &[])];
    assert!(matches!(store.create_all(batch).await, Err(StoreError::AlreadyExists(_))));
    assert!(matches!(store.get(&key("fresh")).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.revision().await.expect("revision"), revision);
}

pub async fn list_filters_by_kind_namespace_and_labels(database: &TestDb) {
    let store = database.open().await;
    store
        .create_all(vec![
            instance("default", "a", &[("app", "web"), ("tier", "front")]),
            instance("default", "b", &[("app", "web"), ("tier", "db")]),
            instance("staging", "c", &[("app", "web")]),
            instance("default", "d", &[("app", "api")]),
        ])
        .await
        .expect("create");
    let names =
        |list: minicloud_server::store::ObjectList| list.items.into_iter().map(|o| o.metadata.name).collect::<Vec<_>>();
    let all = store.list(&Query { kind: Some(Kind::Instance), ..Query::default() }).await.expect("list");
    assert_eq!(all.revision, store.revision().await.expect("revision"));
    assert_eq!(names(all), ["a", "b", "d", "c"]);
    assert_eq!(names(store.list(&Query::namespaced(Kind::Instance, "staging")).await.expect("list")), ["c"]);
    let selector = Selector::parse("app=web,tier!=db").expect("selector");
    let query = Query { kind: Some(Kind::Instance), namespace: Some("default".into()), selector };
    assert_eq!(names(store.list(&query.clone()).await.expect("list")), ["a"]);
    // The raw form lists the same documents.
    for query in
        [query, Query::default(), Query::namespaced(Kind::Instance, "staging"), Query::namespaced(Kind::Secret, "none")]
    {
        let decoded = store.list(&query).await.expect("list");
        let (sender, mut receiver) = tokio::sync::mpsc::channel(4);
        let streamed = tokio::spawn(async move {
            let mut items = Vec::new();
            while let Some(item) = receiver.recv().await {
                items.push(item);
            }
            items
        });
        store.list_raw(&query, sender).await.expect("list_raw");
        let items = streamed.await.expect("join");
        assert_eq!(items.first(), Some(&minicloud_server::store::RawItem::Revision(decoded.revision)));
        let documents: Vec<minicloud_crds::Object> = items[1..]
            .iter()
            .map(|item| match item {
                minicloud_server::store::RawItem::Document(text) => serde_json::from_str(text).expect("stored JSON"),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(documents, decoded.items);
    }
    let empty = store.list(&Query::namespaced(Kind::Secret, "default")).await.expect("list");
    assert!(empty.items.is_empty());
    assert_eq!(empty.revision, store.revision().await.expect("revision"));
}

pub async fn updates_use_optimistic_concurrency_and_generations(database: &TestDb) {
    let store = database.open().await;
    let created = store.create(instance("default", "web", &[])).await.expect("create");

    let mut relabelled = created.clone();
    relabelled.metadata.labels.insert("app".into(), "web".into());
    let relabelled = store.update(relabelled).await.expect("label update");
    assert_eq!(relabelled.metadata.generation, Some(1), "labels do not bump generation");
    assert!(relabelled.metadata.revision() > created.metadata.revision());

    let mut stale = created.clone();
    stale.spec = json!({"image": "other"});
    match store.update(stale).await {
        Err(StoreError::Conflict { sent, current, .. }) => {
            assert_eq!(Some(sent), created.metadata.resource_version);
            assert_eq!(Some(current), relabelled.metadata.resource_version);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }

    let mut respecced = relabelled.clone();
    respecced.spec = json!({"image": "other"});
    let respecced = store.update(respecced).await.expect("spec update");
    assert_eq!(respecced.metadata.generation, Some(2));

    let mut with_status = respecced.clone();
    with_status.status = json!({"phase": "Running"});
    with_status.spec = json!({"image": "ignored-by-status-update"});
    let with_status = store.update_status(with_status).await.expect("status update");
    assert_eq!(with_status.metadata.generation, Some(2), "status does not bump generation");
    assert_eq!(with_status.spec, json!({"image": "other"}), "status update leaves spec alone");
    assert_eq!(with_status.status, json!({"phase": "Running"}));

    let mut spec_only = with_status.clone();
    spec_only.status = json!({"phase": "Overwritten"});
    let spec_only = store.update(spec_only).await.expect("update");
    assert_eq!(spec_only.status, json!({"phase": "Running"}), "spec update leaves status alone");

    let before = store.revision().await.expect("revision");
    let unchanged = store.update(spec_only.clone()).await.expect("no-op update");
    assert_eq!(unchanged, spec_only);
    assert_eq!(store.revision().await.expect("revision"), before, "a no-op takes no revision");
}

pub async fn delete_honours_finalizers(database: &TestDb) {
    let store = database.open().await;
    let mut object = instance("default", "web", &[]);
    object.metadata.finalizers = vec!["minicloud.dev/container".into()];
    let created = store.create(object).await.expect("create");
    let Deleted::Terminating(terminating) = store.delete(&key("web"), None).await.expect("delete") else {
        panic!("finalizer must hold the object")
    };
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert!(terminating.metadata.revision() > created.metadata.revision());
    assert!(matches!(store.delete(&key("web"), None).await, Ok(Deleted::Terminating(_))));

    let mut adding = terminating.clone();
    adding.metadata.finalizers.push("another".into());
    assert!(matches!(store.update(adding).await, Err(StoreError::Invalid(_))));

    let mut released = store.get(&key("web")).await.expect("still there");
    released.metadata.finalizers.clear();
    store.update(released).await.expect("remove finalizer");
    assert!(matches!(store.get(&key("web")).await, Err(StoreError::NotFound(_))));

    store.create(instance("default", "plain", &[])).await.expect("create");
    match store.delete(&key("plain"), Some("1")).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("expected Conflict for a stale delete precondition, got {other:?}"),
    }
    assert!(matches!(store.delete(&key("plain"), None).await, Ok(Deleted::Gone(_))));
    assert!(matches!(store.delete(&key("plain"), None).await, Err(StoreError::NotFound(_))));
}

pub async fn delete_cascades_to_dependents(database: &TestDb) {
    let store = database.open().await;
    let owner = store.create(instance("default", "owner", &[])).await.expect("owner");
    let reference = |object: &minicloud_crds::Object| OwnerReference {
        api_version: "minicloud.dev/v1".into(),
        kind: object.kind.clone(),
        name: object.metadata.name.clone(),
        uid: object.metadata.uid.clone().expect("uid"),
        controller: Some(true),
    };
    let mut child = instance("default", "child", &[]);
    child.metadata.owner_references = vec![reference(&owner)];
    let child = store.create(child).await.expect("child");
    let mut grandchild = instance("default", "grandchild", &[]);
    grandchild.metadata.owner_references = vec![reference(&child)];
    store.create(grandchild).await.expect("grandchild");
    let mut held = instance("default", "held", &[]);
    held.metadata.owner_references = vec![reference(&owner)];
    held.metadata.finalizers = vec!["minicloud.dev/container".into()];
    store.create(held).await.expect("held child");
    store.create(instance("default", "bystander", &[])).await.expect("bystander");

    assert!(matches!(store.delete(&key("owner"), None).await, Ok(Deleted::Gone(_))));
    for gone in ["owner", "child", "grandchild"] {
        assert!(matches!(store.get(&key(gone)).await, Err(StoreError::NotFound(_))), "{gone} should be gone");
    }
    let held = store.get(&key("held")).await.expect("held stays while its finalizer does");
    assert!(held.metadata.deletion_timestamp.is_some());
    store.get(&key("bystander")).await.expect("unrelated objects stay");
}

pub async fn events_fold_repeats(database: &TestDb) {
    let store = database.open().await;
    let object = store.create(instance("default", "web", &[])).await.expect("create");
    let event = |reason: &str, message: &str| NewEvent {
        object: key("web"),
        uid: object.metadata.uid.clone().expect("uid"),
        event_type: EventType::Warning,
        reason: reason.into(),
        message: message.into(),
    };
    let empty = store.events_head().await.expect("head");
    let mut signal = store.event_signal();
    store.record_event(event("BackOff", "container exited")).await.expect("event");
    let first = store.events_head().await.expect("head");
    assert_ne!(first, empty, "a new event moves the head");
    if let Some(signal) = signal.as_mut() {
        assert!(signal.has_changed().expect("signal"), "a recorded event wakes whoever waits");
        signal.borrow_and_update();
    }
    // A repeat only raises a count and a time (kept to the microsecond): it moves the head too.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let repeated = store.record_event(event("BackOff", "container exited")).await.expect("event");
    assert_eq!(repeated.count, 2);
    assert_ne!(store.events_head().await.expect("head"), first, "a repeat moves the head");
    if let Some(signal) = signal.as_mut() {
        assert!(signal.has_changed().expect("signal"));
    }
    assert!(repeated.last_timestamp >= repeated.first_timestamp);
    store.record_event(event("Pulled", "image present")).await.expect("event");
    let events = store.events(None, Some(&key("web"))).await.expect("events");
    assert_eq!(
        events.iter().map(|e| (e.reason.as_str(), e.count)).collect::<Vec<_>>(),
        [("BackOff", 2), ("Pulled", 1)]
    );
    assert_eq!(store.events(Some("default"), None).await.expect("events").len(), 2);
    assert!(store.events(Some("staging"), None).await.expect("events").is_empty());
}

pub async fn old_and_surplus_events_are_pruned(database: &TestDb) {
    let store = database.open().await;
    let object = store.create(instance("default", "web", &[])).await.expect("create");
    for index in 0..5 {
        let event = NewEvent {
            object: key("web"),
            uid: object.metadata.uid.clone().expect("uid"),
            event_type: EventType::Normal,
            reason: "Noted".into(),
            message: format!("note {index}"),
        };
        store.record_event(event).await.expect("event");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let messages =
        |events: Vec<minicloud_server::store::Event>| events.into_iter().map(|e| e.message).collect::<Vec<_>>();
    // Nothing is older than an hour, and five fit in ten: nothing goes.
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(store.prune_events(an_hour_ago, 10).await.expect("prune"), 0);
    // Three kept: the two seen longest ago go.
    assert_eq!(store.prune_events(an_hour_ago, 3).await.expect("prune"), 2);
    assert_eq!(messages(store.events(None, None).await.expect("events")), ["note 2", "note 3", "note 4"]);
    // Everything seen before now goes, whatever the count.
    assert_eq!(store.prune_events(chrono::Utc::now(), 100).await.expect("prune"), 3);
    assert!(store.events(None, None).await.expect("events").is_empty());
    // A new event after pruning gets a new id (the head moves).
    let head = store.events_head().await.expect("head");
    let event = NewEvent {
        object: key("web"),
        uid: object.metadata.uid.clone().expect("uid"),
        event_type: EventType::Normal,
        reason: "Noted".into(),
        message: "after".into(),
    };
    let recorded = store.record_event(event).await.expect("event");
    assert!(recorded.id > 5, "ids are not reused: {}", recorded.id);
    assert_ne!(store.events_head().await.expect("head"), head);
    assert_eq!(store.prune_events(an_hour_ago, 0).await.expect("prune"), 1);
}

pub async fn watch_resumes_without_gaps_or_duplicates(database: &TestDb) {
    let store = database.open().await;
    let first = store.create(instance("default", "a", &[("app", "web")])).await.expect("create");
    let from = first.metadata.revision().expect("revision");
    store.create(instance("default", "b", &[("app", "api")])).await.expect("create");
    store.create(instance("staging", "c", &[("app", "web")])).await.expect("create");
    let mut updated = store.get(&key("a")).await.expect("get");
    updated.spec = json!({"image": "v2"});
    store.update(updated).await.expect("update");
    store.delete(&key("b"), None).await.expect("delete");

    let mut everything = store.watch(Query::default(), from).await.expect("watch");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(Duration::from_secs(10), everything.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        seen.push((event.change, event.object.metadata.name.clone(), event.revision));
    }
    let changes: Vec<_> = seen.iter().map(|(c, n, _)| (*c, n.as_str())).collect();
    assert_eq!(
        changes,
        [(ChangeType::Added, "b"), (ChangeType::Added, "c"), (ChangeType::Modified, "a"), (ChangeType::Deleted, "b")]
    );
    let revisions: Vec<i64> = seen.iter().map(|(_, _, r)| *r).collect();
    assert_eq!(revisions, (from + 1..=from + 4).collect::<Vec<_>>());

    // Filters: only default-namespace objects labelled app=web.
    let query = Query {
        kind: Some(Kind::Instance),
        namespace: Some("default".into()),
        selector: Selector::parse("app=web").expect("selector"),
    };
    let mut filtered = store.watch(query, from - 1).await.expect("watch");
    let live = store.create(instance("default", "live", &[("app", "web")])).await.expect("create");
    let mut names = Vec::new();
    while names.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), filtered.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("event");
        names.push((event.object.metadata.name.clone(), event.revision));
    }
    assert_eq!(names.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "a", "live"]);
    assert_eq!(names[2].1, live.metadata.revision().expect("revision"));
}

pub async fn watch_from_a_compacted_revision_is_expired(database: &TestDb) {
    let store = database.open().await;
    for index in 0..5 {
        store.create(instance("default", &format!("web-{index}"), &[])).await.expect("create");
    }
    let head = store.revision().await.expect("revision");
    assert_eq!(store.compact(head - 2).await.expect("compact"), head - 2);
    match store.watch(Query::default(), head - 3).await {
        Err(StoreError::Expired { requested, compacted }) => assert_eq!((requested, compacted), (head - 3, head - 2)),
        Err(other) => panic!("expected Expired, got {other:?}"),
        Ok(_) => panic!("expected Expired, got a stream"),
    }
    let mut stream = store.watch(Query::default(), head - 2).await.expect("watch from the compacted revision itself");
    let event = stream.next().await.expect("open").expect("event");
    assert_eq!(event.revision, head - 1);
    // A list gives a revision to watch from again.
    let list = store.list(&Query::default()).await.expect("list");
    assert_eq!(list.items.len(), 5);
    assert!(store.watch(Query::default(), list.revision).await.is_ok());
}

/// 50 tasks increment one counter with retry-on-conflict: no update is lost and every accepted
/// write has its own resourceVersion.
pub async fn concurrent_updates_lose_nothing(database: &TestDb) {
    let store = database.open().await;
    store.create(instance("default", "counter", &[])).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let mut object = store.get(&key("counter")).await.expect("get");
                let count: u64 = object.spec["env"][0]["value"].as_str().and_then(|v| v.parse().ok()).expect("counter");
                object.spec["env"][0]["value"] = json!((count + 1).to_string());
                match store.update(object).await {
                    Ok(updated) => return updated.metadata.resource_version.expect("resourceVersion"),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
        }));
    }
    let mut versions = HashSet::new();
    for task in tasks {
        assert!(versions.insert(task.await.expect("task")), "two writes got the same resourceVersion");
    }
    let last = store.get(&key("counter")).await.expect("get");
    assert_eq!(last.spec["env"][0]["value"], json!("50"));
    assert_eq!(last.metadata.generation, Some(51));
}

/// 10,000 writes from 4 writers — separate store instances, like control-plane replicas with
/// their own connections — and one watcher on a fifth: it sees all of them, exactly once, in
/// revision order with no gap.
pub async fn concurrent_writers_watch_sees_everything_in_order(database: &TestDb) {
    const WRITERS: usize = 4;
    const WRITES_PER_WRITER: usize = 2_500;
    let watcher_store = database.open().await;
    let start = watcher_store.revision().await.expect("revision");
    let mut stream = watcher_store.watch(Query::default(), start).await.expect("watch");
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = database.open().await;
        writers.push(tokio::spawn(async move {
            let name = format!("writer-{writer}");
            let mut object = store.create(instance("default", &name, &[])).await.expect("create");
            for step in 1..WRITES_PER_WRITER {
                object.spec["env"][0]["value"] = json!(step.to_string());
                object = store.update(object).await.expect("update");
            }
        }));
    }
    let total = WRITERS * WRITES_PER_WRITER;
    let mut previous = start;
    let mut last_step = [None::<usize>; WRITERS];
    for received in 0..total {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {received} of {total} events"))
            .expect("stream open")
            .expect("event");
        assert_eq!(event.revision, previous + 1, "gap or reordering after revision {previous}");
        previous = event.revision;
        let writer: usize = event.object.metadata.name.trim_start_matches("writer-").parse().expect("writer name");
        let step: usize = event.object.spec["env"][0]["value"].as_str().and_then(|v| v.parse().ok()).expect("step");
        assert_eq!(last_step[writer].map_or(0, |s| s + 1), step, "writer {writer}'s changes out of order");
        last_step[writer] = Some(step);
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(previous, start + total as i64);
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(extra.is_err(), "no event beyond the writes: {extra:?}");
}

/// The compactor trims the change log to the newest revisions on its own.
pub async fn compactor_trims_the_change_log(database: &TestDb) {
    let store: Arc<dyn Store> = database.open().await;
    let retention = minicloud_server::store::Retention { revisions: 3, bytes: u64::MAX, ..Default::default() };
    let compactor =
        tokio::spawn(minicloud_server::store::compact_forever(store.clone(), retention, Duration::from_millis(20)));
    for index in 0..10 {
        store.create(instance("default", &format!("web-{index}"), &[])).await.expect("create");
    }
    let head = store.revision().await.expect("revision");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.watch(Query::default(), 0).await {
            Err(StoreError::Expired { compacted, .. }) if compacted == head - 3 => break,
            _ if tokio::time::Instant::now() > deadline => panic!("the compactor did not compact to {}", head - 3),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    compactor.abort();
    let mut stream = store.watch(Query::default(), head - 3).await.expect("recent revisions stay watchable");
    assert_eq!(stream.next().await.expect("open").expect("event").revision, head - 2);
}

/// Big changes are compacted by bytes long before they reach the revision count: ten 700 KiB
/// updates of one object leave at most the byte budget in the change log.
pub async fn compaction_keeps_the_change_log_within_its_byte_budget(database: &TestDb) {
    let store: Arc<dyn Store> = database.open().await;
    let mut object = store.create(instance("default", "big", &[])).await.expect("create");
    for round in 0..10 {
        object.metadata.annotations.insert("blob".into(), format!("{round}{}", "x".repeat(700 * 1024)));
        object = store.update(object).await.expect("update");
    }
    let head = store.revision().await.expect("revision");
    let retention =
        minicloud_server::store::Retention { revisions: 100_000, bytes: 2 * 1024 * 1024, ..Default::default() };
    let compacted = minicloud_server::store::compact_to(store.as_ref(), retention).await.expect("compact");
    // Each change is a little over 700 KiB: two fit in 2 MiB, three do not.
    assert_eq!(compacted, head - 2, "kept the newest changes that fit the budget");
    let mut stream = store.watch(Query::default(), compacted).await.expect("retained revisions stay watchable");
    assert_eq!(stream.next().await.expect("open").expect("event").revision, head - 1);
    assert!(matches!(store.watch(Query::default(), compacted - 1).await, Err(StoreError::Expired { .. })));
    let nothing_to_do = minicloud_server::store::compact_to(store.as_ref(), retention).await.expect("compact again");
    assert_eq!(nothing_to_do, compacted);
}

/// The cluster id is made once and is the same for every store opened on the database.
pub async fn cluster_id_is_stable_and_shared(database: &TestDb) {
    let first = database.open().await;
    let second = database.open().await;
    assert_eq!(first.cluster_id().len(), 32);
    assert_eq!(first.cluster_id(), second.cluster_id());
    drop(first);
    let reopened = database.open().await;
    assert_eq!(reopened.cluster_id(), second.cluster_id());
}

/// A batch of creates and updates commits in one transaction: a failing update (stale
/// resourceVersion, missing object, a finalizer added to a terminating object) leaves every
/// other write of the batch unwritten, and the revision where it was.
pub async fn batch_writes_commit_all_or_nothing(database: &TestDb) {
    let store = database.open().await;
    let existing = store.create(instance("default", "existing", &[])).await.expect("create");
    let mut stale = existing.clone();
    stale.spec["image"] = json!("minicloud/web:v2");
    let fresh = store.update(stale.clone()).await.expect("update");
    let revision = store.revision().await.expect("revision");
    let mut gone = instance("default", "gone", &[]);
    gone.metadata.resource_version = Some("1".into());
    let failing: [(&str, Write); 3] = [
        ("stale resourceVersion", Write::Update(stale)),
        ("missing object", Write::Update(gone)),
        ("duplicate in batch", Write::Create(instance("default", "new-a", &[]))),
    ];
    for (what, failure) in failing {
        let batch = vec![Write::Create(instance("default", "new-a", &[])), failure];
        let error = store.write_all(batch).await.expect_err(what);
        assert!(
            matches!(error, StoreError::Conflict { .. } | StoreError::NotFound(_) | StoreError::Invalid(_)),
            "{what}: {error:?}"
        );
        assert!(matches!(store.get(&key("new-a")).await, Err(StoreError::NotFound(_))), "{what}: nothing created");
        assert_eq!(store.revision().await.expect("revision"), revision, "{what}: no revision taken");
    }
    // A terminating object refuses a new finalizer: the batch's create goes with it.
    let mut held = instance("default", "held", &[]);
    held.metadata.finalizers = vec!["minicloud.dev/test".into()];
    store.create(held).await.expect("create held");
    let Deleted::Terminating(terminating) = store.delete(&key("held"), None).await.expect("delete") else {
        panic!("finalizer holds the object")
    };
    let mut more = terminating.clone();
    more.metadata.finalizers.push("minicloud.dev/another".into());
    let error = store
        .write_all(vec![Write::Create(instance("default", "new-b", &[])), Write::Update(more)])
        .await
        .expect_err("finalizer on a terminating object");
    assert!(matches!(error, StoreError::Invalid(_)), "{error:?}");
    assert!(matches!(store.get(&key("new-b")).await, Err(StoreError::NotFound(_))));
    // A good batch writes everything and reports each object as stored, in order.
    let mut update = fresh.clone();
    update.metadata.labels.insert("tier".into(), "front".into());
    let written = store
        .write_all(vec![Write::Update(update), Write::Create(instance("default", "new-a", &[]))])
        .await
        .expect("good batch");
    assert_eq!(written[0].metadata.labels.get("tier").map(String::as_str), Some("front"));
    assert_eq!(written[1].metadata.name, "new-a");
    assert_eq!(store.get(&key("new-a")).await.expect("created"), written[1]);
    assert_eq!(store.get(&key("existing")).await.expect("updated"), written[0]);
}

/// One object's encoded size is limited on every write path (create, update, status), so the
/// change log cannot be filled by a few huge objects.
pub async fn objects_larger_than_the_limit_are_refused(database: &TestDb) {
    let store = database.open().await;
    let limit = minicloud_server::store::rules::MAX_OBJECT_BYTES;
    let mut huge = instance("default", "huge", &[]);
    huge.metadata.annotations.insert("blob".into(), "x".repeat(limit));
    assert!(matches!(store.create(huge.clone()).await, Err(StoreError::TooLarge { .. })));
    assert!(matches!(store.get(&key("huge")).await, Err(StoreError::NotFound(_))));
    let revision = store.revision().await.expect("revision");
    let small = store.create(instance("default", "small", &[])).await.expect("create small");
    let mut grown = small.clone();
    grown.metadata.annotations.insert("blob".into(), "x".repeat(limit));
    assert!(matches!(store.update(grown).await, Err(StoreError::TooLarge { .. })));
    let mut status = small.clone();
    status.status = json!({"message": "x".repeat(limit)});
    assert!(matches!(store.update_status(status).await, Err(StoreError::TooLarge { .. })));
    assert_eq!(store.get(&key("small")).await.expect("unchanged"), small);
    assert_eq!(store.revision().await.expect("revision"), revision + 1, "only the small create took a revision");
    // Just under the limit is fine.
    let mut fits = instance("default", "fits", &[]);
    let base = serde_json::to_vec(
        &minicloud_server::store::rules::prepare_create(fits.clone(), &key("fits"), chrono::Utc::now()).expect("small"),
    )
    .expect("encode")
    .len();
    fits.metadata.annotations.insert("blob".into(), "x".repeat(limit - base - 64));
    store.create(fits).await.expect("an object just under the limit is stored");
}

/// A watcher that stops reading while more changes happen than a backend keeps in memory
/// catches up later with every change, in order, once; `watch_raw` delivers the same changes
/// as documents.
pub async fn watchers_that_fall_behind_replay_without_gaps(database: &TestDb) {
    let store = database.open().await;
    let start = store.revision().await.expect("revision");
    let mut stalled = store.watch(Query::default(), start).await.expect("watch");
    let mut raw = store.watch_raw(Query::namespaced(Kind::Instance, "default"), start).await.expect("watch raw");
    const CHANGES: usize = 12_000;
    for batch in 0..CHANGES / 1000 {
        let objects = (0..1000).map(|index| instance("default", &format!("n-{batch}-{index}"), &[])).collect();
        store.create_all(objects).await.expect("create batch");
    }
    let mut expected = start;
    for _ in 0..CHANGES {
        let event = tokio::time::timeout(Duration::from_secs(30), stalled.next())
            .await
            .expect("the watcher catches up")
            .expect("open")
            .expect("event");
        expected += 1;
        assert_eq!(event.revision, expected, "no gap, no duplicate");
        assert_eq!(event.change, ChangeType::Added);
    }
    let first = raw.next().await.expect("open").expect("raw change");
    assert_eq!(first.revision, start + 1);
    let decoded: minicloud_crds::Object = serde_json::from_str(&first.document).expect("a JSON document");
    assert_eq!(decoded.metadata.name, "n-0-0");
    assert_eq!(decoded.metadata.resource_version, Some((start + 1).to_string()));
}
