//! Where the scheduler keeps things, under one prefix (default `/raftkv-cron/`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `jobs/<job>` | the [`crate::job::Job`] JSON | `raftkv-cron jobs add` |
//! | `cursor/<job>` | the last fire time the dispatcher committed (RFC 3339) | dispatcher |
//! | `fires/<job>/<ms>` | a [`crate::record::Fire`]: one per scheduled instant, created once | dispatcher, then executors |
//! | `claims/<job>/<ms>` | a [`crate::record::Claim`], on the executor's lease; its revision is the fencing token | executor |
//! | `active/<job>` | the fire key of the job's running fire (Forbid/Replace jobs) | dispatcher, executor |
//! | `runs/<job>/<ms>-<attempt>` | a [`crate::record::Run`]: the history | executor, dispatcher |
//! | `dispatcher/<lease>` | the dispatcher election (etcd election layout) | every scheduler |
//!
//! `<ms>` is the scheduled instant in Unix milliseconds, zero-padded to 16 digits, so keys sort
//! by time.

use chrono::{DateTime, TimeZone, Utc};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/raftkv-cron/";

/// The key layout under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

fn ms(at: DateTime<Utc>) -> String {
    format!("{:016}", at.timestamp_millis().max(0))
}

impl Keys {
    /// The layout under `prefix` (a `/` is appended if missing).
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every job definition.
    pub fn jobs(&self) -> String {
        format!("{}jobs/", self.prefix)
    }

    /// One job's definition.
    pub fn job(&self, job: &str) -> String {
        format!("{}jobs/{job}", self.prefix)
    }

    /// The job name of a `jobs/<job>` key.
    pub fn job_name<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key.strip_prefix(self.jobs().as_bytes())?).ok()
    }

    /// The dispatcher's cursor for `job`.
    pub fn cursor(&self, job: &str) -> String {
        format!("{}cursor/{job}", self.prefix)
    }

    /// Every fire record.
    pub fn fires(&self) -> String {
        format!("{}fires/", self.prefix)
    }

    /// One job's fire records.
    pub fn fires_of(&self, job: &str) -> String {
        format!("{}fires/{job}/", self.prefix)
    }

    /// The fire record of `job` at `at`.
    pub fn fire(&self, job: &str, at: DateTime<Utc>) -> String {
        format!("{}fires/{job}/{}", self.prefix, ms(at))
    }

    /// Every claim.
    pub fn claims(&self) -> String {
        format!("{}claims/", self.prefix)
    }

    /// The claim on the fire of `job` at `at`.
    pub fn claim(&self, job: &str, at: DateTime<Utc>) -> String {
        format!("{}claims/{job}/{}", self.prefix, ms(at))
    }

    /// The active-run marker of `job`.
    pub fn active(&self, job: &str) -> String {
        format!("{}active/{job}", self.prefix)
    }

    /// One job's run history.
    pub fn runs_of(&self, job: &str) -> String {
        format!("{}runs/{job}/", self.prefix)
    }

    /// Every run record.
    pub fn runs(&self) -> String {
        format!("{}runs/", self.prefix)
    }

    /// The history record of attempt `attempt` of the fire of `job` at `at`.
    pub fn run(&self, job: &str, at: DateTime<Utc>, attempt: u32) -> String {
        format!("{}runs/{job}/{}-{attempt:03}", self.prefix, ms(at))
    }

    /// The dispatcher election's name.
    pub fn election(&self) -> String {
        format!("{}dispatcher", self.prefix)
    }

    /// `(job, instant)` of a `fires/...` or `claims/...` key.
    pub fn parse_slot(&self, key: &[u8]) -> Option<(String, DateTime<Utc>)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key
            .strip_prefix(&self.fires())
            .or_else(|| key.strip_prefix(&self.claims()))?;
        let (job, ms) = rest.rsplit_once('/')?;
        let at = Utc.timestamp_millis_opt(ms.parse().ok()?).single()?;
        Some((job.to_string(), at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_keys_sort_by_time_and_parse_back() {
        let k = Keys::new("/cron");
        let a = Utc.timestamp_millis_opt(999).unwrap();
        let b = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        assert!(k.fire("j", a) < k.fire("j", b));
        assert_eq!(k.fire("j", b), "/cron/fires/j/0001700000000000");
        assert_eq!(
            k.parse_slot(k.fire("j", b).as_bytes()),
            Some(("j".into(), b))
        );
        assert_eq!(
            k.parse_slot(k.claim("j", a).as_bytes()),
            Some(("j".into(), a))
        );
        assert_eq!(k.parse_slot(b"/cron/jobs/j"), None);
        assert_eq!(k.job_name(k.job("nightly").as_bytes()), Some("nightly"));
    }
}
