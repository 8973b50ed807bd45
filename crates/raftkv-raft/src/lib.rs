//! Consensus for raftkv: the driver around tikv's raft-rs, with raftkv's own write-ahead log.
//!
//! This crate will own a `RawNode`, its WAL and its Ready loop, and hand committed entries to a
//! `StateMachine` trait. It knows nothing about keys or gRPC. It is filled by the consensus issue;
//! until then it exports nothing.
#![deny(missing_docs)]
