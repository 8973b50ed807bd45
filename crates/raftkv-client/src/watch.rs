//! [`Client::watch`] and the [`Watcher`] it returns: one gRPC stream per watcher, owned by a
//! background task that re-opens it on another endpoint after a failure.
//!
//! # Resuming without gaps or repeats
//! The task keeps `next`, the first revision the user has not been given: the created
//! response's revision + 1 for a watch "from now", then the last delivered event's revision + 1
//! (or a progress notice's revision + 1). A re-opened stream starts at `next`, and any event
//! below `next` is dropped, so every revision is delivered exactly once. If `next` has been
//! compacted meanwhile, the watcher ends with [`Error::Compacted`].

use std::pin::Pin;
use std::task::{Context, Poll};

use raftkv_proto::etcdserverpb::{
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
    ResponseHeader, WatchCancelRequest, WatchCreateRequest, WatchRequest,
};
use raftkv_proto::mvccpb::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Backoff, Client};
use crate::error::{stream_transient, Error, Result};
use crate::kv::key_range;

/// An event filter of a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFilter {
    /// Drop put events.
    NoPut,
    /// Drop delete events.
    NoDelete,
}

/// Options of [`Client::watch`]. `Default` watches one key from the next revision on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Every key starting with the key.
    pub prefix: bool,
    /// Every key greater than or equal to the key.
    pub from_key: bool,
    /// An explicit exclusive end of the range.
    pub range_end: Option<Vec<u8>>,
    /// First revision to report, inclusive (0: from the next write on).
    pub start_revision: i64,
    /// Attach each event's previous key-value.
    pub prev_kv: bool,
    /// Events to leave out.
    pub filters: Vec<WatchFilter>,
    /// Ask for periodic empty updates while idle (they advance the resume point).
    pub progress_notify: bool,
    /// Let the server split large revisions into fragments; the watcher joins them again.
    pub fragment: bool,
}

impl WatchOptions {
    /// Every key starting with the key.
    pub fn prefix() -> Self {
        WatchOptions {
            prefix: true,
            ..Default::default()
        }
    }
}

/// What a [`Watcher`] yields: the events of one or more whole revisions, in order, or none
/// for a progress notice.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchUpdate {
    /// The response header: `revision` is the last revision the update covers.
    pub header: ResponseHeader,
    /// The events, in revision order; empty for a progress notice.
    pub events: Vec<Event>,
}

impl WatchUpdate {
    /// True for a progress notice (no events): everything up to `header.revision` was seen.
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

/// A running watch. Yields [`WatchUpdate`]s through [`next`](Self::next) or as a
/// [`Stream`](futures_util::Stream); ends with an error item on compaction or a server cancel.
/// Dropping it (or [`cancel`](Self::cancel)) stops the watch.
///
/// After the watch was created, a broken stream is re-opened on the next endpoint with
/// bounded backoff for as long as the watcher lives (as etcd's Go client does): while no
/// endpoint answers, `next` simply waits.
#[derive(Debug)]
pub struct Watcher {
    rx: mpsc::Receiver<Result<WatchUpdate>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watcher {
    /// The next update; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchUpdate>> {
        self.rx.recv().await
    }

    /// Cancels the watch on the server and waits for the background task to end.
    pub async fn cancel(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl futures_util::Stream for Watcher {
    type Item = Result<WatchUpdate>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Client {
    /// Starts watching `key` (or a range, per `opts`). Returns once the server has created the
    /// watch, so every write after this returns is seen. The watch survives the loss of its
    /// endpoint: it resumes on another one from the last revision seen.
    pub async fn watch(&self, key: impl Into<Vec<u8>>, opts: WatchOptions) -> Result<Watcher> {
        let (key, range_end) = key_range(key.into(), opts.prefix, opts.from_key, opts.range_end);
        let create = WatchCreateRequest {
            key,
            range_end,
            start_revision: opts.start_revision,
            progress_notify: opts.progress_notify,
            filters: opts
                .filters
                .iter()
                .map(|f| match f {
                    WatchFilter::NoPut => FilterType::Noput as i32,
                    WatchFilter::NoDelete => FilterType::Nodelete as i32,
                })
                .collect(),
            prev_kv: opts.prev_kv,
            watch_id: 0,
            fragment: opts.fragment,
        };
        let (tx, rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (created_tx, created_rx) = oneshot::channel();
        let task = WatchTask {
            client: self.clone(),
            next: opts.start_revision,
            create,
            tx,
            created: Some(created_tx),
        };
        let task = tokio::spawn(task.run(stop_rx));
        match created_rx.await {
            Ok(Ok(())) => Ok(Watcher {
                rx,
                stop: Some(stop_tx),
                task: Some(task),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::WatchClosed),
        }
    }
}

/// The background task of one watcher.
struct WatchTask {
    client: Client,
    /// First revision not yet delivered; 0 until known for a watch "from now".
    next: i64,
    create: WatchCreateRequest,
    tx: mpsc::Sender<Result<WatchUpdate>>,
    /// Answered once the first stream has created the watch (or creation failed for good).
    created: Option<oneshot::Sender<Result<()>>>,
}

/// How one stream ended.
enum End {
    /// Stopped by the user or the receiver is gone: cancel and exit.
    Stop,
    /// The watch is over for good (delivered or reported already).
    Done,
    /// The stream broke; re-open it (on another endpoint).
    Retry,
}

impl WatchTask {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let opts = self.client.options().clone();
        let mut backoff = Backoff::new(&opts);
        let first_deadline = Instant::now() + opts.retry_deadline;
        loop {
            let i = self.client.current();
            let end = self.stream_once(i, &mut stop, &mut backoff).await;
            match end {
                End::Stop | End::Done => return,
                End::Retry => {
                    self.client.failover(i);
                    let pause = backoff.step();
                    if self.created.is_some() && Instant::now() + pause > first_deadline {
                        if let Some(c) = self.created.take() {
                            let _ = c.send(Err(Error::Unavailable(
                                "no endpoint accepted the watch".into(),
                            )));
                        }
                        return;
                    }
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Reports a final error: to `watch()` if it is still waiting, else to the user.
    async fn fail(&mut self, e: Error) -> End {
        match self.created.take() {
            Some(c) => {
                let _ = c.send(Err(e));
            }
            None => {
                let _ = self.tx.send(Err(e)).await;
            }
        }
        End::Done
    }

    async fn stream_once(
        &mut self,
        i: usize,
        stop: &mut oneshot::Receiver<()>,
        backoff: &mut Backoff,
    ) -> End {
        let (req_tx, req_rx) = mpsc::channel(4);
        let mut create = self.create.clone();
        create.start_revision = self.next;
        let _ = req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await;
        let mut watch = WatchClient::new(self.client.channel_at(i));
        let open = watch.watch(ReceiverStream::new(req_rx));
        let mut stream = tokio::select! {
            _ = &mut *stop => return End::Stop,
            r = open => match r {
                Ok(s) => s.into_inner(),
                Err(s) if stream_transient(&s) => {
                    tracing::debug!(status = %s, "watch stream failed to open");
                    return End::Retry;
                }
                Err(s) => return self.fail(Error::from(s)).await,
            },
        };
        let mut watch_id = None;
        let mut fragments: Vec<Event> = Vec::new();
        loop {
            let msg = tokio::select! {
                _ = &mut *stop => {
                    if let Some(id) = watch_id {
                        let _ = req_tx.try_send(WatchRequest {
                            request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
                                watch_id: id,
                            })),
                        });
                    }
                    return End::Stop;
                }
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return End::Retry,
                Err(s) if stream_transient(&s) => {
                    tracing::debug!(status = %s, next = self.next, "watch stream broke; resuming");
                    return End::Retry;
                }
                Err(s) => return self.fail(Error::from(s)).await,
            };
            let header = resp.header.unwrap_or_default();
            if resp.created && !resp.canceled {
                watch_id = Some(resp.watch_id);
                if self.next == 0 {
                    self.next = header.revision + 1;
                }
                backoff.reset(self.client.options());
                if let Some(c) = self.created.take() {
                    let _ = c.send(Ok(()));
                }
                continue;
            }
            if resp.canceled {
                let e = if resp.compact_revision > 0 {
                    Error::Compacted {
                        compact_revision: resp.compact_revision,
                    }
                } else {
                    Error::WatchCanceled(resp.cancel_reason)
                };
                return self.fail(e).await;
            }
            fragments.extend(resp.events);
            if resp.fragment {
                continue;
            }
            let was_progress = fragments.is_empty();
            let mut events = std::mem::take(&mut fragments);
            events.retain(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) >= self.next);
            if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
                self.next = last.mod_revision + 1;
            } else if was_progress && header.revision >= self.next {
                self.next = header.revision + 1;
            } else if !was_progress || !self.create.progress_notify {
                // Only repeats (dropped), or a progress reply nobody asked for.
                continue;
            }
            let update = WatchUpdate { header, events };
            tokio::select! {
                _ = &mut *stop => return End::Stop,
                sent = self.tx.send(Ok(update)) => if sent.is_err() { return End::Stop },
            }
        }
    }
}
