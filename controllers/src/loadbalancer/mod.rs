//! The LoadBalancer controller: one HAProxy container per LoadBalancer, fed with the Instances
//! its spec picks, changed without dropping a request.
//!
//! - The container (`mclb-NAMESPACE-NAME`, image `minicloud/haproxy:local`) runs HAProxy in
//!   master-worker mode on the load balancer's network, as the control plane's own user, with
//!   the load balancer's directory (`DATA/lb/CLUSTER-UID`) mounted at [`config::MOUNT`]: the
//!   configuration and the Runtime API socket live there. Listener `i` binds container port
//!   8000 + i, published on 127.0.0.1 (the host port is kept across replacements). Only a change
//!   of image, network or listener ports replaces the container.
//! - Targets (Instances matching the selector, or owned by the ScalingGroup, in the same
//!   namespace and on the same network, with an address, neither deleted nor marked as
//!   draining by their scaling group) join and leave through the Runtime API with no reload: `add server` + `enable health` + `enable server`; a leaving one is set
//!   to DRAIN, deleted once it has no sessions left (or after [`DRAIN_TIMEOUT`]).
//! - Structural changes (listeners, algorithm, health check) write a new configuration,
//!   validated with `haproxy -c` first, then reload HAProxy with SIGUSR2; server states are
//!   saved to the state file first so DOWN and DRAIN survive the reload. A configuration that
//!   fails validation is never used: HAProxy keeps the last good one and `ConfigApplied` says why.
//! - Each reconcile reads `show stat` back into `status.targets`, conditions, events (a target
//!   going DOWN or UP) and metrics; the controller polls while the load balancer exists.
//! - Deletion (finalizer `minicloud.dev/loadbalancer`): targets drained, container and
//!   directory removed.

pub mod admin;
pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use minicloud_crds::instance::RestartPolicy;
use minicloud_crds::kinds::{Instance, LoadBalancer};
use minicloud_crds::loadbalancer::{ListenerProtocol, LoadBalancerSpec, LoadBalancerStatus, TargetStatus};
use minicloud_crds::meta::ConditionStatus;
use minicloud_crds::{Kind, ObjectKey};
use minicloud_store::{EventType, Query, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use self::admin::{AdminError, AdminSocket, ServerStat};
use self::config::Target;
use crate::conditions::set_condition;
use crate::container::{self, Created, Desired, Settled};
use crate::docker::labels::{self, spec_hash, Labels};
use crate::docker::{names, short_id, ContainerDriver, ContainerSpec, DriverError, PublishSpec, VolumeSpec};
use crate::meta::DRAINING_ANNOTATION;
use crate::metrics::{Metrics, TargetTraffic};
use crate::owned::{self, OwnedNetwork, Wanted};
use crate::reconciler::{Action, Cleanup, Context, Controller, ReconcileError};

/// The finalizer that guards a load balancer's container and directory.
pub const FINALIZER: &str = "minicloud.dev/loadbalancer";
/// The HAProxy image (built by `scripts/local-images.sh haproxy`).
pub const DEFAULT_IMAGE: &str = "minicloud/haproxy:local";
/// How long a leaving target may keep its sessions before it is removed anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a load balancer's health is read back when nothing else brings it up.
const HEALTH_POLL: Duration = Duration::from_secs(2);
/// How soon to come back while something is in progress (a drain, a reload, a start).
const SOON: Duration = Duration::from_millis(250);
/// Time allowed for `haproxy -c`.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Remembers which structure the running HAProxy was configured with.
const APPLIED_FILE: &str = "applied.json";
/// Part of HAProxy's rejection kept in conditions and events.
const MAX_MESSAGE: usize = 1500;

/// The directory of a load balancer under the control plane's state directory:
/// `lb/CLUSTER-UID`, the cluster part (8 characters of the store's id) keeping control planes
/// that share a state directory apart, and the whole short enough for a socket path.
pub fn directory(state_dir: &Path, cluster: &str, uid: &str) -> PathBuf {
    state_dir.join("lb").join(format!("{}-{uid}", cluster_prefix(cluster)))
}

fn cluster_prefix(cluster: &str) -> String {
    cluster.chars().filter(char::is_ascii_alphanumeric).take(8).collect()
}

/// What the running HAProxy was configured from (kept in [`APPLIED_FILE`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Applied {
    /// Hash of the structural configuration.
    structure: String,
    /// The spec that configuration came from: membership changes follow its listeners until a
    /// new structure is applied.
    spec: LoadBalancerSpec,
}

/// The targets a spec picks right now.
#[derive(Debug, Default)]
struct Selection {
    targets: Vec<Target>,
    /// Matching Instances on another network.
    other_network: Vec<String>,
    /// Matching Instances without an address yet.
    waiting: Vec<String>,
}

/// A configuration about to be checked: what it is rendered from and where it is written.
struct Candidate<'a> {
    owner: &'a str,
    spec: &'a LoadBalancerSpec,
    targets: &'a [Target],
    directory: &'a Path,
    /// Hash of its structural part: a refusal is remembered by it.
    structure: &'a str,
}

/// Why HAProxy refused a configuration.
struct Refusal {
    message: String,
    /// Refused just now, not remembered from an earlier round.
    first: bool,
}

/// Reconciles LoadBalancers.
pub struct LoadBalancerController {
    store: Arc<dyn Store>,
    driver: Arc<dyn ContainerDriver>,
    extra_labels: HashMap<String, String>,
    state_dir: PathBuf,
    image: String,
    metrics: Arc<Metrics>,
    /// When each leaving server (load balancer, backend, server) started draining.
    draining: Mutex<HashMap<(ObjectKey, String, String), Instant>>,
    /// The last structure hash that failed validation, per load balancer (not validated again).
    rejected: Mutex<HashMap<ObjectKey, (String, String)>>,
}

impl LoadBalancerController {
    pub fn new(
        store: Arc<dyn Store>,
        driver: Arc<dyn ContainerDriver>,
        extra_labels: HashMap<String, String>,
        state_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Self {
        LoadBalancerController {
            store,
            driver,
            extra_labels,
            state_dir,
            image: DEFAULT_IMAGE.to_owned(),
            metrics,
            draining: Mutex::default(),
            rejected: Mutex::default(),
        }
    }

    /// Uses another HAProxy image.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = image.into();
        self
    }

    /// The Instances the spec picks, split into targets and those that cannot be.
    async fn select(&self, namespace: &str, spec: &LoadBalancerSpec) -> Result<Selection, ReconcileError> {
        let instances = self.store.list(&Query::namespaced(Kind::Instance, namespace)).await?;
        let network = spec.network.as_deref().unwrap_or("default");
        let mut selection = Selection::default();
        for object in instances.items {
            // Leaving: deleted, or drained by its scaling group before it is deleted.
            let leaving = object.metadata.deletion_timestamp.is_some()
                || object.metadata.annotations.contains_key(DRAINING_ANNOTATION);
            if leaving || !spec.picks(&object.metadata.labels, &object.metadata.owner_references) {
                continue;
            }
            let name = object.metadata.name.clone();
            let instance: Instance = match serde_json::to_value(&object).and_then(serde_json::from_value) {
                Ok(instance) => instance,
                Err(error) => {
                    tracing::warn!(instance = %name, %error, "an Instance does not decode; not a target");
                    continue;
                }
            };
            if instance.spec.network.as_deref().unwrap_or("default") != network {
                selection.other_network.push(name);
                continue;
            }
            let address = instance.status.as_ref().and_then(|status| status.address.as_deref());
            match address.and_then(|address| address.parse::<IpAddr>().ok()) {
                Some(address) => selection.targets.push(Target { name, address }),
                None => selection.waiting.push(name),
            }
        }
        selection.targets.sort();
        Ok(selection)
    }

    /// The spec of the container (everything but the configuration, which is in the directory).
    #[allow(clippy::too_many_arguments)]
    fn container_spec(
        &self,
        namespace: &str,
        name: &str,
        spec: &LoadBalancerSpec,
        status: &LoadBalancerStatus,
        directory: &Path,
        user: String,
        labels: HashMap<String, String>,
    ) -> ContainerSpec {
        let ports = spec
            .listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                let previous =
                    status.endpoints.get(&listener.name).and_then(|url| url.rsplit(':').next()?.parse().ok());
                PublishSpec {
                    container_port: config::container_port(index),
                    protocol: "tcp".into(),
                    host_ip: "127.0.0.1".into(),
                    host_port: listener.port.or(previous),
                }
            })
            .collect();
        let cluster = self.store.cluster_id();
        ContainerSpec {
            name: names::loadbalancer_container(cluster, namespace, name),
            image: self.image.clone(),
            entrypoint: Some(vec![
                "/usr/sbin/haproxy".into(),
                "-W".into(),
                "-db".into(),
                "-f".into(),
                format!("{}/{}", config::MOUNT, config::CONFIG_FILE),
            ]),
            command: None,
            env: Vec::new(),
            labels,
            ports,
            network: names::network(cluster, namespace, spec.network.as_deref()),
            aliases: Vec::new(),
            memory_bytes: None,
            nano_cpus: None,
            health: None,
            volumes: vec![VolumeSpec {
                volume: directory.display().to_string(),
                mount_path: config::MOUNT.into(),
                read_only: false,
            }],
            user: Some(user),
        }
    }

    /// Whether HAProxy accepts the candidate configuration: a structure it refused before is
    /// refused again without asking; otherwise the candidate is rendered, written and checked
    /// with `haproxy -c`.
    async fn check(
        &self,
        key: &ObjectKey,
        candidate: &Candidate<'_>,
        running: Option<&str>,
        template: &ContainerSpec,
    ) -> Result<Result<(), Refusal>, ReconcileError> {
        let known = self.rejected.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned();
        if let Some((structure, message)) = known {
            if structure == candidate.structure {
                return Ok(Err(Refusal { message, first: false }));
            }
        }
        let rendered = config::render(candidate.owner, candidate.spec, candidate.targets)
            .map_err(|error| ReconcileError::Failed(error.to_string()))?;
        write_atomically(&candidate.directory.join(config::CANDIDATE_FILE), &rendered)?;
        match self.validate(running, template).await? {
            Ok(()) => {
                self.rejected.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
                Ok(Ok(()))
            }
            Err(message) => {
                self.rejected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone(), (candidate.structure.to_owned(), message.clone()));
                Ok(Err(Refusal { message, first: true }))
            }
        }
    }

    /// Runs `haproxy -c` on the candidate file: inside the running container when there is
    /// one, else in a one-off container of the same image. `Err` holds HAProxy's complaint.
    async fn validate(
        &self,
        running: Option<&str>,
        template: &ContainerSpec,
    ) -> Result<Result<(), String>, DriverError> {
        let candidate = format!("{}/{}", config::MOUNT, config::CANDIDATE_FILE);
        let command = vec!["/usr/sbin/haproxy".to_owned(), "-c".into(), "-q".into(), "-f".into(), candidate];
        let output = match running {
            Some(container) => self.driver.exec(container, &command, VALIDATE_TIMEOUT).await?,
            None => {
                let mut check = template.clone();
                check.name = format!("{}-check-{:08x}", template.name, rand::random::<u32>());
                check.entrypoint = Some(command);
                check.ports.clear();
                check.network = "none".into();
                // Labels of no live object: a leftover of a crash is collected as an orphan.
                check.labels.insert(labels::UID.into(), "validation".into());
                self.driver.run_once(&check, VALIDATE_TIMEOUT).await?
            }
        };
        if output.exit_code == 0 {
            Ok(Ok(()))
        } else {
            let mut message = output.output.trim().replace(&format!("{}/", config::MOUNT), "");
            if message.is_empty() {
                message = format!("haproxy -c exited with code {}", output.exit_code);
            }
            if message.len() > MAX_MESSAGE {
                message = message.chars().take(MAX_MESSAGE).collect();
            }
            Ok(Err(message))
        }
    }

    /// Deletion: drain every target, then remove the container and the directory.
    async fn release(&self, ctx: &Context<'_>) -> Result<Cleanup, ReconcileError> {
        let key = ctx.key().clone();
        let object = ctx.object();
        let namespace = ctx.namespace().to_owned();
        let name = ctx.name().to_owned();
        let uid = ctx.uid().to_owned();
        let directory = directory(&self.state_dir, self.store.cluster_id(), &uid);
        let socket = AdminSocket::new(directory.join(config::SOCKET_FILE));
        if let Ok(servers) = socket.servers().await {
            let mut busy = false;
            for server in &servers {
                busy |= self.leave(&socket, &key, server).await;
            }
            if busy {
                return Ok(Cleanup::Pending(Action::RequeueAfter(SOON)));
            }
        }
        let wanted = Wanted::new(self.store.cluster_id(), Kind::LoadBalancer, &namespace, &name, &uid);
        owned::remove(self.driver.as_ref(), &wanted).await?;
        // The namespace's network goes with its last user, whichever kind that is.
        let network = object.spec.get("network").and_then(|network| network.as_str());
        let network = OwnedNetwork::new(self.store.cluster_id(), &namespace, network);
        self.driver.remove_network_if_unused(&network.name, &network.identity).await?;
        match std::fs::remove_dir_all(&directory) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(ReconcileError::Failed(format!("cannot remove {}: {error}", directory.display())))
            }
        }
        self.metrics.forget_lb(&namespace, &name);
        self.forget(&key);
        Ok(Cleanup::Done)
    }

    fn forget(&self, key: &ObjectKey) {
        self.draining.lock().unwrap_or_else(PoisonError::into_inner).retain(|(lb, _, _), _| lb != key);
        self.rejected.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// Takes one step to remove `server`: DRAIN first; once it has no sessions (or drained for
    /// [`DRAIN_TIMEOUT`]), MAINT and delete. True while it is still there.
    async fn leave(&self, socket: &AdminSocket, lb: &ObjectKey, server: &ServerStat) -> bool {
        let id = format!("{}/{}", server.backend, server.server);
        let drain_key = (lb.clone(), server.backend.clone(), server.server.clone());
        let started = *self
            .draining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(drain_key.clone())
            .or_insert_with(Instant::now);
        // A target that serves nothing (DOWN: its health check fails, or MAINT) has nothing to
        // drain and never shows DRAIN: it goes at once.
        let serving = !server.state.starts_with("DOWN") && !server.state.starts_with("MAINT");
        let outcome = async {
            if !serving {
                if !server.state.starts_with("MAINT") {
                    socket.expect(&format!("set server {id} state maint"), &[]).await?;
                }
                socket.expect(&format!("shutdown sessions server {id}"), &[]).await?;
                socket.expect(&format!("del server {id}"), &["Server deleted"]).await?;
                return Ok(true);
            }
            if server.state != "DRAIN" {
                // Sessions counted before this command may have grown since: look again next
                // round, with fresh numbers.
                socket.expect(&format!("set server {id} state drain"), &[]).await?;
                return Ok(false);
            }
            let timed_out = started.elapsed() >= DRAIN_TIMEOUT;
            if server.current_sessions > 0 && !timed_out {
                return Ok(false);
            }
            socket.expect(&format!("set server {id} state maint"), &[]).await?;
            if server.current_sessions > 0 {
                // Drained for DRAIN_TIMEOUT and still busy: end what is left.
                socket.expect(&format!("shutdown sessions server {id}"), &[]).await?;
            }
            socket.expect(&format!("del server {id}"), &["Server deleted"]).await?;
            Ok::<bool, AdminError>(true)
        }
        .await;
        match outcome {
            Ok(true) => {
                self.draining.lock().unwrap_or_else(PoisonError::into_inner).remove(&drain_key);
                false
            }
            Ok(false) => true,
            Err(error) => {
                // Typically idle connections not purged yet: the next round deletes it.
                tracing::debug!(%error, server = %id, "removal not finished");
                true
            }
        }
    }

    /// Makes HAProxy's servers match the targets, listener by listener. True while something is
    /// still in progress (a drain).
    async fn sync_members(
        &self,
        socket: &AdminSocket,
        lb: &ObjectKey,
        applied: &LoadBalancerSpec,
        targets: &[Target],
        servers: &[ServerStat],
    ) -> Result<(bool, Vec<String>), AdminError> {
        let arguments = config::server_arguments(applied.health_check.as_ref());
        let mut in_progress = false;
        let mut joined = Vec::new();
        for listener in &applied.listeners {
            let backend = config::backend(&listener.name);
            let present: HashMap<&str, &ServerStat> =
                servers.iter().filter(|s| s.backend == backend).map(|s| (s.server.as_str(), s)).collect();
            for target in targets {
                let id = format!("{backend}/{}", target.name);
                let address = config::socket_address(target, listener.target_port);
                match present.get(target.name.as_str()) {
                    None => {
                        socket
                            .expect(&format!("add server {id} {address} {arguments}"), &["New server registered"])
                            .await?;
                        socket.expect(&format!("enable health {id}"), &[]).await?;
                        socket.expect(&format!("enable server {id}"), &[]).await?;
                        if !joined.contains(&target.name) {
                            joined.push(target.name.clone());
                        }
                    }
                    Some(server) => {
                        if server.address != address {
                            let command =
                                format!("set server {id} addr {} port {}", target.address, listener.target_port);
                            socket.expect(&command, &["IP changed", "no need", "port changed", "IP and port"]).await?;
                        }
                        if server.state == "DRAIN" || server.state == "MAINT" {
                            // It came back before it was removed.
                            socket.expect(&format!("set server {id} state ready"), &[]).await?;
                            self.draining.lock().unwrap_or_else(PoisonError::into_inner).remove(&(
                                lb.clone(),
                                backend.clone(),
                                target.name.clone(),
                            ));
                        }
                    }
                }
            }
            for server in present.values().filter(|s| !targets.iter().any(|t| t.name == s.server)) {
                in_progress |= self.leave(socket, lb, server).await;
            }
        }
        Ok((in_progress, joined))
    }

    async fn converge(&self, ctx: &mut Context<'_>, lb: LoadBalancer) -> Result<Action, ReconcileError> {
        let key = ctx.key().clone();
        let now = Utc::now();
        let generation = ctx.generation();
        let namespace = ctx.namespace().to_owned();
        let name = ctx.name().to_owned();
        let owner = format!("{namespace}/{name}");
        let uid = ctx.uid().to_owned();
        let spec = &lb.spec;
        let previous = lb.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        status.observed_generation = Some(generation);

        let selection = self.select(&namespace, spec).await?;
        let network = spec.network.as_deref().unwrap_or("default");
        if selection.other_network.is_empty() {
            set_condition(
                &mut status.conditions,
                "TargetsOnNetwork",
                ConditionStatus::True,
                "SameNetwork",
                format!("every matching Instance is on network {network}"),
                generation,
                now,
            );
        } else {
            let message = format!(
                "not routing to {} (another network): a load balancer reaches only Instances on its own network ({network})",
                selection.other_network.join(", ")
            );
            let flipped = set_condition(
                &mut status.conditions,
                "TargetsOnNetwork",
                ConditionStatus::False,
                "OtherNetwork",
                message.clone(),
                generation,
                now,
            );
            if flipped {
                ctx.event(EventType::Warning, "OtherNetwork", message).await;
            }
        }

        // The directory, owned by this process's user, which HAProxy runs as.
        let directory = directory(&self.state_dir, self.store.cluster_id(), &uid);
        let user = match prepare_directory(&directory) {
            Ok(user) => user,
            Err(message) => return fail(ctx, &mut status, "StateDirectoryError", message).await,
        };
        let structure = match config::structure(&owner, spec) {
            Ok(structure) => spec_hash(&json!(structure)),
            Err(error) => {
                let message = format!("the configuration cannot be rendered: {error}");
                return fail(ctx, &mut status, "InvalidSpec", message).await;
            }
        };
        let container_hash = spec_hash(&json!({
            "image": self.image,
            "network": spec.network,
            "ports": spec.listeners.iter().map(|l| (l.name.clone(), l.port)).collect::<Vec<_>>(),
            "user": user,
        }));
        let labels = Labels {
            cluster: self.store.cluster_id().to_owned(),
            namespace: namespace.clone(),
            kind: Kind::LoadBalancer,
            name: name.clone(),
            uid: uid.clone(),
            spec_hash: container_hash.clone(),
        }
        .to_map(&self.extra_labels);
        let cluster = self.store.cluster_id();
        let desired = Desired {
            wanted: Wanted::new(cluster, Kind::LoadBalancer, &namespace, &name, &uid),
            spec: self.container_spec(&namespace, &name, spec, &status, &directory, user, labels),
            network: OwnedNetwork::new(cluster, &namespace, spec.network.as_deref()),
            volumes: Vec::new(),
            fixed_ports: spec.listeners.iter().filter_map(|listener| listener.port).collect(),
            restart: RestartPolicy::Always,
            noun: "HAProxy container".into(),
            hash_covers: "listener ports, network or image",
        };
        let container = match container::settle(ctx, self.driver.as_ref(), &desired, &self.extra_labels).await {
            Ok(Settled::Kept(container)) => container,
            Ok(Settled::Vacant { .. }) => {
                return self.start(ctx, &mut status, spec, &selection, &desired, &directory, &structure).await
            }
            Ok(Settled::Conflict { reason, message }) => return fail(ctx, &mut status, reason, message).await,
            Err(error) => return fail(ctx, &mut status, "DockerError", error.to_string()).await,
        };
        let template = &desired.spec;
        status.container_id = Some(container.id.clone());
        status.endpoints = endpoints(spec, &container.ports);
        set_condition(
            &mut status.conditions,
            "ContainerRunning",
            ConditionStatus::True,
            "Running",
            format!("HAProxy runs in container {}", short_id(&container.id)),
            generation,
            now,
        );

        // Structural change: validate, then reload.
        let applied = read_applied(&directory);
        let mut reloaded = false;
        let mut applied_spec = applied.as_ref().map(|a| a.spec.clone()).unwrap_or_else(|| spec.clone());
        if applied.as_ref().map(|a| a.structure.as_str()) != Some(structure.as_str()) {
            let candidate = Candidate {
                owner: &owner,
                spec,
                targets: &selection.targets,
                directory: &directory,
                structure: &structure,
            };
            match self.check(&key, &candidate, Some(&container.id), template).await? {
                Ok(()) => {
                    let socket = AdminSocket::new(directory.join(config::SOCKET_FILE));
                    // Keep DOWN, DRAIN and MAINT across the reload.
                    if let Ok(state) = socket.command("show servers state").await {
                        write_atomically(&directory.join(config::STATE_FILE), &state)?;
                    }
                    install_candidate(&directory)?;
                    self.driver.signal(&container.id, "SIGUSR2").await?;
                    write_applied(&directory, &Applied { structure: structure.clone(), spec: spec.clone() })?;
                    applied_spec = spec.clone();
                    reloaded = true;
                    ctx.event(EventType::Normal, "Reloaded", "HAProxy reloaded with the new configuration").await;
                    config_applied(&mut status, generation, now);
                }
                Err(refusal) => {
                    let text = format!(
                        "the new configuration failed validation; HAProxy keeps serving the last good one: {}",
                        refusal.message
                    );
                    refused(ctx, &mut status, &refusal, text).await;
                }
            }
        } else {
            config_applied(&mut status, generation, now);
        }
        if reloaded {
            // The new worker takes over the socket in a moment; membership follows next round.
            ctx.write_status(&status).await?;
            return Ok(Action::RequeueAfter(SOON));
        }

        // Membership and health through the Runtime API.
        let socket = AdminSocket::new(directory.join(config::SOCKET_FILE));
        let servers = match socket.servers().await {
            Ok(servers) => servers,
            Err(error) => {
                set_condition(
                    &mut status.conditions,
                    "Ready",
                    ConditionStatus::False,
                    "Starting",
                    error.to_string(),
                    generation,
                    now,
                );
                ctx.write_status(&status).await?;
                return Ok(Action::RequeueAfter(SOON));
            }
        };
        let (in_progress, joined) = self
            .sync_members(&socket, &key, &applied_spec, &selection.targets, &servers)
            .await
            .map_err(|error| ReconcileError::Failed(error.to_string()))?;
        for target in &joined {
            ctx.event(EventType::Normal, "TargetAdded", format!("target {target} added")).await;
        }
        let servers =
            if joined.is_empty() && !in_progress { servers } else { socket.servers().await.unwrap_or(servers) };
        status.targets = target_statuses(&applied_spec, &servers);
        self.report_health(ctx, &previous.targets, &status.targets).await;
        self.metrics.record_lb_targets(&namespace, &name, &traffic(&servers));
        self.summarise(&mut status, &selection, generation);
        ctx.write_status(&status).await?;
        let poll = spec
            .health_check
            .as_ref()
            .and_then(|check| check.interval_millis)
            .map_or(HEALTH_POLL, |millis| HEALTH_POLL.min(Duration::from_millis(u64::from(millis).max(250))));
        Ok(Action::RequeueAfter(if in_progress { SOON } else { poll }))
    }

    /// Creates the container with a validated configuration holding the current targets.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        ctx: &mut Context<'_>,
        status: &mut LoadBalancerStatus,
        spec: &LoadBalancerSpec,
        selection: &Selection,
        desired: &Desired,
        directory: &Path,
        structure: &str,
    ) -> Result<Action, ReconcileError> {
        let generation = ctx.generation();
        let owner = format!("{}/{}", ctx.namespace(), ctx.name());
        // The image first: it validates the configuration.
        if let Err(error) = container::pull(ctx, self.driver.as_ref(), &desired.spec.image).await {
            return fail(ctx, status, "ImagePullFailed", error.to_string()).await;
        }
        let candidate = Candidate { owner: &owner, spec, targets: &selection.targets, directory, structure };
        if let Err(refusal) = self.check(ctx.key(), &candidate, None, &desired.spec).await? {
            let text = format!("the configuration failed validation: {}", refusal.message);
            refused(ctx, status, &refusal, text.clone()).await;
            // Not retried: the same configuration would be refused again; a change of the
            // spec (or a restart with another image) starts over.
            set_condition(
                &mut status.conditions,
                "Ready",
                ConditionStatus::False,
                "ConfigInvalid",
                text,
                generation,
                Utc::now(),
            );
            ctx.write_status(status).await?;
            return Ok(Action::AwaitChange);
        }
        install_candidate(directory)?;
        // Saved states belong to an earlier HAProxy.
        let _ = std::fs::remove_file(directory.join(config::STATE_FILE));
        write_applied(directory, &Applied { structure: structure.to_owned(), spec: spec.clone() })?;
        let started = match container::create(ctx, self.driver.as_ref(), desired, &self.extra_labels).await {
            Ok(Created::Started(started)) => started,
            Ok(Created::NameTaken) => return Ok(Action::RequeueAfter(SOON)),
            Ok(Created::Conflict { reason, message }) => return fail(ctx, status, reason, message).await,
            Err(error) => return fail(ctx, status, "DockerError", error.to_string()).await,
        };
        status.container_id = Some(started.id.clone());
        status.endpoints = endpoints(spec, &started.ports);
        let now = Utc::now();
        set_condition(
            &mut status.conditions,
            "ContainerRunning",
            ConditionStatus::True,
            "Running",
            format!("HAProxy runs in container {}", short_id(&started.id)),
            generation,
            now,
        );
        config_applied(status, generation, now);
        set_condition(
            &mut status.conditions,
            "Ready",
            ConditionStatus::False,
            "Starting",
            "HAProxy is starting",
            generation,
            now,
        );
        ctx.write_status(status).await?;
        Ok(Action::RequeueAfter(SOON))
    }

    /// Events for targets that went DOWN or came back UP.
    async fn report_health(&self, ctx: &Context<'_>, before: &[TargetStatus], after: &[TargetStatus]) {
        for target in after {
            let Some(old) = before.iter().find(|old| old.name == target.name) else { continue };
            let check = target.last_check.as_deref().map(|c| format!(" (last check: {c})")).unwrap_or_default();
            match (old.state.as_str(), target.state.as_str()) {
                (old, "DOWN") if old != "DOWN" => {
                    let message = format!("target {} ({}) is DOWN{check}", target.name, target.address);
                    ctx.event(EventType::Warning, "TargetDown", message).await;
                }
                ("DOWN", "UP") => {
                    let message = format!("target {} ({}) is UP again{check}", target.name, target.address);
                    ctx.event(EventType::Normal, "TargetUp", message).await;
                }
                _ => {}
            }
        }
        for gone in before.iter().filter(|old| !after.iter().any(|new| new.name == old.name)) {
            ctx.event(EventType::Normal, "TargetRemoved", format!("target {} drained and removed", gone.name)).await;
        }
    }

    /// The `TargetsHealthy` and `Ready` conditions.
    fn summarise(&self, status: &mut LoadBalancerStatus, selection: &Selection, generation: i64) {
        let now = Utc::now();
        let members: Vec<&TargetStatus> =
            status.targets.iter().filter(|t| selection.targets.iter().any(|s| s.name == t.name)).collect();
        let healthy = members.iter().filter(|t| t.healthy).count();
        let total = members.len();
        let endpoint = status.endpoints.values().next().cloned().unwrap_or_default();
        let (targets_state, targets_reason, targets_message) = if total == 0 {
            let message = if selection.waiting.is_empty() {
                "no Instance matches the targets of this load balancer".to_owned()
            } else {
                format!("waiting for {} to get an address", selection.waiting.join(", "))
            };
            (ConditionStatus::False, "NoTargets", message)
        } else if healthy == total {
            (ConditionStatus::True, "AllHealthy", format!("{healthy}/{total} targets healthy"))
        } else {
            let down: Vec<&str> = members.iter().filter(|t| !t.healthy).map(|t| t.name.as_str()).collect();
            (
                ConditionStatus::False,
                "TargetsUnhealthy",
                format!("{healthy}/{total} targets healthy; not healthy: {}", down.join(", ")),
            )
        };
        set_condition(
            &mut status.conditions,
            "TargetsHealthy",
            targets_state,
            targets_reason,
            targets_message.clone(),
            generation,
            now,
        );
        let (ready, reason, message) = if total == 0 {
            (ConditionStatus::False, "NoTargets", targets_message)
        } else if healthy == 0 {
            (ConditionStatus::False, "NoHealthyTargets", targets_message)
        } else {
            (ConditionStatus::True, "Serving", format!("serving {endpoint} with {healthy}/{total} healthy targets"))
        };
        set_condition(&mut status.conditions, "Ready", ready, reason, message, generation, now);
    }
}

/// Says why a configuration was refused: `ConfigApplied=False` and, the first time this
/// configuration is refused, a Warning event (not one per round).
async fn refused(ctx: &Context<'_>, status: &mut LoadBalancerStatus, refusal: &Refusal, text: String) {
    if refusal.first {
        ctx.event(EventType::Warning, "ConfigInvalid", text.clone()).await;
    }
    set_condition(
        &mut status.conditions,
        "ConfigApplied",
        ConditionStatus::False,
        "ConfigInvalid",
        text,
        ctx.generation(),
        Utc::now(),
    );
}

/// Reports a failure in `Ready` and retries with backoff.
async fn fail(
    ctx: &mut Context<'_>,
    status: &mut LoadBalancerStatus,
    reason: &str,
    message: String,
) -> Result<Action, ReconcileError> {
    set_condition(
        &mut status.conditions,
        "Ready",
        ConditionStatus::False,
        reason,
        message.clone(),
        ctx.generation(),
        Utc::now(),
    );
    ctx.write_status(status).await?;
    Err(if reason == "InvalidSpec" { ReconcileError::InvalidSpec(message) } else { ReconcileError::Failed(message) })
}

/// Creates the directory (mode 0700) and returns `UID:GID` of its owner, HAProxy's user.
fn prepare_directory(directory: &Path) -> Result<String, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let metadata = std::fs::metadata(directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    // The socket path must fit a Unix socket address (108 bytes).
    let socket = directory.join(config::SOCKET_FILE);
    if socket.as_os_str().len() >= 108 {
        return Err(format!(
            "{} is too long for a Unix socket; start the server with a shorter --data-dir",
            socket.display()
        ));
    }
    Ok(format!("{}:{}", metadata.uid(), metadata.gid()))
}

/// Writes a file through a temporary one and a rename, so readers see the old or the new whole.
fn write_atomically(path: &Path, contents: &str) -> Result<(), ReconcileError> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|error| ReconcileError::Failed(format!("cannot write {}: {error}", path.display())))
}

/// The validated candidate becomes the configuration HAProxy loads (a rename: atomic).
fn install_candidate(directory: &Path) -> Result<(), ReconcileError> {
    std::fs::rename(directory.join(config::CANDIDATE_FILE), directory.join(config::CONFIG_FILE))
        .map_err(|error| ReconcileError::Failed(format!("cannot install the configuration: {error}")))
}

/// `ConfigApplied=True`: HAProxy runs this generation's configuration.
fn config_applied(status: &mut LoadBalancerStatus, generation: i64, now: chrono::DateTime<Utc>) {
    set_condition(
        &mut status.conditions,
        "ConfigApplied",
        ConditionStatus::True,
        "Applied",
        "HAProxy runs the configuration of this generation",
        generation,
        now,
    );
}

fn read_applied(directory: &Path) -> Option<Applied> {
    let text = std::fs::read_to_string(directory.join(APPLIED_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_applied(directory: &Path, applied: &Applied) -> Result<(), ReconcileError> {
    let text = serde_json::to_string(applied).map_err(|error| ReconcileError::Failed(error.to_string()))?;
    write_atomically(&directory.join(APPLIED_FILE), &text)
}

/// Listener name to URL, from the container's published ports.
fn endpoints(spec: &LoadBalancerSpec, ports: &[(u16, String, String, u16)]) -> BTreeMap<String, String> {
    spec.listeners
        .iter()
        .enumerate()
        .filter_map(|(index, listener)| {
            let (_, _, ip, port) = ports.iter().find(|(container, ..)| *container == config::container_port(index))?;
            let scheme = match listener.protocol {
                ListenerProtocol::Http => "http",
                ListenerProtocol::Tcp => "tcp",
            };
            Some((listener.name.clone(), format!("{scheme}://{ip}:{port}")))
        })
        .collect()
}

/// Per target: the worst state over the listeners' backends (a target is UP only when it is UP
/// everywhere), with the address and last check of the first listener.
fn target_statuses(applied: &LoadBalancerSpec, servers: &[ServerStat]) -> Vec<TargetStatus> {
    let rank = |state: &str| match state {
        "UP" => 0,
        "NOLB" => 1,
        "DRAIN" => 2,
        "DOWN" => 3,
        _ => 4,
    };
    let backends: Vec<String> = applied.listeners.iter().map(|l| config::backend(&l.name)).collect();
    let mut targets: BTreeMap<&str, TargetStatus> = BTreeMap::new();
    for backend in &backends {
        for server in servers.iter().filter(|s| &s.backend == backend) {
            let entry = targets.entry(server.server.as_str()).or_insert_with(|| TargetStatus {
                name: server.server.clone(),
                address: server.address.clone(),
                healthy: true,
                state: server.state.clone(),
                last_check: (!server.last_check.is_empty()).then(|| server.last_check.clone()),
            });
            if rank(&server.state) > rank(&entry.state) {
                entry.state = server.state.clone();
            }
        }
    }
    targets
        .into_values()
        .map(|mut target| {
            target.healthy = target.state == "UP";
            target
        })
        .collect()
}

/// Per target traffic summed over the backends, for the metrics.
fn traffic(servers: &[ServerStat]) -> Vec<TargetTraffic> {
    let mut by_target: BTreeMap<&str, TargetTraffic> = BTreeMap::new();
    for server in servers {
        let entry = by_target.entry(server.server.as_str()).or_insert_with(|| TargetTraffic {
            target: server.server.clone(),
            up: true,
            ..TargetTraffic::default()
        });
        entry.requests += server.total_sessions;
        for (sum, value) in entry.responses.iter_mut().zip(server.responses) {
            *sum += value;
        }
        entry.up &= server.state == "UP";
    }
    by_target.into_values().collect()
}

#[async_trait]
impl Controller for LoadBalancerController {
    type Resource = LoadBalancer;
    const KIND: Kind = Kind::LoadBalancer;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn watched_kinds(&self) -> Vec<Kind> {
        vec![Kind::Instance]
    }

    async fn apply(&self, ctx: &mut Context<'_>, lb: LoadBalancer) -> Result<Action, ReconcileError> {
        self.converge(ctx, lb).await
    }

    async fn cleanup(&self, ctx: &mut Context<'_>, _: LoadBalancer) -> Result<Cleanup, ReconcileError> {
        self.release(ctx).await
    }

    async fn gone(&self, key: &ObjectKey) -> Result<(), ReconcileError> {
        let wanted = Wanted::new(self.store.cluster_id(), Kind::LoadBalancer, &key.namespace, &key.name, "");
        owned::remove(self.driver.as_ref(), &wanted).await?;
        self.metrics.forget_lb(&key.namespace, &key.name);
        self.forget(key);
        Ok(())
    }
}

/// Removes directories of load balancers that no longer exist (their container goes with the
/// orphan collection). Returns how many were removed.
pub async fn collect_orphan_directories(store: &dyn Store, state_dir: &Path) -> Result<usize, ReconcileError> {
    let root = state_dir.join("lb");
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(0) };
    let live: std::collections::HashSet<String> = store
        .list(&Query { kind: Some(Kind::LoadBalancer), ..Query::default() })
        .await?
        .items
        .into_iter()
        .filter_map(|object| object.metadata.uid)
        .collect();
    let ours = format!("{}-", cluster_prefix(store.cluster_id()));
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Directories of other control planes sharing this state directory are theirs.
        let Some(uid) = name.strip_prefix(&ours) else { continue };
        if !live.contains(uid) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_up_only_when_every_listener_says_so() {
        let spec: LoadBalancerSpec = serde_json::from_value(json!({
            "listeners": [{"name": "http", "targetPort": 8080}, {"name": "admin", "targetPort": 9090}],
            "targets": {"selector": {"matchLabels": {"app": "web"}}}
        }))
        .expect("spec");
        let server = |backend: &str, name: &str, state: &str| ServerStat {
            backend: backend.into(),
            server: name.into(),
            state: state.into(),
            address: "172.18.0.2:8080".into(),
            last_check: "L7OK/200".into(),
            total_sessions: 3,
            ..ServerStat::default()
        };
        let servers = [
            server("be-http", "a", "UP"),
            server("be-admin", "a", "DOWN"),
            server("be-http", "b", "UP"),
            server("be-admin", "b", "UP"),
            server("be-other", "c", "UP"),
        ];
        let targets = target_statuses(&spec, &servers);
        let states: Vec<(&str, &str, bool)> =
            targets.iter().map(|t| (t.name.as_str(), t.state.as_str(), t.healthy)).collect();
        assert_eq!(states, [("a", "DOWN", false), ("b", "UP", true)]);
        let summed = traffic(&servers[..4]);
        assert_eq!((summed[0].requests, summed[0].up, summed[1].up), (6, false, true));
    }

    #[test]
    fn endpoints_map_listeners_to_published_ports() {
        let spec: LoadBalancerSpec = serde_json::from_value(json!({
            "listeners": [{"name": "http", "targetPort": 8080}, {"name": "db", "protocol": "TCP", "targetPort": 5432}],
            "targets": {"selector": {"matchLabels": {"app": "web"}}}
        }))
        .expect("spec");
        let ports =
            [(8000, "tcp".to_owned(), "127.0.0.1".to_owned(), 49200), (8001, "tcp".into(), "127.0.0.1".into(), 49201)];
        let found = endpoints(&spec, &ports);
        assert_eq!(found["http"], "http://127.0.0.1:49200");
        assert_eq!(found["db"], "tcp://127.0.0.1:49201");
    }
}
