//! `LoadBalancer`: one HAProxy container whose generated configuration spreads traffic over the
//! Instances picked by a label selector or owned by a ScalingGroup.

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
    /// Which Instances receive traffic: exactly one of `selector` or `scalingGroupRef`.
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

/// One front-end port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Listener name (a DNS-1123 label), unique within the load balancer.
    pub name: String,
    /// Host port on 127.0.0.1; chosen automatically (and kept) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// HTTP (layer 7) or TCP (layer 4). Defaults to HTTP.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Port of the targets that receives the traffic.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: u16,
}

/// Listener protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    #[default]
    Http,
    Tcp,
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
    /// Current targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
}
