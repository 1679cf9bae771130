//! `cloud up` end to end with the real engine: validate, start, apply, wait, print the
//! endpoint (which serves), and with `--down` remove everything on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn up_serves_the_example_and_down_removes_it() {
    let run = format!("up-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let data = tempfile::tempdir().expect("tempdir");
    let label = format!("minicloud.dev/test={run}");
    let mut up = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["up", "-f", "examples/hello/", "--down", "--listen", "127.0.0.1:0", "--container-label", &label])
        .arg("--data-dir")
        .arg(data.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cloud up");
    let (sender, receiver) = std::sync::mpsc::channel();
    let stdout = up.stdout.take().expect("stdout");
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
            let _ = up.kill();
            panic!("cloud up printed no endpoint: {lines:?}")
        });
        if let Some(address) = line.strip_prefix("instance/hello ready at ") {
            endpoint = Some(address.to_owned());
        }
        lines.push(line);
    }
    println!("cloud up → endpoint printed: {:?}", started.elapsed());
    let endpoint = endpoint.unwrap_or_default();
    let address = endpoint.trim_start_matches("http://").to_owned();
    let page = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).expect("connect to the endpoint");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    };
    assert!(page.contains("Hello from minicloud"), "{endpoint} serves the example: {page}");
    assert!(lines[0].starts_with("control plane listening on http://127.0.0.1:"), "{lines:?}");

    let _ = Command::new("kill").args(["-INT", &up.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = up.try_wait().expect("wait") {
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
