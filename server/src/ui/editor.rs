//! The console's YAML editor: "Edit YAML" on an object's page and "New" on a kind's list open
//! a form whose text area holds the object as YAML (or a skeleton of the kind). The form posts
//! to `/ui/apply` with the page's form token and one of two buttons:
//!
//! - **Plan**: the YAML is read and validated as `cloud apply` reads a file (every problem
//!   with its `line:col`, shown under the line it concerns), then sent to the API's apply as a
//!   dry run; the page lists each field that would change, old → new, and what the change does
//!   to what runs (replaces the container, rolls the members, reloads in place);
//! - **Apply**: the same, for real, then the object's page.
//!
//! Both go through the API's apply handler, which checks the permission for the object the
//! YAML names (not the page's URL) and the admission policies. Secrets have no editor: their
//! values never reach the browser.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use minicloud_crds::{Kind, Object};
use minicloud_model::manifest::{self, Diagnostic, ManifestError, Source};
use serde_json::{json, Value};

use super::actions::form_token;
use super::html;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::Principal;

/// The name problems are reported under (`editor:3:9: …`).
const SOURCE_NAME: &str = "editor";

/// What the page shows below the form.
enum Outcome {
    Nothing,
    /// Problems, located where possible.
    Problems(Vec<Diagnostic>),
    /// What applying would do.
    Plan(Vec<Planned>),
}

/// One object of a plan.
pub(super) struct Planned {
    label: String,
    action: String,
    impact: Option<&'static str>,
    /// `(path, before, after)`.
    changes: Vec<(String, String, String)>,
}

/// `GET /ui/namespaces/{ns}/{plural}/{name}/edit`: the object as YAML in the editor.
pub async fn edit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path((namespace, plural, name, action)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let kind = crate::api::request::kind_for_plural(&plural)?;
    if action != "edit" {
        return Err(ApiError::not_found(format!("the console has no page {action:?} for a {}", kind.as_str())));
    }
    if kind == Kind::Secret {
        return Err(ApiError::bad_request(
            "Secrets are edited with the CLI (cloud apply, cloud secret): their values never reach the browser",
        ));
    }
    let object = state.store.get(&crate::api::request::key(kind, &namespace, &name)?).await?;
    let text = minicloud_model::yaml_out::yaml(&editable(&object), 0);
    let title = format!("Edit {}/{name}", kind.as_str().to_ascii_lowercase());
    Ok(page(&principal, &headers, &title, &text, &Outcome::Nothing))
}

/// `GET /ui/{plural}/new`: a skeleton of the kind in the editor.
pub async fn new(
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(plural): Path<String>,
) -> Result<Response, ApiError> {
    let kind = crate::api::request::kind_for_plural(&plural)?;
    if kind == Kind::Secret {
        return Err(ApiError::bad_request(
            "Secrets are made with the CLI (cloud secret create, cloud apply): their values never pass through the browser",
        ));
    }
    let namespace = principal.namespace.clone().unwrap_or_else(|| minicloud_crds::DEFAULT_NAMESPACE.to_owned());
    let text = format!(
        "apiVersion: {}\nkind: {}\nmetadata:\n  name: my-{}\n  namespace: {namespace}\nspec:\n{}",
        minicloud_crds::API_VERSION,
        kind.as_str(),
        kind.as_str().to_ascii_lowercase(),
        skeleton(kind)
    );
    Ok(page(&principal, &headers, &format!("New {}", kind.as_str()), &text, &Outcome::Nothing))
}

/// A starting spec per kind (what `cloud explain` documents in full).
fn skeleton(kind: Kind) -> &'static str {
    match kind {
        Kind::Instance => "  image: minicloud/web:local\n  ports:\n    - containerPort: 8080\n",
        Kind::ScalingGroup => {
            "  minReplicas: 1\n  maxReplicas: 3\n  template:\n    spec:\n      image: minicloud/web:local\n"
        }
        Kind::ManagedDatabase => "  engine: postgres\n  version: \"16\"\n",
        _ => "  {}\n",
    }
}

/// What the editor shows of an object: what a manifest holds (no status, no server fields).
fn editable(object: &Object) -> Value {
    let meta = &object.metadata;
    let mut metadata = json!({"name": meta.name, "namespace": object.namespace()});
    if !meta.labels.is_empty() {
        metadata["labels"] = json!(meta.labels);
    }
    let annotations: std::collections::BTreeMap<&String, &String> =
        meta.annotations.iter().filter(|(key, _)| key.as_str() != minicloud_model::merge::LAST_APPLIED).collect();
    if !annotations.is_empty() {
        metadata["annotations"] = json!(annotations);
    }
    json!({"apiVersion": object.api_version, "kind": object.kind, "metadata": metadata, "spec": object.spec})
}

/// `POST /ui/apply` with `csrf`, `yaml` and `intent` (`plan` or `apply`).
pub async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Form(fields): Form<HashMap<String, String>>,
) -> Response {
    let text = fields.get("yaml").cloned().unwrap_or_default();
    if let Err(error) = super::actions::check_form_token(&fields, &form_token(&headers)) {
        return super::actions::problem_response(&principal, error);
    }
    let apply_now = fields.get("intent").map(String::as_str) == Some("apply");
    let item = match read(&text) {
        Ok(item) => item,
        Err(problems) => return page(&principal, &headers, "Editor", &text, &Outcome::Problems(problems)),
    };
    let answer = match apply_one(&state, &principal, &item, apply_now).await {
        Ok(answer) => answer,
        Err(error) => {
            let mut problems: Vec<Diagnostic> = error
                .causes
                .iter()
                .map(|cause| Diagnostic {
                    file: SOURCE_NAME.into(),
                    position: None,
                    path: None,
                    message: format!("{}: {}", cause.field.trim_start_matches("items[0]."), cause.message),
                })
                .collect();
            if problems.is_empty() {
                problems.push(Diagnostic {
                    file: SOURCE_NAME.into(),
                    position: None,
                    path: None,
                    message: error.message,
                });
            }
            return page(&principal, &headers, "Editor", &text, &Outcome::Problems(problems));
        }
    };
    let kind = item.get("kind").and_then(Value::as_str).and_then(Kind::from_kind_name);
    let namespace = item.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
    let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    if apply_now {
        let plural = kind.map_or("", Kind::plural);
        return Redirect::to(&format!("/ui/namespaces/{namespace}/{plural}/{name}?done=apply")).into_response();
    }
    let planned = plan(&state, &answer, &item).await;
    page(&principal, &headers, "Plan", &text, &Outcome::Plan(planned))
}

/// Applies one object through the API's apply handler (its permission check, admission
/// policies, conflict retries), as a dry run unless `for_real`; the handler's answer.
pub(super) async fn apply_one(
    state: &AppState,
    principal: &Principal,
    item: &Value,
    for_real: bool,
) -> Result<Value, ApiError> {
    let mut params = HashMap::new();
    if !for_real {
        params.insert("dryRun".to_owned(), "true".to_owned());
    }
    let (_, _, axum::Json(answer)) = crate::api::apply::apply(
        State(state.clone()),
        Extension(principal.clone()),
        Query(params),
        Body::from(json!({"items": [item]}).to_string()),
    )
    .await?;
    Ok(answer)
}

/// The one object the text holds, validated as `cloud apply` validates a file.
fn read(text: &str) -> Result<Value, Vec<Diagnostic>> {
    let sources = [Source { name: SOURCE_NAME.into(), text: text.to_owned() }];
    let manifests = match manifest::parse_sources(&sources) {
        Ok(manifests) => manifests,
        Err(ManifestError::Invalid(problems)) => return Err(problems),
    };
    let problem = |message: &str| {
        vec![Diagnostic { file: SOURCE_NAME.into(), position: None, path: None, message: message.into() }]
    };
    let [manifest] = manifests.as_slice() else {
        return Err(problem("the editor takes one object; apply several with cloud apply"));
    };
    let object = manifest.to_object().map_err(|error| problem(&error.to_string()))?;
    serde_json::to_value(object).map_err(|error| problem(&error.to_string()))
}

/// What the dry run answered, with each field change of an update (values of Secrets never
/// shown).
pub(super) async fn plan(state: &AppState, answer: &Value, item: &Value) -> Vec<Planned> {
    let mut planned = Vec::new();
    for applied in answer.get("items").and_then(Value::as_array).into_iter().flatten() {
        let field = |name: &str| applied.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (kind_name, namespace, name, action) = (field("kind"), field("namespace"), field("name"), field("action"));
        let kind = Kind::from_kind_name(&kind_name);
        let paths: Vec<String> = applied
            .get("changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let mut changes = Vec::new();
        if action == "configured" && kind != Some(Kind::Secret) {
            let live = match kind.map(|kind| crate::api::request::key(kind, &namespace, &name)) {
                Some(Ok(key)) => state.store.get(&key).await.ok(),
                _ => None,
            };
            if let (Some(live), Ok(wanted)) = (live, serde_json::from_value::<Object>(item.clone())) {
                let merged = minicloud_model::merge::merge(&live, &wanted);
                for change in minicloud_model::merge::field_changes(&live, &merged) {
                    changes.push((change.path.to_string(), shown(&change.before), shown(&change.after)));
                }
            }
        }
        if changes.is_empty() {
            changes = paths.iter().map(|path| (path.clone(), String::new(), "changed".into())).collect();
        }
        planned.push(Planned {
            label: format!("{}/{name} in {namespace}", kind_name.to_ascii_lowercase()),
            impact: match (kind, action.as_str()) {
                (Some(kind), "configured") => Some(minicloud_model::impact::impact(kind, &paths)),
                _ => None,
            },
            action,
            changes,
        });
    }
    planned
}

fn shown(value: &Value) -> String {
    match value {
        Value::Null => "(none)".into(),
        other => other.to_string(),
    }
}

/// The editor page: the form, then the problems (each under its line) or the plan.
fn page(principal: &Principal, headers: &HeaderMap, title: &str, text: &str, outcome: &Outcome) -> Response {
    let chrome = html::Chrome::signed_in_as(principal);
    let frame = html::Frame { title, watch: "", revision: 0, events_head: None, after: html! {}, chrome: &chrome };
    let lines = text.lines().count().clamp(12, 40);
    let main = html! {
        h1 { (title) }
        form id="editor" method="post" action="/ui/apply" {
            input type="hidden" name="csrf" value=(form_token(headers));
            label for="yaml" { "The object, as YAML" }
            textarea id="yaml" name="yaml" rows=(lines) cols="100" spellcheck="false" { (text) }
            p class="buttons" {
                button type="submit" name="intent" value="plan" { "Plan" } " "
                button type="submit" name="intent" value="apply" { "Apply" }
            }
        }
        (outcome_markup(text, outcome))
    };
    let status = match outcome {
        Outcome::Problems(_) => axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        _ => axum::http::StatusCode::OK,
    };
    (status, Html(html::page(&frame, &main))).into_response()
}

fn outcome_markup(text: &str, outcome: &Outcome) -> Markup {
    match outcome {
        Outcome::Nothing => html! {},
        Outcome::Plan(planned) => html! {
            section id="plan" aria-label="Plan" {
                h2 { "Plan" }
                (plan_markup(planned))
            }
        },
        Outcome::Problems(problems) => {
            let unplaced: Vec<&Diagnostic> = problems.iter().filter(|problem| problem.position.is_none()).collect();
            html! {
                section id="problems" aria-label="Problems" role="alert" {
                    h2 { (problems.len()) " problem(s); nothing was changed" }
                    @for problem in &unplaced { p class="problem" { (problem.to_string()) } }
                    ol class="listing" {
                        @for (index, line) in text.lines().enumerate() {
                            li {
                                code { (line) }
                                @for problem in problems.iter().filter(|p| p.position.is_some_and(|at| at.line == index + 1)) {
                                    div class="problem" { (problem.to_string()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Each object of a plan: what applying does to it, and the fields it changes, old → new.
pub(super) fn plan_markup(planned: &[Planned]) -> Markup {
    html! {
        @for object in planned {
            h3 {
                (object.label) ": " (object.action)
                @if let Some(impact) = object.impact { " (" (impact) ")" }
            }
            @if !object.changes.is_empty() && object.action != "created" {
                ul class="changes" {
                    @for (path, before, after) in &object.changes {
                        li { code { (path) } ": " (before) " → " (after) }
                    }
                }
            }
        }
    }
}
