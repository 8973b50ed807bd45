//! Fire times: a cron expression read in an IANA time zone, evaluated by `croner`.
//!
//! Daylight-saving rules (croner's, checked by the tests below): a *fixed-time* job (single
//! second, minute and hour) fires once a day across both transitions: a time skipped by the
//! spring-forward gap fires at the first instant after the gap, and a time repeated by the
//! fall-back overlap fires at its first occurrence only. An *interval* job (`*/10 * * * *`)
//! fires on every matching instant, so the repeated hour's matches fire twice, as elapsed time
//! says they should.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Why a schedule does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron expression.
    #[error("{0}")]
    Expression(String),
    /// The time zone name.
    #[error("{0}")]
    TimeZone(String),
}

impl Schedule {
    /// Parses `expr` (5 fields, or 6 with seconds first) in zone `tz` (e.g. `Europe/Berlin`).
    pub fn new(expr: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        let tz = Tz::from_str(tz)
            .map_err(|_| ScheduleError::TimeZone(format!("unknown IANA time zone {tz:?}")))?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Expression(format!("{expr:?}: {e}")))?;
        // An expression that never matches (30 February) is refused as well.
        let s = Schedule { cron, tz };
        if s.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Expression(format!("{expr:?} never fires")));
        }
        Ok(s)
    }

    /// The first fire time strictly after `t`, if any.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last fire time strictly before `t`, if any.
    pub fn last_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_previous_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Fire times in `(after, until]`, at most `limit` of them (the earliest).
    pub fn between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= until => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, tz: &str, from: &str, to: &str) -> Vec<String> {
        Schedule::new(expr, tz)
            .unwrap()
            .between(utc(from), utc(to), 1000)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn seconds_are_optional_and_bad_input_is_refused() {
        assert_eq!(
            fires(
                "*/20 * * * * *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:01:00Z"
            ),
            vec![
                "2026-01-01T00:00:20+00:00",
                "2026-01-01T00:00:40+00:00",
                "2026-01-01T00:01:00+00:00"
            ]
        );
        assert_eq!(
            fires(
                "0 12 * * *",
                "Europe/Berlin",
                "2026-07-01T00:00:00Z",
                "2026-07-02T00:00:00Z"
            ),
            vec!["2026-07-01T10:00:00+00:00"]
        );
        assert!(matches!(
            Schedule::new("* * * * *", "Nowhere/Land"),
            Err(ScheduleError::TimeZone(_))
        ));
        assert!(matches!(
            Schedule::new("0 0 30 2 *", "UTC"),
            Err(ScheduleError::Expression(_))
        ));
        assert!(matches!(
            Schedule::new("a b c", "UTC"),
            Err(ScheduleError::Expression(_))
        ));
    }

    #[test]
    fn fixed_time_jobs_fire_once_across_spring_forward() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 never happens.
        let day = fires(
            "0 30 2 * * *",
            "America/New_York",
            "2026-03-07T00:00:00Z",
            "2026-03-09T12:00:00Z",
        );
        assert_eq!(
            day,
            vec![
                "2026-03-07T07:30:00+00:00", // 02:30 EST
                "2026-03-08T07:00:00+00:00", // the gap: 03:00 EDT, the first instant after it
                "2026-03-09T06:30:00+00:00", // 02:30 EDT
            ]
        );
    }

    #[test]
    fn fixed_time_jobs_fire_once_across_fall_back() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
        let day = fires(
            "0 30 1 * * *",
            "America/New_York",
            "2026-10-31T00:00:00Z",
            "2026-11-02T12:00:00Z",
        );
        assert_eq!(
            day,
            vec![
                "2026-10-31T05:30:00+00:00",
                "2026-11-01T05:30:00+00:00", // the first 01:30 (EDT) only
                "2026-11-02T06:30:00+00:00",
            ]
        );
        let tz: Tz = "America/New_York".parse().unwrap();
        let first = tz
            .with_ymd_and_hms(2026, 11, 1, 1, 30, 0)
            .earliest()
            .unwrap();
        assert_eq!(first.with_timezone(&Utc), utc("2026-11-01T05:30:00Z"));
    }

    #[test]
    fn interval_jobs_fire_on_every_instant_of_the_repeated_hour() {
        let hour = fires(
            "0 */30 * * * *",
            "America/New_York",
            "2026-11-01T04:45:00Z",
            "2026-11-01T07:15:00Z",
        );
        // 01:00 EDT, 01:30 EDT, 01:00 EST, 01:30 EST, 02:00 EST: every 30 minutes of real time.
        assert_eq!(
            hour,
            vec![
                "2026-11-01T05:00:00+00:00",
                "2026-11-01T05:30:00+00:00",
                "2026-11-01T06:00:00+00:00",
                "2026-11-01T06:30:00+00:00",
                "2026-11-01T07:00:00+00:00",
            ]
        );
    }
}
