//! CPU and memory history of every Instance's container, and the request count of every load
//! balancer, for the console's charts: a sampler asks the engine for each running container's
//! use every interval (5 s by default), reads the load balancers' request counters the
//! controllers keep for `/metrics` ([`Metrics::lb_request_totals`]), and keeps the last hour
//! of each. Memory is bounded: at most [`MAX_SERIES`] Instances and as many load balancers, of
//! [`POINTS`] points each; one not seen in two rounds is forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use minicloud_controllers::docker::ContainerDriver;
use minicloud_controllers::metrics::Metrics;
use minicloud_crds::Kind;
use serde::Serialize;

use crate::store::{self, Store};

/// How often the sampler asks, unless `cloud server --usage-interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Points kept per Instance: one hour at the default 5 s.
pub const POINTS: usize = 720;
/// Instances followed at most (the rest are not sampled, and said so in the log).
pub const MAX_SERIES: usize = 2000;
/// Engine requests in flight at once. Each takes about two seconds of waiting (the engine
/// reads twice, a second apart) and little work: `benches/console.rs` measured rounds of 50
/// Instances at 8 at once taking 15 s, and the engine's CPU barely moving.
const CONCURRENT_SAMPLES: usize = 32;
/// The longest one sample may take (the engine takes about a second).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(4);

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Unix time, seconds.
    pub time: i64,
    /// CPU in cores (1.0 = one core busy).
    pub cores: f32,
    pub memory_bytes: u64,
}

/// One reading of a load balancer's request counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Unix time, seconds.
    pub time: i64,
    /// Requests sent to its targets so far (never goes down).
    pub requests: u64,
}

struct Series<P> {
    points: VecDeque<P>,
    last_round: u64,
}

/// Series keyed `namespace/name`, bounded in number and length.
struct Bounded<P>(HashMap<String, Series<P>>);

impl<P> Default for Bounded<P> {
    fn default() -> Self {
        Bounded(HashMap::new())
    }
}

impl<P: Copy> Bounded<P> {
    /// Appends a point (dropping the oldest beyond [`POINTS`]); a new series is refused once
    /// [`MAX_SERIES`] exist.
    fn record(&mut self, key: &str, point: P, round: u64) -> bool {
        if !self.0.contains_key(key) && self.0.len() >= MAX_SERIES {
            return false;
        }
        let entry =
            self.0.entry(key.to_owned()).or_insert_with(|| Series { points: VecDeque::new(), last_round: round });
        entry.last_round = round;
        entry.points.push_back(point);
        while entry.points.len() > POINTS {
            entry.points.pop_front();
        }
        true
    }

    fn forget_unseen(&mut self, round: u64) {
        self.0.retain(|_, series| series.last_round + 1 >= round);
    }

    fn points(&self, key: &str) -> Vec<P> {
        self.0.get(key).map(|series| series.points.iter().copied().collect()).unwrap_or_default()
    }
}

/// The history of every followed Instance and load balancer, keyed `namespace/name`.
#[derive(Default)]
pub struct UsageHistory {
    series: Mutex<Bounded<Point>>,
    traffic: Mutex<Bounded<Count>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl UsageHistory {
    /// Appends a point to `key`'s series (dropping the oldest beyond [`POINTS`]); a new series
    /// is refused once [`MAX_SERIES`] exist.
    pub fn record(&self, key: &str, point: Point, round: u64) -> bool {
        locked(&self.series).record(key, point, round)
    }

    /// Appends a reading of a load balancer's request counter (bounded like [`Self::record`]).
    pub fn record_requests(&self, key: &str, count: Count, round: u64) -> bool {
        locked(&self.traffic).record(key, count, round)
    }

    /// Forgets the Instances and load balancers not seen in this round nor the one before.
    pub fn forget_unseen(&self, round: u64) {
        locked(&self.series).forget_unseen(round);
        locked(&self.traffic).forget_unseen(round);
    }

    /// The points of `namespace/name`, oldest first.
    pub fn points(&self, key: &str) -> Vec<Point> {
        locked(&self.series).points(key)
    }

    /// The request counts of the load balancer `namespace/name`, oldest first.
    pub fn requests(&self, key: &str) -> Vec<Count> {
        locked(&self.traffic).points(key)
    }

    /// How many Instances are followed, and their latest figures summed.
    pub fn totals(&self) -> (usize, f64, u64) {
        let series = locked(&self.series);
        let latest = series.0.values().filter_map(|series| series.points.back());
        let (cores, memory) = latest
            .fold((0.0, 0), |(cores, memory), point| (cores + f64::from(point.cores), memory + point.memory_bytes));
        (series.0.len(), cores, memory)
    }
}

/// Sums series point by point (a scaling group's members): points are matched by their
/// sampling round, i.e. times within half an interval of each other fall together.
pub fn sum(series: &[Vec<Point>], interval: Duration) -> Vec<Point> {
    let step = (interval.as_secs().max(1)) as i64;
    let mut buckets: std::collections::BTreeMap<i64, Point> = std::collections::BTreeMap::new();
    for points in series {
        for point in points {
            let bucket = (point.time + step / 2).div_euclid(step) * step;
            let total = buckets.entry(bucket).or_insert(Point { time: bucket, cores: 0.0, memory_bytes: 0 });
            total.cores += point.cores;
            total.memory_bytes += point.memory_bytes;
        }
    }
    buckets.into_values().collect()
}

/// Samples every Instance's container and every load balancer's request count each
/// `interval` until the task is aborted.
pub fn spawn_sampler(
    store: Arc<dyn Store>,
    driver: Arc<dyn ContainerDriver>,
    metrics: Arc<Metrics>,
    history: Arc<UsageHistory>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 1u64.. {
            ticker.tick().await;
            let query = store::Query { kind: Some(Kind::Instance), namespace: None, selector: Default::default() };
            let instances = match store.list(&query).await {
                Ok(list) => list.items,
                Err(error) => {
                    tracing::debug!(%error, "usage sampler: cannot list Instances");
                    continue;
                }
            };
            let targets: Vec<(String, String)> = instances
                .iter()
                .filter_map(|instance| {
                    let container = instance.status.get("containerId")?.as_str()?.to_owned();
                    Some((format!("{}/{}", instance.namespace(), instance.metadata.name), container))
                })
                .collect();
            let samples = futures::stream::iter(targets)
                .map(|(key, container)| {
                    let driver = driver.clone();
                    async move {
                        let sampled = tokio::time::timeout(SAMPLE_TIMEOUT, driver.usage(&container)).await;
                        (key, sampled)
                    }
                })
                .buffer_unordered(CONCURRENT_SAMPLES)
                .collect::<Vec<_>>()
                .await;
            let now = chrono::Utc::now().timestamp();
            let mut refused = 0;
            for (key, sampled) in samples {
                if let Ok(Ok(Some(usage))) = sampled {
                    let point = Point { time: now, cores: usage.cores as f32, memory_bytes: usage.memory_bytes };
                    if !history.record(&key, point, round) {
                        refused += 1;
                    }
                }
            }
            for (namespace, name, requests) in metrics.lb_request_totals() {
                if !history.record_requests(&format!("{namespace}/{name}"), Count { time: now, requests }, round) {
                    refused += 1;
                }
            }
            if refused > 0 {
                tracing::warn!(refused, limit = MAX_SERIES, "usage sampler: more series than the charts follow");
            }
            history.forget_unseen(round);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(time: i64, cores: f32) -> Point {
        Point { time, cores, memory_bytes: 1 }
    }

    #[test]
    fn history_is_bounded_in_points_and_series() {
        let history = UsageHistory::default();
        for time in 0..(POINTS as i64 + 50) {
            assert!(history.record("ns/a", point(time, 1.0), 1));
        }
        let points = history.points("ns/a");
        assert_eq!(points.len(), POINTS);
        assert_eq!(points[0].time, 50, "the oldest went first");
        for index in 1..MAX_SERIES {
            assert!(history.record(&format!("ns/i{index}"), point(0, 0.5), 1));
        }
        assert!(!history.record("ns/one-too-many", point(0, 0.5), 1), "no series beyond the limit");
        assert!(history.record("ns/a", point(999_999, 1.0), 1), "known series still grow");
        assert_eq!(history.totals().0, MAX_SERIES);
    }

    #[test]
    fn instances_not_seen_for_two_rounds_are_forgotten() {
        let history = UsageHistory::default();
        history.record("ns/gone", point(0, 1.0), 1);
        history.record("ns/stays", point(0, 1.0), 1);
        history.forget_unseen(2);
        assert_eq!(history.points("ns/gone").len(), 1, "one missed round is forgiven");
        history.record("ns/stays", point(5, 1.0), 3);
        history.forget_unseen(3);
        assert!(history.points("ns/gone").is_empty());
        assert_eq!(history.points("ns/stays").len(), 2);
    }

    #[test]
    fn group_series_add_up_by_round() {
        let interval = Duration::from_secs(5);
        let a = vec![point(100, 1.0), point(105, 0.5)];
        let b = vec![point(101, 0.25), point(106, 0.25), point(111, 2.0)];
        let total = sum(&[a, b], interval);
        assert_eq!(total.iter().map(|p| (p.time, p.cores)).collect::<Vec<_>>(), [(100, 1.25), (105, 0.75), (110, 2.0)]);
    }
}
