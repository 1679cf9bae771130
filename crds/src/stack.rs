//! `Stack`: a parameterised bundle of resources, like a small CloudFormation stack. Resources
//! may use `${name}` to insert parameter values; outputs expose values to the user.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::meta::Condition;

/// Desired state of a stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackSpec {
    /// Take parameters, resources and outputs from this marketplace template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    /// Declared parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterSpec>,
    /// Values given for the parameters, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, Value>,
    /// Resources the stack creates (manifests; strings may contain `${parameter}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<StackResource>,
    /// Values shown to the user once the stack is Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputSpec>,
}

/// Names a marketplace template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateRef {
    /// Template name.
    pub name: String,
    /// Template version; the newest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Type of a parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ParameterType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
}

/// One declared parameter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParameterSpec {
    /// Parameter name (letters, digits, '_' and '-').
    pub name: String,
    /// Value type. Defaults to `String`.
    #[serde(default, rename = "type")]
    pub type_: ParameterType,
    /// What the parameter is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Value used when none is given; a parameter without default is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The only values accepted, when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_values: Vec<Value>,
    /// Smallest accepted value (Integer and Number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// Largest accepted value (Integer and Number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
}

/// A resource of the stack: a manifest without namespace (the stack's is used).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackResource {
    /// `minicloud.dev/v1`.
    pub api_version: String,
    /// Kind of the resource (not `Stack`).
    pub kind: String,
    /// Name and labels of the resource.
    pub metadata: StackResourceMeta,
    /// The resource's spec; validated against its kind once parameters are substituted.
    pub spec: Value,
}

/// Metadata of a stack resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackResourceMeta {
    /// Resource name; may contain `${parameter}`.
    pub name: String,
    /// Labels of the resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    /// Output name.
    pub name: String,
    /// Value; may contain `${parameter}` and `${Kind/name.status.field}`.
    pub value: String,
    /// What the output is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A resource the stack created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackResourceStatus {
    /// Kind of the resource.
    pub kind: String,
    /// Name of the resource.
    pub name: String,
    /// Whether its `Ready` condition is True.
    pub ready: bool,
}

/// Observed state of a stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `ResourcesCreated` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The resources and whether each is Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<StackResourceStatus>,
    /// Resolved outputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

impl StackSpec {
    /// The value of every declared parameter: the given value, else the default. Parameters
    /// with neither are absent.
    pub fn parameter_values(&self) -> BTreeMap<String, Value> {
        self.parameters
            .iter()
            .filter_map(|parameter| {
                let value = self.values.get(&parameter.name).or(parameter.default.as_ref())?;
                Some((parameter.name.clone(), value.clone()))
            })
            .collect()
    }
}

impl StackResource {
    /// The resource as a complete manifest in `namespace`, with parameters substituted.
    pub fn render(&self, parameters: &BTreeMap<String, Value>, namespace: &str) -> Value {
        let metadata = serde_json::json!({
            "name": render_value(&Value::String(self.metadata.name.clone()), parameters),
            "namespace": namespace,
            "labels": render_value(&serde_json::to_value(&self.metadata.labels).unwrap_or_default(), parameters),
        });
        serde_json::json!({
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": metadata,
            "spec": render_value(&self.spec, parameters),
        })
    }
}

/// Substitutes `${name}` placeholders. A string that is exactly one placeholder takes the
/// parameter's value with its type (`"${replicas}"` → `3`); inside longer strings the value's
/// text is inserted. Placeholders naming no parameter are left as written.
pub fn render_value(value: &Value, parameters: &BTreeMap<String, Value>) -> Value {
    match value {
        Value::String(text) => {
            if let Some(name) = text.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) {
                if let Some(parameter) = parameters.get(name).filter(|_| !name.contains('}')) {
                    return parameter.clone();
                }
            }
            Value::String(render_text(text, parameters))
        }
        Value::Array(items) => Value::Array(items.iter().map(|item| render_value(item, parameters)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(key, item)| (key.clone(), render_value(item, parameters))).collect())
        }
        other => other.clone(),
    }
}

fn render_text(text: &str, parameters: &BTreeMap<String, Value>) -> String {
    let mut rendered = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rendered.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                match parameters.get(&after[..end]) {
                    Some(Value::String(value)) => rendered.push_str(value),
                    Some(value) => rendered.push_str(&value.to_string()),
                    None => rendered.push_str(&rest[start..start + 2 + end + 1]),
                }
                rest = &after[end + 1..];
            }
            None => {
                rendered.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    rendered.push_str(rest);
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_keep_types_when_whole_and_become_text_inside_strings() {
        let parameters: BTreeMap<String, Value> =
            [("replicas".to_string(), json!(3)), ("name".to_string(), json!("blog"))].into_iter().collect();
        let rendered = render_value(
            &json!({"n": "${replicas}", "s": "${name}-web", "x": "${unknown}", "list": ["${name}"]}),
            &parameters,
        );
        assert_eq!(rendered, json!({"n": 3, "s": "blog-web", "x": "${unknown}", "list": ["blog"]}));
    }
}
