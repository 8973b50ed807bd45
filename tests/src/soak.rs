//! A fault run: every workload of [`crate::workload`] against a proxied three-member cluster
//! ([`FaultCluster`]) while a schedule of faults hits it, then every checker, and a summary with
//! the throughput dip and recovery around each fault.
//!
//! The CI profile (`tests/tests/robustness.rs`) runs short fixed schedules with fixed seeds;
//! the soak (`scripts/soak.sh --minutes N`, the `soak` binary of this crate) runs a seeded
//! random schedule for as long as asked and prints [`Summary::table`].
//!
//! One fault cycle: wait `settle` (the baseline), inject the fault, keep it for `hold`, heal it
//! (resume, restart, reconnect the links), then the next cycle. A membership change is a fault
//! without a hold: a new member is added as a learner, promoted and removed again, all under
//! load. After the last cycle and a final settle every workload stops (and does its final
//! reads on the healed cluster), the founding members must reach equal HashKV, and the
//! histories go to the checkers.
//!
//! Throughput is the count of completed operations of all workloads per second (the
//! [`Meter`](crate::workload::Meter)). For each fault: the baseline is the median of the
//! seconds in the settle window before it; the dip is the slowest second from injection to 10 s
//! after healing, as a percentage of the baseline; recovery is the time from injection until two
//! consecutive seconds reach 80 % of the baseline again (`None` when that never happens before
//! the next fault).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::fault::net::FaultCluster;
use crate::fault::proxy::Mode;
use crate::rng::Rng;
use crate::wait::block_on;
use crate::workload::{self, Anomaly, Ctx};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The leader cut off from both followers (blackholed links).
    IsolateLeader,
    /// A follower cut off from the others with reset connections.
    PartitionFollower,
    /// The leader killed with SIGKILL, restarted after the hold.
    KillLeader,
    /// A follower killed with SIGKILL, restarted after the hold.
    KillFollower,
    /// The leader stopped with SIGSTOP, resumed after the hold.
    PauseLeader,
    /// A follower stopped with SIGSTOP, resumed after the hold.
    PauseFollower,
    /// Every link to and from the leader delayed by 150 ms.
    SlowLeaderLinks,
    /// A member added as a learner, promoted and removed again, under load.
    MembershipChange,
}

impl Fault {
    /// Every kind, in a fixed order.
    pub const ALL: [Fault; 8] = [
        Fault::IsolateLeader,
        Fault::PartitionFollower,
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::SlowLeaderLinks,
        Fault::MembershipChange,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::IsolateLeader => "isolate leader",
            Fault::PartitionFollower => "partition follower",
            Fault::KillLeader => "kill -9 leader",
            Fault::KillFollower => "kill -9 follower",
            Fault::PauseLeader => "SIGSTOP leader",
            Fault::PauseFollower => "SIGSTOP follower",
            Fault::SlowLeaderLinks => "slow leader links",
            Fault::MembershipChange => "member add/promote/remove",
        }
    }
}

/// Which faults, in which order.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// These faults, in this order.
    Fixed(Vec<Fault>),
    /// Faults drawn from the plan's seed (every kind once per round, shuffled) until the plan's
    /// duration has passed.
    Random {
        /// How long to keep injecting faults.
        duration: Duration,
    },
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Seeds the schedule and the workloads.
    pub seed: u64,
    /// The faults.
    pub schedule: Schedule,
    /// How long each fault lasts.
    pub hold: Duration,
    /// Quiet time before each fault (the throughput baseline) and after the last.
    pub settle: Duration,
    /// Extra server flags for every member.
    pub server_flags: Vec<String>,
}

impl Plan {
    /// The server flags runs use unless told otherwise: a small snapshot count (so restarted
    /// members catch up by snapshot during long runs) and a 1 s lease checkpoint interval
    /// (leases keep their deadlines across leader changes to within a second).
    pub fn default_server_flags() -> Vec<String> {
        vec![
            "--snapshot-count=2000".into(),
            "--lease-checkpoint-interval=1s".into(),
        ]
    }
}

/// One injected fault and what the throughput did around it.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// The fault.
    pub fault: Fault,
    /// The member it hit (for a membership change: the member added).
    pub member: usize,
    /// When it was injected, since the run began.
    pub injected: Duration,
    /// When it was healed.
    pub healed: Duration,
    /// Median completed operations per second in the settle window before it.
    pub baseline: f64,
    /// The slowest second from injection to 10 s after healing, in percent of the baseline.
    pub dip_percent: f64,
    /// From injection until two consecutive seconds were back at 80 % of the baseline.
    pub recovery: Option<Duration>,
}

/// Operation counts of one workload.
#[derive(Clone, Debug, Default)]
pub struct WorkloadCount {
    /// The workload's name.
    pub name: &'static str,
    /// Operations recorded.
    pub operations: u64,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The plan's seed.
    pub seed: u64,
    /// Wall time of the run (workloads running).
    pub elapsed: Duration,
    /// Completed operations per workload.
    pub workloads: Vec<WorkloadCount>,
    /// Register operations whose outcome stayed unknown.
    pub unknown: u64,
    /// Every fault injected.
    pub faults: Vec<FaultRecord>,
    /// What the checkers found (empty in a correct system).
    pub anomalies: Vec<Anomaly>,
    /// The revision at which the founding members' HashKV was equal at the end.
    pub hashkv_revision: i64,
    /// Completed operations per second over the run.
    pub per_second: Vec<u64>,
}

impl Summary {
    /// All operations of all workloads.
    pub fn operations(&self) -> u64 {
        self.workloads.iter().map(|w| w.operations).sum()
    }

    /// The summary as Markdown: totals, then one row per fault kind (count, median and worst
    /// dip, median and worst recovery), then every fault.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64();
        let _ = writeln!(
            s,
            "| seed | run | operations | ops/s | faults | anomalies |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        let _ = writeln!(
            s,
            "| {:#x} | {:.0} s | {} | {:.0} | {} | {} |",
            self.seed,
            secs,
            self.operations(),
            self.operations() as f64 / secs.max(1.0),
            self.faults.len(),
            self.anomalies.len()
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| workload | operations |");
        let _ = writeln!(s, "|---|---|");
        for w in &self.workloads {
            let _ = writeln!(s, "| {} | {} |", w.name, w.operations);
        }
        let _ = writeln!(
            s,
            "\n{} register operations ended with an unknown outcome (timeouts, killed members); \
             the checkers allow them either way.\n",
            self.unknown
        );
        let _ = writeln!(
            s,
            "| fault | count | dip median (worst) | recovery median (worst) |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for kind in Fault::ALL {
            let of: Vec<&FaultRecord> = self.faults.iter().filter(|f| f.fault == kind).collect();
            if of.is_empty() {
                continue;
            }
            let mut dips: Vec<f64> = of.iter().map(|f| f.dip_percent).collect();
            dips.sort_by(f64::total_cmp);
            let mut recoveries: Vec<Option<Duration>> = of.iter().map(|f| f.recovery).collect();
            recoveries.sort_by_key(|r| r.unwrap_or(Duration::MAX));
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} % of baseline ({:.0} %) | {} ({}) |",
                kind.name(),
                of.len(),
                dips[dips.len() / 2],
                dips[0],
                show(recoveries[recoveries.len() / 2]),
                show(recoveries[recoveries.len() - 1]),
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| # | at | fault | member | held | baseline ops/s | dip | recovery |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for (n, f) in self.faults.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {:.0} s | {} | m{} | {:.1} s | {:.0} | {:.0} % | {} |",
                n + 1,
                f.injected.as_secs_f64(),
                f.fault.name(),
                f.member,
                (f.healed - f.injected).as_secs_f64(),
                f.baseline,
                f.dip_percent,
                show(f.recovery)
            );
        }
        if !self.anomalies.is_empty() {
            let _ = writeln!(s, "\nAnomalies:");
            for a in &self.anomalies {
                let _ = writeln!(s, "- {a}");
            }
        }
        s
    }
}

fn show(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not recovered".into(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

/// Progress lines go to this callback (the soak prints them; tests print them to stderr).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Runs `plan`: starts the cluster and the workloads, injects the faults, heals, checks.
pub fn run(plan: &Plan, progress: Progress<'_>) -> Summary {
    let flags: Vec<&str> = plan.server_flags.iter().map(String::as_str).collect();
    let mut fc = FaultCluster::start_with(3, &flags);
    let endpoints = fc.cluster().endpoints();
    let ctx = Ctx::new(endpoints, plan.seed);
    let started = Instant::now();

    let workloads = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            block_on(async move {
                let register = tokio::spawn(workload::register::run(
                    ctx.with_seed(ctx.seed ^ 1),
                    Default::default(),
                ));
                let watch = tokio::spawn(workload::watch::run(
                    ctx.with_seed(ctx.seed ^ 2),
                    Default::default(),
                ));
                let lease = tokio::spawn(workload::lease::run(
                    ctx.with_seed(ctx.seed ^ 3),
                    Default::default(),
                ));
                let lock = tokio::spawn(workload::lock::run(
                    ctx.with_seed(ctx.seed ^ 4),
                    Default::default(),
                ));
                (register.await, watch.await, lease.await, lock.await)
            })
        })
    };

    let mut rng = Rng(plan.seed);
    let mut faults = Vec::new();
    let mut round: Vec<Fault> = Vec::new();
    let mut fixed = match &plan.schedule {
        Schedule::Fixed(list) => list.clone().into_iter(),
        Schedule::Random { .. } => Vec::new().into_iter(),
    };
    loop {
        let next = match &plan.schedule {
            Schedule::Fixed(_) => fixed.next(),
            Schedule::Random { duration } => {
                if started.elapsed() >= *duration {
                    None
                } else {
                    if round.is_empty() {
                        round = Fault::ALL.to_vec();
                        for i in (1..round.len()).rev() {
                            round.swap(i, rng.below(i as u64 + 1) as usize);
                        }
                    }
                    round.pop()
                }
            }
        };
        let Some(fault) = next else { break };
        // The baseline window: the experiment's timing, not a synchronisation.
        std::thread::sleep(plan.settle);
        let injected = started.elapsed();
        let member = inject(&mut fc, fault, plan, &mut rng);
        let healed = started.elapsed();
        progress(&format!(
            "{:>6.1} s  {} (m{member}), healed after {:.1} s; {} operations so far",
            injected.as_secs_f64(),
            fault.name(),
            (healed - injected).as_secs_f64(),
            ctx.meter.total()
        ));
        faults.push((fault, member, injected, healed));
    }
    std::thread::sleep(plan.settle);
    let elapsed = started.elapsed();
    ctx.stop();
    progress("stopping the workloads (final reads)");
    let (register, watch, lease, lock) = workloads.join().expect("workload thread panicked");
    let (register, watch, lease, lock) = (
        register.expect("register workload panicked"),
        watch.expect("watch workload panicked"),
        lease.expect("lease workload panicked"),
        lock.expect("lock workload panicked"),
    );
    let founding: Vec<usize> = (0..3).collect();
    let hashkv_revision = fc.wait_hashkv_equal(&founding, Duration::from_secs(60));
    progress(&format!(
        "members equal at revision {hashkv_revision}; checking histories"
    ));

    let mut anomalies = register.check();
    anomalies.extend(watch.check());
    anomalies.extend(lease.check());
    anomalies.extend(lock.check());
    // Whole seconds of the run only: the last partial second and the final reads after the
    // stop are not throughput.
    let mut per_second = ctx.meter.per_second();
    per_second.truncate(elapsed.as_secs() as usize);
    let faults = faults
        .into_iter()
        .map(|(fault, member, injected, healed)| {
            measure(&per_second, plan.settle, fault, member, injected, healed)
        })
        .collect::<Vec<_>>();
    Summary {
        seed: plan.seed,
        elapsed,
        workloads: vec![
            WorkloadCount {
                name: "register + txn",
                operations: register.operations(),
            },
            WorkloadCount {
                name: "watch",
                operations: watch.operations(),
            },
            WorkloadCount {
                name: "lease",
                operations: lease.operations(),
            },
            WorkloadCount {
                name: "lock",
                operations: lock.operations(),
            },
        ],
        unknown: register.unknown(),
        faults,
        anomalies,
        hashkv_revision,
        per_second,
    }
}

/// Injects `fault`, keeps it for the plan's hold, heals it; returns the member it hit.
fn inject(fc: &mut FaultCluster, fault: Fault, plan: &Plan, rng: &mut Rng) -> usize {
    let founding = [0, 1, 2];
    let leader = fc.leader_among(&founding, Duration::from_secs(30));
    let follower = (leader + 1 + rng.below(2) as usize) % 3;
    // The hold is the fault's length: the experiment's timing, not a synchronisation.
    let hold = || std::thread::sleep(plan.hold);
    match fault {
        Fault::IsolateLeader => {
            fc.isolate(leader);
            hold();
            fc.heal();
            leader
        }
        Fault::PartitionFollower => {
            let rest: Vec<usize> = founding.into_iter().filter(|&i| i != follower).collect();
            fc.partition_with(&[follower], &rest, Mode::Drop);
            hold();
            fc.heal();
            follower
        }
        Fault::KillLeader => {
            fc.kill(leader);
            hold();
            fc.restart(leader);
            leader
        }
        Fault::KillFollower => {
            fc.kill(follower);
            hold();
            fc.restart(follower);
            follower
        }
        Fault::PauseLeader => {
            fc.pause(leader);
            hold();
            fc.resume(leader);
            leader
        }
        Fault::PauseFollower => {
            fc.pause(follower);
            hold();
            fc.resume(follower);
            follower
        }
        Fault::SlowLeaderLinks => {
            for other in founding.into_iter().filter(|&i| i != leader) {
                fc.delay_link(leader, other, Duration::from_millis(150));
                fc.delay_link(other, leader, Duration::from_millis(150));
            }
            hold();
            fc.heal();
            leader
        }
        Fault::MembershipChange => {
            let cluster = fc.cluster_mut();
            let added = cluster.add_member(true);
            cluster.promote_member(added);
            cluster.remove_member(added);
            added
        }
    }
}

/// The throughput figures around one fault (see the module docs).
fn measure(
    per_second: &[u64],
    settle: Duration,
    fault: Fault,
    member: usize,
    injected: Duration,
    healed: Duration,
) -> FaultRecord {
    let at = |s: u64| per_second.get(s as usize).copied().unwrap_or(0) as f64;
    let start = injected.as_secs();
    // The whole seconds of the settle window before the fault.
    let from = start.saturating_sub(settle.as_secs().saturating_sub(1));
    let mut window: Vec<f64> = (from..start).map(at).collect();
    window.sort_by(f64::total_cmp);
    let baseline = window.get(window.len() / 2).copied().unwrap_or(0.0);
    let end = (healed.as_secs() + 10).min(per_second.len().saturating_sub(1) as u64);
    let slowest = (start..=end.max(start))
        .map(at)
        .fold(f64::INFINITY, f64::min);
    let dip_percent = if baseline > 0.0 {
        (100.0 * slowest / baseline).min(100.0)
    } else {
        100.0
    };
    let threshold = 0.8 * baseline;
    let last = per_second.len().saturating_sub(1) as u64;
    let recovery = (start..last)
        .find(|&s| at(s) >= threshold && at(s + 1) >= threshold)
        .map(|s| Duration::from_secs(s).saturating_sub(injected));
    FaultRecord {
        fault,
        member,
        injected,
        healed,
        baseline,
        dip_percent,
        recovery,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_that_halves_throughput_for_three_seconds() {
        // 100 ops/s, the fault at 10.0 s, 50 ops/s for seconds 10..13, healed at 12.5 s.
        let mut per_second = vec![100; 30];
        per_second[10..13].fill(50);
        let r = measure(
            &per_second,
            Duration::from_secs(5),
            Fault::KillLeader,
            0,
            Duration::from_secs(10),
            Duration::from_millis(12_500),
        );
        assert_eq!(r.baseline, 100.0);
        assert_eq!(r.dip_percent, 50.0);
        assert_eq!(r.recovery, Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_fault_that_never_recovers_says_so() {
        let mut per_second = vec![100; 12];
        per_second.extend([0; 10]);
        let r = measure(
            &per_second,
            Duration::from_secs(5),
            Fault::IsolateLeader,
            1,
            Duration::from_secs(12),
            Duration::from_secs(15),
        );
        assert_eq!(r.dip_percent, 0.0);
        assert_eq!(r.recovery, None);
        let mut no_dip = vec![100; 30];
        no_dip[11] = 90;
        let r = measure(
            &no_dip,
            Duration::from_secs(5),
            Fault::PauseFollower,
            2,
            Duration::from_secs(10),
            Duration::from_secs(12),
        );
        assert_eq!(r.dip_percent, 90.0);
        assert_eq!(r.recovery, Some(Duration::ZERO));
    }
}
