//! The lease and lock workloads (`raftkv_tests::workload::{lease, lock}`) against a proxied
//! 3-member raftkv cluster checkpointing lease TTLs every second, while the leader is killed
//! (and restarted) and a follower is paused (and resumed): both checkers must find nothing, and
//! the run must have exercised what they check (leases seen expiring after abandonment,
//! revokes, keep-alives; lock acquisitions, accepted and rejected fenced writes, stale holders).
#![allow(clippy::print_stderr)]

use std::time::Duration;

use raftkv_tests::fault::FaultCluster;
use raftkv_tests::workload::lease::{self, LeaseConfig};
use raftkv_tests::workload::lock::{self, LockConfig};
use raftkv_tests::workload::Ctx;
use raftkv_tests::{block_on, wait_until};

/// How long any phase may take to make its progress.
const PHASE: Duration = Duration::from_secs(30);

/// Operations (both workloads together) each phase must complete.
const STEP: u64 = 300;

/// Waits until both workloads together completed `more` operations since now.
#[track_caller]
fn progress(ctx: &Ctx, what: &str, more: u64) {
    let target = ctx.meter.total() + more;
    wait_until(&format!("{more} more operations ({what})"), PHASE, || {
        (ctx.meter.total() >= target).then_some(())
    });
}

#[test]
fn lease_and_lock_workloads_survive_leader_kill_and_follower_pause() {
    let mut fc = FaultCluster::start_with(3, &["--lease-checkpoint-interval=1s"]);
    let ctx = Ctx::new(fc.cluster().endpoints(), 0x1EA5_E10C);

    let lease_run = {
        let ctx = ctx.with_seed(ctx.seed ^ 1);
        std::thread::spawn(move || block_on(lease::run(ctx, LeaseConfig::default())))
    };
    let lock_run = {
        let ctx = ctx.with_seed(ctx.seed ^ 2);
        std::thread::spawn(move || block_on(lock::run(ctx, LockConfig::default())))
    };

    progress(&ctx, "warm-up", STEP);

    let killed = fc.kill_leader();
    eprintln!("killed leader m{killed} at {:.1} s", secs(ctx.now()));
    progress(&ctx, "leader killed", STEP);
    fc.restart(killed);
    eprintln!("restarted m{killed} at {:.1} s", secs(ctx.now()));
    progress(&ctx, "leader restarted", STEP);

    let leader = fc.cluster().leader_index();
    let follower = (leader + 1) % fc.len();
    fc.pause(follower);
    eprintln!("paused follower m{follower} at {:.1} s", secs(ctx.now()));
    // Requests the clients route to the stopped member time out (2 s each): progress is slow.
    progress(&ctx, "follower paused", STEP / 10);
    fc.resume(follower);
    eprintln!("resumed m{follower} at {:.1} s", secs(ctx.now()));
    fc.heal();
    eprintln!("per second so far: {:?}", ctx.meter.per_second());

    // Long enough after the faults for abandoned leases to expire and be seen gone, and for
    // stale lock holders to be superseded.
    progress(&ctx, "healed", 3 * STEP);
    ctx.stop();
    let stopped_at = ctx.now();
    let lease_run = lease_run.join().expect("lease workload panicked");
    let lock_run = lock_run.join().expect("lock workload panicked");
    let returned_after = secs(ctx.now() - stopped_at);
    eprintln!(
        "ran {:.1} s, {} operations, returned {returned_after:.1} s after the stop; per second: {:?}",
        secs(stopped_at),
        ctx.meter.total(),
        ctx.meter.per_second()
    );

    let ls = lease_run.stats();
    let ks = lock_run.stats();
    eprintln!("lease: {} operations, {ls:?}", lease_run.operations());
    eprintln!("lock: {} operations, {ks:?}", lock_run.operations());

    let mut anomalies = lease_run.check();
    anomalies.extend(lock_run.check());
    for a in &anomalies {
        eprintln!("{a}");
    }
    if !anomalies.is_empty() {
        let dump = std::env::temp_dir().join(format!("lease-lock-{}.json", std::process::id()));
        let history = serde_json::json!({
            "leases": lease_run.leases,
            "observations": lease_run.observations,
            "acquires": lock_run.acquires,
            "writes": lock_run.writes,
        });
        if std::fs::write(&dump, history.to_string()).is_ok() {
            eprintln!("history written to {}", dump.display());
        }
    }
    assert!(anomalies.is_empty(), "{} anomalies", anomalies.len());
    assert!(
        returned_after < 10.0,
        "workloads took {returned_after:.1} s to stop"
    );

    // The run was meaningful.
    assert!(lease_run.operations() > 0 && lock_run.operations() > 0);
    assert!(ls.leases >= 10, "{ls:?}");
    assert!(ls.abandoned >= 3 && ls.revoked >= 3, "{ls:?}");
    assert!(ls.keepalives_alive >= 10, "{ls:?}");
    assert!(ls.reads_present >= 10, "{ls:?}");
    assert!(
        ls.reads_expired >= 3,
        "no abandoned lease was seen expiring: {ls:?}"
    );
    assert!(ls.ttl_alive >= 3 && ls.ttl_gone >= 3, "{ls:?}");
    assert!(ks.acquires >= 10, "{ks:?}");
    assert!(ks.accepted >= 10, "{ks:?}");
    assert!(ks.stale_writes >= 1 && ks.rejected >= 1, "{ks:?}");
}

/// Nanoseconds as seconds.
fn secs(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}
