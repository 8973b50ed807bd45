//! Unit tests of the linearizability checker: hand-written known-good and known-bad
//! histories, then randomized histories from a simulated linearizable store (fixed seeds) with
//! one injected anomaly each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;
use crate::check::history::Txn;

fn op(client: usize, invoke: u64, complete: Option<u64>, kind: OpKind) -> Op {
    Op {
        client,
        invoke,
        complete,
        kind,
    }
}
fn put(k: &str, v: &str) -> OpKind {
    OpKind::Put {
        key: k.into(),
        value: v.into(),
    }
}
fn get(k: &str, v: Option<&str>) -> OpKind {
    OpKind::Get {
        key: k.into(),
        value: v.map(Into::into),
    }
}
fn cas(k: &str, expect: Option<&str>, new: &str, succeeded: bool) -> OpKind {
    OpKind::Cas {
        key: k.into(),
        expect: expect.map(Into::into),
        new: new.into(),
        succeeded,
    }
}
fn pairs(items: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.map(Into::into)))
        .collect()
}

fn verdict(ops: &[Op]) -> Verdict {
    check(ops, &Config::default()).unwrap().verdict
}

fn failing(ops: &[Op]) -> Witness {
    let report = check(ops, &Config::default()).unwrap();
    assert_eq!(report.verdict, Verdict::NotLinearizable, "{report:#?}");
    report.witness().cloned().unwrap()
}

#[test]
fn empty_and_sequential_histories_pass() {
    assert_eq!(verdict(&[]), Verdict::Linearizable);
    let ops = [
        op(0, 0, Some(10), get("x", None)),
        op(0, 20, Some(30), put("x", "1")),
        op(1, 40, Some(50), get("x", Some("1"))),
        op(1, 60, Some(70), cas("x", Some("1"), "2", true)),
        op(0, 80, Some(90), cas("x", Some("1"), "3", false)),
        op(0, 100, Some(110), OpKind::Delete { key: "x".into() }),
        op(1, 120, Some(130), cas("x", None, "4", true)),
        op(1, 140, Some(150), get("x", Some("4"))),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
}

#[test]
fn stale_read_after_completed_write_fails() {
    // The "linearizable read served without ReadIndex" bug: a read that starts after a write
    // completed returns the value before it.
    let ops = [
        op(0, 0, Some(10), put("x", "1")),
        op(0, 20, Some(30), put("x", "2")),
        op(1, 5, Some(8), put("other", "a")),
        op(1, 40, Some(50), get("x", Some("1"))),
    ];
    let w = failing(&ops);
    assert_eq!(w.keys, vec!["x"]);
    assert_eq!(w.failing_op.as_ref(), Some(&ops[3]));
    assert!(w.ops.contains(&ops[1]) && w.ops.contains(&ops[3]), "{w:#?}");
    // The unrelated key's partition passes on its own.
    let report = check(&ops, &Config::default()).unwrap();
    assert_eq!(report.partitions.len(), 2);
    assert_eq!(report.partitions[0].keys, vec!["other"]);
    assert_eq!(report.partitions[0].verdict, Verdict::Linearizable);
}

#[test]
fn lost_acknowledged_write_fails() {
    // The write was acknowledged, yet a later read sees the key absent.
    let ops = [
        op(0, 0, Some(10), put("x", "1")),
        op(1, 20, Some(30), get("x", None)),
    ];
    let w = failing(&ops);
    assert_eq!(w.failing_op.as_ref(), Some(&ops[1]));
    // Whatever the initial state, the write then the read cannot be linearized.
    assert_eq!(w.window_start, Some(0));
    assert_eq!(w.ops, ops.to_vec());
}

#[test]
fn read_of_a_value_never_written_fails() {
    let ops = [
        op(0, 0, Some(10), put("x", "1")),
        op(1, 5, Some(30), get("x", Some("ghost"))),
    ];
    let w = failing(&ops);
    assert_eq!(w.failing_op.as_ref(), Some(&ops[1]));
}

#[test]
fn cas_that_succeeded_on_a_stale_value_fails() {
    let ops = [
        op(0, 0, Some(10), put("x", "a")),
        op(0, 20, Some(30), put("x", "b")),
        op(1, 40, Some(50), cas("x", Some("a"), "c", true)),
    ];
    let w = failing(&ops);
    assert_eq!(w.failing_op.as_ref(), Some(&ops[2]));
    // A CAS that failed although nothing concurrent changed the value also fails.
    let ops = [
        op(0, 0, Some(10), put("x", "a")),
        op(1, 20, Some(30), cas("x", Some("a"), "c", false)),
    ];
    assert_eq!(verdict(&ops), Verdict::NotLinearizable);
}

#[test]
fn concurrent_ops_pass_when_some_order_works() {
    // put(1) is concurrent with both reads: read None, then put, then read 1.
    let ops = [
        op(0, 0, Some(100), put("x", "1")),
        op(1, 10, Some(20), get("x", Some("1"))),
        op(2, 5, Some(15), get("x", None)),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    // Two overlapping writes take effect in the opposite order to their invokes.
    let ops = [
        op(0, 0, Some(100), put("x", "1")),
        op(1, 10, Some(20), put("x", "2")),
        op(2, 30, Some(40), get("x", Some("1"))),
        op(2, 110, Some(120), get("x", Some("1"))),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    // But reads cannot see them flip back and forth.
    let ops = [
        op(0, 0, Some(100), put("x", "1")),
        op(1, 10, Some(20), put("x", "2")),
        op(2, 30, Some(40), get("x", Some("1"))),
        op(2, 50, Some(60), get("x", Some("2"))),
    ];
    let w = failing(&ops);
    assert_eq!(w.failing_op.as_ref(), Some(&ops[3]));
    // Ops that touch at one instant count as concurrent.
    let ops = [
        op(0, 0, Some(10), put("x", "1")),
        op(1, 10, Some(20), get("x", None)),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
}

#[test]
fn unknown_outcome_write_may_or_may_not_take_effect() {
    let base = [
        op(0, 0, Some(10), put("x", "a")),
        op(1, 20, None, put("x", "b")),
    ];
    // Took effect (even long after its invoke): reads see a, then b.
    let mut ops = base.to_vec();
    ops.push(op(2, 30, Some(40), get("x", Some("a"))));
    ops.push(op(2, 1000, Some(1010), get("x", Some("b"))));
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    // Never took effect.
    let mut ops = base.to_vec();
    ops.push(op(2, 1000, Some(1010), get("x", Some("a"))));
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    // But once seen it cannot be undone.
    let mut ops = base.to_vec();
    ops.push(op(2, 30, Some(40), get("x", Some("b"))));
    ops.push(op(2, 50, Some(60), get("x", Some("a"))));
    let w = failing(&ops);
    assert_eq!(w.failing_op.as_ref(), Some(&ops[3]));
    // Nor take effect before it was sent.
    let ops = [
        op(0, 0, Some(10), get("x", Some("b"))),
        op(1, 20, None, put("x", "b")),
    ];
    assert_eq!(verdict(&ops), Verdict::NotLinearizable);
    // An unknown CAS takes effect only if its comparison holds.
    let ops = [
        op(0, 0, Some(10), put("x", "a")),
        op(1, 20, None, cas("x", Some("zzz"), "b", true)),
        op(2, 30, Some(40), get("x", Some("b"))),
    ];
    assert_eq!(verdict(&ops), Verdict::NotLinearizable);
    let ops = [
        op(0, 0, Some(10), put("x", "a")),
        op(1, 20, None, cas("x", Some("a"), "b", false)),
        op(2, 30, Some(40), get("x", Some("b"))),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    // Unknown reads constrain nothing.
    let ops = [
        op(0, 0, Some(10), put("x", "a")),
        op(1, 20, None, get("x", Some("nonsense"))),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
}

fn txn(
    compare: &[(&str, Option<&str>)],
    reads: &[(&str, Option<&str>)],
    writes: &[(&str, Option<&str>)],
    succeeded: bool,
) -> OpKind {
    OpKind::Txn(Txn {
        compare: pairs(compare),
        reads: pairs(reads),
        writes: pairs(writes),
        succeeded,
    })
}

#[test]
fn multi_key_transactions_are_atomic() {
    let write_both = op(
        0,
        0,
        Some(100),
        txn(&[], &[], &[("a", Some("1")), ("b", Some("1"))], true),
    );
    // Concurrent readers see both old or both new.
    let ops = [
        write_both.clone(),
        op(
            1,
            10,
            Some(20),
            txn(&[], &[("a", None), ("b", None)], &[], true),
        ),
        op(
            2,
            10,
            Some(20),
            txn(&[], &[("a", Some("1")), ("b", Some("1"))], &[], true),
        ),
        op(3, 200, Some(210), get("a", Some("1"))),
    ];
    let report = check(&ops, &Config::default()).unwrap();
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert_eq!(report.partitions.len(), 1);
    assert_eq!(report.partitions[0].keys, vec!["a", "b"]);
    // A torn read (a new, b old) fails even while the write is in flight.
    let ops = [
        write_both.clone(),
        op(
            1,
            10,
            Some(20),
            txn(&[], &[("a", Some("1")), ("b", None)], &[], true),
        ),
    ];
    let w = failing(&ops);
    assert_eq!(w.keys, vec!["a", "b"]);
    // Compare-and-swap over two keys: the second swap must see the first's result.
    let ops = [
        op(
            0,
            0,
            Some(10),
            txn(
                &[("a", None)],
                &[],
                &[("a", Some("1")), ("b", Some("x"))],
                true,
            ),
        ),
        op(
            1,
            20,
            Some(30),
            txn(
                &[("a", Some("1"))],
                &[("b", Some("x"))],
                &[("a", Some("2"))],
                true,
            ),
        ),
        op(
            2,
            40,
            Some(50),
            txn(
                &[("a", Some("1"))],
                &[("b", Some("x"))],
                &[("a", Some("3"))],
                false,
            ),
        ),
        op(2, 60, Some(70), get("a", Some("2"))),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    let mut bad = ops.to_vec();
    bad[2] = op(
        2,
        40,
        Some(50),
        txn(
            &[("a", Some("1"))],
            &[("b", Some("x"))],
            &[("a", Some("3"))],
            true,
        ),
    );
    assert_eq!(verdict(&bad), Verdict::NotLinearizable);
}

#[test]
fn budget_exhaustion_is_unknown_not_a_hang() {
    let mut ops = Vec::new();
    for c in 0..8u64 {
        ops.push(op(c as usize, c, Some(1000), put("x", &format!("v{c}"))));
    }
    ops.push(op(9, 2000, Some(2010), get("x", Some("nope"))));
    let config = Config {
        max_steps: 20,
        ..Config::default()
    };
    let report = check(&ops, &config).unwrap();
    assert_eq!(report.verdict, Verdict::Unknown);
    assert!(report.partitions[0].steps <= 21);
}

#[test]
fn malformed_records_are_an_error() {
    let ops = [op(0, 10, Some(5), put("x", "1"))];
    assert_eq!(check(&ops, &Config::default()).unwrap_err().index, 0);
}

#[test]
fn witness_is_a_small_window_of_a_long_history() {
    // 300 sequential writes by three clients, then a read that misses the last one.
    let mut ops = Vec::new();
    for i in 0..300u64 {
        ops.push(op(
            (i % 3) as usize,
            i * 10,
            Some(i * 10 + 5),
            put("x", &format!("v{i}")),
        ));
    }
    ops.push(op(5, 3000, Some(3010), get("x", Some("v298"))));
    let w = failing(&ops);
    assert_eq!(w.failing_op.as_ref(), ops.last());
    assert!(w.window_start.is_some());
    // The last write and the read suffice: from any state, "write v299; read v298" fails.
    assert_eq!(w.window_start, Some(2990));
    assert_eq!(w.ops, vec![ops[299].clone(), ops[300].clone()]);
    assert_eq!(w.partition_ops, 301);
    // The witness serialises for a failure dump.
    let json = serde_json::to_string(&w).unwrap();
    assert!(json.contains("v298"));
}

// ---------------------------------------------------------------------------------------------
// Randomized histories.

use crate::rng::Rng;

/// Shape of a simulated run.
struct SimConfig {
    keys: usize,
    ops: usize,
    clients: usize,
    unknown_percent: u64,
    /// Percentage of ops that are two-key transactions over the keys "g0".."g3".
    txn_percent: u64,
}

/// Runs random clients against a linearizable store: each op takes effect at a random point
/// inside its interval (unknown-outcome writes: at a random later point, or never), results are
/// computed in that order. Values are unique per write.
fn simulate(seed: u64, cfg: &SimConfig) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut cursor: Vec<u64> = (0..cfg.clients).map(|_| rng.below(50)).collect();
    let mut written: HashMap<String, Vec<String>> = HashMap::new();
    let mut ops = Vec::new();
    let mut points = Vec::new(); // (linearization point or None = never, index)
    for n in 0..cfg.ops {
        let c = rng.below(cfg.clients as u64) as usize;
        let invoke = cursor[c] + rng.below(20);
        let duration = 1 + rng.below(100);
        let unknown = rng.percent(cfg.unknown_percent);
        let key = format!("k{}", rng.below(cfg.keys as u64));
        let fresh = format!("c{c}-{n}");
        let pick_expect = |rng: &mut Rng, key: &str| -> Option<String> {
            let vals = written.get(key).map(Vec::as_slice).unwrap_or(&[]);
            if vals.is_empty() || rng.percent(15) {
                None
            } else {
                let back = (rng.below(3) as usize).min(vals.len() - 1);
                Some(vals[vals.len() - 1 - back].clone())
            }
        };
        let roll = rng.below(100);
        let kind = if roll < cfg.txn_percent {
            let a = format!("g{}", rng.below(4));
            let b = format!(
                "g{}",
                (rng.below(3) + 1 + a[1..].parse::<u64>().unwrap_or(0)) % 4
            );
            let expect = pick_expect(&mut rng, &a);
            OpKind::Txn(Txn {
                compare: vec![(a.clone(), expect)],
                reads: vec![(a.clone(), None), (b.clone(), None)],
                writes: vec![
                    (a, Some(format!("{fresh}a"))),
                    (b, Some(format!("{fresh}b"))),
                ],
                succeeded: false,
            })
        } else if roll < 40 {
            OpKind::Get { key, value: None }
        } else if roll < 70 {
            OpKind::Put { key, value: fresh }
        } else if roll < 93 {
            let expect = pick_expect(&mut rng, &key);
            OpKind::Cas {
                key,
                expect,
                new: fresh,
                succeeded: false,
            }
        } else {
            OpKind::Delete { key }
        };
        let pending = Op {
            client: c,
            invoke,
            complete: None,
            kind: kind.clone(),
        };
        for (k, v) in pending.writes() {
            if let Some(v) = v {
                written.entry(k.to_owned()).or_default().push(v.to_owned());
            }
        }
        let (complete, point) = if unknown {
            let point = rng.percent(50).then(|| invoke + rng.below(3 * duration));
            (None, point)
        } else {
            (
                Some(invoke + duration),
                Some(invoke + rng.below(duration + 1)),
            )
        };
        cursor[c] = invoke + duration;
        points.push((point, ops.len()));
        ops.push(Op {
            client: c,
            invoke,
            complete,
            kind,
        });
    }
    points.sort();
    let mut store: HashMap<String, String> = HashMap::new();
    for (point, i) in points {
        if point.is_none() {
            continue;
        }
        match &mut ops[i].kind {
            OpKind::Put { key, value } => {
                store.insert(key.clone(), value.clone());
            }
            OpKind::Delete { key } => {
                store.remove(key);
            }
            OpKind::Get { key, value } => *value = store.get(key).cloned(),
            OpKind::Cas {
                key,
                expect,
                new,
                succeeded,
            } => {
                *succeeded = store.get(key) == expect.as_ref();
                if *succeeded {
                    store.insert(key.clone(), new.clone());
                }
            }
            OpKind::Txn(t) => {
                t.succeeded = t.compare.iter().all(|(k, v)| store.get(k) == v.as_ref());
                for (k, v) in &mut t.reads {
                    *v = store.get(k).cloned();
                }
                if t.succeeded {
                    for (k, v) in &t.writes {
                        match v {
                            Some(v) => store.insert(k.clone(), v.clone()),
                            None => store.remove(k),
                        };
                    }
                }
            }
        }
    }
    ops
}

#[derive(Clone, Copy, Debug)]
enum Anomaly {
    /// A read returns a value nobody wrote.
    PhantomRead,
    /// A read returns a value overwritten by a write that completed before the read began.
    StaleRead,
    /// A CAS succeeds comparing against such an overwritten value.
    StaleCas,
}

/// Injects `anomaly` into a known-outcome single-key read; returns the tampered op's index.
fn inject(ops: &mut [Op], anomaly: Anomaly, rng: &mut Rng) -> Option<usize> {
    let reads: Vec<usize> = (0..ops.len())
        .filter(|&i| !ops[i].is_unknown() && matches!(ops[i].kind, OpKind::Get { .. }))
        .collect();
    let start = rng.below(reads.len().max(1) as u64) as usize;
    for j in 0..reads.len() {
        let g = reads[(start + j) % reads.len()];
        let OpKind::Get { key, .. } = &ops[g].kind else {
            continue;
        };
        let key = key.clone();
        if let Anomaly::PhantomRead = anomaly {
            ops[g].kind = get(&key, Some("never-written"));
            return Some(g);
        }
        // Known writes to the key completed before the read: B the latest-invoked of them,
        // A a known write of a value that completed before B began.
        let known_writes: Vec<usize> = (0..ops.len())
            .filter(|&i| !ops[i].is_unknown() && ops[i].writes().iter().any(|(k, _)| *k == key))
            .collect();
        let invoke = ops[g].invoke;
        let Some(&b) = known_writes
            .iter()
            .filter(|&&i| ops[i].complete.is_some_and(|c| c < invoke))
            .max_by_key(|&&i| ops[i].invoke)
        else {
            continue;
        };
        let stale = known_writes.iter().find_map(|&i| {
            let before_b = ops[i].complete.is_some_and(|c| c < ops[b].invoke);
            let value = ops[i].writes().into_iter().find(|(k, _)| *k == key)?.1?;
            before_b.then(|| value.to_owned())
        });
        let Some(stale) = stale else {
            continue;
        };
        ops[g].kind = match anomaly {
            Anomaly::StaleCas => cas(&key, Some(&stale), "injected", true),
            _ => get(&key, Some(&stale)),
        };
        return Some(g);
    }
    None
}

const SEEDS: [u64; 6] = [1, 2, 3, 42, 1234, 99_999];

#[test]
fn randomized_correct_histories_pass_and_injected_anomalies_fail() {
    let cfg = SimConfig {
        keys: 5,
        ops: 600,
        clients: 8,
        unknown_percent: 2,
        txn_percent: 8,
    };
    for seed in SEEDS {
        let ops = simulate(seed, &cfg);
        let report = check(&ops, &Config::default()).unwrap();
        assert_eq!(
            report.verdict,
            Verdict::Linearizable,
            "seed {seed}: {report:#?}"
        );
        // 5 single keys plus the transaction group.
        assert_eq!(report.partitions.len(), 6, "seed {seed}");
        for anomaly in [Anomaly::PhantomRead, Anomaly::StaleRead, Anomaly::StaleCas] {
            let mut bad = ops.clone();
            let mut rng = Rng(seed ^ 0xA5A5);
            let i = inject(&mut bad, anomaly, &mut rng).expect("an injectable read");
            let report = check(&bad, &Config::default()).unwrap();
            assert_eq!(
                report.verdict,
                Verdict::NotLinearizable,
                "seed {seed} {anomaly:?}"
            );
            let w = report.witness().unwrap();
            assert_eq!(w.keys, bad[i].keys(), "seed {seed} {anomaly:?}");
            assert_eq!(
                w.failing_op.as_ref(),
                Some(&bad[i]),
                "seed {seed} {anomaly:?}"
            );
            assert!(w.ops.contains(&bad[i]));
        }
    }
}

/// Checks `seeds` correct histories of `cfg` and the same with one stale read injected;
/// returns (mean time to pass, mean steps, mean time to fail, witness sizes).
fn time_histories(
    cfg: &SimConfig,
    seeds: &[u64],
    config: &Config,
) -> (Duration, u64, Duration, Vec<(usize, usize)>) {
    let (mut pass, mut fail, mut steps) = (Duration::ZERO, Duration::ZERO, 0);
    let mut windows = Vec::new();
    for &seed in seeds {
        let ops = simulate(seed, cfg);
        let t = Instant::now();
        let report = check(&ops, config).unwrap();
        pass += t.elapsed();
        steps += report.partitions.iter().map(|p| p.steps).sum::<u64>();
        assert_eq!(report.verdict, Verdict::Linearizable, "seed {seed}");
        let mut bad = ops.clone();
        let i = inject(&mut bad, Anomaly::StaleRead, &mut Rng(seed)).unwrap();
        let t = Instant::now();
        let report = check(&bad, config).unwrap();
        fail += t.elapsed();
        assert_eq!(report.verdict, Verdict::NotLinearizable, "seed {seed}");
        let w = report.witness().unwrap();
        assert_eq!(w.failing_op.as_ref(), Some(&bad[i]), "seed {seed}");
        windows.push((w.ops.len(), w.partition_ops));
    }
    let n = seeds.len() as u32;
    (pass / n, steps / u64::from(n), fail / n, windows)
}

#[test]
#[allow(clippy::print_stderr)] // The timings are part of the report (`--nocapture`).
fn randomized_timing() {
    for (label, keys, ops, unknown_percent, seeds) in [
        ("20 keys x 100 ops", 20, 2000, 1, &SEEDS[..3]),
        ("20 keys x 2000 ops", 20, 40_000, 1, &SEEDS[..1]),
        ("1 key x 2000 ops", 1, 2000, 0, &SEEDS[..1]),
    ] {
        let cfg = SimConfig {
            keys,
            ops,
            clients: 8,
            unknown_percent,
            txn_percent: 0,
        };
        let (pass, steps, fail, windows) = time_histories(&cfg, seeds, &Config::default());
        eprintln!(
            "{label}, 8 clients, {unknown_percent}% unknown: linearizable in {pass:?} \
             ({steps} steps); one stale read found in {fail:?}; witness (ops, of) {windows:?}"
        );
    }
}

/// The hard case, run by hand (`--ignored --nocapture`): every client on one key, with crashed
/// writes that may take effect at any later time. The search may run out of budget (a verdict
/// of `Unknown`); it must never pass the broken history.
#[test]
#[ignore = "a measurement, not a check: minutes unoptimised"]
#[allow(clippy::print_stderr)]
fn hot_key_with_unknown_outcomes_timing() {
    let cfg = SimConfig {
        keys: 1,
        ops: 2000,
        clients: 8,
        unknown_percent: 1,
        txn_percent: 0,
    };
    let config = Config {
        max_steps: 20_000_000,
        ..Config::default()
    };
    for seed in &SEEDS[..3] {
        let ops = simulate(*seed, &cfg);
        let t = Instant::now();
        let good = check(&ops, &config).unwrap();
        let pass = t.elapsed();
        assert_eq!(good.verdict, Verdict::Linearizable);
        let mut bad = ops.clone();
        inject(&mut bad, Anomaly::StaleRead, &mut Rng(*seed)).unwrap();
        let t = Instant::now();
        let report = check(&bad, &config).unwrap();
        assert_ne!(report.verdict, Verdict::Linearizable);
        eprintln!(
            "1 key x 2000 ops, 8 clients, 1% unknown, seed {seed}: linearizable in {pass:?} \
             ({} steps); stale read: {:?} in {:?} ({} steps)",
            good.partitions[0].steps,
            report.verdict,
            t.elapsed(),
            report.partitions[0].steps
        );
    }
}

#[test]
fn unobserved_unknown_writes_explain_failed_comparisons_exactly_once() {
    let a = |client, invoke, complete| op(client, invoke, Some(complete), put("x", "a"));
    let failed_cas =
        |invoke, complete| op(1, invoke, Some(complete), cas("x", Some("a"), "z", false));
    let unknown = |invoke, v: &str| op(2, invoke, None, put("x", v));
    // The failed CAS needs the crashed write to have happened.
    let ops = [a(0, 0, 10), unknown(20, "v1"), failed_cas(30, 40)];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    // ...so a later read of the old value is impossible.
    let mut more = ops.to_vec();
    more.push(op(3, 50, Some(60), get("x", Some("a"))));
    assert_eq!(verdict(&more), Verdict::NotLinearizable);
    // Two failed CASes separated by a rewrite need two crashed writes.
    let ops = [
        a(0, 0, 10),
        unknown(20, "v1"),
        failed_cas(30, 40),
        a(0, 50, 60),
        failed_cas(70, 80),
    ];
    assert_eq!(verdict(&ops), Verdict::NotLinearizable);
    let mut two = ops.to_vec();
    two.push(unknown(45, "v2"));
    assert_eq!(verdict(&two), Verdict::Linearizable);
    // A crashed write observed by a read must precede it.
    let ops = [
        a(0, 0, 10),
        op(1, 30, Some(40), get("x", Some("v"))),
        unknown(35, "v"),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
    let late = [ops[0].clone(), ops[1].clone(), unknown(45, "v")];
    assert_eq!(verdict(&late), Verdict::NotLinearizable);
}

/// Applies `op` to `store` as the model does; `false` if its recorded result is impossible.
fn brute_apply(store: &mut HashMap<String, String>, op: &Op) -> bool {
    let known = !op.is_unknown();
    let (compares, reads, writes, succeeded): (Vec<_>, Vec<_>, Vec<_>, bool) = match &op.kind {
        OpKind::Put { key, value } => (
            vec![],
            vec![],
            vec![(key.clone(), Some(value.clone()))],
            true,
        ),
        OpKind::Delete { key } => (vec![], vec![], vec![(key.clone(), None)], true),
        OpKind::Get { key, value } => (vec![], vec![(key.clone(), value.clone())], vec![], true),
        OpKind::Cas {
            key,
            expect,
            new,
            succeeded,
        } => (
            vec![(key.clone(), expect.clone())],
            vec![],
            vec![(key.clone(), Some(new.clone()))],
            *succeeded,
        ),
        OpKind::Txn(t) => (
            t.compare.clone(),
            t.reads.clone(),
            t.writes.clone(),
            t.succeeded,
        ),
    };
    let holds = compares.iter().all(|(k, v)| store.get(k) == v.as_ref());
    if known && (holds != succeeded || reads.iter().any(|(k, v)| store.get(k) != v.as_ref())) {
        return false;
    }
    if holds {
        for (k, v) in writes {
            match v {
                Some(v) => store.insert(k, v),
                None => store.remove(&k),
            };
        }
    }
    true
}

/// Exhaustive search: some order of all known ops and some subset of the unknown ones,
/// respecting real time, that the model accepts.
fn brute_linearizable(ops: &[Op]) -> bool {
    brute_linearizable_from(ops, &HashMap::new())
}

fn brute_linearizable_from(ops: &[Op], init: &HashMap<String, String>) -> bool {
    fn go(ops: &[Op], used: &mut Vec<bool>, store: &HashMap<String, String>) -> bool {
        if ops
            .iter()
            .zip(used.iter())
            .all(|(o, &u)| u || o.is_unknown())
        {
            return true;
        }
        for i in 0..ops.len() {
            if used[i] {
                continue;
            }
            // Everything that completed strictly before i began must already be placed.
            let ready = ops
                .iter()
                .zip(used.iter())
                .all(|(o, &u)| u || o.complete.is_none_or(|c| c >= ops[i].invoke));
            if !ready {
                continue;
            }
            let mut next = store.clone();
            if brute_apply(&mut next, &ops[i]) {
                used[i] = true;
                if go(ops, used, &next) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    go(ops, &mut vec![false; ops.len()], init)
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    let (mut passed, mut failed) = (0, 0);
    for seed in 0..1500u64 {
        let cfg = SimConfig {
            keys: 1 + (seed % 2) as usize,
            ops: 7,
            clients: 3,
            unknown_percent: 30,
            txn_percent: if seed % 3 == 0 { 30 } else { 0 },
        };
        let mut ops = simulate(seed, &cfg);
        let mut rng = Rng(seed.wrapping_mul(7919));
        // Mutate a result half of the time: a read of another written value (or absent), or
        // a comparison's outcome flipped.
        if rng.percent(50) {
            let values: Vec<String> = ops
                .iter()
                .flat_map(|o| {
                    o.writes()
                        .into_iter()
                        .filter_map(|(_, v)| v.map(str::to_owned))
                })
                .collect();
            let i = rng.below(ops.len() as u64) as usize;
            let pick = |rng: &mut Rng| {
                (!values.is_empty() && rng.percent(80))
                    .then(|| values[rng.below(values.len() as u64) as usize].clone())
            };
            match &mut ops[i].kind {
                OpKind::Get { value, .. } => *value = pick(&mut rng),
                OpKind::Cas { succeeded, .. } => *succeeded = !*succeeded,
                OpKind::Txn(t) => match t.reads.first_mut() {
                    Some((_, v)) if rng.percent(50) => *v = pick(&mut rng),
                    _ => t.succeeded = !t.succeeded,
                },
                _ => {}
            }
        }
        let expected = brute_linearizable(&ops);
        let got = check(&ops, &Config::default()).unwrap();
        let want = if expected {
            Verdict::Linearizable
        } else {
            Verdict::NotLinearizable
        };
        assert_eq!(got.verdict, want, "seed {seed}: {ops:#?}");
        if let Some(w) = got.witness() {
            assert_witness_fails(w, &ops);
        }
        if expected {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    // Both verdicts are well represented.
    assert!(
        passed > 300 && failed > 150,
        "{passed} passed, {failed} failed"
    );
}

/// The witness window alone, as the checker cut it (ops running after its end or begun before
/// its start have unknown outcomes), fails from every initial state of its keys.
fn assert_witness_fails(w: &Witness, ops: &[Op]) {
    let end = w.window_end.unwrap();
    let window: Vec<Op> = w
        .ops
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if o.complete.is_some_and(|c| c > end) || w.window_start.is_some_and(|t0| o.invoke < t0)
            {
                o.complete = None;
            }
            o
        })
        .collect();
    let mut values: Vec<Option<String>> = vec![None, Some("fresh".into())];
    values.extend(ops.iter().flat_map(|o| {
        o.writes()
            .into_iter()
            .filter_map(|(_, v)| v.map(|v| Some(v.to_owned())))
    }));
    let mut inits = vec![HashMap::new()];
    if w.window_start.is_some() {
        for key in &w.keys {
            inits = inits
                .into_iter()
                .flat_map(|init: HashMap<String, String>| {
                    values.iter().map(move |v| {
                        let mut init = init.clone();
                        if let Some(v) = v {
                            init.insert(key.clone(), v.clone());
                        }
                        init
                    })
                })
                .collect();
        }
    }
    for init in &inits {
        assert!(
            !brute_linearizable_from(&window, init),
            "witness {w:#?} passes from {init:?}"
        );
    }
}
