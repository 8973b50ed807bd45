//! The register workload: single-key gets, puts, deletes and compare-and-set, plus multi-key
//! transactions, recorded as a [`History`] for the linearizability and durability checkers.
//!
//! Keys are `<prefix><epoch>/k<n>`: the key space rotates to a fresh set every
//! [`RegisterConfig::epoch`], so each key's history (a checker partition) stays short however
//! long the run is, and an operation whose outcome stayed unknown (it may take effect at any
//! later time) weighs only on its own epoch's search. Keys of one epoch form groups of
//! [`RegisterConfig::group`]; a multi-key transaction compares one key of a group against the
//! value its client last saw there, reads every key of the group and writes (or deletes) some
//! of them, so the checker must place it atomically among the group's single-key operations.
//!
//! Each client issues one request at a time. A request that errs or times out has an unknown
//! outcome: it is recorded without completion, and the client continues as a new logical
//! client (an unknown write may still take effect). A read that errs is left out (it changed
//! nothing). Every read is linearizable (etcd's default), so a stale read is an anomaly.
//!
//! After the run's stop flag is raised (the orchestrator raises it once every fault has healed)
//! the workload reads its whole key space once, for the durability check.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse};

use crate::check::durable::check_durability;
use crate::check::linear::{self, Verdict};
use crate::check::{History, Op, OpKind, Txn};
use crate::rng::Rng;
use crate::workload::{Anomaly, Ctx};

/// What the register workload does.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    /// The key prefix.
    pub prefix: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys per epoch (a multiple of `group`).
    pub keys: usize,
    /// Keys per transaction group.
    pub group: usize,
    /// Percent of operations that are multi-key transactions.
    pub txn_percent: u64,
    /// How long one key space is used before the next.
    pub epoch: Duration,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        Self {
            prefix: "reg/".into(),
            clients: 6,
            keys: 12,
            group: 3,
            txn_percent: 15,
            epoch: Duration::from_secs(30),
        }
    }
}

/// What the register workload recorded.
#[derive(Clone, Debug)]
pub struct RegisterLog {
    history: History,
    /// The key space read after the run; `None` if it could not be read.
    final_state: Option<BTreeMap<String, String>>,
    prefix: String,
}

/// Runs the register workload until `ctx` stops, then reads the final state.
pub async fn run(ctx: Ctx, cfg: RegisterConfig) -> RegisterLog {
    let history = Arc::new(Mutex::new(History::new()));
    let mut tasks = Vec::new();
    for i in 0..cfg.clients {
        let seed = ctx.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tasks.push(tokio::spawn(client(
            ctx.clone(),
            cfg.clone(),
            i,
            seed,
            history.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let final_state = read_final(&ctx, &cfg.prefix).await;
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    RegisterLog {
        history,
        final_state,
        prefix: cfg.prefix,
    }
}

impl RegisterLog {
    /// The recorded operations.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Recorded operations (with known or unknown outcome).
    pub fn operations(&self) -> u64 {
        self.history.ops.len() as u64
    }

    /// Operations whose outcome stayed unknown.
    pub fn unknown(&self) -> u64 {
        self.history.ops.iter().filter(|o| o.is_unknown()).count() as u64
    }

    /// Linearizability of the history and durability against the final state.
    pub fn check(&self) -> Vec<Anomaly> {
        let mut out = Vec::new();
        let ops = &self.history.ops;
        match linear::check(ops, &linear::Config::default()) {
            Err(e) => out.push(anomaly("linearizability", format!("bad history: {e:?}"))),
            Ok(report) => match report.verdict {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable => out.push(anomaly(
                    "linearizability",
                    format!("not linearizable: {:#?}", report.witness()),
                )),
                Verdict::Unknown => {
                    let undecided: Vec<_> = report
                        .partitions
                        .iter()
                        .filter(|p| p.verdict == Verdict::Unknown)
                        .map(|p| (&p.keys, p.ops, p.steps))
                        .collect();
                    out.push(anomaly(
                        "linearizability",
                        format!("undecided partitions (keys, ops, steps): {undecided:?}"),
                    ))
                }
            },
        }
        match &self.final_state {
            None => out.push(anomaly(
                "durability",
                format!("the final state under {:?} could not be read", self.prefix),
            )),
            Some(state) => match check_durability(ops, state) {
                Err(e) => out.push(anomaly("durability", format!("bad history: {e:?}"))),
                Ok(lost) => out.extend(
                    lost.into_iter()
                        .map(|v| anomaly("durability", format!("{v:?}"))),
                ),
            },
        }
        out
    }
}

fn anomaly(checker: &'static str, detail: String) -> Anomaly {
    Anomaly { checker, detail }
}

/// Reads every key under `prefix` once nothing is in flight (retrying for 30 s).
async fn read_final(ctx: &Ctx, prefix: &str) -> Option<BTreeMap<String, String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let mut c = Client::connect(ctx.endpoints.clone(), None).await.ok()?;
            let r = ctx
                .call(c.get(prefix, Some(GetOptions::new().with_prefix())))
                .await?;
            Some(
                r.kvs()
                    .iter()
                    .map(|kv| (text(kv.key()), text(kv.value())))
                    .collect(),
            )
        };
        if let Some(state) = attempt.await {
            return Some(state);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The keys of the current epoch: `(key, group index)`.
fn epoch_keys(ctx: &Ctx, cfg: &RegisterConfig) -> Vec<String> {
    let epoch = ctx.now()
        / u64::try_from(cfg.epoch.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
    (0..cfg.keys)
        .map(|k| format!("{}{epoch}/k{k:02}", cfg.prefix))
        .collect()
}

async fn client(
    ctx: Ctx,
    cfg: RegisterConfig,
    index: usize,
    seed: u64,
    history: Arc<Mutex<History>>,
) {
    let Some(mut kv) = ctx.connect().await.map(|c| c.kv_client()) else {
        return;
    };
    let mut rng = Rng(seed);
    let mut logical = index;
    let mut seq = 0u64;
    // The last value this client saw per key (`None`: absent).
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let record = |op: Op| {
        if let Ok(mut h) = history.lock() {
            h.push(op);
        }
    };
    while !ctx.stopped() {
        let keys = epoch_keys(&ctx, &cfg);
        let k = rng.below(keys.len() as u64) as usize;
        let key = keys[k].clone();
        seq += 1;
        let value = format!("c{index}-{seq}");
        let invoke = ctx.now();
        let roll = rng.below(100);
        let (kind, complete) = if roll < cfg.txn_percent {
            let group = k / cfg.group;
            let members = &keys[group * cfg.group..((group + 1) * cfg.group).min(keys.len())];
            let t = random_txn(&mut rng, members, &seen, &value);
            let answer = ctx.call(kv.txn(to_etcd(&t))).await;
            let complete = answer.as_ref().map(|_| ctx.now());
            let t = match answer {
                Some(r) => with_results(t, &r),
                None => t,
            };
            if complete.is_some() {
                for (k, v) in &t.reads {
                    seen.insert(k.clone(), v.clone());
                }
            }
            (OpKind::Txn(t), complete)
        } else if roll < cfg.txn_percent + 35 {
            let Some(r) = ctx.call(kv.get(key.as_str(), None)).await else {
                continue;
            };
            let value = r.kvs().first().map(|kv| text(kv.value()));
            seen.insert(key.clone(), value.clone());
            (OpKind::Get { key, value }, Some(ctx.now()))
        } else if roll < cfg.txn_percent + 65 {
            let done = ctx.call(kv.put(key.as_str(), value.as_str(), None)).await;
            let kind = OpKind::Put { key, value };
            (kind, done.map(|_| ctx.now()))
        } else if roll < cfg.txn_percent + 70 {
            let done = ctx.call(kv.delete(key.as_str(), None)).await;
            (OpKind::Delete { key }, done.map(|_| ctx.now()))
        } else {
            // Compare-and-set from the value this client last saw (absent if never read).
            let expect = seen.get(&key).cloned().flatten();
            let compare = match &expect {
                Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            };
            let txn = EtcdTxn::new().when([compare]).and_then([TxnOp::put(
                key.as_str(),
                value.as_str(),
                None,
            )]);
            let done = ctx.call(kv.txn(txn)).await;
            let succeeded = done.as_ref().is_some_and(|r| r.succeeded());
            if succeeded {
                seen.insert(key.clone(), Some(value.clone()));
            }
            let kind = OpKind::Cas {
                key,
                expect,
                new: value,
                succeeded,
            };
            (kind, done.map(|_| ctx.now()))
        };
        if complete.is_some() {
            ctx.done();
        }
        record(Op {
            client: logical,
            invoke,
            complete,
            kind,
        });
        if complete.is_none() {
            logical += cfg.clients;
        }
    }
}

/// A transaction over a group: compare one key with what this client last saw there, read
/// every key, and write one to all of them (one in ten writes is a delete).
fn random_txn(
    rng: &mut Rng,
    members: &[String],
    seen: &HashMap<String, Option<String>>,
    value: &str,
) -> Txn {
    let compare = if rng.percent(20) {
        Vec::new()
    } else {
        let key = &members[rng.below(members.len() as u64) as usize];
        vec![(key.clone(), seen.get(key).cloned().flatten())]
    };
    let writes_n = 1 + rng.below(members.len() as u64) as usize;
    let start = rng.below(members.len() as u64) as usize;
    let writes = (0..writes_n)
        .map(|i| {
            let key = members[(start + i) % members.len()].clone();
            let v = (!rng.percent(10)).then(|| format!("{value}-{i}"));
            (key, v)
        })
        .collect();
    Txn {
        compare,
        reads: members.iter().map(|k| (k.clone(), None)).collect(),
        writes,
        succeeded: false,
    }
}

/// The etcd request for `t`: compares; then reads every key before writing; else reads.
fn to_etcd(t: &Txn) -> EtcdTxn {
    let compares: Vec<Compare> = t
        .compare
        .iter()
        .map(|(k, v)| match v {
            Some(v) => Compare::value(k.as_str(), CompareOp::Equal, v.as_str()),
            None => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
        })
        .collect();
    let reads = || -> Vec<TxnOp> {
        t.reads
            .iter()
            .map(|(k, _)| TxnOp::get(k.as_str(), None))
            .collect()
    };
    let mut then = reads();
    then.extend(t.writes.iter().map(|(k, v)| match v {
        Some(v) => TxnOp::put(k.as_str(), v.as_str(), None),
        None => TxnOp::delete(k.as_str(), None),
    }));
    EtcdTxn::new()
        .when(compares)
        .and_then(then)
        .or_else(reads())
}

/// `t` with the answer's outcome and read values filled in.
fn with_results(mut t: Txn, r: &etcd_client::TxnResponse) -> Txn {
    t.succeeded = r.succeeded();
    let gets = r.op_responses().into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    for ((_, value), g) in t.reads.iter_mut().zip(gets) {
        *value = g.kvs().first().map(|kv| text(kv.value()));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_read_the_group_and_write_part_of_it() {
        let members: Vec<String> = (0..3).map(|i| format!("g/k{i}")).collect();
        let mut seen = HashMap::new();
        seen.insert("g/k1".to_string(), Some("v".to_string()));
        let mut rng = Rng(7);
        let mut with_compare = 0;
        for n in 0..200 {
            let t = random_txn(&mut rng, &members, &seen, &format!("x{n}"));
            assert_eq!(t.reads.len(), 3);
            assert!((1..=3).contains(&t.writes.len()));
            for (k, _) in &t.writes {
                assert!(members.contains(k));
            }
            let op = Op {
                client: 0,
                invoke: 1,
                complete: Some(2),
                kind: OpKind::Txn(t.clone()),
            };
            assert!(op.validate().is_ok(), "{t:?}");
            if let Some((k, v)) = t.compare.first() {
                with_compare += 1;
                assert_eq!(v, &seen.get(k).cloned().flatten());
            }
        }
        assert!(with_compare > 100 && with_compare < 200, "{with_compare}");
    }
}
