//! The state machine: every committed Raft entry, decoded and applied to the MVCC store (one
//! atomic store change per entry, together with its index), plus the membership table and alarms.
//! It runs on the Raft node's thread and never waits on anyone: what others need to know is
//! published on channels (the store revision for watchers, lease grants and revokes for the
//! lessor, the membership table for the services).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;
use raftkv_mvcc::{RequestError, Store};
use raftkv_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    CompactionResponse, DeleteRangeResponse, LeaseCheckpointResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, TxnResponse,
};
use raftkv_proto::raftkvpb::{
    raft_request::Request, MemberAttributes, MemberPeerUrls, RaftRequest,
};
use raftkv_raft::{SnapshotSource, StateMachine};
use tokio::sync::{mpsc, watch};

use crate::members::Cluster;
use crate::snapshot::{self, MemberSnapshot};

/// What applying one request produced.
#[derive(Debug)]
pub enum Response {
    /// A Put.
    Put(PutResponse),
    /// A DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// A Txn.
    Txn(TxnResponse),
    /// A Compaction.
    Compaction(CompactionResponse),
    /// A LeaseGrant.
    LeaseGrant(LeaseGrantResponse),
    /// A LeaseRevoke (or an expiry).
    LeaseRevoke(LeaseRevokeResponse),
    /// A batch of lease checkpoints.
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// An alarm change.
    Alarm(AlarmResponse),
    /// A member's published attributes.
    MemberAttributes,
    /// A member's new peer URLs.
    MemberPeerUrls,
}

/// Why an applied request was refused. Every member refuses it the same way and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The store's refusal, with etcd's message.
    Request(RequestError),
    /// A write refused while the NOSPACE alarm is raised.
    NoSpace,
    /// A member change names a member that is not in the table (removed meanwhile).
    MemberNotFound,
    /// New peer URLs that another member has (added meanwhile).
    PeerUrlsExist,
    /// The entry does not decode, or the store failed (the node is stopping).
    Internal(String),
}

/// The result handed back to the proposer.
pub type Output = Result<Response, ApplyError>;

/// A lease change the lessor must learn about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease was granted with this TTL (seconds).
    Granted {
        /// Lease id.
        id: i64,
        /// Granted TTL.
        ttl: i64,
    },
    /// A lease was revoked or expired.
    Revoked(i64),
    /// A lease's remaining TTL (seconds) was checkpointed by the leader.
    Checkpointed {
        /// Lease id.
        id: i64,
        /// Remaining TTL at the checkpoint.
        remaining: i64,
        /// The remaining TTL is the whole TTL: a renewal was recorded, so later renewals may
        /// go unrecorded and the checkpoint bounds nothing.
        renewal: bool,
    },
    /// The whole store was replaced by a snapshot: reload every lease.
    Reset,
}

/// Where the machine publishes what it applied.
pub struct Outlets {
    /// The store revision after each entry.
    pub revision: watch::Sender<i64>,
    /// The membership table and alarms after each change.
    pub cluster: watch::Sender<Arc<Cluster>>,
    /// Lease grants and revokes.
    pub leases: mpsc::UnboundedSender<LeaseEvent>,
    /// Set once if the store fails: the node must stop.
    pub fatal: watch::Sender<Option<String>>,
}

/// The replicated state machine of a member.
pub struct Machine {
    store: Store,
    cluster: Cluster,
    cluster_path: PathBuf,
    out: Outlets,
}

impl Machine {
    /// A machine over `store` and the membership table `cluster` (kept at `cluster_path`).
    pub fn new(store: Store, cluster: Cluster, cluster_path: PathBuf, out: Outlets) -> Self {
        Machine {
            store,
            cluster,
            cluster_path,
            out,
        }
    }

    fn fail(&self, what: String) -> ApplyError {
        tracing::error!(error = %what, "state machine failed; the node stops");
        self.out.fatal.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(what.clone());
            }
            first
        });
        ApplyError::Internal(what)
    }

    fn publish_revision(&self) {
        if let Ok(rev) = self.store.revision() {
            self.out.revision.send_if_modified(|r| {
                let newer = rev > *r;
                if newer {
                    *r = rev;
                }
                newer
            });
        }
    }

    fn save_cluster(&self) -> Result<(), ApplyError> {
        if let Err(e) = self.cluster.save(&self.cluster_path) {
            return Err(self.fail(e.to_string()));
        }
        self.out
            .cluster
            .send_replace(Arc::new(self.cluster.clone()));
        Ok(())
    }

    /// Applies a request through the store: `None` if `index` was applied before.
    fn store_op<T>(
        &self,
        r: raftkv_mvcc::Result<Option<T>>,
        wrap: impl FnOnce(T) -> Response,
    ) -> Option<Output> {
        match r {
            Ok(None) => None,
            Ok(Some(resp)) => Some(Ok(wrap(resp))),
            Err(e) => match e.as_request() {
                Some(req) => Some(Err(ApplyError::Request(req))),
                None => Some(Err(self.fail(e.to_string()))),
            },
        }
    }

    fn nospace(&self) -> bool {
        self.cluster.has_alarm(AlarmType::Nospace)
    }

    /// A refusal that still consumes `index` in the store, so replay skips it.
    fn refuse(&self, index: u64, err: ApplyError) -> Option<Output> {
        match self.store.skip(index) {
            Ok(()) => Some(Err(err)),
            Err(e) => Some(Err(self.fail(e.to_string()))),
        }
    }

    fn apply_alarm(&mut self, index: u64, req: &AlarmRequest) -> Option<Output> {
        if index <= self.store.consistent_index().unwrap_or(u64::MAX) {
            return None;
        }
        let target = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let mut changed = Vec::new();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) => {
                if req.alarm != AlarmType::None as i32 {
                    if !self.cluster.alarms.contains(&target) {
                        self.cluster.alarms.push(target);
                        self.cluster.alarms.sort_by_key(|a| (a.member_id, a.alarm));
                        tracing::warn!(member = req.member_id, alarm = req.alarm, "alarm raised");
                    }
                    changed.push(target);
                }
            }
            Ok(AlarmAction::Deactivate) => {
                // etcd disarms the named alarm of the named member; NONE/0 match anything.
                let matches = |a: &AlarmMember| {
                    (req.member_id == 0 || a.member_id == req.member_id)
                        && (req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                };
                changed = self
                    .cluster
                    .alarms
                    .iter()
                    .filter(|a| matches(a))
                    .copied()
                    .collect();
                self.cluster.alarms.retain(|a| !matches(a));
                if !changed.is_empty() {
                    tracing::info!(member = req.member_id, alarm = req.alarm, "alarm disarmed");
                }
            }
            _ => changed = self.cluster.alarms.clone(),
        }
        if let Err(e) = self.save_cluster() {
            return Some(Err(e));
        }
        if let Err(e) = self.store.skip(index) {
            return Some(Err(self.fail(e.to_string())));
        }
        Some(Ok(Response::Alarm(AlarmResponse {
            header: Some(raftkv_proto::etcdserverpb::ResponseHeader {
                revision: self.store.revision().unwrap_or(0),
                ..Default::default()
            }),
            alarms: changed,
        })))
    }

    fn apply_attributes(&mut self, index: u64, a: &MemberAttributes) -> Option<Output> {
        if index <= self.store.consistent_index().unwrap_or(u64::MAX) {
            return None;
        }
        if let Some(m) = self.cluster.members.get_mut(&a.id) {
            if m.name != a.name || m.client_ur_ls != a.client_urls {
                m.name = a.name.clone();
                m.client_ur_ls = a.client_urls.clone();
                if let Err(e) = self.save_cluster() {
                    return Some(Err(e));
                }
            }
        } else {
            tracing::warn!(member = a.id, "attributes of an unknown member ignored");
        }
        match self.store.skip(index) {
            Ok(()) => Some(Ok(Response::MemberAttributes)),
            Err(e) => Some(Err(self.fail(e.to_string()))),
        }
    }
}

impl Machine {
    /// MemberUpdate: checked again here, in log order, so that concurrent changes cannot leave
    /// two members with one URL.
    fn apply_peer_urls(&mut self, index: u64, u: &MemberPeerUrls) -> Option<Output> {
        if index <= self.store.consistent_index().unwrap_or(u64::MAX) {
            return None;
        }
        let taken = self
            .cluster
            .members
            .values()
            .any(|m| m.id != u.id && m.peer_ur_ls.iter().any(|p| u.peer_urls.contains(p)));
        let refusal = match self.cluster.members.get_mut(&u.id) {
            None => Some(ApplyError::MemberNotFound),
            Some(_) if taken => Some(ApplyError::PeerUrlsExist),
            Some(m) => {
                if m.peer_ur_ls != u.peer_urls {
                    m.peer_ur_ls = u.peer_urls.clone();
                    tracing::info!(member = format_args!("{:x}", u.id), urls = ?u.peer_urls, "member peer URLs updated");
                    if let Err(e) = self.save_cluster() {
                        return Some(Err(e));
                    }
                }
                None
            }
        };
        match refusal {
            Some(err) => self.refuse(index, err),
            None => match self.store.skip(index) {
                Ok(()) => Some(Ok(Response::MemberPeerUrls)),
                Err(e) => Some(Err(self.fail(e.to_string()))),
            },
        }
    }

    /// Decodes and applies one entry; see [`StateMachine::apply`].
    fn apply_entry(&mut self, index: u64, _term: u64, data: &[u8]) -> Option<Output> {
        let req = match RaftRequest::decode(data) {
            Ok(RaftRequest {
                request: Some(r), ..
            }) => r,
            Ok(_) | Err(_) => {
                tracing::error!(index, "undecodable entry skipped");
                return self.refuse(
                    index,
                    ApplyError::Internal("undecodable raft entry".to_string()),
                );
            }
        };
        let s = &self.store;
        let out = match req {
            Request::Put(_) if self.nospace() => self.refuse(index, ApplyError::NoSpace),
            Request::Put(r) => self.store_op(s.put(index, &r), Response::Put),
            Request::DeleteRange(r) => {
                self.store_op(s.delete_range(index, &r), Response::DeleteRange)
            }
            Request::Txn(r) if self.nospace() && txn_writes(&r) => {
                self.refuse(index, ApplyError::NoSpace)
            }
            Request::Txn(r) => self.store_op(s.txn(index, &r), Response::Txn),
            Request::Compaction(r) => self.store_op(s.compact(index, &r), Response::Compaction),
            Request::LeaseGrant(_) if self.nospace() => self.refuse(index, ApplyError::NoSpace),
            Request::LeaseGrant(r) => {
                let out = self.store_op(s.lease_grant(index, &r), Response::LeaseGrant);
                if let Some(Ok(Response::LeaseGrant(g))) = &out {
                    let _ = self.out.leases.send(LeaseEvent::Granted {
                        id: g.id,
                        ttl: g.ttl,
                    });
                }
                out
            }
            Request::LeaseRevoke(r) => {
                let out = self.store_op(s.lease_revoke(index, &r), Response::LeaseRevoke);
                if let Some(Ok(_)) = &out {
                    let _ = self.out.leases.send(LeaseEvent::Revoked(r.id));
                }
                out
            }
            Request::LeaseCheckpoint(r) => {
                let out = self.store_op(s.lease_checkpoint(index, &r), Response::LeaseCheckpoint);
                if let Some(Ok(_)) = &out {
                    for cp in &r.checkpoints {
                        let ttl = s.lease(cp.id, false).ok().flatten().map_or(0, |l| l.ttl);
                        let _ = self.out.leases.send(LeaseEvent::Checkpointed {
                            id: cp.id,
                            remaining: cp.remaining_ttl,
                            renewal: cp.remaining_ttl >= ttl,
                        });
                    }
                }
                out
            }
            Request::Alarm(r) => self.apply_alarm(index, &r),
            Request::MemberAttributes(a) => self.apply_attributes(index, &a),
            Request::MemberPeerUrls(u) => self.apply_peer_urls(index, &u),
        };
        if out.is_some() {
            self.publish_revision();
        }
        out
    }
}

impl StateMachine for Machine {
    type Output = Output;

    fn applied_index(&self) -> u64 {
        self.store.consistent_index().unwrap_or(0)
    }

    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Option<Output> {
        let started = std::time::Instant::now();
        let out = self.apply_entry(index, term, data);
        metrics::histogram!("raftkv_apply_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        out
    }

    fn skip(&mut self, index: u64) {
        if let Err(e) = self.store.skip(index) {
            self.fail(e.to_string());
        }
    }

    fn on_conf_change(
        &mut self,
        index: u64,
        change: &raft::prelude::ConfChangeV2,
        cs: &raft::prelude::ConfState,
    ) {
        if index <= self.store.consistent_index().unwrap_or(u64::MAX) {
            return; // replayed after a restart: the table already has it
        }
        if self.cluster.apply_conf_change(change) {
            tracing::info!(index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
            let _ = self.save_cluster();
        }
    }

    fn persist(&mut self) -> Result<(), String> {
        self.store.sync().map_err(|e| e.to_string())
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotSource>, String> {
        let snap =
            MemberSnapshot::capture(&self.store, &self.cluster).map_err(|e| e.to_string())?;
        Ok(Box::new(snap))
    }

    fn restore(&mut self, data: &mut dyn Read) -> Result<(), String> {
        let stored = snapshot::read_cluster(data)?;
        self.store
            .restore(&mut snapshot::ReadAdapter(data))
            .map_err(|e| e.to_string())?;
        self.cluster = Cluster::from_stored(stored);
        self.save_cluster().map_err(|e| format!("{e:?}"))?;
        let _ = self.out.leases.send(LeaseEvent::Reset);
        self.out
            .revision
            .send_replace(self.store.revision().unwrap_or(1));
        Ok(())
    }
}

/// Whether a txn writes in either branch (etcd's quota cost: a txn that only reads or deletes
/// is allowed under NOSPACE).
pub fn txn_writes(r: &raftkv_proto::etcdserverpb::TxnRequest) -> bool {
    use raftkv_proto::etcdserverpb::request_op::Request as Op;
    r.success
        .iter()
        .chain(&r.failure)
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(t)) => txn_writes(t),
            _ => false,
        })
}
