//! The console: a live web dashboard served by the API server at `/ui` (issue 14, in progress).
//! Pages are rendered on the server ([`pages`]); a small hand-written script (no build step,
//! no CDN: the assets are embedded in the binary) follows the watch of every object from the
//! revision the page was read at and, when something the page shows changes, fetches the
//! page's `main` again (`?fragment=1`) and swaps it in. A dropped watch is resumed from the
//! last revision seen.

mod html;
mod pages;
mod panels;
pub mod usage;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::error::ApiError;
use crate::api::AppState;

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
        .route("/ui/{plural}", get(list))
        .route("/ui/namespaces/{namespace}/{plural}/{name}", get(detail))
}

type Params = Query<HashMap<String, String>>;

/// The whole page, or only its `main` with `?fragment=1` (what the script swaps in).
fn answer(title: &str, watch: &str, params: &HashMap<String, String>, (main, revision): (String, i64)) -> Response {
    answer_with(title, watch, params, (main, revision), "")
}

/// Like [`answer`], with `after` following `main` on the whole page (never swapped).
fn answer_with(
    title: &str,
    watch: &str,
    params: &HashMap<String, String>,
    (main, revision): (String, i64),
    after: &str,
) -> Response {
    if params.get("fragment").is_some_and(|fragment| fragment == "1") {
        return Html(main).into_response();
    }
    Html(html::page(title, watch, revision, &main, after)).into_response()
}

async fn summary(State(state): State<AppState>, Query(params): Params) -> Result<Response, ApiError> {
    Ok(answer("Summary", "*", &params, pages::summary(&state).await?))
}

async fn activity(State(state): State<AppState>, Query(params): Params) -> Result<Response, ApiError> {
    let filter = pages::ActivityFilter::from_params(&params);
    Ok(answer("Activity", "*", &params, pages::activity(&state, &filter).await?))
}

async fn list(
    State(state): State<AppState>,
    Path(plural): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let kind = crate::api::objects::kind_for_plural(&plural)?;
    Ok(answer(kind.plural(), kind.as_str(), &params, pages::list(&state, kind).await?))
}

async fn detail(
    State(state): State<AppState>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let kind = crate::api::objects::kind_for_plural(&plural)?;
    let key = crate::api::objects::key(kind, &namespace, &name)?;
    let watch = format!("{}/{namespace}/{name}", kind.as_str());
    let title = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
    let logs = panels::logs(kind, &namespace, &name);
    Ok(answer_with(&title, &watch, &params, pages::detail(&state, &key).await?, &logs))
}

/// `/ui/api/summary`: objects per kind (total, Ready), the latest CPU and memory of the
/// followed Instances summed, and how many warnings there are, as JSON.
async fn summary_data(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(pages::summary_data(&state).await?))
}

/// Every change of every object, from `resourceVersion`, with bookmarks.
async fn watch(State(state): State<AppState>, Query(mut params): Params) -> Result<Response, ApiError> {
    params.insert("allowWatchBookmarks".into(), "true".into());
    crate::api::objects::watch_everything(state, params).await
}
