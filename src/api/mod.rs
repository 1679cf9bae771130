//! The API server (`cloud server`): Kubernetes-shaped REST over the store, with watches,
//! apply, events, health endpoints and an OpenAPI document. Every request gets a request id
//! (`x-request-id`, generated unless the client sent one) that appears in the response and in
//! the structured logs. On SIGINT/SIGTERM the server stops accepting connections, ends watch
//! streams cleanly and lets in-flight requests finish.

pub mod apply;
pub mod error;
pub mod events;
pub mod guard;
pub mod logs;
pub mod objects;
pub mod openapi;

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request};
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
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { body_bytes: 8 * 1024 * 1024 }
    }
}

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
    /// Serialises applies within this server (see [`apply`]).
    pub apply_lock: Arc<tokio::sync::Mutex<()>>,
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
        AppState { store, driver, shutdown, limits: Arc::new(limits), backend, apply_lock: Arc::default() }
    }
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
        .layer(axum::middleware::from_fn(guard::guard_writes))
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

/// Serves the API on `listener` until `stop` completes, then shuts down gracefully: stops
/// accepting, flips `stopping` (watch streams end) and lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stopping: watch::Sender<bool>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            stop.await;
            tracing::info!("shutting down: finishing in-flight requests and closing watches");
            let _ = stopping.send(true);
        })
        .await?;
    Ok(())
}
