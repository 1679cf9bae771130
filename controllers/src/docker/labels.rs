//! The labels on every Docker object minicloud creates. They are the source of truth for what
//! exists: a restarted control plane lists containers by `minicloud.dev/managed-by`, maps each
//! to its object through namespace, kind, name and uid, and compares `minicloud.dev/spec-hash`
//! with the object's current spec to see whether the container is out of date.
//! `minicloud.dev/cluster` names the control plane, so that installations sharing one engine
//! leave each other's containers alone.
//!
//! Labels, not names, decide ownership: [`Identity`] is what a container, volume or network
//! must say about itself before minicloud adopts, changes or removes it, and [`claim`] sorts
//! an existing container into this object's, an earlier object's of the same name (same
//! cluster, namespace and kind: safe to replace), or someone else's (never touched).

use std::collections::{BTreeMap, HashMap};

use minicloud_crds::Kind;
use serde_json::Value;

pub const MANAGED_BY: &str = "minicloud.dev/managed-by";
pub const NAMESPACE: &str = "minicloud.dev/namespace";
pub const KIND: &str = "minicloud.dev/kind";
pub const NAME: &str = "minicloud.dev/name";
pub const UID: &str = "minicloud.dev/uid";
pub(crate) const SPEC_HASH: &str = "minicloud.dev/spec-hash";
pub(crate) const CLUSTER: &str = "minicloud.dev/cluster";
/// On volumes: the volume's name within its object (`spec.volumes[].name`, `data`).
pub(crate) const VOLUME: &str = "minicloud.dev/volume";
/// On networks: the minicloud network name (`default`, `spec.network`).
pub const NETWORK: &str = "minicloud.dev/network";

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
    pub(crate) fn to_map(&self, extra: &HashMap<String, String>) -> HashMap<String, String> {
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
    pub(crate) fn from_map(map: &HashMap<String, String>) -> Option<Labels> {
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

/// What a Docker object's labels must say for it to belong to one object (or, for a network,
/// to one namespace's network) of this control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity(BTreeMap<&'static str, String>);

impl Identity {
    /// The containers of one object; their uid is checked apart ([`claim`]).
    pub fn object(cluster: &str, namespace: &str, kind: Kind, name: &str) -> Identity {
        Identity(BTreeMap::from([
            (MANAGED_BY, "minicloud".to_owned()),
            (CLUSTER, cluster.to_owned()),
            (NAMESPACE, namespace.to_owned()),
            (KIND, kind.as_str().to_owned()),
            (NAME, name.to_owned()),
        ]))
    }

    /// A named volume of one object. The uid is not part of it: a volume kept (`retain`,
    /// `Retain`) serves the next object of the same name, as documented.
    pub fn volume(cluster: &str, namespace: &str, kind: Kind, name: &str, volume: &str) -> Identity {
        let mut identity = Identity::object(cluster, namespace, kind, name);
        identity.0.insert(VOLUME, volume.to_owned());
        identity
    }

    /// A namespace's network.
    pub fn network(cluster: &str, namespace: &str, network: Option<&str>) -> Identity {
        Identity(BTreeMap::from([
            (MANAGED_BY, "minicloud".to_owned()),
            (CLUSTER, cluster.to_owned()),
            (NAMESPACE, namespace.to_owned()),
            (NETWORK, network.unwrap_or("default").to_owned()),
        ]))
    }

    /// The network a LoadBalancer's container publishes from (its own, one per load balancer).
    pub fn loadbalancer_network(cluster: &str, namespace: &str, name: &str) -> Identity {
        let mut identity = Identity::object(cluster, namespace, Kind::LoadBalancer, name);
        identity.0.insert(NETWORK, "loadbalancer".to_owned());
        identity
    }

    /// The labels to create the object with: these, plus `extra` (a test run's marker, a uid).
    pub fn labels(&self, extra: &HashMap<String, String>) -> HashMap<String, String> {
        let mut map = extra.clone();
        map.extend(self.0.iter().map(|(key, value)| ((*key).to_owned(), value.clone())));
        map
    }

    /// `None` when `labels` say the object has this identity; otherwise whose it is, for a
    /// message that tells the user what they found.
    pub fn mismatch(&self, labels: &HashMap<String, String>) -> Option<String> {
        if self.0.iter().all(|(key, value)| labels.get(*key) == Some(value)) {
            None
        } else {
            Some(describe_owner(labels))
        }
    }
}

/// Whose a Docker object is, as its labels say (for messages).
pub(crate) fn describe_owner(labels: &HashMap<String, String>) -> String {
    if labels.get(MANAGED_BY).map(String::as_str) != Some("minicloud") {
        return "it was not created by minicloud (no minicloud.dev labels)".to_owned();
    }
    let cluster = labels.get(CLUSTER).map(String::as_str).unwrap_or("");
    let what = match (labels.get(KIND), labels.get(NAME), labels.get(NETWORK)) {
        (Some(kind), Some(name), _) => format!("{kind} {}/{name}", labels.get(NAMESPACE).map_or("?", |n| n.as_str())),
        (_, _, Some(network)) => {
            format!("network {network} of namespace {}", labels.get(NAMESPACE).map_or("?", |n| n.as_str()))
        }
        _ => "an object it does not name".to_owned(),
    };
    format!("its labels say it belongs to {what} of the minicloud control plane {}", super::names::cluster_tag(cluster))
}

/// Whose an existing container is, seen from the object that wants its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This very object's (identity and uid).
    Ours,
    /// An earlier object's of the same cluster, namespace, kind and name (deleted, then
    /// created again): replace it.
    Earlier,
    /// Someone else's: never adopted, changed or removed. Says whose.
    Foreign(String),
}

/// Sorts a container with `labels` for the object with `identity` and `uid`.
pub fn claim(identity: &Identity, uid: &str, labels: &HashMap<String, String>) -> Claim {
    match identity.mismatch(labels) {
        Some(owner) => Claim::Foreign(owner),
        None if labels.get(UID).map(String::as_str) == Some(uid) => Claim::Ours,
        None => Claim::Earlier,
    }
}

/// A stable fingerprint of a JSON value (FNV-1a over its canonical text; serde_json keeps object
/// keys sorted), used to tell whether a container still matches its spec.
pub(crate) fn spec_hash(value: &Value) -> String {
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
    fn claims_follow_labels_not_names() {
        let identity = Identity::object("c-1", "a", Kind::Instance, "web");
        let mine = Labels {
            cluster: "c-1".into(),
            namespace: "a".into(),
            kind: Kind::Instance,
            name: "web".into(),
            uid: "u-1".into(),
            spec_hash: String::new(),
        };
        let labels = mine.to_map(&HashMap::new());
        assert_eq!(claim(&identity, "u-1", &labels), Claim::Ours);
        assert_eq!(claim(&identity, "u-2", &labels), Claim::Earlier);
        let other_cluster = Labels { cluster: "c-2".into(), ..mine.clone() }.to_map(&HashMap::new());
        assert!(matches!(claim(&identity, "u-1", &other_cluster), Claim::Foreign(owner) if owner.contains("c2")));
        let other_namespace = Labels { namespace: "a-b".into(), ..mine.clone() }.to_map(&HashMap::new());
        assert!(matches!(claim(&identity, "u-1", &other_namespace), Claim::Foreign(_)));
        let other_kind = Labels { kind: Kind::ManagedDatabase, ..mine }.to_map(&HashMap::new());
        assert!(matches!(claim(&identity, "u-1", &other_kind), Claim::Foreign(_)));
        assert!(
            matches!(claim(&identity, "u-1", &HashMap::new()), Claim::Foreign(owner) if owner.contains("not created"))
        );

        let volume = Identity::volume("c-1", "a", Kind::Instance, "web", "data");
        assert_eq!(volume.mismatch(&volume.labels(&HashMap::new())), None);
        let other_volume = Identity::volume("c-1", "a", Kind::Instance, "web", "logs");
        assert!(volume.mismatch(&other_volume.labels(&HashMap::new())).is_some());
        let network = Identity::network("c-1", "a", None);
        assert!(network.mismatch(&Identity::network("c-1", "a", Some("v")).labels(&HashMap::new())).is_some());
    }

    #[test]
    fn hashes_follow_content_not_key_order() {
        assert_eq!(spec_hash(&json!({"a": 1, "b": 2})), spec_hash(&json!({"b": 2, "a": 1})));
        assert_ne!(spec_hash(&json!({"a": 1})), spec_hash(&json!({"a": 2})));
    }
}
