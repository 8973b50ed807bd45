#!/usr/bin/env bash
# The long fault run (issue #8): every workload (registers and transactions, watches, leases,
# locks) against a three-member raftkv cluster whose peer links run through fault proxies,
# under a seeded random schedule of kills, pauses, partitions, slow links and membership
# changes; then the linearizability, durability, watch, lease and lock checkers.
#
#   scripts/soak.sh --minutes 30 [--seed S] [--hold SECS] [--settle SECS] [--out FILE]
#
# Prints a Markdown summary: operations, faults, anomalies (must be 0), and the throughput dip
# and recovery time around each fault. Exits non-zero on any anomaly. Release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p raftkv-cli --bin raftkv -p raftkv-tests --bin soak
target_dir="${CARGO_TARGET_DIR:-target}"
# The run restarts members from this binary: a copy, so rebuilding meanwhile cannot change it.
bin_dir="$(mktemp -d)"
trap 'rm -rf "$bin_dir"' EXIT
cp "$target_dir/release/raftkv" "$bin_dir/raftkv"
RAFTKV_BIN="$bin_dir/raftkv" "$target_dir/release/soak" "$@"
