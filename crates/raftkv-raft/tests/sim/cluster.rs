//! The simulated cluster: N cores, a lossy network and a logical clock, all driven by one seeded
//! [`Rng`]. No threads, no sleeps, no wall clock: a seed replays the same run.
//!
//! One run is a faulty phase (random delays, drops, duplicates, reordering, symmetric and one-way
//! partitions, crashes with and without losing unsynced WAL bytes, restarts, random proposals),
//! then a healing phase (every node up, a clean network) that must reach a single leader and a
//! converged cluster within a bounded number of ticks, then the final checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use raft::prelude::{Message, MessageType};
use raft::StateRole;
use raftkv_raft::{Core, CoreConfig, StorageConfig, WalConfig, WalStorage};

use super::invariants::{log_matching, log_of, Checker};
use super::machine::{Image, Register};
use super::rng::Rng;

/// The shape of one run, derived from its seed alone.
#[derive(Clone, Debug)]
pub(crate) struct RunConfig {
    /// The seed of the run's [`Rng`].
    pub(crate) seed: u64,
    /// Cluster size.
    pub(crate) nodes: u64,
    /// Ticks with faults.
    pub(crate) fault_ticks: u64,
    /// Bound on the ticks the healed cluster may take to converge (liveness).
    pub(crate) settle_ticks: u64,
    /// Keep an event trace and print it on failure.
    pub(crate) verbose: bool,
}

impl RunConfig {
    /// Even seeds run 3 nodes, odd seeds 5.
    pub(crate) fn for_seed(seed: u64) -> Self {
        RunConfig {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            fault_ticks: 400,
            settle_ticks: 400,
            verbose: false,
        }
    }
}

/// What one run did, to show the faults really happened.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// Ticks run in total.
    pub(crate) ticks: u64,
    /// Proposals acknowledged to their proposer.
    pub(crate) acked: u64,
    /// Crashes (process kills and power losses).
    pub(crate) crashes: u64,
    /// Crashes through `WalStorage::simulate_crash`.
    pub(crate) power_losses: u64,
    /// Partitions started.
    pub(crate) partitions: u64,
    /// Snapshot messages delivered (with their state image).
    pub(crate) snapshots: u64,
    /// Nodes whose log was compacted by the end.
    pub(crate) compacted_nodes: u64,
    /// Messages dropped by the network or a partition.
    pub(crate) dropped: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.ticks += o.ticks;
        self.acked += o.acked;
        self.crashes += o.crashes;
        self.power_losses += o.power_losses;
        self.partitions += o.partitions;
        self.snapshots += o.snapshots;
        self.compacted_nodes += o.compacted_nodes;
        self.dropped += o.dropped;
    }
}

/// Fault rates, drawn once per run.
struct Faults {
    drop: f64,
    dup: f64,
    max_delay: u64,
    reorder: bool,
    crash: f64,
    restart: f64,
    partition: f64,
    heal: f64,
    propose: f64,
}

struct Packet {
    at: u64,
    msg: Message,
    /// The sender's state beside a `MsgSnapshot` (raftkv streams state separately).
    image: Option<Image>,
}

struct Node {
    id: u64,
    dir: PathBuf,
    core: Option<Core<Register>>,
    /// (term, role, leader, timeout) when the election timeout was last drawn from our `Rng`.
    pinned: Option<(u64, StateRole, u64, usize)>,
    /// What this node has promised peers, which must survive any crash.
    promised: Promise,
}

/// The durable promises a node made in messages it sent (Raft figure 2, "persistent state ...
/// updated on stable storage before responding to RPCs").
#[derive(Default, Clone, Copy)]
struct Promise {
    /// Highest term of a granted vote or an append acknowledgement.
    term: u64,
    /// The last vote granted: (term, candidate).
    vote: Option<(u64, u64)>,
    /// The index in the last append acknowledgement: the log reaches at least that far.
    acked: u64,
}

/// One simulated cluster.
pub(crate) struct Sim {
    cfg: RunConfig,
    rng: Rng,
    faults: Faults,
    _root: tempfile::TempDir,
    nodes: Vec<Node>,
    voters: Vec<u64>,
    now: u64,
    net: Vec<Packet>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(u64, u64)>,
    next_request: u64,
    /// Request id -> (proposing node, data).
    proposed: HashMap<u64, (u64, Vec<u8>)>,
    /// Request id -> data, once the proposer applied it.
    acked: BTreeMap<u64, Vec<u8>>,
    checker: Checker,
    stats: Stats,
    trace: Vec<String>,
}

fn storage_config() -> StorageConfig {
    StorageConfig {
        wal: WalConfig {
            fsync: false,
            segment_size: 2048,
        },
        entry_cache_bytes: 512,
    }
}

fn core_config(id: u64) -> CoreConfig {
    CoreConfig {
        snapshot_every: 16,
        keep_entries: 4,
        max_size_per_msg: 1024,
        max_inflight_msgs: 16,
        ..CoreConfig::new(id)
    }
}

type Res<T = ()> = Result<T, String>;

impl Sim {
    /// A fresh cluster in a new temporary directory.
    pub(crate) fn new(cfg: RunConfig) -> Res<Sim> {
        let mut rng = Rng::new(cfg.seed);
        let faults = Faults {
            drop: rng.range_f64(0.0, 0.15),
            dup: rng.range_f64(0.0, 0.1),
            max_delay: rng.below(5),
            reorder: rng.chance(0.8),
            crash: rng.range_f64(0.0, 0.03),
            restart: rng.range_f64(0.02, 0.1),
            partition: rng.range_f64(0.0, 0.03),
            heal: rng.range_f64(0.02, 0.1),
            propose: rng.range_f64(0.2, 0.8),
        };
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let voters: Vec<u64> = (1..=cfg.nodes).collect();
        let mut sim = Sim {
            rng,
            faults,
            nodes: voters
                .iter()
                .map(|&id| Node {
                    id,
                    dir: root.path().join(id.to_string()),
                    core: None,
                    pinned: None,
                    promised: Promise::default(),
                })
                .collect(),
            _root: root,
            voters,
            now: 0,
            net: Vec::new(),
            cut: BTreeSet::new(),
            next_request: 1,
            proposed: HashMap::new(),
            acked: BTreeMap::new(),
            checker: Checker::default(),
            stats: Stats::default(),
            trace: Vec::new(),
            cfg,
        };
        for i in 0..sim.nodes.len() {
            std::fs::create_dir_all(&sim.nodes[i].dir).map_err(|e| e.to_string())?;
            sim.start(i)?;
        }
        Ok(sim)
    }

    /// Runs the whole scenario and the final checks.
    pub(crate) fn run(&mut self) -> Res<Stats> {
        for _ in 0..self.cfg.fault_ticks {
            self.tick(true)?;
        }
        self.heal()?;
        self.settle()?;
        self.final_checks()?;
        self.stats.ticks = self.now;
        Ok(self.stats)
    }

    /// Scripted run on a clean network: `writes` proposals, then `elections` leader changes
    /// with no writes (each leaves only an empty entry in the log), then every node crashes and
    /// restarts, and the cluster must converge and pass the final checks.
    pub(crate) fn elections_then_restart(&mut self, writes: u64, elections: u64) -> Res<Stats> {
        self.faults = Faults {
            drop: 0.0,
            dup: 0.0,
            max_delay: 0,
            reorder: false,
            crash: 0.0,
            restart: 0.0,
            partition: 0.0,
            heal: 0.0,
            propose: 0.0,
        };
        self.settle()?;
        for _ in 0..writes {
            let leader = self.leader().expect("settled");
            self.propose(leader);
            self.tick(false)?;
        }
        self.settle()?;
        for _ in 0..elections {
            let leader = self.leader().expect("settled");
            let next = (leader + 1) % self.nodes.len();
            let term = self.nodes[leader].core.as_ref().expect("up").term();
            let to = self.nodes[next].id;
            self.nodes[leader]
                .core
                .as_mut()
                .expect("up")
                .transfer_leader(to);
            self.drain(leader)?;
            self.deliver_due()?;
            let deadline = self.now + self.cfg.settle_ticks;
            while self
                .leader()
                .is_none_or(|l| self.nodes[l].core.as_ref().expect("up").term() == term)
            {
                if self.now >= deadline {
                    return Err(format!("no new leader: {}", self.summary()));
                }
                self.tick(false)?;
            }
        }
        self.faults.propose = 0.0;
        for i in 0..self.nodes.len() {
            self.event(|| format!("crash node {}", i + 1));
            drop(self.nodes[i].core.take());
        }
        self.heal()?;
        self.settle()?;
        self.final_checks()?;
        self.stats.ticks = self.now;
        Ok(self.stats)
    }

    /// The event trace (empty unless verbose).
    pub(crate) fn trace(&self) -> &[String] {
        &self.trace
    }

    fn event(&mut self, what: impl FnOnce() -> String) {
        if self.cfg.verbose {
            let line = format!("t={} {}", self.now, what());
            self.trace.push(line);
        }
    }

    fn start(&mut self, i: usize) -> Res {
        let node = &mut self.nodes[i];
        let (storage, _) = WalStorage::open(node.dir.join("wal"), storage_config())
            .map_err(|e| format!("node {} reopen WAL: {e}", node.id))?;
        check_promises(node.id, &node.promised, &storage)?;
        let reg = Register::load(&node.dir);
        let core = Core::new(core_config(node.id), storage, reg, &self.voters)
            .map_err(|e| format!("node {} restart: {e}", node.id))?;
        node.core = Some(core);
        node.pinned = None;
        self.pin_election_timeout(i);
        Ok(())
    }

    /// raft-rs draws a new election timeout from `thread_rng` whenever it changes term or role;
    /// replace each draw with one from the run's `Rng` so the seed decides everything.
    fn pin_election_timeout(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let key = (core.term(), core.role(), core.leader_id());
        let current = core.randomized_election_timeout();
        if node
            .pinned
            .is_some_and(|(t, r, l, to)| (t, r, l, to) == (key.0, key.1, key.2, current))
        {
            return;
        }
        let election = core_config(node.id).election_tick;
        let ticks = election + self.rng.below(election as u64) as usize;
        core.set_randomized_election_timeout(ticks);
        node.pinned = Some((key.0, key.1, key.2, ticks));
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].core.is_some())
            .collect()
    }

    /// One logical tick: faults, a proposal, every live core ticks, due messages arrive.
    fn tick(&mut self, faulty: bool) -> Res {
        self.now += 1;
        if faulty {
            self.inject_faults()?;
        }
        if self.rng.chance(self.faults.propose) {
            let live = self.live();
            if !live.is_empty() {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.propose(i);
            }
        }
        let mut order = self.live();
        self.rng.shuffle(&mut order);
        for i in order {
            self.nodes[i].core.as_mut().expect("live").tick();
            self.drain(i)?;
        }
        self.deliver_due()?;
        self.check_leaders()
    }

    fn propose(&mut self, i: usize) -> bool {
        let id = self.next_request;
        self.next_request += 1;
        let data = format!("r{id}@{}", self.now).into_bytes();
        let node = self.nodes[i].id;
        let core = self.nodes[i].core.as_mut().expect("live");
        if core.propose(id, data.clone()).is_ok() {
            self.proposed.insert(id, (node, data));
            true
        } else {
            false
        }
    }

    fn inject_faults(&mut self) -> Res {
        let n = self.nodes.len() as u64;
        let live = self.live();
        // Crash, keeping a majority up (partitions still take it away).
        if self.rng.chance(self.faults.crash) && (n - live.len() as u64) < n / 2 {
            let i = live[self.rng.below(live.len() as u64) as usize];
            self.crash(i)?;
        }
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].core.is_none())
            .collect();
        if !down.is_empty() && self.rng.chance(self.faults.restart) {
            let i = down[self.rng.below(down.len() as u64) as usize];
            self.event(|| format!("restart node {}", i + 1));
            self.start(i)?;
        }
        if self.cut.is_empty() && self.rng.chance(self.faults.partition) {
            self.partition();
        } else if !self.cut.is_empty() && self.rng.chance(self.faults.heal) {
            self.event(|| "heal partition".into());
            self.cut.clear();
        }
        Ok(())
    }

    fn crash(&mut self, i: usize) -> Res {
        let core = self.nodes[i].core.take().expect("live");
        self.stats.crashes += 1;
        if self.rng.chance(0.5) {
            // Power loss: unsynced WAL bytes vanish, maybe mid-record (a torn write).
            let keep = if self.rng.chance(0.5) {
                0
            } else {
                self.rng.below(200)
            };
            self.stats.power_losses += 1;
            self.event(|| format!("power loss node {} keep {keep}", i + 1));
            let (storage, _) = core.into_parts();
            storage
                .simulate_crash(keep)
                .map_err(|e| format!("simulate_crash: {e}"))?;
        } else {
            self.event(|| format!("crash node {}", i + 1));
            drop(core);
        }
        Ok(())
    }

    fn partition(&mut self) {
        self.stats.partitions += 1;
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        match self.rng.below(3) {
            0 => {
                // Symmetric split into two groups.
                let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(0.5)).collect();
                for (a, &sa) in ids.iter().zip(&side) {
                    for (b, &sb) in ids.iter().zip(&side) {
                        if sa != sb {
                            self.cut.insert((*a, *b));
                        }
                    }
                }
            }
            1 => {
                // One node cannot send (it still hears everyone).
                let a = ids[self.rng.below(ids.len() as u64) as usize];
                for &b in &ids {
                    if a != b {
                        self.cut.insert((a, b));
                    }
                }
            }
            _ => {
                // Random one-way link failures.
                for &a in &ids {
                    for &b in &ids {
                        if a != b && self.rng.chance(0.3) {
                            self.cut.insert((a, b));
                        }
                    }
                }
            }
        }
        let cut = format!("{:?}", self.cut);
        self.event(|| format!("partition {cut}"));
    }

    /// Runs the Ready loop of node `i` until it has nothing to say, routing what it produced.
    fn drain(&mut self, i: usize) -> Res {
        for _ in 0..16 {
            self.pin_election_timeout(i);
            let core = self.nodes[i].core.as_mut().expect("live");
            let id = core.id();
            let p = core
                .advance()
                .map_err(|e| format!("node {id} advance: {e}"))?;
            if p.messages.is_empty()
                && p.applied.is_empty()
                && p.conf_changes.is_empty()
                && p.role_change.is_none()
                && p.reads.is_empty()
            {
                return Ok(());
            }
            if let Some((_, StateRole::Leader)) = p.role_change {
                let term = core.term();
                self.checker.leader(term, id)?;
                self.checker.leader_complete(core)?;
                if self.cfg.verbose {
                    let now = self.now;
                    self.trace
                        .push(format!("t={now} node {id} leads term {term}"));
                }
            }
            for a in &p.applied {
                let (term, data) = &a.output;
                self.checker.applied(id, a.index, *term, data)?;
                if let Some((proposer, expected)) = self.proposed.get(&a.request_id) {
                    if *proposer == id {
                        if expected != data {
                            return Err(format!(
                                "request {} applied with foreign data at index {}",
                                a.request_id, a.index
                            ));
                        }
                        self.acked.insert(a.request_id, data.clone());
                        self.stats.acked += 1;
                    }
                }
            }
            let image = p
                .messages
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                .then(|| core.state_machine().image(core.applied()));
            let promised = &mut self.nodes[i].promised;
            for m in &p.messages {
                match m.get_msg_type() {
                    MessageType::MsgRequestVoteResponse if !m.reject => {
                        promised.term = promised.term.max(m.term);
                        promised.vote = Some((m.term, m.to));
                    }
                    MessageType::MsgAppendResponse if !m.reject => {
                        promised.term = promised.term.max(m.term);
                        promised.acked = m.index;
                    }
                    _ => {}
                }
            }
            for m in p.messages {
                let image = (m.get_msg_type() == MessageType::MsgSnapshot)
                    .then(|| image.clone().expect("image"));
                self.send(m, image);
            }
        }
        Ok(())
    }

    fn send(&mut self, msg: Message, image: Option<Image>) {
        if self.rng.chance(self.faults.drop) {
            self.stats.dropped += 1;
            if image.is_some() {
                // The sender's transport learns the snapshot stream failed.
                self.net.push(Packet {
                    at: self.now,
                    msg,
                    image: None,
                });
            }
            return;
        }
        // Raft never resends a forwarded proposal and does not deduplicate one (request ids
        // above it do), so a duplicated `MsgPropose` is a second proposal, not a network fault.
        let copies =
            if self.rng.chance(self.faults.dup) && msg.get_msg_type() != MessageType::MsgPropose {
                2
            } else {
                1
            };
        for _ in 0..copies {
            let at = self.now + self.rng.below(self.faults.max_delay + 1);
            self.net.push(Packet {
                at,
                msg: msg.clone(),
                image: image.clone(),
            });
        }
    }

    /// Delivers every message due by now (in random order when reordering), and the replies
    /// they cause that are due too.
    fn deliver_due(&mut self) -> Res {
        for _ in 0..10_000 {
            let (mut due, later): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.net)
                .into_iter()
                .partition(|p| p.at <= self.now);
            self.net = later;
            if due.is_empty() {
                return Ok(());
            }
            if self.faults.reorder {
                self.rng.shuffle(&mut due);
            }
            for p in due {
                let (from, to) = (p.msg.from, p.msg.to);
                let snapshot = p.msg.get_msg_type() == MessageType::MsgSnapshot;
                let i = (to - 1) as usize;
                let lost = snapshot && p.image.is_none();
                if lost || self.cut.contains(&(from, to)) || self.nodes[i].core.is_none() {
                    self.stats.dropped += u64::from(!lost);
                    if snapshot {
                        self.report_snapshot(from, to, false)?;
                    }
                    continue;
                }
                let core = self.nodes[i].core.as_mut().expect("live");
                if let Some(image) = &p.image {
                    // The state stream arrives before the snapshot message that announces it.
                    self.stats.snapshots += 1;
                    if image.applied > core.state_machine().applied {
                        core.state_machine_mut().install(image);
                    }
                }
                let kind = p.msg.get_msg_type();
                match core.step(p.msg) {
                    // A forwarded proposal reaching a node that lost leadership: expected.
                    Ok(()) | Err(raftkv_raft::Error::Raft(raft::Error::ProposalDropped)) => {}
                    Err(e) => return Err(format!("node {to} step {kind:?} from {from}: {e}")),
                }
                self.drain(i)?;
                if snapshot {
                    self.report_snapshot(from, to, true)?;
                }
            }
        }
        Err("message storm: deliveries never quiesce".into())
    }

    /// What a transport does once a snapshot stream ends: tell the sender, so a lost snapshot
    /// is retried instead of pausing the follower forever.
    fn report_snapshot(&mut self, from: u64, to: u64, ok: bool) -> Res {
        let i = (from - 1) as usize;
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.report_snapshot(to, ok);
            self.drain(i)?;
        }
        Ok(())
    }

    fn check_leaders(&mut self) -> Res {
        for node in &self.nodes {
            if let Some(core) = &node.core {
                if core.role() == StateRole::Leader {
                    self.checker.leader(core.term(), core.id())?;
                }
            }
        }
        Ok(())
    }

    /// Every node up, every link healed, no more loss or duplication.
    fn heal(&mut self) -> Res {
        self.event(|| "heal everything".into());
        self.cut.clear();
        self.faults.drop = 0.0;
        self.faults.dup = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Liveness: a leader all agree on, every log applied up to its end, within the bound; then
    /// one more proposal through that leader must reach every node.
    fn settle(&mut self) -> Res {
        self.faults.propose = 0.0;
        let deadline = self.now + self.cfg.settle_ticks;
        while !self.converged() {
            if self.now >= deadline {
                return Err(format!(
                    "liveness: no convergence {} ticks after healing: {}",
                    self.cfg.settle_ticks,
                    self.summary()
                ));
            }
            self.tick(false)?;
        }
        // A fresh write through the leader commits everything before it on every node.
        let leader = self.leader().expect("converged");
        let marker = loop {
            let id = self.next_request;
            if self.propose(leader) {
                break id;
            }
            if self.now >= deadline {
                return Err("liveness: the leader refuses proposals".into());
            }
            self.tick(false)?;
        };
        while !(self.acked.contains_key(&marker) && self.converged()) {
            if self.now >= deadline + self.cfg.settle_ticks {
                return Err(format!(
                    "liveness: marker write not applied everywhere: {}",
                    self.summary()
                ));
            }
            self.tick(false)?;
        }
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.role() == StateRole::Leader)
        })
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let lc = self.nodes[l].core.as_ref().expect("leader");
        let last = raft::Storage::last_index(lc.storage()).expect("last index");
        lc.committed() == last
            && self.nodes.iter().all(|n| {
                n.core.as_ref().is_some_and(|c| {
                    c.leader_id() == lc.id()
                        && c.term() == lc.term()
                        && c.applied() == last
                        && c.state_machine().entries == lc.state_machine().entries
                })
            })
    }

    fn summary(&self) -> String {
        self.nodes
            .iter()
            .map(|n| match &n.core {
                None => format!("[{} down]", n.id),
                Some(c) => format!(
                    "[{} {:?} term {} leader {} commit {} applied {} last {}]",
                    n.id,
                    c.role(),
                    c.term(),
                    c.leader_id(),
                    c.committed(),
                    c.applied(),
                    raft::Storage::last_index(c.storage()).unwrap_or(0)
                ),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn final_checks(&mut self) -> Res {
        let cores: Vec<&Core<Register>> = self
            .nodes
            .iter()
            .map(|n| n.core.as_ref().expect("up"))
            .collect();
        let logs: Vec<_> = cores
            .iter()
            .map(|c| {
                let (first, log) = log_of(c.storage());
                (c.id(), first, log)
            })
            .collect();
        log_matching(&logs)?;
        for c in &cores {
            self.checker
                .log_holds_committed(c, c.committed(), "committed log")?;
            if raft::Storage::first_index(c.storage()).expect("first") > 1 {
                self.stats.compacted_nodes += 1;
            }
        }
        for c in &cores {
            let reg = c.state_machine();
            // State machine safety, end state: the register is the committed sequence.
            let mut seen = BTreeSet::new();
            for (index, term, data) in &reg.entries {
                match self.checker.committed().get(index) {
                    Some((t, d)) if (t, d) == (term, data) => {}
                    other => {
                        return Err(format!(
                            "state machine safety: node {} holds term {term} at index {index}, \
                             committed: {other:?}",
                            c.id()
                        ))
                    }
                }
                if !seen.insert(data.clone()) {
                    return Err(format!(
                        "node {} applied {:?} twice",
                        c.id(),
                        String::from_utf8_lossy(data)
                    ));
                }
            }
            // Durability: every acknowledged write survived every fault, on every node.
            for (request, data) in &self.acked {
                if !seen.contains(data) {
                    return Err(format!(
                        "durability: acknowledged request {request} ({:?}) missing on node {}",
                        String::from_utf8_lossy(data),
                        c.id()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Durability of promises: a restarted node remembers every vote and acknowledgement it sent.
fn check_promises(id: u64, p: &Promise, storage: &WalStorage) -> Res {
    let hs = storage.hard_state();
    let last = raft::Storage::last_index(storage).expect("last index");
    if hs.term < p.term {
        return Err(format!(
            "durability of promises: node {id} voted or acked in term {} but recovered term {}",
            p.term, hs.term
        ));
    }
    if let Some((term, candidate)) = p.vote {
        if hs.term == term && hs.vote != candidate {
            return Err(format!(
                "durability of promises: node {id} voted for {candidate} in term {term} but \
                 recovered vote {}",
                hs.vote
            ));
        }
    }
    if last < p.acked {
        return Err(format!(
            "durability of promises: node {id} acknowledged index {} but recovered last index \
             {last}",
            p.acked
        ));
    }
    Ok(())
}
