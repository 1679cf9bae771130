//! Continuous sync of a manifest directory (`cloud sync DIR`, `cloud server --sync DIR`): the
//! directory is applied as one applyset with prune whenever its files change (a file watcher,
//! debounced), at an interval, and when asked (the console's "Sync now" sets an annotation on
//! the Sync object, which the loop watches), so the cluster follows the directory — a git work
//! tree, most often — the way Flux or Argo CD follow a repository.
//!
//! A round reads and validates every file first: a broken file means nothing is applied and
//! nothing pruned, and the round is reported as failed. What each round did is written to a
//! `Sync` object (`cloud get syncs`, `cloud describe sync NAME`) and reported as events. The
//! loop talks to the server over its HTTP API like any client, so it runs the same inside the
//! server and beside it; the apply itself is one transaction on the server, so a loop killed in
//! the middle leaves either the old state or the new one, and the next round converges.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use minicloud_crds::conditions::set_condition;
use minicloud_crds::meta::ConditionStatus;
use minicloud_crds::sync::{SyncSpec, SyncStatus, SYNC_REQUEST_ANNOTATION};
use minicloud_crds::{Kind, API_VERSION};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use minicloud_client::{ApplyAnswer, ApplySetOptions, Client, ClientError};
use minicloud_model::answers::Action;
use minicloud_model::manifest::{self, ManifestError};

/// Quiet time after a file change before the round starts (an editor's save or a `git pull`
/// touches several files).
const DEBOUNCE: Duration = Duration::from_millis(500);
/// The longest a round waits for quiet files before it runs anyway.
const MAX_DEBOUNCE: Duration = Duration::from_secs(5);
/// The longest one request to the server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The shortest and longest interval between rounds without file changes.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// Longest error text kept in the status and in an event.
const MAX_MESSAGE_CHARS: usize = 2000;

/// Why a sync cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{directory}: {reason}")]
    Directory { directory: String, reason: String },
    #[error("sync name {name:?}: {reason}; pass --name with a lowercase DNS label")]
    Name { name: String, reason: String },
    #[error("interval {interval:?}: write one from 1s to 24h (file changes are applied at once anyway)")]
    Interval { interval: Duration },
    #[error("sync/{name} was deleted; syncing stopped")]
    Deleted { name: String },
    #[error("the server did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What to sync and how.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// The directory, absolute.
    pub directory: PathBuf,
    /// The Sync object's name; also the applyset's.
    pub name: String,
    /// Namespace of the Sync object and its applyset, and of manifests that name none.
    pub namespace: String,
    pub interval: Duration,
    pub prune_stateful: bool,
}

impl SyncSettings {
    /// Settings for `directory` (which must exist); the name defaults to the directory's own.
    pub fn new(
        directory: &Path,
        name: Option<&str>,
        namespace: &str,
        interval: Duration,
        prune_stateful: bool,
    ) -> Result<SyncSettings, SyncError> {
        let shown = directory.display().to_string();
        let directory = directory
            .canonicalize()
            .map_err(|error| SyncError::Directory { directory: shown.clone(), reason: error.to_string() })?;
        if !directory.is_dir() {
            return Err(SyncError::Directory { directory: shown, reason: "is not a directory".into() });
        }
        let name = match name {
            Some(name) => name.to_owned(),
            None => default_name(&directory),
        };
        minicloud_crds::validation::check_dns_label(&name)
            .map_err(|reason| SyncError::Name { name: name.clone(), reason })?;
        minicloud_crds::validation::check_dns_label(namespace)
            .map_err(|reason| SyncError::Name { name: namespace.to_owned(), reason })?;
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(SyncError::Interval { interval });
        }
        Ok(SyncSettings { directory, name, namespace: namespace.to_owned(), interval, prune_stateful })
    }

    fn spec(&self) -> SyncSpec {
        SyncSpec {
            directory: self.directory.display().to_string(),
            apply_set: Some(self.name.clone()),
            interval_seconds: Some(self.interval.as_secs() as u32),
            prune_stateful: self.prune_stateful,
        }
    }
}

/// A DNS label made of a directory's name (`My Site/` → `my-site`), `sync` when none is left.
fn default_name(directory: &Path) -> String {
    let base = directory.file_name().map(|name| name.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut name = String::new();
    for character in base.chars() {
        if character.is_ascii_alphanumeric() {
            name.push(character);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.trim_matches('-').chars().take(63).collect();
    match name.trim_end_matches('-') {
        "" => "sync".into(),
        trimmed => trimmed.to_owned(),
    }
}

/// What a round read: the validated objects and the directory's content revision.
struct Snapshot {
    items: Vec<Value>,
    revision: String,
}

/// Reads and validates the directory (recursively); every problem (`file:line:col: ...`,
/// separated by `; `) when any.
fn read_snapshot(directory: &Path, namespace: &str) -> Result<Snapshot, String> {
    let render =
        |problems: Vec<manifest::Diagnostic>| problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    let sources =
        manifest::read_sources(&[directory.to_owned()], true).map_err(|ManifestError::Invalid(p)| render(p))?;
    let mut hasher = Sha256::new();
    for source in &sources {
        let relative = Path::new(&source.name)
            .strip_prefix(directory)
            .map_or(source.name.clone(), |path| path.display().to_string());
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update(source.text.as_bytes());
        hasher.update([0]);
    }
    let revision = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    let manifests = manifest::parse_sources(&sources).map_err(|ManifestError::Invalid(p)| render(p))?;
    let items = super::apply::items(&manifests, Some(namespace)).map_err(|error| error.to_string())?;
    Ok(Snapshot { items, revision })
}

/// The commit checked out in `directory` when it is in a git work tree (`-dirty` when files
/// differ from it); `None` otherwise or without git.
async fn git_commit(directory: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let mut command = tokio::process::Command::new("git");
        command.arg("-C").arg(directory).args(args).kill_on_drop(true);
        async move {
            let output = tokio::time::timeout(Duration::from_secs(10), command.output()).await.ok()?.ok()?;
            output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
    };
    let commit = git(&["rev-parse", "--verify", "HEAD"]).await.filter(|commit| !commit.is_empty())?;
    let changes = git(&["status", "--porcelain", "--", "."]).await.unwrap_or_default();
    Some(if changes.is_empty() { commit } else { format!("{commit}-dirty") })
}

/// The process running a sync, for the status: `HOST pid PID`.
fn syncer_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|host| host.trim().to_owned());
    format!("{} pid {}", host.unwrap_or_else(|_| "localhost".into()), std::process::id())
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{kept}… (shortened)")
    }
}

async fn timed<T>(request: impl Future<Output = Result<T, ClientError>>) -> Result<T, SyncError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(answer) => answer.map_err(SyncError::from),
        Err(_) => Err(SyncError::Timeout),
    }
}

/// The outcome of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    /// The directory was applied; what changed (`created instance/web`, ...).
    Applied { changes: Vec<String> },
    /// Nothing was applied: why.
    Failed { reason: &'static str, message: String },
}

/// One directory kept applied, and the Sync object reporting on it.
pub struct Syncer {
    client: Client,
    settings: SyncSettings,
    status: SyncStatus,
    generation: i64,
}

impl Syncer {
    /// Writes the Sync object's spec (creating it when missing) and takes up its status.
    pub async fn register(client: Client, settings: SyncSettings) -> Result<Syncer, SyncError> {
        let object = json!({
            "apiVersion": API_VERSION,
            "kind": Kind::Sync.as_str(),
            "metadata": {"name": settings.name, "namespace": settings.namespace},
            "spec": settings.spec(),
        });
        timed(client.apply(vec![object], false)).await?;
        let stored = timed(client.get(Kind::Sync, &settings.namespace, &settings.name)).await?;
        let mut status: SyncStatus = serde_json::from_value(stored.status.clone()).unwrap_or_default();
        status.syncer = Some(syncer_identity());
        // The first round runs at once: it answers a request made while no one synced.
        status.last_request = stored.metadata.annotations.get(SYNC_REQUEST_ANNOTATION).cloned();
        status.observed_generation = stored.metadata.generation;
        Ok(Syncer { client, generation: stored.metadata.generation.unwrap_or(0), settings, status })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &SyncSettings {
        &self.settings
    }

    /// Reads the directory and applies it with prune; records what happened. An error means the
    /// sync cannot go on (its Sync object was deleted); anything else is in the outcome.
    pub async fn round(&mut self) -> Result<RoundOutcome, SyncError> {
        self.status.rounds += 1;
        let directory = self.settings.directory.clone();
        let namespace = self.settings.namespace.clone();
        let snapshot = tokio::task::spawn_blocking(move || read_snapshot(&directory, &namespace))
            .await
            .unwrap_or_else(|error| Err(format!("reading the directory failed: {error}")));
        let commit = git_commit(&self.settings.directory).await;
        let outcome = match snapshot {
            Err(problems) => RoundOutcome::Failed {
                reason: "InvalidManifests",
                message: format!("nothing was applied or pruned; fix the manifests: {problems}"),
            },
            Ok(snapshot) => self.apply(snapshot, commit).await?,
        };
        self.report(&outcome).await?;
        Ok(outcome)
    }

    async fn apply(&mut self, snapshot: Snapshot, commit: Option<String>) -> Result<RoundOutcome, SyncError> {
        let set = ApplySetOptions {
            name: self.settings.name.clone(),
            namespace: self.settings.namespace.clone(),
            prune: true,
            prune_stateful: self.settings.prune_stateful,
        };
        let objects = snapshot.items.len();
        let answer = match timed(self.client.apply_with(snapshot.items, false, Some(&set))).await {
            Ok(answer) => answer,
            Err(SyncError::Client(ClientError::Api { message, causes, .. })) => {
                let mut text = message;
                for cause in &causes {
                    if !text.contains(&cause.message) {
                        text.push_str(&format!("; {}: {}", cause.field, cause.message));
                    }
                }
                return Ok(RoundOutcome::Failed { reason: "ApplyFailed", message: text });
            }
            Err(error) => return Ok(RoundOutcome::Failed { reason: "ServerUnavailable", message: error.to_string() }),
        };
        let changes = changes_of(&answer);
        self.status.last_sync_time = Some(Utc::now());
        self.status.revision = Some(snapshot.revision);
        self.status.commit = commit;
        self.status.objects = objects as u32;
        if !changes.is_empty() {
            self.status.last_changes = changes.clone();
        }
        Ok(RoundOutcome::Applied { changes })
    }

    /// Writes the status and an event when something changed or went wrong.
    async fn report(&mut self, outcome: &RoundOutcome) -> Result<(), SyncError> {
        let was_failing = self.status.last_error.is_some();
        let (status, reason, message) = match outcome {
            RoundOutcome::Applied { changes } => {
                self.status.last_error = None;
                let at = match &self.status.commit {
                    Some(commit) => format!("commit {commit}"),
                    None => format!("revision {}", self.status.revision.as_deref().unwrap_or("-")),
                };
                let what = if changes.is_empty() { "no changes".to_owned() } else { changes.join(", ") };
                (ConditionStatus::True, "Applied", format!("applied {} object(s) at {at}: {what}", self.status.objects))
            }
            RoundOutcome::Failed { reason, message } => {
                self.status.last_error = Some(shorten(message));
                (ConditionStatus::False, *reason, shorten(message))
            }
        };
        let now = Utc::now();
        for condition in ["Synced", "Ready"] {
            set_condition(
                &mut self.status.conditions,
                condition,
                status,
                reason,
                message.clone(),
                self.generation,
                now,
            );
        }
        let written = timed(self.client.replace_status(
            Kind::Sync,
            &self.settings.namespace,
            &self.settings.name,
            json!(self.status),
        ))
        .await;
        match written {
            Err(SyncError::Client(error)) if error.is_not_found() => {
                return Err(SyncError::Deleted { name: self.settings.name.clone() })
            }
            Err(error) => tracing::warn!(%error, sync = %self.settings.name, "cannot write the sync status"),
            Ok(_) => {}
        }
        let event = match outcome {
            RoundOutcome::Applied { changes } if !changes.is_empty() || was_failing => Some(("Normal", "Synced")),
            RoundOutcome::Applied { .. } => None,
            RoundOutcome::Failed { .. } => Some(("Warning", "SyncFailed")),
        };
        if let Some((event_type, event_reason)) = event {
            let recorded = timed(self.client.record_event(
                Kind::Sync,
                &self.settings.namespace,
                &self.settings.name,
                event_type,
                event_reason,
                &message,
            ))
            .await;
            if let Err(error) = recorded {
                tracing::warn!(%error, sync = %self.settings.name, "cannot record a sync event");
            }
        }
        Ok(())
    }
}

/// `created instance/web`, `updated secret/db`, `pruned instance/old -n shop`, ...
fn changes_of(answer: &ApplyAnswer) -> Vec<String> {
    let label = |kind: &str, name: &str, namespace: &str| super::output::object_label(kind, name, namespace);
    let applied = answer.items.iter().filter_map(|item| {
        let verb = match item.action {
            Action::Created => "created",
            Action::Configured => "updated",
            Action::Unchanged => return None,
        };
        Some(format!("{verb} {}", label(&item.kind, &item.name, &item.namespace)))
    });
    let pruned = answer.pruned.iter().filter_map(|pruned| {
        let verb = match pruned.action.as_str() {
            "deleted" => "pruned",
            "released" => "released",
            _ => return None,
        };
        Some(format!("{verb} {}", label(&pruned.kind, &pruned.name, &pruned.namespace)))
    });
    applied.chain(pruned).collect()
}

/// Watches `directory` recursively; a message on the channel means something in it changed.
/// Changes inside `.git` count only for `HEAD` and refs (a commit or a checkout).
fn watch(directory: &Path) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), notify::Error> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (changed, receiver) = mpsc::channel(1);
    let git = directory.join(".git");
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|path| match path.strip_prefix(&git) {
            Ok(inside) => inside == Path::new("HEAD") || inside.starts_with("refs"),
            Err(_) => true,
        });
        if relevant {
            // A full channel already says "changed".
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(directory, RecursiveMode::Recursive)?;
    Ok((watcher, receiver))
}

/// The sync of `settings` against the server listening on `address` (a server's own `--sync`,
/// with the server's in-process `token`), until `stop`; a sync that ends early is logged.
pub fn beside_server(
    address: std::net::SocketAddr,
    token: Option<String>,
    settings: SyncSettings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let host = match address.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let server = format!("http://{}", std::net::SocketAddr::new(host, address.port()));
    let credentials = minicloud_client::Credentials { token, certificate_authority: None };
    let client = Client::with_credentials(&server, credentials).unwrap_or_else(|error| {
        tracing::error!(%error, "the directory sync cannot authenticate");
        Client::new(&server)
    });
    async move {
        if let Err(error) = run(client, settings, stop).await {
            tracing::error!(%error, "the directory sync stopped");
        }
    }
}

/// Runs rounds until `stop` completes or the Sync object is deleted: at start, after file
/// changes (debounced) and every interval.
pub async fn run(client: Client, settings: SyncSettings, stop: impl Future<Output = ()>) -> Result<(), SyncError> {
    tokio::pin!(stop);
    let mut syncer = tokio::select! {
        _ = &mut stop => return Ok(()),
        registered = register_when_reachable(client, settings) => registered?,
    };
    let (_watcher, mut changes) = match watch(&syncer.settings.directory) {
        Ok((watcher, changes)) => (Some(watcher), changes),
        Err(error) => {
            tracing::warn!(%error, directory = %syncer.settings.directory.display(), "cannot watch the directory; syncing at the interval only");
            let (_never, changes) = mpsc::channel(1);
            (None, changes)
        }
    };
    let interval = syncer.settings.interval;
    let mut requests = requests(
        syncer.client.clone(),
        syncer.settings.namespace.clone(),
        syncer.settings.name.clone(),
        syncer.status.last_request.clone(),
    );
    loop {
        let outcome = tokio::select! {
            _ = &mut stop => return Ok(()),
            outcome = syncer.round() => outcome?,
        };
        log_outcome(&syncer.settings, &outcome);
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
            Some(()) = changes.recv() => settle(&mut changes).await,
            Some(request) = requests.recv() => syncer.status.last_request = Some(request),
        }
    }
}

/// Requests for a round now: the value of the Sync object's [`SYNC_REQUEST_ANNOTATION`] each
/// time it differs from the last one seen (`answered` at first), followed through a watch that
/// is opened again after it drops (backing off up to 10 s). Ends when the receiver goes.
fn requests(client: Client, namespace: String, name: String, answered: Option<String>) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut seen = answered;
        let mut delay = Duration::from_millis(200);
        while !sender.is_closed() {
            match client.watch(Kind::Sync, Some(&namespace), None, None).await {
                Ok(mut lines) => {
                    delay = Duration::from_millis(200);
                    loop {
                        let line = tokio::select! {
                            line = lines.next() => line,
                            () = sender.closed() => return,
                        };
                        let Some(Ok(line)) = line else { break };
                        let metadata = line.object.get("metadata");
                        if metadata.and_then(|m| m.get("name")).and_then(Value::as_str) != Some(name.as_str()) {
                            continue;
                        }
                        let asked = metadata
                            .and_then(|m| m.get("annotations"))
                            .and_then(|a| a.get(SYNC_REQUEST_ANNOTATION))
                            .and_then(Value::as_str);
                        if let Some(asked) = asked.filter(|asked| seen.as_deref() != Some(*asked)) {
                            seen = Some(asked.to_owned());
                            if sender.send(asked.to_owned()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, sync = %name, "cannot watch the sync for requests; trying again"),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = sender.closed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    });
    receiver
}

/// Waits until the files have been quiet for [`DEBOUNCE`] (at most [`MAX_DEBOUNCE`]).
async fn settle(changes: &mut mpsc::Receiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        match tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + DEBOUNCE), changes.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

/// Registers the sync, waiting (with backoff up to 10 s) while the server is unreachable.
async fn register_when_reachable(client: Client, settings: SyncSettings) -> Result<Syncer, SyncError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Syncer::register(client.clone(), settings.clone()).await {
            Err(SyncError::Client(error @ ClientError::Unreachable { .. }))
            | Err(SyncError::Client(error @ ClientError::Protocol { .. })) => {
                tracing::warn!(%error, "the server is not reachable yet; retrying");
            }
            Err(SyncError::Timeout) => tracing::warn!("the server did not answer; retrying"),
            other => return other,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn log_outcome(settings: &SyncSettings, outcome: &RoundOutcome) {
    match outcome {
        RoundOutcome::Applied { changes } if changes.is_empty() => {
            tracing::debug!(sync = %settings.name, "in sync; nothing changed")
        }
        RoundOutcome::Applied { changes } => {
            tracing::info!(sync = %settings.name, changes = %changes.join(", "), "applied")
        }
        RoundOutcome::Failed { reason, message } => {
            tracing::warn!(sync = %settings.name, reason, %message, "sync failed; nothing applied")
        }
    }
}

/// Options of `cloud sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The directory of manifests (subdirectories included; hidden ones such as `.git` skipped).
    pub directory: PathBuf,
    /// Name of the Sync object and of its applyset (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of the Sync object and its applyset, and of manifests that name none.
    #[arg(short = 'n', long, default_value = minicloud_crds::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Time between applies when no file changes, e.g. 30s, 5m.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Prune databases too (they follow their deletionPolicy); otherwise they are kept.
    #[arg(long)]
    pub prune_stateful: bool,
    /// Run one round and exit: 0 when the directory was applied, 1 when it was not.
    #[arg(long)]
    pub once: bool,
}

/// `cloud sync DIR`: keeps DIR applied until Ctrl-C (or one round with `--once`).
pub async fn command(client: &Client, args: SyncArgs) -> anyhow::Result<()> {
    let settings =
        SyncSettings::new(&args.directory, args.name.as_deref(), &args.namespace, args.interval, args.prune_stateful)?;
    if args.once {
        let mut syncer = Syncer::register(client.clone(), settings).await?;
        return match syncer.round().await? {
            RoundOutcome::Applied { changes } => {
                let name = &syncer.settings().name;
                if changes.is_empty() {
                    say!("sync/{name}: in sync, nothing changed");
                }
                for change in changes {
                    say!("sync/{name}: {change}");
                }
                Ok(())
            }
            RoundOutcome::Failed { message, .. } => anyhow::bail!("{message}"),
        };
    }
    crate::process::init_logging(crate::process::LogFormat::Text);
    say!(
        "syncing {} as sync/{} every {}s and on every change; Ctrl-C stops",
        settings.directory.display(),
        settings.name,
        settings.interval.as_secs()
    );
    run(client.clone(), settings, crate::process::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_dns_labels() {
        assert_eq!(default_name(Path::new("/srv/My Site")), "my-site");
        assert_eq!(default_name(Path::new("/srv/deploy.prod_v2")), "deploy-prod-v2");
        assert_eq!(default_name(Path::new("/srv/---")), "sync");
        assert_eq!(default_name(Path::new("/")), "sync");
        let long = "a".repeat(100);
        assert_eq!(default_name(Path::new(&long)).len(), 63);
        for name in ["/srv/My Site", "/srv/x-", "/srv/ä"] {
            assert!(minicloud_crds::validation::check_dns_label(&default_name(Path::new(name))).is_ok(), "{name}");
        }
    }

    #[test]
    fn revisions_follow_contents_and_paths() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("a.yaml");
        let manifest =
            "apiVersion: minicloud.dev/v1\nkind: Secret\nmetadata: {name: one}\nspec: {stringData: {k: v}}\n";
        std::fs::write(&file, manifest).unwrap();
        let first = read_snapshot(directory.path(), "default").unwrap();
        assert_eq!(first.items.len(), 1);
        assert_eq!(read_snapshot(directory.path(), "default").unwrap().revision, first.revision);
        std::fs::rename(&file, directory.path().join("b.yaml")).unwrap();
        let renamed = read_snapshot(directory.path(), "default").unwrap();
        assert_ne!(renamed.revision, first.revision, "a rename is a new revision");
        std::fs::write(directory.path().join("b.yaml"), manifest.replace("k: v", "k: w")).unwrap();
        assert_ne!(read_snapshot(directory.path(), "default").unwrap().revision, renamed.revision);
    }

    #[test]
    fn a_broken_file_is_reported_with_its_position() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("bad.yaml"),
            "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata: {name: Bad}\nspec: {image: x}\n",
        )
        .unwrap();
        let problems = read_snapshot(directory.path(), "default").err().unwrap();
        assert!(problems.contains("bad.yaml:3:"), "{problems}");
    }
}
