//! Orphan collection: what this control plane created outside the store and no live object
//! owns any more (an object deleted while the control plane was down, recreated under the
//! same name, a crash between two steps). The server runs it periodically; each controller's
//! own cleanup covers the ordinary deletion.

use minicloud_crds::{Kind, ObjectKey};

use crate::docker::labels::Labels;
use crate::docker::ContainerDriver;
use crate::reconciler::ReconcileError;
use minicloud_store::{Store, StoreError};

/// Removes this control plane's containers (of Instances, LoadBalancers and ManagedDatabases)
/// whose labels name no live object (deleted objects, objects recreated under the same name, leftovers of a crash).
/// Containers of other minicloud installations on the same engine are left alone. Returns how
/// many were removed.
pub async fn collect_containers(store: &dyn Store, driver: &dyn ContainerDriver) -> Result<usize, ReconcileError> {
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
    use std::collections::HashMap;

    use super::*;
    use crate::docker::fake::{running_container, FakeDriver};
    use crate::instance::tests::{create, fixture, key, web, web_container};
    use crate::reconciler::Reconciler;

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
        let removed = collect_containers(fixture.store.as_ref(), fixture.driver.as_ref()).await.expect("collect");
        assert_eq!(removed, 1);
        assert!(fixture.driver.get("ours").is_none());
        assert!(fixture.driver.get("theirs").is_some());
        assert!(fixture.driver.get(&web_container(&fixture)).is_some(), "live objects keep their containers");
    }
}
