//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! prost messages plus tonic clients and servers, and (pbjson) serde impls for the etcd API.

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
    let descriptor = fds.encode_to_vec();
    fs::write(out_dir.join("raftkv_descriptor.bin"), &descriptor)?;

    // serde impls for the etcd API's messages (`<package>.serde.rs`), for the JSON gateway:
    // proto field names on output (etcd's gateway runs jsonpb with OrigName), both spellings
    // accepted on input, unknown fields ignored (as jsonpb does).
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor)?
        .out_dir(&out_dir)
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".mvccpb", ".authpb", ".etcdserverpb"])?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}
