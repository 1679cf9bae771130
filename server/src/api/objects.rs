//! The object endpoints, Kubernetes-shaped:
//! `/apis/minicloud.dev/v1/namespaces/{ns}/{plural}[/{name}[/status]]` and cluster-wide
//! `/apis/minicloud.dev/v1/{plural}` lists. Lists accept `labelSelector`; with `watch=true` they
//! stream changes as JSON lines (`{"type": "ADDED", "object": {...}}`) from `resourceVersion`
//! (or from a fresh list when none is given), with `BOOKMARK` lines as heartbeats, until the
//! client goes, the server stops or `timeoutSeconds` pass.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{FutureExt, StreamExt};
use minicloud_crds::{Kind, Object, API_VERSION};
use serde_json::{json, Value};

use super::admission::{Policies, Verdict};
use super::error::ApiError;
use super::request::{accept_object, check_name, check_target, flag, key, kind_for_plural, parse_body, read_body};
use super::AppState;
use super::{kube, spool};
use crate::auth::Principal;
use crate::store::{self, Deleted, Selector, Store, StoreError};
use minicloud_model::manifest;

/// Heartbeat interval of watches unless `heartbeatSeconds` says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

type Params = Query<HashMap<String, String>>;

/// The object name a `fieldSelector` picks (`metadata.name=web`, as kubectl sends it to watch
/// one object), after checking that `metadata.namespace`, when given, is the one listed.
fn field_selector(params: &HashMap<String, String>, namespace: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut name = None;
    for requirement in params.get("fieldSelector").map_or("", String::as_str).split(',').map(str::trim) {
        if requirement.is_empty() {
            continue;
        }
        let Some((field, value)) = requirement.split_once("==").or_else(|| requirement.split_once('=')) else {
            return Err(ApiError::bad_request(format!(
                "fieldSelector {requirement:?}: write metadata.name=NAME (only equality is supported)"
            )));
        };
        match (field.trim(), value.trim()) {
            ("metadata.name", value) => {
                check_name("fieldSelector metadata.name", value)?;
                name = Some(value.to_owned());
            }
            ("metadata.namespace", value) if namespace.is_none_or(|namespace| namespace == value) => {
                if namespace.is_none() {
                    return Err(ApiError::bad_request(
                        "fieldSelector metadata.namespace: list the namespace's path instead (/namespaces/NS/...)",
                    ));
                }
            }
            ("metadata.namespace", _) => {
                return Err(ApiError::bad_request("fieldSelector metadata.namespace differs from the namespace listed"))
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "fieldSelector: {other:?} cannot be selected on; metadata.name can"
                )))
            }
        }
    }
    Ok(name)
}

fn selector(params: &HashMap<String, String>) -> Result<Selector, ApiError> {
    Selector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(|error| ApiError::bad_request(error.to_string()))
}

/// A list of stored documents being read: the revision it is read at, the documents as they
/// come, and the task reading them (its result says whether the list was complete).
type RawList = (i64, tokio::sync::mpsc::Receiver<store::RawItem>, tokio::task::JoinHandle<store::StoreResult<()>>);

/// Starts reading a list of stored documents and waits for the revision it is read at.
async fn start_raw_list(store: Arc<dyn Store>, query: store::Query) -> Result<RawList, ApiError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<store::RawItem>(512);
    let scan = tokio::spawn(async move { store.list_raw(&query, sender).await });
    match receiver.recv().await {
        Some(store::RawItem::Revision(revision)) => Ok((revision, receiver, scan)),
        _ => Err(match scan.await {
            Ok(Err(error)) => error.into(),
            _ => ApiError::unavailable("the store ended the list before it began"),
        }),
    }
}

/// Whether the task reading a raw list read all of it.
async fn completed(scan: tokio::task::JoinHandle<store::StoreResult<()>>) -> Result<(), ApiError> {
    match scan.await {
        Ok(outcome) => outcome.map_err(ApiError::from),
        Err(error) => Err(ApiError::unavailable(format!("the list failed: {error}"))),
    }
}

/// Pieces a list response is written to its spool in.
const LIST_CHUNK: usize = 64 * 1024;

/// A list response: the store's documents go into a spool as fast as the store yields them,
/// and to the client as fast as it takes them (see [`super::spool`]): the store connection is
/// released at database speed whatever the client does, and memory stays bounded however long
/// the list. A store failure after the first byte breaks the response (the client never sees
/// a shorter list that looks complete).
async fn list_response(state: &AppState, kind: Kind, query: store::Query) -> Result<Response, ApiError> {
    let (revision, mut receiver, scan) = start_raw_list(state.store.clone(), query).await?;
    let (mut writer, reader) = spool::spool(state.spool_budget.clone());
    let mut chunk = format!(
        r#"{{"apiVersion":"{API_VERSION}","kind":"{}List","metadata":{{"resourceVersion":"{revision}"}},"items":["#,
        kind.as_str()
    );
    tokio::spawn(async move {
        let copied: Result<(), ApiError> = async {
            let mut first = true;
            while let Some(item) = receiver.recv().await {
                let store::RawItem::Document(document) = item else { continue };
                if !first {
                    chunk.push(',');
                }
                first = false;
                chunk.push_str(&shown_document(Some(kind), &document));
                if chunk.len() >= LIST_CHUNK {
                    writer.write(Bytes::from(std::mem::take(&mut chunk))).await?;
                }
            }
            if let Err(error) = completed(scan).await {
                tracing::warn!(%error, "the store failed during a list; breaking the response");
                return Err(error);
            }
            chunk.push_str("]}");
            writer.write(Bytes::from(chunk)).await
        }
        .await;
        match copied {
            Ok(()) => writer.finish(),
            // Dropping the unfinished writer breaks the response.
            Err(error) => tracing::debug!(%error, "list response not completed"),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(reader.into_stream()))
        .map_err(|error| ApiError::bad_request(error.to_string()))
}

async fn list_or_watch(
    state: AppState,
    kind: Kind,
    namespace: Option<String>,
    params: HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(namespace) = &namespace {
        check_name("namespace", namespace)?;
    }
    let only = field_selector(&params, namespace.as_deref())?;
    let query = store::Query { kind: Some(kind), namespace, selector: selector(&params)? };
    let table = kube::wants_table(headers).then(|| kube::IncludeObject::from_params(&params)).transpose()?;
    if flag(&params, "watch")? {
        // Kubernetes clients read a watch only as application/json; ask for
        // application/x-ndjson to be told it is JSON lines.
        let lines = headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|accept| accept.to_str().is_ok_and(|accept| accept.contains("application/x-ndjson")));
        let content_type = if lines { "application/x-ndjson" } else { "application/json" };
        let shape = WatchShape { only, table, content_type };
        return watch(state, query, &params, shape).await;
    }
    if table.is_none() && only.is_none() {
        return list_response(&state, kind, query).await;
    }
    // kubectl get (the cloud get columns) or one object by field selector: the list is
    // decoded, not streamed.
    let list = state.store.list(&query).await?;
    let objects: Vec<Object> = list
        .items
        .into_iter()
        .filter(|object| only.as_deref().is_none_or(|name| object.metadata.name == name))
        .map(shown)
        .collect();
    let revision = list.revision.to_string();
    Ok(match table {
        Some(include) => Json(kube::table(kind, &objects, Some(revision), include)).into_response(),
        None => Json(json!({
            "apiVersion": API_VERSION,
            "kind": format!("{}List", kind.as_str()),
            "metadata": {"resourceVersion": revision},
            "items": objects,
        }))
        .into_response(),
    })
}

/// A watch of every object of every kind (the console follows it), as JSON lines.
pub async fn watch_everything(
    state: AppState,
    params: HashMap<String, String>,
    namespace: Option<String>,
) -> Result<Response, ApiError> {
    let query = store::Query { kind: None, namespace, selector: Selector::default() };
    let shape = WatchShape { only: None, table: None, content_type: "application/x-ndjson" };
    watch(state, query, &params, shape).await
}

/// `GET /apis/minicloud.dev/v1/namespaces/{ns}/{plural}`
pub async fn list_namespaced(
    State(state): State<AppState>,
    Path((namespace, plural)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_for_plural(&plural)?;
    list_or_watch(state, kind, Some(namespace), params, &headers).await
}

/// `GET /apis/minicloud.dev/v1/{plural}`: every namespace.
pub async fn list_all(
    State(state): State<AppState>,
    Path(plural): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_for_plural(&plural)?;
    list_or_watch(state, kind, None, params, &headers).await
}

/// `POST /apis/minicloud.dev/v1/namespaces/{ns}/{plural}`
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((namespace, plural)): Path<(String, String)>,
    Query(params): Params,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = kind_for_plural(&plural)?;
    check_name("namespace", &namespace)?;
    let dry_run = super::request::dry_run(&params)?;
    let object = accept_object(parse_body(body, &state.limits).await?, kind, &namespace, None)?;
    let verdict = admit(&state, &principal, &object).await?;
    if dry_run {
        let key = object.key().ok_or_else(|| ApiError::bad_request("the object has no kind"))?;
        return match state.store.get(&key).await {
            Ok(_) => Err(StoreError::AlreadyExists(key).into()),
            Err(StoreError::NotFound(_)) => {
                Ok((StatusCode::CREATED, verdict.headers(), Json(shown(object))).into_response())
            }
            Err(error) => Err(error.into()),
        };
    }
    let created = state.store.create(object).await?;
    verdict.record(state.store.as_ref()).await;
    Ok((StatusCode::CREATED, verdict.headers(), Json(shown(created))).into_response())
}

/// Checks an object about to be written against the policies (and a Policy against its
/// writer's scope).
pub async fn admit(state: &AppState, principal: &Principal, object: &Object) -> Result<Verdict, ApiError> {
    let batch = std::slice::from_ref(object);
    super::admission::check_policy_scope(principal, batch)?;
    Policies::load(state.store.as_ref(), batch).await?.check(batch)
}

/// `GET .../{plural}/{name}`
pub async fn get_one(
    State(state): State<AppState>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_for_plural(&plural)?;
    let object = shown(state.store.get(&key(kind, &namespace, &name)?).await?);
    if kube::wants_table(&headers) {
        let include = kube::IncludeObject::from_params(&params)?;
        let version = object.metadata.resource_version.clone();
        return Ok(Json(kube::table(kind, &[object], version, include)).into_response());
    }
    Ok(Json(object).into_response())
}

/// `PUT .../{plural}/{name}`: replaces spec and user metadata (resourceVersion checked when sent).
pub async fn replace(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(params): Params,
    body: Body,
) -> Result<(HeaderMap, Json<Object>), ApiError> {
    let kind = kind_for_plural(&plural)?;
    let key = key(kind, &namespace, &name)?;
    let dry_run = super::request::dry_run(&params)?;
    let object = accept_object(parse_body(body, &state.limits).await?, kind, &namespace, Some(&name))?;
    let verdict = admit(&state, &principal, &object).await?;
    if dry_run {
        let live = state.store.get(&key).await?;
        if object
            .metadata
            .resource_version
            .as_ref()
            .is_some_and(|sent| Some(sent) != live.metadata.resource_version.as_ref())
        {
            let sent = object.metadata.resource_version.unwrap_or_default();
            return Err(StoreError::Conflict {
                key,
                sent,
                current: live.metadata.resource_version.unwrap_or_default(),
            }
            .into());
        }
        return Ok((verdict.headers(), Json(shown(object))));
    }
    let updated = state.store.update(object).await?;
    verdict.record(state.store.as_ref()).await;
    Ok((verdict.headers(), Json(shown(updated))))
}

/// `PUT .../{plural}/{name}/status`: replaces the status only (controllers).
pub async fn replace_status(
    State(state): State<AppState>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    body: Body,
) -> Result<Json<Object>, ApiError> {
    let kind = kind_for_plural(&plural)?;
    let key = key(kind, &namespace, &name)?;
    let mut value = parse_body(body, &state.limits).await?;
    if value.is_object() && value.get("kind").is_none() {
        // A status body may leave out the kind (the URL says it); everything it does say must agree.
        value["kind"] = json!(kind.as_str());
    }
    if value.is_object() {
        check_target(&mut value, kind, &namespace, Some(&name))?;
    }
    let (status, resource_version) = status_body(kind, value)?;
    let mut object = state.store.get(&key).await?;
    object.status = status;
    object.metadata.resource_version = resource_version;
    Ok(Json(shown(state.store.update_status(object).await?)))
}

/// The status and resourceVersion of a status update's body: an object with `status` (an
/// object valid for the kind's status schema) and optionally `metadata.resourceVersion`.
fn status_body(kind: Kind, body: Value) -> Result<(Value, Option<String>), ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::bad_request(format!(
            "send the {kind} as a JSON object with its status: {{\"status\": {{...}}, \"metadata\": {{\"resourceVersion\": \"N\"}}}}"
        )));
    };
    let resource_version = match body.get("metadata").map(|metadata| metadata.get("resourceVersion")) {
        None | Some(None) | Some(Some(Value::Null)) => None,
        Some(Some(Value::String(version))) => Some(version.clone()),
        Some(Some(other)) => {
            return Err(ApiError::bad_request(format!("metadata.resourceVersion must be a string, got {other}")))
        }
    };
    let status = match body.remove("status") {
        Some(status @ Value::Object(_)) => status,
        Some(other) => return Err(ApiError::bad_request(format!("status must be a JSON object, got {other}"))),
        None => {
            return Err(ApiError::bad_request(
                "the body has no status; send {\"status\": {...}} (an empty object clears it)",
            ))
        }
    };
    check_status(kind, &status)?;
    Ok((status, resource_version))
}

/// Checks that a status has the shape of the kind's status type.
fn check_status(kind: Kind, status: &Value) -> Result<(), ApiError> {
    let probe = json!({"apiVersion": API_VERSION, "kind": kind.as_str(), "metadata": {"name": "status-check"}, "status": status});
    let schema_errors = manifest::validate_value(probe).err().unwrap_or_default();
    let status_errors: Vec<_> = schema_errors
        .into_iter()
        .filter(|error| matches!(error.path.0.first(), Some(minicloud_crds::PathSegment::Key(key)) if key == "status"))
        .collect();
    if status_errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&format!("{kind} status"), status_errors))
    }
}

/// How many times a delete with a uid precondition is tried when other writes (status) move
/// the object's resourceVersion between the check and the delete.
const DELETE_ATTEMPTS: usize = 5;

/// `DELETE .../{plural}/{name}[?resourceVersion=N]`, with `DeleteOptions` in the body or the
/// query ([`super::deletion`]): dry runs change nothing, preconditions hold.
pub async fn delete_one(
    State(state): State<AppState>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(params): Params,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key(kind_for_plural(&plural)?, &namespace, &name)?;
    let bytes = read_body(body, &state.limits).await?;
    let options = super::deletion::delete_options(&params, &bytes)?;
    let mut headers = HeaderMap::new();
    if let Some(value) = options.warning.as_deref().and_then(super::admission::warning_header) {
        headers.append(axum::http::header::WARNING, value);
    }
    let mut attempt = 0;
    loop {
        let live = state.store.get(&key).await?;
        let precondition = |what: &str, sent: &str, current: Option<&String>| StoreError::Conflict {
            key: key.clone(),
            sent: format!("{what} {sent} (precondition)"),
            current: format!("{what} {}", current.map_or("", String::as_str)),
        };
        if let Some(uid) = options.uid.as_deref().filter(|uid| live.metadata.uid.as_deref() != Some(*uid)) {
            return Err(precondition("uid", uid, live.metadata.uid.as_ref()).into());
        }
        if let Some(version) =
            options.resource_version.as_deref().filter(|v| live.metadata.resource_version.as_deref() != Some(*v))
        {
            return Err(precondition("resourceVersion", version, live.metadata.resource_version.as_ref()).into());
        }
        if options.dry_run {
            // What the delete would answer, from the object as it is; nothing is written.
            return Ok(if live.metadata.finalizers.is_empty() {
                (StatusCode::OK, headers, Json(deleted_status(shown(live)))).into_response()
            } else {
                let mut terminating = live;
                terminating.metadata.deletion_timestamp.get_or_insert_with(chrono::Utc::now);
                (StatusCode::ACCEPTED, headers, Json(shown(terminating))).into_response()
            });
        }
        // A uid precondition holds for what is deleted: the version just checked is the one
        // deleted (a newer one is checked again).
        let version = options
            .resource_version
            .clone()
            .or_else(|| options.uid.as_ref().and(live.metadata.resource_version.clone()));
        match state.store.delete(&key, version.as_deref()).await {
            Ok(Deleted::Gone(object)) => {
                return Ok((StatusCode::OK, headers, Json(deleted_status(shown(object)))).into_response())
            }
            Ok(Deleted::Terminating(object)) => {
                return Ok((StatusCode::ACCEPTED, headers, Json(shown(object))).into_response())
            }
            Err(StoreError::Conflict { .. })
                if options.resource_version.is_none() && options.uid.is_some() && attempt + 1 < DELETE_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The answer to a delete that removed the object: a Kubernetes `Status` of success naming it
/// (as kubectl reads it), with the object as it was last.
fn deleted_status(object: Object) -> Value {
    let kind = Kind::from_kind_name(&object.kind).map_or("", Kind::plural);
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "reason": "Deleted",
        "details": {
            "name": object.metadata.name,
            "group": minicloud_crds::API_GROUP,
            "kind": kind,
            "uid": object.metadata.uid,
        },
        "object": object,
    })
}

/// An object as the API shows it: a Secret's values redacted.
pub fn shown(mut object: Object) -> Object {
    minicloud_model::redact::redact_object(&mut object);
    object
}

/// A stored document as the API shows it: a Secret's values redacted (whatever they are
/// stored as), other kinds passed through untouched.
fn shown_document(kind: Option<Kind>, document: &str) -> std::borrow::Cow<'_, str> {
    match kind {
        Some(Kind::Secret | Kind::Stack) | None => {
            std::borrow::Cow::Owned(minicloud_model::redact::redact_document(document))
        }
        Some(_) => std::borrow::Cow::Borrowed(document),
    }
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Appends a watch line around a stored document to `out`, without decoding the document.
fn push_document_line(out: &mut Vec<u8>, change: store::ChangeType, document: &str) {
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(change.as_str().as_bytes());
    out.extend_from_slice(br#"","object":"#);
    out.extend_from_slice(document.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// A heartbeat: a BOOKMARK line whose object carries only the kind and the revision (as
/// Kubernetes clients decode it).
fn bookmark(kind: Option<Kind>, revision: i64) -> Bytes {
    let kind = kind.map_or("List", Kind::as_str);
    line(&json!({"type": "BOOKMARK", "object": {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"resourceVersion": revision.to_string()},
    }}))
}

/// What a watch sends besides the plain lines: only one object's changes (`fieldSelector`),
/// objects as one-row Tables (`kubectl get -w`), and its content type.
struct WatchShape {
    only: Option<String>,
    table: Option<kube::IncludeObject>,
    content_type: &'static str,
}

impl WatchShape {
    fn plain(&self) -> bool {
        self.only.is_none() && self.table.is_none()
    }

    /// Watch lines (whole lines, as a watch writes them) without the changes of other objects
    /// and with each object as a Table when asked; BOOKMARK and ERROR lines pass unchanged.
    fn reshape(&self, kind: Kind, lines: &[u8]) -> Bytes {
        if lines.iter().all(u8::is_ascii_whitespace) {
            // A heartbeat.
            return Bytes::copy_from_slice(lines);
        }
        let mut out = Vec::with_capacity(lines.len());
        for text in lines.split(|byte| *byte == b'\n').filter(|text| !text.is_empty()) {
            let event = serde_json::from_slice::<Value>(text)
                .ok()
                .filter(|event| matches!(event["type"].as_str(), Some("ADDED" | "MODIFIED" | "DELETED")));
            let Some(mut event) = event else {
                out.extend_from_slice(text);
                out.push(b'\n');
                continue;
            };
            if self.only.as_deref().is_some_and(|name| event["object"]["metadata"]["name"] != name) {
                continue;
            }
            if let Some(include) = self.table {
                let Ok(object) = serde_json::from_value::<Object>(event["object"].take()) else { continue };
                let version = object.metadata.resource_version.clone();
                event["object"] = kube::table(kind, &[object], version, include);
            }
            out.extend_from_slice(event.to_string().as_bytes());
            out.push(b'\n');
        }
        Bytes::from(out)
    }
}

/// Bytes a watch gathers into one write: lines are sent in chunks of about this size, not one
/// write (and one chunked-encoding frame) per line, which with hundreds of watches is what
/// costs the server and its clients most.
const WATCH_CHUNK: usize = 64 * 1024;
/// Writes a watch queues for a client that reads slowly (then it waits, up to the send timeout).
const WATCH_CHUNK_QUEUE: usize = 16;

/// The start of a watch without a resourceVersion: the current objects as `ADDED` lines,
/// rendered once into chunks of whole lines, and the revision they were read at.
pub struct InitialLines {
    revision: i64,
    chunks: Vec<Bytes>,
}

type SharedList = futures::future::Shared<futures::future::BoxFuture<'static, Result<Arc<InitialLines>, ApiError>>>;

/// Initial lists of watches, shared: a watch whose query is already being listed for another
/// watch waits for that list instead of reading its own. (A list at revision R followed by the
/// changes after R is complete, whichever R.) So 500 watches starting together cost one read.
#[derive(Clone, Default)]
pub struct SharedLists {
    in_flight: Arc<std::sync::Mutex<HashMap<String, (u64, SharedList)>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// Removes a shared list once the request that started it is done (or cancelled).
struct InFlight {
    lists: SharedLists,
    key: String,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.lists.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if in_flight.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            in_flight.remove(&self.key);
        }
    }
}

impl SharedLists {
    /// The initial lines for `query`: those being read for another watch, or a new read.
    async fn list(&self, store: Arc<dyn Store>, query: &store::Query) -> Result<Arc<InitialLines>, ApiError> {
        let key = format!("{:?}\n{:?}\n{}", query.kind, query.namespace, query.selector);
        let (future, _started) = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match in_flight.get(&key) {
                Some((_, future)) => (future.clone(), None),
                None => {
                    let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let query = query.clone();
                    let kind = query.kind;
                    let future = async move {
                        let (revision, mut documents, scan) = start_raw_list(store, query).await?;
                        let (mut chunks, mut chunk) = (Vec::new(), Vec::with_capacity(WATCH_CHUNK));
                        while let Some(item) = documents.recv().await {
                            if let store::RawItem::Document(document) = item {
                                let document = shown_document(kind, &document);
                                push_document_line(&mut chunk, store::ChangeType::Added, &document);
                                if chunk.len() >= WATCH_CHUNK {
                                    chunks.push(Bytes::from(std::mem::replace(
                                        &mut chunk,
                                        Vec::with_capacity(WATCH_CHUNK),
                                    )));
                                }
                            }
                        }
                        if !chunk.is_empty() {
                            chunks.push(Bytes::from(chunk));
                        }
                        completed(scan).await?;
                        Ok(Arc::new(InitialLines { revision, chunks }))
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(key.clone(), (id, future.clone()));
                    (future, Some(InFlight { lists: self.clone(), key, id }))
                }
            }
        };
        future.await
    }
}

/// How a watch's change stream ended.
enum StreamEnd {
    /// The store closed it (the server is stopping).
    Closed,
    /// The store failed: the ERROR line to send last.
    Failed(Bytes),
}

/// Renders `first` and the changes already waiting behind it (up to about [`WATCH_CHUNK`]
/// bytes) as one write, and says whether the stream ended; `last` becomes the newest revision.
fn gather(
    first: Option<store::StoreResult<store::RawChange>>,
    changes: &mut store::RawWatchStream,
    kind: Option<Kind>,
    last: &mut i64,
) -> (Vec<u8>, Option<StreamEnd>) {
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(change) = next {
        match change {
            Some(Ok(event)) => {
                *last = event.revision;
                push_document_line(&mut batch, event.change, &shown_document(kind, &event.document));
            }
            Some(Err(error)) => {
                let api: ApiError = error.into();
                return (batch, Some(StreamEnd::Failed(line(&json!({"type": "ERROR", "object": api.body()})))));
            }
            None => return (batch, Some(StreamEnd::Closed)),
        }
        next = if batch.len() < WATCH_CHUNK { changes.next().now_or_never() } else { None };
    }
    (batch, None)
}

/// Streams changes as JSON lines until the client goes away or the server shuts down.
async fn watch(
    state: AppState,
    query: store::Query,
    params: &HashMap<String, String>,
    shape: WatchShape,
) -> Result<Response, ApiError> {
    let heartbeat = match params.get("heartbeatSeconds") {
        None => DEFAULT_HEARTBEAT,
        Some(text) => match text.parse::<u64>() {
            Ok(seconds @ 1..=300) => Duration::from_secs(seconds),
            _ => return Err(ApiError::bad_request("heartbeatSeconds must be a whole number from 1 to 300")),
        },
    };
    // Heartbeats are BOOKMARK lines for clients that ask for them (allowWatchBookmarks, as
    // Kubernetes' informers and the cloud CLI do, or heartbeatSeconds); others (kubectl get
    // -w, which would print a bookmark as an object) get a bare newline, which JSON stream
    // readers skip. Either way a client that stops reading is found.
    let bookmarks = flag(params, "allowWatchBookmarks")? || params.contains_key("heartbeatSeconds");
    // Like Kubernetes' timeoutSeconds: the watch ends (cleanly) after this long.
    let lifetime = match params.get("timeoutSeconds") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(seconds @ 1..=86_400) => Some(Duration::from_secs(seconds)),
            _ => return Err(ApiError::bad_request("timeoutSeconds must be a whole number from 1 to 86400")),
        },
    };
    let requested = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(text) => match text.parse::<i64>() {
            Ok(revision) if revision > 0 => Some(revision),
            _ => return Err(ApiError::bad_request(format!("resourceVersion {text:?} is not one this server issued"))),
        },
    };
    // A revision from the future would never be delivered: say so instead of a silent stream.
    if let Some(revision) = requested {
        let head = state.store.revision().await?;
        if revision > head {
            return Err(ApiError::bad_request(format!(
                "resourceVersion {revision} is newer than this server's newest revision ({head}); watch from a resourceVersion a list or an object returned"
            )));
        }
    }
    let permit = state.watches.clone().try_acquire_owned().map_err(|_| {
        ApiError::too_many_requests(format!(
            "this server already serves {} watches; close some, or retry shortly",
            state.limits.watches
        ))
    })?;
    // Without a resourceVersion, start with the current objects as ADDED (like kubectl).
    let (initial, from) = match requested {
        Some(revision) => (None, revision),
        None => {
            let list = state.shared_lists.list(state.store.clone(), &query).await?;
            let revision = list.revision;
            (Some(list), revision)
        }
    };
    let kind = query.kind;
    let content_type = shape.content_type;
    let mut changes = state.store.watch_raw(query, from).await?;
    // Writes queued for the client: about WATCH_CHUNK_QUEUE × WATCH_CHUNK bytes at most.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(WATCH_CHUNK_QUEUE);
    let mut shutdown = state.shutdown.clone();
    let send_timeout = state.limits.watch_send_timeout;
    tokio::spawn(async move {
        let _permit = permit;
        // A client that takes nothing for `send_timeout` is not reading: end its watch.
        let deliver = |message: Bytes| {
            let sender = sender.clone();
            let message = match kind {
                Some(kind) if !shape.plain() => shape.reshape(kind, &message),
                _ => message,
            };
            async move { sender.send_timeout(Ok(message), send_timeout).await.is_ok() }
        };
        for chunk in initial.iter().flat_map(|initial| initial.chunks.iter()) {
            if !deliver(chunk.clone()).await {
                return;
            }
        }
        let mut last = from;
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.tick().await;
        let ends = async {
            match lifetime {
                Some(lifetime) => tokio::time::sleep(lifetime).await,
                None => std::future::pending().await,
            }
        };
        let mut ends = std::pin::pin!(ends);
        loop {
            let message = tokio::select! {
                change = changes.next() => {
                    let (batch, end) = gather(change, &mut changes, kind, &mut last);
                    if let Some(end) = end {
                        if !batch.is_empty() && !deliver(Bytes::from(batch)).await {
                            return;
                        }
                        if let StreamEnd::Failed(error) = end {
                            deliver(error).await;
                        }
                        return;
                    }
                    Bytes::from(batch)
                },
                _ = ticker.tick() => if bookmarks { bookmark(kind, last) } else { Bytes::from_static(b"\n") },
                _ = async { shutdown.wait_for(|stopping| *stopping).await.map(|_| ()) } => return,
                _ = sender.closed() => return,
                () = &mut ends => return,
            };
            if !deliver(message).await {
                return;
            }
        }
    });
    let stream =
        futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
        );
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|error| ApiError::bad_request(error.to_string()))
}
