//! The queue engine against a real JetStream server: `minicloud/nats:local`
//! (`scripts/local-images.sh nats`) run by each test in its own container with its own volume,
//! both labelled `minicloud.dev/test=queues-…` and removed at the end (leftovers of a crashed
//! run are removed by the next).

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use minicloud_queues::{Engine, EngineError, QueueRef, Settings};

const LABEL: &str = "minicloud.dev/test=queues";

fn docker(arguments: &[&str]) -> String {
    let output = Command::new("docker").args(arguments).output().expect("docker");
    assert!(output.status.success(), "docker {arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A JetStream server in a container, its data on a volume; removed with both when dropped.
struct Server {
    container: String,
    volume: String,
    url: String,
}

impl Server {
    fn start() -> Server {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let volume = format!("minicloud-test-queues-{id}");
        docker(&["volume", "create", "--label", LABEL, &volume]);
        let container = docker(&[
            "run",
            "-d",
            "--label",
            LABEL,
            "-p",
            "127.0.0.1::4222",
            "-v",
            &format!("{volume}:/data"),
            "minicloud/nats:local",
        ]);
        let mut server = Server { container, volume, url: String::new() };
        server.url = server.address();
        server
    }

    fn address(&self) -> String {
        let published = docker(&["port", &self.container, "4222/tcp"]);
        let port = published.lines().next().and_then(|line| line.rsplit(':').next()).expect("a port").to_owned();
        format!("nats://127.0.0.1:{port}")
    }

    /// Kills the server (SIGKILL) and starts the same container again, on the same volume.
    fn kill_and_restart(&mut self) {
        docker(&["kill", "-s", "KILL", &self.container]);
        docker(&["start", &self.container]);
        self.url = self.address();
    }

    async fn engine(&self) -> Engine {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Engine::connect(&self.url).await {
                Ok(engine) => return engine,
                Err(error) => assert!(Instant::now() < deadline, "{error}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.container]).output();
        let _ = Command::new("docker").args(["volume", "rm", "-f", &self.volume]).output();
    }
}

/// Removes what an earlier, crashed run left: once per run, before this run's first container
/// (the tests of a run go on in parallel, and wait here until it is done).
fn remove_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let containers = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
        for container in containers.lines().filter(|line| !line.is_empty()) {
            let _ = Command::new("docker").args(["rm", "-f", "-v", container]).output();
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &format!("label={LABEL}")]);
        for volume in volumes.lines().filter(|line| !line.is_empty()) {
            let _ = Command::new("docker").args(["volume", "rm", "-f", volume]).output();
        }
    });
}

fn settings(visibility_seconds: u64) -> Settings {
    Settings { visibility_timeout: Duration::from_secs(visibility_seconds), ..Settings::default() }
}

#[tokio::test]
async fn messages_are_received_kept_invisible_counted_and_deleted_as_sqs_does() {
    remove_leftovers();
    let server = Server::start();
    let engine = server.engine().await;
    let queue = QueueRef::new("shop", "orders");
    engine.ensure(&queue, &settings(1)).await.expect("queue");

    // Send, receive, delete.
    let sent = engine.send(&queue, Bytes::from_static(b"hello"), Duration::ZERO).await.expect("send");
    let received = engine.receive(&queue, 10, Duration::ZERO, None).await.expect("receive");
    assert_eq!(received.len(), 1);
    let first = &received[0];
    assert_eq!(
        (first.message_id.as_str(), first.body.as_ref(), first.receive_count),
        (sent.message_id.as_str(), &b"hello"[..], 1)
    );
    assert!((chrono::Utc::now() - first.sent).num_seconds() < 5, "sent just now: {}", first.sent);

    // Invisible for the visibility timeout (1 s), then received again, counted twice.
    assert!(engine.receive(&queue, 10, Duration::ZERO, None).await.expect("receive").is_empty(), "in flight");
    let counts = engine.counts(&queue).await.expect("counts");
    assert_eq!((counts.visible, counts.in_flight, counts.total), (0, 1, 1));
    let again = engine.receive(&queue, 1, Duration::from_secs(3), None).await.expect("receive");
    assert_eq!(again.len(), 1, "visible again after the timeout");
    assert_eq!(again[0].receive_count, 2);
    assert_ne!(again[0].receipt_handle, first.receipt_handle, "each receive has its own receipt handle");
    // The first receive's handle stopped working when the message was received again: it
    // neither deletes nor changes anything.
    let stale = engine.delete(&queue, &first.receipt_handle).await;
    assert!(matches!(stale, Err(EngineError::ReceiptHandleIsInvalid)), "{stale:?}");
    let stale = engine.change_visibility(&queue, &first.receipt_handle, Duration::ZERO).await;
    assert!(matches!(stale, Err(EngineError::ReceiptHandleIsInvalid)), "{stale:?}");
    assert_eq!(engine.counts(&queue).await.expect("counts").total, 1, "still there");
    engine.delete(&queue, &again[0].receipt_handle).await.expect("delete");
    let twice = engine.delete(&queue, &again[0].receipt_handle).await;
    assert!(matches!(twice, Err(EngineError::ReceiptHandleIsInvalid)), "a deleted message's handle: {twice:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(engine.receive(&queue, 10, Duration::ZERO, None).await.expect("receive").is_empty(), "deleted");
    assert_eq!(engine.counts(&queue).await.expect("counts").total, 0, "gone from the stream");

    // Visibility changed to 0: visible at once; extended: not visible before it ends.
    engine.ensure(&queue, &settings(30)).await.expect("settings changed");
    engine.send(&queue, Bytes::from_static(b"two"), Duration::ZERO).await.expect("send");
    let [message] = engine.receive(&queue, 1, Duration::ZERO, None).await.expect("receive").try_into().expect("one");
    engine.change_visibility(&queue, &message.receipt_handle, Duration::ZERO).await.expect("visible now");
    let [message] =
        engine.receive(&queue, 1, Duration::from_secs(1), None).await.expect("receive").try_into().expect("one");
    assert_eq!(message.receive_count, 2);
    engine.change_visibility(&queue, &message.receipt_handle, Duration::from_secs(2)).await.expect("extended");
    assert!(engine.receive(&queue, 1, Duration::from_millis(1500), None).await.expect("receive").is_empty());
    let [message] =
        engine.receive(&queue, 1, Duration::from_secs(3), None).await.expect("receive").try_into().expect("one");
    assert_eq!(message.receive_count, 3);
    // A visibility given with the receive overrides the queue's 30 s.
    engine.change_visibility(&queue, &message.receipt_handle, Duration::ZERO).await.expect("visible now");
    let [message] = engine
        .receive(&queue, 1, Duration::from_secs(1), Some(Duration::from_secs(1)))
        .await
        .expect("receive")
        .try_into()
        .expect("one");
    let [message] = engine
        .receive(&queue, 1, Duration::from_secs(3), None)
        .await
        .expect("receive")
        .try_into()
        .unwrap_or_else(|_| panic!("back after 1 s, not 30: {message:?}"));
    engine.delete(&queue, &message.receipt_handle).await.expect("delete");

    // Receipt handles of another queue, or made up, are refused.
    let other = QueueRef::new("shop", "other");
    engine.ensure(&other, &settings(30)).await.expect("queue");
    engine.send(&other, Bytes::from_static(b"x"), Duration::ZERO).await.expect("send");
    let [foreign] = engine.receive(&other, 1, Duration::ZERO, None).await.expect("receive").try_into().expect("one");
    for handle in [foreign.receipt_handle.as_str(), "bm90IGEgaGFuZGxl", "%%%"] {
        let refused = engine.delete(&queue, handle).await;
        assert!(matches!(refused, Err(EngineError::ReceiptHandleIsInvalid)), "{handle}: {refused:?}");
    }
    engine.delete(&other, &foreign.receipt_handle).await.expect("its own queue's handle works");

    // Purge; removal.
    for index in 0..5 {
        engine.send(&queue, Bytes::from(format!("m{index}")), Duration::ZERO).await.expect("send");
    }
    engine.purge(&queue).await.expect("purge");
    assert_eq!(engine.counts(&queue).await.expect("counts").total, 0);
    engine.remove(&queue).await.expect("remove");
    engine.remove(&queue).await.expect("removing again is fine");
    assert!(engine.counts(&queue).await.is_err(), "no such queue");
}

#[tokio::test]
async fn long_polls_answer_at_the_first_message_and_delays_hold_messages_back() {
    remove_leftovers();
    let server = Server::start();
    let engine = server.engine().await;
    let queue = QueueRef::new("shop", "events");
    engine.ensure(&queue, &settings(30)).await.expect("queue");

    // Nothing there: the poll waits its whole time.
    let started = Instant::now();
    assert!(engine.receive(&queue, 10, Duration::from_secs(1), None).await.expect("receive").is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");

    // A message sent during a 5 s poll: the poll answers right after it.
    let sender = engine.clone();
    let sending = queue.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.send(&sending, Bytes::from_static(b"now"), Duration::ZERO).await.expect("send");
        Instant::now()
    });
    let received = engine.receive(&queue, 10, Duration::from_secs(5), None).await.expect("receive");
    let answered = Instant::now();
    let sent_at = send.await.expect("sender");
    assert_eq!(received.len(), 1);
    let latency = answered.saturating_duration_since(sent_at);
    eprintln!("a long poll answered {} ms after the send", latency.as_millis());
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    engine.delete(&queue, &received[0].receipt_handle).await.expect("delete");

    // A delayed message: not received before its time, then received once (count 1).
    engine.send(&queue, Bytes::from_static(b"later"), Duration::from_secs(2)).await.expect("send");
    assert!(engine.receive(&queue, 10, Duration::from_millis(500), None).await.expect("receive").is_empty());
    let started = Instant::now();
    let received = engine.receive(&queue, 10, Duration::from_secs(5), None).await.expect("receive");
    assert_eq!(received.len(), 1, "visible after its delay");
    assert_eq!(received[0].receive_count, 1, "the early look is not a receive");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn messages_survive_a_killed_server_and_queues_of_lookalike_names_stay_apart() {
    remove_leftovers();
    let mut server = Server::start();
    let engine = server.engine().await;
    let (one, other) = (QueueRef::new("a-b", "c"), QueueRef::new("a", "b-c"));
    for queue in [&one, &other] {
        engine.ensure(queue, &settings(30)).await.expect("queue");
    }
    for index in 0..200 {
        engine.send(&one, Bytes::from(format!("m{index}")), Duration::ZERO).await.expect("send");
    }
    engine.send(&other, Bytes::from_static(b"other"), Duration::ZERO).await.expect("send");
    drop(engine);

    server.kill_and_restart();
    let engine = server.engine().await;
    let mut bodies = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bodies.len() < 200 {
        assert!(Instant::now() < deadline, "{} of 200 after the restart", bodies.len());
        let received = match engine.receive(&one, 10, Duration::from_secs(1), None).await {
            Ok(received) => received,
            // JetStream may still be recovering its streams.
            Err(error) => {
                eprintln!("{error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for message in received {
            assert!(bodies.insert(String::from_utf8_lossy(&message.body).into_owned()), "received once");
            engine.delete(&one, &message.receipt_handle).await.expect("delete");
        }
    }
    let [message] =
        engine.receive(&other, 10, Duration::from_secs(1), None).await.expect("receive").try_into().expect("one");
    assert_eq!(message.body.as_ref(), b"other", "the look-alike queue kept its own message");
}
