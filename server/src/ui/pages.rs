//! The console's pages, rendered on the server from the store: the summary (counts per kind,
//! newest objects, recent warnings), a list per kind (the `cloud get -o wide` columns), an
//! object's detail (metadata, conditions, spec, status, events, owner and children) and the
//! activity feed. Each returns the HTML of `main` and the revision it was read at.

use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::html::{escape, link, table};
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

fn ready_cell(object: &Object) -> String {
    match condition(object, "Ready").and_then(|ready| ready.get("status")).and_then(Value::as_str) {
        Some("True") => "<span class=\"ok\">True</span>".into(),
        Some(other) => format!("<span class=\"bad\">{}</span>", escape(other)),
        None => "<span class=\"unknown\">-</span>".into(),
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
pub async fn summary(state: &AppState, scope: Option<&str>) -> Result<(String, i64), StoreError> {
    let list = everything(state, scope).await?;
    let mut counts = Vec::new();
    for kind in Kind::ALL {
        let objects: Vec<&Object> = list.items.iter().filter(|object| object.kind == kind.as_str()).collect();
        let ready = objects.iter().filter(|object| is_ready(object)).count();
        let summary = if kind.reports_conditions() {
            format!("{ready} ready, {} not", objects.len() - ready)
        } else {
            "-".into()
        };
        counts.push(vec![
            link(&format!("/ui/{}", kind.plural()), kind.as_str()),
            format!("<span class=\"count\" data-kind=\"{}\">{}</span>", kind.as_str(), objects.len()),
            summary,
        ]);
    }
    let mut newest: Vec<&Object> = list.items.iter().collect();
    newest.sort_by_key(|object| std::cmp::Reverse(object.metadata.creation_timestamp));
    let newest: Vec<Vec<String>> = newest
        .iter()
        .take(NEWEST)
        .map(|object| {
            vec![
                escape(&object.kind),
                link(&detail_href(object), &object.metadata.name),
                escape(object.namespace()),
                ready_cell(object),
                escape(&age(object.metadata.creation_timestamp)),
            ]
        })
        .collect();
    let warnings = recent_events(state, true, 10, scope).await?;
    // The machine's totals: not for a token of one namespace.
    let usage = match state.usage.as_ref().filter(|_| scope.is_none()) {
        Some(usage) => {
            let (instances, cores, memory) = usage.totals();
            format!(
                "<p id=\"usage\">{instances} Instance(s) use {cores:.2} CPU core(s) and {:.1} MiB of memory now.</p>",
                memory as f64 / (1024.0 * 1024.0)
            )
        }
        None => String::new(),
    };
    let main = format!(
        "<h1>Summary</h1>{usage}<section><h2>Objects</h2>{}</section><section><h2>Newest</h2>{}</section>\
         <section><h2>Recent warnings</h2>{}</section>",
        table("counts", &["KIND", "OBJECTS", "READY"], &counts),
        table("newest", &["KIND", "NAME", "NAMESPACE", "READY", "AGE"], &newest),
        warnings,
    );
    Ok((main, list.revision))
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
pub async fn list(state: &AppState, kind: Kind, scope: Option<&str>) -> Result<(String, i64), StoreError> {
    let query = store::Query { kind: Some(kind), namespace: scope.map(str::to_owned), selector: Default::default() };
    let list = state.store.list(&query).await?;
    let mut columns = vec!["NAMESPACE"];
    columns.extend(headers(kind, true));
    let rows: Vec<Vec<String>> = list
        .items
        .into_iter()
        .map(|mut object| {
            minicloud_model::redact::redact_object(&mut object);
            let mut cells: Vec<String> = row(kind, &object, true).iter().map(|cell| escape(cell)).collect();
            cells[0] = link(&detail_href(&object), &object.metadata.name);
            cells.insert(0, escape(object.namespace()));
            cells
        })
        .collect();
    let main = format!("<h1>{}</h1>{}", escape(kind.plural()), table("objects", &columns, &rows));
    Ok((main, list.revision))
}

/// `/ui/namespaces/{ns}/{plural}/{name}`: one object.
pub async fn detail(state: &AppState, key: &minicloud_crds::ObjectKey) -> Result<(String, i64), StoreError> {
    let revision = state.store.revision().await?;
    let mut object = state.store.get(key).await?;
    minicloud_model::redact::redact_object(&mut object);
    let meta = &object.metadata;
    let mut facts = vec![
        vec!["Kind".into(), escape(&object.kind)],
        vec!["Namespace".into(), escape(object.namespace())],
        vec!["Created".into(), escape(&format!("{} ago", age(meta.creation_timestamp)))],
        vec!["Generation".into(), escape(&meta.generation.unwrap_or(0).to_string())],
        vec!["Ready".into(), ready_cell(&object)],
    ];
    let labels: Vec<String> = meta.labels.iter().map(|(key, value)| escape(&format!("{key}={value}"))).collect();
    facts.push(vec!["Labels".into(), labels.join("<br>")]);
    for owner in &meta.owner_references {
        let plural = Kind::from_kind_name(&owner.kind).map_or("", Kind::plural);
        let href = format!("/ui/namespaces/{}/{plural}/{}", object.namespace(), owner.name);
        facts
            .push(vec!["Owned by".into(), link(&href, &format!("{}/{}", owner.kind.to_ascii_lowercase(), owner.name))]);
    }
    let uid = meta.uid.clone().unwrap_or_default();
    let everything_here =
        store::Query { kind: None, namespace: Some(object.namespace().to_owned()), selector: Default::default() };
    let siblings = state.store.list(&everything_here).await?;
    let children: Vec<Vec<String>> = siblings
        .items
        .iter()
        .filter(|child| !uid.is_empty() && child.metadata.owner_references.iter().any(|owner| owner.uid == uid))
        .map(|child| vec![escape(&child.kind), link(&detail_href(child), &child.metadata.name), ready_cell(child)])
        .collect();
    let conditions: Vec<Vec<String>> = object
        .status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|condition| {
            let text = |key: &str| escape(condition.get(key).and_then(Value::as_str).unwrap_or(""));
            vec![text("type"), text("status"), text("reason"), text("message")]
        })
        .collect();
    let charts = match (&state.usage, Kind::from_kind_name(&object.kind)) {
        (Some(usage), Some(Kind::Instance)) => {
            super::panels::charts(&usage.points(&format!("{}/{}", object.namespace(), meta.name)), state.usage_interval)
        }
        (Some(usage), Some(Kind::ScalingGroup)) => {
            let members: Vec<Vec<crate::usage::Point>> = siblings
                .items
                .iter()
                .filter(|child| child.metadata.owner_references.iter().any(|owner| owner.uid == uid))
                .map(|child| usage.points(&format!("{}/{}", child.namespace(), child.metadata.name)))
                .collect();
            super::panels::charts(&crate::usage::sum(&members, state.usage_interval), state.usage_interval)
        }
        _ => String::new(),
    };
    // Tells the script that the Instance's container exists, so its output can be read.
    let container = if object.status.get("containerId").and_then(Value::as_str).is_some() {
        "<span id=\"has-container\" hidden></span>"
    } else {
        ""
    };
    let all_events = state.store.events(Some(object.namespace()), Some(key)).await?;
    let events: Vec<Vec<String>> = all_events.iter().rev().take(50).map(|event| event_row(event, false)).collect();
    let panels = super::panels::for_object(&object, &all_events, &siblings.items);
    let pretty = |value: &Value| escape(&serde_json::to_string_pretty(value).unwrap_or_default());
    let main = format!(
        "<h1>{}/{}</h1>{}{container}<h2>Conditions</h2>{}{charts}{panels}<h2>Events</h2>{}<h2>Children</h2>{}\
         <h2>Spec</h2><pre id=\"spec\">{}</pre><h2>Status</h2><pre id=\"status\">{}</pre>",
        escape(&object.kind.to_ascii_lowercase()),
        escape(&meta.name),
        table("facts", &["", ""], &facts),
        table("conditions", &["TYPE", "STATUS", "REASON", "MESSAGE"], &conditions),
        table("events", &["AGE", "TYPE", "REASON", "MESSAGE"], &events),
        table("children", &["KIND", "NAME", "READY"], &children),
        pretty(&object.spec),
        pretty(&object.status),
    );
    Ok((main, revision))
}

fn event_row(event: &store::Event, with_object: bool) -> Vec<String> {
    let event_type = serde_json::to_value(event.event_type).ok().and_then(|t| t.as_str().map(str::to_owned));
    let event_type = event_type.unwrap_or_default();
    let mut cells = vec![
        escape(&age(Some(event.last_timestamp))),
        format!(
            "<span class=\"{}\">{}</span>",
            if event_type == "Warning" { "bad" } else { "ok" },
            escape(&event_type)
        ),
        escape(&event.reason),
    ];
    if with_object {
        let plural = Kind::from_kind_name(&event.kind).map_or("", Kind::plural);
        let href = format!("/ui/namespaces/{}/{plural}/{}", event.namespace, event.name);
        cells.push(link(&href, &format!("{}/{}", event.kind.to_ascii_lowercase(), event.name)));
    }
    cells.push(escape(&event.message));
    cells
}

/// The newest events (warnings only when asked), newest first, as a table.
async fn recent_events(
    state: &AppState,
    warnings_only: bool,
    count: usize,
    scope: Option<&str>,
) -> Result<String, StoreError> {
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
    fn form(&self) -> String {
        let mut kinds = String::from("<option value=\"\">any kind</option>");
        for kind in Kind::ALL {
            let selected = if self.kind.as_deref() == Some(kind.as_str()) { " selected" } else { "" };
            kinds.push_str(&format!("<option{selected}>{}</option>", kind.as_str()));
        }
        let warnings = if self.warnings_only { " checked" } else { "" };
        format!(
            "<form id=\"filter\" method=\"get\" action=\"/ui/events\"><select name=\"kind\">{kinds}</select> \
             <input name=\"namespace\" placeholder=\"namespace\" value=\"{}\"> \
             <input name=\"q\" placeholder=\"text\" value=\"{}\"> \
             <label><input type=\"checkbox\" name=\"type\" value=\"Warning\"{warnings}> warnings only</label> \
             <button>Filter</button></form>",
            escape(self.namespace.as_deref().unwrap_or("")),
            escape(self.text.as_deref().unwrap_or("")),
        )
    }
}

async fn filtered_events(
    state: &AppState,
    filter: &ActivityFilter,
    count: usize,
    scope: Option<&str>,
) -> Result<String, StoreError> {
    let events = state.store.events(scope, None).await?;
    let rows: Vec<Vec<String>> = events
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
) -> Result<(String, i64), ApiError> {
    let revision = state.store.revision().await?;
    let events = filtered_events(state, filter, RECENT_EVENTS, principal.namespace.as_deref()).await?;
    let requests = audit_section(state, filter, principal).await?;
    let main = format!("<h1>Activity</h1>{}{events}{requests}", filter.form());
    Ok((main, revision))
}

/// Audit entries shown on the activity page.
const RECENT_REQUESTS: usize = 50;

/// The newest audit entries the filter admits (namespace and text; a kind filter shows those
/// of that kind's plural), or why they are not shown.
async fn audit_section(state: &AppState, filter: &ActivityFilter, principal: &Principal) -> Result<String, ApiError> {
    let Some(access) = &state.access else { return Ok(String::new()) };
    let heading = "<h2>Requests (audit log)</h2>";
    if !principal.allows(&Permission::new(Verb::List, "audit", principal.namespace.as_deref())) {
        return Ok(format!("{heading}<p class=\"none\">The audit log needs role admin.</p>"));
    }
    // Read more than shown: the filter drops some.
    let query = AuditQuery { since: None, namespace: principal.namespace.clone(), limit: RECENT_REQUESTS * 20 };
    let entries = access.audit(&query).await?;
    let plural = filter.kind.as_deref().and_then(Kind::from_kind_name).map(Kind::plural);
    let rows: Vec<Vec<String>> = entries
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
            let code = if entry.code >= 400 {
                format!("<span class=\"bad\">{}</span>", entry.code)
            } else {
                entry.code.to_string()
            };
            vec![
                escape(&age(Some(entry.time))),
                escape(&entry.principal),
                escape(&entry.verb),
                escape(&object),
                code,
                format!("<span title=\"request {}\">{}</span>", escape(&entry.request_id), escape(&entry.message)),
            ]
        })
        .collect();
    Ok(format!("{heading}{}", table("requests", &["AGE", "WHO", "VERB", "OBJECT", "CODE", "MESSAGE"], &rows)))
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
        assert!(namespaced.form().contains("value=\"shop\""));
    }
}
