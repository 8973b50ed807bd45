//! The Maintenance service: Status (what `etcdctl endpoint status` prints), Alarm (list, raise
//! and disarm, e.g. NOSPACE), HashKV and Hash (the store's content hash, equal on every member at
//! one revision: the corruption check), MoveLeader, Snapshot (a backup stream, see
//! [`crate::backup`]), Defragment (online, this member's store only). Downgrade (etcd 3.5's
//! version downgrade) has nothing to do with a single raftkv version and answers `Unimplemented`.

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
    transfer_timeout: std::time::Duration,
    /// Where backups are staged before they are streamed (the data dir).
    data_dir: std::path::PathBuf,
}

impl MaintenanceService {
    /// The service over `ctx`; MoveLeader gives up after `transfer_timeout`; backups are staged
    /// in `data_dir`.
    pub fn new(
        ctx: Ctx,
        transfer_timeout: std::time::Duration,
        data_dir: std::path::PathBuf,
    ) -> Self {
        MaintenanceService {
            ctx,
            transfer_timeout,
            data_dir,
        }
    }

    /// The store hash at `revision` (0 = current), computed off the async workers.
    async fn kv_hash(&self, revision: i64) -> Result<raftkv_mvcc::KvHash, Status> {
        let store = self.ctx.store.clone();
        tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?
            .map_err(|e| store_status(&e))
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
        // Refreshed every 100 ms by the store's commit task: no file walk per request.
        let db_size = *self.ctx.db_size.borrow() as i64;
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
        // This member only, as in etcd; but online: reads and writes go on while the store is
        // copied, pausing for the final switch only (see raftkv_mvcc::defrag).
        let store = self.ctx.store.clone();
        let done = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(format!("etcdserver: defragment task: {e}")))?;
        let d = done.map_err(|e| {
            tracing::warn!(error = %e, "defragment failed");
            store_status(&e)
        })?;
        metrics::counter!("raftkv_defragments_total").increment(1);
        tracing::info!(
            before = d.before,
            after = d.after,
            pause_micros = d.pause_micros,
            "defragmented"
        );
        let rev = self.ctx.store.revision().map_err(|e| store_status(&e))?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.ctx.headers.at(rev)),
        }))
    }

    async fn hash(
        &self,
        _request: tonic::Request<HashRequest>,
    ) -> Result<Response<HashResponse>, Status> {
        // etcd hashes its backend file; raftkv's whole-store hash is HashKV at the current
        // revision, which (unlike a file hash) is comparable across members.
        let h = self.kv_hash(0).await?;
        Ok(Response::new(HashResponse {
            header: Some(self.ctx.headers.at(h.revision)),
            hash: h.hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: tonic::Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let h = self.kv_hash(request.get_ref().revision).await?;
        let current = self.ctx.store.revision().map_err(|e| store_status(&e))?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.headers.at(current)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: tonic::Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let cluster = (**self.ctx.cluster.borrow()).clone();
        let rx = crate::backup::stream(
            self.ctx.store.clone(),
            cluster,
            &self.data_dir,
            self.ctx.headers.clone(),
        )
        .await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        request: tonic::Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.get_ref().target_id;
        let me = self.ctx.headers.member_id();
        if self.ctx.headers.status().leader != me {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if target == 0 || !self.ctx.cluster.borrow().members.contains_key(&target) {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        if target != me {
            let mut status = self.ctx.node.watch_status();
            self.ctx.node.transfer_leader(target);
            let moved = tokio::time::timeout(
                self.transfer_timeout,
                status.wait_for(|s| s.leader == target),
            )
            .await;
            if !matches!(moved, Ok(Ok(_))) {
                return Err(Status::unavailable(
                    "etcdserver: request timed out, leader transfer took too long",
                ));
            }
        }
        let rev = self.ctx.store.revision().map_err(|e| store_status(&e))?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.ctx.headers.at(rev)),
        }))
    }

    async fn downgrade(
        &self,
        _request: tonic::Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(later("downgrade"))
    }
}
