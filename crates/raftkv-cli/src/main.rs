//! The `raftkv` binary. Its commands (`serve`, the etcdctl-like client commands, `bench`) arrive
//! with the node and client issues; today it only reports its version.

use clap::Parser;

/// raftkv: an etcd-compatible key-value store replicated with Raft.
#[derive(Parser, Debug)]
#[command(name = "raftkv", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
