//! `cloud up` end to end with the real engine: validate, start, apply, wait, print the
//! endpoint (which serves), and with `--down` remove everything on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cloud up -f EXAMPLE --down` until it prints `READY_PREFIX URL`; `check` gets the URL;
/// then Ctrl-C, and nothing labelled for the run may be left.
fn up_serves_and_down_removes(example: &str, ready_prefix: &str, check: impl Fn(&str)) {
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = start_up(example, &data);
    let label = up.label.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    let stdout = up.child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let started = Instant::now();
    let mut endpoint = None;
    let mut lines = Vec::new();
    while endpoint.is_none() {
        let line = receiver.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = up.child.kill();
            panic!("cloud up printed no endpoint: {lines:?}")
        });
        if let Some(address) = line.strip_prefix(ready_prefix) {
            endpoint = Some(address.to_owned());
        }
        lines.push(line);
    }
    println!("cloud up → endpoint printed: {:?}", started.elapsed());
    let endpoint = endpoint.unwrap_or_default();
    check(&endpoint);
    assert!(lines[0].starts_with("control plane listening on http://127.0.0.1:"), "{lines:?}");
    assert!(lines[1].starts_with("authentication is off: anyone on this machine can use it"), "{lines:?}");

    let _ = Command::new("kill").args(["-INT", &up.child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = up.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "cloud up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let left =
        Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={label}")]).output().expect("docker ps");
    let left = String::from_utf8_lossy(&left.stdout).trim().to_owned();
    for id in left.lines() {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
    assert!(left.is_empty(), "--down removes the containers");
}

/// Starts `cloud up -f EXAMPLE --down` on `data`, its containers labelled for this run, its
/// output piped.
fn start_up(example: &str, data: &tempfile::TempDir) -> Running {
    let run = format!("up-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let label = format!("minicloud.dev/test={run}");
    let child = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["up", "-f", example, "--down", "--listen", "127.0.0.1:0", "--container-label", &label])
        .arg("--data-dir")
        .arg(data.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cloud up");
    Running { child, label }
}

/// `cloud up` while it runs: killed, and what it labelled removed, if the test fails first.
struct Running {
    child: std::process::Child,
    label: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let left = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label={}", self.label)])
                .output()
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                .unwrap_or_default();
            for id in left.lines() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
    }
}

/// `GET PATH` on an `http://HOST:PORT` endpoint with a new connection; the whole answer.
fn fetch(endpoint: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).expect("request");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

#[test]
fn up_serves_the_example_and_down_removes_it() {
    up_serves_and_down_removes("examples/hello/", "instance/hello ready at ", |endpoint| {
        let page = fetch(endpoint, "/");
        assert!(page.contains("Hello from minicloud"), "{endpoint} serves the example: {page}");
    });
}

#[test]
fn up_waits_for_the_load_balancer_and_prints_its_endpoint() {
    up_serves_and_down_removes("examples/web-lb/", "loadbalancer/web ready at ", |endpoint| {
        assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
        let served: std::collections::BTreeSet<String> = (0..4)
            .map(|_| {
                let answer = fetch(endpoint, "/cgi-bin/whoami");
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                answer.lines().last().unwrap_or_default().trim().to_owned()
            })
            .collect();
        assert_eq!(served.len(), 2, "both Instances serve through the load balancer: {served:?}");
    });
}

#[test]
fn up_refuses_invalid_manifests_before_starting_anything() {
    let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["up", "-f", "tests/fixtures/broken.yaml", "--listen", "127.0.0.1:0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cloud up");
    assert_eq!(output.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains("tests/fixtures/broken.yaml:6:3: spec.imgae"), "{errors}");
    assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "nothing started");
}

#[test]
fn up_waits_for_the_scaling_group_behind_its_load_balancer() {
    up_serves_and_down_removes("examples/autoscaling/", "loadbalancer/autoscaled ready at ", |endpoint| {
        let answer = fetch(endpoint, "/cgi-bin/burn?ms=10");
        assert!(answer.starts_with("HTTP/1.1 200"), "the member answers through the load balancer: {answer}");
    });
}

#[test]
fn up_waits_for_databases_and_names_their_credentials() {
    up_serves_and_down_removes("examples/database/", "manageddatabase/orders ready at ", |endpoint| {
        assert!(
            endpoint.starts_with("127.0.0.1:") && endpoint.ends_with("(credentials: secret/orders-credentials)"),
            "{endpoint}"
        );
        let port: u16 = endpoint
            .trim_start_matches("127.0.0.1:")
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "PostgreSQL listens on {endpoint}");
    });
}

/// Ctrl-C as soon as the control plane says it listens, before anything is Ready: the
/// signal is not lost (and does not kill the process), and `--down` still removes everything.
#[test]
fn an_interrupt_before_anything_is_ready_still_brings_everything_down() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = start_up("examples/web-lb/", &data);
    let label = up.label.clone();
    let mut lines = BufReader::new(up.child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("text");
    assert!(first.starts_with("control plane listening on"), "{first}");
    let _ = Command::new("kill").args(["-INT", &up.child.id().to_string()]).status();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = up.child.wait().expect("wait");
    assert!(status.success(), "{status:?}: {rest:?}");
    assert!(rest.iter().any(|line| line.contains("removing what was applied")), "{rest:?}");
    let left =
        Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={label}")]).output().expect("docker ps");
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "--down removes the containers");
}
