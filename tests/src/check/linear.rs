//! Linearizability of a KV history: the Wing–Gong–Lowe search with Porcupine's optimisations.
//!
//! Why our own: the Rust options do not fit. stateright's `LinearizabilityTester` records
//! invocations and returns inside a model checker's state and searches every interleaving
//! without memoisation, time bounds or unknown outcomes; `lincheck` drives data structures
//! under loom. Porcupine (Go) is the reference design; this is a port of its `checkSingle`
//! loop over our own model.
//!
//! The model is a map from key to optional value. Every kind of [`Op`] compiles to one atomic
//! step (comparisons, reads of the pre-state, writes if the comparisons held). The search:
//! - **Partitioning** (P-compositionality): keys connected by multi-key transactions form one
//!   partition; every partition is checked alone, so a single-key register workload over many
//!   keys costs the sum of small searches.
//! - **Entries sorted by time**: call and return entries in one doubly linked list (calls
//!   before returns at equal times: touching operations count as concurrent). The search
//!   linearizes any call that precedes the first remaining return, backtracking on a return
//!   whose call is not yet linearized.
//! - **Memoisation** of (linearized set, model state): a configuration seen before is never
//!   explored again. The bitset is stored compactly (ops are indexed by invoke order, so the
//!   linearized set is a run of full words plus a short tail).
//! - **Unknown outcomes**: the return is at infinity and any result is accepted, so the op may
//!   take effect any time after its invoke, or never (the search stops once every op with a
//!   known outcome is linearized). Unknown reads constrain nothing and are dropped.
//! - **Bounds**: a step budget per search and an optional wall-clock budget per check; when
//!   either runs out the partition's verdict is [`Verdict::Unknown`], never a hang.
//!
//! Besides Porcupine's, four exact reductions of unknown-outcome writes keep crashed requests
//! from multiplying the search (values nobody observes merged into one; a crashed write whose
//! unique value was read must precede that read; identical crashed ops used in invoke order;
//! on one key, a crashed write of an unobserved value only right before a failed comparison
//! that needs it: see `reduce`); `agrees_with_brute_force_on_small_histories`
//! checks the whole checker against exhaustive search.
//!
//! Cost (measured on simulated histories, 8 clients, our crate optimised; the unit tests run it
//! unoptimised, ~5-10x slower): 20 keys x 100 ops with 1% unknown outcomes, ~2 ms to pass or
//! fail; 20 keys x 2000 ops (40,000 ops), ~0.3 s. Failing costs more than passing, because the
//! search must exhaust every configuration before the anomaly: one key shared by all 8 clients
//! for 2000 ops fails in ~3 s without unknown outcomes, and with 1% of them may exhaust the
//! default budget ([`Verdict::Unknown`]). Workloads should spread clients over many keys.
//!
//! On failure the [`Witness`] is minimised: first the shortest failing *prefix* (every op
//! invoked by time `T`, with ops still running at `T` treated as unknown outcomes), found by
//! binary search over completion times; then the latest *window start* `t0` such that the ops
//! running during `[t0, T]` alone still cannot be linearized from an arbitrary initial state
//! (ops invoked before `t0` treated as unknown outcomes). Both reductions only drop
//! constraints, so a failing window proves the whole history non-linearizable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::history::{validate_ops, HistoryError, Nanos, Op, OpKind};

/// Value id of an absent key.
const ABSENT: u32 = 0;
/// Value id of "any value" (a window's initial state, or a slot an over-approximated unknown
/// write may have changed).
const ANY: u32 = u32::MAX;
/// End of the entry list.
const NIL: usize = usize::MAX;

/// Limits of a check.
#[derive(Clone, Debug)]
pub struct Config {
    /// Search steps allowed per search (one partition, or one witness-minimisation probe).
    /// Memory grows with the steps taken (one memo entry per new configuration).
    pub max_steps: u64,
    /// Wall-clock budget for the whole check; `None`: no limit.
    pub time_budget: Option<Duration>,
    /// Whether to minimise the witness of a failing partition (a few extra searches).
    pub minimise_witness: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_steps: 2_000_000,
            time_budget: Some(Duration::from_secs(120)),
            minimise_witness: true,
        }
    }
}

/// The verdict on a history or a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The search ran out of steps or time.
    Unknown,
}

/// Why a partition is not linearizable: a small window of its ops that cannot be linearized.
#[derive(Clone, Debug, Serialize)]
pub struct Witness {
    /// The partition's keys (one key unless multi-key transactions joined several).
    pub keys: Vec<String>,
    /// The op whose completion makes the history fail (the end of the shortest failing
    /// prefix); `None` when minimisation was off or out of budget.
    pub failing_op: Option<Op>,
    /// Start of the window: ops completed before it are left out and the state at its start is
    /// arbitrary. `None`: the window starts at the beginning of the history (initial state:
    /// every key absent).
    pub window_start: Option<Nanos>,
    /// End of the window (the failing op's completion).
    pub window_end: Option<Nanos>,
    /// The ops of the window, sorted by invoke.
    pub ops: Vec<Op>,
    /// How many ops the whole partition has.
    pub partition_ops: usize,
}

/// The result for one partition.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionReport {
    /// The partition's keys.
    pub keys: Vec<String>,
    /// Its number of ops.
    pub ops: usize,
    /// Its verdict.
    pub verdict: Verdict,
    /// Search steps spent (including witness minimisation).
    pub steps: u64,
    /// Set when the verdict is [`Verdict::NotLinearizable`].
    pub witness: Option<Witness>,
}

/// The result of [`check`].
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `NotLinearizable` if any partition is; else `Unknown` if any is; else `Linearizable`.
    pub verdict: Verdict,
    /// One report per partition, sorted by first key.
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    /// The first failing partition's witness.
    pub fn witness(&self) -> Option<&Witness> {
        self.partitions.iter().find_map(|p| p.witness.as_ref())
    }
}

/// Checks `ops` for linearizability against the key-value model (every key initially
/// absent). Errors only on malformed records.
pub fn check(ops: &[Op], config: &Config) -> Result<Report, HistoryError> {
    validate_ops(ops)?;
    let deadline = config.time_budget.map(|budget| Instant::now() + budget);
    let mut partitions = Vec::new();
    for (keys, indices) in partition(ops) {
        let compiled = compile(ops, &indices, &keys);
        let mut search = Search {
            max_steps: config.max_steps,
            deadline,
            steps: 0,
        };
        let init = vec![ABSENT; keys.len()];
        let outcome = search.run(&compiled, &init);
        let (verdict, witness) = match outcome {
            Outcome::Ok => (Verdict::Linearizable, None),
            Outcome::OutOfBudget => (Verdict::Unknown, None),
            Outcome::Fail => {
                let witness = if config.minimise_witness {
                    minimise(&mut search, &compiled, ops, &keys)
                } else {
                    Witness {
                        keys: keys.clone(),
                        failing_op: None,
                        window_start: None,
                        window_end: None,
                        ops: indices.iter().map(|&i| ops[i].clone()).collect(),
                        partition_ops: indices.len(),
                    }
                };
                (Verdict::NotLinearizable, Some(witness))
            }
        };
        partitions.push(PartitionReport {
            keys,
            ops: indices.len(),
            verdict,
            steps: search.steps,
            witness,
        });
    }
    let verdict = if partitions
        .iter()
        .any(|p| p.verdict == Verdict::NotLinearizable)
    {
        Verdict::NotLinearizable
    } else if partitions.iter().any(|p| p.verdict == Verdict::Unknown) {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    };
    Ok(Report {
        verdict,
        partitions,
    })
}

/// Groups keys connected by multi-key ops (union-find) and the ops of each group.
fn partition(ops: &[Op]) -> Vec<(Vec<String>, Vec<usize>)> {
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut op_key: Vec<Option<usize>> = Vec::with_capacity(ops.len());
    for op in ops {
        let keys = op.keys();
        let mut first = None;
        for key in keys {
            let id = *ids.entry(key).or_insert_with(|| {
                parent.push(parent.len());
                parent.len() - 1
            });
            match first {
                None => first = Some(id),
                Some(f) => {
                    let (a, b) = (find(&mut parent, f), find(&mut parent, id));
                    if a != b {
                        parent[a] = b;
                    }
                }
            }
        }
        op_key.push(first);
    }
    let mut groups: BTreeMap<usize, (Vec<String>, Vec<usize>)> = BTreeMap::new();
    for (key, &id) in &ids {
        let root = find(&mut parent, id);
        groups.entry(root).or_default().0.push((*key).to_owned());
    }
    for (index, key) in op_key.into_iter().enumerate() {
        if let Some(id) = key {
            let root = find(&mut parent, id);
            groups.entry(root).or_default().1.push(index);
        }
    }
    let mut out: Vec<(Vec<String>, Vec<usize>)> = groups
        .into_values()
        .map(|(mut keys, indices)| {
            keys.sort();
            (keys, indices)
        })
        .collect();
    out.sort();
    out
}

/// One op compiled to a model step over slot indices and interned values.
#[derive(Clone, Debug)]
struct Entry {
    invoke: Nanos,
    /// `None`: unknown outcome.
    complete: Option<Nanos>,
    compares: Vec<(usize, u32)>,
    reads: Vec<(usize, u32)>,
    writes: Vec<(usize, u32)>,
    succeeded: bool,
    /// Index of the op in the caller's slice.
    origin: usize,
}

/// Compiles a partition's ops, sorted by invoke time.
fn compile(ops: &[Op], indices: &[usize], keys: &[String]) -> Vec<Entry> {
    let slots: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    fn intern<'a>(values: &mut HashMap<&'a str, u32>, v: Option<&'a str>) -> u32 {
        match v {
            None => ABSENT,
            Some(v) => {
                let next = u32::try_from(values.len() + 1).unwrap_or(ANY - 1);
                *values.entry(v).or_insert(next)
            }
        }
    }
    let mut values: HashMap<&str, u32> = HashMap::new();
    let mut entries = Vec::with_capacity(indices.len());
    for &origin in indices {
        let op = &ops[origin];
        let slot = |k: &str| slots.get(k).copied().unwrap_or(0);
        let mut e = Entry {
            invoke: op.invoke,
            complete: op.complete,
            compares: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            succeeded: true,
            origin,
        };
        match &op.kind {
            OpKind::Put { key, value: v } => {
                e.writes.push((slot(key), intern(&mut values, Some(v))))
            }
            OpKind::Delete { key } => e.writes.push((slot(key), ABSENT)),
            OpKind::Get { key, value: v } => {
                e.reads.push((slot(key), intern(&mut values, v.as_deref())))
            }
            OpKind::Cas {
                key,
                expect,
                new,
                succeeded,
            } => {
                e.compares
                    .push((slot(key), intern(&mut values, expect.as_deref())));
                e.writes.push((slot(key), intern(&mut values, Some(new))));
                e.succeeded = *succeeded;
            }
            OpKind::Txn(txn) => {
                for (k, v) in &txn.compare {
                    e.compares
                        .push((slot(k), intern(&mut values, v.as_deref())));
                }
                for (k, v) in &txn.reads {
                    e.reads.push((slot(k), intern(&mut values, v.as_deref())));
                }
                for (k, v) in &txn.writes {
                    e.writes.push((slot(k), intern(&mut values, v.as_deref())));
                }
                e.succeeded = txn.succeeded;
            }
        }
        entries.push(e);
    }
    entries.sort_by_key(|e| (e.invoke, e.origin));
    entries
}

/// Applies one step to `state`; `None` if the recorded result is impossible from it.
fn apply(state: &[u32], e: &Entry) -> Option<Vec<u32>> {
    // A slot must hold `v`: fix an arbitrary slot to it, refuse a different concrete value.
    fn require(s: &mut [u32], slot: usize, v: u32) -> bool {
        if s[slot] == ANY {
            s[slot] = v;
            true
        } else {
            s[slot] == v
        }
    }
    let mut s = state.to_vec();
    if s.first() == Some(&UNOBSERVED_USE) {
        // Single-key partition: slot 0 is the key, slot 1 the value the use replaced.
        let replaced = s[1];
        let needed = e.complete.is_some()
            && !e.succeeded
            && e.compares
                .iter()
                .any(|&(_, v)| replaced == ANY || replaced == v);
        if !needed {
            return None;
        }
        s[0] = UNOBSERVED;
        s[1] = ABSENT;
    }
    if e.complete.is_some() {
        if e.succeeded {
            if !e.compares.iter().all(|&(slot, v)| require(&mut s, slot, v)) {
                return None;
            }
        } else if !e.compares.iter().any(|&(slot, v)| s[slot] != v) {
            // Some comparison must fail (an arbitrary slot may hold anything but `v`).
            return None;
        }
        if !e.reads.iter().all(|&(slot, v)| require(&mut s, slot, v)) {
            return None;
        }
        if e.succeeded {
            for &(slot, v) in &e.writes {
                s[slot] = v;
            }
        }
    } else {
        // Unknown outcome: the comparisons decide (over-approximated when a slot is arbitrary).
        let mut arbitrary = false;
        let mut holds = true;
        for &(slot, v) in &e.compares {
            if s[slot] == ANY {
                arbitrary = true;
            } else if s[slot] != v {
                holds = false;
            }
        }
        if holds {
            for &(slot, v) in &e.writes {
                if v == UNOBSERVED_USE {
                    s[1] = s[slot];
                }
                s[slot] = if arbitrary { ANY } else { v };
            }
        }
    }
    Some(s)
}

/// An entry prepared for one search.
struct Node {
    entry: Entry,
    /// The latest time it must be linearized by: its completion, or for an unknown op forced
    /// earlier by an observation of its write (below); `None`: never needs to be.
    ret: Option<Nanos>,
    /// Class of interchangeable unknown ops (same comparisons and writes).
    class: Option<usize>,
}

/// Value id shared by every written value that no op reads or compares against.
const UNOBSERVED: u32 = u32::MAX - 1;
/// [`UNOBSERVED`] just written by an unknown op of a single-key partition: only a known failed
/// comparison that needs it may come next (see [`reduce`]). The value it replaced is kept in a
/// hidden slot after the key's.
const UNOBSERVED_USE: u32 = u32::MAX - 2;

/// Prepares a search; `None` when there is nothing to check. All reductions are exact:
/// - unknown ops that cannot write, or that start after every known op ended, are dropped;
/// - written values nobody reads or compares against are indistinguishable to the model and
///   become one value ([`UNOBSERVED`]), so states merge;
/// - an unknown op that is the only writer of `(key, value)` which a known op read (or
///   compared successfully against) must take effect before that op completed: its return
///   moves there from infinity;
/// - the remaining unknown ops with identical steps form classes, used in invoke order;
/// - in a single-key partition, an unknown op writing an unobserved value is useful only when
///   a known failed comparison comes right after it and would have held on the value it
///   replaced (after it, a blind write would overwrite it, a read or successful comparison
///   could not see it, an unknown op could be moved to "never"; a comparison that fails anyway
///   does not need it, and a later one that does can have it moved just before), so it writes
///   [`UNOBSERVED_USE`], which only such a comparison may follow.
///
/// The third reduction assumes the initial state is known (not [`ANY`]): an arbitrary initial
/// state could hold the value too, so it is off for witness windows.
///
/// Returns the nodes and whether the partition has a single key (then the state carries the
/// hidden slot).
fn reduce(entries: &[Entry], arbitrary_init: bool) -> Option<(Vec<Node>, bool)> {
    let last_known = entries.iter().filter_map(|e| e.complete).max()?;
    let single_key = entries.iter().all(|e| {
        e.compares
            .iter()
            .chain(&e.reads)
            .chain(&e.writes)
            .all(|&(slot, _)| slot == 0)
    });
    let mut observed: HashSet<u32> = HashSet::from([ABSENT]);
    // Earliest completion of a known op that saw (slot, value).
    let mut first_seen: HashMap<(usize, u32), Nanos> = HashMap::new();
    for e in entries {
        observed.extend(e.compares.iter().map(|&(_, v)| v));
        if let Some(c) = e.complete {
            observed.extend(e.reads.iter().map(|&(_, v)| v));
            let seen = e
                .reads
                .iter()
                .chain(e.compares.iter().filter(|_| e.succeeded));
            for &sv in seen {
                let t = first_seen.entry(sv).or_insert(c);
                *t = (*t).min(c);
            }
        }
    }
    let mut writers: HashMap<(usize, u32), usize> = HashMap::new();
    for e in entries {
        for &sv in &e.writes {
            *writers.entry(sv).or_default() += 1;
        }
    }
    // (comparisons, writes) -> class.
    type Signature = (Vec<(usize, u32)>, Vec<(usize, u32)>);
    let mut classes: HashMap<Signature, usize> = HashMap::new();
    let mut nodes = Vec::with_capacity(entries.len());
    for e in entries {
        if e.complete.is_none() && (e.writes.is_empty() || e.invoke > last_known) {
            continue;
        }
        let mut entry = e.clone();
        let mut ret = e.complete;
        if e.complete.is_none() && !arbitrary_init {
            ret = e
                .writes
                .iter()
                .filter(|&&(_, v)| v != ABSENT)
                .filter(|sv| writers.get(sv) == Some(&1))
                .filter_map(|sv| first_seen.get(sv).copied())
                .min();
        }
        for w in &mut entry.writes {
            if !observed.contains(&w.1) {
                w.1 = UNOBSERVED;
            }
        }
        if single_key && ret.is_none() && entry.writes.iter().all(|w| w.1 == UNOBSERVED) {
            for w in &mut entry.writes {
                w.1 = UNOBSERVED_USE;
            }
        }
        let class = (ret.is_none()).then(|| {
            let next = classes.len();
            *classes
                .entry((entry.compares.clone(), entry.writes.clone()))
                .or_insert(next)
        });
        nodes.push(Node { entry, ret, class });
    }
    Some((nodes, single_key))
}

enum Outcome {
    Ok,
    Fail,
    OutOfBudget,
}

/// Step and time accounting shared by a partition's searches.
struct Search {
    max_steps: u64,
    deadline: Option<Instant>,
    steps: u64,
}

/// The memo key: linearized set (as leading full words + tail) and model state.
type MemoKey = (u32, Vec<u64>, Vec<u32>);

fn memo_key(bits: &[u64], state: &[u32]) -> MemoKey {
    let lead = bits.iter().take_while(|&&w| w == u64::MAX).count();
    let end = bits.iter().rposition(|&w| w != 0).map_or(lead, |i| i + 1);
    let tail = bits[lead..end.max(lead)].to_vec();
    (
        u32::try_from(lead).unwrap_or(u32::MAX),
        tail,
        state.to_vec(),
    )
}

impl Search {
    /// One WGL search over `entries` (sorted by invoke) from `init`.
    fn run(&mut self, entries: &[Entry], init: &[u32]) -> Outcome {
        let Some((nodes, single_key)) = reduce(entries, init.contains(&ANY)) else {
            return Outcome::Ok;
        };
        let es: Vec<&Entry> = nodes.iter().map(|n| &n.entry).collect();
        let n = es.len();
        let head = 2 * n;
        let mut order: Vec<usize> = (0..2 * n).collect();
        order.sort_by_key(|&node| {
            let e = es[node / 2];
            if node.is_multiple_of(2) {
                (e.invoke, 0u8, node)
            } else {
                (nodes[node / 2].ret.unwrap_or(Nanos::MAX), 1u8, node)
            }
        });
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = head;
        for &node in &order {
            next[last] = node;
            prev[node] = last;
            last = node;
        }
        let lift = |next: &mut [usize], prev: &mut [usize], i: usize| {
            for node in [2 * i, 2 * i + 1] {
                next[prev[node]] = next[node];
                if next[node] != NIL {
                    prev[next[node]] = prev[node];
                }
            }
        };
        let unlift = |next: &mut [usize], prev: &mut [usize], i: usize| {
            for node in [2 * i + 1, 2 * i] {
                next[prev[node]] = node;
                if next[node] != NIL {
                    prev[next[node]] = node;
                }
            }
        };

        let mut remaining_known = nodes.iter().filter(|n| n.ret.is_some()).count();
        // Per class of interchangeable unknown ops: members by invoke, how many are used.
        let mut class_members: Vec<Vec<usize>> = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if let Some(c) = node.class {
                if class_members.len() <= c {
                    class_members.resize(c + 1, Vec::new());
                }
                class_members[c].push(i);
            }
        }
        let mut class_used = vec![0usize; class_members.len()];
        let mut state = init.to_vec();
        if single_key {
            state.push(ABSENT);
        }
        let mut bits = vec![0u64; n.div_ceil(64)];
        let mut memo: HashSet<MemoKey> = HashSet::new();
        let mut calls: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut entry = next[head];
        let mut local: u64 = 0;
        loop {
            if remaining_known == 0 {
                return Outcome::Ok;
            }
            self.steps += 1;
            local += 1;
            if local > self.max_steps {
                return Outcome::OutOfBudget;
            }
            if local.is_multiple_of(1024) && self.deadline.is_some_and(|d| Instant::now() > d) {
                return Outcome::OutOfBudget;
            }
            if entry != NIL && entry.is_multiple_of(2) {
                let i = entry / 2;
                // A class's members are used in invoke order (any linearization can be
                // rearranged so: they differ only in invoke time).
                let allowed = nodes[i]
                    .class
                    .is_none_or(|c| class_members[c].get(class_used[c]) == Some(&i));
                if let Some(new_state) = allowed.then(|| apply(&state, es[i])).flatten() {
                    bits[i / 64] |= 1 << (i % 64);
                    if memo.insert(memo_key(&bits, &new_state)) {
                        calls.push((i, std::mem::replace(&mut state, new_state)));
                        lift(&mut next, &mut prev, i);
                        if nodes[i].ret.is_some() {
                            remaining_known -= 1;
                        }
                        if let Some(c) = nodes[i].class {
                            class_used[c] += 1;
                        }
                        entry = next[head];
                        continue;
                    }
                    bits[i / 64] &= !(1 << (i % 64));
                }
                entry = next[entry];
            } else {
                // A return whose call is not linearized: undo the last linearized call.
                let Some((i, before)) = calls.pop() else {
                    return Outcome::Fail;
                };
                state = before;
                bits[i / 64] &= !(1 << (i % 64));
                unlift(&mut next, &mut prev, i);
                if nodes[i].ret.is_some() {
                    remaining_known += 1;
                }
                if let Some(c) = nodes[i].class {
                    class_used[c] -= 1;
                }
                entry = next[2 * i];
            }
        }
    }

    /// Whether a probe fails for sure (out of budget counts as not failing).
    fn fails(&mut self, entries: &[Entry], init: &[u32]) -> bool {
        matches!(self.run(entries, init), Outcome::Fail)
    }
}

/// Every op invoked by `t`; those still running at `t` become unknown outcomes.
fn prefix(entries: &[Entry], t: Nanos) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| e.invoke <= t)
        .map(|e| {
            let mut e = e.clone();
            if e.complete.is_some_and(|c| c > t) {
                e.complete = None;
            }
            e
        })
        .collect()
}

/// The ops of `prefix` running at or after `t0`; those invoked before it become unknown.
fn window(prefix: &[Entry], t0: Nanos) -> Vec<Entry> {
    prefix
        .iter()
        .filter(|e| e.complete.is_none_or(|c| c >= t0))
        .map(|e| {
            let mut e = e.clone();
            if e.invoke < t0 {
                e.complete = None;
            }
            e
        })
        .collect()
}

/// Shrinks a failing partition to its shortest failing prefix, then its latest failing window.
fn minimise(search: &mut Search, entries: &[Entry], ops: &[Op], keys: &[String]) -> Witness {
    let nslots = keys.len();
    let absent = vec![ABSENT; nslots];
    let any = vec![ANY; nslots];
    let mut ends: Vec<Nanos> = entries.iter().filter_map(|e| e.complete).collect();
    ends.sort_unstable();
    ends.dedup();
    // The whole partition fails, so the last end fails; find the first end that does.
    let (mut lo, mut hi) = (0, ends.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if search.fails(&prefix(entries, ends[mid]), &absent) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let end = ends.get(hi).copied().unwrap_or(0);
    let pre = prefix(entries, end);
    let mut starts: Vec<Nanos> = pre.iter().map(|e| e.invoke).collect();
    starts.sort_unstable();
    starts.dedup();
    let mut start = None;
    if !starts.is_empty() && search.fails(&window(&pre, starts[0]), &any) {
        // Find the last start whose window still fails.
        let (mut lo, mut hi) = (0, starts.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if search.fails(&window(&pre, starts[mid]), &any) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        start = Some(starts[lo]);
    }
    let failing_op = entries
        .iter()
        .filter(|e| e.complete == Some(end))
        .max_by_key(|e| e.invoke)
        .map(|e| ops[e.origin].clone());
    let mut window_ops: Vec<Op> = entries
        .iter()
        .filter(|e| e.invoke <= end)
        .filter(|e| start.is_none_or(|t0| e.complete.is_none_or(|c| c >= t0)))
        .map(|e| ops[e.origin].clone())
        .collect();
    window_ops.sort_by_key(|op| (op.invoke, op.client));
    Witness {
        keys: keys.to_vec(),
        failing_op,
        window_start: start,
        window_end: Some(end),
        ops: window_ops,
        partition_ops: entries.len(),
    }
}

#[cfg(test)]
mod tests;
