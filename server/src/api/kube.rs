//! Enough of the Kubernetes API for kubectl and Kubernetes client libraries: discovery
//! (`/api`, `/api/v1`, `/apis`, `/apis/minicloud.dev`, `/apis/minicloud.dev/v1`), Namespaces
//! (implicit in minicloud: the ones objects are in, plus `default`), and `Table` answers
//! (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) carrying the columns `cloud get`
//! prints, so that `kubectl get` shows the same.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use minicloud_crds::{Kind, Object, API_GROUP, API_VERSION};
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::store;

/// The Kubernetes version minicloud's API answers as (`/version`'s major/minor/gitVersion).
pub const KUBERNETES_MAJOR: &str = "1";
pub const KUBERNETES_MINOR: &str = "30";

/// `/openapi/v3`: where the group's OpenAPI v3 document is (kubectl explain, and kubectl's
/// check that the server validates fields itself). The hash changes with the document.
pub async fn openapi_v3_root() -> Json<Value> {
    use sha2::{Digest, Sha256};
    static HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let digest = Sha256::digest(minicloud_model::openapi::document().to_string().as_bytes());
        digest.iter().take(16).map(|byte| format!("{byte:02X}")).collect()
    });
    Json(json!({"paths": {
        format!("apis/{API_VERSION}"): {"serverRelativeURL": format!("/openapi/v3/apis/{API_VERSION}?hash={}", *HASH)},
    }}))
}

/// `/openapi/v3/apis/minicloud.dev/v1`: the API's OpenAPI document (the one at `/openapi.json`),
/// with `type: [T, "null"]` written as `type: T, nullable: true`, as Kubernetes' OpenAPI
/// readers (kubectl explain) expect one type per schema.
pub async fn openapi_v3_group() -> Json<Value> {
    let mut document = minicloud_model::openapi::document();
    single_types(&mut document);
    Json(document)
}

fn single_types(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get("type") {
                let named: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
                let nullable = named.len() < types.len();
                if named.len() == 1 {
                    map.insert("type".into(), named[0].clone());
                    if nullable {
                        map.insert("nullable".into(), Value::Bool(true));
                    }
                }
            }
            map.values_mut().for_each(single_types);
        }
        Value::Array(items) => items.iter_mut().for_each(single_types),
        _ => {}
    }
}

/// The media type of aggregated discovery (one answer for every group, kubectl ≥ 1.26).
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client accepts aggregated discovery (`apidiscovery.k8s.io/v2`).
fn wants_aggregated(headers: &HeaderMap) -> bool {
    accepted_types(headers).any(|parameters| {
        parameters.contains(&"g=apidiscovery.k8s.io")
            && parameters.contains(&"v=v2")
            && parameters.contains(&"as=APIGroupDiscoveryList")
    })
}

/// Each media type the request accepts, as its `;`-separated parts.
fn accepted_types(headers: &HeaderMap) -> impl Iterator<Item = Vec<&str>> {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|accepted| accepted.split(';').map(str::trim).collect())
}

/// One group's resources (legacy discovery entries, `kinds/status` ones included) in the
/// aggregated format.
fn aggregated_group(group: &str, resources: &[Value]) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .filter(|resource| !resource["name"].as_str().unwrap_or("").contains('/'))
        .map(|resource| {
            let name = resource["name"].as_str().unwrap_or("");
            let kind = json!({"group": group, "version": "v1", "kind": resource["kind"]});
            let subresources: Vec<Value> = resources
                .iter()
                .filter_map(|other| {
                    let sub = other["name"].as_str()?.strip_prefix(name)?.strip_prefix('/')?;
                    let response_kind = match other.get("group") {
                        Some(group) => json!({"group": group, "version": other["version"], "kind": other["kind"]}),
                        None => kind.clone(),
                    };
                    Some(json!({"subresource": sub, "responseKind": response_kind, "verbs": other["verbs"]}))
                })
                .collect();
            let namespaced = resource["namespaced"].as_bool().unwrap_or(true);
            json!({
                "resource": name,
                "responseKind": kind,
                "scope": if namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": resource["singularName"],
                "verbs": resource["verbs"],
                "shortNames": resource.get("shortNames").cloned().unwrap_or(json!([])),
                "categories": resource.get("categories").cloned().unwrap_or(json!([])),
                "subresources": subresources,
            })
        })
        .collect();
    json!({"metadata": {"name": group}, "versions": [{"version": "v1", "resources": entries, "freshness": "Current"}]})
}

fn aggregated_answer(groups: Vec<Value>) -> Response {
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": groups,
    });
    ([(axum::http::header::CONTENT_TYPE, AGGREGATED)], Json(body)).into_response()
}

/// `/api`: the core group's versions (or, aggregated, its resources).
pub async fn core_versions(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated_answer(vec![aggregated_group("", &core_resource_entries())]);
    }
    Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})).into_response()
}

/// `/api/v1`: the core resources minicloud serves (Namespaces and Events).
pub async fn core_resources() -> Json<Value> {
    Json(json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": core_resource_entries()}))
}

fn core_resource_entries() -> Vec<Value> {
    vec![
        json!({
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": false,
            "kind": "Namespace",
            "verbs": ["get", "list"],
            "shortNames": ["ns"],
        }),
        json!({
            "name": "events",
            "singularName": "event",
            "namespaced": true,
            "kind": "Event",
            "verbs": ["list"],
            "shortNames": ["ev"],
        }),
    ]
}

/// `/api/v1/namespaces/{ns}/events`: minicloud's events as core `Event`s, filtered by a
/// `fieldSelector` on `involvedObject.*`, `type` and `reason` (what `kubectl describe` and
/// `kubectl get events --field-selector` send).
pub async fn core_events(
    State(state): State<AppState>,
    Path(namespace): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    super::request::check_name("namespace", &namespace)?;
    events_answer(&state, Some(&namespace), &params, &headers).await
}

/// `/api/v1/events`: every namespace.
pub async fn core_events_all(
    State(state): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    events_answer(&state, None, &params, &headers).await
}

async fn events_answer(
    state: &AppState,
    namespace: Option<&str>,
    params: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Json<Value>, ApiError> {
    if params.get("watch").is_some_and(|watch| watch == "true" || watch == "1") {
        return Err(ApiError::method_not_allowed("events cannot be watched through the core API; use cloud events -w"));
    }
    let wanted = field_selector(params.get("fieldSelector").map_or("", String::as_str))?;
    let events: Vec<Value> = state
        .store
        .events(namespace, None)
        .await?
        .iter()
        .map(core_event)
        .filter(|event| wanted.iter().all(|(path, value)| event.pointer(path).and_then(Value::as_str) == Some(value)))
        .collect();
    if wants_table(headers) {
        let rows: Vec<Value> = events
            .iter()
            .map(|event| {
                let last = event["lastTimestamp"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                let object = format!(
                    "{}/{}",
                    event["involvedObject"]["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
                    event["involvedObject"]["name"].as_str().unwrap_or("")
                );
                json!({
                    "cells": [
                        minicloud_model::columns::age(last.map(|t| t.with_timezone(&chrono::Utc))),
                        event["type"], event["reason"], object, event["message"],
                    ],
                    "object": partial_metadata(event),
                })
            })
            .collect();
        return Ok(Json(json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {},
            "columnDefinitions": [
                column("Last Seen", "", 0), column("Type", "", 0), column("Reason", "", 0),
                column("Object", "", 0), column("Message", "", 0),
            ],
            "rows": rows,
        })));
    }
    Ok(Json(json!({"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": events})))
}

/// `involvedObject.name=web,type=Warning` as (JSON pointer, value) pairs.
fn field_selector(text: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut wanted = Vec::new();
    for requirement in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let Some((field, value)) = requirement.split_once("==").or_else(|| requirement.split_once('=')) else {
            return Err(ApiError::bad_request(format!(
                "fieldSelector {requirement:?}: write field=value (only equality is supported)"
            )));
        };
        let path = match field.trim() {
            "involvedObject.name" => "/involvedObject/name",
            "involvedObject.namespace" => "/involvedObject/namespace",
            "involvedObject.kind" => "/involvedObject/kind",
            "involvedObject.uid" => "/involvedObject/uid",
            "involvedObject.apiVersion" => "/involvedObject/apiVersion",
            "type" => "/type",
            "reason" => "/reason",
            "metadata.namespace" => "/metadata/namespace",
            other => {
                return Err(ApiError::bad_request(format!(
                    "fieldSelector: {other:?} is not a field events can be selected by (involvedObject.*, type, reason)"
                )))
            }
        };
        wanted.push((path.to_owned(), value.trim().to_owned()));
    }
    Ok(wanted)
}

fn core_event(event: &crate::store::Event) -> Value {
    let event_type = serde_json::to_value(event.event_type).unwrap_or(Value::Null);
    json!({
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": {
            "name": format!("{}.{}", event.name, event.id),
            "namespace": event.namespace,
            "creationTimestamp": event.first_timestamp,
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": event.kind,
            "namespace": event.namespace,
            "name": event.name,
            "uid": event.uid,
        },
        "type": event_type,
        "reason": event.reason,
        "message": event.message,
        "count": event.count,
        "firstTimestamp": event.first_timestamp,
        "lastTimestamp": event.last_timestamp,
        "source": {"component": "minicloud"},
        "reportingComponent": "minicloud",
    })
}

fn group_version() -> Value {
    json!({"groupVersion": API_VERSION, "version": "v1"})
}

fn group_document() -> Value {
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": API_GROUP,
        "versions": [group_version()],
        "preferredVersion": group_version(),
    })
}

/// `/apis`: the API groups (minicloud.dev), or, aggregated, their resources too.
pub async fn groups(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated_answer(vec![aggregated_group(API_GROUP, &group_resource_entries())]);
    }
    let mut group = group_document();
    if let Some(map) = group.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})).into_response()
}

/// `/apis/minicloud.dev`: the group.
pub async fn group() -> Json<Value> {
    Json(group_document())
}

/// `/apis/minicloud.dev/v1`: every kind with its plural, singular and short names, verbs and
/// categories (`kubectl api-resources`, `kubectl get all`).
pub async fn group_resources() -> Json<Value> {
    let resources = group_resource_entries();
    Json(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION, "resources": resources}))
}

fn group_resource_entries() -> Vec<Value> {
    let mut resources = Vec::new();
    for kind in Kind::ALL {
        let categories: Vec<&str> =
            if kind.reports_conditions() { vec!["all", "minicloud"] } else { vec!["minicloud"] };
        resources.push(json!({
            "name": kind.plural(),
            "singularName": kind.as_str().to_ascii_lowercase(),
            "namespaced": true,
            "kind": kind.as_str(),
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": kind.short_names(),
            "categories": categories,
        }));
        resources.push(json!({
            "name": format!("{}/status", kind.plural()),
            "singularName": "",
            "namespaced": true,
            "kind": kind.as_str(),
            "verbs": ["update"],
        }));
        if kind == Kind::ScalingGroup {
            resources.push(json!({
                "name": format!("{}/scale", kind.plural()),
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    resources
}

fn namespace_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {},
        "status": {"phase": "Active"},
    })
}

/// The namespaces in use: those objects are in, and `default`.
async fn namespaces_in_use(state: &AppState) -> Result<(BTreeSet<String>, i64), ApiError> {
    let everything = store::Query { kind: None, namespace: None, selector: Default::default() };
    let list = state.store.list(&everything).await?;
    let mut names: BTreeSet<String> = list.items.iter().map(|object| object.namespace().to_owned()).collect();
    names.insert(minicloud_crds::DEFAULT_NAMESPACE.to_owned());
    Ok((names, list.revision))
}

/// `/api/v1/namespaces`.
pub async fn list_namespaces(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if params.get("watch").is_some_and(|watch| watch == "true" || watch == "1") {
        return Err(ApiError::method_not_allowed(
            "namespaces cannot be watched: minicloud's namespaces are implicit (the ones objects are in)",
        ));
    }
    let (names, revision) = namespaces_in_use(&state).await?;
    if wants_table(&headers) {
        let rows: Vec<Value> = names
            .iter()
            .map(|name| json!({"cells": [name, "Active"], "object": partial_metadata(&namespace_object(name))}))
            .collect();
        return Ok(Json(json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": revision.to_string()},
            "columnDefinitions": [column("Name", "name", 0), column("Status", "", 0)],
            "rows": rows,
        })));
    }
    let items: Vec<Value> = names.iter().map(|name| namespace_object(name)).collect();
    Ok(Json(json!({
        "kind": "NamespaceList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    })))
}

/// `/api/v1/namespaces/{name}`: any valid name exists (namespaces are implicit).
pub async fn get_namespace(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    super::request::check_name("namespace", &name)?;
    Ok(Json(namespace_object(&name)))
}

/// Whether the client asks for a `Table` (as `kubectl get` does).
pub fn wants_table(headers: &HeaderMap) -> bool {
    accepted_types(headers).any(|parameters| parameters.contains(&"as=Table") && parameters.contains(&"g=meta.k8s.io"))
}

fn column(name: &str, format: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": "", "priority": priority})
}

/// What a Table row carries besides its cells (`includeObject`: `None`, `Metadata` (the
/// default) or `Object`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    Nothing,
    Metadata,
    Whole,
}

impl IncludeObject {
    /// From the request's `includeObject` parameter.
    pub fn from_params(params: &std::collections::HashMap<String, String>) -> Result<IncludeObject, ApiError> {
        match params.get("includeObject").map(String::as_str) {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::Nothing),
            Some("Object") => Ok(IncludeObject::Whole),
            Some(other) => {
                Err(ApiError::bad_request(format!("includeObject {other:?} is not one of None, Metadata, Object")))
            }
        }
    }
}

fn partial_metadata(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

/// `objects` (already as the API shows them) as a Table with `cloud get -o wide`'s columns; the
/// wide ones have priority 1 (`kubectl get -o wide` shows them).
pub fn table(kind: Kind, objects: &[Object], resource_version: Option<String>, include: IncludeObject) -> Value {
    let normal = minicloud_model::columns::headers(kind, false).len();
    let columns: Vec<Value> = minicloud_model::columns::headers(kind, true)
        .iter()
        .enumerate()
        .map(|(index, header)| {
            let name = title_case(header);
            let format = if index == 0 { "name" } else { "" };
            column(&name, format, u8::from(index >= normal))
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells = minicloud_model::columns::row(kind, object, true);
            let mut row = json!({"cells": cells});
            let whole = serde_json::to_value(object).unwrap_or(Value::Null);
            match include {
                IncludeObject::Nothing => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(&whole),
                IncludeObject::Whole => row["object"] = whole,
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if let Some(version) = resource_version {
        metadata["resourceVersion"] = json!(version);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// `LAST BACKUP` → `Last Backup`: kubectl upper-cases headers itself.
fn title_case(header: &str) -> String {
    header
        .split(' ')
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            let mut characters = lower.chars();
            match characters.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + characters.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_requests_are_recognised_as_kubectl_sends_them() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wants_table(&headers));
        headers.insert(axum::http::header::ACCEPT, "application/json".parse().unwrap());
        assert!(!wants_table(&headers));
    }

    #[test]
    fn aggregated_discovery_is_recognised_and_shaped_as_kubectl_reads_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
                .parse()
                .unwrap(),
        );
        assert!(!wants_aggregated(&headers), "v2beta1 only is not v2");
        headers.insert(
            axum::http::header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json".parse().unwrap(),
        );
        assert!(wants_aggregated(&headers));
        let group = aggregated_group(API_GROUP, &group_resource_entries());
        let resources = group["versions"][0]["resources"].as_array().unwrap();
        assert_eq!(resources.len(), Kind::ALL.len(), "status entries become subresources");
        let instances = resources.iter().find(|r| r["resource"] == "instances").unwrap();
        assert_eq!(instances["responseKind"]["kind"], "Instance");
        assert_eq!(instances["scope"], "Namespaced");
        assert_eq!(instances["shortNames"], json!(["inst"]));
        assert_eq!(instances["subresources"][0]["subresource"], "status");
        let core = aggregated_group("", &core_resource_entries());
        assert_eq!(core["versions"][0]["resources"][0]["scope"], "Cluster");
    }

    #[test]
    fn tables_carry_the_cloud_get_columns() {
        let object: Object = serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "Instance",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"image": "minicloud/web:local"},
        }))
        .unwrap();
        let table = table(Kind::Instance, &[object], Some("7".into()), IncludeObject::Metadata);
        let names: Vec<&str> =
            table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Ready", "Status", "Restarts", "Ports", "Age", "Image", "Container"]);
        assert_eq!(table["columnDefinitions"][6]["priority"], 1);
        assert_eq!(table["rows"][0]["cells"][0], "web");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(table["metadata"]["resourceVersion"], "7");
    }
}
