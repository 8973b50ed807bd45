//! Commits per second of a three-node in-process cluster with the real WAL on disk (fdatasync on),
//! for 1, 16 and 256 concurrent proposers with 256-byte payloads. Nodes talk over an in-process
//! loopback transport, so this measures consensus and the WAL, not the network.
//!
//! `cargo bench -p raftkv-raft --bench cluster` (set `RAFTKV_BENCH_SECS` to change the 5 s per case).

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::{Duration, Instant};

use raftkv_raft::loopback::Loopback;
use raftkv_raft::node::{self, NodeConfig};
use raftkv_raft::{StateMachine, StorageConfig, WalStorage};

#[derive(Default)]
struct Counter {
    applied: u64,
}

impl StateMachine for Counter {
    type Output = u64;

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, index: u64, _term: u64, _data: &[u8]) -> Option<u64> {
        (index > self.applied).then(|| {
            self.applied = index;
            index
        })
    }

    fn persist(&mut self) -> Result<(), String> {
        Ok(())
    }
}

async fn case(proposers: usize, secs: u64) {
    let dir =
        tempfile::tempdir_in(std::env::var("RAFTKV_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("bench dir");
    let net = Loopback::new();
    let nodes: Vec<_> = (1..=3u64)
        .map(|id| {
            let (storage, _) =
                WalStorage::open(dir.path().join(id.to_string()), StorageConfig::default())
                    .unwrap();
            let mut cfg = NodeConfig::new(id);
            cfg.core.snapshot_every = u64::MAX;
            let (h, _join) =
                node::start(cfg, storage, Counter::default(), &[1, 2, 3], net.clone()).unwrap();
            h
        })
        .collect();
    assert!(net.connect(nodes.clone()));
    nodes[0].campaign();
    let mut status = nodes[0].watch_status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.leader != 0))
        .await
        .expect("leader")
        .unwrap();
    let leader = nodes[nodes[0].status().leader as usize - 1].clone();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..proposers {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let payload = vec![7u8; 256];
            while Instant::now() < deadline {
                let t = Instant::now();
                if leader.propose(payload.clone()).await.is_ok() {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "proposers {proposers:>3}: {:>8.0} commits/s  p50 {:>8.2?}  p99 {:>8.2?}  ({} commits in {secs} s)",
        all.len() as f64 / secs as f64,
        pct(0.50),
        pct(0.99),
        all.len()
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick {
        1
    } else {
        std::env::var("RAFTKV_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for proposers in [1, 16, 256] {
        rt.block_on(case(proposers, secs));
    }
}
