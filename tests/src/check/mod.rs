//! Checkers for histories recorded by the fault workloads (issue #8). Pure functions over
//! recorded data: no networking, no clocks (beyond [`history::Clock`], which workloads use to
//! stamp operations), no randomness.
//!
//! - [`history`]: the recorded KV operations ([`Op`]: invoke and completion times, unknown
//!   outcomes) and a JSON-dumpable [`History`].
//! - [`linear`]: linearizability of a KV history (Wing–Gong–Lowe search with Porcupine's
//!   optimisations, partitioned by key), with a minimised [`linear::Witness`] on failure.
//! - [`watch`]: watch guarantees (in order, no gaps, no duplicates, nothing before the start
//!   revision, nothing below a compaction the watcher was told about).
//! - [`lease`]: lease safety (no key outlives its lease by more than a bound; no lease expires
//!   while kept alive).
//! - [`lock`]: fencing tokens (accepted writes' tokens strictly increase in real-time order).
//! - [`durable`]: every acknowledged write survives in the final state.
//!
//! Every checker returns its findings as data (a list of violations, or a report) so a test can
//! dump them next to the history; none panics on bad input.

pub mod durable;
pub mod history;
pub mod lease;
pub mod linear;
pub mod lock;
pub mod watch;

pub use history::{Clock, History, HistoryError, Nanos, Op, OpKind, Txn};
