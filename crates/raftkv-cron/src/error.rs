//! The scheduler's errors.

use crate::job::JobError;

/// Everything that can go wrong in the scheduler or its admin calls.
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    /// The store could not be reached, or refused a request.
    #[error("store: {0}")]
    Client(#[from] raftkv_client::Error),
    /// A job definition was refused.
    #[error(transparent)]
    Job(#[from] JobError),
    /// No job by that name.
    #[error("job {0:?} not found")]
    NotFound(String),
    /// A job by that name exists already.
    #[error("job {0:?} exists already (use --replace to overwrite it)")]
    Exists(String),
    /// A scheduler option is out of range.
    #[error("invalid scheduler option: {0}")]
    Option(String),
    /// A scheduler task panicked or was aborted (a bug).
    #[error("scheduler task failed: {0}")]
    Task(String),
    /// This scheduler is no longer the dispatcher (its election key is gone).
    #[error("no longer the dispatcher")]
    Deposed,
    /// A record changed under a read-modify-write too many times in a row.
    #[error("job {0:?} keeps changing; try again")]
    Contended(String),
}
