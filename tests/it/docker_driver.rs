//! The Docker driver against the real engine: containers with minicloud's labels, ports
//! published on 127.0.0.1 that really serve, events, networks, and the errors users see.
//! Needs the local images (`scripts/local-images.sh web`, run by `scripts/test`).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use minicloud_controllers::docker::{
    ContainerDriver, ContainerSpec, DockerDriver, DriverError, Identity, PublishSpec, LIFECYCLE_ACTIONS,
};
use minicloud_crds::Kind;

const WEB_IMAGE: &str = "minicloud/web:local";

fn test_labels(run: &str) -> HashMap<String, String> {
    HashMap::from([
        ("minicloud.dev/managed-by".to_owned(), "minicloud".to_owned()),
        ("minicloud.dev/test".to_owned(), run.to_owned()),
    ])
}

fn web_spec(name: &str, run: &str, network: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_owned(),
        image: WEB_IMAGE.to_owned(),
        entrypoint: None,
        command: None,
        env: vec!["MODE=test".into()],
        labels: test_labels(run),
        ports: vec![PublishSpec {
            container_port: 8080,
            protocol: "tcp".into(),
            host_ip: "127.0.0.1".into(),
            host_port: None,
        }],
        network: network.to_owned(),
        aliases: vec![name.to_owned()],
        memory_bytes: Some(64 << 20),
        nano_cpus: Some(500_000_000),
        health: None,
        volumes: Vec::new(),
        user: None,
    }
}

/// Removes what an earlier, crashed run of this file left behind (label value `driver-...`),
/// once per process: the tests of this file run in parallel, and sweeping again would remove a
/// running test's containers.
fn remove_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sweep_leftovers);
}

fn sweep_leftovers() {
    let list = |kind: &str| {
        let mut args = vec![kind, "ls"];
        if kind == "container" {
            args.push("-a");
        }
        args.extend(["--filter", "label=minicloud.dev/test", "--format", "{{.ID}} {{.Label \"minicloud.dev/test\"}}"]);
        let output = std::process::Command::new("docker")
            .args(&args)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        output
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(_, run)| run.starts_with("driver-"))
            .map(|(id, _)| id.to_owned())
            .collect::<Vec<_>>()
    };
    for id in list("container") {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &id]).output();
    }
    for id in list("network").into_iter().filter(|id| !id.is_empty()) {
        let _ = std::process::Command::new("docker").args(["network", "rm", &id]).output();
    }
    for id in list("volume").into_iter().filter(|id| !id.is_empty()) {
        let _ = std::process::Command::new("docker").args(["volume", "rm", &id]).output();
    }
}

fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker").args(args).output().expect("docker CLI");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn http_get(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?;
    response.text().await.ok()
}

#[tokio::test]
async fn containers_serve_on_loopback_and_are_labelled() {
    remove_leftovers();
    let driver = DockerDriver::connect().await.expect("a Docker engine");
    driver.ping().await.expect("ping");
    driver.ensure_image(WEB_IMAGE, &|_| {}).await.expect("run scripts/local-images.sh web first");
    let run = format!("driver-{}", uuid::Uuid::new_v4().simple());
    let network = format!("mc-test-{}", &run[7..19]);
    let identity = Identity::network(&run, "test", None);
    let labels = test_labels(&run);
    let network_id = driver.ensure_network(&network, &identity, &labels).await.expect("network");
    assert_eq!(driver.ensure_network(&network, &identity, &labels).await.expect("network again"), network_id);
    // Concurrent callers get one network, not one each (Docker allows duplicate names).
    let concurrent =
        futures::future::join_all((0..6).map(|_| driver.ensure_network(&network, &identity, &labels))).await;
    assert!(
        concurrent.iter().all(|id| id.as_deref().ok() == Some(network_id.as_str())),
        "{network_id} expected from each: {concurrent:?}"
    );
    let fresh = format!("{network}-x");
    let ids = futures::future::join_all((0..6).map(|_| driver.ensure_network(&fresh, &identity, &labels))).await;
    let distinct: std::collections::HashSet<String> = ids.into_iter().map(|id| id.expect("network")).collect();
    assert_eq!(distinct.len(), 1, "one network for concurrent creators");
    // Another namespace's network of the same name is neither used nor removed.
    let other_namespace = Identity::network(&run, "test-2", None);
    match driver.ensure_network(&fresh, &other_namespace, &labels).await {
        Err(error @ DriverError::NotOurs { .. }) => assert!(error.to_string().contains("test"), "{error}"),
        other => panic!("another namespace's network must not be used: {other:?}"),
    }
    driver.remove_network_if_unused(&fresh, &other_namespace).await.expect("nothing of its own to remove");
    assert_eq!(docker(&["network", "ls", "-q", "--filter", &format!("name=^{fresh}$")]).lines().count(), 1);
    driver.remove_network_if_unused(&fresh, &identity).await.expect("remove");

    let mut events = driver.events();
    let name = format!("mc-test-web-{}", &run[7..19]);
    let id = driver.create_and_start(&web_spec(&name, &run, &network)).await.expect("create");
    let info = driver.inspect(&id).await.expect("inspect").expect("exists");
    assert!(info.running);
    assert_eq!(info.labels.get("minicloud.dev/test"), Some(&run));
    let (container_port, protocol, host_ip, host_port) = info.ports.first().cloned().expect("a published port");
    assert_eq!((container_port, protocol.as_str(), host_ip.as_str()), (8080, "tcp", "127.0.0.1"));

    let mut page = None;
    for _ in 0..50 {
        page = http_get(host_port).await;
        if page.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page.unwrap_or_default().contains("Hello from minicloud"), "the container serves on 127.0.0.1:{host_port}");

    assert!(info.addresses.get(&network).is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok()), "{info:?}");

    // Commands run inside; their output and exit code come back.
    let hostname = vec!["hostname".to_owned()];
    let output = driver.exec(&id, &hostname, Duration::from_secs(10)).await.expect("exec");
    assert_eq!((output.exit_code, output.output.trim()), (0, &id[..12]));
    let failing = vec!["sh".to_owned(), "-c".to_owned(), "echo nope >&2; exit 3".to_owned()];
    let output = driver.exec(&id, &failing, Duration::from_secs(10)).await.expect("exec");
    assert_eq!((output.exit_code, output.output.trim()), (3, "nope"));
    // A one-off container runs to its end and is gone afterwards.
    let mut once = web_spec(&format!("{name}-once"), &run, "none");
    once.ports.clear();
    once.entrypoint = Some(vec!["sh".into(), "-c".into(), "echo once; exit 2".into()]);
    let output = driver.run_once(&once, Duration::from_secs(20)).await.expect("run once");
    assert_eq!((output.exit_code, output.output.trim()), (2, "once"));
    assert!(driver.inspect(&once.name).await.expect("inspect").is_none(), "removed after running");
    // A signal reaches the main process: httpd ends on SIGTERM.
    driver.signal(&id, "SIGTERM").await.expect("signal");
    let mut stopped = false;
    for _ in 0..100 {
        if !driver.inspect(&id).await.expect("inspect").is_some_and(|info| info.running) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped, "SIGTERM stopped the container");
    assert!(matches!(driver.signal("mc-test-no-such", "SIGUSR2").await, Err(DriverError::NoSuchContainer(_))));
    driver.remove(&id).await.expect("remove");
    let id = driver.create_and_start(&web_spec(&name, &run, &network)).await.expect("create again");

    match driver.create_and_start(&web_spec(&name, &run, &network)).await {
        Err(DriverError::NameTaken(_)) => {}
        other => panic!("a second container with the same name must be refused, got {other:?}"),
    }
    let listed = driver.list_managed().await.expect("list");
    assert_eq!(listed.iter().filter(|c| c.labels.get("minicloud.dev/test") == Some(&run)).count(), 1);

    driver.remove(&id).await.expect("remove");
    assert!(driver.inspect(&id).await.expect("inspect").is_none());
    driver.remove(&id).await.expect("removing an absent container is fine");
    let mut actions = Vec::new();
    while !actions.iter().any(|action| action == "destroy") {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .expect("event");
        if event.container_id == id {
            actions.push(event.action);
        }
    }
    assert!(actions.contains(&"die".to_owned()), "{actions:?}");

    assert!(
        actions.iter().all(|action| LIFECYCLE_ACTIONS.iter().any(|wanted| action.starts_with(wanted))),
        "only lifecycle events are delivered, not the execs above: {actions:?}"
    );

    driver.remove_network_if_unused(&network, &identity).await.expect("remove network");
    driver.ensure_network(&network, &identity, &labels).await.expect("recreate");
    driver.remove_network_if_unused(&network, &identity).await.expect("remove network");
}

#[tokio::test]
async fn volumes_are_labelled_and_others_are_never_used_or_removed() {
    remove_leftovers();
    let driver = DockerDriver::connect().await.expect("a Docker engine");
    let run = format!("driver-{}", uuid::Uuid::new_v4().simple());
    let labels = test_labels(&run);
    let identity = Identity::volume(&run, "test", Kind::Instance, "web", "data");
    let name = format!("mc-test-volume-{}", &run[7..19]);
    assert!(driver.ensure_volume(&name, &identity, &labels).await.expect("create"), "created now");
    assert!(!driver.ensure_volume(&name, &identity, &labels).await.expect("again"), "exists");
    let inspected = driver.inspect_volume(&name).await.expect("inspect").expect("exists");
    assert_eq!(inspected.get("minicloud.dev/volume").map(String::as_str), Some("data"));
    assert_eq!(inspected.get("minicloud.dev/cluster"), Some(&run));

    // The same name wanted by another object (another namespace here): refused, left alone.
    let other = Identity::volume(&run, "test-web", Kind::Instance, "web", "data");
    assert!(matches!(driver.ensure_volume(&name, &other, &labels).await, Err(DriverError::NotOurs { .. })));
    assert!(matches!(driver.remove_volume(&name, &other).await, Err(DriverError::NotOurs { .. })));
    assert!(driver.inspect_volume(&name).await.expect("inspect").is_some(), "still there");

    // A volume made without labels (by hand, or by an earlier version) is never used.
    let bare = format!("{name}-bare");
    docker(&["volume", "create", "--label", &format!("minicloud.dev/test={run}"), &bare]);
    match driver.ensure_volume(&bare, &identity, &labels).await {
        Err(error @ DriverError::NotOurs { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&bare) && message.contains("docker volume inspect"), "{message}");
        }
        other => panic!("an unlabelled volume must not be used: {other:?}"),
    }
    assert!(matches!(driver.remove_volume(&bare, &identity).await, Err(DriverError::NotOurs { .. })));
    docker(&["volume", "rm", &bare]);
    driver.remove_volume(&name, &identity).await.expect("remove");
    assert!(driver.inspect_volume(&name).await.expect("inspect").is_none());
    driver.remove_volume(&name, &identity).await.expect("absent is fine");
}

#[tokio::test]
async fn missing_images_say_what_to_do() {
    let driver = DockerDriver::connect().await.expect("a Docker engine");
    match driver.ensure_image("minicloud/does-not-exist:1", &|_| {}).await {
        Err(error @ DriverError::ImageUnavailable { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("minicloud/does-not-exist:1") && message.contains("scripts/local-images.sh"),
                "{message}"
            );
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_engine_is_reported_as_such() {
    match DockerDriver::connect_to("tcp://127.0.0.1:9").await {
        Err(error) => {
            assert!(error.is_unreachable(), "{error:?}");
            assert!(error.to_string().contains("cannot reach the Docker engine"));
        }
        Ok(_) => panic!("nothing listens on port 9"),
    }
}

/// A streamed command: a megabyte of input in and out again byte for byte, environment
/// variables off the command line, standard error and the exit code kept, a missing container
/// named.
#[tokio::test]
async fn streamed_commands_carry_binary_input_and_output() {
    remove_leftovers();
    let driver = DockerDriver::connect().await.expect("docker");
    let run = format!("driver-{}", std::process::id());
    let name = format!("mc-driver-stream-{}", std::process::id());
    let mut spec = web_spec(&name, &run, "bridge");
    spec.ports.clear();
    spec.aliases.clear();
    driver.create_and_start(&spec).await.expect("start");

    let input: Vec<u8> = (0..1_048_576u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut source: &[u8] = &input;
    let mut copied = Vec::new();
    let command = ["cat".to_owned()];
    let output = driver
        .exec_streaming(&name, &command, &[], Some(&mut source), Some(&mut copied), Duration::from_secs(30))
        .await
        .expect("cat");
    assert_eq!(output.exit_code, 0);
    assert_eq!(copied.len(), input.len());
    assert!(copied == input, "the bytes come back unchanged");

    let command = ["sh".to_owned(), "-c".to_owned(), "echo \"$SECRET_VALUE\" >&2; exit 3".to_owned()];
    let output = driver
        .exec_streaming(&name, &command, &["SECRET_VALUE=from-env".into()], None, None, Duration::from_secs(30))
        .await
        .expect("sh");
    assert_eq!((output.exit_code, output.output.trim()), (3, "from-env"));

    let missing = driver.exec_streaming("mc-driver-no-such", &command, &[], None, None, Duration::from_secs(5)).await;
    assert!(matches!(missing, Err(DriverError::NoSuchContainer(_))), "{missing:?}");
    driver.remove(&name).await.expect("remove");
}
