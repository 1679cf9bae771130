//! The HAProxy configuration of a LoadBalancer, rendered deterministically from its
//! [`Layout`] and the current servers of each backend. Every listener becomes a frontend
//! `fe-LISTENER` bound to a fixed container port; the load balancer's own targets fill the
//! backend `be-LISTENER`, each route backend is `rt.NAMESPACE.ROUTE.RULE.REF` (servers named
//! after their Instances); HTTP listeners route with the rules of [`super::http_rules`], HTTPS
//! listeners terminate TLS with the certificates listed in `LISTENER.crtlist`. The same server
//! arguments are used in the file and in Runtime API `add server` commands, so a target added
//! at run time behaves exactly like one read from the file.
//!
//! Nothing a user writes reaches the file unchecked: names must be DNS-1123 labels, addresses
//! must parse as IP addresses, paths, host names, header names and values must pass the rules
//! of [`minicloud_crds::http`] (checked again here, whatever the API let through); anything
//! else is a [`RenderError`], so no input can end a token early, start a comment or add a line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use minicloud_crds::loadbalancer::{Algorithm, LbHealthCheck, ListenerProtocol};
use minicloud_crds::validation::{check_dns_label, check_http_path};

pub(crate) use super::naming::*;

use super::http_rules;
use super::layout::{BackendLayout, Layout, ListenerLayout};

/// The TLS 1.2 ciphers offered: ECDHE key exchange with AEAD only.
const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
/// The TLS 1.3 cipher suites offered.
const TLS13_CIPHERSUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// Health-check defaults (milliseconds between checks, successes to go UP, failures to go DOWN).
pub(crate) const DEFAULT_INTERVAL_MILLIS: u32 = 2000;
pub(crate) const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub(crate) const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// How soon a route backend's new server is first checked (HAProxy's `downinter`).
const ROUTE_FIRST_CHECK_MILLIS: u32 = 250;

/// Input that cannot be rendered safely.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("listener name {name:?}: {reason}")]
    ListenerName { name: String, reason: String },
    #[error("target name {name:?}: {reason}")]
    TargetName { name: String, reason: String },
    #[error("healthCheck.path: {0}")]
    HealthCheckPath(String),
    #[error("a load balancer needs at least one listener")]
    NoListeners,
    #[error("route {route}: {reason}")]
    Route { route: String, reason: String },
    #[error("backend name {0:?} is not one minicloud makes")]
    BackendName(String),
    #[error("certificate file {0:?} is not one minicloud makes")]
    CertificateFile(String),
}

/// A target: an Instance's name and its address on the load balancer's network.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub name: String,
    pub address: IpAddr,
}

/// The servers of each backend, by backend name.
pub type Members = BTreeMap<String, Vec<Target>>;

/// The arguments of every server line (and of `add server`) of a backend: health checking
/// (the load balancer's own for its targets, a TCP connect for route backends), the PROXY
/// protocol when asked, and a short idle-connection purge delay so that a removed target can
/// be deleted quickly.
pub(crate) fn server_arguments(backend: &BackendLayout, check: Option<&LbHealthCheck>) -> String {
    let proxy = if backend.proxy_protocol { " send-proxy-v2" } else { "" };
    if !backend.own_check {
        // A route's backend: a server added at run time serves once its first connect check
        // passes, and that check comes within a quarter of a second (a route change is served
        // by its new backend at once, not after two full intervals).
        return format!(
            "check inter {DEFAULT_INTERVAL_MILLIS} downinter {ROUTE_FIRST_CHECK_MILLIS} rise 1 fall {DEFAULT_UNHEALTHY_THRESHOLD}{proxy} pool-purge-delay 500"
        );
    }
    let interval = check.and_then(|c| c.interval_millis).unwrap_or(DEFAULT_INTERVAL_MILLIS);
    let rise = check.and_then(|c| c.healthy_threshold).unwrap_or(DEFAULT_HEALTHY_THRESHOLD);
    let fall = check.and_then(|c| c.unhealthy_threshold).unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD);
    format!("check inter {interval} rise {rise} fall {fall}{proxy} pool-purge-delay 500")
}

/// Checks everything user-written that the configuration contains.
pub fn check(layout: &Layout, members: &Members) -> Result<(), RenderError> {
    if layout.listeners.is_empty() {
        return Err(RenderError::NoListeners);
    }
    for listener in &layout.listeners {
        check_dns_label(&listener.name)
            .map_err(|reason| RenderError::ListenerName { name: listener.name.clone(), reason })?;
        for entry in &listener.entries {
            http_rules::check_entry(entry)
                .map_err(|reason| RenderError::Route { route: entry.route.clone(), reason })?;
        }
        for file in &listener.certificates {
            let stem = file.strip_suffix(".pem").unwrap_or("");
            if stem.split('.').any(|part| check_dns_label(part).is_err()) {
                return Err(RenderError::CertificateFile(file.clone()));
            }
        }
    }
    for backend in &layout.backends {
        if backend
            .name
            .split(['.', '-'])
            .any(|part| part.is_empty() || !part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        {
            return Err(RenderError::BackendName(backend.name.clone()));
        }
    }
    for target in members.values().flatten() {
        check_dns_label(&target.name)
            .map_err(|reason| RenderError::TargetName { name: target.name.clone(), reason })?;
    }
    if let Some(path) = layout.health_check.as_ref().and_then(|c| c.path.as_deref()) {
        check_http_path(path).map_err(RenderError::HealthCheckPath)?;
    }
    Ok(())
}

/// Renders the whole configuration of `layout` with these servers (sorted by name in the file).
pub fn render(owner: &str, layout: &Layout, members: &Members) -> Result<String, RenderError> {
    check(layout, members)?;
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason only.
    let _ = writeln!(out, "# Generated by minicloud for loadbalancer {owner}. Do not edit: it is rewritten.");
    let _ = writeln!(out, "global");
    let _ = writeln!(out, "    stats socket {MOUNT}/{SOCKET_FILE} mode 600 level admin");
    let _ = writeln!(out, "    stats timeout 30s");
    let _ = writeln!(out, "    server-state-file {MOUNT}/{STATE_FILE}");
    let _ = writeln!(out, "    hard-stop-after 30s");
    if layout.has_tls() {
        // TLS 1.2 and 1.3 only, forward-secret AEAD ciphers only (Mozilla's "intermediate").
        let _ = writeln!(out, "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets");
        let _ = writeln!(out, "    ssl-default-bind-ciphers {TLS12_CIPHERS}");
        let _ = writeln!(out, "    ssl-default-bind-ciphersuites {TLS13_CIPHERSUITES}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "defaults");
    // Targets are containers on a local bridge: a connect that takes a second met a target
    // that is gone, and the retry goes elsewhere.
    let _ = writeln!(out, "    timeout connect 1s");
    let _ = writeln!(out, "    timeout client 60s");
    let _ = writeln!(out, "    timeout server 60s");
    let _ = writeln!(out, "    timeout check 2s");
    let _ = writeln!(out, "    retries 3");
    // Every retry goes to another target (by default only the last does).
    let _ = writeln!(out, "    option redispatch 1");
    let _ = writeln!(out, "    load-server-state-from-file global");
    let _ = writeln!(out, "    default-server init-addr last,libc,none");
    for listener in &layout.listeners {
        let _ = writeln!(out);
        let _ = writeln!(out, "frontend {}", frontend(&listener.name));
        match listener.protocol {
            ListenerProtocol::Tcp => {
                let _ = writeln!(out, "    mode tcp");
                let _ = writeln!(out, "    bind :{}", listener.container_port);
            }
            ListenerProtocol::Http => {
                let _ = writeln!(out, "    mode http");
                let _ = writeln!(out, "    bind :{}", listener.container_port);
                http_rules::render(&mut out, listener, "http");
            }
            ListenerProtocol::Https => {
                let _ = writeln!(out, "    mode http");
                // The crt-list's content is part of the structure: a new set of certificates
                // reloads (a renewed certificate does not: it is set through the Runtime API).
                let _ = writeln!(out, "    # certificates: {}", listener.certificates.join(" "));
                let _ = writeln!(
                    out,
                    "    bind :{} ssl crt-list {MOUNT}/{} alpn h2,http/1.1",
                    listener.container_port,
                    crt_list_file(&listener.name)
                );
                http_rules::render(&mut out, listener, "https");
            }
        }
        if let Some(default) = &listener.default_backend {
            let _ = writeln!(out, "    default_backend {default}");
        }
        if let Some(own) =
            listener.default_backend.as_deref().and_then(|name| layout.backends.iter().find(|b| b.name == name))
        {
            let _ = writeln!(out);
            render_backend(&mut out, layout, own, members);
        }
    }
    let own: Vec<&str> = layout.listeners.iter().filter_map(|l| l.default_backend.as_deref()).collect();
    for route_backend in layout.backends.iter().filter(|b| !own.contains(&b.name.as_str())) {
        let _ = writeln!(out);
        render_backend(&mut out, layout, route_backend, members);
    }
    Ok(out)
}

/// The lines of one backend and its servers.
fn render_backend(out: &mut String, layout: &Layout, backend: &BackendLayout, members: &Members) {
    let mode = if backend.http { "http" } else { "tcp" };
    let _ = writeln!(out, "backend {}", backend.name);
    let _ = writeln!(out, "    mode {mode}");
    match layout.algorithm {
        Algorithm::RoundRobin => {
            let _ = writeln!(out, "    balance roundrobin");
        }
        Algorithm::LeastConn => {
            let _ = writeln!(out, "    balance leastconn");
        }
        Algorithm::Source => {
            // Consistent hashing keeps the backend dynamic (servers can be added at run time).
            let _ = writeln!(out, "    balance source");
            let _ = writeln!(out, "    hash-type consistent");
        }
    }
    if backend.http {
        // A request that met a dying target is sent again, to another one.
        let _ = writeln!(out, "    retry-on conn-failure empty-response junk-response response-timeout");
    }
    if backend.own_check {
        if let Some(path) = layout.health_check.as_ref().and_then(|c| c.path.as_deref()) {
            let _ = writeln!(out, "    option httpchk GET {path}");
            let _ = writeln!(out, "    http-check expect status 200-399");
        }
    }
    let arguments = server_arguments(backend, layout.health_check.as_ref());
    let mut servers = members.get(&backend.name).cloned().unwrap_or_default();
    servers.sort();
    for target in &servers {
        let _ = writeln!(out, "    server {} {} {arguments}", target.name, socket_address(target, backend.port));
    }
}

/// The crt-list of an HTTPS listener: one certificate file per line, the default first.
pub fn crt_list(listener: &ListenerLayout) -> String {
    listener.certificates.iter().map(|file| format!("{MOUNT}/{CERTS_DIR}/{file}\n")).collect()
}

/// `ip:port`, with brackets for IPv6.
pub(crate) fn socket_address(target: &Target, port: u16) -> String {
    std::net::SocketAddr::new(target.address, port).to_string()
}

/// The structural part of the configuration: everything but the servers. When it changes,
/// HAProxy must reload; when only servers change, the Runtime API suffices.
pub fn structure(owner: &str, layout: &Layout) -> Result<String, RenderError> {
    render(owner, layout, &Members::new())
}

#[cfg(test)]
mod tests {
    //! Golden files: `controllers/tests/golden/*.cfg`. Set `UPDATE_GOLDEN=1` to rewrite them
    //! after an intended change, then review the diff.

    use std::path::PathBuf;

    use minicloud_crds::kinds::Route;
    use minicloud_crds::loadbalancer::LoadBalancerSpec;
    use serde_json::json;

    use super::*;
    use crate::loadbalancer::routing::{attach, RouteRef};

    fn spec(listeners: serde_json::Value, algorithm: &str, health_check: serde_json::Value) -> LoadBalancerSpec {
        serde_json::from_value(json!({
            "listeners": listeners,
            "targets": {"selector": {"matchLabels": {"app": "web"}}},
            "algorithm": algorithm,
            "healthCheck": health_check,
        }))
        .expect("spec")
    }

    fn layout(spec: &LoadBalancerSpec) -> Layout {
        crate::loadbalancer::plan::tests::layout(spec)
    }

    fn targets() -> Vec<Target> {
        // Out of order on purpose: the file lists them sorted.
        vec![
            Target { name: "web-2".into(), address: "172.18.0.3".parse().expect("ip") },
            Target { name: "web-1".into(), address: "172.18.0.2".parse().expect("ip") },
        ]
    }

    /// Every backend of the layout served by [`targets`].
    fn members(layout: &Layout) -> Members {
        layout.backends.iter().map(|b| (b.name.clone(), targets())).collect()
    }

    fn golden(name: &str, rendered: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.cfg"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("golden dir");
            std::fs::write(&path, rendered).expect("write golden");
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
        assert_eq!(rendered, expected, "{name}: the rendered configuration differs from {}", path.display());
    }

    #[test]
    fn every_listener_algorithm_and_health_check_feature_renders_as_in_its_golden_file() {
        let http = json!({"name": "http", "targetPort": 8080});
        let cases = [
            ("round-robin-http-tcp-check", spec(json!([http]), "RoundRobin", json!(null))),
            (
                "least-conn-http-check",
                spec(
                    json!([http]),
                    "LeastConn",
                    json!({"path": "/healthz?full=1", "intervalMillis": 500, "healthyThreshold": 1, "unhealthyThreshold": 2}),
                ),
            ),
            (
                "source-two-listeners-tcp",
                spec(
                    json!([http, {"name": "db", "protocol": "TCP", "targetPort": 5432, "proxyProtocol": true}]),
                    "Source",
                    json!({"intervalMillis": 1000}),
                ),
            ),
        ];
        for (name, spec) in cases {
            let layout = layout(&spec);
            let rendered = render("default/web", &layout, &members(&layout)).expect("render");
            golden(name, &rendered);
            assert_eq!(rendered, render("default/web", &layout, &members(&layout)).expect("render"), "deterministic");
        }
        let plain = layout(&spec(json!([http]), "RoundRobin", json!(null)));
        golden("no-targets", &render("default/web", &plain, &Members::new()).expect("render"));
    }

    fn route(namespace: &str, name: &str, age: i64, spec: serde_json::Value) -> Route {
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1",
            "kind": "Route",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": format!("2026-01-01T00:00:{age:02}Z")},
            "spec": spec,
        }))
        .expect("route")
    }

    #[test]
    fn routes_tls_redirects_rewrites_and_weights_render_as_in_their_golden_file() {
        let edge: LoadBalancerSpec = serde_json::from_value(json!({"listeners": [
            {"name": "http", "port": 80, "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "shop"}, {"name": "blog"}], "hsts": {"includeSubdomains": true}}, "allowedRoutes": {"namespaces": {"from": "All"}}},
        ]}))
        .expect("edge");
        let redirect = route(
            "infra",
            "to-https",
            0,
            json!({
                "parentRefs": [{"name": "edge", "namespace": "infra", "sectionName": "http"}],
                "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}],
            }),
        );
        let shop = route(
            "shop",
            "shop",
            1,
            json!({
                "parentRefs": [{"name": "edge", "namespace": "infra", "sectionName": "https"}],
                "hostnames": ["shop.example.com"],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-Canary", "value": "yes please"}], "method": "POST", "queryParams": [{"name": "v", "value": "2"}]}],
                     "filters": [
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Route", "value": "api 100%"}], "add": [{"name": "X-Added", "value": "a"}], "remove": ["X-Internal"]}},
                        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-Served-By", "value": "shop"}]}},
                        {"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}],
                     "backendRefs": [{"kind": "ScalingGroup", "name": "api", "port": 8080, "weight": 90}, {"kind": "Instance", "name": "canary", "port": 8080, "weight": 10}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/old"}}], "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}], "backendRefs": [{"selector": {"matchLabels": {"app": "shop"}}, "port": 80}]},
                    {"matches": [{"path": {"value": "/strip"}}], "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}], "backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]},
                    {"matches": [{"path": {"value": "/nothing"}}]},
                ],
            }),
        );
        let blog = route(
            "blog",
            "blog",
            2,
            json!({
                "parentRefs": [{"name": "edge", "namespace": "infra"}],
                "hostnames": ["*.blog.example.com"],
                "rules": [{"backendRefs": [{"kind": "Instance", "name": "blog", "port": 80}]}],
            }),
        );
        let routes = [redirect, shop, blog];
        let references: Vec<RouteRef<'_>> = routes.iter().map(RouteRef::of).collect();
        let attachment = attach("infra", "edge", &edge, &references);
        let layout = Layout::new(&edge, &attachment, |_| vec!["shop.pem".into(), "blog.pem".into()]);
        let rendered = render("infra/edge", &layout, &members(&layout)).expect("render");
        golden("routes-tls", &rendered);
        assert_eq!(
            crt_list(&layout.listeners[1]),
            "/etc/minicloud-lb/certs/shop.pem\n/etc/minicloud-lb/certs/blog.pem\n"
        );
        assert_ne!(
            structure("infra/edge", &layout),
            structure("infra/edge", &Layout::new(&edge, &attachment, |_| vec!["shop.pem".into()])),
            "another set of certificates is another structure"
        );
    }

    #[test]
    fn the_structure_ignores_servers_but_not_listeners_or_checks() {
        let base = spec(json!([{"name": "http", "targetPort": 8080}]), "RoundRobin", json!(null));
        let base_layout = layout(&base);
        let with_targets = render("default/web", &base_layout, &members(&base_layout)).expect("render");
        assert_ne!(with_targets, structure("default/web", &base_layout).expect("structure"));
        let mut changed = base.clone();
        changed.algorithm = Algorithm::LeastConn;
        assert_ne!(structure("default/web", &base_layout), structure("default/web", &layout(&changed)));
        let mut changed = base.clone();
        changed.health_check = Some(LbHealthCheck { path: Some("/".into()), ..Default::default() });
        assert_ne!(structure("default/web", &base_layout), structure("default/web", &layout(&changed)));
    }

    #[test]
    fn crafted_names_and_paths_cannot_inject_configuration() {
        let mut base = spec(json!([{"name": "http", "targetPort": 8080}]), "RoundRobin", json!(null));
        for path in [
            "/ok\n    server evil 10.0.0.1:80",
            "/ok # comment",
            "/a b",
            "/\"quoted\"",
            "/${HOME}",
            "/back\\slash",
            "/tab\there",
            "/nul\0",
            "relative",
        ] {
            base.health_check = Some(LbHealthCheck { path: Some(path.into()), ..Default::default() });
            assert!(
                matches!(render("d/w", &layout(&base), &Members::new()), Err(RenderError::HealthCheckPath(_))),
                "{path:?} must be refused"
            );
        }
        base.health_check = None;
        for name in ["http\nfrontend evil", "a b", "#x", "UPPER", ""] {
            let mut evil = base.clone();
            evil.listeners[0].name = name.into();
            assert!(
                matches!(render("d/w", &layout(&evil), &Members::new()), Err(RenderError::ListenerName { .. })),
                "{name:?}"
            );
            let target = Target { name: name.into(), address: "10.0.0.1".parse().expect("ip") };
            let members: Members = [("be-http".to_owned(), vec![target])].into();
            assert!(matches!(render("d/w", &layout(&base), &members), Err(RenderError::TargetName { .. })), "{name:?}");
        }
        base.listeners.clear();
        assert_eq!(render("d/w", &layout(&base), &Members::new()), Err(RenderError::NoListeners));
    }

    #[test]
    fn route_values_that_could_break_out_are_refused_even_past_the_api() {
        // What the API refuses is refused again here: the renderer trusts no caller.
        let edge: LoadBalancerSpec =
            serde_json::from_value(json!({"listeners": [{"name": "http", "port": 80}]})).expect("edge");
        let evil_values = [
            ("hostnames", json!(["a.example.com\n    server x 1.2.3.4:80"])),
            ("path", json!("/a }\n    use_backend x")),
            ("path", json!("/a' b")),
            ("header", json!("v'\nx")),
            ("header", json!("v\\")),
            ("header", json!("\"quoted\"")),
            ("method", json!("GET }")),
        ];
        for (field, value) in evil_values {
            let mut spec = json!({
                "parentRefs": [{"name": "edge"}],
                "rules": [{"matches": [{"path": {"value": "/"}}], "backendRefs": [{"kind": "Instance", "name": "web", "port": 80}]}],
            });
            match field {
                "hostnames" => spec["hostnames"] = value.clone(),
                "path" => spec["rules"][0]["matches"][0]["path"]["value"] = value.clone(),
                "header" => spec["rules"][0]["matches"][0]["headers"] = json!([{"name": "x", "value": value}]),
                _ => spec["rules"][0]["matches"][0]["method"] = value.clone(),
            }
            let route = route("default", "evil", 0, spec);
            let references = [RouteRef::of(&route)];
            let attachment = attach("default", "edge", &edge, &references);
            let layout = Layout::new(&edge, &attachment, |_| Vec::new());
            assert!(
                matches!(render("default/edge", &layout, &Members::new()), Err(RenderError::Route { .. })),
                "{field} {value} must be refused"
            );
        }
    }

    #[test]
    fn container_ports_follow_listener_order() {
        assert_eq!((container_port(0), container_port(3)), (8000, 8003));
        let v6 = Target { name: "a".into(), address: "fd00::2".parse().expect("ip") };
        assert_eq!(socket_address(&v6, 80), "[fd00::2]:80");
    }
}
