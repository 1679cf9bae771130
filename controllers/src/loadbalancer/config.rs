//! The HAProxy configuration of a LoadBalancer, rendered deterministically from its spec and
//! its current targets. Every listener becomes a frontend `fe-LISTENER` bound to a fixed
//! container port and a backend `be-LISTENER` holding one server per target (named after the
//! Instance). The same server arguments are used in the file and in Runtime API `add server`
//! commands, so a target added at run time behaves exactly like one read from the file.
//!
//! Nothing a user writes reaches the file unchecked: listener and target names must be DNS-1123
//! labels, addresses must parse as IP addresses, and the health-check path must pass
//! [`check_http_path`]; anything else is a [`RenderError`], so no input can end a token early,
//! start a comment or add a line.

use std::fmt::Write as _;
use std::net::IpAddr;

use minicloud_crds::loadbalancer::{Algorithm, LbHealthCheck, ListenerProtocol, LoadBalancerSpec};
use minicloud_crds::validation::{check_dns_label, check_http_path};

/// Where the LoadBalancer's directory is mounted inside the HAProxy container.
pub(crate) const MOUNT: &str = "/etc/minicloud-lb";
/// The configuration HAProxy runs, relative to the directory.
pub(crate) const CONFIG_FILE: &str = "haproxy.cfg";
/// A configuration being validated, relative to the directory.
pub(crate) const CANDIDATE_FILE: &str = "candidate.cfg";
/// The Runtime API socket, relative to the directory.
pub(crate) const SOCKET_FILE: &str = "admin.sock";
/// Server states saved just before a reload, so that DOWN, DRAIN and MAINT survive it.
pub(crate) const STATE_FILE: &str = "servers.state";
/// The first container port; listener `i` (in declared order) binds `FIRST_PORT + i`.
pub(crate) const FIRST_PORT: u16 = 8000;

/// Health-check defaults (milliseconds between checks, successes to go UP, failures to go DOWN).
pub(crate) const DEFAULT_INTERVAL_MILLIS: u32 = 2000;
pub(crate) const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub(crate) const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// Input that cannot be rendered safely.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("listener name {name:?}: {reason}")]
    ListenerName { name: String, reason: String },
    #[error("target name {name:?}: {reason}")]
    TargetName { name: String, reason: String },
    #[error("target {name}: {address:?} is not an IP address")]
    TargetAddress { name: String, address: String },
    #[error("healthCheck.path: {0}")]
    HealthCheckPath(String),
    #[error("a load balancer needs at least one listener")]
    NoListeners,
}

/// A target: an Instance's name and its address on the load balancer's network.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub name: String,
    pub address: IpAddr,
}

/// The frontend of a listener.
pub fn frontend(listener: &str) -> String {
    format!("fe-{listener}")
}

/// The backend of a listener.
pub fn backend(listener: &str) -> String {
    format!("be-{listener}")
}

/// The container port listener number `index` binds.
pub fn container_port(index: usize) -> u16 {
    FIRST_PORT.saturating_add(u16::try_from(index).unwrap_or(u16::MAX - FIRST_PORT))
}

/// The arguments of every server line (and of `add server`): health checking as the spec says,
/// and a short idle-connection purge delay so that a removed target can be deleted quickly.
pub(crate) fn server_arguments(check: Option<&LbHealthCheck>) -> String {
    let interval = check.and_then(|c| c.interval_millis).unwrap_or(DEFAULT_INTERVAL_MILLIS);
    let rise = check.and_then(|c| c.healthy_threshold).unwrap_or(DEFAULT_HEALTHY_THRESHOLD);
    let fall = check.and_then(|c| c.unhealthy_threshold).unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD);
    format!("check inter {interval} rise {rise} fall {fall} pool-purge-delay 500")
}

/// Checks everything user-written that the configuration contains.
pub fn check(spec: &LoadBalancerSpec, targets: &[Target]) -> Result<(), RenderError> {
    if spec.listeners.is_empty() {
        return Err(RenderError::NoListeners);
    }
    for listener in &spec.listeners {
        check_dns_label(&listener.name)
            .map_err(|reason| RenderError::ListenerName { name: listener.name.clone(), reason })?;
    }
    for target in targets {
        check_dns_label(&target.name)
            .map_err(|reason| RenderError::TargetName { name: target.name.clone(), reason })?;
    }
    if let Some(path) = spec.health_check.as_ref().and_then(|c| c.path.as_deref()) {
        check_http_path(path).map_err(RenderError::HealthCheckPath)?;
    }
    Ok(())
}

/// Renders the whole configuration for `spec` with these targets (sorted by name in the file).
pub fn render(owner: &str, spec: &LoadBalancerSpec, targets: &[Target]) -> Result<String, RenderError> {
    check(spec, targets)?;
    let mut targets = targets.to_vec();
    targets.sort();
    let check = spec.health_check.as_ref();
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason only.
    let _ = writeln!(out, "# Generated by minicloud for loadbalancer {owner}. Do not edit: it is rewritten.");
    let _ = writeln!(out, "global");
    let _ = writeln!(out, "    stats socket {MOUNT}/{SOCKET_FILE} mode 600 level admin");
    let _ = writeln!(out, "    stats timeout 30s");
    let _ = writeln!(out, "    server-state-file {MOUNT}/{STATE_FILE}");
    let _ = writeln!(out, "    hard-stop-after 30s");
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
    for (index, listener) in spec.listeners.iter().enumerate() {
        let mode = match listener.protocol {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Tcp => "tcp",
        };
        let _ = writeln!(out);
        let _ = writeln!(out, "frontend {}", frontend(&listener.name));
        let _ = writeln!(out, "    mode {mode}");
        let _ = writeln!(out, "    bind :{}", container_port(index));
        if listener.protocol == ListenerProtocol::Http {
            let _ = writeln!(out, "    option forwardfor");
        }
        let _ = writeln!(out, "    default_backend {}", backend(&listener.name));
        let _ = writeln!(out);
        let _ = writeln!(out, "backend {}", backend(&listener.name));
        let _ = writeln!(out, "    mode {mode}");
        match spec.algorithm {
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
        if listener.protocol == ListenerProtocol::Http {
            // A request that met a dying target is sent again, to another one.
            let _ = writeln!(out, "    retry-on conn-failure empty-response junk-response response-timeout");
        }
        if let Some(path) = check.and_then(|c| c.path.as_deref()) {
            let _ = writeln!(out, "    option httpchk GET {path}");
            let _ = writeln!(out, "    http-check expect status 200-399");
        }
        let arguments = server_arguments(check);
        for target in &targets {
            let _ = writeln!(
                out,
                "    server {} {} {arguments}",
                target.name,
                socket_address(target, listener.target_port)
            );
        }
    }
    Ok(out)
}

/// `ip:port`, with brackets for IPv6.
pub(crate) fn socket_address(target: &Target, port: u16) -> String {
    std::net::SocketAddr::new(target.address, port).to_string()
}

/// The structural part of the configuration: everything but the servers. When it changes,
/// HAProxy must reload; when only servers change, the Runtime API suffices.
pub fn structure(owner: &str, spec: &LoadBalancerSpec) -> Result<String, RenderError> {
    render(owner, spec, &[])
}

#[cfg(test)]
mod tests {
    //! Golden files: `controllers/tests/golden/*.cfg`. Set `UPDATE_GOLDEN=1` to rewrite them
    //! after an intended change, then review the diff.

    use std::path::PathBuf;

    use minicloud_crds::loadbalancer::{Listener, TargetSource};
    use minicloud_crds::meta::LabelSelector;

    use super::*;

    fn spec(listeners: Vec<Listener>, algorithm: Algorithm, health_check: Option<LbHealthCheck>) -> LoadBalancerSpec {
        LoadBalancerSpec {
            listeners,
            targets: TargetSource {
                selector: Some(LabelSelector { match_labels: [("app".to_owned(), "web".to_owned())].into() }),
                scaling_group_ref: None,
            },
            algorithm,
            health_check,
            network: None,
        }
    }

    fn listener(name: &str, protocol: ListenerProtocol, target_port: u16) -> Listener {
        Listener { name: name.into(), port: None, protocol, target_port }
    }

    fn targets() -> Vec<Target> {
        // Out of order on purpose: the file lists them sorted.
        vec![
            Target { name: "web-2".into(), address: "172.18.0.3".parse().expect("ip") },
            Target { name: "web-1".into(), address: "172.18.0.2".parse().expect("ip") },
        ]
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
        let http = || listener("http", ListenerProtocol::Http, 8080);
        let cases = [
            ("round-robin-http-tcp-check", spec(vec![http()], Algorithm::RoundRobin, None)),
            (
                "least-conn-http-check",
                spec(
                    vec![http()],
                    Algorithm::LeastConn,
                    Some(LbHealthCheck {
                        path: Some("/healthz?full=1".into()),
                        interval_millis: Some(500),
                        healthy_threshold: Some(1),
                        unhealthy_threshold: Some(2),
                    }),
                ),
            ),
            (
                "source-two-listeners-tcp",
                spec(
                    vec![http(), listener("db", ListenerProtocol::Tcp, 5432)],
                    Algorithm::Source,
                    Some(LbHealthCheck { path: None, interval_millis: Some(1000), ..Default::default() }),
                ),
            ),
        ];
        for (name, spec) in cases {
            let rendered = render("default/web", &spec, &targets()).expect("render");
            golden(name, &rendered);
            assert_eq!(rendered, render("default/web", &spec, &targets()).expect("render"), "deterministic");
        }
        let no_targets = render("default/web", &spec(vec![http()], Algorithm::RoundRobin, None), &[]).expect("render");
        golden("no-targets", &no_targets);
    }

    #[test]
    fn the_structure_ignores_targets_but_not_listeners_or_checks() {
        let base = spec(vec![listener("http", ListenerProtocol::Http, 8080)], Algorithm::RoundRobin, None);
        let with_targets = render("default/web", &base, &targets()).expect("render");
        assert_ne!(with_targets, structure("default/web", &base).expect("structure"));
        let mut changed = base.clone();
        changed.algorithm = Algorithm::LeastConn;
        assert_ne!(structure("default/web", &base), structure("default/web", &changed));
        let mut changed = base.clone();
        changed.health_check = Some(LbHealthCheck { path: Some("/".into()), ..Default::default() });
        assert_ne!(structure("default/web", &base), structure("default/web", &changed));
    }

    #[test]
    fn crafted_names_and_paths_cannot_inject_configuration() {
        let mut base = spec(vec![listener("http", ListenerProtocol::Http, 8080)], Algorithm::RoundRobin, None);
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
                matches!(render("d/w", &base, &[]), Err(RenderError::HealthCheckPath(_))),
                "{path:?} must be refused"
            );
        }
        base.health_check = None;
        for name in ["http\nfrontend evil", "a b", "#x", "UPPER", ""] {
            let mut evil = base.clone();
            evil.listeners[0].name = name.into();
            assert!(matches!(render("d/w", &evil, &[]), Err(RenderError::ListenerName { .. })), "{name:?}");
            let target = Target { name: name.into(), address: "10.0.0.1".parse().expect("ip") };
            assert!(matches!(render("d/w", &base, &[target]), Err(RenderError::TargetName { .. })), "{name:?}");
        }
        base.listeners.clear();
        assert_eq!(render("d/w", &base, &[]), Err(RenderError::NoListeners));
    }

    #[test]
    fn container_ports_follow_listener_order() {
        assert_eq!((container_port(0), container_port(3)), (8000, 8003));
        assert_eq!(server_arguments(None), "check inter 2000 rise 2 fall 3 pool-purge-delay 500");
        let v6 = Target { name: "a".into(), address: "fd00::2".parse().expect("ip") };
        assert_eq!(socket_address(&v6, 80), "[fd00::2]:80");
    }
}
