//! Consensus for raftkv: the driver around tikv's raft-rs, with raftkv's own write-ahead log.
//!
//! - [`wal`]: the write-ahead log: CRC-checked segment files, one fdatasync per Ready.
//! - [`storage`]: [`WalStorage`], raft-rs's `Storage` over the WAL, with an entry cache.
//! - [`core`]: [`Core`], one `RawNode` plus its storage and a [`StateMachine`], driven by explicit
//!   calls (tick, step, propose, advance): no clock, no network, so tests can drive it
//!   deterministically.
//! - [`logging`]: raft-rs's slog output bridged into `tracing`.
//!
//! It knows nothing about keys or gRPC. Still to come (consensus issue): the async node task
//! around [`Core`] with request waiters and batched ReadIndex, the `Transport` trait and snapshot
//! streaming.
#![deny(missing_docs)]

pub mod core;
mod error;
pub mod logging;
pub mod storage;
pub mod wal;

pub use crate::core::{Applied, Core, CoreConfig, Progress, StateMachine};
pub use error::{Damage, Error, Result};
pub use storage::{StorageConfig, WalStorage};
pub use wal::{Recovered, TruncatedTail, Wal, WalConfig};
