//! `cloud up -f PATH`: the whole thing in one command. Validates the manifests, starts an
//! embedded control plane (SQLite in the data directory, controllers on), applies, shows
//! progress until every object a controller runs is Ready,
//! prints the endpoints, and keeps serving until Ctrl-C — with `--down`, Ctrl-C first removes
//! everything it applied. While it runs, `cloud get` and `cloud describe` in another terminal
//! talk to it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use minicloud_cli::{
    condition, init_logging, parse_duration, satisfied, say, say_err, show, shutdown_signal, write_data, Goal,
    LogFormat,
};
use minicloud_client::Client;
use minicloud_server::composition::{self, ControllerSettings, ServerConfig};
use minicloud_server::store::sql;

use crate::serve::ServerArgs;

/// Back to the start of the line, and erase it (the progress line is written again).
const CLEAR_LINE: &str = "\r\x1b[2K";

/// Options of `cloud up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Manifest files, directories, or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Include subdirectories of directories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// On Ctrl-C, delete what was applied (and its containers) before stopping.
    #[arg(long)]
    pub down: bool,
    /// How long to wait for everything to become Ready before saying what is missing.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs `cloud up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Nothing starts unless the options and every manifest are valid.
    args.server.check()?;
    let manifests = minicloud_cli::load_manifests(&args.files, args.recursive)?;
    // From here on Ctrl-C and SIGTERM lead to the orderly stop below, whenever they come.
    let mut interrupted = std::pin::pin!(shutdown_signal());
    if args.server.log_format == LogFormat::Json || std::env::var_os("RUST_LOG").is_some() {
        init_logging(args.server.log_format);
    }
    let database_url = match &args.server.database_url {
        Some(url) => url.clone(),
        None => sql::sqlite_url(&args.server.data_dir.clone().unwrap_or_else(sql::default_data_dir)),
    };
    let config = ServerConfig {
        listen: args.server.listen,
        database_url,
        data_dir: args.server.data_dir.clone().unwrap_or_else(sql::default_data_dir),
        secret_key_file: args.server.secret_key_file.clone(),
        limits: args.server.limits(),
        controllers: Some(ControllerSettings {
            state_dir: args.server.data_dir.clone().unwrap_or_else(sql::default_data_dir),
            extra_labels: args.server.container_labels.iter().cloned().collect(),
            haproxy_image: Some(args.server.haproxy_image.clone()),
            runtime: minicloud_controllers::runtime::RuntimeConfig {
                workers: args.server.workers,
                resync: args.server.resync,
                ..Default::default()
            },
        }),
        usage_interval: args.server.usage_interval,
        auth: args.server.auth(),
        new_admin_token: args.server.new_admin_token,
        allowed_hosts: args.server.allowed_hosts.clone(),
        replica: args.server.replica_id.clone(),
        lease_timing: args.server.lease_timing(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(composition::run(
        config,
        async move {
            let _ = stopped.await;
        },
        move |bound| {
            let _ = bound_tx.send(bound);
        },
    ));
    let (address, internal_token) = match bound_rx.await {
        Ok(bound) => (bound.address, bound.internal_token),
        Err(_) => {
            return Err(server
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r.err().ok_or_else(|| anyhow::anyhow!("the server stopped")))?)
        }
    };
    let authenticated = internal_token.is_some();
    let credentials = minicloud_client::Credentials { token: internal_token, certificate_authority: None };
    let client = Client::with_credentials(&format!("http://{address}"), credentials)?;
    say!("control plane listening on http://{address} (cloud get/describe talk to it)");
    if !authenticated {
        say!(
            "authentication is off: anyone on this machine can use it (cloud up --auth requires tokens; docs/security.md)"
        );
    }

    let applied = minicloud_cli::send_manifests(&client, &manifests, None, false).await?;
    let watched: Vec<(Kind, String, String)> = applied
        .iter()
        .filter_map(|item| Some((Kind::from_kind_name(&item.kind)?, item.namespace.clone(), item.name.clone())))
        .collect();
    let running: Vec<(Kind, String, String)> =
        watched.iter().filter(|(kind, _, _)| RUN.contains(kind)).cloned().collect();
    tokio::select! {
        ready = wait_until_ready(&client, &running, args.timeout) => {
            ready?;
            say!("running; press Ctrl-C to stop{}", if args.down { " and remove everything" } else { "" });
            (&mut interrupted).await;
        }
        () = &mut interrupted => say!("interrupted before everything was Ready"),
    }
    if args.down {
        say!("removing what was applied…");
        for (kind, namespace, name) in watched.iter().rev() {
            match client.delete(*kind, namespace, name).await {
                Ok(_) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => say_err!("error: {error}"),
            }
        }
        for (kind, namespace, name) in &watched {
            let target = vec![format!("{}/{name}", kind.as_str().to_ascii_lowercase())];
            if let Err(error) =
                minicloud_cli::wait_for(&client, &target, "delete", namespace, Duration::from_secs(60)).await
            {
                say_err!("error: {error:#}");
            }
        }
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// Whether the object is Ready (by `cloud wait`'s rule: the condition must be current), and
/// the Ready condition's reason and message.
fn readiness(object: &Object) -> (bool, String) {
    let ready = Goal::Condition { type_: "Ready".into(), status: "True".into() };
    let why = match condition(object, "Ready") {
        Some(found) => {
            let text = |key: &str| found.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
            format!("{}: {}", text("reason"), text("message"))
        }
        None => "waiting for the controller".into(),
    };
    (satisfied(object, &ready), why)
}

/// The kinds a controller runs; `cloud up` waits for them (Secrets and Policies are data, taking
/// effect when stored).
const RUN: [Kind; 7] = composition::CONTROLLED_KINDS;

fn endpoints(object: &Object) -> Vec<String> {
    // A stack: its outputs.
    if let Some(outputs) = object.status.get("outputs").and_then(Value::as_object) {
        return outputs.iter().map(|(name, value)| format!("{name}={}", value.as_str().unwrap_or_default())).collect();
    }
    // A database: where it listens, and where its credentials are.
    if let Some(endpoint) = object.status.get("endpoint") {
        let host = endpoint.get("host").and_then(Value::as_str).unwrap_or("127.0.0.1");
        let port = endpoint.get("port").map(Value::to_string).unwrap_or_default();
        let secret = object.status.get("credentialsSecret").and_then(Value::as_str).unwrap_or("-");
        return vec![format!("{host}:{port} (credentials: secret/{secret})")];
    }
    if let Some(endpoints) = object.status.get("endpoints").and_then(Value::as_object) {
        return endpoints.values().filter_map(|url| url.as_str().map(str::to_owned)).collect();
    }
    // A route: the URLs it answers on, per parent listener.
    if let Some(parents) = object.status.get("parents").and_then(Value::as_array) {
        let mut urls: Vec<String> = parents
            .iter()
            .filter_map(|parent| parent.get("urls").and_then(Value::as_object))
            .flat_map(|urls| urls.values().filter_map(|url| url.as_str().map(str::to_owned)))
            .collect();
        urls.dedup();
        return urls;
    }
    object
        .status
        .get("ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|port| Some(format!("http://{}:{}", port.get("hostIP")?.as_str()?, port.get("hostPort")?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Shows progress until every object a controller runs is Ready (or the timeout passes), then
/// prints where each one is reachable.
async fn wait_until_ready(
    client: &Client,
    objects: &[(Kind, String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let live = std::io::stdout().is_terminal();
    let mut reported: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut last_line = String::new();
    loop {
        let mut waiting = Vec::new();
        for (kind, namespace, name) in objects {
            let object = client.get(*kind, namespace, name).await?;
            let (ready, why) = readiness(&object);
            let label = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
            if ready {
                if reported.insert((label.clone(), namespace.clone()), true) != Some(true) {
                    if live {
                        write_data(CLEAR_LINE);
                    }
                    let at = endpoints(&object);
                    let place = if at.is_empty() { String::new() } else { format!(" at {}", at.join(", ")) };
                    say!("{label} ready{place}");
                }
            } else {
                waiting.push(format!("{label} ({why})"));
            }
        }
        if waiting.is_empty() {
            if objects.is_empty() {
                say!("nothing to wait for");
            } else {
                say!("all {} object(s) ready after {:.1}s", objects.len(), started.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        let line = format!("waiting for {} of {}: {}", waiting.len(), objects.len(), waiting.join("; "));
        if live {
            let width = 160;
            let shown: String = line.chars().take(width).collect();
            write_data(CLEAR_LINE);
            show!("{shown}");
            let _ = std::io::stdout().flush();
        } else if line != last_line {
            say!("{line}");
        }
        last_line = line;
        if started.elapsed() > timeout {
            if live {
                say!();
            }
            say_err!("not everything is Ready after {timeout:?}; still serving — see `cloud describe` for details");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
