//! The API server (`cloud server`): Kubernetes-shaped REST over the store, with watches,
//! apply, events, health endpoints and an OpenAPI document. Every request gets a request id
//! (`x-request-id`, generated unless the client sent one) that appears in the response and in
//! the structured logs. On SIGINT/SIGTERM the server stops accepting connections, ends watch
//! streams cleanly and lets in-flight requests finish.

pub mod apply;
pub mod error;
pub mod events;
pub mod logs;
pub mod objects;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::store::{self, SqlStore, Store};
use error::ApiError;

/// Largest request body accepted.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Revisions the change log keeps for watchers that fall behind.
const RETAINED_REVISIONS: i64 = 100_000;
/// How often the change log is compacted.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(60);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// The container engine, for logs (connected lazily; absent when Docker cannot be set up).
    pub driver: Option<Arc<dyn crate::docker::ContainerDriver>>,
    /// Flips to true when the server begins to shut down; watch streams end then.
    pub shutdown: watch::Receiver<bool>,
    pub body_limit: usize,
    pub backend: &'static str,
}

/// The server's settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub body_limit: usize,
    /// Run the controllers in this process (`None`: API only).
    pub controllers: Option<ControllerSettings>,
}

/// How the controllers run.
#[derive(Clone, Debug, Default)]
pub struct ControllerSettings {
    /// Labels added to every container (e.g. to mark a test run's containers).
    pub extra_labels: std::collections::HashMap<String, String>,
    pub runtime: crate::controllers::runtime::RuntimeConfig,
}

/// The tasks of the running controllers.
struct Controllers {
    /// The reconcile loop: it finishes its running reconciles when shutdown begins.
    runtime: tokio::task::JoinHandle<()>,
    /// Docker event fan-out and orphan collection: stopped at shutdown.
    helpers: Vec<tokio::task::JoinHandle<()>>,
}

impl Controllers {
    /// Stops the helpers and lets the reconcile loop finish (bounded).
    async fn stop(self) {
        for helper in self.helpers {
            helper.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.runtime).await;
    }
}

/// Starts the controllers.
fn start_controllers(
    store: Arc<dyn Store>,
    settings: ControllerSettings,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Controllers> {
    use crate::controllers::{instance, runtime};
    use crate::docker::{ContainerDriver, DockerDriver};
    let driver: Arc<dyn ContainerDriver> = Arc::new(DockerDriver::lazy()?);
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let mut helpers = vec![runtime::spawn_docker_events(driver.clone(), events.clone())];
    let reconciler = Arc::new(instance::InstanceController::new(store.clone(), driver.clone(), settings.extra_labels));
    let metrics = Arc::new(runtime::Metrics::default());
    let runtime = tokio::spawn(runtime::run(
        reconciler,
        store.clone(),
        events.subscribe(),
        settings.runtime.clone(),
        metrics,
        shutdown.clone(),
    ));
    // Orphaned containers: at start and every resync period.
    let resync = settings.runtime.resync;
    helpers.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(resync);
        loop {
            ticker.tick().await;
            match instance::collect_orphans(store.as_ref(), driver.as_ref()).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "orphaned containers removed"),
                Err(error) => tracing::warn!(%error, "orphan collection failed; retrying later"),
            }
        }
    }));
    Ok(Controllers { runtime, helpers })
}

/// The routes, without the listener.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/openapi.json", get(openapi_document))
        .route("/apis/minicloud.dev/v1/apply", post(apply::apply))
        .route("/apis/minicloud.dev/v1/events", get(events::list_all))
        .route("/apis/minicloud.dev/v1/namespaces/{namespace}/events", get(events::list_namespaced))
        .route("/apis/minicloud.dev/v1/{plural}", get(objects::list_all))
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}",
            get(objects::list_namespaced).post(objects::create),
        )
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}",
            get(objects::get_one).put(objects::replace).delete(objects::delete_one),
        )
        .route(
            "/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}/{name}/status",
            axum::routing::put(objects::replace_status),
        )
        .route("/apis/minicloud.dev/v1/namespaces/{namespace}/instances/{name}/log", get(logs::instance_log))
        .fallback(not_found)
        .with_state(state)
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

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if *state.shutdown.borrow() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let revision = state.store.revision().await.map_err(|error| ApiError::unavailable(error.to_string()))?;
    Ok(Json(json!({"status": "ready", "revision": revision})))
}

async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "apiVersion": minicloud_crds::API_VERSION,
        "store": state.backend,
        "cluster": state.store.cluster_id(),
    }))
}

async fn openapi_document() -> Json<Value> {
    Json(openapi::document())
}

/// Opens the store, serves until `stop` completes, then shuts down gracefully. `bound` is
/// told the address actually bound (useful with port 0).
pub async fn serve(
    config: ServerConfig,
    stop: impl Future<Output = ()> + Send + 'static,
    bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let sql = SqlStore::open(&config.database_url)
        .await
        .map_err(|error| anyhow::anyhow!("cannot open the store at {}: {error}", redact(&config.database_url)))?;
    let backend = sql.backend_name();
    let store: Arc<dyn Store> = Arc::new(sql);
    let compactor = store::spawn_compactor(store.clone(), RETAINED_REVISIONS, COMPACTION_INTERVAL);
    let (stopping, shutdown) = watch::channel(false);
    let controllers = match config.controllers.clone() {
        Some(settings) => Some(start_controllers(store.clone(), settings, shutdown.clone())?),
        None => None,
    };
    let driver = crate::docker::DockerDriver::lazy()
        .map(|driver| Arc::new(driver) as Arc<dyn crate::docker::ContainerDriver>)
        .map_err(|error| tracing::warn!(%error, "no Docker engine: logs are unavailable"))
        .ok();
    let state = AppState { store, driver, shutdown, body_limit: config.body_limit, backend };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = backend, "minicloud API server listening");
    bound(address);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            stop.await;
            tracing::info!("shutting down: finishing in-flight requests and closing watches");
            let _ = stopping.send(true);
        })
        .await?;
    compactor.abort();
    if let Some(controllers) = controllers {
        controllers.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}
