//! `Stack`: a parameterised bundle of resources, like a small CloudFormation stack.
//!
//! Strings in resources and outputs may hold references: `${params.NAME}` (or the short
//! `${NAME}`) inserts a parameter's value, `${resources.NAME.PATH}` a field of another resource
//! of the stack as it is now (e.g. `${resources.db.status.endpoint.port}`). References to
//! resources, `dependsOn`, and Secret key references to a database's generated credentials
//! make the stack's dependency graph ([`dependency_order`]): a resource is written once what it
//! depends on is Ready.

use std::collections::{BTreeMap, BTreeSet};

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
    /// A regular expression the whole value must match (String).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The value is sensitive: it is sealed in the store, kept in the Secret `STACK-params`
    /// owned by the stack, and shown as `<redacted>` in every output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// Generate the value when none is given, once: later applies reuse it (a re-apply that
    /// changed a password would lock an application out of its own database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<GenerateSpec>,
}

/// How a parameter's value is generated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateSpec {
    /// A random password of this many letters and digits.
    #[schemars(range(min = 16, max = 128))]
    pub password: u32,
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
    /// Names of resources of this stack that must be Ready before this one is written (on top
    /// of those its references name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The resource is part of the stack only when this renders to something other than
    /// empty, `false` or `0`: `when: "${params.hostname}"` makes a Route only when a host
    /// name is given. Parameters only (no resource fields). A resource no longer wanted is
    /// removed, as one dropped from the list is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
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
    /// Value; may contain `${params.NAME}` and `${resources.NAME.status.FIELD}` (and the older
    /// `${Kind/name.status.field}`).
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
    /// Its `Ready` condition's reason and message, or what it waits for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where a stack is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StackPhase {
    /// Resources are being created, updated or removed, or are not Ready yet.
    #[default]
    Progressing,
    /// Every resource is Ready.
    Ready,
    /// A resource failed (its reason is in `resources[].message`); fix the manifest and apply
    /// again.
    Failed,
    /// The stack is being deleted with its resources.
    Deleting,
}

/// Observed state of a stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Progressing` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Progressing, Ready, Failed or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StackPhase>,
    /// The resources and whether each is Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<StackResourceStatus>,
    /// Resolved outputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

/// The reference to the stack's own name, replaced as text before anything else (so that it
/// may sit inside other references: `${resources.${stack.name}-db.status.endpoint}`).
pub const STACK_NAME_REFERENCE: &str = "${stack.name}";

/// The Secret holding a stack's `secret` and generated parameter values: `STACK-params`.
pub fn parameters_secret_name(stack: &str) -> String {
    let prefix: String = stack.chars().take(56).collect();
    format!("{}-params", prefix.trim_end_matches('-'))
}

fn replace_in_strings(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(text) if text.contains(from) => *text = text.replace(from, to),
        Value::Array(items) => items.iter_mut().for_each(|item| replace_in_strings(item, from, to)),
        Value::Object(map) => map.values_mut().for_each(|item| replace_in_strings(item, from, to)),
        _ => {}
    }
}

impl StackSpec {
    /// The spec with `${stack.name}` replaced by `name` in its resources and outputs.
    pub fn with_stack_name(&self, name: &str) -> StackSpec {
        let mut spec = self.clone();
        for resource in &mut spec.resources {
            let mut value = serde_json::to_value(&*resource).unwrap_or_default();
            replace_in_strings(&mut value, STACK_NAME_REFERENCE, name);
            if let Ok(replaced) = serde_json::from_value(value) {
                *resource = replaced;
            }
        }
        for output in &mut spec.outputs {
            output.value = output.value.replace(STACK_NAME_REFERENCE, name);
        }
        spec
    }

    /// The spec without the resources whose `when` says no with these parameter values.
    pub fn included(&self, parameters: &BTreeMap<String, Value>) -> StackSpec {
        let mut spec = self.clone();
        spec.resources.retain(|resource| resource.included(parameters));
        spec
    }

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
pub(crate) const MAX_RENDERED_BYTES: usize = 1536 * 1024;
/// Most `${parameter}` substitutions rendering one resource may make.
pub(crate) const MAX_SUBSTITUTIONS: usize = 10_000;

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
    /// Whether the resource is part of the stack with these parameter values (see
    /// [`StackResource::when`]).
    pub fn included(&self, parameters: &BTreeMap<String, Value>) -> bool {
        let Some(when) = &self.when else { return true };
        match render_value(&Value::String(when.clone()), parameters) {
            Ok(Value::String(text)) => !matches!(text.trim(), "" | "false" | "0") && !text.contains("${"),
            Ok(Value::Bool(flag)) => flag,
            Ok(Value::Number(number)) => number.as_f64().is_some_and(|n| n != 0.0),
            _ => false,
        }
    }

    /// The resource as a complete manifest in `namespace`, with parameters substituted (other
    /// references are left as written); bounded by [`MAX_RENDERED_BYTES`] and
    /// [`MAX_SUBSTITUTIONS`].
    pub fn render(&self, parameters: &BTreeMap<String, Value>, namespace: &str) -> Result<Value, RenderError> {
        self.render_with(&parameter_resolver(parameters), namespace)
    }

    /// Like [`StackResource::render`], with every reference resolved by `resolve` (`None`
    /// leaves it as written).
    pub fn render_with(&self, resolve: &Resolver<'_>, namespace: &str) -> Result<Value, RenderError> {
        let mut budget = Budget::new();
        let name = render_within(&Value::String(self.metadata.name.clone()), resolve, &mut budget)?;
        let labels = serde_json::to_value(&self.metadata.labels).unwrap_or_default();
        let metadata = serde_json::json!({
            "name": name,
            "namespace": namespace,
            "labels": render_within(&labels, resolve, &mut budget)?,
        });
        Ok(serde_json::json!({
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": metadata,
            "spec": render_within(&self.spec, resolve, &mut budget)?,
        }))
    }

    /// The resource's name with parameters substituted.
    pub fn rendered_name(&self, parameters: &BTreeMap<String, Value>) -> String {
        match render_value(&Value::String(self.metadata.name.clone()), parameters) {
            Ok(Value::String(name)) => name,
            _ => self.metadata.name.clone(),
        }
    }
}

/// Resolves the text inside `${...}`; `None` leaves the reference as written.
pub(crate) type Resolver<'a> = dyn Fn(&str) -> Option<Value> + 'a;

/// A resolver of parameter references only.
pub(crate) fn parameter_resolver(parameters: &BTreeMap<String, Value>) -> impl Fn(&str) -> Option<Value> + '_ {
    move |text| match Reference::parse(text) {
        Reference::Parameter(name) => parameters.get(name).cloned(),
        _ => None,
    }
}

/// What a `${...}` refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference<'a> {
    /// `${params.NAME}`, or the short `${NAME}`.
    Parameter(&'a str),
    /// `${resources.NAME.PATH}`: a field of another resource of the stack.
    Resource { name: &'a str, path: &'a str },
    /// `${Kind/name.PATH}` (the older form of outputs).
    Legacy { kind: &'a str, name: &'a str, path: &'a str },
}

impl<'a> Reference<'a> {
    /// Reads the text inside `${...}`.
    pub fn parse(text: &'a str) -> Reference<'a> {
        if let Some(name) = text.strip_prefix("params.") {
            return Reference::Parameter(name);
        }
        if let Some(rest) = text.strip_prefix("resources.") {
            let (name, path) = rest.split_once('.').unwrap_or((rest, ""));
            return Reference::Resource { name, path };
        }
        if let Some((kind, rest)) = text.split_once('/') {
            let (name, path) = rest.split_once('.').unwrap_or((rest, ""));
            return Reference::Legacy { kind, name, path };
        }
        Reference::Parameter(text)
    }
}

/// The field at a dotted `path` (`status.endpoint.port`, `status.ports.0.hostPort`) of `object`.
pub fn lookup(object: &Value, path: &str) -> Option<Value> {
    let mut current = object;
    for part in path.split('.').filter(|part| !part.is_empty()) {
        current = match current {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current.clone())
}

/// The `${...}` references in a string.
pub fn references(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                found.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    found
}

/// Every reference in a JSON value, with the dotted path of the string that holds it.
pub fn references_in<'v>(value: &'v Value, path: String, out: &mut Vec<(String, &'v str)>) {
    let mut strings = Vec::new();
    strings_in(value, path, &mut strings);
    for (at, text) in strings {
        out.extend(references(text).into_iter().map(|reference| (at.clone(), reference)));
    }
}

/// Every string of a JSON value with its dotted path (`env[0].value`).
pub(crate) fn strings_in<'v>(value: &'v Value, path: String, out: &mut Vec<(String, &'v str)>) {
    match value {
        Value::String(text) => out.push((path, text)),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                strings_in(item, format!("{path}[{index}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                strings_in(item, child, out);
            }
        }
        _ => {}
    }
}

/// Names of Secrets a spec reads through `secretKeyRef`.
fn secret_references(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(name) = map.get("secretKeyRef").and_then(|r| r.get("name")).and_then(Value::as_str) {
                out.insert(name.to_owned());
            }
            map.values().for_each(|item| secret_references(item, out));
        }
        Value::Array(items) => items.iter().for_each(|item| secret_references(item, out)),
        _ => {}
    }
}

/// Why a stack's resources cannot be put in order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("resources.{index} ({resource}) refers to {reference:?}, which names no resource of this stack; its resources are: {known}")]
    Unknown { index: usize, resource: String, reference: String, known: String },
    #[error("the resources depend on each other in a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
}

/// What each resource (by index) depends on: the resources its references name
/// (`${resources.NAME...}`), its `dependsOn`, and the database whose generated credentials
/// Secret it reads. `names` are the resources' names with parameters substituted.
pub fn dependencies(spec: &StackSpec, names: &[String]) -> Result<Vec<BTreeSet<usize>>, GraphError> {
    let index_of = |name: &str| names.iter().position(|known| known == name);
    let known = names.join(", ");
    let mut all = Vec::with_capacity(spec.resources.len());
    for (index, resource) in spec.resources.iter().enumerate() {
        let mut depends = BTreeSet::new();
        let mut found = Vec::new();
        references_in(&resource.spec, String::new(), &mut found);
        found.extend(references(&resource.metadata.name).into_iter().map(|r| (String::new(), r)));
        let mut named: Vec<String> = found
            .into_iter()
            .filter_map(|(_, reference)| match Reference::parse(reference) {
                Reference::Resource { name, .. } => Some(name.to_owned()),
                _ => None,
            })
            .collect();
        named.extend(resource.depends_on.iter().cloned());
        for name in named {
            let target = index_of(&name).ok_or_else(|| GraphError::Unknown {
                index,
                resource: names[index].clone(),
                reference: name.clone(),
                known: known.clone(),
            })?;
            depends.insert(target);
        }
        let mut secrets = BTreeSet::new();
        secret_references(&resource.spec, &mut secrets);
        for (other, candidate) in spec.resources.iter().enumerate() {
            let credentials = crate::database::credentials_secret_name(&names[other]);
            if candidate.kind == "ManagedDatabase" && secrets.contains(&credentials) {
                depends.insert(other);
            }
        }
        depends.remove(&index);
        all.push(depends);
    }
    Ok(all)
}

/// The order in which to write the resources: each after everything it depends on. A cycle is
/// an error naming it.
pub fn dependency_order(dependencies: &[BTreeSet<usize>], names: &[String]) -> Result<Vec<usize>, GraphError> {
    let count = dependencies.len();
    let mut placed = vec![false; count];
    let mut order = Vec::with_capacity(count);
    while order.len() < count {
        let ready: Vec<usize> =
            (0..count).filter(|&i| !placed[i] && dependencies[i].iter().all(|&d| placed[d])).collect();
        if ready.is_empty() {
            return Err(GraphError::Cycle(find_cycle(dependencies, &placed, names)));
        }
        for i in ready {
            placed[i] = true;
            order.push(i);
        }
    }
    Ok(order)
}

/// A cycle among the resources not placed yet, as names (`a → b → a`).
fn find_cycle(dependencies: &[BTreeSet<usize>], placed: &[bool], names: &[String]) -> Vec<String> {
    let Some(start) = (0..dependencies.len()).find(|&i| !placed[i]) else { return Vec::new() };
    let mut path = vec![start];
    let mut current = start;
    while let Some(&next) = dependencies[current].iter().find(|&&d| !placed[d]) {
        if let Some(position) = path.iter().position(|&seen| seen == next) {
            let mut cycle: Vec<String> = path[position..].iter().map(|&i| names[i].clone()).collect();
            cycle.push(names[next].clone());
            return cycle;
        }
        path.push(next);
        current = next;
    }
    path.iter().map(|&i| names[i].clone()).collect()
}

/// Substitutes parameter references (`${params.NAME}`, `${NAME}`). A string that is exactly
/// one reference takes the value with its type (`"${replicas}"` → `3`); inside longer strings
/// the value's text is inserted. References that resolve to nothing are left as written.
/// Bounded like [`StackResource::render`].
pub(crate) fn render_value(value: &Value, parameters: &BTreeMap<String, Value>) -> Result<Value, RenderError> {
    render_within(value, &parameter_resolver(parameters), &mut Budget::new())
}

/// Like [`render_value`] with any resolver.
pub fn render_value_with(value: &Value, resolve: &Resolver<'_>) -> Result<Value, RenderError> {
    render_within(value, resolve, &mut Budget::new())
}

fn render_within(value: &Value, resolve: &Resolver<'_>, budget: &mut Budget) -> Result<Value, RenderError> {
    match value {
        Value::String(text) => {
            if let Some(reference) = text.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) {
                if !reference.contains('}') {
                    if let Some(found) = resolve(reference) {
                        budget.substitute()?;
                        budget.spend(encoded_size(&found))?;
                        return Ok(found);
                    }
                }
            }
            Ok(Value::String(render_text(text, resolve, budget)?))
        }
        Value::Array(items) => {
            budget.spend(2)?;
            items.iter().map(|item| render_within(item, resolve, budget)).collect::<Result<_, _>>().map(Value::Array)
        }
        Value::Object(map) => {
            budget.spend(2)?;
            let mut rendered = serde_json::Map::new();
            for (key, item) in map {
                budget.spend(key.len() + 4)?;
                rendered.insert(key.clone(), render_within(item, resolve, budget)?);
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

fn render_text(text: &str, resolve: &Resolver<'_>, budget: &mut Budget) -> Result<String, RenderError> {
    let mut rendered = String::new();
    budget.spend(2)?;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        budget.append(&mut rendered, &rest[..start])?;
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                match resolve(&after[..end]) {
                    Some(value) => {
                        budget.substitute()?;
                        match value {
                            Value::String(value) => budget.append(&mut rendered, &value)?,
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
    fn references_are_parsed() {
        assert_eq!(Reference::parse("params.db"), Reference::Parameter("db"));
        assert_eq!(Reference::parse("db"), Reference::Parameter("db"));
        assert_eq!(
            Reference::parse("resources.db.status.endpoint.port"),
            Reference::Resource { name: "db", path: "status.endpoint.port" }
        );
        assert_eq!(
            Reference::parse("LoadBalancer/web.status.endpoints.http"),
            Reference::Legacy { kind: "LoadBalancer", name: "web", path: "status.endpoints.http" }
        );
        let object = json!({"status": {"ports": [{"hostPort": 8080}], "endpoint": {"port": 5432}}});
        assert_eq!(lookup(&object, "status.endpoint.port"), Some(json!(5432)));
        assert_eq!(lookup(&object, "status.ports.0.hostPort"), Some(json!(8080)));
        assert_eq!(lookup(&object, "status.nothing"), None);
    }

    fn stack(resources: Value) -> StackSpec {
        serde_json::from_value(json!({"resources": resources})).expect("stack")
    }

    #[test]
    fn a_resource_with_when_exists_only_when_it_renders_to_a_yes() {
        let mut route = resource("Route", "site-host", json!({}), &[]);
        route["when"] = json!("${params.hostname}");
        let spec = stack(json!([resource("Instance", "web", json!({}), &[]), route]));
        for (value, included) in [
            (json!("a.example.com"), true),
            (json!(""), false),
            (json!("false"), false),
            (json!(true), true),
            (json!(0), false),
        ] {
            let parameters: BTreeMap<String, Value> = [("hostname".to_owned(), value.clone())].into();
            let kept: Vec<String> =
                spec.included(&parameters).resources.iter().map(|r| r.metadata.name.clone()).collect();
            assert_eq!(kept.len(), if included { 2 } else { 1 }, "{value}: {kept:?}");
        }
        // An unset parameter is no: the reference stays unrendered.
        assert_eq!(spec.included(&BTreeMap::new()).resources.len(), 1);
    }

    fn resource(kind: &str, name: &str, spec: Value, depends_on: &[&str]) -> Value {
        json!({"apiVersion": "minicloud.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec, "dependsOn": depends_on})
    }

    #[test]
    fn the_order_follows_references_depends_on_and_credentials() {
        let spec = stack(json!([
            resource("LoadBalancer", "lb", json!({"x": "${resources.app.status.address}"}), &[]),
            resource(
                "Instance",
                "app",
                json!({"env": [{"name": "URL", "valueFrom": {"secretKeyRef": {"name": "db-credentials", "key": "url"}}}]}),
                &[]
            ),
            resource("ManagedDatabase", "db", json!({}), &[]),
            resource("Instance", "worker", json!({}), &["app"]),
        ]));
        let names: Vec<String> = ["lb", "app", "db", "worker"].map(String::from).to_vec();
        let dependencies = dependencies(&spec, &names).expect("dependencies");
        assert_eq!(dependencies[0], BTreeSet::from([1]));
        assert_eq!(dependencies[1], BTreeSet::from([2]), "the app reads the database's credentials");
        assert_eq!(dependency_order(&dependencies, &names).expect("order"), vec![2, 1, 0, 3]);
    }

    #[test]
    fn cycles_and_unknown_references_are_named() {
        let spec = stack(json!([
            resource("Instance", "a", json!({"x": "${resources.b.status.address}"}), &[]),
            resource("Instance", "b", json!({}), &["c"]),
            resource("Instance", "c", json!({}), &["a"]),
        ]));
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let dependencies = dependencies(&spec, &names).expect("dependencies");
        let error = dependency_order(&dependencies, &names).expect_err("a cycle");
        assert_eq!(error.to_string(), "the resources depend on each other in a cycle: a → b → c → a");
        let spec = stack(json!([resource("Instance", "a", json!({"x": "${resources.nope.status.address}"}), &[])]));
        let error = super::dependencies(&spec, &["a".to_owned()]).expect_err("unknown");
        assert!(error.to_string().contains("refers to \"nope\", which names no resource"), "{error}");
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
