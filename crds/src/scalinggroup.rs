//! `ScalingGroup`: N Instances from one template, autoscaled on CPU with separate scale-out and
//! scale-in cool-downs, replaced by rolling update when the template changes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::instance::InstanceSpec;
use crate::meta::Condition;

/// Desired state of a scaling group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingGroupSpec {
    /// The Instances to create.
    pub template: InstanceTemplate,
    /// Fewest Instances, also when scaling in.
    #[schemars(range(max = 1000))]
    pub min_replicas: u32,
    /// Most Instances, also when scaling out.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: u32,
    /// Instances wanted now, between min and max. Defaults to `minReplicas`; the autoscaler
    /// changes the effective count within the bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub desired_replicas: Option<u32>,
    /// CPU-based autoscaling; absent means a fixed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingPolicy>,
    /// How Instances are replaced when the template changes.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
}

/// Labels and spec given to every Instance of the group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceTemplate {
    /// Labels of the Instances (load balancers select on them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The Instance spec.
    pub spec: InstanceSpec,
}

/// Scale on average CPU utilisation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalingPolicy {
    /// Average CPU use, in percent of the CPU limit (or of one core), to hold.
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percent: u32,
    /// Seconds after a scale-out before the next scale-out. Defaults to 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub scale_out_cooldown_seconds: Option<u32>,
    /// Seconds after any scaling before a scale-in. Defaults to 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub scale_in_cooldown_seconds: Option<u32>,
}

/// Replacement strategy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStrategy {
    /// `RollingUpdate` (default) or `Recreate`.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,
    /// Limits for `RollingUpdate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// Kind of replacement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UpdateStrategyType {
    /// Replace a few at a time, keeping the group serving.
    #[default]
    RollingUpdate,
    /// Remove all, then create all.
    Recreate,
}

/// Rolling update limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    /// Extra Instances allowed above the desired count during an update. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub max_surge: Option<u32>,
    /// Instances that may be unavailable during an update. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub max_unavailable: Option<u32>,
}

/// Observed state of a scaling group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingGroupStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Scaling`, `Progressing` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Instances that exist.
    #[serde(default)]
    pub replicas: u32,
    /// Instances that are Ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Instances running the current template.
    #[serde(default)]
    pub updated_replicas: u32,
    /// The count the group is driving toward (after autoscaling).
    #[serde(default)]
    pub desired_replicas: u32,
    /// Average CPU use of the group, in percent, at the last measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_cpu_utilization_percent: Option<u32>,
    /// When the group last scaled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_out_time: Option<DateTime<Utc>>,
    /// When the group last scaled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_in_time: Option<DateTime<Utc>>,
}
