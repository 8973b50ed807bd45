//! The gateway's routes: etcd 3.4's paths (all POST), each calling the member's gRPC service
//! in-process through its tonic trait method, so answers and errors are the gRPC ones.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use raftkv_proto::etcdserverpb::cluster_server::Cluster;
use raftkv_proto::etcdserverpb::kv_server::Kv;
use raftkv_proto::etcdserverpb::lease_server::Lease;
use raftkv_proto::etcdserverpb::maintenance_server::Maintenance;
use raftkv_proto::etcdserverpb::watch_server::Watch;
use raftkv_proto::etcdserverpb::{
    AlarmRequest, CompactionRequest, DefragmentRequest, DeleteRangeRequest, HashRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest, MemberPromoteRequest,
    MemberRemoveRequest, MemberUpdateRequest, MoveLeaderRequest, PutRequest, RangeRequest,
    SnapshotRequest, StatusRequest, TxnRequest, WatchRequest,
};

use super::json;
use super::stream;
use super::Services;

type Shared = State<Arc<Services>>;

/// A unary route: the body decoded as `$req`, passed to `$svc.$method`.
macro_rules! unary {
    ($name:ident, $svc:ident, $method:ident, $req:ty) => {
        async fn $name(State(s): Shared, body: Bytes) -> Response {
            match json::decode::<$req>(&body) {
                Ok(req) => match too_large(&req, s.max_message_bytes) {
                    Some(refused) => refused,
                    None => json::reply(s.$svc.$method(tonic::Request::new(req)).await),
                },
                Err(e) => json::decode_error_response(&e),
            }
        }
    };
}

/// etcd's gateway hands requests to gRPC, whose size limit (`--max-request-bytes` plus 512 KiB)
/// refuses larger ones before the service sees them, with gRPC's own message.
fn too_large<T: prost::Message>(req: &T, limit: usize) -> Option<Response> {
    let len = req.encoded_len();
    (len > limit).then(|| {
        json::status_response(&tonic::Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {limit})"
        )))
    })
}

unary!(range, kv, range, RangeRequest);
unary!(put, kv, put, PutRequest);
unary!(delete_range, kv, delete_range, DeleteRangeRequest);
unary!(txn, kv, txn, TxnRequest);
unary!(compact, kv, compact, CompactionRequest);
unary!(lease_grant, lease, lease_grant, LeaseGrantRequest);
unary!(lease_revoke, lease, lease_revoke, LeaseRevokeRequest);
unary!(
    lease_time_to_live,
    lease,
    lease_time_to_live,
    LeaseTimeToLiveRequest
);
unary!(lease_leases, lease, lease_leases, LeaseLeasesRequest);
unary!(member_add, cluster, member_add, MemberAddRequest);
unary!(member_remove, cluster, member_remove, MemberRemoveRequest);
unary!(member_update, cluster, member_update, MemberUpdateRequest);
unary!(member_list, cluster, member_list, MemberListRequest);
unary!(
    member_promote,
    cluster,
    member_promote,
    MemberPromoteRequest
);
unary!(alarm, maintenance, alarm, AlarmRequest);
unary!(status, maintenance, status, StatusRequest);
unary!(defragment, maintenance, defragment, DefragmentRequest);
unary!(hash, maintenance, hash, HashRequest);
unary!(move_leader, maintenance, move_leader, MoveLeaderRequest);

async fn lease_keep_alive(State(s): Shared, body: Body) -> Response {
    match stream::open::<LeaseKeepAliveRequest>(body, body_limit(&s)).await {
        Ok(requests) => {
            stream::reply(
                s.lease
                    .lease_keep_alive(tonic::Request::new(requests))
                    .await,
            )
            .await
        }
        Err(refused) => refused,
    }
}

async fn watch(State(s): Shared, body: Body) -> Response {
    match stream::open::<WatchRequest>(body, body_limit(&s)).await {
        Ok(requests) => stream::reply(s.watch.watch(tonic::Request::new(requests)).await).await,
        Err(refused) => refused,
    }
}

async fn snapshot(State(s): Shared, body: Bytes) -> Response {
    match json::decode::<SnapshotRequest>(&body) {
        Ok(req) => stream::reply(s.maintenance.snapshot(tonic::Request::new(req)).await).await,
        Err(e) => json::decode_error_response(&e),
    }
}

/// grpc-gateway's answer for a path it does not serve.
async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "Not Found\n")
}

/// grpc-gateway's answer for a served path with another method than POST.
async fn method_not_allowed() -> Response {
    plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The most JSON bytes one request may take: base64 (and JSON's quoting) spells a message in at
/// most about twice its size.
fn body_limit(s: &Services) -> usize {
    2 * s.max_message_bytes + 1024
}

/// Every route under each of `prefixes` (etcd 3.4 serves `/v3` and `/v3beta`). Bodies far above
/// the message limit are refused (413) before they are decoded.
pub(crate) fn router(services: Arc<Services>, prefixes: &[&str]) -> Router {
    let body_limit = body_limit(&services);
    let mut r: Router<Arc<Services>> = Router::new();
    for p in prefixes {
        r = r
            .route(&format!("{p}/kv/range"), post(range))
            .route(&format!("{p}/kv/put"), post(put))
            .route(&format!("{p}/kv/deleterange"), post(delete_range))
            .route(&format!("{p}/kv/txn"), post(txn))
            .route(&format!("{p}/kv/compaction"), post(compact))
            .route(&format!("{p}/lease/grant"), post(lease_grant))
            .route(&format!("{p}/lease/revoke"), post(lease_revoke))
            .route(&format!("{p}/kv/lease/revoke"), post(lease_revoke))
            .route(&format!("{p}/lease/timetolive"), post(lease_time_to_live))
            .route(
                &format!("{p}/kv/lease/timetolive"),
                post(lease_time_to_live),
            )
            .route(&format!("{p}/lease/leases"), post(lease_leases))
            .route(&format!("{p}/kv/lease/leases"), post(lease_leases))
            .route(&format!("{p}/lease/keepalive"), post(lease_keep_alive))
            .route(&format!("{p}/watch"), post(watch))
            .route(&format!("{p}/cluster/member/add"), post(member_add))
            .route(&format!("{p}/cluster/member/remove"), post(member_remove))
            .route(&format!("{p}/cluster/member/update"), post(member_update))
            .route(&format!("{p}/cluster/member/list"), post(member_list))
            .route(&format!("{p}/cluster/member/promote"), post(member_promote))
            .route(&format!("{p}/maintenance/alarm"), post(alarm))
            .route(&format!("{p}/maintenance/status"), post(status))
            .route(&format!("{p}/maintenance/defragment"), post(defragment))
            .route(&format!("{p}/maintenance/hash"), post(hash))
            .route(&format!("{p}/maintenance/snapshot"), post(snapshot))
            .route(
                &format!("{p}/maintenance/transfer-leadership"),
                post(move_leader),
            );
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(services)
}
