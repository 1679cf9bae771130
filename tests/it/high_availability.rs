//! Several `cloud server` replicas on one real PostgreSQL database with the real Docker engine:
//! leases elect one holder for each controller and singleton job, an orderly stop hands over at
//! once, a replica cut off from PostgreSQL stops acting before another takes over, SIGKILL of
//! the leader at random moments loses and duplicates nothing, and watches on every replica see
//! every write. A second server on one SQLite file refuses to start. Containers are marked
//! `minicloud.dev/test=ha-...`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::cluster::{condition, Harness, V1};
use crate::common::docker::docker;
use crate::common::server::TestServer;
use crate::common::TestDb;

/// The leases a replica with controllers campaigns for.
const LEASES: [&str; 10] = [
    "audit-pruner",
    "controller-certificate",
    "controller-instance",
    "controller-loadbalancer",
    "controller-manageddatabase",
    "controller-route",
    "controller-scalinggroup",
    "controller-stack",
    "orphan-collector",
    "store-compactor",
];

/// One lease as the API shows it.
#[derive(Clone, Debug, PartialEq)]
struct LeaseView {
    holder: String,
    acquired: Option<chrono::DateTime<chrono::Utc>>,
    renewed: Option<chrono::DateTime<chrono::Utc>>,
    transitions: i64,
}

fn time(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    value.as_str().and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok()).map(|time| time.to_utc())
}

/// Every lease of the system namespace, by name.
async fn leases(http: &reqwest::Client, api: &str) -> BTreeMap<String, LeaseView> {
    let url = format!("{api}{V1}/namespaces/minicloud-system/leases");
    let Ok(response) = http.get(url).timeout(Duration::from_secs(5)).send().await else { return BTreeMap::new() };
    let list: Value = response.json().await.unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|lease| {
            let spec = &lease["spec"];
            Some((
                lease["metadata"]["name"].as_str()?.to_owned(),
                LeaseView {
                    holder: spec["holderIdentity"].as_str().unwrap_or_default().to_owned(),
                    acquired: time(&spec["acquireTime"]),
                    renewed: time(&spec["renewTime"]),
                    transitions: spec["leaseTransitions"].as_i64().unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// A replica's identity, from `/version`.
async fn identity(server: &TestServer) -> String {
    let version: Value =
        reqwest::get(format!("{}/version", server.url)).await.expect("version").json().await.expect("json");
    version["replica"].as_str().unwrap_or_else(|| panic!("no replica in /version: {version}")).to_owned()
}

/// One series of a server's `/metrics` (0 when absent).
async fn metric(server: &TestServer, series: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("{}/metrics", server.url)).await else { return 0.0 };
    let text = response.text().await.unwrap_or_default();
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// The controller replicas of one test, on the harness's database and data directory. Declared
/// after the harness, they are dropped (killed) before it removes the run's containers.
struct Replicas {
    servers: Vec<Option<TestServer>>,
    database_url: String,
    arguments: Vec<String>,
}

impl Replicas {
    /// Replicas with controllers beside `harness` (whose server is an API-only replica), with
    /// leases of `lease_duration`.
    fn beside(harness: &Harness, lease_duration: &str) -> Replicas {
        let database_url = harness.server().database.as_ref().expect("database").url.clone();
        let arguments = vec![
            "--container-label".to_owned(),
            format!("minicloud.dev/test={}", harness.run),
            "--data-dir".to_owned(),
            harness.data_dir.path().display().to_string(),
            "--resync".to_owned(),
            "10s".to_owned(),
            "--lease-duration".to_owned(),
            lease_duration.to_owned(),
        ];
        Replicas { servers: Vec::new(), database_url, arguments }
    }

    /// Starts one more replica (on `database_url`, e.g. through a proxy); returns its index.
    async fn start_on(&mut self, database_url: &str) -> usize {
        let arguments: Vec<&str> = self.arguments.iter().map(String::as_str).collect();
        let server = TestServer::start(TestDb::at_url(database_url), &arguments).await;
        self.servers.push(Some(server));
        self.servers.len() - 1
    }

    async fn start(&mut self) -> usize {
        let url = self.database_url.clone();
        self.start_on(&url).await
    }

    /// Starts `count` replicas at the same instant (their processes spawned together).
    async fn start_together(&mut self, count: usize) {
        let arguments: Vec<&str> = self.arguments.iter().map(String::as_str).collect();
        let databases = (0..count).map(|_| TestDb::at_url(&self.database_url)).collect();
        let servers = TestServer::start_together(databases, &arguments).await;
        self.servers.extend(servers.into_iter().map(Some));
    }

    fn server(&self, index: usize) -> &TestServer {
        self.servers[index].as_ref().expect("a running replica")
    }

    fn running(&self) -> impl Iterator<Item = (usize, &TestServer)> {
        self.servers.iter().enumerate().filter_map(|(index, server)| Some((index, server.as_ref()?)))
    }

    /// The running replica whose identity is `holder`.
    async fn index_of(&self, holder: &str) -> Option<usize> {
        for (index, server) in self.running() {
            if identity(server).await == holder {
                return Some(index);
            }
        }
        None
    }

    fn kill(&mut self, index: usize) {
        if let Some(server) = self.servers[index].take() {
            let _ = server.crash();
        }
    }
}

/// The form token of the console's template form on `server`.
async fn console_form_token(server: &TestServer) -> String {
    crate::common::server::form_token_of(&format!("{}/ui/templates/static-site", server.url)).await
}

/// Waits until every lease in `names` has a holder other than `not`; returns them.
async fn held_by_others(
    http: &reqwest::Client,
    api: &str,
    names: &[String],
    not: &str,
    within: Duration,
) -> BTreeMap<String, LeaseView> {
    let deadline = Instant::now() + within;
    loop {
        let current = leases(http, api).await;
        let taken = names
            .iter()
            .all(|name| current.get(name).is_some_and(|lease| !lease.holder.is_empty() && lease.holder != not));
        if taken {
            return current;
        }
        assert!(Instant::now() < deadline, "{names:?} not taken over from {not} within {within:?}: {current:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn instance(harness: &Harness, name: &str, app: &str) -> Value {
    harness.instance(name, json!({"app": app}), json!({"ports": [{"containerPort": 8080}]}))
}

fn ready(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
        && condition(object, "Ready").is_some_and(|(status, _)| status == "True")
}

/// The run's containers (all states) as `NAME STATE` lines.
fn containers(harness: &Harness) -> Vec<String> {
    let filter = format!("label=minicloud.dev/test={}", harness.run);
    docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}} {{.State}}"]).lines().map(str::to_owned).collect()
}

/// Waits until container `name` is running.
async fn wait_until_running(name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while docker(&["inspect", "-f", "{{.State.Running}}", name]).trim() != "true" {
        assert!(Instant::now() < deadline, "{name} running within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_file_refuses_to_start() {
    let first = TestServer::start(TestDb::sqlite().await, &[]).await;
    let url = first.database.as_ref().expect("database").url.clone();
    let mut second = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["server", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env(minicloud_server::KEY_ENV, crate::common::test_key_base64())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server on the same SQLite file kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert!(!status.success(), "refused: {stderr}");
    assert!(stderr.contains("another cloud server already runs on the SQLite store"), "{stderr}");
    assert!(stderr.contains("PostgreSQL"), "says what to do instead: {stderr}");
    // The first one was not disturbed.
    let ready = reqwest::get(format!("{}/readyz", first.url)).await.expect("readyz");
    assert!(ready.status().is_success());
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_elect_one_holder_per_lease_and_an_orderly_stop_hands_over_at_once() {
    let harness = Harness::start_on("ha", TestDb::postgres().await, &["--no-controllers"]).await;
    let http = reqwest::Client::new();
    let api = harness.server().url.clone();
    let mut replicas = Replicas::beside(&harness, "10s");
    // Every replica is told to keep the same directory applied: one at a time does.
    let synced = tempfile::tempdir().expect("sync directory");
    let manifest = format!(
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: synced\n  namespace: {}\nspec:\n  image: minicloud/web:local\n",
        harness.namespace
    );
    std::fs::write(synced.path().join("synced.yaml"), manifest).expect("manifest");
    let directory = synced.path().display().to_string();
    replicas.arguments.extend(["--sync", directory.as_str(), "--sync-name", "site"].map(str::to_owned));
    replicas.start_together(3).await;
    let mut identities = BTreeSet::new();
    for (_, server) in replicas.running() {
        identities.insert(identity(server).await);
    }
    assert_eq!(identities.len(), 3, "every replica has its own identity: {identities:?}");
    let api_replica = identity(harness.server()).await;

    // A console form served by one replica of a server without authentication is accepted by
    // every other: their form tokens are derived from the secret keys they share (and a
    // server with another key has another token).
    let token = console_form_token(harness.server()).await;
    for (index, server) in replicas.running() {
        assert_eq!(console_form_token(server).await, token, "replica {index} accepts the same forms");
    }
    let other_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    let stranger = TestServer::start_with_env(
        TestDb::sqlite().await,
        &["--no-controllers"],
        &[(minicloud_server::KEY_ENV, other_key.as_str())],
    )
    .await;
    assert_ne!(console_form_token(&stranger).await, token, "another key, another token");
    stranger.stop().await;

    // Every lease gets one holder, among the replicas that campaign for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let current = loop {
        let current = leases(&http, &api).await;
        let every =
            LEASES.iter().chain(&["sync-site"]).all(|name| current.get(*name).is_some_and(|l| !l.holder.is_empty()));
        if every {
            break current;
        }
        assert!(Instant::now() < deadline, "every lease held: {current:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (name, lease) in &current {
        let may_hold = identities.contains(&lease.holder)
            || (lease.holder == api_replica && ["audit-pruner", "store-compactor"].contains(&name.as_str()));
        assert!(may_hold, "{name} held by {}", lease.holder);
    }
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for lease in current.values() {
        *spread.entry(lease.holder.as_str()).or_default() += 1;
    }
    println!("leases by holder: {spread:?}");

    // For 3 s, every lease is held by exactly one process, by its own account (`/metrics`).
    let all: Vec<&TestServer> = replicas.running().map(|(_, server)| server).chain([harness.server()]).collect();
    for _ in 0..10 {
        for name in LEASES.iter().chain(&["sync-site"]) {
            let mut holders = 0.0;
            for server in &all {
                holders += metric(server, &format!("minicloud_leader{{lease=\"{name}\"}}")).await;
            }
            assert_eq!(holders, 1.0, "{name}: exactly one replica says it holds it");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Work runs once: an Instance gets one container, the synced one too.
    harness.apply(vec![instance(&harness, "web", "web")]).await;
    harness.wait_for("instances", "web", "Ready", ready).await;
    harness.wait_for("instances", "synced", "Ready", ready).await;
    assert_eq!(containers(&harness).len(), 2, "{:?}", containers(&harness));

    // SIGTERM the holder of the Instance controller: everything it held is taken at once.
    let leader = current["controller-instance"].holder.clone();
    let index = replicas.index_of(&leader).await.expect("the holder is a replica");
    let handed: Vec<String> =
        current.iter().filter(|(_, lease)| lease.holder == leader).map(|(name, _)| name.clone()).collect();
    let stopping = Instant::now();
    let server = replicas.servers[index].as_mut().expect("running");
    let _ = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status();
    let after = held_by_others(&http, &api, &handed, &leader, Duration::from_secs(5)).await;
    let handover = stopping.elapsed();
    println!("SIGTERM handover of {} leases: {handover:?}", handed.len());
    assert!(handover < Duration::from_secs(2), "an orderly stop hands over well within the lease: {handover:?}");
    assert!(replicas.servers[index].as_mut().expect("running").terminate().is_some_and(|s| s.success()));
    replicas.servers[index] = None;
    let events = harness_events(&http, &api, "controller-instance").await;
    assert!(events.iter().any(|e| e.starts_with("LeaderReleased:") && e.contains(&leader)), "{events:?}");
    assert!(events.iter().filter(|e| e.starts_with("LeaderElected:")).count() >= 2, "{events:?}");
    assert!(after["controller-instance"].transitions >= 1);

    // The new holder acts: a killed container is brought back, and there is still exactly one.
    let container = harness.instance_container("web").await;
    let started = |name: &str| docker(&["inspect", "-f", "{{.State.StartedAt}} {{.State.Running}}", name]);
    let before = started(&container);
    docker(&["kill", &container]);
    // (Brought back within milliseconds: judged by its start time, not by catching it stopped.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = started(&container);
        if now != before && now.ends_with(" true") {
            break;
        }
        assert!(Instant::now() < deadline, "the killed container runs again: {before} → {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(containers(&harness).len(), 2, "{:?}", containers(&harness));
    drop(replicas);
    harness.finish().await;
}

/// The events of a lease, as `REASON: message` lines.
async fn harness_events(http: &reqwest::Client, api: &str, lease: &str) -> Vec<String> {
    let url = format!("{api}{V1}/namespaces/minicloud-system/events");
    let body: Value = http.get(url).send().await.expect("events").json().await.expect("json");
    body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["kind"] == "Lease" && event["name"] == lease)
        .map(|event| format!("{}: {}", event["reason"].as_str().unwrap_or(""), event["message"].as_str().unwrap_or("")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_writes_through_one_replica_are_watched_in_order_on_the_others() {
    const WRITES: usize = 10_000;
    // 10,000 writes as fast as they go load the machine: timed tests wait.
    let _alone = crate::hardening::MACHINE.write().await;
    let database = TestDb::postgres().await;
    let a = TestServer::start(database.shared(), &["--no-controllers"]).await;
    let b = TestServer::start(database.shared(), &["--no-controllers"]).await;
    let c = TestServer::start(database.shared(), &["--no-controllers"]).await;
    let namespace = "watched";
    let start: Value = reqwest::get(format!("{}{V1}/namespaces/{namespace}/leases", a.url))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let from = start["metadata"]["resourceVersion"].as_str().expect("resourceVersion").to_owned();
    let watch = |server: &TestServer| {
        let url = format!("{}{V1}/namespaces/{namespace}/leases?watch=true&resourceVersion={from}", server.url);
        tokio::spawn(async move {
            let response = reqwest::get(url).await.expect("watch");
            assert!(response.status().is_success());
            let mut body = response.bytes_stream();
            let mut buffer = Vec::new();
            let mut seen: Vec<(i64, String)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            while seen.len() < WRITES && Instant::now() < deadline {
                let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(30), body.next()).await else {
                    break;
                };
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let event: Value = serde_json::from_slice(&line)
                        .unwrap_or_else(|error| panic!("{error}: {:?}", String::from_utf8_lossy(&line)));
                    if event["type"] == "ADDED" {
                        let object = &event["object"];
                        let revision = object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok());
                        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                        seen.push((revision.expect("a numeric resourceVersion"), name));
                    }
                }
            }
            seen
        })
    };
    let (on_b, on_c) = (watch(&b), watch(&c));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Eight writers through replica A.
    let started = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let url = format!("{}{V1}/namespaces/{namespace}/leases", a.url);
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for index in (writer..WRITES).step_by(8) {
                    let lease = json!({
                        "apiVersion": "minicloud.dev/v1", "kind": "Lease",
                        "metadata": {"name": format!("l{index}"), "namespace": "watched"},
                        "spec": {"holderIdentity": "writer", "leaseDurationSeconds": 10}
                    });
                    let response = http.post(&url).json(&lease).send().await.expect("create");
                    assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    println!("{WRITES} writes through A in {:?}", started.elapsed());
    for (replica, watcher) in [("B", on_b), ("C", on_c)] {
        let seen = watcher.await.expect("watcher");
        assert_eq!(seen.len(), WRITES, "replica {replica} saw every write");
        assert!(seen.windows(2).all(|pair| pair[0].0 < pair[1].0), "replica {replica}: in revision order");
        let names: BTreeSet<&str> = seen.iter().map(|(_, name)| name.as_str()).collect();
        assert_eq!(names.len(), WRITES, "replica {replica}: no write missing, none twice");
    }
    println!("both watchers saw all {WRITES} in order, {:?} after the first write", started.elapsed());
    drop((a, b));
    c.stop().await;
    database.cleanup().await;
}

/// A TCP proxy on 127.0.0.1 in front of PostgreSQL that the test can cut: once cut, bytes stop
/// flowing both ways and new connections are accepted and left hanging (packets dropped, as a
/// network partition does, not refused); healed, the hung connections are closed and new ones
/// flow again.
struct Partition {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn in_front_of(target: std::net::SocketAddr) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (cut, watched) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                let mut cut = watched.clone();
                tokio::spawn(async move {
                    let already_cut = *cut.borrow();
                    if already_cut {
                        // Hung until healed, then closed.
                        let _ = cut.wait_for(|cut| !*cut).await;
                        drop(inbound);
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let (mut inbound, mut outbound) = (inbound, outbound);
                    let was_cut = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        _ = cut.wait_for(|cut| *cut) => true,
                    };
                    if was_cut {
                        // Nothing flows any more; the sockets stay open until healed.
                        let _ = cut.wait_for(|cut| !*cut).await;
                    }
                });
            }
        });
        Partition { port, cut, task }
    }

    fn cut(&self) {
        let _ = self.cut.send(true);
    }

    fn heal(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
        self.task.abort();
    }
}

/// One Docker event: when, what (`start`, `die`, ...), which container.
type DockerEvent = (chrono::DateTime<chrono::Utc>, String, String);

/// `docker events` for a run's containers, collected in the background.
struct DockerEvents {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<DockerEvent>>>,
}

impl DockerEvents {
    fn follow(run: &str) -> DockerEvents {
        let mut child = Command::new("docker")
            .args(["events", "--filter", &format!("label=minicloud.dev/test={run}"), "--filter", "type=container"])
            .args(["--format", "{{.TimeNano}} {{.Action}} {{.Actor.Attributes.name}}"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        let output = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(output)).map_while(Result::ok) {
                let mut parts = line.splitn(3, ' ');
                let (Some(nanos), Some(action), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(nanos) = nanos.parse::<i64>() else { continue };
                let time = chrono::DateTime::from_timestamp_nanos(nanos);
                sink.lock().expect("lock").push((time, action.to_owned(), name.to_owned()));
            }
        });
        DockerEvents { child, lines }
    }

    fn seen(&self) -> Vec<DockerEvent> {
        self.lines.lock().expect("lock").clone()
    }
}

impl Drop for DockerEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When a server's log first has a line containing `text` (the line's leading timestamp).
fn logged_at(server: &TestServer, text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let lines = server.log.lock().ok()?;
    let line = lines.iter().find(|line| line.contains(text))?;
    time(&Value::String(line.split_whitespace().next()?.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_postgres_stops_acting_before_another_replica_takes_over() {
    let harness = Harness::start_on("ha", TestDb::postgres().await, &["--no-controllers"]).await;
    let http = reqwest::Client::new();
    let api = harness.server().url.clone();
    let (duration, renew_deadline) = (Duration::from_secs(4), Duration::from_millis(2800));
    let mut replicas = Replicas::beside(&harness, "4s");

    // Replica 0 reaches PostgreSQL through the proxy, and starts first: it takes the controllers.
    let direct = replicas.database_url.clone();
    let postgres: std::net::SocketAddr = {
        let authority = direct.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("host:port");
        tokio::net::lookup_host(authority).await.expect("resolve").next().expect("an address")
    };
    let partition = Partition::in_front_of(postgres).await;
    let proxied = direct.replacen(&postgres.to_string(), &format!("127.0.0.1:{}", partition.port), 1);
    assert_ne!(proxied, direct, "the URL names {postgres}");
    let cut_off = replicas.start_on(&proxied).await;
    let leader = identity(replicas.server(cut_off)).await;
    let controllers: Vec<String> =
        LEASES.iter().filter(|name| name.starts_with("controller-")).map(|n| n.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !leases_held_by(&http, &api, &controllers, &leader).await {
        assert!(Instant::now() < deadline, "the first replica takes the controllers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = replicas.start().await;
    let successor = identity(replicas.server(other)).await;
    harness.apply(vec![instance(&harness, "web", "web")]).await;
    harness.wait_for("instances", "web", "Ready", ready).await;
    let container = harness.instance_container("web").await;

    // Cut: the leader's connections hang; its container is killed at the same moment. Every
    // renewal is followed through a watch (through the API replica), to know the last one.
    let events = DockerEvents::follow(&harness.run);
    let renewals_log: RenewalLog = Arc::default();
    let renewals = follow_renewals(&api, "controller-instance", renewals_log.clone());
    // Writes through the leader keep it inside write transactions, so the cut likely falls in
    // the middle of one (its session then holds the store's write lock until PostgreSQL ends
    // it: the other replicas must not wait for that forever).
    let writes_through_leader = {
        let url = format!("{}{V1}/namespaces/busy/leases", replicas.server(cut_off).url);
        tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
            for index in 0..100_000 {
                let lease = json!({"apiVersion": "minicloud.dev/v1", "kind": "Lease",
                    "metadata": {"name": format!("w{index}"), "namespace": "busy"}, "spec": {}});
                let _ = http.post(&url).json(&lease).send().await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut_at = chrono::Utc::now();
    partition.cut();
    docker(&["kill", &container]);

    let names = vec!["controller-instance".to_owned()];
    let after = held_by_others(&http, &api, &names, &leader, duration * 3).await;
    let taken = &after["controller-instance"];
    assert_eq!(taken.holder, successor);
    let acquired = taken.acquired.expect("acquireTime");
    wait_until_running(&container, Duration::from_secs(30)).await;

    // The cut-off leader stopped acting within its renew deadline, before the lease lapsed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stopped = loop {
        if let Some(at) = logged_at(replicas.server(cut_off), "could not be renewed before the renew deadline") {
            break at;
        }
        assert!(Instant::now() < deadline, "the cut-off replica says it stopped acting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    renewals.abort();
    writes_through_leader.abort();
    let last_renewal = renewals_seen(&renewals_log, &leader).expect("the leader's renewals were watched");
    // Scheduling on a busy machine: the log line follows the abort at the deadline.
    let slack = chrono::Duration::milliseconds(500);
    let to_std = |d: Duration| chrono::Duration::from_std(d).expect("duration");
    println!(
        "cut at {cut_at}; last renewal at {}; leader stopped at +{}; successor acquired at +{} (after the last renewal)",
        last_renewal - cut_at,
        stopped - last_renewal,
        acquired - last_renewal
    );
    assert!(stopped <= last_renewal + to_std(renew_deadline) + slack, "stopped within the renew deadline");
    assert!(stopped < acquired, "stopped before another replica took the lease");
    assert!(acquired >= last_renewal + to_std(duration), "taken only once the lease had lapsed");

    // Docker saw no action on the run's containers from the leader's stop to the successor's
    // start; the actions after the cut came from the successor.
    let seen = events.seen();
    let acting = ["create", "start", "destroy", "restart", "rename"];
    let between: Vec<_> = seen
        .iter()
        .filter(|(at, action, _)| acting.contains(&action.as_str()) && *at > stopped && *at < acquired)
        .collect();
    assert!(between.is_empty(), "Docker actions while no replica may act: {between:?}");
    assert!(
        seen.iter().any(|(at, action, _)| action == "start" && *at > acquired),
        "the successor brought the container back: {seen:?}"
    );

    // Healed: the old leader finds the lease taken and stays a follower; one container.
    partition.heal();
    tokio::time::sleep(duration).await;
    let now = leases(&http, &api).await;
    assert_eq!(now["controller-instance"].holder, successor);
    assert_eq!(metric(replicas.server(cut_off), "minicloud_leader{lease=\"controller-instance\"}").await, 0.0);
    assert_eq!(containers(&harness).len(), 1, "{:?}", containers(&harness));
    drop(events);
    drop(replicas);
    harness.finish().await;
}

/// Every version of one lease seen by a watch: `(holder, renewTime)`.
type RenewalLog = Arc<std::sync::Mutex<Vec<(String, chrono::DateTime<chrono::Utc>)>>>;

/// Watches lease `name` through the API at `api`, recording every version into `log`.
fn follow_renewals(api: &str, name: &str, log: RenewalLog) -> tokio::task::JoinHandle<()> {
    let url = format!("{api}{V1}/namespaces/minicloud-system/leases?watch=true");
    let name = name.to_owned();
    tokio::spawn(async move {
        let Ok(response) = reqwest::get(url).await else { return };
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                let lease = &event["object"];
                if lease["metadata"]["name"] != name.as_str() {
                    continue;
                }
                let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_owned();
                if let Some(renewed) = time(&lease["spec"]["renewTime"]) {
                    log.lock().expect("lock").push((holder, renewed));
                }
            }
        }
    })
}

/// The last renewal by `holder` in `log`.
fn renewals_seen(log: &RenewalLog, holder: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    log.lock().expect("lock").iter().filter(|(by, _)| by == holder).map(|(_, at)| *at).max()
}

/// Whether every lease in `names` is held by `holder` now.
async fn leases_held_by(http: &reqwest::Client, api: &str, names: &[String], holder: &str) -> bool {
    let now = leases(http, api).await;
    names.iter().all(|name| now.get(name).is_some_and(|lease| lease.holder == holder))
}

/// The seed of the chaos test's random moments: `MINICLOUD_TEST_SEED`, or a fixed one.
fn seed() -> u64 {
    std::env::var("MINICLOUD_TEST_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(27)
}

/// Every scheduled backup description in a namespace's backup directory, as `(slot, name)`.
fn scheduled_backups(data_dir: &std::path::Path, namespace: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("backups").join(namespace)) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.ends_with(".json") && !name.starts_with('.')
        })
        .filter_map(|entry| {
            let meta: Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
            (meta["reason"] == "Scheduled").then(|| {
                (meta["slot"].as_str().unwrap_or("none").to_owned(), meta["name"].as_str().unwrap_or("").to_owned())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_leaders_twenty_times_loses_nothing_duplicates_nothing_and_drops_no_request() {
    use rand::{Rng, SeedableRng};
    const INSTANCES: usize = 20;
    const KILLS: usize = 20;
    // Three replicas, 20 containers and a database load the machine: timed tests wait.
    let _alone = crate::hardening::MACHINE.write().await;
    let seed = seed();
    println!("seed {seed} (MINICLOUD_TEST_SEED)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let harness = Harness::start_on("ha", TestDb::postgres().await, &["--no-controllers"]).await;
    let http = reqwest::Client::new();
    let api = harness.server().url.clone();
    let duration = Duration::from_secs(4);
    let mut replicas = Replicas::beside(&harness, "4s");
    replicas.start_together(3).await;
    let api_replica = identity(harness.server()).await;

    // The world: 20 Instances behind a LoadBalancer, a ScalingGroup, a database backed up
    // every minute.
    let mut objects: Vec<Value> = (0..INSTANCES).map(|i| instance(&harness, &format!("web-{i}"), "web")).collect();
    objects.push(harness.load_balancer(
        "front",
        json!({
            "listeners": [{"name": "http", "targetPort": 8080}],
            "targets": {"selector": {"matchLabels": {"app": "web"}}},
            "healthCheck": {"path": "/", "intervalMillis": 300, "healthyThreshold": 1, "unhealthyThreshold": 2}
        }),
    ));
    let group = |desired: u32| {
        json!({
            "apiVersion": "minicloud.dev/v1", "kind": "ScalingGroup",
            "metadata": {"name": "batch", "namespace": harness.namespace},
            "spec": {
                "minReplicas": 1, "maxReplicas": 4, "desiredReplicas": desired,
                "template": {"labels": {"app": "batch"}, "spec": {"image": "minicloud/web:local", "resources": {"memory": "32Mi"}}}
            }
        })
    };
    objects.push(group(2));
    objects.push(json!({
        "apiVersion": "minicloud.dev/v1", "kind": "ManagedDatabase",
        "metadata": {"name": "pg", "namespace": harness.namespace},
        "spec": {"engine": "postgres", "version": "15", "backup": {"schedule": "* * * * *", "retention": 20}}
    }));
    harness.apply(objects).await;
    let lb = harness
        .wait_for_within("loadbalancers", "front", "serving 20/20", Duration::from_secs(180), |o| {
            crate::common::cluster::serving(o, INSTANCES, INSTANCES)
        })
        .await;
    harness.wait_for_within("manageddatabases", "pg", "Ready", Duration::from_secs(180), ready).await;
    let load = crate::common::cluster::Load::start(&crate::common::cluster::endpoint(&lb), 2);

    let mut takeovers = Vec::new();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        if kill % 4 == 1 {
            // The group is being scaled while leaders die.
            harness.apply(vec![group(rng.random_range(1..=4))]).await;
        }
        let before = leases(&http, &api).await;
        // In turn: the Instance controller's holder, and the replica holding the most leases.
        let leader = if kill % 2 == 0 {
            before.get("controller-instance").map(|lease| lease.holder.clone()).unwrap_or_default()
        } else {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for lease in before.values().filter(|lease| !lease.holder.is_empty()) {
                *counts.entry(lease.holder.as_str()).or_default() += 1;
            }
            counts
                .into_iter()
                .filter(|(holder, _)| *holder != api_replica)
                .max_by_key(|(_, count)| *count)
                .map(|(h, _)| h.to_owned())
                .unwrap_or_default()
        };
        let Some(index) = replicas.index_of(&leader).await else {
            panic!("kill {kill}: the holder {leader:?} is not a running replica: {before:?}")
        };
        let held: Vec<String> =
            before.iter().filter(|(_, lease)| lease.holder == leader).map(|(name, _)| name.clone()).collect();
        let killed_at = Instant::now();
        replicas.kill(index);
        held_by_others(&http, &api, &held, &leader, duration * 3).await;
        let takeover = killed_at.elapsed();
        println!("kill {kill}: {leader} (held {}) taken over in {takeover:?}", held.len());
        assert!(takeover <= duration + Duration::from_secs(1), "kill {kill}: takeover took {takeover:?}");
        takeovers.push(takeover);
        replicas.start().await;
    }
    takeovers.sort();
    println!("takeover after SIGKILL: median {:?}, max {:?}", takeovers[KILLS / 2], takeovers[KILLS - 1]);

    // The world converges to exactly what is declared.
    let desired = harness.get("scalinggroups", "batch").await.expect("group")["spec"]["desiredReplicas"]
        .as_u64()
        .expect("desired") as usize;
    let expected = INSTANCES + desired + 2;
    let deadline = Instant::now() + Duration::from_secs(120);
    let uids = loop {
        let instances = harness.list("instances").await;
        let all_ready = instances.len() == INSTANCES + desired && instances.iter().all(ready);
        let running = containers(&harness);
        if all_ready && running.len() == expected && running.iter().all(|line| line.ends_with(" running")) {
            let mut uids: BTreeSet<String> =
                instances.iter().filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned)).collect();
            for (plural, name) in [("loadbalancers", "front"), ("manageddatabases", "pg")] {
                let object = harness.get(plural, name).await.expect("object");
                uids.insert(object["metadata"]["uid"].as_str().expect("uid").to_owned());
            }
            break uids;
        }
        assert!(Instant::now() < deadline, "converged: {} instances, containers {running:?}", instances.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let filter = format!("label=minicloud.dev/test={}", harness.run);
    let labelled =
        docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}} {{.Label \"minicloud.dev/uid\"}}"]);
    let mut names = BTreeSet::new();
    for line in labelled.lines() {
        let (name, uid) = line.split_once(' ').expect("name and uid");
        assert!(names.insert(name.to_owned()), "duplicate container {name}");
        assert!(uids.contains(uid), "orphan: {line}");
    }
    assert_eq!(names.len(), expected, "0 duplicates, 0 orphans: {labelled}");

    // No request failed; no schedule slot was backed up twice.
    let (ok, failed) = load.finish().await;
    crate::common::cluster::Load::assert_none_failed(ok, &failed, 100, "while the leader was killed 20 times");
    let backups = scheduled_backups(harness.data_dir.path(), &harness.namespace);
    let mut per_slot: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (slot, name) in &backups {
        per_slot.entry(slot.as_str()).or_default().push(name.as_str());
    }
    println!("scheduled backups: {per_slot:?}");
    assert!(!per_slot.is_empty(), "the schedule ran during the test");
    assert!(per_slot.values().all(|names| names.len() == 1), "one backup per slot: {per_slot:?}");
    drop(replicas);
    harness.finish().await;
}
