//! Secret values in stacks: which `${...}` references carry one, where such a value may go, and
//! how it reaches a container without ever being written as text.
//!
//! A reference is secret when it names a `secret: true` parameter, or a value of a Secret
//! resource of the stack (`${resources.creds.spec.stringData.password}`). Being secret travels
//! with the value through rendering: such a reference may be
//!
//! - a value of a Secret's `stringData` (where it stays sealed and redacted), or
//! - the whole value of an Instance's (or a ScalingGroup template's) `env[i].value`, which the
//!   stack writes as `valueFrom.secretKeyRef` to the Secret holding it — so the value is never
//!   part of the Instance a `view` token reads;
//!
//! and nothing else (`validation` refuses it, with the field). Outputs that read a secret value,
//! directly or through a resource field that holds one, show `<redacted>`.

use crate::stack::{parameters_secret_name, references_in, strings_in, Reference, StackSpec};
use serde_json::{json, Value};

/// Where a secret value lives: a key of a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SecretSource {
    pub secret: String,
    pub key: String,
}

/// The key a path under `spec.stringData.` names.
fn string_data_key(path: &str) -> Option<&str> {
    path.strip_prefix("spec.stringData.").filter(|key| !key.is_empty() && !key.contains('.'))
}

impl StackSpec {
    /// Where the secret value a reference names lives; `None` when it names nothing secret.
    /// `names` are the resources' rendered names, `stack` the stack's name.
    pub(crate) fn secret_source(&self, reference: &str, names: &[String], stack: &str) -> Option<SecretSource> {
        match Reference::parse(reference) {
            Reference::Parameter(name) => self
                .parameters
                .iter()
                .any(|parameter| parameter.name == name && parameter.secret)
                .then(|| SecretSource { secret: parameters_secret_name(stack), key: name.to_owned() }),
            Reference::Resource { name, path } => {
                let index = names.iter().position(|known| known == name)?;
                (self.resources[index].kind == "Secret")
                    .then(|| string_data_key(path))
                    .flatten()
                    .map(|key| SecretSource { secret: name.to_owned(), key: key.to_owned() })
            }
            Reference::Legacy { kind, name, path } => (kind == "Secret")
                .then(|| string_data_key(path))
                .flatten()
                .map(|key| SecretSource { secret: name.to_owned(), key: key.to_owned() }),
        }
    }

    /// Whether a reference (of an output) may show a secret value: it names one, or reads a
    /// resource's field that holds one, or reads a Secret resource's values at all.
    pub fn reveals_secret(&self, reference: &str, names: &[String], stack: &str) -> bool {
        if self.secret_source(reference, names, stack).is_some() {
            return true;
        }
        let (name, path) = match Reference::parse(reference) {
            Reference::Resource { name, path } => (name, path),
            Reference::Legacy { name, path, .. } => (name, path),
            Reference::Parameter(_) => return false,
        };
        let Some(index) = names.iter().position(|known| known == name) else { return false };
        let resource = &self.resources[index];
        if resource.kind == "Secret" && (path.is_empty() || path == "spec" || path.starts_with("spec.stringData")) {
            return true;
        }
        // A field of the resource that holds a secret reference, or an object around one.
        let mut found = Vec::new();
        references_in(&resource.spec, String::new(), &mut found);
        found.iter().any(|(at, inner)| {
            self.secret_source(inner, names, stack).is_some() && {
                let at = format!("spec.{}", at.replace('[', ".").replace(']', ""));
                let read = if path.is_empty() { "spec" } else { path };
                at == read || at.starts_with(&format!("{read}.")) || read.starts_with(&format!("{at}."))
            }
        })
    }

    /// Where a secret reference of resource `index` is found at `at` (its dotted path in the
    /// resource's spec, as [`references_in`] gives it, e.g. `env[0].value`) holding the whole
    /// string `text`: whether it may be there.
    pub(crate) fn secret_allowed_at(&self, index: usize, at: &str, text: &str, reference: &str) -> bool {
        let whole = text == format!("${{{reference}}}");
        match self.resources[index].kind.as_str() {
            "Secret" => at.starts_with("stringData."),
            "Instance" => whole && is_env_value(at, ""),
            "ScalingGroup" => whole && is_env_value(at, "template.spec."),
            _ => false,
        }
    }

    /// The secret references of the stack's resources that are where no secret value may go:
    /// (resource index, dotted path in its spec as [`references_in`] gives it, reference).
    pub fn misplaced_secrets(&self, names: &[String], stack: &str) -> Vec<(usize, String, String)> {
        let mut misplaced = Vec::new();
        for (index, resource) in self.resources.iter().enumerate() {
            let mut strings = Vec::new();
            strings_in(&resource.spec, String::new(), &mut strings);
            for (at, text) in strings {
                for reference in crate::stack::references(text) {
                    if self.secret_source(reference, names, stack).is_some()
                        && !self.secret_allowed_at(index, &at, text, reference)
                    {
                        misplaced.push((index, at.clone(), reference.to_owned()));
                    }
                }
            }
        }
        misplaced
    }

    /// The spec with every env value that is exactly a secret reference turned into
    /// `valueFrom.secretKeyRef` to the Secret that holds it: the value reaches the container
    /// without being written into the Instance.
    pub fn with_secret_env_references(&self, names: &[String], stack: &str) -> StackSpec {
        let mut spec = self.clone();
        for resource in &mut spec.resources {
            let env = match resource.kind.as_str() {
                "Instance" => resource.spec.get_mut("env"),
                "ScalingGroup" => resource.spec.pointer_mut("/template/spec/env"),
                _ => None,
            };
            let Some(Value::Array(variables)) = env else { continue };
            for variable in variables {
                let Some(text) = variable.get("value").and_then(Value::as_str) else { continue };
                let Some(reference) = text.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) else {
                    continue;
                };
                if reference.contains('}') {
                    continue;
                }
                if let Some(source) = self.secret_source(reference, names, stack) {
                    if let Some(map) = variable.as_object_mut() {
                        map.remove("value");
                        map.insert(
                            "valueFrom".into(),
                            json!({"secretKeyRef": {"name": source.secret, "key": source.key}}),
                        );
                    }
                }
            }
        }
        spec
    }
}

/// Whether `at` is `PREFIXenv[N].value`.
fn is_env_value(at: &str, prefix: &str) -> bool {
    at.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("env["))
        .and_then(|rest| rest.split_once("].value"))
        .is_some_and(|(index, tail)| tail.is_empty() && index.parse::<usize>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: Value) -> StackSpec {
        serde_json::from_value(value).expect("spec")
    }

    fn example() -> StackSpec {
        spec(json!({
            "parameters": [{"name": "token", "secret": true, "default": "t0k3n-value"}, {"name": "image", "default": "web"}],
            "resources": [
                {"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "creds"},
                 "spec": {"stringData": {"password": "${params.token}-suffix"}}},
                {"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "app"},
                 "spec": {"image": "${params.image}", "env": [
                    {"name": "TOKEN", "value": "${params.token}"},
                    {"name": "PASSWORD", "value": "${resources.creds.spec.stringData.password}"},
                    {"name": "PLAIN", "value": "x"}]}}
            ],
            "outputs": [
                {"name": "leak", "value": "${resources.app.spec.env.0.value}"},
                {"name": "image", "value": "${resources.app.spec.image}"}
            ]
        }))
    }

    #[test]
    fn secret_references_are_known_by_where_they_point() {
        let spec = example();
        let names = vec!["creds".to_owned(), "app".to_owned()];
        assert_eq!(
            spec.secret_source("params.token", &names, "demo"),
            Some(SecretSource { secret: "demo-params".into(), key: "token".into() })
        );
        assert_eq!(spec.secret_source("params.image", &names, "demo"), None);
        assert_eq!(
            spec.secret_source("resources.creds.spec.stringData.password", &names, "demo"),
            Some(SecretSource { secret: "creds".into(), key: "password".into() })
        );
        assert!(spec.reveals_secret("resources.app.spec.env.0.value", &names, "demo"));
        assert!(spec.reveals_secret("resources.app.spec.env", &names, "demo"));
        assert!(spec.reveals_secret("resources.creds.spec", &names, "demo"));
        assert!(!spec.reveals_secret("resources.app.spec.image", &names, "demo"));
        assert!(!spec.reveals_secret("resources.app.spec.env.2.value", &names, "demo"));
    }

    #[test]
    fn whole_env_values_become_references_and_nothing_else_is_allowed() {
        let spec = example();
        let names = vec!["creds".to_owned(), "app".to_owned()];
        assert!(spec.secret_allowed_at(0, "stringData.password", "${params.token}-suffix", "params.token"));
        assert!(spec.secret_allowed_at(1, "env[0].value", "${params.token}", "params.token"));
        assert!(!spec.secret_allowed_at(1, "env[0].value", "Bearer ${params.token}", "params.token"));
        assert!(!spec.secret_allowed_at(1, "image", "${params.token}", "params.token"));
        assert!(!spec.secret_allowed_at(1, "resources.cpu", "${params.token}", "params.token"));
        assert!(spec.misplaced_secrets(&names, "demo").is_empty());
        let mut wrong = spec.clone();
        wrong.resources[1].spec["image"] = json!("registry/${params.token}");
        wrong.resources[1].spec["env"][2]["value"] = json!("Bearer ${resources.creds.spec.stringData.password}");
        let misplaced = wrong.misplaced_secrets(&names, "demo");
        assert_eq!(
            misplaced,
            vec![
                (1, "env[2].value".to_owned(), "resources.creds.spec.stringData.password".to_owned()),
                (1, "image".to_owned(), "params.token".to_owned()),
            ]
        );
        let converted = spec.with_secret_env_references(&names, "demo");
        let env = &converted.resources[1].spec["env"];
        assert_eq!(
            env[0],
            json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "demo-params", "key": "token"}}})
        );
        assert_eq!(env[1]["valueFrom"]["secretKeyRef"], json!({"name": "creds", "key": "password"}));
        assert_eq!(env[2], json!({"name": "PLAIN", "value": "x"}));
        assert!(!serde_json::to_string(&converted.resources[1]).expect("json").contains("params.token"));
    }
}
