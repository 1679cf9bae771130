//! The members' CPU use, for the autoscaler: one stats stream per member container, shared by
//! every evaluation of its group and stopped when the member leaves the group. Each stream
//! keeps the figures of the last [`MAX_KEPT`] (timestamped), from which an evaluation takes the
//! average over its window.
//!
//! A stream that ends (the container stopped, was replaced or is not created yet) is opened
//! again a second later for as long as the member is followed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use minicloud_crds::ObjectKey;

use crate::docker::ContainerDriver;

/// The longest span of figures kept per member (the longest evaluation window allowed).
pub(crate) const MAX_KEPT: Duration = Duration::from_secs(3600);
/// Pause before a stream that ended or failed is opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Fewest figures an average needs (the engine gives about one a second).
const MIN_SAMPLES: usize = 2;

/// Timestamped figures, in cores, oldest first.
type Samples = Arc<Mutex<VecDeque<(Instant, f64)>>>;

/// One followed container.
struct Stream {
    /// The group that follows it.
    group: ObjectKey,
    samples: Samples,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The stats streams of every scaling group's members.
pub(crate) struct CpuMonitor {
    driver: Arc<dyn ContainerDriver>,
    streams: Mutex<HashMap<String, Stream>>,
}

impl CpuMonitor {
    pub fn new(driver: Arc<dyn ContainerDriver>) -> CpuMonitor {
        CpuMonitor { driver, streams: Mutex::default() }
    }

    /// Follows exactly `containers` for `group`: opens the streams that are missing and stops
    /// those of members that left. Must be called inside a Tokio runtime.
    pub fn follow(&self, group: &ObjectKey, containers: &[String]) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|container, stream| &stream.group != group || containers.contains(container));
        for container in containers {
            if streams.contains_key(container) {
                continue;
            }
            let samples = Samples::default();
            let task = tokio::spawn(collect(self.driver.clone(), container.clone(), samples.clone()));
            streams.insert(container.clone(), Stream { group: group.clone(), samples, task });
        }
    }

    /// Stops every stream of `group` (deleted).
    pub(crate) fn forget(&self, group: &ObjectKey) {
        self.follow(group, &[]);
    }

    /// Streams open now (exported as `minicloud_stats_streams`).
    pub fn streams(&self) -> usize {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The container's average CPU use over the last `window`, in cores: `None` while its
    /// figures do not yet cover half the window (just started, or not followed).
    pub fn average(&self, container: &str, window: Duration) -> Option<f64> {
        let samples = {
            let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            streams.get(container)?.samples.clone()
        };
        let samples = samples.lock().unwrap_or_else(PoisonError::into_inner);
        average_over(&samples, Instant::now(), window)
    }
}

/// Reads the container's stats until the task is aborted, reopening the stream when it ends.
async fn collect(driver: Arc<dyn ContainerDriver>, container: String, samples: Samples) {
    loop {
        match driver.cpu_usage(&container).await {
            Ok(mut stream) => {
                while let Some(figure) = stream.next().await {
                    match figure {
                        Ok(cores) => push(&samples, Instant::now(), cores),
                        Err(error) => {
                            tracing::debug!(%container, %error, "stats stream failed");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%container, %error, "cannot open the stats stream"),
        }
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}

fn push(samples: &Samples, at: Instant, cores: f64) {
    let mut samples = samples.lock().unwrap_or_else(PoisonError::into_inner);
    samples.push_back((at, cores));
    while samples.front().is_some_and(|(first, _)| at.duration_since(*first) > MAX_KEPT) {
        samples.pop_front();
    }
}

/// The mean of the figures taken within `window` before `now`, when they span at least half of
/// it.
fn average_over(samples: &VecDeque<(Instant, f64)>, now: Instant, window: Duration) -> Option<f64> {
    let recent: Vec<&(Instant, f64)> =
        samples.iter().filter(|(at, _)| now.saturating_duration_since(*at) <= window).collect();
    let (oldest, _) = recent.first()?;
    // A figure covers the second before it was taken.
    let covered = now.saturating_duration_since(*oldest) + Duration::from_secs(1);
    if recent.len() < MIN_SAMPLES || covered < window / 2 {
        return None;
    }
    Some(recent.iter().map(|(_, cores)| cores).sum::<f64>() / recent.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(now: Instant, figures: &[(u64, f64)]) -> VecDeque<(Instant, f64)> {
        figures.iter().map(|(seconds_ago, cores)| (now - Duration::from_secs(*seconds_ago), *cores)).collect()
    }

    #[test]
    fn averages_the_window_only() {
        let now = Instant::now() + Duration::from_secs(100);
        let samples = series(now, &[(30, 1.0), (20, 1.0), (9, 0.5), (6, 0.25), (3, 0.75), (0, 0.5)]);
        let average = average_over(&samples, now, Duration::from_secs(10)).expect("covered");
        assert!((average - 0.5).abs() < 1e-9, "{average}");
    }

    #[test]
    fn too_few_figures_give_none() {
        let now = Instant::now() + Duration::from_secs(100);
        assert_eq!(average_over(&series(now, &[]), now, Duration::from_secs(10)), None);
        assert_eq!(average_over(&series(now, &[(0, 1.0)]), now, Duration::from_secs(10)), None, "one figure");
        // Two figures a second apart cover 2 s of a 10 s window: not yet.
        assert_eq!(average_over(&series(now, &[(1, 1.0), (0, 1.0)]), now, Duration::from_secs(10)), None);
        assert!(average_over(&series(now, &[(4, 1.0), (0, 1.0)]), now, Duration::from_secs(10)).is_some());
    }

    #[test]
    fn old_figures_are_dropped() {
        let samples = Samples::default();
        let start = Instant::now();
        push(&samples, start, 1.0);
        push(&samples, start + MAX_KEPT + Duration::from_secs(2), 0.5);
        assert_eq!(samples.lock().expect("lock").len(), 1);
    }
}
