//! The etcd HTTP/JSON gateway: etcd 3.4's grpc-gateway API (`POST /v3/...`, JSON bodies) served
//! on the client port beside gRPC. Its one job is translation: JSON in, the member's own gRPC
//! service called in-process, JSON out, so behaviour and errors are exactly the gRPC ones.
//!
//! - `json`: the proto3 JSON mapping (proto field names, int64 as strings, bytes as base64, zero
//!   values omitted) and grpc-gateway's error bodies and HTTP statuses.
//! - `stream`: streaming calls (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`):
//!   a body of concatenated JSON requests in, one `{"result":...}` line per response out.
//! - `routes`: the paths, each bound to a service method.
//!
//! tonic routes requests by their first path segment (a gRPC service's name), so the gateway is
//! mounted as two named services, [`V3`] and [`V3Beta`], on a client server built with
//! `accept_http1(true)`; HTTP/2 gRPC traffic is untouched.

mod json;
mod routes;
mod stream;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use futures_util::future::BoxFuture;
use tonic::codegen::Service;
use tonic::server::NamedService;

use crate::cluster::ClusterService;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::watch::WatchService;

/// The services the gateway calls: the member's own gRPC service implementations.
pub struct Services {
    /// KV.
    pub kv: KvService,
    /// Lease (shared with the gRPC server: one lease-id generator per member).
    pub lease: Arc<LeaseService>,
    /// Watch.
    pub watch: WatchService,
    /// Cluster.
    pub cluster: ClusterService,
    /// Maintenance.
    pub maintenance: MaintenanceService,
    /// The largest request message gRPC accepts (`--max-request-bytes` plus gRPC's overhead);
    /// the gateway refuses larger ones the way etcd's gateway does.
    pub max_message_bytes: usize,
}

/// The gateway of one client listener.
#[derive(Clone)]
pub struct Gateway {
    router: axum::Router,
}

impl Gateway {
    /// The gateway over `services`.
    pub fn new(services: Services) -> Self {
        Gateway {
            router: routes::router(Arc::new(services), &["/v3", "/v3beta"]),
        }
    }

    /// The `/v3/*` routes, as a service tonic's router mounts.
    pub fn v3(&self) -> V3 {
        V3(self.clone())
    }

    /// The `/v3beta/*` routes (etcd 3.4 still serves them).
    pub fn v3beta(&self) -> V3Beta {
        V3Beta(self.clone())
    }

    fn serve<B>(&mut self, req: Request<B>) -> BoxFuture<'static, Result<Response, Infallible>>
    where
        B: tonic::codegen::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        // etcd's default `--cors '*'`: every answer carries these, and preflights succeed.
        if req.method() == Method::OPTIONS {
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::OK;
            cors(&mut resp);
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let fut = self.router.call(req.map(axum::body::Body::new));
        Box::pin(async move {
            let mut resp = fut.await?;
            cors(&mut resp);
            Ok(resp)
        })
    }
}

/// The gateway's answer for a call refused before the gateway sees it (a learner's refusals,
/// see [`crate::learner`]): the error body and CORS headers its routes give.
pub(crate) fn status_response(status: &tonic::Status) -> Response {
    let mut resp = json::status_response(status);
    cors(&mut resp);
    resp
}

fn cors(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

macro_rules! named {
    ($ty:ident, $name:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone)]
        pub struct $ty(Gateway);

        impl NamedService for $ty {
            const NAME: &'static str = $name;
        }

        impl<B> Service<Request<B>> for $ty
        where
            B: tonic::codegen::Body<Data = axum::body::Bytes> + Send + 'static,
            B::Error: Into<axum::BoxError>,
        {
            type Response = Response;
            type Error = Infallible;
            type Future = BoxFuture<'static, Result<Response, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: Request<B>) -> Self::Future {
                self.0.serve(req)
            }
        }
    };
}

named!(V3, "v3", "The gateway's `/v3/*` routes.");
named!(V3Beta, "v3beta", "The gateway's `/v3beta/*` routes.");
