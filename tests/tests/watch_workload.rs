//! The watch workload (`raftkv_tests::workload::watch`) on a 3-member cluster while the leader
//! is killed and restarted and a follower is paused and resumed: every watcher's streams must
//! pass the watch checker, and the run must not pass vacuously (watchers received events, the
//! workload compacted, and some stream was told about a compaction).
#![allow(clippy::print_stderr)]

use std::time::Duration;

use raftkv_tests::fault::FaultCluster;
use raftkv_tests::workload::watch::{run, WatchConfig};
use raftkv_tests::workload::Ctx;
use raftkv_tests::{block_on, wait_until};

/// Deadline for anything a healthy (or healed) cluster does.
const SETTLE: Duration = Duration::from_secs(30);

/// Waits until `ctx`'s meter has counted `n` more acknowledged writes.
fn progress(ctx: &Ctx, n: u64, what: &str) {
    let from = ctx.meter.total();
    wait_until(&format!("{n} writes {what}"), SETTLE, || {
        (ctx.meter.total() >= from + n).then_some(())
    });
}

#[test]
fn watchers_survive_leader_kill_and_follower_pause() {
    let mut fc = FaultCluster::start(3);
    let ctx = Ctx::new(fc.cluster().endpoints(), 0x5eed_0001);
    let cfg = WatchConfig {
        compact_every: Duration::from_secs(1),
        ..WatchConfig::default()
    };
    let runner = {
        let ctx = ctx.clone();
        std::thread::spawn(move || block_on(run(ctx, cfg)))
    };

    progress(&ctx, 500, "before any fault");
    let leader = fc.kill_leader();
    eprintln!("killed the leader m{leader}");
    progress(&ctx, 300, "with the old leader dead");
    fc.restart(leader);
    progress(&ctx, 300, "after the old leader restarted");

    let follower = (fc.cluster().leader_index() + 1) % fc.len();
    fc.pause(follower);
    eprintln!("paused the follower m{follower}");
    progress(&ctx, 500, "with a follower paused");
    fc.resume(follower);
    progress(&ctx, 1000, "after the follower resumed");

    ctx.stop();
    let log = runner.join().expect("the workload thread panicked");
    let anomalies = log.check();
    let segments: usize = log.watchers().iter().map(|w| w.segments.len()).sum();
    let received: usize = log
        .watchers()
        .iter()
        .flat_map(|w| &w.segments)
        .map(|s| s.events.len())
        .sum();
    eprintln!(
        "writes+events {}, log {} events, watchers received {received} events in {segments} \
         segments, {} compactions, {} compaction notices",
        log.operations(),
        log.log().len(),
        log.compactions().len(),
        log.compaction_notices()
    );
    for a in &anomalies {
        eprintln!("{a}");
    }
    if !anomalies.is_empty() {
        let path = std::env::temp_dir().join(format!("watch-workload-{}.json", std::process::id()));
        let dump = serde_json::json!({ "log": log.log(), "watchers": log.watchers() });
        std::fs::write(&path, dump.to_string()).expect("write the dump");
        eprintln!("log and watchers dumped to {}", path.display());
    }
    assert!(anomalies.is_empty(), "{} anomalies", anomalies.len());
    assert!(!log.log().is_empty(), "the log is empty");
    assert!(received > 0, "no watcher received anything");
    assert!(
        !log.compactions().is_empty(),
        "the workload never compacted"
    );
    assert!(
        log.compaction_notices() > 0,
        "no watch stream was told about a compaction"
    );
    fc.wait_hashkv_equal(&[0, 1, 2], SETTLE);
}
