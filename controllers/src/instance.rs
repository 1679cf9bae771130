//! The Instance controller: one container per Instance, kept running and matching its spec.
//!
//! The decisions it makes, and where they are:
//!
//! | decision | where |
//! |---|---|
//! | keep, replace (spec changed, an exit the restart policy restarts) or create the container | [`crate::container::judge`], [`crate::container::settle`] |
//! | whether a container, volume or network of the name is this object's | [`crate::owned`] |
//! | which environment the container gets (Secret references resolved) | [`InstanceController::resolve_env`] |
//! | what status says: phase, ports, restarts, `ContainerRunning`, `Healthy`, `Ready` | [`InstanceController::observe`] |
//! | what deletion removes (container, volumes not `retain`, an unused network) | the [`Controller`] impl's `cleanup` |
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
//! Containers whose labels name no live object are removed by [`crate::orphans`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::instance::{HealthCheck, InstancePhase, InstanceSpec, InstanceStatus, PublishedPort};
use minicloud_crds::kinds::{Instance, Secret};
use minicloud_crds::meta::ConditionStatus;
use minicloud_crds::quantity::{parse_bytes, parse_cpu_millis};
use minicloud_crds::{Kind, ObjectKey};
use serde_json::json;

use crate::container::{self, Created, Desired, Settled, Why};
use crate::docker::labels::{spec_hash, Identity, Labels};
use crate::docker::names;
use crate::docker::{
    short_id, ContainerDriver, ContainerInfo, ContainerSpec, DriverError, HealthSpec, PublishSpec, VolumeSpec,
};
use crate::owned::{self, OwnedNetwork, OwnedVolume, Wanted};
use crate::reconciler::{Action, Cleanup, Context, Controller, ReconcileError};
use minicloud_crds::conditions::set_condition;
use minicloud_store::{EventType, Store, StoreError};

/// The finalizer that guards an Instance's container.
pub(crate) const FINALIZER: &str = "minicloud.dev/container";

/// How soon a reconcile comes back while a container is still starting.
const STARTING_RECHECK: Duration = Duration::from_secs(2);
/// How soon a name held by someone else is looked at again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(30);
/// How soon an unresolved Secret reference is looked at again.
const SECRET_RECHECK: Duration = Duration::from_secs(10);
/// How soon a name still taken (a removal still running) is looked at again.
const NAME_TAKEN_RECHECK: Duration = Duration::from_secs(15);

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
        namespace: &str,
        name: &str,
        spec: &InstanceSpec,
        status: &InstanceStatus,
        env: Vec<String>,
        labels: HashMap<String, String>,
    ) -> ContainerSpec {
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
            aliases: vec![name.to_owned()],
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

    /// The container this Instance wants, labelled with the hash of its spec and resolved
    /// environment.
    fn desired(&self, ctx: &Context<'_>, spec: &InstanceSpec, status: &InstanceStatus, env: Vec<String>) -> Desired {
        let cluster = self.store.cluster_id();
        let (namespace, name) = (ctx.namespace(), ctx.name());
        let mut hashed = json!({"spec": ctx.object().spec, "env": spec_hash(&json!(env))});
        // A restart asked for changes the hash; without one the hash is what it always was.
        if let Some(asked) = ctx.object().metadata.annotations.get(minicloud_crds::instance::RESTARTED_AT_ANNOTATION) {
            hashed["restartedAt"] = json!(asked);
        }
        let hash = spec_hash(&hashed);
        let labels = Labels {
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
            kind: Kind::Instance,
            name: name.to_owned(),
            uid: ctx.uid().to_owned(),
            spec_hash: hash,
        }
        .to_map(&self.extra_labels);
        Desired {
            wanted: Wanted::new(cluster, Kind::Instance, namespace, name, ctx.uid()),
            spec: self.container_spec(namespace, name, spec, status, env, labels),
            network: OwnedNetwork::new(cluster, namespace, spec.network.as_deref()),
            volumes: owned_volumes(cluster, namespace, name, spec),
            fixed_ports: spec.ports.iter().filter_map(|port| port.host_port).collect(),
            restart: spec.restart_policy,
            noun: "container".into(),
            hash_covers: "spec",
        }
    }

    /// One round for a live Instance.
    async fn converge(&self, ctx: &mut Context<'_>, instance: Instance) -> Result<Action, ReconcileError> {
        let now = Utc::now();
        let generation = ctx.generation();
        let spec = &instance.spec;
        let mut status = instance.status.clone().unwrap_or_default();
        status.observed_generation = Some(generation);

        let env = match self.resolve_env(ctx.namespace(), spec).await {
            Ok(env) => env,
            Err(message) => {
                not_running(&mut status, "SecretNotFound", &message, generation, now);
                ctx.write_status(&status).await?;
                ctx.event(EventType::Warning, "SecretNotFound", message).await;
                return Ok(Action::RequeueAfter(SECRET_RECHECK));
            }
        };
        let desired = self.desired(ctx, spec, &status, env);
        let settled = match container::settle(ctx, self.driver.as_ref(), &desired, &self.extra_labels).await {
            Ok(settled) => settled,
            Err(error) => return driver_failed(ctx, &mut status, error).await,
        };
        let kept = match settled {
            Settled::Kept(container) => Some(container),
            Settled::Conflict { reason, message } => return conflict(ctx, &mut status, reason, &message).await,
            Settled::Vacant { replaced: Some(replaced) } => {
                // One restart per container that ended: its removal can take a moment, and a
                // round meanwhile sees it again (then status no longer names it).
                let exited = matches!(replaced.why, Why::Exited(_));
                if exited && status.container_id.as_deref() == Some(replaced.id.as_str()) {
                    status.restart_count += 1;
                }
                status.container_id = None;
                // Observers see the gap: not Ready while the replacement starts.
                let reason = if exited { "Restarting" } else { "Replacing" };
                not_running(&mut status, reason, &replaced.message, generation, now);
                ctx.write_status(&status).await?;
                None
            }
            Settled::Vacant { replaced: None } => {
                if status.container_id.is_some() && status.phase == InstancePhase::Running {
                    // It was running and vanished without us: removed outside minicloud.
                    status.restart_count += 1;
                    let message = "the container was removed outside minicloud; creating a new one";
                    ctx.event(EventType::Warning, "ContainerMissing", message).await;
                    not_running(&mut status, "ContainerMissing", message, generation, now);
                    ctx.write_status(&status).await?;
                }
                None
            }
        };
        let container = match kept {
            Some(container) => container,
            None => {
                status.phase = InstancePhase::Creating;
                match container::create(ctx, self.driver.as_ref(), &desired, &self.extra_labels).await {
                    Ok(Created::Started(container)) => container,
                    Ok(Created::NameTaken) => return Ok(Action::RequeueAfter(NAME_TAKEN_RECHECK)),
                    Ok(Created::Conflict { reason, message }) => {
                        return conflict(ctx, &mut status, reason, &message).await
                    }
                    Err(error @ DriverError::ImageUnavailable { .. }) => {
                        let message = error.to_string();
                        not_running(&mut status, "ImagePullFailed", &message, generation, now);
                        ctx.write_status(&status).await?;
                        ctx.event(EventType::Warning, "ImagePullFailed", message).await;
                        return Err(error.into());
                    }
                    Err(error) => return driver_failed(ctx, &mut status, error).await,
                }
            }
        };
        self.observe(&mut status, ctx.namespace(), spec, &container, generation, now);
        ctx.write_status(&status).await?;
        let starting =
            container.running && spec.health_check.is_some() && container.health.as_deref() != Some("healthy");
        Ok(if starting { Action::RequeueAfter(STARTING_RECHECK) } else { Action::AwaitChange })
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
                format!("container {} is running", short_id(&container.id)),
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

/// Reports that no container runs, with a reason.
fn not_running(status: &mut InstanceStatus, reason: &str, message: &str, generation: i64, now: DateTime<Utc>) {
    status.phase = InstancePhase::Pending;
    set_condition(&mut status.conditions, "ContainerRunning", ConditionStatus::False, reason, message, generation, now);
    set_condition(&mut status.conditions, "Ready", ConditionStatus::False, reason, message, generation, now);
}

/// Something that is not this Instance's holds a name it needs (the toolkit recorded the
/// event): nothing is touched; status says what to do; looked at again later.
async fn conflict(
    ctx: &mut Context<'_>,
    status: &mut InstanceStatus,
    reason: &str,
    message: &str,
) -> Result<Action, ReconcileError> {
    not_running(status, reason, message, ctx.generation(), Utc::now());
    ctx.write_status(status).await?;
    Ok(Action::RequeueAfter(CONFLICT_RECHECK))
}

/// A driver failure: conditions say so (Docker unreachable, refused), then retry with backoff.
async fn driver_failed(
    ctx: &mut Context<'_>,
    status: &mut InstanceStatus,
    error: DriverError,
) -> Result<Action, ReconcileError> {
    let reason = if error.is_unreachable() { "DockerUnreachable" } else { "DockerError" };
    not_running(status, reason, &error.to_string(), ctx.generation(), Utc::now());
    ctx.write_status(status).await?;
    Err(error.into())
}

#[async_trait]
impl Controller for InstanceController {
    type Resource = Instance;
    const KIND: Kind = Kind::Instance;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// A changed Secret wakes the Instances of its namespace: those that read it get a new
    /// spec hash (it covers their resolved environment) and are replaced.
    fn watched_kinds(&self) -> Vec<Kind> {
        vec![Kind::Secret]
    }

    async fn apply(&self, ctx: &mut Context<'_>, instance: Instance) -> Result<Action, ReconcileError> {
        self.converge(ctx, instance).await
    }

    /// Removes the container, the volumes not marked `retain`, and the network when no longer
    /// used.
    async fn cleanup(&self, ctx: &mut Context<'_>, instance: Instance) -> Result<Cleanup, ReconcileError> {
        let cluster = self.store.cluster_id();
        let (namespace, name) = (ctx.namespace(), ctx.name());
        let wanted = Wanted::new(cluster, Kind::Instance, namespace, name, ctx.uid());
        owned::remove(self.driver.as_ref(), &wanted).await?;
        let volumes = owned_volumes(cluster, namespace, name, &instance.spec);
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
        let network = OwnedNetwork::new(cluster, namespace, instance.spec.network.as_deref());
        self.driver.remove_network_if_unused(&network.name, &network.identity).await?;
        Ok(Cleanup::Done)
    }

    /// Gone without our finalizer (e.g. removed by hand): nothing of it may be left (any uid:
    /// no object of this name exists).
    async fn gone(&self, key: &ObjectKey) -> Result<(), ReconcileError> {
        let wanted = Wanted::new(self.store.cluster_id(), Kind::Instance, &key.namespace, &key.name, "");
        owned::remove(self.driver.as_ref(), &wanted).await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Reconcile decisions against the in-memory store and a fake engine. The integration
    //! tests (`tests/it/instances.rs`, `tests/it/resilience.rs`) prove the same with real Docker.
    //! The fixture is shared with the other modules' tests that need an Instance (orphans).

    use serde_json::Value;

    use super::*;
    use crate::docker::fake::{running_container, FakeDriver};
    use crate::docker::labels;
    use crate::reconciler::Reconciler;
    use minicloud_crds::Object;
    use minicloud_store::MemoryStore;

    pub(crate) struct Fixture {
        pub(crate) store: Arc<MemoryStore>,
        pub(crate) driver: Arc<FakeDriver>,
        pub(crate) controller: InstanceController,
    }

    pub(crate) fn fixture(driver: FakeDriver) -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let driver = Arc::new(driver);
        let controller = InstanceController::new(store.clone(), driver.clone(), HashMap::new());
        Fixture { store, driver, controller }
    }

    pub(crate) fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Kind::Instance, "default", name)
    }

    pub(crate) async fn create(fixture: &Fixture, name: &str, spec: Value) -> Object {
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": name}, "spec": spec
        }))
        .expect("object");
        fixture.store.create(object).await.expect("create")
    }

    /// The container of Instance `web` in `default`.
    pub(crate) fn web_container(fixture: &Fixture) -> String {
        names::instance_container(fixture.store.cluster_id(), "default", "web")
    }

    pub(crate) fn web() -> Value {
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
        assert_eq!(again, Action::RequeueAfter(STARTING_RECHECK), "come back while the health check is pending");
        assert_eq!(condition(&status(&fixture, "web").await, "Ready").0, ConditionStatus::False);
        fixture.driver.set(&web_container(&fixture), |c| c.health = Some("healthy".into()));
        assert_eq!(fixture.controller.reconcile(&key("web")).await.expect("reconcile"), Action::AwaitChange);
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
        assert_eq!(
            case.controller.reconcile(&key("web")).await.expect("reconcile"),
            Action::RequeueAfter(SECRET_RECHECK)
        );
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
        assert_eq!(
            fixture.controller.reconcile(&key("web")).await.expect("reconcile"),
            Action::RequeueAfter(CONFLICT_RECHECK)
        );
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
        assert!(
            fixture.controller.reconcile(&key("web")).await.expect("reconcile").delay().is_some(),
            "looked at again"
        );
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
}
