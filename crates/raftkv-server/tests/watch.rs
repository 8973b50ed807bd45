//! The Watch service end to end: a store in a temp dir that the test writes to directly
//! (publishing each revision as the apply loop does), the service on 127.0.0.1:0, and etcd's
//! generated Watch client. Every wait has a deadline; nothing sleeps to synchronise.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv_mvcc::{Config as StoreConfig, Store};
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcdserverpb::watch_create_request::FilterType;
use raftkv_proto::etcdserverpb::watch_request::RequestUnion;
use raftkv_proto::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use raftkv_proto::mvccpb::event::EventType;
use raftkv_proto::mvccpb::Event;
use raftkv_server::header::Headers;
use raftkv_server::watch::{WatchConfig, WatchService};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;

/// How long any single expected thing may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// Applies writes to the store the way the node's apply loop does: one index per request,
/// then publishes the new revision. Clones share the index, so they can write from a thread.
#[derive(Clone)]
struct Writer {
    store: Store,
    index: Arc<AtomicU64>,
    revisions: Arc<watch::Sender<i64>>,
}

impl Writer {
    fn next_index(&self) -> u64 {
        self.index.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn publish(&self) -> i64 {
        let rev = self.store.revision().unwrap();
        self.revisions.send_replace(rev);
        rev
    }

    fn put(&self, key: &[u8], value: &[u8]) -> i64 {
        let req = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        };
        self.store.put(self.next_index(), &req).unwrap().unwrap();
        self.publish()
    }

    fn delete(&self, key: &[u8], range_end: &[u8]) -> i64 {
        let req = DeleteRangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            ..Default::default()
        };
        self.store
            .delete_range(self.next_index(), &req)
            .unwrap()
            .unwrap();
        self.publish()
    }

    /// One revision putting every `(key, value)`.
    fn put_all(&self, kvs: &[(Vec<u8>, Vec<u8>)]) -> i64 {
        let success = kvs
            .iter()
            .map(|(k, v)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let req = TxnRequest {
            success,
            ..Default::default()
        };
        self.store.txn(self.next_index(), &req).unwrap().unwrap();
        self.publish()
    }

    fn compact(&self, revision: i64) {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        self.store
            .compact(self.next_index(), &req)
            .unwrap()
            .unwrap();
        self.publish();
    }

    /// A put attached to `lease`.
    fn put_leased(&self, key: &[u8], lease: i64) -> i64 {
        let req = PutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        };
        self.store.put(self.next_index(), &req).unwrap().unwrap();
        self.publish()
    }

    /// One txn revision deleting `del` and putting `put`.
    fn delete_and_put(&self, del: &[u8], put: &[u8]) -> i64 {
        let success = vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: del.to_vec(),
                        ..Default::default()
                    },
                )),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: put.to_vec(),
                    value: b"t".to_vec(),
                    ..Default::default()
                })),
            },
        ];
        let req = TxnRequest {
            success,
            ..Default::default()
        };
        self.store.txn(self.next_index(), &req).unwrap().unwrap();
        self.publish()
    }

    fn grant(&self, id: i64) {
        let req = LeaseGrantRequest { ttl: 60, id };
        self.store
            .lease_grant(self.next_index(), &req)
            .unwrap()
            .unwrap();
        self.publish();
    }

    fn revoke(&self, id: i64) -> i64 {
        let req = LeaseRevokeRequest { id };
        self.store
            .lease_revoke(self.next_index(), &req)
            .unwrap()
            .unwrap();
        self.publish()
    }
}

/// A store, the service serving it, and the switches a node holds.
struct Harness {
    writer: Writer,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    _status: watch::Sender<raftkv_raft::Status>,
}

impl Harness {
    async fn start(dir: &Path, cfg: WatchConfig) -> Harness {
        let store = Store::open(StoreConfig::new(dir)).unwrap();
        let (revisions, revisions_rx) = watch::channel(store.revision().unwrap());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (status, status_rx) = watch::channel(raftkv_raft::Status {
            id: 1,
            leader: 1,
            term: 3,
            role: raft::StateRole::Leader,
            applied: 0,
        });
        let headers = Headers::new(7, 1, status_rx);
        let service = WatchService::new(store.clone(), revisions_rx, headers, shutdown_rx, cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stop = shutdown.subscribe();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stop.wait_for(|&s| s).await;
                })
                .await
                .unwrap();
        });
        Harness {
            writer: Writer {
                store,
                index: Arc::new(AtomicU64::new(0)),
                revisions: Arc::new(revisions),
            },
            addr,
            shutdown,
            server,
            _status: status,
        }
    }

    /// A client on its own connection.
    async fn client(&self) -> WatchClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        WatchClient::new(channel)
    }

    /// A watch stream on its own connection.
    async fn stream(&self) -> Stream {
        Stream::open(&mut self.client().await).await
    }
}

/// Runs `body` against a fresh harness on its own runtime. The runtime (and with it every task
/// holding a store handle) is gone before the store's directory is removed.
fn run<F, Fut>(cfg: WatchConfig, body: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = Harness::start(dir.path(), cfg).await;
        body(h).await;
    });
    drop(rt);
    drop(dir);
}

/// One Watch stream seen from the client.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
    /// Responses read while waiting for a created response, in arrival order.
    stash: std::collections::VecDeque<WatchResponse>,
}

impl Stream {
    async fn open(client: &mut WatchClient<Channel>) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let rx = timeout(DEADLINE, client.watch(ReceiverStream::new(rx)))
            .await
            .expect("stream opens in time")
            .unwrap()
            .into_inner();
        Stream {
            tx,
            rx,
            stash: Default::default(),
        }
    }

    async fn request(&self, req: RequestUnion) {
        let req = WatchRequest {
            request_union: Some(req),
        };
        self.tx.send(req).await.unwrap();
    }

    async fn create(&self, req: WatchCreateRequest) {
        self.request(RequestUnion::CreateRequest(req)).await;
    }

    async fn cancel(&self, watch_id: i64) {
        self.request(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await;
    }

    async fn progress(&self) {
        self.request(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await;
    }

    async fn recv(&mut self) -> WatchResponse {
        if let Some(resp) = self.stash.pop_front() {
            return resp;
        }
        self.recv_new().await
    }

    async fn recv_new(&mut self) -> WatchResponse {
        timeout(DEADLINE, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream still open")
    }

    /// Creates a watcher and returns its id from the created response.
    async fn watch(&mut self, req: WatchCreateRequest) -> i64 {
        self.create(req).await;
        loop {
            let resp = self.recv_new().await;
            if resp.created {
                assert!(!resp.canceled, "{resp:?}");
                return resp.watch_id;
            }
            // Events of watchers created earlier on this stream.
            self.stash.push_back(resp);
        }
    }

    /// Collects events per watcher until every watcher in `until` has seen its revision.
    async fn events_until(&mut self, until: &BTreeMap<i64, i64>) -> BTreeMap<i64, Vec<Event>> {
        let mut got: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        let done = |got: &BTreeMap<i64, Vec<Event>>| {
            until.iter().all(|(id, rev)| {
                got.get(id)
                    .and_then(|e| e.last())
                    .is_some_and(|e| mod_rev(e) >= *rev)
            })
        };
        while !done(&got) {
            let resp = self.recv().await;
            assert!(!resp.created && !resp.canceled, "unexpected {resp:?}");
            got.entry(resp.watch_id).or_default().extend(resp.events);
        }
        got
    }
}

fn key(k: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: k.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn prefix(p: &str) -> WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchCreateRequest {
        key: p.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    }
}

fn mod_rev(e: &Event) -> i64 {
    e.kv.as_ref().unwrap().mod_revision
}

fn summary(events: &[Event]) -> Vec<(EventType, String, i64)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type(),
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

fn small_batches() -> WatchConfig {
    WatchConfig {
        batch_events: 7,
        live_buffer: 4,
        stream_buffer: 2,
        ..WatchConfig::default()
    }
}

/// Writes `n` revisions under `k/` in a background thread: mostly single puts, every 10th a
/// txn of three puts, every 25th a delete. Returns the writer and, per revision, how many
/// events it has.
fn spawn_writes(writer: Writer, n: usize) -> std::thread::JoinHandle<BTreeMap<i64, usize>> {
    std::thread::spawn(move || {
        let mut sizes = BTreeMap::new();
        for i in 0..n {
            let k = format!("k/{}", i % 13).into_bytes();
            let (rev, count) = if i % 10 == 9 {
                let kvs: Vec<_> = (0..3)
                    .map(|j| (format!("k/t{j}").into_bytes(), format!("v{i}").into_bytes()))
                    .collect();
                (writer.put_all(&kvs), 3)
            } else if i % 25 == 24 {
                writer.put(&k, b"x");
                sizes.insert(writer.store.revision().unwrap(), 1);
                (writer.delete(&k, b""), 1)
            } else {
                (writer.put(&k, format!("v{i}").as_bytes()), 1)
            };
            sizes.insert(rev, count);
        }
        sizes
    })
}

/// History then live across many concurrent writes: every revision exactly once, in order,
/// each revision's events in one response.
async fn history_then_live(h: Harness) {
    let first = h.writer.put(b"k/start", b"0");
    for i in 0..200 {
        h.writer.put(format!("k/{}", i % 7).as_bytes(), b"h");
    }
    let mut s = h.stream().await;
    let id = s
        .watch(WatchCreateRequest {
            start_revision: first,
            ..prefix("k/")
        })
        .await;
    let mut expected: BTreeMap<i64, usize> = (first..=h.writer.store.revision().unwrap())
        .map(|r| (r, 1))
        .collect();
    let writes = spawn_writes(h.writer.clone(), 400);
    let sizes = tokio::task::spawn_blocking(move || writes.join().unwrap())
        .await
        .unwrap();
    expected.extend(sizes);
    let last = *expected.keys().last().unwrap();

    let mut seen: Vec<i64> = Vec::new();
    while seen.last() != Some(&last) {
        let resp = s.recv().await;
        assert_eq!(resp.watch_id, id);
        assert!(!resp.fragment && !resp.canceled);
        let revs: Vec<i64> = resp.events.iter().map(mod_rev).collect();
        assert!(
            !revs.is_empty(),
            "no empty responses without progress_notify"
        );
        assert!(resp.header.unwrap().revision >= *revs.last().unwrap());
        // Whole revisions: the response's first and last revisions are complete.
        for r in [revs[0], *revs.last().unwrap()] {
            assert_eq!(
                revs.iter().filter(|&&x| x == r).count(),
                expected[&r],
                "revision {r} split"
            );
        }
        seen.extend(revs);
    }
    seen.dedup();
    let want: Vec<i64> = expected.keys().copied().collect();
    assert_eq!(seen, want, "every revision once, in order");
}

#[test]
fn history_then_live_has_no_gap_and_no_duplicate() {
    run(WatchConfig::default(), history_then_live);
}

#[test]
fn history_then_live_with_tiny_buffers_lags_and_catches_up() {
    run(small_batches(), history_then_live);
}

#[test]
fn ranges_and_many_watchers_on_one_stream() {
    run(WatchConfig::default(), |h| async move {
        let mut s = h.stream().await;
        let pre = s.watch(prefix("a/")).await;
        let from = s
            .watch(WatchCreateRequest {
                key: b"m".to_vec(),
                range_end: vec![0],
                ..Default::default()
            })
            .await;
        let all = s
            .watch(WatchCreateRequest {
                range_end: vec![0],
                ..Default::default()
            })
            .await;
        let one = s.watch(key("a/x")).await;
        assert_eq!((pre, from, all, one), (0, 1, 2, 3), "ids assigned from 0");

        let r1 = h.writer.put(b"a/x", b"1");
        let r2 = h.writer.put(b"b", b"1");
        let r3 = h.writer.put(b"m", b"1");
        let r4 = h.writer.put(b"a0", b"1");
        let r5 = h.writer.put(b"z", b"1");
        let r6 = h.writer.put(b"a/y", b"1");
        let until = BTreeMap::from([(pre, r6), (from, r5), (all, r6), (one, r1)]);
        let got = s.events_until(&until).await;
        let revs = |id: i64| got[&id].iter().map(mod_rev).collect::<Vec<_>>();
        assert_eq!(revs(pre), [r1, r6]);
        assert_eq!(revs(from), [r3, r5]);
        assert_eq!(revs(all), [r1, r2, r3, r4, r5, r6]);
        assert_eq!(revs(one), [r1]);
    });
}

#[test]
fn prev_kv_and_filters_live_and_from_history() {
    run(WatchConfig::default(), |h| async move {
        let start = h.writer.store.revision().unwrap() + 1;
        let mut s = h.stream().await;
        let prev = s
            .watch(WatchCreateRequest {
                prev_kv: true,
                ..key("k")
            })
            .await;
        let no_put = s
            .watch(WatchCreateRequest {
                filters: vec![FilterType::Noput as i32],
                ..key("k")
            })
            .await;
        let no_delete = s
            .watch(WatchCreateRequest {
                filters: vec![FilterType::Nodelete as i32],
                ..key("k")
            })
            .await;
        let plain = s.watch(key("k")).await;
        let r1 = h.writer.put(b"k", b"v1");
        let r2 = h.writer.put(b"k", b"v2");
        let r3 = h.writer.delete(b"k", b"");
        let r4 = h.writer.put(b"k", b"v3");
        let until = BTreeMap::from([(prev, r4), (no_put, r3), (no_delete, r4), (plain, r4)]);
        let got = s.events_until(&until).await;

        let check_prev = |events: &[Event]| {
            let prevs: Vec<Option<Vec<u8>>> = events
                .iter()
                .map(|e| e.prev_kv.as_ref().map(|p| p.value.clone()))
                .collect();
            assert_eq!(
                prevs,
                [None, Some(b"v1".to_vec()), Some(b"v2".to_vec()), None]
            );
        };
        check_prev(&got[&prev]);
        assert_eq!(
            summary(&got[&no_put]),
            [(EventType::Delete, "k".into(), r3)]
        );
        assert_eq!(
            got[&no_delete].iter().map(mod_rev).collect::<Vec<_>>(),
            [r1, r2, r4]
        );
        assert!(
            got[&plain].iter().all(|e| e.prev_kv.is_none()),
            "prev_kv only when asked"
        );
        assert_eq!(got[&plain].len(), 4);

        // The same from history (the catch-up path).
        let mut s2 = h.stream().await;
        let hist = s2
            .watch(WatchCreateRequest {
                prev_kv: true,
                start_revision: start,
                ..key("k")
            })
            .await;
        let got = s2.events_until(&BTreeMap::from([(hist, r4)])).await;
        check_prev(&got[&hist]);
    });
}

#[test]
fn cancel_and_watch_id_rules() {
    run(WatchConfig::default(), |h| async move {
        let current = h.writer.put(b"x", b"0");
        let mut s = h.stream().await;
        assert_eq!(s.watch(key("k")).await, 0);
        assert_eq!(s.watch(key("k")).await, 1);
        assert_eq!(
            s.watch(WatchCreateRequest {
                watch_id: 7,
                ..key("k")
            })
            .await,
            7
        );

        let refusals = [
            (
                WatchCreateRequest {
                    watch_id: 7,
                    ..key("k")
                },
                "mvcc: duplicate watch ID provided on the WatchStream",
            ),
            (
                WatchCreateRequest {
                    range_end: b"a".to_vec(),
                    ..key("b")
                },
                "mvcc: watcher range is empty",
            ),
            (
                WatchCreateRequest {
                    start_revision: -3,
                    ..key("k")
                },
                "etcdserver: mvcc: required revision has been compacted",
            ),
        ];
        for (req, reason) in refusals {
            s.create(req).await;
            let resp = s.recv().await;
            assert_eq!(
                (resp.watch_id, resp.created, resp.canceled),
                (-1, true, true)
            );
            assert_eq!(resp.cancel_reason, reason);
            assert_eq!(resp.header.unwrap().revision, current);
        }

        s.cancel(1).await;
        let resp = s.recv().await;
        assert_eq!(
            (resp.watch_id, resp.canceled, resp.created),
            (1, true, false)
        );
        let header = resp.header.unwrap();
        assert_eq!(
            (
                header.revision,
                header.cluster_id,
                header.member_id,
                header.raft_term
            ),
            (current, 7, 1, 3)
        );
        // Cancelling an unknown id gets no answer: the next response is the progress reply.
        s.cancel(99).await;
        s.progress().await;
        let resp = s.recv().await;
        assert_eq!((resp.watch_id, resp.canceled), (-1, false), "{resp:?}");
        // Ids continue from the counter, skipping ones in use.
        assert_eq!(s.watch(key("k")).await, 2);

        let r = h.writer.put(b"k", b"1");
        let got = s
            .events_until(&BTreeMap::from([(0, r), (2, r), (7, r)]))
            .await;
        assert!(!got.contains_key(&1), "a cancelled watcher gets nothing");
    });
}

#[test]
fn compacted_start_is_created_then_cancelled() {
    run(WatchConfig::default(), |h| async move {
        let first = h.writer.put(b"c", b"0");
        for i in 1..5 {
            h.writer.put(b"c", format!("{i}").as_bytes());
        }
        let current = h.writer.store.revision().unwrap();
        h.writer.compact(current - 1);

        let mut s = h.stream().await;
        s.create(WatchCreateRequest {
            start_revision: first,
            ..key("c")
        })
        .await;
        let created = s.recv().await;
        assert!(created.created && !created.canceled);
        assert_eq!(created.header.unwrap().revision, current);
        let cancelled = s.recv().await;
        assert_eq!(cancelled.watch_id, created.watch_id);
        assert!(cancelled.canceled && !cancelled.created && cancelled.events.is_empty());
        assert_eq!(cancelled.compact_revision, current - 1);
        assert_eq!(
            cancelled.header.unwrap().revision,
            0,
            "etcd sends header revision 0 here"
        );

        // Starting at the compact revision itself is fine.
        let ok = s
            .watch(WatchCreateRequest {
                start_revision: current - 1,
                prev_kv: true,
                ..key("c")
            })
            .await;
        let got = s.events_until(&BTreeMap::from([(ok, current)])).await;
        assert_eq!(
            got[&ok].iter().map(mod_rev).collect::<Vec<_>>(),
            [current - 1, current]
        );
        assert!(
            got[&ok][0].prev_kv.is_none(),
            "the previous value is compacted"
        );
        assert_eq!(
            got[&ok][1].prev_kv.as_ref().unwrap().mod_revision,
            current - 1
        );

        // The compacted watcher keeps its id until the client cancels it.
        s.cancel(created.watch_id).await;
        let resp = s.recv().await;
        assert_eq!((resp.watch_id, resp.canceled), (created.watch_id, true));
    });
}

#[test]
fn future_start_waits_and_holds_progress_back() {
    run(WatchConfig::default(), |h| async move {
        let current = h.writer.put(b"f", b"0");
        let mut s = h.stream().await;
        let id = s
            .watch(WatchCreateRequest {
                start_revision: current + 3,
                ..key("f")
            })
            .await;
        s.progress().await;
        for i in 1..=4 {
            h.writer.put(b"f", format!("{i}").as_bytes());
        }
        // The progress reply is held until the store reaches the start revision, so the first
        // thing to arrive is the event at current + 3 or the progress reply at or after it.
        let mut events = Vec::new();
        let progress = loop {
            let resp = s.recv().await;
            if resp.watch_id == -1 {
                break resp;
            }
            assert_eq!(resp.watch_id, id);
            events.extend(resp.events);
        };
        assert!(progress.header.unwrap().revision >= current + 3);
        if events.last().map(mod_rev) != Some(current + 4) {
            let got = s.events_until(&BTreeMap::from([(id, current + 4)])).await;
            events.extend(got.into_values().flatten());
        }
        assert_eq!(
            events.iter().map(mod_rev).collect::<Vec<_>>(),
            [current + 3, current + 4]
        );
    });
}

#[test]
fn progress_request_waits_until_history_is_delivered() {
    let cfg = WatchConfig {
        batch_events: 3,
        stream_buffer: 1,
        ..WatchConfig::default()
    };
    run(cfg, |h| async move {
        let first = h.writer.put(b"p", b"0");
        for i in 0..60 {
            h.writer.put(b"p", format!("{i}").as_bytes());
        }
        let last = h.writer.store.revision().unwrap();
        let mut s = h.stream().await;
        // With no watchers the reply is immediate, at the current revision.
        s.progress().await;
        let resp = s.recv().await;
        assert_eq!((resp.watch_id, resp.header.unwrap().revision), (-1, last));

        // Create and ask for progress before reading anything: the reply must come after the
        // whole history.
        s.create(WatchCreateRequest {
            start_revision: first,
            ..key("p")
        })
        .await;
        s.progress().await;
        let created = s.recv().await;
        assert!(created.created);
        let mut seen = Vec::new();
        let progress = loop {
            let resp = s.recv().await;
            if resp.watch_id == -1 {
                break resp;
            }
            seen.extend(resp.events.iter().map(mod_rev));
        };
        assert_eq!(seen, (first..=last).collect::<Vec<_>>());
        assert!(progress.events.is_empty());
        assert_eq!(progress.header.unwrap().revision, last);
    });
}

#[test]
fn progress_notify_reaches_quiet_watchers_only() {
    let cfg = WatchConfig {
        progress_notify_interval: Duration::from_millis(100),
        ..WatchConfig::default()
    };
    run(cfg, |h| async move {
        let current = h.writer.put(b"q", b"0");
        let mut s = h.stream().await;
        let quiet = s
            .watch(WatchCreateRequest {
                progress_notify: true,
                ..key("q")
            })
            .await;
        let _silent = s.watch(key("q")).await;
        for _ in 0..2 {
            let resp = s.recv().await;
            assert_eq!(
                resp.watch_id, quiet,
                "only progress_notify watchers get notifications"
            );
            assert!(resp.events.is_empty() && !resp.created && !resp.canceled);
            assert_eq!(resp.header.unwrap().revision, current);
        }
    });
}

#[test]
fn large_revisions_are_fragmented_on_request() {
    let cfg = WatchConfig {
        max_response_bytes: 4096,
        ..WatchConfig::default()
    };
    run(cfg, |h| async move {
        let start = h.writer.store.revision().unwrap() + 1;
        let mut s = h.stream().await;
        let frag = s
            .watch(WatchCreateRequest {
                fragment: true,
                ..prefix("big/")
            })
            .await;
        let whole = s.watch(prefix("big/")).await;
        let value = vec![b'v'; 1000];
        let kvs: Vec<_> = (0..10)
            .map(|i| (format!("big/{i}").into_bytes(), value.clone()))
            .collect();
        let rev = h.writer.put_all(&kvs);

        let mut pieces: BTreeMap<i64, Vec<WatchResponse>> = BTreeMap::new();
        let complete = |p: &BTreeMap<i64, Vec<WatchResponse>>, id| {
            p.get(&id)
                .is_some_and(|v: &Vec<WatchResponse>| v.last().is_some_and(|r| !r.fragment))
        };
        while !(complete(&pieces, frag) && complete(&pieces, whole)) {
            let resp = s.recv().await;
            pieces.entry(resp.watch_id).or_default().push(resp);
        }
        let fragments = &pieces[&frag];
        assert!(fragments.len() > 2, "split into pieces");
        for (i, p) in fragments.iter().enumerate() {
            assert_eq!(p.fragment, i + 1 < fragments.len());
            assert!(prost::Message::encoded_len(p) < 4096);
            assert_eq!(p.header.unwrap().revision, rev);
        }
        let joined: Vec<Event> = fragments.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(joined.len(), 10);
        assert!(joined.iter().all(|e| mod_rev(e) == rev));
        assert_eq!(
            pieces[&whole].len(),
            1,
            "without fragment a revision goes whole"
        );
        assert_eq!(pieces[&whole][0].events.len(), 10);

        // From history, without fragment: cut between revisions to stay under the bound.
        for i in 0..6 {
            h.writer.put(format!("big/{i}").as_bytes(), &value);
        }
        let last = h.writer.store.revision().unwrap();
        let mut s2 = h.stream().await;
        let id = s2
            .watch(WatchCreateRequest {
                start_revision: start,
                ..prefix("big/")
            })
            .await;
        let mut seen = Vec::new();
        while seen.last() != Some(&last) {
            let resp = s2.recv().await;
            assert_eq!(resp.watch_id, id);
            assert!(!resp.fragment);
            let revs: Vec<i64> = resp.events.iter().map(mod_rev).collect();
            if revs.iter().any(|&r| r != rev) {
                assert!(
                    prost::Message::encoded_len(&resp) < 4096,
                    "small revisions batched under the bound"
                );
            }
            seen.extend(revs);
        }
        seen.dedup();
        assert_eq!(seen, (rev..=last).collect::<Vec<_>>());
    });
}

#[test]
fn a_stalled_client_blocks_neither_writes_nor_other_watchers() {
    let cfg = WatchConfig {
        batch_events: 16,
        live_buffer: 8,
        stream_buffer: 2,
        ..WatchConfig::default()
    };
    run(cfg, |h| async move {
        let start = h.writer.store.revision().unwrap() + 1;
        // The stalled client reads its created response and then nothing, on its own connection.
        let mut stalled = h.stream().await;
        let stalled_id = stalled.watch(prefix("s/")).await;
        let mut healthy = h.stream().await;
        let healthy_id = healthy.watch(prefix("s/")).await;

        // 16 MiB of events: far more than the stalled connection's flow-control windows.
        const WRITES: i64 = 1000;
        let writer = h.writer.clone();
        let writes = tokio::task::spawn_blocking(move || {
            let value = vec![b'v'; 16 * 1024];
            for i in 0..WRITES {
                writer.put(format!("s/{}", i % 50).as_bytes(), &value);
            }
        });
        let last = start + WRITES - 1;
        let got = healthy
            .events_until(&BTreeMap::from([(healthy_id, last)]))
            .await;
        assert_eq!(
            got[&healthy_id].iter().map(mod_rev).collect::<Vec<_>>(),
            (start..=last).collect::<Vec<_>>()
        );
        timeout(DEADLINE, writes)
            .await
            .expect("writes finish while a client is stalled")
            .unwrap();

        // The stalled client resumes and gets everything, in order, from the store.
        let got = stalled
            .events_until(&BTreeMap::from([(stalled_id, last)]))
            .await;
        assert_eq!(
            got[&stalled_id].iter().map(mod_rev).collect::<Vec<_>>(),
            (start..=last).collect::<Vec<_>>()
        );
    });
}

#[test]
fn half_closed_stream_keeps_watching() {
    run(WatchConfig::default(), |h| async move {
        let mut s = h.stream().await;
        let id = s.watch(key("h")).await;
        let Stream { tx, rx, .. } = s;
        drop(tx);
        let mut s = Stream {
            tx: mpsc::channel(1).0,
            rx,
            stash: Default::default(),
        };
        let r = h.writer.put(b"h", b"1");
        let got = s.events_until(&BTreeMap::from([(id, r)])).await;
        assert_eq!(got[&id].len(), 1);
    });
}

#[test]
fn shutdown_ends_every_stream_and_lets_the_server_stop() {
    run(WatchConfig::default(), |h| async move {
        let mut idle = h.stream().await;
        idle.watch(key("i")).await;
        // A stalled stream too: its queue is full when shutdown comes.
        let mut stalled = h.stream().await;
        stalled.watch(prefix("z/")).await;
        let first = h.writer.store.revision().unwrap() + 1;
        for i in 0..300 {
            h.writer
                .put(format!("z/{i}").as_bytes(), &[b'v'; 16 * 1024]);
        }
        h.shutdown.send_replace(true);
        let end = timeout(DEADLINE, idle.rx.message())
            .await
            .expect("stream ends in time");
        let status = end.expect_err("ends with a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "etcdserver: server stopped");
        // The stalled client, reading again, finds what was queued and then the same status.
        let mut revs = Vec::new();
        let status = loop {
            match timeout(DEADLINE, stalled.rx.message())
                .await
                .expect("in time")
            {
                Ok(Some(resp)) => revs.extend(resp.events.iter().map(mod_rev)),
                Ok(None) => panic!("ended without a status"),
                Err(status) => break status,
            }
        };
        // Usually the queued responses and then the status arrive; but the server may close
        // the connection before a client that stopped reading has drained it (HTTP/2 cannot
        // flush past the client's window), which the client sees as a connection error. Either
        // way, what did arrive is gap-free.
        assert!(
            status.message() == "etcdserver: server stopped"
                || status.message().starts_with("h2 protocol error"),
            "{status:?}"
        );
        assert_eq!(revs, (first..first + revs.len() as i64).collect::<Vec<_>>());
        timeout(DEADLINE, h.server)
            .await
            .expect("graceful shutdown is not held up by watch streams")
            .unwrap();
    });
}

/// A small deterministic generator (no dependency needed for a test's choices).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Many watchers over several streams, with random ranges, filters, prev_kv and start
/// revisions (past, current and future), tiny buffers so streams lag, and writes running
/// concurrently: each watcher gets exactly what the store's history says, in order.
#[test]
fn random_watchers_see_exactly_the_history() {
    for seed in [7, 8, 9] {
        run(small_batches(), move |h| random_watchers(h, seed));
    }
}

async fn random_watchers(h: Harness, seed: u64) {
    let mut rng = Lcg(seed);
    let w = h.writer.clone();
    let write = move |rng: &mut Lcg| {
        let k = format!("r/{:02}", rng.below(20)).into_bytes();
        match rng.below(10) {
            0 => w.delete(&k, b""),
            1 => {
                let kvs: Vec<_> = (0..3)
                    .map(|_| {
                        (
                            format!("r/{:02}", rng.below(20)).into_bytes(),
                            b"t".to_vec(),
                        )
                    })
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect();
                w.put_all(&kvs)
            }
            _ => w.put(&k, format!("v{}", rng.below(1000)).as_bytes()),
        }
    };
    for _ in 0..150 {
        write(&mut rng);
    }
    let current = h.writer.store.revision().unwrap();

    let mut streams = Vec::new();
    let mut specs = Vec::new();
    for _ in 0..4 {
        let mut s = h.stream().await;
        let mut mine = Vec::new();
        for _ in 0..10 {
            let mut req = match rng.below(4) {
                0 => key(&format!("r/{:02}", rng.below(20))),
                1 => prefix("r/1"),
                2 => WatchCreateRequest {
                    key: b"r/15".to_vec(),
                    range_end: vec![0],
                    ..Default::default()
                },
                _ => WatchCreateRequest {
                    range_end: vec![0],
                    ..Default::default()
                },
            };
            req.start_revision = 2 + rng.below(current as u64 + 20) as i64;
            req.prev_kv = rng.below(2) == 0;
            req.filters = match rng.below(4) {
                0 => vec![FilterType::Noput as i32],
                1 => vec![FilterType::Nodelete as i32],
                _ => vec![],
            };
            let id = s.watch(req.clone()).await;
            mine.push((id, req));
        }
        streams.push(s);
        specs.push(mine);
    }

    let writes = tokio::task::spawn_blocking(move || {
        for _ in 0..300 {
            write(&mut rng);
        }
    });
    timeout(DEADLINE, writes).await.unwrap().unwrap();
    let last = h.writer.store.revision().unwrap();
    let history = h.writer.store.history(2, usize::MAX, true).unwrap();
    assert_eq!(history.next, last + 1);

    for (s, mine) in streams.iter_mut().zip(&specs) {
        let mut expected: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        for (id, req) in mine {
            let keys = |k: &[u8]| match req.range_end.as_slice() {
                [] => k == req.key.as_slice(),
                [0] => k >= req.key.as_slice(),
                end => k >= req.key.as_slice() && k < end,
            };
            let want = history
                .events
                .iter()
                .filter(|e| mod_rev(e) >= req.start_revision)
                .filter(|e| keys(&e.kv.as_ref().unwrap().key))
                .filter(|e| !req.filters.contains(&(e.r#type)))
                .map(|e| Event {
                    prev_kv: if req.prev_kv { e.prev_kv.clone() } else { None },
                    ..e.clone()
                })
                .collect();
            expected.insert(*id, want);
        }
        let until = expected
            .iter()
            .filter_map(|(id, evs)| evs.last().map(|e| (*id, mod_rev(e))))
            .collect();
        let got = s.events_until(&until).await;
        for (id, want) in &expected {
            let got = got.get(id).cloned().unwrap_or_default();
            assert_eq!(summary(&got), summary(want), "watcher {id}");
            assert_eq!(&got, want, "watcher {id}: values and prev_kv");
        }
    }
}

// A watcher that resumes at the compaction revision (what an etcd client does after a
// cancel-on-compaction notice) must get that very revision's deletes. A compaction at C used
// to drop the tombstones at C with the superseded revisions, so the stream silently went on
// at C + 1 (etcd #18089; found by the watch fault workload). Every way a key gets deleted:
// DeleteRange of one key and of a range, a delete inside a txn, a lease revoke.

/// The events a new watcher `req` from `start` receives through revision `until`.
async fn events_from(
    h: &Harness,
    mut req: WatchCreateRequest,
    start: i64,
    until: i64,
) -> Vec<(EventType, String, i64)> {
    req.start_revision = start;
    let mut stream = h.stream().await;
    let id = stream.watch(req).await;
    let got = stream.events_until(&BTreeMap::from([(id, until)])).await;
    summary(&got[&id])
}

fn ev(t: EventType, key: &str, rev: i64) -> (EventType, String, i64) {
    (t, key.to_owned(), rev)
}

#[test]
fn resuming_at_a_compacted_delete_range_gets_the_delete() {
    use EventType::{Delete, Put};
    run(WatchConfig::default(), |h| async move {
        let w = &h.writer;
        for k in ["w/a", "w/b", "w/c"] {
            w.put(k.as_bytes(), b"v");
        }
        let single = w.delete(b"w/a", b"");
        let after = w.put(b"w/a", b"v");
        w.compact(single);
        assert_eq!(
            events_from(&h, prefix("w/"), single, after).await,
            [ev(Delete, "w/a", single), ev(Put, "w/a", after)]
        );

        // Two keys deleted in one revision and compacted at the current revision; a watcher on
        // one of the keys gets its delete too.
        let both = w.delete(b"w/b", b"w/d");
        w.compact(both);
        assert_eq!(
            events_from(&h, prefix("w/"), both, both).await,
            [ev(Delete, "w/b", both), ev(Delete, "w/c", both)]
        );
        assert_eq!(
            events_from(&h, key("w/c"), both, both).await,
            [ev(Delete, "w/c", both)]
        );

        // A later compaction past the tombstone drops it as usual.
        let later = w.put(b"w/z", b"v");
        w.compact(later);
        assert_eq!(
            events_from(&h, prefix("w/"), later, later).await,
            [ev(Put, "w/z", later)]
        );
        let _ = h.shutdown.send(true);
    });
}

#[test]
fn resuming_at_a_compacted_txn_delete_or_lease_revoke_gets_the_deletes() {
    use EventType::{Delete, Put};
    run(WatchConfig::default(), |h| async move {
        let w = &h.writer;
        w.put(b"w/k7", b"v");
        let rev = w.delete_and_put(b"w/k7", b"w/k2");
        let next = w.put(b"w/k2", b"v");
        w.compact(rev);
        assert_eq!(
            events_from(&h, prefix("w/"), rev, next).await,
            [
                ev(Delete, "w/k7", rev),
                ev(Put, "w/k2", rev),
                ev(Put, "w/k2", next)
            ]
        );

        w.grant(5);
        w.put_leased(b"w/l1", 5);
        w.put_leased(b"w/l2", 5);
        let revoked = w.revoke(5);
        w.compact(revoked);
        assert_eq!(
            events_from(&h, prefix("w/l"), revoked, revoked).await,
            [ev(Delete, "w/l1", revoked), ev(Delete, "w/l2", revoked)]
        );
        let _ = h.shutdown.send(true);
    });
}
