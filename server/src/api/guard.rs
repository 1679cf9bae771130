//! Write guard: what keeps a web page from driving a control plane on loopback (CSRF). A
//! browser lets any page send a "simple" cross-origin POST (e.g. `Content-Type: text/plain`)
//! without asking first; minicloud refuses such a write before reading it:
//!
//! - every request that can change something (POST, PUT, PATCH, DELETE) coming from another
//!   site, as the browser says through `Sec-Fetch-Site` or an `Origin` that is not this
//!   server's, is a 403;
//! - every request with a body must say `Content-Type: application/json` (415 otherwise), a
//!   type a browser cannot send cross-origin without a CORS preflight, which this server never
//!   grants. A body without any `Content-Type` (the Kubernetes Python client sends its creates
//!   so) is read as JSON only from a client that is not a browser page: one that sends neither
//!   `Origin` nor `Sec-Fetch-Site` (a page's `fetch` of an untyped body always carries `Origin`).
//!
//! Command-line clients (the `cloud` CLI, curl, client libraries) send neither header and are
//! unaffected.
//!
//! The console's forms (its actions and sign-out) are the one exception to the JSON rule: they
//! are posted as `application/x-www-form-urlencoded` by the browser itself, still only from
//! this server's own pages (the origin check above), and an action's handler refuses a form
//! without the session's form token (see `crate::ui::actions`).

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The media types the API accepts for request bodies: JSON, and the patch types Kubernetes
/// clients send (none of them a type a browser may send cross-origin without asking).
pub const ACCEPTED_BODY_TYPES: &[&str] = &[
    "application/json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/apply-patch+yaml",
    "application/strategic-merge-patch+json",
];

/// Refuses cross-site writes and writes whose body is not declared as JSON.
pub async fn guard_writes(request: Request<Body>, next: Next) -> Response {
    if !matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        return next.run(request).await;
    }
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|path| path.as_str().to_owned());
    let console_form = route
        .as_deref()
        .is_some_and(|route| super::access::CONSOLE_FORM_ROUTES.contains(&route) || route == "/ui/logout");
    if let Err(error) = check_origin(&request).and_then(|()| check_content_type(&request, console_form)) {
        return error.into_response();
    }
    next.run(request).await
}

fn check_origin(request: &Request<Body>) -> Result<(), ApiError> {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return Err(ApiError::forbidden(format!(
                "a {} request from another site ({}) cannot change anything here",
                request.method(),
                site.to_str().unwrap_or("?")
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("");
        let origin = origin.to_str().unwrap_or("null");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host));
        if !same {
            return Err(ApiError::forbidden(format!(
                "a {} request from the web origin {origin} cannot change anything here; use the cloud CLI or a client that is not a browser page",
                request.method()
            )));
        }
    }
    Ok(())
}

/// Whether a request says it comes from a web page (browsers send these; other clients don't).
fn from_a_browser(request: &Request<Body>) -> bool {
    let headers = request.headers();
    headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-mode")
}

fn check_content_type(request: &Request<Body>, console_form: bool) -> Result<(), ApiError> {
    use axum::body::HttpBody;
    let has_body = request.body().size_hint().exact() != Some(0) && *request.method() != Method::DELETE;
    if !has_body {
        return Ok(());
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    let media_type = content_type.map(|value| value.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match media_type {
        Some(media_type) if ACCEPTED_BODY_TYPES.contains(&media_type.as_str()) => Ok(()),
        Some(media_type) if console_form && media_type == "application/x-www-form-urlencoded" => Ok(()),
        None if !from_a_browser(request) => Ok(()),
        _ => Err(ApiError::unsupported_media_type(format!(
            "send the body as JSON with Content-Type: application/json (got {})",
            content_type.map_or_else(|| "no Content-Type".to_owned(), |value| format!("{value:?}"))
        ))),
    }
}
