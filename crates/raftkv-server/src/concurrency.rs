//! etcd's Lock and Election services (v3lockpb, v3electionpb), built the way etcd builds them:
//! on leases and revisions, with the key layout of etcd's `concurrency` package. Each contender
//! owns the key `<name>/<lease id in hex>` (attached to its lease); the contender whose key has
//! the lowest create revision under the prefix holds the lock (or leads). Waiting means waiting
//! until no key under the prefix has a lower create revision; that is re-checked against the
//! local store each time the applied revision moves, so a waiter costs nothing between writes.
//!
//! **Fencing:** a lock's key is returned with the lock; its create revision (a `Range` of the
//! key) is a fencing token that only grows. A guarded resource checks it in the same txn as the
//! write it protects (`Compare{CREATE, key, Equal, token}`), so a holder whose lease expired and
//! whose key is gone can no longer write.

use std::pin::Pin;

use futures_util::Stream;
use raftkv_proto::etcdserverpb::{
    compare, range_request, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use raftkv_proto::mvccpb::KeyValue;
use raftkv_proto::raftkvpb::raft_request::Request;
use raftkv_proto::v3electionpb::election_server::{Election, ElectionServer};
use raftkv_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use raftkv_proto::v3lockpb::lock_server::{Lock, LockServer};
use raftkv_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::{mpsc, watch};
use tonic::{Response, Status};

use crate::apply::Response as Applied;
use crate::context::{unexpected, Ctx};
use crate::error::store_status;

/// etcd's message when an election has no leader.
const NO_LEADER: &str = "election: no leader";
/// etcd's message when a proclaim or resign comes from a former leader.
const NOT_LEADER: &str = "election: not leader";
/// etcd's message when a request lacks the leader key.
const MISSING_LEADER: &str = "\"leader\" field must be provided";
/// etcd's message when the contender's key vanished while it waited (its lease expired).
const SESSION_EXPIRED: &str = "session expired";

/// What Lock and Election share: proposing txns, reading the local store, waiting on revisions.
#[derive(Clone)]
struct Contest {
    ctx: Ctx,
    revisions: watch::Receiver<i64>,
}

use raftkv_mvcc::prefix_range_end as prefix_end;

fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// The oldest key under `prefix` (the lock holder or the leader).
fn first_under(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

impl Contest {
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        match self.ctx.propose(Request::Txn(req)).await? {
            Applied::Txn(resp) => Ok(resp),
            _ => Err(unexpected("txn")),
        }
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        self.ctx.store.range(req).map_err(|e| store_status(&e))
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.ctx.headers.at(self.ctx.store.revision().unwrap_or(0)))
    }

    /// Creates the contender key `key` under `prefix` with `value` and `lease` unless it exists;
    /// returns (its create revision, its current value).
    async fn enter(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(i64, Vec<u8>), Status> {
        let put = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        };
        let get = RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_revision_is(key, 0)],
                success: vec![op(request_op::Request::RequestPut(put))],
                failure: vec![op(request_op::Request::RequestRange(get))],
            })
            .await?;
        if resp.succeeded {
            let rev = resp.header.map_or(0, |h| h.revision);
            return Ok((rev, value.to_vec()));
        }
        let kv = resp
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(raftkv_proto::etcdserverpb::response_op::Response::ResponseRange(r)) => {
                    r.kvs.into_iter().next()
                }
                _ => None,
            })
            .ok_or_else(|| Status::unknown(SESSION_EXPIRED))?;
        Ok((kv.create_revision, kv.value))
    }

    /// Waits until no key under `prefix` was created before `rev`, while `key` still exists.
    async fn wait_turn(&self, prefix: &[u8], key: &[u8], rev: i64) -> Result<(), Status> {
        let mut revisions = self.revisions.clone();
        // Not `count_only`: etcd's count ignores the revision filters.
        let older = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            max_create_revision: rev - 1,
            keys_only: true,
            limit: 1,
            ..Default::default()
        };
        let mine = RangeRequest {
            key: key.to_vec(),
            count_only: true,
            ..Default::default()
        };
        loop {
            revisions.borrow_and_update();
            if self.range(&mine)?.count == 0 {
                return Err(Status::unknown(SESSION_EXPIRED));
            }
            if self.range(&older)?.kvs.is_empty() {
                return Ok(());
            }
            if revisions.changed().await.is_err() {
                return Err(Status::unavailable(crate::error::STOPPED));
            }
        }
    }

    async fn delete(&self, key: &[u8]) -> Result<(), Status> {
        let req = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        match self.ctx.propose(Request::DeleteRange(req)).await? {
            Applied::DeleteRange(_) => Ok(()),
            _ => Err(unexpected("delete_range")),
        }
    }

    fn leader(&self, name: &[u8]) -> Result<Option<KeyValue>, Status> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        Ok(self.range(&first_under(&prefix))?.kvs.into_iter().next())
    }
}

/// Deletes a contender's key if the request that created it is abandoned (the client went
/// away while waiting), as etcd's `Mutex.Lock` does on cancellation.
struct Withdraw {
    contest: Option<(Contest, Vec<u8>)>,
}

impl Withdraw {
    fn keep(mut self) {
        self.contest = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some((contest, key)) = self.contest.take() {
            tokio::spawn(async move {
                if let Err(e) = contest.delete(&key).await {
                    tracing::debug!(error = %e.message(), "abandoned contender key not deleted");
                }
            });
        }
    }
}

/// The etcd Lock service.
pub struct LockService(Contest);

impl LockService {
    /// The service over `ctx`; `revisions` is the store revision published after each apply.
    pub fn new(ctx: Ctx, revisions: watch::Receiver<i64>) -> Self {
        LockService(Contest { ctx, revisions })
    }

    /// The tonic server for it.
    pub fn into_server(self) -> LockServer<Self> {
        LockServer::new(self)
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: tonic::Request<LockRequest>,
    ) -> Result<Response<LockResponse>, Status> {
        let req = request.into_inner();
        let c = &self.0;
        let mut prefix = req.name.clone();
        prefix.push(b'/');
        let key = contender_key(&req.name, req.lease);
        let (rev, _) = c.enter(&key, b"", req.lease).await?;
        let withdraw = Withdraw {
            contest: Some((c.clone(), key.clone())),
        };
        c.wait_turn(&prefix, &key, rev).await?;
        withdraw.keep();
        Ok(Response::new(LockResponse {
            header: c.header(),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: tonic::Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let c = &self.0;
        c.delete(&request.into_inner().key).await?;
        Ok(Response::new(UnlockResponse { header: c.header() }))
    }
}

/// The etcd Election service.
pub struct ElectionService(Contest);

impl ElectionService {
    /// The service over `ctx`; `revisions` is the store revision published after each apply.
    pub fn new(ctx: Ctx, revisions: watch::Receiver<i64>) -> Self {
        ElectionService(Contest { ctx, revisions })
    }

    /// The tonic server for it.
    pub fn into_server(self) -> ElectionServer<Self> {
        ElectionServer::new(self)
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

impl ElectionService {
    /// Replaces the leader's value if `leader` still leads.
    async fn proclaim_as(&self, leader: &LeaderKey, value: &[u8]) -> Result<(), Status> {
        let put = PutRequest {
            key: leader.key.clone(),
            value: value.to_vec(),
            lease: leader.lease,
            ..Default::default()
        };
        let resp = self
            .0
            .txn(TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op(request_op::Request::RequestPut(put))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: tonic::Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let req = request.into_inner();
        let c = &self.0;
        let mut prefix = req.name.clone();
        prefix.push(b'/');
        let key = contender_key(&req.name, req.lease);
        let (rev, value) = c.enter(&key, &req.value, req.lease).await?;
        let leader = LeaderKey {
            name: req.name.clone(),
            key: key.clone(),
            rev,
            lease: req.lease,
        };
        if value != req.value {
            self.proclaim_as(&leader, &req.value).await?;
        }
        let withdraw = Withdraw {
            contest: Some((c.clone(), key.clone())),
        };
        c.wait_turn(&prefix, &key, rev).await?;
        withdraw.keep();
        Ok(Response::new(CampaignResponse {
            header: c.header(),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: tonic::Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        self.proclaim_as(&leader, &req.value).await?;
        Ok(Response::new(ProclaimResponse {
            header: self.0.header(),
        }))
    }

    async fn leader(
        &self,
        request: tonic::Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let c = &self.0;
        c.ctx.read_barrier(false).await?;
        let kv = c
            .leader(&request.into_inner().name)?
            .ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(LeaderResponse {
            header: c.header(),
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: tonic::Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let c = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        // One task per observer: it re-reads the leader whenever the store moves and sends
        // each change (new leader key or new value) once.
        tokio::spawn(async move {
            let mut revisions = c.revisions.clone();
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                revisions.borrow_and_update();
                match c.leader(&name) {
                    Ok(Some(kv)) => {
                        let now = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&now) {
                            last = Some(now);
                            let resp = LeaderResponse {
                                header: c.header(),
                                kv: Some(kv),
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                tokio::select! {
                    r = revisions.changed() => if r.is_err() { return; },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        request: tonic::Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let del = DeleteRangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        };
        self.0
            .txn(TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op(request_op::Request::RequestDeleteRange(del))],
                failure: vec![],
            })
            .await?;
        Ok(Response::new(ResignResponse {
            header: self.0.header(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcds_layout() {
        assert_eq!(contender_key(b"job", 0x1f), b"job/1f".to_vec());
        assert_eq!(prefix_end(b"job/"), b"job0".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
