//! Certificates against a real ACME CA (pebble, with pebble-challtestsrv answering DNS with
//! 127.0.0.1), served by a real HAProxy: issuance through HTTP-01 answered by the load
//! balancer, the certificate chosen by SNI, renewal through the Runtime API under a request
//! loop with no failed request, the CA's refusal reported with its detail and retried with a
//! growing backoff, a control plane killed mid-order that resumes its order rather than placing
//! another, and user-provided pairs that are broken (mismatched key, expired, not PEM) refused
//! while the listener keeps serving the last good one.
//!
//! Containers carry `minicloud.dev/test=acme-...`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::cluster::{condition, Harness};
use crate::common::pebble::{free_port, Pebble};

const PREFIX: &str = "acme";
const HOST: &str = "site.example.test";

fn app(harness: &Harness) -> Value {
    harness.instance(
        "site",
        json!({"app": "site"}),
        json!({"command": ["sh", "-c", "echo site > /www/404.html && exec httpd -f -p 8080 -h /www -c /www/httpd.conf"]}),
    )
}

/// A load balancer with an HTTP listener on `http_port` (where pebble validates) and an HTTPS
/// one serving certificate `site`, and the route of `HOST` on both.
fn front_door(harness: &Harness, http_port: u16) -> Vec<Value> {
    let ns = harness.namespace.clone();
    vec![
        harness.load_balancer(
            "edge",
            json!({"listeners": [
                {"name": "web", "port": http_port},
                {"name": "tls", "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "site"}]}},
            ]}),
        ),
        json!({"apiVersion": "minicloud.dev/v1", "kind": "Route", "metadata": {"name": "site", "namespace": ns},
               "spec": {"parentRefs": [{"name": "edge"}], "hostnames": [HOST], "rules": [{"backendRefs": [{"kind": "Instance", "name": "site", "port": 8080}]}]}}),
    ]
}

fn acme_certificate(harness: &Harness, name: &str, dns_name: &str, pebble: &Pebble) -> Value {
    json!({"apiVersion": "minicloud.dev/v1", "kind": "Certificate", "metadata": {"name": name, "namespace": harness.namespace},
           "spec": {"dnsNames": [dns_name], "issuer": {"acme": {"directory": pebble.directory, "email": "ops@example.test", "caBundle": pebble.ca_bundle}}}})
}

/// Issuer, serial and names of the certificate served for SNI `name` on `port`.
fn served(port: u16, name: &str) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -issuer -serial -ext subjectAltName"
    );
    String::from_utf8_lossy(&Command::new("sh").args(["-c", &script]).output().expect("openssl").stdout).into_owned()
}

fn port_of(lb: &Value, listener: &str) -> u16 {
    lb["status"]["endpoints"][listener].as_str().and_then(|e| e.rsplit(':').next()?.parse().ok()).expect("endpoint")
}

fn ready(o: &Value) -> bool {
    condition(o, "Ready").is_some_and(|(status, _)| status == "True")
}

#[tokio::test]
async fn pebble_issues_the_load_balancer_serves_it_by_sni_and_renewal_fails_no_request() {
    let harness = Harness::start(PREFIX).await;
    let http_port = free_port();
    // Short-lived certificates: renewal (at two thirds of the lifetime) comes within the test.
    let pebble = Pebble::start(http_port, Some(45), &[]);
    let mut objects = vec![app(&harness), acme_certificate(&harness, "site", HOST, &pebble)];
    objects.extend(front_door(&harness, http_port));
    harness.apply(objects).await;
    let certificate =
        harness.wait_for_within("certificates", "site", "issued by pebble", Duration::from_secs(90), ready).await;
    let first_serial = certificate["status"]["serial"].as_str().expect("serial").to_owned();
    assert!(certificate["status"]["issuerName"].as_str().unwrap_or("").contains("Pebble"), "{certificate}");
    let lb = harness.wait_for("loadbalancers", "edge", "edge ready", ready).await;
    let tls_port = port_of(&lb, "tls");
    let mut shown = served(tls_port, HOST);
    for _ in 0..50 {
        if shown.contains("Pebble") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = served(tls_port, HOST);
    }
    assert!(shown.contains("Pebble") && shown.contains(&format!("DNS:{HOST}")), "{shown}");
    let (ok, table, _) = harness.cloud(&["get", "certificates", "-n", &harness.namespace]);
    assert!(ok && table.contains("NOT AFTER") && table.contains(HOST) && table.contains("acme"), "{table}");

    // A new TLS connection per request through the renewal: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_count, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let worker = {
        let (stop, ok_count, failures) = (stop.clone(), ok_count.clone(), failures.clone());
        std::thread::spawn(move || {
            let resolve = format!("{HOST}:{tls_port}:127.0.0.1");
            let url = format!("https://{HOST}:{tls_port}/x");
            while !stop.load(Ordering::Relaxed) {
                let output = Command::new("curl")
                    .args([
                        "-sk",
                        "--max-time",
                        "5",
                        "--resolve",
                        &resolve,
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        &url,
                    ])
                    .output()
                    .expect("curl");
                let code = String::from_utf8_lossy(&output.stdout).into_owned();
                if code == "404" {
                    // The site's identity page: served by the backend.
                    ok_count.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().expect("lock").push(code);
                }
            }
        })
    };
    let renewed = harness
        .wait_for_within("certificates", "site", "renewed", Duration::from_secs(90), |o| {
            o["status"]["serial"].as_str().is_some_and(|serial| serial != first_serial) && ready(o)
        })
        .await;
    let new_serial = renewed["status"]["serial"].as_str().expect("serial").to_ascii_uppercase();
    let mut shown = served(tls_port, HOST);
    for _ in 0..50 {
        if shown.to_ascii_uppercase().contains(&new_serial) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = served(tls_port, HOST);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    assert!(
        shown.to_ascii_uppercase().contains(&new_serial),
        "the renewed certificate is served: {shown} (want {new_serial})"
    );
    let failures = failures.lock().expect("lock").clone();
    let ok_count = ok_count.load(Ordering::Relaxed);
    assert!(failures.is_empty() && ok_count > 50, "{ok_count} requests served, failed: {failures:?}");
    let events = harness.events("Certificate", "site").await;
    assert!(events.iter().any(|e| e.starts_with("Renewed:")), "{events:?}");
    let lb_events = harness.events("LoadBalancer", "edge").await;
    assert!(lb_events.iter().any(|e| e.starts_with("CertificateRotated:")), "rotated without a reload: {lb_events:?}");
    drop(pebble);
}

#[tokio::test]
async fn the_cas_refusal_is_reported_with_its_detail_and_retried_with_a_growing_backoff() {
    let harness = Harness::start(PREFIX).await;
    let pebble = Pebble::start(free_port(), None, &["blocked.example.test"]);
    harness.apply(vec![acme_certificate(&harness, "blocked", "blocked.example.test", &pebble)]).await;
    let failed = harness
        .wait_for("certificates", "blocked", "refused", |o| {
            condition(o, "Ready").is_some_and(|(status, reason)| status == "False" && reason == "IssueFailed")
        })
        .await;
    let text = failed["status"]["conditions"].to_string();
    assert!(text.contains("blocked") && text.contains("rejectedIdentifier"), "the CA's problem detail: {text}");
    assert!(text.contains("attempt 1; next in 10 s"), "{text}");
    let again = harness
        .wait_for_within("certificates", "blocked", "second attempt", Duration::from_secs(40), |o| {
            o["status"]["failedAttempts"] == 2
        })
        .await;
    assert!(again["status"]["conditions"].to_string().contains("attempt 2; next in 20 s"), "{again}");
    let events = harness.events("Certificate", "blocked").await;
    assert_eq!(
        events.iter().filter(|e| e.starts_with("IssueFailed:")).count(),
        2,
        "one attempt per backoff: {events:?}"
    );
    drop(pebble);
}

#[tokio::test]
async fn a_control_plane_killed_mid_order_resumes_that_order_at_issuance_and_at_renewal() {
    let mut harness = Harness::start(PREFIX).await;
    let http_port = free_port();
    // Short-lived: the renewal order comes about 20 s after issuance.
    let pebble = Pebble::start(http_port, Some(30), &[]);
    let mut objects = vec![app(&harness), acme_certificate(&harness, "site", HOST, &pebble)];
    objects.extend(front_door(&harness, http_port));
    harness.apply(objects).await;
    let mut orders_seen = Vec::new();
    let mut serial: Option<String> = None;
    for moment in ["issuance", "renewal"] {
        let placed = harness
            .wait_for_within(
                "certificates",
                "site",
                &format!("an order in flight ({moment})"),
                Duration::from_secs(60),
                |o| o["status"]["orderUrl"].is_string(),
            )
            .await;
        orders_seen.push(placed["status"]["orderUrl"].as_str().expect("order").to_owned());
        let database = harness.server.take().expect("server").crash();
        harness.server = Some(harness.start_server(database).await);
        let previous = serial.clone();
        let done = harness
            .wait_for_within(
                "certificates",
                "site",
                &format!("{moment} finished after the restart"),
                Duration::from_secs(90),
                |o| {
                    ready(o)
                        && o["status"]["orderUrl"].is_null()
                        && o["status"]["serial"].as_str().map(str::to_owned) != previous
                },
            )
            .await;
        serial = done["status"]["serial"].as_str().map(str::to_owned);
    }
    // At most one order in flight: every order but the first follows the end of the one
    // before (issued, renewed, or failed — a failure, e.g. the CA validating before the load
    // balancer answers, is retried with a new order after its backoff).
    let events = harness.events("Certificate", "site").await;
    let mut in_flight = false;
    for event in &events {
        if event.starts_with("OrderPlaced:") {
            assert!(!in_flight, "a second order while one was in flight: {events:?}");
            in_flight = true;
        } else if ["Issued:", "Renewed:", "IssueFailed:"].iter().any(|end| event.starts_with(end)) {
            in_flight = false;
        }
    }
    // (An order's `OrderPlaced` event may be lost when the kill falls between writing the
    // order into the status and recording the event; the status write comes first, which is
    // what makes the order resumable.)
    assert!(!orders_seen.is_empty());
    assert!(events.iter().any(|e| e.starts_with("Renewed:")), "{events:?}");
    drop(pebble);
}

#[tokio::test]
async fn broken_user_pairs_are_refused_and_the_listener_keeps_the_last_good_one() {
    use minicloud_controllers::tls::self_signed;
    let harness = Harness::start(PREFIX).await;
    let now = chrono::Utc::now();
    let names = vec![HOST.to_owned()];
    let (chain, key) = self_signed(&names, 30, now).expect("pair");
    let secret = |chain: &str, key: &str| {
        json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": harness.namespace},
               "spec": {"type": "Tls", "stringData": {"tls.crt": chain, "tls.key": key}}})
    };
    let certificate = json!({"apiVersion": "minicloud.dev/v1", "kind": "Certificate", "metadata": {"name": "site", "namespace": harness.namespace},
                             "spec": {"dnsNames": [HOST], "issuer": {"secretRef": {"name": "mine"}}}});
    let mut objects = vec![app(&harness), secret(&chain, &key), certificate];
    objects.extend(front_door(&harness, free_port()));
    harness.apply(objects).await;
    let good = harness.wait_for("certificates", "site", "installed", ready).await;
    let good_serial = good["status"]["serial"].as_str().expect("serial").to_ascii_uppercase();
    let lb = harness.wait_for("loadbalancers", "edge", "edge ready", ready).await;
    let tls_port = port_of(&lb, "tls");
    let mut shown = served(tls_port, HOST);
    for _ in 0..50 {
        if shown.to_ascii_uppercase().contains(&good_serial) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = served(tls_port, HOST);
    }
    assert!(shown.to_ascii_uppercase().contains(&good_serial), "{shown}");

    let (_, other_key) = self_signed(&names, 30, now).expect("pair");
    let (expired_chain, expired_key) = self_signed(&names, 1, now - chrono::Duration::days(3)).expect("pair");
    let broken = [
        (chain.clone(), other_key, "InvalidKeyPair", "does not belong"),
        (expired_chain, expired_key, "InvalidKeyPair", "expired"),
        ("not a certificate".to_owned(), key.clone(), "InvalidKeyPair", "not PEM"),
    ];
    for (bad_chain, bad_key, reason, words) in broken {
        harness.apply(vec![secret(&bad_chain, &bad_key)]).await;
        let refused = harness
            .wait_for("certificates", "site", reason, |o| {
                condition(o, "Ready").is_some_and(|(status, r)| status == "False" && r == reason)
                    && o["status"]["conditions"].to_string().contains(words)
            })
            .await;
        assert!(refused["status"]["conditions"].to_string().contains(words), "{refused}");
        // Give the load balancer a round; it must still serve the good pair.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let shown = served(tls_port, HOST);
        assert!(shown.to_ascii_uppercase().contains(&good_serial), "{words}: the last good certificate stays: {shown}");
    }
}
