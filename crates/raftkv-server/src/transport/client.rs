//! The outbound side: [`PeerTransport`], raftkv-raft's [`Transport`] over gRPC.
//!
//! Each peer has a *link*: a bounded queue the node thread pushes into (`try_send`, never
//! blocking) and one long-lived task that dials the peer and keeps a `Messages` client stream
//! open. The stream pulls straight from the queue: when HTTP/2 can take more it takes every
//! message waiting (up to [`TransportConfig::max_batch_bytes`]) and encodes them into one
//! `RaftMessageBatch`, so a busy link batches by itself and an idle one sends each message at
//! once, with no task or copy per message. When the connection or stream breaks, the task
//! re-dials with exponential backoff, and what was queued while the peer was unreachable is
//! dropped rather than replayed, as etcd does (Raft resends what the peer still needs). A queue
//! that fills up while its stream is slow drops new messages with a rate-limited warning.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use protobuf::Message as _;
use raft::prelude::Message;
use raftkv_proto::raftkvpb::peer_client::PeerClient;
use raftkv_proto::raftkvpb::RaftMessageBatch;
use raftkv_raft::{SnapshotDone, SnapshotSource, Transport};
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::{AbortHandle, JoinHandle};
use tonic::transport::{Channel, Endpoint};

use super::error::chain;
use super::snapshot::{self, DoneGuard};
use super::{TransportConfig, TransportError, MAX_MESSAGE_BYTES};

/// At most one "queue full" warning per peer per this long.
const DROP_WARN_EVERY: Duration = Duration::from_secs(5);

/// Sends Raft messages and snapshots to the other members over gRPC. Cheap to clone: clones
/// share the links, so the node can own one while the server keeps another for membership
/// changes. The links' tasks stop when the last clone is dropped or the peer is removed.
#[derive(Clone)]
pub struct PeerTransport {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Handle,
    self_id: u64,
    cfg: TransportConfig,
    /// Peer id -> link. A std lock: held only to look up or swap links, never across `.await`.
    peers: RwLock<HashMap<u64, Link>>,
    /// Told when a peer cannot be dialled (set once the node exists; see
    /// [`PeerTransport::on_unreachable`]).
    unreachable: Arc<std::sync::OnceLock<UnreachableHook>>,
}

/// What a transport calls with a peer's id when it cannot reach it.
pub type UnreachableHook = Box<dyn Fn(u64) + Send + Sync>;

/// One peer: its queue, the task draining it, and any snapshot streams to it.
struct Link {
    endpoints: Arc<[Endpoint]>,
    queue: mpsc::Sender<Message>,
    drops: DropCounter,
    task: JoinHandle<()>,
    snapshots: Vec<AbortHandle>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
        for s in &self.snapshots {
            s.abort();
        }
    }
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers = self
            .inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<_> = peers.keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("PeerTransport")
            .field("self_id", &self.inner.self_id)
            .field("peers", &ids)
            .finish()
    }
}

impl PeerTransport {
    /// A transport for node `self_id` that spawns its tasks on `runtime`, with
    /// [`TransportConfig::default`]. `peers` are `(id, urls)` pairs with URLs such as
    /// `http://10.0.0.2:2380`; an entry for `self_id` is ignored, so a whole initial cluster
    /// may be passed.
    pub fn new(
        runtime: Handle,
        self_id: u64,
        peers: impl IntoIterator<Item = (u64, Vec<String>)>,
    ) -> Result<Self, TransportError> {
        Self::with_config(runtime, self_id, peers, TransportConfig::default())
    }

    /// [`PeerTransport::new`] with explicit settings.
    pub fn with_config(
        runtime: Handle,
        self_id: u64,
        peers: impl IntoIterator<Item = (u64, Vec<String>)>,
        cfg: TransportConfig,
    ) -> Result<Self, TransportError> {
        cfg.validate()?;
        let transport = PeerTransport {
            inner: Arc::new(Inner {
                runtime,
                self_id,
                cfg,
                peers: RwLock::new(HashMap::new()),
                unreachable: Arc::new(std::sync::OnceLock::new()),
            }),
        };
        for (id, urls) in peers {
            transport.add_peer(id, urls)?;
        }
        Ok(transport)
    }

    /// This node's id.
    pub fn self_id(&self) -> u64 {
        self.inner.self_id
    }

    /// Starts a link to peer `id` at `urls` (tried in turn), replacing any link it had. Ignores
    /// this node's own id. Fails, changing nothing, if a URL does not parse or none is given.
    pub fn add_peer(&self, id: u64, urls: Vec<String>) -> Result<(), TransportError> {
        if id == self.inner.self_id {
            return Ok(());
        }
        if urls.is_empty() {
            return Err(TransportError::NoUrl { peer: id });
        }
        let cfg = &self.inner.cfg;
        let endpoints = urls
            .into_iter()
            .map(|url| {
                // Only the dialled socket changes; the link stays the peer's (see `dial`).
                let url = super::dial::dial_url(&url)?;
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|source| TransportError::InvalidUrl {
                        peer: id,
                        url,
                        source,
                    })?
                    .connect_timeout(cfg.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(cfg.keep_alive_interval)
                    .keep_alive_timeout(cfg.keep_alive_timeout)
                    .keep_alive_while_idle(true);
                Ok(endpoint)
            })
            .collect::<Result<Arc<[Endpoint]>, TransportError>>()?;
        let (queue, rx) = mpsc::channel(cfg.queue_len);
        let outbox = Arc::new(Mutex::new(Outbox { generation: 0, rx }));
        let task = self
            .inner
            .runtime
            .spawn(tracing::Instrument::in_current_span(run_link(
                id,
                Arc::clone(&endpoints),
                Arc::clone(&self.inner.unreachable),
                outbox,
                cfg.clone(),
            )));
        let link = Link {
            endpoints,
            queue,
            drops: DropCounter::default(),
            task,
            snapshots: Vec::new(),
        };
        let old = self.peers_mut().insert(id, link);
        tracing::debug!(peer = id, replaced = old.is_some(), "peer link added");
        // `old` (if any) is dropped here, outside the lock: its task is aborted.
        drop(old);
        Ok(())
    }

    /// Stops the link to peer `id` (its stream and any snapshot in flight). Returns whether
    /// there was one. Messages to it are dropped from now on.
    pub fn remove_peer(&self, id: u64) -> bool {
        let old = self.peers_mut().remove(&id);
        if old.is_some() {
            tracing::debug!(peer = id, "peer link removed");
        }
        old.is_some()
    }

    /// Sets what the transport calls when a peer cannot be dialled: a node passes
    /// `NodeHandle::report_unreachable`, so Raft probes the peer instead of streaming appends
    /// into a dead link. Only the first call takes effect.
    pub fn on_unreachable(&self, hook: UnreachableHook) {
        let _ = self.inner.unreachable.set(hook);
    }

    /// The ids of the peers this transport has links to, sorted.
    pub fn peers(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.peers_ref().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn peers_ref(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Link>> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn peers_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Link>> {
        self.inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for PeerTransport {
    fn send(&self, messages: Vec<Message>) {
        let peers = self.peers_ref();
        for m in messages {
            let to = m.to;
            let Some(link) = peers.get(&to) else {
                tracing::debug!(peer = to, msg_type = ?m.get_msg_type(), "no link to peer: message dropped");
                continue;
            };
            match link.queue.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => link.drops.record(to),
                Err(TrySendError::Closed(_)) => {
                    tracing::debug!(peer = to, "peer link stopped: message dropped");
                }
            }
        }
    }

    fn send_snapshot(&self, msg: Message, data: Box<dyn SnapshotSource>, done: SnapshotDone) {
        let to = msg.to;
        let mut peers = self.peers_mut();
        let Some(link) = peers.get_mut(&to) else {
            drop(peers);
            tracing::warn!(peer = to, "no link to peer: snapshot not sent");
            done(false);
            return;
        };
        let endpoints = Arc::clone(&link.endpoints);
        let cfg = self.inner.cfg.clone();
        let index = msg.get_snapshot().get_metadata().index;
        let task = self.inner.runtime.spawn(tracing::Instrument::in_current_span(async move {
            let done = DoneGuard::new(done);
            let started = Instant::now();
            match snapshot::send(to, &endpoints, msg, data, &cfg).await {
                Ok(()) => {
                    tracing::info!(peer = to, index, elapsed = ?started.elapsed(), "snapshot sent");
                    done.finish(true);
                }
                Err(e) => {
                    tracing::warn!(peer = to, index, error = %e, "snapshot not sent");
                    done.finish(false);
                }
            }
        }));
        link.snapshots.retain(|s| !s.is_finished());
        link.snapshots.push(task.abort_handle());
    }
}

/// Counts messages dropped on a full queue; warns at most every [`DROP_WARN_EVERY`].
#[derive(Default)]
struct DropCounter {
    dropped: std::sync::atomic::AtomicU64,
    last_warn: Mutex<Option<Instant>>,
}

impl DropCounter {
    fn record(&self, peer: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.dropped.fetch_add(1, Relaxed);
        let Ok(mut last) = self.last_warn.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= DROP_WARN_EVERY) {
            *last = Some(now);
            let dropped = self.dropped.swap(0, Relaxed);
            tracing::warn!(
                peer,
                dropped,
                "peer queue full: messages dropped (raft retransmits)"
            );
        }
    }
}

/// The receiving end of a link's queue, shared by the link task and the stream of the current
/// connection. Each connection's stream has a generation; a stream from an older connection
/// that is still polled sees a newer generation and ends instead of taking messages.
struct Outbox {
    generation: u64,
    rx: mpsc::Receiver<Message>,
}

/// The body of one `Messages` call: batches of whatever is queued.
struct BatchStream {
    outbox: Arc<Mutex<Outbox>>,
    generation: u64,
    max_bytes: usize,
    peer: u64,
}

impl Stream for BatchStream {
    type Item = RaftMessageBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RaftMessageBatch>> {
        let this = self.get_mut();
        // Uncontended: only this stream polls; the node thread pushes through the sender.
        let mut outbox = this.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if outbox.generation != this.generation {
            return Poll::Ready(None);
        }
        let Some(first) = ready!(outbox.rx.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        let mut batch = RaftMessageBatch::default();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m.write_to_bytes() {
                Ok(b) => {
                    bytes += b.len();
                    batch.messages.push(b);
                }
                Err(e) => {
                    tracing::warn!(peer = this.peer, error = %e, "cannot encode a raft message: dropped");
                }
            }
            if bytes < this.max_bytes {
                next = outbox.rx.try_recv().ok();
            }
        }
        Poll::Ready(Some(batch))
    }
}

/// A link's task: dial, stream until it breaks, back off, again. Ends when aborted (peer removed
/// or transport dropped) or when its queue's sender is gone.
async fn run_link(
    peer: u64,
    endpoints: Arc<[Endpoint]>,
    unreachable: Arc<std::sync::OnceLock<UnreachableHook>>,
    outbox: Arc<Mutex<Outbox>>,
    cfg: TransportConfig,
) {
    let mut backoff = cfg.backoff_min;
    let mut url = 0;
    // Whether the peer's loss was reported; the next connection is then reported too.
    let mut down = false;
    let mut first_attempt = true;
    loop {
        if !first_attempt {
            // What was queued while the peer was unreachable is stale: drop it rather than
            // replay it (appends raft has moved past, a full queue of them for a long outage).
            // Raft notices the gap (a rejected append, a heartbeat) and resends what is needed.
            let dropped = discard_queued(&outbox);
            if dropped > 0 {
                tracing::debug!(
                    peer,
                    dropped,
                    "messages queued while the peer was unreachable dropped"
                );
            }
        }
        first_attempt = false;
        let endpoint = &endpoints[url % endpoints.len()];
        match endpoint.connect().await {
            Ok(channel) => {
                if down {
                    tracing::info!(peer, url = %endpoint.uri(), "peer reachable again");
                    down = false;
                } else {
                    tracing::debug!(peer, url = %endpoint.uri(), "connected to peer");
                }
                let started = Instant::now();
                let outcome = stream_messages(peer, channel, &outbox, &cfg).await;
                let closed = outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .rx
                    .is_closed();
                if closed {
                    return;
                }
                match outcome {
                    Ok(()) => tracing::info!(peer, "peer ended the message stream"),
                    Err(status) => tracing::info!(
                        peer,
                        code = ?status.code(),
                        message = status.message(),
                        "message stream to peer broken"
                    ),
                }
                // A stream that lived a while was healthy: start backing off from scratch.
                if started.elapsed() >= cfg.backoff_max {
                    backoff = cfg.backoff_min;
                }
            }
            Err(e) => {
                // Raft then stops streaming appends to the peer until it answers again.
                if let Some(report) = unreachable.get() {
                    report(peer);
                }
                if !down {
                    tracing::warn!(peer, url = %endpoint.uri(), error = %chain(&e), "cannot connect to peer");
                    down = true;
                } else {
                    tracing::debug!(peer, url = %endpoint.uri(), error = %chain(&e), "cannot connect to peer");
                }
                url += 1;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// Empties the queue; returns how many messages it held.
fn discard_queued(outbox: &Mutex<Outbox>) -> usize {
    let mut outbox = outbox.lock().unwrap_or_else(PoisonError::into_inner);
    let mut n = 0;
    while outbox.rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// One `Messages` call on `channel`, feeding it from the outbox until the call ends.
async fn stream_messages(
    peer: u64,
    channel: Channel,
    outbox: &Arc<Mutex<Outbox>>,
    cfg: &TransportConfig,
) -> Result<(), tonic::Status> {
    let generation = {
        let mut o = outbox.lock().unwrap_or_else(PoisonError::into_inner);
        o.generation += 1;
        o.generation
    };
    let stream = BatchStream {
        outbox: Arc::clone(outbox),
        generation,
        max_bytes: cfg.max_batch_bytes,
        peer,
    };
    let mut client = PeerClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let answer = client.messages(stream).await;
    // Retire this call's stream even if hyper still holds it.
    outbox
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .generation += 1;
    answer.map(|_| ())
}
