//! The consensus core: one raft-rs `RawNode`, its WAL-backed storage and the state machine,
//! driven by explicit calls. It does no I/O but the WAL and reads no clock: time moves only
//! through [`Core::tick`]. The async node task and the deterministic test harness both wrap it.
//!
//! [`Core::advance`] runs raft-rs 0.7's Ready loop in its required order: send `messages()`;
//! apply an incoming snapshot; apply committed entries; append entries and hard state to the WAL
//! and fsync once (group commit); only then release `persisted_messages()`; `advance`, then handle
//! the `LightReady` the same way.

use protobuf::Message as _;
use raft::prelude::{
    ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, ReadState, Snapshot,
};
use raft::{RawNode, StateRole, Storage};

use crate::error::{Error, Result};
use crate::storage::WalStorage;

/// What the core needs from the replicated state machine.
pub trait StateMachine {
    /// The result of applying one entry, handed back to whoever proposed it.
    type Output;

    /// The index of the last entry applied (and kept, across restarts) by the machine.
    fn applied_index(&self) -> u64;

    /// Applies a committed normal entry with a payload. Entries at or below
    /// [`StateMachine::applied_index`] may arrive again after a restart or a snapshot and must be
    /// skipped (return `None`).
    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Option<Self::Output>;

    /// Entry `index` is committed but carries nothing for the machine (a new leader's empty
    /// entry, a membership change). A machine that produces snapshots must count it in
    /// [`StateMachine::applied_index`], since a snapshot at `index` is announced with that index;
    /// others may ignore it and see such entries again after a restart.
    fn skip(&mut self, index: u64) {
        let _ = index;
    }

    /// The committed membership change `change` (with the proposer's `context`) took effect at
    /// `index`, giving configuration `cs`. Called again for entries replayed after a restart.
    fn on_conf_change(&mut self, index: u64, change: &ConfChangeV2, cs: &ConfState) {
        let _ = (index, change, cs);
    }

    /// Makes everything applied durable; called before the log below it is compacted.
    fn persist(&mut self) -> std::result::Result<(), String>;

    /// A point-in-time copy of the whole state, at least as new as
    /// [`StateMachine::applied_index`], to stream to a follower the log can no longer catch up.
    /// It is written out on the transport's side, so it must not borrow the machine. The default
    /// refuses: such a machine can only serve followers whose entries are still in the log.
    fn snapshot(&self) -> std::result::Result<Box<dyn SnapshotSource>, String> {
        Err("this state machine does not produce snapshots".into())
    }

    /// Replaces the whole state with a stream written by a [`SnapshotSource`] of this kind.
    fn restore(&mut self, data: &mut dyn std::io::Read) -> std::result::Result<(), String> {
        let _ = data;
        Err("this state machine cannot install snapshots".into())
    }
}

/// A state-machine snapshot being streamed to a follower.
pub trait SnapshotSource: Send {
    /// Writes the whole snapshot to `w`.
    fn write_to(&mut self, w: &mut dyn std::io::Write) -> std::result::Result<(), String>;
}

/// Tuning of one core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node's Raft id (non-zero).
    pub id: u64,
    /// Ticks without a leader before campaigning.
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Largest append message, in bytes.
    pub max_size_per_msg: u64,
    /// Appends in flight per follower.
    pub max_inflight_msgs: usize,
    /// Compact the log (after persisting the state machine) every this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept below the compaction point for followers that lag a little.
    pub keep_entries: u64,
}

impl CoreConfig {
    /// etcd's defaults for a 100 ms tick: heartbeat every tick, election after 10.
    pub fn new(id: u64) -> Self {
        CoreConfig {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            snapshot_every: 10_000,
            keep_entries: 5_000,
        }
    }
}

/// An applied entry, reported by [`Core::advance`].
#[derive(Debug)]
pub struct Applied<O> {
    /// The entry's log index.
    pub index: u64,
    /// The request id the proposer attached (0 for none).
    pub request_id: u64,
    /// What the state machine returned.
    pub output: O,
}

/// Everything one [`Core::advance`] produced.
#[derive(Debug)]
pub struct Progress<O> {
    /// Messages to send to peers, in order.
    pub messages: Vec<Message>,
    /// Entries applied, in log order.
    pub applied: Vec<Applied<O>>,
    /// ReadIndex answers: serve the read once applied >= `index`.
    pub reads: Vec<ReadState>,
    /// Set when the leader or this node's role changed: (leader id or 0, role).
    pub role_change: Option<(u64, StateRole)>,
    /// Membership changes applied: (request id, the configuration after it).
    pub conf_changes: Vec<(u64, ConfState)>,
}

impl<O> Default for Progress<O> {
    fn default() -> Self {
        Progress {
            messages: Vec::new(),
            applied: Vec::new(),
            reads: Vec::new(),
            role_change: None,
            conf_changes: Vec::new(),
        }
    }
}

/// One Raft node's consensus state. Not thread-safe by design: one owner drives it.
pub struct Core<M: StateMachine> {
    raw: RawNode<WalStorage>,
    sm: M,
    cfg: CoreConfig,
    applied: u64,
    last_compact: u64,
}

impl<M: StateMachine> Core<M> {
    /// Builds a core over `storage` (opened from the node's WAL directory). A fresh log is
    /// bootstrapped with `voters` as the initial configuration (empty: join a running cluster,
    /// which adds this node through a membership change); an existing log keeps its own.
    pub fn new(cfg: CoreConfig, mut storage: WalStorage, sm: M, voters: &[u64]) -> Result<Self> {
        let initial = storage.initial_state()?;
        // A fresh log is bootstrapped with `voters`; with none, the node joins an existing
        // cluster and learns its configuration from the leader.
        let fresh = initial.conf_state.voters.is_empty()
            && initial.conf_state.learners.is_empty()
            && initial.hard_state == HardState::default();
        if fresh && !voters.is_empty() {
            bootstrap(&mut storage, voters)?;
        }
        let commit = storage.initial_state()?.hard_state.commit;
        let first = storage.first_index()?;
        // The machine may have persisted entries whose commit the WAL had not yet recorded (the
        // hard state is written after applying): replay from the recorded commit; the machine
        // skips what it has.
        let applied = sm.applied_index().min(commit).max(first.saturating_sub(1));
        if sm.applied_index() + 1 < first {
            return Err(Error::NodeConfig(format!(
                "state machine is at index {} but the log starts at {first}: install a snapshot first",
                sm.applied_index()
            )));
        }
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, storage, &crate::logging::logger(cfg.id))?;
        Ok(Core {
            raw,
            sm,
            last_compact: applied,
            applied,
            cfg,
        })
    }

    /// On the leader: each voter's and learner's matched log index, and the leader's last
    /// index; `None` on a follower.
    pub fn replication(&self) -> Option<(std::collections::HashMap<u64, u64>, u64)> {
        if self.raw.raft.state != StateRole::Leader {
            return None;
        }
        let matched = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, pr.matched))
            .collect();
        Some((matched, self.raw.raft.raft_log.last_index()))
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) -> bool {
        self.raw.tick()
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<()> {
        Ok(self.raw.step(m)?)
    }

    /// Proposes `data`; `request_id` comes back with the applied result. Fails at once with
    /// `Error::Raft(raft::Error::ProposalDropped)` when there is no leader to take it.
    pub fn propose(&mut self, request_id: u64, data: Vec<u8>) -> Result<()> {
        Ok(self.raw.propose(request_id.to_be_bytes().to_vec(), data)?)
    }

    /// Proposes a membership change.
    pub fn propose_conf_change(&mut self, request_id: u64, cc: ConfChangeV2) -> Result<()> {
        Ok(self
            .raw
            .propose_conf_change(request_id.to_be_bytes().to_vec(), cc)?)
    }

    /// Starts a ReadIndex round; the answer arrives in [`Progress::reads`] with `ctx`.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.raw.read_index(ctx);
    }

    /// Starts an election now instead of waiting for the election timeout.
    pub fn campaign(&mut self) -> Result<()> {
        Ok(self.raw.campaign()?)
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// Tells raft how streaming a snapshot to `id` ended.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }

    /// Tells raft a peer could not be reached, so it probes instead of pipelining.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// The current leader's id, 0 when unknown.
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// This node's role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// The last applied index.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The commit index as this node knows it.
    pub fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The state machine.
    pub fn state_machine(&self) -> &M {
        &self.sm
    }

    /// The state machine, mutably (e.g. to install snapshot data before stepping the snapshot
    /// message that announces it).
    pub fn state_machine_mut(&mut self) -> &mut M {
        &mut self.sm
    }

    /// The WAL-backed storage.
    pub fn storage(&self) -> &WalStorage {
        self.raw.store()
    }

    /// **For tests:** takes the core apart into its storage and state machine, e.g. to
    /// simulate a power loss with [`WalStorage::simulate_crash`] (the deterministic harness).
    pub fn into_parts(self) -> (WalStorage, M) {
        (self.raw.raft.r.raft_log.store, self.sm)
    }

    /// **For tests:** the election timeout raft-rs last drew (from `thread_rng`, at its last
    /// role or term change).
    pub fn randomized_election_timeout(&self) -> usize {
        self.raw.raft.randomized_election_timeout()
    }

    /// **For tests:** replaces that draw (in `election_tick..2 * election_tick`), so a
    /// deterministic harness takes election timing from its own seeded generator.
    pub fn set_randomized_election_timeout(&mut self, ticks: usize) {
        self.raw.raft.set_randomized_election_timeout(ticks);
    }

    /// Runs one round of the Ready loop if raft has anything ready.
    pub fn advance(&mut self) -> Result<Progress<M::Output>> {
        let mut early = Vec::new();
        let mut out = self.advance_with(&mut |m| early.extend(m))?;
        early.append(&mut out.messages);
        out.messages = early;
        Ok(out)
    }

    /// [`Core::advance`], handing the messages raft allows out before persisting (a leader's
    /// appends, heartbeats) to `send_early` at once, so followers write in parallel with this
    /// node's fsync instead of after it. [`Progress::messages`] then holds only the rest.
    pub fn advance_with(
        &mut self,
        send_early: &mut dyn FnMut(Vec<Message>),
    ) -> Result<Progress<M::Output>> {
        let mut out = Progress::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            out.role_change = Some((ss.leader_id, ss.raft_state));
        }
        let early = rd.take_messages();
        if !early.is_empty() {
            send_early(early);
        }
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        self.apply_entries(rd.take_committed_entries(), &mut out)?;
        let store = self.raw.mut_store();
        if !rd.entries().is_empty() {
            store.append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            store.set_hard_state(hs.clone())?;
        }
        // As etcd: fsync only when raft needs it (new entries, a new term or vote). A Ready that
        // only moves the commit index leaves its record buffered for the next sync; a lost
        // commit index is learned again from the leader.
        if rd.must_sync() {
            store.sync()?;
        }
        out.reads.extend(rd.take_read_states());
        out.messages.extend(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        out.messages.extend(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut out)?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        Ok(out)
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let index = snap.get_metadata().index;
        if self.sm.applied_index() < index {
            return Err(Error::SnapshotNotInstalled {
                needed: index,
                applied: self.sm.applied_index(),
            });
        }
        self.raw.mut_store().apply_snapshot(snap)?;
        self.applied = self.applied.max(index);
        self.last_compact = self.last_compact.max(index);
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Progress<M::Output>) -> Result<()> {
        for e in entries {
            let request_id = <[u8; 8]>::try_from(&e.context[..])
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => self.sm.skip(e.index),
                EntryType::EntryNormal => {
                    if let Some(output) = self.sm.apply(e.index, e.term, &e.data) {
                        out.applied.push(Applied {
                            index: e.index,
                            request_id,
                            output,
                        });
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let (change, cs) = if e.get_entry_type() == EntryType::EntryConfChange {
                        let mut cc = raft::prelude::ConfChange::default();
                        cc.merge_from_bytes(&e.data).map_err(decode(e.index))?;
                        let cs = self.raw.apply_conf_change(&cc)?;
                        let mut single = raft::prelude::ConfChangeSingle::default();
                        single.set_change_type(cc.get_change_type());
                        single.node_id = cc.node_id;
                        let mut v2 = ConfChangeV2::default();
                        v2.mut_changes().push(single);
                        v2.context = cc.context;
                        (v2, cs)
                    } else {
                        let mut cc = ConfChangeV2::default();
                        cc.merge_from_bytes(&e.data).map_err(decode(e.index))?;
                        let cs = self.raw.apply_conf_change(&cc)?;
                        (cc, cs)
                    };
                    self.raw.mut_store().set_conf_state(cs.clone())?;
                    self.sm.on_conf_change(e.index, &change, &cs);
                    self.sm.skip(e.index);
                    out.conf_changes.push((request_id, cs));
                }
            }
            self.applied = e.index;
            let cs = self.raw.raft.prs().conf().to_conf_state();
            self.raw.mut_store().set_applied(e.index, e.term, cs);
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<()> {
        if self.applied < self.last_compact + self.cfg.snapshot_every {
            return Ok(());
        }
        self.sm.persist().map_err(Error::StateMachine)?;
        // Keep every entry the machine has not persisted: one that ignores entries without a
        // payload (`StateMachine::skip`'s default) lags `applied` after leader changes, and a
        // log starting past its index + 1 could not be replayed on restart.
        let to = self
            .applied
            .saturating_sub(self.cfg.keep_entries)
            .min(self.sm.applied_index() + 1);
        if to > self.raw.store().first_index()? {
            self.raw.mut_store().compact(to)?;
        }
        self.last_compact = self.applied;
        Ok(())
    }
}

/// Writes the initial configuration as etcd does: one committed `AddNode` entry per voter at
/// term 1, identical on every founding member, so a node that joins later and replays the log
/// from the start learns the founding members before any later change.
fn bootstrap(storage: &mut WalStorage, voters: &[u64]) -> Result<()> {
    let mut voters = voters.to_vec();
    voters.sort_unstable();
    voters.dedup();
    let mut entries = Vec::with_capacity(voters.len());
    for (i, id) in voters.iter().enumerate() {
        let mut cc = raft::prelude::ConfChange::default();
        cc.set_change_type(raft::prelude::ConfChangeType::AddNode);
        cc.node_id = *id;
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = 1;
        e.index = i as u64 + 1;
        e.data = cc.write_to_bytes().map_err(decode(e.index))?.into();
        entries.push(e);
    }
    storage.append(&entries)?;
    storage.set_conf_state(ConfState {
        voters,
        ..Default::default()
    })?;
    storage.set_hard_state(HardState {
        term: 1,
        vote: 0,
        commit: entries.len() as u64,
        ..Default::default()
    })?;
    storage.sync()
}

fn decode(index: u64) -> impl FnOnce(protobuf::ProtobufError) -> Error {
    move |source| Error::ConfChange { index, source }
}
