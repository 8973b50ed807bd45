//! Deterministic cluster simulation of `Core`: 3- and 5-node clusters over a lossy, reordering,
//! partitioning network with crashes and power losses, all from one seed, checked against Raft's
//! safety properties (election safety, log matching, leader completeness, state machine safety),
//! durability of promises (a restarted node remembers every vote and append acknowledgement it
//! sent), durability of acknowledged writes, and liveness once the faults heal. The harness lives
//! in `tests/sim/`: `cluster` (nodes, network, faults), `invariants` (one checker per property),
//! `machine` (the register-log state machine), `rng` (the seeded generator).
//!
//! A failing seed prints its replay command:
//! `RAFTKV_SIM_SEED=<seed> cargo test -p raftkv-raft --test sim -- --nocapture replay`.
//! `RAFTKV_SIM_SEEDS=<n>` runs `n` seeds per CI test instead of the default.

// A failing seed must say how to replay it; a replay prints its event trace.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "sim/cluster.rs"]
mod cluster;
#[path = "sim/invariants.rs"]
mod invariants;
#[path = "sim/machine.rs"]
mod machine;
#[path = "sim/rng.rs"]
mod rng;

use std::panic::{catch_unwind, AssertUnwindSafe};

use cluster::{RunConfig, Sim, Stats};

/// Seeds per CI test (two tests, so 2 × this many runs).
const CI_SEEDS: u64 = 250;

/// Runs one seed; a failure (including a panic inside raft-rs) comes back with the seed.
fn run_seed(cfg: RunConfig) -> Result<(Stats, Vec<String>), String> {
    let seed = cfg.seed;
    let nodes = cfg.nodes;
    let mut trace = Vec::new();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(cfg)?;
        let res = sim.run();
        trace = sim.trace().to_vec();
        res
    }));
    let err = match outcome {
        Ok(Ok(stats)) => return Ok((stats, trace)),
        Ok(Err(e)) => e,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("panicked: {msg}")
        }
    };
    let tail: Vec<_> = trace.iter().rev().take(60).rev().cloned().collect();
    let err = if tail.is_empty() {
        err
    } else {
        format!("{err}\n  trace:\n    {}", tail.join("\n    "))
    };
    Err(format!(
        "seed {seed} ({nodes} nodes) failed: {err}\n  replay: RAFTKV_SIM_SEED={seed} \
         cargo test -p raftkv-raft --test sim -- --nocapture replay"
    ))
}

fn run_seeds(seeds: impl Iterator<Item = u64>) {
    let mut total = Stats::default();
    let mut failures = Vec::new();
    let mut runs = 0;
    for seed in seeds {
        runs += 1;
        match run_seed(RunConfig::for_seed(seed)) {
            Ok((stats, _)) => total += stats,
            Err(e) => {
                eprintln!("{e}");
                failures.push(e);
            }
        }
    }
    eprintln!("{runs} seeds: {total:?}");
    assert!(
        failures.is_empty(),
        "{} of {runs} seeds failed; first:\n{}",
        failures.len(),
        failures[0]
    );
    // The faults really happened.
    assert!(total.acked > 0 && total.crashes > 0 && total.power_losses > 0);
    assert!(total.partitions > 0 && total.snapshots > 0 && total.compacted_nodes > 0);
}

fn seeds_per_test() -> u64 {
    std::env::var("RAFTKV_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SEEDS)
}

/// CI profile, 3-node clusters (even seeds).
#[test]
fn ci_three_nodes() {
    run_seeds((0..seeds_per_test()).map(|i| 2 * i));
}

/// CI profile, 5-node clusters (odd seeds).
#[test]
fn ci_five_nodes() {
    run_seeds((0..seeds_per_test()).map(|i| 2 * i + 1));
}

/// Replays `RAFTKV_SIM_SEED` with its event trace; without it, runs seed 0 (3 nodes) and checks
/// that the run made progress.
#[test]
fn replay() {
    let seed = std::env::var("RAFTKV_SIM_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("RAFTKV_SIM_SEED is a number"));
    let mut cfg = RunConfig::for_seed(seed.unwrap_or(0));
    cfg.verbose = seed.is_some();
    match run_seed(cfg) {
        Ok((stats, trace)) => {
            for line in &trace {
                println!("{line}");
            }
            println!("seed {}: {stats:?}", seed.unwrap_or(0));
            assert!(stats.acked > 0, "seed made progress: {stats:?}");
        }
        Err(e) => panic!("{e}"),
    }
}

/// A seed decides the whole run: two runs of one seed have the same events and outcome.
#[test]
fn runs_are_deterministic() {
    for seed in [3, 4] {
        let mut cfg = RunConfig::for_seed(seed);
        cfg.verbose = true;
        let a = run_seed(cfg.clone()).expect("first run");
        let b = run_seed(cfg).expect("second run");
        assert_eq!(
            format!("{a:?}"),
            format!("{b:?}"),
            "seed {seed} replays exactly"
        );
    }
}

/// A state machine may ignore entries without a payload (`StateMachine::skip`'s default), so
/// after a run of leader changes with no writes its applied index trails the core's. Compaction
/// must not pass it, or the node cannot restart ("install a snapshot first").
#[test]
fn restart_after_elections_without_writes() {
    let mut sim = Sim::new(RunConfig::for_seed(0)).expect("cluster");
    let stats = sim
        .elections_then_restart(20, 24)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(stats.acked >= 20, "{stats:?}");
}
