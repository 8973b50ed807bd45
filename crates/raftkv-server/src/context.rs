//! What every gRPC service of a member shares: the Raft node handle, the store, header stamping,
//! the membership table and the request limits, with the common steps of a request (size and
//! quota checks, proposing through Raft, the linearizable read barrier).

use std::sync::Arc;

use prost::Message;
use raftkv_mvcc::Store;
use raftkv_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use raftkv_proto::raftkvpb::{raft_request::Request, RaftRequest};
use raftkv_raft::NodeHandle;
use tokio::sync::watch;
use tonic::Status;

use crate::apply::{ApplyError, Output, Response};
use crate::error::{no_space, raft_status, request_status, too_large};
use crate::header::Headers;
use crate::members::Cluster;

/// Request limits from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
}

/// Shared by the services of one member. Cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    /// The Raft node.
    pub node: NodeHandle<Output>,
    /// The member's store.
    pub store: Store,
    /// Header stamping.
    pub headers: Headers,
    /// The membership table and alarms.
    pub cluster: watch::Receiver<Arc<Cluster>>,
    /// The store's size on disk, refreshed in the background.
    pub db_size: watch::Receiver<u64>,
    /// Limits.
    pub limits: Limits,
}

impl Ctx {
    /// Refuses a request whose encoding exceeds `--max-request-bytes`.
    pub fn check_size(&self, req: &impl Message) -> Result<(), Status> {
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(too_large());
        }
        Ok(())
    }

    /// Refuses a write while NOSPACE is raised; raises it when the store is over quota.
    pub async fn check_quota(&self) -> Result<(), Status> {
        if self.cluster.borrow().has_alarm(AlarmType::Nospace) {
            return Err(no_space());
        }
        let size = *self.db_size.borrow();
        if size > self.limits.quota_backend_bytes {
            tracing::warn!(
                size,
                quota = self.limits.quota_backend_bytes,
                "backend quota exceeded; raising NOSPACE"
            );
            let raise = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.headers.member_id(),
                alarm: AlarmType::Nospace as i32,
            };
            // Best effort: the refusal below stands whether or not the alarm commits now.
            let _ = self.propose(Request::Alarm(raise)).await;
            return Err(no_space());
        }
        Ok(())
    }

    /// Proposes `req` through Raft and waits for its result on this member.
    pub async fn propose(&self, req: Request) -> Result<Response, Status> {
        let data = RaftRequest {
            id: 0,
            request: Some(req),
        }
        .encode_to_vec();
        match self.node.propose(data).await {
            Ok(Ok(resp)) => {
                metrics::counter!("raftkv_proposals_committed_total").increment(1);
                Ok(resp)
            }
            Ok(Err(e)) => {
                // Committed, but refused by the state machine (e.g. an unknown lease).
                metrics::counter!("raftkv_proposals_committed_total").increment(1);
                Err(apply_status(e))
            }
            Err(e) => {
                metrics::counter!("etcd_server_proposals_failed_total").increment(1);
                Err(raft_status(e))
            }
        }
    }

    /// Waits until a read here is linearizable (Raft ReadIndex), unless `serializable`.
    pub async fn read_barrier(&self, serializable: bool) -> Result<(), Status> {
        if serializable {
            return Ok(());
        }
        self.node
            .read_index()
            .await
            .map(|_| ())
            .map_err(raft_status)
    }
}

/// The status for a refusal at apply time.
pub fn apply_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Request(r) => request_status(r),
        ApplyError::NoSpace => no_space(),
        ApplyError::MemberNotFound => Status::not_found("etcdserver: member not found"),
        ApplyError::PeerUrlsExist => {
            Status::failed_precondition("etcdserver: Peer URLs already exists")
        }
        ApplyError::Internal(m) => Status::internal(format!("etcdserver: {m}")),
    }
}

/// Turns an unexpected response kind into an internal error (a bug, never a panic).
pub fn unexpected(what: &str) -> Status {
    tracing::error!(
        expected = what,
        "state machine answered with another response kind"
    );
    Status::internal(format!("etcdserver: unexpected apply result for {what}"))
}
