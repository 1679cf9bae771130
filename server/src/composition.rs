//! The composition root of `cloud server` (and `cloud up`): opens the store, starts the
//! change-log compactor, starts the controllers with a real Docker engine, and serves the API.
//! This is the only place that knows every part; the API does not start controllers and the
//! controllers know neither SQL nor HTTP.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use minicloud_controllers::docker::{ContainerDriver, DockerDriver};
use minicloud_controllers::metrics::Metrics;
use minicloud_controllers::{
    certificate, database, instance, loadbalancer, orphans, reconciler, route, runtime, scalinggroup, stack,
};
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::auth::tokens::{self, NewToken};
use crate::auth::{AccessError, AccessStore};
use crate::auth::{AuditLog, AuthSettings, Authenticator, Role};
use crate::secrets::SecretKeys;
use crate::store::{self, SqlStore, Store};

/// How often the change log is compacted.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(60);

/// The server's settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    /// The data directory (created with mode 0700): the embedded store, the secret key file,
    /// the controllers' files.
    pub data_dir: PathBuf,
    /// The key file that seals Secret values (`None`: `secret.key` in the data directory).
    pub secret_key_file: Option<PathBuf>,
    pub limits: api::Limits,
    /// Run the controllers in this process (`None`: API only).
    pub controllers: Option<ControllerSettings>,
    /// How often the console's CPU and memory history is sampled (with controllers).
    pub usage_interval: std::time::Duration,
    /// Authentication (`None`: off, allowed on a loopback address only).
    pub auth: Option<AuthSettings>,
    /// Create one more admin token at start and print it (for an administrator who lost theirs).
    pub new_admin_token: bool,
    /// Host names the API answers besides loopback names and the listen address
    /// (`--allowed-host`); the `Host` check is on without authentication, and with it when
    /// names are given.
    pub allowed_hosts: Vec<String>,
}

/// What a started server tells its caller.
pub struct Bound {
    /// The address actually bound (useful with port 0).
    pub address: SocketAddr,
    /// With authentication, a token (role admin, in memory only) for clients in this process.
    pub internal_token: Option<String>,
}

/// How the controllers run.
#[derive(Clone, Debug, Default)]
pub struct ControllerSettings {
    /// Labels added to every container (e.g. to mark a test run's containers).
    pub extra_labels: HashMap<String, String>,
    pub runtime: runtime::RuntimeConfig,
    /// Where controllers keep files (load balancers' configurations and admin sockets).
    pub state_dir: PathBuf,
    /// The HAProxy image load balancers run (`None`: `minicloud/haproxy:local`).
    pub haproxy_image: Option<String>,
}

/// The tasks of the running controllers.
struct Controllers {
    /// The reconcile loops: they finish their running reconciles when shutdown begins.
    runtimes: Vec<tokio::task::JoinHandle<()>>,
    /// Docker event fan-out and orphan collection: stopped at shutdown.
    helpers: Vec<tokio::task::JoinHandle<()>>,
}

impl Controllers {
    /// Starts the controllers on `store` with the Docker engine.
    fn start(
        store: Arc<dyn Store>,
        settings: ControllerSettings,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Controllers> {
        let driver: Arc<dyn ContainerDriver> = Arc::new(DockerDriver::lazy()?);
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let mut helpers = vec![runtime::spawn_docker_events(driver.clone(), events.clone())];
        let mut load_balancers = loadbalancer::LoadBalancerController::new(
            store.clone(),
            driver.clone(),
            settings.extra_labels.clone(),
            settings.state_dir.clone(),
            metrics.clone(),
        );
        if let Some(image) = &settings.haproxy_image {
            load_balancers = load_balancers.with_image(image);
        }
        let reconcilers: Vec<Arc<dyn reconciler::Reconciler>> = vec![
            Arc::new(instance::InstanceController::new(store.clone(), driver.clone(), settings.extra_labels.clone())),
            Arc::new(load_balancers),
            Arc::new(scalinggroup::ScalingGroupController::new(store.clone(), driver.clone(), metrics.clone())),
            Arc::new(database::DatabaseController::new(
                store.clone(),
                driver.clone(),
                settings.extra_labels.clone(),
                settings.state_dir.clone(),
                metrics.clone(),
            )),
            Arc::new(stack::StackController::new(
                store.clone(),
                Arc::new(api::admission::StoreAdmission::new(store.clone())),
            )),
            Arc::new(route::RouteController::new(store.clone())),
            Arc::new(
                certificate::CertificateController::new(store.clone()).with_acme(Arc::new(crate::acme::InstantAcme)),
            ),
        ];
        let runtimes = reconcilers
            .into_iter()
            .map(|reconciler| {
                tokio::spawn(runtime::run(
                    reconciler,
                    store.clone(),
                    events.subscribe(),
                    settings.runtime.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        // Orphaned containers and directories: at start and every resync period.
        let resync = settings.runtime.resync;
        let state_dir = settings.state_dir.clone();
        helpers.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(resync);
            loop {
                ticker.tick().await;
                match orphans::collect_containers(store.as_ref(), driver.as_ref()).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "orphaned containers removed"),
                    Err(error) => tracing::warn!(%error, "orphan collection failed; retrying later"),
                }
                match loadbalancer::collect_orphan_directories(store.as_ref(), &state_dir).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "directories of deleted load balancers removed"),
                    Err(error) => tracing::warn!(%error, "directory collection failed; retrying later"),
                }
            }
        }));
        Ok(Controllers { runtimes, helpers })
    }

    /// Stops the helpers and lets the reconcile loop finish (bounded).
    async fn stop(self) {
        for helper in self.helpers {
            helper.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(self.runtimes)).await;
    }
}

/// Opens the store, starts the controllers (when configured) and serves the API until `stop`
/// completes; then shuts down gracefully. `bound` is told the address actually bound and the
/// internal token.
pub async fn run(
    config: ServerConfig,
    stop: impl Future<Output = ()> + Send + 'static,
    bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    if config.auth.is_none() && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {} without authentication: anyone who can reach it could run containers on this machine. \
             Add --auth (the first start prints an admin token), or listen on 127.0.0.1",
            config.listen
        );
    }
    minicloud_model::files::create_private_dir(&config.data_dir)
        .map_err(|error| anyhow::anyhow!("cannot create the data directory {}: {error}", config.data_dir.display()))?;
    restrict(&config.data_dir, 0o700);
    let keys = Arc::new(SecretKeys::load(config.secret_key_file.as_deref(), &config.data_dir)?);
    let sql = Arc::new(
        SqlStore::open(&config.database_url, keys)
            .await
            .map_err(|error| anyhow::anyhow!("cannot open the store at {}: {error}", redact(&config.database_url)))?,
    );
    let backend = sql.backend_name();
    let store: Arc<dyn Store> = sql.clone();
    let access: Arc<dyn AccessStore> = sql.clone();
    let mut authenticator = match &config.auth {
        Some(settings) => {
            announce_admin_token(access.as_ref(), config.new_admin_token).await?;
            Some(Authenticator::new(access.clone(), settings.clone()))
        }
        None => None,
    };
    let internal_token = authenticator.as_mut().map(|auth| auth.add_internal_token(crate::auth::INTERNAL, Role::Admin));
    let (audit, audit_writer) = AuditLog::start(access.clone());
    let audit_pruner = spawn_audit_pruner(access.clone());
    let compactor = store::spawn_compactor(store.clone(), store::Retention::default(), COMPACTION_INTERVAL);
    let (stopping, shutdown) = watch::channel(false);
    let requests = api::request_metrics::RequestMetrics::default();
    let mut metrics = Metrics::default();
    metrics.register(
        "minicloud_watch_lag_seconds",
        "Time from the store reading a change to a watcher taking it, by watcher (controller, client) and kind",
        sql.watch_lag(),
    );
    requests.register(&mut metrics);
    let metrics = Arc::new(metrics);
    // Controllers run where the store's controller lock is held (one server per store).
    let controllers = config
        .controllers
        .clone()
        .map(|settings| tokio::spawn(keep_controllers(sql.clone(), settings, metrics.clone(), shutdown.clone())));
    let driver = DockerDriver::lazy()
        .map(|driver| Arc::new(driver) as Arc<dyn ContainerDriver>)
        .map_err(|error| tracing::warn!(%error, "no Docker engine: logs are unavailable"))
        .ok();
    let mut state = AppState::new(store.clone(), driver.clone(), shutdown, config.limits, backend);
    state.metrics = metrics;
    state.requests = requests;
    state.key_rotation = Some(sql);
    state.access = Some(access);
    state.auth = authenticator.map(Arc::new);
    state.audit = Some(audit);
    if config.auth.is_none() || !config.allowed_hosts.is_empty() {
        state.hosts = Some(Arc::new(api::hosts::HostPolicy::new(config.listen, &config.allowed_hosts)));
    }
    // The console's charts: sampled only where containers are run from here.
    let sampler = match (&controllers, driver) {
        (Some(_), Some(driver)) => {
            let history = Arc::new(crate::usage::UsageHistory::default());
            state.usage = Some(history.clone());
            state.usage_interval = config.usage_interval;
            Some(crate::usage::spawn_sampler(store, driver, history, config.usage_interval))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = backend, "minicloud API server listening");
    if internal_token.is_none() {
        tracing::warn!(
            %address,
            "authentication is off: anyone on this machine who can reach {address} has every permission (start with --auth to require tokens)"
        );
    }
    bound(Bound { address, internal_token });
    let served = api::serve(listener, state, crate::ui::routes(), stopping, stop).await;
    compactor.abort();
    audit_pruner.abort();
    // The router's clones of the audit log are gone: the writer drains its queue and ends.
    if tokio::time::timeout(Duration::from_secs(5), audit_writer).await.is_err() {
        tracing::warn!("the audit log writer did not finish within 5 s");
    }
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    if let Some(controllers) = controllers {
        // It saw the shutdown: it stops the controllers (bounded) and ends.
        if tokio::time::timeout(Duration::from_secs(15), controllers).await.is_err() {
            tracing::warn!("the controllers did not stop within 15 s");
        }
    }
    tracing::info!("stopped");
    served
}

/// How often a server without the controller lock tries to take it.
const LOCK_RETRY: Duration = Duration::from_secs(5);
/// How often the holder checks that it still holds it.
const LOCK_CHECK: Duration = Duration::from_secs(2);

/// Runs the controllers while this process holds the store's controller lock, until shutdown.
/// Without the lock (another server runs them) it serves the API only, says so once, and tries
/// again every [`LOCK_RETRY`], taking over when that server stops; a lock lost (its database
/// session ended) stops the controllers here at once.
async fn keep_controllers(
    sql: Arc<SqlStore>,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let store: Arc<dyn Store> = sql.clone();
    let mut waited = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match sql.try_lock_controllers().await {
            Ok(Some(mut lock)) => {
                let (stop, stopped) = watch::channel(false);
                let controllers = match Controllers::start(store.clone(), settings.clone(), metrics.clone(), stopped) {
                    Ok(controllers) => controllers,
                    Err(error) => {
                        tracing::error!(%error, "cannot start the controllers; retrying");
                        drop(lock);
                        tokio::select! {
                            _ = tokio::time::sleep(LOCK_RETRY) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                };
                if waited {
                    tracing::warn!("the server that ran the controllers of this store is gone: this one runs them now");
                } else {
                    tracing::info!("this server runs the controllers of this store (it holds the controller lock)");
                }
                let mut ticker = tokio::time::interval(LOCK_CHECK);
                let lost = loop {
                    tokio::select! {
                        _ = shutdown.changed() => break false,
                        _ = ticker.tick() => {
                            if !lock.held().await {
                                break true;
                            }
                        }
                    }
                };
                let _ = stop.send(true);
                controllers.stop().await;
                drop(lock);
                if !lost {
                    return;
                }
                tracing::error!(
                    "the controller lock was lost (its database session ended): the controllers stopped here, another server may run them now; trying to take the lock again"
                );
                waited = true;
            }
            Ok(None) => {
                if !waited {
                    tracing::warn!(
                        "another cloud server runs the controllers of this store: this one serves the API only, and takes the controllers over when that one stops (checked every 5 s)"
                    );
                }
                waited = true;
            }
            Err(error) => tracing::warn!(%error, "cannot take the controller lock; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(LOCK_RETRY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How long audit entries are kept, and how many at most.
const AUDIT_AGE: chrono::Duration = chrono::Duration::days(90);
const AUDIT_ENTRIES: usize = 200_000;

/// Prunes the audit log at every compaction interval.
fn spawn_audit_pruner(access: Arc<dyn AccessStore>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(COMPACTION_INTERVAL);
        loop {
            ticker.tick().await;
            match access.prune_audit(chrono::Utc::now() - AUDIT_AGE, AUDIT_ENTRIES).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "old audit entries removed"),
                Err(error) => tracing::warn!(%error, "cannot prune the audit log; retrying later"),
            }
        }
    })
}

/// On a start with authentication: when no token is active (the first start, or every token
/// revoked or expired), or when asked, creates an admin token and prints it once on standard
/// output as `admin token: TOKEN`. The store keeps only its hash.
async fn announce_admin_token(access: &dyn AccessStore, asked: bool) -> anyhow::Result<()> {
    let cannot = |error: AccessError| anyhow::anyhow!("cannot create the admin token: {error}");
    if !asked && access.count_active_tokens().await.map_err(cannot)? > 0 {
        return Ok(());
    }
    let mut name = "admin".to_owned();
    loop {
        let secret = tokens::generate();
        let token = NewToken { name: name.clone(), role: Role::Admin, namespace: None, expires_at: None };
        match access.create_token(&token, &secret.hash).await {
            Ok(_) => {
                println!("admin token: {}", secret.text);
                tracing::info!(
                    token = %name,
                    "created an admin token, printed once on standard output; keep it: `cloud config set-context NAME --server URL --token TOKEN`"
                );
                return Ok(());
            }
            // Another replica starting at the same moment made the first one.
            Err(AccessError::AlreadyExists(_)) if !asked && access.count_active_tokens().await.map_err(cannot)? > 0 => {
                return Ok(())
            }
            Err(AccessError::AlreadyExists(_)) => {
                name = format!("admin-{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
            }
            Err(error) => return Err(cannot(error)),
        }
    }
}

/// Sets a path's permission bits (Unix), e.g. a data directory made before it was created
/// private; a failure is logged, not fatal.
fn restrict(path: &std::path::Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), %error, "cannot restrict the permissions");
        }
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
