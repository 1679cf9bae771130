//! The console: a live web dashboard served by the API server at `/ui`.
//! Pages are rendered on the server ([`pages`]); a small hand-written script (no build step,
//! no CDN: the assets are embedded in the binary) follows the watch of every object from the
//! revision the page was read at and, when something the page shows changes, fetches the
//! page's `main` again (`?fragment=1`) and swaps it in. A dropped watch is resumed from the
//! last revision seen. Events are not objects and have no watch: for a page that shows events
//! the same stream also says when the events head moves, and the page reloads its `main`.

pub mod actions;
mod chart;
mod editor;
mod gallery;
mod html;
mod login;
mod pages;
mod panels;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::Principal;

const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The console's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(summary))
        .route("/ui/", get(summary))
        .route("/ui/events", get(activity))
        .route("/ui/watch", get(watch))
        .route("/ui/api/summary", get(summary_data))
        .route(
            "/ui/assets/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }),
        )
        .route("/ui/assets/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }))
        .route(
            "/ui/assets/login.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], login::SCRIPT) }),
        )
        .route("/ui/login", get(login::page).post(login::sign_in))
        .route("/ui/logout", axum::routing::post(login::sign_out))
        .route("/ui/templates", get(gallery::index))
        .route("/ui/templates/{name}", get(gallery::show).post(gallery::submit))
        .route("/ui/{plural}", get(list))
        .route("/ui/namespaces/{namespace}/{plural}/{name}", get(detail))
        .route("/ui/namespaces/{namespace}/{plural}/{name}/{action}", get(editor::edit).post(actions::perform))
        .route("/ui/{plural}/new", get(editor::new))
        .route("/ui/apply", axum::routing::post(editor::submit))
        .layer(axum::middleware::map_response(protect))
}

/// What every console answer tells the browser: load scripts, styles and data from this
/// server only, run no inline script, never be framed by another page (clickjacking), do not
/// guess content types, send the referrer to this server only (with `no-referrer` a browser
/// sends `Origin: null` with the console's own forms, and the write guard refuses those).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn protect(response: Response) -> Response {
    with_console_headers(response)
}

fn with_console_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("same-origin"));
    response
}

/// How often the events head is read again when nothing here wakes the reader (events
/// recorded by other replicas).
const EVENTS_POLL: Duration = Duration::from_secs(2);
/// How long the events head waits after a wake-up before it is read (events come in bursts).
const EVENTS_COALESCE: Duration = Duration::from_millis(100);

type Params = Query<HashMap<String, String>>;

/// The whole page, or only its `main` with `?fragment=1` (what the script swaps in).
fn answer(frame: html::Frame<'_>, params: &HashMap<String, String>, main: maud::Markup) -> Response {
    if params.get("fragment").is_some_and(|fragment| fragment == "1") {
        return Html(main.into_string()).into_response();
    }
    Html(html::page(&frame, &main)).into_response()
}

/// The header's parts for this request: who is signed in, and the namespace picker (a token
/// bound to one namespace has nothing to pick). `?namespace=` picks one; anything that is not
/// a namespace name is ignored.
async fn chrome(state: &AppState, principal: &Principal, params: &HashMap<String, String>) -> html::Chrome {
    let signed_in = html::Chrome::signed_in_as(principal).signed_in;
    if principal.namespace.is_some() {
        return html::Chrome { signed_in, namespaces: Vec::new(), namespace: principal.namespace.clone() };
    }
    let picked = params
        .get("namespace")
        .filter(|namespace| minicloud_crds::validation::check_dns_label(namespace).is_ok())
        .cloned();
    let namespaces = match pages::namespaces(state).await {
        Ok(namespaces) => namespaces,
        Err(error) => {
            tracing::warn!(%error, "cannot list the namespaces for the console's picker");
            picked.iter().cloned().collect()
        }
    };
    html::Chrome { signed_in, namespaces, namespace: picked }
}

/// Errors of the console's pages as pages in its frame (the status kept), not the API's JSON,
/// for a browser (`Accept: text/html`): an unknown page, a deleted object, an unknown kind, a
/// namespace outside the token's, a refused form. Wraps every route (the access layer's
/// refusals and the fallback included); the console's own requests (its stream, its JSON,
/// page fragments) keep the JSON.
pub fn page_errors(request: axum::extract::Request, next: axum::middleware::Next) -> BoxFuture<'static, Response> {
    Box::pin(async move {
        // The principal is decided inside; a request that carries a token gets the sign-out
        // button (without a name).
        let carries_token = crate::api::access::presented_token(request.headers()).is_some();
        let is_page = wants_html(request.headers())
            && is_page_path(request.uri().path())
            && !request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair == "fragment=1"));
        let response = next.run(request).await;
        if !is_page || response.status().as_u16() < 400 || !is_json(&response) {
            return response;
        }
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|body| body.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        let chrome = html::Chrome { signed_in: carries_token.then(String::new), ..html::Chrome::default() };
        let page = html::problem(status.as_u16(), &message, &chrome);
        with_console_headers((status, Html(page)).into_response())
    })
}

/// Whether the client reads HTML (a browser navigating sends `Accept: text/html`); other
/// clients of the console's paths keep the API's JSON errors.
pub fn wants_html(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()).is_some_and(|value| value.contains("text/html"))
}

/// Whether a path is a page a browser navigates to (not the stream, JSON or assets).
pub fn is_page_path(path: &str) -> bool {
    path.starts_with("/ui")
        && path != "/ui/watch"
        && !path.starts_with("/ui/api/")
        && !path.starts_with("/ui/assets/")
        && path != "/ui/login"
        && path != "/ui/logout"
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// The namespace the pages show: the token's own, else the one picked.
fn scope(principal: &Principal, chrome: &html::Chrome) -> Option<String> {
    principal.namespace.clone().or_else(|| chrome.namespace.clone())
}

/// The events head, read before a page's events are (an event recorded in between then
/// reloads the page rather than being missed); with `audit` (the activity page, which shows
/// requests too) followed by `/` and the audit log's head.
async fn events_head(state: &AppState, audit: bool) -> Result<String, ApiError> {
    let events = state.store.events_head().await?;
    match (&state.access, audit) {
        (Some(access), true) => Ok(format!("{events}/{}", access.audit_head().await?)),
        _ => Ok(events),
    }
}

async fn summary(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let chrome = chrome(&state, &principal, &params).await;
    let events_head = Some(events_head(&state, false).await?);
    let (main, revision) = pages::summary(&state, scope(&principal, &chrome).as_deref()).await?;
    let frame =
        html::Frame { title: "Summary", watch: "*", revision, events_head, after: maud::html! {}, chrome: &chrome };
    Ok(answer(frame, &params, main))
}

async fn activity(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let chrome = chrome(&state, &principal, &params).await;
    let filter = pages::ActivityFilter::from_params(&params);
    let events_head = Some(events_head(&state, true).await?);
    let (main, revision) = pages::activity(&state, &filter, &principal).await?;
    let frame =
        html::Frame { title: "Activity", watch: "*", revision, events_head, after: maud::html! {}, chrome: &chrome };
    Ok(answer(frame, &params, main))
}

async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(plural): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let kind = crate::api::request::kind_for_plural(&plural)?;
    let chrome = chrome(&state, &principal, &params).await;
    let (main, revision) = pages::list(&state, kind, scope(&principal, &chrome).as_deref()).await?;
    let frame = html::Frame {
        title: kind.plural(),
        watch: kind.as_str(),
        revision,
        events_head: None,
        after: maud::html! {},
        chrome: &chrome,
    };
    Ok(answer(frame, &params, main))
}

async fn detail(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: axum::http::HeaderMap,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let kind = crate::api::request::kind_for_plural(&plural)?;
    let key = crate::api::request::key(kind, &namespace, &name)?;
    let watch = format!("{}/{namespace}/{name}", kind.as_str());
    let title = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
    let chrome = chrome(&state, &principal, &params).await;
    let events_head = Some(events_head(&state, false).await?);
    let viewer = actions::Viewer::of(&principal, &headers);
    let (main, revision) = pages::detail(&state, &key, &viewer, &params).await?;
    let frame = html::Frame {
        title: &title,
        watch: &watch,
        revision,
        events_head,
        after: panels::logs(kind, &namespace, &name),
        chrome: &chrome,
    };
    Ok(answer(frame, &params, main))
}

/// `/ui/api/summary`: objects per kind (total, Ready), the latest CPU and memory of the
/// followed Instances summed, and how many warnings there are, as JSON.
async fn summary_data(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(pages::summary_data(&state, principal.namespace.as_deref()).await?))
}

/// Every change of every object, from `resourceVersion`, with bookmarks; with `eventsHead`,
/// also a line `{"type": "EVENTS", "head": …}` whenever the events head moves from it (one
/// connection per page: browsers allow only a few per server).
async fn watch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(mut params): Params,
) -> Result<Response, ApiError> {
    let events_head = params.remove("eventsHead");
    params.insert("allowWatchBookmarks".into(), "true".into());
    let response = crate::api::objects::watch_everything(state.clone(), params, principal.namespace.clone()).await?;
    let Some(head) = events_head else { return Ok(response) };
    let (parts, body) = response.into_parts();
    let heads = follow_events_head(state, head);
    let merged = futures::stream::unfold((body.into_data_stream(), heads), |(mut body, mut heads)| async move {
        let item = tokio::select! {
            // The watch ended (shutdown, a slow client, an expired revision): so does this.
            chunk = body.next() => chunk?,
            Some(head) = heads.recv() => {
                Ok(bytes::Bytes::from(format!("{}\n", serde_json::json!({"type": "EVENTS", "head": head}))))
            }
        };
        Some((item, (body, heads)))
    });
    Ok(Response::from_parts(parts, axum::body::Body::from_stream(merged)))
}

/// Waits for `signal` to change; false when there is none or its sender is gone.
async fn changed(signal: Option<&mut tokio::sync::watch::Receiver<u64>>) -> bool {
    match signal {
        Some(signal) => signal.changed().await.is_ok(),
        None => false,
    }
}

/// The events head each time it moves from `head`: woken by events and audit entries recorded
/// here, and read again every [`EVENTS_POLL`] for other replicas'. Ends when the receiver goes.
fn follow_events_head(state: AppState, mut head: String) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        // Subscribed before the first read: an event recorded after it wakes the wait.
        let mut signal = state.store.event_signal();
        // A head with the audit log's (the activity page) follows it too.
        let with_audit = head.contains('/');
        let mut audited = state.audit.as_ref().filter(|_| with_audit).map(crate::auth::AuditLog::written);
        loop {
            match events_head(&state, with_audit).await {
                Ok(now) if now != head => {
                    head = now.clone();
                    if sender.send(now).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot read the events head; retrying"),
            }
            let recorded = async {
                let event = async {
                    if !changed(signal.as_mut()).await {
                        std::future::pending::<()>().await;
                    }
                };
                let audit = async {
                    if !changed(audited.as_mut()).await {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = event => {},
                    () = audit => {},
                }
            };
            tokio::select! {
                // A burst of events (a large apply) costs one read per page, not one per event.
                () = recorded => tokio::time::sleep(EVENTS_COALESCE).await,
                () = tokio::time::sleep(EVENTS_POLL) => {}
                () = sender.closed() => return,
            }
        }
    });
    receiver
}
