//! The Cluster service: MemberList from the membership table, and membership changes through
//! Raft (ConfChangeV2), with etcd's checks and errors:
//! - MemberAdd (voter or learner): the new member's id is derived from its peer URLs and the
//!   cluster token, as the member derives it itself when it starts with
//!   `--initial-cluster-state existing`; the change carries the member's description (and the
//!   cluster id) in its context, so every member's table learns it when the change applies.
//! - MemberRemove: refused when the voters still running would not make a quorum of what is
//!   left; removing the leader hands leadership to another voter first (a follower asked to
//!   remove the leader forwards the request to it, so the hand-over happens there).
//! - MemberPromote: only a learner, and only once its log is within 10 % of the leader's (etcd's
//!   rule), decided on the leader (a follower forwards the request there).
//! - MemberUpdate (new peer URLs): an ordinary entry (raft-rs has no "update node" change) that
//!   rewrites the member's URLs in every table; the peer links follow the table.

use std::time::Duration;

use prost::Message;
use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use raft::StateRole;
use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
use raftkv_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use raftkv_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use raftkv_proto::raftkvpb::raft_request::Request;
use raftkv_proto::raftkvpb::{MemberPeerUrls, StoredCluster};
use tonic::{Response, Status};

use crate::apply::Response as ApplyResponse;
use crate::config::parse_url;
use crate::context::{unexpected, Ctx};
use crate::error::raft_status;
use crate::forward;
use crate::members::member_id;

/// The etcd Cluster service of one member.
pub struct ClusterService {
    ctx: Ctx,
    token: String,
    timeout: Duration,
}

impl ClusterService {
    /// The service over `ctx`; `token` is `--initial-cluster-token` (it goes into new members'
    /// ids); a leadership hand-over waits at most `timeout`.
    pub fn new(ctx: Ctx, token: String, timeout: Duration) -> Self {
        ClusterService {
            ctx,
            token,
            timeout,
        }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    fn members(&self) -> Vec<Member> {
        self.ctx
            .cluster
            .borrow()
            .members
            .values()
            .cloned()
            .collect()
    }

    /// Proposes one change for `id` described by `member`; waits until it applied here.
    async fn change(&self, kind: ConfChangeType, id: u64, member: Member) -> Result<(), Status> {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.mut_changes().push(single);
        cc.context = StoredCluster {
            cluster_id: self.ctx.headers.cluster_id(),
            members: vec![member],
            alarms: Vec::new(),
        }
        .encode_to_vec()
        .into();
        self.ctx
            .node
            .change_membership(cc)
            .await
            .map(|_| ())
            .map_err(raft_status)
    }

    fn header(&self) -> Option<raftkv_proto::etcdserverpb::ResponseHeader> {
        Some(self.ctx.headers.at(0))
    }
}

fn not_found() -> Status {
    Status::not_found("etcdserver: member not found")
}

/// etcd's checks of new peer URLs: present, well formed, and not another member's (`except` is
/// the member being updated).
fn check_peer_urls(urls: &[String], members: &[Member], except: Option<u64>) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: member peer URLs are not provided",
        ));
    }
    for u in urls {
        parse_url(u).map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let taken = members
        .iter()
        .filter(|m| Some(m.id) != except)
        .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)));
    if taken {
        return Err(Status::failed_precondition(
            "etcdserver: Peer URLs already exists",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: tonic::Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        check_peer_urls(&req.peer_ur_ls, &self.members(), None)?;
        let id = member_id(&req.peer_ur_ls, &self.token);
        if self.ctx.cluster.borrow().members.contains_key(&id) {
            return Err(Status::failed_precondition(
                "etcdserver: member ID already exist",
            ));
        }
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: req.peer_ur_ls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        let kind = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.change(kind, id, member.clone()).await?;
        tracing::info!(
            member = format_args!("{id:x}"),
            learner = req.is_learner,
            "member added"
        );
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: tonic::Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let id = request.into_inner().id;
        let members = self.members();
        let Some(target) = members.iter().find(|m| m.id == id).cloned() else {
            return Err(not_found());
        };
        if !target.is_learner {
            // etcd's check: the voters left that have started (published their client URLs)
            // must still make a quorum of the voters left.
            let voters_left: Vec<&Member> = members
                .iter()
                .filter(|m| !m.is_learner && m.id != id)
                .collect();
            let started = voters_left
                .iter()
                .filter(|m| !m.client_ur_ls.is_empty())
                .count();
            if voters_left.is_empty() || started < voters_left.len() / 2 + 1 {
                return Err(Status::failed_precondition(
                    "etcdserver: re-configuration failed due to not enough started members",
                ));
            }
            // Removing the leader: hand leadership to another voter first, on the leader. A
            // follower proposing the removal itself would leave the removed leader in its role
            // (dropping proposals) until an election timeout elects another.
            let st = self.ctx.headers.status();
            if st.leader == id && st.id != id && !forwarded {
                if let Some(channel) = forward::channel_to(&self.ctx, id) {
                    return self.forward_remove(channel, id).await;
                }
                tracing::debug!(
                    leader = format_args!("{id:x}"),
                    "no client URL for the leader; removing it without a hand-over"
                );
            }
            if st.leader == id && st.id == id {
                let to = voters_left[0].id;
                let mut status = self.ctx.node.watch_status();
                self.ctx.node.transfer_leader(to);
                let moved = tokio::time::timeout(
                    self.timeout,
                    status.wait_for(|s| s.leader != 0 && s.leader != id),
                )
                .await;
                if !matches!(moved, Ok(Ok(_))) {
                    return Err(Status::unavailable(
                        "etcdserver: request timed out, leader transfer took too long",
                    ));
                }
            }
        }
        self.change(ConfChangeType::RemoveNode, id, target).await?;
        tracing::info!(member = format_args!("{id:x}"), "member removed");
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: tonic::Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        let members = self.members();
        if !members.iter().any(|m| m.id == req.id) {
            return Err(not_found());
        }
        check_peer_urls(&req.peer_ur_ls, &members, Some(req.id))?;
        let update = MemberPeerUrls {
            id: req.id,
            peer_urls: req.peer_ur_ls,
        };
        match self.ctx.propose(Request::MemberPeerUrls(update)).await? {
            ApplyResponse::MemberPeerUrls => {}
            _ => return Err(unexpected("MemberUpdate")),
        }
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        request: tonic::Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.ctx.read_barrier(false).await?;
        }
        // etcd's MemberList header carries no revision.
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: tonic::Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let id = request.get_ref().id;
        let Some(target) = self.ctx.cluster.borrow().members.get(&id).cloned() else {
            return Err(not_found());
        };
        if !target.is_learner {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member",
            ));
        }
        let st = self.ctx.headers.status();
        if st.role != StateRole::Leader {
            if forwarded || st.leader == 0 {
                return Err(forward::no_leader());
            }
            return self.forward_promote(st.leader, id).await;
        }
        let ready = match self.ctx.node.replication().await.map_err(raft_status)? {
            Some((matched, last)) => {
                let m = matched.get(&id).copied().unwrap_or(0);
                // etcd: the learner's log must be at least 90 % of the leader's.
                m as f64 >= last as f64 * 0.9
            }
            None => false,
        };
        if !ready {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member which is in sync with leader",
            ));
        }
        let mut member = target;
        member.is_learner = false;
        self.change(ConfChangeType::AddNode, id, member).await?;
        tracing::info!(member = format_args!("{id:x}"), "learner promoted");
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}

impl ClusterService {
    /// Sends the removal of the leader `id` to the leader's client endpoint, so that it hands
    /// leadership over before the removal; answers once the removal has applied here too (with
    /// this member's header and table, as if it had proposed it).
    async fn forward_remove(
        &self,
        channel: tonic::transport::Channel,
        id: u64,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        tracing::info!(
            leader = format_args!("{id:x}"),
            "forwarding the removal of the leader to it"
        );
        let req = forward::request(MemberRemoveRequest { id });
        ClusterClient::new(channel).member_remove(req).await?;
        let mut table = self.ctx.cluster.clone();
        let applied = tokio::time::timeout(
            self.timeout,
            table.wait_for(|c| !c.members.contains_key(&id)),
        )
        .await;
        if !matches!(applied, Ok(Ok(_))) {
            return Err(Status::unavailable("etcdserver: request timed out"));
        }
        tracing::info!(member = format_args!("{id:x}"), "member removed");
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    /// Sends a promote to the leader's client endpoint (only the leader knows replication).
    async fn forward_promote(
        &self,
        leader: u64,
        id: u64,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let channel = forward::channel_to(&self.ctx, leader).ok_or_else(forward::no_leader)?;
        let req = forward::request(MemberPromoteRequest { id });
        ClusterClient::new(channel).member_promote(req).await
    }
}
