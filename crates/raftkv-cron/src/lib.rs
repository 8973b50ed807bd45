//! raftkv-cron: a distributed cron scheduler whose runs are claimed through raftkv transactions
//! and fenced by their revisions.
//!
//! - [`job`]: a job definition (JSON in the store) and its validation.
//! - [`schedule`]: fire times of a cron expression in an IANA time zone, DST rules included.
//! - [`keys`], [`record`]: the key layout and the JSON records in the store.
//! - [`clock`]: the dispatcher's clock (system, or set by hand in tests).
//! - [`scheduler`]: a process's engine: the dispatcher (`dispatcher`: elected, commits each
//!   fire exactly once, re-dispatches lost runs) and the executor (`executor`: claims fires on
//!   its lease, runs them with [`runner`], writes results fenced by the claim's revision).
//! - [`jobs`]: the admin API (`raftkv-cron jobs ...`): add, list, remove, enable, run now, history.
#![deny(missing_docs)]

pub use error::CronError;
pub use scheduler::{Scheduler, SchedulerOptions};

pub mod clock;
mod dispatcher;
pub mod error;
mod executor;
pub mod job;
pub mod jobs;
pub mod keys;
pub mod record;
pub mod runner;
pub mod schedule;
pub mod scheduler;
mod store;
