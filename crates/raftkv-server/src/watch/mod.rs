//! The etcd v3 Watch service: history replay, then live events, on bidirectional streams that
//! each carry many watchers.
//!
//! # Design
//! ```text
//! apply thread --revision (watch channel)--> hub task --Arc<LiveBatch> (broadcast)--> stream tasks --> gRPC
//!                                               |                                        |
//!                                  store.history(next..)             store.history(w.next..), only when behind
//!                                               v                                        v
//!                                             Store <------------------------------------+
//! ```
//! - The apply thread only publishes its revision on a `watch` channel: writes never wait for a
//!   watcher, however slow.
//! - `hub`: one task reads every newly applied revision range from the store once (bounded
//!   batches, prev_kv only while some watcher wants it) and broadcasts it on a bounded
//!   `tokio::sync::broadcast`. It never waits for receivers.
//! - `stream`: one task per gRPC stream owns that stream's watchers (no locks, no shared maps):
//!   it reads the client's requests, filters live batches for its watchers, and writes responses
//!   into a small bounded queue that tonic drains. A stalled client fills that queue, so its task
//!   stops reading the live feed, lags, and later reads what it missed from the store in bounded
//!   batches; other streams and the hub are unaffected.
//! - Each watcher carries `next`, the first revision it has not seen. Live and history
//!   deliveries hand it only events at or above `next` and move `next` past their range, so
//!   switching from history to the live feed (subscribe first, catch up from the store, let
//!   `next` drop the overlap) has no gap and no duplicate; a live batch starting above `next`
//!   (the stream lagged, or the hub skipped compacted revisions) sends the watcher back to the
//!   store instead.
//! - `watcher` holds one watcher's keys, filters and position; `response` cuts events into
//!   responses (etcd's fragmenting, or whole revisions under the size bound).
//!
//! Costs: every stream task wakes for every live batch and scans its own watchers (the hub
//! coalesces revisions applied while it was busy into one batch). Memory, measured with
//! `examples/watch_memory.rs`: about 210 B per idle watcher and 14 KB per idle stream, most of
//! it tonic's per-stream codec buffers (etcd publishes 350 B and 18 KB). Retained live batches
//! are bounded by [`WatchConfig::live_buffer`]; a lagging stream holds one history batch.
//!
//! # etcd behaviours kept (checked against etcd 3.4.23)
//! - `watch_id` 0 asks for an id: the stream's counter from 0, skipping ids in use. A
//!   duplicate id, or `key >= range_end`, is answered `created` + `canceled` with watch id -1
//!   and etcd's mvcc reason text. An empty key means `"\0"`; `range_end` `"\0"` means "from
//!   key".
//! - Created and cancel responses carry the current store revision; event responses carry the
//!   last revision the response covers (for live events, the write's revision).
//! - A start revision below the compact revision: `created`, then `canceled` with
//!   `compact_revision` and header revision 0; the id stays taken until the client cancels it.
//! - A negative start revision is refused at once (etcd 3.5's answer; 3.4 misbehaves).
//! - Progress requests are answered with watch id -1 only once every watcher of the stream is in
//!   sync (etcd #15220; a watcher with a future start revision counts as unsynced until the
//!   store reaches it). With no watchers the answer is immediate, as in 3.4. Progress responses
//!   carry the revision up to which the stream has delivered everything (etcd: the current
//!   revision, which its synced watchers have always seen).
//! - Periodic progress (`progress_notify`) goes to in-sync watchers that had no events during
//!   the interval.
//! - Half-closing the request stream keeps the watchers running.

mod hub;
mod response;
mod stream;
mod watcher;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{Map, StreamExt};
use raftkv_mvcc::Store;
use raftkv_proto::etcdserverpb::watch_server::{Watch, WatchServer};
use raftkv_proto::etcdserverpb::{WatchRequest, WatchResponse};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, STOPPED};
use crate::header::Headers;
use hub::LiveBatch;

/// Settings of the Watch service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// How often a quiet `progress_notify` watcher gets an empty response (etcd: 10 minutes,
    /// plus up to 10% jitter per stream).
    pub progress_notify_interval: Duration,
    /// Responses are kept under this many encoded bytes when possible; above it, a watcher
    /// that asked for `fragment` gets its response in fragments. etcd's bound is
    /// `--max-request-bytes` plus 512 KiB of gRPC overhead: 2 MiB by default.
    pub max_response_bytes: usize,
    /// Events per store history read (the hub's live batches and a lagging stream's catch-up
    /// reads). Whole revisions are always read, so a batch may exceed it by one revision.
    pub batch_events: usize,
    /// Live batches the broadcast keeps for streams that are momentarily behind; a stream
    /// further behind reads from the store instead.
    pub live_buffer: usize,
    /// Responses queued per stream before the stream task waits for the client.
    pub stream_buffer: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            progress_notify_interval: Duration::from_secs(10 * 60),
            max_response_bytes: 3 * 512 * 1024 + 512 * 1024,
            batch_events: 1000,
            live_buffer: 1024,
            stream_buffer: 16,
        }
    }
}

impl WatchConfig {
    /// Checks that every setting is usable.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            (
                "watch progress notify interval",
                !self.progress_notify_interval.is_zero(),
            ),
            ("watch max response bytes", self.max_response_bytes > 0),
            ("watch batch events", self.batch_events > 0),
            ("watch live buffer", self.live_buffer > 0),
            ("watch stream buffer", self.stream_buffer > 0),
        ];
        match positive.iter().find(|(_, ok)| !ok) {
            Some((name, _)) => Err(Error::Config(format!("{name} must be positive"))),
            None => Ok(()),
        }
    }
}

/// The etcd `Watch` gRPC service. Cheap to clone; all clones share one hub.
#[derive(Clone)]
pub struct WatchService {
    shared: Arc<Shared>,
}

/// What every stream of the service shares. Read-only but for the counters.
struct Shared {
    store: Store,
    headers: Headers,
    cfg: WatchConfig,
    shutdown: watch::Receiver<bool>,
    /// The hub's feed; gone once the hub stopped.
    live: broadcast::WeakSender<Arc<LiveBatch>>,
    /// Watchers (over all streams) that want prev_kv: the hub reads it only while this is > 0.
    prev_kv_demand: Arc<AtomicUsize>,
    /// Streams opened so far (spreads their progress timers).
    streams: AtomicU64,
}

impl WatchService {
    /// The Watch service over `store`. `revisions` carries the store revision after each
    /// applied entry; when `shutdown` becomes true every stream ends (with "etcdserver: server
    /// stopped") and the hub stops. Must be called inside a Tokio runtime: it spawns the hub.
    pub fn new(
        store: Store,
        revisions: watch::Receiver<i64>,
        headers: Headers,
        shutdown: watch::Receiver<bool>,
        cfg: WatchConfig,
    ) -> Self {
        let prev_kv_demand = Arc::new(AtomicUsize::new(0));
        let live = hub::spawn(
            store.clone(),
            revisions,
            shutdown.clone(),
            cfg.live_buffer,
            cfg.batch_events,
            Arc::clone(&prev_kv_demand),
        );
        WatchService {
            shared: Arc::new(Shared {
                store,
                headers,
                cfg,
                shutdown,
                live,
                prev_kv_demand,
                streams: AtomicU64::new(0),
            }),
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> WatchServer<Self> {
        WatchServer::new(self)
    }
}

/// A response as a stream queues it: boxed, so that an idle stream's queue is small.
type Queued = Result<Box<WatchResponse>, Status>;

fn unbox(queued: Queued) -> Result<WatchResponse, Status> {
    queued.map(|resp| *resp)
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Map<ReceiverStream<Queued>, fn(Queued) -> Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let shared = &self.shared;
        if *shared.shutdown.borrow() {
            return Err(Status::unavailable(STOPPED));
        }
        let live = shared
            .live
            .upgrade()
            .ok_or_else(|| Status::unavailable(STOPPED))?
            .subscribe();
        // One slot more than the buffer: the stream keeps it for its final status.
        let (tx, rx) = mpsc::channel(shared.cfg.stream_buffer.max(1) + 1);
        let stream = stream::Stream::open(Arc::clone(shared), live, tx)?;
        let seq = shared.streams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(stream.run(request.into_inner(), seq));
        Ok(Response::new(
            ReceiverStream::new(rx).map(unbox as fn(_) -> _),
        ))
    }
}

/// Resolves once `shutdown` is true. A dropped sender can no longer signal: never resolves.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
