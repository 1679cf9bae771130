//! Admission: the `Policy` objects' rules, checked on every create and update (apply, POST,
//! PUT, PATCH) against what would be written, before anything is. A `Deny` violation refuses
//! the whole request with a 403 whose causes name the policy, the rule, the object and the
//! reason; a `Warn` violation goes back to the client as a `Warning` header (kubectl and `cloud`
//! print it) and in an apply's answer; a `DryRun` violation is recorded as a `WouldDeny` event on
//! the Policy once the write happened. A Stack is checked through the resources it renders.
//!
//! Policies are read from the store on each checked request (one list of one kind), together
//! with the Policies of the same batch, so that a directory holding a policy and what it governs
//! is checked against it. Status writes (controllers) are not checked.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue};
use minicloud_crds::policy::{Enforcement, PolicyRule, PolicySpec};
use minicloud_crds::{Kind, Object, ObjectKey};
use serde_json::Value;

use super::error::{ApiError, Cause};
use crate::auth::{Permission, Principal, Verb};
use crate::store::{NewEvent, Query, Store};
use minicloud_controllers::admission::AdmissionError;

/// One Policy as admission uses it.
struct LoadedPolicy {
    key: ObjectKey,
    uid: String,
    spec: PolicySpec,
}

impl LoadedPolicy {
    /// Whether the policy covers objects of `namespace`.
    fn covers(&self, namespace: &str) -> bool {
        if self.spec.namespaces.is_empty() {
            return self.key.namespace == namespace;
        }
        self.spec.namespaces.iter().any(|covered| covered == "*" || covered == namespace)
    }

    fn label(&self) -> String {
        format!("policy {:?} (namespace {:?})", self.key.name, self.key.namespace)
    }
}

/// The policies in force for one request.
pub struct Policies(Vec<LoadedPolicy>);

/// What the policies said about a request that may go ahead.
#[derive(Debug, Default)]
pub struct Verdict {
    /// `Warn` violations, for the client.
    pub warnings: Vec<String>,
    /// `DryRun` violations, to record on their policies once written.
    would_deny: Vec<(ObjectKey, String, String)>,
}

impl Policies {
    /// The stored policies, with those of `batch` in place of stored ones of the same name.
    pub async fn load(store: &dyn Store, batch: &[Object]) -> Result<Policies, ApiError> {
        let stored =
            store.list(&Query { kind: Some(Kind::Policy), namespace: None, selector: Default::default() }).await?;
        let mut policies: BTreeMap<ObjectKey, LoadedPolicy> = BTreeMap::new();
        for object in stored.items.iter().chain(batch.iter().filter(|object| object.kind == Kind::Policy.as_str())) {
            let Some(key) = object.key() else { continue };
            let Ok(spec) = serde_json::from_value::<PolicySpec>(object.spec.clone()) else {
                tracing::warn!(policy = %key.name, namespace = %key.namespace, "a stored policy does not read as a Policy; ignored");
                continue;
            };
            let uid = object.metadata.uid.clone().unwrap_or_default();
            policies.insert(key.clone(), LoadedPolicy { key, uid, spec });
        }
        Ok(Policies(policies.into_values().collect()))
    }

    /// Checks what would be written. `Err`: a 403 listing every `Deny` violation.
    pub fn check<'o>(&self, objects: impl IntoIterator<Item = &'o Object>) -> Result<Verdict, ApiError> {
        let mut verdict = Verdict::default();
        let mut denials = Vec::new();
        for object in objects {
            for (subject, field, reason, policy, rule) in self.violations(object) {
                let message = format!("{} rule {:?}: {subject}: {reason}", policy.label(), rule.name);
                match policy.spec.enforcement {
                    Enforcement::Deny => denials.push(Cause { field, message }),
                    Enforcement::Warn => verdict.warnings.push(message),
                    Enforcement::DryRun => verdict.would_deny.push((policy.key.clone(), policy.uid.clone(), message)),
                }
            }
        }
        if denials.is_empty() {
            return Ok(verdict);
        }
        let summary: Vec<String> = denials.iter().map(|cause| cause.message.clone()).collect();
        let mut error = ApiError::forbidden(format!("denied by policy: {}; nothing was written", summary.join("; ")));
        error.causes = denials;
        Err(error)
    }

    /// Every violation of `object` (a Stack: of the resources it renders): the object as
    /// named in messages, the field, the reason, the policy and the rule.
    fn violations<'p>(&'p self, object: &Object) -> Vec<(String, String, String, &'p LoadedPolicy, &'p PolicyRule)> {
        let namespace = object.namespace();
        let covering: Vec<&LoadedPolicy> = self.0.iter().filter(|policy| policy.covers(namespace)).collect();
        if covering.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        for (subject, document) in subjects(object) {
            for policy in &covering {
                for rule in &policy.spec.rules {
                    for (field, reason) in evaluate(rule, &document) {
                        found.push((subject.clone(), field, reason, *policy, rule));
                    }
                }
            }
        }
        found
    }
}

/// The policies, for what controllers write on a user's behalf (a Stack's children): the same
/// rules as the API applies, read from the store at each write.
pub struct StoreAdmission {
    store: std::sync::Arc<dyn Store>,
}

impl StoreAdmission {
    pub fn new(store: std::sync::Arc<dyn Store>) -> StoreAdmission {
        StoreAdmission { store }
    }
}

#[async_trait::async_trait]
impl minicloud_controllers::admission::Admission for StoreAdmission {
    async fn admit(&self, objects: &[Object]) -> Result<Vec<String>, AdmissionError> {
        let policies = Policies::load(self.store.as_ref(), objects)
            .await
            .map_err(|error| AdmissionError::Unavailable(error.message))?;
        match policies.check(objects) {
            Ok(verdict) => {
                let warnings = verdict.warnings.clone();
                verdict.record(self.store.as_ref()).await;
                Ok(warnings)
            }
            Err(denial) => Err(AdmissionError::Denied(denial.message)),
        }
    }
}

/// A `Warning` header (RFC 7234, code 299, as Kubernetes sends them) carrying `warning`.
pub fn warning_header(warning: &str) -> Option<HeaderValue> {
    let text: String = warning
        .chars()
        .map(|character| if character.is_ascii_graphic() || character == ' ' { character } else { '?' })
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    HeaderValue::from_str(&format!("299 - \"{text}\"")).ok()
}

impl Verdict {
    /// `Warning: 299 - "…"` headers, as Kubernetes sends them (kubectl prints each).
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for warning in &self.warnings {
            if let Some(value) = warning_header(warning) {
                headers.append(axum::http::header::WARNING, value);
            }
        }
        headers
    }

    /// Records each `DryRun` violation as a `WouldDeny` event on its policy (after the write).
    pub async fn record(&self, store: &dyn Store) {
        for (policy, uid, message) in &self.would_deny {
            let event = NewEvent {
                object: policy.clone(),
                uid: uid.clone(),
                event_type: crate::store::EventType::Warning,
                reason: "WouldDeny".into(),
                message: message.clone(),
            };
            if let Err(error) = store.record_event(event).await {
                tracing::warn!(%error, policy = %policy.name, "cannot record a policy's dry-run violation");
            }
        }
    }
}

/// The documents a policy judges for `object`: the object itself, and for a Stack each
/// resource it renders (named `stack/NAME resource kind/name`).
fn subjects(object: &Object) -> Vec<(String, Value)> {
    let label = format!("{}/{}", object.kind.to_ascii_lowercase(), object.metadata.name);
    let document = serde_json::to_value(object).unwrap_or_default();
    let mut subjects = vec![(label.clone(), document.clone())];
    if object.kind == Kind::Stack.as_str() {
        if let Ok(minicloud_crds::TypedObject::Stack(stack)) =
            minicloud_crds::TypedObject::from_value(Kind::Stack, document)
        {
            let spec = stack.spec.with_stack_name(&stack.metadata.name);
            let parameters = spec.parameter_values();
            for resource in spec.resources.iter().filter(|resource| resource.included(&parameters)) {
                if let Ok(rendered) = resource.render(&parameters, object.namespace()) {
                    let name = format!(
                        "{label} resource {}/{}",
                        resource.kind.to_ascii_lowercase(),
                        rendered.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?")
                    );
                    subjects.push((name, rendered));
                }
            }
        }
    }
    subjects
}

/// The Instance specs inside a document: an Instance's spec, a ScalingGroup's template, with
/// the field path that leads to each.
fn instance_specs(document: &Value) -> Vec<(&'static str, &Value)> {
    match document.get("kind").and_then(Value::as_str) {
        Some("Instance") => document.get("spec").map(|spec| vec![("spec", spec)]).unwrap_or_default(),
        Some("ScalingGroup") => {
            document.pointer("/spec/template/spec").map(|spec| vec![("spec.template.spec", spec)]).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// The kinds a `requiredLabels` rule applies to (what users declare; not the inventories and
/// policies themselves).
const LABELLED_KINDS: [&str; 6] = ["Instance", "LoadBalancer", "ScalingGroup", "ManagedDatabase", "Stack", "Secret"];

/// What `rule` finds wrong with `document`: (field, reason) pairs.
fn evaluate(rule: &PolicyRule, document: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let kind = document.get("kind").and_then(Value::as_str).unwrap_or("");
    if let Some(prefixes) = &rule.allowed_images {
        for (path, spec) in instance_specs(document) {
            let image = spec.get("image").and_then(Value::as_str).unwrap_or("");
            if !prefixes.iter().any(|prefix| image.starts_with(prefix.as_str())) {
                found.push((
                    format!("{path}.image"),
                    format!("image {image:?} does not start with an allowed prefix ({})", prefixes.join(", ")),
                ));
            }
        }
    }
    if let Some(max) = rule.max_replicas {
        if kind == "ScalingGroup" {
            for field in ["maxReplicas", "desiredReplicas"] {
                if let Some(count) = document.pointer(&format!("/spec/{field}")).and_then(Value::as_u64) {
                    if count > u64::from(max) {
                        found
                            .push((format!("spec.{field}"), format!("{field} {count} is more than the {max} allowed")));
                    }
                }
            }
        }
    }
    for (limit, field, parse) in [
        (&rule.max_cpu, "cpu", minicloud_crds::quantity::parse_cpu_millis as fn(&str) -> Result<u64, String>),
        (&rule.max_memory, "memory", minicloud_crds::quantity::parse_bytes),
    ] {
        let Some(limit) = limit else { continue };
        let Ok(maximum) = parse(limit) else { continue };
        for (path, spec) in instance_specs(document) {
            match spec.pointer(&format!("/resources/{field}")).and_then(Value::as_str) {
                None => found.push((
                    format!("{path}.resources.{field}"),
                    format!("no {field} limit is set; set resources.{field} to at most {limit}"),
                )),
                Some(asked) => match parse(asked) {
                    Ok(amount) if amount > maximum => found.push((
                        format!("{path}.resources.{field}"),
                        format!("{field} {asked} is more than the {limit} allowed"),
                    )),
                    _ => {}
                },
            }
        }
    }
    if rule.forbid_privileged_host_ports == Some(true) {
        for (path, spec) in instance_specs(document) {
            for (index, port) in spec.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if let Some(host_port) = port.get("hostPort").and_then(Value::as_u64).filter(|port| *port < 1024) {
                    found.push((
                        format!("{path}.ports[{index}].hostPort"),
                        format!("host port {host_port} is below 1024 (privileged ports are forbidden)"),
                    ));
                }
            }
        }
        if kind == "LoadBalancer" {
            for (index, listener) in
                document.pointer("/spec/listeners").and_then(Value::as_array).into_iter().flatten().enumerate()
            {
                if let Some(port) = listener.get("port").and_then(Value::as_u64).filter(|port| *port < 1024) {
                    found.push((
                        format!("spec.listeners[{index}].port"),
                        format!("listener port {port} is below 1024 (privileged ports are forbidden)"),
                    ));
                }
            }
        }
    }
    if let Some(required) = &rule.required_labels {
        if LABELLED_KINDS.contains(&kind) {
            let labels = document.pointer("/metadata/labels").and_then(Value::as_object);
            let missing: Vec<&str> = required
                .iter()
                .filter(|key| !labels.is_some_and(|labels| labels.contains_key(key.as_str())))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                found.push(("metadata.labels".into(), format!("the label(s) {} are required", missing.join(", "))));
            }
        }
    }
    if let Some(engines) = &rule.allowed_database_engines {
        if kind == "ManagedDatabase" {
            let engine = document.pointer("/spec/engine").and_then(Value::as_str).unwrap_or("postgres");
            if !engines.iter().any(|allowed| allowed == engine) {
                found.push((
                    "spec.engine".into(),
                    format!("engine {engine:?} is not allowed (only {})", engines.join(", ")),
                ));
            }
        }
    }
    found
}

/// A Policy that covers other namespaces than its own may be written only by a token good for
/// every namespace (a namespace's administrator governs its namespace only).
pub fn check_policy_scope(principal: &Principal, objects: &[Object]) -> Result<(), ApiError> {
    for object in objects.iter().filter(|object| object.kind == Kind::Policy.as_str()) {
        let Ok(spec) = serde_json::from_value::<PolicySpec>(object.spec.clone()) else { continue };
        if spec.namespaces.iter().any(|namespace| namespace != object.namespace()) {
            let permission = Permission::new(Verb::Update, "policies", None);
            principal.check(&permission).map_err(|denial| {
                ApiError::forbidden(format!(
                    "policy/{} covers other namespaces than its own ({}): {denial}",
                    object.metadata.name,
                    spec.namespaces.join(", ")
                ))
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(constraint: Value) -> PolicyRule {
        let mut value = json!({"name": "r"});
        value.as_object_mut().expect("object").extend(constraint.as_object().expect("object").clone());
        serde_json::from_value(value).expect("rule")
    }

    fn instance(spec: Value) -> Value {
        json!({"kind": "Instance", "metadata": {"name": "web", "labels": {"team": "a"}}, "spec": spec})
    }

    #[test]
    fn images_cpu_memory_and_ports_of_instances_and_templates_are_judged() {
        let images = rule(json!({"allowedImages": ["minicloud/", "registry.local/"]}));
        assert!(evaluate(&images, &instance(json!({"image": "minicloud/web:local"}))).is_empty());
        let found = evaluate(&images, &instance(json!({"image": "nginx:1.25"})));
        assert_eq!(found[0].0, "spec.image");
        assert!(found[0].1.contains("\"nginx:1.25\""), "{found:?}");
        let group = json!({"kind": "ScalingGroup", "spec": {"maxReplicas": 9, "template": {"spec": {"image": "evil/x", "resources": {"cpu": "2"}}}}});
        assert_eq!(evaluate(&images, &group)[0].0, "spec.template.spec.image");
        let cpu = rule(json!({"maxCpu": "500m"}));
        assert!(evaluate(&cpu, &group)[0].1.contains("cpu 2 is more than the 500m allowed"));
        let memory = rule(json!({"maxMemory": "256Mi"}));
        assert!(evaluate(&memory, &group)[0].1.contains("no memory limit"), "an unlimited member is refused");
        let replicas = rule(json!({"maxReplicas": 5}));
        assert_eq!(evaluate(&replicas, &group)[0].0, "spec.maxReplicas");
        let ports = rule(json!({"forbidPrivilegedHostPorts": true}));
        let low = instance(
            json!({"image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 80, "hostPort": 80}]}),
        );
        assert_eq!(
            evaluate(&ports, &low).iter().map(|(field, _)| field.as_str()).collect::<Vec<_>>(),
            ["spec.ports[1].hostPort"]
        );
        let listener =
            json!({"kind": "LoadBalancer", "spec": {"listeners": [{"name": "web", "port": 443, "targetPort": 80}]}});
        assert_eq!(evaluate(&ports, &listener)[0].0, "spec.listeners[0].port");
    }

    #[test]
    fn labels_and_engines() {
        let labels = rule(json!({"requiredLabels": ["team", "cost-center"]}));
        let found = evaluate(&labels, &instance(json!({"image": "x"})));
        assert!(found[0].1.contains("cost-center") && !found[0].1.contains("team,"), "{found:?}");
        let policy = json!({"kind": "Policy", "metadata": {"name": "p"}, "spec": {}});
        assert!(evaluate(&labels, &policy).is_empty(), "policies need no labels");
        let engines = rule(json!({"allowedDatabaseEngines": ["postgres"]}));
        let redis = json!({"kind": "ManagedDatabase", "spec": {"engine": "redis"}});
        assert!(evaluate(&engines, &redis)[0].1.contains("\"redis\" is not allowed"));
        let default_engine = json!({"kind": "ManagedDatabase", "spec": {}});
        assert!(evaluate(&engines, &default_engine).is_empty(), "the default engine is postgres");
    }

    #[test]
    fn warnings_become_ascii_warning_headers() {
        let verdict = Verdict { warnings: vec!["image \"é\" is \\ odd".into()], would_deny: Vec::new() };
        let headers = verdict.headers();
        assert_eq!(headers.get("warning").expect("warning"), "299 - \"image \\\"?\\\" is \\\\ odd\"");
    }
}
