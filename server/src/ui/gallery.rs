//! The template gallery: `/ui/templates` shows every bundle of the catalog (the shipped ones
//! and those of `--templates-dir` / `CLOUD_TEMPLATES`) as a card; `/ui/templates/NAME` is a
//! form made from the bundle's typed parameters (a choice list for allowed values and
//! booleans, number fields with their range, password fields for secrets, generated values
//! explained, defaults filled in). The form posts back to its own address, with the page's
//! form token and one of two buttons:
//!
//! - **Plan**: every value is checked as `cloud templates install` checks it (the same
//!   messages, each under its field), the Stack the bundle makes is validated as `cloud apply`
//!   validates a file and dry-run by the API's apply; the page shows what happens to the Stack
//!   and the resources it will create, in the order it creates them;
//! - **Install**: the same, for real, then the stack's page, which follows it live to Ready
//!   and shows its outputs as links.
//!
//! The permission is the API apply's, for the Stack the form names (its namespace, not the
//! page's address). An empty field takes the parameter's default (or its generated value).
//! The value of a secret parameter is only ever shown in the password field of the page that
//! answers the post (which no cache keeps).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use minicloud_crds::stack::{dependencies, dependency_order, ParameterSpec, ParameterType, StackSpec};
use minicloud_crds::validation::check_dns_label;
use minicloud_model::templates::{self, Bundle, ValueProblem};
use serde_json::Value;

use super::actions::{check_form_token, form_token, problem_response};
use super::html;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::{Permission, Principal, Verb};

/// The prefix of a parameter's form field (`value.replicas`).
const VALUE_FIELD: &str = "value.";
/// The form's own fields, besides the parameters'.
const STACK_FIELD: &str = "stack";
const NAMESPACE_FIELD: &str = "namespace";

fn catalog() -> Result<&'static templates::Catalog, ApiError> {
    templates::catalog().map_err(|error| ApiError::unavailable(format!("the template catalog cannot be read: {error}")))
}

fn bundle(name: &str) -> Result<&'static Bundle, ApiError> {
    catalog()?.get(name, None).map_err(|error| ApiError::not_found(error.to_string()))
}

/// The kinds a bundle creates, each once, in the order its resources name them.
fn kinds_created(bundle: &Bundle) -> Vec<&str> {
    let mut kinds: Vec<&str> = Vec::new();
    for resource in &bundle.resources {
        if !kinds.contains(&resource.kind.as_str()) {
            kinds.push(&resource.kind);
        }
    }
    kinds
}

/// `GET /ui/templates`: every bundle as a card.
pub async fn index(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let catalog = catalog()?;
    let chrome = super::chrome(&state, &principal, &params).await;
    let main = html! {
        h1 { "Templates" }
        p class="hint" {
            "Each template makes a Stack: a set of resources created in order and followed until they are Ready. "
            "Pick one to fill in its parameters, see the plan, and install it."
        }
        div id="templates" class="cards" {
            @for bundle in &catalog.bundles {
                article class="card template" aria-label=(bundle.name) {
                    h2 { a href={ "/ui/templates/" (bundle.name) } { (bundle.name) } }
                    p class="quiet" { "version " (bundle.version) " · " (bundle.category) }
                    p { (bundle.description) }
                    p class="kinds" { "Creates: " (kinds_created(bundle).join(", ")) }
                    p class="quiet source" { "from " (bundle.source) }
                }
            }
        }
    };
    let frame =
        html::Frame { title: "Templates", watch: "", revision: 0, events_head: None, after: html! {}, chrome: &chrome };
    Ok(Html(html::page(&frame, &main)).into_response())
}

/// What the form holds: as typed, and what is wrong with it.
struct Filled {
    stack: String,
    namespace: String,
    /// A parameter's text by parameter name.
    values: BTreeMap<String, String>,
    /// Problems by field: [`STACK_FIELD`], [`NAMESPACE_FIELD`] or a parameter's name.
    problems: BTreeMap<String, Vec<String>>,
    /// Problems of no one field.
    general: Vec<String>,
}

impl Filled {
    /// The form as first shown: the bundle's name as the stack's, the namespace picked (or the
    /// token's, or `default`), each parameter's default (none for secrets and generated ones).
    fn defaults(bundle: &Bundle, namespace: Option<&str>) -> Filled {
        let values = bundle
            .parameters
            .iter()
            .filter(|parameter| !parameter.secret && parameter.generate.is_none())
            .filter_map(|parameter| Some((parameter.name.clone(), text_of(parameter.default.as_ref()?))))
            .collect();
        Filled {
            stack: bundle.name.clone(),
            namespace: namespace.unwrap_or(minicloud_crds::DEFAULT_NAMESPACE).to_owned(),
            values,
            problems: BTreeMap::new(),
            general: Vec::new(),
        }
    }

    /// The form as posted. A field that names no parameter is a problem (no browser sends one).
    fn posted(bundle: &Bundle, fields: &HashMap<String, String>) -> Filled {
        let field = |name: &str| fields.get(name).map(|value| value.trim().to_owned()).unwrap_or_default();
        let mut filled = Filled {
            stack: field(STACK_FIELD),
            namespace: field(NAMESPACE_FIELD),
            values: BTreeMap::new(),
            problems: BTreeMap::new(),
            general: Vec::new(),
        };
        for (key, value) in fields {
            let Some(name) = key.strip_prefix(VALUE_FIELD) else { continue };
            if bundle.parameters.iter().any(|parameter| parameter.name == name) {
                filled.values.insert(name.to_owned(), value.clone());
            } else {
                filled.general.push(format!("template {} has no parameter {name:?}", bundle.name));
            }
        }
        filled
    }

    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.entry(field.to_owned()).or_default().push(message.into());
    }

    fn has_problems(&self) -> bool {
        !self.problems.is_empty() || !self.general.is_empty()
    }

    /// The settings the values make: `KEY=VALUE` as `--set` gives them. A field left empty or
    /// at its default is left out (the default, or the generated value, applies), so the Stack
    /// records what was chosen, as `cloud templates install --set` does.
    fn settings(&self, bundle: &Bundle) -> Vec<(String, String)> {
        let is_default = |key: &str, text: &str| {
            bundle.parameters.iter().any(|p| p.name == key && p.default.as_ref().is_some_and(|d| text_of(d) == text))
        };
        self.values
            .iter()
            .filter(|(key, text)| !text.is_empty() && !is_default(key, text))
            .map(|(key, text)| (key.clone(), text.clone()))
            .collect()
    }

    /// Places problems of the Stack manifest (`metadata.name`, `spec.values.X`, ...) under
    /// their field; the others are general.
    fn place(&mut self, path: &str, message: &str) {
        let field = if path == "metadata.name" {
            Some(STACK_FIELD.to_owned())
        } else if path == "metadata.namespace" {
            Some(NAMESPACE_FIELD.to_owned())
        } else {
            path.strip_prefix("spec.values.")
                .map(|rest| rest.split(['.', '[']).next().unwrap_or(rest).to_owned())
                .filter(|name| self.values.contains_key(name))
        };
        match field {
            Some(field) => self.problem(&field, message),
            None => self.general.push(format!("{path}: {message}")),
        }
    }
}

/// A default as the form shows it.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `GET /ui/templates/{name}`: the bundle and its form.
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let bundle = bundle(&name)?;
    let chrome = super::chrome(&state, &principal, &params).await;
    let namespace = principal.namespace.as_deref().or(chrome.namespace.as_deref());
    let filled = Filled::defaults(bundle, namespace);
    Ok(page(&principal, &headers, &chrome, bundle, &filled, None, StatusCode::OK))
}

/// `POST /ui/templates/{name}` with `csrf`, `stack`, `namespace`, `value.PARAMETER`... and
/// `intent` (`plan` or `install`).
pub async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(fields): Form<HashMap<String, String>>,
) -> Response {
    if let Err(error) = check_form_token(&fields, &form_token(&headers)) {
        return problem_response(&principal, error);
    }
    let bundle = match bundle(&name) {
        Ok(bundle) => bundle,
        Err(error) => return problem_response(&principal, error),
    };
    let chrome = html::Chrome::signed_in_as(&principal);
    let install = fields.get("intent").map(String::as_str) == Some("install");
    let mut filled = Filled::posted(bundle, &fields);
    let Some((manifest, values)) = checked(bundle, &mut filled) else {
        return page(&principal, &headers, &chrome, bundle, &filled, None, StatusCode::UNPROCESSABLE_ENTITY);
    };
    let answer = match super::editor::apply_one(&state, &principal, &manifest, install).await {
        Ok(answer) => answer,
        Err(error) => {
            let status = error.status;
            for cause in &error.causes {
                filled.place(cause.field.trim_start_matches("items[0]."), &cause.message);
            }
            if error.causes.is_empty() {
                filled.general.push(error.message);
            }
            return page(&principal, &headers, &chrome, bundle, &filled, None, status);
        }
    };
    if install {
        let target = format!("/ui/namespaces/{}/stacks/{}?done=install", filled.namespace, filled.stack);
        return Redirect::to(&target).into_response();
    }
    let planned = super::editor::plan(&state, &answer, &manifest).await;
    let plan = html! {
        section id="plan" aria-label="Plan" {
            h2 { "Plan" }
            p { "Nothing was changed. Install does this:" }
            (super::editor::plan_markup(&planned))
            h3 { "Then the stack creates, in this order" }
            ol id="creates" {
                @for (kind, name) in creates(bundle, &filled.stack, &values) {
                    li { (kind.to_ascii_lowercase()) "/" (name) }
                }
            }
        }
    };
    page(&principal, &headers, &chrome, bundle, &filled, Some(plan), StatusCode::OK)
}

/// Every check `cloud templates install` makes, each problem placed under its field; the
/// Stack manifest and the typed values when there is none.
fn checked(bundle: &Bundle, filled: &mut Filled) -> Option<(Value, BTreeMap<String, Value>)> {
    if let Err(reason) = check_dns_label(&filled.stack) {
        filled.problem(STACK_FIELD, format!("the stack's name {:?}: {reason}", filled.stack));
    }
    if let Err(reason) = check_dns_label(&filled.namespace) {
        filled.problem(NAMESPACE_FIELD, format!("namespace {:?}: {reason}", filled.namespace));
    }
    let values = match bundle.checked_values(&filled.settings(bundle)) {
        Ok(values) => values,
        Err(problems) => {
            for ValueProblem { parameter, message, .. } in problems {
                if bundle.parameters.iter().any(|p| p.name == parameter) {
                    filled.problem(&parameter, message);
                } else {
                    filled.general.push(message);
                }
            }
            return None;
        }
    };
    if filled.has_problems() {
        return None;
    }
    let manifest = bundle.render(&filled.stack, Some(&filled.namespace), &values);
    if let Err(problems) = minicloud_model::manifest::validate_value(manifest.clone()) {
        for problem in problems {
            filled.place(&problem.path.to_string(), &problem.message);
        }
        return None;
    }
    Some((manifest, values))
}

/// The resources the stack will create with these values, `(kind, name)`, in the order the
/// Stack controller writes them (dependencies first).
fn creates(bundle: &Bundle, stack: &str, values: &BTreeMap<String, Value>) -> Vec<(String, String)> {
    let spec = StackSpec {
        parameters: bundle.parameters.clone(),
        values: values.clone(),
        resources: bundle.resources.clone(),
        ..StackSpec::default()
    }
    .with_stack_name(stack);
    let parameters = spec.parameter_values();
    let spec = spec.included(&parameters);
    let names: Vec<String> = spec.resources.iter().map(|resource| resource.rendered_name(&parameters)).collect();
    let order = dependencies(&spec, &names)
        .and_then(|graph| dependency_order(&graph, &names))
        .unwrap_or_else(|_| (0..names.len()).collect());
    order.into_iter().map(|index| (spec.resources[index].kind.clone(), names[index].clone())).collect()
}

/// Whether `principal` may install into `namespace` (it is offered the buttons).
fn may_install(principal: &Principal, namespace: &str) -> bool {
    principal.allows(&Permission::new(Verb::Apply, "stacks", Some(namespace)))
}

/// What the form says under a parameter: what it is for and what it takes.
fn hint(parameter: &ParameterSpec) -> String {
    let mut parts: Vec<String> = parameter.description.iter().cloned().collect();
    let mut takes = format!("{:?}", parameter.type_);
    match (parameter.minimum, parameter.maximum) {
        (Some(min), Some(max)) => takes.push_str(&format!(", {min} to {max}")),
        (Some(min), None) => takes.push_str(&format!(", at least {min}")),
        (None, Some(max)) => takes.push_str(&format!(", at most {max}")),
        (None, None) => {}
    }
    if let Some(pattern) = &parameter.pattern {
        takes.push_str(&format!(", matching {pattern}"));
    }
    parts.push(takes);
    if let Some(generate) = &parameter.generate {
        parts.push(format!(
            "Leave empty: a {}-character password is generated once, kept in the Secret STACK-params, and reused by later installs",
            generate.password
        ));
    } else if parameter.secret {
        parts.push("Secret: kept sealed, in the Secret STACK-params, and shown as <redacted> everywhere".into());
    }
    if parameter.secret {
        if let Some(default) = &parameter.default {
            parts.push(format!("Leave empty for the default ({} characters)", text_of(default).chars().count()));
        }
    }
    let sentences: Vec<&str> = parts.iter().map(|part| part.trim().trim_end_matches('.')).collect();
    format!("{}.", sentences.join(". "))
}

/// A parameter's control: a choice list for allowed values and booleans, a number field for
/// numbers, a password field for secrets, a text field otherwise.
fn control(parameter: &ParameterSpec, id: &str, text: &str, described_by: &str, invalid: bool) -> Markup {
    let name = format!("{VALUE_FIELD}{}", parameter.name);
    let required = parameter.default.is_none() && parameter.generate.is_none();
    let choices: Vec<String> = match parameter.type_ {
        _ if !parameter.allowed_values.is_empty() => parameter.allowed_values.iter().map(text_of).collect(),
        ParameterType::Boolean => vec!["true".into(), "false".into()],
        _ => Vec::new(),
    };
    let invalid = invalid.then_some("true");
    if !choices.is_empty() {
        return html! {
            select id=(id) name=(name) aria-describedby=(described_by) aria-invalid=[invalid] {
                @if required && !choices.iter().any(|choice| choice == text) { option value="" selected { "choose…" } }
                @for choice in &choices { option selected[choice == text] { (choice) } }
            }
        };
    }
    let (kind, step) = match parameter.type_ {
        _ if parameter.secret => ("password", None),
        ParameterType::Integer => ("number", Some("1")),
        ParameterType::Number => ("number", Some("any")),
        _ => ("text", None),
    };
    let numeric = kind == "number";
    html! {
        input id=(id) name=(name) type=(kind) value=(text) step=[step]
            min=[parameter.minimum.filter(|_| numeric)] max=[parameter.maximum.filter(|_| numeric)]
            required[required] autocomplete=[parameter.secret.then_some("new-password")]
            spellcheck="false" aria-describedby=(described_by) aria-invalid=[invalid];
    }
}

/// One labelled field with its hint and problems.
fn field(id: &str, label: &str, control: Markup, hint: &str, problems: Option<&Vec<String>>) -> Markup {
    html! {
        div class="field" {
            label for=(id) { (label) }
            (control)
            p class="hint" id={ "hint-" (id) } { (hint) }
            @if let Some(problems) = problems {
                div class="field-error" id={ "error-" (id) } role="alert" {
                    @for problem in problems { p { (problem) } }
                }
            }
        }
    }
}

fn described_by(id: &str, problems: Option<&Vec<String>>) -> String {
    match problems {
        Some(_) => format!("hint-{id} error-{id}"),
        None => format!("hint-{id}"),
    }
}

/// The bundle's page: what it is, its form with problems in place, and the plan when there is
/// one. Never cached (a secret typed in may be in it).
fn page(
    principal: &Principal,
    headers: &HeaderMap,
    chrome: &html::Chrome,
    bundle: &Bundle,
    filled: &Filled,
    plan: Option<Markup>,
    status: StatusCode,
) -> Response {
    let title = format!("Template {}", bundle.name);
    let frame = html::Frame { title: &title, watch: "", revision: 0, events_head: None, after: html! {}, chrome };
    let fixed_namespace = principal.namespace.is_some();
    let stack_problems = filled.problems.get(STACK_FIELD);
    let namespace_problems = filled.problems.get(NAMESPACE_FIELD);
    let main = html! {
        h1 { (title) }
        p id="description" { (bundle.description) }
        p class="quiet" { "version " (bundle.version) " · " (bundle.category) " · from " (bundle.source) }
        @if !bundle.notes.trim().is_empty() { pre id="notes" class="notes" { (bundle.notes.trim_end()) } }
        // The answer opens at its plan (when it has one).
        form id="install" method="post" action={ "/ui/templates/" (bundle.name) "#plan" } {
            input type="hidden" name="csrf" value=(form_token(headers));
            @if !filled.general.is_empty() {
                div id="problems" role="alert" {
                    h2 { "Nothing was installed" }
                    @for problem in &filled.general { p class="problem" { (problem) } }
                }
            }
            fieldset {
                legend { "The stack" }
                (field(
                    "stack",
                    "Stack name",
                    html! {
                        input id="stack" name=(STACK_FIELD) type="text" required value=(filled.stack) spellcheck="false"
                            aria-describedby=(described_by("stack", stack_problems)) aria-invalid=[stack_problems.map(|_| "true")];
                    },
                    "A DNS label; the resources are named after it",
                    stack_problems,
                ))
                (field(
                    "namespace-field",
                    "Namespace",
                    html! {
                        input id="namespace-field" name=(NAMESPACE_FIELD) type="text" required value=(filled.namespace)
                            readonly[fixed_namespace] spellcheck="false"
                            aria-describedby=(described_by("namespace-field", namespace_problems)) aria-invalid=[namespace_problems.map(|_| "true")];
                    },
                    if fixed_namespace { "Your token's namespace" } else { "Where the stack and its resources go" },
                    namespace_problems,
                ))
            }
            @if !bundle.parameters.is_empty() {
                fieldset {
                    legend { "Parameters" }
                    @for parameter in &bundle.parameters {
                        @let id = format!("value-{}", parameter.name);
                        @let problems = filled.problems.get(&parameter.name);
                        @let text = filled.values.get(&parameter.name).map(String::as_str).unwrap_or("");
                        (field(
                            &id,
                            &parameter.name,
                            control(parameter, &id, text, &described_by(&id, problems), problems.is_some()),
                            &hint(parameter),
                            problems,
                        ))
                    }
                }
            }
            @if may_install(principal, &filled.namespace) {
                p class="buttons" {
                    button type="submit" name="intent" value="plan" { "Plan" } " "
                    button type="submit" name="intent" value="install" { "Install" }
                }
            } @else {
                p class="hint" { "Your token may not create stacks in " (filled.namespace) "." }
            }
        }
        @if let Some(plan) = plan { (plan) }
        @if !bundle.outputs.is_empty() {
            section aria-label="Outputs" {
                h2 { "Outputs" }
                p class="hint" { "Shown on the stack's page once it is Ready." }
                ul {
                    @for output in &bundle.outputs {
                        li { code { (output.name) } @if let Some(description) = &output.description { ": " (description) } }
                    }
                }
            }
        }
    };
    let mut response = (status, Html(html::page(&frame, &main))).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> &'static Bundle {
        bundle(name).expect("a shipped bundle")
    }

    #[test]
    fn hints_say_what_a_parameter_takes_in_sentences() {
        let replicas = &shipped("static-site").parameters[0];
        assert_eq!(hint(replicas), "How many web servers serve the site. Integer, 1 to 10.");
        let secret = shipped("django-postgres").parameters.iter().find(|p| p.generate.is_some()).expect("generated");
        assert!(hint(secret).contains("-character password is generated once"), "{}", hint(secret));
    }

    #[test]
    fn each_type_gets_its_control_and_a_default_is_filled_in() {
        let bundle = shipped("static-site");
        let filled = Filled::defaults(bundle, Some("shop"));
        assert_eq!((filled.stack.as_str(), filled.namespace.as_str()), ("static-site", "shop"));
        assert_eq!(filled.values["replicas"], "2");
        let number = control(&bundle.parameters[0], "value-replicas", "2", "hint-value-replicas", false).into_string();
        assert!(number.contains("type=\"number\"") && number.contains("min=\"1\"") && number.contains("max=\"10\""));
        assert!(number.contains("value=\"2\"") && !number.contains("aria-invalid"), "{number}");
        let secret = shipped("django-postgres").parameters.iter().find(|p| p.secret).expect("secret");
        let password = control(secret, "value-x", "", "hint-value-x", true).into_string();
        assert!(password.contains("type=\"password\"") && password.contains("aria-invalid=\"true\""), "{password}");
        assert!(!password.contains("required"), "a generated value is not required: {password}");
    }

    #[test]
    fn only_values_other_than_the_defaults_are_settings() {
        let bundle = shipped("static-site");
        let mut filled = Filled::defaults(bundle, None);
        assert!(filled.settings(bundle).is_empty(), "{:?}", filled.settings(bundle));
        filled.values.insert("replicas".into(), "3".into());
        filled.values.insert("hostname".into(), String::new());
        assert_eq!(filled.settings(bundle), [("replicas".to_owned(), "3".to_owned())]);
    }

    #[test]
    fn problems_of_the_stack_manifest_land_under_their_field() {
        let mut filled = Filled::defaults(shipped("static-site"), None);
        filled.place("metadata.name", "too long");
        filled.place("spec.values.replicas", "too many");
        filled.place("spec.resources[0].spec.image", "no image");
        assert_eq!(filled.problems["stack"], ["too long"]);
        assert_eq!(filled.problems["replicas"], ["too many"]);
        assert_eq!(filled.general, ["spec.resources[0].spec.image: no image"]);
    }

    #[test]
    fn the_plan_lists_what_the_stack_creates_dependencies_first() {
        let bundle = shipped("web-app-postgres");
        let values = bundle.checked_values(&[]).expect("defaults");
        let created = creates(bundle, "shop", &values);
        let position = |kind: &str| created.iter().position(|(k, _)| k == kind).expect(kind);
        assert!(position("ManagedDatabase") < position("ScalingGroup"), "{created:?}");
        assert!(created.iter().all(|(kind, name)| kind == "Route" || name.starts_with("shop")), "{created:?}");
        assert!(!created.iter().any(|(kind, _)| kind == "Route"), "no hostname, no Route: {created:?}");
    }
}
