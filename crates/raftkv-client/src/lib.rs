//! An async client for raftkv's etcd v3 API: endpoint failover, watch resume, lease keep-alive.
//!
//! Filled by the client issue; until then it exports nothing.
#![deny(missing_docs)]
