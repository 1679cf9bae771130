//! The `Host` check: what keeps a web page from reaching a control plane on loopback through
//! DNS rebinding. A page on `attacker.example` whose name is made to resolve to 127.0.0.1 is
//! same-origin with itself, so the browser lets it read answers and send writes that the
//! cross-site guard ([`super::guard`]) cannot tell apart from the console's own; but its
//! requests carry `Host: attacker.example`. Without authentication (where nothing else stands
//! in the way) every request must name this server: a loopback address or name (`localhost`,
//! `*.localhost`, `127.0.0.1`, `[::1]`), the address it listens on, or a name given with
//! `--allowed-host`. With authentication the check applies when `--allowed-host` is given.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Which `Host` values the server answers.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    listen: IpAddr,
    names: BTreeSet<String>,
}

impl HostPolicy {
    /// The policy of a server listening on `listen`, answering also the names in `allowed`
    /// (host names or addresses, without a port).
    pub fn new(listen: SocketAddr, allowed: &[String]) -> HostPolicy {
        let names = allowed.iter().map(|name| normalise(name)).filter(|name| !name.is_empty()).collect();
        HostPolicy { listen: listen.ip(), names }
    }

    /// Whether a request with this `Host` header is for this server.
    pub fn allows(&self, host: &str) -> bool {
        let name = normalise(strip_port(host));
        if name.is_empty() {
            return false;
        }
        if name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name) {
            return true;
        }
        match name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || (ip == self.listen && !ip.is_unspecified()),
            Err(_) => false,
        }
    }
}

/// `host:port`, `[v6]:port` or a bare host → the host part.
fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        // One colon: a port. More: a bare IPv6 address.
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Refuses (403) a request whose `Host` is not this server's. Requests without a `Host`
/// (HTTP/1.0 tools) are not from a browser and pass, as do `/healthz` and `/readyz` (probes
/// address servers by whatever name they have; the answers hold nothing).
pub async fn check_host(State(policy): State<Option<Arc<HostPolicy>>>, request: Request<Body>, next: Next) -> Response {
    let Some(policy) = policy else { return next.run(request).await };
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let host = request.headers().get(header::HOST).map(|host| host.to_str().unwrap_or(""));
    match host {
        Some(host) if !policy.allows(host) => ApiError::forbidden(format!(
            "this server does not answer for the host {host:?} (a web page reaching it through another name, e.g. by DNS rebinding, is refused). If this is your server's name, start it with --allowed-host {}",
            strip_port(host)
        ))
        .into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_the_listen_address_and_allowed_names_pass() {
        let policy = HostPolicy::new("127.0.0.1:7080".parse().expect("address"), &["cloud.example.com".into()]);
        for host in [
            "127.0.0.1:7080",
            "127.0.0.1",
            "localhost:7080",
            "LOCALHOST",
            "app.localhost:9",
            "[::1]:7080",
            "::1",
            "127.1.2.3:80",
            "cloud.example.com",
            "cloud.example.com.:443",
        ] {
            assert!(policy.allows(host), "{host}");
        }
        for host in ["attacker.example", "attacker.example:7080", "127.0.0.1.nip.io:7080", "", "10.0.0.5:7080"] {
            assert!(!policy.allows(host), "{host}");
        }
        let network = HostPolicy::new("10.0.0.5:7080".parse().expect("address"), &[]);
        assert!(network.allows("10.0.0.5:7080"));
        let any = HostPolicy::new("0.0.0.0:7080".parse().expect("address"), &[]);
        assert!(!any.allows("0.0.0.0:7080"));
    }
}
