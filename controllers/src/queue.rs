//! The work queue of a controller: one slot per object, the earliest schedule wins, an object
//! being reconciled is never handed out again until that reconcile finishes (a request that
//! arrives meanwhile is kept and served right after), and failures back off exponentially with
//! jitter, per object, until a success resets them.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Backoff after consecutive failures: `base · 2^(failures-1)`, capped, with ±20% jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = first failure), before jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << exponent).min(self.cap)
    }

    /// The delay with jitter in [0.8, 1.2) of it, so that many failing objects spread out.
    pub fn jittered(&self, failures: u32) -> Duration {
        let factor = 0.8 + rand::random::<f64>() * 0.4;
        self.delay(failures).mul_f64(factor)
    }
}

struct State<K> {
    /// Objects waiting, with the moment they are due.
    pending: HashMap<K, Instant>,
    /// Objects being reconciled now.
    running: HashSet<K>,
    /// Requests that came in while their object was running: served when it finishes.
    deferred: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
    closed: bool,
}

/// A queue of object keys.
pub(crate) struct Queue<K> {
    state: Mutex<State<K>>,
    changed: Notify,
    backoff: Backoff,
}

impl<K: Clone + Eq + Hash> Queue<K> {
    /// An empty queue.
    pub fn new(backoff: Backoff) -> Queue<K> {
        Queue {
            state: Mutex::new(State {
                pending: HashMap::new(),
                running: HashSet::new(),
                deferred: HashMap::new(),
                failures: HashMap::new(),
                closed: false,
            }),
            changed: Notify::new(),
            backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // A panic while holding the lock cannot leave the maps inconsistent (each update is a
        // single insert or remove), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for `key` to be reconciled at `at` (or earlier, if it already is).
    pub fn schedule(&self, key: K, at: Instant) {
        let mut state = self.lock();
        let slot = if state.running.contains(&key) { &mut state.deferred } else { &mut state.pending };
        slot.entry(key).and_modify(|due| *due = (*due).min(at)).or_insert(at);
        drop(state);
        self.changed.notify_one();
    }

    /// Asks for `key` to be reconciled now.
    pub(crate) fn schedule_now(&self, key: K) {
        self.schedule(key, Instant::now());
    }

    /// Waits for the next due key that is not being reconciled and marks it running. `None`
    /// once the queue is closed.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                let now = Instant::now();
                let earliest = state
                    .pending
                    .iter()
                    .filter(|(key, _)| !state.running.contains(*key))
                    .min_by_key(|(_, due)| **due)
                    .map(|(key, due)| (key.clone(), *due));
                match earliest {
                    Some((key, due)) if due <= now => {
                        state.pending.remove(&key);
                        state.running.insert(key.clone());
                        return Some(key);
                    }
                    Some((_, due)) => Some(due),
                    None => None,
                }
            };
            match wait_until {
                Some(due) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Reports a finished reconcile: on success the backoff resets and the key comes back
    /// after `requeue_after` if given; on failure it comes back after the backoff delay. A
    /// request deferred while it ran is honoured too (whichever is earlier).
    pub fn finish(&self, key: K, succeeded: bool, requeue_after: Option<Duration>) -> Option<Duration> {
        let mut state = self.lock();
        state.running.remove(&key);
        let now = Instant::now();
        let retry = if succeeded {
            state.failures.remove(&key);
            requeue_after
        } else {
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures += 1;
            Some(self.backoff.jittered(*failures))
        };
        let mut due = retry.map(|delay| now + delay);
        if let Some(deferred) = state.deferred.remove(&key) {
            due = Some(due.map_or(deferred, |due| due.min(deferred)));
        }
        if let Some(due) = due {
            state.pending.entry(key).and_modify(|at| *at = (*at).min(due)).or_insert(due);
        }
        drop(state);
        self.changed.notify_waiters();
        self.changed.notify_one();
        retry
    }

    /// Forgets an object's failure count (e.g. when it is deleted).
    pub(crate) fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Number of keys waiting (for metrics).
    pub fn depth(&self) -> usize {
        self.lock().pending.len()
    }

    /// Stops handing out keys; waiting workers get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue<&'static str> {
        Queue::new(Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(10) })
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_schedule_wins_and_one_slot_per_key() {
        let queue = queue();
        let now = Instant::now();
        queue.schedule("a", now + Duration::from_secs(5));
        queue.schedule("a", now + Duration::from_secs(1));
        queue.schedule("a", now + Duration::from_secs(3));
        assert_eq!(queue.depth(), 1);
        assert_eq!(queue.next().await, Some("a"));
        assert!(Instant::now() >= now + Duration::from_secs(1));
        assert!(Instant::now() < now + Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_key_is_not_handed_out_twice() {
        let queue = queue();
        queue.schedule_now("a");
        assert_eq!(queue.next().await, Some("a"));
        queue.schedule_now("a"); // arrives while "a" runs
        queue.schedule_now("b");
        assert_eq!(queue.next().await, Some("b"));
        let waiting = tokio::time::timeout(Duration::from_secs(60), queue.next()).await;
        assert!(waiting.is_err(), "a must wait for its running reconcile");
        queue.finish("a", true, None);
        assert_eq!(queue.next().await, Some("a"), "the deferred request is served after the finish");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_success_resets() {
        let queue = queue();
        let delays: Vec<Duration> = (0..4)
            .map(|_| {
                queue.schedule_now("a");
                queue.finish("a", false, None).expect("retry")
            })
            .collect();
        for (index, delay) in delays.iter().enumerate() {
            let expected = Duration::from_millis(100) * (1 << index);
            assert!(*delay >= expected.mul_f64(0.8) && *delay < expected.mul_f64(1.2), "{index}: {delay:?}");
        }
        assert_eq!(queue.finish("a", true, None), None);
        let after_success = queue.finish("a", false, None).expect("retry");
        assert!(after_success < Duration::from_millis(120), "the backoff restarts: {after_success:?}");
        assert_eq!(queue.backoff.delay(40), Duration::from_secs(10), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_releases_waiting_workers() {
        let queue = std::sync::Arc::new(queue());
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert_eq!(waiter.await.expect("join"), None);
    }
}
