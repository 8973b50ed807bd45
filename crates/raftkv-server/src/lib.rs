//! A raftkv node: Raft entries applied to the MVCC store, the lessor, the watch hub, the etcd v3
//! gRPC services and the peer transport, wired together by [`Server`].
//!
//! - [`config`]: [`Config`], etcd's settings under etcd's names.
//! - [`server`]: [`Server::start`] opens the data dir, starts the Raft node and serves clients
//!   and peers; the embedding API.
//! - [`apply`]: the state machine: decodes each committed entry and applies it to the store.
//! - [`kv`], [`lease`], [`cluster`], [`maintenance`], [`concurrency`] (Lock, Election): the
//!   etcd gRPC services; [`context`] is
//!   what they share.
//! - [`gateway`]: etcd's HTTP/JSON gateway (`POST /v3/...`) on the client port, over the gRPC
//!   services in-process.
//! - [`metrics`]: `/metrics` (Prometheus) and `/health` on `--listen-metrics-urls`.
//! - [`members`]: the membership table and alarms, with member and cluster ids.
//! - [`forward`]: requests a follower hands to the leader.
//! - [`learner`]: what a learner refuses to serve, as etcd's learners do.
//! - [`lessor`]: lease deadlines on the leader, expiry, keep-alives and TTL checkpoints.
//! - [`watch`]: the Watch service: history replay then live events, per stream.
//! - [`snapshot`]: the member snapshot format (follower catch-up and backups); [`backup`]:
//!   `Maintenance.Snapshot` and restoring a new data dir from a backup.
//! - [`transport`]: Raft messages and snapshots between members over tonic streams.
//! - [`authority`]: the client-connection filter that cuts etcdctl's URL-form `:authority`
//!   to `host:port` before the HTTP/2 server sees it (etcd #13192).
//! - [`header`], [`error`]: response headers and etcd's error codes and messages.
//! - `flags` (feature `flags`): `raftkv serve`'s flags and config file, shared by the binaries.
#![deny(missing_docs)]

pub mod apply;
pub mod authority;
pub mod backup;
pub mod cluster;
pub mod concurrency;
pub mod config;
pub mod context;
pub mod error;
#[cfg(feature = "flags")]
pub mod flags;
pub mod forward;
pub mod gateway;
pub mod header;
pub mod kv;
pub mod learner;
pub mod lease;
pub mod lessor;
pub mod maintenance;
pub mod members;
pub mod metrics;
pub mod server;
pub mod snapshot;
pub mod transport;
pub mod watch;

pub use config::{ClusterState, Config, InitialMember};
pub use error::{Error, Result};
pub use server::Server;
