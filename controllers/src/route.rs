//! The Route controller: reports, per parent reference, whether the LoadBalancer took the
//! route and whether its backends exist. It changes nothing outside the store — the
//! LoadBalancer controller renders the routes into HAProxy — and it decides nothing on its
//! own: admission, precedence and conflicts come from the same pure function the LoadBalancer
//! uses ([`crate::loadbalancer::routing::attach`]), so what a route's status says is what its
//! load balancer does.
//!
//! | decision | where |
//! |---|---|
//! | accepted by a parent, or why not (`NotAllowedByListeners`, `NoMatchingListenerHostname`, `NoMatchingParent`, `Conflicted`) | [`crate::loadbalancer::routing::attach`], [`RouteController::parent_status`] |
//! | whether every backend exists (`ResolvedRefs`, `BackendNotFound`) | [`RouteController::resolve`] |
//! | the URLs a route answers on | [`urls`] |
//! | `Ready` | [`summarise`] |

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::conditions::set_condition;
use minicloud_crds::kinds::{LoadBalancer, Route};
use minicloud_crds::meta::{Condition, ConditionStatus};
use minicloud_crds::route::{BackendKind, ParentRef, RouteParentStatus, RouteSpec, RouteStatus};
use minicloud_crds::{Kind, ObjectKey};
use minicloud_store::{Query, Store, StoreError};

use crate::loadbalancer::routing::{attach, RouteRef, Verdict};
use crate::reconciler::{Action, Cleanup, Context, Controller, ReconcileError};

/// Reconciles Routes (status only).
pub struct RouteController {
    store: Arc<dyn Store>,
}

impl RouteController {
    pub fn new(store: Arc<dyn Store>) -> RouteController {
        RouteController { store }
    }

    /// The status of one parent reference.
    async fn parent_status(
        &self,
        route: &Route,
        index: usize,
        parent: &ParentRef,
        routes: &[Route],
    ) -> Result<(Verdict, BTreeMap<String, String>), ReconcileError> {
        let own = route.metadata.namespace_or_default();
        let namespace = parent.namespace_or(own);
        let key = ObjectKey::new(Kind::LoadBalancer, namespace, &parent.name);
        let lb: LoadBalancer = match self.store.get(&key).await {
            Ok(object) => match serde_json::to_value(&object).and_then(serde_json::from_value) {
                Ok(lb) => lb,
                Err(error) => {
                    return Err(ReconcileError::Failed(format!("loadbalancer {namespace}/{}: {error}", parent.name)))
                }
            },
            Err(StoreError::NotFound(_)) => {
                let verdict = Verdict {
                    accepted: false,
                    reason: "NoMatchingParent",
                    message: format!("loadbalancer {namespace}/{} does not exist", parent.name),
                    listeners: Vec::new(),
                    conflicts: Vec::new(),
                };
                return Ok((verdict, BTreeMap::new()));
            }
            Err(error) => return Err(error.into()),
        };
        let references: Vec<RouteRef<'_>> = routes.iter().map(RouteRef::of).collect();
        let attachment = attach(namespace, &parent.name, &lb.spec, &references);
        let verdict = attachment.verdicts.get(&(RouteRef::of(route).key(), index)).cloned().ok_or_else(|| {
            ReconcileError::Failed("the route is not among the load balancer's candidates; again".into())
        })?;
        let urls = urls(&lb, &verdict, &route.spec);
        Ok((verdict, urls))
    }

    /// `None` when every backend exists, else what is missing.
    async fn resolve(&self, namespace: &str, spec: &RouteSpec) -> Result<Option<String>, ReconcileError> {
        let instances = self.store.list(&Query::namespaced(Kind::Instance, namespace)).await?.items;
        let mut missing = Vec::new();
        for backend in spec.rules.iter().flat_map(|rule| &rule.backend_refs) {
            let found = match (&backend.kind, &backend.name, &backend.selector) {
                (Some(BackendKind::Instance), Some(name), _) => instances.iter().any(|i| &i.metadata.name == name),
                (Some(BackendKind::ScalingGroup), Some(name), _) => {
                    match self.store.get(&ObjectKey::new(Kind::ScalingGroup, namespace, name)).await {
                        Ok(_) => true,
                        Err(StoreError::NotFound(_)) => false,
                        Err(error) => return Err(error.into()),
                    }
                }
                (_, _, Some(selector)) => instances
                    .iter()
                    .any(|i| selector.match_labels.iter().all(|(k, v)| i.metadata.labels.get(k) == Some(v))),
                _ => false,
            };
            if !found {
                missing.push(backend.describe());
            }
        }
        missing.dedup();
        Ok((!missing.is_empty()).then(|| format!("not found in namespace {namespace}: {}", missing.join(", "))))
    }
}

/// The URLs a route answers on, per attached listener: the listener's endpoint with the
/// route's first exact host name (or the listener's).
fn urls(lb: &LoadBalancer, verdict: &Verdict, spec: &RouteSpec) -> BTreeMap<String, String> {
    let Some(status) = &lb.status else { return BTreeMap::new() };
    let mut urls = BTreeMap::new();
    for listener_name in &verdict.listeners {
        let Some(endpoint) = status.endpoints.get(listener_name) else { continue };
        let listener = lb.spec.listeners.iter().find(|l| &l.name == listener_name);
        let host = spec
            .hostnames
            .iter()
            .find(|h| !h.starts_with("*."))
            .cloned()
            .or_else(|| listener.and_then(|l| l.hostname.clone()).filter(|h| !h.starts_with("*.")));
        let url = match (host, endpoint.split_once("://")) {
            (Some(host), Some((scheme, address))) => {
                let port = address.rsplit_once(':').map(|(_, port)| port).unwrap_or("");
                if matches!((scheme, port), ("http", "80") | ("https", "443")) {
                    format!("{scheme}://{host}/")
                } else {
                    format!("{scheme}://{host}:{port}/")
                }
            }
            _ => format!("{endpoint}/"),
        };
        urls.insert(listener_name.clone(), url);
    }
    urls
}

/// The conditions of one parent.
fn parent_conditions(
    previous: Option<&RouteParentStatus>,
    verdict: &Verdict,
    unresolved: Option<&str>,
    generation: i64,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let (accepted, message) = if verdict.conflicts.is_empty() || !verdict.accepted {
        (verdict.accepted, verdict.message.clone())
    } else {
        (true, format!("{}; shadowed: {}", verdict.message, verdict.conflicts.join("; ")))
    };
    let status = if accepted { ConditionStatus::True } else { ConditionStatus::False };
    set_condition(&mut conditions, "Accepted", status, verdict.reason, message, generation, now);
    match unresolved {
        None => set_condition(
            &mut conditions,
            "ResolvedRefs",
            ConditionStatus::True,
            "ResolvedRefs",
            "every backend exists",
            generation,
            now,
        ),
        Some(message) => set_condition(
            &mut conditions,
            "ResolvedRefs",
            ConditionStatus::False,
            "BackendNotFound",
            message,
            generation,
            now,
        ),
    };
    conditions
}

/// `Ready`: every parent accepted the route, every backend exists, and every parent serves it
/// (its listeners have endpoints).
fn summarise(status: &mut RouteStatus, generation: i64, now: DateTime<Utc>) {
    let failing = status.parents.iter().find_map(|parent| {
        parent
            .conditions
            .iter()
            .find(|c| c.status != ConditionStatus::True)
            .map(|c| (c.reason.clone(), format!("{}: {}", parent.parent_ref.name, c.message)))
    });
    let waiting =
        status.parents.iter().find(|parent| parent.urls.is_empty()).map(|parent| parent.parent_ref.name.clone());
    let failing = failing.or_else(|| {
        waiting.map(|name| ("ParentNotServing".to_owned(), format!("{name}: waiting for the load balancer to serve")))
    });
    match failing {
        None => {
            let urls: Vec<&str> = status.parents.iter().flat_map(|p| p.urls.values().map(String::as_str)).collect();
            let message = if urls.is_empty() { "attached".to_owned() } else { format!("serving {}", urls.join(", ")) };
            set_condition(&mut status.conditions, "Ready", ConditionStatus::True, "Attached", message, generation, now)
        }
        Some((reason, message)) => {
            set_condition(&mut status.conditions, "Ready", ConditionStatus::False, &reason, message, generation, now)
        }
    };
}

#[async_trait]
impl Controller for RouteController {
    type Resource = Route;
    const KIND: Kind = Kind::Route;
    const FINALIZER: Option<&'static str> = None;

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn watched_kinds(&self) -> Vec<Kind> {
        vec![Kind::Instance, Kind::ScalingGroup]
    }

    fn watched_everywhere(&self) -> Vec<Kind> {
        // The parents may be in any namespace, and so may the routes a conflict is with.
        vec![Kind::LoadBalancer, Kind::Route]
    }

    async fn apply(&self, ctx: &mut Context<'_>, route: Route) -> Result<Action, ReconcileError> {
        let now = Utc::now();
        let generation = ctx.generation();
        let previous = route.status.clone().unwrap_or_default();
        let all = self.store.list(&Query { kind: Some(Kind::Route), ..Query::default() }).await?;
        let routes: Vec<Route> = all
            .items
            .into_iter()
            .filter_map(|object| serde_json::to_value(&object).and_then(serde_json::from_value).ok())
            .collect();
        let unresolved = self.resolve(ctx.namespace(), &route.spec).await?;
        let mut status = RouteStatus {
            observed_generation: Some(generation),
            conditions: previous.conditions.clone(),
            parents: Vec::new(),
        };
        for (index, parent) in route.spec.parent_refs.iter().enumerate() {
            let (verdict, urls) = self.parent_status(&route, index, parent, &routes).await?;
            let before = previous.parents.iter().find(|p| &p.parent_ref == parent);
            let conditions = parent_conditions(before, &verdict, unresolved.as_deref(), generation, now);
            status.parents.push(RouteParentStatus { parent_ref: parent.clone(), conditions, urls });
        }
        summarise(&mut status, generation, now);
        ctx.write_status(&status).await?;
        Ok(Action::AwaitChange)
    }

    async fn cleanup(&self, _: &mut Context<'_>, _: Route) -> Result<Cleanup, ReconcileError> {
        Ok(Cleanup::Done)
    }
}

#[cfg(test)]
mod tests {
    use minicloud_crds::Object;
    use minicloud_store::MemoryStore;
    use serde_json::json;

    use super::*;
    use crate::reconciler::reconcile;

    async fn create(store: &MemoryStore, kind: &str, namespace: &str, name: &str, spec: serde_json::Value) {
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec,
        }))
        .expect("object");
        store.create(object).await.expect("create");
    }

    fn parent<'s>(status: &'s serde_json::Value, index: usize, type_: &str) -> (&'s str, &'s str) {
        let condition = status["parents"][index]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_))
            .expect("condition");
        (condition["status"].as_str().unwrap_or(""), condition["reason"].as_str().unwrap_or(""))
    }

    #[tokio::test]
    async fn status_says_per_parent_whether_it_was_taken_and_whether_backends_exist() {
        let store = Arc::new(MemoryStore::new());
        create(&store, "LoadBalancer", "infra", "edge", json!({"listeners": [{"name": "web", "port": 80}]})).await;
        create(&store, "Instance", "shop", "web", json!({"image": "web"})).await;
        let spec = json!({
            "parentRefs": [{"name": "edge", "namespace": "infra"}, {"name": "missing"}],
            "rules": [{"backendRefs": [{"kind": "Instance", "name": "web", "port": 80}, {"kind": "Instance", "name": "gone", "port": 80}]}],
        });
        create(&store, "Route", "shop", "shop", spec).await;
        let controller = RouteController::new(store.clone());
        let key = ObjectKey::new(Kind::Route, "shop", "shop");
        reconcile(&controller, &key).await.expect("reconcile");
        let status = store.get(&key).await.expect("route").status;
        assert_eq!(
            parent(&status, 0, "Accepted"),
            ("False", "NotAllowedByListeners"),
            "infra admits the same namespace only"
        );
        assert_eq!(parent(&status, 1, "Accepted"), ("False", "NoMatchingParent"));
        assert_eq!(parent(&status, 0, "ResolvedRefs"), ("False", "BackendNotFound"));
        assert!(status["parents"][0]["conditions"].to_string().contains("Instance/gone"), "{status}");
        assert_eq!(status["conditions"][0]["status"], "False");
    }
}
