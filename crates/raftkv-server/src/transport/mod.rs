//! Raft traffic between members over tonic streams: the gRPC [`raftkv_raft::Transport`].
//!
//! - [`client`]: [`PeerTransport`], the outbound side. One long-lived task per peer holds a
//!   connection and an open `Messages` stream; the node thread only queues (never blocks), and
//!   whatever is queued when the stream can take more leaves as one `RaftMessageBatch`. A broken
//!   connection is re-dialled with exponential backoff; a peer that is down costs the others
//!   nothing. Snapshots go out on their own connection, one `Snapshot` stream each.
//! - [`service`]: [`PeerService`], the inbound side: the tonic `Peer` service that steps
//!   received messages into the local node and installs streamed snapshots while they arrive.
//! - `snapshot`: the two adapters between raftkv-raft's synchronous snapshot I/O (`Write` on the
//!   sender, `Read` on the receiver) and the async chunk stream.
//! - [`TransportConfig`] and [`TransportError`].
//! - `dial`: a testing hook, [`DIAL_OVERRIDES_ENV`] (`RAFTKV_PEER_DIAL_OVERRIDES=
//!   "<peer url>=<host:port>,..."`, read once, warned about when set): dial another socket for
//!   a peer URL, e.g. a fault-injecting proxy. Only the dialled socket changes, never member
//!   ids, the membership table or published URLs.
//!
//! Each direction of a member pair is its own connection: A's messages to B travel on the
//! `Messages` stream A dialled, and B answers (append responses, votes) on the stream B dialled
//! to A; the inbound side returns nothing but the final `PeerAck`. Snapshots travel on a
//! connection the sender dials. So cutting "A to B" (A's dialled connection) silences A towards
//! B only; a full partition between A and B cuts both directed links.
//!
//! Raft messages travel as rust-protobuf 2 bytes (raft-rs 0.7's own encoding) inside the prost
//! messages of `raftkvpb.Peer`. Delivery is best effort, as Raft expects: a full queue or a
//! broken stream drops messages, and Raft retransmits.

pub mod client;
mod config;
mod dial;
mod error;
pub mod service;
mod snapshot;

pub use client::{PeerTransport, UnreachableHook};
pub use config::TransportConfig;
pub use dial::DIAL_OVERRIDES_ENV;
pub use error::TransportError;
pub use service::{PeerCloser, PeerService};

/// The largest gRPC message either side of the peer service encodes or decodes: Raft appends
/// are capped near 1 MiB each (plus a batch of them), snapshot chunks at about 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
