//! Prometheus metrics of the controllers: reconcile counters, errors, a duration histogram and
//! queue depth per kind, which leases this replica holds, the load balancers' traffic and target health as read from HAProxy's
//! statistics, the scaling groups' decisions, and the databases' backups and restores. The
//! composition root adds what is recorded elsewhere ([`Metrics::register`]: the store's watch
//! lag, the API's requests) and serves [`Metrics::encode`] at `/metrics`.
//!
//! HAProxy's counters start again from zero when it reloads; [`Metrics::record_lb_targets`]
//! turns its raw numbers into increments, so the exported counters never go down.

use std::collections::HashMap;
use std::sync::Mutex;

use minicloud_crds::Kind;

use crate::reconciler::Cause;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabel {
    lease: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    lease: String,
    /// `held`, `taken` (another replica holds it) or `failed` (the store did not answer).
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    namespace: String,
    name: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    namespace: String,
    name: String,
    target: String,
    code_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingLabels {
    namespace: String,
    name: String,
    /// `out`, `in`, `bounds` or `manual`.
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupLabels {
    namespace: String,
    name: String,
    /// `Scheduled`, `Manual` or `Final`.
    reason: String,
    /// `succeeded` or `failed`.
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestoreLabels {
    namespace: String,
    name: String,
    result: String,
}

/// What HAProxy reports about one target, summed over the load balancer's listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TargetTraffic {
    pub target: String,
    pub up: bool,
    pub requests: u64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub responses: [u64; 6],
}

/// Per target: requests, then responses by class, as HAProxy last reported them.
type RawByTarget = HashMap<String, [u64; 7]>;

const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Every metric the controllers export.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<KindLabel, Histogram>,
    queue_depth: Family<KindLabel, Gauge>,
    leader: Family<LeaseLabel, Gauge>,
    leader_transitions: Family<LeaseLabel, Counter>,
    lease_attempts: Family<RenewalLabels, Counter>,
    lb_requests: Family<TargetLabels, Counter>,
    lb_responses: Family<ResponseLabels, Counter>,
    lb_target_up: Family<TargetLabels, Gauge>,
    scaling_decisions: Family<ScalingLabels, Counter>,
    stats_streams: Gauge,
    backups: Family<BackupLabels, Counter>,
    backup_duration: Family<ObjectLabels, Histogram>,
    last_backup_bytes: Family<ObjectLabels, Gauge>,
    last_backup_time: Family<ObjectLabels, Gauge>,
    restores: Family<RestoreLabels, Counter>,
    /// Last raw HAProxy numbers per load balancer and target.
    last_raw: Mutex<HashMap<(String, String), RawByTarget>>,
    /// Requests per load balancer, all targets together (the console's request-rate chart).
    lb_request_totals: Mutex<HashMap<(String, String), u64>>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Backups take from a fraction of a second to an hour (the transfer timeout).
fn backup_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

fn result_label(succeeded: bool) -> String {
    if succeeded { "succeeded" } else { "failed" }.to_owned()
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let reconciles = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let queue_depth = Family::<KindLabel, Gauge>::default();
        let leader = Family::<LeaseLabel, Gauge>::default();
        let leader_transitions = Family::<LeaseLabel, Counter>::default();
        let lease_attempts = Family::<RenewalLabels, Counter>::default();
        let lb_requests = Family::<TargetLabels, Counter>::default();
        let lb_responses = Family::<ResponseLabels, Counter>::default();
        let lb_target_up = Family::<TargetLabels, Gauge>::default();
        let scaling_decisions = Family::<ScalingLabels, Counter>::default();
        let stats_streams = Gauge::default();
        let backups = Family::<BackupLabels, Counter>::default();
        let backup_duration =
            Family::<ObjectLabels, Histogram>::new_with_constructor(backup_histogram as fn() -> Histogram);
        let last_backup_bytes = Family::<ObjectLabels, Gauge>::default();
        let last_backup_time = Family::<ObjectLabels, Gauge>::default();
        let restores = Family::<RestoreLabels, Counter>::default();
        registry.register("minicloud_reconciles", "Reconciles run, per kind", reconciles.clone());
        registry.register(
            "minicloud_reconcile_errors",
            "Reconciles that failed, per kind and cause (conflict: retried at once; invalid_spec: waits for a change; others: retried with backoff)",
            errors.clone(),
        );
        registry.register("minicloud_reconcile_duration_seconds", "How long reconciles took", duration.clone());
        registry.register("minicloud_queue_depth", "Objects waiting to be reconciled", queue_depth.clone());
        registry.register(
            "minicloud_leader",
            "1 while this replica holds the lease (and runs what it guards), 0 otherwise",
            leader.clone(),
        );
        registry.register(
            "minicloud_leader_transitions",
            "Times this replica became the holder of the lease",
            leader_transitions.clone(),
        );
        registry.register(
            "minicloud_lease_attempts",
            "Takes and renewals of a lease by this replica, by result (held, taken: another holds it, failed: the store did not answer)",
            lease_attempts.clone(),
        );
        registry.register("minicloud_lb_requests", "Requests (TCP: connections) sent to a target", lb_requests.clone());
        registry.register("minicloud_lb_responses", "HTTP responses from a target by class", lb_responses.clone());
        registry.register("minicloud_lb_target_up", "1 when the target passes its health check", lb_target_up.clone());
        registry.register(
            "minicloud_scaling_decisions",
            "Changes of a scaling group's desired count, by direction (out, in, bounds, manual)",
            scaling_decisions.clone(),
        );
        registry.register(
            "minicloud_stats_streams",
            "Docker stats streams open for the autoscaler (one per member of an autoscaled group)",
            stats_streams.clone(),
        );
        registry.register(
            "minicloud_database_backups",
            "Backups of a managed database by reason (Scheduled, Manual, Final) and result (succeeded, failed)",
            backups.clone(),
        );
        registry.register(
            "minicloud_database_backup_duration_seconds",
            "How long a database's backups took, failed ones included",
            backup_duration.clone(),
        );
        registry.register(
            "minicloud_database_last_backup_bytes",
            "Size of a database's newest successful backup",
            last_backup_bytes.clone(),
        );
        registry.register(
            "minicloud_database_last_backup_timestamp_seconds",
            "When a database's newest successful backup was taken (Unix time)",
            last_backup_time.clone(),
        );
        registry.register(
            "minicloud_database_restores",
            "Restores of a managed database by result (succeeded, failed)",
            restores.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            queue_depth,
            leader,
            leader_transitions,
            lease_attempts,
            lb_requests,
            lb_responses,
            lb_target_up,
            scaling_decisions,
            stats_streams,
            backups,
            backup_duration,
            last_backup_bytes,
            last_backup_time,
            restores,
            last_raw: Mutex::default(),
            lb_request_totals: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Adds a metric recorded elsewhere (the store's watch lag, the API's requests), before
    /// the metrics are shared.
    pub fn register(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.register(name, help, metric);
    }

    /// One reconcile of `kind` that took `seconds` and failed with `cause`, if it failed.
    pub(crate) fn record_reconcile(&self, kind: Kind, seconds: f64, failed: Option<Cause>) {
        let label = KindLabel { kind: kind.as_str().to_owned() };
        self.reconciles.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(seconds);
        if let Some(cause) = failed {
            let labels = ErrorLabels { kind: label.kind, cause: cause.as_str().to_owned() };
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// Objects of `kind` waiting in the queue.
    pub(crate) fn set_queue_depth(&self, kind: Kind, depth: usize) {
        let label = KindLabel { kind: kind.as_str().to_owned() };
        self.queue_depth.get_or_create(&label).set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Whether this replica now holds `lease` (and acts on it); taking it counts a transition.
    pub(crate) fn set_leader(&self, lease: &str, holds: bool) {
        let label = LeaseLabel { lease: lease.to_owned() };
        self.leader.get_or_create(&label).set(i64::from(holds));
        if holds {
            self.leader_transitions.get_or_create(&label).inc();
        }
    }

    /// One attempt to take or renew `lease`, and its result (`held`, `taken`, `failed`).
    pub(crate) fn record_lease_attempt(&self, lease: &str, result: &str) {
        let labels = RenewalLabels { lease: lease.to_owned(), result: result.to_owned() };
        self.lease_attempts.get_or_create(&labels).inc();
    }

    /// One change of a scaling group's desired count.
    pub(crate) fn record_scaling(&self, namespace: &str, name: &str, direction: &str) {
        let labels =
            ScalingLabels { namespace: namespace.to_owned(), name: name.to_owned(), direction: direction.to_owned() };
        self.scaling_decisions.get_or_create(&labels).inc();
    }

    /// Docker stats streams open now.
    pub(crate) fn set_stats_streams(&self, streams: usize) {
        self.stats_streams.set(i64::try_from(streams).unwrap_or(i64::MAX));
    }

    /// One backup of a database: why it was taken, whether it succeeded, how long it took, and
    /// for a successful one its size and time (Unix seconds).
    pub(crate) fn record_backup(
        &self,
        namespace: &str,
        name: &str,
        reason: &str,
        seconds: f64,
        taken: Option<(u64, i64)>,
    ) {
        let object = ObjectLabels { namespace: namespace.to_owned(), name: name.to_owned() };
        let labels = BackupLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            reason: reason.to_owned(),
            result: result_label(taken.is_some()),
        };
        self.backups.get_or_create(&labels).inc();
        self.backup_duration.get_or_create(&object).observe(seconds);
        if let Some((bytes, time)) = taken {
            self.last_backup_bytes.get_or_create(&object).set(i64::try_from(bytes).unwrap_or(i64::MAX));
            self.last_backup_time.get_or_create(&object).set(time);
        }
    }

    /// One restore of a database.
    pub(crate) fn record_restore(&self, namespace: &str, name: &str, succeeded: bool) {
        let labels =
            RestoreLabels { namespace: namespace.to_owned(), name: name.to_owned(), result: result_label(succeeded) };
        self.restores.get_or_create(&labels).inc();
    }

    /// Drops every series of a deleted database.
    pub(crate) fn forget_database(&self, namespace: &str, name: &str) {
        let object = ObjectLabels { namespace: namespace.to_owned(), name: name.to_owned() };
        for reason in ["Scheduled", "Manual", "Final"] {
            for succeeded in [true, false] {
                self.backups.remove(&BackupLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    reason: reason.to_owned(),
                    result: result_label(succeeded),
                });
            }
        }
        for succeeded in [true, false] {
            self.restores.remove(&RestoreLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                result: result_label(succeeded),
            });
        }
        self.backup_duration.remove(&object);
        self.last_backup_bytes.remove(&object);
        self.last_backup_time.remove(&object);
    }

    /// HAProxy's current numbers for the targets of one load balancer. Targets no longer listed
    /// lose their series.
    pub(crate) fn record_lb_targets(&self, namespace: &str, name: &str, targets: &[TargetTraffic]) {
        let mut last_raw = self.last_raw.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = last_raw.entry((namespace.to_owned(), name.to_owned())).or_default();
        let mut requests = 0;
        let labels = |target: &str| TargetLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            target: target.to_owned(),
        };
        for target in targets {
            let mut raw = [0u64; 7];
            raw[0] = target.requests;
            raw[1..].copy_from_slice(&target.responses);
            let before = previous.insert(target.target.clone(), raw).unwrap_or([0; 7]);
            // A number smaller than before means HAProxy started counting again (a reload).
            let increment =
                |index: usize| if raw[index] >= before[index] { raw[index] - before[index] } else { raw[index] };
            self.lb_requests.get_or_create(&labels(&target.target)).inc_by(increment(0));
            requests += increment(0);
            for (class_index, class) in CODE_CLASSES.iter().enumerate() {
                let delta = increment(class_index + 1);
                let series = ResponseLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    target: target.target.clone(),
                    code_class: (*class).to_owned(),
                };
                self.lb_responses.get_or_create(&series).inc_by(delta);
            }
            self.lb_target_up.get_or_create(&labels(&target.target)).set(i64::from(target.up));
        }
        *self
            .lb_request_totals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default() += requests;
        let gone: Vec<String> =
            previous.keys().filter(|known| !targets.iter().any(|t| &t.target == *known)).cloned().collect();
        for target in gone {
            previous.remove(&target);
            self.forget_target(namespace, name, &target);
        }
    }

    /// Requests each load balancer has sent to its targets since this replica began to follow
    /// it, as `(namespace, name, requests)`; never going down (HAProxy's reloads are accounted
    /// for). Only the replica that runs the load balancers' controller counts.
    pub fn lb_request_totals(&self) -> Vec<(String, String, u64)> {
        let totals = self.lb_request_totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        totals.iter().map(|((namespace, name), requests)| (namespace.clone(), name.clone(), *requests)).collect()
    }

    /// Drops every series of a deleted load balancer.
    pub(crate) fn forget_lb(&self, namespace: &str, name: &str) {
        self.lb_request_totals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&(namespace.to_owned(), name.to_owned()));
        let mut last_raw = self.last_raw.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(targets) = last_raw.remove(&(namespace.to_owned(), name.to_owned())) {
            for target in targets.keys() {
                self.forget_target(namespace, name, target);
            }
        }
    }

    fn forget_target(&self, namespace: &str, name: &str, target: &str) {
        let labels = TargetLabels { namespace: namespace.to_owned(), name: name.to_owned(), target: target.to_owned() };
        self.lb_requests.remove(&labels);
        self.lb_target_up.remove(&labels);
        for class in CODE_CLASSES {
            self.lb_responses.remove(&ResponseLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                target: target.to_owned(),
                code_class: class.to_owned(),
            });
        }
    }

    /// Everything in Prometheus' text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(target: &str, requests: u64, ok: u64) -> TargetTraffic {
        TargetTraffic { target: target.into(), up: true, requests, responses: [0, ok, 0, 0, 0, 0] }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn counters_survive_haproxy_restarting_its_count_and_gone_targets_lose_their_series() {
        let metrics = Metrics::default();
        metrics.record_lb_targets("default", "web", &[traffic("a", 10, 9), traffic("b", 4, 4)]);
        metrics.record_lb_targets("default", "web", &[traffic("a", 15, 14), traffic("b", 4, 4)]);
        // A reload: HAProxy counts from zero again.
        metrics.record_lb_targets("default", "web", &[traffic("a", 3, 3)]);
        let text = metrics.encode();
        let requests = r#"minicloud_lb_requests_total{namespace="default",name="web",target="a"}"#;
        assert_eq!(sample(&text, requests), Some(18.0), "{text}");
        let ok = r#"minicloud_lb_responses_total{namespace="default",name="web",target="a",code_class="2xx"}"#;
        assert_eq!(sample(&text, ok), Some(17.0), "{text}");
        assert!(!text.contains(r#"target="b""#), "b left: {text}");
        assert_eq!(metrics.lb_request_totals(), vec![("default".into(), "web".into(), 22)], "all targets, never down");
        metrics.record_reconcile(Kind::LoadBalancer, 0.01, Some(Cause::EngineUnreachable));
        metrics.set_queue_depth(Kind::LoadBalancer, 2);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, r#"minicloud_reconcile_errors_total{kind="LoadBalancer",cause="engine_unreachable"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, r#"minicloud_queue_depth{kind="LoadBalancer"}"#), Some(2.0), "{text}");
        metrics.forget_lb("default", "web");
        assert!(!metrics.encode().contains("minicloud_lb_requests_total{"));
        assert!(metrics.lb_request_totals().is_empty());
        metrics.record_scaling("default", "web", "out");
        metrics.record_scaling("default", "web", "out");
        let series = r#"minicloud_scaling_decisions_total{namespace="default",name="web",direction="out"}"#;
        assert_eq!(sample(&metrics.encode(), series), Some(2.0));
    }

    #[test]
    fn backups_are_counted_by_reason_and_result_and_a_deleted_database_loses_its_series() {
        let metrics = Metrics::default();
        metrics.record_backup("default", "db", "Scheduled", 1.5, Some((2048, 1_700_000_000)));
        metrics.record_backup("default", "db", "Manual", 1.0, Some((4096, 1_700_000_100)));
        metrics.record_backup("default", "db", "Scheduled", 0.2, None);
        metrics.record_restore("default", "db", false);
        let text = metrics.encode();
        let scheduled_ok =
            r#"minicloud_database_backups_total{namespace="default",name="db",reason="Scheduled",result="succeeded"}"#;
        let scheduled_failed =
            r#"minicloud_database_backups_total{namespace="default",name="db",reason="Scheduled",result="failed"}"#;
        assert_eq!(sample(&text, scheduled_ok), Some(1.0), "{text}");
        assert_eq!(sample(&text, scheduled_failed), Some(1.0), "{text}");
        // The newest successful backup, not the failed one after it.
        assert_eq!(
            sample(&text, r#"minicloud_database_last_backup_bytes{namespace="default",name="db"}"#),
            Some(4096.0)
        );
        let count = r#"minicloud_database_backup_duration_seconds_count{namespace="default",name="db"}"#;
        assert_eq!(sample(&text, count), Some(3.0), "{text}");
        let restores = r#"minicloud_database_restores_total{namespace="default",name="db",result="failed"}"#;
        assert_eq!(sample(&text, restores), Some(1.0), "{text}");
        metrics.forget_database("default", "db");
        assert!(!metrics.encode().contains(r#"name="db""#), "{}", metrics.encode());
    }
}
