//! Writing status conditions (every controller and the directory sync do):
//! `lastTransitionTime` moves only when the status flips, and `observedGeneration` is always
//! stamped.

use crate::meta::{Condition, ConditionStatus};
use chrono::{DateTime, Utc};

/// Sets (or adds) the condition `type_`. Returns true when its status changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
    now: DateTime<Utc>,
) -> bool {
    let message = message.into();
    match conditions.iter_mut().find(|condition| condition.type_ == type_) {
        Some(condition) => {
            let flipped = condition.status != status;
            if flipped {
                condition.last_transition_time = now;
            }
            condition.status = status;
            condition.reason = reason.to_owned();
            condition.message = message;
            condition.observed_generation = generation;
            flipped
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                status,
                reason: reason.to_owned(),
                message,
                last_transition_time: now,
                observed_generation: generation,
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let start = Utc::now();
        let mut conditions = Vec::new();
        assert!(set_condition(&mut conditions, "Ready", ConditionStatus::False, "Creating", "", 1, start));
        let later = start + Duration::seconds(5);
        assert!(!set_condition(&mut conditions, "Ready", ConditionStatus::False, "Pulling", "image", 2, later));
        assert_eq!(conditions[0].last_transition_time, start);
        assert_eq!((conditions[0].reason.as_str(), conditions[0].observed_generation), ("Pulling", 2));
        assert!(set_condition(&mut conditions, "Ready", ConditionStatus::True, "Running", "", 2, later));
        assert_eq!(conditions[0].last_transition_time, later);
        assert_eq!(conditions[0].status, ConditionStatus::True);
    }
}
