//! The `cloud` command line's client side: the commands that talk to a server through
//! [`minicloud_client::Client`] (apply, diff, sync, get, describe, delete, …) and those that
//! work offline (`validate`, `explain`, `config`, `completion`), one module per command. The
//! `cloud` binary adds the commands that run a server in the process (`server`, `up`) and
//! parses the whole command line. Exit status: 0 on success, 1 on any error.
//!
//! Commands print human-readable text only through [`say!`], [`say_err!`] and [`show!`], which
//! escape control characters (a server, a manifest or an event message
//! cannot drive the terminal); machine output goes through [`write_data`].
//!
//! This crate builds without an HTTP server or SQL (no axum, no sqlx): `tests/it/layering.rs`
//! checks it.

/// A line of human-readable output on standard output, control characters escaped.
#[macro_export]
macro_rules! say {
    () => { $crate::write_clean(false, "\n") };
    ($($arg:tt)*) => { $crate::write_clean(false, &format!("{}\n", format_args!($($arg)*))) };
}

/// A line of human-readable output on standard error, control characters escaped.
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => { $crate::write_clean(true, &format!("{}\n", format_args!($($arg)*))) };
}

/// Human-readable output on standard output without a newline, control characters escaped.
#[macro_export]
macro_rules! show {
    ($($arg:tt)*) => { $crate::write_clean(false, &format!($($arg)*)) };
}

mod apply;
mod audit;
mod auth;
mod config;
mod dashboard;
mod db;
mod delete;
mod describe;
mod diff;
mod events;
mod explain;
mod get;
mod kubeconfig;
mod output;
mod process;
mod scale;
mod secret;
mod sync;
mod templates;
mod validate;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use minicloud_client::{Client, ClientError};
use minicloud_crds::{Kind, Object};

pub use apply::{load as load_manifests, send as send_manifests};
pub use get::condition;
pub use output::{write_clean, write_data};
pub use process::{init_logging, shutdown_signal, LogFormat};
pub use sync::{beside_server as sync_beside_server, SyncSettings};
pub use wait::{run as wait_for, satisfied, Goal};

/// The options every command takes: which server, as whom, and where more templates are.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Address of the minicloud server (default: the current context's, else
    /// http://127.0.0.1:7080).
    #[arg(long, global = true, env = "CLOUD_SERVER")]
    server: Option<String>,
    /// The API token to send (default: the current context's; see `cloud config`).
    #[arg(long, global = true, env = "CLOUD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The context of the configuration file to use instead of the current one.
    #[arg(long, global = true, env = "CLOUD_CONTEXT")]
    context: Option<String>,
    /// A PEM file of the authority that signed the server's certificate, when the system does
    /// not trust it (e.g. a self-signed reverse proxy in front of the server).
    #[arg(long, global = true, env = "CLOUD_CERTIFICATE_AUTHORITY")]
    certificate_authority: Option<PathBuf>,
    /// A directory of template bundles to use besides the shipped ones (repeatable; also
    /// CLOUD_TEMPLATES, colon-separated).
    #[arg(long = "templates-dir", global = true)]
    templates_dirs: Vec<PathBuf>,
}

impl GlobalArgs {
    /// Adds the `--templates-dir` directories to the template catalog: call once, before any
    /// command (client or server) reads the catalog.
    pub fn use_template_directories(&self) {
        minicloud_model::templates::add_directories(&self.templates_dirs);
    }
}

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Wide,
    Yaml,
    Json,
    Name,
}

/// The commands of this crate.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests; everything is validated before anything changes.
    Apply {
        /// Manifest files, directories, or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Include subdirectories of directories.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Namespace for objects whose manifest names none.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        set: ApplySetArgs,
    },
    /// Compare manifests with what the server has: create / update (field by field, and
    /// whether containers are replaced) / unchanged, drift (changed outside the manifests),
    /// and with --prune --applyset what would be deleted. Exit 0: no difference, 1: differences,
    /// 2: error.
    Diff {
        /// Manifest files, directories, or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[arg(short = 'R', long)]
        recursive: bool,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        set: ApplySetArgs,
    },
    /// Keep a directory of manifests applied: on every file change and at an interval, apply
    /// it as an applyset with prune (a broken file applies and prunes nothing). Its state:
    /// `cloud get syncs`, `cloud describe sync NAME`.
    Sync(sync::SyncArgs),
    /// List objects: `cloud get instances`, `cloud get lb web -o yaml`, `cloud get inst -w`.
    Get {
        /// A kind (`instance`, `instances`, `inst`, ...) and optional names, or KIND/NAME items.
        #[arg(required = true, num_args = 1..)]
        targets: Vec<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Label selector, e.g. `app=web,tier!=db`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputFormat>,
        /// After listing, keep printing changes.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show an object in detail: metadata, spec, status, conditions and recent events.
    Describe {
        /// KIND NAME or KIND/NAME.
        #[arg(required = true, num_args = 1..)]
        targets: Vec<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Delete objects by name or by the manifests that declared them.
    Delete {
        /// KIND NAME... or KIND/NAME items.
        targets: Vec<String>,
        /// Delete the objects declared in these manifests.
        #[arg(short = 'f', long = "filename", num_args = 1..)]
        files: Vec<PathBuf>,
        #[arg(short = 'R', long)]
        recursive: bool,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Wait until the objects are gone (finalizers done).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 30s, 2m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// Databases only: delete without the final snapshot that `deletionPolicy: Snapshot`
        /// takes (the way out when it cannot be taken; recorded in the audit log).
        #[arg(long)]
        skip_final_snapshot: bool,
    },
    /// Set a scaling group's desired count: `cloud scale sg web --replicas 5` (within its
    /// minReplicas..maxReplicas).
    Scale {
        /// KIND/NAME items (or KIND NAME...).
        #[arg(required = true, num_args = 1..)]
        targets: Vec<String>,
        /// The desired count.
        #[arg(long)]
        replicas: u32,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// The templates marketplace: `cloud templates list`, `show NAME`, `render NAME STACK`,
    /// `install NAME STACK --set k=v`, `vet DIR`.
    #[command(subcommand)]
    Templates(templates::TemplatesCommand),
    /// Managed databases: `cloud db backup NAME`, `cloud db backups NAME`, `cloud db restore
    /// NAME --backup ID`.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Secrets: `cloud secret reveal NAME KEY` prints one value, `cloud secret rotate-key`
    /// re-encrypts every Secret under a new key.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Wait for a condition (`--for condition=Ready`, `--for condition=Ready=false`) or deletion
    /// (`--for delete`).
    Wait {
        /// KIND/NAME items (or KIND NAME).
        #[arg(required = true, num_args = 1..)]
        targets: Vec<String>,
        #[arg(long = "for", required = true)]
        condition: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// e.g. 30s, 2m, 1h.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print an Instance's container output: `cloud logs hello -f --tail 20`.
    Logs {
        /// NAME or instance/NAME.
        target: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Keep printing new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Document a kind or one of its fields: `cloud explain instance.spec.healthCheck`.
    Explain {
        /// KIND or KIND.field.path.
        target: String,
    },
    /// List events, newest last: `cloud events --for instance/web`.
    Events {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only the events of KIND/NAME.
        #[arg(long = "for")]
        object: Option<String>,
        /// Keep printing new events.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Check manifests without a server: YAML, schema and semantic rules, with file:line:col
    /// for every problem.
    Validate {
        /// Manifest files, directories, or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Include subdirectories of directories.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// API tokens and identity: `cloud auth token create NAME --role edit`, `cloud auth token
    /// list`, `cloud auth token revoke NAME`, `cloud auth whoami`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// The audit log: who changed what, and every refused request (role admin).
    Audit {
        /// Only entries younger than this, e.g. 1h, 30m, 7d.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// At most this many entries (the newest).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(short = 'o', long, value_parser = ["json"])]
        output: Option<String>,
    },
    /// The client's contexts (server + token) in ~/.config/minicloud/config: `set-context`,
    /// `use-context`, `get-contexts`, `current-context`, `delete-context`.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print the address of the web console (`/ui`) of this server; `--open` starts a browser
    /// on it when the machine has one.
    Dashboard {
        #[arg(long)]
        open: bool,
    },
    /// Print a kubeconfig for this server, for kubectl and Kubernetes client libraries:
    /// `cloud kubeconfig > ~/.kube/minicloud.yaml; export KUBECONFIG=~/.kube/minicloud.yaml`.
    Kubeconfig {
        /// The namespace kubectl uses when none is named.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Print a shell completion script: `source <(cloud completion bash)`.
    Completion { shell: clap_complete::Shell },
    /// Print the client's and the server's version.
    Version,
    /// Print the OpenAPI document (as checked in at docs/openapi.json).
    #[command(hide = true)]
    Openapi,
}

/// Parses `30s`, `2m`, `1h`, `7d`, `500ms` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}: write e.g. 30s, 2m, 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(format!("invalid duration unit in {text:?}: use ms, s, m, h or d")),
    };
    // Deadlines are computed as now + duration: keep them far from any overflow.
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!("duration {text:?} is longer than a year (365d)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The longest duration an option accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a kind as typed on the command line.
pub fn parse_kind(text: &str) -> anyhow::Result<Kind> {
    Kind::from_cli_name(text).ok_or_else(|| {
        let names: Vec<String> = Kind::ALL
            .iter()
            .map(|kind| {
                let mut names = vec![kind.as_str().to_ascii_lowercase(), kind.plural().to_owned()];
                names.extend(kind.short_names().iter().map(|name| name.to_string()));
                names.join("|")
            })
            .collect();
        anyhow::anyhow!("unknown resource type {text:?}; use one of: {}", names.join(", "))
    })
}

/// Resolves `KIND NAME...` or `KIND/NAME...` arguments into (kind, name) pairs; a bare KIND
/// gives a pair with no name.
pub fn parse_targets(targets: &[String]) -> anyhow::Result<Vec<(Kind, Option<String>)>> {
    let Some(first) = targets.first() else { anyhow::bail!("name a resource type, e.g. `instances`") };
    if first.contains('/') {
        return targets
            .iter()
            .map(|target| match target.split_once('/') {
                Some((kind, name)) if !name.is_empty() => Ok((parse_kind(kind)?, Some(name.to_owned()))),
                _ => anyhow::bail!("{target:?}: write KIND/NAME, e.g. instance/web"),
            })
            .collect();
    }
    let kind = parse_kind(first)?;
    if targets.len() == 1 {
        return Ok(vec![(kind, None)]);
    }
    targets[1..]
        .iter()
        .map(|name| {
            if name.contains('/') {
                anyhow::bail!("{name:?}: mix neither KIND NAME and KIND/NAME forms");
            }
            Ok((kind, Some(name.clone())))
        })
        .collect()
}

/// What a read-modify-write of one object did.
pub enum Modified {
    /// Nothing needed changing.
    Unchanged(Object),
    /// Written.
    Written(Object),
}

/// Reads an object, lets `change` modify it (returning false when nothing needs to change,
/// or an error that stops everything), and writes it back with its resourceVersion; a write
/// that lost a race (409) starts over, a few times.
pub async fn modify(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    mut change: impl FnMut(&mut Object) -> anyhow::Result<bool>,
) -> anyhow::Result<Modified> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let mut object = client.get(kind, namespace, name).await?;
        if !change(&mut object)? {
            return Ok(Modified::Unchanged(object));
        }
        match client.replace(&object).await {
            Ok(written) => return Ok(Modified::Written(written)),
            Err(ClientError::Api { status: 409, .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    anyhow::bail!("{}/{name} kept changing while it was being written; try again", kind.as_str().to_ascii_lowercase())
}

/// The applyset options `apply` and `diff` share.
#[derive(Debug, clap::Args)]
pub struct ApplySetArgs {
    /// Keep the inventory of what this directory applies under this name (an ApplySet on
    /// the server; in -n's namespace, default `default`).
    #[arg(long)]
    applyset: Option<String>,
    /// Delete the applyset's members that the manifests no longer hold (needs --applyset).
    #[arg(long, requires = "applyset")]
    prune: bool,
    /// Prune databases too (they follow their deletionPolicy); otherwise they are kept and
    /// reported.
    #[arg(long, requires = "prune")]
    prune_stateful: bool,
}

impl ApplySetArgs {
    /// The options to send, when an applyset is named.
    fn options(self, namespace: Option<&str>) -> Option<minicloud_client::ApplySetOptions> {
        Some(minicloud_client::ApplySetOptions {
            name: self.applyset?,
            namespace: namespace.unwrap_or(minicloud_crds::DEFAULT_NAMESPACE).to_owned(),
            prune: self.prune,
            prune_stateful: self.prune_stateful,
        })
    }
}

/// Runs `command` and returns the process exit code (0 success, 1 error; `diff`: 1 when
/// something differs, 2 on error). `whole` is the whole command line's definition, for
/// `completion`.
pub async fn run(global: GlobalArgs, command: Command, whole: impl FnOnce() -> clap::Command) -> ExitCode {
    let offline = matches!(
        command,
        Command::Config(_)
            | Command::Validate { .. }
            | Command::Explain { .. }
            | Command::Completion { .. }
            | Command::Openapi
    );
    let connection = config::Connection {
        server: global.server,
        token: global.token,
        context: global.context,
        certificate_authority: global.certificate_authority,
    };
    let client = if offline {
        Client::new(config::DEFAULT_SERVER)
    } else {
        match config::client(&connection) {
            Ok(client) => client,
            Err(error) => {
                report(&error);
                return ExitCode::FAILURE;
            }
        }
    };
    let outcome = match command {
        Command::Apply { files, recursive, namespace, dry_run, set } => {
            let set = set.options(namespace.as_deref());
            apply::run(&client, &files, recursive, namespace.as_deref(), dry_run, set.as_ref()).await
        }
        Command::Sync(args) => sync::command(&client, args).await,
        Command::Diff { files, recursive, namespace, set } => {
            let set = set.options(namespace.as_deref());
            match diff::run(&client, &files, recursive, namespace.as_deref(), set.as_ref()).await {
                Ok(false) => return ExitCode::SUCCESS,
                Ok(true) => return ExitCode::from(1),
                Err(error) => {
                    report(&error);
                    return ExitCode::from(2);
                }
            }
        }
        Command::Get { targets, namespace, all_namespaces, selector, output, watch } => {
            let namespace = (!all_namespaces).then_some(namespace);
            get::run(&client, &targets, namespace.as_deref(), selector.as_deref(), output, watch).await
        }
        Command::Describe { targets, namespace } => describe::run(&client, &targets, &namespace).await,
        Command::Delete { targets, files, recursive, namespace, wait, timeout, skip_final_snapshot } => {
            let options = delete::Options { wait: wait.then_some(timeout), skip_final_snapshot };
            delete::run(&client, &targets, &files, recursive, &namespace, options).await
        }
        Command::Scale { targets, replicas, namespace } => scale::run(&client, &targets, &namespace, replicas).await,
        Command::Secret(command) => secret::run(&client, command).await,
        Command::Db(command) => db::run(&client, command).await,
        Command::Templates(command) => templates::run(&client, command).await,
        Command::Wait { targets, condition, namespace, timeout } => {
            wait::run(&client, &targets, &condition, &namespace, timeout).await
        }
        Command::Explain { target } => explain::run(&target),
        Command::Logs { target, namespace, follow, tail } => logs(&client, &target, &namespace, follow, tail).await,
        Command::Events { namespace, all_namespaces, object, watch } => {
            let namespace = (!all_namespaces).then_some(namespace);
            events::run(&client, namespace.as_deref(), object.as_deref(), watch).await
        }
        Command::Validate { files, recursive } => validate::run(&files, recursive),
        Command::Completion { shell } => {
            // Generated in memory: clap_complete panics when its writer fails (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut whole(), "cloud", &mut script);
            write_data(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Version => version(&client).await,
        Command::Kubeconfig { namespace } => kubeconfig::run(&client, &namespace).await,
        Command::Dashboard { open } => dashboard::run(&client, open).await,
        Command::Auth(command) => auth::run(&client, command).await,
        Command::Audit { since, limit, output } => audit::run(&client, since, limit, output.is_some()).await,
        Command::Config(command) => config::run(command),
        Command::Openapi => {
            write_data(&minicloud_model::openapi::render());
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error; API validation errors list every field problem.
pub fn report(error: &anyhow::Error) {
    if let Some(ClientError::Api { causes, message, .. }) = error.downcast_ref::<ClientError>() {
        if !causes.is_empty() {
            // The message ends with the causes joined; they follow one per line instead.
            let joined = causes.iter().map(|cause| format!("{}: {}", cause.field, cause.message)).collect::<Vec<_>>();
            let headline = message.strip_suffix(&joined.join("; ")).unwrap_or(message);
            say_err!("error: {}:", headline.trim_end_matches([' ', ':']));
            for cause in causes {
                say_err!("  {}: {}", cause.field, cause.message);
            }
            return;
        }
    }
    say_err!("error: {error:#}");
}

async fn logs(client: &Client, target: &str, namespace: &str, follow: bool, tail: Option<u32>) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let name = match target.split_once('/') {
        Some((kind, name)) if parse_kind(kind)? == Kind::Instance => name,
        Some((kind, _)) => anyhow::bail!("logs are kept for instances only, not {kind}"),
        None => target,
    };
    let mut stream = client.logs(namespace, name, follow, tail).await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        stdout.write_all(&chunk?)?;
        stdout.flush()?;
    }
    Ok(())
}

async fn version(client: &Client) -> anyhow::Result<()> {
    say!("client: cloud {}", env!("CARGO_PKG_VERSION"));
    match client.version().await {
        Ok(version) => {
            let text = |key: &str| version.get(key).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
            say!("server: cloud {} at {} (store: {})", text("version"), client.server(), text("store"));
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_huge_ones_are_refused() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for bad in ["99999999999999999999h", "8761h", &"9".repeat(400)] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains("longer than a year"), "{bad}: {error}");
        }
        assert!(parse_duration("1.2.3s").is_err());
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("366d").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("").is_err());
    }
}
