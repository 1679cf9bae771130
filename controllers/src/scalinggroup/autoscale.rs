//! The autoscaler's decision, free of Docker and of the store: from the members' CPU use over
//! the evaluation window, the group's bounds and its scaling history, the count to drive
//! toward.
//!
//! Target tracking as the Kubernetes HPA does it — `desired = ceil(members × cpu / target)`,
//! nothing while the use is within [`TOLERANCE`] of the target, members without figures yet
//! counted in the direction that makes a change less likely — plus what the HPA lacks by
//! default: a scale-out cooldown and a scale-in cooldown kept apart, and a scale-in
//! stabilisation window (scale in only to the highest count recommended over the window), so a
//! load that hovers around the target does not flap.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// No change while the use is within this fraction of the target (the HPA's default, 10 %).
pub(crate) const TOLERANCE: f64 = 0.1;

/// How the group scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Average CPU use to hold, in percent of each member's CPU limit (or of one core).
    pub target_percent: f64,
    /// The span the members' use is averaged over (for messages).
    pub window: Duration,
    /// After a scale-out, no other scale-out for this long.
    pub scale_out_cooldown: Duration,
    /// After any scaling, no scale-in for this long.
    pub scale_in_cooldown: Duration,
    /// Scale in only to the highest count recommended over this span.
    pub scale_in_stabilization: Duration,
    /// Fewest members.
    pub min: u32,
    /// Most members.
    pub max: u32,
}

/// The group as the autoscaler sees it.
#[derive(Clone, Debug)]
pub(crate) struct Observation {
    pub now: DateTime<Utc>,
    /// The count the group drives toward now.
    pub current: u32,
    /// Each member's average CPU use over the window, in percent; `None` for a member with no
    /// figures yet (just started).
    pub usage: Vec<Option<f64>>,
    pub last_scale_out: Option<DateTime<Utc>>,
    pub last_scale_in: Option<DateTime<Utc>>,
}

/// What the decision does to the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The count stays.
    Hold,
    /// More members because of CPU use.
    ScaleOut,
    /// Fewer members because of CPU use.
    ScaleIn,
    /// The count was outside min..max (the bounds changed) and is brought back.
    Bounds,
}

/// One decision of the autoscaler.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    /// The count to drive toward.
    pub desired: u32,
    pub change: Change,
    /// The numbers behind it, e.g. `cpu 91% > target 60% over 10s: 2 → 4`.
    pub message: String,
    /// The group's average CPU use, in percent (members with figures only).
    pub cpu_percent: Option<f64>,
}

/// The autoscaler of one group: its recent recommendations (for the scale-in stabilisation
/// window), kept in memory. After a restart the window starts empty, and the persisted
/// cooldowns still hold.
#[derive(Debug, Default)]
pub(crate) struct Autoscaler {
    recommendations: VecDeque<(DateTime<Utc>, u32)>,
}

impl Autoscaler {
    /// Decides the count for `observation` under `policy`, remembering the recommendation.
    pub fn decide(&mut self, policy: &Policy, observation: &Observation) -> Decision {
        let current = observation.current;
        let (min, max) = (policy.min, policy.max.max(policy.min));
        if current < min || current > max {
            let desired = current.clamp(min, max);
            self.recommendations.clear();
            return Decision {
                desired,
                change: Change::Bounds,
                message: format!("{current} is outside {min}..{max}: {current} → {desired}"),
                cpu_percent: average(observation.usage.iter().flatten().copied()),
            };
        }
        let window = seconds(policy.window);
        let Some(measured) = average(observation.usage.iter().flatten().copied()) else {
            return hold(current, None, "no CPU figures yet".to_owned());
        };
        let target = policy.target_percent.max(1.0);
        let members = observation.usage.len();
        let missing = observation.usage.iter().filter(|usage| usage.is_none()).count();
        let ratio = measured / target;
        let out = ratio > 1.0 + TOLERANCE;
        let (recommended, note) = if out || ratio < 1.0 - TOLERANCE {
            // Members without figures count as idle when scaling out and as on target when
            // scaling in: they can make a change smaller, never cause one.
            let assumed = if out { 0.0 } else { target };
            let usage = (measured * (members - missing) as f64 + assumed * missing as f64) / members as f64;
            let still = if out { usage / target > 1.0 + TOLERANCE } else { usage / target < 1.0 - TOLERANCE };
            if still {
                let count = recommend(members, usage, target, current);
                (if out { count.max(current) } else { count.min(current) }, None)
            } else {
                let counted = if out { "idle" } else { "on target" };
                (current, Some(format!("{missing} of {members} members have no figures yet and count as {counted}")))
            }
        } else {
            (current, Some(format!("within {:.0}% of the target", TOLERANCE * 100.0)))
        };
        let recommended = recommended.clamp(min, max);
        let now = observation.now;
        self.remember(now, recommended, policy.scale_in_stabilization);
        let relation = if measured > target {
            ">"
        } else if measured < target {
            "<"
        } else {
            "="
        };
        let numbers = format!("cpu {measured:.0}% {relation} target {target:.0}% over {window}");
        let cpu = Some(measured);
        if recommended > current {
            if let Some(left) = left(observation.last_scale_out, policy.scale_out_cooldown, now) {
                let message = format!("{numbers}: {current} → {recommended} held: scale-out cooldown, {left} left");
                return hold(current, cpu, message);
            }
            let message = format!("{numbers}: {current} → {recommended}");
            return Decision { desired: recommended, change: Change::ScaleOut, message, cpu_percent: cpu };
        }
        // Scale in only as far as every recommendation in the stabilisation window allows.
        let stable = self.highest().unwrap_or(recommended).max(recommended).min(current);
        if stable < current {
            let last = observation.last_scale_out.max(observation.last_scale_in);
            if let Some(left) = left(last, policy.scale_in_cooldown, now) {
                let message = format!("{numbers}: {current} → {stable} held: scale-in cooldown, {left} left");
                return hold(current, cpu, message);
            }
            let message = format!("{numbers}: {current} → {stable}");
            return Decision { desired: stable, change: Change::ScaleIn, message, cpu_percent: cpu };
        }
        let message = match note {
            _ if recommended < current => format!(
                "{numbers}: {current} → {recommended} held: {current} was recommended within the last {}",
                seconds(policy.scale_in_stabilization)
            ),
            Some(note) => format!("{numbers}: {current} ({note})"),
            None => format!("{numbers}: {current} (the bounds are {min}..{max})"),
        };
        hold(current, cpu, message)
    }

    /// Records a recommendation and forgets those older than the stabilisation window.
    fn remember(&mut self, now: DateTime<Utc>, recommended: u32, stabilization: Duration) {
        let horizon = now - chrono::Duration::from_std(stabilization).unwrap_or(chrono::Duration::MAX);
        while self.recommendations.front().is_some_and(|(at, _)| *at < horizon) {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((now, recommended));
    }

    fn highest(&self) -> Option<u32> {
        self.recommendations.iter().map(|(_, count)| *count).max()
    }
}

fn hold(current: u32, cpu_percent: Option<f64>, message: String) -> Decision {
    Decision { desired: current, change: Change::Hold, message, cpu_percent }
}

/// `ceil(members × usage / target)`, the HPA's formula; at least one member.
fn recommend(members: usize, usage: f64, target: f64, current: u32) -> u32 {
    if members == 0 {
        return current;
    }
    let wanted = (members as f64 * usage / target).ceil();
    if wanted.is_finite() {
        wanted.clamp(1.0, f64::from(u32::MAX)) as u32
    } else {
        current
    }
}

fn average(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), value| (sum + value, count + 1));
    (count > 0).then(|| sum / count as f64)
}

/// Time left of a cooldown that started at `since`, formatted; `None` when it is over.
fn left(since: Option<DateTime<Utc>>, cooldown: Duration, now: DateTime<Utc>) -> Option<String> {
    let since = since?;
    let elapsed = (now - since).to_std().unwrap_or(Duration::ZERO);
    (elapsed < cooldown).then(|| seconds(cooldown - elapsed))
}

/// `10s`, `1.5s`: a duration as a message shows it.
fn seconds(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            target_percent: 60.0,
            window: Duration::from_secs(10),
            scale_out_cooldown: Duration::from_secs(30),
            scale_in_cooldown: Duration::from_secs(120),
            scale_in_stabilization: Duration::from_secs(60),
            min: 1,
            max: 5,
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    fn seen(now: i64, current: u32, usage: &[Option<f64>]) -> Observation {
        Observation { now: at(now), current, usage: usage.to_vec(), last_scale_out: None, last_scale_in: None }
    }

    #[test]
    fn scales_out_by_the_ratio_and_says_why() {
        let decision = Autoscaler::default().decide(&policy(), &seen(0, 2, &[Some(91.0), Some(91.0)]));
        assert_eq!(decision.desired, 4, "ceil(2 × 91 / 60) = 4");
        assert_eq!(decision.change, Change::ScaleOut);
        assert_eq!(decision.message, "cpu 91% > target 60% over 10s: 2 → 4");
    }

    #[test]
    fn the_tolerance_band_holds_on_both_sides() {
        let mut autoscaler = Autoscaler::default();
        for usage in [54.5, 60.0, 65.5] {
            let decision = autoscaler.decide(&policy(), &seen(0, 3, &[Some(usage); 3]));
            assert_eq!((decision.desired, decision.change), (3, Change::Hold), "{usage}%: {}", decision.message);
        }
        // Just outside the band on either side does change.
        let out = Autoscaler::default().decide(&policy(), &seen(0, 3, &[Some(67.0); 3]));
        assert_eq!((out.desired, out.change), (4, Change::ScaleOut));
        let r#in = Autoscaler::default().decide(&policy(), &seen(0, 3, &[Some(30.0); 3]));
        assert_eq!((r#in.desired, r#in.change), (2, Change::ScaleIn), "{}", r#in.message);
    }

    #[test]
    fn counts_stay_within_min_and_max() {
        let busy = Autoscaler::default().decide(&policy(), &seen(0, 4, &[Some(100.0); 4]));
        assert_eq!(busy.desired, 5, "ceil(4 × 100 / 60) = 7, clamped to max 5");
        let idle = Autoscaler::default().decide(&policy(), &seen(0, 2, &[Some(0.0); 2]));
        assert_eq!(idle.desired, 1, "never below min 1");
        let mut bounds = policy();
        bounds.min = 2;
        let raised = Autoscaler::default().decide(&bounds, &seen(0, 1, &[Some(0.0)]));
        assert_eq!((raised.desired, raised.change), (2, Change::Bounds), "{}", raised.message);
        bounds.max = 3;
        let lowered = Autoscaler::default().decide(&bounds, &seen(0, 5, &[Some(100.0); 5]));
        assert_eq!((lowered.desired, lowered.change), (3, Change::Bounds));
        let mut inverted = policy();
        inverted.min = 4;
        inverted.max = 2;
        let decision = Autoscaler::default().decide(&inverted, &seen(0, 3, &[Some(60.0); 3]));
        assert_eq!(decision.desired, 4, "min wins over a smaller max");
    }

    #[test]
    fn the_scale_out_cooldown_holds_scale_outs_only() {
        let mut observation = seen(10, 2, &[Some(100.0), Some(100.0)]);
        observation.last_scale_out = Some(at(0));
        let held = Autoscaler::default().decide(&policy(), &observation);
        assert_eq!((held.desired, held.change), (2, Change::Hold));
        assert!(held.message.ends_with("2 → 4 held: scale-out cooldown, 20s left"), "{}", held.message);
        observation.now = at(30);
        let after = Autoscaler::default().decide(&policy(), &observation);
        assert_eq!((after.desired, after.change), (4, Change::ScaleOut), "the cooldown is over at 30 s");
        // A recent scale-in does not hold a scale-out.
        let mut observation = seen(10, 2, &[Some(100.0), Some(100.0)]);
        observation.last_scale_in = Some(at(5));
        assert_eq!(Autoscaler::default().decide(&policy(), &observation).desired, 4);
    }

    #[test]
    fn the_scale_in_cooldown_follows_any_scaling() {
        for (out, r#in) in [(Some(at(0)), None), (None, Some(at(0)))] {
            let mut observation = seen(100, 4, &[Some(10.0); 4]);
            observation.last_scale_out = out;
            observation.last_scale_in = r#in;
            let held = Autoscaler::default().decide(&policy(), &observation);
            assert_eq!((held.desired, held.change), (4, Change::Hold), "{}", held.message);
            assert!(held.message.contains("scale-in cooldown, 20s left"), "{}", held.message);
            observation.now = at(120);
            let after = Autoscaler::default().decide(&policy(), &observation);
            assert_eq!((after.desired, after.change), (1, Change::ScaleIn), "{}", after.message);
        }
    }

    #[test]
    fn scale_in_waits_for_every_recommendation_in_the_stabilization_window() {
        let mut autoscaler = Autoscaler::default();
        let policy = policy();
        // A burst at t=0 recommends 4 while the group has 4 (held by nothing: already there).
        assert_eq!(autoscaler.decide(&policy, &seen(0, 4, &[Some(60.0); 4])).desired, 4);
        // Quiet from t=10: recommendations of 1, but 4 was recommended within the last 60 s.
        for second in (10..60).step_by(10) {
            let decision = autoscaler.decide(&policy, &seen(second, 4, &[Some(10.0); 4]));
            assert_eq!((decision.desired, decision.change), (4, Change::Hold), "t={second}: {}", decision.message);
            assert!(decision.message.contains("was recommended within the last 60s"), "{}", decision.message);
        }
        let decision = autoscaler.decide(&policy, &seen(61, 4, &[Some(10.0); 4]));
        assert_eq!((decision.desired, decision.change), (1, Change::ScaleIn), "{}", decision.message);
    }

    /// Ten minutes of a total load swinging every 10 s between 2.4 and 1.35 members' worth at
    /// the target's scale (80 % and 45 % on three members); returns the count changes.
    fn swing(policy: &Policy) -> Vec<(i64, u32, u32)> {
        let mut autoscaler = Autoscaler::default();
        let mut observation = seen(0, 3, &[]);
        let mut changes = Vec::new();
        for step in 0..60 {
            observation.now = at(step * 10);
            let load = if step % 2 == 0 { 240.0 } else { 135.0 };
            let members = observation.current;
            observation.usage = vec![Some(load / f64::from(members)); members as usize];
            let decision = autoscaler.decide(policy, &observation);
            if decision.desired != members {
                changes.push((step, members, decision.desired));
                match decision.change {
                    Change::ScaleOut => observation.last_scale_out = Some(observation.now),
                    Change::ScaleIn => observation.last_scale_in = Some(observation.now),
                    _ => {}
                }
                observation.current = decision.desired;
            }
        }
        changes
    }

    #[test]
    fn a_load_hovering_around_the_target_does_not_flap() {
        // One scale-out (the first high), then the stabilisation window keeps every low from
        // scaling in again.
        assert_eq!(swing(&policy()), [(0, 3, 4)], "one scale-out, then no flapping");
        // Without the window and the cooldowns the same load flaps: the test can tell.
        let mut eager = policy();
        eager.scale_in_stabilization = Duration::ZERO;
        eager.scale_in_cooldown = Duration::ZERO;
        eager.scale_out_cooldown = Duration::ZERO;
        assert!(swing(&eager).len() > 20, "{:?}", swing(&eager));
    }

    #[test]
    fn members_without_figures_never_cause_a_change() {
        // One busy member and three just started: counted as idle, the group is on target.
        let out = Autoscaler::default().decide(&policy(), &seen(0, 4, &[Some(100.0), None, None, None]));
        assert_eq!((out.desired, out.change), (4, Change::Hold), "{}", out.message);
        // One idle member and one just started: the new one counts as on target.
        let r#in = Autoscaler::default().decide(&policy(), &seen(0, 2, &[Some(0.0), None]));
        assert_eq!(r#in.desired, 1, "ceil(2 × 30 / 60) = 1: {}", r#in.message);
        // No figures at all: nothing to decide on.
        let none = Autoscaler::default().decide(&policy(), &seen(0, 2, &[None, None]));
        assert_eq!((none.desired, none.change, none.message.as_str()), (2, Change::Hold, "no CPU figures yet"));
        let empty = Autoscaler::default().decide(&policy(), &seen(0, 2, &[]));
        assert_eq!(empty.change, Change::Hold);
    }
}
