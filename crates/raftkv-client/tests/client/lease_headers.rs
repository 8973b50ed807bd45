//! The keeper against a server that, like etcd's (grpc-go), sends a keep-alive stream's
//! response headers only with its first answer: the keeper must send its first request with
//! the call, not after the stream has opened, or the stream never opens and the lease is
//! reported lost after its TTL.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv_client::{Client, ClientOptions};
use raftkv_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use raftkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::eventually;

const TTL: i64 = 3;

/// Answers keep-alives, but opens the response stream only once the first request arrived.
struct HeadersAfterFirstRequest {
    answered: Arc<AtomicU64>,
}

type Answers =
    Pin<Box<dyn futures_util::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for HeadersAfterFirstRequest {
    async fn lease_grant(
        &self,
        _: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        Ok(Response::new(LeaseGrantResponse {
            id: 7,
            ttl: TTL,
            ..Default::default()
        }))
    }

    async fn lease_revoke(
        &self,
        _: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(LeaseRevokeResponse::default()))
    }

    type LeaseKeepAliveStream = Answers;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let mut inbound = request.into_inner();
        // No headers (no Response) until the client has asked once.
        let first = inbound.message().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let answered = Arc::clone(&self.answered);
        tokio::spawn(async move {
            let mut next = first;
            while let Some(req) = next {
                answered.fetch_add(1, Ordering::Relaxed);
                let answer = LeaseKeepAliveResponse {
                    id: req.id,
                    ttl: TTL,
                    ..Default::default()
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
                next = inbound.message().await.ok().flatten();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        _: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Err(Status::unimplemented("not needed by this test"))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Err(Status::unimplemented("not needed by this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_works_with_servers_that_send_headers_with_the_first_answer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let service = HeadersAfterFirstRequest {
        answered: Arc::clone(&answered),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LeaseServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = Client::connect([addr.to_string()], ClientOptions::default())
        .await
        .unwrap();
    let keeper = client.lease_keeper(TTL).await.unwrap();
    // Renewed every TTL/3: four answers take about 3 s, past the TTL.
    eventually(Duration::from_secs(15), "four keep-alives answered", || {
        let answered = Arc::clone(&answered);
        async move { (answered.load(Ordering::Relaxed) >= 4).then_some(()) }
    })
    .await;
    assert_eq!(keeper.is_lost(), None);
}
