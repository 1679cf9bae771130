//! `ApplySet`: the inventory of one applied set of manifests (`cloud apply --prune --applyset
//! NAME`), kept by the server like a kubectl ApplySet or a Flux inventory. Prune deletes members
//! of the inventory that are no longer applied, and nothing else.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation apply puts on every member of an applyset: `NAMESPACE/NAME` of the set. An
/// object belongs to one set at a time, and prune deletes a member only while it still carries
/// its set's mark (an object taken over by a plain apply or another set is let go instead).
pub const PART_OF_ANNOTATION: &str = "minicloud.dev/applyset";

/// What the set holds. Written by the server's apply, not by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplySetSpec {
    /// Every object this set applied and has not pruned yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<ApplySetMember>,
}

/// One member of an applyset.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplySetMember {
    /// Its kind.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What the last apply of the set did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplySetStatus {
    /// When the set was last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply_time: Option<DateTime<Utc>>,
    /// Members the last apply pruned (`kind/namespace/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_pruned: Vec<String>,
    /// Members that are no longer applied but were kept: stateful objects (databases) without
    /// `--prune-stateful`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}
