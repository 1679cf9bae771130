//! `cloud explain KIND[.field.path]`: documentation of a kind or field, read from the kind's
//! JSON Schema (which is generated from the Rust types' doc comments). Works offline.

use minicloud_crds::kinds::{resolve_schema, schema_at};
use minicloud_crds::FieldPath;
use serde_json::Value;

use super::parse_kind;

/// A short type name for a schema node: `string`, `integer`, `[]Object`, `map[string]string`.
fn type_name(root: &Value, node: &Value) -> String {
    let node = resolve_schema(root, node);
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let names: Vec<String> =
            values.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect();
        return format!("enum: {}", names.join(", "));
    }
    if let Some(options) = node.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> =
            options.iter().filter_map(|o| o.get("const")).map(|v| v.as_str().unwrap_or("").to_owned()).collect();
        if !names.is_empty() {
            return format!("enum: {}", names.join(", "));
        }
    }
    let kind = match node.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => {
            kinds.iter().filter_map(Value::as_str).find(|k| *k != "null").unwrap_or("any").to_owned()
        }
        _ if node.get("properties").is_some() => "object".into(),
        _ => "any".into(),
    };
    match kind.as_str() {
        "array" => format!("[]{}", node.get("items").map_or("any".into(), |items| type_name(root, items))),
        "object" if node.get("properties").is_some() => "Object".into(),
        "object" => format!(
            "map[string]{}",
            node.get("additionalProperties").filter(|a| a.is_object()).map_or("any".into(), |a| type_name(root, a))
        ),
        _ => kind,
    }
}

fn description(node: &Value) -> String {
    node.get("description").and_then(Value::as_str).unwrap_or("(no description)").replace('\n', " ")
}

/// Prints the documentation of `target` (`instance`, `instance.spec.ports`).
pub fn run(target: &str) -> anyhow::Result<()> {
    let (kind_text, path_text) = target.split_once('.').unwrap_or((target, ""));
    let kind = parse_kind(kind_text)?;
    let schema = kind.schema();
    let path = FieldPath::parse(path_text);
    let Some(node) = schema_at(&schema, &path) else {
        anyhow::bail!(
            "{target:?}: {} has no field {path_text:?}; try `cloud explain {}`",
            kind,
            kind.as_str().to_ascii_lowercase()
        );
    };
    // The field's own description sits on the reference, before it is resolved.
    let parent_description = if path.is_root() {
        description(node)
    } else {
        let mut parent = path.clone();
        let last = parent.0.pop();
        schema_at(&schema, &parent)
            .and_then(|parent| match last {
                Some(minicloud_crds::PathSegment::Key(key)) => {
                    parent.get("properties").and_then(|p| p.get(&key)).cloned()
                }
                _ => parent.get("items").cloned(),
            })
            .map_or_else(|| description(node), |field| description(&field))
    };
    say!("KIND:     {kind}");
    say!("VERSION:  {}", minicloud_crds::API_VERSION);
    if !path.is_root() {
        say!("FIELD:    {path} <{}>", type_name(&schema, node));
    }
    say!();
    say!("DESCRIPTION:");
    say!("  {parent_description}");
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = node
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        say!();
        say!("FIELDS:");
        for (name, field) in properties {
            let marker = if required.contains(&name.as_str()) { " -required-" } else { "" };
            say!("  {name}\t<{}>{marker}", type_name(&schema, field));
            say!("    {}", description(field));
        }
    }
    Ok(())
}
