//! Token buckets: each key (a token's name) may spend `burst` requests at once and earns
//! `per_second` more each second; a request finding its bucket empty is told how long to wait
//! (429 with `Retry-After`).
//!
//! Memory stays bounded: buckets exist only for keys that passed authentication (so at most one
//! per token), and buckets that have filled up again are dropped when the map grows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Whether this rate limits anything (a zero rate means "unlimited").
    pub fn is_limited(&self) -> bool {
        self.per_second > 0.0
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets per key at one rate.
#[derive(Debug)]
pub struct Buckets {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before full ones are dropped.
const SWEEP_ABOVE: usize = 4096;

impl Buckets {
    pub fn new(rate: Rate) -> Buckets {
        Buckets { rate, buckets: Mutex::default() }
    }

    /// Spends one request of `key`'s bucket at `now`, or says how long until one is earned.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if !self.rate.is_limited() {
            return Ok(());
        }
        let burst = f64::from(self.rate.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > SWEEP_ABOVE {
            let rate = self.rate.per_second;
            buckets.retain(|_, bucket| {
                bucket.tokens + now.saturating_duration_since(bucket.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: burst, updated: now });
        let earned = now.saturating_duration_since(bucket.updated).as_secs_f64() * self.rate.per_second;
        bucket.tokens = (bucket.tokens + earned).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_requests_wait_for_the_rate() {
        let buckets = Buckets::new(Rate { per_second: 10.0, burst: 3 });
        let start = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take("a", start).is_ok());
        }
        let wait = buckets.take("a", start).expect_err("empty");
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(buckets.take("b", start).is_ok(), "keys have their own buckets");
        assert!(buckets.take("a", start + Duration::from_millis(100)).is_ok(), "one earned in 100 ms");
        assert!(buckets.take("a", start + Duration::from_millis(100)).is_err());
        for _ in 0..3 {
            assert!(buckets.take("a", start + Duration::from_secs(60)).is_ok(), "refilled up to the burst");
        }
        assert!(buckets.take("a", start + Duration::from_secs(60)).is_err(), "never beyond the burst");
    }

    #[test]
    fn a_zero_rate_limits_nothing() {
        let buckets = Buckets::new(Rate { per_second: 0.0, burst: 0 });
        let now = Instant::now();
        assert!((0..10_000).all(|_| buckets.take("a", now).is_ok()));
    }

    #[test]
    fn full_buckets_are_dropped_when_the_map_grows() {
        let buckets = Buckets::new(Rate { per_second: 1000.0, burst: 1 });
        let start = Instant::now();
        for key in 0..(SWEEP_ABOVE * 2) {
            let _ = buckets.take(&key.to_string(), start + Duration::from_millis(key as u64));
        }
        let kept = buckets.buckets.lock().expect("lock").len();
        assert!(kept <= SWEEP_ABOVE + 1, "{kept} buckets kept");
    }
}
