//! Requests a follower hands to the leader (keep-alives, TimeToLive, MemberPromote, MemberRemove
//! of the leader itself), sent to the leader's client URL and marked so that the receiver never
//! forwards them again (two members that each believe the other leads answer "no leader" instead
//! of looping).

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::context::Ctx;

/// gRPC metadata key marking a request a follower forwarded to the leader.
pub const FORWARDED: &str = "raftkv-forwarded";

/// etcd's "no leader" status (the client retries elsewhere).
pub fn no_leader() -> Status {
    crate::error::raft_status(raftkv_raft::RequestError::NoLeader)
}

/// Whether `r` was forwarded by a follower.
pub fn is_forwarded<T>(r: &tonic::Request<T>) -> bool {
    r.metadata().get(FORWARDED).is_some()
}

/// `msg` as a forwarded request.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, MetadataValue::from_static("1"));
    r
}

/// A lazily connected channel to `leader`'s first client URL, if the table knows one.
pub fn channel_to(ctx: &Ctx, leader: u64) -> Option<Channel> {
    if leader == 0 {
        return None;
    }
    let url = ctx
        .cluster
        .borrow()
        .members
        .get(&leader)
        .and_then(|m| m.client_ur_ls.first().cloned())?;
    let endpoint = Endpoint::from_shared(url)
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    Some(endpoint.connect_lazy())
}
