//! The LoadBalancer's decisions about HAProxy, pure: given the wanted configuration, what the
//! running HAProxy was configured with and the servers it reports, what changes and how.
//!
//! - [`reload_needed`]: a new configuration is loaded (validated, then SIGUSR2) only when its
//!   *structure* changed — listeners, routes, certificates in use, balancing algorithm, health
//!   check. Targets never enter the structure: they join and leave through the Runtime API,
//!   with no reload.
//! - [`membership`]: the Runtime API steps that bring each backend's servers to its targets —
//!   a target joins ([`Step::Add`]), moves ([`Step::Move`]) or comes back before it was
//!   removed ([`Step::Return`]); a server that is no longer a target drains first
//!   ([`Step::Drain`]) and is removed ([`Step::Remove`]) once it has no sessions left or has
//!   drained for [`super::DRAIN_TIMEOUT`]; one that serves nothing (DOWN, MAINT) goes at once.
//!
//! [`super::executor`] sends the steps; [`super::status`] reads the result back.

use std::collections::HashMap;
use std::time::Duration;

use super::admin::ServerStat;
use super::config::{self, Members};
use super::layout::Layout;

/// One Runtime API change of one server (`backend/server`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A target joins the backend: `add server`, `enable health`, `enable server`.
    Add { backend: String, server: String, address: String, arguments: String },
    /// A target's address or port changed: `set server … addr … port …`.
    Move { backend: String, server: String, ip: String, port: u16 },
    /// A target that was leaving is wanted again: `set server … state ready`.
    Return { backend: String, server: String },
    /// A serving server that is no longer a target stops taking new requests:
    /// `set server … state drain`.
    Drain { backend: String, server: String },
    /// A server goes: `set server … state maint` (unless `already_maint`), `shutdown sessions`
    /// (when `shutdown_sessions`), `del server`.
    Remove { backend: String, server: String, already_maint: bool, shutdown_sessions: bool },
}

impl Step {
    /// The server the step is about: (backend, server).
    pub fn server(&self) -> (&str, &str) {
        match self {
            Step::Add { backend, server, .. }
            | Step::Move { backend, server, .. }
            | Step::Return { backend, server }
            | Step::Drain { backend, server }
            | Step::Remove { backend, server, .. } => (backend, server),
        }
    }
}

/// The steps of one round, and whether a drain is still running afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Membership {
    pub steps: Vec<Step>,
    /// A server keeps draining (its sessions are not done): come back soon.
    pub draining: bool,
}

/// Whether HAProxy must load a new configuration: the structure it runs (`applied`, none
/// when it was never configured here) is not the wanted one.
pub(crate) fn reload_needed(applied: Option<&str>, wanted: &str) -> bool {
    applied != Some(wanted)
}

/// The steps that make HAProxy's servers match `members`, backend by backend, for the
/// configuration `applied` (its backends, their ports and checks). `drained_for` says how long
/// a leaving server has been leaving.
pub fn membership(
    applied: &Layout,
    members: &Members,
    servers: &[ServerStat],
    drained_for: &dyn Fn(&ServerStat) -> Duration,
) -> Membership {
    let mut membership = Membership::default();
    for layout in &applied.backends {
        let arguments = config::server_arguments(layout, applied.health_check.as_ref());
        let backend = layout.name.clone();
        let targets = members.get(&backend).map(Vec::as_slice).unwrap_or_default();
        let present: HashMap<&str, &ServerStat> =
            servers.iter().filter(|s| s.backend == backend).map(|s| (s.server.as_str(), s)).collect();
        for target in targets {
            let server = target.name.clone();
            let address = config::socket_address(target, layout.port);
            let Some(current) = present.get(target.name.as_str()) else {
                let backend = backend.clone();
                membership.steps.push(Step::Add { backend, server, address, arguments: arguments.clone() });
                continue;
            };
            if current.address != address {
                let (ip, port) = (target.address.to_string(), layout.port);
                membership.steps.push(Step::Move { backend: backend.clone(), server: server.clone(), ip, port });
            }
            if current.state == "DRAIN" || current.state == "MAINT" {
                membership.steps.push(Step::Return { backend: backend.clone(), server });
            }
        }
        let mut leaving: Vec<&ServerStat> =
            present.values().copied().filter(|s| !targets.iter().any(|t| t.name == s.server)).collect();
        leaving.sort_by(|a, b| a.server.cmp(&b.server));
        add_leaving(&mut membership, leaving, drained_for);
    }
    membership
}

/// The steps that empty every backend (the load balancer is being deleted): each server
/// drains and goes, as a server that is no longer a target does.
pub(crate) fn leave_all(servers: &[ServerStat], drained_for: &dyn Fn(&ServerStat) -> Duration) -> Membership {
    let mut membership = Membership::default();
    add_leaving(&mut membership, servers, drained_for);
    membership
}

/// Adds the next step of each server that leaves; one still draining keeps `draining` set.
fn add_leaving<'s>(
    membership: &mut Membership,
    servers: impl IntoIterator<Item = &'s ServerStat>,
    drained_for: &dyn Fn(&ServerStat) -> Duration,
) {
    for server in servers {
        match leave(server, drained_for(server)) {
            Some(step) => {
                membership.draining |= matches!(step, Step::Drain { .. });
                membership.steps.push(step);
            }
            None => membership.draining = true,
        }
    }
}

/// The next step for a server that is no longer a target; `None` while it drains.
fn leave(server: &ServerStat, drained_for: Duration) -> Option<Step> {
    let (backend, name) = (server.backend.clone(), server.server.clone());
    let maint = server.state.starts_with("MAINT");
    // A server that serves nothing (DOWN: its health check fails, or MAINT) has nothing to
    // drain and never shows DRAIN: it goes at once.
    if maint || server.state.starts_with("DOWN") {
        return Some(Step::Remove { backend, server: name, already_maint: maint, shutdown_sessions: true });
    }
    if server.state != "DRAIN" {
        // Sessions counted before this step may grow until HAProxy takes it: judged again
        // next round, with fresh numbers.
        return Some(Step::Drain { backend, server: name });
    }
    let busy = server.current_sessions > 0;
    if busy && drained_for < super::DRAIN_TIMEOUT {
        return None;
    }
    // Drained, or drained for long enough: what is left is ended.
    Some(Step::Remove { backend, server: name, already_maint: false, shutdown_sessions: busy })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;

    use minicloud_crds::loadbalancer::LoadBalancerSpec;
    use serde_json::json;

    use super::*;
    use crate::loadbalancer::config::Target;
    use crate::loadbalancer::routing::Attachment;

    /// The layout of a spec without routes.
    pub(crate) fn layout(spec: &LoadBalancerSpec) -> Layout {
        Layout::new(spec, &Attachment::default(), |_| Vec::new())
    }

    /// The membership steps for a spec whose own targets are `targets`.
    fn membership_of(
        spec: &LoadBalancerSpec,
        targets: &[Target],
        servers: &[ServerStat],
        drained_for: &dyn Fn(&ServerStat) -> Duration,
    ) -> Membership {
        let layout = layout(spec);
        let members: Members = layout.target_backends().map(|b| (b.name.clone(), targets.to_vec())).collect();
        membership(&layout, &members, servers, drained_for)
    }

    /// A load balancer's spec with these listeners, targeting `app=web` (also for the status
    /// module's tests).
    pub(crate) fn spec(listeners: serde_json::Value) -> LoadBalancerSpec {
        serde_json::from_value(
            json!({"listeners": listeners, "targets": {"selector": {"matchLabels": {"app": "web"}}}}),
        )
        .expect("spec")
    }

    fn http() -> LoadBalancerSpec {
        spec(json!([{"name": "http", "targetPort": 8080}]))
    }

    fn target(name: &str, address: &str) -> Target {
        Target { name: name.into(), address: address.parse::<IpAddr>().expect("address") }
    }

    fn server(name: &str, address: &str, state: &str, sessions: u64) -> ServerStat {
        ServerStat {
            backend: "be-http".into(),
            server: name.into(),
            state: state.into(),
            address: address.into(),
            current_sessions: sessions,
            ..ServerStat::default()
        }
    }

    fn just_now(_: &ServerStat) -> Duration {
        Duration::ZERO
    }

    fn long_ago(_: &ServerStat) -> Duration {
        super::super::DRAIN_TIMEOUT
    }

    #[test]
    fn only_a_structural_change_reloads() {
        assert!(reload_needed(None, "s1"), "never configured here");
        assert!(reload_needed(Some("s1"), "s2"), "listeners, algorithm or health check changed");
        assert!(!reload_needed(Some("s1"), "s1"), "same structure: the Runtime API does the rest");
    }

    #[test]
    fn targets_never_change_the_structure() {
        let owner = "default/web";
        let one = config::structure(owner, &layout(&http())).expect("structure");
        let mut more = http();
        more.targets.selector =
            Some(serde_json::from_value(json!({"matchLabels": {"app": "other"}})).expect("selector"));
        assert_eq!(
            config::structure(owner, &layout(&more)).expect("structure"),
            one,
            "only listeners and checks count"
        );
        let other = spec(json!([{"name": "http", "targetPort": 8080}, {"name": "admin", "targetPort": 9090}]));
        assert_ne!(config::structure(owner, &layout(&other)).expect("structure"), one);
    }

    #[test]
    fn a_new_target_is_added_to_every_listener() {
        let applied = spec(json!([{"name": "http", "targetPort": 8080}, {"name": "admin", "targetPort": 9090}]));
        let plan = membership_of(&applied, &[target("web-1", "172.18.0.2")], &[], &just_now);
        let added: Vec<(&str, &str, &str)> = plan
            .steps
            .iter()
            .map(|step| match step {
                Step::Add { backend, server, address, .. } => (backend.as_str(), server.as_str(), address.as_str()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(added, [("be-http", "web-1", "172.18.0.2:8080"), ("be-admin", "web-1", "172.18.0.2:9090")]);
        assert!(!plan.draining);
    }

    #[test]
    fn added_servers_carry_the_health_check_arguments() {
        let applied = spec(json!([{"name": "http", "targetPort": 8080}]));
        let mut checked = applied.clone();
        checked.health_check = serde_json::from_value(json!({"intervalMillis": 500})).expect("check");
        let plain = membership_of(&applied, &[target("a", "172.18.0.2")], &[], &just_now);
        let with_check = membership_of(&checked, &[target("a", "172.18.0.2")], &[], &just_now);
        let arguments = |plan: &Membership| match &plan.steps[0] {
            Step::Add { arguments, .. } => arguments.clone(),
            other => panic!("unexpected {other:?}"),
        };
        let own = layout(&applied).backends[0].clone();
        assert_eq!(arguments(&plain), config::server_arguments(&own, None));
        assert!(arguments(&with_check).contains("inter 500"), "{}", arguments(&with_check));
    }

    #[test]
    fn a_server_where_it_should_be_needs_nothing() {
        let servers = [server("web-1", "172.18.0.2:8080", "UP", 3)];
        let plan = membership_of(&http(), &[target("web-1", "172.18.0.2")], &servers, &just_now);
        assert_eq!(plan, Membership::default());
    }

    #[test]
    fn a_target_with_a_new_address_moves() {
        let servers = [server("web-1", "172.18.0.2:8080", "UP", 0)];
        let plan = membership_of(&http(), &[target("web-1", "172.18.0.9")], &servers, &just_now);
        let expected =
            Step::Move { backend: "be-http".into(), server: "web-1".into(), ip: "172.18.0.9".into(), port: 8080 };
        assert_eq!(plan.steps, [expected]);
    }

    #[test]
    fn a_leaving_server_that_is_wanted_again_returns() {
        for state in ["DRAIN", "MAINT"] {
            let servers = [server("web-1", "172.18.0.2:8080", state, 1)];
            let plan = membership_of(&http(), &[target("web-1", "172.18.0.2")], &servers, &long_ago);
            assert_eq!(plan.steps, [Step::Return { backend: "be-http".into(), server: "web-1".into() }], "{state}");
        }
    }

    #[test]
    fn a_serving_server_that_is_no_longer_a_target_drains_first() {
        let servers = [server("web-1", "172.18.0.2:8080", "UP", 0)];
        let plan = membership_of(&http(), &[], &servers, &long_ago);
        assert_eq!(plan.steps, [Step::Drain { backend: "be-http".into(), server: "web-1".into() }]);
        assert!(plan.draining, "looked at again with fresh session counts");
    }

    #[test]
    fn a_drained_server_without_sessions_is_removed() {
        let servers = [server("web-1", "172.18.0.2:8080", "DRAIN", 0)];
        let plan = membership_of(&http(), &[], &servers, &just_now);
        let expected = Step::Remove {
            backend: "be-http".into(),
            server: "web-1".into(),
            already_maint: false,
            shutdown_sessions: false,
        };
        assert_eq!(plan.steps, [expected]);
        assert!(!plan.draining);
    }

    #[test]
    fn a_busy_draining_server_waits_until_the_timeout() {
        let servers = [server("web-1", "172.18.0.2:8080", "DRAIN", 2)];
        let waiting = membership_of(&http(), &[], &servers, &just_now);
        assert_eq!((waiting.steps.len(), waiting.draining), (0, true), "its requests finish");
        let ended = membership_of(&http(), &[], &servers, &long_ago);
        let expected = Step::Remove {
            backend: "be-http".into(),
            server: "web-1".into(),
            already_maint: false,
            shutdown_sessions: true,
        };
        assert_eq!(ended.steps, [expected], "after the drain timeout, what is left is ended");
    }

    #[test]
    fn a_server_that_serves_nothing_goes_at_once() {
        for (state, already_maint) in [("DOWN", false), ("MAINT", true)] {
            let servers = [server("web-1", "172.18.0.2:8080", state, 0)];
            let plan = membership_of(&http(), &[], &servers, &just_now);
            let expected = Step::Remove {
                backend: "be-http".into(),
                server: "web-1".into(),
                already_maint,
                shutdown_sessions: true,
            };
            assert_eq!(plan.steps, [expected], "{state}");
            assert!(!plan.draining, "{state}");
        }
    }

    #[test]
    fn servers_of_other_backends_are_not_this_listeners() {
        let mut other = server("web-1", "172.18.0.2:8080", "UP", 0);
        other.backend = "be-old".into();
        let plan = membership_of(&http(), &[target("web-1", "172.18.0.2")], &[other], &just_now);
        assert!(matches!(plan.steps.as_slice(), [Step::Add { backend, .. }] if backend == "be-http"));
    }

    #[test]
    fn joins_come_before_leaves_and_leaves_in_name_order() {
        let servers = [server("web-9", "172.18.0.9:8080", "UP", 0), server("web-3", "172.18.0.3:8080", "UP", 0)];
        let plan = membership_of(&http(), &[target("web-5", "172.18.0.5")], &servers, &just_now);
        let order: Vec<&str> = plan.steps.iter().map(|step| step.server().1).collect();
        assert_eq!(order, ["web-5", "web-3", "web-9"]);
    }

    #[test]
    fn deletion_drains_every_backend() {
        let mut admin = server("web-1", "172.18.0.2:9090", "UP", 0);
        admin.backend = "be-admin".into();
        let servers = [server("web-1", "172.18.0.2:8080", "DRAIN", 0), admin];
        let plan = leave_all(&servers, &just_now);
        let expected = [
            Step::Remove {
                backend: "be-http".into(),
                server: "web-1".into(),
                already_maint: false,
                shutdown_sessions: false,
            },
            Step::Drain { backend: "be-admin".into(), server: "web-1".into() },
        ];
        assert_eq!(plan.steps, expected);
        assert!(plan.draining, "deletion waits for the drain");
    }

    #[test]
    fn a_rolling_replacement_adds_the_new_member_while_the_old_drains() {
        let servers = [server("web-1", "172.18.0.2:8080", "UP", 4)];
        let plan = membership_of(&http(), &[target("web-2", "172.18.0.3")], &servers, &just_now);
        assert!(matches!(&plan.steps[0], Step::Add { server, .. } if server == "web-2"));
        assert_eq!(plan.steps[1], Step::Drain { backend: "be-http".into(), server: "web-1".into() });
        assert!(plan.draining);
    }
}
