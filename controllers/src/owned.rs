//! A controller's own container, found by name and judged by its labels — the one place where
//! Instance, LoadBalancer and ManagedDatabase decide whether an existing container may be
//! used, replaced or must be left alone.
//!
//! A name is only where to look. What is found there is this object's (labels say this
//! cluster, namespace, kind, name and uid), an earlier object's of the same name (same all but
//! the uid: the object was deleted and created again, so replace it), or someone else's
//! (another control plane on the same engine, another kind, no minicloud labels at all): never
//! adopted, replaced or removed; the object reports `NameConflict` instead.
//!
//! Containers that an earlier minicloud version named `mc-NAMESPACE-NAME` (not injective) are
//! migrated: stopped, their named volumes copied into the new labelled volumes, then removed,
//! and only when their labels name this very object.

use std::collections::HashMap;
use std::time::Duration;

use minicloud_crds::Kind;

use crate::docker::labels::{claim, Claim, Identity};
use crate::docker::{names, ContainerDriver, ContainerInfo, ContainerSpec, DriverError, VolumeSpec};

/// How long a volume copy of a migration may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// Which container an object wants.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// Its name now.
    pub name: String,
    /// The name an earlier version gave it.
    pub legacy: String,
    pub identity: Identity,
    pub uid: String,
}

impl Wanted {
    /// The container of the object `kind` `namespace`/`name` with `uid` in `cluster`.
    pub fn new(cluster: &str, kind: Kind, namespace: &str, name: &str, uid: &str) -> Wanted {
        let (current, legacy) = match kind {
            Kind::LoadBalancer => (
                names::loadbalancer_container(cluster, namespace, name),
                names::legacy::loadbalancer_container(namespace, name),
            ),
            Kind::ManagedDatabase => (
                names::database_container(cluster, namespace, name),
                names::legacy::database_container(namespace, name),
            ),
            _ => (
                names::instance_container(cluster, namespace, name),
                names::legacy::instance_container(namespace, name),
            ),
        };
        Wanted {
            name: current,
            legacy,
            identity: Identity::object(cluster, namespace, kind, name),
            uid: uid.to_owned(),
        }
    }
}

/// What is under the wanted name.
#[derive(Clone, Debug)]
pub enum Found {
    /// Nothing (and no container of this object under its legacy name).
    Absent,
    /// This object's container.
    Ours(ContainerInfo),
    /// An earlier object's of the same name: replace it.
    Earlier(ContainerInfo),
    /// Someone else's container holds the name; says whose. Nothing may be created.
    Foreign(String),
    /// This object's container under the name an earlier version used: migrate it.
    Legacy(ContainerInfo),
}

/// Looks under the wanted name (and, when nothing is there, under the legacy one).
pub async fn find(driver: &dyn ContainerDriver, wanted: &Wanted) -> Result<Found, DriverError> {
    if let Some(container) = driver.inspect(&wanted.name).await? {
        return Ok(match claim(&wanted.identity, &wanted.uid, &container.labels) {
            Claim::Ours => Found::Ours(container),
            Claim::Earlier => Found::Earlier(container),
            Claim::Foreign(owner) => Found::Foreign(owner),
        });
    }
    if let Some(container) = driver.inspect(&wanted.legacy).await? {
        // Legacy names are shared between objects (`a`+`b-web`, `a-b`+`web`): only this very
        // object's container is taken over; anything else there is not ours to touch.
        if claim(&wanted.identity, &wanted.uid, &container.labels) == Claim::Ours {
            return Ok(Found::Legacy(container));
        }
    }
    Ok(Found::Absent)
}

/// Removes the container of this object, or of an earlier object of the same name, when one
/// is under the wanted name or its legacy name; someone else's stays. `Ok(Some(owner))` says a
/// foreign container holds the name.
pub async fn remove(driver: &dyn ContainerDriver, wanted: &Wanted) -> Result<Option<String>, DriverError> {
    remove_after(driver, wanted, None).await
}

/// [`remove`], stopping the container first within `grace` (SIGTERM, then SIGKILL): a
/// database shuts down cleanly before its kept volume serves another container.
pub(crate) async fn remove_after(
    driver: &dyn ContainerDriver,
    wanted: &Wanted,
    grace: Option<Duration>,
) -> Result<Option<String>, DriverError> {
    for name in [&wanted.name, &wanted.legacy] {
        if let Some(container) = driver.inspect(name).await? {
            match claim(&wanted.identity, &wanted.uid, &container.labels) {
                Claim::Ours | Claim::Earlier => {
                    if let Some(grace) = grace.filter(|_| container.running) {
                        driver.stop(&container.id, grace).await?;
                    }
                    driver.remove(&container.id).await?
                }
                Claim::Foreign(owner) if name == &wanted.name => return Ok(Some(owner)),
                Claim::Foreign(_) => {}
            }
        }
    }
    Ok(None)
}

/// A namespace's Docker network: its name and what its labels must say.
#[derive(Clone, Debug)]
pub struct OwnedNetwork {
    pub name: String,
    pub identity: Identity,
}

impl OwnedNetwork {
    /// The network `network` (`default` when none) of `namespace` in `cluster`.
    pub fn new(cluster: &str, namespace: &str, network: Option<&str>) -> OwnedNetwork {
        OwnedNetwork {
            name: names::network(cluster, namespace, network),
            identity: Identity::network(cluster, namespace, network),
        }
    }

    /// The network a LoadBalancer's container publishes from
    /// ([`names::loadbalancer_network`]).
    pub fn for_loadbalancer(cluster: &str, namespace: &str, name: &str) -> OwnedNetwork {
        OwnedNetwork {
            name: names::loadbalancer_network(cluster, namespace, name),
            identity: Identity::loadbalancer_network(cluster, namespace, name),
        }
    }
}

/// A named volume an object mounts: where it lives now, what it must say, where an earlier
/// version kept it.
#[derive(Clone, Debug)]
pub struct OwnedVolume {
    pub name: String,
    pub identity: Identity,
    pub legacy: String,
}

/// Makes sure each volume exists with its labels; a volume of the name with other or no labels
/// is never used ([`DriverError::NotOurs`]: the caller reports `VolumeConflict`).
pub(crate) async fn ensure_volumes(
    driver: &dyn ContainerDriver,
    volumes: &[OwnedVolume],
    extra: &HashMap<String, String>,
) -> Result<(), DriverError> {
    for volume in volumes {
        driver.ensure_volume(&volume.name, &volume.identity, extra).await?;
    }
    Ok(())
}

/// Takes over this object's container from an earlier version: stops it, copies each of its
/// legacy volumes that it mounts into the new (labelled) volume with a one-off container of
/// `image`, then removes it. A crash at any step repeats the copy from the stopped container;
/// the legacy volumes themselves are left in place (the documentation says how to remove them).
/// `Ok` says what was done, `Err` why not and what to do: the message of the object's
/// `Migrated` event or `MigrationFailed` condition.
pub(crate) async fn migrate_legacy(
    driver: &dyn ContainerDriver,
    legacy: &ContainerInfo,
    volumes: &[OwnedVolume],
    image: &str,
    extra: &HashMap<String, String>,
) -> Result<String, String> {
    match copy_legacy(driver, legacy, volumes, image, extra).await {
        Ok(copied) if copied.is_empty() => {
            Ok(format!("took over container {} of an earlier minicloud version", legacy.name))
        }
        Ok(copied) => Ok(format!(
            "took over container {} of an earlier minicloud version; volumes copied: {}",
            legacy.name,
            copied.join(", ")
        )),
        Err(error) => Err(format!(
            "cannot take over container {} of an earlier minicloud version: {error}. It is stopped and kept with its data; docs/controllers.md says how to migrate by hand",
            legacy.name
        )),
    }
}

/// [`migrate_legacy`]'s steps; the volumes copied (`OLD → NEW`).
async fn copy_legacy(
    driver: &dyn ContainerDriver,
    legacy: &ContainerInfo,
    volumes: &[OwnedVolume],
    image: &str,
    extra: &HashMap<String, String>,
) -> Result<Vec<String>, DriverError> {
    let mounted: Vec<&OwnedVolume> =
        volumes.iter().filter(|volume| legacy.volumes.iter().any(|name| name == &volume.legacy)).collect();
    let mut copied = Vec::new();
    if !mounted.is_empty() {
        driver.stop(&legacy.id, Duration::from_secs(30)).await?;
    }
    for volume in mounted {
        driver.ensure_volume(&volume.name, &volume.identity, extra).await?;
        let copy = ContainerSpec {
            name: format!("{}.migrate-{:08x}", volume.name, rand::random::<u32>()),
            image: image.to_owned(),
            entrypoint: Some(vec!["cp".into(), "-a".into(), "/from/.".into(), "/to/".into()]),
            command: None,
            env: Vec::new(),
            // Labels of no live object: a leftover of a crash is collected as an orphan.
            labels: volume
                .identity
                .labels(&HashMap::from([(crate::docker::labels::UID.to_owned(), "migration".to_owned())])),
            ports: Vec::new(),
            network: "none".into(),
            aliases: Vec::new(),
            memory_bytes: None,
            nano_cpus: None,
            health: None,
            volumes: vec![
                VolumeSpec { volume: volume.legacy.clone(), mount_path: "/from".into(), read_only: true },
                VolumeSpec { volume: volume.name.clone(), mount_path: "/to".into(), read_only: false },
            ],
            user: Some("0:0".into()),
        };
        let output = driver.run_once(&copy, MIGRATION_TIMEOUT).await?;
        if output.exit_code != 0 {
            return Err(DriverError::Refused(format!(
                "copying volume {} into {} with image {image} failed (exit code {}): {}",
                volume.legacy,
                volume.name,
                output.exit_code,
                output.output.trim()
            )));
        }
        copied.push(format!("{} → {}", volume.legacy, volume.name));
    }
    driver.remove(&legacy.id).await?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fake::{running_container as container, FakeDriver};
    use crate::docker::labels::Labels;

    fn labelled(cluster: &str, namespace: &str, name: &str, uid: &str) -> HashMap<String, String> {
        Labels {
            cluster: cluster.into(),
            namespace: namespace.into(),
            kind: Kind::Instance,
            name: name.into(),
            uid: uid.into(),
            spec_hash: String::new(),
        }
        .to_map(&HashMap::new())
    }

    #[tokio::test]
    async fn only_this_objects_containers_are_taken_or_removed() {
        let driver = FakeDriver::default();
        let wanted = Wanted::new("c1", Kind::Instance, "a-b", "web", "u-1");
        // The legacy name of `a-b`/`web` is also that of `a`/`b-web`: that one's container.
        let theirs = container(&wanted.legacy, labelled("c1", "a", "b-web", "u-9"));
        driver.containers.lock().expect("lock").insert(theirs.name.clone(), theirs);
        assert!(matches!(find(&driver, &wanted).await, Ok(Found::Absent)));
        assert_eq!(remove(&driver, &wanted).await.expect("remove"), None);
        assert!(driver.get(&wanted.legacy).is_some(), "another object's container stays");

        // Another control plane's container under the new name: foreign, kept.
        let other = container(&wanted.name, labelled("c2", "a-b", "web", "u-1"));
        driver.containers.lock().expect("lock").insert(other.name.clone(), other);
        assert!(matches!(find(&driver, &wanted).await, Ok(Found::Foreign(owner)) if owner.contains("c2")));
        assert!(remove(&driver, &wanted).await.expect("remove").is_some());
        assert!(driver.get(&wanted.name).is_some(), "another control plane's container stays");

        // This cluster's earlier object of the same name: replaced.
        let earlier = container(&wanted.name, labelled("c1", "a-b", "web", "u-0"));
        driver.containers.lock().expect("lock").insert(earlier.name.clone(), earlier);
        assert!(matches!(find(&driver, &wanted).await, Ok(Found::Earlier(_))));
        remove(&driver, &wanted).await.expect("remove");
        assert!(driver.get(&wanted.name).is_none());
    }

    #[tokio::test]
    async fn this_objects_legacy_container_is_found() {
        let driver = FakeDriver::default();
        let wanted = Wanted::new("c1", Kind::Instance, "a", "b-web", "u-9");
        let mine = container(&wanted.legacy, labelled("c1", "a", "b-web", "u-9"));
        driver.containers.lock().expect("lock").insert(mine.name.clone(), mine);
        assert!(matches!(find(&driver, &wanted).await, Ok(Found::Legacy(_))));
    }
}
