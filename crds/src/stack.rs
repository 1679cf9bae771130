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

/// Largest rendered resource: the store's limit for one object (1.5 MiB encoded). Rendering
/// stops as soon as it would exceed it, before allocating more.
pub const MAX_RENDERED_BYTES: usize = 1536 * 1024;
/// Most `${parameter}` substitutions rendering one resource may make.
pub const MAX_SUBSTITUTIONS: usize = 10_000;

/// Why a resource cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("substituting the parameters would make this resource larger than {} KiB; use shorter values or fewer placeholders", MAX_RENDERED_BYTES / 1024)]
    TooLarge,
    #[error("this resource has more than {MAX_SUBSTITUTIONS} parameter placeholders; use fewer")]
    TooManySubstitutions,
}

/// What rendering one resource may still produce.
struct Budget {
    bytes: usize,
    substitutions: usize,
}

impl Budget {
    fn new() -> Budget {
        Budget { bytes: MAX_RENDERED_BYTES, substitutions: MAX_SUBSTITUTIONS }
    }

    /// Takes `bytes` from the budget, or fails without taking anything.
    fn spend(&mut self, bytes: usize) -> Result<(), RenderError> {
        self.bytes = self.bytes.checked_sub(bytes).ok_or(RenderError::TooLarge)?;
        Ok(())
    }

    /// Appends `piece` to `text` if the budget allows it.
    fn append(&mut self, text: &mut String, piece: &str) -> Result<(), RenderError> {
        self.spend(piece.len())?;
        text.push_str(piece);
        Ok(())
    }

    fn substitute(&mut self) -> Result<(), RenderError> {
        self.substitutions = self.substitutions.checked_sub(1).ok_or(RenderError::TooManySubstitutions)?;
        Ok(())
    }
}

impl StackResource {
    /// The resource as a complete manifest in `namespace`, with parameters substituted; bounded
    /// by [`MAX_RENDERED_BYTES`] and [`MAX_SUBSTITUTIONS`].
    pub fn render(&self, parameters: &BTreeMap<String, Value>, namespace: &str) -> Result<Value, RenderError> {
        let mut budget = Budget::new();
        let name = render_within(&Value::String(self.metadata.name.clone()), parameters, &mut budget)?;
        let labels = serde_json::to_value(&self.metadata.labels).unwrap_or_default();
        let metadata = serde_json::json!({
            "name": name,
            "namespace": namespace,
            "labels": render_within(&labels, parameters, &mut budget)?,
        });
        Ok(serde_json::json!({
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": metadata,
            "spec": render_within(&self.spec, parameters, &mut budget)?,
        }))
    }
}

/// Substitutes `${name}` placeholders. A string that is exactly one placeholder takes the
/// parameter's value with its type (`"${replicas}"` → `3`); inside longer strings the value's
/// text is inserted. Placeholders naming no parameter are left as written. Bounded like
/// [`StackResource::render`].
pub fn render_value(value: &Value, parameters: &BTreeMap<String, Value>) -> Result<Value, RenderError> {
    render_within(value, parameters, &mut Budget::new())
}

fn render_within(
    value: &Value,
    parameters: &BTreeMap<String, Value>,
    budget: &mut Budget,
) -> Result<Value, RenderError> {
    match value {
        Value::String(text) => {
            if let Some(name) = text.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) {
                if let Some(parameter) = parameters.get(name).filter(|_| !name.contains('}')) {
                    budget.substitute()?;
                    budget.spend(encoded_size(parameter))?;
                    return Ok(parameter.clone());
                }
            }
            Ok(Value::String(render_text(text, parameters, budget)?))
        }
        Value::Array(items) => {
            budget.spend(2)?;
            items.iter().map(|item| render_within(item, parameters, budget)).collect::<Result<_, _>>().map(Value::Array)
        }
        Value::Object(map) => {
            budget.spend(2)?;
            let mut rendered = serde_json::Map::new();
            for (key, item) in map {
                budget.spend(key.len() + 4)?;
                rendered.insert(key.clone(), render_within(item, parameters, budget)?);
            }
            Ok(Value::Object(rendered))
        }
        other => {
            budget.spend(encoded_size(other))?;
            Ok(other.clone())
        }
    }
}

/// The size of a value as JSON text, computed without producing the text for strings.
fn encoded_size(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len() + 2,
        other => other.to_string().len(),
    }
}

fn render_text(text: &str, parameters: &BTreeMap<String, Value>, budget: &mut Budget) -> Result<String, RenderError> {
    let mut rendered = String::new();
    budget.spend(2)?;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        budget.append(&mut rendered, &rest[..start])?;
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                match parameters.get(&after[..end]) {
                    Some(value) => {
                        budget.substitute()?;
                        match value {
                            Value::String(value) => budget.append(&mut rendered, value)?,
                            value => budget.append(&mut rendered, &value.to_string())?,
                        }
                    }
                    None => budget.append(&mut rendered, &rest[start..start + 2 + end + 1])?,
                }
                rest = &after[end + 1..];
            }
            None => {
                budget.append(&mut rendered, &rest[start..])?;
                rest = "";
            }
        }
    }
    budget.append(&mut rendered, rest)?;
    Ok(rendered)
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
        assert_eq!(rendered, Ok(json!({"n": 3, "s": "blog-web", "x": "${unknown}", "list": ["blog"]})));
    }

    #[test]
    fn expansion_is_bounded_before_it_allocates() {
        // A 1 MiB value substituted again and again: refused at the second copy.
        let big: BTreeMap<String, Value> = [("p".to_string(), json!("x".repeat(1 << 20)))].into_iter().collect();
        let placeholders = "${p}".repeat(1_500_000);
        assert_eq!(render_value(&json!(placeholders), &big), Err(RenderError::TooLarge));
        let typed: Vec<Value> = (0..3).map(|_| json!("${p}")).collect();
        assert_eq!(render_value(&json!(typed), &big), Err(RenderError::TooLarge));
        // Many tiny substitutions: refused by count.
        let tiny: BTreeMap<String, Value> = [("p".to_string(), json!(""))].into_iter().collect();
        assert_eq!(render_value(&json!("${p}".repeat(20_000)), &tiny), Err(RenderError::TooManySubstitutions));
        // Within bounds, the same machinery renders normally.
        assert_eq!(render_value(&json!("${p}".repeat(3)), &tiny), Ok(json!("")));
    }
}
