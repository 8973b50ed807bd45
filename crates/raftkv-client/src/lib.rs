//! An async client for raftkv's etcd v3 gRPC API (it talks to etcd too): endpoint failover,
//! safe retries, watches that resume after a member fails, leases kept alive in the
//! background, and locks and elections built on them.
//!
//! ```no_run
//! use raftkv_client::{Client, ClientOptions, GetOptions, PutOptions, WatchOptions};
//!
//! # async fn example() -> raftkv_client::Result<()> {
//! let client = Client::connect(
//!     ["127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"],
//!     ClientOptions::default(),
//! )
//! .await?;
//! client.put("greeting", "hello", PutOptions::default()).await?;
//! let r = client.get("greeting", GetOptions::default()).await?;
//! assert_eq!(r.kvs[0].value, b"hello");
//!
//! // Every change under "jobs/" from now on, across member failures.
//! let mut watcher = client.watch("jobs/", WatchOptions::prefix()).await?;
//! while let Some(update) = watcher.next().await {
//!     for event in update?.events {
//!         println!("{:?}", event.kv);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A lock with a fencing token:
//!
//! ```no_run
//! use raftkv_client::{Client, Compare, CompareOp, PutOptions, Session, Txn, TxnOp};
//!
//! # async fn example(client: Client) -> raftkv_client::Result<()> {
//! let session = Session::new(&client, 10).await?;
//! let guard = raftkv_client::lock("jobs-lock", &session).await?;
//! // Write only while the lock key is still ours.
//! let txn = Txn::new()
//!     .when([Compare::create_revision(guard.key(), CompareOp::Equal, guard.fencing_token())])
//!     .and_then([TxnOp::put("jobs/state", "running", PutOptions::default())]);
//! assert!(client.txn(txn).await?.succeeded);
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`], [`ClientOptions`], the endpoint list and the retry policy (reads
//!   and idempotent calls retried on `Unavailable`, writes only if never sent).
//! - [`kv`]: get/put/delete/compact and the [`Txn`] builder. Calls return etcd's own response
//!   messages, re-exported as [`proto`].
//! - [`watch`]: [`Watcher`], resumed from the last seen revision on another endpoint.
//! - [`lease`]: grant/revoke/time-to-live and [`LeaseKeeper`], which reports loss.
//! - [`concurrency`]: [`Session`], [`Mutex`]/[`lock`] with [`LockGuard`], [`Election`].
//! - [`error`]: [`Error`], etcd's errors recognised by their exact message.
#![deny(missing_docs)]

pub mod client;
pub mod concurrency;
pub mod error;
pub mod kv;
pub mod lease;
pub mod watch;

/// etcd's wire types: `etcdserverpb` (requests, responses, tonic clients) and `mvccpb`
/// (`KeyValue`, `Event`).
pub mod proto {
    pub use raftkv_proto::etcdserverpb;
    pub use raftkv_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    pub use raftkv_proto::mvccpb;
    pub use raftkv_proto::mvccpb::event::EventType;
    pub use raftkv_proto::mvccpb::{Event, KeyValue};
}

pub use client::{Client, ClientOptions};
pub use concurrency::{
    lock, Election, Leadership, LockGuard, Mutex, Observer, Session, DEFAULT_SESSION_TTL,
};
pub use error::{Error, Result};
pub use kv::{
    prefix_range_end, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
pub use lease::{LeaseKeeper, LeaseKeeperOptions, LeaseLost};
pub use watch::{WatchFilter, WatchOptions, WatchUpdate, Watcher};
