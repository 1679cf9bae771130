//! What a LoadBalancer reports, pure: endpoints from the published ports, each target's state
//! from `show stat` (a target is UP only when it is UP in every listener's backend), the
//! `TargetsOnNetwork`, `TargetsHealthy`, `ConfigApplied` and `Ready` conditions, the events of
//! targets going DOWN, coming back or leaving, and the traffic the metrics export.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use minicloud_crds::loadbalancer::{ListenerProtocol, LoadBalancerSpec, LoadBalancerStatus, TargetStatus};
use minicloud_crds::meta::ConditionStatus;
use minicloud_store::EventType;

use super::admin::ServerStat;
use super::config;
use super::layout::Layout;
use crate::metrics::TargetTraffic;
use minicloud_crds::conditions::set_condition;

/// The Instances a spec picks right now.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    pub targets: Vec<config::Target>,
    /// Picked Instances on another network (reported, not routed to).
    pub other_network: Vec<String>,
    /// Picked Instances without an address yet.
    pub waiting: Vec<String>,
}

/// Listener name to URL, from the container's published ports.
pub fn endpoints(spec: &LoadBalancerSpec, ports: &[(u16, String, String, u16)]) -> BTreeMap<String, String> {
    spec.listeners
        .iter()
        .enumerate()
        .filter_map(|(index, listener)| {
            let (_, _, ip, port) = ports.iter().find(|(container, ..)| *container == config::container_port(index))?;
            let scheme = match listener.protocol {
                ListenerProtocol::Http => "http",
                ListenerProtocol::Https => "https",
                ListenerProtocol::Tcp => "tcp",
            };
            Some((listener.name.clone(), format!("{scheme}://{ip}:{port}")))
        })
        .collect()
}

/// Per target: the worst state over the backends of the load balancer's own targets (a target
/// is UP only when it is UP everywhere), with the address and last check of the first listener.
pub(crate) fn target_statuses(applied: &Layout, servers: &[ServerStat]) -> Vec<TargetStatus> {
    let rank = |state: &str| match state {
        "UP" => 0,
        "NOLB" => 1,
        "DRAIN" => 2,
        "DOWN" => 3,
        _ => 4,
    };
    let backends: Vec<String> = applied.target_backends().map(|b| b.name.clone()).collect();
    let mut targets: BTreeMap<&str, TargetStatus> = BTreeMap::new();
    for backend in &backends {
        for server in servers.iter().filter(|s| &s.backend == backend) {
            let entry = targets.entry(server.server.as_str()).or_insert_with(|| TargetStatus {
                name: server.server.clone(),
                address: server.address.clone(),
                healthy: true,
                state: server.state.clone(),
                last_check: (!server.last_check.is_empty()).then(|| server.last_check.clone()),
            });
            if rank(&server.state) > rank(&entry.state) {
                entry.state = server.state.clone();
            }
        }
    }
    targets
        .into_values()
        .map(|mut target| {
            target.healthy = target.state == "UP";
            target
        })
        .collect()
}

/// Per target traffic summed over the backends, for the metrics.
pub fn traffic(servers: &[ServerStat]) -> Vec<TargetTraffic> {
    let mut by_target: BTreeMap<&str, TargetTraffic> = BTreeMap::new();
    for server in servers {
        let entry = by_target.entry(server.server.as_str()).or_insert_with(|| TargetTraffic {
            target: server.server.clone(),
            up: true,
            ..TargetTraffic::default()
        });
        entry.requests += server.total_sessions;
        for (sum, value) in entry.responses.iter_mut().zip(server.responses) {
            *sum += value;
        }
        entry.up &= server.state == "UP";
    }
    by_target.into_values().collect()
}

/// The events of targets that went DOWN, came back UP, or left (drained and removed).
pub(crate) fn health_events(before: &[TargetStatus], after: &[TargetStatus]) -> Vec<(EventType, &'static str, String)> {
    let mut events = Vec::new();
    for target in after {
        let Some(old) = before.iter().find(|old| old.name == target.name) else { continue };
        let check = target.last_check.as_deref().map(|c| format!(" (last check: {c})")).unwrap_or_default();
        match (old.state.as_str(), target.state.as_str()) {
            (old, "DOWN") if old != "DOWN" => {
                let message = format!("target {} ({}) is DOWN{check}", target.name, target.address);
                events.push((EventType::Warning, "TargetDown", message));
            }
            ("DOWN", "UP") => {
                let message = format!("target {} ({}) is UP again{check}", target.name, target.address);
                events.push((EventType::Normal, "TargetUp", message));
            }
            _ => {}
        }
    }
    for gone in before.iter().filter(|old| !after.iter().any(|new| new.name == old.name)) {
        events.push((EventType::Normal, "TargetRemoved", format!("target {} drained and removed", gone.name)));
    }
    events
}

/// `TargetsOnNetwork`: every picked Instance is on the load balancer's network, or which are
/// not. True when the condition flipped to False (worth an event).
pub(crate) fn targets_on_network(
    status: &mut LoadBalancerStatus,
    spec: &LoadBalancerSpec,
    selection: &Selection,
    generation: i64,
    now: DateTime<Utc>,
) -> Option<String> {
    let network = spec.network.as_deref().unwrap_or("default");
    if selection.other_network.is_empty() {
        let message = format!("every matching Instance is on network {network}");
        set_condition(
            &mut status.conditions,
            "TargetsOnNetwork",
            ConditionStatus::True,
            "SameNetwork",
            message,
            generation,
            now,
        );
        return None;
    }
    let message = format!(
        "not routing to {} (another network): a load balancer reaches only Instances on its own network ({network})",
        selection.other_network.join(", ")
    );
    let flipped = set_condition(
        &mut status.conditions,
        "TargetsOnNetwork",
        ConditionStatus::False,
        "OtherNetwork",
        message.clone(),
        generation,
        now,
    );
    flipped.then_some(message)
}

/// `ConfigApplied=True`: HAProxy runs this generation's configuration.
pub(crate) fn config_applied(status: &mut LoadBalancerStatus, generation: i64, now: DateTime<Utc>) {
    set_condition(
        &mut status.conditions,
        "ConfigApplied",
        ConditionStatus::True,
        "Applied",
        "HAProxy runs the configuration of this generation",
        generation,
        now,
    );
}

/// The `TargetsHealthy` and `Ready` conditions, from the targets HAProxy reports; a load
/// balancer without targets of its own (routes only) is ready once HAProxy serves.
pub(crate) fn summarise(
    status: &mut LoadBalancerStatus,
    spec: &LoadBalancerSpec,
    selection: &Selection,
    generation: i64,
    now: DateTime<Utc>,
) {
    if spec.targets.is_empty() {
        let message = "the load balancer has no targets of its own; its routes report their backends";
        set_condition(
            &mut status.conditions,
            "TargetsHealthy",
            ConditionStatus::True,
            "RoutesOnly",
            message,
            generation,
            now,
        );
        let routes: u32 = status.listeners.iter().map(|l| l.attached_routes).sum();
        let endpoints: Vec<String> = status.endpoints.values().cloned().collect();
        let message = format!("serving {} with {routes} attached route(s)", endpoints.join(", "));
        set_condition(&mut status.conditions, "Ready", ConditionStatus::True, "Serving", message, generation, now);
        return;
    }
    let members: Vec<&TargetStatus> =
        status.targets.iter().filter(|t| selection.targets.iter().any(|s| s.name == t.name)).collect();
    let healthy = members.iter().filter(|t| t.healthy).count();
    let total = members.len();
    let endpoint = status.endpoints.values().next().cloned().unwrap_or_default();
    let (targets_state, targets_reason, targets_message) = if total == 0 {
        let message = if selection.waiting.is_empty() {
            "no Instance matches the targets of this load balancer".to_owned()
        } else {
            format!("waiting for {} to get an address", selection.waiting.join(", "))
        };
        (ConditionStatus::False, "NoTargets", message)
    } else if healthy == total {
        (ConditionStatus::True, "AllHealthy", format!("{healthy}/{total} targets healthy"))
    } else {
        let down: Vec<&str> = members.iter().filter(|t| !t.healthy).map(|t| t.name.as_str()).collect();
        (
            ConditionStatus::False,
            "TargetsUnhealthy",
            format!("{healthy}/{total} targets healthy; not healthy: {}", down.join(", ")),
        )
    };
    set_condition(
        &mut status.conditions,
        "TargetsHealthy",
        targets_state,
        targets_reason,
        targets_message.clone(),
        generation,
        now,
    );
    let (ready, reason, message) = if total == 0 {
        (ConditionStatus::False, "NoTargets", targets_message)
    } else if healthy == 0 {
        (ConditionStatus::False, "NoHealthyTargets", targets_message)
    } else {
        (ConditionStatus::True, "Serving", format!("serving {endpoint} with {healthy}/{total} healthy targets"))
    };
    set_condition(&mut status.conditions, "Ready", ready, reason, message, generation, now);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::loadbalancer::plan::tests::spec;

    fn condition(status: &LoadBalancerStatus, type_: &str) -> (ConditionStatus, String) {
        let found = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        (found.status, found.reason.clone())
    }

    fn target_status(name: &str, state: &str) -> TargetStatus {
        TargetStatus {
            name: name.into(),
            address: "172.18.0.2:8080".into(),
            healthy: state == "UP",
            state: state.into(),
            last_check: Some("L7OK/200".into()),
        }
    }

    #[test]
    fn a_target_is_up_only_when_every_listener_says_so() {
        let spec = spec(json!([{"name": "http", "targetPort": 8080}, {"name": "admin", "targetPort": 9090}]));
        let server = |backend: &str, name: &str, state: &str| ServerStat {
            backend: backend.into(),
            server: name.into(),
            state: state.into(),
            address: "172.18.0.2:8080".into(),
            last_check: "L7OK/200".into(),
            total_sessions: 3,
            ..ServerStat::default()
        };
        let servers = [
            server("be-http", "a", "UP"),
            server("be-admin", "a", "DOWN"),
            server("be-http", "b", "UP"),
            server("be-admin", "b", "UP"),
            server("be-other", "c", "UP"),
        ];
        let targets = target_statuses(&crate::loadbalancer::plan::tests::layout(&spec), &servers);
        let states: Vec<(&str, &str, bool)> =
            targets.iter().map(|t| (t.name.as_str(), t.state.as_str(), t.healthy)).collect();
        assert_eq!(states, [("a", "DOWN", false), ("b", "UP", true)]);
        let summed = traffic(&servers[..4]);
        assert_eq!((summed[0].requests, summed[0].up, summed[1].up), (6, false, true));
    }

    #[test]
    fn endpoints_map_listeners_to_published_ports() {
        let spec =
            spec(json!([{"name": "http", "targetPort": 8080}, {"name": "db", "protocol": "TCP", "targetPort": 5432}]));
        let ports =
            [(8000, "tcp".to_owned(), "127.0.0.1".to_owned(), 49200), (8001, "tcp".into(), "127.0.0.1".into(), 49201)];
        let found = endpoints(&spec, &ports);
        assert_eq!(found["http"], "http://127.0.0.1:49200");
        assert_eq!(found["db"], "tcp://127.0.0.1:49201");
    }

    #[test]
    fn ready_needs_one_healthy_picked_target() {
        let selection = |names: &[&str], waiting: &[&str]| Selection {
            targets: names
                .iter()
                .map(|name| config::Target { name: (*name).into(), address: "172.18.0.2".parse().expect("ip") })
                .collect(),
            other_network: Vec::new(),
            waiting: waiting.iter().map(|name| (*name).to_owned()).collect(),
        };
        let now = Utc::now();
        let spec = spec(json!([{"name": "http", "targetPort": 8080}]));
        let mut status = LoadBalancerStatus::default();
        summarise(&mut status, &spec, &selection(&[], &["web-1"]), 1, now);
        assert_eq!(condition(&status, "Ready"), (ConditionStatus::False, "NoTargets".into()));
        assert!(status.conditions.iter().any(|c| c.message.contains("waiting for web-1")));

        status.targets = vec![target_status("a", "DOWN"), target_status("b", "UP"), target_status("old", "UP")];
        summarise(&mut status, &spec, &selection(&["a", "b"], &[]), 1, now);
        assert_eq!(condition(&status, "Ready"), (ConditionStatus::True, "Serving".into()));
        assert_eq!(condition(&status, "TargetsHealthy"), (ConditionStatus::False, "TargetsUnhealthy".into()));

        status.targets = vec![target_status("a", "DOWN")];
        summarise(&mut status, &spec, &selection(&["a"], &[]), 1, now);
        assert_eq!(condition(&status, "Ready"), (ConditionStatus::False, "NoHealthyTargets".into()));
    }

    #[test]
    fn targets_going_down_coming_back_and_leaving_are_events() {
        let before = [target_status("a", "UP"), target_status("b", "DOWN"), target_status("c", "UP")];
        let after = [target_status("a", "DOWN"), target_status("b", "UP")];
        let reasons: Vec<&str> = health_events(&before, &after).iter().map(|(_, reason, _)| *reason).collect();
        assert_eq!(reasons, ["TargetDown", "TargetUp", "TargetRemoved"]);
        assert!(health_events(&after, &after).is_empty(), "no change, no event");
    }

    #[test]
    fn another_network_is_reported_once() {
        let spec = spec(json!([{"name": "http", "targetPort": 8080}]));
        let selection = Selection { other_network: vec!["web-1".into()], ..Selection::default() };
        let mut status = LoadBalancerStatus::default();
        let now = Utc::now();
        assert!(targets_on_network(&mut status, &spec, &selection, 1, now).is_some(), "flipped: an event");
        assert!(targets_on_network(&mut status, &spec, &selection, 1, now).is_none(), "still so: none");
        assert!(targets_on_network(&mut status, &spec, &Selection::default(), 1, now).is_none());
        assert_eq!(condition(&status, "TargetsOnNetwork"), (ConditionStatus::True, "SameNetwork".into()));
    }
}
