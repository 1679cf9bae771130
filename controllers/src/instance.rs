//! The Instance controller: one container per Instance, kept running and matching its spec.
//!
//! Each reconcile observes the container (found by its deterministic, injective name
//! `mc.NAMESPACE.NAME.CLUSTER`, so a crash at any point can never leave two containers for one
//! object; judged by its labels, [`crate::owned`]) and takes the next step: create it, replace
//! it (spec changed, or it stopped and the restart policy says so), or only report. A
//! container, volume or network of the name that is not this object's is never used or
//! removed: `NameConflict`, `VolumeConflict`, `NetworkConflict`. Status carries the phase, container id, published ports (kept across
//! replacements so an endpoint stays valid), restart count, and the conditions
//! `ContainerRunning`, `Healthy` (with a health check) and `Ready`.
//!
//! Deletion goes through the finalizer `minicloud.dev/container`: the container, the volumes not
//! marked `retain`, and the network when no longer used are removed before the object goes.
//! Containers whose labels name no live object are removed by [`collect_orphans`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::instance::{
    HealthCheck, InstancePhase, InstanceSpec, InstanceStatus, PublishedPort, RestartPolicy,
};
use minicloud_crds::kinds::{Instance, Secret};
use minicloud_crds::meta::ConditionStatus;
use minicloud_crds::quantity::{parse_bytes, parse_cpu_millis};
use minicloud_crds::{Kind, Object, ObjectKey};
use serde_json::json;

use super::conditions::set_condition;
use super::helpers::{ensure_finalizer, record_event, remove_finalizer, write_status, FinalizerUpdate};
use super::runtime::{ReconcileError, Reconciler};
use crate::docker::labels::{self, spec_hash, Identity, Labels};
use crate::docker::names;
use crate::docker::{ContainerDriver, ContainerInfo, ContainerSpec, DriverError, HealthSpec, PublishSpec, VolumeSpec};
use crate::owned::{self, Found, OwnedNetwork, OwnedVolume, Wanted};
use minicloud_store::{EventType, NewEvent, Store, StoreError};

/// The finalizer that guards an Instance's container.
pub const FINALIZER: &str = "minicloud.dev/container";

/// How soon a reconcile comes back while a container is still starting.
const STARTING_RECHECK: Duration = Duration::from_secs(2);
/// How soon a name held by someone else is looked at again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// The Instance's named volumes: Docker name, identity, legacy name.
fn owned_volumes(cluster: &str, namespace: &str, name: &str, spec: &InstanceSpec) -> Vec<OwnedVolume> {
    spec.volumes
        .iter()
        .map(|volume| OwnedVolume {
            name: names::instance_volume(cluster, namespace, name, &volume.name),
            identity: Identity::volume(cluster, namespace, Kind::Instance, name, &volume.name),
            legacy: names::legacy::instance_volume(namespace, name, &volume.name),
        })
        .collect()
}

/// Reconciles Instances.
pub struct InstanceController {
    store: Arc<dyn Store>,
    driver: Arc<dyn ContainerDriver>,
    /// Labels added to every container (e.g. a test run's marker).
    extra_labels: HashMap<String, String>,
}

impl InstanceController {
    pub fn new(store: Arc<dyn Store>, driver: Arc<dyn ContainerDriver>, extra_labels: HashMap<String, String>) -> Self {
        InstanceController { store, driver, extra_labels }
    }

    async fn event(&self, object: &Object, event_type: EventType, reason: &str, message: String) {
        record_event(self.store.as_ref(), object, event_type, reason, message).await;
    }

    /// Environment as `KEY=value`, with Secret references resolved. Errors say which reference
    /// could not be resolved.
    async fn resolve_env(&self, namespace: &str, spec: &InstanceSpec) -> Result<Vec<String>, String> {
        let mut env = Vec::with_capacity(spec.env.len());
        for var in &spec.env {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(source)) => {
                    let reference = &source.secret_key_ref;
                    let key = ObjectKey::new(Kind::Secret, namespace, reference.name.clone());
                    let secret = match self.store.get(&key).await {
                        Ok(secret) => secret,
                        Err(StoreError::NotFound(_)) => {
                            return Err(format!("env {}: secret/{} does not exist", var.name, reference.name))
                        }
                        Err(error) => return Err(error.to_string()),
                    };
                    let secret: Secret =
                        serde_json::from_value(serde_json::to_value(&secret).map_err(|e| e.to_string())?)
                            .map_err(|error| format!("secret/{} is malformed: {error}", reference.name))?;
                    secret.spec.string_data.get(&reference.key).cloned().ok_or_else(|| {
                        format!("env {}: secret/{} has no key {:?}", var.name, reference.name, reference.key)
                    })?
                }
                (None, None) => String::new(),
            };
            env.push(format!("{}={value}", var.name));
        }
        Ok(env)
    }

    fn container_spec(
        &self,
        object: &Object,
        spec: &InstanceSpec,
        status: &InstanceStatus,
        env: Vec<String>,
        labels: HashMap<String, String>,
    ) -> ContainerSpec {
        let namespace = object.namespace();
        let name = &object.metadata.name;
        let ports = spec
            .ports
            .iter()
            .map(|port| {
                let protocol = format!("{:?}", port.protocol).to_ascii_lowercase();
                // Keep the host port of the previous container so the endpoint stays valid.
                let previous = status
                    .ports
                    .iter()
                    .find(|published| {
                        published.container_port == port.container_port && published.protocol == port.protocol
                    })
                    .map(|published| published.host_port);
                PublishSpec {
                    container_port: port.container_port,
                    protocol,
                    host_ip: port.host_ip.clone().unwrap_or_else(|| "127.0.0.1".into()),
                    host_port: port.host_port.or(previous),
                }
            })
            .collect();
        let cluster = self.store.cluster_id();
        ContainerSpec {
            name: names::instance_container(cluster, namespace, name),
            image: spec.image.clone(),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            command: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env,
            labels,
            ports,
            network: names::network(cluster, namespace, spec.network.as_deref()),
            aliases: vec![name.clone()],
            memory_bytes: spec
                .resources
                .as_ref()
                .and_then(|r| r.memory.as_deref())
                .and_then(|m| parse_bytes(m).ok())
                .map(|b| b as i64),
            nano_cpus: spec
                .resources
                .as_ref()
                .and_then(|r| r.cpu.as_deref())
                .and_then(|c| parse_cpu_millis(c).ok())
                .map(|millis| millis as i64 * 1_000_000),
            health: spec.health_check.as_ref().map(health_spec),
            volumes: spec
                .volumes
                .iter()
                .map(|volume| VolumeSpec {
                    volume: names::instance_volume(cluster, namespace, name, &volume.name),
                    mount_path: volume.mount_path.clone(),
                    read_only: volume.read_only,
                })
                .collect(),
            user: None,
        }
    }

    async fn write_status(&self, object: &mut Object, status: &InstanceStatus) -> Result<(), ReconcileError> {
        write_status(self.store.as_ref(), object, status).await
    }

    /// Deletion: remove what the Instance owns, then release the finalizer.
    async fn finalize(&self, object: Object, instance: &Instance) -> Result<Option<Duration>, ReconcileError> {
        let namespace = object.namespace().to_owned();
        let name = object.metadata.name.clone();
        let cluster = self.store.cluster_id();
        let uid = object.metadata.uid.clone().unwrap_or_default();
        let wanted = Wanted::new(cluster, Kind::Instance, &namespace, &name, &uid);
        owned::remove(self.driver.as_ref(), &wanted).await?;
        let volumes = owned_volumes(cluster, &namespace, &name, &instance.spec);
        for (volume, declared) in volumes.iter().zip(&instance.spec.volumes) {
            if declared.retain {
                continue;
            }
            match self.driver.remove_volume(&volume.name, &volume.identity).await {
                Ok(()) => {}
                // Someone else's volume under this name: it was never used, and stays.
                Err(DriverError::NotOurs { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        let network = OwnedNetwork::new(cluster, &namespace, instance.spec.network.as_deref());
        self.driver.remove_network_if_unused(&network.name, &network.identity).await?;
        match remove_finalizer(self.store.as_ref(), &object, FINALIZER).await? {
            FinalizerUpdate::Done(_) => Ok(None),
            FinalizerUpdate::Conflict => Ok(Some(Duration::ZERO)),
        }
    }

    async fn converge(&self, mut object: Object, instance: Instance) -> Result<Option<Duration>, ReconcileError> {
        let now = Utc::now();
        let generation = object.metadata.generation.unwrap_or(1);
        let namespace = object.namespace().to_owned();
        let uid = object.metadata.uid.clone().unwrap_or_default();
        let spec = &instance.spec;
        let mut status = instance.status.clone().unwrap_or_default();
        status.observed_generation = Some(generation);

        let env = match self.resolve_env(&namespace, spec).await {
            Ok(env) => env,
            Err(message) => {
                self.not_running(&mut status, "SecretNotFound", &message, generation, now);
                self.write_status(&mut object, &status).await?;
                self.event(&object, EventType::Warning, "SecretNotFound", message).await;
                return Ok(Some(Duration::from_secs(10)));
            }
        };
        let hash = spec_hash(&json!({"spec": object.spec, "env": spec_hash(&json!(env))}));
        let labels = Labels {
            cluster: self.store.cluster_id().to_owned(),
            namespace: namespace.clone(),
            kind: Kind::Instance,
            name: object.metadata.name.clone(),
            uid: uid.clone(),
            spec_hash: hash.clone(),
        }
        .to_map(&self.extra_labels);
        let wanted = Wanted::new(self.store.cluster_id(), Kind::Instance, &namespace, &object.metadata.name, &uid);
        let found = match owned::find(self.driver.as_ref(), &wanted).await {
            Ok(found) => found,
            Err(error) => return self.driver_failed(&mut object, &mut status, error, generation).await,
        };
        let mut current = match found {
            Found::Absent => None,
            Found::Ours(container) => Some((container, false)),
            Found::Earlier(container) => Some((container, true)),
            Found::Foreign(owner) => {
                let message = format!(
                    "a container named {} exists and is not this Instance's: {owner}. Remove or rename it, or give this Instance another name",
                    wanted.name
                );
                return self.conflict(&mut object, &mut status, "NameConflict", message, generation).await;
            }
            Found::Legacy(container) => {
                let volumes = owned_volumes(self.store.cluster_id(), &namespace, &object.metadata.name, spec);
                match owned::migrate_legacy(self.driver.as_ref(), &container, &volumes, &spec.image, &self.extra_labels)
                    .await
                {
                    Ok(message) => self.event(&object, EventType::Normal, "Migrated", message).await,
                    Err(message) => {
                        return self.conflict(&mut object, &mut status, "MigrationFailed", message, generation).await
                    }
                }
                None
            }
        };
        if let Some((container, earlier)) = &current {
            let replace = if *earlier {
                Some(("Replacing", "a container of an earlier object with this name was found".to_owned(), false))
            } else if container.labels.get(labels::SPEC_HASH) != Some(&hash) {
                Some(("Replacing", "the spec changed".to_owned(), false))
            } else if !container.running {
                let code = container.exit_code.unwrap_or(-1);
                let restart = match spec.restart_policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => code != 0,
                    RestartPolicy::Never => false,
                };
                restart.then(|| ("Restarting", format!("the container exited with code {code}"), true))
            } else {
                None
            };
            if let Some((reason, why, counts_as_restart)) = replace {
                let message = format!("replacing container {}: {why}", short(&container.id));
                self.event(&object, EventType::Normal, reason, message.clone()).await;
                if let Err(error) = self.driver.remove(&container.id).await {
                    return self.driver_failed(&mut object, &mut status, error, generation).await;
                }
                // One restart per container that ended: its removal can take a moment, and a
                // reconcile meanwhile sees it again (then status no longer names it).
                if counts_as_restart && status.container_id.as_deref() == Some(container.id.as_str()) {
                    status.restart_count += 1;
                }
                status.container_id = None;
                // Observers see the gap: not Ready while the replacement starts.
                self.not_running(&mut status, reason, &message, generation, now);
                self.write_status(&mut object, &status).await?;
                current = None;
            }
        } else if status.container_id.is_some() && status.phase == InstancePhase::Running {
            // It was running and vanished without us: removed outside minicloud.
            status.restart_count += 1;
            let message = "the container was removed outside minicloud; creating a new one";
            self.event(&object, EventType::Warning, "ContainerMissing", message.into()).await;
            self.not_running(&mut status, "ContainerMissing", message, generation, now);
            self.write_status(&mut object, &status).await?;
        }

        let container = match current.map(|(container, _)| container) {
            Some(container) => container,
            None => match self.create(&mut object, spec, &mut status, env, labels, generation, now).await? {
                Some(container) => container,
                None => return Ok(Some(Duration::from_secs(15))),
            },
        };
        self.observe(&mut status, &namespace, spec, &container, generation, now);
        self.write_status(&mut object, &status).await?;
        let starting =
            container.running && spec.health_check.is_some() && container.health.as_deref() != Some("healthy");
        Ok(starting.then_some(STARTING_RECHECK))
    }

    /// Creates the container. `Ok(None)` when it cannot be created yet (status says why).
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        object: &mut Object,
        spec: &InstanceSpec,
        status: &mut InstanceStatus,
        env: Vec<String>,
        labels: HashMap<String, String>,
        generation: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<ContainerInfo>, ReconcileError> {
        // Pull progress becomes events as it happens.
        let (progress, mut messages) = tokio::sync::mpsc::unbounded_channel::<String>();
        let recorder = {
            let store = self.store.clone();
            let event = object.key().map(|key| (key, object.metadata.uid.clone().unwrap_or_default()));
            tokio::spawn(async move {
                while let Some(message) = messages.recv().await {
                    let Some((key, uid)) = event.clone() else { continue };
                    let reason = if message.starts_with("Status:") { "Pulled" } else { "Pulling" };
                    let new =
                        NewEvent { object: key, uid, event_type: EventType::Normal, reason: reason.into(), message };
                    if let Err(error) = store.record_event(new).await {
                        tracing::warn!(%error, "cannot record a pull event");
                    }
                }
            })
        };
        let pulled = self
            .driver
            .ensure_image(&spec.image, &move |message| {
                let _ = progress.send(message);
            })
            .await;
        let _ = recorder.await;
        if let Err(error) = pulled {
            return match error {
                DriverError::ImageUnavailable { .. } => {
                    let message = error.to_string();
                    self.not_running(status, "ImagePullFailed", &message, generation, now);
                    self.write_status(object, status).await?;
                    self.event(object, EventType::Warning, "ImagePullFailed", message).await;
                    Err(ReconcileError(error.to_string()))
                }
                other => self.driver_failed(object, status, other, generation).await.map(|_| None),
            };
        }
        let cluster = self.store.cluster_id();
        let network = OwnedNetwork::new(cluster, object.namespace(), spec.network.as_deref());
        let mut container_spec = self.container_spec(object, spec, status, env, labels);
        let volumes = owned_volumes(cluster, object.namespace(), &object.metadata.name, spec);
        let prepared = match self.driver.ensure_network(&network.name, &network.identity, &self.extra_labels).await {
            Ok(id) => owned::ensure_volumes(self.driver.as_ref(), &volumes, &self.extra_labels)
                .await
                .map(|()| id)
                .map_err(|error| ("VolumeConflict", error)),
            Err(error) => Err(("NetworkConflict", error)),
        };
        match prepared {
            // Attach by id: names are not unique in Docker.
            Ok(id) => container_spec.network = id,
            Err((reason, error @ DriverError::NotOurs { .. })) => {
                return self.conflict(object, status, reason, error.to_string(), generation).await.map(|_| None)
            }
            Err((_, error)) => return self.driver_failed(object, status, error, generation).await.map(|_| None),
        }
        status.phase = InstancePhase::Creating;
        let id = match self.driver.create_and_start(&container_spec).await {
            Ok(id) => id,
            // A concurrent reconcile or an earlier run created it: observe it next time.
            Err(DriverError::NameTaken(_)) => return Ok(None),
            Err(DriverError::PortTaken { port }) if spec.ports.iter().all(|p| p.host_port != Some(port)) => {
                // The remembered host port was taken by someone else: take a new one.
                self.event(
                    object,
                    EventType::Warning,
                    "HostPortChanged",
                    format!("host port {port} is taken; publishing on a new port"),
                )
                .await;
                for publish in &mut container_spec.ports {
                    if publish.host_port == Some(port) {
                        publish.host_port = None;
                    }
                }
                match self.driver.create_and_start(&container_spec).await {
                    Ok(id) => id,
                    Err(error) => return self.driver_failed(object, status, error, generation).await.map(|_| None),
                }
            }
            Err(error) => return self.driver_failed(object, status, error, generation).await.map(|_| None),
        };
        let container = match self.driver.inspect(&id).await {
            Ok(Some(container)) => container,
            Ok(None) => return Ok(None),
            Err(error) => return self.driver_failed(object, status, error, generation).await.map(|_| None),
        };
        let endpoints: Vec<String> = container.ports.iter().map(|(_, _, ip, port)| format!("{ip}:{port}")).collect();
        let at = if endpoints.is_empty() { String::new() } else { format!(" on {}", endpoints.join(", ")) };
        self.event(object, EventType::Normal, "Started", format!("container {} started{at}", short(&container.id)))
            .await;
        Ok(Some(container))
    }

    /// Reports that no container runs, with a reason.
    fn not_running(
        &self,
        status: &mut InstanceStatus,
        reason: &str,
        message: &str,
        generation: i64,
        now: DateTime<Utc>,
    ) {
        status.phase = InstancePhase::Pending;
        set_condition(
            &mut status.conditions,
            "ContainerRunning",
            ConditionStatus::False,
            reason,
            message,
            generation,
            now,
        );
        set_condition(&mut status.conditions, "Ready", ConditionStatus::False, reason, message, generation, now);
    }

    /// Something that is not this Instance's holds a name it needs: nothing is touched; status
    /// and an event say what to do; looked at again later.
    async fn conflict(
        &self,
        object: &mut Object,
        status: &mut InstanceStatus,
        reason: &str,
        message: String,
        generation: i64,
    ) -> Result<Option<Duration>, ReconcileError> {
        self.not_running(status, reason, &message, generation, Utc::now());
        self.write_status(object, status).await?;
        self.event(object, EventType::Warning, reason, message).await;
        Ok(Some(CONFLICT_RECHECK))
    }

    /// A driver failure: conditions say so (Docker unreachable, refused), then retry with backoff.
    async fn driver_failed(
        &self,
        object: &mut Object,
        status: &mut InstanceStatus,
        error: DriverError,
        generation: i64,
    ) -> Result<Option<Duration>, ReconcileError> {
        let reason = if error.is_unreachable() { "DockerUnreachable" } else { "DockerError" };
        let message = error.to_string();
        self.not_running(status, reason, &message, generation, Utc::now());
        if status.container_id.is_some() && error.is_unreachable() {
            status.phase = InstancePhase::Pending;
        }
        self.write_status(object, status).await?;
        Err(ReconcileError(message))
    }

    /// Fills status from the observed container.
    fn observe(
        &self,
        status: &mut InstanceStatus,
        namespace: &str,
        spec: &InstanceSpec,
        container: &ContainerInfo,
        generation: i64,
        now: DateTime<Utc>,
    ) {
        status.container_id = Some(container.id.clone());
        // A stopped container has no address; keep the last one so that a LoadBalancer in
        // front reports the target DOWN rather than forgetting it.
        let network = names::network(self.store.cluster_id(), namespace, spec.network.as_deref());
        if let Some(address) = container.addresses.get(&network) {
            status.address = Some(address.clone());
        }
        status.started_at = container
            .started_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        status.ports = container
            .ports
            .iter()
            .map(|(container_port, protocol, host_ip, host_port)| {
                let declared = spec.ports.iter().find(|p| {
                    p.container_port == *container_port && format!("{:?}", p.protocol).eq_ignore_ascii_case(protocol)
                });
                PublishedPort {
                    name: declared.and_then(|p| p.name.clone()),
                    container_port: *container_port,
                    host_ip: host_ip.clone(),
                    host_port: *host_port,
                    protocol: declared.map(|p| p.protocol).unwrap_or_default(),
                }
            })
            .collect();
        if container.running {
            status.phase = InstancePhase::Running;
            set_condition(
                &mut status.conditions,
                "ContainerRunning",
                ConditionStatus::True,
                "Running",
                format!("container {} is running", short(&container.id)),
                generation,
                now,
            );
        } else {
            let code = container.exit_code.unwrap_or(-1);
            status.phase = if code == 0 { InstancePhase::Stopped } else { InstancePhase::Failed };
            set_condition(
                &mut status.conditions,
                "ContainerRunning",
                ConditionStatus::False,
                "Exited",
                format!("the container exited with code {code} (restartPolicy {:?})", spec.restart_policy),
                generation,
                now,
            );
        }
        let healthy = if spec.health_check.is_some() {
            let (state, reason, message) = match container.health.as_deref() {
                Some("healthy") => (ConditionStatus::True, "HealthCheckPassing", "the health check passes"),
                Some("unhealthy") => (ConditionStatus::False, "HealthCheckFailing", "the health check fails"),
                _ => (ConditionStatus::Unknown, "Starting", "waiting for the first health check"),
            };
            set_condition(&mut status.conditions, "Healthy", state, reason, message, generation, now);
            state == ConditionStatus::True
        } else {
            status.conditions.retain(|condition| condition.type_ != "Healthy");
            true
        };
        let (ready, reason, message) = match (container.running, healthy) {
            (true, true) => {
                let endpoints: Vec<String> =
                    status.ports.iter().map(|p| format!("{}:{}", p.host_ip, p.host_port)).collect();
                let message = if endpoints.is_empty() {
                    "running".to_owned()
                } else {
                    format!("serving on {}", endpoints.join(", "))
                };
                (ConditionStatus::True, "Running", message)
            }
            (true, false) => (
                ConditionStatus::False,
                "NotHealthy",
                "the container runs but its health check does not pass".to_owned(),
            ),
            (false, _) => (ConditionStatus::False, "ContainerNotRunning", "the container is not running".to_owned()),
        };
        set_condition(&mut status.conditions, "Ready", ready, reason, message, generation, now);
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A Docker health check for a declared one.
fn health_spec(check: &HealthCheck) -> HealthSpec {
    let test = if let Some(http) = &check.http {
        let url = format!("http://127.0.0.1:{}{}", http.port, http.path.as_deref().unwrap_or("/"));
        vec!["CMD-SHELL".into(), format!("wget -q -O /dev/null {url} || curl -fsS -o /dev/null {url} || exit 1")]
    } else if let Some(tcp) = &check.tcp {
        vec!["CMD-SHELL".into(), format!("nc -z 127.0.0.1 {} || exit 1", tcp.port)]
    } else if let Some(exec) = &check.exec {
        std::iter::once("CMD".to_owned()).chain(exec.command.iter().cloned()).collect()
    } else {
        vec!["NONE".into()]
    };
    HealthSpec {
        test,
        interval_seconds: check.interval_seconds.unwrap_or(10),
        timeout_seconds: check.timeout_seconds.unwrap_or(5),
        retries: check.retries.unwrap_or(3),
        start_period_seconds: check.start_period_seconds.unwrap_or(0),
    }
}

#[async_trait]
impl Reconciler for InstanceController {
    fn kind(&self) -> Kind {
        Kind::Instance
    }

    /// A changed Secret wakes the Instances of its namespace: those that read it get a new
    /// spec hash (it covers their resolved environment) and are replaced.
    fn watched_kinds(&self) -> Vec<Kind> {
        vec![Kind::Secret]
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Option<Duration>, ReconcileError> {
        let object = match self.store.get(key).await {
            Ok(object) => object,
            Err(StoreError::NotFound(_)) => {
                // Gone without our finalizer (e.g. removed by hand): make sure nothing of it is
                // left (any uid: no object of this name exists).
                let wanted = Wanted::new(self.store.cluster_id(), Kind::Instance, &key.namespace, &key.name, "");
                owned::remove(self.driver.as_ref(), &wanted).await?;
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let instance: Instance = serde_json::to_value(&object)
            .and_then(serde_json::from_value)
            .map_err(|error| ReconcileError(format!("{key} does not decode as an Instance: {error}")))?;
        if object.metadata.deletion_timestamp.is_some() {
            return self.finalize(object, &instance).await;
        }
        let object = match ensure_finalizer(self.store.as_ref(), object, FINALIZER).await? {
            FinalizerUpdate::Done(object) => *object,
            FinalizerUpdate::Conflict => return Ok(Some(Duration::ZERO)),
        };
        self.converge(object, instance).await
    }
}

/// Removes this control plane's containers (of Instances, LoadBalancers and ManagedDatabases)
/// whose labels name no
/// live object (deleted objects, objects recreated under the same name, leftovers of a crash).
/// Containers of other minicloud installations on the same engine are left alone. Returns how
/// many were removed.
pub async fn collect_orphans(store: &dyn Store, driver: &dyn ContainerDriver) -> Result<usize, ReconcileError> {
    let mut removed = 0;
    for container in driver.list_managed().await? {
        let Some(labels) = Labels::from_map(&container.labels) else { continue };
        let collected = matches!(labels.kind, Kind::Instance | Kind::LoadBalancer | Kind::ManagedDatabase);
        if !collected || labels.cluster != store.cluster_id() {
            continue;
        }
        let key = ObjectKey::new(labels.kind, labels.namespace.clone(), labels.name.clone());
        let live = match store.get(&key).await {
            Ok(object) => object.metadata.uid.as_deref() == Some(labels.uid.as_str()),
            Err(StoreError::NotFound(_)) => false,
            Err(error) => return Err(error.into()),
        };
        if !live {
            tracing::info!(container = %container.name, object = %key, "removing orphaned container");
            driver.remove(&container.id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    //! Reconcile decisions against the in-memory store and a fake engine. The integration
    //! tests (`tests/instances.rs`, `tests/resilience.rs`) prove the same with real Docker.

    use serde_json::Value;

    use super::*;
    use crate::docker::fake::{running_container, FakeDriver};
    use minicloud_store::MemoryStore;

    struct Fixture {
        store: Arc<MemoryStore>,
        driver: Arc<FakeDriver>,
        controller: InstanceController,
    }

    fn fixture(driver: FakeDriver) -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let driver = Arc::new(driver);
        let controller = InstanceController::new(store.clone(), driver.clone(), HashMap::new());
        Fixture { store, driver, controller }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Kind::Instance, "default", name)
    }

    async fn create(fixture: &Fixture, name: &str, spec: Value) -> Object {
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": name}, "spec": spec
        }))
        .expect("object");
        fixture.store.create(object).await.expect("create")
    }

    /// The container of Instance `web` in `default`.
    fn web_container(fixture: &Fixture) -> String {
        names::instance_container(fixture.store.cluster_id(), "default", "web")
    }

    fn web() -> Value {
        json!({"image": "web:1", "ports": [{"containerPort": 8080}], "restartPolicy": "Always"})
    }

    async fn status(fixture: &Fixture, name: &str) -> InstanceStatus {
        let object = fixture.store.get(&key(name)).await.expect("object");
        serde_json::from_value(object.status).expect("status")
    }

    fn condition(status: &InstanceStatus, type_: &str) -> (ConditionStatus, String) {
        let found = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        (found.status, found.reason.clone())
    }

    #[tokio::test]
    async fn creates_a_labelled_container_and_reports_ready() {
        let fixture = fixture(FakeDriver::default());
        let object = create(&fixture, "web", web()).await;
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        let stored = fixture.store.get(&key("web")).await.expect("object");
        assert_eq!(stored.metadata.finalizers, [FINALIZER]);
        let container = fixture.driver.get(&web_container(&fixture)).expect("container");
        let labels = Labels::from_map(&container.labels).expect("labels");
        assert_eq!(
            (labels.uid, labels.cluster.as_str()),
            (object.metadata.uid.clone().unwrap_or_default(), fixture.store.cluster_id())
        );
        let spec = fixture.driver.created.lock().expect("lock")[0].clone();
        assert_eq!(spec.ports[0].host_ip, "127.0.0.1");
        let network = names::network(fixture.store.cluster_id(), "default", None);
        assert_eq!(spec.network, format!("id-{network}"), "attached by network id");
        let status = status(&fixture, "web").await;
        assert_eq!(status.phase, InstancePhase::Running);
        assert_eq!(condition(&status, "Ready").0, ConditionStatus::True);
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.address.as_deref(), Some("172.30.0.2"), "the address on its network");
        // A second reconcile changes nothing.
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        assert_eq!(fixture.driver.created.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn replaces_on_spec_change_and_keeps_the_host_port() {
        let fixture = fixture(FakeDriver::default());
        create(&fixture, "web", web()).await;
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        let port = status(&fixture, "web").await.ports[0].host_port;
        let mut object = fixture.store.get(&key("web")).await.expect("object");
        object.spec["image"] = json!("web:2");
        fixture.store.update(object).await.expect("update");
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        let created = fixture.driver.created.lock().expect("lock").clone();
        assert_eq!(created.len(), 2);
        assert_eq!(created[1].image, "web:2");
        assert_eq!(created[1].ports[0].host_port, Some(port), "the new container asks for the old host port");
        let status = status(&fixture, "web").await;
        assert_eq!((status.observed_generation, status.restart_count), (Some(2), 0));
    }

    #[tokio::test]
    async fn restart_policy_decides_what_happens_after_an_exit() {
        for (policy, exit_code, replaced) in
            [("Always", 0, true), ("OnFailure", 1, true), ("OnFailure", 0, false), ("Never", 1, false)]
        {
            let fixture = fixture(FakeDriver::default());
            let mut spec = web();
            spec["restartPolicy"] = json!(policy);
            create(&fixture, "web", spec).await;
            fixture.controller.reconcile(&key("web")).await.expect("reconcile");
            fixture.driver.set(&web_container(&fixture), |c| {
                c.running = false;
                c.exit_code = Some(exit_code);
            });
            fixture.controller.reconcile(&key("web")).await.expect("reconcile");
            let status = status(&fixture, "web").await;
            let count = fixture.driver.created.lock().expect("lock").len();
            assert_eq!(count == 2, replaced, "{policy} after exit {exit_code}");
            if replaced {
                assert_eq!(status.restart_count, 1);
                assert_eq!(condition(&status, "Ready").0, ConditionStatus::True);
            } else {
                assert_eq!(condition(&status, "Ready"), (ConditionStatus::False, "ContainerNotRunning".into()));
                let phase = if exit_code == 0 { InstancePhase::Stopped } else { InstancePhase::Failed };
                assert_eq!(status.phase, phase, "{policy}");
            }
        }
    }

    #[tokio::test]
    async fn a_container_seen_again_while_its_removal_runs_counts_one_restart() {
        let fixture = fixture(FakeDriver::default());
        create(&fixture, "web", web()).await;
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        fixture.driver.set(&web_container(&fixture), |c| {
            c.running = false;
            c.exit_code = Some(137);
        });
        *fixture.driver.slow_removals.lock().expect("lock") = 1;
        // The removal is still running: the name is taken, the replacement cannot start yet.
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        assert_eq!(condition(&status(&fixture, "web").await, "Ready").0, ConditionStatus::False);
        // The next reconcile sees the same stopped container again, and then replaces it.
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        let status = status(&fixture, "web").await;
        assert_eq!(status.restart_count, 1, "one exit, one restart");
        assert_eq!(condition(&status, "Ready").0, ConditionStatus::True);
    }

    #[tokio::test]
    async fn health_checks_gate_readiness() {
        let fixture = fixture(FakeDriver::default());
        let mut spec = web();
        spec["healthCheck"] = json!({"http": {"port": 8080}});
        create(&fixture, "web", spec).await;
        let again = fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        assert_eq!(again, Some(STARTING_RECHECK), "come back while the health check is pending");
        assert_eq!(condition(&status(&fixture, "web").await, "Ready").0, ConditionStatus::False);
        fixture.driver.set(&web_container(&fixture), |c| c.health = Some("healthy".into()));
        assert_eq!(fixture.controller.reconcile(&key("web")).await.expect("reconcile"), None);
        let status = status(&fixture, "web").await;
        assert_eq!(condition(&status, "Healthy").0, ConditionStatus::True);
        assert_eq!(condition(&status, "Ready").0, ConditionStatus::True);
    }

    #[tokio::test]
    async fn deletion_removes_the_container_then_the_object() {
        let fixture = fixture(FakeDriver::default());
        create(&fixture, "web", web()).await;
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        assert!(matches!(fixture.store.delete(&key("web"), None).await, Ok(minicloud_store::Deleted::Terminating(_))));
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        assert!(fixture.driver.get(&web_container(&fixture)).is_none());
        assert!(matches!(fixture.store.get(&key("web")).await, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn problems_become_conditions() {
        let case = fixture(FakeDriver { missing_images: vec!["web:1".into()], ..FakeDriver::default() });
        create(&case, "web", web()).await;
        assert!(case.controller.reconcile(&key("web")).await.is_err(), "retried with backoff");
        assert_eq!(condition(&status(&case, "web").await, "Ready"), (ConditionStatus::False, "ImagePullFailed".into()));

        let case = fixture(FakeDriver { unreachable: true, ..FakeDriver::default() });
        create(&case, "web", web()).await;
        assert!(case.controller.reconcile(&key("web")).await.is_err());
        assert_eq!(
            condition(&status(&case, "web").await, "Ready"),
            (ConditionStatus::False, "DockerUnreachable".into())
        );

        let case = fixture(FakeDriver::default());
        let mut spec = web();
        spec["env"] = json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]);
        create(&case, "web", spec).await;
        assert_eq!(case.controller.reconcile(&key("web")).await.expect("reconcile"), Some(Duration::from_secs(10)));
        assert_eq!(condition(&status(&case, "web").await, "Ready"), (ConditionStatus::False, "SecretNotFound".into()));
        assert!(case.driver.get(&web_container(&case)).is_none(), "no container without its environment");
    }

    #[tokio::test]
    async fn names_held_by_others_are_conflicts_and_stay_untouched() {
        // Another control plane's container under this Instance's name.
        let fixture = fixture(FakeDriver::default());
        create(&fixture, "web", web()).await;
        let name = web_container(&fixture);
        let mut foreign = Labels {
            cluster: "another-cluster".into(),
            namespace: "default".into(),
            kind: Kind::Instance,
            name: "web".into(),
            uid: "u-other".into(),
            spec_hash: String::new(),
        }
        .to_map(&HashMap::new());
        let container = ContainerInfo { id: "foreign".into(), ..running_container(&name, foreign.clone()) };
        fixture.driver.containers.lock().expect("lock").insert(name.clone(), container);
        assert_eq!(fixture.controller.reconcile(&key("web")).await.expect("reconcile"), Some(CONFLICT_RECHECK));
        assert_eq!(condition(&status(&fixture, "web").await, "Ready"), (ConditionStatus::False, "NameConflict".into()));
        assert_eq!(fixture.driver.get(&name).map(|c| c.id), Some("foreign".into()), "left alone");
        assert!(fixture.driver.created.lock().expect("lock").is_empty());

        // A volume of the wanted name without this Instance's labels.
        let fixture = self::fixture(FakeDriver::default());
        let mut spec = web();
        spec["volumes"] = json!([{"name": "data", "mountPath": "/data"}]);
        create(&fixture, "web", spec).await;
        let volume = names::instance_volume(fixture.store.cluster_id(), "default", "web", "data");
        foreign.insert(labels::CLUSTER.into(), fixture.store.cluster_id().into());
        foreign.insert(labels::NAMESPACE.into(), "default-web".into());
        fixture.driver.volumes.lock().expect("lock").insert(volume.clone(), foreign.clone());
        assert!(fixture.controller.reconcile(&key("web")).await.expect("reconcile").is_some(), "looked at again");
        let (state, reason) = condition(&status(&fixture, "web").await, "Ready");
        assert_eq!((state, reason.as_str()), (ConditionStatus::False, "VolumeConflict"));
        assert!(fixture.driver.created.lock().expect("lock").is_empty(), "no container on someone else's volume");
        // Deleting the Instance leaves that volume where it is.
        fixture.store.delete(&key("web"), None).await.expect("delete");
        fixture.controller.reconcile(&key("web")).await.expect("finalize");
        assert_eq!(fixture.driver.volumes.lock().expect("lock").get(&volume), Some(&foreign));
    }

    #[tokio::test]
    async fn volumes_are_created_labelled_and_removed_unless_retained() {
        let fixture = fixture(FakeDriver::default());
        let mut spec = web();
        spec["volumes"] = json!([{"name": "scratch", "mountPath": "/scratch"}, {"name": "keep", "mountPath": "/keep", "retain": true}]);
        create(&fixture, "web", spec).await;
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        let cluster = fixture.store.cluster_id().to_owned();
        let scratch = names::instance_volume(&cluster, "default", "web", "scratch");
        let keep = names::instance_volume(&cluster, "default", "web", "keep");
        let labels = fixture.driver.volumes.lock().expect("lock").get(&scratch).cloned().expect("created");
        assert_eq!(labels.get(labels::VOLUME).map(String::as_str), Some("scratch"));
        assert_eq!(labels.get(labels::CLUSTER), Some(&cluster));
        fixture.store.delete(&key("web"), None).await.expect("delete");
        fixture.controller.reconcile(&key("web")).await.expect("finalize");
        let volumes = fixture.driver.volumes.lock().expect("lock").clone();
        assert!(!volumes.contains_key(&scratch) && volumes.contains_key(&keep), "{volumes:?}");
    }

    #[tokio::test]
    async fn orphans_of_this_cluster_go_and_others_stay() {
        let fixture = fixture(FakeDriver::default());
        create(&fixture, "web", web()).await;
        fixture.controller.reconcile(&key("web")).await.expect("reconcile");
        let orphan = |name: &str, cluster: &str| {
            let labels = Labels {
                cluster: cluster.to_owned(),
                namespace: "default".into(),
                kind: Kind::Instance,
                name: "gone".into(),
                uid: "no-such-uid".into(),
                spec_hash: String::new(),
            };
            running_container(name, labels.to_map(&HashMap::new()))
        };
        let cluster = fixture.store.cluster_id().to_owned();
        fixture.driver.containers.lock().expect("lock").insert("ours".into(), orphan("ours", &cluster));
        fixture.driver.containers.lock().expect("lock").insert("theirs".into(), orphan("theirs", "another"));
        let removed = collect_orphans(fixture.store.as_ref(), fixture.driver.as_ref()).await.expect("collect");
        assert_eq!(removed, 1);
        assert!(fixture.driver.get("ours").is_none());
        assert!(fixture.driver.get("theirs").is_some());
        assert!(fixture.driver.get(&web_container(&fixture)).is_some(), "live objects keep their containers");
    }
}
