//! Workloads that record histories for the checkers in [`crate::check`] (issue #8).
//!
//! Each workload is an async function that runs clients with the stock `etcd-client` crate
//! against a cluster's client endpoints until its [`Ctx`]'s stop flag is raised, and returns
//! what it recorded; the log type has a `check` method that runs the matching checker and
//! returns [`Anomaly`]s (none, in a correct system).
//!
//! - [`register`]: linearizable gets, puts and compare-and-set over single keys, plus
//!   multi-key transactions over small key groups (linearizability + durability).
//! - [`watch`]: watchers over a prefix, reconnecting with `start_revision`, against a writer
//!   and periodic compactions (watch guarantees).
//! - [`lease`]: keys attached to short leases whose keep-alives stop at random (lease safety).
//! - [`lock`]: etcd's Lock API with fencing tokens guarding a resource (lock safety).
//!
//! Clients stamp operations with the shared [`Clock`] and count completed operations in the
//! shared [`Meter`], which keeps per-second totals so a run can measure the throughput dip
//! and recovery around each fault.

pub mod lease;
pub mod lock;
pub mod register;
pub mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::check::Clock;

/// One problem a checker found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// Which checker: "linearizability", "durability", "watch", "lease", "lock".
    pub checker: &'static str,
    /// What it found (a debug rendering of the checker's violation).
    pub detail: String,
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.checker, self.detail)
    }
}

/// Completed-operation counts: a total and one bucket per second of the run's [`Clock`].
#[derive(Debug, Default)]
pub struct Meter {
    total: AtomicU64,
    per_second: Mutex<Vec<u64>>,
}

impl Meter {
    /// Counts one completed operation at `now` (nanoseconds of the run's clock).
    pub fn done(&self, now: u64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let second = usize::try_from(now / 1_000_000_000).unwrap_or(usize::MAX);
        if let Ok(mut buckets) = self.per_second.lock() {
            if buckets.len() <= second {
                buckets.resize(second + 1, 0);
            }
            buckets[second] += 1;
        }
    }

    /// Operations completed so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Completed operations per second of the run, from second 0.
    pub fn per_second(&self) -> Vec<u64> {
        self.per_second
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }
}

/// What every workload client shares: where the cluster is, the run's clock, stop flag and
/// meter, and a seed.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Client endpoints (`http://127.0.0.1:port`).
    pub endpoints: Vec<String>,
    /// The run's clock: every stamp comes from it.
    pub clock: Clock,
    /// Raised when the run ends; clients finish their current request and return.
    pub stop: Arc<AtomicBool>,
    /// Completed operations.
    pub meter: Arc<Meter>,
    /// The workload's seed (derive per-client seeds from it).
    pub seed: u64,
    /// How long a client waits for one answer before recording an unknown outcome.
    pub op_timeout: Duration,
}

impl Ctx {
    /// A context over `endpoints` with a fresh clock and meter.
    pub fn new(endpoints: Vec<String>, seed: u64) -> Ctx {
        Ctx {
            endpoints,
            clock: Clock::new(),
            stop: Arc::new(AtomicBool::new(false)),
            meter: Arc::new(Meter::default()),
            seed,
            op_timeout: Duration::from_secs(2),
        }
    }

    /// The same run with another seed (for a second workload).
    pub fn with_seed(&self, seed: u64) -> Ctx {
        Ctx {
            seed,
            ..self.clone()
        }
    }

    /// Whether the run has ended.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Ends the run.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Now, on the run's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Counts one completed operation now.
    pub fn done(&self) {
        self.meter.done(self.clock.now());
    }

    /// Connects a client (retrying every 100 ms while members are down); `None` once stopped.
    pub async fn connect(&self) -> Option<Client> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(self.op_timeout);
        loop {
            match Client::connect(self.endpoints.clone(), Some(opts.clone())).await {
                Ok(c) => return Some(c),
                Err(_) if !self.stopped() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => return None,
            }
        }
    }

    /// Waits `d` (pacing, backoff), returning `false` early once the run is stopped.
    pub async fn pause(&self, d: Duration) -> bool {
        let end = tokio::time::Instant::now() + d;
        while !self.stopped() {
            let now = tokio::time::Instant::now();
            if now >= end {
                return true;
            }
            tokio::time::sleep((end - now).min(Duration::from_millis(100))).await;
        }
        false
    }

    /// Runs `f` with the op timeout: `Some(answer)` or `None` (error or timeout: unknown).
    pub async fn call<T, E, F>(&self, f: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(Ok(v)) => Some(v),
            _ => None,
        }
    }
}
