//! `LoadBalancer`: one HAProxy container whose generated configuration spreads traffic over the
//! Instances picked by a label selector or owned by a ScalingGroup, and over the backends of
//! the [`Route`](crate::route)s attached to its HTTP and HTTPS listeners. A listener binds a
//! host address and port (`127.0.0.1` unless told otherwise), terminates TLS with the
//! [`Certificate`](crate::certificate)s it names, and says which namespaces may attach routes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Condition, LabelSelector, OwnerReference};
use crate::Kind;

/// Desired state of a load balancer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// Front-end ports; at least one.
    pub listeners: Vec<Listener>,
    /// Which Instances receive the traffic no route takes: at most one of `selector` or
    /// `scalingGroupRef`. Without targets, a request no route matches is answered 404.
    #[serde(default, skip_serializing_if = "TargetSource::is_empty")]
    pub targets: TargetSource,
    /// How requests are spread. Defaults to `RoundRobin`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// How targets are checked before they receive traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<LbHealthCheck>,
    /// Network shared with the targets. Defaults to the namespace's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl LoadBalancerSpec {
    /// Whether this load balancer picks an Instance with these labels and owners (the network
    /// is checked apart: a picked Instance on another network is reported, not routed to).
    pub fn picks(&self, labels: &BTreeMap<String, String>, owners: &[OwnerReference]) -> bool {
        match (&self.targets.selector, &self.targets.scaling_group_ref) {
            (Some(selector), _) => selector.match_labels.iter().all(|(key, value)| labels.get(key) == Some(value)),
            (None, Some(group)) => {
                owners.iter().any(|owner| owner.kind == Kind::ScalingGroup.as_str() && owner.name == group.name)
            }
            (None, None) => false,
        }
    }
}

/// The host address a listener binds when it names none: only this machine can connect.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1";

/// One front-end port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Listener name (a DNS-1123 label), unique within the load balancer.
    pub name: String,
    /// Host IP address to bind. Defaults to `127.0.0.1` (this machine only); `0.0.0.0` (or an
    /// address of one interface) serves the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Host port; chosen automatically (and kept) when absent. 80 and 443 are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// `HTTP` (layer 7), `HTTPS` (layer 7, TLS terminated here) or `TCP` (layer 4). Defaults to
    /// `HTTP`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Port of the targets that receives the traffic no route takes; required when the load
    /// balancer has `targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<u16>,
    /// Only requests for this host name (exact, or `*.example.com`) are routed; routes attached
    /// here must fit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// TLS of an `HTTPS` listener: its certificates (chosen by SNI) and HSTS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Which namespaces may attach routes to this listener. Defaults to the load balancer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
    /// `TCP` only: send the PROXY protocol (v2) header to the targets, so they see the client's
    /// address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

impl Listener {
    /// The host address bound: the one given, or [`DEFAULT_ADDRESS`].
    pub fn bind_address(&self) -> &str {
        self.address.as_deref().unwrap_or(DEFAULT_ADDRESS)
    }

    /// Whether routes can attach (HTTP and HTTPS listeners).
    pub fn takes_routes(&self) -> bool {
        self.protocol != ListenerProtocol::Tcp
    }

    /// Which namespaces may attach routes.
    pub fn allowed_namespaces(&self) -> RouteNamespaces {
        self.allowed_routes.as_ref().map(|allowed| allowed.namespaces.clone()).unwrap_or_default()
    }
}

/// Listener protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    #[default]
    Http,
    Https,
    Tcp,
}

impl ListenerProtocol {
    /// As written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "HTTP",
            ListenerProtocol::Https => "HTTPS",
            ListenerProtocol::Tcp => "TCP",
        }
    }
}

/// TLS of an HTTPS listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates (same namespace) served on this listener; the one whose names fit the
    /// client's SNI is chosen, the first otherwise. At least one.
    pub certificate_refs: Vec<CertificateRef>,
    /// Send `Strict-Transport-Security` with every response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
}

/// Names a Certificate in the load balancer's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRef {
    /// Name of the Certificate.
    pub name: String,
}

/// HTTP Strict Transport Security.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hsts {
    /// How long browsers remember to use HTTPS only. Defaults to 31536000 (a year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u32>,
    /// Covers the subdomains too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_subdomains: bool,
}

/// Which routes may attach to a listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    /// The namespaces routes may come from.
    #[serde(default)]
    pub namespaces: RouteNamespaces,
}

/// The namespaces routes may attach from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same` (the load balancer's namespace; the default), `All`, or `Selector`.
    #[serde(default)]
    pub from: FromNamespaces,
    /// With `from: Selector`: the namespaces whose labels match. A namespace has one label,
    /// `kubernetes.io/metadata.name` (its name), as in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// The label every namespace carries: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl RouteNamespaces {
    /// Whether a route in `namespace` may attach to a listener of a load balancer in `own`.
    pub fn admits(&self, own: &str, namespace: &str) -> bool {
        match self.from {
            FromNamespaces::Same => own == namespace,
            FromNamespaces::All => true,
            FromNamespaces::Selector => self.selector.as_ref().is_some_and(|selector| {
                selector.match_labels.iter().all(|(key, value)| key == NAMESPACE_NAME_LABEL && value == namespace)
            }),
        }
    }
}

/// Where attached routes may come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FromNamespaces {
    /// The load balancer's namespace only.
    #[default]
    Same,
    /// Any namespace.
    All,
    /// The namespaces the selector matches.
    Selector,
}

/// Where targets come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSource {
    /// Instances in the same namespace whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The Instances of this ScalingGroup (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_group_ref: Option<LocalObjectRef>,
}

impl TargetSource {
    /// Neither a selector nor a ScalingGroup: the load balancer serves routes only.
    pub fn is_empty(&self) -> bool {
        self.selector.is_none() && self.scaling_group_ref.is_none()
    }
}

/// Names an object in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    /// Name of the object.
    pub name: String,
}

/// Balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Algorithm {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The target with the fewest open connections.
    LeastConn,
    /// The same client address always reaches the same target.
    Source,
}

/// Target health checking.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LbHealthCheck {
    /// HTTP path to GET (starts with `/`; no spaces, `#`, quotes or control characters);
    /// absent means a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Milliseconds between checks. Defaults to 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 3600000))]
    pub interval_millis: Option<u32>,
    /// Consecutive successes before a target receives traffic. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures before a target is taken out. Defaults to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
}

/// A target as the load balancer sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetStatus {
    /// Instance name.
    pub name: String,
    /// Address on the shared network (`ip:port` of the first listener's target port).
    pub address: String,
    /// Whether the health check passes (state `UP`).
    pub healthy: bool,
    /// As HAProxy reports it: `UP`, `DOWN`, `DRAIN` (leaving: no new requests), `MAINT`
    /// (being removed), `NOLB` or `CHECKING` (added, first check pending).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// The last health check's result as HAProxy words it (`L7OK/200`, `L4CON`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
}

/// Observed state of a load balancer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `ContainerRunning`, `ConfigApplied`, `TargetsHealthy`, `TargetsOnNetwork` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Id of the HAProxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Listener name to URL on the host (`http://127.0.0.1:49200`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
    /// Per listener: the routes attached to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
    /// Current targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
}

/// What a listener serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerStatus {
    /// Listener name.
    pub name: String,
    /// How many routes are attached (accepted).
    pub attached_routes: u32,
    /// The attached routes, `NAMESPACE/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}
