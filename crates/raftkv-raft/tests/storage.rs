//! `WalStorage` as raft-rs sees it: a model test against raft-rs's own `MemStorage` over random
//! operations with restarts and crashes, the metadata-only snapshot, the entry cache, and
//! `RawNode`s restarting from it (including after installing a snapshot).

use std::collections::VecDeque;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use raft::eraftpb::{ConfState, Entry, HardState, Message, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{Config, GetEntriesContext, RawNode, Storage, StorageError};
use raftkv_raft::{Error, StorageConfig, WalConfig, WalStorage};

fn storage_cfg(segment_size: u64, entry_cache_bytes: u64) -> StorageConfig {
    StorageConfig {
        wal: WalConfig {
            segment_size,
            fsync: false,
        },
        entry_cache_bytes,
    }
}

fn open(dir: &Path, cfg: &StorageConfig) -> WalStorage {
    WalStorage::open(dir, cfg.clone()).expect("open storage").0
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn entry(index: u64, term: u64, size: usize) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; size].into(),
        ..Default::default()
    }
}

fn conf(voters: Vec<u64>) -> ConfState {
    ConfState {
        voters,
        ..Default::default()
    }
}

fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
    Snapshot {
        metadata: Some(SnapshotMetadata {
            index,
            term,
            conf_state: Some(conf(voters)).into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Model test against MemStorage.

/// An operation as generated: positions are resolved against the current state when it runs.
#[derive(Debug, Clone)]
enum Op {
    Append {
        at: Index,
        n: u64,
        term: u64,
        size: usize,
    },
    Compact(Index),
    ApplySnapshot {
        at: Index,
        term: u64,
        voters: Vec<u64>,
    },
    SetHardState {
        term: u64,
        vote: u64,
        commit: Index,
    },
    SetConfState(Vec<u64>),
    Sync,
    /// Drop (the buffer reaches the OS) and reopen.
    Reopen,
    /// Power loss: everything since the last sync is lost.
    Crash,
}

/// An operation with its positions resolved, replayable on a fresh `MemStorage`.
#[derive(Debug, Clone)]
enum Resolved {
    Append(Vec<Entry>),
    Compact(u64),
    ApplySnapshot(Snapshot),
    SetHardState(HardState),
    SetConfState(ConfState),
}

fn op() -> impl Strategy<Value = Op> {
    let voters = proptest::collection::vec(1u64..6, 0..4);
    prop_oneof![
        6 => (any::<Index>(), 1u64..5, 1u64..5, 0usize..120)
            .prop_map(|(at, n, term, size)| Op::Append { at, n, term, size }),
        2 => any::<Index>().prop_map(Op::Compact),
        1 => (any::<Index>(), 1u64..6, voters.clone())
            .prop_map(|(at, term, voters)| Op::ApplySnapshot { at, term, voters }),
        2 => (1u64..6, 0u64..4, any::<Index>())
            .prop_map(|(term, vote, commit)| Op::SetHardState { term, vote, commit }),
        1 => voters.prop_map(Op::SetConfState),
        2 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// `lo + idx` for an index into `lo..=hi`.
fn pick(idx: &Index, lo: u64, hi: u64) -> u64 {
    lo + idx.index((hi - lo + 1) as usize) as u64
}

fn resolve(op: &Op, m: &MemStorage) -> Option<Resolved> {
    let (first, last) = (m.first_index().unwrap(), m.last_index().unwrap());
    let commit = m.rl().hard_state().commit;
    Some(match op {
        // Like raft: never overwrite committed entries, never leave a gap.
        Op::Append { at, n, term, size } => {
            let at = pick(at, first.max(commit + 1), last + 1);
            Resolved::Append((at..at + n).map(|i| entry(i, *term, *size)).collect())
        }
        // No-ops at or below the first index are included; past the last index is refused by
        // design (MemStorage would silently reset the first index).
        Op::Compact(to) => Resolved::Compact(pick(to, first.saturating_sub(1), first.max(last))),
        // Out-of-date ones (index < first index) included.
        Op::ApplySnapshot { at, term, voters } => Resolved::ApplySnapshot(snapshot(
            pick(at, first - 1, last + 3),
            *term,
            voters.clone(),
        )),
        Op::SetHardState { term, vote, commit } => Resolved::SetHardState(HardState {
            term: *term,
            vote: *vote,
            commit: pick(commit, 0, last),
            ..Default::default()
        }),
        Op::SetConfState(voters) => Resolved::SetConfState(conf(voters.clone())),
        Op::Sync | Op::Reopen | Op::Crash => return None,
    })
}

/// Applies to the model; false if the model refused it (out-of-date snapshot).
fn apply_model(m: &MemStorage, op: &Resolved) -> bool {
    let mut core = m.wl();
    match op.clone() {
        Resolved::Append(ents) => core.append(&ents).unwrap(),
        Resolved::Compact(to) => core.compact(to).unwrap(),
        Resolved::ApplySnapshot(s) => return core.apply_snapshot(s).is_ok(),
        Resolved::SetHardState(hs) => core.set_hardstate(hs),
        Resolved::SetConfState(cs) => core.set_conf_state(cs),
    }
    true
}

fn apply_store(s: &mut WalStorage, op: &Resolved) -> Result<(), Error> {
    match op.clone() {
        Resolved::Append(ents) => s.append(&ents),
        Resolved::Compact(to) => s.compact(to),
        Resolved::ApplySnapshot(snap) => s.apply_snapshot(snap),
        Resolved::SetHardState(hs) => s.set_hard_state(hs),
        Resolved::SetConfState(cs) => s.set_conf_state(cs),
    }
}

/// Every `Storage` method of `s` answers as the model does.
fn assert_same(s: &mut WalStorage, m: &MemStorage, step: &str) {
    let ms = m.initial_state().unwrap();
    let ss = s.initial_state().unwrap();
    assert_eq!(ss.hard_state, ms.hard_state, "{step}: hard state");
    assert_eq!(ss.conf_state, ms.conf_state, "{step}: conf state");
    let (first, last) = (m.first_index().unwrap(), m.last_index().unwrap());
    assert_eq!(s.first_index().unwrap(), first, "{step}: first index");
    assert_eq!(s.last_index().unwrap(), last, "{step}: last index");
    for i in first.saturating_sub(2)..=last + 2 {
        assert_eq!(s.term(i), m.term(i), "{step}: term({i})");
    }
    let has_entries = last >= first;
    let lows = [first.saturating_sub(1), first, (first + last) / 2, last];
    for &lo in &lows {
        // MemStorage panics on an empty log unless `lo` is compacted.
        if !has_entries && lo >= first {
            continue;
        }
        for hi in [lo, lo + 1, (lo + last).div_ceil(2), last + 1] {
            if hi < lo || hi > last + 1 {
                continue;
            }
            for max in [None, Some(0), Some(150), Some(400), Some(u64::MAX)] {
                assert_eq!(
                    s.entries(lo, hi, max, ctx()),
                    m.entries(lo, hi, max, ctx()),
                    "{step}: entries({lo}, {hi}, {max:?})"
                );
            }
        }
    }
    // Snapshots: MemStorage answers at its commit index. Report that as applied and compare.
    // (It panics unless the commit index is the snapshot's or that of an entry it holds.)
    let commit = ms.hard_state.commit;
    let snap_index = s.wal().snapshot_metadata().index;
    if commit > 0 && (commit == snap_index || (has_entries && (first..=last).contains(&commit))) {
        let want = m.snapshot(0, 0).unwrap();
        let meta = want.get_metadata();
        s.set_applied(meta.index, meta.term, meta.get_conf_state().clone());
        assert_eq!(s.snapshot(0, 2).unwrap(), want, "{step}: snapshot");
        assert_eq!(s.snapshot(commit, 2).unwrap(), want, "{step}: snapshot");
        assert_eq!(
            s.snapshot(commit + 1, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            )),
            "{step}: snapshot past applied"
        );
    }
}

fn run_model(ops: Vec<Op>, segment_size: u64, cache: u64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = storage_cfg(segment_size, cache);
    let mut store = Some(open(dir.path(), &cfg));
    let mut model = MemStorage::new();
    let mut synced: Vec<Resolved> = Vec::new();
    let mut pending: Vec<Resolved> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let step = format!("step {n} {op:?}");
        let s = store.as_mut().unwrap();
        match op {
            Op::Sync => {
                s.sync().unwrap();
                // Nothing unsynced, unless the sync started a segment (its header is).
                assert!(s.wal().unsynced_len() == 0 || s.wal().synced_len() == 0);
                synced.append(&mut pending);
            }
            Op::Reopen => {
                drop(store.take());
                store = Some(open(dir.path(), &cfg));
                synced.append(&mut pending);
            }
            Op::Crash => {
                store.take().unwrap().simulate_crash(0).unwrap();
                store = Some(open(dir.path(), &cfg));
                pending.clear();
                model = MemStorage::new();
                for r in &synced {
                    assert!(apply_model(&model, r));
                }
            }
            _ => {
                let r = resolve(op, &model).unwrap();
                let accepted = apply_model(&model, &r);
                let got = apply_store(s, &r);
                if accepted {
                    got.unwrap_or_else(|e| panic!("{step}: {e}"));
                    pending.push(r);
                } else {
                    assert!(
                        matches!(got, Err(Error::SnapshotOutOfDate { .. })),
                        "{step}: {got:?}"
                    );
                }
            }
        }
        assert_same(store.as_mut().unwrap(), &model, &step);
    }
    // A final restart must see everything that was synced, and a final sync + restart all.
    let mut s = store.take().unwrap();
    s.sync().unwrap();
    drop(s);
    let mut s = open(dir.path(), &cfg);
    assert_same(&mut s, &model, "final reopen");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn behaves_like_mem_storage_across_restarts_and_crashes(
        ops in proptest::collection::vec(op(), 1..80),
        segment_size in prop_oneof![Just(150u64), Just(600), Just(1 << 20)],
        cache in prop_oneof![Just(0u64), Just(300), Just(1 << 20)],
    ) {
        run_model(ops, segment_size, cache);
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots and the entry cache.

#[test]
fn snapshot_answers_with_the_applied_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = storage_cfg(1 << 20, 1 << 20);
    let mut s = open(dir.path(), &cfg);
    let unavailable = Err(raft::Error::Store(
        StorageError::SnapshotTemporarilyUnavailable,
    ));
    assert_eq!(s.snapshot(0, 2), unavailable, "nothing applied yet");
    s.append(&(1..=10).map(|i| entry(i, 2, 8)).collect::<Vec<_>>())
        .unwrap();
    s.set_applied(7, 2, conf(vec![1, 2, 3]));
    let snap = s.snapshot(5, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 7);
    assert_eq!(snap.get_metadata().term, 2);
    assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
    assert!(snap.data.is_empty());
    assert_eq!(s.snapshot(8, 2), unavailable);

    // Installing a snapshot makes it the applied state, also after a restart.
    s.apply_snapshot(snapshot(20, 3, vec![1, 2])).unwrap();
    assert_eq!(s.snapshot(20, 2).unwrap().get_metadata().index, 20);
    s.sync().unwrap();
    drop(s);
    let s = open(dir.path(), &cfg);
    assert_eq!(s.applied().index, 20);
    assert_eq!(s.snapshot(0, 2).unwrap(), snapshot(20, 3, vec![1, 2]));
}

#[test]
fn old_entries_are_read_back_from_disk_when_the_cache_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = storage_cfg(4096, 2000);
    let mut s = open(dir.path(), &cfg);
    let all: Vec<Entry> = (1..=200).map(|i| entry(i, 1 + i / 64, 100)).collect();
    for chunk in all.chunks(7) {
        s.append(chunk).unwrap();
    }
    let cached = s.cached_entries();
    assert!(cached > 0 && cached < 25, "{cached} cached");
    assert_eq!(s.entries(1, 201, None, ctx()).unwrap(), all);
    assert_eq!(
        s.entries(150, 201, None, ctx()).unwrap(),
        all[149..].to_vec()
    );
    s.sync().unwrap();
    drop(s);

    let s = open(dir.path(), &cfg);
    assert_eq!(s.cached_entries(), cached, "the cache is warmed on open");
    assert_eq!(s.entries(1, 201, None, ctx()).unwrap(), all);
    let mut limited = all.clone();
    raft::util::limit_size(&mut limited, Some(1000));
    assert_eq!(s.entries(1, 201, Some(1000), ctx()).unwrap(), limited);
}

// ---------------------------------------------------------------------------------------------
// RawNodes on WalStorage.

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn raft_config(id: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        ..Config::default()
    }
}

/// The storage side of the Ready loop in raft-rs 0.7's order (applying = `set_applied`).
/// Returns the messages to send.
fn handle_ready(node: &mut RawNode<WalStorage>) -> Vec<Message> {
    if !node.has_ready() {
        return Vec::new();
    }
    let mut rd = node.ready();
    let mut out = rd.take_messages();
    let store = node.mut_store();
    if !rd.snapshot().is_empty() {
        store.apply_snapshot(rd.snapshot().clone()).unwrap();
    }
    apply(store, rd.take_committed_entries());
    store.append(rd.entries()).unwrap();
    if let Some(hs) = rd.hs() {
        store.set_hard_state(hs.clone()).unwrap();
    }
    store.sync().unwrap();
    out.extend(rd.take_persisted_messages());
    let mut light = node.advance(rd);
    if let Some(commit) = light.commit_index() {
        node.mut_store().set_commit(commit).unwrap();
        node.mut_store().sync().unwrap();
    }
    out.extend(light.take_messages());
    apply(node.mut_store(), light.take_committed_entries());
    node.advance_apply();
    out
}

fn apply(store: &mut WalStorage, entries: Vec<Entry>) {
    for e in entries {
        let cs = store.conf_state().clone();
        store.set_applied(e.index, e.term, cs);
    }
}

/// Nodes 1..=n over WalStorage; `None` while a node is down.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<RawNode<WalStorage>>>,
    cfg: StorageConfig,
    /// Messages to or from these nodes are dropped.
    isolated: Vec<u64>,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let cfg = storage_cfg(2048, 1 << 20);
        let mut c = Cluster {
            dirs: Vec::new(),
            nodes: Vec::new(),
            cfg,
            isolated: Vec::new(),
        };
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path(), &c.cfg);
            store.set_conf_state(conf((1..=n).collect())).unwrap();
            store.sync().unwrap();
            c.dirs.push(dir);
            c.nodes.push(Some(
                RawNode::new(&raft_config(id), store, &logger()).unwrap(),
            ));
        }
        c
    }

    fn node(&mut self, id: u64) -> &mut RawNode<WalStorage> {
        self.nodes[id as usize - 1].as_mut().expect("node is up")
    }

    /// Runs Ready loops and delivers messages until nothing moves.
    fn settle(&mut self) {
        let mut inbox: VecDeque<Message> = VecDeque::new();
        loop {
            for node in self.nodes.iter_mut().flatten() {
                inbox.extend(handle_ready(node));
            }
            if inbox.is_empty() {
                return;
            }
            while let Some(m) = inbox.pop_front() {
                if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
                    continue;
                }
                if let Some(node) = self.nodes[m.to as usize - 1].as_mut() {
                    let _ = node.step(m);
                }
            }
        }
    }

    fn tick_leader(&mut self, leader: u64, ticks: usize) {
        for _ in 0..ticks {
            self.node(leader).tick();
            self.settle();
        }
    }

    /// Stops node `id` and starts it again from its directory.
    fn restart(&mut self, id: u64) {
        drop(self.nodes[id as usize - 1].take());
        let store = open(self.dirs[id as usize - 1].path(), &self.cfg);
        self.nodes[id as usize - 1] =
            Some(RawNode::new(&raft_config(id), store, &logger()).expect("restart"));
    }
}

#[test]
fn single_node_commits_and_restarts() {
    let mut c = Cluster::new(1);
    c.node(1).campaign().unwrap();
    c.settle();
    for i in 0..20u8 {
        c.node(1).propose(vec![], vec![i; 64]).unwrap();
        c.settle();
    }
    let last = c.node(1).store().last_index().unwrap();
    let applied = c.node(1).store().applied().index;
    assert_eq!(applied, last);
    c.node(1).mut_store().compact(applied).unwrap();
    c.node(1).mut_store().sync().unwrap();
    c.restart(1);
    let store = c.node(1).store();
    assert_eq!(store.last_index().unwrap(), last);
    assert_eq!(store.first_index().unwrap(), applied);
    assert_eq!(store.hard_state().commit, last);
    c.node(1).campaign().unwrap();
    c.settle();
    c.node(1)
        .propose(vec![], b"after restart".to_vec())
        .unwrap();
    c.settle();
    assert_eq!(c.node(1).store().hard_state().commit, last + 2);
}

/// A lagging follower catches up through a metadata-only snapshot, crashes right after
/// installing it, and restarts without raft-rs's "hs.commit is out of range" panic.
#[test]
fn follower_restarts_after_installing_a_snapshot() {
    let mut c = Cluster::new(3);
    c.isolated.push(3);
    c.node(1).campaign().unwrap();
    c.settle();
    assert_eq!(c.node(1).raft.state, raft::StateRole::Leader);
    for i in 0..30u8 {
        c.node(1).propose(vec![], vec![i; 32]).unwrap();
        c.settle();
    }
    let applied = c.node(1).store().applied().index;
    c.node(1).mut_store().compact(applied).unwrap();
    c.node(1).mut_store().sync().unwrap();
    assert!(c.node(1).store().first_index().unwrap() > 1);

    c.isolated.clear();
    c.tick_leader(1, 3);
    let follower = c.node(3).store();
    assert_eq!(
        follower.wal().snapshot_metadata().index,
        applied,
        "snapshot installed"
    );
    assert!(follower.hard_state().commit >= applied);

    c.restart(3);
    let follower = c.node(3).store();
    assert_eq!(follower.first_index().unwrap(), applied + 1);
    assert!(follower.hard_state().commit >= applied);
    c.node(1).propose(vec![], b"after".to_vec()).unwrap();
    c.settle();
    c.tick_leader(1, 2);
    let leader_last = c.node(1).store().last_index().unwrap();
    assert_eq!(c.node(3).store().last_index().unwrap(), leader_last);
    assert_eq!(c.node(3).store().hard_state().commit, leader_last);
}
