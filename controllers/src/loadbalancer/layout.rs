//! The shape of a LoadBalancer's HAProxy configuration — everything but the servers: each
//! listener (protocol, container port, TLS certificates, its routing entries in precedence
//! order, its default backend) and each backend (port, where its servers come from, how they
//! are checked). It is built from the spec, the attached routes ([`super::routing`]) and the
//! certificate files, it is what the configuration is rendered from ([`super::config`]), and
//! it is kept as what the running HAProxy was configured with ([`super::state::Applied`]):
//! when it changes, HAProxy reloads; when only servers change, the Runtime API suffices.

use minicloud_crds::loadbalancer::{Algorithm, Hsts, LbHealthCheck, ListenerProtocol, LoadBalancerSpec};
use serde::{Deserialize, Serialize};

use super::naming::{backend, container_port};
use super::routing::{Attachment, BackendSource, Entry};

/// Everything the configuration holds but the servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub algorithm: Algorithm,
    pub health_check: Option<LbHealthCheck>,
    pub listeners: Vec<ListenerLayout>,
    pub backends: Vec<BackendLayout>,
}

/// One listener as HAProxy binds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerLayout {
    pub name: String,
    pub protocol: ListenerProtocol,
    /// The port bound inside the container.
    pub container_port: u16,
    /// The backend of the load balancer's own targets, when it has some.
    pub default_backend: Option<String>,
    /// Routing entries, tried in this order.
    #[serde(default)]
    pub entries: Vec<Entry>,
    /// HTTPS: the certificate files (under [`super::naming::CERTS_DIR`]), the default first.
    #[serde(default)]
    pub certificates: Vec<String>,
    #[serde(default)]
    pub hsts: Option<Hsts>,
    /// The host port, when fixed (a redirect without a port keeps it).
    #[serde(default)]
    pub host_port: Option<u16>,
}

/// One backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendLayout {
    pub name: String,
    /// HTTP (layer 7) or TCP.
    pub http: bool,
    /// The targets' port.
    pub port: u16,
    pub source: BackendSource,
    /// Checked as the load balancer's `healthCheck` says (its own targets), or by a TCP
    /// connect with the default timings (a route's backends: each application has its own
    /// health path, or none).
    pub own_check: bool,
    /// Send the PROXY protocol (v2) to the servers.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl Layout {
    /// The layout of `spec` with the routes `attachment` attached and, per HTTPS listener, the
    /// certificate files `certificates` returns for it.
    pub fn new(spec: &LoadBalancerSpec, attachment: &Attachment, certificates: impl Fn(&str) -> Vec<String>) -> Layout {
        let mut layout =
            Layout { algorithm: spec.algorithm, health_check: spec.health_check.clone(), ..Layout::default() };
        for (index, listener) in spec.listeners.iter().enumerate() {
            let default_backend = match (spec.targets.is_empty(), listener.target_port) {
                (false, Some(port)) => {
                    let name = backend(&listener.name);
                    layout.backends.push(BackendLayout {
                        name: name.clone(),
                        http: listener.protocol != ListenerProtocol::Tcp,
                        port,
                        source: BackendSource::Targets,
                        own_check: true,
                        proxy_protocol: listener.proxy_protocol,
                    });
                    Some(name)
                }
                _ => None,
            };
            let https = listener.protocol == ListenerProtocol::Https;
            layout.listeners.push(ListenerLayout {
                name: listener.name.clone(),
                protocol: listener.protocol,
                container_port: container_port(index),
                default_backend,
                entries: attachment.entries.get(&listener.name).cloned().unwrap_or_default(),
                certificates: if https { certificates(&listener.name) } else { Vec::new() },
                hsts: listener.tls.as_ref().and_then(|tls| tls.hsts.clone()),
                host_port: listener.port,
            });
        }
        for route_backend in attachment.backends.values() {
            layout.backends.push(BackendLayout {
                name: route_backend.name.clone(),
                http: true,
                port: route_backend.port,
                source: route_backend.source.clone(),
                own_check: false,
                proxy_protocol: false,
            });
        }
        layout
    }

    /// The backends whose servers are the load balancer's own targets.
    pub fn target_backends(&self) -> impl Iterator<Item = &BackendLayout> {
        self.backends.iter().filter(|b| b.source == BackendSource::Targets)
    }

    /// Whether any listener terminates TLS.
    pub fn has_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.protocol == ListenerProtocol::Https)
    }
}
