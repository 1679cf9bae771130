//! The Stack controller: creates, updates and removes a stack's resources (its children) in
//! dependency order, and reports them, its phase and its outputs.
//!
//! The decisions it makes, and where they are:
//!
//! | decision | where |
//! |---|---|
//! | each parameter's value (given, default, generated once, secret) | [`StackController::parameter_values`] |
//! | the order of the resources | [`minicloud_crds::stack::dependencies`], [`minicloud_crds::stack::dependency_order`] |
//! | which child is written now (dependencies Ready, references resolved, admitted by the policies) | [`StackController::converge`], [`StackController::write_child`] |
//! | whether the stack has failed, and why | [`StackController::failed`], `ready_reason` |
//! | what deletion removes first | [`StackController::release`] |
//!
//! - Parameters: the given value, else the default; `generate` parameters get a value once,
//!   kept in the Secret `STACK-params` (owned by the stack) and reused by every later round —
//!   also after the stack is applied again; `secret` parameters are kept there too (the stack
//!   object holds them sealed; every answer redacts them) and are shown as `<redacted>` in
//!   outputs.
//! - Order: [`minicloud_crds::stack::dependencies`] (references to other resources,
//!   `dependsOn`, reading a database's generated credentials). A resource is written once
//!   everything it depends on is Ready and every reference in it resolves; independent ones are
//!   written in the same round. Children carry an owner reference to the stack and the label
//!   `minicloud.dev/stack`; a child no longer in the spec is deleted.
//! - Phase: `Failed` when a child cannot become Ready without a change (its image is missing,
//!   HAProxy refuses its configuration, ...) or the stack's own parameters or references are
//!   wrong — the reason is in `status.resources[].message`, and applying a fixed manifest goes
//!   on from there; `Ready` when every child is; `Progressing` otherwise; `Deleting` while the
//!   finalizer `minicloud.dev/stack` deletes the children (databases follow their deletion
//!   policy) before the stack goes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use minicloud_crds::kinds::Stack;
use minicloud_crds::meta::{ConditionStatus, ObjectMeta};
use minicloud_crds::stack::{
    dependencies, dependency_order, lookup, parameters_secret_name, references, Reference, StackPhase,
    StackResourceStatus, StackSpec, StackStatus,
};
use minicloud_crds::validation::{check_parameter_value, validate_object};
use minicloud_crds::{Kind, Object, ObjectKey, TypedObject, API_VERSION};
use minicloud_store::{EventType, Query, Store, StoreError};
use serde_json::{json, Value};

use crate::admission::{Admission, AdmissionError};
use crate::meta::owner_reference;
use crate::reconciler::{Action, Cleanup, Context, Controller, ReconcileError};
use minicloud_crds::conditions::set_condition;

/// The finalizer that deletes a stack's children before the stack.
pub(crate) const FINALIZER: &str = "minicloud.dev/stack";
/// The label naming a child's stack.
pub(crate) const STACK_LABEL: &str = "minicloud.dev/stack";
/// How soon a stack that is still progressing is looked at again (children's changes wake it
/// sooner).
const PROGRESS_RECHECK: Duration = Duration::from_secs(5);
/// Reasons of a child's `Ready=False` that will not go away without a change.
const FAILURES: [&str; 6] =
    ["ImagePullFailed", "SecretNotFound", "ConfigInvalid", "InvalidSpec", "CredentialsInvalid", "SnapshotFailed"];
/// Characters of generated values.
const GENERATED_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
/// The kinds a stack may contain.
const CHILD_KINDS: [Kind; 7] = [
    Kind::Secret,
    Kind::ManagedDatabase,
    Kind::Instance,
    Kind::ScalingGroup,
    Kind::LoadBalancer,
    Kind::Route,
    Kind::Certificate,
];

/// Reconciles Stacks.
pub struct StackController {
    store: Arc<dyn Store>,
    /// The policies every child meets as it is written.
    admission: Arc<dyn Admission>,
}

impl StackController {
    pub fn new(store: Arc<dyn Store>, admission: Arc<dyn Admission>) -> StackController {
        StackController { store, admission }
    }

    /// Every object of the stack's namespace it owns, by (kind, name).
    async fn children(&self, stack: &Object) -> Result<HashMap<(Kind, String), Object>, ReconcileError> {
        let uid = stack.metadata.uid.as_deref().unwrap_or_default();
        let mut children = HashMap::new();
        for kind in CHILD_KINDS {
            for object in self.store.list(&Query::namespaced(kind, stack.namespace())).await?.items {
                if object.metadata.owner_references.iter().any(|owner| owner.uid == uid) {
                    children.insert((kind, object.metadata.name.clone()), object);
                }
            }
        }
        Ok(children)
    }

    /// The parameter values: given, default, or kept in the stack's Secret (generated once).
    /// The Secret is written when what it should hold changed.
    async fn parameter_values(
        &self,
        ctx: &Context<'_>,
        spec: &StackSpec,
    ) -> Result<Result<BTreeMap<String, Value>, (&'static str, String)>, ReconcileError> {
        let stack = ctx.object();
        let mut values = spec.parameter_values();
        let secret_name = parameters_secret_name(&stack.metadata.name);
        let key = ObjectKey::new(Kind::Secret, stack.namespace(), secret_name.clone());
        let existing = match self.store.get(&key).await {
            Ok(secret) => Some(secret),
            Err(StoreError::NotFound(_)) => None,
            Err(error) => return Err(error.into()),
        };
        // Only this stack's own Secret is read or written: one of that name that belongs to
        // someone else is neither overwritten nor taken as generated values.
        let uid = stack.metadata.uid.as_deref().unwrap_or_default();
        if let Some(secret) = &existing {
            if !secret.metadata.owner_references.iter().any(|owner| owner.uid == uid) {
                return Ok(Err((
                    "ParametersSecretConflict",
                    format!(
                        "secret/{secret_name} exists and is not this stack's (it keeps a stack's secret and generated parameters): rename or delete that Secret, or give the stack another name"
                    ),
                )));
            }
        }
        let kept = |name: &str| existing.as_ref().and_then(|s| s.spec["stringData"][name].as_str().map(str::to_owned));
        let mut data = BTreeMap::new();
        for parameter in spec.parameters.iter().filter(|p| p.secret || p.generate.is_some()) {
            let value = match (values.get(&parameter.name).and_then(Value::as_str), &parameter.generate) {
                (Some(given), _) => given.to_owned(),
                (None, Some(generate)) => match kept(&parameter.name) {
                    Some(value) => value,
                    None => generate_value(generate.password as usize)?,
                },
                (None, None) => continue,
            };
            values.insert(parameter.name.clone(), Value::String(value.clone()));
            data.insert(parameter.name.clone(), value);
        }
        for parameter in &spec.parameters {
            match values.get(&parameter.name) {
                None => {
                    let message = format!("parameter {:?} has no value and no default", parameter.name);
                    return Ok(Err(("InvalidParameters", message)));
                }
                Some(value) => {
                    if let Err(message) = check_parameter_value(parameter, value) {
                        return Ok(Err(("InvalidParameters", message)));
                    }
                }
            }
        }
        let wanted = json!({"type": "Opaque", "stringData": data});
        match existing {
            Some(secret) if secret.spec == wanted => {}
            _ if data.is_empty() => {}
            Some(mut secret) => {
                secret.spec = wanted;
                self.store.update(secret).await?;
            }
            None => {
                let secret = Object {
                    api_version: API_VERSION.to_owned(),
                    kind: Kind::Secret.as_str().to_owned(),
                    metadata: ObjectMeta {
                        name: secret_name.clone(),
                        namespace: Some(stack.namespace().to_owned()),
                        labels: BTreeMap::from([(STACK_LABEL.to_owned(), stack.metadata.name.clone())]),
                        owner_references: vec![owner_reference(stack)],
                        ..ObjectMeta::default()
                    },
                    spec: wanted,
                    status: Value::Null,
                };
                match self.store.create(secret).await {
                    Ok(_) => {
                        ctx.event(
                            EventType::Normal,
                            "ParametersStored",
                            format!("secret parameters kept in secret/{secret_name}"),
                        )
                        .await
                    }
                    Err(StoreError::AlreadyExists(_)) => {
                        return Err(ReconcileError::Failed("the parameters Secret appeared meanwhile; again".into()))
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(Ok(values))
    }

    /// Creates or updates one child from its rendered manifest. `Err` says why it cannot be.
    async fn write_child(
        &self,
        ctx: &Context<'_>,
        rendered: Value,
        existing: Option<&Object>,
    ) -> Result<Result<(), String>, ReconcileError> {
        let stack = ctx.object();
        let kind = rendered.get("kind").and_then(Value::as_str).and_then(Kind::from_kind_name);
        let Some(kind) = kind else { return Ok(Err("an unknown kind".into())) };
        let typed = match TypedObject::from_value(kind, rendered.clone()) {
            Ok(typed) => typed,
            Err(error) => return Ok(Err(format!("{}: {}", error.path, error.message))),
        };
        if let Some(error) = validate_object(&typed).first() {
            return Ok(Err(format!("{}: {}", error.path, error.message)));
        }
        let mut object: Object = match serde_json::from_value(rendered) {
            Ok(object) => object,
            Err(error) => return Ok(Err(error.to_string())),
        };
        object.metadata.labels.insert(STACK_LABEL.to_owned(), stack.metadata.name.clone());
        object.metadata.owner_references = vec![owner_reference(stack)];
        // The same policies as a user's own write of this object, on what is written now.
        match self.admission.admit(std::slice::from_ref(&object)).await {
            Ok(warnings) => {
                for warning in warnings {
                    ctx.event(EventType::Warning, "PolicyWarning", warning).await;
                }
            }
            Err(AdmissionError::Denied(denial)) => return Ok(Err(denial)),
            Err(error @ AdmissionError::Unavailable(_)) => return Err(ReconcileError::Failed(error.to_string())),
        }
        match existing {
            None => match self.store.create(object).await {
                Ok(_) => Ok(Ok(())),
                // Owned children were listed: this one is someone else's.
                Err(StoreError::AlreadyExists(key)) => Ok(Err(format!(
                    "{key} already exists and is not part of this stack: rename the resource in the stack, or delete the object"
                ))),
                Err(StoreError::TooLarge { .. }) => Ok(Err("the rendered resource is too large".into())),
                Err(error) => Err(error.into()),
            },
            Some(current) => {
                if current.spec == object.spec && current.metadata.labels == object.metadata.labels {
                    return Ok(Ok(()));
                }
                let mut next = current.clone();
                next.spec = object.spec;
                next.metadata.labels = object.metadata.labels;
                match self.store.update(next).await {
                    Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(Ok(())),
                    Err(error) => Err(error.into()),
                }
            }
        }
    }

    async fn converge(&self, ctx: &mut Context<'_>, stack: Stack) -> Result<Action, ReconcileError> {
        let object = ctx.object().clone();
        let now = Utc::now();
        let generation = object.metadata.generation.unwrap_or(1);
        let spec = stack.spec.with_stack_name(&object.metadata.name);
        let previous = stack.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        status.observed_generation = Some(generation);
        let namespace = object.namespace().to_owned();

        let values = match self.parameter_values(ctx, &spec).await? {
            Ok(values) => values,
            Err((reason, message)) => return self.failed(ctx, &mut status, reason, message, generation).await,
        };
        // Resources whose `when` says no are not part of the stack (an existing one goes).
        let spec = spec.included(&values);
        let names: Vec<String> = spec.resources.iter().map(|r| r.rendered_name(&values)).collect();
        // Secret values reach containers as references, never as text in a child.
        if let Some((index, at, reference)) = spec.misplaced_secrets(&names, &object.metadata.name).into_iter().next() {
            let message = format!(
                "{} {}: spec.{at}: ${{{reference}}} is a secret value; it may only be a whole env value or a value in a Secret's stringData",
                spec.resources[index].kind.to_ascii_lowercase(),
                names[index]
            );
            return self.failed(ctx, &mut status, "SecretMisplaced", message, generation).await;
        }
        // The order follows the references as written (one to a Secret resource included).
        let order = match dependencies(&spec, &names).and_then(|deps| Ok((dependency_order(&deps, &names)?, deps))) {
            Ok(found) => found,
            Err(error) => {
                return self.failed(ctx, &mut status, "InvalidReferences", error.to_string(), generation).await
            }
        };
        // What the user declared (outputs are judged by it); what is written (env values that
        // are secret references become `secretKeyRef`s).
        let declared = spec.clone();
        let spec = spec.with_secret_env_references(&names, &object.metadata.name);
        let (order, depends) = order;
        let kinds: Vec<Option<Kind>> = spec.resources.iter().map(|r| Kind::from_kind_name(&r.kind)).collect();
        let children = self.children(&object).await?;
        let child = |index: usize| kinds[index].and_then(|kind| children.get(&(kind, names[index].clone())));
        let ready = |index: usize| child(index).is_some_and(is_ready);
        let by_name: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let resolve = |text: &str| -> Option<Value> {
            match Reference::parse(text) {
                Reference::Parameter(name) => values.get(name).cloned(),
                Reference::Resource { name, path } => {
                    let found = child(*by_name.get(name)?)?;
                    lookup(&serde_json::to_value(found).ok()?, path)
                }
                Reference::Legacy { kind, name, path } => {
                    let kind = Kind::from_kind_name(kind)?;
                    let found = children.get(&(kind, name.to_owned()))?;
                    lookup(&serde_json::to_value(found).ok()?, path)
                }
            }
        };

        // Write what can be written, in dependency order.
        let mut waiting: HashMap<usize, String> = HashMap::new();
        let mut broken: HashMap<usize, String> = HashMap::new();
        for &index in &order {
            let pending: Vec<&str> =
                depends[index].iter().filter(|&&d| !ready(d)).map(|&d| names[d].as_str()).collect();
            if !pending.is_empty() {
                waiting.insert(index, format!("waiting for {} to be Ready", pending.join(", ")));
                continue;
            }
            let rendered = match spec.resources[index].render_with(&resolve, &namespace) {
                Ok(rendered) => rendered,
                Err(error) => {
                    broken.insert(index, error.to_string());
                    continue;
                }
            };
            let mut unresolved = Vec::new();
            minicloud_crds::stack::references_in(&rendered, String::new(), &mut unresolved);
            if let Some((_, reference)) = unresolved.first() {
                waiting.insert(index, format!("waiting for ${{{reference}}}"));
                continue;
            }
            let created = child(index).is_none();
            match self.write_child(ctx, rendered, child(index)).await? {
                Ok(()) if created => {
                    let kind = spec.resources[index].kind.to_ascii_lowercase();
                    ctx.event(EventType::Normal, "ResourceCreated", format!("created {kind}/{}", names[index])).await;
                }
                Ok(()) => {}
                Err(message) => {
                    broken.insert(index, message);
                }
            }
        }

        // Children no longer in the spec go.
        let wanted: BTreeSet<(Kind, String)> =
            kinds.iter().zip(&names).filter_map(|(kind, name)| Some(((*kind)?, name.clone()))).collect();
        let parameters_secret = (Kind::Secret, parameters_secret_name(&object.metadata.name));
        for (key, orphan) in &children {
            if wanted.contains(key) || *key == parameters_secret || orphan.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(child_key) = orphan.key() {
                match self.store.delete(&child_key, None).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => {
                        ctx.event(
                            EventType::Normal,
                            "ResourceRemoved",
                            format!("removed {child_key}: no longer in the stack"),
                        )
                        .await;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }

        // Status.
        status.resources = (0..spec.resources.len())
            .map(|index| {
                let found = child(index);
                let message = if let Some(message) = broken.get(&index) {
                    format!("Invalid: {message}")
                } else if let Some(message) = waiting.get(&index) {
                    message.clone()
                } else {
                    found.map(ready_text).unwrap_or_else(|| "not created yet".into())
                };
                StackResourceStatus {
                    kind: spec.resources[index].kind.clone(),
                    name: names[index].clone(),
                    ready: found.is_some_and(is_ready),
                    message,
                }
            })
            .collect();
        status.outputs = spec
            .outputs
            .iter()
            .filter_map(|output| {
                let hidden = references(&output.value)
                    .iter()
                    .any(|reference| declared.reveals_secret(reference, &names, &object.metadata.name));
                if hidden {
                    return Some((output.name.clone(), minicloud_crds::secret::REDACTED.to_owned()));
                }
                let rendered =
                    minicloud_crds::stack::render_value_with(&Value::String(output.value.clone()), &resolve).ok()?;
                let text = match rendered {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                (!text.contains("${")).then(|| (output.name.clone(), text))
            })
            .collect();
        let failure = (0..spec.resources.len()).find_map(|index| {
            if let Some(message) = broken.get(&index) {
                return Some(format!("{}: {message}", names[index]));
            }
            let reason = child(index).and_then(ready_reason)?;
            FAILURES.contains(&reason.0.as_str()).then(|| {
                format!(
                    "{} {}: {}: {}",
                    spec.resources[index].kind.to_ascii_lowercase(),
                    names[index],
                    reason.0,
                    reason.1
                )
            })
        });
        let all_ready = (0..spec.resources.len()).all(ready);
        let (phase, ready_state, reason, message) = match (&failure, all_ready) {
            (Some(failure), _) => (StackPhase::Failed, ConditionStatus::False, "ResourceFailed", failure.clone()),
            (None, true) => {
                (StackPhase::Ready, ConditionStatus::True, "ResourcesReady", format!("{} resources Ready", names.len()))
            }
            (None, false) => {
                let count = (0..spec.resources.len()).filter(|&i| ready(i)).count();
                (
                    StackPhase::Progressing,
                    ConditionStatus::False,
                    "Progressing",
                    format!("{count} of {} resources Ready", names.len()),
                )
            }
        };
        if previous.phase != Some(phase) {
            let event_type = if phase == StackPhase::Failed { EventType::Warning } else { EventType::Normal };
            ctx.event(event_type, &format!("{phase:?}"), message.clone()).await;
        }
        status.phase = Some(phase);
        set_condition(&mut status.conditions, "Ready", ready_state, reason, message.clone(), generation, now);
        let progressing = if phase == StackPhase::Progressing { ConditionStatus::True } else { ConditionStatus::False };
        set_condition(&mut status.conditions, "Progressing", progressing, reason, message, generation, now);
        ctx.write_status(&status).await?;
        Ok(if phase == StackPhase::Progressing { Action::RequeueAfter(PROGRESS_RECHECK) } else { Action::AwaitChange })
    }

    /// The stack cannot go on as it is: `Failed` with the reason.
    async fn failed(
        &self,
        ctx: &mut Context<'_>,
        status: &mut StackStatus,
        reason: &str,
        message: String,
        generation: i64,
    ) -> Result<Action, ReconcileError> {
        let now = Utc::now();
        if status.phase != Some(StackPhase::Failed) {
            ctx.event(EventType::Warning, reason, message.clone()).await;
        }
        status.phase = Some(StackPhase::Failed);
        set_condition(
            &mut status.conditions,
            "Ready",
            ConditionStatus::False,
            reason,
            message.clone(),
            generation,
            now,
        );
        set_condition(&mut status.conditions, "Progressing", ConditionStatus::False, reason, message, generation, now);
        ctx.write_status(status).await?;
        Ok(Action::AwaitChange)
    }

    /// Deletion: every child is deleted (databases follow their own deletion policy), then the
    /// stack goes.
    async fn release(&self, ctx: &mut Context<'_>, stack: Stack) -> Result<Cleanup, ReconcileError> {
        let children = self.children(ctx.object()).await?;
        let mut status = stack.status.unwrap_or_default();
        if !children.is_empty() {
            for child in children.values().filter(|c| c.metadata.deletion_timestamp.is_none()) {
                if let Some(key) = child.key() {
                    match self.store.delete(&key, None).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            let message = format!("deleting {} resource(s)", children.len());
            if status.phase != Some(StackPhase::Deleting) {
                ctx.event(EventType::Normal, "Deleting", message.clone()).await;
            }
            status.phase = Some(StackPhase::Deleting);
            let generation = ctx.generation();
            set_condition(
                &mut status.conditions,
                "Ready",
                ConditionStatus::False,
                "Deleting",
                message,
                generation,
                Utc::now(),
            );
            ctx.write_status(&status).await?;
            return Ok(Cleanup::Pending(Action::RequeueAfter(Duration::from_secs(1))));
        }
        Ok(Cleanup::Done)
    }
}

fn ready_condition(object: &Object) -> Option<&Value> {
    object.status.get("conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

/// Ready, as observed for the object's current generation (a child just updated is not Ready
/// on the strength of its previous spec).
fn is_ready(object: &Object) -> bool {
    // A Secret has no controller: it is ready once it exists.
    if object.kind == "Secret" {
        return true;
    }
    let observed = object.status.get("observedGeneration").and_then(Value::as_i64);
    let current = observed.is_none_or(|observed| Some(observed) == object.metadata.generation);
    current && ready_condition(object).and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True")
}

/// The reason and message of a child's `Ready=False`.
fn ready_reason(object: &Object) -> Option<(String, String)> {
    let condition = ready_condition(object)?;
    if condition.get("status").and_then(Value::as_str) != Some("False") {
        return None;
    }
    let text = |key: &str| condition.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    Some((text("reason"), text("message")))
}

fn ready_text(object: &Object) -> String {
    if object.kind == "Secret" {
        return "stored".into();
    }
    match ready_condition(object) {
        Some(condition) => {
            let text = |key: &str| condition.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
            format!("{}: {}", text("reason"), text("message"))
        }
        None => "waiting for its controller".into(),
    }
}

/// A value of `length` letters and digits from the operating system's random number generator.
fn generate_value(length: usize) -> Result<String, ReconcileError> {
    let limit = 256 - (256 % GENERATED_ALPHABET.len());
    let mut value = String::with_capacity(length);
    let mut bytes = [0u8; 64];
    while value.len() < length {
        getrandom::fill(&mut bytes)
            .map_err(|error| ReconcileError::Failed(format!("the random number generator failed: {error}")))?;
        for byte in bytes {
            if value.len() < length && (byte as usize) < limit {
                value.push(char::from(GENERATED_ALPHABET[byte as usize % GENERATED_ALPHABET.len()]));
            }
        }
    }
    Ok(value)
}

#[async_trait]
impl Controller for StackController {
    type Resource = Stack;
    const KIND: Kind = Kind::Stack;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn child_kinds(&self) -> Vec<Kind> {
        CHILD_KINDS.to_vec()
    }

    /// A changed Policy may admit a child it refused (or the reverse): look again.
    fn watched_kinds(&self) -> Vec<Kind> {
        vec![Kind::Policy]
    }

    async fn apply(&self, ctx: &mut Context<'_>, stack: Stack) -> Result<Action, ReconcileError> {
        self.converge(ctx, stack).await
    }

    async fn cleanup(&self, ctx: &mut Context<'_>, stack: Stack) -> Result<Cleanup, ReconcileError> {
        self.release(ctx, stack).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_have_the_asked_length_and_differ() {
        let first = generate_value(48).expect("value");
        assert_eq!(first.len(), 48);
        assert!(first.bytes().all(|b| GENERATED_ALPHABET.contains(&b)));
        assert_ne!(first, generate_value(48).expect("value"));
    }
}
