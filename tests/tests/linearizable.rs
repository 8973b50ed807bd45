//! The first fault-proof profile (issue #8): a register workload over a few keys (linearizable
//! gets, puts, and compare-and-set by txn) from several clients, recorded with invoke and
//! completion times, while a fixed schedule of faults hits a three-member raftkv cluster whose
//! peer links run through fault proxies: the leader isolated (blackholed links), the leader
//! killed -9 and restarted, a follower paused (SIGSTOP) past the election timeout, a minority
//! partitioned with reset links. After healing: the history must be linearizable (per key,
//! Wing–Gong–Lowe search), every acknowledged write must be in the final state, and every
//! member must hold the same content (HashKV).
//!
//! On a failure the history is written to `target/fault-histories/` for inspection.

// Progress and the fault schedule are reported on stderr (`--nocapture`).
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use raftkv_tests::check::durable::check_durability;
use raftkv_tests::check::linear::{self, Verdict};
use raftkv_tests::check::{Clock, History, Op, OpKind};
use raftkv_tests::fault::net::{proxies_supported, FaultCluster};
use raftkv_tests::fault::proxy::Mode;
use raftkv_tests::rng::Rng;
use raftkv_tests::{block_on, wait_until, Target};

const KEYS: usize = 6;
const CLIENTS: usize = 6;
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const PREFIX: &str = "reg/";

/// What the workload shares with the test.
#[derive(Clone)]
struct Recorder {
    clock: Clock,
    history: Arc<Mutex<History>>,
    completed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn record(&self, op: Op) {
        if op.complete.is_some() {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.history.lock() {
            h.push(op);
        }
    }
}

/// One client: one request at a time; after an unknown outcome it continues as a new logical
/// client (its unknown op may still take effect at any later time).
async fn client(endpoints: Vec<String>, index: usize, seed: u64, rec: Recorder) {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(OP_TIMEOUT);
    let mut kv = loop {
        match Client::connect(endpoints.clone(), Some(opts.clone())).await {
            Ok(c) => break c.kv_client(),
            Err(_) if !rec.stop.load(Ordering::Relaxed) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(_) => return,
        }
    };
    let mut rng = Rng(seed);
    let mut logical = index;
    let mut seq = 0u64;
    while !rec.stop.load(Ordering::Relaxed) {
        let key = format!("{PREFIX}{}", rng.below(KEYS as u64));
        let invoke = rec.clock.now();
        let choice = rng.below(10);
        seq += 1;
        let value = format!("c{index}-{seq}");
        let op = if choice < 4 {
            match tokio::time::timeout(OP_TIMEOUT, kv.get(key.as_str(), None)).await {
                Ok(Ok(r)) => Some(OpKind::Get {
                    key: key.clone(),
                    value: r
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                }),
                // A failed read changed nothing: leave it out.
                _ => None,
            }
            .map(|kind| (kind, Some(rec.clock.now())))
        } else if choice < 7 {
            let done =
                tokio::time::timeout(OP_TIMEOUT, kv.put(key.as_str(), value.as_str(), None)).await;
            let kind = OpKind::Put {
                key: key.clone(),
                value: value.clone(),
            };
            Some((kind, matches!(done, Ok(Ok(_))).then(|| rec.clock.now())))
        } else {
            // CAS from the value this client last saw (or absence): read, then compare-and-set.
            let seen = match tokio::time::timeout(OP_TIMEOUT, kv.get(key.as_str(), None)).await {
                Ok(Ok(r)) => r
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => continue,
            };
            let compare = match &seen {
                Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            };
            let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                key.as_str(),
                value.as_str(),
                None,
            )]);
            let invoke_cas = rec.clock.now();
            let done = tokio::time::timeout(OP_TIMEOUT, kv.txn(txn)).await;
            let (succeeded, complete) = match done {
                Ok(Ok(r)) => (r.succeeded(), Some(rec.clock.now())),
                _ => (false, None),
            };
            rec.record(Op {
                client: logical,
                invoke: invoke_cas,
                complete,
                kind: OpKind::Cas {
                    key: key.clone(),
                    expect: seen,
                    new: value.clone(),
                    succeeded,
                },
            });
            if complete.is_none() {
                logical += CLIENTS;
            }
            continue;
        };
        if let Some((kind, complete)) = op {
            rec.record(Op {
                client: logical,
                invoke,
                complete,
                kind,
            });
            if complete.is_none() {
                logical += CLIENTS;
            }
        }
    }
}

/// Waits until the workload has completed `more` operations beyond now (or 30 s pass: a fault
/// may stall everyone; the history decides).
fn progress(rec: &Recorder, more: u64) {
    let target = rec.completed.load(Ordering::Relaxed) + more;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    wait_until("workload progress", Duration::from_secs(31), || {
        (rec.completed.load(Ordering::Relaxed) >= target || std::time::Instant::now() > deadline)
            .then_some(())
    });
}

#[test]
fn registers_stay_linearizable_through_partitions_kills_and_pauses() {
    if let Err(why) = proxies_supported(Target::from_env()) {
        eprintln!("skipped: {why}");
        return;
    }
    let seed = 0x5eed_2026_1125_u64;
    let mut fc = FaultCluster::start(3);
    let endpoints = fc.cluster().endpoints();
    let rec = Recorder {
        clock: Clock::new(),
        history: Arc::new(Mutex::new(History::new())),
        completed: Arc::new(AtomicU64::new(0)),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let workload = {
        let rec = rec.clone();
        let endpoints = endpoints.clone();
        std::thread::spawn(move || {
            block_on(async move {
                let mut tasks = Vec::new();
                for i in 0..CLIENTS {
                    tasks.push(tokio::spawn(client(
                        endpoints.clone(),
                        i,
                        seed.wrapping_mul(i as u64 + 1),
                        rec.clone(),
                    )));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        })
    };

    progress(&rec, 100);
    let leader = fc.isolate_leader();
    eprintln!("isolated the leader {leader}");
    progress(&rec, 100);
    fc.heal();

    progress(&rec, 100);
    let killed = fc.kill_leader();
    eprintln!("killed the leader {killed}");
    progress(&rec, 100);
    fc.restart(killed);

    progress(&rec, 100);
    let paused = (fc.leader_among(&[0, 1, 2], Duration::from_secs(20)) + 1) % 3;
    fc.pause(paused);
    eprintln!("paused follower {paused}");
    progress(&rec, 100);
    fc.resume(paused);

    progress(&rec, 100);
    let minority = (fc.leader_among(&[0, 1, 2], Duration::from_secs(20)) + 2) % 3;
    let majority: Vec<usize> = (0..3).filter(|i| *i != minority).collect();
    fc.partition_with(&[minority], &majority, Mode::Drop);
    eprintln!("partitioned {minority} from {majority:?}");
    progress(&rec, 100);
    fc.heal();
    progress(&rec, 100);

    rec.stop.store(true, Ordering::Relaxed);
    workload.join().expect("workload thread");
    let revision = fc.wait_hashkv_equal(&[0, 1, 2], Duration::from_secs(60));

    // The final state, read once nothing is in flight.
    let final_state: BTreeMap<String, String> = block_on(async {
        let mut c = Client::connect(endpoints.clone(), None).await.unwrap();
        let r = c
            .get(PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    });
    let history = rec.history.lock().unwrap().clone();
    let ops = history.ops.clone();
    let unknown = ops.iter().filter(|o| o.complete.is_none()).count();
    eprintln!(
        "{} operations ({unknown} with unknown outcome), members equal at revision {revision}",
        ops.len()
    );
    let dump = |why: &str| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fault-histories");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("registers-{seed:x}.json"));
        let _ = history.write_json(&path);
        format!("{why}; history written to {}", path.display())
    };
    let report = linear::check(&ops, &linear::Config::default()).expect("well-formed history");
    assert_eq!(
        report.verdict,
        Verdict::Linearizable,
        "{}: {:#?}",
        dump("not linearizable (or undecided)"),
        report.witness()
    );
    let lost = check_durability(&ops, &final_state).expect("well-formed history");
    assert!(lost.is_empty(), "{}: {lost:#?}", dump("durability"));
    assert!(
        ops.len() > 500,
        "too few operations to mean much: {}",
        ops.len()
    );
}
