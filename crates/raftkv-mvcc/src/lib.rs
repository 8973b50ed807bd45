//! raftkv's storage: a revisioned key-value store on sled with etcd v3's exact semantics. No
//! networking, no Raft: a node applies committed log entries to it, in order, each with its
//! Raft index.
//!
//! ```
//! use raftkv_mvcc::{Config, Store};
//! use raftkv_proto::etcdserverpb::{PutRequest, RangeRequest};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(Config::new(dir.path())).unwrap();
//! assert_eq!(store.revision().unwrap(), 1); // an empty store is at revision 1
//!
//! let put = PutRequest { key: b"foo".to_vec(), value: b"bar".to_vec(), ..Default::default() };
//! let resp = store.put(1, &put).unwrap().expect("index 1 is new");
//! assert_eq!(resp.header.unwrap().revision, 2);
//! assert!(store.put(1, &put).unwrap().is_none()); // index 1 again: already applied
//!
//! let got = store.range(&RangeRequest { key: b"foo".to_vec(), ..Default::default() }).unwrap();
//! assert_eq!(got.kvs[0].value, b"bar");
//! assert_eq!((got.kvs[0].create_revision, got.kvs[0].version), (2, 1));
//! ```
//!
//! # Layout
//! - [`store`]: the [`Store`] handle: open, reads, the applying methods, commit.
//! - `index`: the in-memory key index. For each key, its uncompacted revisions and, if it exists,
//!   its current value, so reads at the current revision never touch disk.
//! - `write`, `txn`, `range`: etcd's Put/DeleteRange, Txn and Range rules over the index.
//! - [`validate`]: stateless request checks, shared with the node's gRPC layer.
//! - `record`, `state`: the on-disk encoding (records packed into blocks of consecutive
//!   revisions) and the changes pending commit.
//! - [`history`]: events from a revision onward, for watchers.
//! - [`hash`]: the content hash at a revision (HashKV), the corruption check.
//! - `compactor`: the background thread that reclaims space after a compaction.
//! - [`snapshot`]: point-in-time export and verified import.
//! - `layout`, [`defrag`]: the directory's numbered copies of the database, and the online
//!   defragmentation that writes the next copy and switches to it.
//!
//! # Durability
//! Applied changes are buffered and committed to sled as one atomic batch (blocks, leases and the
//! consistent index together) when enough is pending or on [`Store::commit`]. A batch holds whole
//! requests only, so after a crash the store is exactly the state after some applied index, and
//! the node replays its Raft log from [`Store::consistent_index`] + 1.
#![deny(missing_docs)]

mod compactor;
mod config;
pub mod defrag;
mod error;
pub mod hash;
pub mod history;
mod index;
mod layout;
mod lease;
mod range;
mod record;
mod revision;
pub mod snapshot;
mod state;
pub mod store;
mod txn;
pub mod validate;
mod write;

pub use config::Config;
pub use defrag::Defragmented;
pub use error::{Error, RequestError, Result};
pub use hash::KvHash;
pub use history::HistoryBatch;
pub use index::{prefix_range_end, KeyRange};
pub use lease::{LeaseInfo, MAX_LEASE_TTL};
pub use revision::Revision;
pub use snapshot::Snapshot;
pub use store::Store;
