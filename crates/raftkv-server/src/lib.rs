//! A raftkv node: the state machine joining Raft to MVCC, the lessor, the watch hub and the
//! etcd v3 gRPC services.
//!
//! Filled by the node issue; until then it exports nothing.
#![deny(missing_docs)]
