//! Consensus for raftkv: the driver around tikv's raft-rs, with raftkv's own write-ahead log.
//!
//! - [`wal`]: the write-ahead log: CRC-checked segment files, one fdatasync per Ready.
//! - [`storage`]: [`WalStorage`], raft-rs's `Storage` over the WAL, with an entry cache.
//! - [`core`]: [`Core`], one `RawNode` plus its storage and a [`StateMachine`], driven by explicit
//!   calls (tick, step, propose, advance): no clock, no network, so tests can drive it
//!   deterministically.
//! - [`logging`]: raft-rs's slog output bridged into `tracing`.
//!
//! - [`loopback`]: an in-process [`Transport`] for tests, benchmarks and one-process clusters.
//! - [`node`]: the node thread around a [`Core`]: a timer, a command channel, request waiters
//!   with deadlines, batched ReadIndex, and a [`Transport`] for outbound messages.
//!
//! It knows nothing about keys or gRPC; the gRPC [`Transport`] lives in `raftkv-server`.
#![deny(missing_docs)]

pub mod core;
mod error;
pub mod logging;
pub mod loopback;
pub mod node;
pub mod storage;
pub mod wal;

pub use crate::core::{Applied, Core, CoreConfig, Progress, SnapshotSource, StateMachine};
pub use error::{Damage, Error, RequestError, Result};
pub use node::{NodeConfig, NodeHandle, Replication, SnapshotDone, Status, Transport};
pub use storage::{StorageConfig, WalStorage};
pub use wal::{Recovered, TruncatedTail, Wal, WalConfig};
