//! "Ensure this container": the one step Instance, LoadBalancer and ManagedDatabase take to
//! have their container, in two halves so that a controller can prepare between them (the
//! LoadBalancer validates its configuration only when it is about to create).
//!
//! - [`settle`] looks under the container's name ([`crate::owned`] judges what is there by
//!   its labels) and leaves either this object's container to keep, or a free name: an
//!   earlier object's container, one whose spec hash is stale, or one that exited when the
//!   restart policy says to restart, is removed ([`judge`] is that decision, pure); a
//!   container an earlier minicloud version named is migrated. Someone else's container is
//!   never touched: [`Settled::Conflict`].
//! - [`create`] makes the container: the image (pull progress as events), the labelled
//!   network and volumes (someone else's of the name: [`Created::Conflict`]), the container
//!   itself — a remembered host port that someone else took meanwhile gives way to a new
//!   one, a port the user fixed does not — and its inspection.
//!
//! Both record the events of what they did (Replacing or Restarting, Migrated, the conflict
//! reasons, Pulling/Pulled, HostPortChanged, Started); the controller turns the answer into
//! status and its next [`crate::reconciler::Action`].

use std::collections::HashMap;

use minicloud_crds::instance::RestartPolicy;

use crate::docker::labels::SPEC_HASH;
use crate::docker::{short_id, ContainerDriver, ContainerInfo, ContainerSpec, DriverError};
use crate::owned::{self, Found, OwnedNetwork, OwnedVolume, Wanted};
use crate::reconciler::Context;
use minicloud_store::EventType;

/// The container an object wants, and how it is judged.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Where to look, and whose it must be.
    pub wanted: Wanted,
    /// What to create: its labels carry the spec hash; its network is the network's name (the
    /// created container is attached by the network's id).
    pub spec: ContainerSpec,
    pub network: OwnedNetwork,
    pub volumes: Vec<OwnedVolume>,
    /// Host ports the user asked for: taken by someone else, they are an error, never changed.
    pub fixed_ports: Vec<u16>,
    /// What a container that exited gets.
    pub restart: RestartPolicy,
    /// How events name the container ("container", "HAProxy container", …).
    pub noun: String,
    /// What the spec hash covers, for the message of a replacement ("spec", "listener ports,
    /// network or image", …).
    pub hash_covers: &'static str,
}

/// Why a container is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// It belongs to an earlier object of the same name (deleted and created again).
    Earlier,
    /// Its spec hash is not the wanted one.
    SpecChanged,
    /// It exited with this code and the restart policy says to restart.
    Exited(i64),
}

/// A container that [`settle`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    pub id: String,
    pub why: Why,
    /// What the `Replacing` or `Restarting` event said.
    pub message: String,
}

/// What [`settle`] left.
#[derive(Clone, Debug)]
pub enum Settled {
    /// This object's container, as it should be (running, or exited for good by the restart
    /// policy).
    Kept(ContainerInfo),
    /// The name is free: nothing was there, or what was there is removed (`replaced`).
    Vacant { replaced: Option<Replacement> },
    /// A name this object needs is not this object's: nothing was touched. `reason` is the
    /// condition reason (`NameConflict`, `MigrationFailed`); an event says the same.
    Conflict { reason: &'static str, message: String },
}

/// What [`create`] did.
#[derive(Clone, Debug)]
pub enum Created {
    /// The container runs.
    Started(ContainerInfo),
    /// The name is still taken (a removal that is still running, a concurrent create): look
    /// again soon.
    NameTaken,
    /// A network or volume of the wanted name is not this object's (`NetworkConflict`,
    /// `VolumeConflict`): no container was created.
    Conflict { reason: &'static str, message: String },
}

/// Whether this object's `container` is replaced, and why: `earlier` says it is an earlier
/// object's of the same name.
pub fn judge(container: &ContainerInfo, earlier: bool, spec_hash: &str, restart: RestartPolicy) -> Option<Why> {
    if earlier {
        return Some(Why::Earlier);
    }
    if container.labels.get(SPEC_HASH).map(String::as_str) != Some(spec_hash) {
        return Some(Why::SpecChanged);
    }
    if container.running {
        return None;
    }
    let code = container.exit_code.unwrap_or(-1);
    let restart = match restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    };
    restart.then_some(Why::Exited(code))
}

/// Leaves this object's container to keep, or the name free (see the module's doc).
pub async fn settle(
    ctx: &Context<'_>,
    driver: &dyn ContainerDriver,
    desired: &Desired,
    extra_labels: &HashMap<String, String>,
) -> Result<Settled, DriverError> {
    let wanted = &desired.wanted;
    let (container, earlier) = match owned::find(driver, wanted).await? {
        Found::Absent => return Ok(Settled::Vacant { replaced: None }),
        Found::Ours(container) => (container, false),
        Found::Earlier(container) => (container, true),
        Found::Foreign(owner) => {
            let message = format!(
                "a container named {} exists and is not this {}'s: {owner}. Remove or rename it, or give this {} another name",
                wanted.name,
                ctx.key().kind,
                ctx.key().kind
            );
            ctx.event(EventType::Warning, "NameConflict", message.clone()).await;
            return Ok(Settled::Conflict { reason: "NameConflict", message });
        }
        Found::Legacy(container) => {
            let image = &desired.spec.image;
            return Ok(match owned::migrate_legacy(driver, &container, &desired.volumes, image, extra_labels).await {
                Ok(message) => {
                    ctx.event(EventType::Normal, "Migrated", message).await;
                    Settled::Vacant { replaced: None }
                }
                Err(message) => {
                    ctx.event(EventType::Warning, "MigrationFailed", message.clone()).await;
                    Settled::Conflict { reason: "MigrationFailed", message }
                }
            });
        }
    };
    let hash = desired.spec.labels.get(SPEC_HASH).map(String::as_str).unwrap_or_default();
    let Some(why) = judge(&container, earlier, hash, desired.restart) else { return Ok(Settled::Kept(container)) };
    let (reason, because) = match &why {
        Why::Earlier => {
            ("Replacing", format!("a {} of an earlier {} with this name was found", desired.noun, ctx.key().kind))
        }
        Why::SpecChanged => ("Replacing", format!("its {} changed", desired.hash_covers)),
        Why::Exited(code) => ("Restarting", format!("it exited with code {code}")),
    };
    let message = format!("replacing {} {}: {because}", desired.noun, short_id(&container.id));
    ctx.event(EventType::Normal, reason, message.clone()).await;
    driver.remove(&container.id).await?;
    Ok(Settled::Vacant { replaced: Some(Replacement { id: container.id, why, message }) })
}

/// Creates the container (see the module's doc). The `Started` event names the endpoints.
pub async fn create(
    ctx: &Context<'_>,
    driver: &dyn ContainerDriver,
    desired: &Desired,
    extra_labels: &HashMap<String, String>,
) -> Result<Created, DriverError> {
    pull(ctx, driver, &desired.spec.image).await?;
    let mut spec = desired.spec.clone();
    let network = &desired.network;
    spec.network = match driver.ensure_network(&network.name, &network.identity, extra_labels).await {
        // Attached by id: names are not unique in Docker.
        Ok(id) => id,
        Err(error @ DriverError::NotOurs { .. }) => return Ok(conflict(ctx, "NetworkConflict", error).await),
        Err(error) => return Err(error),
    };
    match owned::ensure_volumes(driver, &desired.volumes, extra_labels).await {
        Ok(()) => {}
        Err(error @ DriverError::NotOurs { .. }) => return Ok(conflict(ctx, "VolumeConflict", error).await),
        Err(error) => return Err(error),
    }
    let id = match driver.create_and_start(&spec).await {
        Ok(id) => id,
        Err(DriverError::NameTaken(_)) => return Ok(Created::NameTaken),
        Err(DriverError::PortTaken { port }) if !desired.fixed_ports.contains(&port) => {
            // A remembered host port someone else took meanwhile: publish on a new one.
            let message = format!("host port {port} is taken; publishing on a new port");
            ctx.event(EventType::Warning, "HostPortChanged", message).await;
            for publish in spec.ports.iter_mut().filter(|publish| publish.host_port == Some(port)) {
                publish.host_port = None;
            }
            match driver.create_and_start(&spec).await {
                Ok(id) => id,
                Err(DriverError::NameTaken(_)) => return Ok(Created::NameTaken),
                Err(error) => return Err(error),
            }
        }
        Err(error) => return Err(error),
    };
    let Some(container) = driver.inspect(&id).await? else { return Ok(Created::NameTaken) };
    let endpoints: Vec<String> = container.ports.iter().map(|(_, _, ip, port)| format!("{ip}:{port}")).collect();
    let on = if endpoints.is_empty() { String::new() } else { format!(" on {}", endpoints.join(", ")) };
    let message = format!("{} {} started{on}", desired.noun, short_id(&container.id));
    ctx.event(EventType::Normal, "Started", message).await;
    Ok(Created::Started(container))
}

/// Reports a network or volume that is not this object's.
async fn conflict(ctx: &Context<'_>, reason: &'static str, error: DriverError) -> Created {
    let message = error.to_string();
    ctx.event(EventType::Warning, reason, message.clone()).await;
    Created::Conflict { reason, message }
}

/// Makes sure the image is present; pull progress becomes events (`Pulling`, `Pulled`) as it
/// happens.
pub async fn pull(ctx: &Context<'_>, driver: &dyn ContainerDriver, image: &str) -> Result<(), DriverError> {
    let (progress, mut messages) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pulling = async move {
        let report = move |message: String| {
            let _ = progress.send(message);
        };
        driver.ensure_image(image, &report).await
        // `report`, and with it the sender, is dropped here: the events below end.
    };
    let reporting = async {
        while let Some(message) = messages.recv().await {
            let reason = if message.starts_with("Status:") { "Pulled" } else { "Pulling" };
            ctx.event(EventType::Normal, reason, message).await;
        }
    };
    let (pulled, ()) = futures::join!(pulling, reporting);
    pulled
}

#[cfg(test)]
mod tests {
    //! The decisions, against a fake engine and the in-memory store; `tests/it/instances.rs`,
    //! `tests/it/loadbalancers.rs` and `tests/it/databases.rs` take the same step with real Docker.

    use std::sync::Arc;

    use minicloud_crds::{Kind, Object, ObjectKey};
    use serde_json::json;

    use super::*;
    use crate::docker::fake::{running_container, FakeDriver};
    use crate::docker::labels::{Identity, Labels};
    use crate::docker::{names, PublishSpec};
    use minicloud_store::{MemoryStore, Store};

    fn exited(code: i64, hash: &str) -> ContainerInfo {
        let mut container = running_container("c", HashMap::from([(SPEC_HASH.to_owned(), hash.to_owned())]));
        container.running = false;
        container.exit_code = Some(code);
        container
    }

    #[test]
    fn judge_keeps_replaces_or_restarts() {
        let running = running_container("c", HashMap::from([(SPEC_HASH.to_owned(), "h1".to_owned())]));
        assert_eq!(judge(&running, false, "h1", RestartPolicy::Always), None, "as wanted");
        assert_eq!(judge(&running, true, "h1", RestartPolicy::Always), Some(Why::Earlier));
        assert_eq!(judge(&running, false, "h2", RestartPolicy::Never), Some(Why::SpecChanged), "policy aside");
        let cases = [
            (RestartPolicy::Always, 0, Some(Why::Exited(0))),
            (RestartPolicy::Always, 137, Some(Why::Exited(137))),
            (RestartPolicy::OnFailure, 1, Some(Why::Exited(1))),
            (RestartPolicy::OnFailure, 0, None),
            (RestartPolicy::Never, 1, None),
        ];
        for (policy, code, expected) in cases {
            assert_eq!(judge(&exited(code, "h1"), false, "h1", policy), expected, "{policy:?} after {code}");
        }
        let mut unlabelled = exited(0, "h1");
        unlabelled.labels.clear();
        assert_eq!(judge(&unlabelled, false, "h1", RestartPolicy::Never), Some(Why::SpecChanged));
    }

    struct Fixture {
        store: Arc<MemoryStore>,
        driver: FakeDriver,
        object: Object,
    }

    async fn fixture() -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "web"}, "spec": {"image": "web:1"}
        }))
        .expect("object");
        let object = store.create(object).await.expect("create");
        Fixture { store, driver: FakeDriver::default(), object }
    }

    fn desired(fixture: &Fixture, hash: &str, fixed_ports: Vec<u16>) -> Desired {
        let cluster = fixture.store.cluster_id();
        let uid = fixture.object.metadata.uid.clone().unwrap_or_default();
        let labels = Labels {
            cluster: cluster.to_owned(),
            namespace: "default".into(),
            kind: Kind::Instance,
            name: "web".into(),
            uid: uid.clone(),
            spec_hash: hash.to_owned(),
        };
        Desired {
            wanted: Wanted::new(cluster, Kind::Instance, "default", "web", &uid),
            spec: ContainerSpec {
                name: names::instance_container(cluster, "default", "web"),
                image: "web:1".into(),
                labels: labels.to_map(&HashMap::new()),
                ports: vec![PublishSpec {
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: "127.0.0.1".into(),
                    host_port: Some(8080),
                }],
                network: names::network(cluster, "default", None),
                ..ContainerSpec::default()
            },
            network: OwnedNetwork::new(cluster, "default", None),
            volumes: vec![OwnedVolume {
                name: names::instance_volume(cluster, "default", "web", "data"),
                identity: Identity::volume(cluster, "default", Kind::Instance, "web", "data"),
                legacy: names::legacy::instance_volume("default", "web", "data"),
            }],
            fixed_ports,
            restart: RestartPolicy::Always,
            noun: "container".into(),
            hash_covers: "spec",
        }
    }

    async fn reasons(fixture: &Fixture) -> Vec<String> {
        let key = ObjectKey::new(Kind::Instance, "default", "web");
        let events = fixture.store.events(None, Some(&key)).await.expect("events");
        events.into_iter().map(|event| event.reason).collect()
    }

    #[tokio::test]
    async fn creates_then_keeps_then_replaces_on_a_new_hash() {
        let fixture = fixture().await;
        let key = fixture.object.key().expect("key");
        let ctx = Context::new(fixture.store.as_ref(), fixture.object.clone(), key);
        let wanted = desired(&fixture, "h1", vec![]);
        assert!(matches!(
            settle(&ctx, &fixture.driver, &wanted, &HashMap::new()).await,
            Ok(Settled::Vacant { replaced: None })
        ));
        let Ok(Created::Started(first)) = create(&ctx, &fixture.driver, &wanted, &HashMap::new()).await else {
            panic!("started")
        };
        assert!(fixture.driver.volumes.lock().expect("lock").contains_key(&wanted.volumes[0].name), "labelled volume");
        assert!(
            matches!(settle(&ctx, &fixture.driver, &wanted, &HashMap::new()).await, Ok(Settled::Kept(c)) if c.id == first.id)
        );
        let changed = desired(&fixture, "h2", vec![]);
        let Ok(Settled::Vacant { replaced: Some(replaced) }) =
            settle(&ctx, &fixture.driver, &changed, &HashMap::new()).await
        else {
            panic!("replaced")
        };
        assert_eq!((replaced.id, replaced.why), (first.id, Why::SpecChanged));
        assert!(replaced.message.ends_with("its spec changed"), "{}", replaced.message);
        assert!(fixture.driver.get(&wanted.spec.name).is_none(), "removed");
        assert_eq!(reasons(&fixture).await, ["Started", "Replacing"]);
    }

    #[tokio::test]
    async fn a_remembered_port_gives_way_and_a_fixed_one_does_not() {
        let fixture = fixture().await;
        let key = fixture.object.key().expect("key");
        let ctx = Context::new(fixture.store.as_ref(), fixture.object.clone(), key);
        fixture.driver.taken_ports.lock().expect("lock").push(8080);
        let fixed = desired(&fixture, "h1", vec![8080]);
        let refused = create(&ctx, &fixture.driver, &fixed, &HashMap::new()).await;
        assert!(matches!(refused, Err(DriverError::PortTaken { port: 8080 })), "{refused:?}");
        let remembered = desired(&fixture, "h1", vec![]);
        let Ok(Created::Started(container)) = create(&ctx, &fixture.driver, &remembered, &HashMap::new()).await else {
            panic!("started on another port")
        };
        assert_ne!(container.ports[0].3, 8080);
        assert_eq!(reasons(&fixture).await, ["HostPortChanged", "Started"]);
    }

    #[tokio::test]
    async fn what_is_not_ours_is_a_conflict_and_untouched() {
        let fixture = fixture().await;
        let key = fixture.object.key().expect("key");
        let ctx = Context::new(fixture.store.as_ref(), fixture.object.clone(), key);
        let wanted = desired(&fixture, "h1", vec![]);
        let foreign = running_container(&wanted.spec.name, HashMap::from([("x".to_owned(), "y".to_owned())]));
        fixture.driver.containers.lock().expect("lock").insert(wanted.spec.name.clone(), foreign);
        let settled = settle(&ctx, &fixture.driver, &wanted, &HashMap::new()).await;
        assert!(matches!(settled, Ok(Settled::Conflict { reason: "NameConflict", .. })), "{settled:?}");
        assert!(fixture.driver.get(&wanted.spec.name).is_some(), "left alone");

        fixture.driver.containers.lock().expect("lock").clear();
        fixture.driver.volumes.lock().expect("lock").insert(wanted.volumes[0].name.clone(), HashMap::new());
        let created = create(&ctx, &fixture.driver, &wanted, &HashMap::new()).await;
        assert!(matches!(created, Ok(Created::Conflict { reason: "VolumeConflict", .. })), "{created:?}");
        assert!(fixture.driver.created.lock().expect("lock").is_empty(), "no container on someone else's volume");
        assert_eq!(reasons(&fixture).await, ["NameConflict", "VolumeConflict"]);
    }
}
