//! The JSON records the schedulers keep in the store (see [`crate::keys`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a fire is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireState {
    /// Waiting for an executor to claim it (not before `not_before`).
    Pending,
    /// An executor claimed it; the fire's mod revision is the claim's fencing token.
    Claimed,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully, with no retry left.
    Failed,
    /// Not run: the starting deadline passed and the job's `missed` policy said skip.
    Missed,
    /// Not run: the job forbids overlapping runs and one was active.
    Skipped,
    /// The run's executor died and the policy did not allow another attempt.
    Lost,
    /// Replaced by a newer fire (concurrency `replace`).
    Cancelled,
}

impl FireState {
    /// Whether nothing more happens to the fire.
    pub fn is_terminal(self) -> bool {
        !matches!(self, FireState::Pending | FireState::Claimed)
    }
}

/// One scheduled instant of one job: created exactly once, by the dispatcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fire {
    /// The job.
    pub job: String,
    /// The scheduled instant.
    pub scheduled: DateTime<Utc>,
    /// 1 for the first attempt; retries and re-dispatches after a lost run count up.
    pub attempt: u32,
    /// Its state.
    pub state: FireState,
    /// Executors do not claim it before this instant (retry backoff).
    pub not_before: DateTime<Utc>,
    /// The executor that claimed it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// An executor's claim on a fire, held on the executor's lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The executor's node name.
    pub node: String,
    /// The attempt claimed.
    pub attempt: u32,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Exit status 0, or an HTTP 2xx.
    Succeeded,
    /// Anything else.
    Failed,
    /// Killed at the job's timeout.
    TimedOut,
    /// Its executor died (lease expired) before it reported.
    Lost,
    /// Not run: the starting deadline passed.
    Missed,
    /// Not run: an earlier run was still active and the job forbids overlap.
    Skipped,
    /// Cancelled by a newer fire (concurrency `replace`).
    Cancelled,
}

/// One history entry: an attempt at a fire, or a fire that was not run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The job.
    pub job: String,
    /// The fire's scheduled instant.
    pub scheduled: DateTime<Utc>,
    /// The attempt.
    pub attempt: u32,
    /// How it ended.
    pub status: RunStatus,
    /// The executor, if one ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The fencing token it ran under (0 if not run).
    #[serde(default)]
    pub token: i64,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// When it ended (or was recorded).
    pub ended: DateTime<Utc>,
    /// The exit code (shell) or HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The last bytes of its output, or why it did not run.
    #[serde(default)]
    pub output: String,
}

/// Serialises a record (plain data: cannot fail).
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Parses a record; `None` (logged) if it does not parse.
pub fn from_json<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Option<T> {
    match serde_json::from_slice(v) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "unreadable scheduler record ignored");
            None
        }
    }
}
