//! The layering the crate exists for: controllers reach the store only through the `Store`
//! trait and the world only through drivers, so neither this crate nor anything it depends on
//! may bring a SQL driver, an HTTP server framework or an HTTP client.

use std::process::Command;

const FORBIDDEN: [&str; 4] = ["sqlx", "axum", "reqwest", "tower-http"];

#[test]
fn no_sql_or_http_stack_among_the_dependencies() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).expect("manifest");
    for name in FORBIDDEN {
        assert!(
            !manifest.lines().any(|line| line.trim_start().starts_with(name)),
            "controllers/Cargo.toml must not depend on {name}"
        );
    }
    // Transitively either: the resolved graph of this crate's normal dependencies.
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "minicloud-controllers",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(output.status.success(), "cargo tree: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8_lossy(&output.stdout);
    for name in FORBIDDEN {
        let found: Vec<&str> = tree.lines().filter(|line| line.split_whitespace().next() == Some(name)).collect();
        assert!(found.is_empty(), "minicloud-controllers pulls in {name}: {found:?}");
    }
}
