//! Cron expressions for repeating experiments: the five classic fields (minute, hour, day of
//! month, month, day of week), in UTC, each `*`, a number, a range `a-b`, a list `a,b`, or a step
//! `*/n` / `a-b/n`; day of week 0-7 (0 and 7 are Sunday). As in cron, when both day fields are
//! restricted a day matching either one is a match. A sixth field in front gives the seconds (as
//! Quartz and others have it: `*/30 * * * * *` is every 30 seconds); without it, second 0. This much is all a schedule of experiments
//! needs, so it is written here rather than bringing in a date-time library for it.

use crate::records::civil_from_days;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            6 => (fields[0], &fields[1..]),
            _ => ("0", &fields[..]),
        };
        let [minute, hour, day, month, weekday] = rest[..] else {
            return Err(format!(
                "{text:?}: expected five fields (minute hour day-of-month month day-of-week), e.g. \"*/15 * * * *\", \
                 or six with the seconds first"
            ));
        };
        let mut weekdays = field(weekday, 0, 7, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Schedule {
            seconds: field(second, 0, 59, "second")?,
            minutes: field(minute, 0, 59, "minute")?,
            hours: field(hour, 0, 23, "hour")?,
            days: field(day, 1, 31, "day of month")?,
            months: field(month, 1, 12, "month")?,
            weekdays,
            days_restricted: day != "*",
            weekdays_restricted: weekday != "*",
        })
    }

    /// The first matching second strictly after `after_ms` (Unix ms), as Unix ms; `None` when
    /// nothing matches within five years (such as February 30th).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        const DAY: u64 = 86_400;
        let mut second = after_ms / 1000 + 1;
        let limit = second + 5 * 366 * DAY;
        while second < limit {
            let days = second / DAY;
            let (_, month, day) = civil_from_days(days as i64);
            if !bit(self.months, month) || !self.day_matches(days, day) {
                second = (days + 1) * DAY;
                continue;
            }
            let (hour, minute, sec) = (second / 3600 % 24, second / 60 % 60, second % 60);
            if !bit(self.hours, hour as u32) {
                second = (second / 3600 + 1) * 3600;
                continue;
            }
            if !bit(self.minutes, minute as u32) {
                second = (second / 60 + 1) * 60;
                continue;
            }
            if bit(self.seconds, sec as u32) {
                return Some(second * 1000);
            }
            second += 1;
        }
        None
    }

    fn day_matches(&self, days_since_epoch: u64, day: u32) -> bool {
        // 1970-01-01 was a Thursday.
        let weekday = ((days_since_epoch + 4) % 7) as u32;
        let (by_day, by_weekday) = (bit(self.days, day), bit(self.weekdays, weekday));
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            (true, false) => by_day,
            (false, true) => by_weekday,
            (false, false) => true,
        }
    }
}

fn bit(set: u64, n: u32) -> bool {
    set & (1 << n) != 0
}

/// One field as a bit set of the values it allows.
fn field(text: &str, min: u32, max: u32, name: &str) -> Result<u64, String> {
    let invalid = |why: &str| format!("{name} field {text:?}: {why}");
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| invalid("the step is not a number"))?;
                if step == 0 {
                    return Err(invalid("a step of 0"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let number = |s: &str| s.parse::<u32>().map_err(|_| invalid(&format!("{s:?} is not a number")));
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step > 1 => (number(range)?, max),
                None => (number(range)?, number(range)?),
            },
        };
        if from < min || to > max || from > to {
            return Err(invalid(&format!("values must be within {min}-{max}")));
        }
        for n in (from..=to).step_by(step as usize) {
            set |= 1 << n;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T10:07:30Z, a Tuesday.
    const NOW: u64 = 1_796_119_650_000;

    fn next(expression: &str) -> String {
        let at = Schedule::parse(expression).unwrap().next_after(NOW).unwrap();
        crate::records::rfc3339(at)
    }

    #[test]
    fn schedules_find_their_next_minute() {
        assert_eq!(crate::records::rfc3339(NOW), "2026-12-01T10:07:30.000Z");
        assert_eq!(next("* * * * *"), "2026-12-01T10:08:00.000Z");
        assert_eq!(next("*/15 * * * *"), "2026-12-01T10:15:00.000Z");
        assert_eq!(next("0 */6 * * *"), "2026-12-01T12:00:00.000Z");
        assert_eq!(next("30 2 * * *"), "2026-12-02T02:30:00.000Z");
        assert_eq!(next("0 9 * * 1-5"), "2026-12-02T09:00:00.000Z", "the next weekday morning");
        assert_eq!(next("0 9 * * 0"), "2026-12-06T09:00:00.000Z", "Sunday");
        assert_eq!(next("0 9 * * 7"), "2026-12-06T09:00:00.000Z", "7 is Sunday too");
        assert_eq!(next("0 0 1 1 *"), "2027-01-01T00:00:00.000Z");
        assert_eq!(next("0 0 29 2 *"), "2028-02-29T00:00:00.000Z", "the next leap day");
        assert_eq!(next("5,10 10 * * *"), "2026-12-01T10:10:00.000Z");
        assert_eq!(next("*/20 * * * * *"), "2026-12-01T10:07:40.000Z", "with seconds");
        assert_eq!(next("15 0 * * * *"), "2026-12-01T11:00:15.000Z");
        assert_eq!(Schedule::parse("0 0 30 2 *").unwrap().next_after(NOW), None, "no February 30th");
    }

    #[test]
    fn bad_expressions_say_which_field() {
        assert!(Schedule::parse("* * * *").unwrap_err().contains("expected five fields"));
        assert!(Schedule::parse("60 * * * *").unwrap_err().starts_with("minute field \"60\""));
        assert!(Schedule::parse("* * * 13 *").unwrap_err().starts_with("month field"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("a step of 0"));
        assert!(Schedule::parse("* * * * mon").unwrap_err().contains("\"mon\" is not a number"));
    }
}
