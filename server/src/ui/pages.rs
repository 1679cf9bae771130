//! The console's pages, rendered on the server from the store: the summary (counts per kind,
//! newest objects, recent warnings), a list per kind (the `cloud get -o wide` columns), an
//! object's detail (metadata, conditions, spec, status, events, owner and children) and the
//! activity feed. Each returns the HTML of `main` and the revision it was read at.

use maud::{html, Markup};
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::html::{link, table};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::{AuditQuery, Permission, Principal, Verb};
use crate::store::{self, StoreError};
use minicloud_model::columns::{age, condition, headers, row};

/// How many of the newest objects the summary shows.
const NEWEST: usize = 20;
/// How many events the summary and the activity feed show.
const RECENT_EVENTS: usize = 200;

fn detail_href(object: &Object) -> String {
    let plural = Kind::from_kind_name(&object.kind).map_or("", Kind::plural);
    format!("/ui/namespaces/{}/{plural}/{}", object.namespace(), object.metadata.name)
}

fn ready_cell(object: &Object) -> Markup {
    match condition(object, "Ready").and_then(|ready| ready.get("status")).and_then(Value::as_str) {
        Some("True") => html! { span class="ok" { "True" } },
        Some(other) => html! { span class="bad" { (other) } },
        None => html! { span class="unknown" { "-" } },
    }
}

/// Every object the page may show: of every namespace, or of the token's one (`scope`).
async fn everything(state: &AppState, scope: Option<&str>) -> Result<store::ObjectList, StoreError> {
    let query = store::Query { kind: None, namespace: scope.map(str::to_owned), selector: Default::default() };
    let mut list = state.store.list(&query).await?;
    for object in &mut list.items {
        minicloud_model::redact::redact_object(object);
    }
    Ok(list)
}

/// `/ui`: counts per kind, the newest objects and the recent warnings (of the token's namespace
/// when it has one).
pub async fn summary(state: &AppState, scope: Option<&str>) -> Result<(Markup, i64), StoreError> {
    let list = everything(state, scope).await?;
    let mut newest: Vec<&Object> = list.items.iter().collect();
    newest.sort_by_key(|object| std::cmp::Reverse(object.metadata.creation_timestamp));
    let newest: Vec<Vec<Markup>> = newest
        .iter()
        .take(NEWEST)
        .map(|object| {
            vec![
                html! { (object.kind) },
                link(&detail_href(object), &object.metadata.name),
                html! { (object.namespace()) },
                ready_cell(object),
                html! { (age(object.metadata.creation_timestamp)) },
            ]
        })
        .collect();
    let warnings = recent_events(state, true, 10, scope).await?;
    // The machine's totals: not for a token of one namespace.
    let usage = state.usage.as_ref().filter(|_| scope.is_none()).map(|usage| usage.totals());
    let main = html! {
        h1 { "Summary" }
        @if let Some((instances, cores, memory)) = usage {
            p id="usage" {
                (instances) " Instance(s) use " (format!("{cores:.2}")) " CPU core(s) and "
                (format!("{:.1}", memory as f64 / (1024.0 * 1024.0))) " MiB of memory now."
            }
        }
        section { h2 { "Objects" } (cards(&list.items)) }
        section { h2 { "Newest" } (table("newest", &["KIND", "NAME", "NAMESPACE", "READY", "AGE"], &newest)) }
        section { h2 { "Recent warnings" } (warnings) }
    };
    Ok((main, list.revision))
}

/// Kinds whose objects people write (the others are written by minicloud itself).
const WRITTEN_BY_PEOPLE: [Kind; 8] = [
    Kind::Instance,
    Kind::ScalingGroup,
    Kind::LoadBalancer,
    Kind::Route,
    Kind::ManagedDatabase,
    Kind::Stack,
    Kind::Certificate,
    Kind::Policy,
];

/// How many objects not Ready a card names.
const NAMED_NOT_READY: usize = 5;

/// The summary's cards, one per kind: how many objects, the ones not Ready called out by name
/// (links), and quick links to the list and to a new one.
fn cards(objects: &[Object]) -> Markup {
    html! {
        div id="counts" class="cards" {
            @for kind in Kind::ALL {
                @let of_kind: Vec<&Object> = objects.iter().filter(|object| object.kind == kind.as_str()).collect();
                @let not_ready: Vec<&&Object> = of_kind.iter().filter(|object| !is_ready(object)).collect();
                article class="card" aria-label=(kind.as_str()) {
                    h3 { a href={ "/ui/" (kind.plural()) } { (kind.as_str()) } }
                    p class="figure" { span class="count" data-kind=(kind.as_str()) { (of_kind.len()) } }
                    @if !kind.reports_conditions() || of_kind.is_empty() {
                        p class="quiet" { @if of_kind.is_empty() { "none yet" } @else { "data, no readiness" } }
                    } @else if not_ready.is_empty() {
                        p class="ok" { "all Ready" }
                    } @else {
                        p class="bad" {
                            (not_ready.len()) " not Ready: "
                            @for (index, object) in not_ready.iter().take(NAMED_NOT_READY).enumerate() {
                                @if index > 0 { ", " }
                                a href=(detail_href(object)) { (object.metadata.name) }
                            }
                            @if not_ready.len() > NAMED_NOT_READY { ", …" }
                        }
                    }
                    @if WRITTEN_BY_PEOPLE.contains(&kind) {
                        p class="quick" {
                            a href={ "/ui/" (kind.plural()) "/new" } { "New " (kind.as_str()) "…" }
                            @if kind == Kind::Stack { " · " a href="/ui/templates" { "From a template…" } }
                        }
                    }
                }
            }
        }
    }
}

/// The summary's figures as JSON (`/ui/api/summary`), of the token's namespace when it has one.
pub async fn summary_data(state: &AppState, scope: Option<&str>) -> Result<Value, StoreError> {
    let list = everything(state, scope).await?;
    let mut kinds = serde_json::Map::new();
    for kind in Kind::ALL {
        let objects: Vec<&Object> = list.items.iter().filter(|object| object.kind == kind.as_str()).collect();
        let ready = objects.iter().filter(|object| is_ready(object)).count();
        kinds.insert(kind.as_str().to_owned(), serde_json::json!({"total": objects.len(), "ready": ready}));
    }
    let (instances, cores, memory) =
        state.usage.as_ref().filter(|_| scope.is_none()).map_or((0, 0.0, 0), |usage| usage.totals());
    let warnings = state
        .store
        .events(scope, None)
        .await?
        .iter()
        .filter(|event| matches!(event.event_type, store::EventType::Warning))
        .count();
    Ok(serde_json::json!({
        "revision": list.revision,
        "objects": kinds,
        "usage": {"instances": instances, "cores": cores, "memoryBytes": memory},
        "warnings": warnings,
    }))
}

fn is_ready(object: &Object) -> bool {
    condition(object, "Ready").and_then(|ready| ready.get("status")) == Some(&Value::from("True"))
}

/// `/ui/{plural}`: every object of a kind, in every namespace (or the token's one).
pub async fn list(state: &AppState, kind: Kind, scope: Option<&str>) -> Result<(Markup, i64), StoreError> {
    let query = store::Query { kind: Some(kind), namespace: scope.map(str::to_owned), selector: Default::default() };
    let list = state.store.list(&query).await?;
    let mut columns = vec!["NAMESPACE"];
    columns.extend(headers(kind, true));
    let rows: Vec<Vec<Markup>> = list
        .items
        .into_iter()
        .map(|mut object| {
            minicloud_model::redact::redact_object(&mut object);
            let mut cells: Vec<Markup> = row(kind, &object, true).iter().map(|cell| html! { (cell) }).collect();
            cells[0] = link(&detail_href(&object), &object.metadata.name);
            cells.insert(0, html! { (object.namespace()) });
            cells
        })
        .collect();
    let main = html! {
        h1 { (kind.plural()) }
        @if WRITTEN_BY_PEOPLE.contains(&kind) {
            p { a id="new" href={ "/ui/" (kind.plural()) "/new" } { "New " (kind.as_str()) "…" } }
        }
        (table("objects", &columns, &rows))
    };
    Ok((main, list.revision))
}

/// The namespaces objects are in, and `default` (the picker's choices).
pub async fn namespaces(state: &AppState) -> Result<Vec<String>, StoreError> {
    let list = everything(state, None).await?;
    let mut names: std::collections::BTreeSet<String> =
        list.items.iter().map(|object| object.namespace().to_owned()).collect();
    names.insert(minicloud_crds::DEFAULT_NAMESPACE.to_owned());
    Ok(names.into_iter().collect())
}

/// `/ui/namespaces/{ns}/{plural}/{name}`: one object, with the actions `viewer` may take on it
/// and the note of the one just taken (`?done=`).
pub async fn detail(
    state: &AppState,
    key: &minicloud_crds::ObjectKey,
    viewer: &super::actions::Viewer,
    params: &std::collections::HashMap<String, String>,
) -> Result<(Markup, i64), StoreError> {
    let revision = state.store.revision().await?;
    let mut object = state.store.get(key).await?;
    minicloud_model::redact::redact_object(&mut object);
    let meta = &object.metadata;
    let mut facts = vec![
        vec![html! { "Kind" }, html! { (object.kind) }],
        vec![html! { "Namespace" }, html! { (object.namespace()) }],
        vec![html! { "Created" }, html! { (age(meta.creation_timestamp)) " ago" }],
        vec![html! { "Generation" }, html! { (meta.generation.unwrap_or(0)) }],
        vec![html! { "Ready" }, ready_cell(&object)],
    ];
    let labels = html! {
        @for (index, (key, value)) in meta.labels.iter().enumerate() {
            @if index > 0 { br; }
            (key) "=" (value)
        }
    };
    facts.push(vec![html! { "Labels" }, labels]);
    // Where it answers (a load balancer's listeners): web addresses are links.
    let endpoints: Vec<(&String, &str)> = object
        .status
        .get("endpoints")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, address)| Some((name, address.as_str()?)))
        .collect();
    if !endpoints.is_empty() {
        let cell = html! {
            @for (index, (name, address)) in endpoints.iter().enumerate() {
                @if index > 0 { br; }
                (name) ": " (super::html::text_or_link(address))
            }
        };
        facts.push(vec![html! { "Endpoints" }, cell]);
    }
    for owner in &meta.owner_references {
        let plural = Kind::from_kind_name(&owner.kind).map_or("", Kind::plural);
        let href = format!("/ui/namespaces/{}/{plural}/{}", object.namespace(), owner.name);
        facts.push(vec![
            html! { "Owned by" },
            link(&href, &format!("{}/{}", owner.kind.to_ascii_lowercase(), owner.name)),
        ]);
    }
    let uid = meta.uid.clone().unwrap_or_default();
    let everything_here =
        store::Query { kind: None, namespace: Some(object.namespace().to_owned()), selector: Default::default() };
    let siblings = state.store.list(&everything_here).await?;
    let children: Vec<Vec<Markup>> = siblings
        .items
        .iter()
        .filter(|child| !uid.is_empty() && child.metadata.owner_references.iter().any(|owner| owner.uid == uid))
        .map(|child| vec![html! { (child.kind) }, link(&detail_href(child), &child.metadata.name), ready_cell(child)])
        .collect();
    let conditions: Vec<Vec<Markup>> = object
        .status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|condition| {
            let text = |key: &str| html! { (condition.get(key).and_then(Value::as_str).unwrap_or("")) };
            vec![text("type"), text("status"), text("reason"), text("message")]
        })
        .collect();
    let charts = match (&state.usage, Kind::from_kind_name(&object.kind)) {
        (Some(usage), Some(Kind::Instance)) => Some(super::chart::charts(
            &usage.points(&format!("{}/{}", object.namespace(), meta.name)),
            state.usage_interval,
        )),
        (Some(usage), Some(Kind::ScalingGroup)) => {
            let members: Vec<Vec<crate::usage::Point>> = siblings
                .items
                .iter()
                .filter(|child| child.metadata.owner_references.iter().any(|owner| owner.uid == uid))
                .map(|child| usage.points(&format!("{}/{}", child.namespace(), child.metadata.name)))
                .collect();
            Some(super::chart::charts(&crate::usage::sum(&members, state.usage_interval), state.usage_interval))
        }
        (Some(usage), Some(Kind::LoadBalancer)) => Some(super::chart::traffic(
            &usage.requests(&format!("{}/{}", object.namespace(), meta.name)),
            state.usage_interval,
        )),
        _ => None,
    };
    // Tells the script that the Instance's container exists, so its output can be read.
    let has_container = object.status.get("containerId").and_then(Value::as_str).is_some();
    let all_events = state.store.events(Some(object.namespace()), Some(key)).await?;
    let events: Vec<Vec<Markup>> = all_events.iter().rev().take(50).map(|event| event_row(event, false)).collect();
    let panels = super::panels::for_object(&object, &all_events, &siblings.items);
    let as_yaml = |value: &Value| match value {
        Value::Null => "{}\n".to_owned(),
        value => minicloud_model::yaml_out::yaml(value, 0),
    };
    let notice = Kind::from_kind_name(&object.kind)
        .map(|kind| super::actions::notice(kind, &meta.name, params))
        .unwrap_or_default();
    let main = html! {
        h1 { (object.kind.to_ascii_lowercase()) "/" (meta.name) }
        (notice)
        @if object.kind != Kind::Secret.as_str() {
            p { a id="edit" href=(format!("{}/edit", detail_href(&object))) { "Edit YAML" } }
        }
        (super::actions::section(viewer, &object))
        (table("facts", &["", ""], &facts))
        @if has_container { span id="has-container" hidden {} }
        h2 { "Conditions" }
        (table("conditions", &["TYPE", "STATUS", "REASON", "MESSAGE"], &conditions))
        @if let Some(charts) = charts { (charts) }
        (panels)
        h2 { "Events" }
        (table("events", &["AGE", "TYPE", "REASON", "MESSAGE"], &events))
        h2 { "Children" }
        (table("children", &["KIND", "NAME", "READY"], &children))
        h2 { "Spec" }
        pre id="spec" { (as_yaml(&object.spec)) }
        h2 { "Status" }
        pre id="status" { (as_yaml(&object.status)) }
    };
    Ok((main, revision))
}

fn event_row(event: &store::Event, with_object: bool) -> Vec<Markup> {
    let event_type = serde_json::to_value(event.event_type).ok().and_then(|t| t.as_str().map(str::to_owned));
    let event_type = event_type.unwrap_or_default();
    let mut cells = vec![
        html! { (age(Some(event.last_timestamp))) },
        html! { span class=(if event_type == "Warning" { "bad" } else { "ok" }) { (event_type) } },
        html! { (event.reason) },
    ];
    if with_object {
        let plural = Kind::from_kind_name(&event.kind).map_or("", Kind::plural);
        let href = format!("/ui/namespaces/{}/{plural}/{}", event.namespace, event.name);
        cells.push(link(&href, &format!("{}/{}", event.kind.to_ascii_lowercase(), event.name)));
    }
    cells.push(html! { (event.message) });
    cells
}

/// The newest events (warnings only when asked), newest first, as a table.
async fn recent_events(
    state: &AppState,
    warnings_only: bool,
    count: usize,
    scope: Option<&str>,
) -> Result<Markup, StoreError> {
    let filter = ActivityFilter { warnings_only, ..ActivityFilter::default() };
    filtered_events(state, &filter, count, scope).await
}

/// What the activity feed shows: `type=Warning`, `kind=Instance`, `namespace=shop` and `q=`
/// (text in the reason, object name or message), all optional.
#[derive(Debug, Default)]
pub struct ActivityFilter {
    pub warnings_only: bool,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub text: Option<String>,
}

impl ActivityFilter {
    /// From the page's query parameters (empty ones mean "any").
    pub fn from_params(params: &std::collections::HashMap<String, String>) -> ActivityFilter {
        let given =
            |name: &str| params.get(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        ActivityFilter {
            warnings_only: given("type").is_some_and(|kind| kind == "Warning"),
            kind: given("kind"),
            namespace: given("namespace"),
            text: given("q"),
        }
    }

    fn admits(&self, event: &store::Event) -> bool {
        (!self.warnings_only || matches!(event.event_type, store::EventType::Warning))
            && self.kind.as_deref().is_none_or(|kind| event.kind == kind)
            && self.namespace.as_deref().is_none_or(|namespace| event.namespace == namespace)
            && self.text.as_deref().is_none_or(|text| {
                let text = text.to_lowercase();
                [&event.reason, &event.name, &event.message].iter().any(|field| field.to_lowercase().contains(&text))
            })
    }

    /// The filter form, showing the current choices.
    fn form(&self) -> Markup {
        html! {
            form id="filter" method="get" action="/ui/events" {
                label { "Kind " select name="kind" {
                    option value="" { "any kind" }
                    @for kind in Kind::ALL {
                        option selected[self.kind.as_deref() == Some(kind.as_str())] { (kind.as_str()) }
                    }
                } } " "
                label { "Namespace " input name="namespace" placeholder="any" value=(self.namespace.as_deref().unwrap_or("")); } " "
                label { "Text " input name="q" placeholder="any" value=(self.text.as_deref().unwrap_or("")); } " "
                label { input type="checkbox" name="type" value="Warning" checked[self.warnings_only]; " warnings only" } " "
                button { "Filter" }
            }
        }
    }
}

async fn filtered_events(
    state: &AppState,
    filter: &ActivityFilter,
    count: usize,
    scope: Option<&str>,
) -> Result<Markup, StoreError> {
    let events = state.store.events(scope, None).await?;
    let rows: Vec<Vec<Markup>> = events
        .iter()
        .rev()
        .filter(|event| filter.admits(event))
        .take(count)
        .map(|event| event_row(event, true))
        .collect();
    Ok(table("activity", &["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"], &rows))
}

/// `/ui/events`: the activity feed across namespaces, newest first, filtered; for an
/// administrator also the newest requests of the audit log (changes and refusals).
pub async fn activity(
    state: &AppState,
    filter: &ActivityFilter,
    principal: &Principal,
) -> Result<(Markup, i64), ApiError> {
    let revision = state.store.revision().await?;
    let events = filtered_events(state, filter, RECENT_EVENTS, principal.namespace.as_deref()).await?;
    let requests = audit_section(state, filter, principal).await?;
    let main = html! { h1 { "Activity" } (filter.form()) (events) (requests) };
    Ok((main, revision))
}

/// Audit entries shown on the activity page.
const RECENT_REQUESTS: usize = 50;

/// The newest audit entries the filter admits (namespace and text; a kind filter shows those
/// of that kind's plural), or why they are not shown.
async fn audit_section(state: &AppState, filter: &ActivityFilter, principal: &Principal) -> Result<Markup, ApiError> {
    let Some(access) = &state.access else { return Ok(html! {}) };
    if !principal.allows(&Permission::new(Verb::List, "audit", principal.namespace.as_deref())) {
        return Ok(html! { h2 { "Requests (audit log)" } p class="none" { "The audit log needs role admin." } });
    }
    // Read more than shown: the filter drops some.
    let query = AuditQuery { since: None, namespace: principal.namespace.clone(), limit: RECENT_REQUESTS * 20 };
    let entries = access.audit(&query).await?;
    let plural = filter.kind.as_deref().and_then(Kind::from_kind_name).map(Kind::plural);
    let rows: Vec<Vec<Markup>> = entries
        .iter()
        .rev()
        .map(|record| &record.entry)
        .filter(|entry| !filter.warnings_only || entry.code >= 400)
        .filter(|entry| plural.is_none_or(|plural| entry.resource == plural))
        .filter(|entry| {
            filter.namespace.as_deref().is_none_or(|namespace| entry.namespace.as_deref() == Some(namespace))
        })
        .filter(|entry| {
            filter.text.as_deref().is_none_or(|text| {
                let text = text.to_lowercase();
                [&entry.principal, &entry.verb, &entry.resource, &entry.message, &entry.request_id]
                    .iter()
                    .any(|field| field.to_lowercase().contains(&text))
                    || entry.name.as_deref().is_some_and(|name| name.to_lowercase().contains(&text))
            })
        })
        .take(RECENT_REQUESTS)
        .map(|entry| {
            let mut object = entry.resource.clone();
            if let Some(name) = &entry.name {
                object = format!("{object}/{name}");
            }
            if let Some(namespace) = &entry.namespace {
                object = format!("{object} -n {namespace}");
            }
            vec![
                html! { (age(Some(entry.time))) },
                html! { (entry.principal) },
                html! { (entry.verb) },
                html! { (object) },
                html! { span class=[(entry.code >= 400).then_some("bad")] { (entry.code) } },
                html! { span title={ "request " (entry.request_id) } { (entry.message) } },
            ]
        })
        .collect();
    Ok(html! {
        h2 { "Requests (audit log)" }
        (table("requests", &["AGE", "WHO", "VERB", "OBJECT", "CODE", "MESSAGE"], &rows))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, namespace: &str, reason: &str, warning: bool) -> store::Event {
        serde_json::from_value(serde_json::json!({
            "id": 1, "kind": kind, "namespace": namespace, "name": "web", "uid": "u",
            "type": if warning { "Warning" } else { "Normal" }, "reason": reason, "message": "container failed",
            "count": 1, "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn activity_filters_combine() {
        let params = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
        };
        let everything = ActivityFilter::from_params(&params(&[("kind", ""), ("q", " ")]));
        assert!(everything.admits(&event("Instance", "a", "Started", false)));
        let filter =
            ActivityFilter::from_params(&params(&[("type", "Warning"), ("kind", "Instance"), ("q", "FAILED")]));
        assert!(filter.admits(&event("Instance", "a", "Crashed", true)));
        assert!(!filter.admits(&event("Instance", "a", "Crashed", false)), "not a warning");
        assert!(!filter.admits(&event("LoadBalancer", "a", "Crashed", true)), "another kind");
        let namespaced = ActivityFilter::from_params(&params(&[("namespace", "shop")]));
        assert!(!namespaced.admits(&event("Instance", "a", "Started", false)));
        assert!(namespaced.form().into_string().contains("value=\"shop\""));
    }
}
