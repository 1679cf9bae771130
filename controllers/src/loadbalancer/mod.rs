//! The LoadBalancer controller: one HAProxy container per LoadBalancer, fed with the Instances
//! its spec picks, changed without dropping a request.
//!
//! The decisions it makes, and where they are:
//!
//! | decision | where |
//! |---|---|
//! | which Instances are targets (selector or ScalingGroup, same network, an address, not leaving) | [`LoadBalancerController::select`], [`LoadBalancerSpec::picks`] |
//! | which routes attach to which listener, in which order, who wins a conflict | [`routing::attach`] |
//! | which Instances serve a route's backends; which networks HAProxy joins to reach them | [`LoadBalancerController::route_members`] |
//! | which certificate files an HTTPS listener serves; rotation without reload | [`certificates`] |
//! | which ACME HTTP-01 challenges every HTTP listener answers | [`challenges`] |
//! | whether another load balancer holds a listener's address and port (`PortInUse`) | [`LoadBalancerController::port_holder`] |
//! | keep, replace or create the HAProxy container (image, network, listener ports changed; stopped) | [`crate::container::judge`] |
//! | **reload, or change through the Runtime API** | [`plan::reload_needed`] |
//! | whether HAProxy accepts a configuration (`haproxy -c`, refusals remembered) | [`validation`] |
//! | which servers join, move, come back, drain or go, per backend | [`plan::membership`] |
//! | what status, conditions and events say | [`status`] |
//!
//! Each round: select the targets; attach the routes and read the certificates into a
//! [`layout::Layout`]; settle the container ([`crate::container`]); when there is
//! none, validate a configuration holding the current targets and start one; when the
//! structure changed, validate and reload ([`executor::reload`]); otherwise read `show stat`,
//! send the membership steps ([`executor::execute`]) and report. The container
//! (`mclb.NAMESPACE.NAME.CLUSTER`, image `minicloud/haproxy:local`) runs HAProxy in
//! master-worker mode as the control plane's own user, with the load balancer's directory
//! ([`state`]) mounted at [`config::MOUNT`]; listener `i` binds container port 8000 + i,
//! published on the listener's address (127.0.0.1 unless told; the host port is kept across
//! replacements). Deletion (finalizer
//! `minicloud.dev/loadbalancer`): targets drained, container and directory removed.

pub mod admin;
mod certificates;
mod challenges;
pub mod config;
mod executor;
mod http_rules;
mod layout;
mod naming;
mod plan;
pub mod routing;
mod state;
mod status;
mod validation;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use minicloud_crds::instance::RestartPolicy;
use minicloud_crds::kinds::{Instance, LoadBalancer, Route};
use minicloud_crds::loadbalancer::{ListenerStatus, LoadBalancerSpec, LoadBalancerStatus};
use minicloud_crds::meta::ConditionStatus;
use minicloud_crds::{Kind, ObjectKey};
use minicloud_store::{EventType, Query, Store};
use serde_json::json;

pub use self::state::collect_orphan_directories;

use self::admin::{AdminSocket, RuntimeApi, ServerStat};
use self::config::{Members, Target};
use self::layout::Layout;
use self::routing::{Attachment, BackendSource, RouteRef};
use self::state::Applied;
use self::status::Selection;
use self::validation::{Candidate, Refusal, Validator};
use crate::container::{self, Created, Desired, Settled};
use crate::docker::labels::{spec_hash, Labels};
use crate::docker::{names, short_id, ContainerDriver, ContainerInfo, ContainerSpec, PublishSpec, VolumeSpec};
use crate::meta::DRAINING_ANNOTATION;
use crate::metrics::Metrics;
use crate::owned::{self, OwnedNetwork, Wanted};
use crate::reconciler::{Action, Cleanup, Context, Controller, ReconcileError};
use minicloud_crds::conditions::set_condition;

/// The finalizer that guards a load balancer's container and directory.
pub(crate) const FINALIZER: &str = "minicloud.dev/loadbalancer";
/// The HAProxy image (built by `scripts/local-images.sh haproxy`).
pub const DEFAULT_IMAGE: &str = "minicloud/haproxy:local";
/// How long a leaving target may keep its sessions before it is removed anyway.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a load balancer's health is read back when nothing else brings it up.
const HEALTH_POLL: Duration = Duration::from_secs(2);
/// How soon to come back while something is in progress (a drain, a reload, a start).
const SOON: Duration = Duration::from_millis(250);

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
    validator: Validator,
}

/// What one round works with.
struct Round {
    /// `NAMESPACE/NAME`, written into the configuration.
    owner: String,
    directory: PathBuf,
    layout: Layout,
    /// The servers of every backend.
    members: Members,
    /// Hash of the configuration's structure.
    structure: String,
    selection: Selection,
    /// The ACME HTTP-01 answers every HTTP listener gives.
    answers: BTreeMap<String, String>,
    /// The namespace networks HAProxy joins: its own targets' and its route backends'.
    networks: BTreeSet<(String, Option<String>)>,
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
            validator: Validator::default(),
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

    /// Every Route, typed (one that does not decode is skipped: its own controller reports it).
    async fn routes(&self) -> Result<Vec<Route>, ReconcileError> {
        let routes = self.store.list(&Query { kind: Some(Kind::Route), ..Query::default() }).await?;
        Ok(routes
            .items
            .into_iter()
            .filter_map(|object| serde_json::to_value(&object).and_then(serde_json::from_value).ok())
            .collect())
    }

    /// The servers of the route backends of `layout`, and the namespace networks (other than
    /// the load balancer's own namespace's) HAProxy must join to reach them.
    async fn route_members(
        &self,
        layout: &Layout,
        own_network: &str,
    ) -> Result<(Members, BTreeSet<(String, Option<String>)>), ReconcileError> {
        let mut members = Members::new();
        let mut networks = BTreeSet::new();
        let mut by_namespace: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for backend in &layout.backends {
            let namespace = match &backend.source {
                BackendSource::Targets => continue,
                BackendSource::Instance { namespace, .. }
                | BackendSource::ScalingGroup { namespace, .. }
                | BackendSource::Selector { namespace, .. } => namespace.clone(),
            };
            if !by_namespace.contains_key(&namespace) {
                let listed = self.store.list(&Query::namespaced(Kind::Instance, &namespace)).await?;
                let typed = listed
                    .items
                    .into_iter()
                    .filter_map(|object| serde_json::to_value(&object).and_then(serde_json::from_value).ok())
                    .collect();
                by_namespace.insert(namespace.clone(), typed);
            }
            let mut targets = Vec::new();
            for instance in by_namespace.get(&namespace).into_iter().flatten() {
                let meta = &instance.metadata;
                let leaving = meta.deletion_timestamp.is_some() || meta.annotations.contains_key(DRAINING_ANNOTATION);
                let picked = match &backend.source {
                    BackendSource::Instance { name, .. } => &meta.name == name,
                    BackendSource::ScalingGroup { name, .. } => meta
                        .owner_references
                        .iter()
                        .any(|owner| owner.kind == Kind::ScalingGroup.as_str() && &owner.name == name),
                    BackendSource::Selector { labels, .. } => labels.iter().all(|(k, v)| meta.labels.get(k) == Some(v)),
                    BackendSource::Targets => false,
                };
                let address = instance.status.as_ref().and_then(|status| status.address.as_deref());
                let Some(address) = address.and_then(|address| address.parse::<IpAddr>().ok()) else { continue };
                if leaving || !picked {
                    continue;
                }
                let network = names::network(self.store.cluster_id(), &namespace, instance.spec.network.as_deref());
                if network != own_network {
                    networks.insert((namespace.clone(), instance.spec.network.clone()));
                }
                targets.push(Target { name: meta.name.clone(), address });
            }
            targets.sort();
            members.insert(backend.name.clone(), targets);
        }
        Ok((members, networks))
    }

    /// The older load balancer holding an address and port a listener of this one asks for
    /// (`NAMESPACE/NAME`, listener and bind), if any. Two binds clash on the same port when
    /// their addresses are equal or either is unspecified (0.0.0.0, ::); the older object keeps
    /// the port.
    async fn port_holder(&self, ctx: &Context<'_>, spec: &LoadBalancerSpec) -> Result<Option<String>, ReconcileError> {
        let fixed: Vec<(&str, Option<IpAddr>, u16)> = spec
            .listeners
            .iter()
            .filter_map(|l| Some((l.name.as_str(), l.bind_address().parse().ok(), l.port?)))
            .collect();
        if fixed.is_empty() {
            return Ok(None);
        }
        let own = ctx.object();
        let own_age = (own.metadata.creation_timestamp, own.namespace().to_owned(), own.metadata.name.clone());
        let all = self.store.list(&Query { kind: Some(Kind::LoadBalancer), ..Query::default() }).await?;
        let clash = |a: Option<IpAddr>, b: Option<IpAddr>| match (a, b) {
            (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
            _ => false,
        };
        for other in &all.items {
            let age = (other.metadata.creation_timestamp, other.namespace().to_owned(), other.metadata.name.clone());
            if age >= own_age || other.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Ok(other_spec) = serde_json::from_value::<LoadBalancerSpec>(other.spec.clone()) else { continue };
            for listener in &other_spec.listeners {
                let Some(port) = listener.port else { continue };
                let address = listener.bind_address().parse().ok();
                if let Some((mine, _, _)) = fixed.iter().find(|(_, mine, p)| *p == port && clash(*mine, address)) {
                    return Ok(Some(format!(
                        "listener {mine} asks for {}:{port}, which loadbalancer {}/{} (listener {}) holds; choose another port or address",
                        spec.listeners.iter().find(|l| l.name == *mine).map_or("?", |l| l.bind_address()),
                        other.namespace(),
                        other.metadata.name,
                        listener.name
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Joins the HAProxy container to the namespace networks of its targets and route backends
    /// (it publishes from its own network, [`names::loadbalancer_network`], which these never
    /// displace), and leaves those no longer needed (removed when nothing else uses them).
    async fn join_networks(
        &self,
        container: &ContainerInfo,
        networks: &BTreeSet<(String, Option<String>)>,
    ) -> Result<(), ReconcileError> {
        let cluster = self.store.cluster_id();
        let wanted: Vec<OwnedNetwork> = networks
            .iter()
            .map(|(namespace, network)| OwnedNetwork::new(cluster, namespace, network.as_deref()))
            .collect();
        for owned in &wanted {
            if container.addresses.contains_key(&owned.name) {
                continue;
            }
            let id = self.driver.ensure_network(&owned.name, &owned.identity, &self.extra_labels).await?;
            self.driver.connect_network(&container.id, &id).await?;
        }
        for joined in container.addresses.keys() {
            if wanted.iter().any(|owned| &owned.name == joined) {
                continue;
            }
            if let Some((namespace, network)) = names::parse_network(cluster, joined) {
                self.driver.disconnect_network(&container.id, joined).await?;
                let left = OwnedNetwork::new(cluster, &namespace, Some(&network));
                self.driver.remove_network_if_unused(&left.name, &left.identity).await?;
            }
        }
        Ok(())
    }

    /// Removes the namespace networks a removed HAProxy container had joined, when nothing else
    /// uses them (their Instances may have gone while it held them).
    async fn leave_networks(&self, joined: &[String]) -> Result<(), ReconcileError> {
        let cluster = self.store.cluster_id();
        for name in joined {
            if let Some((namespace, network)) = names::parse_network(cluster, name) {
                let left = OwnedNetwork::new(cluster, &namespace, Some(&network));
                self.driver.remove_network_if_unused(&left.name, &left.identity).await?;
            }
        }
        Ok(())
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
                    host_ip: listener.bind_address().to_owned(),
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
            network: names::loadbalancer_network(cluster, namespace, name),
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

    /// One round for a live load balancer.
    async fn converge(&self, ctx: &mut Context<'_>, lb: LoadBalancer) -> Result<Action, ReconcileError> {
        let now = Utc::now();
        let generation = ctx.generation();
        let (namespace, name, uid) = (ctx.namespace().to_owned(), ctx.name().to_owned(), ctx.uid().to_owned());
        let spec = &lb.spec;
        let previous = lb.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        status.observed_generation = Some(generation);

        let selection = self.select(&namespace, spec).await?;
        if let Some(message) = status::targets_on_network(&mut status, spec, &selection, generation, now) {
            ctx.event(EventType::Warning, "OtherNetwork", message).await;
        }
        // The directory, owned by this process's user, which HAProxy runs as.
        let directory = state::directory(&self.state_dir, self.store.cluster_id(), &uid);
        let user = match state::prepare(&directory) {
            Ok(user) => user,
            Err(message) => return fail(ctx, &mut status, "StateDirectoryError", message).await,
        };
        if let Some(holder) = self.port_holder(ctx, spec).await? {
            return fail(ctx, &mut status, "PortInUse", holder).await;
        }
        let routes = self.routes().await?;
        let references: Vec<RouteRef<'_>> = routes.iter().map(RouteRef::of).collect();
        let attachment = routing::attach(&namespace, &name, spec, &references);
        let certificates = certificates::collect(self.store.as_ref(), &namespace, spec, &directory, now).await?;
        let answers = challenges::wanted(self.store.as_ref()).await?;
        challenges::ensure_file(&directory)?;
        let layout = Layout::new(spec, &attachment, |listener| certificates.files(listener));
        let own_network = names::network(self.store.cluster_id(), &namespace, spec.network.as_deref());
        let (mut members, mut networks) = self.route_members(&layout, &own_network).await?;
        networks.insert((namespace.clone(), spec.network.clone()));
        for own in layout.target_backends() {
            members.insert(own.name.clone(), selection.targets.clone());
        }
        status.listeners = listener_statuses(spec, &attachment);
        let owner = format!("{namespace}/{name}");
        let structure = match config::structure(&owner, &layout) {
            Ok(structure) => spec_hash(&json!(structure)),
            Err(error) => {
                let message = format!("the configuration cannot be rendered: {error}");
                return fail(ctx, &mut status, "InvalidSpec", message).await;
            }
        };
        let desired = self.desired(ctx, spec, &status, &directory, user);
        let round = Round { owner, directory, layout, members, structure, selection, answers, networks };
        let container = match container::settle(ctx, self.driver.as_ref(), &desired, &self.extra_labels).await {
            Ok(Settled::Kept(container)) => container,
            Ok(Settled::Vacant { .. }) => return self.start(ctx, &mut status, &round, &desired).await,
            Ok(Settled::Conflict { reason, message }) => return fail(ctx, &mut status, reason, message).await,
            Err(error) => return fail(ctx, &mut status, "DockerError", error.to_string()).await,
        };
        status.container_id = Some(container.id.clone());
        status.endpoints = status::endpoints(spec, &container.ports);
        if let Err(error) = self.join_networks(&container, &round.networks).await {
            ctx.event(EventType::Warning, "NetworkJoinFailed", format!("cannot reach a route's backends: {error}"))
                .await;
        }
        let running = format!("HAProxy runs in container {}", short_id(&container.id));
        set_condition(
            &mut status.conditions,
            "ContainerRunning",
            ConditionStatus::True,
            "Running",
            running,
            generation,
            now,
        );

        let socket = AdminSocket::new(round.directory.join(config::SOCKET_FILE));
        if let Err(error) = challenges::sync(&round.directory, Some(&socket), &round.answers).await {
            tracing::warn!(lb = %round.owner, %error, "ACME answers not installed; again next round");
        }
        let applied = state::read_applied(&round.directory);
        if plan::reload_needed(applied.as_ref().map(|a| a.structure.as_str()), &round.structure) {
            if self.reload(ctx, &mut status, &round, &desired, &container, &socket).await? {
                // The new worker takes over the socket in a moment; membership follows next round.
                ctx.write_status(&status).await?;
                return Ok(Action::RequeueAfter(SOON));
            }
        } else {
            status::config_applied(&mut status, generation, now);
            self.rotate_certificates(ctx, &socket, &certificates.changed).await;
        }
        // Membership follows the configuration HAProxy runs (its backends), until a new one
        // is applied.
        let applied_layout = applied.map_or_else(|| round.layout.clone(), |applied| applied.layout);
        let servers = match socket.servers().await {
            Ok(servers) => servers,
            Err(error) => {
                let message = error.to_string();
                set_condition(
                    &mut status.conditions,
                    "Ready",
                    ConditionStatus::False,
                    "Starting",
                    message,
                    generation,
                    now,
                );
                ctx.write_status(&status).await?;
                return Ok(Action::RequeueAfter(SOON));
            }
        };
        let (servers, draining) = self.sync_members(ctx, &socket, &applied_layout, &round.members, servers).await?;
        status.targets = status::target_statuses(&applied_layout, &servers);
        for (event_type, reason, message) in status::health_events(&previous.targets, &status.targets) {
            ctx.event(event_type, reason, message).await;
        }
        self.metrics.record_lb_targets(&namespace, &name, &status::traffic(&servers));
        status::summarise(&mut status, spec, &round.selection, generation, Utc::now());
        certificates_ready(&mut status, spec, &certificates.problems, generation);
        ctx.write_status(&status).await?;
        let poll = spec
            .health_check
            .as_ref()
            .and_then(|check| check.interval_millis)
            .map_or(HEALTH_POLL, |millis| HEALTH_POLL.min(Duration::from_millis(u64::from(millis).max(250))));
        Ok(Action::RequeueAfter(if draining { SOON } else { poll }))
    }

    /// The HAProxy container this load balancer wants.
    fn desired(
        &self,
        ctx: &Context<'_>,
        spec: &LoadBalancerSpec,
        status: &LoadBalancerStatus,
        directory: &Path,
        user: String,
    ) -> Desired {
        let cluster = self.store.cluster_id();
        let (namespace, name) = (ctx.namespace(), ctx.name());
        // Only what the container itself is made of: the configuration changes without it.
        let container_hash = spec_hash(&json!({
            "image": self.image,
            "network": spec.network,
            "publishes_from": names::loadbalancer_network(cluster, namespace, name),
            "ports": spec.listeners.iter().map(|l| (l.name.clone(), l.port)).collect::<Vec<_>>(),
            "user": user,
        }));
        let labels = Labels {
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
            kind: Kind::LoadBalancer,
            name: name.to_owned(),
            uid: ctx.uid().to_owned(),
            spec_hash: container_hash,
        }
        .to_map(&self.extra_labels);
        Desired {
            wanted: Wanted::new(cluster, Kind::LoadBalancer, namespace, name, ctx.uid()),
            spec: self.container_spec(namespace, name, spec, status, directory, user, labels),
            network: OwnedNetwork::for_loadbalancer(cluster, namespace, name),
            volumes: Vec::new(),
            fixed_ports: spec.listeners.iter().filter_map(|listener| listener.port).collect(),
            restart: RestartPolicy::Always,
            noun: "HAProxy container".into(),
            hash_covers: "listener ports, network or image",
        }
    }

    /// Validates the new structure and reloads HAProxy with it. True when it reloaded; a
    /// refused configuration is reported and HAProxy keeps serving the last good one.
    async fn reload(
        &self,
        ctx: &Context<'_>,
        status: &mut LoadBalancerStatus,
        round: &Round,
        desired: &Desired,
        container: &ContainerInfo,
        socket: &AdminSocket,
    ) -> Result<bool, ReconcileError> {
        let candidate = round.candidate();
        let driver = self.driver.as_ref();
        match self.validator.check(driver, ctx.key(), &candidate, Some(&container.id), &desired.spec).await? {
            Ok(()) => {
                executor::reload(socket, driver, &container.id, &round.directory).await?;
                let applied = Applied { structure: round.structure.clone(), layout: round.layout.clone() };
                state::write_applied(&round.directory, &applied)?;
                ctx.event(EventType::Normal, "Reloaded", "HAProxy reloaded with the new configuration").await;
                status::config_applied(status, ctx.generation(), Utc::now());
                Ok(true)
            }
            Err(refusal) => {
                let text = format!(
                    "the new configuration failed validation; HAProxy keeps serving the last good one: {}",
                    refusal.message
                );
                refused(ctx, status, &refusal, text).await;
                Ok(false)
            }
        }
    }

    /// Installs renewed certificates in the running HAProxy; one that does not go through is
    /// reported (the file is written: the next reload or restart picks it up).
    async fn rotate_certificates(&self, ctx: &Context<'_>, socket: &AdminSocket, changed: &[(String, String)]) {
        for (file, pem) in changed {
            match certificates::rotate(socket, file, pem).await {
                Ok(()) => {
                    let message = format!("certificate file {file} updated without a reload");
                    ctx.event(EventType::Normal, "CertificateRotated", message).await;
                }
                Err(error) => {
                    ctx.event(EventType::Warning, "CertificateRotationFailed", error.to_string()).await;
                }
            }
        }
    }

    /// Plans and sends the membership steps; returns the servers as HAProxy reports them
    /// afterwards, and whether a drain is still running.
    async fn sync_members(
        &self,
        ctx: &Context<'_>,
        api: &dyn RuntimeApi,
        applied: &Layout,
        members: &Members,
        servers: Vec<ServerStat>,
    ) -> Result<(Vec<ServerStat>, bool), ReconcileError> {
        let membership = plan::membership(applied, members, &servers, &self.drained_for(ctx.key()));
        self.carry_out(ctx, api, membership, servers).await
    }

    /// How long each leaving server of `lb` has been leaving (its drain starts when first asked).
    fn drained_for<'a>(&'a self, lb: &'a ObjectKey) -> impl Fn(&ServerStat) -> Duration + 'a {
        let now = Instant::now();
        move |server: &ServerStat| {
            let drain = (lb.clone(), server.backend.clone(), server.server.clone());
            let mut draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
            now.saturating_duration_since(*draining.entry(drain).or_insert(now))
        }
    }

    /// Sends the steps, forgets the drains that ended and reports the targets that joined.
    async fn carry_out(
        &self,
        ctx: &Context<'_>,
        api: &dyn RuntimeApi,
        membership: plan::Membership,
        servers: Vec<ServerStat>,
    ) -> Result<(Vec<ServerStat>, bool), ReconcileError> {
        if membership.steps.is_empty() {
            return Ok((servers, membership.draining));
        }
        let done = executor::execute(api, &membership.steps)
            .await
            .map_err(|error| ReconcileError::Failed(error.to_string()))?;
        {
            let mut draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
            for (backend, server) in done.settled {
                draining.remove(&(ctx.key().clone(), backend, server));
            }
        }
        for target in &done.joined {
            ctx.event(EventType::Normal, "TargetAdded", format!("target {target} added")).await;
        }
        let servers = api.servers().await.unwrap_or(servers);
        Ok((servers, membership.draining || done.unfinished))
    }

    /// Creates the container with a validated configuration holding the current targets.
    async fn start(
        &self,
        ctx: &mut Context<'_>,
        status: &mut LoadBalancerStatus,
        round: &Round,
        desired: &Desired,
    ) -> Result<Action, ReconcileError> {
        let generation = ctx.generation();
        // The image first: it validates the configuration.
        if let Err(error) = container::pull(ctx, self.driver.as_ref(), &desired.spec.image).await {
            return fail(ctx, status, "ImagePullFailed", error.to_string()).await;
        }
        // A new HAProxy reads the answers from the file.
        challenges::sync(&round.directory, None, &round.answers).await?;
        let candidate = round.candidate();
        if let Err(refusal) =
            self.validator.check(self.driver.as_ref(), ctx.key(), &candidate, None, &desired.spec).await?
        {
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
        state::install_candidate(&round.directory)?;
        state::forget_server_states(&round.directory);
        state::write_applied(
            &round.directory,
            &Applied { structure: round.structure.clone(), layout: round.layout.clone() },
        )?;
        let started = match container::create(ctx, self.driver.as_ref(), desired, &self.extra_labels).await {
            Ok(Created::Started(started)) => started,
            Ok(Created::NameTaken) => return Ok(Action::RequeueAfter(SOON)),
            Ok(Created::Conflict { reason, message }) => return fail(ctx, status, reason, message).await,
            Err(error) => return fail(ctx, status, "DockerError", error.to_string()).await,
        };
        status.container_id = Some(started.id.clone());
        status.endpoints = status::endpoints(&lb_spec_of(ctx)?, &started.ports);
        // The targets' networks at once, so the first health checks reach them.
        if let Err(error) = self.join_networks(&started, &round.networks).await {
            ctx.event(EventType::Warning, "NetworkJoinFailed", format!("cannot reach the targets yet: {error}")).await;
        }
        let now = Utc::now();
        let running = format!("HAProxy runs in container {}", short_id(&started.id));
        set_condition(
            &mut status.conditions,
            "ContainerRunning",
            ConditionStatus::True,
            "Running",
            running,
            generation,
            now,
        );
        status::config_applied(status, generation, now);
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

    /// Deletion: drain every target, then remove the container and the directory.
    async fn release(&self, ctx: &Context<'_>) -> Result<Cleanup, ReconcileError> {
        let directory = state::directory(&self.state_dir, self.store.cluster_id(), ctx.uid());
        let socket = AdminSocket::new(directory.join(config::SOCKET_FILE));
        if let Ok(servers) = socket.servers().await {
            let leaving = plan::leave_all(&servers, &self.drained_for(ctx.key()));
            let (_, draining) = self.carry_out(ctx, &socket, leaving, servers).await?;
            if draining {
                return Ok(Cleanup::Pending(Action::RequeueAfter(SOON)));
            }
        }
        let (namespace, name) = (ctx.namespace(), ctx.name());
        let joined = self.joined_networks(namespace, name).await?;
        let wanted = Wanted::new(self.store.cluster_id(), Kind::LoadBalancer, namespace, name, ctx.uid());
        owned::remove(self.driver.as_ref(), &wanted).await?;
        self.leave_networks(&joined).await?;
        // The namespace's network goes with its last user, whichever kind that is.
        let network = ctx.object().spec.get("network").and_then(|network| network.as_str());
        let network = OwnedNetwork::new(self.store.cluster_id(), namespace, network);
        self.driver.remove_network_if_unused(&network.name, &network.identity).await?;
        let own = OwnedNetwork::for_loadbalancer(self.store.cluster_id(), namespace, name);
        self.driver.remove_network_if_unused(&own.name, &own.identity).await?;
        state::remove(&directory)?;
        self.metrics.forget_lb(namespace, name);
        self.forget(ctx.key());
        Ok(Cleanup::Done)
    }

    /// The networks the load balancer's container is attached to now (none without one).
    async fn joined_networks(&self, namespace: &str, name: &str) -> Result<Vec<String>, ReconcileError> {
        let container = names::loadbalancer_container(self.store.cluster_id(), namespace, name);
        Ok(self.driver.inspect(&container).await?.map(|info| info.addresses.into_keys().collect()).unwrap_or_default())
    }

    fn forget(&self, key: &ObjectKey) {
        self.draining.lock().unwrap_or_else(PoisonError::into_inner).retain(|(lb, _, _), _| lb != key);
        self.validator.forget(key);
    }
}

impl Round {
    /// The configuration holding the current servers, to be validated.
    fn candidate(&self) -> Candidate<'_> {
        Candidate {
            owner: &self.owner,
            layout: &self.layout,
            members: &self.members,
            directory: &self.directory,
            structure: &self.structure,
        }
    }
}

/// The spec of the object being reconciled.
fn lb_spec_of(ctx: &Context<'_>) -> Result<LoadBalancerSpec, ReconcileError> {
    serde_json::from_value(ctx.object().spec.clone()).map_err(|error| ReconcileError::InvalidSpec(error.to_string()))
}

/// What each listener serves: its attached routes.
fn listener_statuses(spec: &LoadBalancerSpec, attachment: &Attachment) -> Vec<ListenerStatus> {
    spec.listeners
        .iter()
        .map(|listener| {
            let routes = attachment.routes_on(&listener.name);
            ListenerStatus {
                name: listener.name.clone(),
                attached_routes: u32::try_from(routes.len()).unwrap_or(u32::MAX),
                routes,
            }
        })
        .collect()
}

/// `CertificatesReady`, and `Ready=False` while a listener serves no certificate it names.
fn certificates_ready(
    status: &mut LoadBalancerStatus,
    spec: &LoadBalancerSpec,
    problems: &BTreeMap<String, String>,
    generation: i64,
) {
    let now = Utc::now();
    if problems.is_empty() {
        let tls = spec.listeners.iter().any(|l| l.tls.is_some());
        if tls || status.conditions.iter().any(|c| c.type_ == "CertificatesReady") {
            let message = "every certificate the listeners name is valid and installed";
            set_condition(
                &mut status.conditions,
                "CertificatesReady",
                ConditionStatus::True,
                "Installed",
                message,
                generation,
                now,
            );
        }
        return;
    }
    let message: Vec<&str> = problems.values().map(String::as_str).collect();
    let message = message.join("; ");
    set_condition(
        &mut status.conditions,
        "CertificatesReady",
        ConditionStatus::False,
        "CertificateNotReady",
        message.clone(),
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        "Ready",
        ConditionStatus::False,
        "CertificateNotReady",
        message,
        generation,
        now,
    );
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

/// Reports a failure in `Ready`: a spec that cannot work waits for a change, anything else is
/// retried with backoff.
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

#[async_trait]
impl Controller for LoadBalancerController {
    type Resource = LoadBalancer;
    const KIND: Kind = Kind::LoadBalancer;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn watched_everywhere(&self) -> Vec<Kind> {
        // Routes and their backends may be in any namespace; every HTTP listener answers the
        // ACME challenges of every Certificate.
        vec![Kind::Instance, Kind::Route, Kind::Certificate]
    }

    async fn apply(&self, ctx: &mut Context<'_>, lb: LoadBalancer) -> Result<Action, ReconcileError> {
        self.converge(ctx, lb).await
    }

    async fn cleanup(&self, ctx: &mut Context<'_>, _: LoadBalancer) -> Result<Cleanup, ReconcileError> {
        self.release(ctx).await
    }

    async fn gone(&self, key: &ObjectKey) -> Result<(), ReconcileError> {
        let joined = self.joined_networks(&key.namespace, &key.name).await?;
        let wanted = Wanted::new(self.store.cluster_id(), Kind::LoadBalancer, &key.namespace, &key.name, "");
        owned::remove(self.driver.as_ref(), &wanted).await?;
        self.leave_networks(&joined).await?;
        let own = OwnedNetwork::for_loadbalancer(self.store.cluster_id(), &key.namespace, &key.name);
        self.driver.remove_network_if_unused(&own.name, &own.identity).await?;
        self.metrics.forget_lb(&key.namespace, &key.name);
        self.forget(key);
        Ok(())
    }
}
