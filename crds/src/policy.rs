//! `Policy`: admission rules the API server checks on every create and update, before anything
//! is written — the governance check that answers "allowed" or "denied, because …". Each rule
//! has a name and exactly one constraint (allowed image prefixes, a maximum replica count, a
//! maximum CPU or memory per Instance, no host ports below 1024, required labels, allowed
//! database engines). A Policy covers the objects of its own namespace, or of the namespaces it
//! lists (`*`: every namespace; only a token good for every namespace may write such a Policy).
//! `enforcement` says what a violation does: `Deny` refuses the request (403 naming the policy,
//! the rule and the reason), `Warn` lets it through with a warning, `DryRun` only records it
//! (an event on the Policy).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;

/// What a violation of the policy does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Enforcement {
    /// Refuse the request (403) and write nothing.
    #[default]
    Deny,
    /// Let the request through, with a warning in the answer (`cloud apply` prints it).
    Warn,
    /// Let the request through and only record the violation (an event on the Policy).
    DryRun,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Deny => "Deny",
            Enforcement::Warn => "Warn",
            Enforcement::DryRun => "DryRun",
        }
    }
}

/// The rules and how they are enforced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// What a violation does. Defaults to `Deny`.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// The namespaces whose objects the policy covers; `*` for every namespace. Defaults to the
    /// policy's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The rules, each with a name and exactly one constraint.
    pub rules: Vec<PolicyRule>,
}

/// One rule: a name and exactly one constraint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// The rule's name (a DNS-1123 label), quoted in every denial.
    pub name: String,
    /// Container images (of Instances and ScalingGroup templates) must start with one of these
    /// prefixes, e.g. `minicloud/` or `registry.example.com/team/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_images: Option<Vec<String>>,
    /// ScalingGroups may not have more than this many members (maxReplicas, desiredReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<u32>,
    /// No Instance (or ScalingGroup member) may ask for more CPU than this, e.g. `500m`, `2`;
    /// one that asks for none is refused too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<String>,
    /// No Instance (or ScalingGroup member) may ask for more memory than this, e.g. `512Mi`;
    /// one that asks for none is refused too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<String>,
    /// `true`: no host port below 1024 (Instances, ScalingGroup templates, LoadBalancer
    /// listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbid_privileged_host_ports: Option<bool>,
    /// Every object must carry these label keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_labels: Option<Vec<String>>,
    /// ManagedDatabases may use only these engines (`postgres`, `mysql`, `redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_database_engines: Option<Vec<String>>,
}

impl PolicyRule {
    /// The constraints the rule sets, by their field names (valid rules set exactly one).
    pub(crate) fn constraints(&self) -> Vec<&'static str> {
        let set = [
            ("allowedImages", self.allowed_images.is_some()),
            ("maxReplicas", self.max_replicas.is_some()),
            ("maxCpu", self.max_cpu.is_some()),
            ("maxMemory", self.max_memory.is_some()),
            ("forbidPrivilegedHostPorts", self.forbid_privileged_host_ports.is_some()),
            ("requiredLabels", self.required_labels.is_some()),
            ("allowedDatabaseEngines", self.allowed_database_engines.is_some()),
        ];
        set.into_iter().filter(|(_, present)| *present).map(|(name, _)| name).collect()
    }
}

/// Observed state of a policy (nothing reconciles policies; they take effect when written).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyStatus {
    /// The generation last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
