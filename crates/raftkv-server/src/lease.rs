//! The Lease service: Grant and Revoke through Raft (with server-chosen ids when the client asks
//! for id 0), KeepAlive and TimeToLive through the lessor (which forwards them to the leader),
//! and Leases from the local store.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::Stream;
use raftkv_mvcc::MAX_LEASE_TTL;
use raftkv_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use raftkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use raftkv_proto::raftkvpb::raft_request::Request;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};

use crate::apply::Response as Applied;
use crate::context::{unexpected, Ctx};
use crate::error::{request_status, store_status};
use crate::forward::is_forwarded;
use crate::lessor::LessorHandle;

/// The etcd Lease service of one member.
pub struct LeaseService {
    ctx: Ctx,
    lessor: LessorHandle,
    ids: Arc<IdGen>,
    shutdown: watch::Receiver<bool>,
}

impl LeaseService {
    /// The service over `ctx`, with the member's lessor.
    pub fn new(ctx: Ctx, lessor: LessorHandle, shutdown: watch::Receiver<bool>) -> Self {
        let ids = Arc::new(IdGen::new(ctx.headers.member_id()));
        LeaseService {
            ctx,
            lessor,
            ids,
            shutdown,
        }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> LeaseServer<Self> {
        let limit = self.ctx.limits.max_request_bytes + crate::server::GRPC_OVERHEAD_BYTES;
        LeaseServer::new(self).max_decoding_message_size(limit)
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: tonic::Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(request_status(raftkv_mvcc::RequestError::LeaseTtlTooLarge));
        }
        if req.id < 0 {
            return Err(request_status(raftkv_mvcc::RequestError::LeaseNotFound));
        }
        if req.id == 0 {
            req.id = self.ids.next();
        }
        self.ctx.check_quota().await?;
        match self.ctx.propose(Request::LeaseGrant(req)).await? {
            Applied::LeaseGrant(mut resp) => {
                self.ctx.headers.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("lease_grant")),
        }
    }

    async fn lease_revoke(
        &self,
        request: tonic::Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = request.into_inner();
        match self.ctx.propose(Request::LeaseRevoke(req)).await? {
            Applied::LeaseRevoke(mut resp) => {
                self.ctx.headers.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("lease_revoke")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: tonic::Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded = is_forwarded(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let lessor = self.lessor.clone();
        let ctx = self.ctx.clone();
        let mut shutdown = self.shutdown.clone();
        // One task per keep-alive stream (a stream lives as long as the client's lease).
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.changed() => break,
                    m = inbound.message() => m,
                };
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "keep-alive stream ended");
                        break;
                    }
                };
                let resp = match lessor.renew(req.id, forwarded).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: Some(ctx.headers.at(ctx.store.revision().unwrap_or(0))),
                        id: req.id,
                        ttl,
                    }),
                    Err(status) => Err(status),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: tonic::Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let resp = self.lessor.time_to_live(req, forwarded).await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: tonic::Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.ctx.store.leases().map_err(|e| store_status(&e))?;
        let rev = self.ctx.store.revision().map_err(|e| store_status(&e))?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.ctx.headers.at(rev)),
            leases: leases
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}

/// Lease ids for grants that ask for id 0, as etcd makes them: the member id's low 16 bits, then
/// the boot time in milliseconds, then a counter, kept positive.
struct IdGen {
    next: AtomicU64,
}

impl IdGen {
    fn new(member_id: u64) -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let start = ((member_id & 0xffff) << 48) | ((ms & 0xff_ffff_ffff) << 8);
        IdGen {
            next: AtomicU64::new(start),
        }
    }

    fn next(&self) -> i64 {
        loop {
            let id = (self.next.fetch_add(1, Ordering::Relaxed) + 1) & (i64::MAX as u64);
            if id != 0 {
                return id as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_positive_unique_and_carry_the_member() {
        let g = IdGen::new(0xffff_ffff_ffff_abcd);
        let a = g.next();
        let b = g.next();
        assert!(a > 0 && b > 0 && a != b);
        assert_eq!((a as u64 >> 48) & 0x7fff, 0x2bcd);
    }
}
