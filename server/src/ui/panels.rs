//! What a detail page shows besides the common parts, per kind: a load balancer's targets and
//! their health, its listeners with their routes and its certificates with their expiry, a
//! route's parents and rules, a certificate's validity, a scaling group's scaling history, a
//! database's backups, a stack's resources and outputs, and an Instance's container output
//! (followed live by the script).

use maud::{html, Markup};
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::html::{link, table, text_or_link};
use crate::store::Event;
use minicloud_model::columns::age;

/// Event reasons that record a scaling group's decisions.
const SCALING_REASONS: &[&str] = &["ScaledOut", "ScaledIn", "Manual", "Bounds"];

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A value as a cell: a URL of the web becomes a link, anything else text.
fn cell(value: &Value) -> Markup {
    text_or_link(&text(value))
}

/// Several values in one cell, one per line.
fn lines(items: &[Markup]) -> Markup {
    html! {
        @if items.is_empty() { "-" }
        @for (index, item) in items.iter().enumerate() {
            @if index > 0 { br; }
            (item)
        }
    }
}

/// The kind's own sections of a detail page (empty for kinds without any). `siblings` are the
/// objects of the same namespace (a load balancer's certificates are among them).
pub fn for_object(object: &Object, events: &[Event], siblings: &[Object]) -> Markup {
    let status = &object.status;
    let rows = |field: &str, columns: &[&str]| -> Vec<Vec<Markup>> {
        status
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| columns.iter().map(|column| cell(item.get(*column).unwrap_or(&Value::Null))).collect())
            .collect()
    };
    match Kind::from_kind_name(&object.kind) {
        Some(Kind::LoadBalancer) => html! {
            h2 { "Targets" }
            (table(
                "targets",
                &["NAME", "ADDRESS", "STATE", "HEALTHY", "LAST CHECK"],
                &target_rows(object),
            ))
            (front_door(object, siblings))
        },
        Some(Kind::Route) => route_panels(object),
        Some(Kind::Certificate) => {
            let fields = [
                "notBefore",
                "notAfter",
                "renewalTime",
                "serial",
                "issuerName",
                "secretName",
                "orderUrl",
                "failedAttempts",
                "nextAttemptTime",
            ];
            let facts: Vec<Vec<Markup>> = fields
                .iter()
                .filter_map(|field| status.get(*field).map(|value| vec![html! { (field) }, html! { (text(value)) }]))
                .collect();
            html! { h2 { "Validity" } (table("validity", &["FIELD", "VALUE"], &facts)) }
        }
        Some(Kind::ScalingGroup) => {
            let history: Vec<Vec<Markup>> = events
                .iter()
                .rev()
                .filter(|event| SCALING_REASONS.contains(&event.reason.as_str()))
                .take(20)
                .map(|event| {
                    vec![
                        html! { (age(Some(event.last_timestamp))) },
                        html! { (event.reason) },
                        html! { (event.message) },
                    ]
                })
                .collect();
            html! { h2 { "Scaling history" } (table("scaling", &["AGE", "REASON", "DECISION"], &history)) }
        }
        Some(Kind::ManagedDatabase) => html! {
            h2 { "Backups" }
            (table(
                "backups",
                &["NAME", "TIME", "SIZE (BYTES)", "REASON"],
                &rows("backups", &["name", "time", "sizeBytes", "reason"]),
            ))
        },
        Some(Kind::Stack) => {
            let outputs: Vec<Vec<Markup>> = status
                .get("outputs")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(name, value)| vec![html! { (name) }, cell(value)])
                .collect();
            html! {
                h2 { "Resources" }
                (table(
                    "resources",
                    &["KIND", "NAME", "READY", "MESSAGE"],
                    &stack_resource_rows(object),
                ))
                h2 { "Outputs" }
                (table("outputs", &["NAME", "VALUE"], &outputs))
            }
        }
        _ => html! {},
    }
}

/// A load balancer's targets; a target named after an Instance of its namespace links to it.
fn target_rows(object: &Object) -> Vec<Vec<Markup>> {
    object
        .status
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|target| {
            let field = |name: &str| text(target.get(name).unwrap_or(&Value::Null));
            let name = field("name");
            let href = format!("/ui/namespaces/{}/instances/{name}", object.namespace());
            vec![
                link(&href, &name),
                html! { (field("address")) },
                html! { (field("state")) },
                html! { (field("healthy")) },
                html! { (field("lastCheck")) },
            ]
        })
        .collect()
}

/// A stack's resources, each a link to its page.
fn stack_resource_rows(object: &Object) -> Vec<Vec<Markup>> {
    object
        .status
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|resource| {
            let field = |name: &str| text(resource.get(name).unwrap_or(&Value::Null));
            let (kind, name) = (field("kind"), field("name"));
            let name_cell = match Kind::from_kind_name(&kind) {
                Some(kind) => link(&format!("/ui/namespaces/{}/{}/{name}", object.namespace(), kind.plural()), &name),
                None => html! { (name) },
            };
            vec![html! { (kind) }, name_cell, html! { (field("ready")) }, html! { (field("message")) }]
        })
        .collect()
}

/// A load balancer's listeners (address, port, protocol, attached routes) and the certificates
/// its HTTPS listeners serve, with their expiry.
fn front_door(object: &Object, siblings: &[Object]) -> Markup {
    let status = &object.status;
    let listeners: Vec<Vec<Markup>> = object
        .spec
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|listener| {
            let name = listener.get("name").and_then(Value::as_str).unwrap_or_default();
            let endpoint = status.get("endpoints").and_then(|e| e.get(name)).map_or_else(|| html! { "-" }, cell);
            let routes: Vec<Markup> = status
                .get("listeners")
                .and_then(Value::as_array)
                .and_then(|all| all.iter().find(|l| l.get("name").and_then(Value::as_str) == Some(name)))
                .and_then(|l| l.get("routes"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|route| match route.split_once('/') {
                    Some((namespace, route_name)) => {
                        link(&format!("/ui/namespaces/{namespace}/routes/{route_name}"), route)
                    }
                    None => html! { (route) },
                })
                .collect();
            let protocol = listener.get("protocol").map_or_else(|| "HTTP".to_owned(), text);
            vec![html! { (name) }, endpoint, html! { (protocol) }, lines(&routes)]
        })
        .collect();
    let named: Vec<&str> = object
        .spec
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| l.pointer("/tls/certificateRefs")?.as_array())
        .flatten()
        .filter_map(|r| r.get("name")?.as_str())
        .collect();
    let certificates: Vec<Vec<Markup>> = siblings
        .iter()
        .filter(|o| o.kind == Kind::Certificate.as_str() && named.contains(&o.metadata.name.as_str()))
        .map(|certificate| {
            let names = certificate
                .spec
                .get("dnsNames")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(text)
                .collect::<Vec<_>>()
                .join(", ");
            let ready = minicloud_model::columns::condition(certificate, "Ready")
                .and_then(|c| c.get("status"))
                .map_or_else(|| "-".to_owned(), text);
            let href = format!("/ui/namespaces/{}/certificates/{}", certificate.namespace(), certificate.metadata.name);
            vec![
                link(&href, &certificate.metadata.name),
                html! { (names) },
                html! { (ready) },
                html! { (certificate.status.get("notAfter").map_or_else(|| "-".to_owned(), text)) },
            ]
        })
        .collect();
    html! {
        h2 { "Listeners" }
        (table("listeners", &["NAME", "ENDPOINT", "PROTOCOL", "ROUTES"], &listeners))
        @if !named.is_empty() {
            h2 { "Certificates" }
            (table("certificates", &["NAME", "DNS NAMES", "READY", "NOT AFTER"], &certificates))
        }
    }
}

/// A route's parents (accepted, backends resolved, URLs) and its rules.
fn route_panels(object: &Object) -> Markup {
    let parents: Vec<Vec<Markup>> = object
        .status
        .get("parents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|parent| {
            let reference = parent.get("parentRef").cloned().unwrap_or(Value::Null);
            let namespace = reference.get("namespace").and_then(Value::as_str).unwrap_or(object.namespace()).to_owned();
            let name = reference.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let section = reference.get("sectionName").map_or_else(|| "*".to_owned(), text);
            let condition = |type_: &str| {
                parent
                    .get("conditions")
                    .and_then(Value::as_array)
                    .and_then(|all| all.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_)))
                    .map_or_else(
                        || "-".to_owned(),
                        |c| {
                            format!(
                                "{} {}",
                                text(c.get("status").unwrap_or(&Value::Null)),
                                text(c.get("message").unwrap_or(&Value::Null))
                            )
                        },
                    )
            };
            let urls: Vec<Markup> =
                parent.get("urls").and_then(Value::as_object).into_iter().flatten().map(|(_, url)| cell(url)).collect();
            let href = format!("/ui/namespaces/{namespace}/loadbalancers/{name}");
            vec![
                link(&href, &format!("{namespace}/{name}")),
                html! { (section) },
                html! { (condition("Accepted")) },
                html! { (condition("ResolvedRefs")) },
                lines(&urls),
            ]
        })
        .collect();
    let rules: Vec<Vec<Markup>> = object
        .spec
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, rule)| {
            let shown =
                |field: &str, otherwise: &str| rule.get(field).map_or_else(|| otherwise.to_owned(), Value::to_string);
            vec![
                html! { (index) },
                html! { (shown("matches", "every request")) },
                html! { (shown("filters", "-")) },
                html! { (shown("backendRefs", "-")) },
            ]
        })
        .collect();
    html! {
        h2 { "Parents" }
        (table("parents", &["LOAD BALANCER", "LISTENER", "ACCEPTED", "RESOLVED", "URLS"], &parents))
        h2 { "Rules" }
        (table("rules", &["#", "MATCHES", "FILTERS", "BACKENDS"], &rules))
    }
}

/// An Instance's container output, outside the part of the page that is swapped on changes:
/// the script fills it from the log endpoint (the last 200 lines, then followed).
pub fn logs(kind: Kind, namespace: &str, name: &str) -> Markup {
    if kind != Kind::Instance {
        return html! {};
    }
    let source =
        format!("/apis/minicloud.dev/v1/namespaces/{namespace}/instances/{name}/log?follow=true&tailLines=200");
    html! { section class="logs" { h2 { "Logs" } pre id="logs" data-source=(source) {} } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(kind: &str, status: Value) -> Object {
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": kind,
            "metadata": {"name": "x", "namespace": "default"}, "spec": {}, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn each_kind_shows_its_own_state_escaped() {
        let lb = for_object(
            &object(
                "LoadBalancer",
                json!({"targets": [{"name": "web-1", "address": "10.0.0.2:8080", "state": "UP", "healthy": true}]}),
            ),
            &[],
            &[],
        )
        .into_string();
        assert!(lb.contains("<td><a href=\"/ui/namespaces/default/instances/web-1\">web-1</a></td><td>10.0.0.2:8080</td><td>UP</td><td>true</td><td>-</td>"), "{lb}");
        let db = for_object(
            &object(
                "ManagedDatabase",
                json!({"backups": [{"name": "b1", "time": "t", "sizeBytes": 42, "reason": "<manual>"}]}),
            ),
            &[],
            &[],
        )
        .into_string();
        assert!(db.contains("<td>42</td><td>&lt;manual&gt;</td>"), "{db}");
        let stack = for_object(
            &object(
                "Stack",
                json!({"resources": [{"kind": "Instance", "name": "app", "ready": false, "message": "waiting"}], "outputs": {"url": "http://127.0.0.1:1"}}),
            ),
            &[],
            &[],
        )
        .into_string();
        assert!(
            stack.contains(
                "<td><a href=\"/ui/namespaces/default/instances/app\">app</a></td><td>false</td><td>waiting</td>"
            ) && stack.contains("<td>url</td><td><a href=\"http://127.0.0.1:1\">http://127.0.0.1:1</a></td>"),
            "{stack}"
        );
        assert_eq!(for_object(&object("Secret", json!({})), &[], &[]).into_string(), "");
        assert!(logs(Kind::Instance, "default", "web")
            .into_string()
            .contains("/namespaces/default/instances/web/log?follow=true"));
        assert_eq!(logs(Kind::Stack, "default", "web").into_string(), "");
    }

    #[test]
    fn the_front_door_shows_listeners_routes_and_certificates_escaped() {
        let mut lb = object(
            "LoadBalancer",
            json!({"endpoints": {"https": "https://127.0.0.1:443"}, "listeners": [{"name": "https", "attachedRoutes": 1, "routes": ["shop/store"]}]}),
        );
        lb.spec = json!({"listeners": [{"name": "https", "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "site"}]}}]});
        let mut certificate = object(
            "Certificate",
            json!({"notAfter": "2027-03-01T00:00:00Z", "conditions": [{"type": "Ready", "status": "True"}]}),
        );
        certificate.metadata.name = "site".into();
        certificate.spec = json!({"dnsNames": ["<b>.example.com"]});
        let html = for_object(&lb, &[], &[certificate]).into_string();
        assert!(html.contains("<a href=\"/ui/namespaces/shop/routes/store\">shop/store</a>"), "{html}");
        assert!(html.contains("https://127.0.0.1:443") && html.contains("2027-03-01T00:00:00Z"), "{html}");
        assert!(html.contains("&lt;b&gt;.example.com") && !html.contains("<b>"), "{html}");
        let mut route = object(
            "Route",
            json!({"parents": [{"parentRef": {"name": "edge", "namespace": "infra"}, "conditions": [{"type": "Accepted", "status": "False", "message": "no <way>"}], "urls": {"web": "http://a/"}}]}),
        );
        route.spec = json!({"rules": [{"backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]}]});
        let html = for_object(&route, &[], &[]).into_string();
        assert!(
            html.contains("/ui/namespaces/infra/loadbalancers/edge") && html.contains("False no &lt;way&gt;"),
            "{html}"
        );
    }
}
