//! One task per gRPC Watch stream: it owns the stream's watchers, reads the client's requests,
//! filters the hub's live batches for them, catches lagging watchers up from the store, and
//! writes responses to a small bounded queue that tonic drains.
//!
//! Every watcher carries `next`, the first revision it has not seen. Delivery of a range of
//! revisions `from..=to` (live or from history) hands a watcher only events at or above its
//! `next` and then moves `next` past `to`, so nothing is delivered twice; a live batch that
//! starts above a watcher's `next` would leave a gap, so the watcher is marked `behind` instead
//! and reads the missing revisions from the store. That is the whole protocol between history
//! and the live feed: subscribe first, then catch up from storage, and let `next` drop the
//! overlap.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use raftkv_mvcc::{RequestError, Store};
use raftkv_proto::etcdserverpb::{
    watch_request::RequestUnion, RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use raftkv_proto::mvccpb::Event;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tonic::{Status, Streaming};

use super::hub::LiveBatch;
use super::response;
use super::watcher::{Keys, Options, Watcher, DUPLICATE_ID};
use super::{stopped, Queued, Shared};
use crate::error::{store_status, STOPPED};

/// etcd's cancel reason for a negative start revision (etcd 3.5+; 3.4 answers nonsense).
const NEGATIVE_START: &str = "etcdserver: mvcc: required revision has been compacted";

/// Why a stream ends.
enum End {
    /// The server is shutting down.
    Shutdown,
    /// The client went away (response stream dropped or request stream broken).
    ClientGone,
    /// The store failed.
    Failed(Status),
}

type Out = mpsc::Sender<Queued>;

/// The state of one stream, owned by its task.
pub(crate) struct Stream {
    shared: Arc<Shared>,
    out: Out,
    /// A queue slot kept for the status the stream ends with, so a client that was slow to
    /// read still learns why after the responses queued before it.
    last_word: Option<mpsc::OwnedPermit<Queued>>,
    shutdown: watch::Receiver<bool>,
    live: broadcast::Receiver<Arc<LiveBatch>>,
    watchers: std::collections::BTreeMap<i64, Watcher>,
    /// The next id etcd would assign to a create with `watch_id == 0`.
    next_auto_id: i64,
    /// The stream has seen every live batch up to this revision: a watcher that is neither
    /// behind nor waiting for its `sync_floor` has received every event at or below it.
    fed_to: i64,
    /// Some watcher may be behind; cleared by a catch-up step that finds none.
    maybe_behind: bool,
    /// A progress request waits for every watcher to be in sync (etcd #15220).
    progress_requested: bool,
    /// How many of this stream's watchers want prev_kv (counted into the hub's demand).
    prev_kv_watchers: usize,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared
            .prev_kv_demand
            .fetch_sub(self.prev_kv_watchers, Ordering::Relaxed);
        metrics::gauge!(WATCHERS_METRIC).decrement(self.watchers.len() as f64);
    }
}

/// etcd's gauge of open watchers.
const WATCHERS_METRIC: &str = "etcd_debugging_mvcc_watcher_total";

impl Stream {
    /// Subscribes to the live feed and records the store revision the stream starts from.
    pub(crate) fn open(
        shared: Arc<Shared>,
        live: broadcast::Receiver<Arc<LiveBatch>>,
        out: Out,
    ) -> Result<Stream, Status> {
        // Subscribed first: every revision above `fed_to` is broadcast after this point.
        let fed_to = shared.store.revision().map_err(|e| store_status(&e))?;
        let last_word = out
            .clone()
            .try_reserve_owned()
            .map_err(|_| Status::internal("watch response queue has no room"))?;
        Ok(Stream {
            out,
            last_word: Some(last_word),
            shutdown: shared.shutdown.clone(),
            live,
            watchers: Default::default(),
            next_auto_id: 0,
            fed_to,
            maybe_behind: false,
            progress_requested: false,
            prev_kv_watchers: 0,
            shared,
        })
    }

    /// Serves the stream until the client leaves, the server shuts down or the store fails.
    pub(crate) async fn run(mut self, mut requests: Streaming<WatchRequest>, seq: u64) {
        let mut ticker = progress_ticker(self.shared.cfg.progress_notify_interval, seq);
        let mut requests_open = true;
        let end = loop {
            let step = tokio::select! {
                () = stopped(&mut self.shutdown) => Err(End::Shutdown),
                () = self.out.closed() => Err(End::ClientGone),
                req = requests.message(), if requests_open => match req {
                    Ok(Some(req)) => self.on_request(req).await,
                    // A client that half-closes keeps its watchers, as in etcd.
                    Ok(None) => {
                        requests_open = false;
                        Ok(())
                    }
                    Err(_) => Err(End::ClientGone),
                },
                live = self.live.recv() => match live {
                    Ok(batch) => self.on_live(&batch).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.on_lagged(missed);
                        Ok(())
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        Err(End::Failed(Status::unavailable(STOPPED)))
                    }
                },
                _ = ticker.tick() => self.on_progress_tick().await,
                () = std::future::ready(()), if self.maybe_behind => self.catch_up().await,
            };
            if let Err(end) = step {
                break end;
            }
        };
        let status = match end {
            End::Shutdown => Status::unavailable(STOPPED),
            End::Failed(status) => status,
            End::ClientGone => return,
        };
        if let Some(permit) = self.last_word.take() {
            permit.send(Err(status));
        }
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    fn current(&self) -> Result<i64, End> {
        self.store().revision().map_err(fatal)
    }

    fn header(&self, revision: i64) -> Option<raftkv_proto::etcdserverpb::ResponseHeader> {
        Some(self.shared.headers.at(revision))
    }

    /// Queues one response, waiting for room unless the server shuts down meanwhile.
    async fn send(&mut self, resp: WatchResponse) -> Result<(), End> {
        tokio::select! {
            sent = self.out.send(Ok(Box::new(resp))) => sent.map_err(|_| End::ClientGone),
            () = stopped(&mut self.shutdown) => Err(End::Shutdown),
        }
    }

    async fn on_request(&mut self, req: WatchRequest) -> Result<(), End> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                self.answer_progress_request().await
            }
            // etcd ignores requests it does not understand.
            None => Ok(()),
        }
    }

    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), End> {
        let current = self.current()?;
        let refuse = |reason: &str| WatchResponse {
            header: self.header(current),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_owned(),
            ..Default::default()
        };
        if req.start_revision < 0 {
            let resp = refuse(NEGATIVE_START);
            return self.send(resp).await;
        }
        let keys = match Keys::new(&req.key, &req.range_end) {
            Ok(keys) => keys,
            Err(reason) => {
                let resp = refuse(reason);
                return self.send(resp).await;
            }
        };
        let id = match req.watch_id {
            0 => {
                while self.watchers.contains_key(&self.next_auto_id) {
                    self.next_auto_id += 1;
                }
                self.next_auto_id += 1;
                self.next_auto_id - 1
            }
            id if self.watchers.contains_key(&id) => {
                let resp = refuse(DUPLICATE_ID);
                return self.send(resp).await;
            }
            id => id,
        };
        let next = if req.start_revision == 0 {
            current + 1
        } else {
            req.start_revision
        };
        let opts = Options::from_request(&req);
        let watcher = Watcher::new(keys, next, req.start_revision, current, opts);
        if watcher.behind {
            self.maybe_behind = true;
        }
        if opts.prev_kv {
            self.prev_kv_watchers += 1;
            self.shared.prev_kv_demand.fetch_add(1, Ordering::Relaxed);
        }
        self.watchers.insert(id, watcher);
        metrics::gauge!(WATCHERS_METRIC).increment(1.0);
        let created = WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(created).await
    }

    async fn cancel(&mut self, id: i64) -> Result<(), End> {
        // etcd answers only a cancel of a watcher it has.
        let Some(w) = self.watchers.remove(&id) else {
            return Ok(());
        };
        metrics::gauge!(WATCHERS_METRIC).decrement(1.0);
        if w.opts.prev_kv && w.active() {
            self.release_prev_kv();
        }
        let resp = WatchResponse {
            header: self.header(self.current()?),
            watch_id: id,
            canceled: true,
            ..Default::default()
        };
        self.send(resp).await?;
        self.answer_progress_request().await
    }

    /// One prev_kv watcher fewer on this stream.
    fn release_prev_kv(&mut self) {
        self.prev_kv_watchers -= 1;
        self.shared.prev_kv_demand.fetch_sub(1, Ordering::Relaxed);
    }

    /// True if `w` has every event up to `fed_to` and no start revision beyond it.
    fn in_sync(&self, w: &Watcher) -> bool {
        !w.behind && w.sync_floor <= self.fed_to
    }

    /// Sends the pending progress response once every live watcher is in sync. With no
    /// watchers it goes out at once, as etcd 3.4 does.
    async fn answer_progress_request(&mut self) -> Result<(), End> {
        if !self.progress_requested {
            return Ok(());
        }
        // A compacted watcher never syncs again; it does not hold progress back.
        if self
            .watchers
            .values()
            .any(|w| w.active() && !self.in_sync(w))
        {
            return Ok(());
        }
        self.progress_requested = false;
        let resp = WatchResponse {
            header: self.header(self.fed_to),
            watch_id: -1,
            ..Default::default()
        };
        self.send(resp).await
    }

    /// etcd's periodic progress: every in-sync `progress_notify` watcher that got no events
    /// since the previous tick gets an empty response at the stream's revision.
    async fn on_progress_tick(&mut self) -> Result<(), End> {
        let mut due = Vec::new();
        for (&id, w) in self.watchers.iter_mut() {
            if !w.opts.progress_notify || !w.active() {
                continue;
            }
            if w.quiet && !w.behind && w.sync_floor <= self.fed_to {
                due.push(id);
            }
            w.quiet = true;
        }
        for id in due {
            let resp = WatchResponse {
                header: self.header(self.fed_to),
                watch_id: id,
                ..Default::default()
            };
            self.send(resp).await?;
        }
        Ok(())
    }

    /// The live feed skipped batches this stream did not read in time: whatever a watcher
    /// needs now comes from the store.
    fn on_lagged(&mut self, missed: u64) {
        tracing::debug!(missed, "watch stream lagged behind the live feed");
        for w in self.watchers.values_mut() {
            if w.active() {
                w.behind = true;
            }
        }
        self.maybe_behind = true;
    }

    async fn on_live(&mut self, batch: &LiveBatch) -> Result<(), End> {
        self.fed_to = self.fed_to.max(batch.to);
        let range = Delivery {
            from: batch.from,
            to: batch.to,
            with_prev_kv: batch.with_prev_kv,
            only_behind: false,
            in_sync_after: true,
        };
        self.deliver(range, &batch.events).await?;
        self.answer_progress_request().await
    }

    /// One bounded read of history for the watchers that are behind, from the lowest of their
    /// positions; each takes what it has not seen.
    async fn catch_up(&mut self) -> Result<(), End> {
        let behind = self.watchers.values().filter(|w| w.active() && w.behind);
        let Some(from) = behind.clone().map(|w| w.next).min() else {
            self.maybe_behind = false;
            return Ok(());
        };
        let prev_kv = behind.clone().any(|w| w.opts.prev_kv);
        let batch = match self
            .store()
            .history(from, self.shared.cfg.batch_events, prev_kv)
        {
            Ok(batch) => batch,
            Err(e) if e.as_request() == Some(RequestError::Compacted) => {
                return self.cancel_compacted().await;
            }
            Err(e) => return Err(fatal(e)),
        };
        // Read up to the store's revision: the watchers are in sync with the live feed.
        let caught_up = batch.next > batch.revision;
        let to = batch.next - 1;
        let range = Delivery {
            from,
            to,
            with_prev_kv: prev_kv,
            only_behind: true,
            in_sync_after: caught_up,
        };
        self.deliver(range, &batch.events).await?;
        self.answer_progress_request().await?;
        // Catch-up reads are synchronous: let the runtime breathe between them.
        tokio::task::yield_now().await;
        Ok(())
    }

    /// Cancels every behind watcher whose position was compacted away, as etcd does: a response
    /// with `canceled` and `compact_revision` (and header revision 0, as etcd sends it).
    async fn cancel_compacted(&mut self) -> Result<(), End> {
        let compact_revision = self.store().compact_revision().map_err(fatal)?;
        let mut cursor = Bound::Unbounded;
        while let Some((id, w)) = next_watcher(&mut self.watchers, &mut cursor) {
            if !(w.active() && w.behind && w.next < compact_revision) {
                continue;
            }
            let prev_kv = w.opts.prev_kv;
            w.compacted = true;
            w.behind = false;
            if prev_kv {
                self.release_prev_kv();
            }
            let resp = WatchResponse {
                header: self.header(0),
                watch_id: id,
                canceled: true,
                compact_revision,
                ..Default::default()
            };
            self.send(resp).await?;
        }
        Ok(())
    }

    /// Delivers revisions `from..=to` (`events`, in revision order) to the active watchers
    /// (only the behind ones for a catch-up). A watcher whose `next` is below `from` would get a
    /// gap and is marked behind instead; the others get their new events.
    async fn deliver(&mut self, range: Delivery, events: &[Event]) -> Result<(), End> {
        let max_bytes = self.shared.cfg.max_response_bytes;
        let mut cursor = Bound::Unbounded;
        while let Some((id, w)) = next_watcher(&mut self.watchers, &mut cursor) {
            if !w.active() || (range.only_behind && !w.behind) {
                continue;
            }
            if w.next < range.from {
                if !w.behind {
                    w.behind = true;
                    self.maybe_behind = true;
                }
                continue;
            }
            w.behind = !range.in_sync_after;
            if w.next > range.to {
                continue;
            }
            let fragment = w.opts.fragment;
            let fill_prev_kv = w.opts.prev_kv && !range.with_prev_kv;
            let mut mine = w.take(events, range.to);
            if mine.is_empty() {
                continue;
            }
            if fill_prev_kv {
                self.fill_prev_kv(&mut mine)?;
            }
            let header = self.shared.headers.at(range.to);
            for resp in response::responses(header, id, mine, max_bytes, fragment) {
                self.send(resp).await?;
            }
        }
        Ok(())
    }

    /// Looks up each event's previous key-value the way etcd's send loop does: the key at
    /// `mod_revision - 1`, absent if that was compacted.
    fn fill_prev_kv(&self, events: &mut [Event]) -> Result<(), End> {
        for ev in events {
            let Some(kv) = ev.kv.as_ref() else { continue };
            let req = RangeRequest {
                key: kv.key.clone(),
                revision: kv.mod_revision - 1,
                ..Default::default()
            };
            ev.prev_kv = match self.store().range(&req) {
                Ok(resp) => resp.kvs.into_iter().next(),
                Err(e) if e.as_request().is_some() => None,
                Err(e) => return Err(fatal(e)),
            };
        }
        Ok(())
    }
}

/// A range of revisions handed to [`Stream::deliver`].
struct Delivery {
    from: i64,
    to: i64,
    /// The events carry prev_kv already.
    with_prev_kv: bool,
    /// A catch-up: only behind watchers take part.
    only_behind: bool,
    /// After this range the watchers that took part are in sync with the live feed.
    in_sync_after: bool,
}

/// The watcher after `cursor` in id order, moving the cursor past it. Lets a loop send
/// (and await) between watchers without holding a borrow of the map.
fn next_watcher<'a>(
    watchers: &'a mut std::collections::BTreeMap<i64, Watcher>,
    cursor: &mut Bound<i64>,
) -> Option<(i64, &'a mut Watcher)> {
    let (&id, w) = watchers.range_mut((*cursor, Bound::Unbounded)).next()?;
    *cursor = Bound::Excluded(id);
    Some((id, w))
}

fn fatal(e: raftkv_mvcc::Error) -> End {
    End::Failed(store_status(&e))
}

/// The periodic progress timer, with etcd's up-to-10% jitter (spread by stream) so that
/// streams opened together do not all notify at once.
fn progress_ticker(interval: Duration, seq: u64) -> Interval {
    let interval = interval.max(Duration::from_millis(1));
    let spread = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1000;
    let jittered = interval + interval / 10 * u32::try_from(spread).unwrap_or(0) / 1000;
    let mut ticker = tokio::time::interval_at(Instant::now() + jittered, jittered);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}
