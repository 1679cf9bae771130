//! The Docker driver: everything minicloud does to the Docker engine goes through the
//! [`ContainerDriver`] trait, implemented here over bollard. Controllers see only the trait, so
//! their decisions can be unit-tested with a fake; integration tests run them against the real
//! engine.
//!
//! Every object created carries the labels DESIGN.md lists (`minicloud.dev/managed-by`,
//! `namespace`, `kind`, `name`, `uid`, `spec-hash`): the labels, not a private table, say what
//! exists, so a restarted control plane finds its containers again. Ports are published on
//! 127.0.0.1 unless a manifest says otherwise. A missing image is pulled; when no registry
//! answers the error says how to build or load the image instead.

#[cfg(test)]
pub mod fake;
pub mod labels;
pub mod names;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{Stream, StreamExt};

pub use labels::{Identity, Labels, MANAGED_BY};

/// What can go wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot reach the Docker engine ({0}); check that dockerd runs and that DOCKER_HOST (if set) is right")]
    Unreachable(String),
    #[error("image {image} is not present and cannot be pulled ({reason}). Build it locally (for minicloud's own images: scripts/local-images.sh) or load it with `docker load`, then minicloud retries on its own")]
    ImageUnavailable { image: String, reason: String },
    #[error("a container named {0} exists already")]
    NameTaken(String),
    #[error("host port {port} is already in use; choose another hostPort or leave it out to get a free one")]
    PortTaken { port: u16 },
    #[error("Docker refused: {0}")]
    Refused(String),
    #[error("container {0} does not exist")]
    NoSuchContainer(String),
    #[error("{what} did not finish within {seconds} s")]
    TimedOut { what: String, seconds: u64 },
    #[error("{kind} {name} exists and is not minicloud's to use: {owner}. Remove or rename it if it is not needed (`docker {kind} inspect {name}` shows its labels), or give this object another name")]
    NotOurs { kind: &'static str, name: String, owner: String },
}

impl DriverError {
    /// A Docker object of `kind` (`volume`, `network`) named `name` that is `owner`'s.
    pub(crate) fn not_ours(kind: &'static str, name: &str, owner: String) -> DriverError {
        DriverError::NotOurs { kind, name: name.to_owned(), owner }
    }

    fn from_bollard(error: bollard::errors::Error) -> DriverError {
        use bollard::errors::Error;
        match error {
            Error::DockerResponseServerError { status_code: 409, message } => DriverError::NameTaken(message),
            Error::DockerResponseServerError { message, .. }
                if message.contains("port is already allocated") || message.contains("address already in use") =>
            {
                DriverError::PortTaken { port: port_in(&message) }
            }
            Error::DockerResponseServerError { message, .. } => DriverError::Refused(message),
            Error::IOError { err } => DriverError::Unreachable(err.to_string()),
            other => {
                let text = other.to_string();
                let lower = text.to_ascii_lowercase();
                if lower.contains("connect") || lower.contains("no such file") || lower.contains("refused") {
                    DriverError::Unreachable(text)
                } else {
                    DriverError::Refused(text)
                }
            }
        }
    }

    /// True when the engine could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DriverError::Unreachable(_))
    }
}

/// The port of the first `ADDRESS:PORT` in a Docker message ("Bind for 127.0.0.1:80 failed: port
/// is already allocated", "listen tcp4 0.0.0.0:443: bind: address already in use"); 0 when none.
fn port_in(message: &str) -> u16 {
    message
        .split(':')
        .skip(1)
        .filter_map(|after| {
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u16>().ok()
        })
        .find(|port| *port > 0)
        .unwrap_or(0)
}

/// The first 12 characters of a container id, as `docker ps` shows it.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// A port to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishSpec {
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub host_ip: String,
    /// `None`: let the engine pick a free port.
    pub host_port: Option<u16>,
}

/// A named volume, or a host directory, to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    /// A volume name, or an absolute host path (a bind mount).
    pub volume: String,
    pub mount_path: String,
    pub read_only: bool,
}

/// A health check, in Docker's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    /// `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    pub retries: u32,
    pub start_period_seconds: u32,
}

/// Everything needed to create one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub ports: Vec<PublishSpec>,
    pub network: String,
    /// Other names the container answers to on its network.
    pub aliases: Vec<String>,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub health: Option<HealthSpec>,
    pub volumes: Vec<VolumeSpec>,
    /// `UID:GID` to run as (default: the image's user).
    pub user: Option<String>,
}

/// A managed container as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    /// `starting`, `healthy`, `unhealthy` when the container has a health check.
    pub health: Option<String>,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    /// Published ports: (container port, protocol, host ip, host port).
    pub ports: Vec<(u16, String, String, u16)>,
    /// IP address on each network the container is attached to, by network name (empty while
    /// the container is stopped).
    pub addresses: BTreeMap<String, String>,
    /// The named volumes mounted (not bind mounts).
    pub volumes: Vec<String>,
}

/// What a command run to completion printed, and how it exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    pub exit_code: i64,
    /// Standard output and standard error, interleaved.
    pub output: String,
}

/// The container events that wake controllers (Docker matches `health_status` against
/// `health_status: healthy` and the like).
pub const LIFECYCLE_ACTIONS: &[&str] = &["start", "die", "oom", "destroy", "health_status"];

/// Whether an event's action is one of [`LIFECYCLE_ACTIONS`].
pub(crate) fn is_lifecycle(action: &str) -> bool {
    let action = action.split(':').next().unwrap_or_default().trim();
    LIFECYCLE_ACTIONS.contains(&action)
}

/// An engine event about a managed container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: String,
    /// `die`, `oom`, `destroy`, `start`, `health_status: healthy`, ...
    pub action: String,
    pub labels: HashMap<String, String>,
}

/// Where a streamed command's standard output goes.
pub(crate) type OutputSink<'a> = &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send);
/// Where a streamed command's standard input comes from.
pub(crate) type InputSource<'a> = &'a mut (dyn tokio::io::AsyncRead + Unpin + Send);

/// Most bytes of standard error (and of standard output without a sink) a streamed command
/// keeps for its [`CommandOutput`].
pub(crate) const STREAMED_OUTPUT_KEPT: usize = 64 * 1024;

/// A stream of log output (stdout and stderr interleaved as the engine delivers them).
pub(crate) type LogStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, DriverError>> + Send>>;

/// A container's CPU use in cores, one figure per engine sample (about one a second).
pub(crate) type CpuStream = Pin<Box<dyn Stream<Item = Result<f64, DriverError>> + Send>>;

/// A stream of container events; it ends when the engine connection ends.
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEvent, DriverError>> + Send>>;

/// What controllers need from a container engine.
#[async_trait]
pub trait ContainerDriver: Send + Sync {
    /// Checks that the engine answers.
    async fn ping(&self) -> Result<(), DriverError>;
    /// Every container carrying `minicloud.dev/managed-by=minicloud`, running or not.
    async fn list_managed(&self) -> Result<Vec<ContainerInfo>, DriverError>;
    /// One container by id or name; `None` when it does not exist.
    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, DriverError>;
    /// Makes sure the image is present, pulling it when a registry answers; pull progress is
    /// reported through `progress` (a few messages per pull, not one per chunk).
    async fn ensure_image(&self, image: &str, progress: &(dyn Fn(String) + Send + Sync)) -> Result<(), DriverError>;
    /// Makes sure exactly one bridge network of this name and `identity` exists (created with
    /// the identity's labels plus `extra`); returns its id (attach containers by id: Docker does
    /// not keep network names unique). A network of this name with other labels is never used:
    /// [`DriverError::NotOurs`].
    async fn ensure_network(
        &self,
        name: &str,
        identity: &Identity,
        extra: &HashMap<String, String>,
    ) -> Result<String, DriverError>;
    /// Attaches a running container to one more network (by id); already attached is fine.
    async fn connect_network(&self, container: &str, network_id: &str) -> Result<(), DriverError>;
    /// Detaches a container from a network (by name or id); not attached is fine.
    async fn disconnect_network(&self, container: &str, network: &str) -> Result<(), DriverError>;
    /// Makes sure a volume of this name and `identity` exists (created with the identity's
    /// labels plus `extra`). A volume of this name with other or no labels is never used:
    /// [`DriverError::NotOurs`]. `Ok(true)` when it was created now.
    async fn ensure_volume(
        &self,
        name: &str,
        identity: &Identity,
        extra: &HashMap<String, String>,
    ) -> Result<bool, DriverError>;
    /// Whether a volume of this name exists, and its labels.
    async fn inspect_volume(&self, name: &str) -> Result<Option<HashMap<String, String>>, DriverError>;
    /// Creates and starts a container; returns its id.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, DriverError>;
    /// Removes a container (running or not) and its anonymous volumes; absent is fine.
    async fn remove(&self, id_or_name: &str) -> Result<(), DriverError>;
    /// Runs a command inside a running container and waits (at most `timeout`) for it to end.
    async fn exec(&self, id_or_name: &str, command: &[String], timeout: Duration)
        -> Result<CommandOutput, DriverError>;
    /// Runs a command inside a running container with `env` added (e.g. a password the
    /// command reads, kept off its command line): its standard input comes from `input` (then
    /// closed), its standard output goes to `output`. The answer keeps the exit code and the
    /// first [`STREAMED_OUTPUT_KEPT`] bytes of standard error (and of standard output when
    /// there is no sink). At most `timeout`.
    async fn exec_streaming(
        &self,
        id_or_name: &str,
        command: &[String],
        env: &[String],
        input: Option<InputSource<'_>>,
        output: Option<OutputSink<'_>>,
        timeout: Duration,
    ) -> Result<CommandOutput, DriverError>;
    /// Runs a container to completion (at most `timeout`), then removes it. Its aliases are
    /// ignored; `network` may be `none`.
    async fn run_once(&self, spec: &ContainerSpec, timeout: Duration) -> Result<CommandOutput, DriverError>;
    /// Sends a signal (`SIGUSR2`, ...) to a container's main process.
    async fn signal(&self, id_or_name: &str, signal: &str) -> Result<(), DriverError>;
    /// Stops a container (SIGTERM, then SIGKILL after `grace`); stopped or absent is fine.
    async fn stop(&self, id_or_name: &str, grace: Duration) -> Result<(), DriverError>;
    /// Removes a named volume when its labels say `identity`; absent is fine, someone else's
    /// is [`DriverError::NotOurs`] and stays.
    async fn remove_volume(&self, name: &str, identity: &Identity) -> Result<(), DriverError>;
    /// Removes the network of this name and `identity` when no container uses it any more;
    /// networks with other labels stay.
    async fn remove_network_if_unused(&self, name: &str, identity: &Identity) -> Result<(), DriverError>;
    /// Events of managed containers from the moment of the call (even if the stream is first
    /// polled later).
    fn events(&self) -> EventStream;
    /// A container's output: the last `tail` lines (all when `None`), then new output while
    /// `follow` is set.
    async fn logs(&self, id_or_name: &str, follow: bool, tail: Option<u32>) -> Result<LogStream, DriverError>;
    /// A container's CPU use, computed as `docker stats` does, until it stops or the stream is
    /// dropped.
    async fn cpu_usage(&self, id_or_name: &str) -> Result<CpuStream, DriverError>;
    /// A container's CPU and memory use now (the engine takes two samples about a second
    /// apart); `None` when it reports no figures (a stopped container).
    async fn usage(&self, id_or_name: &str) -> Result<Option<stats::Usage>, DriverError>;
}

/// The driver over a real Docker engine. The API version is negotiated on first use (Debian's
/// engine speaks 1.41, older than bollard's default), so a driver can be made while the engine
/// is down and starts working when it comes back.
#[derive(Clone)]
pub struct DockerDriver {
    base: Docker,
    negotiated: std::sync::Arc<tokio::sync::OnceCell<Docker>>,
    /// Serialises network creation: Docker accepts two networks with one name.
    networks: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl DockerDriver {
    /// A driver for DOCKER_HOST or the local socket, without contacting the engine yet.
    pub fn lazy() -> Result<DockerDriver, DriverError> {
        let base = Docker::connect_with_defaults().map_err(|error| DriverError::Unreachable(error.to_string()))?;
        Ok(DockerDriver { base, negotiated: Default::default(), networks: Default::default() })
    }

    /// Connects through DOCKER_HOST or the local socket and negotiates the API version now.
    pub async fn connect() -> Result<DockerDriver, DriverError> {
        let driver = DockerDriver::lazy()?;
        driver.client().await?;
        Ok(driver)
    }

    /// Connects to an explicit engine address (`unix:///path` or `tcp://host:port`).
    pub async fn connect_to(host: &str) -> Result<DockerDriver, DriverError> {
        let base = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 30, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(&host.replacen("tcp://", "http://", 1), 30, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|error| DriverError::Unreachable(error.to_string()))?;
        let driver = DockerDriver { base, negotiated: Default::default(), networks: Default::default() };
        driver.client().await?;
        Ok(driver)
    }

    /// The networks with exactly this name: (id, creation time, in use) of those whose labels
    /// say `identity`, and whose the first other one is (for [`DriverError::NotOurs`]).
    async fn networks_named(
        &self,
        name: &str,
        identity: &Identity,
    ) -> Result<(Vec<(String, String, bool)>, Option<String>), DriverError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("name".to_owned(), vec![name.to_owned()])]);
        let networks = docker
            .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build()))
            .await
            .map_err(DriverError::from_bollard)?;
        let mut found = Vec::new();
        let mut foreign = None;
        for network in networks {
            if network.name.as_deref() != Some(name) {
                continue;
            }
            if let Some(owner) = identity.mismatch(&network.labels.clone().unwrap_or_default()) {
                foreign.get_or_insert(owner);
                continue;
            }
            let Some(id) = network.id else { continue };
            let inspected = docker.inspect_network(&id, None::<bollard::query_parameters::InspectNetworkOptions>).await;
            let in_use = match inspected {
                Ok(details) => details.containers.is_some_and(|containers| !containers.is_empty()),
                Err(error) if is_not_found(&error) => continue,
                Err(error) => return Err(DriverError::from_bollard(error)),
            };
            let created = network.created.map(|time| format!("{time:?}")).unwrap_or_default();
            found.push((id, created, in_use));
        }
        Ok((found, foreign))
    }

    /// The client, with the API version negotiated (once).
    async fn client(&self) -> Result<&Docker, DriverError> {
        self.negotiated
            .get_or_try_init(|| async {
                self.base.clone().negotiate_version().await.map_err(DriverError::from_bollard)
            })
            .await
    }

    fn info_from_inspect(response: bollard::models::ContainerInspectResponse) -> ContainerInfo {
        let state = response.state.unwrap_or_default();
        let mut ports = Vec::new();
        let volumes = response
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|mount| mount.typ.as_deref() == Some("volume"))
            .filter_map(|mount| mount.name)
            .collect();
        let settings = response.network_settings.unwrap_or_default();
        let addresses = settings
            .networks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(network, endpoint)| Some((network, endpoint.ip_address.filter(|ip| !ip.is_empty())?)))
            .collect();
        if let Some(map) = settings.ports {
            for (key, bindings) in map {
                let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
                let Ok(container_port) = port.parse::<u16>() else { continue };
                for binding in bindings.unwrap_or_default() {
                    let host_port = binding.host_port.as_deref().and_then(|p| p.parse::<u16>().ok());
                    if let Some(host_port) = host_port {
                        let host_ip = binding.host_ip.unwrap_or_default();
                        ports.push((container_port, protocol.to_owned(), host_ip, host_port));
                    }
                }
            }
        }
        ports.sort();
        ContainerInfo {
            id: response.id.unwrap_or_default(),
            name: response.name.unwrap_or_default().trim_start_matches('/').to_owned(),
            labels: response.config.and_then(|config| config.labels).unwrap_or_default(),
            running: state.running.unwrap_or(false),
            health: state.health.and_then(|health| health.status).map(|status| status.to_string()),
            exit_code: state.exit_code,
            started_at: state.started_at,
            ports,
            addresses,
            volumes,
        }
    }

    /// The create request for a spec.
    fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
        let mut exposed = Vec::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for port in &spec.ports {
            let key = format!("{}/{}", port.container_port, port.protocol);
            exposed.push(key.clone());
            bindings.entry(key).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(PortBinding {
                host_ip: Some(port.host_ip.clone()),
                host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
            });
        }
        let healthcheck = spec.health.as_ref().map(|health| HealthConfig {
            test: Some(health.test.clone()),
            interval: Some(i64::from(health.interval_seconds) * 1_000_000_000),
            timeout: Some(i64::from(health.timeout_seconds) * 1_000_000_000),
            retries: Some(i64::from(health.retries)),
            start_period: Some(i64::from(health.start_period_seconds) * 1_000_000_000),
            ..Default::default()
        });
        let binds: Vec<String> = spec
            .volumes
            .iter()
            .map(|volume| {
                format!("{}:{}{}", volume.volume, volume.mount_path, if volume.read_only { ":ro" } else { "" })
            })
            .collect();
        // Aliases exist only on user-defined networks (not on `none` or `bridge`).
        let aliases = (!spec.aliases.is_empty()).then(|| spec.aliases.clone());
        let endpoint = EndpointSettings { aliases, ..Default::default() };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.command.clone(),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(exposed),
            healthcheck,
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                memory: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                binds: (!binds.is_empty()).then_some(binds),
                network_mode: Some(spec.network.clone()),
                // minicloud itself replaces containers that stop (see restartPolicy).
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                init: Some(true),
                ..Default::default()
            }),
            user: spec.user.clone(),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(spec.network.clone(), endpoint)])),
            }),
            ..Default::default()
        }
    }
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{MANAGED_BY}=minicloud")])])
}

#[async_trait]
impl ContainerDriver for DockerDriver {
    async fn ping(&self) -> Result<(), DriverError> {
        self.client().await?.ping().await.map(|_| ()).map_err(DriverError::from_bollard)
    }

    async fn list_managed(&self) -> Result<Vec<ContainerInfo>, DriverError> {
        let options = ListContainersOptionsBuilder::default().all(true).filters(&managed_filter()).build();
        let summaries = self.client().await?.list_containers(Some(options)).await.map_err(DriverError::from_bollard)?;
        let mut containers = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            // Inspect for health, exit code and bound ports; a container may vanish meanwhile.
            if let Some(info) = self.inspect(&id).await? {
                containers.push(info);
            }
        }
        Ok(containers)
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, DriverError> {
        match self.client().await?.inspect_container(id_or_name, None).await {
            Ok(response) => Ok(Some(DockerDriver::info_from_inspect(response))),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn ensure_image(&self, image: &str, progress: &(dyn Fn(String) + Send + Sync)) -> Result<(), DriverError> {
        match self.client().await?.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(DriverError::from_bollard(error)),
        }
        let (name, tag) = match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
            Some((name, tag)) => (name, tag),
            None => (image, "latest"),
        };
        let options = CreateImageOptionsBuilder::default().from_image(name).tag(tag).build();
        let docker = self.client().await?;
        progress(format!("pulling image {image}"));
        let mut steps = docker.create_image(Some(options), None, None);
        let (mut layers, mut done) = (0usize, 0usize);
        while let Some(step) = steps.next().await {
            let info = match step {
                Ok(info) => info,
                Err(error) => {
                    return Err(match DriverError::from_bollard(error) {
                        DriverError::Unreachable(reason) => DriverError::Unreachable(reason),
                        other => DriverError::ImageUnavailable { image: image.to_owned(), reason: other.to_string() },
                    })
                }
            };
            match info.status.as_deref() {
                Some("Pulling fs layer") => layers += 1,
                Some("Pull complete") | Some("Already exists") => {
                    done += 1;
                    progress(format!("pulled layer {done} of {layers} of {image}"));
                }
                Some(status) if status.starts_with("Status:") || status.starts_with("Digest:") => {
                    progress(status.to_owned())
                }
                _ => {}
            }
        }
        match self.client().await?.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(error) => Err(DriverError::ImageUnavailable { image: image.to_owned(), reason: error.to_string() }),
        }
    }

    async fn ensure_network(
        &self,
        name: &str,
        identity: &Identity,
        extra: &HashMap<String, String>,
    ) -> Result<String, DriverError> {
        let _creating = self.networks.lock().await;
        let docker = self.client().await?;
        let (mut existing, foreign) = self.networks_named(name, identity).await?;
        if existing.is_empty() {
            if let Some(owner) = foreign {
                return Err(DriverError::not_ours("network", name, owner));
            }
            let request = NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".into()),
                labels: Some(identity.labels(extra)),
                ..Default::default()
            };
            return docker.create_network(request).await.map(|created| created.id).map_err(DriverError::from_bollard);
        }
        // Duplicates (made by another process, or before this lock existed): keep the one in
        // use, else the oldest, and remove the unused rest.
        existing.sort_by_key(|(_, created, in_use)| (!*in_use, created.clone()));
        let keep = existing[0].0.clone();
        for (id, _, in_use) in existing.iter().skip(1) {
            if !in_use {
                let _ = docker.remove_network(id).await;
            }
        }
        Ok(keep)
    }

    async fn connect_network(&self, container: &str, network_id: &str) -> Result<(), DriverError> {
        let request = NetworkConnectRequest { container: container.to_owned(), endpoint_config: None };
        match self.client().await?.connect_network(network_id, request).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                if message.contains("already exists") =>
            {
                Ok(())
            }
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn disconnect_network(&self, container: &str, network: &str) -> Result<(), DriverError> {
        let request = bollard::models::NetworkDisconnectRequest { container: container.to_owned(), force: Some(true) };
        match self.client().await?.disconnect_network(network, request).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                if message.contains("is not connected") =>
            {
                Ok(())
            }
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn ensure_volume(
        &self,
        name: &str,
        identity: &Identity,
        extra: &HashMap<String, String>,
    ) -> Result<bool, DriverError> {
        let not_ours = |owner: String| DriverError::not_ours("volume", name, owner);
        if let Some(labels) = self.inspect_volume(name).await? {
            return match identity.mismatch(&labels) {
                None => Ok(false),
                Some(owner) => Err(not_ours(owner)),
            };
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            driver: Some("local".into()),
            labels: Some(identity.labels(extra)),
            ..Default::default()
        };
        self.client().await?.create_volume(request).await.map_err(DriverError::from_bollard)?;
        // Creating a volume that exists (made meanwhile) succeeds without changing it: look at
        // what is there now.
        match self.inspect_volume(name).await? {
            Some(labels) => match identity.mismatch(&labels) {
                None => Ok(true),
                Some(owner) => Err(not_ours(owner)),
            },
            None => Err(DriverError::Refused(format!("volume {name} vanished right after it was created"))),
        }
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<HashMap<String, String>>, DriverError> {
        match self.client().await?.inspect_volume(name).await {
            Ok(volume) => Ok(Some(volume.labels)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, DriverError> {
        let body = DockerDriver::create_body(spec);
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let docker = self.client().await?;
        let created = docker.create_container(Some(options), body).await.map_err(DriverError::from_bollard)?;
        if let Err(error) = docker.start_container(&created.id, None).await {
            // Do not leave a created-but-never-started container behind.
            let _ = self.remove(&created.id).await;
            return Err(DriverError::from_bollard(error));
        }
        Ok(created.id)
    }

    async fn remove(&self, id_or_name: &str) -> Result<(), DriverError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.client().await?.remove_container(id_or_name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            // Removal already in progress (e.g. two reconciles): the container is going.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn exec(
        &self,
        id_or_name: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<CommandOutput, DriverError> {
        let docker = self.client().await?;
        let options = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(command.to_vec()),
            ..Default::default()
        };
        let run = async {
            let created = docker.create_exec(id_or_name, options).await.map_err(|error| {
                if is_not_found(&error) {
                    DriverError::NoSuchContainer(id_or_name.to_owned())
                } else {
                    DriverError::from_bollard(error)
                }
            })?;
            let mut output = String::new();
            if let StartExecResults::Attached { output: mut stream, .. } =
                docker.start_exec(&created.id, None).await.map_err(DriverError::from_bollard)?
            {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(DriverError::from_bollard)?;
                    output.push_str(&String::from_utf8_lossy(chunk.as_ref()));
                }
            }
            let inspected = docker.inspect_exec(&created.id).await.map_err(DriverError::from_bollard)?;
            Ok(CommandOutput { exit_code: inspected.exit_code.unwrap_or(-1), output })
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| DriverError::TimedOut {
            what: format!("`{}` in container {id_or_name}", command.join(" ")),
            seconds: timeout.as_secs(),
        })?
    }

    async fn exec_streaming(
        &self,
        id_or_name: &str,
        command: &[String],
        env: &[String],
        input: Option<InputSource<'_>>,
        output: Option<OutputSink<'_>>,
        timeout: Duration,
    ) -> Result<CommandOutput, DriverError> {
        use tokio::io::AsyncWriteExt;
        let docker = self.client().await?;
        let options = CreateExecOptions {
            attach_stdin: Some(input.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            env: Some(env.to_vec()),
            cmd: Some(command.to_vec()),
            ..Default::default()
        };
        let what = format!("`{}` in container {id_or_name}", command.join(" "));
        let run = async {
            let created = docker.create_exec(id_or_name, options).await.map_err(|error| {
                if is_not_found(&error) {
                    DriverError::NoSuchContainer(id_or_name.to_owned())
                } else {
                    DriverError::from_bollard(error)
                }
            })?;
            let StartExecResults::Attached { output: mut stream, input: mut stdin } =
                docker.start_exec(&created.id, None).await.map_err(DriverError::from_bollard)?
            else {
                return Err(DriverError::Refused(format!("{what} did not attach")));
            };
            let io = |error: std::io::Error| DriverError::Refused(format!("{what}: {error}"));
            let feed = async {
                if let Some(input) = input {
                    tokio::io::copy(input, &mut stdin).await.map_err(io)?;
                }
                stdin.shutdown().await.map_err(io)
            };
            let drain = async {
                let mut kept = Vec::new();
                let mut sink = output;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(DriverError::from_bollard)?;
                    match (chunk, sink.as_mut()) {
                        (bollard::container::LogOutput::StdOut { message }, Some(sink)) => {
                            sink.write_all(&message).await.map_err(io)?;
                        }
                        (other, _) => {
                            let bytes = other.into_bytes();
                            let room = STREAMED_OUTPUT_KEPT.saturating_sub(kept.len());
                            kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
                        }
                    }
                }
                if let Some(sink) = sink {
                    sink.flush().await.map_err(io)?;
                }
                Ok::<Vec<u8>, DriverError>(kept)
            };
            let (fed, kept) = tokio::join!(feed, drain);
            let kept = kept?;
            let inspected = docker.inspect_exec(&created.id).await.map_err(DriverError::from_bollard)?;
            let exit_code = inspected.exit_code.unwrap_or(-1);
            // A command that ends without reading all of its input is not a driver failure.
            if exit_code == 0 {
                fed?;
            }
            Ok(CommandOutput { exit_code, output: String::from_utf8_lossy(&kept).into_owned() })
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| DriverError::TimedOut { what, seconds: timeout.as_secs() })?
    }

    async fn run_once(&self, spec: &ContainerSpec, timeout: Duration) -> Result<CommandOutput, DriverError> {
        let docker = self.client().await?;
        // Nothing addresses a one-off container by name (and `none` takes no aliases).
        let mut body = DockerDriver::create_body(&ContainerSpec { aliases: Vec::new(), ..spec.clone() });
        if let Some(host) = body.host_config.as_mut() {
            host.init = Some(false);
        }
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let created = docker.create_container(Some(options), body).await.map_err(DriverError::from_bollard)?;
        let run = async {
            docker.start_container(&created.id, None).await.map_err(DriverError::from_bollard)?;
            let mut waited = docker.wait_container(&created.id, None);
            let mut exit_code = -1;
            while let Some(outcome) = waited.next().await {
                match outcome {
                    Ok(response) => exit_code = response.status_code,
                    // A non-zero exit arrives as this error.
                    Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => exit_code = code,
                    Err(error) => return Err(DriverError::from_bollard(error)),
                }
            }
            let mut output = String::new();
            let mut logs = self.logs(&created.id, false, None).await?;
            while let Some(chunk) = logs.next().await {
                output.push_str(&String::from_utf8_lossy(&chunk?));
            }
            Ok(CommandOutput { exit_code, output })
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        self.remove(&created.id).await?;
        outcome.map_err(|_| DriverError::TimedOut {
            what: format!("container {}", spec.name),
            seconds: timeout.as_secs(),
        })?
    }

    async fn signal(&self, id_or_name: &str, signal: &str) -> Result<(), DriverError> {
        let options = KillContainerOptionsBuilder::default().signal(signal).build();
        match self.client().await?.kill_container(id_or_name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Err(DriverError::NoSuchContainer(id_or_name.to_owned())),
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn stop(&self, id_or_name: &str, grace: Duration) -> Result<(), DriverError> {
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        match self.client().await?.stop_container(id_or_name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn remove_volume(&self, name: &str, identity: &Identity) -> Result<(), DriverError> {
        let Some(labels) = self.inspect_volume(name).await? else { return Ok(()) };
        if let Some(owner) = identity.mismatch(&labels) {
            return Err(DriverError::not_ours("volume", name, owner));
        }
        match self.client().await?.remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(DriverError::from_bollard(error)),
        }
    }

    async fn remove_network_if_unused(&self, name: &str, identity: &Identity) -> Result<(), DriverError> {
        let _creating = self.networks.lock().await;
        let docker = self.client().await?;
        for (id, _, in_use) in self.networks_named(name, identity).await?.0 {
            if in_use {
                continue;
            }
            match docker.remove_network(&id).await {
                Ok(()) => {}
                Err(error) if is_not_found(&error) => {}
                // A container joined meanwhile: keep it.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 403 | 409, .. }) => {}
                Err(error) => return Err(DriverError::from_bollard(error)),
            }
        }
        Ok(())
    }

    async fn logs(&self, id_or_name: &str, follow: bool, tail: Option<u32>) -> Result<LogStream, DriverError> {
        let docker = self.client().await?.clone();
        match docker.inspect_container(id_or_name, None).await {
            Ok(_) => {}
            Err(error) if is_not_found(&error) => return Err(DriverError::NoSuchContainer(id_or_name.to_owned())),
            Err(error) => return Err(DriverError::from_bollard(error)),
        }
        let tail = tail.map_or_else(|| "all".to_owned(), |lines| lines.to_string());
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        Ok(Box::pin(docker.logs(id_or_name, Some(options)).map(|chunk| {
            chunk.map(|output| bytes::Bytes::copy_from_slice(output.as_ref())).map_err(DriverError::from_bollard)
        })))
    }

    async fn cpu_usage(&self, id_or_name: &str) -> Result<CpuStream, DriverError> {
        let docker = self.client().await?.clone();
        let options = bollard::query_parameters::StatsOptionsBuilder::default().stream(true).build();
        Ok(Box::pin(docker.stats(id_or_name, Some(options)).filter_map(|sample| async move {
            match sample {
                Ok(sample) => stats::cores_used(&sample).map(Ok),
                Err(error) if is_not_found(&error) => None,
                Err(error) => Some(Err(DriverError::from_bollard(error))),
            }
        })))
    }

    async fn usage(&self, id_or_name: &str) -> Result<Option<stats::Usage>, DriverError> {
        let docker = self.client().await?.clone();
        let options = bollard::query_parameters::StatsOptionsBuilder::default().stream(false).build();
        let mut samples = docker.stats(id_or_name, Some(options));
        match samples.next().await {
            Some(Ok(sample)) => Ok(stats::usage(&sample)),
            Some(Err(error)) if is_not_found(&error) => Ok(None),
            Some(Err(error)) => Err(DriverError::from_bollard(error)),
            None => Ok(None),
        }
    }

    fn events(&self) -> EventStream {
        let mut filters = managed_filter();
        filters.insert("type".into(), vec!["container".into()]);
        // Only what changes a container's life: a controller's own probes (exec_create,
        // exec_start, exec_die) must not wake it, or a probe would call the next one at once.
        filters.insert("event".into(), LIFECYCLE_ACTIONS.iter().map(|action| (*action).to_owned()).collect());
        // The request starts when the stream is first polled; `since` keeps events from now on.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs().to_string())
            .unwrap_or_default();
        let options = EventsOptionsBuilder::default().since(&since).filters(&filters).build();
        let driver = self.clone();
        let stream = futures::stream::once(async move {
            let docker = driver.client().await?.clone();
            Ok::<_, DriverError>(docker.events(Some(options)).map(|event| {
                let event = event.map_err(DriverError::from_bollard)?;
                let actor = event.actor.unwrap_or_default();
                Ok(ContainerEvent {
                    container_id: actor.id.unwrap_or_default(),
                    action: event.action.unwrap_or_default(),
                    labels: actor.attributes.unwrap_or_default(),
                })
            }))
        });
        Box::pin(stream.flat_map(|connected| -> EventStream {
            match connected {
                Ok(events) => Box::pin(events),
                Err(error) => Box::pin(futures::stream::once(async move { Err(error) })),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_taken_port_is_read_from_dockers_messages() {
        let allocated = "driver failed programming external connectivity on endpoint x: Bind for 127.0.0.1:8080 failed: port is already allocated";
        assert_eq!(super::port_in(allocated), 8080);
        // "tcp4" must not be read as port 4.
        let in_use = "Error starting userland proxy: listen tcp4 0.0.0.0:443: bind: address already in use";
        assert_eq!(super::port_in(in_use), 443);
        assert_eq!(super::port_in("no port here"), 0);
    }
}
