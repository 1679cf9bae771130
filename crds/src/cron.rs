//! Five-field cron schedules (`minute hour day-of-month month day-of-week`, UTC), as backup
//! policies write them: `*`, numbers, ranges `a-b`, lists `a,b` and steps `*/n` or `a-b/n`;
//! day of week 0 or 7 is Sunday. As in Vixie cron, when both day fields are restricted a day
//! matching either one matches.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

/// A parsed schedule: for each field, which values match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];

impl Schedule {
    /// Parses a schedule; the error says which part is wrong and how to write it.
    pub fn parse(schedule: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = schedule.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "schedule {schedule:?} has {} fields; write five: minute hour day-of-month month day-of-week (e.g. \"0 3 * * *\")",
                fields.len()
            ));
        }
        let mut sets = Vec::with_capacity(5);
        for (field, (what, low, high)) in fields.iter().zip(FIELDS) {
            sets.push(parse_field(schedule, field, what, low, high)?);
        }
        let mut weekdays = sets.pop().unwrap_or_default();
        // 7 is Sunday too.
        if weekdays.len() > 7 && weekdays[7] {
            weekdays[0] = true;
        }
        weekdays.truncate(7);
        let months = sets.pop().unwrap_or_default();
        let days = sets.pop().unwrap_or_default();
        let hours = sets.pop().unwrap_or_default();
        let minutes = sets.pop().unwrap_or_default();
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
        })
    }

    fn day_matches(&self, time: &DateTime<Utc>) -> bool {
        let day = self.days[time.day() as usize];
        let weekday = self.weekdays[time.weekday().num_days_from_sunday() as usize];
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        }
    }

    /// The first time after `after` (to the minute) the schedule fires; `None` when it never
    /// does within five years (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let horizon = start + Duration::days(5 * 366);
        let mut time = start;
        while time < horizon {
            if !self.months[time.month() as usize] {
                let (year, month) =
                    if time.month() == 12 { (time.year() + 1, 1) } else { (time.year(), time.month() + 1) };
                time = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(&time) {
                time = (time + Duration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if !self.hours[time.hour() as usize] {
                time = (time + Duration::hours(1)).with_minute(0)?;
                continue;
            }
            if !self.minutes[time.minute() as usize] {
                time += Duration::minutes(1);
                continue;
            }
            return Some(time);
        }
        None
    }
}

/// Which values of one field match (indexed by value, 0..=high).
fn parse_field(schedule: &str, field: &str, what: &str, low: u32, high: u32) -> Result<Vec<bool>, String> {
    let mut set = vec![false; high as usize + 1];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let step = match step {
            None => 1,
            Some(step) => match step.parse::<u32>() {
                Ok(step) if step > 0 => step,
                _ => {
                    return Err(format!(
                        "schedule {schedule:?}: step {step:?} of the {what} field must be a positive number"
                    ))
                }
            },
        };
        let value = |text: &str| match text.parse::<u32>() {
            Ok(n) if (low..=high).contains(&n) => Ok(n),
            _ => Err(format!("schedule {schedule:?}: {text:?} is not a valid {what} ({low}-{high})")),
        };
        let (first, last) = if range == "*" {
            (low, high)
        } else {
            match range.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (value(from)?, value(to)?);
                    if from > to {
                        return Err(format!("schedule {schedule:?}: the {what} range {range:?} runs backwards"));
                    }
                    (from, to)
                }
                // `5/15` means from 5 to the end, every 15.
                None if item.contains('/') => (value(range)?, high),
                None => {
                    let n = value(range)?;
                    (n, n)
                }
            }
        };
        for n in (first..=last).step_by(step as usize) {
            set[n as usize] = true;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule).expect("schedule").next_after(at(after)).map_or("never".into(), |t| t.to_rfc3339())
    }

    #[test]
    fn next_times() {
        assert_eq!(next("0 3 * * *", "2026-11-29T22:47:13Z"), "2026-11-30T03:00:00+00:00");
        assert_eq!(next("0 3 * * *", "2026-11-30T03:00:00Z"), "2026-12-01T03:00:00+00:00", "strictly after");
        assert_eq!(next("*/15 * * * *", "2026-11-29T22:47:13Z"), "2026-11-29T23:00:00+00:00");
        assert_eq!(next("* * * * *", "2026-11-29T22:47:13Z"), "2026-11-29T22:48:00+00:00");
        assert_eq!(next("30 1 1 1 *", "2026-11-29T22:47:13Z"), "2027-01-01T01:30:00+00:00");
        assert_eq!(next("0 0 * * 0", "2026-11-29T22:47:13Z"), "2026-12-06T00:00:00+00:00", "a Sunday");
        assert_eq!(next("0 0 * * 7", "2026-11-29T22:47:13Z"), "2026-12-06T00:00:00+00:00", "7 is Sunday too");
        assert_eq!(next("0 12 1-5/2 * *", "2026-12-02T00:00:00Z"), "2026-12-03T12:00:00+00:00");
        assert_eq!(next("5/20 * * * *", "2026-11-29T22:47:13Z"), "2026-11-29T23:05:00+00:00");
        // Both day fields restricted: either matches (the 15th, or a Monday).
        assert_eq!(next("0 0 15 * 1", "2026-11-29T22:47:13Z"), "2026-11-30T00:00:00+00:00");
        assert_eq!(next("0 0 29 2 *", "2026-11-29T22:47:13Z"), "2028-02-29T00:00:00+00:00", "a leap day");
        assert_eq!(next("0 0 31 2 *", "2026-11-29T22:47:13Z"), "never");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (schedule, expected) in [
            ("0 3 * *", "has 4 fields"),
            ("61 3 * * *", "\"61\" is not a valid minute (0-59)"),
            ("*/0 3 * * *", "step \"0\" of the minute field"),
            ("0 5-2 * * *", "runs backwards"),
            ("0 3 * 13 *", "not a valid month"),
            ("0 3 x * *", "not a valid day of month"),
        ] {
            let error = Schedule::parse(schedule).expect_err(schedule);
            assert!(error.contains(expected), "{schedule}: {error}");
        }
    }
}
