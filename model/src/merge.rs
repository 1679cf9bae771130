//! The apply merge, the way `kubectl apply` merges: each object remembers what was last
//! applied (annotation [`LAST_APPLIED`]: labels, annotations and spec), and an update merges
//! three ways: a field removed from the manifest since the last apply is removed from the
//! object, fields set in the manifest win, and fields the manifest never set (added by another
//! client) stay. Lists are replaced whole. Also the field-by-field differences `cloud diff`
//! shows, and drift (changes made outside the manifests). Pure: no I/O.

use std::collections::BTreeMap;

use minicloud_crds::Object;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The annotation that records the last applied labels, annotations and spec.
pub const LAST_APPLIED: &str = "minicloud.dev/last-applied";

/// The applied configuration kept in the annotation.
#[derive(Default, Serialize, Deserialize)]
struct LastApplied {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    spec: Value,
}

/// What an apply records of a manifest. A Secret's values are not kept (the three-way merge
/// needs only which keys the manifest had).
fn last_applied_of(object: &Object) -> LastApplied {
    let mut annotations = object.metadata.annotations.clone();
    annotations.remove(LAST_APPLIED);
    let mut recorded = object.clone();
    crate::redact::redact_object(&mut recorded);
    LastApplied { labels: object.metadata.labels.clone(), annotations, spec: recorded.spec }
}

pub fn with_last_applied(mut object: Object) -> Object {
    let record = serde_json::to_string(&last_applied_of(&object)).unwrap_or_default();
    object.metadata.annotations.insert(LAST_APPLIED.into(), record);
    object
}

/// The live object updated by a manifest: spec, labels and annotations merged three ways
/// (removed from the manifest since the last apply → removed; set by others → kept).
pub fn merge(live: &Object, manifest: &Object) -> Object {
    let previous: LastApplied = live
        .metadata
        .annotations
        .get(LAST_APPLIED)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let desired = last_applied_of(manifest);
    let mut next = live.clone();
    // The manifest's own spec: the record keeps no Secret values.
    next.spec = merge_value(Some(&previous.spec), &live.spec, &manifest.spec);
    next.metadata.labels = merge_map(&previous.labels, &live.metadata.labels, &desired.labels);
    next.metadata.annotations = merge_map(&previous.annotations, &live.metadata.annotations, &desired.annotations);
    with_last_applied_record(next, &desired)
}

fn with_last_applied_record(mut object: Object, record: &LastApplied) -> Object {
    let text = serde_json::to_string(record).unwrap_or_default();
    object.metadata.annotations.insert(LAST_APPLIED.into(), text);
    object
}

fn merge_map(
    previous: &BTreeMap<String, String>,
    live: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged: BTreeMap<String, String> = live
        .iter()
        .filter(|(key, _)| !previous.contains_key(*key) || desired.contains_key(*key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    merged.extend(desired.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// Three-way merge of JSON: objects key by key (keys the last apply had and the manifest has no
/// longer are removed, keys the manifest has are merged, other keys stay); anything else is
/// taken from the manifest.
fn merge_value(last: Option<&Value>, live: &Value, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(live_map), Value::Object(desired_map)) => {
            let last_map = last.and_then(Value::as_object);
            let mut merged = live_map.clone();
            if let Some(last_map) = last_map {
                for key in last_map.keys().filter(|key| !desired_map.contains_key(*key)) {
                    merged.remove(key);
                }
            }
            for (key, value) in desired_map {
                let previous = last_map.and_then(|map| map.get(key));
                let current = live_map.get(key).unwrap_or(&Value::Null);
                merged.insert(key.clone(), merge_value(previous, current, value));
            }
            Value::Object(merged)
        }
        _ => desired.clone(),
    }
}

/// The leaf fields (`spec.image`, `metadata.labels.app`) that differ between two objects,
/// ignoring the last-applied bookkeeping.
pub fn changed_fields(before: &Object, after: &Object) -> Vec<String> {
    field_changes(before, after).into_iter().map(|change| change.path).collect()
}

/// One leaf field that differs: its path and its values before and after (`null`: absent).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub before: Value,
    pub after: Value,
}

/// Every leaf field of spec, labels and annotations (but the last-applied record) that differs.
pub fn field_changes(before: &Object, after: &Object) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    diff(&json!(before.spec), &json!(after.spec), "spec", &mut changes);
    diff(&json!(before.metadata.labels), &json!(after.metadata.labels), "metadata.labels", &mut changes);
    let strip = |object: &Object| {
        let mut annotations = object.metadata.annotations.clone();
        annotations.remove(LAST_APPLIED);
        json!(annotations)
    };
    diff(&strip(before), &strip(after), "metadata.annotations", &mut changes);
    changes
}

/// The fields of `live` that differ from what was last applied to it (`None`: it has no
/// record): changes made outside the manifests, to fields the manifests set. Fields the
/// manifests never set (a controller's, another client's) are not drift.
pub fn drift(live: &Object) -> Option<Vec<FieldChange>> {
    let record: LastApplied = serde_json::from_str(live.metadata.annotations.get(LAST_APPLIED)?).ok()?;
    let mut found = Vec::new();
    applied_fields(&record.spec, &json!(live.spec), "spec", &mut found);
    applied_fields(&json!(record.labels), &json!(live.metadata.labels), "metadata.labels", &mut found);
    applied_fields(&json!(record.annotations), &json!(live.metadata.annotations), "metadata.annotations", &mut found);
    // A Secret's record keeps no values: nothing to compare them with.
    found.retain(|change| change.before != json!(crate::redact::REDACTED));
    Some(found)
}

/// The leaves of `recorded` whose value in `live` is another.
fn applied_fields(recorded: &Value, live: &Value, path: &str, out: &mut Vec<FieldChange>) {
    match (recorded, live) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                applied_fields(value, b.get(key).unwrap_or(&Value::Null), &format!("{path}.{key}"), out);
            }
        }
        (Value::Object(_), _) => {
            out.push(FieldChange { path: path.to_owned(), before: recorded.clone(), after: live.clone() })
        }
        _ if recorded != live => {
            out.push(FieldChange { path: path.to_owned(), before: recorded.clone(), after: live.clone() })
        }
        _ => {}
    }
}

fn diff(before: &Value, after: &Value, path: &str, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = format!("{path}.{key}");
                diff(a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), &child, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &format!("{path}[{index}]"), out);
            }
        }
        _ if before != after => {
            out.push(FieldChange { path: path.to_owned(), before: before.clone(), after: after.clone() })
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(labels: &[(&str, &str)], image: &str) -> Object {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance",
            "metadata": {"name": "web", "namespace": "default", "labels": labels},
            "spec": {"image": image, "env": [{"name": "A", "value": "1"}]}
        }))
        .expect("object")
    }

    #[test]
    fn removed_labels_go_and_foreign_labels_stay() {
        let first = with_last_applied(object(&[("app", "web"), ("tier", "front")], "a"));
        let mut live = first.clone();
        live.metadata.labels.insert("owner".into(), "ops".into());
        let next = merge(&live, &object(&[("app", "web")], "a"));
        let labels: Vec<&str> = next.metadata.labels.keys().map(String::as_str).collect();
        assert_eq!(labels, ["app", "owner"]);
        assert_eq!(changed_fields(&live, &next), ["metadata.labels.tier"]);
    }

    #[test]
    fn spec_fields_set_by_others_survive_and_nested_removals_apply() {
        let mut manifest = object(&[], "a");
        manifest.spec["healthCheck"] = json!({"tcp": {"port": 80}, "retries": 3});
        let mut live = with_last_applied(manifest.clone());
        live.spec["network"] = json!("backend");
        live.spec["healthCheck"]["intervalSeconds"] = json!(5);
        manifest.spec["healthCheck"] = json!({"tcp": {"port": 80}});
        let next = merge(&live, &manifest);
        assert_eq!(next.spec["network"], "backend", "a field the manifest never set stays");
        assert_eq!(next.spec["healthCheck"], json!({"tcp": {"port": 80}, "intervalSeconds": 5}));
    }

    #[test]
    fn spec_fields_removed_from_the_manifest_are_removed() {
        let live = with_last_applied(object(&[], "a"));
        let mut manifest = object(&[], "b");
        manifest.spec.as_object_mut().expect("spec").remove("env");
        let next = merge(&live, &manifest);
        assert_eq!(next.spec, json!({"image": "b"}));
        assert_eq!(changed_fields(&live, &next), ["spec.env", "spec.image"]);
        assert!(changed_fields(&next, &merge(&next, &manifest)).is_empty());
    }
}
