//! `cloud server`: runs the API server in the foreground until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use minicloud_cli::{init_logging, parse_duration, shutdown_signal, LogFormat, SyncSettings};
use minicloud_controllers::leader::{self, LeaseTiming};
use minicloud_server::composition::{self, ControllerSettings, ServerConfig};
use minicloud_server::store::sql;
use minicloud_server::{AuthSettings, Limits, Rate};

/// Options of `cloud server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub listen: SocketAddr,
    /// Store URL: `postgres://USER:PASSWORD@HOST/DB` or `sqlite://PATH`. Default: SQLite in the
    /// data directory.
    #[arg(long, env = "MINICLOUD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the embedded SQLite store and of the controllers' files (load balancer
    /// configurations and admin sockets) (default: ~/.local/share/minicloud).
    #[arg(long, env = "MINICLOUD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The key file that seals Secret values (one base64 key per line; created with mode 0600
    /// when missing). Default: `secret.key` in the data directory. Servers sharing a
    /// PostgreSQL database must share the key. `MINICLOUD_SECRET_KEY` (base64), when set, is
    /// used instead of any file.
    #[arg(long, env = "MINICLOUD_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Serve the API only; run no controllers (e.g. for API-only replicas).
    #[arg(long)]
    pub no_controllers: bool,
    /// A label (KEY=VALUE) added to every container minicloud creates; repeatable.
    #[arg(long = "container-label", value_parser = parse_label)]
    pub container_labels: Vec<(String, String)>,
    /// The HAProxy image load balancers run (built by `scripts/local-images.sh haproxy`). The
    /// image must have `/usr/sbin/haproxy`.
    #[arg(long, env = "MINICLOUD_HAPROXY_IMAGE", default_value = minicloud_controllers::loadbalancer::DEFAULT_IMAGE)]
    pub haproxy_image: String,
    /// How often every object is reconciled even when nothing changed, e.g. 5m, 30s.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub resync: std::time::Duration,
    /// Reconciles running at once, per controller.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Connections open at once; more are answered 503 and closed.
    #[arg(long, default_value_t = Limits::default().connections)]
    pub max_connections: usize,
    /// Watches open at once; more are answered 429.
    #[arg(long, default_value_t = Limits::default().watches)]
    pub max_watches: usize,
    /// Time a connection has to send a request head (also how long an idle connection stays
    /// open), e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub header_read_timeout: std::time::Duration,
    /// Time a request has to send its body, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: std::time::Duration,
    /// Keep this directory of manifests applied (as `cloud sync DIR` does): on every file change
    /// and every --sync-interval, with prune.
    #[arg(long, value_name = "DIR")]
    pub sync: Option<PathBuf>,
    /// Time between applies of --sync when no file changes, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "sync")]
    pub sync_interval: std::time::Duration,
    /// Name of the Sync object and applyset of --sync (default: the directory's name).
    #[arg(long, requires = "sync")]
    pub sync_name: Option<String>,
    /// Let --sync prune databases too (they follow their deletionPolicy).
    #[arg(long, requires = "sync")]
    pub sync_prune_stateful: bool,
    /// How often the console samples each Instance's CPU and memory, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration, hide = true)]
    pub usage_interval: std::time::Duration,
    /// Require an API token on every request but /healthz and /readyz. The first start with it
    /// (no active token yet) creates an admin token and prints it once: `admin token: TOKEN`.
    /// Required to listen on anything but a loopback address.
    #[arg(long, env = "MINICLOUD_AUTH")]
    pub auth: bool,
    /// With --auth: create one more admin token at start and print it (when the last one is lost).
    #[arg(long, requires = "auth")]
    pub new_admin_token: bool,
    /// A host name (or address) clients reach this server by, besides loopback names and the
    /// listen address, e.g. the name a reverse proxy forwards; repeat for several. Requests for
    /// any other `Host` are refused (DNS rebinding) — always without --auth, with it once one
    /// is given.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Requests a second each token may send on average (0: no limit); beyond, 429 Retry-After.
    #[arg(long, default_value_t = AuthSettings::default().rate.per_second)]
    pub rate_limit: f64,
    /// Requests each token may send at once above its rate.
    #[arg(long, default_value_t = AuthSettings::default().rate.burst)]
    pub rate_burst: u32,
    /// Watch streams (console pages included) each token may hold open at once.
    #[arg(long, default_value_t = AuthSettings::default().watches_per_token)]
    pub max_watches_per_token: usize,
    /// This server's name as a replica: the holder named in leases, shown by `/version` and in
    /// the logs (default: the host name and a random suffix). Give each replica its own.
    #[arg(long, env = "MINICLOUD_REPLICA_ID", value_parser = parse_replica_id)]
    pub replica_id: Option<String>,
    /// How long a lease lasts after its holder's last renewal, e.g. 10s: the longest a crashed
    /// replica's controllers go unrun before another replica takes them. The holder renews every
    /// fifth of it and stops acting at 70 % of it without a renewal (docs/high-availability.md).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease_duration: std::time::Duration,
    /// How long a watch waits for a client that reads nothing before it ends the watch, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub watch_send_timeout: std::time::Duration,
}

impl ServerArgs {
    /// Refuses option values the server cannot run with: a zero resync period would stop the
    /// controller runtime, zero timeouts would refuse every request, zero workers reconcile
    /// nothing.
    pub fn check(&self) -> anyhow::Result<()> {
        let periods = [
            ("--resync", self.resync),
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--watch-send-timeout", self.watch_send_timeout),
            ("--usage-interval", self.usage_interval),
        ];
        if self.lease_duration < std::time::Duration::from_secs(2)
            || self.lease_duration > std::time::Duration::from_secs(300)
        {
            anyhow::bail!("--lease-duration {:?}: write from 2s to 5m", self.lease_duration);
        }
        for (option, value) in periods {
            if value < std::time::Duration::from_secs(1) {
                anyhow::bail!("{option} {value:?} is too short: write at least 1s");
            }
        }
        if !self.rate_limit.is_finite() || self.rate_limit < 0.0 {
            anyhow::bail!("--rate-limit {}: write a number of requests a second (0: no limit)", self.rate_limit);
        }
        if self.rate_limit > 0.0 && self.rate_burst == 0 {
            anyhow::bail!("--rate-burst 0 would refuse every request: write at least 1");
        }
        if self.max_watches_per_token == 0 {
            anyhow::bail!("--max-watches-per-token 0 would refuse every watch: write at least 1");
        }
        if !(1..=1024).contains(&self.workers) {
            anyhow::bail!("--workers {}: write a number from 1 to 1024", self.workers);
        }
        Ok(())
    }

    /// Authentication as these options set it (`None`: off).
    pub fn auth(&self) -> Option<AuthSettings> {
        self.auth.then(|| AuthSettings {
            rate: Rate { per_second: self.rate_limit, burst: self.rate_burst },
            watches_per_token: self.max_watches_per_token,
            ..AuthSettings::default()
        })
    }

    /// Lease timing from --lease-duration: renew deadline at 70 %, renewals every 20 %.
    pub fn lease_timing(&self) -> LeaseTiming {
        LeaseTiming {
            duration: self.lease_duration,
            renew_deadline: self.lease_duration * 7 / 10,
            retry: self.lease_duration / 5,
        }
    }

    /// The API limits these options set.
    pub fn limits(&self) -> Limits {
        Limits {
            connections: self.max_connections.max(1),
            watches: self.max_watches,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            watch_send_timeout: self.watch_send_timeout,
            ..Limits::default()
        }
    }
}

fn parse_replica_id(text: &str) -> Result<String, String> {
    leader::check_identity(text).map(|()| text.to_owned())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?}: write KEY=VALUE"))?;
    minicloud_crds::validation::check_label_key(key)?;
    minicloud_crds::validation::check_label_value(value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Runs the server until a shutdown signal.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    args.check()?;
    init_logging(args.log_format);
    let limits = args.limits();
    let auth = args.auth();
    let lease_timing = args.lease_timing();
    let data_dir = args.data_dir.unwrap_or_else(sql::default_data_dir);
    let database_url = match args.database_url {
        Some(url) => url,
        None => sql::sqlite_url(&data_dir),
    };
    let controllers = (!args.no_controllers).then(|| ControllerSettings {
        state_dir: data_dir.clone(),
        haproxy_image: Some(args.haproxy_image),
        extra_labels: args.container_labels.into_iter().collect(),
        runtime: minicloud_controllers::runtime::RuntimeConfig {
            workers: args.workers,
            resync: args.resync,
            ..Default::default()
        },
    });
    let sync = match &args.sync {
        Some(directory) => Some(SyncSettings::new(
            directory,
            args.sync_name.as_deref(),
            minicloud_crds::DEFAULT_NAMESPACE,
            args.sync_interval,
            args.sync_prune_stateful,
        )?),
        None => None,
    };
    let config = ServerConfig {
        listen: args.listen,
        database_url,
        data_dir,
        secret_key_file: args.secret_key_file,
        limits,
        controllers,
        usage_interval: args.usage_interval,
        auth,
        new_admin_token: args.new_admin_token,
        allowed_hosts: args.allowed_hosts.clone(),
        replica: args.replica_id.clone(),
        lease_timing,
    };
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut syncing = None;
    let signal = shutdown_signal();
    let stop = async move {
        signal.await;
        let _ = stopping.send(true);
    };
    let served = composition::run(config, stop, |bound| {
        // One replica at a time syncs a directory: the loop runs under the lease `sync-NAME`.
        if let Some(settings) = sync {
            let lease = leader::lease_name("sync", &settings.name);
            let (address, token) = (bound.address, bound.internal_token);
            let work = move |mut stop: tokio::sync::watch::Receiver<bool>| {
                let stop = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                minicloud_cli::sync_beside_server(address, token.clone(), settings.clone(), stop)
            };
            syncing = Some(tokio::spawn(bound.replica.lead(lease, stopped.clone(), work)));
        }
    })
    .await;
    if let Some(syncing) = syncing {
        // It saw the shutdown: it stops the loop and releases the lease (bounded).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), syncing).await;
    }
    served
}
