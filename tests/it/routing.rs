//! The front door with real HAProxy and real Docker, inside the real `cloud server`: one shared
//! LoadBalancer with an HTTP and an HTTPS listener, routes from three namespaces, requests
//! made with `curl --resolve` (host names resolved to 127.0.0.1, nothing leaves the machine).
//! What it shows: host (exact and wildcard), path (exact and prefix), header and method
//! matches in the Gateway API's precedence; a 90/10 split within ±5 %; redirects and their
//! `Location`; a prefix rewrite as the backend sees it; `X-Forwarded-*` set (and a client's
//! forged `X-Forwarded-For` dropped); TLS with the certificate chosen by SNI and HTTP/2 by ALPN;
//! a route from a namespace the listener does not admit gets `Accepted=False` and no traffic;
//! two routes claiming the same host and path: the older wins, the newer says why; a second
//! load balancer asking for a taken address and port gets `PortInUse`.
//!
//! Containers carry `minicloud.dev/test=rt-...`; leftovers of a crashed run are removed first.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::cluster::{condition, Harness};

const PREFIX: &str = "rt";

/// An Instance in `namespace` whose every unknown path answers `role` (its 404 page).
fn app(namespace: &str, name: &str, role: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "image": "minicloud/web:local",
            "resources": {"memory": "32Mi"},
            "command": ["sh", "-c", "echo \"$ROLE\" > /www/404.html && exec httpd -f -p 8080 -h /www -c /www/httpd.conf"],
            "env": [{"name": "ROLE", "value": role}],
        }
    })
}

fn route(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "minicloud.dev/v1", "kind": "Route", "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// What `curl` got: status, body, headers (lower-case names), HTTP version, and curl's own
/// complaint when there was no answer.
struct Answer {
    status: u16,
    body: String,
    headers: BTreeMap<String, String>,
    version: String,
    error: String,
}

/// `curl` with `host` resolved to 127.0.0.1 on `port`.
fn curl(url: &str, host: &str, port: u16, extra: &[&str]) -> Answer {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let dir = tempfile::tempdir().expect("dir");
    let headers_file = dir.path().join("headers");
    let output = Command::new("curl")
        .args(["-skS", "--max-time", "10", "--resolve", &resolve, "-D"])
        .arg(&headers_file)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    let headers = std::fs::read_to_string(&headers_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let error = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Answer {
        status: status.parse().unwrap_or(0),
        body: body.trim().to_owned(),
        headers,
        version: version.to_owned(),
        error,
    }
}

/// The host port of a listener.
fn port_of(lb: &Value, listener: &str) -> u16 {
    let endpoint = lb["status"]["endpoints"][listener].as_str().unwrap_or_default();
    endpoint
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no endpoint for {listener}: {lb}"))
}

/// A parent's condition of a route in another namespace.
async fn parent_condition(
    harness: &Harness,
    namespace: &str,
    name: &str,
    index: usize,
    type_: &str,
) -> Option<(String, String, String)> {
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/{namespace}/routes/{name}", harness.server().url);
    let route: Value = harness.http.get(url).send().await.ok()?.json().await.ok()?;
    let found =
        route["status"]["parents"][index]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
    let text = |key: &str| found[key].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

async fn wait_parent(
    harness: &Harness,
    namespace: &str,
    name: &str,
    index: usize,
    type_: &str,
    status: &str,
) -> (String, String, String) {
    for _ in 0..300 {
        if let Some(found) = parent_condition(harness, namespace, name, index, type_).await {
            if found.0 == status {
                return found;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "route {namespace}/{name} parent {index}: {type_} never became {status}: {:?}",
        parent_condition(harness, namespace, name, index, type_).await
    );
}

/// Asks until `check` holds for the answer (routes take effect within about a second; the
/// limit is for a machine busy with the whole suite).
async fn until(what: &str, ask: impl Fn() -> Answer, check: impl Fn(&Answer) -> bool) -> Answer {
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < deadline {
        let answer = ask();
        if check(&answer) {
            return answer;
        }
        last = Some(answer);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.expect("asked");
    panic!("{what}: last answer {} {:?} {:?} {}", last.status, last.body, last.headers, last.error);
}

#[tokio::test]
async fn routes_from_three_namespaces_share_one_load_balancer_over_http_and_https() {
    let harness = Harness::start(PREFIX).await;
    let own = harness.namespace.clone();
    let blog_ns = format!("{own}-blog");
    let evil_ns = format!("{own}-evil");
    let edge = harness.load_balancer(
        "edge",
        json!({"listeners": [
            {"name": "web", "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": blog_ns}}}}},
            {"name": "own"},
            {"name": "tls", "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "shop"}, {"name": "blog"}]}, "allowedRoutes": {"namespaces": {"from": "All"}}},
        ]}),
    );
    let certificate = |namespace: &str, name: &str, names: Value| {
        json!({"apiVersion": "minicloud.dev/v1", "kind": "Certificate", "metadata": {"name": name, "namespace": namespace},
               "spec": {"dnsNames": names, "issuer": {"selfSigned": {}}}})
    };
    let shop_rules = json!([
        {"matches": [{"path": {"value": "/api"}, "headers": [{"name": "X-Canary", "value": "yes"}]}], "backendRefs": [{"kind": "Instance", "name": "canary", "port": 8080}]},
        {"matches": [{"path": {"value": "/api"}}], "backendRefs": [{"kind": "Instance", "name": "api", "port": 8080}]},
        {"matches": [{"path": {"type": "Exact", "value": "/cgi-bin/headers"}, "method": "POST"}], "backendRefs": [{"kind": "Instance", "name": "api", "port": 8080}]},
        {"matches": [{"path": {"value": "/old"}}], "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example.com", "statusCode": 301}}]},
        {"matches": [{"path": {"value": "/app"}}], "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/cgi-bin"}}}],
         "backendRefs": [{"kind": "Instance", "name": "shop-v1", "port": 8080}]},
        {"backendRefs": [{"kind": "Instance", "name": "shop-v1", "port": 8080, "weight": 90}, {"kind": "Instance", "name": "shop-v2", "port": 8080, "weight": 10}]},
    ]);
    harness
        .apply(vec![
            app(&own, "shop-v1", "shop-v1"),
            app(&own, "shop-v2", "shop-v2"),
            app(&own, "api", "api"),
            app(&own, "canary", "canary"),
            app(&blog_ns, "blog", "blog"),
            app(&evil_ns, "evil", "evil"),
            certificate(&own, "shop", json!(["shop.example.com"])),
            certificate(&own, "blog", json!(["www.blog.example.com"])),
            edge,
            route(&own, "shop", json!({"parentRefs": [{"name": "edge", "sectionName": "own"}, {"name": "edge", "sectionName": "tls"}, {"name": "edge", "sectionName": "web"}],
                                       "hostnames": ["shop.example.com"], "rules": shop_rules})),
            route(&own, "secure", json!({"parentRefs": [{"name": "edge", "sectionName": "own"}], "hostnames": ["secure.example.com"],
                                         "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]}]})),
            route(&blog_ns, "blog", json!({"parentRefs": [{"name": "edge", "namespace": own, "sectionName": "web"}, {"name": "edge", "namespace": own, "sectionName": "tls"}],
                                           "hostnames": ["*.blog.example.com"], "rules": [{"backendRefs": [{"kind": "Instance", "name": "blog", "port": 8080}]}]})),
            route(&evil_ns, "evil", json!({"parentRefs": [{"name": "edge", "namespace": own, "sectionName": "own"}], "hostnames": ["shop.example.com"],
                                           "rules": [{"backendRefs": [{"kind": "Instance", "name": "evil", "port": 8080}]}]})),
        ])
        .await;
    let lb = harness
        .wait_for("loadbalancers", "edge", "edge serving with its certificates", |o| {
            condition(o, "Ready").is_some_and(|(status, _)| status == "True")
                && o["status"]["endpoints"]["tls"].is_string()
        })
        .await;
    let (own_port, web_port, tls_port) = (port_of(&lb, "own"), port_of(&lb, "web"), port_of(&lb, "tls"));
    let shop = |path: &str, extra: &[&str]| {
        curl(&format!("http://shop.example.com:{own_port}{path}"), "shop.example.com", own_port, extra)
    };

    // Every backend up first (on a busy machine the Instances take a while).
    for name in ["shop-v1", "shop-v2", "api", "canary"] {
        harness
            .wait_for_within("instances", name, "running", Duration::from_secs(90), |o| {
                condition(o, "Ready").is_some_and(|(s, _)| s == "True")
            })
            .await;
    }
    // Exact host, prefix path, header match before the plain prefix, exact path with method.
    until("the shop's /api", || shop("/api/items", &[]), |a| a.body == "api").await;
    until("the shop's root", || shop("/apix", &[]), |a| a.body.starts_with("shop-v")).await;
    until("the shop's POST", || shop("/cgi-bin/headers", &["-X", "POST"]), |a| a.status == 200).await;
    assert_eq!(shop("/api/items", &["-H", "X-Canary: yes"]).body, "canary");
    assert_eq!(shop("/api", &[]).body, "api", "a prefix matches the segment itself");
    assert!(shop("/apix", &[]).body.starts_with("shop-v"), "/apix is not under /api");
    let posted = shop("/cgi-bin/headers", &["-X", "POST"]);
    assert!(posted.body.lines().any(|l| l == "role api"), "exact path and method: {} {}", posted.status, posted.body);
    assert!(shop("/cgi-bin/headers", &[]).body.contains("role shop-v"), "a GET falls through to /");

    // Redirect: code and Location (host replaced, path and query kept).
    let moved = shop("/old/page?x=1", &[]);
    assert_eq!(moved.status, 301);
    let location = moved.headers.get("location").cloned().unwrap_or_default();
    assert!(location.starts_with("http://new.example.com") && location.ends_with("/old/page?x=1"), "{location}");
    let secure = curl(&format!("http://secure.example.com:{own_port}/a?b=c"), "secure.example.com", own_port, &[]);
    assert_eq!(secure.status, 302);
    assert_eq!(secure.headers.get("location").map(String::as_str), Some("https://secure.example.com/a?b=c"));

    // Rewrite: /app/headers reaches the backend as /cgi-bin/headers; forwarding headers are
    // set, a forged X-Forwarded-For is dropped.
    let echoed = shop("/app/headers?q=1", &["-H", "X-Forwarded-For: 6.6.6.6"]);
    assert!(echoed.body.contains("uri /cgi-bin/headers?q=1"), "{}", echoed.body);
    assert!(echoed.body.lines().any(|line| line == "HTTP_X_FORWARDED_PROTO=http"), "{}", echoed.body);
    assert!(echoed.body.contains(&format!("HTTP_X_FORWARDED_HOST=shop.example.com:{own_port}")), "{}", echoed.body);
    assert!(echoed.body.contains("HTTP_X_FORWARDED_FOR="), "{}", echoed.body);
    assert!(!echoed.body.contains("6.6.6.6"), "a client's forged hop is dropped: {}", echoed.body);
    assert!(echoed.body.contains("HTTP_FORWARDED=for="), "{}", echoed.body);

    // Weights: 1,000 requests split 90/10 within ±5 %.
    let http = reqwest::Client::builder()
        .resolve("shop.example.com", std::net::SocketAddr::from(([127, 0, 0, 1], own_port)))
        .build()
        .expect("client");
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..1000 {
        let response = http.get(format!("http://shop.example.com:{own_port}/weights")).send().await.expect("request");
        *counts.entry(response.text().await.expect("body").trim().to_owned()).or_default() += 1;
    }
    let v2 = counts.get("shop-v2").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<u32>(), 1000, "{counts:?}");
    assert!((50..=150).contains(&v2), "10 % ± 5 % to shop-v2: {counts:?}");

    // Wildcard host from the admitted namespace on its listener; the unadmitted namespace gets
    // nothing and is told why.
    let blog = curl(&format!("http://www.blog.example.com:{web_port}/x"), "www.blog.example.com", web_port, &[]);
    assert_eq!(blog.body, "blog");
    let bare = curl(&format!("http://blog.example.com:{web_port}/"), "blog.example.com", web_port, &[]);
    assert_eq!(bare.status, 404, "*.blog.example.com does not cover blog.example.com");
    let (_, reason, message) = wait_parent(&harness, &evil_ns, "evil", 0, "Accepted", "False").await;
    assert_eq!(reason, "NotAllowedByListeners", "{message}");
    for _ in 0..20 {
        assert_ne!(shop("/x", &[]).body, "evil", "the refused route never gets traffic");
    }
    wait_parent(&harness, &own, "shop", 0, "Accepted", "True").await;
    wait_parent(&harness, &own, "shop", 1, "Accepted", "True").await;
    wait_parent(&harness, &blog_ns, "blog", 0, "ResolvedRefs", "True").await;

    // HTTPS: the certificate is chosen by SNI, HTTP/2 is negotiated, the route serves.
    let over_tls =
        curl(&format!("https://shop.example.com:{tls_port}/api/x"), "shop.example.com", tls_port, &["--http2"]);
    assert_eq!((over_tls.body.as_str(), over_tls.version.as_str()), ("api", "2"));
    let blog_tls = curl(&format!("https://www.blog.example.com:{tls_port}/x"), "www.blog.example.com", tls_port, &[]);
    assert_eq!(blog_tls.body, "blog");
    for (name, expected) in [("shop.example.com", "shop.example.com"), ("www.blog.example.com", "www.blog.example.com")]
    {
        let subject = served_certificate(tls_port, name);
        assert!(subject.contains(&format!("DNS:{expected}")), "SNI {name}: {subject}");
    }
    let proto = curl(&format!("https://shop.example.com:{tls_port}/app/headers"), "shop.example.com", tls_port, &[]);
    assert!(proto.body.contains("HTTP_X_FORWARDED_PROTO=https"), "{}", proto.body);

    // The shop asked for `web` too, which admits the blog's namespace only.
    let (_, reason, _) = wait_parent(&harness, &own, "shop", 2, "Accepted", "False").await;
    assert_eq!(reason, "NotAllowedByListeners");

    // The blog goes: the load balancer leaves the blog namespace's network, which goes too.
    for plural in ["routes", "instances"] {
        let url = format!("{}/apis/minicloud.dev/v1/namespaces/{blog_ns}/{plural}/blog", harness.server().url);
        assert!(harness.http.delete(url).send().await.expect("delete").status().is_success());
    }
    let prefix = format!("name=mcnet.{blog_ns}.");
    let mut left = String::from("?");
    for _ in 0..300 {
        left = crate::common::docker::docker(&["network", "ls", "-q", "--filter", &prefix]);
        if left.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.trim().is_empty(), "the blog namespace's network is left behind: {left}");
    let still = curl(&format!("https://shop.example.com:{tls_port}/api/x"), "shop.example.com", tls_port, &[]);
    assert_eq!(still.body, "api", "the shop is still served");
}

/// The subject alternative names of the certificate served for SNI `name`.
fn served_certificate(port: u16, name: &str) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
    );
    let output = Command::new("sh").args(["-c", &script]).output().expect("openssl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_older_of_two_routes_keeps_a_match_and_the_newer_says_why() {
    let harness = Harness::start(PREFIX).await;
    let own = harness.namespace.clone();
    harness
        .apply(vec![
            app(&own, "first", "first"),
            app(&own, "second", "second"),
            harness.load_balancer("edge", json!({"listeners": [{"name": "web"}]})),
            route(&own, "first", json!({"parentRefs": [{"name": "edge"}], "hostnames": ["a.example.com"],
                                        "rules": [{"matches": [{"path": {"value": "/api"}}], "backendRefs": [{"kind": "Instance", "name": "first", "port": 8080}]}]})),
        ])
        .await;
    let lb = harness
        .wait_for("loadbalancers", "edge", "edge ready", |o| condition(o, "Ready").is_some_and(|(s, _)| s == "True"))
        .await;
    let port = port_of(&lb, "web");
    let ask = || curl(&format!("http://a.example.com:{port}/api/x"), "a.example.com", port, &[]);
    until("the first route", ask, |a| a.body == "first").await;
    // Created later, claiming the same host and path (written /api/: the same prefix).
    harness
        .apply(vec![route(&own, "second", json!({"parentRefs": [{"name": "edge"}], "hostnames": ["a.example.com"],
                                                  "rules": [{"matches": [{"path": {"value": "/api/"}}], "backendRefs": [{"kind": "Instance", "name": "second", "port": 8080}]}]}))])
        .await;
    let (_, reason, message) = wait_parent(&harness, &own, "second", 0, "Accepted", "False").await;
    assert_eq!(reason, "Conflicted");
    assert!(message.contains(&format!("{own}/first")), "{message}");
    for _ in 0..20 {
        assert_eq!(ask().body, "first", "the older route keeps the match");
    }
    let (_, _, first_message) = wait_parent(&harness, &own, "first", 0, "Accepted", "True").await;
    assert!(!first_message.contains("shadowed"), "{first_message}");
    let (ok, table, _) = harness.cloud(&["get", "routes", "-n", &own]);
    assert!(ok && table.contains("HOSTNAMES") && table.contains("a.example.com") && table.contains("0/1"), "{table}");

    // The older route goes: the newer takes over, within a second or so.
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/{own}/routes/first", harness.server().url);
    assert!(harness.http.delete(url).send().await.expect("delete").status().is_success());
    until("the second route after the first is gone", ask, |a| a.body == "second").await;
    wait_parent(&harness, &own, "second", 0, "Accepted", "True").await;
}

#[tokio::test]
async fn a_second_load_balancer_on_a_taken_address_and_port_says_who_holds_it() {
    let harness = Harness::start(PREFIX).await;
    let own = harness.namespace.clone();
    // Below Docker's range of automatically published ports (32768 and up).
    let port = 20000 + (std::process::id() % 10000) as u16;
    harness.apply(vec![harness.load_balancer("first", json!({"listeners": [{"name": "web", "port": port}]}))]).await;
    harness
        .wait_for("loadbalancers", "first", "first ready", |o| condition(o, "Ready").is_some_and(|(s, _)| s == "True"))
        .await;
    // 0.0.0.0 overlaps 127.0.0.1 on the same port.
    harness
        .apply(vec![harness
            .load_balancer("second", json!({"listeners": [{"name": "public", "address": "0.0.0.0", "port": port}]}))])
        .await;
    let second = harness
        .wait_for("loadbalancers", "second", "PortInUse", |o| {
            condition(o, "Ready").is_some_and(|(_, reason)| reason == "PortInUse")
        })
        .await;
    let message = second["status"]["conditions"].to_string();
    assert!(message.contains(&format!("{own}/first")) && message.contains(&port.to_string()), "{message}");
    assert!(harness.containers("LoadBalancer", false).len() == 1, "no container for the second");
    // The holder goes: the port is free, the second one starts.
    let url = format!("{}/apis/minicloud.dev/v1/namespaces/{own}/loadbalancers/first", harness.server().url);
    assert!(harness.http.delete(url).send().await.expect("delete").status().is_success());
    harness
        .wait_for_within("loadbalancers", "second", "second ready", Duration::from_secs(90), |o| {
            condition(o, "Ready").is_some_and(|(s, _)| s == "True")
        })
        .await;
}

#[tokio::test]
async fn the_https_listener_offers_tls_1_2_and_up_with_strong_ciphers_only_as_testssl_sees_it() {
    let installed = Command::new("testssl").arg("--version").output().is_ok();
    assert!(installed, "testssl is not installed: apt-get install testssl.sh (scripts/test does)");
    let harness = Harness::start(PREFIX).await;
    let own = harness.namespace.clone();
    harness
        .apply(vec![
            json!({"apiVersion": "minicloud.dev/v1", "kind": "Certificate", "metadata": {"name": "scan", "namespace": own},
                   "spec": {"dnsNames": ["scan.example.com"], "issuer": {"selfSigned": {}}}}),
            harness.load_balancer(
                "edge",
                json!({"listeners": [{"name": "tls", "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "scan"}], "hsts": {}}}]}),
            ),
        ])
        .await;
    let lb = harness
        .wait_for("loadbalancers", "edge", "serving its certificate", |o| {
            condition(o, "Ready").is_some_and(|(s, _)| s == "True")
                && condition(o, "CertificatesReady").is_some_and(|(s, _)| s == "True")
        })
        .await;
    let port = port_of(&lb, "tls");
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("testssl-listener.json");
    let _ = std::fs::remove_file(&report);
    let output = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--protocols", "--std", "--jsonfile"])
        .arg(&report)
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("testssl");
    let findings: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .unwrap_or_else(|error| panic!("no testssl report ({error}): {}", String::from_utf8_lossy(&output.stdout)));
    println!("testssl report saved at {}", report.display());
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("testssl reported nothing on {id}: {findings:?}"))
            .to_owned()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(finding(old), "not offered", "{old}");
    }
    assert!(finding("TLS1_2").starts_with("offered") && finding("TLS1_3").starts_with("offered"));
    for weak in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        assert_eq!(finding(weak), "not offered", "{weak}");
    }
    let bad: Vec<&Value> =
        findings.iter().filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL"))).collect();
    assert!(bad.is_empty(), "{bad:?}");
    let hsts = curl(&format!("https://scan.example.com:{port}/"), "scan.example.com", port, &[]);
    assert_eq!(hsts.headers.get("strict-transport-security").map(String::as_str), Some("max-age=31536000"));
}

#[tokio::test]
async fn hostile_values_in_every_new_field_are_refused_with_their_field_path_and_change_nothing() {
    let harness = Harness::start(PREFIX).await;
    let own = harness.namespace.clone();
    let good_route = || {
        json!({"parentRefs": [{"name": "edge"}], "hostnames": ["a.example.com"],
               "rules": [{"matches": [{"path": {"value": "/"}}], "backendRefs": [{"kind": "Instance", "name": "web", "port": 8080}]}]})
    };
    let good_lb = || json!({"listeners": [{"name": "web"}, {"name": "tls", "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "c"}]}}]});
    let good_certificate = || json!({"dnsNames": ["a.example.com"], "issuer": {"selfSigned": {}}});
    let newline = "x\n    server evil 10.0.0.1:80";
    // (kind, JSON pointer into the spec, hostile value, the field path the error must name)
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("LoadBalancer", "/listeners/0/address", json!("0.0.0.0\nbind :1"), "spec.listeners[0].address"),
        ("LoadBalancer", "/listeners/0/address", json!("example.com"), "spec.listeners[0].address"),
        ("LoadBalancer", "/listeners/0/hostname", json!("a.example.com #x"), "spec.listeners[0].hostname"),
        (
            "LoadBalancer",
            "/listeners/1/tls/certificateRefs/0/name",
            json!("../../etc/passwd"),
            "spec.listeners[1].tls.certificateRefs[0].name",
        ),
        (
            "LoadBalancer",
            "/listeners/0/allowedRoutes",
            json!({"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "x"}}}}),
            "spec.listeners[0].allowedRoutes.namespaces.selector.matchLabels.team",
        ),
        ("Route", "/hostnames/0", json!(newline), "spec.hostnames[0]"),
        ("Route", "/hostnames/0", json!("A.example.com"), "spec.hostnames[0]"),
        (
            "Route",
            "/rules/0/matches/0/path/value",
            json!("/a }\n    use_backend x"),
            "spec.rules[0].matches[0].path.value",
        ),
        ("Route", "/rules/0/matches/0/path/value", json!("/a'b"), "spec.rules[0].matches[0].path.value"),
        ("Route", "/rules/0/matches/0/path/value", json!("/(.*)$"), "spec.rules[0].matches[0].path.value"),
        (
            "Route",
            "/rules/0/matches/0/headers",
            json!([{"name": "x y", "value": "v"}]),
            "spec.rules[0].matches[0].headers[0].name",
        ),
        (
            "Route",
            "/rules/0/matches/0/headers",
            json!([{"name": "x", "value": "v\"; evil"}]),
            "spec.rules[0].matches[0].headers[0].value",
        ),
        ("Route", "/rules/0/matches/0/method", json!("GET }"), "spec.rules[0].matches[0].method"),
        (
            "Route",
            "/rules/0/matches/0/queryParams",
            json!([{"name": "a=b", "value": "c"}]),
            "spec.rules[0].matches[0].queryParams[0].name",
        ),
        (
            "Route",
            "/rules/0/filters",
            json!([{"type": "RequestRedirect", "requestRedirect": {"hostname": "a.com/evil"}}]),
            "spec.rules[0].filters[0].requestRedirect.hostname",
        ),
        (
            "Route",
            "/rules/0/filters",
            json!([{"type": "RequestRedirect", "requestRedirect": {"scheme": "javascript"}}]),
            "spec.rules[0].filters[0].requestRedirect.scheme",
        ),
        (
            "Route",
            "/rules/0/filters",
            json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X", "value": "a\\b"}]}}]),
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].value",
        ),
        (
            "Route",
            "/rules/0/filters",
            json!([{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/a b"}}}]),
            "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
        ),
        ("Route", "/rules/0/backendRefs/0/name", json!("web.other-namespace"), "spec.rules[0].backendRefs[0].name"),
        ("Route", "/parentRefs/0/namespace", json!("a/b"), "spec.parentRefs[0].namespace"),
        ("Certificate", "/dnsNames/0", json!("a.example.com\n"), "spec.dnsNames[0]"),
        ("Certificate", "/issuer", json!({"acme": {"directory": "file:///etc/passwd"}}), "spec.issuer.acme.directory"),
        (
            "Certificate",
            "/issuer",
            json!({"acme": {"directory": "https://ca.example/dir", "email": "a b@x.y"}}),
            "spec.issuer.acme.email",
        ),
        ("Certificate", "/issuer", json!({"selfSigned": {}, "secretRef": {"name": "x"}}), "spec.issuer"),
        ("Certificate", "/renewBefore", json!("soon"), "spec.renewBefore"),
    ];
    for (kind, pointer, value, path) in cases {
        let (name, mut spec) = match kind {
            "LoadBalancer" => ("edge", good_lb()),
            "Route" => ("r", good_route()),
            _ => ("c", good_certificate()),
        };
        let (parent, last) = pointer.rsplit_once('/').expect("pointer");
        let target = if parent.is_empty() { Some(&mut spec) } else { spec.pointer_mut(parent) };
        match target {
            Some(Value::Object(map)) => {
                map.insert(last.to_owned(), value.clone());
            }
            Some(Value::Array(items)) => items[last.parse::<usize>().expect("index")] = value.clone(),
            _ => panic!("{pointer} is not in the spec"),
        }
        let object = json!({"apiVersion": "minicloud.dev/v1", "kind": kind, "metadata": {"name": name, "namespace": own}, "spec": spec});
        let (status, body) = harness.try_apply(vec![object]).await;
        assert!((400..500).contains(&status), "{kind} {pointer} = {value} must be refused: {status} {body}");
        assert!(body.to_string().contains(path), "{kind} {pointer} = {value}: the error names {path}: {body}");
    }
    for plural in ["loadbalancers", "routes", "certificates"] {
        assert!(harness.list(plural).await.is_empty(), "nothing was applied ({plural})");
    }
}

#[tokio::test]
async fn a_web_template_given_a_hostname_is_served_by_the_shared_front_door_and_without_one_has_no_route() {
    let harness = Harness::start(PREFIX).await;
    let own = harness.namespace.clone();
    harness.apply(vec![harness.load_balancer("edge", json!({"listeners": [{"name": "web"}]}))]).await;
    let lb = harness
        .wait_for("loadbalancers", "edge", "edge ready", |o| condition(o, "Ready").is_some_and(|(s, _)| s == "True"))
        .await;
    let port = port_of(&lb, "web");
    let front_door = format!("front_door_namespace={own}");
    let install = |hostname: &str| {
        let hostname = format!("hostname={hostname}");
        let arguments = [
            "templates",
            "install",
            "static-site",
            "site",
            "-n",
            &own,
            "--set",
            "replicas=1",
            "--set",
            &hostname,
            "--set",
            &front_door,
        ];
        let (ok, stdout, stderr) = harness.cloud(&arguments);
        assert!(ok, "{stdout}{stderr}");
    };
    install("site.example.com");
    harness
        .wait_for_within("stacks", "site", "Ready", Duration::from_secs(90), |o| o["status"]["phase"] == "Ready")
        .await;
    let page = until(
        "the site through the front door",
        || curl(&format!("http://site.example.com:{port}/"), "site.example.com", port, &[]),
        |a| a.body.contains("Hello from minicloud"),
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(harness.get("routes", "site-host").await.is_some());

    // No host name: the stack has no Route (the one it had is removed).
    install("");
    for _ in 0..300 {
        if harness.get("routes", "site-host").await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(harness.get("routes", "site-host").await.is_none(), "the Route goes with its host name");
    until(
        "the host name no longer routed",
        || curl(&format!("http://site.example.com:{port}/"), "site.example.com", port, &[]),
        |a| a.status == 404,
    )
    .await;
}

/// An image with HAProxy and busybox's shell (to write a configuration at start), built from
/// the two local images.
fn haproxy_with_shell_image() -> &'static str {
    const IMAGE: &str = "minicloud/haproxy-shell:test";
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let context = tempfile::tempdir().expect("context");
        let dockerfile =
            "FROM minicloud/haproxy:local\nCOPY --from=minicloud/web:local /bin/busybox /bin/busybox\nENTRYPOINT []\n";
        std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
        let output = Command::new("docker")
            .args(["build", "-q", "--label", "minicloud.dev/image=test", "-t", IMAGE])
            .arg(context.path())
            .output()
            .expect("docker build");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    });
    IMAGE
}

#[tokio::test]
async fn a_tcp_listener_with_proxy_protocol_tells_the_target_who_the_client_is() {
    let harness = Harness::start(PREFIX).await;
    // The target accepts only connections that start with a PROXY header, and answers with
    // the client address the header carried.
    let config = "defaults\n  mode http\n  timeout client 10s\n  timeout server 10s\n  timeout connect 1s\nfrontend answer\n  bind :8080 accept-proxy\n  http-request return status 200 content-type text/plain lf-string \"client %[src]\"\n";
    let target = harness.instance(
        "aware",
        json!({"app": "aware"}),
        json!({"image": haproxy_with_shell_image(),
               "command": ["/bin/busybox", "sh", "-c", format!("printf '%s' '{config}' > /tmp/answer.cfg && exec /usr/sbin/haproxy -db -f /tmp/answer.cfg")]}),
    );
    let lb = harness.load_balancer(
        "raw",
        json!({"listeners": [{"name": "tcp", "protocol": "TCP", "targetPort": 8080, "proxyProtocol": true}],
               "targets": {"selector": {"matchLabels": {"app": "aware"}}}}),
    );
    harness.apply(vec![target, lb]).await;
    let lb = harness
        .wait_for("loadbalancers", "raw", "serving", |o| condition(o, "Ready").is_some_and(|(s, _)| s == "True"))
        .await;
    let port = port_of(&lb, "tcp");
    let answer = until(
        "an answer through the PROXY protocol",
        || curl(&format!("http://127.0.0.1:{port}/"), "127.0.0.1", port, &[]),
        |a| a.status == 200,
    )
    .await;
    // Without the header the target would refuse the connection; with it, the address is the
    // client's as HAProxy saw it, not the load balancer container's.
    let lb_container = harness.lb_containers().first().cloned().expect("the load balancer's container");
    let lb_address = crate::common::docker::docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &lb_container,
    ]);
    assert!(answer.body.starts_with("client "), "{}", answer.body);
    assert!(!answer.body.contains(lb_address.trim()), "the target sees the client, not {lb_address}: {}", answer.body);
}
