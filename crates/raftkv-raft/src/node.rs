//! The node task: a dedicated thread that owns a [`Core`], ticks it on a timer, takes proposals,
//! ReadIndex requests and peer messages from a channel (batching whatever is queued into one
//! Ready), and routes results back to waiting callers. The thread does the WAL's fsync itself,
//! so it never blocks an async runtime; callers hold a cheap [`NodeHandle`] and await replies.
//!
//! Every waiter has a deadline: a proposal raft drops (no leader) fails at once with
//! [`RequestError::NoLeader`], one that never commits fails with [`RequestError::TimedOut`]. A
//! ReadIndex round that raft drops is retried every few ticks until its deadline; one still
//! unanswered when leadership moves fails with [`RequestError::LeaderChanged`], as in etcd.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use raft::prelude::{ConfChangeV2, ConfState, Message};
use raft::StateRole;
use tokio::sync::{oneshot, watch};

use crate::core::{Core, CoreConfig, SnapshotSource, StateMachine};
use crate::error::{Error, RequestError};
use crate::storage::WalStorage;

/// Where outbound Raft messages go. Implementations must not block: queue and return.
pub trait Transport: Send + 'static {
    /// Sends messages to their `to` peers, best effort (Raft retries what is lost).
    fn send(&self, messages: Vec<Message>);

    /// Streams a state-machine snapshot to `msg.to`, then delivers `msg` (the `MsgSnapshot`
    /// announcing it) so that the peer installs the data (with [`NodeHandle::install_snapshot`])
    /// before it steps the message. Calls `done` with whether the peer got it; the node reports
    /// that to raft. Runs the stream on the transport's own task or thread, never the caller's.
    fn send_snapshot(&self, msg: Message, data: Box<dyn SnapshotSource>, done: SnapshotDone);
}

/// Called by a [`Transport`] when a snapshot stream ends: `true` if the peer installed it.
pub type SnapshotDone = Box<dyn FnOnce(bool) + Send>;

/// Tuning of the node task.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The consensus core's settings.
    pub core: CoreConfig,
    /// Length of one Raft tick (etcd: 100 ms heartbeat = 1 tick, election = 10 ticks).
    pub tick: Duration,
    /// How long a proposal or read may wait before it fails with "request timed out".
    pub request_timeout: Duration,
}

impl NodeConfig {
    /// etcd-like defaults for node `id`.
    pub fn new(id: u64) -> Self {
        NodeConfig {
            core: CoreConfig::new(id),
            tick: Duration::from_millis(100),
            request_timeout: Duration::from_secs(7),
        }
    }
}

/// What a node reports about itself, also published on every change of leader or role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// The leader's id, 0 when unknown.
    pub leader: u64,
    /// The current term.
    pub term: u64,
    /// This node's role.
    pub role: StateRole,
    /// The last applied index.
    pub applied: u64,
}

enum Command<O> {
    Propose(Vec<u8>, Reply<O>),
    ConfChange(ConfChangeV2, Reply<ConfState>),
    TransferLeader(u64),
    Read(oneshot::Sender<Result<u64, RequestError>>),
    Step(Box<Message>),
    InstallSnapshot(
        Box<Message>,
        Box<dyn std::io::Read + Send>,
        oneshot::Sender<bool>,
    ),
    SnapshotReport(u64, bool),
    Campaign,
    Unreachable(u64),
    Replication(oneshot::Sender<Option<Replication>>),
    Stop,
}

/// The leader's view of replication: each member's matched index, and the leader's last index.
pub type Replication = (HashMap<u64, u64>, u64);

/// A cloneable handle to a running node. Dropping every handle stops the node.
pub struct NodeHandle<O> {
    id: u64,
    tx: mpsc::Sender<Command<O>>,
    status: watch::Receiver<Status>,
}

impl<O> Clone for NodeHandle<O> {
    fn clone(&self) -> Self {
        NodeHandle {
            id: self.id,
            tx: self.tx.clone(),
            status: self.status.clone(),
        }
    }
}

impl<O: Send + 'static> NodeHandle<O> {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Proposes `data` and waits until it is applied here; returns the state machine's output.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Propose(data, tx))
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Waits until this node has applied everything committed when the call was made (Raft
    /// ReadIndex): a read served after this is linearizable. Returns the read index.
    pub async fn read_index(&self) -> Result<u64, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Read(tx))
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Proposes a membership change (add/remove voters, add or promote learners; joint
    /// consensus is left automatically) and waits until it is applied here; returns the new
    /// configuration.
    pub async fn change_membership(&self, cc: ConfChangeV2) -> Result<ConfState, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::ConfChange(cc, tx))
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Asks the leader (this node must be it) to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(Command::TransferLeader(to));
    }

    /// Hands a message from a peer to the node.
    pub fn step(&self, m: Message) {
        let _ = self.tx.send(Command::Step(Box::new(m)));
    }

    /// Installs a snapshot stream received from the leader, then steps the `MsgSnapshot` that
    /// announced it. Returns whether the state machine accepted the data.
    pub async fn install_snapshot(
        &self,
        msg: Message,
        data: Box<dyn std::io::Read + Send>,
    ) -> bool {
        match self.send_install(msg, data) {
            Some(rx) => rx.await.unwrap_or(false),
            None => false,
        }
    }

    /// [`NodeHandle::install_snapshot`] for a plain thread (not inside an async runtime).
    pub fn install_snapshot_blocking(
        &self,
        msg: Message,
        data: Box<dyn std::io::Read + Send>,
    ) -> bool {
        match self.send_install(msg, data) {
            Some(rx) => rx.blocking_recv().unwrap_or(false),
            None => false,
        }
    }

    fn send_install(
        &self,
        msg: Message,
        data: Box<dyn std::io::Read + Send>,
    ) -> Option<oneshot::Receiver<bool>> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::InstallSnapshot(Box::new(msg), data, tx);
        self.tx.send(cmd).ok().map(|()| rx)
    }

    /// Tells Raft that peer `id` could not be reached (the transport's dial failed), so the
    /// leader probes it instead of streaming appends into a dead link.
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.tx.send(Command::Unreachable(id));
    }

    /// On the leader: how far each member's log matches (to check that a learner caught up);
    /// `None` on a follower.
    pub async fn replication(&self) -> Result<Option<Replication>, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Replication(tx))
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    /// Asks the node to start an election now.
    pub fn campaign(&self) {
        let _ = self.tx.send(Command::Campaign);
    }

    /// Stops the node: pending requests fail with [`RequestError::Stopped`] and the node thread
    /// exits after its current Ready. (The node also stops when every handle is dropped.)
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// The latest status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver that sees every change of leader, role or term.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }
}

/// Starts node `cfg.core.id` on its own thread. `voters` bootstraps a fresh log.
pub fn start<M>(
    cfg: NodeConfig,
    storage: WalStorage,
    sm: M,
    voters: &[u64],
    transport: impl Transport,
) -> Result<(NodeHandle<M::Output>, thread::JoinHandle<()>), Error>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    let core = Core::new(cfg.core.clone(), storage, sm, voters)?;
    let (tx, rx) = mpsc::channel();
    let (status_tx, status_rx) = watch::channel(status_of(&core));
    let id = cfg.core.id;
    let task = Task {
        core,
        transport,
        cfg,
        next_request: boot_nonce(id),
        proposals: HashMap::new(),
        conf_changes: HashMap::new(),
        reads: Vec::new(),
        read_rounds: HashMap::new(),
        next_round: 1,
        status: status_tx,
        commands: tx.clone(),
    };
    // The thread logs inside the caller's span (e.g. the binary's `node{name=...}`).
    let span = tracing::Span::current();
    let join = thread::Builder::new()
        .name(format!("raft-node-{id}"))
        .spawn(move || span.in_scope(|| task.run(rx)))
        .map_err(|e| Error::NodeConfig(format!("cannot start node thread: {e}")))?;
    Ok((
        NodeHandle {
            id,
            tx,
            status: status_rx,
        },
        join,
    ))
}

/// Request ids: node id in the top 16 bits, a per-boot nonce, then a counter, so ids of entries
/// replayed from an earlier run do not meet this run's waiters.
fn boot_nonce(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (id << 48) | ((nanos & 0xffff) << 32)
}

fn status_of<M: StateMachine>(core: &Core<M>) -> Status {
    Status {
        id: core.id(),
        leader: core.leader_id(),
        term: core.term(),
        role: core.role(),
        applied: core.applied(),
    }
}

type Reply<O> = oneshot::Sender<Result<O, RequestError>>;

struct PendingRead {
    reply: oneshot::Sender<Result<u64, RequestError>>,
    deadline: Instant,
    /// The ReadIndex round it waits on (0 = not yet issued), or the index once answered.
    round: u64,
    index: Option<u64>,
}

struct Task<M: StateMachine, T> {
    core: Core<M>,
    transport: T,
    cfg: NodeConfig,
    next_request: u64,
    /// Request id -> (reply, deadline).
    proposals: HashMap<u64, (Reply<M::Output>, Instant)>,
    /// Request id -> (reply, deadline) for membership changes.
    conf_changes: HashMap<u64, (Reply<ConfState>, Instant)>,
    reads: Vec<PendingRead>,
    /// Round id -> tick it was issued at.
    read_rounds: HashMap<u64, u64>,
    next_round: u64,
    status: watch::Sender<Status>,
    /// A sender into its own command channel, for snapshot completion reports.
    commands: mpsc::Sender<Command<M::Output>>,
}

/// Ticks after which an unanswered ReadIndex round is issued again.
const READ_RETRY_TICKS: u64 = 3;

impl<M: StateMachine, T: Transport> Task<M, T>
where
    M::Output: Send + 'static,
{
    fn run(mut self, rx: mpsc::Receiver<Command<M::Output>>) {
        let mut ticks = 0u64;
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Command::Stop) => break,
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Batch whatever else is queued into the same Ready.
            let mut stop = false;
            while let Ok(cmd) = rx.try_recv() {
                if matches!(cmd, Command::Stop) {
                    stop = true;
                    break;
                }
                self.handle(cmd);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.core.tick();
                ticks += 1;
                next_tick += self.cfg.tick;
                if next_tick < now {
                    next_tick = now + self.cfg.tick;
                }
                self.expire(now);
            }
            self.issue_reads(ticks);
            if let Err(e) = self.advance() {
                tracing::error!(node = self.core.id(), error = %e, "raft node stopped on a fatal error");
                break;
            }
            if stop {
                break;
            }
        }
        for (_, (reply, _)) in self.proposals.drain() {
            let _ = reply.send(Err(RequestError::Stopped));
        }
        for (_, (reply, _)) in self.conf_changes.drain() {
            let _ = reply.send(Err(RequestError::Stopped));
        }
        for r in self.reads.drain(..) {
            let _ = r.reply.send(Err(RequestError::Stopped));
        }
    }

    fn handle(&mut self, cmd: Command<M::Output>) {
        let deadline = Instant::now() + self.cfg.request_timeout;
        match cmd {
            Command::Propose(data, reply) => {
                self.next_request += 1;
                let id = self.next_request;
                match self.core.propose(id, data) {
                    Ok(()) => {
                        self.proposals.insert(id, (reply, deadline));
                    }
                    Err(Error::Raft(raft::Error::ProposalDropped)) => {
                        let _ = reply.send(Err(RequestError::NoLeader));
                    }
                    Err(e) => {
                        tracing::warn!(node = self.core.id(), error = %e, "proposal refused");
                        let _ = reply.send(Err(RequestError::NoLeader));
                    }
                }
            }
            Command::ConfChange(cc, reply) => {
                self.next_request += 1;
                let id = self.next_request;
                match self.core.propose_conf_change(id, cc) {
                    Ok(()) => {
                        self.conf_changes.insert(id, (reply, deadline));
                    }
                    Err(e) => {
                        tracing::warn!(node = self.core.id(), error = %e, "conf change refused");
                        let _ = reply.send(Err(RequestError::NoLeader));
                    }
                }
            }
            Command::TransferLeader(to) => self.core.transfer_leader(to),
            Command::Read(reply) => self.reads.push(PendingRead {
                reply,
                deadline,
                round: 0,
                index: None,
            }),
            Command::Step(m) if m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot => {
                // Only `install_snapshot` may step one: the data must be installed first.
                tracing::warn!(
                    node = self.core.id(),
                    from = m.from,
                    "snapshot message without its data dropped"
                );
            }
            Command::Step(m) => {
                if let Err(e) = self.core.step(*m) {
                    tracing::debug!(node = self.core.id(), error = %e, "message not stepped");
                }
            }
            Command::InstallSnapshot(msg, mut data, reply) => {
                let index = msg.get_snapshot().get_metadata().index;
                let ok = match self.core.state_machine_mut().restore(&mut data) {
                    Ok(()) => match self.core.step(*msg) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(node = self.core.id(), index, error = %e, "snapshot message not stepped");
                            false
                        }
                    },
                    Err(e) => {
                        tracing::warn!(node = self.core.id(), index, error = %e, "snapshot not installed");
                        false
                    }
                };
                let _ = reply.send(ok);
            }
            Command::SnapshotReport(to, ok) => self.core.report_snapshot(to, ok),
            Command::Unreachable(id) => self.core.report_unreachable(id),
            Command::Replication(reply) => {
                let _ = reply.send(self.core.replication());
            }
            Command::Stop => {}
            Command::Campaign => {
                if let Err(e) = self.core.campaign() {
                    tracing::debug!(node = self.core.id(), error = %e, "campaign refused");
                }
            }
        }
    }

    /// Starts one ReadIndex round for every read not yet covered by a live round.
    fn issue_reads(&mut self, ticks: u64) {
        let stale: Vec<u64> = self
            .read_rounds
            .iter()
            .filter(|(_, at)| ticks >= *at + READ_RETRY_TICKS)
            .map(|(r, _)| *r)
            .collect();
        for r in &stale {
            self.read_rounds.remove(r);
        }
        let needs_round =
            |r: &PendingRead| r.index.is_none() && (r.round == 0 || stale.contains(&r.round));
        if !self.reads.iter().any(needs_round) {
            return;
        }
        let round = self.next_round;
        self.next_round += 1;
        for r in self.reads.iter_mut().filter(|r| needs_round(r)) {
            r.round = round;
        }
        self.read_rounds.insert(round, ticks);
        self.core.read_index(round.to_be_bytes().to_vec());
    }

    fn expire(&mut self, now: Instant) {
        expire_waiters(&mut self.proposals, now);
        expire_waiters(&mut self.conf_changes, now);
        let (keep, expired): (Vec<_>, Vec<_>) =
            self.reads.drain(..).partition(|r| r.deadline > now);
        self.reads = keep;
        for r in expired {
            let _ = r.reply.send(Err(RequestError::TimedOut));
        }
    }

    fn send_snapshot(&mut self, m: Message) {
        let to = m.to;
        match self.core.state_machine().snapshot() {
            Ok(data) => {
                let tx = self.commands.clone();
                let done: SnapshotDone = Box::new(move |ok| {
                    let _ = tx.send(Command::SnapshotReport(to, ok));
                });
                tracing::info!(
                    node = self.core.id(),
                    to,
                    index = m.get_snapshot().get_metadata().index,
                    "streaming snapshot"
                );
                self.transport.send_snapshot(m, data, done);
            }
            Err(e) => {
                tracing::warn!(node = self.core.id(), to, error = %e, "no snapshot for a lagging follower");
                self.core.report_snapshot(to, false);
            }
        }
    }

    fn advance(&mut self) -> Result<(), Error> {
        let mut snapshots = Vec::new();
        let transport = &self.transport;
        let mut send = |messages: Vec<Message>| {
            let (snaps, rest): (Vec<_>, Vec<_>) = messages
                .into_iter()
                .partition(|m| m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot);
            snapshots.extend(snaps);
            if !rest.is_empty() {
                transport.send(rest);
            }
        };
        // Appends leave before this node's fsync; the rest (votes, acks) after it.
        let mut progress = self.core.advance_with(&mut send)?;
        send(std::mem::take(&mut progress.messages));
        for m in snapshots {
            self.send_snapshot(m);
        }
        for a in progress.applied {
            if let Some((reply, _)) = self.proposals.remove(&a.request_id) {
                let _ = reply.send(Ok(a.output));
            }
        }
        for (id, cs) in progress.conf_changes {
            if let Some((reply, _)) = self.conf_changes.remove(&id) {
                let _ = reply.send(Ok(cs));
            }
        }
        for rs in progress.reads {
            let Ok(round) = <[u8; 8]>::try_from(&rs.request_ctx[..]).map(u64::from_be_bytes) else {
                continue;
            };
            self.read_rounds.remove(&round);
            for r in self.reads.iter_mut().filter(|r| r.round == round) {
                r.index = Some(rs.index);
            }
        }
        let applied = self.core.applied();
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .reads
            .drain(..)
            .partition(|r| r.index.is_some_and(|i| i <= applied));
        self.reads = waiting;
        for r in ready {
            let _ = r.reply.send(Ok(r.index.unwrap_or(applied)));
        }
        let status = status_of(&self.core);
        let old_leader = self.status.borrow().leader;
        if old_leader != 0 && status.leader != old_leader {
            // As etcd: a read whose ReadIndex round had not returned when leadership moved fails
            // with "leader changed" (the client retries); reads already holding an index wait on.
            let (lost, keep): (Vec<_>, Vec<_>) = self
                .reads
                .drain(..)
                .partition(|r| r.index.is_none() && r.round != 0);
            self.reads = keep;
            self.read_rounds.clear();
            for r in lost {
                let _ = r.reply.send(Err(RequestError::LeaderChanged));
            }
        }
        self.status.send_if_modified(|s| {
            let changed = (s.leader, s.term, s.role) != (status.leader, status.term, status.role);
            s.applied = status.applied;
            if changed {
                *s = status;
            }
            changed
        });
        Ok(())
    }
}

/// Answers every waiter past its deadline with "request timed out".
fn expire_waiters<O>(waiters: &mut HashMap<u64, (Reply<O>, Instant)>, now: Instant) {
    let late: Vec<u64> = waiters
        .iter()
        .filter(|(_, (_, deadline))| *deadline <= now)
        .map(|(id, _)| *id)
        .collect();
    for id in late {
        if let Some((reply, _)) = waiters.remove(&id) {
            let _ = reply.send(Err(RequestError::TimedOut));
        }
    }
}
