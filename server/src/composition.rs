//! The composition root of `cloud server` (and `cloud up`): opens the store, starts the
//! change-log compactor, starts the controllers with a real Docker engine, and serves the API.
//! This is the only place that knows every part; the API does not start controllers and the
//! controllers know neither SQL nor HTTP.
//!
//! Several servers may share one PostgreSQL store (replicas): each serves the whole API, and
//! every controller and singleton job runs under a lease of its own ([`leader::Replica`]), so
//! exactly one replica acts for each at a time. A SQLite store belongs to one server.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use minicloud_controllers::docker::{ContainerDriver, DockerDriver};
use minicloud_controllers::leader::{self, LeaseTiming, Replica};
use minicloud_controllers::metrics::Metrics;
use minicloud_controllers::{
    certificate, database, instance, loadbalancer, orphans, reconciler, route, runtime, scalinggroup, stack,
};
use minicloud_crds::Kind;
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
    /// This replica's identity in leases (`None`: the host name and a random suffix).
    pub replica: Option<String>,
    /// How long leases last and how they are renewed.
    pub lease_timing: LeaseTiming,
}

/// What a started server tells its caller.
pub struct Bound {
    /// The address actually bound (useful with port 0).
    pub address: SocketAddr,
    /// With authentication, a token (role admin, in memory only) for clients in this process.
    pub internal_token: Option<String>,
    /// This process as a replica: to run more work under leases (a `--sync` loop).
    pub replica: Arc<Replica>,
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

/// The kinds that have a controller, each run under a lease of its own.
pub const CONTROLLED_KINDS: [Kind; 7] = [
    Kind::Instance,
    Kind::LoadBalancer,
    Kind::ScalingGroup,
    Kind::ManagedDatabase,
    Kind::Stack,
    Kind::Route,
    Kind::Certificate,
];

/// The lease that guards the controller of `kind`, e.g. `controller-instance`.
pub fn controller_lease(kind: Kind) -> String {
    format!("controller-{}", kind.as_str().to_ascii_lowercase())
}

/// The leases of the singleton jobs.
pub const COMPACTOR_LEASE: &str = "store-compactor";
pub const AUDIT_PRUNER_LEASE: &str = "audit-pruner";
pub const ORPHAN_COLLECTOR_LEASE: &str = "orphan-collector";

/// What every controller of this process is made from; a controller is made afresh each time
/// this replica wins its lease, so nothing it remembered from an earlier term (when another
/// replica may have acted) carries over.
struct ControllerParts {
    store: Arc<dyn Store>,
    driver: Arc<dyn ContainerDriver>,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    events: tokio::sync::broadcast::Sender<minicloud_controllers::docker::ContainerEvent>,
}

impl ControllerParts {
    fn reconciler(&self, kind: Kind) -> Arc<dyn reconciler::Reconciler> {
        let (store, driver, labels) = (self.store.clone(), self.driver.clone(), self.settings.extra_labels.clone());
        match kind {
            Kind::Instance => Arc::new(instance::InstanceController::new(store, driver, labels)),
            Kind::LoadBalancer => {
                let controller = loadbalancer::LoadBalancerController::new(
                    store,
                    driver,
                    labels,
                    self.settings.state_dir.clone(),
                    self.metrics.clone(),
                );
                match &self.settings.haproxy_image {
                    Some(image) => Arc::new(controller.with_image(image)),
                    None => Arc::new(controller),
                }
            }
            Kind::ScalingGroup => {
                Arc::new(scalinggroup::ScalingGroupController::new(store, driver, self.metrics.clone()))
            }
            Kind::ManagedDatabase => Arc::new(database::DatabaseController::new(
                store,
                driver,
                labels,
                self.settings.state_dir.clone(),
                self.metrics.clone(),
            )),
            Kind::Stack => Arc::new(stack::StackController::new(
                store.clone(),
                Arc::new(api::admission::StoreAdmission::new(store)),
            )),
            Kind::Route => Arc::new(route::RouteController::new(store)),
            _ => Arc::new(certificate::CertificateController::new(store).with_acme(Arc::new(crate::acme::InstantAcme))),
        }
    }

    /// The reconcile loop of `kind`, until `stop`.
    fn run(&self, kind: Kind, stop: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
        runtime::run(
            self.reconciler(kind),
            self.store.clone(),
            self.events.subscribe(),
            self.settings.runtime.clone(),
            self.metrics.clone(),
            stop,
        )
    }
}

/// The controllers of this process: each runs while this replica holds its lease.
struct Controllers {
    /// One task per lease: it campaigns, runs its work while leading, releases at shutdown.
    leads: Vec<tokio::task::JoinHandle<()>>,
    /// Docker's events, fanned out to the controllers (it acts on nothing).
    fan_out: tokio::task::JoinHandle<()>,
}

impl Controllers {
    /// Starts, on the Docker engine, every controller and the orphan collection, each under
    /// its lease, until `shutdown`.
    fn start(
        replica: &Arc<Replica>,
        store: Arc<dyn Store>,
        settings: ControllerSettings,
        metrics: Arc<Metrics>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<Controllers> {
        let driver: Arc<dyn ContainerDriver> = Arc::new(DockerDriver::lazy()?);
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let fan_out = runtime::spawn_docker_events(driver.clone(), events.clone());
        let resync = settings.runtime.resync;
        let parts = Arc::new(ControllerParts { store, driver, settings, metrics, events });
        let mut leads = Vec::new();
        for kind in CONTROLLED_KINDS {
            let parts = parts.clone();
            let run = move |stop| parts.run(kind, stop);
            leads.push(tokio::spawn(replica.clone().lead(controller_lease(kind), shutdown.clone(), run)));
        }
        // Orphaned containers and directories: at start and every resync period.
        let collect = move |stop| until_stopped(stop, collect_orphans(parts.clone(), resync));
        leads.push(tokio::spawn(replica.clone().lead(ORPHAN_COLLECTOR_LEASE.to_owned(), shutdown.clone(), collect)));
        Ok(Controllers { leads, fan_out })
    }

    /// Waits (bounded) for every lease to be given up after shutdown began.
    async fn stop(self) {
        if tokio::time::timeout(Duration::from_secs(15), futures::future::join_all(self.leads)).await.is_err() {
            tracing::warn!("the controllers did not stop within 15 s");
        }
        self.fan_out.abort();
    }
}

/// Removes orphaned containers and load-balancer directories every `every`.
async fn collect_orphans(parts: Arc<ControllerParts>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        match orphans::collect_containers(parts.store.as_ref(), parts.driver.as_ref()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "orphaned containers removed"),
            Err(error) => tracing::warn!(%error, "orphan collection failed; retrying later"),
        }
        match loadbalancer::collect_orphan_directories(parts.store.as_ref(), &parts.settings.state_dir).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "directories of deleted load balancers removed"),
            Err(error) => tracing::warn!(%error, "directory collection failed; retrying later"),
        }
    }
}

/// Runs `work` until `stop` turns true (or the work ends).
pub async fn until_stopped(mut stop: watch::Receiver<bool>, work: impl Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        _ = stop.wait_for(|stop| *stop) => {}
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
    let identity = config.replica.clone().unwrap_or_else(leader::default_identity);
    tracing::info!(replica = %identity, version = env!("CARGO_PKG_VERSION"), "minicloud server starting");
    minicloud_model::files::create_private_dir(&config.data_dir)
        .map_err(|error| anyhow::anyhow!("cannot create the data directory {}: {error}", config.data_dir.display()))?;
    restrict(&config.data_dir, 0o700);
    // A SQLite store belongs to one server: held until this process ends.
    let _sole_server = store::sql::claim_sqlite(&config.database_url)?;
    let keys = Arc::new(SecretKeys::load(config.secret_key_file.as_deref(), &config.data_dir)?);
    // The console's forms without authentication: one secret for every replica sharing the keys.
    crate::ui::actions::share_anonymous_secret(keys.derived("console form"));
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
    // On SQLite this server is the store's only one (the claim above): a crash's leases are
    // taken back at once on restart.
    let replica =
        Replica::new(store.clone(), identity.clone(), config.lease_timing, metrics.clone(), backend == "sqlite");
    // The store's own singletons: any replica may run them, one at a time.
    let mut singletons = Vec::new();
    let compact = {
        let store = store.clone();
        move |stop| {
            until_stopped(stop, store::compact_forever(store.clone(), store::Retention::default(), COMPACTION_INTERVAL))
        }
    };
    singletons.push(tokio::spawn(replica.clone().lead(COMPACTOR_LEASE.to_owned(), shutdown.clone(), compact)));
    let prune = {
        let access = access.clone();
        move |stop| until_stopped(stop, prune_audit_forever(access.clone()))
    };
    singletons.push(tokio::spawn(replica.clone().lead(AUDIT_PRUNER_LEASE.to_owned(), shutdown.clone(), prune)));
    let controllers = match config.controllers.clone() {
        Some(settings) => Some(Controllers::start(&replica, store.clone(), settings, metrics.clone(), &shutdown)?),
        None => None,
    };
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
    state.replica = identity.clone();
    if config.auth.is_none() || !config.allowed_hosts.is_empty() {
        state.hosts = Some(Arc::new(api::hosts::HostPolicy::new(config.listen, &config.allowed_hosts)));
    }
    // The console's charts: each replica with controllers samples for its own console (reading
    // `docker stats` acts on nothing, and the history lives in this process's memory).
    let sampler = match (&controllers, driver) {
        (Some(_), Some(driver)) => {
            let history = Arc::new(crate::usage::UsageHistory::default());
            state.usage = Some(history.clone());
            state.usage_interval = config.usage_interval;
            Some(crate::usage::spawn_sampler(store, driver, state.metrics.clone(), history, config.usage_interval))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = backend, replica = %identity, "minicloud API server listening");
    if internal_token.is_none() {
        tracing::warn!(
            %address,
            "authentication is off: anyone on this machine who can reach {address} has every permission (start with --auth to require tokens)"
        );
    }
    bound(Bound { address, internal_token, replica });
    let served = api::serve(listener, state, crate::ui::routes(), crate::ui::page_errors, stopping, stop).await;
    // The router's clones of the audit log are gone: the writer drains its queue and ends.
    if tokio::time::timeout(Duration::from_secs(5), audit_writer).await.is_err() {
        tracing::warn!("the audit log writer did not finish within 5 s");
    }
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    // Each lease task saw the shutdown: it stops its work and releases its lease (bounded).
    if let Some(controllers) = controllers {
        controllers.stop().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(singletons)).await;
    tracing::info!("stopped");
    served
}

/// How long audit entries are kept, and how many at most.
const AUDIT_AGE: chrono::Duration = chrono::Duration::days(90);
const AUDIT_ENTRIES: usize = 200_000;

/// Prunes the audit log at every compaction interval, forever.
async fn prune_audit_forever(access: Arc<dyn AccessStore>) {
    let mut ticker = tokio::time::interval(COMPACTION_INTERVAL);
    loop {
        ticker.tick().await;
        match access.prune_audit(chrono::Utc::now() - AUDIT_AGE, AUDIT_ENTRIES).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "old audit entries removed"),
            Err(error) => tracing::warn!(%error, "cannot prune the audit log; retrying later"),
        }
    }
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
