//! The lessor: lease deadlines, kept by the leader only, as etcd does.
//!
//! One task owns every deadline. It learns grants and revokes from the state machine, and
//! leadership from the Raft status. On the leader it:
//! - expires leases by proposing revokes through Raft, at most `--lease-revoke-rate` per second
//!   (a mass expiry cannot flood the log and stall writes);
//! - renews leases on keep-alive;
//! - checkpoints remaining TTLs through Raft every `--lease-checkpoint-interval` (for leases
//!   longer than the interval), so that a new leader restores each deadline from the checkpoint
//!   instead of granting every lease its full TTL again (etcd #9395). A keep-alive after a
//!   checkpoint records the renewal (remaining = TTL) before it is acknowledged, so a failover
//!   never shortens a lease the client was told is renewed.
//!
//! Every member, leader or not, notes when it applied each lease's latest countdown checkpoint:
//! that apply time plus the remaining TTL is no earlier than the old leader's deadline (the
//! member applied it after the leader wrote it, and the first renewal after it is recorded as a
//! full-TTL checkpoint, which drops the estimate), and it is what a newly promoted leader uses.
//! Without one (a restart, a renewal since, a lease never checkpointed) the stored remaining
//! TTL, or the full TTL, counts from the promotion, which is later than any renewal.
//!
//! A follower forwards keep-alives and TimeToLive to the leader's client endpoint, marked so
//! the leader never forwards them again.
//!
//! The leader acknowledges a renewal only once it knows it still leads (a ReadIndex round, or
//! the commit of the renewal's checkpoint): a leader that was paused, or cut off, and has not
//! yet heard of its successor would otherwise acknowledge renewals the real leader never sees.
//! A keep-alive of a lease already past its deadline waits for the revoke to apply ("not
//! found") or for this member to stop leading (then it is forwarded to the new leader): a
//! member resumed after a pause finds every deadline passed, and must not tell clients their
//! leases are gone while the new leader keeps them (etcd's lessor waits on the lease's revoke or
//! on its demotion the same way).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use raft::StateRole;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use raftkv_proto::raftkvpb::raft_request::Request;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;
use tonic::Status;

use crate::apply::LeaseEvent;
use crate::context::Ctx;
use crate::error::store_status;
use crate::forward::{self, no_leader};

/// etcd's cap on leases per checkpoint entry.
const CHECKPOINT_BATCH: usize = 1000;
/// How long after proposing a revoke the lessor proposes it again if the lease is still there.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// Lessor settings.
#[derive(Clone, Copy, Debug)]
pub struct LessorConfig {
    /// How often remaining TTLs are checkpointed.
    pub checkpoint_interval: Duration,
    /// Most revokes proposed per second.
    pub revoke_rate: u32,
    /// Added to every deadline when this member becomes leader (etcd: the election timeout),
    /// so keep-alives lost during the election do not expire leases.
    pub promotion_grace: Duration,
}

enum Cmd {
    Renew {
        id: i64,
        forwarded: bool,
        reply: oneshot::Sender<Result<i64, Status>>,
    },
    TimeToLive {
        req: LeaseTimeToLiveRequest,
        forwarded: bool,
        reply: oneshot::Sender<Result<LeaseTimeToLiveResponse, Status>>,
    },
}

/// A handle to the lessor task. Cheap to clone.
#[derive(Clone)]
pub struct LessorHandle {
    tx: mpsc::Sender<Cmd>,
}

impl LessorHandle {
    /// Renews lease `id`; returns its TTL, or 0 if there is no such lease (etcd's keep-alive
    /// answer for an unknown lease).
    pub async fn renew(&self, id: i64, forwarded: bool) -> Result<i64, Status> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Renew {
            id,
            forwarded,
            reply,
        })
        .await?;
        rx.await.map_err(|_| stopped())?
    }

    /// The lease's remaining and granted TTL (and keys), from the leader.
    pub async fn time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
        forwarded: bool,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::TimeToLive {
            req,
            forwarded,
            reply,
        })
        .await?;
        rx.await.map_err(|_| stopped())?
    }

    async fn send(&self, cmd: Cmd) -> Result<(), Status> {
        self.tx.send(cmd).await.map_err(|_| stopped())
    }
}

fn stopped() -> Status {
    Status::unavailable(crate::error::STOPPED)
}

struct Lease {
    ttl: i64,
    deadline: Instant,
    /// A checkpoint with a remaining TTL below the full TTL is stored for this lease.
    checkpointed: bool,
    /// When a revoke was last proposed.
    revoking: Option<Instant>,
}

type Job = Pin<Box<dyn Future<Output = JobDone> + Send>>;

enum JobDone {
    Revoke(i64, bool),
    Quiet,
}

/// Starts the lessor task on the current runtime.
pub fn spawn(
    ctx: Ctx,
    events: mpsc::UnboundedReceiver<LeaseEvent>,
    cfg: LessorConfig,
    shutdown: watch::Receiver<bool>,
) -> LessorHandle {
    let (tx, rx) = mpsc::channel(1024);
    let status = ctx.node.watch_status();
    let task = Lessor {
        ctx,
        cfg,
        leader: false,
        leases: HashMap::new(),
        heap: BinaryHeap::new(),
        tokens: f64::from(cfg.revoke_rate),
        refilled: Instant::now(),
        jobs: FuturesUnordered::new(),
        estimates: HashMap::new(),
        forward: None,
        renewals: None,
        expiring: HashMap::new(),
    };
    tokio::spawn(tracing::Instrument::in_current_span(
        task.run(rx, events, status, shutdown),
    ));
    LessorHandle { tx }
}

struct Lessor {
    ctx: Ctx,
    cfg: LessorConfig,
    leader: bool,
    leases: HashMap<i64, Lease>,
    /// Deadlines, lazily deleted: an entry counts only if it matches the lease's deadline.
    heap: BinaryHeap<Reverse<(Instant, i64)>>,
    /// Revoke token bucket.
    tokens: f64,
    refilled: Instant,
    jobs: FuturesUnordered<Job>,
    /// Deadline estimates from applied checkpoints: lease id -> apply time + remaining TTL.
    estimates: HashMap<i64, Instant>,
    /// A client of the leader's endpoint, for forwarding: (leader id, channel).
    forward: Option<(u64, Channel)>,
    /// The open keep-alive stream to the leader, for forwarding: (leader id, its queue).
    renewals: Option<(u64, mpsc::Sender<Renewal>)>,
    /// Keep-alives of leases past their deadline, waiting for the revoke or a demotion:
    /// lease id -> (forwarded, reply).
    expiring: HashMap<i64, Vec<(bool, RenewReply)>>,
}

impl Lessor {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut events: mpsc::UnboundedReceiver<LeaseEvent>,
        mut status: watch::Receiver<raftkv_raft::Status>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut checkpoint = tokio::time::interval(self.cfg.checkpoint_interval);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.on_status(*status.borrow_and_update());
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = shutdown.changed() => break,
                changed = status.changed() => {
                    if changed.is_err() { break; }
                    let s = *status.borrow_and_update();
                    self.on_status(s);
                }
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => break,
                },
                Some(done) = self.jobs.next(), if !self.jobs.is_empty() => self.on_done(done),
                _ = tokio::time::sleep_until(wake.into()) => self.expire(),
                _ = checkpoint.tick() => self.checkpoint(),
            }
        }
    }

    fn on_status(&mut self, s: raftkv_raft::Status) {
        let leader = s.role == StateRole::Leader;
        if leader == self.leader {
            return;
        }
        self.leader = leader;
        self.leases.clear();
        self.heap.clear();
        if leader {
            self.promote();
        }
        // Demoted (or newly leading, which cannot have waiters): the new leader decides.
        self.retry_expiring();
    }

    /// Hands every keep-alive waiting on an expired lease to [`Lessor::renew`] again.
    fn retry_expiring(&mut self) {
        for (id, waiting) in std::mem::take(&mut self.expiring) {
            for (forwarded, reply) in waiting {
                self.renew(id, forwarded, reply);
            }
        }
    }

    /// Loads every lease from the store with its deadline: the checkpointed remaining TTL if
    /// there is one, else the full TTL, plus the promotion grace.
    fn promote(&mut self) {
        let now = Instant::now();
        let leases = match self.ctx.store.leases() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "lessor cannot read leases");
                return;
            }
        };
        let n = leases.len();
        for l in leases {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl.min(l.ttl)
            } else {
                l.ttl
            };
            let deadline = now + secs(left) + self.cfg.promotion_grace;
            self.insert(
                l.id,
                l.ttl,
                deadline,
                l.remaining_ttl > 0 && l.remaining_ttl < l.ttl,
            );
        }
        tracing::info!(leases = n, "lessor promoted: lease deadlines restored");
    }

    fn insert(&mut self, id: i64, ttl: i64, deadline: Instant, checkpointed: bool) {
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline,
                checkpointed,
                revoking: None,
            },
        );
        self.heap.push(Reverse((deadline, id)));
    }

    fn on_event(&mut self, ev: LeaseEvent) {
        match ev {
            LeaseEvent::Checkpointed {
                id,
                remaining,
                renewal: false,
            } => {
                self.estimates.insert(id, Instant::now() + secs(remaining));
            }
            LeaseEvent::Checkpointed {
                id, renewal: true, ..
            } => {
                self.estimates.remove(&id);
            }
            LeaseEvent::Granted { id, .. } => {
                self.estimates.remove(&id);
            }
            LeaseEvent::Revoked(id) => {
                self.estimates.remove(&id);
                for (_, reply) in self.expiring.remove(&id).unwrap_or_default() {
                    let _ = reply.send(Ok(0));
                }
            }
            LeaseEvent::Reset => self.estimates.clear(),
        }
        if !self.leader {
            return;
        }
        match ev {
            LeaseEvent::Checkpointed { .. } => {}
            LeaseEvent::Granted { id, ttl } => {
                self.insert(id, ttl, Instant::now() + secs(ttl), false);
            }
            LeaseEvent::Revoked(id) => {
                self.leases.remove(&id);
            }
            LeaseEvent::Reset => {
                self.leases.clear();
                self.heap.clear();
                self.promote();
                self.retry_expiring();
            }
        }
    }

    fn next_wake(&mut self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            let live = self.leases.get(&id).is_some_and(|l| {
                l.deadline == at || l.revoking.is_some_and(|r| r + REVOKE_RETRY == at)
            });
            if live {
                if self.tokens < 1.0 {
                    // Wait for the next revoke token rather than spin.
                    return at.max(Instant::now() + Duration::from_millis(100));
                }
                return at;
            }
            self.heap.pop();
        }
        far
    }

    fn refill(&mut self, now: Instant) {
        let rate = f64::from(self.cfg.revoke_rate);
        let add = now.duration_since(self.refilled).as_secs_f64() * rate;
        self.tokens = (self.tokens + add).min(rate);
        self.refilled = now;
    }

    fn expire(&mut self) {
        if !self.leader {
            return;
        }
        let now = Instant::now();
        self.refill(now);
        while self.tokens >= 1.0 {
            let Some(Reverse((at, id))) = self.heap.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(l) = self.leases.get_mut(&id) else {
                continue;
            };
            let due = l.deadline == at || l.revoking.is_some_and(|r| r + REVOKE_RETRY == at);
            if !due || l.deadline > now {
                continue;
            }
            l.revoking = Some(now);
            self.heap.push(Reverse((now + REVOKE_RETRY, id)));
            self.tokens -= 1.0;
            tracing::debug!(lease = id, "lease expired; proposing revoke");
            let ctx = self.ctx.clone();
            let term = ctx.node.status().term;
            self.jobs.push(Box::pin(async move {
                // Only a member that still leads, in the term it decided in, may revoke: a
                // leader resumed from a pause finds every deadline passed, and once it has
                // stepped down Raft would forward its proposal to the new leader, which keeps
                // the lease alive.
                let leads = ctx.read_barrier(false).await.is_ok() && {
                    let s = ctx.node.status();
                    s.role == StateRole::Leader && s.term == term
                };
                let ok = leads
                    && ctx
                        .propose(Request::LeaseRevoke(LeaseRevokeRequest { id }))
                        .await
                        .is_ok();
                JobDone::Revoke(id, ok)
            }));
        }
    }

    fn on_done(&mut self, done: JobDone) {
        if let JobDone::Revoke(id, ok) = done {
            if !ok {
                tracing::debug!(lease = id, "revoke did not commit; will retry");
            }
        }
    }

    /// Proposes the remaining TTL of every lease longer than the checkpoint interval.
    fn checkpoint(&mut self) {
        if !self.leader {
            return;
        }
        let now = Instant::now();
        let interval = self.cfg.checkpoint_interval.as_secs() as i64;
        let mut cps: Vec<LeaseCheckpoint> = Vec::new();
        for (id, l) in self.leases.iter_mut() {
            if l.ttl <= interval || l.revoking.is_some() {
                continue;
            }
            let left = ceil_secs(l.deadline.saturating_duration_since(now)).max(1);
            l.checkpointed = left < l.ttl;
            cps.push(LeaseCheckpoint {
                id: *id,
                remaining_ttl: left,
            });
        }
        for batch in cps.chunks(CHECKPOINT_BATCH) {
            let req = LeaseCheckpointRequest {
                checkpoints: batch.to_vec(),
            };
            let ctx = self.ctx.clone();
            self.jobs.push(Box::pin(async move {
                if let Err(e) = ctx.propose(Request::LeaseCheckpoint(req)).await {
                    tracing::debug!(error = %e.message(), "lease checkpoint did not commit");
                }
                JobDone::Quiet
            }));
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Renew {
                id,
                forwarded,
                reply,
            } => self.renew(id, forwarded, reply),
            Cmd::TimeToLive {
                req,
                forwarded,
                reply,
            } => self.time_to_live(req, forwarded, reply),
        }
    }

    fn renew(&mut self, id: i64, forwarded: bool, reply: oneshot::Sender<Result<i64, Status>>) {
        if !self.leader {
            self.forward_renew(id, forwarded, reply);
            return;
        }
        let now = Instant::now();
        let Some(l) = self.leases.get_mut(&id) else {
            // "Not found", once this member is known to still lead and to have applied
            // everything committed before the keep-alive arrived (a new leader may still be
            // applying the grant): if the lease is there by then, the client is asked to retry.
            let ctx = self.ctx.clone();
            self.jobs.push(Box::pin(async move {
                let r = match ctx.read_barrier(false).await {
                    Err(e) => Err(e),
                    Ok(()) => match ctx.store.lease(id, false) {
                        Ok(None) => Ok(0),
                        Ok(Some(_)) => Err(no_leader()),
                        Err(e) => Err(store_status(&e)),
                    },
                };
                let _ = reply.send(r);
                JobDone::Quiet
            }));
            return;
        };
        if l.deadline <= now {
            // Too late to renew: "not found" once the revoke applies, or the new leader's
            // answer if this member stops leading first (see the module docs).
            self.expiring
                .entry(id)
                .or_default()
                .push((forwarded, reply));
            return;
        }
        l.deadline = now + secs(l.ttl);
        l.revoking = None;
        let ttl = l.ttl;
        let checkpointed = std::mem::replace(&mut l.checkpointed, false);
        self.heap.push(Reverse((now + secs(ttl), id)));
        let ctx = self.ctx.clone();
        if !checkpointed {
            // Acknowledged once this member is known to still lead.
            self.jobs.push(Box::pin(async move {
                let r = ctx.read_barrier(false).await;
                let _ = reply.send(r.map(|()| ttl));
                JobDone::Quiet
            }));
            return;
        }
        // A shorter remaining TTL is on record: record the renewal before acknowledging it (its
        // commit also shows this member still leads).
        self.jobs.push(Box::pin(async move {
            let req = LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id,
                    remaining_ttl: ttl,
                }],
            };
            let r = ctx.propose(Request::LeaseCheckpoint(req)).await;
            let _ = reply.send(r.map(|_| ttl));
            JobDone::Quiet
        }));
    }

    fn time_to_live(
        &mut self,
        req: LeaseTimeToLiveRequest,
        forwarded: bool,
        reply: oneshot::Sender<Result<LeaseTimeToLiveResponse, Status>>,
    ) {
        if !self.leader {
            self.forward(forwarded, reply, move |ch| forward_ttl(ch, req));
            return;
        }
        let info = match self.ctx.store.lease(req.id, req.keys) {
            Ok(i) => i,
            Err(e) => {
                let _ = reply.send(Err(store_status(&e)));
                return;
            }
        };
        let rev = self.ctx.store.revision().unwrap_or(0);
        let header = Some(self.ctx.headers.at(rev));
        let resp = match info {
            None => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(info) => {
                let left = self.leases.get(&req.id).map_or(info.ttl, |l| {
                    // etcd truncates the remaining time to whole seconds.
                    l.deadline
                        .saturating_duration_since(Instant::now())
                        .as_secs() as i64
                });
                LeaseTimeToLiveResponse {
                    header,
                    id: req.id,
                    ttl: left,
                    granted_ttl: info.ttl,
                    keys: info.keys,
                }
            }
        };
        let _ = reply.send(Ok(resp));
    }

    /// On a follower: runs `call` against the leader's client endpoint as a job and replies
    /// with its answer. A request already forwarded once, or no known leader, gets "no leader".
    fn forward<T, F>(
        &mut self,
        forwarded: bool,
        reply: oneshot::Sender<Result<T, Status>>,
        call: impl FnOnce(Channel) -> F,
    ) where
        T: Send + 'static,
        F: Future<Output = Result<T, Status>> + Send + 'static,
    {
        let channel = if forwarded {
            None
        } else {
            self.leader_channel()
        };
        let Some(channel) = channel else {
            let _ = reply.send(Err(no_leader()));
            return;
        };
        let answer = call(channel);
        self.jobs.push(Box::pin(async move {
            let _ = reply.send(answer.await);
            JobDone::Quiet
        }));
    }

    /// On a follower: hands a keep-alive to the long-lived stream to the leader (opened on first
    /// use, again after it breaks or leadership moves), so forwarding costs one message, not a
    /// stream per keep-alive (etcd #9911).
    fn forward_renew(
        &mut self,
        id: i64,
        forwarded: bool,
        reply: oneshot::Sender<Result<i64, Status>>,
    ) {
        let leader = self.ctx.node.status().leader;
        let live = self
            .renewals
            .as_ref()
            .filter(|(l, tx)| *l == leader && !tx.is_closed())
            .map(|(_, tx)| tx.clone());
        let tx = match live {
            Some(tx) => tx,
            None => {
                let channel = if forwarded {
                    None
                } else {
                    self.leader_channel()
                };
                let Some(channel) = channel else {
                    let _ = reply.send(Err(no_leader()));
                    return;
                };
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(tracing::Instrument::in_current_span(renewal_stream(
                    channel, rx,
                )));
                self.renewals = Some((leader, tx.clone()));
                tx
            }
        };
        if let Err(
            mpsc::error::TrySendError::Full((_, reply))
            | mpsc::error::TrySendError::Closed((_, reply)),
        ) = tx.try_send((id, reply))
        {
            let _ = reply.send(Err(no_leader()));
        }
    }

    /// A channel to the leader's first client URL, cached per leader.
    fn leader_channel(&mut self) -> Option<Channel> {
        let leader = self.ctx.node.status().leader;
        if let Some((id, ch)) = &self.forward {
            if *id == leader && leader != 0 {
                return Some(ch.clone());
            }
        }
        let ch = forward::channel_to(&self.ctx, leader)?;
        self.forward = Some((leader, ch.clone()));
        Some(ch)
    }
}

fn forwarded_request<T>(msg: T) -> tonic::Request<T> {
    let mut r = forward::request(msg);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// Where a renewal's answer goes.
type RenewReply = oneshot::Sender<Result<i64, Status>>;

/// A keep-alive waiting for the leader's answer.
type Renewal = (i64, oneshot::Sender<Result<i64, Status>>);

/// Runs one keep-alive stream to the leader: requests go out in order and the leader answers a
/// stream's keep-alives in order, so each answer belongs to the oldest request waiting. When the
/// stream breaks, every waiting and queued renewal gets "no leader" (the client retries).
async fn renewal_stream(channel: Channel, mut rx: mpsc::Receiver<Renewal>) {
    let (out_tx, out_rx) = mpsc::channel(1024);
    let mut client = LeaseClient::new(channel);
    let req = forward::request(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    let mut waiting: std::collections::VecDeque<oneshot::Sender<Result<i64, Status>>> =
        std::collections::VecDeque::new();
    let opened = tokio::time::timeout(Duration::from_secs(2), client.lease_keep_alive(req)).await;
    let mut inbound = match opened {
        Ok(Ok(resp)) => Some(resp.into_inner()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "keep-alive stream to the leader refused");
            None
        }
        Err(_) => None,
    };
    while let Some(stream) = inbound.as_mut() {
        tokio::select! {
            next = rx.recv() => match next {
                Some((id, reply)) => {
                    if out_tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                        let _ = reply.send(Err(no_leader()));
                        inbound = None;
                    } else {
                        waiting.push_back(reply);
                    }
                }
                None => inbound = None,
            },
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    if let Some(reply) = waiting.pop_front() {
                        let _ = reply.send(Ok(resp.ttl));
                    }
                }
                Ok(None) | Err(_) => inbound = None,
            },
        }
    }
    rx.close();
    for reply in waiting.drain(..) {
        let _ = reply.send(Err(no_leader()));
    }
    while let Ok((_, reply)) = rx.try_recv() {
        let _ = reply.send(Err(no_leader()));
    }
}

async fn forward_ttl(
    channel: Channel,
    req: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    let mut client = LeaseClient::new(channel);
    client
        .lease_time_to_live(forwarded_request(req))
        .await
        .map(tonic::Response::into_inner)
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn ceil_secs(d: Duration) -> i64 {
    let s = d.as_secs() as i64;
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}
