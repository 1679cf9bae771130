//! Object metadata, owner references, label selectors and status conditions: the parts every
//! kind shares, following the Kubernetes API conventions that DESIGN.md adopts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group and version every minicloud resource carries in `apiVersion`.
pub const API_VERSION: &str = "minicloud.dev/v1";

/// The API group of every minicloud resource.
pub const API_GROUP: &str = "minicloud.dev";

/// The namespace an object lands in when its manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identity and bookkeeping of an object. Users write `name`, `namespace`, `labels`,
/// `annotations`, `finalizers` and `ownerReferences`; the store fills in the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Name of the object, unique per kind within its namespace. A DNS-1123 label: at most 63
    /// lower-case letters, digits and '-', starting and ending with a letter or digit.
    pub name: String,
    /// Namespace of the object (a DNS-1123 label). Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Unique id the store assigns on creation. Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Key/value pairs used to select objects (`-l app=web`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form key/value pairs for tools; not used for selection.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Sequence number of the desired state: bumped only when `spec` changes. Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Opaque version of this object, for optimistic concurrency and watches. Read-only; send it
    /// back unchanged on update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// When the object was created. Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// When deletion was requested; set while finalizers still hold the object. Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// Names of cleanups that must finish before the object is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Objects this one belongs to; when an owner is deleted, its dependents are deleted too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    /// The namespace, with the default applied.
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The resource version as the store's integer revision, when it is set and well-formed.
    pub fn revision(&self) -> Option<i64> {
        self.resource_version.as_deref()?.parse().ok()
    }
}

/// Names the object that owns this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    /// API version of the owner.
    pub api_version: String,
    /// Kind of the owner.
    pub kind: String,
    /// Name of the owner (same namespace as the dependent).
    pub name: String,
    /// Uid of the owner; the dependent is deleted when no object with this uid exists.
    pub uid: String,
    /// True when the owner is the managing controller of this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
}

/// Selects objects by their labels; all terms must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels an object must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Whether a condition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One observation about an object (`Ready`, `ContainerRunning`, ...). Conditions are
/// observations, not a state machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Condition type, CamelCase (`Ready`).
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default)]
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
    /// The object's generation this observation was made against.
    #[serde(default)]
    pub observed_generation: i64,
}
