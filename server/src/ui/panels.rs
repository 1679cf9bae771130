//! What a detail page shows besides the common parts, per kind: a load balancer's targets and
//! their health, its listeners with their routes and its certificates with their expiry, a
//! route's parents and rules, a certificate's validity, a scaling group's scaling history, a
//! database's backups, a stack's resources and outputs, and an Instance's container output
//! (followed live by the script).

use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::html::{escape, link, table};
use crate::store::Event;
use minicloud_model::columns::age;

/// Event reasons that record a scaling group's decisions.
const SCALING_REASONS: &[&str] = &["ScaledOut", "ScaledIn", "Manual", "Bounds"];

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => escape(text),
        other => escape(&other.to_string()),
    }
}

/// The kind's own sections of a detail page (HTML; empty for kinds without any). `siblings`
/// are the objects of the same namespace (a load balancer's certificates are among them).
pub fn for_object(object: &Object, events: &[Event], siblings: &[Object]) -> String {
    let status = &object.status;
    let rows = |field: &str, columns: &[&str]| -> Vec<Vec<String>> {
        status
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| columns.iter().map(|column| text(item.get(*column).unwrap_or(&Value::Null))).collect())
            .collect()
    };
    match Kind::from_kind_name(&object.kind) {
        Some(Kind::LoadBalancer) => format!(
            "<h2>Targets</h2>{}{}",
            table(
                "targets",
                &["NAME", "ADDRESS", "STATE", "HEALTHY", "LAST CHECK"],
                &rows("targets", &["name", "address", "state", "healthy", "lastCheck"])
            ),
            front_door(object, siblings)
        ),
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
            let facts: Vec<Vec<String>> = fields
                .iter()
                .filter_map(|field| status.get(*field).map(|value| vec![escape(field), text(value)]))
                .collect();
            format!("<h2>Validity</h2>{}", table("validity", &["FIELD", "VALUE"], &facts))
        }
        Some(Kind::ScalingGroup) => {
            let history: Vec<Vec<String>> = events
                .iter()
                .rev()
                .filter(|event| SCALING_REASONS.contains(&event.reason.as_str()))
                .take(20)
                .map(|event| {
                    vec![escape(&age(Some(event.last_timestamp))), escape(&event.reason), escape(&event.message)]
                })
                .collect();
            format!("<h2>Scaling history</h2>{}", table("scaling", &["AGE", "REASON", "DECISION"], &history))
        }
        Some(Kind::ManagedDatabase) => format!(
            "<h2>Backups</h2>{}",
            table(
                "backups",
                &["NAME", "TIME", "SIZE (BYTES)", "REASON"],
                &rows("backups", &["name", "time", "sizeBytes", "reason"])
            )
        ),
        Some(Kind::Stack) => {
            let outputs: Vec<Vec<String>> = status
                .get("outputs")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(name, value)| vec![escape(name), text(value)])
                .collect();
            format!(
                "<h2>Resources</h2>{}<h2>Outputs</h2>{}",
                table(
                    "resources",
                    &["KIND", "NAME", "READY", "MESSAGE"],
                    &rows("resources", &["kind", "name", "ready", "message"])
                ),
                table("outputs", &["NAME", "VALUE"], &outputs)
            )
        }
        _ => String::new(),
    }
}

/// A load balancer's listeners (address, port, protocol, attached routes) and the certificates
/// its HTTPS listeners serve, with their expiry.
fn front_door(object: &Object, siblings: &[Object]) -> String {
    let status = &object.status;
    let listeners: Vec<Vec<String>> = object
        .spec
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|listener| {
            let name = listener.get("name").and_then(Value::as_str).unwrap_or_default();
            let endpoint = status.get("endpoints").and_then(|e| e.get(name)).map_or_else(|| "-".to_owned(), text);
            let routes: Vec<String> = status
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
                    None => escape(route),
                })
                .collect();
            let protocol = listener.get("protocol").map_or_else(|| "HTTP".to_owned(), text);
            vec![escape(name), endpoint, protocol, if routes.is_empty() { "-".into() } else { routes.join("<br>") }]
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
    let certificates: Vec<Vec<String>> = siblings
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
                names,
                ready,
                certificate.status.get("notAfter").map_or_else(|| "-".to_owned(), text),
            ]
        })
        .collect();
    let mut html =
        format!("<h2>Listeners</h2>{}", table("listeners", &["NAME", "ENDPOINT", "PROTOCOL", "ROUTES"], &listeners));
    if !named.is_empty() {
        html.push_str(&format!(
            "<h2>Certificates</h2>{}",
            table("certificates", &["NAME", "DNS NAMES", "READY", "NOT AFTER"], &certificates)
        ));
    }
    html
}

/// A route's parents (accepted, backends resolved, URLs) and its rules.
fn route_panels(object: &Object) -> String {
    let parents: Vec<Vec<String>> = object
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
            let urls = parent
                .get("urls")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(_, url)| text(url))
                .collect::<Vec<_>>()
                .join("<br>");
            let href = format!("/ui/namespaces/{namespace}/loadbalancers/{name}");
            vec![
                link(&href, &format!("{namespace}/{name}")),
                section,
                condition("Accepted"),
                condition("ResolvedRefs"),
                urls,
            ]
        })
        .collect();
    let rules: Vec<Vec<String>> = object
        .spec
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, rule)| {
            let matches = rule.get("matches").map_or_else(|| "every request".to_owned(), |m| escape(&m.to_string()));
            let backends = rule.get("backendRefs").map_or_else(|| "-".to_owned(), |b| escape(&b.to_string()));
            let filters = rule.get("filters").map_or_else(|| "-".to_owned(), |f| escape(&f.to_string()));
            vec![index.to_string(), matches, filters, backends]
        })
        .collect();
    format!(
        "<h2>Parents</h2>{}<h2>Rules</h2>{}",
        table("parents", &["LOAD BALANCER", "LISTENER", "ACCEPTED", "RESOLVED", "URLS"], &parents),
        table("rules", &["#", "MATCHES", "FILTERS", "BACKENDS"], &rules)
    )
}

/// An Instance's container output, outside the part of the page that is swapped on changes:
/// the script fills it from the log endpoint (the last 200 lines, then followed).
pub fn logs(kind: Kind, namespace: &str, name: &str) -> String {
    if kind != Kind::Instance {
        return String::new();
    }
    let source =
        format!("/apis/minicloud.dev/v1/namespaces/{namespace}/instances/{name}/log?follow=true&tailLines=200");
    format!(
        "<section class=\"logs\"><h2>Logs</h2><pre id=\"logs\" data-source=\"{}\"></pre></section>",
        escape(&source)
    )
}

/// CPU and memory charts (SVG) of `points`; `interval` is how often the page asks for newer
/// ones (the section's `data-chart`).
pub fn charts(points: &[crate::usage::Point], interval: std::time::Duration) -> String {
    let cpu: Vec<(i64, f64)> = points.iter().map(|point| (point.time, f64::from(point.cores))).collect();
    let memory: Vec<(i64, f64)> =
        points.iter().map(|point| (point.time, point.memory_bytes as f64 / (1024.0 * 1024.0))).collect();
    format!(
        "<section class=\"charts\" data-chart=\"{}\"><h2>Usage</h2>{}{}</section>",
        interval.as_secs().max(1),
        chart("cpu-chart", "CPU (cores)", &cpu, 3),
        chart("memory-chart", "Memory (MiB)", &memory, 1),
    )
}

/// One line chart: `values` as (unix time, value), oldest first.
fn chart(id: &str, title: &str, values: &[(i64, f64)], decimals: usize) -> String {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 100.0;
    let Some((&(first, _), &(last, latest))) = values.first().zip(values.last()) else {
        return format!(
            "<div class=\"chart\" id=\"{id}\"><h3>{}</h3><p class=\"none\">collecting…</p></div>",
            escape(title)
        );
    };
    let highest = values.iter().map(|(_, value)| *value).fold(0.0_f64, f64::max).max(1e-6);
    let span = (last - first).max(1) as f64;
    let coordinates: Vec<String> = values
        .iter()
        .map(|(time, value)| {
            let x = (*time - first) as f64 / span * WIDTH;
            let y = HEIGHT - value / highest * HEIGHT;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<div class=\"chart\" id=\"{id}\" data-points=\"{count}\"><h3>{title}: {latest:.decimals$} now, {highest:.decimals$} at most over the last {window}</h3>\
         <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{title}\">\
         <polyline fill=\"none\" stroke=\"#2f5bd3\" stroke-width=\"1.5\" points=\"{}\"/></svg></div>",
        coordinates.join(" "),
        count = values.len(),
        title = escape(title),
        window = match last - first {
            seconds @ 0..=119 => format!("{seconds} s"),
            seconds => format!("{} min", seconds / 60),
        },
    )
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
        );
        assert!(lb.contains("<td>web-1</td><td>10.0.0.2:8080</td><td>UP</td><td>true</td><td>-</td>"), "{lb}");
        let db = for_object(
            &object(
                "ManagedDatabase",
                json!({"backups": [{"name": "b1", "time": "t", "sizeBytes": 42, "reason": "<manual>"}]}),
            ),
            &[],
            &[],
        );
        assert!(db.contains("<td>42</td><td>&lt;manual&gt;</td>"), "{db}");
        let stack = for_object(
            &object(
                "Stack",
                json!({"resources": [{"kind": "Instance", "name": "app", "ready": false, "message": "waiting"}], "outputs": {"url": "http://127.0.0.1:1"}}),
            ),
            &[],
            &[],
        );
        assert!(
            stack.contains("<td>app</td><td>false</td><td>waiting</td>")
                && stack.contains("<td>url</td><td>http://127.0.0.1:1</td>"),
            "{stack}"
        );
        assert_eq!(for_object(&object("Secret", json!({})), &[], &[]), "");
        assert!(logs(Kind::Instance, "default", "web").contains("/namespaces/default/instances/web/log?follow=true"));
        assert_eq!(logs(Kind::Stack, "default", "web"), "");
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
        let html = for_object(&lb, &[], &[certificate]);
        assert!(html.contains("<a href=\"/ui/namespaces/shop/routes/store\">shop/store</a>"), "{html}");
        assert!(html.contains("https://127.0.0.1:443") && html.contains("2027-03-01T00:00:00Z"), "{html}");
        assert!(html.contains("&lt;b&gt;.example.com") && !html.contains("<b>"), "{html}");
        let mut route = object(
            "Route",
            json!({"parents": [{"parentRef": {"name": "edge", "namespace": "infra"}, "conditions": [{"type": "Accepted", "status": "False", "message": "no <way>"}], "urls": {"web": "http://a/"}}]}),
        );
        route.spec = json!({"rules": [{"backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]}]});
        let html = for_object(&route, &[], &[]);
        assert!(
            html.contains("/ui/namespaces/infra/loadbalancers/edge") && html.contains("False no &lt;way&gt;"),
            "{html}"
        );
    }

    #[test]
    fn charts_draw_what_was_sampled() {
        let interval = std::time::Duration::from_secs(5);
        assert!(charts(&[], interval).contains("collecting…"));
        let points: Vec<crate::usage::Point> = (0..4)
            .map(|index| crate::usage::Point {
                time: 100 + index * 5,
                cores: index as f32 / 4.0,
                memory_bytes: 1 << 20,
            })
            .collect();
        let drawn = charts(&points, interval);
        assert!(drawn.contains("data-chart=\"5\"") && drawn.contains("data-points=\"4\""), "{drawn}");
        assert!(drawn.contains("CPU (cores): 0.750 now, 0.750 at most over the last 15 s"), "{drawn}");
        assert!(drawn.contains("points=\"0.0,100.0 200.0,66.7 400.0,33.3 600.0,0.0\""), "{drawn}");
        assert!(drawn.contains("Memory (MiB): 1.0 now"), "{drawn}");
    }
}
