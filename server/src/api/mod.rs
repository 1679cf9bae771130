//! The API server (`cloud server`): Kubernetes-shaped REST over the store, with watches,
//! apply, patches, events, health endpoints and OpenAPI documents, plus the discovery, Table
//! and Status conventions kubectl and Kubernetes client libraries rely on ([`kube`]). Every request gets a request id
//! (`x-request-id`, generated unless the client sent one) that appears in the response and in
//! the structured logs. On SIGINT/SIGTERM the server stops accepting connections, ends watch
//! streams cleanly and lets in-flight requests finish.

pub mod access;
pub mod admission;
pub mod apply;
pub mod applyset;
pub mod audit_note;
pub mod deletion;
pub mod error;
pub mod events;
pub mod guard;
pub mod hosts;
pub mod kube;
pub mod logs;
pub mod objects;
pub mod openapi_v2;
pub mod patch;
pub mod request;
pub mod request_metrics;
pub mod reviews;
pub mod scale;
pub mod secrets;
pub mod spool;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use minicloud_controllers::docker::ContainerDriver;

use crate::store::Store;
use error::ApiError;

/// What the server accepts from clients, and for how long it waits on them (documented in
/// docs/api.md, "Limits").
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body.
    pub body_bytes: usize,
    /// Time a connection has to send a complete request head, from its opening or from the end
    /// of its previous response: slow headers and idle keep-alive connections are closed.
    pub header_read_timeout: Duration,
    /// Time a request has to send its whole body (408 afterwards).
    pub body_read_timeout: Duration,
    /// Connections open at once; beyond, a connection is answered 503 and closed.
    pub connections: usize,
    /// Watches open at once; beyond, a watch is answered 429.
    pub watches: usize,
    /// Disk space all list responses waiting for slow clients may use together (503 beyond).
    pub spool_bytes: usize,
    /// How long a watch waits for its client to take the next line before it ends the watch
    /// (the client then resumes from its last resourceVersion).
    pub watch_send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            body_bytes: 8 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(20),
            body_read_timeout: Duration::from_secs(30),
            connections: 2048,
            watches: 1024,
            spool_bytes: 1024 * 1024 * 1024,
            watch_send_timeout: Duration::from_secs(60),
        }
    }
}

/// How long `/readyz` waits for the store: a server whose store cannot answer is not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// The container engine, for logs (connected lazily; absent when Docker cannot be set up).
    pub driver: Option<Arc<dyn ContainerDriver>>,
    /// Flips to true when the server begins to shut down; watch streams end then.
    pub shutdown: watch::Receiver<bool>,
    pub limits: Arc<Limits>,
    pub backend: &'static str,
    /// This server's identity as a replica (the holder name in leases), shown by `/version`.
    pub replica: String,
    /// Serialises applies within this server (see [`apply`]).
    pub apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// Disk space for list responses waiting for slow clients.
    pub spool_budget: spool::SpoolBudget,
    /// One permit per open watch ([`Limits::watches`]).
    pub watches: Arc<tokio::sync::Semaphore>,
    /// Initial lists of watches that start together, read once (see [`objects`]).
    pub shared_lists: objects::SharedLists,
    /// What `/metrics` serves (the controllers record into it).
    pub metrics: Arc<minicloud_controllers::metrics::Metrics>,
    /// The API's own request metrics (registered in `metrics` by the server).
    pub requests: request_metrics::RequestMetrics,
    /// Re-encrypts Secrets under a new key (absent for a store that seals nothing).
    pub key_rotation: Option<Arc<dyn secrets::KeyRotation>>,
    /// CPU and memory history of the Instances, for the console's charts (absent without
    /// controllers), and how often it is sampled.
    pub usage: Option<Arc<crate::usage::UsageHistory>>,
    pub usage_interval: Duration,
    /// Tokens and the audit log (absent for a store that keeps neither).
    pub access: Option<Arc<dyn crate::auth::AccessStore>>,
    /// Checks tokens when authentication is on (`None`: every request is `anonymous`).
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Where requests are audited.
    pub audit: Option<crate::auth::AuditLog>,
    /// Which `Host` values are answered (`None`: any; see [`hosts`]).
    pub hosts: Option<Arc<hosts::HostPolicy>>,
}

impl AppState {
    /// The state of a server on `store`.
    pub fn new(
        store: Arc<dyn Store>,
        driver: Option<Arc<dyn ContainerDriver>>,
        shutdown: watch::Receiver<bool>,
        limits: Limits,
        backend: &'static str,
    ) -> AppState {
        AppState {
            store,
            driver,
            shutdown,
            watches: Arc::new(tokio::sync::Semaphore::new(limits.watches)),
            spool_budget: spool::SpoolBudget::new(limits.spool_bytes),
            limits: Arc::new(limits),
            backend,
            replica: String::new(),
            apply_lock: Arc::default(),
            shared_lists: objects::SharedLists::default(),
            metrics: Arc::default(),
            requests: request_metrics::RequestMetrics::default(),
            key_rotation: None,
            usage: None,
            usage_interval: crate::usage::DEFAULT_INTERVAL,
            access: None,
            auth: None,
            audit: None,
            hosts: None,
        }
    }
}

/// The routes, without the listener; `pages` (the console's) are served beside the API's,
/// behind the same host check, authorization and write guard.
/// What turns an error of a page into a page (the console's 403 and 404 for a browser); it
/// wraps every route and the fallback.
pub type PageErrors =
    fn(axum::extract::Request, axum::middleware::Next) -> futures::future::BoxFuture<'static, axum::response::Response>;

pub fn router(state: AppState, pages: Router<AppState>, page_errors: PageErrors) -> Router {
    let requests = state.requests.clone();
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        // The Kubernetes Python client asks for `/version/`.
        .route("/version/", get(version))
        .route("/openapi.json", get(openapi_document))
        .route("/metrics", get(metrics))
        .route("/api", get(kube::core_versions))
        .route("/api/v1", get(kube::core_resources))
        .route("/api/v1/namespaces", get(kube::list_namespaces))
        .route("/api/v1/namespaces/{name}", get(kube::get_namespace))
        .route("/api/v1/namespaces/{namespace}/events", get(kube::core_events))
        .route("/api/v1/events", get(kube::core_events_all))
        .route("/apis", get(kube::groups))
        .route("/openapi/v2", get(openapi_v2::serve))
        .route("/openapi/v3", get(kube::openapi_v3_root))
        .route("/openapi/v3/apis/minicloud.dev/v1", get(kube::openapi_v3_group))
        .route("/apis/minicloud.dev", get(kube::group))
        .route("/apis/minicloud.dev/v1", get(kube::group_resources))
        .route("/apis/minicloud.dev/v1/apply", post(apply::apply))
        .route("/apis/minicloud.dev/v1/events", get(events::list_all))
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/events",
            get(events::list_namespaced).post(events::create),
        )
        .route("/apis/minicloud.dev/v1/{plural}", get(objects::list_all))
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}",
            get(objects::list_namespaced).post(objects::create),
        )
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}",
            get(objects::get_one).put(objects::replace).patch(patch::patch).delete(objects::delete_one),
        )
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}/status",
            axum::routing::put(objects::replace_status),
        )
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/scalinggroups/{name}/scale",
            get(scale::get_scale).put(scale::put_scale).patch(scale::patch_scale),
        )
        .route("/apis/minicloud.dev/v1/namespaces/{namespace}/instances/{name}/log", get(logs::instance_log))
        .route("/apis/minicloud.dev/v1/namespaces/{namespace}/secrets/{name}/reveal", post(secrets::reveal))
        .route("/apis/minicloud.dev/v1/secretkeys/rotate", post(secrets::rotate_key))
        .route("/apis/minicloud.dev/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/apis/minicloud.dev/v1/tokens/{name}", axum::routing::delete(tokens::revoke))
        .route("/apis/minicloud.dev/v1/whoami", get(tokens::whoami))
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            post(reviews::self_subject_access_review),
        )
        .route("/apis/minicloud.dev/v1/audit", get(tokens::audit))
        .merge(pages)
        .route_layer(axum::middleware::from_fn(guard::guard_writes))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::authorize))
        .route_layer(axum::middleware::from_fn(request_metrics::mark_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(page_errors))
        .layer(axum::middleware::from_fn_with_state(state.hosts.clone(), hosts::check_host))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(requests, request_metrics::record))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<Body>| {
                    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

async fn not_found(request: Request<Body>) -> ApiError {
    ApiError::not_found(format!("no endpoint {} {}; see /openapi.json", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request<Body>) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{} is not supported on {}; see /openapi.json for what is",
        request.method(),
        request.uri().path()
    ))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if *state.shutdown.borrow() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let revision = tokio::time::timeout(READINESS_TIMEOUT, state.store.revision())
        .await
        .map_err(|_| {
            ApiError::unavailable(format!("the store did not answer within {} s", READINESS_TIMEOUT.as_secs()))
        })?
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    tokio::time::timeout(READINESS_TIMEOUT, state.store.check_writable())
        .await
        .map_err(|_| {
            ApiError::unavailable(format!("the store did not take a write within {} s", READINESS_TIMEOUT.as_secs()))
        })?
        .map_err(|error| ApiError::unavailable(format!("the store cannot write: {error}")))?;
    Ok(Json(json!({"status": "ready", "revision": revision})))
}

/// minicloud's version, store, cluster and replica, in Kubernetes' shape too (`major`, `minor`,
/// `gitVersion`, ...) for kubectl and client libraries.
async fn version(State(state): State<AppState>) -> Json<Value> {
    let (major, minor) = (kube::KUBERNETES_MAJOR, kube::KUBERNETES_MINOR);
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "apiVersion": minicloud_crds::API_VERSION,
        "store": state.backend,
        "replica": state.replica,
        "cluster": state.store.cluster_id(),
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0+minicloud-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_architecture()),
    }))
}

/// The machine architecture as Go (and so Kubernetes) names it.
fn go_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Prometheus' text format.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.requests.set_watches_open(state.limits.watches.saturating_sub(state.watches.available_permits()));
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode())
}

async fn openapi_document() -> Json<Value> {
    Json(minicloud_model::openapi::document())
}

/// Serves the API on `listener` until `stop` completes, then shuts down gracefully: stops
/// accepting, flips `stopping` (watch streams end), lets in-flight requests finish (at most
/// [`SHUTDOWN_GRACE`]) and closes idle connections.
///
/// Connections are served by hyper directly (HTTP/1.1) so that the [`Limits`] apply: the
/// header-read timeout (which also closes idle keep-alive connections) and the connection cap.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    pages: Router<AppState>,
    page_errors: PageErrors,
    stopping: watch::Sender<bool>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let limits = state.limits.clone();
    let connections = Arc::new(tokio::sync::Semaphore::new(connection_capacity(limits.connections)));
    let app = router(state, pages, page_errors);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream, limits.connections));
            continue;
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down: finishing in-flight requests and closing watches");
    let _ = stopping.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("some requests were still running after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}

/// How long a graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The connection cap, kept below the process's file descriptor limit (raised to its hard
/// limit first) so that accepting never fails for lack of descriptors.
fn connection_capacity(configured: usize) -> usize {
    /// Descriptors kept for the store, Docker, files and the listener.
    const RESERVED: u64 = 256;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    let available = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return configured;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let usable = usize::try_from(available.saturating_sub(RESERVED)).unwrap_or(usize::MAX).max(16);
    if usable < configured {
        tracing::warn!(configured, usable, "the file descriptor limit lowers the connection limit");
    }
    configured.min(usable)
}

/// Answers a connection beyond the limit with a 503 and closes it (bounded in time).
async fn refuse_connection(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::AsyncWriteExt;
    let body = ApiError::unavailable(format!(
        "this server already has {limit} open connections; retry shortly, and close idle connections"
    ))
    .body()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}
