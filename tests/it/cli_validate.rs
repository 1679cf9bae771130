//! `cloud validate` end to end: the real binary on the examples, on a broken manifest (every
//! problem as file:line:col: path: message), and on hostile input (no panic, bounded time).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cloud(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cloud");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).ok();
    }
    child.wait_with_output().expect("cloud output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn examples_are_valid() {
    let output = cloud(&["validate", "-f", "examples/"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = cloud(&["validate", "-R", "-f", "examples/"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("instance/hello valid (examples/hello/instance.yaml:3)"), "{stdout}");
    assert!(stdout.contains("20 object(s) valid"), "{stdout}");
}

#[test]
fn every_problem_is_reported_with_its_position() {
    let output = cloud(&["validate", "-f", "tests/fixtures/broken.yaml"], None);
    assert_eq!(output.status.code(), Some(1));
    let expected = [
        "tests/fixtures/broken.yaml:4:9: metadata.name: \"Web_1\" is not a DNS-1123 label",
        "tests/fixtures/broken.yaml:5:1: spec.image: required field is missing",
        "tests/fixtures/broken.yaml:6:3: spec.imgae: unknown field `imgae`; did you mean `image`?",
        "tests/fixtures/broken.yaml:8:22: spec.ports[0].containerPort: 70000 is greater than the maximum of 65535",
        "tests/fixtures/broken.yaml:9:18: spec.restartPolicy: \"Sometimes\" is not one of \"Always\", \"OnFailure\", \"Never\"",
        "tests/fixtures/broken.yaml:16:16: spec.minReplicas: minReplicas (5) is greater than maxReplicas (2)",
        "tests/fixtures/broken.yaml:37:7: kind: unknown kind \"Databse\"",
    ];
    let errors = stderr(&output);
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{errors}");
    for (line, prefix) in lines.iter().zip(expected) {
        assert!(line.starts_with(prefix), "expected {prefix:?}\n     got {line:?}");
    }
    assert!(lines[expected.len()].contains("7 problem(s) found; nothing was changed"));
}

#[test]
fn stdin_and_cross_document_references() {
    let manifest = b"apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata: {name: creds}\nspec: {stringData: {token: x}}\n---\napiVersion: minicloud.dev/v1\nkind: Instance\nmetadata: {name: app}\nspec:\n  image: minicloud/web:local\n  env:\n    - name: TOKEN\n      valueFrom: {secretKeyRef: {name: creds, key: passwd}}\n---\napiVersion: minicloud.dev/v1\nkind: Secret\nmetadata: {name: creds}\nspec: {}\n";
    let output = cloud(&["validate", "-f", "-"], Some(manifest));
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    assert!(errors.contains("<stdin>:13:52: spec.env[0].valueFrom.secretKeyRef.key: secret/creds has no key \"passwd\"; its keys are: token"), "{errors}");
    assert!(
        errors.contains("<stdin>:17:18: metadata.name: secret/creds is declared twice (first at <stdin>:1:1)"),
        "{errors}"
    );
}

#[test]
fn missing_files_and_empty_directories_are_clear() {
    let output = cloud(&["validate", "-f", "does-not-exist.yaml"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("does-not-exist.yaml: cannot read"), "{}", stderr(&output));
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(directory.path().join("nested")).expect("mkdir");
    std::fs::write(directory.path().join("nested/a.yaml"), "kind: Secret\n").expect("write");
    let path = directory.path().to_str().expect("utf-8 path");
    let output = cloud(&["validate", "-f", path], None);
    assert!(stderr(&output).contains("add -R to include subdirectories"), "{}", stderr(&output));
}

/// Hostile and malformed input: each is refused with a message, exit status 1 (never a panic's
/// 101), quickly.
#[test]
fn hostile_input_is_refused_cleanly() {
    let mut bomb = String::from(
        "apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata: {name: bomb}\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n",
    );
    for level in 1..12 {
        let previous = level - 1;
        bomb.push_str(&format!("x{level}: &x{level} [{}]\n", vec![format!("*x{previous}"); 10].join(", ")));
    }
    let deep = format!("a: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!("apiVersion: minicloud.dev/v1\n# {}\n", "x".repeat(17 * 1024 * 1024));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", b"apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata: {name: [web\n".to_vec(), "<stdin>:"),
        (
            "wrong type",
            b"apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata: {name: web}\nspec: {image: [1, 2]}\n".to_vec(),
            "<stdin>:4:15: spec.image: ",
        ),
        ("not a mapping", b"- just\n- a list\n".to_vec(), "a manifest must be a mapping"),
        ("scalar document", b"hello\n".to_vec(), "a manifest must be a mapping"),
        ("alias bomb", bomb.into_bytes(), "expands to more than"),
        ("deep nesting", deep.into_bytes(), "<stdin>:"),
        ("huge", huge.into_bytes(), "larger than 16 MiB"),
        ("binary", vec![0xff, 0xfe, 0x00, 0x41], "valid UTF-8"),
        (
            "path traversal name",
            b"apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata: {name: ../../etc}\nspec: {}\n".to_vec(),
            "metadata.name: \"../../etc\" is not a DNS-1123 label",
        ),
        (
            "custom tag",
            b"apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata: {name: x}\nspec: !evil {}\n".to_vec(),
            "unsupported YAML tag",
        ),
    ];
    for (name, input, expected) in cases {
        let started = Instant::now();
        let output = cloud(&["validate", "-f", "-"], Some(&input));
        assert_eq!(output.status.code(), Some(1), "{name}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{name}: expected {expected:?} in {}", stderr(&output));
        assert!(started.elapsed() < Duration::from_secs(10), "{name} took {:?}", started.elapsed());
    }
}

/// A Stack's resources are rendered with their parameter values and checked as documents of
/// their own kinds; problems point into the Stack's text.
#[test]
fn stack_resources_are_validated_after_rendering() {
    let output = cloud(&["validate", "-f", "tests/fixtures/broken-stack.yaml"], None);
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    for expected in [
        "broken-stack.yaml:21:17: spec.resources[0].metadata.labels.tier: label value \"Front End\" is invalid",
        "broken-stack.yaml:28:13: spec.resources[0].spec.template.spec.imgae: unknown field `imgae`; did you mean `image`?",
        "broken-stack.yaml:32:15: spec.resources[1].metadata.name: ${missing} names no declared parameter",
    ] {
        assert!(errors.contains(expected), "expected {expected:?} in\n{errors}");
    }
    // With the typos fixed, the rendered value of `${replicas}` (12) is checked against the
    // group's bounds.
    let fixed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/broken-stack.yaml"))
        .expect("fixture")
        .replace("imgae", "image")
        .replace("Front End", "front")
        .replace("\"${missing}\"", "api");
    let output = cloud(&["validate", "-f", "-"], Some(fixed.as_bytes()));
    let errors = stderr(&output);
    assert!(
        errors.contains("<stdin>:25:26: spec.resources[0].spec.desiredReplicas: desiredReplicas (12) must lie between minReplicas (1) and maxReplicas (10)"),
        "{errors}"
    );
}

/// A Stack whose 1 MiB parameter is substituted 1.5 million times (a 7 MB file).
fn stack_expansion_bomb() -> String {
    format!(
        "apiVersion: minicloud.dev/v1\nkind: Stack\nmetadata: {{name: bomb}}\nspec:\n  parameters:\n    - name: p\n      default: \"{}\"\n  resources:\n    - apiVersion: minicloud.dev/v1\n      kind: Instance\n      metadata: {{name: web}}\n      spec: {{image: \"{}\"}}\n",
        "x".repeat(1 << 20),
        "${p}".repeat(1_500_000)
    )
}

/// Files that never end, directories that contain themselves, and bombs built on one large
/// value: each is refused with a clear message, quickly and in bounded memory.
#[test]
fn hostile_files_are_bounded() {
    let within = |name: &str, args: &[&str], stdin: Option<&[u8]>, expected: &str| {
        let started = Instant::now();
        let output = cloud(args, stdin);
        assert_eq!(output.status.code(), Some(1), "{name}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{name}: expected {expected:?} in {}", stderr(&output));
        assert!(started.elapsed() < Duration::from_secs(10), "{name} took {:?}", started.elapsed());
    };
    within("/dev/zero", &["validate", "-f", "/dev/zero"], None, "/dev/zero: file is larger than 16 MiB");
    within("apply /dev/zero", &["apply", "-f", "/dev/zero"], None, "/dev/zero: file is larger than 16 MiB");

    // Two links back to the directory make a naive walk exponential; each is reported once.
    let directory = tempfile::tempdir().expect("tempdir");
    let root = directory.path();
    std::fs::write(
        root.join("web.yaml"),
        "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata: {name: web}\nspec: {image: minicloud/web:local}\n",
    )
    .expect("write manifest");
    std::fs::create_dir(root.join("sub")).expect("subdirectory");
    for (link, target) in [("a", "."), ("b", "."), ("sub/up", "..")] {
        std::os::unix::fs::symlink(target, root.join(link)).expect("symlink");
    }
    let path = root.display().to_string();
    within("symlink loops", &["validate", "-R", "-f", &path], None, "symbolic link loop");
    let output = cloud(&["validate", "-R", "-f", &path], None);
    assert_eq!(stderr(&output).matches("symbolic link loop").count(), 3, "{}", stderr(&output));

    // A pipe without a writer in a directory would block the read forever (a sync loop too).
    let piped = tempfile::tempdir().expect("tempdir");
    let fifo = piped.path().join("never.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let piped_path = piped.path().display().to_string();
    within(
        "a pipe in a directory",
        &["validate", "-f", &piped_path],
        None,
        &format!("{}: is not a regular file", fifo.display()),
    );

    let mut string_bomb = format!(
        "apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata: {{name: s}}\nbig: &big \"{}\"\ncopies: [",
        "x".repeat(1 << 20)
    );
    string_bomb.push_str(&vec!["*big"; 5000].join(", "));
    string_bomb.push_str("]\n");
    within("alias bomb of one string", &["validate", "-f", "-"], Some(string_bomb.as_bytes()), "MiB of text");
    within(
        "stack expansion bomb",
        &["validate", "-f", "-"],
        Some(stack_expansion_bomb().as_bytes()),
        "spec.resources[0]: substituting the parameters would make this resource larger than 1536 KiB",
    );
}
