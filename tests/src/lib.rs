//! End-to-end tests that start real `raftkv` processes and drive them with stock etcd clients.
//!
//! The harness and tests arrive with the node issue; library-level tests live beside each crate.
#![deny(missing_docs)]
