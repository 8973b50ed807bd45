//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! prost messages plus tonic clients and servers.

use std::{env, fs, io, path::PathBuf};

use prost::Message as _;

/// Every proto file, relative to the include root.
const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "etcd/v3lockpb/v3lock.proto",
    "etcd/v3electionpb/v3election.proto",
    "raftkv/raftkv.proto",
];

fn main() -> io::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(io::Error::other)?);
    let proto_root = manifest_dir.join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");

    let fds =
        protox::compile(PROTOS, [&proto_root]).map_err(|e| io::Error::other(format!("{e:?}")))?;

    // Kept for gRPC reflection; exposed as `FILE_DESCRIPTOR_SET`.
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    fs::write(out_dir.join("raftkv_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}
