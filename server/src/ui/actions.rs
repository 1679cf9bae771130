//! What the console can do besides showing: delete an object, restart an Instance (a new
//! container), scale a ScalingGroup, take a database backup or restore one, reveal a Secret's
//! value, run a GitOps sync round now, renew a certificate now. Each is a plain form POST (no script needed) to
//! `/ui/namespaces/NS/PLURAL/NAME/ACTION` that
//!
//! - carries the page's form token (`csrf`): a digest of the credential the browser signed in
//!   with, which another site can neither read nor compute, so a forged form is refused (403)
//!   even before the same-origin check of the write guard;
//! - needs the same permission as the API request it stands for (decided by the access layer
//!   from `api::access::console_action`, audited like every write): a `view` token is offered no button and
//!   gets 403 if it posts anyway;
//! - goes through the API's own handler for that request (validation, admission policies,
//!   conflict retries are theirs), then answers with a redirect to the page that shows the
//!   outcome (`?done=ACTION`);
//! - asks for confirmation first when it destroys something (delete names what goes with the
//!   object; restore names the backup that replaces the data).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use minicloud_crds::{Kind, Object};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::html;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::{Permission, Principal};

/// One thing a detail page's buttons can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Delete,
    Restart,
    Scale,
    Backup,
    Restore,
    Reveal,
    Sync,
    Renew,
}

impl Action {
    const ALL: [Action; 8] = [
        Action::Restart,
        Action::Scale,
        Action::Backup,
        Action::Restore,
        Action::Reveal,
        Action::Sync,
        Action::Renew,
        Action::Delete,
    ];

    /// The action named in a URL, when `kind` has it.
    pub fn parse(kind: Kind, name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.name() == name && action.permission(kind, "").is_some())
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Restart => "restart",
            Action::Scale => "scale",
            Action::Backup => "backup",
            Action::Restore => "restore",
            Action::Reveal => "reveal",
            Action::Sync => "sync",
            Action::Renew => "renew",
        }
    }

    /// The permission of the API request the action stands for (`None`: `kind` has no such
    /// action), as the access layer decides it.
    fn permission(self, kind: Kind, namespace: &str) -> Option<Permission> {
        crate::api::access::console_action(kind, self.name(), namespace)
    }

    /// Whether it destroys something, and so asks first.
    fn destroys(self) -> bool {
        matches!(self, Action::Delete | Action::Restore)
    }

    /// What the page says once it was done.
    fn done(self, kind: Kind, name: &str) -> String {
        let object = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
        match self {
            Action::Delete => format!("{object} is being deleted."),
            Action::Restart => format!("{object}: a new container was asked for."),
            Action::Scale => format!("{object}: the desired count was changed."),
            Action::Backup => format!("{object}: a backup was asked for; it is listed once taken."),
            Action::Restore => format!("{object}: the restore was asked for."),
            Action::Reveal => format!("{object}: revealed."),
            Action::Sync => format!("{object}: a sync round was asked for; its status shows it once done."),
            Action::Renew => format!("{object}: a new certificate was asked for."),
        }
    }
}

/// What the form token of a request without a token is a digest of: a value derived from the
/// server's secret key, so that every replica sharing the keys accepts the forms of the others
/// (see [`share_anonymous_secret`]); a random one drawn by this process when none was given.
static ANONYMOUS_SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes `secret` (derived from the server's secret key) what the form tokens of requests
/// without a token are made from; the composition root calls it once, before serving.
pub fn share_anonymous_secret(secret: String) {
    if ANONYMOUS_SECRET.set(secret).is_err() {
        tracing::debug!("the console's anonymous form secret was set already");
    }
}

/// The form token of a request: a digest of the token it signed in with (the console's
/// cookie, or a bearer token), the same on every replica; without authentication, of the
/// anonymous secret, also the same on every replica that shares the secret keys.
pub fn form_token(headers: &HeaderMap) -> String {
    let credential = crate::api::access::presented_token(headers)
        .unwrap_or_else(|| ANONYMOUS_SECRET.get_or_init(|| format!("{:032x}", rand::random::<u128>())).clone());
    let digest = Sha256::new().chain_update(b"minicloud console form\n").chain_update(credential.as_bytes()).finalize();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Refuses a form that does not carry `expected` as its `csrf` field.
pub(super) fn check_form_token(fields: &HashMap<String, String>, expected: &str) -> Result<(), ApiError> {
    if fields.get("csrf").is_some_and(|sent| same(sent, expected)) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "this form does not carry this session's form token (it is stale, or another site made it): reload the page and try again",
    ))
}

/// Compares without stopping at the first difference.
pub(super) fn same(sent: &str, expected: &str) -> bool {
    sent.len() == expected.len() && sent.bytes().zip(expected.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// Who looks at a page, for its buttons.
pub struct Viewer {
    principal: Principal,
    form_token: String,
}

impl Viewer {
    pub fn of(principal: &Principal, headers: &HeaderMap) -> Viewer {
        Viewer { principal: principal.clone(), form_token: form_token(headers) }
    }

    fn may(&self, action: Action, kind: Kind, namespace: &str) -> bool {
        action.permission(kind, namespace).is_some_and(|permission| self.principal.allows(&permission))
    }
}

/// A form posting `action` on `object`, with the form token; `fields` go inside.
fn form(viewer: &Viewer, object: &Object, action: Action, fields: Markup, button: &str) -> Markup {
    let plural = Kind::from_kind_name(&object.kind).map_or("", Kind::plural);
    let target = format!("/ui/namespaces/{}/{plural}/{}/{}", object.namespace(), object.metadata.name, action.name());
    html! {
        form class="action" id={ "action-" (action.name()) } method="post" action=(target) {
            input type="hidden" name="csrf" value=(viewer.form_token);
            (fields)
            button type="submit" class=[action.destroys().then_some("danger")] { (button) }
        }
    }
}

/// The actions section of a detail page: the buttons the viewer may use on this object
/// (nothing at all for a viewer who may use none).
pub fn section(viewer: &Viewer, object: &Object) -> Markup {
    let Some(kind) = Kind::from_kind_name(&object.kind) else { return html! {} };
    let namespace = object.namespace();
    let offered: Vec<Action> = Action::ALL.into_iter().filter(|action| viewer.may(*action, kind, namespace)).collect();
    if offered.is_empty() || object.metadata.deletion_timestamp.is_some() {
        return html! {};
    }
    let forms = offered.iter().map(|action| match action {
        Action::Restart => form(viewer, object, *action, html! {}, "Restart (new container)"),
        Action::Scale => {
            let desired = object.spec.get("desiredReplicas").or_else(|| object.spec.get("minReplicas"));
            let desired = desired.and_then(Value::as_u64).unwrap_or(1);
            let fields = html! {
                label for="replicas" { "Members" } " "
                input id="replicas" name="replicas" type="number" min="0" required value=(desired);
                " "
            };
            form(viewer, object, *action, fields, "Scale")
        }
        Action::Backup => form(viewer, object, *action, html! {}, "Back up now"),
        Action::Restore => {
            let backups: Vec<&str> = object
                .status
                .get("backups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|backup| backup.get("name").and_then(Value::as_str))
                .collect();
            if backups.is_empty() {
                return html! {};
            }
            let fields = html! {
                label for="backup" { "Backup" } " "
                select id="backup" name="backup" required {
                    @for backup in backups.iter().rev() { option { (backup) } }
                }
                " "
            };
            form(viewer, object, *action, fields, "Restore…")
        }
        Action::Reveal => {
            let keys: Vec<&String> = object
                .spec
                .get("stringData")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|data| data.keys())
                .collect();
            if keys.is_empty() {
                return html! {};
            }
            let fields = html! {
                label for="key" { "Key" } " "
                select id="key" name="key" { @for key in keys { option { (key) } } }
                " "
            };
            form(viewer, object, *action, fields, "Reveal value")
        }
        Action::Sync => form(viewer, object, *action, html! {}, "Sync now"),
        // A certificate from the user's own Secret is renewed by the user.
        Action::Renew if object.spec.pointer("/issuer/secretRef").is_some() => html! {},
        Action::Renew => form(viewer, object, *action, html! {}, "Renew now"),
        Action::Delete => form(viewer, object, *action, html! {}, "Delete…"),
    });
    html! {
        section id="actions" aria-label="Actions" {
            h2 { "Actions" }
            div class="actions" { @for form in forms { (form) } }
        }
    }
}

/// The note a page shows after an action redirected to it (`?done=ACTION`).
pub fn notice(kind: Kind, name: &str, params: &HashMap<String, String>) -> Markup {
    let object = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
    match params.get("done").map(String::as_str) {
        Some("apply") => return html! { p id="notice" class="notice" role="status" { (object) " was applied." } },
        Some("install") => {
            return html! {
                p id="notice" class="notice" role="status" {
                    (object) " was installed; this page follows it until it is Ready."
                }
            }
        }
        _ => {}
    }
    let Some(action) = params.get("done").and_then(|done| Action::parse(kind, done)) else { return html! {} };
    html! { p id="notice" class="notice" role="status" { (action.done(kind, name)) } }
}

type Fields = Form<HashMap<String, String>>;

/// `POST /ui/namespaces/{namespace}/{plural}/{name}/{action}`
pub async fn perform(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path((namespace, plural, name, action)): Path<(String, String, String, String)>,
    Form(fields): Fields,
) -> Response {
    let viewer = Viewer::of(&principal, &headers);
    match act(&state, &principal, &viewer, &namespace, &plural, &name, &action, &fields).await {
        Ok(response) => response,
        Err(error) => problem_response(&principal, error),
    }
}

/// A refused or failed form: the problem page, with the reason for the audit log.
pub(super) fn problem_response(principal: &Principal, error: ApiError) -> Response {
    let chrome = html::Chrome::signed_in_as(principal);
    let note = crate::api::audit_note::AuditNote(error.message.clone());
    let mut response =
        (error.status, Html(html::problem(error.status.as_u16(), &error.message, &chrome))).into_response();
    response.extensions_mut().insert(note);
    response
}

#[allow(clippy::too_many_arguments)]
async fn act(
    state: &AppState,
    principal: &Principal,
    viewer: &Viewer,
    namespace: &str,
    plural: &str,
    name: &str,
    action: &str,
    fields: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let kind = crate::api::request::kind_for_plural(plural)?;
    let key = crate::api::request::key(kind, namespace, name)?;
    let action = Action::parse(kind, action)
        .ok_or_else(|| ApiError::not_found(format!("a {} has no action {action:?}", kind.as_str())))?;
    check_form_token(fields, &viewer.form_token)?;
    let object = state.store.get(&key).await?;
    if action.destroys() && fields.get("confirm").map(String::as_str) != Some("yes") {
        let page = confirmation(state, viewer, &object, action, fields).await?;
        return Ok(Html(page).into_response());
    }
    let detail = format!("/ui/namespaces/{namespace}/{plural}/{name}");
    match action {
        Action::Delete => {
            crate::api::objects::delete_one(
                State(state.clone()),
                Path((namespace.to_owned(), plural.to_owned(), name.to_owned())),
                Query(HashMap::new()),
                Body::empty(),
            )
            .await?;
            Ok(Redirect::to(&format!("/ui/{plural}?deleted={name}")).into_response())
        }
        Action::Restart => {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            annotate(
                state,
                principal,
                namespace,
                plural,
                name,
                minicloud_crds::instance::RESTARTED_AT_ANNOTATION,
                &now,
            )
            .await?;
            Ok(Redirect::to(&format!("{detail}?done=restart")).into_response())
        }
        Action::Scale => {
            let replicas: u32 = fields
                .get("replicas")
                .and_then(|replicas| replicas.trim().parse().ok())
                .ok_or_else(|| ApiError::bad_request("members: give a whole number, 0 or more"))?;
            let _scaled = crate::api::scale::put_scale(
                State(state.clone()),
                Extension(principal.clone()),
                Path((namespace.to_owned(), name.to_owned())),
                Query(HashMap::new()),
                Body::from(json!({"spec": {"replicas": replicas}}).to_string()),
            )
            .await?;
            Ok(Redirect::to(&format!("{detail}?done=scale")).into_response())
        }
        Action::Backup => {
            let request = minicloud_crds::database::request_id(chrono::Utc::now(), rand::random());
            let annotation = minicloud_crds::database::BACKUP_REQUEST_ANNOTATION;
            annotate(state, principal, namespace, plural, name, annotation, &request).await?;
            Ok(Redirect::to(&format!("{detail}?done=backup")).into_response())
        }
        Action::Restore => {
            let backup = chosen_backup(&object, fields)?;
            let request = minicloud_crds::database::request_id(chrono::Utc::now(), rand::random());
            let annotation = minicloud_crds::database::RESTORE_REQUEST_ANNOTATION;
            annotate(state, principal, namespace, plural, name, annotation, &format!("{request} {backup}")).await?;
            Ok(Redirect::to(&format!("{detail}?done=restore")).into_response())
        }
        Action::Sync | Action::Renew => {
            let annotation = match action {
                Action::Sync => minicloud_crds::sync::SYNC_REQUEST_ANNOTATION,
                _ => minicloud_crds::certificate::RENEW_REQUEST_ANNOTATION,
            };
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            annotate(state, principal, namespace, plural, name, annotation, &now).await?;
            Ok(Redirect::to(&format!("{detail}?done={}", action.name())).into_response())
        }
        Action::Reveal => {
            let wanted = fields.get("key").cloned().unwrap_or_default();
            let axum::Json(answer) = crate::api::secrets::reveal(
                State(state.clone()),
                Path((namespace.to_owned(), name.to_owned())),
                Body::from(json!({"key": wanted}).to_string()),
            )
            .await?;
            let value = answer.get("value").and_then(Value::as_str).unwrap_or_default();
            let chrome = html::Chrome::signed_in_as(principal);
            let frame = html::Frame {
                title: "Secret value",
                watch: "",
                revision: 0,
                events_head: None,
                after: html! {},
                chrome: &chrome,
            };
            let main = html! {
                h1 { "secret/" (name) ": " (wanted) }
                p { "This reveal was written to the audit log." }
                pre id="revealed" { (value) }
                p { a href=(detail) { "Back to secret/" (name) } }
            };
            let mut response = Html(html::page(&frame, &main)).into_response();
            // The value is not kept by the browser's cache or history.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
    }
}

/// The backup a restore form chose: one the database lists.
fn chosen_backup<'a>(object: &Object, fields: &'a HashMap<String, String>) -> Result<&'a str, ApiError> {
    let backup = fields.get("backup").map(String::as_str).unwrap_or_default();
    let listed = object
        .status
        .get("backups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|listed| listed.get("name").and_then(Value::as_str) == Some(backup));
    if !listed {
        return Err(ApiError::bad_request(format!("backup: {backup:?} is not one of this database's backups")));
    }
    Ok(backup)
}

/// Sets one annotation through the API's merge patch (admission, policies, retries: its own).
async fn annotate(
    state: &AppState,
    principal: &Principal,
    namespace: &str,
    plural: &str,
    name: &str,
    annotation: &str,
    value: &str,
) -> Result<(), ApiError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/merge-patch+json"));
    let _patched = crate::api::patch::patch(
        State(state.clone()),
        Extension(principal.clone()),
        Path((namespace.to_owned(), plural.to_owned(), name.to_owned())),
        Query(HashMap::new()),
        headers,
        Body::from(json!({"metadata": {"annotations": {annotation: value}}}).to_string()),
    )
    .await?;
    Ok(())
}

/// The page that asks before a destroying action: what goes, and a form that confirms.
async fn confirmation(
    state: &AppState,
    viewer: &Viewer,
    object: &Object,
    action: Action,
    fields: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let kind = object.kind.to_ascii_lowercase();
    let name = &object.metadata.name;
    let (question, consequences) = match action {
        Action::Restore => {
            let backup = chosen_backup(object, fields)?;
            (
                format!("Restore {backup} into {kind}/{name}?"),
                vec![format!("What the database holds now is replaced by what {backup} holds.")],
            )
        }
        _ => {
            let dependents = owned_by(state, object).await?;
            let mut consequences: Vec<String> =
                dependents.iter().map(|(kind, name)| format!("{} {name} goes with it (it owns it)", kind)).collect();
            if consequences.is_empty() {
                consequences.push("Nothing else is owned by it.".into());
            }
            (format!("Delete {kind}/{name}?"), consequences)
        }
    };
    let mut carried = html! { input type="hidden" name="confirm" value="yes"; };
    if let Some(backup) = fields.get("backup") {
        carried = html! { (carried) input type="hidden" name="backup" value=(backup); };
    }
    let chrome = html::Chrome::signed_in_as(&viewer.principal);
    let frame =
        html::Frame { title: &question, watch: "", revision: 0, events_head: None, after: html! {}, chrome: &chrome };
    let plural = Kind::from_kind_name(&object.kind).map_or("", Kind::plural);
    let back = format!("/ui/namespaces/{}/{plural}/{name}", object.namespace());
    let main = html! {
        h1 { (question) }
        ul id="consequences" { @for consequence in &consequences { li { (consequence) } } }
        (form(viewer, object, action, carried, if action == Action::Delete { "Yes, delete" } else { "Yes, restore" }))
        p { a href=(back) { "No, go back" } }
    };
    Ok(html::page(&frame, &main))
}

/// Every object that goes with `object` when it is deleted (owned by it, and theirs in turn).
async fn owned_by(state: &AppState, object: &Object) -> Result<Vec<(String, String)>, ApiError> {
    let query = crate::store::Query {
        kind: None,
        namespace: Some(object.namespace().to_owned()),
        selector: Default::default(),
    };
    let everything = state.store.list(&query).await?.items;
    let mut owners: Vec<String> = object.metadata.uid.iter().cloned().collect();
    let mut found = Vec::new();
    while let Some(owner) = owners.pop() {
        for child in &everything {
            if child.metadata.owner_references.iter().any(|reference| reference.uid == owner) {
                found.push((child.kind.to_ascii_lowercase(), child.metadata.name.clone()));
                owners.extend(child.metadata.uid.iter().cloned());
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_belong_to_their_kinds_and_need_the_api_permission() {
        use crate::auth::Verb;
        assert_eq!(Action::parse(Kind::Instance, "restart"), Some(Action::Restart));
        assert_eq!(Action::parse(Kind::Secret, "restart"), None, "a Secret has no container");
        assert_eq!(Action::parse(Kind::Stack, "delete"), Some(Action::Delete));
        assert_eq!(Action::parse(Kind::Instance, "exec"), None);
        assert_eq!(
            Action::Scale.permission(Kind::ScalingGroup, "dev"),
            Some(Permission::new(Verb::Update, "scalinggroups/scale", Some("dev")))
        );
        assert_eq!(
            Action::Reveal.permission(Kind::Secret, "dev"),
            Some(Permission::new(Verb::Reveal, "secrets", Some("dev")))
        );
        assert_eq!(
            Action::Delete.permission(Kind::Stack, "a"),
            Some(Permission::new(Verb::Delete, "stacks", Some("a")))
        );
    }

    #[test]
    fn form_tokens_follow_the_credential() {
        let headers = |cookie: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            headers
        };
        let one = form_token(&headers("minicloud_token=mc_one"));
        assert_eq!(one, form_token(&headers("theme=dark; minicloud_token=mc_one")), "the same session");
        assert_ne!(one, form_token(&headers("minicloud_token=mc_two")), "another session");
        assert!(!one.contains("mc_one") && one.len() == 64, "{one}");
        assert_eq!(form_token(&HeaderMap::new()), form_token(&HeaderMap::new()), "one secret per process");
        assert!(same(&one, &one) && !same(&one, &one[1..]) && !same("a", "b"));
    }

    #[test]
    fn a_viewer_sees_only_the_buttons_of_its_role() {
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "ScalingGroup",
            "metadata": {"name": "web", "namespace": "dev"}, "spec": {"desiredReplicas": 2}, "status": {},
        }))
        .unwrap();
        let viewer = |role| Viewer {
            principal: Principal::token("someone", role, Some("dev".into())),
            form_token: "t<k>".into(),
        };
        let edit = section(&viewer(crate::auth::Role::Edit), &object).into_string();
        assert!(edit.contains("/ui/namespaces/dev/scalinggroups/web/scale") && edit.contains("value=\"2\""), "{edit}");
        assert!(edit.contains("name=\"csrf\" value=\"t&lt;k&gt;\"") && edit.contains("Delete…"), "{edit}");
        assert!(!edit.contains("restart"), "{edit}");
        assert_eq!(section(&viewer(crate::auth::Role::View), &object).into_string(), "", "no buttons at all");
    }
}
