//! Console benchmark with the real Docker engine and the real `cloud server` (release build),
//! each figure next to its baseline measured in the same run:
//!
//! - the usage sampler's cost: CPU used by the Docker engine (dockerd, containerd and the
//!   containers' shims) and by `cloud server` over 30 s with 50 Ready Instances, sampled every
//!   5 s, against the same 30 s with sampling off (an hour between rounds); and how often each
//!   Instance actually got a point (a round of 50 takes longer than 5 s);
//! - `docker stats --no-stream` of the same 50 containers, the engine's own tool, as reference;
//! - the server's rendering of the console's pages with 1,000 Instances (list, summary,
//!   activity, the template gallery and a template's form), against a JSON list of the same
//!   objects from the API;
//! - installing a template from the gallery (the form's post, as the Install button sends it)
//!   until `cloud wait` sees the stack Ready, against `cloud templates install` then the same
//!   `cloud wait`, alternately, three times each.
//!
//! Run: `cargo bench --bench console` (needs `scripts/local-images.sh web`). Everything it
//! starts carries `minicloud.dev/test=bench-...` and is removed at the end.

mod common;

use std::time::{Duration, Instant};

use common::{apply, cpu_ticks, docker, median, ms, start_server_with, RemoveLabelled, Server};
use serde_json::{json, Value};

const IMAGE: &str = "minicloud/web:local";
const SAMPLED: usize = 50;
const LISTED: usize = 1000;
const WINDOW: Duration = Duration::from_secs(30);
const USER_HZ: f64 = 100.0;

fn instance(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": IMAGE}
    })
}

/// The processes of the Docker engine: dockerd, containerd and every shim.
fn engine_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if matches!(name.trim(), "dockerd" | "containerd") || name.starts_with("containerd-shim") {
            pids.push(pid);
        }
    }
    pids
}

/// CPU seconds the engine's processes and the server use over [`WINDOW`].
fn cpu_over_window(server: &Server) -> (f64, f64) {
    let pids = engine_pids();
    let engine_before: u64 = pids.iter().map(|pid| cpu_ticks(*pid)).sum();
    let server_before = cpu_ticks(server.child.id());
    std::thread::sleep(WINDOW);
    let engine_after: u64 = pids.iter().map(|pid| cpu_ticks(*pid)).sum();
    let server_after = cpu_ticks(server.child.id());
    (
        engine_after.saturating_sub(engine_before) as f64 / USER_HZ,
        server_after.saturating_sub(server_before) as f64 / USER_HZ,
    )
}

fn percent(seconds: f64) -> String {
    format!("{:.1}%", seconds / WINDOW.as_secs_f64() * 100.0)
}

fn get_json(http: &reqwest::blocking::Client, url: &str) -> Value {
    http.get(url).send().expect("get").json().expect("json")
}

/// Waits until `count` Instances of the namespace are Ready.
fn wait_ready(http: &reqwest::blocking::Client, server: &Server, namespace: &str, count: usize) {
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/instances", server.url);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = get_json(http, &url);
        let ready = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|object| object["status"]["phase"] == "Running" && object["status"]["containerId"].is_string())
            .count();
        if ready == count {
            return;
        }
        assert!(Instant::now() < deadline, "{ready} of {count} Instances running");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Points in an Instance's memory chart.
fn chart_points(http: &reqwest::blocking::Client, server: &Server, namespace: &str, name: &str) -> usize {
    let url = format!("{}/ui/namespaces/{namespace}/instances/{name}?fragment=1", server.url);
    let page = http.get(url).send().expect("page").text().expect("text");
    page.split("id=\"memory-chart\" data-points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

/// The median time of five GETs of `url` (the body read whole); its size.
fn timed_get(http: &reqwest::blocking::Client, url: &str) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let body = http.get(url).send().expect("get").bytes().expect("body");
        times.push(started.elapsed());
        size = body.len();
    }
    (median(times), size)
}

fn main() {
    let run = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let label = format!("minicloud.dev/test={run}");
    let data = tempfile::tempdir().expect("tempdir");
    let _remove = RemoveLabelled(label.clone());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("client");

    println!("| what | minicloud | baseline | ratio |");
    println!("|---|---|---|---|");

    // Sampling off: one round at start (before any Instance), the next an hour later.
    let quiet = start_server_with(data.path(), &label, &["--usage-interval", "1h"]);
    apply(&http, &quiet, (0..SAMPLED).map(|i| instance("sampled", &format!("web-{i}"))).collect());
    wait_ready(&http, &quiet, "sampled", SAMPLED);
    std::thread::sleep(Duration::from_secs(5));
    let (engine_off, server_off) = cpu_over_window(&quiet);
    drop(quiet);

    // The same containers, adopted by a server sampling every 5 s.
    let sampling = start_server_with(data.path(), &label, &["--usage-interval", "5s"]);
    wait_ready(&http, &sampling, "sampled", SAMPLED);
    std::thread::sleep(Duration::from_secs(15));
    let points_before = chart_points(&http, &sampling, "sampled", "web-0");
    let (engine_on, server_on) = cpu_over_window(&sampling);
    let points_after = chart_points(&http, &sampling, "sampled", "web-0");
    let gained = points_after.saturating_sub(points_before);
    println!(
        "| engine CPU (dockerd, containerd, shims), {SAMPLED} Instances sampled every 5 s, over {}s | {} of one core | {} with sampling off | +{:.1} points |",
        WINDOW.as_secs(),
        percent(engine_on),
        percent(engine_off),
        (engine_on - engine_off) / WINDOW.as_secs_f64() * 100.0,
    );
    println!(
        "| `cloud server` CPU, same | {} of one core | {} with sampling off | +{:.1} points |",
        percent(server_on),
        percent(server_off),
        (server_on - server_off) / WINDOW.as_secs_f64() * 100.0,
    );
    let interval = if gained > 0 { format!("{:.1} s", WINDOW.as_secs_f64() / gained as f64) } else { "-".into() };
    println!(
        "| points per Instance over {}s (one per round) | {gained} (one every {interval}) | {} at 5 s | — |",
        WINDOW.as_secs(),
        WINDOW.as_secs() / 5,
    );
    // The engine's own tool, once over the same containers.
    let containers: Vec<String> =
        docker(&["ps", "-q", "--filter", &format!("label={label}")]).lines().map(str::to_owned).collect();
    let pids = engine_pids();
    let before: u64 = pids.iter().map(|pid| cpu_ticks(*pid)).sum();
    let started = Instant::now();
    let mut arguments = vec!["stats", "--no-stream", "--format", "{{.Container}}"];
    arguments.extend(containers.iter().map(String::as_str));
    docker(&arguments);
    let took = started.elapsed();
    let used = pids.iter().map(|pid| cpu_ticks(*pid)).sum::<u64>().saturating_sub(before) as f64 / USER_HZ;
    println!(
        "| reference: `docker stats --no-stream` of the {} containers once | {} | engine CPU {:.2} s | — |",
        containers.len(),
        ms(took),
        used,
    );
    drop(sampling);
    common::remove_labelled(&label);

    // Rendering with 1,000 Instances (no controllers: only the pages are measured).
    let pages = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(pages.path(), &label, &["--no-controllers"]);
    for chunk in (0..LISTED).collect::<Vec<_>>().chunks(250) {
        apply(&http, &server, chunk.iter().map(|i| instance("listed", &format!("web-{i:04}"))).collect());
    }
    let (list_json, json_size) =
        timed_get(&http, &format!("{}/apis/minicloud.dev/v1/namespaces/listed/instances", server.url));
    for (what, path) in [
        ("Instance list page", "/ui/instances"),
        ("summary page", "/ui"),
        ("activity page", "/ui/events"),
        ("template gallery", "/ui/templates"),
        ("template form", "/ui/templates/static-site"),
    ] {
        let (took, size) = timed_get(&http, &format!("{}{path}", server.url));
        println!(
            "| console {what} with {LISTED} Instances, served whole ({} KB) | {} | API list as JSON ({} KB): {} | {:.2}x |",
            size / 1024,
            ms(took),
            json_size / 1024,
            ms(list_json),
            took.as_secs_f64() / list_json.as_secs_f64(),
        );
    }
    drop(server);

    // Installing a template: the gallery's Install against the CLI, each followed by `cloud wait`.
    let installs = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(installs.path(), &label, &[]);
    let form = http.get(format!("{}/ui/templates/static-site", server.url)).send().expect("form").text().expect("html");
    let marker = "name=\"csrf\" value=\"";
    let start = form.find(marker).expect("a form token") + marker.len();
    let token = form[start..].split('"').next().expect("token").to_owned();
    let no_redirects =
        reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let cloud = |arguments: &[&str]| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(["--server", &server.url])
            .args(arguments)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("cloud");
        assert!(status.success(), "cloud {arguments:?}");
    };
    let wait = |stack: &str| {
        cloud(&["wait", &format!("stack/{stack}"), "-n", "gallery", "--for", "condition=Ready", "--timeout", "180s"])
    };
    let (mut console, mut cli) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let stack = format!("console-{round}");
        let started = Instant::now();
        let answer = no_redirects
            .post(format!("{}/ui/templates/static-site", server.url))
            .form(&[
                ("csrf", token.as_str()),
                ("stack", stack.as_str()),
                ("namespace", "gallery"),
                ("value.replicas", "1"),
                ("intent", "install"),
            ])
            .send()
            .expect("install");
        assert_eq!(answer.status(), reqwest::StatusCode::SEE_OTHER, "the install redirects to the stack");
        wait(&stack);
        console.push(started.elapsed());
        let stack = format!("cli-{round}");
        let started = Instant::now();
        cloud(&["templates", "install", "static-site", &stack, "-n", "gallery", "--set", "replicas=1"]);
        wait(&stack);
        cli.push(started.elapsed());
    }
    let (console, cli) = (median(console), median(cli));
    println!(
        "| static-site (1 member + load balancer) installed from the gallery → `cloud wait` sees it Ready, median of 3 | {} | `cloud templates install` → `cloud wait`: {} | {:.2}x |",
        ms(console),
        ms(cli),
        console.as_secs_f64() / cli.as_secs_f64(),
    );
}
