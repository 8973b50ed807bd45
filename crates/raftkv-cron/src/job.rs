//! A job as users write it (JSON under `<prefix>jobs/<name>`), and its validation. A job that
//! fails [`Job::validate`] is refused when added; one that somehow reaches the store anyway is
//! logged and ignored by the schedulers, never a crash.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// The longest a task may run.
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// The most retries a job may ask for.
pub const MAX_RETRIES: u32 = 100;

/// A scheduled job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Unique name: letters, digits, `.`, `_` and `-`, at most 128 bytes.
    pub name: String,
    /// Cron expression, 5 fields or 6 with seconds first (`croner` syntax: `L`, `W`, `#`).
    pub schedule: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "utc")]
    pub timezone: String,
    /// What a run does.
    pub run: Action,
    /// What to do when a fire comes while the previous run is still going.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// What to do with fires missed for longer than `starting_deadline_secs`.
    #[serde(default)]
    pub missed: Missed,
    /// How late a run may start and still count as on time, in seconds.
    #[serde(default = "default_deadline")]
    pub starting_deadline_secs: u64,
    /// Retries of a failed run.
    #[serde(default)]
    pub retries: Retries,
    /// Disabled jobs keep their definition and history but do not fire.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn utc() -> String {
    "UTC".to_string()
}

fn default_deadline() -> u64 {
    60
}

fn yes() -> bool {
    true
}

fn default_timeout() -> u64 {
    3600
}

/// What a run does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// `sh -c command`; exit status 0 is success.
    Shell {
        /// The command line.
        command: String,
        /// Killed after this many seconds.
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
    /// An HTTP request; a 2xx status is success.
    Http {
        /// Method (`GET`, `POST`, ...).
        #[serde(default = "get")]
        method: String,
        /// `http://` or `https://` URL.
        url: String,
        /// Request body.
        #[serde(default)]
        body: String,
        /// Extra request headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Abandoned after this many seconds.
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
}

fn get() -> String {
    "GET".to_string()
}

impl Action {
    /// The run's time limit.
    pub fn timeout(&self) -> Duration {
        match self {
            Action::Shell { timeout_secs, .. } | Action::Http { timeout_secs, .. } => {
                Duration::from_secs(*timeout_secs)
            }
        }
    }
}

/// Kubernetes CronJob's concurrency policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Runs may overlap.
    #[default]
    Allow,
    /// A fire while a run is active is skipped (and recorded as skipped).
    Forbid,
    /// A fire while a run is active cancels that run (its token is revoked) and starts anew.
    Replace,
}

/// What happens to fires older than the starting deadline (the schedulers were down, or the
/// dispatcher failed over).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// They are recorded as missed and not run.
    #[default]
    Skip,
    /// The latest of them runs once; the others are recorded as missed.
    RunOnce,
    /// Every one of them runs, in order.
    RunAll,
}

/// Retries of a failed run, with exponential backoff.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt (0: none).
    #[serde(default)]
    pub max: u32,
    /// Delay before the first retry, in seconds; doubled for each further one.
    #[serde(default = "one")]
    pub backoff_secs: f64,
    /// The delay never exceeds this, in seconds.
    #[serde(default = "sixty")]
    pub max_backoff_secs: f64,
}

fn one() -> f64 {
    1.0
}

fn sixty() -> f64 {
    60.0
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max: 0,
            backoff_secs: 1.0,
            max_backoff_secs: 60.0,
        }
    }
}

impl Retries {
    /// The delay before attempt `attempt` (1 = the first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_secs * 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
        Duration::from_secs_f64(exp.min(self.max_backoff_secs).max(0.0))
    }
}

/// Why a job definition was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JobError {
    /// Not valid JSON for a job.
    #[error("job is not valid JSON: {0}")]
    Json(String),
    /// A field has a bad value.
    #[error("job {name:?}: {field}: {why}")]
    Invalid {
        /// The job's name.
        name: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl Job {
    /// Parses and validates a JSON definition.
    pub fn from_json(text: &[u8]) -> Result<Job, JobError> {
        let job: Job = serde_json::from_slice(text).map_err(|e| JobError::Json(e.to_string()))?;
        job.validate()?;
        Ok(job)
    }

    /// The definition as stored.
    pub fn to_json(&self) -> Vec<u8> {
        // A Job is plain data (strings, numbers, maps with string keys): it always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), JobError> {
        let bad = |field: &'static str, why: String| JobError::Invalid {
            name: self.name.clone(),
            field,
            why,
        };
        if !valid_name(&self.name) {
            return Err(bad(
                "name",
                "must be 1-128 letters, digits, '.', '_' or '-'".into(),
            ));
        }
        Schedule::new(&self.schedule, &self.timezone).map_err(|e| match e {
            crate::schedule::ScheduleError::Expression(why) => bad("schedule", why),
            crate::schedule::ScheduleError::TimeZone(why) => bad("timezone", why),
        })?;
        let timeout = match &self.run {
            Action::Shell {
                command,
                timeout_secs,
            } => {
                if command.trim().is_empty() {
                    return Err(bad("run.command", "is empty".into()));
                }
                *timeout_secs
            }
            Action::Http {
                method,
                url,
                headers,
                timeout_secs,
                ..
            } => {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(bad(
                        "run.method",
                        format!("{method:?} is not an HTTP method"),
                    ));
                }
                let parsed = url::Url::parse(url).map_err(|e| bad("run.url", e.to_string()))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(bad("run.url", format!("{url:?} is not an http(s) URL")));
                }
                for (k, v) in headers {
                    let name_ok = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                    if !name_ok || v.bytes().any(|b| b == b'\r' || b == b'\n') {
                        return Err(bad("run.headers", format!("bad header {k:?}")));
                    }
                }
                *timeout_secs
            }
        };
        if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
            return Err(bad(
                "run.timeout_secs",
                format!("must be 1..={MAX_TIMEOUT_SECS}"),
            ));
        }
        if self.starting_deadline_secs == 0 {
            return Err(bad("starting_deadline_secs", "must be at least 1".into()));
        }
        let r = &self.retries;
        if r.max > MAX_RETRIES {
            return Err(bad("retries.max", format!("at most {MAX_RETRIES}")));
        }
        let finite = |v: f64| v.is_finite() && v >= 0.0 && v <= MAX_TIMEOUT_SECS as f64;
        if !finite(r.backoff_secs) || !finite(r.max_backoff_secs) {
            return Err(bad(
                "retries",
                format!("backoffs must be between 0 and {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        Ok(())
    }
}

/// Job names become key segments: keep them to a safe alphabet.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(name: &str, schedule: &str) -> Job {
        Job {
            name: name.into(),
            schedule: schedule.into(),
            timezone: "UTC".into(),
            run: Action::Shell {
                command: "true".into(),
                timeout_secs: 10,
            },
            concurrency: Concurrency::Allow,
            missed: Missed::Skip,
            starting_deadline_secs: 60,
            retries: Retries::default(),
            enabled: true,
        }
    }

    #[test]
    fn a_minimal_definition_gets_the_defaults() {
        let j = Job::from_json(
            br#"{"name":"backup","schedule":"*/5 * * * * *","run":{"type":"shell","command":"echo hi"}}"#,
        )
        .unwrap();
        assert_eq!(j.timezone, "UTC");
        assert_eq!(j.concurrency, Concurrency::Allow);
        assert_eq!(j.missed, Missed::Skip);
        assert!(j.enabled);
        assert_eq!(j.run.timeout(), Duration::from_secs(3600));
        assert_eq!(Job::from_json(&j.to_json()).unwrap(), j);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let field = |j: Job| match j.validate() {
            Err(JobError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(field(shell("a/b", "* * * * *")), "name");
        assert_eq!(field(shell("", "* * * * *")), "name");
        assert_eq!(field(shell("ok", "61 * * * *")), "schedule");
        assert_eq!(field(shell("ok", "not cron")), "schedule");
        let mut j = shell("ok", "* * * * *");
        j.timezone = "Mars/Olympus".into();
        assert_eq!(field(j), "timezone");
        let mut j = shell("ok", "* * * * *");
        j.run = Action::Shell {
            command: " ".into(),
            timeout_secs: 1,
        };
        assert_eq!(field(j), "run.command");
        let mut j = shell("ok", "* * * * *");
        j.run = Action::Http {
            method: "GET".into(),
            url: "ftp://x".into(),
            body: String::new(),
            headers: BTreeMap::new(),
            timeout_secs: 5,
        };
        assert_eq!(field(j), "run.url");
        let mut j = shell("ok", "* * * * *");
        j.retries.max = 1000;
        assert_eq!(field(j), "retries.max");
        let mut j = shell("ok", "* * * * *");
        j.retries.backoff_secs = f64::NAN;
        assert_eq!(field(j), "retries");
        assert!(matches!(
            Job::from_json(br#"{"name":"x","schedule":"* * * * *","run":{"type":"shell","command":"x"},"colour":"red"}"#),
            Err(JobError::Json(_))
        ));
        assert!(matches!(Job::from_json(b"[1,2"), Err(JobError::Json(_))));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let r = Retries {
            max: 5,
            backoff_secs: 1.5,
            max_backoff_secs: 5.0,
        };
        let secs: Vec<f64> = (1..=4).map(|a| r.backoff(a).as_secs_f64()).collect();
        assert_eq!(secs, vec![1.5, 3.0, 5.0, 5.0]);
    }
}
