//! What to do to a group's members next, free of Docker and of the store: from the desired
//! count, the members as observed and the update strategy, which members to create, which to
//! start draining and which to delete.
//!
//! - Members that stopped for good (their restart policy says so) are deleted and replaced.
//! - A member leaves in two steps when a load balancer picks the group: it is marked as
//!   draining (load balancers stop sending it new requests and finish the running ones), and it
//!   is deleted once no load balancer lists it any more, or after [`DRAIN_TIMEOUT`].
//! - Scaling in removes members that are not Ready first, then the newest.
//! - A rolling update adds members of the new template first (at most `maxSurge` above the
//!   desired count) and removes old ones only while at least `desired - maxUnavailable` members
//!   serve — Ready, and UP in every load balancer that picks the group. `Recreate` drains every
//!   old member first and creates the new ones when they are all gone.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Longest a member is left draining before it is deleted even though a load balancer still
/// lists it (the load balancer's own drain gives up after 10 s).
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest drain when a load balancer picks the group: the load balancer sees the mark and
/// takes the member out before the member is deleted, even if it had not listed it yet.
pub(crate) const MIN_DRAIN: Duration = Duration::from_secs(1);

/// A member as the plan sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub created: DateTime<Utc>,
    /// Runs the current template.
    pub current: bool,
    /// Its Instance is Ready.
    pub ready: bool,
    /// Ready, and UP in every load balancer that picks the group.
    pub serving: bool,
    /// Stopped for good: its restart policy does not restart it.
    pub failed: bool,
    /// Marked as draining since then.
    pub draining: Option<DateTime<Utc>>,
    /// Some load balancer still lists it as a target (in any state).
    pub in_load_balancer: bool,
}

/// How members of an old template are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Rolling { max_surge: u32, max_unavailable: u32 },
    Recreate,
}

/// The next steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New members of the current template to create.
    pub create: u32,
    /// Members to mark as draining.
    pub drain: Vec<String>,
    /// Members to delete now.
    pub delete: Vec<String>,
}

impl Plan {
    /// Takes `member` out: through draining when a load balancer picks the group, else at once.
    fn remove(&mut self, member: &Member, behind_load_balancer: bool) {
        if behind_load_balancer || member.in_load_balancer {
            self.drain.push(member.name.clone());
        } else {
            self.delete.push(member.name.clone());
        }
    }

    /// Whether nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.create == 0 && self.drain.is_empty() && self.delete.is_empty()
    }
}

/// The order in which members go: not Ready first, then the newest.
fn removal_order(members: &mut [&Member]) {
    members.sort_by(|a, b| a.ready.cmp(&b.ready).then(b.created.cmp(&a.created)).then(a.name.cmp(&b.name)));
}

/// Plans the next steps toward `desired` members of the current template.
/// `behind_load_balancer`: some load balancer picks the group's members.
pub fn plan(
    desired: u32,
    members: &[Member],
    strategy: Strategy,
    behind_load_balancer: bool,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    let elapsed = |since: DateTime<Utc>| (now - since).to_std().unwrap_or(Duration::ZERO);
    for member in members {
        if let Some(since) = member.draining {
            let drained = !member.in_load_balancer && (!behind_load_balancer || elapsed(since) >= MIN_DRAIN);
            if drained || elapsed(since) >= DRAIN_TIMEOUT {
                plan.delete.push(member.name.clone());
            }
        } else if member.failed {
            plan.delete.push(member.name.clone());
        }
    }
    let active: Vec<&Member> = members.iter().filter(|m| m.draining.is_none() && !m.failed).collect();
    let (current, mut old): (Vec<&Member>, Vec<&Member>) = active.iter().partition(|m| m.current);
    let desired_count = desired as usize;

    if strategy == Strategy::Recreate {
        let old_leaving = members.iter().any(|m| !m.current && m.draining.is_some());
        if !old.is_empty() || old_leaving {
            for member in old {
                plan.remove(member, behind_load_balancer);
            }
            return plan;
        }
    }
    let (max_surge, max_unavailable) = match strategy {
        Strategy::Rolling { max_surge, max_unavailable } => (max_surge as usize, max_unavailable as usize),
        Strategy::Recreate => (0, desired_count),
    };
    let room = (desired_count + max_surge).saturating_sub(active.len());
    plan.create = u32::try_from(desired_count.saturating_sub(current.len()).min(room)).unwrap_or(u32::MAX);

    // Removals keep at least `desired - maxUnavailable` members serving; members that do not
    // serve cost nothing.
    let min_serving = desired_count.saturating_sub(max_unavailable);
    let mut serving = active.iter().filter(|m| m.serving).count();
    let mut take = |member: &Member, plan: &mut Plan| {
        if member.serving {
            if serving <= min_serving {
                return false;
            }
            serving -= 1;
        }
        plan.remove(member, behind_load_balancer);
        true
    };
    removal_order(&mut old);
    for member in old {
        take(member, &mut plan);
    }
    let mut surplus: Vec<&Member> = current.clone();
    removal_order(&mut surplus);
    let excess = current.len().saturating_sub(desired_count);
    for member in surplus.into_iter().take(excess) {
        if !take(member, &mut plan) {
            break;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    /// A serving member of the current template created at `created`.
    fn member(name: &str, created: i64) -> Member {
        Member {
            name: name.into(),
            created: at(created),
            current: true,
            ready: true,
            serving: true,
            failed: false,
            draining: None,
            in_load_balancer: true,
        }
    }

    fn old(name: &str, created: i64) -> Member {
        Member { current: false, ..member(name, created) }
    }

    const ROLLING: Strategy = Strategy::Rolling { max_surge: 1, max_unavailable: 0 };

    #[test]
    fn creates_up_to_the_desired_count() {
        let plan = plan(3, &[member("a", 0)], ROLLING, false, at(10));
        assert_eq!(plan, Plan { create: 2, ..Plan::default() });
        assert!(super::plan(1, &[member("a", 0)], ROLLING, true, at(10)).is_empty());
    }

    #[test]
    fn scale_in_takes_members_that_are_not_ready_first_then_the_newest() {
        let mut starting = member("starting", 1);
        starting.ready = false;
        starting.serving = false;
        let members = [member("oldest", 0), starting, member("newer", 5), member("newest", 9)];
        let plan = plan(2, &members, ROLLING, true, at(10));
        assert_eq!(plan.drain, ["starting", "newest"]);
        assert_eq!((plan.create, plan.delete.len()), (0, 0));
        // Without a load balancer in front they go at once.
        let plan = super::plan(2, &members.map(|m| Member { in_load_balancer: false, ..m }), ROLLING, false, at(10));
        assert_eq!(plan.delete, ["starting", "newest"]);
    }

    #[test]
    fn draining_members_are_deleted_once_no_load_balancer_lists_them_or_after_the_timeout() {
        let mut listed = member("listed", 0);
        listed.draining = Some(at(8));
        let mut gone = member("gone", 0);
        gone.draining = Some(at(8));
        gone.in_load_balancer = false;
        let mut just_marked = member("just-marked", 0);
        just_marked.draining = Some(at(10));
        just_marked.in_load_balancer = false;
        let members = [member("a", 0), listed.clone(), gone, just_marked];
        let plan = plan(1, &members, ROLLING, true, at(10));
        assert_eq!(plan.delete, ["gone"], "listed: still draining; just-marked: the LB may not have seen it yet");
        assert!(plan.drain.is_empty() && plan.create == 0, "draining members are not counted: {plan:?}");
        let late = at(8) + chrono::Duration::from_std(DRAIN_TIMEOUT).expect("duration");
        assert_eq!(super::plan(1, &[member("a", 0), listed], ROLLING, true, late).delete, ["listed"]);
    }

    #[test]
    fn failed_members_are_replaced() {
        let mut failed = member("failed", 0);
        failed.failed = true;
        failed.ready = false;
        failed.serving = false;
        let plan = plan(2, &[failed, member("b", 1)], ROLLING, true, at(10));
        assert_eq!(plan, Plan { create: 1, drain: vec![], delete: vec!["failed".into()] });
    }

    /// Runs a rolling update to the end: each round, members created the round before serve
    /// and members marked the round before have left the load balancer; then the plan is
    /// applied. Returns the fewest serving members seen and the most members at once.
    fn roll(desired: u32, strategy: Strategy) -> (usize, usize) {
        let mut members: Vec<Member> = (0..desired).map(|i| old(&format!("old-{i}"), i64::from(i))).collect();
        let (mut fewest_serving, mut most) = (usize::MAX, 0);
        for round in 1..100 {
            for member in &mut members {
                if member.current {
                    member.ready = true;
                    member.serving = true;
                    member.in_load_balancer = true;
                }
                if member.draining.is_some() {
                    member.in_load_balancer = false;
                }
            }
            let converged = members.len() == desired as usize && members.iter().all(|m| m.current && m.serving);
            if converged {
                return (fewest_serving, most);
            }
            let now = at(100 + round * 60);
            let step = plan(desired, &members, strategy, true, now);
            members.retain(|m| !step.delete.contains(&m.name));
            for member in &mut members {
                if step.drain.contains(&member.name) {
                    member.draining = Some(now);
                    member.serving = false;
                }
            }
            for count in 0..step.create {
                let mut new = member(&format!("new-{round}-{count}"), 100 + round);
                new.ready = false;
                new.serving = false;
                new.in_load_balancer = false;
                members.push(new);
            }
            fewest_serving = fewest_serving.min(members.iter().filter(|m| m.serving).count());
            most = most.max(members.iter().filter(|m| m.draining.is_none()).count());
        }
        panic!("no progress: {members:?}");
    }

    #[test]
    fn a_rolling_update_never_has_fewer_serving_than_desired_minus_max_unavailable() {
        assert_eq!(roll(4, ROLLING), (4, 5), "surge 1, unavailable 0");
        let (fewest, most) = roll(4, Strategy::Rolling { max_surge: 2, max_unavailable: 1 });
        assert!(fewest >= 3 && most <= 6, "{fewest} {most}");
        assert_eq!(roll(1, ROLLING), (1, 2));
    }

    #[test]
    fn rolling_waits_for_new_members_to_serve() {
        let mut new = member("new", 50);
        new.ready = true;
        new.serving = false; // Ready, but not UP in the load balancer yet.
        let members = [old("old-1", 0), old("old-2", 1), new];
        let plan = plan(2, &members, ROLLING, true, at(60));
        assert!(plan.is_empty(), "nothing goes before the new member serves: {plan:?}");
    }

    #[test]
    fn recreate_drains_every_old_member_before_creating() {
        let members = [old("old-1", 0), old("old-2", 1)];
        let strategy = Strategy::Recreate;
        let step = plan(2, &members, strategy, true, at(10));
        assert_eq!((step.create, step.drain.len()), (0, 2));
        let mut draining = old("old-1", 0);
        draining.draining = Some(at(10));
        assert!(plan(2, &[draining], strategy, true, at(10)).create == 0, "old ones still leaving");
        assert_eq!(plan(2, &[], strategy, true, at(20)).create, 2);
    }
}
