//! The Maintenance service: Status (what `etcdctl endpoint status` prints) and Alarm (list, raise
//! and disarm, e.g. NOSPACE). Defragment, Hash, HashKV, Snapshot, MoveLeader and Downgrade belong
//! to the cluster-operations work and are refused for now with `Unimplemented`.

use std::pin::Pin;

use futures_util::Stream;
use raftkv_proto::etcdserverpb::alarm_request::AlarmAction;
use raftkv_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use raftkv_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use raftkv_proto::raftkvpb::raft_request::Request;
use tonic::{Response, Status};

use crate::apply::Response as Applied;
use crate::context::{unexpected, Ctx};
use crate::error::store_status;

/// The etcd API version raftkv reports (its protos are etcd 3.5's).
pub const VERSION: &str = "3.5.0";

/// The etcd Maintenance service of one member.
pub struct MaintenanceService {
    ctx: Ctx,
}

impl MaintenanceService {
    /// The service over `ctx`.
    pub fn new(ctx: Ctx) -> Self {
        MaintenanceService { ctx }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> MaintenanceServer<Self> {
        MaintenanceServer::new(self)
    }
}

fn later(what: &str) -> Status {
    Status::unimplemented(format!("raftkv: {what} is not supported by this version"))
}

fn alarm_name(t: i32) -> &'static str {
    match AlarmType::try_from(t) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: tonic::Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        let rev = self.ctx.store.revision().map_err(|e| store_status(&e))?;
        if AlarmAction::try_from(req.action) == Ok(AlarmAction::Get) {
            let alarms = self.ctx.cluster.borrow().alarms.clone();
            return Ok(Response::new(AlarmResponse {
                header: Some(self.ctx.headers.at(rev)),
                alarms,
            }));
        }
        match self.ctx.propose(Request::Alarm(req)).await? {
            Applied::Alarm(mut resp) => {
                self.ctx.headers.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("alarm")),
        }
    }

    async fn status(
        &self,
        _request: tonic::Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let st = self.ctx.headers.status();
        let store = &self.ctx.store;
        let rev = store.revision().map_err(|e| store_status(&e))?;
        let db_size = store.size_on_disk().map_err(|e| store_status(&e))? as i64;
        let errors = self
            .ctx
            .cluster
            .borrow()
            .alarms
            .iter()
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
            .collect();
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.headers.at(rev)),
            version: VERSION.to_string(),
            db_size,
            leader: st.leader,
            raft_index: st.applied,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: db_size,
            is_learner: false,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: tonic::Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(later("defragment"))
    }

    async fn hash(
        &self,
        _request: tonic::Request<HashRequest>,
    ) -> Result<Response<HashResponse>, Status> {
        Err(later("hash"))
    }

    async fn hash_kv(
        &self,
        _request: tonic::Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        Err(later("hashkv"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: tonic::Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(later("snapshot"))
    }

    async fn move_leader(
        &self,
        _request: tonic::Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(later("move-leader"))
    }

    async fn downgrade(
        &self,
        _request: tonic::Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(later("downgrade"))
    }
}
