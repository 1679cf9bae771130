//! The labels on every Docker object minicloud creates. They are the source of truth for what
//! exists: a restarted control plane lists containers by `minicloud.dev/managed-by`, maps each
//! to its object through namespace, kind, name and uid, and compares `minicloud.dev/spec-hash`
//! with the object's current spec to see whether the container is out of date.
//! `minicloud.dev/cluster` names the control plane, so that installations sharing one engine
//! leave each other's containers alone.

use std::collections::HashMap;

use minicloud_crds::Kind;
use serde_json::Value;

pub const MANAGED_BY: &str = "minicloud.dev/managed-by";
pub const NAMESPACE: &str = "minicloud.dev/namespace";
pub const KIND: &str = "minicloud.dev/kind";
pub const NAME: &str = "minicloud.dev/name";
pub const UID: &str = "minicloud.dev/uid";
pub const SPEC_HASH: &str = "minicloud.dev/spec-hash";
pub const CLUSTER: &str = "minicloud.dev/cluster";

/// The identity labels of one object's Docker resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// The control plane (store) the object belongs to.
    pub cluster: String,
    pub namespace: String,
    pub kind: Kind,
    pub name: String,
    pub uid: String,
    pub spec_hash: String,
}

impl Labels {
    /// The labels as Docker wants them, plus `extra` (e.g. a test run's marker).
    pub fn to_map(&self, extra: &HashMap<String, String>) -> HashMap<String, String> {
        let mut map = extra.clone();
        map.insert(MANAGED_BY.into(), "minicloud".into());
        map.insert(CLUSTER.into(), self.cluster.clone());
        map.insert(NAMESPACE.into(), self.namespace.clone());
        map.insert(KIND.into(), self.kind.as_str().into());
        map.insert(NAME.into(), self.name.clone());
        map.insert(UID.into(), self.uid.clone());
        map.insert(SPEC_HASH.into(), self.spec_hash.clone());
        map
    }

    /// Reads the labels of a managed resource; `None` when they are incomplete.
    pub fn from_map(map: &HashMap<String, String>) -> Option<Labels> {
        if map.get(MANAGED_BY).map(String::as_str) != Some("minicloud") {
            return None;
        }
        Some(Labels {
            cluster: map.get(CLUSTER).cloned().unwrap_or_default(),
            namespace: map.get(NAMESPACE)?.clone(),
            kind: Kind::from_kind_name(map.get(KIND)?)?,
            name: map.get(NAME)?.clone(),
            uid: map.get(UID)?.clone(),
            spec_hash: map.get(SPEC_HASH).cloned().unwrap_or_default(),
        })
    }
}

/// A stable fingerprint of a JSON value (FNV-1a over its canonical text; serde_json keeps object
/// keys sorted), used to tell whether a container still matches its spec.
pub fn spec_hash(value: &Value) -> String {
    let text = value.to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_round_trip_and_reject_foreign_containers() {
        let labels = Labels {
            cluster: "c-1".into(),
            namespace: "default".into(),
            kind: Kind::Instance,
            name: "web".into(),
            uid: "u-1".into(),
            spec_hash: spec_hash(&json!({"image": "a"})),
        };
        let extra = HashMap::from([("minicloud.dev/test".to_owned(), "run-1".to_owned())]);
        let map = labels.to_map(&extra);
        assert_eq!(map["minicloud.dev/test"], "run-1");
        assert_eq!(Labels::from_map(&map), Some(labels));
        assert_eq!(Labels::from_map(&HashMap::new()), None);
    }

    #[test]
    fn hashes_follow_content_not_key_order() {
        assert_eq!(spec_hash(&json!({"a": 1, "b": 2})), spec_hash(&json!({"b": 2, "a": 1})));
        assert_ne!(spec_hash(&json!({"a": 1})), spec_hash(&json!({"a": 2})));
    }
}
