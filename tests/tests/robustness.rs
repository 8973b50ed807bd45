//! The CI profile of the fault proofs (issue #8): every workload (registers with
//! compare-and-set and multi-key transactions, watchers reconnecting across compactions, keys
//! on short leases, locks with fencing tokens) against a three-member raftkv cluster whose peer
//! links run through fault proxies, under two fixed fault schedules with fixed seeds. Each run
//! must end with no anomaly from any checker (linearizability, durability, watch, lease, lock)
//! and equal HashKV on every member. See `raftkv_tests::soak` for the run itself and
//! `scripts/soak.sh` for the long version.
//!
//! The two runs share the machine's cores, so they take turns.

// The summary tables go to stderr (`--nocapture`).
#![allow(clippy::print_stderr)]

use std::sync::Mutex;
use std::time::Duration;

use raftkv_tests::fault::net::proxies_supported;
use raftkv_tests::soak::{self, Fault, Plan, Schedule};
use raftkv_tests::Target;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(seed: u64, faults: Vec<Fault>) {
    if let Err(why) = proxies_supported(Target::from_env()) {
        eprintln!("skipped: {why}");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let plan = Plan {
        seed,
        schedule: Schedule::Fixed(faults.clone()),
        hold: Duration::from_secs(4),
        settle: Duration::from_secs(4),
        server_flags: Plan::default_server_flags(),
    };
    let summary = soak::run(&plan, &mut |line| eprintln!("[{seed:#x}] {line}"));
    eprintln!("{}", summary.table());
    assert!(
        summary.anomalies.is_empty(),
        "{} anomalies (see the table above)",
        summary.anomalies.len()
    );
    assert_eq!(summary.faults.len(), faults.len());
    // A run that did (almost) nothing proves nothing.
    for w in &summary.workloads {
        assert!(
            w.operations >= 50,
            "{} did too little: {summary:#?}",
            w.name
        );
    }
}

#[test]
fn leader_isolation_kill_follower_pause_partition_and_membership_change() {
    run(
        0x5eed_2026_1125,
        vec![
            Fault::IsolateLeader,
            Fault::KillLeader,
            Fault::PauseFollower,
            Fault::PartitionFollower,
            Fault::MembershipChange,
        ],
    );
}

#[test]
fn leader_pause_slow_links_follower_kill_and_leader_faults_back_to_back() {
    run(
        0x0b5e_55ed_0008,
        vec![
            Fault::PauseLeader,
            Fault::SlowLeaderLinks,
            Fault::KillFollower,
            Fault::IsolateLeader,
            Fault::KillLeader,
        ],
    );
}
