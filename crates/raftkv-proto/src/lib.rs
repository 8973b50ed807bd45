//! Generated wire types for raftkv, and nothing else: the etcd v3 API
//! (`mvccpb`, `authpb`, `etcdserverpb`, `v3lockpb`, `v3electionpb`) and
//! raftkv's own internal messages and peer service (`raftkvpb`), as prost
//! messages with tonic clients and servers.
//!
//! The sources are the `.proto` files under the workspace's `proto/`
//! directory, compiled at build time with protox, so no system `protoc` is
//! needed. The etcd packages are wire-compatible with etcd 3.5.
#![deny(missing_docs)]

/// Storage records shared by the API: `KeyValue` and watch `Event`s.
#[allow(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// Auth records: users, roles and permissions.
#[allow(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

/// The etcd v3 client API: KV, Watch, Lease, Cluster, Maintenance and Auth.
#[allow(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// etcd's Lock service.
#[allow(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// etcd's Election service.
#[allow(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

/// raftkv's internal messages: the Raft log payload, persisted records and
/// the peer transport service.
#[allow(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]
pub mod raftkvpb {
    include!(concat!(env!("OUT_DIR"), "/raftkvpb.rs"));
}

/// Encoded `google.protobuf.FileDescriptorSet` of every proto above (with
/// imports and source info), for registering gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/raftkv_descriptor.bin"));
