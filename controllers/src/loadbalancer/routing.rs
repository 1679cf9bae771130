//! Which routes a LoadBalancer's listeners take, and in which order their matches are tried —
//! pure, and computed the same way by the LoadBalancer controller (to render HAProxy's
//! configuration) and the Route controller (to report each route's status), so the two can
//! never disagree.
//!
//! - **Admission**: a route attaches to a listener when its parent reference names the load
//!   balancer (and the listener, when it names one), the listener takes routes (HTTP or
//!   HTTPS), its `allowedRoutes` admits the route's namespace, and the route's host names
//!   intersect the listener's ([`minicloud_crds::http::intersect_hostnames`]).
//! - **Precedence** (the Gateway API's): the most specific host name (exact, then the longest
//!   wildcard, then none), then an exact path before a prefix and the longer path first, then
//!   a method, then more header matches, then more query matches, then the older route, then
//!   the route's `namespace/name`, then rule and match order.
//! - **Conflicts**: two routes asking for the very same match on one listener — the one later
//!   in that order is shadowed there, and its status says by whom; nothing is dropped
//!   silently.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use minicloud_crds::http::intersect_hostnames;
use minicloud_crds::kinds::Route;
use minicloud_crds::loadbalancer::{Listener, LoadBalancerSpec};
use minicloud_crds::route::{BackendKind, NameValue, PathMatch, PathMatchType, RouteFilter, RouteSpec};
use serde::{Deserialize, Serialize};

/// A route as routing sees it.
#[derive(Clone, Debug)]
pub struct RouteRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub created: Option<DateTime<Utc>>,
    pub spec: &'a RouteSpec,
}

impl<'a> RouteRef<'a> {
    pub fn of(route: &'a Route) -> RouteRef<'a> {
        RouteRef {
            namespace: route.metadata.namespace_or_default(),
            name: &route.metadata.name,
            created: route.metadata.creation_timestamp,
            spec: &route.spec,
        }
    }

    /// `NAMESPACE/NAME`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Where a backend's servers come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendSource {
    /// The load balancer's own `targets`.
    Targets,
    /// One Instance.
    Instance { namespace: String, name: String },
    /// The Instances of a ScalingGroup.
    ScalingGroup { namespace: String, name: String },
    /// The Instances whose labels match.
    Selector { namespace: String, labels: BTreeMap<String, String> },
}

/// A backend a route rule sends to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteBackend {
    /// HAProxy's name for it: `rt.NAMESPACE.ROUTE.RULE.REF` (names are DNS labels, so the dots
    /// keep two routes' backends apart whatever their names).
    pub name: String,
    pub port: u16,
    pub source: BackendSource,
}

/// One way a request can match on a listener: a host, a path and the other conditions of one
/// match of one rule, with what the rule does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `NAMESPACE/NAME` of the route.
    pub route: String,
    pub rule: usize,
    /// Exact or `*.` wildcard; `None` matches every host.
    pub host: Option<String>,
    pub path: PathMatch,
    pub headers: Vec<NameValue>,
    pub method: Option<String>,
    pub query: Vec<NameValue>,
    pub filters: Vec<RouteFilter>,
    /// Backend names and weights.
    pub backends: Vec<(String, u32)>,
}

/// How one parent reference of one route was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    /// `Accepted`, `NotAllowedByListeners`, `NoMatchingListenerHostname`, `NoMatchingParent`
    /// or `Conflicted`.
    pub reason: &'static str,
    pub message: String,
    /// The listeners the route is attached to.
    pub listeners: Vec<String>,
    /// Matches shadowed by an older route: who wins, per listener.
    pub conflicts: Vec<String>,
}

/// What a load balancer's listeners take.
#[derive(Clone, Debug, Default)]
pub struct Attachment {
    /// Per listener, its entries in precedence order (shadowed ones left out).
    pub entries: BTreeMap<String, Vec<Entry>>,
    /// The backends of the attached routes, by name.
    pub backends: BTreeMap<String, RouteBackend>,
    /// Per route (`NAMESPACE/NAME`) and parent-reference index: the verdict, for references
    /// that name this load balancer.
    pub verdicts: BTreeMap<(String, usize), Verdict>,
}

impl Attachment {
    /// The routes attached to a listener, `NAMESPACE/NAME`, sorted.
    pub fn routes_on(&self, listener: &str) -> Vec<String> {
        let mut routes: Vec<String> =
            self.entries.get(listener).into_iter().flatten().map(|entry| entry.route.clone()).collect();
        routes.sort();
        routes.dedup();
        routes
    }
}

/// The backend name of a route's rule's backend reference.
pub fn backend_name(namespace: &str, route: &str, rule: usize, reference: usize) -> String {
    format!("rt.{namespace}.{route}.{rule}.{reference}")
}

/// Attaches `routes` (any namespace; those not naming this load balancer are ignored) to the
/// listeners of the load balancer `namespace/name`.
pub fn attach(namespace: &str, name: &str, spec: &LoadBalancerSpec, routes: &[RouteRef<'_>]) -> Attachment {
    let mut attachment = Attachment::default();
    let mut routes: Vec<&RouteRef<'_>> = routes.iter().collect();
    // Older first: the order conflicts are settled in.
    routes.sort_by(|a, b| (a.created, a.namespace, a.name).cmp(&(b.created, b.namespace, b.name)));
    let mut candidates: BTreeMap<&str, Vec<(Entry, Sortable)>> = BTreeMap::new();
    for route in &routes {
        for (index, parent) in route.spec.parent_refs.iter().enumerate() {
            if parent.name != name || parent.namespace_or(route.namespace) != namespace {
                continue;
            }
            let verdict = admit(namespace, spec, route, parent.section_name.as_deref());
            if verdict.accepted {
                for listener in spec.listeners.iter().filter(|l| verdict.listeners.contains(&l.name)) {
                    let entries = entries_of(route, listener, &mut attachment.backends);
                    candidates.entry(&listener.name).or_default().extend(entries);
                }
            }
            attachment.verdicts.insert((route.key(), index), verdict);
        }
    }
    for (listener, mut entries) in candidates {
        entries.sort_by_key(|entry| entry.1);
        let mut kept: Vec<(Entry, Sortable)> = Vec::new();
        for (entry, order) in entries {
            let winner = kept.iter().find(|(other, _)| other.route != entry.route && same_match(other, &entry));
            match winner {
                Some((winner, _)) => {
                    let message = format!(
                        "listener {listener}: {} is already routed by the older route {}",
                        describe(&entry),
                        winner.route
                    );
                    for ((route, _), verdict) in attachment.verdicts.iter_mut() {
                        if *route == entry.route && verdict.listeners.iter().any(|l| l == listener) {
                            verdict.conflicts.push(message.clone());
                        }
                    }
                }
                None => kept.push((entry, order)),
            }
        }
        attachment.entries.insert(listener.to_owned(), kept.into_iter().map(|(entry, _)| entry).collect());
    }
    // A route all of whose matches lost on every listener is not accepted there.
    let entries = &attachment.entries;
    for ((route, _), verdict) in attachment.verdicts.iter_mut() {
        if !verdict.accepted || verdict.conflicts.is_empty() {
            continue;
        }
        let serves =
            verdict.listeners.iter().any(|l| entries.get(l).is_some_and(|e| e.iter().any(|e| &e.route == route)));
        if !serves {
            verdict.accepted = false;
            verdict.reason = "Conflicted";
            verdict.message = verdict.conflicts.join("; ");
        }
    }
    // Backends of routes that ended up serving nothing are left out.
    let used: Vec<&str> =
        attachment.entries.values().flatten().flat_map(|e| e.backends.iter().map(|(name, _)| name.as_str())).collect();
    attachment.backends.retain(|name, _| used.contains(&name.as_str()));
    attachment
}

/// Whether `listener_name` (or every listener, for `None`) takes the route.
fn admit(namespace: &str, spec: &LoadBalancerSpec, route: &RouteRef<'_>, section: Option<&str>) -> Verdict {
    let refuse = |reason: &'static str, message: String| Verdict {
        accepted: false,
        reason,
        message,
        listeners: Vec::new(),
        conflicts: Vec::new(),
    };
    let listeners: Vec<&Listener> = match section {
        Some(section) => match spec.listeners.iter().find(|l| l.name == section) {
            Some(listener) => vec![listener],
            None => return refuse("NoMatchingParent", format!("the load balancer has no listener {section:?}")),
        },
        None => spec.listeners.iter().collect(),
    };
    let mut taken = Vec::new();
    let mut refusals = Vec::new();
    let mut hostname_only = true;
    for listener in listeners {
        if !listener.takes_routes() {
            refusals.push(format!("listener {} is TCP and takes no routes", listener.name));
            hostname_only = false;
        } else if !listener.allowed_namespaces().admits(namespace, route.namespace) {
            refusals.push(format!(
                "listener {} does not admit routes from namespace {} (allowedRoutes.namespaces.from: {:?})",
                listener.name,
                route.namespace,
                listener.allowed_namespaces().from
            ));
            hostname_only = false;
        } else if intersect_hostnames(listener.hostname.as_deref(), &route.spec.hostnames).is_none() {
            refusals.push(format!(
                "no host name of the route fits listener {}'s {}",
                listener.name,
                listener.hostname.as_deref().unwrap_or("*")
            ));
        } else {
            taken.push(listener.name.clone());
        }
    }
    if taken.is_empty() {
        let reason =
            if hostname_only && !refusals.is_empty() { "NoMatchingListenerHostname" } else { "NotAllowedByListeners" };
        return refuse(reason, refusals.join("; "));
    }
    Verdict {
        accepted: true,
        reason: "Accepted",
        message: format!("attached to listener(s) {}", taken.join(", ")),
        listeners: taken,
        conflicts: Vec::new(),
    }
}

/// The precedence of an entry: sorting these ascending puts the entry tried first first.
type Sortable = (
    u8,
    std::cmp::Reverse<usize>,
    u8,
    std::cmp::Reverse<usize>,
    u8,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    usize,
    usize,
    usize,
    usize,
);

/// The entries of one route on one listener, registering its backends.
fn entries_of(
    route: &RouteRef<'_>,
    listener: &Listener,
    backends: &mut BTreeMap<String, RouteBackend>,
) -> Vec<(Entry, Sortable)> {
    let hosts: Vec<Option<String>> = match intersect_hostnames(listener.hostname.as_deref(), &route.spec.hostnames) {
        Some(names) if names.is_empty() => vec![None],
        Some(names) => names.into_iter().map(Some).collect(),
        None => return Vec::new(),
    };
    let mut out = Vec::new();
    // The route's age rank among entries is carried by the caller's stable order of routes;
    // the entry itself carries rule and match order.
    for (rule_index, rule) in route.spec.rules.iter().enumerate() {
        let mut rule_backends = Vec::new();
        for (reference_index, reference) in rule.backend_refs.iter().enumerate() {
            let name = backend_name(route.namespace, route.name, rule_index, reference_index);
            let namespace = route.namespace.to_owned();
            let source = match (&reference.kind, &reference.name, &reference.selector) {
                (Some(BackendKind::Instance), Some(instance), _) => {
                    BackendSource::Instance { namespace, name: instance.clone() }
                }
                (Some(BackendKind::ScalingGroup), Some(group), _) => {
                    BackendSource::ScalingGroup { namespace, name: group.clone() }
                }
                (_, _, Some(selector)) => BackendSource::Selector { namespace, labels: selector.match_labels.clone() },
                _ => continue,
            };
            backends.insert(name.clone(), RouteBackend { name: name.clone(), port: reference.port, source });
            rule_backends.push((name, reference.weight_or_default()));
        }
        let matches = if rule.matches.is_empty() { vec![Default::default()] } else { rule.matches.clone() };
        for (match_index, condition) in matches.iter().enumerate() {
            for (host_index, host) in hosts.iter().enumerate() {
                let path = condition.path_or_default();
                let entry = Entry {
                    route: route.key(),
                    rule: rule_index,
                    host: host.clone(),
                    path: path.clone(),
                    headers: condition.headers.clone(),
                    method: condition.method.clone(),
                    query: condition.query_params.clone(),
                    filters: rule.filters.clone(),
                    backends: rule_backends.clone(),
                };
                let order = precedence(&entry, route, rule_index, match_index, host_index);
                out.push((entry, order));
            }
        }
    }
    out
}

/// The precedence key of an entry (see the module's documentation).
fn precedence(entry: &Entry, route: &RouteRef<'_>, rule: usize, condition: usize, host: usize) -> Sortable {
    use std::cmp::Reverse;
    let (host_kind, host_len) = match &entry.host {
        Some(host) if host.starts_with("*.") => (1, host.len()),
        Some(host) => (0, host.len()),
        None => (2, 0),
    };
    let path_kind = match entry.path.type_ {
        PathMatchType::Exact => 0,
        PathMatchType::PathPrefix => 1,
    };
    let age = route.created.map_or(i64::MAX, |created| created.timestamp_micros());
    // Older routes first; a negative age cannot happen for stored objects.
    let age = usize::try_from(age).unwrap_or(usize::MAX);
    (
        host_kind,
        Reverse(host_len),
        path_kind,
        Reverse(normalised_prefix(&entry.path).len()),
        u8::from(entry.method.is_none()),
        Reverse(entry.headers.len()),
        Reverse(entry.query.len()),
        age,
        rule,
        condition,
        host,
    )
}

/// A prefix without its trailing `/` (`/api/` and `/api` are the same prefix); an exact path
/// as it is.
pub fn normalised_prefix(path: &PathMatch) -> &str {
    match path.type_ {
        PathMatchType::Exact => &path.value,
        PathMatchType::PathPrefix => path.value.trim_end_matches('/'),
    }
}

/// Whether two entries ask for the very same requests.
fn same_match(a: &Entry, b: &Entry) -> bool {
    let sorted = |pairs: &[NameValue], fold: bool| {
        let mut pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|p| (if fold { p.name.to_ascii_lowercase() } else { p.name.clone() }, p.value.clone()))
            .collect();
        pairs.sort();
        pairs
    };
    a.host == b.host
        && a.path.type_ == b.path.type_
        && normalised_prefix(&a.path) == normalised_prefix(&b.path)
        && a.method == b.method
        && sorted(&a.headers, true) == sorted(&b.headers, true)
        && sorted(&a.query, false) == sorted(&b.query, false)
}

/// `host shop.example.com path prefix /api` and the other conditions, for messages.
fn describe(entry: &Entry) -> String {
    let mut text = format!("host {}", entry.host.as_deref().unwrap_or("*"));
    let kind = match entry.path.type_ {
        PathMatchType::Exact => "exact",
        PathMatchType::PathPrefix => "prefix",
    };
    text.push_str(&format!(" path {kind} {}", entry.path.value));
    if let Some(method) = &entry.method {
        text.push_str(&format!(" method {method}"));
    }
    for header in &entry.headers {
        text.push_str(&format!(" header {}={}", header.name, header.value));
    }
    for query in &entry.query {
        text.push_str(&format!(" query {}={}", query.name, query.value));
    }
    text
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn lb(listeners: serde_json::Value) -> LoadBalancerSpec {
        serde_json::from_value(json!({ "listeners": listeners })).expect("lb spec")
    }

    fn route_spec(value: serde_json::Value) -> RouteSpec {
        serde_json::from_value(value).expect("route spec")
    }

    fn at(seconds: i64) -> Option<DateTime<Utc>> {
        Some(Utc.timestamp_opt(1_700_000_000 + seconds, 0).single().expect("time"))
    }

    fn web(path: &str) -> serde_json::Value {
        json!({"matches": [{"path": {"type": "PathPrefix", "value": path}}], "backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]})
    }

    #[test]
    fn namespaces_hostnames_and_listeners_decide_admission() {
        let spec = lb(json!([
            {"name": "web", "port": 80, "hostname": "*.example.com", "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "own", "port": 81},
            {"name": "raw", "port": 82, "protocol": "TCP", "targetPort": 5432},
        ]));
        let shop = route_spec(
            json!({"parentRefs": [{"name": "edge", "namespace": "infra"}], "hostnames": ["shop.example.com"], "rules": [web("/")]}),
        );
        let other = route_spec(
            json!({"parentRefs": [{"name": "edge", "namespace": "infra", "sectionName": "web"}], "hostnames": ["blog.other.org"], "rules": [web("/")]}),
        );
        let raw = route_spec(
            json!({"parentRefs": [{"name": "edge", "namespace": "infra", "sectionName": "raw"}], "rules": [web("/")]}),
        );
        let own = route_spec(json!({"parentRefs": [{"name": "edge", "sectionName": "own"}], "rules": [web("/")]}));
        let elsewhere = route_spec(
            json!({"parentRefs": [{"name": "edge", "namespace": "infra", "sectionName": "own"}], "rules": [web("/")]}),
        );
        let routes = [
            RouteRef { namespace: "shop", name: "shop", created: at(0), spec: &shop },
            RouteRef { namespace: "blog", name: "blog", created: at(1), spec: &other },
            RouteRef { namespace: "shop", name: "raw", created: at(2), spec: &raw },
            RouteRef { namespace: "infra", name: "own", created: at(3), spec: &own },
            RouteRef { namespace: "shop", name: "sneaky", created: at(4), spec: &elsewhere },
        ];
        let attachment = attach("infra", "edge", &spec, &routes);
        let verdict = |route: &str| attachment.verdicts.get(&(route.to_owned(), 0)).expect(route).clone();
        assert!(verdict("shop/shop").accepted);
        assert_eq!(verdict("shop/shop").listeners, vec!["web"], "own admits the same namespace only");
        assert_eq!(verdict("blog/blog").reason, "NoMatchingListenerHostname");
        assert_eq!(verdict("shop/raw").reason, "NotAllowedByListeners");
        assert_eq!(verdict("infra/own").listeners, vec!["own"]);
        assert_eq!(verdict("shop/sneaky").reason, "NotAllowedByListeners");
        assert_eq!(attachment.routes_on("web"), vec!["shop/shop"]);
        assert_eq!(attachment.routes_on("own"), vec!["infra/own"]);
        assert!(attachment.backends.contains_key("rt.shop.shop.0.0"));
        assert!(!attachment.backends.contains_key("rt.shop.sneaky.0.0"), "a refused route brings no backend");
    }

    #[test]
    fn precedence_follows_the_gateway_api() {
        let spec = lb(json!([{"name": "web", "port": 80, "allowedRoutes": {"namespaces": {"from": "All"}}}]));
        let any = route_spec(json!({"parentRefs": [{"name": "edge", "namespace": "infra"}], "rules": [web("/")]}));
        let wildcard = route_spec(
            json!({"parentRefs": [{"name": "edge", "namespace": "infra"}], "hostnames": ["*.example.com"], "rules": [web("/")]}),
        );
        let exact = route_spec(
            json!({"parentRefs": [{"name": "edge", "namespace": "infra"}], "hostnames": ["shop.example.com"], "rules": [
                web("/"),
                web("/api"),
                {"matches": [{"path": {"type": "Exact", "value": "/api"}}], "backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]},
                {"matches": [{"path": {"value": "/api"}, "headers": [{"name": "x-canary", "value": "1"}]}], "backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]},
                {"matches": [{"path": {"value": "/api"}, "method": "POST"}], "backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]},
            ]}),
        );
        // Newest first in the input: the order must not depend on it.
        let routes = [
            RouteRef { namespace: "c", name: "exact", created: at(2), spec: &exact },
            RouteRef { namespace: "b", name: "wildcard", created: at(1), spec: &wildcard },
            RouteRef { namespace: "a", name: "any", created: at(0), spec: &any },
        ];
        let attachment = attach("infra", "edge", &spec, &routes);
        let order: Vec<(String, String, usize)> = attachment.entries["web"]
            .iter()
            .map(|e| (e.host.clone().unwrap_or_else(|| "*".into()), e.path.value.clone(), e.rule))
            .collect();
        let expected = [
            ("shop.example.com", "/api", 2), // exact path
            ("shop.example.com", "/api", 4), // prefix /api with a method
            ("shop.example.com", "/api", 3), // prefix /api with a header
            ("shop.example.com", "/api", 1),
            ("shop.example.com", "/", 0),
            ("*.example.com", "/", 0),
            ("*", "/", 0),
        ];
        let expected: Vec<(String, String, usize)> =
            expected.iter().map(|(h, p, r)| ((*h).to_owned(), (*p).to_owned(), *r)).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn the_older_route_wins_a_conflict_and_the_newer_says_why() {
        let spec = lb(json!([{"name": "web", "port": 80}]));
        let first = route_spec(
            json!({"parentRefs": [{"name": "edge"}], "hostnames": ["a.example.com"], "rules": [web("/api/")]}),
        );
        let second = route_spec(
            json!({"parentRefs": [{"name": "edge"}], "hostnames": ["a.example.com"], "rules": [web("/api"), web("/other")]}),
        );
        let third = route_spec(
            json!({"parentRefs": [{"name": "edge"}], "hostnames": ["a.example.com"], "rules": [web("/api")]}),
        );
        let routes = [
            RouteRef { namespace: "default", name: "third", created: at(9), spec: &third },
            RouteRef { namespace: "default", name: "second", created: at(5), spec: &second },
            RouteRef { namespace: "default", name: "first", created: at(1), spec: &first },
        ];
        let attachment = attach("default", "edge", &spec, &routes);
        let verdict = |route: &str| attachment.verdicts.get(&(route.to_owned(), 0)).expect(route).clone();
        assert!(verdict("default/first").accepted && verdict("default/first").conflicts.is_empty());
        let second = verdict("default/second");
        assert!(second.accepted, "its /other match still serves");
        assert_eq!(second.conflicts.len(), 1);
        assert!(second.conflicts[0].contains("default/first"), "{:?}", second.conflicts);
        let third = verdict("default/third");
        assert!(!third.accepted);
        assert_eq!(third.reason, "Conflicted");
        let routes_on: Vec<String> = attachment.entries["web"].iter().map(|e| e.route.clone()).collect();
        // Second's /other is the longer prefix: tried before first's /api.
        assert_eq!(routes_on, vec!["default/second", "default/first"]);
    }

    #[test]
    fn names_that_concatenate_alike_get_different_backends() {
        // Namespace "a-b" route "c" against namespace "a" route "b-c": a plain join would
        // collide; the dots cannot appear in either name.
        assert_ne!(backend_name("a-b", "c", 0, 0), backend_name("a", "b-c", 0, 0));
        assert_eq!(backend_name("shop", "web", 1, 2), "rt.shop.web.1.2");
    }
}
