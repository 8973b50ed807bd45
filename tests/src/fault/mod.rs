//! Fault injection over real member processes (issue #8).
//!
//! - [`proxy`]: [`Proxy`], a TCP proxy whose [`Mode`] switches at run time: pass, delay (fixed +
//!   jitter per chunk), drop (a "reset" partition), blackhole (the silent one), heal.
//! - [`net`]: [`FaultCluster`], a cluster whose members reach each other through one proxy per
//!   directed peer link (raftkv's test-only `RAFTKV_PEER_DIAL_OVERRIDES` dial hook), with
//!   partitions, isolation (also of the leader), link delays, and process faults: kill, restart,
//!   pause / resume (SIGSTOP / SIGCONT). [`wait_hashkv_equal`] is the convergence check.
//! - [`disk`]: [`SmallDisk`], a size-limited tmpfs over a data directory (root only; `Err`
//!   with the reason otherwise, for a test to skip).
//!
//! Why proxies rather than network namespaces: namespaces with veth pairs and `tc netem` work
//! as root, but need root wherever the tests run and leave state behind on a crash; a userspace
//! proxy needs nothing, is torn down with the test, can cut each direction of a link on its
//! own, and can blackhole a link without resetting it. What it cannot do is lose single packets
//! under TCP (it works on byte streams), which the deterministic Raft simulator
//! (`crates/raftkv-raft/tests/sim`) covers instead.

pub mod disk;
pub mod net;
pub mod proxy;

pub use disk::SmallDisk;
pub use net::{proxies_supported, wait_hashkv_equal, FaultCluster, Status};
pub use proxy::{Mode, Proxy, ProxyStats};
