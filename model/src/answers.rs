//! What the API answers that both sides read: the outcome of an apply for each object, what a
//! prune did, the field causes of an error, and the API's limits its documents state.

use serde::{Deserialize, Serialize};

/// The longest event message the API accepts, in bytes.
pub const MAX_EVENT_MESSAGE_BYTES: usize = 4096;

/// What apply did (or, in a dry run, would do) to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

/// The outcome for one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// Fields that change (for `configured`), e.g. `spec.image`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// What prune did (or would do) to one member no longer applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `deleted`, `kept` (a database without pruneStateful), `gone` (already absent) or
    /// `released` (no longer marked as the set's: applied outside it since; not deleted).
    pub action: String,
}

/// One field problem in an error's details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub field: String,
    pub message: String,
}
