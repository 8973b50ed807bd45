//! What a learner serves, as etcd 3.4 decides it (`v3rpc` interceptors): while this member's own
//! entry in the membership table says `is_learner`, every client call is refused with gRPC
//! `Unavailable` "etcdserver: rpc not supported for learner" (so clients move on to a voter),
//! except the unary `Maintenance.Status` and a *serializable* `KV.Range`; every streaming call
//! (Watch, LeaseKeepAlive, Snapshot, Observe, Health.Watch) is refused, and so is
//! `MemberPromote` (the Go client sends it to a voter).
//!
//! [`LearnerLayer`] applies [`refusal`] to the client server's requests by path, before they
//! reach a service: the gRPC services and the JSON gateway's routes (mounted on the same
//! server), so the gateway refuses the same calls (etcd's gateway calls its own gRPC server).
//! The serializable check needs the request, so it is [`KvService::range`]'s own
//! ([`refuse_linearizable_range`]), which the gateway also calls.
//!
//! [`KvService::range`]: crate::kv::KvService

use std::task::{Context, Poll};

use futures_util::future::Either;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::Status;

use crate::context::Ctx;

/// etcd's message for a call a learner does not serve.
pub const NOT_SUPPORTED_FOR_LEARNER: &str = "etcdserver: rpc not supported for learner";

/// gRPC paths a learner serves (a Range only if serializable, checked by the service).
const GRPC_SERVED: &[&str] = &["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];
/// gRPC services whose calls a learner refuses otherwise: every service the client port serves.
const GRPC_SERVICES: &[&str] = &[
    "/etcdserverpb.",
    "/v3lockpb.",
    "/v3electionpb.",
    "/grpc.health.v1.",
];
/// The JSON gateway's path prefixes.
const GATEWAY_PREFIXES: &[&str] = &["/v3/", "/v3beta/"];
/// Gateway routes (below a prefix) a learner serves.
const GATEWAY_SERVED: &[&str] = &["maintenance/status", "kv/range"];

/// etcd's refusal of a call on a learner.
pub fn not_supported() -> Status {
    Status::unavailable(NOT_SUPPORTED_FOR_LEARNER)
}

/// Whether this member is a learner: its own entry in the membership table says so.
pub fn is_learner(ctx: &Ctx) -> bool {
    ctx.cluster
        .borrow()
        .members
        .get(&ctx.headers.member_id())
        .is_some_and(|m| m.is_learner)
}

/// Whether a learner refuses a call to `path` (a gRPC method path such as
/// `/etcdserverpb.KV/Put`, or a gateway path such as `/v3/kv/put`), whatever its request.
pub fn refuses_path(path: &str) -> bool {
    if let Some(route) = GATEWAY_PREFIXES.iter().find_map(|p| path.strip_prefix(p)) {
        return !GATEWAY_SERVED.contains(&route);
    }
    GRPC_SERVICES.iter().any(|s| path.starts_with(s)) && !GRPC_SERVED.contains(&path)
}

/// The refusal of a call to `path` on this member, if it is a learner and the call is not one
/// a learner serves (see [`refuses_path`]).
pub fn refusal(ctx: &Ctx, path: &str) -> Option<Status> {
    (refuses_path(path) && is_learner(ctx)).then(not_supported)
}

/// The refusal of a linearizable Range on a learner (a serializable one is served).
pub fn refuse_linearizable_range(ctx: &Ctx, serializable: bool) -> Result<(), Status> {
    if !serializable && is_learner(ctx) {
        return Err(not_supported());
    }
    Ok(())
}

/// A layer for the client server that answers [`refusal`]s before any service sees the call:
/// as a gRPC status, or as the gateway's JSON error for gateway paths. CORS preflights pass.
#[derive(Clone)]
pub struct LearnerLayer {
    ctx: Ctx,
}

impl LearnerLayer {
    /// The layer for the member of `ctx`.
    pub fn new(ctx: Ctx) -> Self {
        LearnerLayer { ctx }
    }
}

impl<S> tower_layer::Layer<S> for LearnerLayer {
    type Service = LearnerGate<S>;

    fn layer(&self, inner: S) -> LearnerGate<S> {
        LearnerGate {
            ctx: self.ctx.clone(),
            inner,
        }
    }
}

/// The service [`LearnerLayer`] wraps around the client server's routes.
#[derive(Clone)]
pub struct LearnerGate<S> {
    ctx: Ctx,
    inner: S,
}

impl<S, B> Service<http::Request<B>> for LearnerGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if req.method() != http::Method::OPTIONS {
            if let Some(status) = refusal(&self.ctx, path) {
                let resp = if GATEWAY_PREFIXES.iter().any(|p| path.starts_with(p)) {
                    crate::gateway::status_response(&status).map(tonic::body::Body::new)
                } else {
                    status.into_http()
                };
                return Either::Left(std::future::ready(Ok(resp)));
            }
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::refuses_path;

    #[test]
    fn learners_serve_status_and_range_only() {
        for served in [
            "/etcdserverpb.Maintenance/Status",
            "/etcdserverpb.KV/Range",
            "/v3/maintenance/status",
            "/v3beta/kv/range",
            // Not the client API: left to the server (unknown paths answer Unimplemented).
            "/raftkvpb.Peer/Messages",
        ] {
            assert!(!refuses_path(served), "{served}");
        }
        for refused in [
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.KV/Txn",
            "/etcdserverpb.Watch/Watch",
            "/etcdserverpb.Lease/LeaseKeepAlive",
            "/etcdserverpb.Cluster/MemberList",
            "/etcdserverpb.Cluster/MemberPromote",
            "/etcdserverpb.Maintenance/Snapshot",
            "/etcdserverpb.Maintenance/HashKV",
            "/v3lockpb.Lock/Lock",
            "/v3electionpb.Election/Observe",
            "/grpc.health.v1.Health/Check",
            "/v3/kv/put",
            "/v3/watch",
            "/v3beta/cluster/member/list",
        ] {
            assert!(refuses_path(refused), "{refused}");
        }
    }
}
