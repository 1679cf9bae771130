//! Secret values kept out of what is shown: a Secret's `spec.stringData` values and a Stack's
//! `secret: true` parameter values become [`REDACTED`], also inside the copies of the object
//! that applied-configuration annotations hold (`minicloud.dev/last-applied`, kubectl's
//! `last-applied-configuration`). The server redacts every answer with these; the apply merge
//! records manifests redacted.

use std::collections::{BTreeMap, BTreeSet};

use minicloud_crds::Object;
use serde_json::Value;

pub use minicloud_crds::secret::REDACTED;

/// The kinds whose values are sensitive.
const SECRET: &str = "Secret";
const STACK: &str = "Stack";

/// Replaces every value of a Secret with [`REDACTED`] (other kinds are left alone), also in the
/// copies of the object that applied-configuration annotations hold.
pub fn redact_object(object: &mut Object) {
    redact_spec(&object.kind, &mut object.spec);
    redact_applied_copies(&object.kind, &mut object.metadata.annotations);
}

/// Annotations that hold a copy of the object as it was applied: kubectl's client-side apply
/// (the whole manifest, a Secret's `stringData` included) and minicloud's own apply record.
/// Their sensitive values are redacted wherever the object is stored or shown; kubectl's next
/// three-way merge needs only which keys were there.
pub const APPLIED_COPIES: [&str; 2] =
    ["kubectl.kubernetes.io/last-applied-configuration", "minicloud.dev/last-applied"];

/// Redacts the sensitive values of the copies in `annotations` of an object of `kind`; true
/// when something changed. A copy that is not a JSON object is replaced whole.
pub fn redact_applied_copies(kind: &str, annotations: &mut BTreeMap<String, String>) -> bool {
    if kind != SECRET && kind != STACK {
        return false;
    }
    let mut changed = false;
    for name in APPLIED_COPIES {
        let Some(text) = annotations.get_mut(name) else { continue };
        let redacted = match serde_json::from_str::<Value>(text) {
            Ok(mut copy) if copy.is_object() => {
                if let Some(spec) = copy.get_mut("spec") {
                    redact_spec(kind, spec);
                }
                copy.to_string()
            }
            _ => REDACTED.to_owned(),
        };
        if *text != redacted {
            *text = redacted;
            changed = true;
        }
    }
    changed
}

/// The map holding a kind's sensitive values: a Secret's `stringData`, a Stack's `values`.
pub fn sensitive_map<'v>(kind: &str, spec: &'v mut Value) -> Option<&'v mut serde_json::Map<String, Value>> {
    match kind {
        SECRET => spec.get_mut("stringData")?.as_object_mut(),
        STACK => spec.get_mut("values")?.as_object_mut(),
        _ => None,
    }
}

/// Which keys of that map are sensitive: all of a Secret's (`None`), a Stack's parameters
/// declared `secret: true` (a value of another key is an ordinary one).
pub fn sensitive_names(kind: &str, spec: &Value) -> Option<BTreeSet<String>> {
    (kind == STACK).then(|| {
        spec.get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|p| p.get("secret").and_then(Value::as_bool) == Some(true))
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    })
}

fn redact_spec(kind: &str, spec: &mut Value) {
    let names = sensitive_names(kind, spec);
    if let Some(data) = sensitive_map(kind, spec) {
        for (key, value) in data.iter_mut() {
            if names.as_ref().is_none_or(|names| names.contains(key)) {
                *value = Value::String(REDACTED.to_owned());
            }
        }
    }
}

/// A stored JSON document with its sensitive values redacted (documents of kinds without any
/// pass unchanged).
pub fn redact_document(document: &str) -> String {
    match serde_json::from_str::<Value>(document) {
        Ok(mut value) => {
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
            if kind != SECRET && kind != STACK {
                return document.to_owned();
            }
            if let Some(spec) = value.get_mut("spec") {
                redact_spec(&kind, spec);
            }
            if let Some(annotations) = value.pointer_mut("/metadata/annotations") {
                if let Ok(mut map) = serde_json::from_value::<BTreeMap<String, String>>(annotations.clone()) {
                    if redact_applied_copies(&kind, &mut map) {
                        *annotations = serde_json::to_value(map).unwrap_or_default();
                    }
                }
            }
            value.to_string()
        }
        // Not JSON: nothing of it may leave.
        Err(_) => "{}".to_owned(),
    }
}
