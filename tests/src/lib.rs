//! End-to-end tests that start real server processes and drive them with stock etcd clients.
//!
//! The same tests run against `raftkv serve` (the default) or the reference etcd
//! (`RAFTKV_TEST_TARGET=etcd`): both take etcd's flag names, so every expectation written here
//! is first checked against what etcd 3.4 really does.
//!
//! Layout:
//! - [`cluster`]: [`Cluster`], a set of member processes on loopback ports with their data in a
//!   temporary directory and their logs in per-member files (printed when a test panics);
//!   members are added (`member add`, started with `--initial-cluster-state existing`),
//!   promoted and removed the etcd way, and a cluster can start from a `snapshot save` file.
//! - [`etcdctl`]: [`Etcdctl`], the stock `etcdctl` run as a child process with a timeout, and
//!   [`CtlProcess`] for long-running commands such as `etcdctl watch`.
//! - [`wait`]: polling a condition with a deadline; tests never sleep to synchronise.
//! - [`fault`]: fault injection: per-link TCP proxies, partitions, pauses, a full disk.
//! - [`rng`]: a seeded generator for workloads and randomized tests.
//! - [`workload`]: fault workloads (registers and txns, watches, leases, locks) that record
//!   histories for the checkers.
//! - [`soak`]: a fault run: the workloads under a fault schedule, the checkers, and a summary
//!   of throughput dips and recoveries (the CI profile and `scripts/soak.sh`).
//! - [`check`]: history checkers for the fault workloads (linearizability, watch, lease, lock
//!   and durability), pure functions over recorded operations.
//!
//! Environment:
//! - `RAFTKV_TEST_TARGET=etcd` runs the suite against the reference `etcd` (Debian's
//!   `etcd-server`, 3.4) to check the expectations themselves; unset or `raftkv` runs it against
//!   `raftkv serve`, built once per test process with `cargo build -p raftkv-cli --bin raftkv`
//!   (honouring `CARGO` and `CARGO_TARGET_DIR`), or the binary named by `RAFTKV_BIN`.
//! - `etcdctl` must be on `PATH` (scripts/setup.sh installs it); the tests fail, not skip,
//!   without it.
//!
//! ```no_run
//! use raftkv_tests::Cluster;
//!
//! let cluster = Cluster::start(3);
//! let ctl = cluster.etcdctl();
//! assert_eq!(ctl.ok(&["put", "k", "v"]), "OK\n");
//! assert_eq!(ctl.ok(&["get", "k"]), "k\nv\n");
//! ```
#![deny(missing_docs)]

pub mod check;
pub mod cluster;
pub mod etcdctl;
pub mod fault;
pub mod rng;
pub mod soak;
pub mod wait;
pub mod workload;

pub use cluster::{workspace_binary, Cluster, HashKv, MemberInfo, Target};
pub use etcdctl::{CtlOutput, CtlProcess, Etcdctl};
pub use wait::{block_on, wait_until, wait_until_async};
