//! The Cluster service: MemberList from the membership table. Membership changes (add, remove,
//! update, promote) belong to the cluster-operations work and are refused for now with
//! `Unimplemented`.

use raftkv_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use raftkv_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Response, Status};

use crate::context::Ctx;

/// The etcd Cluster service of one member.
pub struct ClusterService {
    ctx: Ctx,
}

impl ClusterService {
    /// The service over `ctx`.
    pub fn new(ctx: Ctx) -> Self {
        ClusterService { ctx }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }
}

fn membership_changes_unsupported() -> Status {
    Status::unimplemented("raftkv: membership changes are not supported by this version")
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: tonic::Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(membership_changes_unsupported())
    }

    async fn member_remove(
        &self,
        _request: tonic::Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(membership_changes_unsupported())
    }

    async fn member_update(
        &self,
        _request: tonic::Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(membership_changes_unsupported())
    }

    async fn member_list(
        &self,
        request: tonic::Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.ctx.read_barrier(false).await?;
        }
        let cluster = self.ctx.cluster.borrow().clone();
        // etcd's MemberList header carries no revision.
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.headers.at(0)),
            members: cluster.members.values().cloned().collect(),
        }))
    }

    async fn member_promote(
        &self,
        _request: tonic::Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(membership_changes_unsupported())
    }
}
