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
    /// Seconds of CPU figures each decision averages over (the evaluation window). Defaults
    /// to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 3600))]
    pub window_seconds: Option<u32>,
    /// Scale in only to the highest count recommended over this many seconds, so that a load
    /// hovering around the target does not flap. Defaults to 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub scale_in_stabilization_seconds: Option<u32>,
}

impl AutoscalingPolicy {
    /// Seconds between scale-outs.
    pub fn scale_out_cooldown(&self) -> u32 {
        self.scale_out_cooldown_seconds.unwrap_or(60)
    }
    /// Seconds after any scaling before a scale-in.
    pub fn scale_in_cooldown(&self) -> u32 {
        self.scale_in_cooldown_seconds.unwrap_or(300)
    }
    /// The evaluation window in seconds.
    pub fn window(&self) -> u32 {
        self.window_seconds.unwrap_or(10)
    }
    /// The scale-in stabilisation window in seconds.
    pub fn scale_in_stabilization(&self) -> u32 {
        self.scale_in_stabilization_seconds.unwrap_or(120)
    }
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

impl UpdateStrategy {
    /// `maxSurge` and `maxUnavailable` of a rolling update, defaults applied; both zero would
    /// never make progress, so a surge of 1 is allowed then.
    pub fn limits(&self) -> (u32, u32) {
        let rolling = self.rolling_update.clone().unwrap_or_default();
        let surge = rolling.max_surge.unwrap_or(1);
        let unavailable = rolling.max_unavailable.unwrap_or(0);
        if surge == 0 && unavailable == 0 {
            (1, 0)
        } else {
            (surge, unavailable)
        }
    }
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
    /// `Ready` (enough members serve), `Progressing` (members being created, replaced or
    /// removed) and, with autoscaling, `Autoscaling` (the last evaluation and its numbers).
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
    /// The last change of the desired count, with its numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaling: Option<ScalingRecord>,
    /// The `spec.desiredReplicas` the controller last took over; a different value in the spec
    /// is a manual scaling (`cloud scale`), which resets the autoscaled count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_desired_replicas: Option<u32>,
    /// The template hash of the current members (label `minicloud.dev/template-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<String>,
}

/// One change of a group's desired count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingRecord {
    /// When it was decided.
    pub time: DateTime<Utc>,
    /// `ScaledOut`, `ScaledIn`, `Bounds` (min or max changed) or `Manual` (the spec changed).
    pub reason: String,
    /// The count before.
    pub from_replicas: u32,
    /// The count after.
    pub to_replicas: u32,
    /// The numbers behind it, e.g. `cpu 91% > target 60% over 10s: 2 → 4`.
    pub message: String,
}
