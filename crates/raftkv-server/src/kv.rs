//! The KV service: Range (linearizable through ReadIndex unless `serializable`), and Put,
//! DeleteRange, Txn and Compact through Raft, each checked before it is proposed.

use raftkv_mvcc::validate;
use raftkv_proto::etcdserverpb::kv_server::{Kv, KvServer};
use raftkv_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use raftkv_proto::raftkvpb::raft_request::Request;
use tonic::{Response, Status};

use crate::apply::Response as Applied;
use crate::context::{unexpected, Ctx};
use crate::error::{request_status, store_status};

/// The etcd KV service of one member.
pub struct KvService {
    ctx: Ctx,
    max_txn_ops: usize,
}

impl KvService {
    /// The service over `ctx`.
    pub fn new(ctx: Ctx, max_txn_ops: usize) -> Self {
        KvService { ctx, max_txn_ops }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> KvServer<Self> {
        let limit = self.ctx.limits.max_request_bytes + crate::server::GRPC_OVERHEAD_BYTES;
        KvServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: tonic::Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        crate::learner::refuse_linearizable_range(&self.ctx, req.serializable)?;
        validate::check_range(&req).map_err(request_status)?;
        self.ctx.read_barrier(req.serializable).await?;
        let mut resp = self.ctx.store.range(&req).map_err(|e| store_status(&e))?;
        self.ctx.headers.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(
        &self,
        request: tonic::Request<PutRequest>,
    ) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        validate::check_put(&req).map_err(request_status)?;
        self.ctx.check_quota().await?;
        match self.ctx.propose(Request::Put(req)).await? {
            Applied::Put(mut resp) => {
                self.ctx.headers.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: tonic::Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        validate::check_delete(&req).map_err(request_status)?;
        match self.ctx.propose(Request::DeleteRange(req)).await? {
            Applied::DeleteRange(mut resp) => {
                self.ctx.headers.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete_range")),
        }
    }

    async fn txn(
        &self,
        request: tonic::Request<TxnRequest>,
    ) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        validate::check_txn(&req, self.max_txn_ops).map_err(request_status)?;
        if validate::is_read_only(&req) {
            // As etcd: a txn that only reads is served like a Range, without a log entry.
            self.ctx
                .read_barrier(validate::is_serializable(&req))
                .await?;
            let mut resp = self
                .ctx
                .store
                .txn_read(&req)
                .map_err(|e| store_status(&e))?;
            self.ctx.headers.fill(&mut resp.header);
            return Ok(Response::new(resp));
        }
        if crate::apply::txn_writes(&req) {
            self.ctx.check_quota().await?;
        }
        match self.ctx.propose(Request::Txn(req)).await? {
            Applied::Txn(mut resp) => {
                self.ctx.headers.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: tonic::Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        let physical = req.physical;
        match self.ctx.propose(Request::Compaction(req)).await? {
            Applied::Compaction(mut resp) => {
                if physical {
                    let store = self.ctx.store.clone();
                    tokio::task::spawn_blocking(move || store.wait_compacted())
                        .await
                        .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
                }
                self.ctx.headers.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
