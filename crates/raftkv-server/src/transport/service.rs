//! The inbound side: [`PeerService`], the tonic `raftkvpb.Peer` service over a local
//! [`NodeHandle`].
//!
//! `Messages` decodes each message of each batch and steps it into the node. `Snapshot` takes
//! the `MsgSnapshot` from the first chunk and calls [`NodeHandle::install_snapshot`] at once,
//! with a reader the node thread consumes while the rest of the chunks still arrive: the
//! handler's own async loop feeds that reader through a bounded channel, so nothing blocks a
//! runtime worker and only a few chunks are ever held in memory.
//!
//! Peer streams are long-lived, so a graceful gRPC shutdown would wait on them forever:
//! [`PeerCloser::close`] ends every open stream of the service (call it when shutting down).

use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raftkv_proto::raftkvpb::peer_server::{Peer, PeerServer};
use raftkv_proto::raftkvpb::{PeerAck, RaftMessageBatch, SnapshotChunk};
use raftkv_raft::NodeHandle;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::snapshot::{ChunkReader, Piece};
use super::MAX_MESSAGE_BYTES;

/// Chunks buffered between an incoming snapshot stream and the node thread reading it.
const SNAPSHOT_QUEUE_CHUNKS: usize = 4;

/// The status open streams end with once the service is closed.
const CLOSING: &str = "peer service shutting down";

/// Receives Raft traffic for one node. Serve it with [`PeerService::into_server`].
pub struct PeerService<O> {
    node: NodeHandle<O>,
    /// `true` once closed; every handler watches it.
    closing: Arc<watch::Sender<bool>>,
}

/// Ends the open streams of a [`PeerService`] (and any opened later). Cloneable.
#[derive(Clone, Debug)]
pub struct PeerCloser(Arc<watch::Sender<bool>>);

impl PeerCloser {
    /// Ends every open `Messages` and `Snapshot` stream with `Unavailable` and refuses new ones,
    /// so that a graceful server shutdown does not wait on them. Peers re-dial with backoff.
    pub fn close(&self) {
        self.0.send_replace(true);
    }
}

impl<O: Send + 'static> PeerService<O> {
    /// A service that delivers to `node`.
    pub fn new(node: NodeHandle<O>) -> Self {
        PeerService {
            node,
            closing: Arc::new(watch::channel(false).0),
        }
    }

    /// A handle that ends this service's streams; see [`PeerCloser::close`].
    pub fn closer(&self) -> PeerCloser {
        PeerCloser(Arc::clone(&self.closing))
    }

    /// The tonic server for this service, accepting messages up to
    /// [`super::MAX_MESSAGE_BYTES`] (batched appends, snapshot chunks).
    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn step_batch(&self, batch: RaftMessageBatch) {
        let id = self.node.id();
        for bytes in &batch.messages {
            match Message::parse_from_bytes(bytes) {
                Ok(m) if m.to == id => self.node.step(m),
                Ok(m) => tracing::debug!(
                    node = id,
                    to = m.to,
                    from = m.from,
                    "message for another node dropped"
                ),
                Err(e) => {
                    tracing::warn!(node = id, error = %e, "undecodable raft message dropped");
                }
            }
        }
    }
}

/// Resolves once the service is closed (or can no longer be: its sender is gone).
async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|closing| *closing).await;
}

#[tonic::async_trait]
impl<O: Send + 'static> Peer for PeerService<O> {
    async fn messages(
        &self,
        request: Request<Streaming<RaftMessageBatch>>,
    ) -> Result<Response<PeerAck>, Status> {
        let mut closing = self.closing.subscribe();
        let mut stream = request.into_inner();
        loop {
            let next = tokio::select! {
                biased;
                () = closed(&mut closing) => return Err(Status::unavailable(CLOSING)),
                next = stream.message() => next?,
            };
            match next {
                Some(batch) => self.step_batch(batch),
                None => return Ok(Response::new(PeerAck {})),
            }
        }
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<PeerAck>, Status> {
        let id = self.node.id();
        let mut closing = self.closing.subscribe();
        let mut stream = request.into_inner();
        let first = tokio::select! {
            biased;
            () = closed(&mut closing) => return Err(Status::unavailable(CLOSING)),
            first = stream.message() => first?,
        }
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let msg = Message::parse_from_bytes(&first.raft_message)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot message: {e}")))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot || msg.to != id {
            return Err(Status::invalid_argument(format!(
                "expected a snapshot message for node {id}, got {:?} for node {}",
                msg.get_msg_type(),
                msg.to
            )));
        }
        let (from, index) = (msg.from, msg.get_snapshot().get_metadata().index);
        tracing::info!(node = id, from, index, "receiving snapshot");
        let (tx, reader) = ChunkReader::channel(SNAPSHOT_QUEUE_CHUNKS);
        let feed = feed(first, stream, tx, closing);
        let install = self.node.install_snapshot(msg, Box::new(reader));
        let ((), installed) = tokio::join!(feed, install);
        if installed {
            tracing::info!(node = id, from, index, "snapshot installed");
            Ok(Response::new(PeerAck {}))
        } else {
            tracing::warn!(node = id, from, index, "snapshot not installed");
            Err(Status::internal("snapshot not installed"))
        }
    }
}

/// Moves chunk data from the stream to the node thread's reader, starting with `first`'s, until
/// the last chunk, a failure (sent to the reader as [`Piece::Broken`]) or the reader is gone.
async fn feed(
    first: SnapshotChunk,
    mut stream: Streaming<SnapshotChunk>,
    tx: mpsc::Sender<Piece>,
    mut closing: watch::Receiver<bool>,
) {
    let mut chunk = first;
    loop {
        let last = chunk.last;
        let piece = if last {
            Piece::Last(chunk.data)
        } else {
            Piece::Data(chunk.data)
        };
        // An error means the reader is gone: the install ended (failed) without the rest.
        if tx.send(piece).await.is_err() || last {
            return;
        }
        let failure = tokio::select! {
            biased;
            () = closed(&mut closing) => CLOSING.to_string(),
            next = stream.message() => match next {
                Ok(Some(c)) => {
                    chunk = c;
                    continue;
                }
                Ok(None) => "snapshot stream ended before its last chunk".to_string(),
                Err(status) => format!("snapshot stream broken: {}", status.message()),
            },
        };
        let _ = tx.send(Piece::Broken(failure)).await;
        return;
    }
}
