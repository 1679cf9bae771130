//! The layering the workspace is cut for, checked from the outside so that no crate can
//! quietly grow past it:
//!
//! - **Dependencies.** The resolved graph of each crate's normal dependencies (`cargo tree`)
//!   holds nothing its layer forbids: no SQL driver, HTTP server or HTTP client in the
//!   kinds, the store contract, the shared model or the controllers; no HTTP server, SQL or
//!   server crate in the client and the command line.
//! - **No module cycles.** Inside every crate, the modules under one parent depend on each other
//!   without a cycle (`a` uses `b` and `b` uses `a`, directly or around a longer loop), read
//!   from the `crate::`, `super::` and `self::` paths of the sources; unit-test modules do not
//!   count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const SQL: &[&str] = &["sqlx", "sqlx-core", "libsqlite3-sys", "tokio-postgres"];
const HTTP_SERVER: &[&str] = &["axum", "tower-http"];
/// What only a server is built from (reqwest itself brings tower-http's client middleware).
const SERVER_FRAMEWORK: &[&str] = &["axum"];
const HTTP_CLIENT: &[&str] = &["reqwest"];
const SERVER_CRATES: &[&str] = &["minicloud-server", "minicloud-controllers"];

/// Each crate, and what may never be among its (transitive) normal dependencies.
fn forbidden() -> Vec<(&'static str, Vec<&'static str>)> {
    let all = |lists: &[&[&'static str]]| lists.iter().flat_map(|list| list.iter().copied()).collect::<Vec<_>>();
    vec![
        ("minicloud-crds", all(&[SQL, HTTP_SERVER, HTTP_CLIENT, &["tokio", "hyper"]])),
        ("minicloud-store", all(&[SQL, HTTP_SERVER, HTTP_CLIENT, &["hyper"]])),
        ("minicloud-model", all(&[SQL, HTTP_SERVER, HTTP_CLIENT, &["tokio", "hyper"]])),
        ("minicloud-controllers", all(&[SQL, HTTP_SERVER, HTTP_CLIENT])),
        ("minicloud-queues", all(&[SQL, HTTP_SERVER, HTTP_CLIENT, SERVER_CRATES])),
        ("minicloud-client", all(&[SQL, SERVER_FRAMEWORK, SERVER_CRATES])),
        ("minicloud-cli", all(&[SQL, SERVER_FRAMEWORK, SERVER_CRATES])),
    ]
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The names of the packages among `package`'s normal dependencies, itself included.
fn dependencies(package: &str) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(workspace())
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_crate_depends_on_what_its_layer_forbids() {
    // The check sees what it looks for: the server does have the SQL driver and the framework.
    let server = dependencies("minicloud-server");
    assert!(server.contains("sqlx") && server.contains("axum"), "cargo tree of the server: {server:?}");
    let mut broken = Vec::new();
    for (package, forbidden) in forbidden() {
        let found = dependencies(package);
        assert!(found.contains(package), "cargo tree did not list {package} itself: {found:?}");
        for name in forbidden {
            if found.contains(name) {
                broken.push(format!("{package} depends on {name}"));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// The `src` directory of every crate in the workspace.
fn source_roots() -> Vec<PathBuf> {
    let root = workspace();
    let mut roots = vec![root.join("src")];
    for entry in std::fs::read_dir(&root).expect("workspace") {
        let candidate = entry.expect("entry").path();
        if candidate.join("Cargo.toml").is_file() && candidate.join("src").is_dir() {
            roots.push(candidate.join("src"));
        }
    }
    roots
}

fn rust_files(directory: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

/// `src/api/objects.rs` → `["api", "objects"]`; `lib.rs`, `main.rs` and `mod.rs` name their
/// directory's module. Binaries under `src/bin` are crates of their own.
fn module_of(root: &Path, file: &Path) -> Option<Vec<String>> {
    let relative = file.strip_prefix(root).ok()?.with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if parts.first().is_some_and(|first| first == "bin") {
        return None;
    }
    if parts.last().is_some_and(|last| ["lib", "main", "mod"].contains(&last.as_str())) {
        parts.pop();
    }
    Some(parts)
}

fn is_identifier(part: &str) -> bool {
    !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// The paths a line names through `crate::`, `super::` or `self::`, resolved to absolute
/// module paths (one per item of a `{…}` group), as written: the module they reach is found
/// later, as the longest prefix that is a module.
fn referenced_paths(module: &[String], line: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        for (at, _) in line.match_indices(start) {
            if at > 0 && line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &line[at..];
            let end =
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{')).unwrap_or(rest.len());
            let mut text = &rest[..end];
            let group = text.find('{').map(|open| {
                let inside = &rest[open + 1..];
                let close = inside.find('}').unwrap_or(inside.len());
                text = &rest[..open];
                inside[..close]
                    .split(',')
                    .filter_map(|item| item.trim().split("::").next().map(str::to_owned))
                    .collect::<Vec<_>>()
            });
            let mut base: Vec<String> = Vec::new();
            let mut segments = text.split("::").filter(|part| !part.is_empty()).peekable();
            match segments.peek().copied() {
                Some("crate") => {
                    segments.next();
                }
                _ => {
                    base = module.to_vec();
                    while let Some(&part) = segments.peek() {
                        match part {
                            "super" => {
                                base.pop();
                            }
                            "self" => {}
                            _ => break,
                        }
                        segments.next();
                    }
                }
            }
            base.extend(segments.filter(|part| is_identifier(part)).map(str::to_owned));
            match group {
                Some(items) => found.extend(items.into_iter().filter(|item| is_identifier(item)).map(|item| {
                    let mut path = base.clone();
                    path.push(item);
                    path
                })),
                None => found.push(base),
            }
        }
    }
    found
}

/// Edges between sibling modules: for a file in module `a` naming something in module `b`,
/// the edge between their ancestors just below the deepest module they share.
type SiblingEdges = BTreeMap<Vec<String>, BTreeSet<(String, String)>>;

fn sibling_edges(root: &Path) -> SiblingEdges {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> =
        files.into_iter().filter_map(|file| module_of(root, &file).map(|module| (module, file))).collect();
    let mut edges = SiblingEdges::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("source");
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        for line in code.lines().filter(|line| !line.trim_start().starts_with("//")) {
            for path in referenced_paths(module, line) {
                let Some(target) =
                    (0..=path.len()).rev().map(|length| &path[..length]).find(|prefix| modules.contains_key(*prefix))
                else {
                    continue;
                };
                let shared = module.iter().zip(target).take_while(|(a, b)| a == b).count();
                if shared < module.len() && shared < target.len() {
                    let parent = module[..shared].to_vec();
                    edges.entry(parent).or_default().insert((module[shared].clone(), target[shared].clone()));
                }
            }
        }
    }
    edges
}

/// The cycles among `edges`: each strongly connected group of more than one module.
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reaches = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut frontier = vec![from.clone()];
        while let Some(node) = frontier.pop() {
            for (a, b) in edges {
                if *a == node && seen.insert(b.clone()) {
                    frontier.push(b.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|node| (*node, reaches(node))).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for node in &nodes {
        let group: BTreeSet<String> = nodes
            .iter()
            .filter(|other| reach[*node].contains(**other) && reach[**other].contains(*node))
            .map(|other| (*other).clone())
            .collect();
        if group.len() > 1 && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

#[test]
fn no_module_cycle_inside_any_crate() {
    let mut found = Vec::new();
    for root in source_roots() {
        for (parent, edges) in sibling_edges(&root) {
            for group in cycles(&edges) {
                let uses: Vec<String> = edges
                    .iter()
                    .filter(|(a, b)| group.contains(a) && group.contains(b))
                    .map(|(a, b)| format!("{a} → {b}"))
                    .collect();
                let place = if parent.is_empty() { "the crate root".to_owned() } else { parent.join("::") };
                found.push(format!("{} under {place}: {}", root.display(), uses.join(", ")));
            }
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

/// The checker itself finds what it is for: a cycle of siblings, seen through `super::`,
/// `crate::` and a `{…}` group.
#[test]
fn the_cycle_check_sees_each_way_of_naming_a_module() {
    let module = |path: &str| path.split("::").map(str::to_owned).collect::<Vec<_>>();
    let paths =
        referenced_paths(&module("api::objects"), "use super::{kube, spool::Spool}; let x = crate::ui::page();");
    assert_eq!(paths, [module("ui::page"), module("api::kube"), module("api::spool")]);
    assert_eq!(referenced_paths(&module("a::b"), "use self::c::D;"), [module("a::b::c::D")]);
    let edges: BTreeSet<(String, String)> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let expected: BTreeSet<String> = ["a", "b", "c"].iter().map(|name| name.to_string()).collect();
    assert_eq!(cycles(&edges), [expected]);
}
