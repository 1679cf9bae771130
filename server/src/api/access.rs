//! Access control on every route: the layer that authenticates a request's token, applies the
//! token's rate and watch limits, checks the permission the route needs, and writes the audit
//! log. The decisions themselves (roles, permissions) are in [`crate::auth`].
//!
//! Each route template maps to the permission it needs ([`classify`]); a route with no mapping
//! is refused (fail closed), so a new route cannot be reachable without a decision about it.
//! `/healthz`, `/readyz` and the console's login page and assets are public. Tokens come in
//! `Authorization: Bearer TOKEN`, or, for reads only, in the console's cookie (HttpOnly,
//! SameSite=Strict: a cookie cannot make a write, and other sites never send it).
//!
//! Without authentication (a loopback server for the quick start) every request is the
//! `anonymous` principal with every permission, and changes are still audited.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{MatchedPath, Query, RawPathParams, State};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt;

use super::audit_note::AuditNote;
use super::error::ApiError;
use super::AppState;
use crate::auth::{AuditEntry, AuthError, Permission, Principal, Verb};

/// The cookie the console keeps its token in.
pub const COOKIE: &str = "minicloud_token";

/// What a route needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, the console's login page and assets).
    Public,
    /// Any valid token (discovery, whoami).
    Authenticated,
    /// A permission with its namespace taken from the URL (`None`: every namespace).
    Needs(Permission),
    /// A verb on a resource within the token's own scope (tokens and the audit log, which
    /// their handlers filter by the token's namespace).
    OwnScope(Verb, &'static str),
    /// Any valid token; the handler checks the permission for each object the request names
    /// (apply: one batch may span kinds and namespaces).
    PerObject,
    /// A route no rule covers: refused.
    Unmapped,
}

/// What a request is, for access control and the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub access: Access,
    /// A long-lived stream counted against the token's watch limit.
    pub watch: bool,
    pub verb: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// The verb of a method on one object or a collection.
fn object_verb(method: &Method, collection: bool, watch: bool) -> Option<Verb> {
    Some(match *method {
        Method::GET | Method::HEAD if watch => Verb::Watch,
        Method::GET | Method::HEAD if collection => Verb::List,
        Method::GET | Method::HEAD => Verb::Get,
        Method::POST if collection => Verb::Create,
        Method::PUT if !collection => Verb::Update,
        Method::PATCH if !collection => Verb::Patch,
        Method::DELETE if !collection => Verb::Delete,
        _ => return None,
    })
}

/// Maps a request (method, matched route template, path parameters, query) to what it needs.
pub fn classify(
    method: &Method,
    route: &str,
    params: &HashMap<String, String>,
    query: &HashMap<String, String>,
) -> Classified {
    let param = |name: &str| params.get(name).cloned();
    let watch_asked = matches!(query.get("watch").map(String::as_str), Some(value) if !matches!(value, "false" | "0"));
    let mut classified = Classified {
        access: Access::Unmapped,
        watch: false,
        verb: method.as_str().to_ascii_lowercase(),
        resource: route.to_owned(),
        namespace: None,
        name: None,
    };
    let mut need = |verb: Verb, resource: &str, namespace: Option<String>, name: Option<String>| {
        classified.verb = verb.as_str().to_owned();
        classified.resource = resource.to_owned();
        classified.access =
            Access::Needs(Permission { verb, resource: resource.to_owned(), namespace: namespace.clone() });
        classified.namespace = namespace;
        classified.name = name;
    };
    let read = matches!(*method, Method::GET | Method::HEAD);
    match route {
        "/healthz"
        | "/readyz"
        | "/ui/login"
        | "/ui/logout"
        | "/ui/assets/app.js"
        | "/ui/assets/style.css"
        | "/ui/assets/login.js" => classified.access = Access::Public,
        "/version"
        | "/version/"
        | "/openapi.json"
        | "/api"
        | "/api/v1"
        | "/apis"
        | "/openapi/v2"
        | "/openapi/v3"
        | "/openapi/v3/apis/minicloud.dev/v1"
        | "/apis/minicloud.dev"
        | "/apis/minicloud.dev/v1"
        | "/apis/minicloud.dev/v1/whoami"
            if read =>
        {
            classified.access = Access::Authenticated;
            classified.resource = "discovery".into();
        }
        // Anyone authenticated may ask what they may do (the answer is about themselves).
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" if *method == Method::POST => {
            classified.access = Access::Authenticated;
            classified.verb = "create".into();
            classified.resource = "selfsubjectaccessreviews".into();
        }
        "/metrics" if read => need(Verb::Get, "metrics", None, None),
        "/api/v1/namespaces" if read => need(Verb::List, "namespaces", None, None),
        "/api/v1/namespaces/{name}" if read => need(Verb::Get, "namespaces", param("name"), param("name")),
        "/api/v1/events" | "/apis/minicloud.dev/v1/events" if read => need(Verb::List, "events", None, None),
        "/api/v1/namespaces/{namespace}/events" | "/apis/minicloud.dev/v1/namespaces/{namespace}/events" => {
            if let Some(verb) = object_verb(method, true, watch_asked) {
                need(verb, "events", param("namespace"), None);
            }
        }
        "/apis/minicloud.dev/v1/apply" if *method == Method::POST => {
            classified.access = Access::PerObject;
            classified.verb = "apply".into();
            classified.resource = "objects".into();
        }
        "/apis/minicloud.dev/v1/tokens" | "/apis/minicloud.dev/v1/tokens/{name}" => {
            let verb = match (method, params.contains_key("name")) {
                (&Method::GET, false) => Some(Verb::List),
                (&Method::POST, false) => Some(Verb::Create),
                (&Method::DELETE, true) => Some(Verb::Delete),
                _ => None,
            };
            if let Some(verb) = verb {
                classified.access = Access::OwnScope(verb, "tokens");
                classified.name = param("name");
            }
        }
        "/apis/minicloud.dev/v1/audit" if read => classified.access = Access::OwnScope(Verb::List, "audit"),
        "/apis/minicloud.dev/v1/secretkeys/rotate" if *method == Method::POST => {
            need(Verb::Rotate, "secretkeys", None, None)
        }
        "/apis/minicloud.dev/v1/{plural}" if read => {
            let verb = if watch_asked { Verb::Watch } else { Verb::List };
            need(verb, &param("plural").unwrap_or_default(), None, None);
        }
        "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}" => {
            if let Some(verb) = object_verb(method, true, watch_asked) {
                need(verb, &param("plural").unwrap_or_default(), param("namespace"), None);
            }
        }
        "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}" => {
            if let Some(verb) = object_verb(method, false, false) {
                need(verb, &param("plural").unwrap_or_default(), param("namespace"), param("name"));
            }
        }
        "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}/status" if *method == Method::PUT => {
            let resource = format!("{}/status", param("plural").unwrap_or_default());
            need(Verb::Update, &resource, param("namespace"), param("name"));
        }
        "/apis/minicloud.dev/v1/namespaces/{namespace}/scalinggroups/{name}/scale" => {
            if let Some(verb) = object_verb(method, false, false) {
                need(verb, "scalinggroups/scale", param("namespace"), param("name"));
            }
        }
        "/apis/minicloud.dev/v1/namespaces/{namespace}/instances/{name}/log" if read => {
            need(Verb::Get, "instances/log", param("namespace"), param("name"))
        }
        "/apis/minicloud.dev/v1/namespaces/{namespace}/secrets/{name}/reveal" if *method == Method::POST => {
            need(Verb::Reveal, "secrets", param("namespace"), param("name"))
        }
        "/ui/namespaces/{namespace}/{plural}/{name}" if read => {
            need(Verb::Get, "console", param("namespace"), param("name"))
        }
        // The editor's page of an object shows it: reading it is enough to open it.
        "/ui/namespaces/{namespace}/{plural}/{name}/{action}" if read => {
            need(Verb::Get, "console", param("namespace"), param("name"))
        }
        // The editor's plan and apply: checked per object by the API's apply, as `apply` is.
        "/ui/apply" if *method == Method::POST => {
            classified.access = Access::PerObject;
            classified.verb = "apply".into();
            classified.resource = "objects".into();
        }
        // A template installed from the gallery: checked for the Stack the form names by the
        // API's apply, as `cloud templates install` is.
        "/ui/templates/{name}" if *method == Method::POST => {
            classified.access = Access::PerObject;
            classified.verb = "install".into();
            classified.resource = "stacks".into();
        }
        // The console's actions need what the API request they stand for needs.
        "/ui/namespaces/{namespace}/{plural}/{name}/{action}" if *method == Method::POST => {
            let (plural, action) = (param("plural").unwrap_or_default(), param("action").unwrap_or_default());
            let namespace = param("namespace").unwrap_or_default();
            let kind = minicloud_crds::Kind::from_plural(&plural);
            if let Some(permission) = kind.and_then(|kind| console_action(kind, &action, &namespace)) {
                need(permission.verb, &permission.resource, param("namespace"), param("name"));
                classified.verb = action;
            }
        }
        // The console's other pages show the token's namespace (or every one).
        _ if route.starts_with("/ui") && read => {
            classified.watch = route == "/ui/watch";
            let verb = if classified.watch { Verb::Watch } else { Verb::Get };
            classified.access = Access::OwnScope(verb, "console");
        }
        _ => {}
    }
    if let Access::OwnScope(verb, resource) = classified.access {
        classified.verb = verb.as_str().into();
        classified.resource = resource.into();
    }
    if matches!(classified.access, Access::Needs(Permission { verb: Verb::Watch, .. })) {
        classified.watch = true;
    }
    classified
}

/// The token a request carries: `Authorization: Bearer`, or the console's cookie for reads
/// and for the console's own forms (`form`: a route whose handler checks the form token, see
/// the console's actions).
fn credentials(request: &Request<Body>, form: bool) -> Option<String> {
    if request.headers().contains_key(header::AUTHORIZATION) {
        return bearer(request.headers());
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) && !form {
        return None;
    }
    cookie(request.headers())
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

/// The token the request presents, by whichever means (for the console's form token).
pub fn presented_token(headers: &axum::http::HeaderMap) -> Option<String> {
    bearer(headers).or_else(|| cookie(headers))
}

/// The console's actions (`/ui/namespaces/NS/PLURAL/NAME/ACTION`) and the permission of the
/// API request each stands for; `None`: the kind has no such action (the route is refused).
pub fn console_action(kind: minicloud_crds::Kind, action: &str, namespace: &str) -> Option<Permission> {
    use minicloud_crds::Kind;
    let (verb, resource) = match (action, kind) {
        ("delete", kind) => (Verb::Delete, kind.plural()),
        ("restart", Kind::Instance) => (Verb::Patch, "instances"),
        ("scale", Kind::ScalingGroup) => (Verb::Update, "scalinggroups/scale"),
        ("backup" | "restore", Kind::ManagedDatabase) => (Verb::Patch, "manageddatabases"),
        ("reveal", Kind::Secret) => (Verb::Reveal, "secrets"),
        ("sync", Kind::Sync) => (Verb::Patch, "syncs"),
        ("renew", Kind::Certificate) => (Verb::Patch, "certificates"),
        _ => return None,
    };
    Some(Permission::new(verb, resource, Some(namespace)))
}

/// The console's form routes: POSTs whose handler refuses a form without the session's form
/// token, so the cookie may authenticate them.
pub const CONSOLE_FORM_ROUTES: &[&str] =
    &["/ui/namespaces/{namespace}/{plural}/{name}/{action}", "/ui/apply", "/ui/templates/{name}"];

/// Whether a request can change something (and so is always audited).
fn mutating(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The route layer (see the module documentation).
pub async fn authorize(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned()).unwrap_or_default();
    let (mut parts, body) = request.into_parts();
    let params: HashMap<String, String> =
        match <RawPathParams as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &()).await {
            Ok(params) => params.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect(),
            Err(_) => HashMap::new(),
        };
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri).map(|query| query.0).unwrap_or_default();
    let mut request = Request::from_parts(parts, body);
    let classified = classify(request.method(), &route, &params, &query);
    if classified.access == Access::Public {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let request_id =
        request.headers().get("x-request-id").and_then(|value| value.to_str().ok()).unwrap_or("-").to_owned();
    let audit = |principal: &str, code: StatusCode, message: String| {
        let entry = AuditEntry {
            time: Utc::now(),
            request_id: request_id.clone(),
            principal: principal.to_owned(),
            verb: classified.verb.clone(),
            resource: classified.resource.clone(),
            namespace: classified.namespace.clone(),
            name: classified.name.clone(),
            code: code.as_u16(),
            message,
        };
        let log = state.audit.clone();
        async move {
            if let Some(log) = log {
                log.record(entry).await;
            }
        }
    };
    let Some(auth) = state.auth.clone() else {
        let principal = Principal::anonymous();
        request.extensions_mut().insert(principal.clone());
        let response = next.run(request).await;
        if mutating(&method) {
            audit(&principal.name, response.status(), note(&response)).await;
        }
        return response;
    };
    // Requests without a valid token share one rate, taken before any store read (by the
    // authenticator for a token it must look up; here for a missing one).
    let principal = match credentials(&request, CONSOLE_FORM_ROUTES.contains(&route.as_str())) {
        Some(token) => auth.authenticate(&token).await,
        None => auth.take_unauthenticated().map_err(AuthError::TooMany).and(Err(AuthError::Missing)),
    };
    let principal = match principal {
        Ok(principal) => principal,
        Err(AuthError::TooMany(wait)) => {
            return too_many_requests(wait, AuthError::TooMany(wait).to_string());
        }
        Err(AuthError::Store(error)) => {
            tracing::error!(%error, "cannot check a token");
            return ApiError::unavailable(format!("cannot check the token now: {error}")).into_response();
        }
        Err(error) => {
            audit("-", StatusCode::UNAUTHORIZED, error.to_string()).await;
            if is_console_page(&method, &route) {
                return axum::response::Redirect::to("/ui/login").into_response();
            }
            return unauthorized(&error);
        }
    };
    if let Err(wait) = auth.take_request(&principal) {
        let rate = auth.settings().rate;
        return too_many_requests(
            wait,
            format!(
                "token {:?} sent more than its rate ({} requests a second, bursts of {})",
                principal.name, rate.per_second, rate.burst
            ),
        );
    }
    let permission = match &classified.access {
        Access::Needs(permission) => Some(permission.clone()),
        Access::OwnScope(verb, resource) => Some(Permission::new(*verb, resource, principal.namespace.as_deref())),
        Access::Authenticated | Access::PerObject | Access::Public => None,
        Access::Unmapped => {
            let error = ApiError::forbidden(format!("{method} {route} is not open to any token"));
            audit(&principal.name, StatusCode::FORBIDDEN, error.message.clone()).await;
            return error.into_response();
        }
    };
    if let Some(Err(denial)) = permission.map(|permission| principal.check(&permission)) {
        audit(&principal.name, StatusCode::FORBIDDEN, denial.to_string()).await;
        return ApiError::forbidden(denial.to_string()).into_response();
    }
    let permit = if classified.watch {
        match auth.watch_permit(&principal) {
            Some(permit) => Some(permit),
            None => {
                return ApiError::too_many_requests(format!(
                    "token {:?} already holds {} watch streams open; close some (each console page holds one)",
                    principal.name,
                    auth.settings().watches_per_token
                ))
                .into_response()
            }
        }
    } else {
        None
    };
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    if mutating(&method) {
        audit(&principal.name, response.status(), note(&response)).await;
    }
    match permit {
        // The permit is held until the stream's body is dropped.
        Some(permit) => response.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &permit;
                chunk
            }))
        }),
        None => response,
    }
}

/// A console page a browser navigates to (sent to the sign-in page without a token), as
/// opposed to the console's own requests (its stream, its JSON).
fn is_console_page(method: &Method, route: &str) -> bool {
    *method == Method::GET && route.starts_with("/ui") && route != "/ui/watch" && !route.starts_with("/ui/api")
}

/// The audit message a response carries.
fn note(response: &Response) -> String {
    response.extensions().get::<AuditNote>().map(|note| note.0.clone()).unwrap_or_default()
}

/// 401 with `WWW-Authenticate`.
fn unauthorized(error: &AuthError) -> Response {
    let mut response = ApiError::unauthorized(error.to_string()).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"minicloud\""));
    response
}

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many_requests(wait: std::time::Duration, message: String) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError::too_many_requests(format!("{message}; retry in {seconds} s")).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_path(method: Method, route: &str, params: &[(&str, &str)], query: &[(&str, &str)]) -> Classified {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        classify(&method, route, &map(params), &map(query))
    }

    #[test]
    fn object_routes_need_the_verb_on_the_plural_in_the_namespace() {
        let one = "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}";
        let params = [("namespace", "dev"), ("plural", "instances"), ("name", "web")];
        for (method, verb) in [
            (Method::GET, Verb::Get),
            (Method::PUT, Verb::Update),
            (Method::PATCH, Verb::Patch),
            (Method::DELETE, Verb::Delete),
        ] {
            let classified = classify_path(method.clone(), one, &params, &[]);
            assert_eq!(classified.access, Access::Needs(Permission::new(verb, "instances", Some("dev"))), "{method}");
            assert_eq!(classified.name.as_deref(), Some("web"));
        }
        let list = "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}";
        let watch = classify_path(Method::GET, list, &params[..2], &[("watch", "true")]);
        assert_eq!(watch.access, Access::Needs(Permission::new(Verb::Watch, "instances", Some("dev"))));
        assert!(watch.watch);
        let all = classify_path(Method::GET, "/apis/minicloud.dev/v1/{plural}", &[("plural", "instances")], &[]);
        assert_eq!(all.access, Access::Needs(Permission::new(Verb::List, "instances", None)));
    }

    #[test]
    fn unknown_routes_and_methods_are_refused_and_health_is_public() {
        assert_eq!(classify_path(Method::GET, "/healthz", &[], &[]).access, Access::Public);
        assert_eq!(classify_path(Method::GET, "/apis/minicloud.dev/v1/new-thing", &[], &[]).access, Access::Unmapped);
        assert_eq!(classify_path(Method::POST, "/metrics", &[], &[]).access, Access::Unmapped);
        assert_eq!(classify_path(Method::PUT, "/apis/minicloud.dev/v1/apply", &[], &[]).access, Access::Unmapped);
    }

    #[test]
    fn the_console_shows_the_token_s_scope_and_its_stream_is_a_watch() {
        let page = classify_path(Method::GET, "/ui/{plural}", &[("plural", "instances")], &[]);
        assert_eq!(page.access, Access::OwnScope(Verb::Get, "console"));
        let one = "/ui/namespaces/{namespace}/{plural}/{name}";
        let detail =
            classify_path(Method::GET, one, &[("namespace", "prod"), ("plural", "instances"), ("name", "a")], &[]);
        assert_eq!(detail.access, Access::Needs(Permission::new(Verb::Get, "console", Some("prod"))));
        let stream = classify_path(Method::GET, "/ui/watch", &[], &[]);
        assert!(stream.watch);
        assert_eq!(stream.access, Access::OwnScope(Verb::Watch, "console"));
    }

    #[test]
    fn bearer_tokens_are_read_and_cookies_only_for_reads() {
        let request = |method: Method, header_name: header::HeaderName, value: &str| {
            Request::builder().method(method).header(header_name, value).body(Body::empty()).expect("request")
        };
        assert_eq!(
            credentials(&request(Method::POST, header::AUTHORIZATION, "bearer  mc_x "), false).as_deref(),
            Some("mc_x")
        );
        assert_eq!(credentials(&request(Method::GET, header::AUTHORIZATION, "Basic abc"), false), None);
        let cookie = format!("theme=dark; {COOKIE}=mc_y");
        assert_eq!(credentials(&request(Method::GET, header::COOKIE, &cookie), false).as_deref(), Some("mc_y"));
        assert_eq!(credentials(&request(Method::POST, header::COOKIE, &cookie), false), None);
        assert_eq!(
            credentials(&request(Method::POST, header::COOKIE, &cookie), true).as_deref(),
            Some("mc_y"),
            "a console form (its handler checks the form token)"
        );
    }
}
