//! The crates.io `etcd-client` (async, tokio) against a three-member cluster: watches, leases,
//! txns and ranges asserted field by field. Every expectation was first observed on etcd 3.4.23.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, EventType, GetOptions, KeyValue,
    LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use raftkv_tests::{block_on, Cluster};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(c: &Cluster) -> Client {
    Client::connect(c.endpoints(), None).await.expect("connect")
}

/// A KeyValue's fields, comparable and readable in a failed assertion.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> Kv {
    Kv {
        key: key.into(),
        value: value.into(),
        create,
        modr,
        version,
        lease: 0,
    }
}

/// A DELETE event's kv: only the key and the deletion's revision.
fn tombstone(key: &str, modr: i64) -> Kv {
    kv(key, "", 0, modr, 0)
}

impl From<&KeyValue> for Kv {
    fn from(k: &KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(k.key()).into_owned(),
            value: String::from_utf8_lossy(k.value()).into_owned(),
            create: k.create_revision(),
            modr: k.mod_revision(),
            version: k.version(),
            lease: k.lease(),
        }
    }
}

fn kvs(list: &[KeyValue]) -> Vec<Kv> {
    list.iter().map(Kv::from).collect()
}

/// An event: type, kv, prev_kv.
#[derive(Debug, PartialEq, Eq)]
struct Ev {
    put: bool,
    kv: Kv,
    prev: Option<Kv>,
}

fn put_ev(kv: Kv, prev: Option<Kv>) -> Ev {
    Ev {
        put: true,
        kv,
        prev,
    }
}

fn del_ev(kv: Kv, prev: Option<Kv>) -> Ev {
    Ev {
        put: false,
        kv,
        prev,
    }
}

fn events(resp: &WatchResponse) -> Vec<Ev> {
    resp.events()
        .iter()
        .map(|e| Ev {
            put: e.event_type() == EventType::Put,
            kv: Kv::from(e.kv().expect("event kv")),
            prev: e.prev_kv().map(Kv::from),
        })
        .collect()
}

/// The next message on a watch stream, within [`WAIT`].
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("watch response within the deadline")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// Reads responses until `n` events have arrived for `watch_id`; returns them and checks each
/// response's header revision is at least its events' revisions.
async fn collect(stream: &mut WatchStream, watch_id: i64, n: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = next(stream).await;
        assert_eq!(resp.watch_id(), watch_id, "{resp:?}");
        assert!(!resp.canceled(), "{resp:?}");
        let header = resp.header().expect("header").revision();
        for e in events(&resp) {
            assert!(e.kv.modr <= header, "{resp:?}");
            out.push(e);
        }
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

/// The gRPC status behind a client error.
#[track_caller]
fn status(e: Error) -> (tonic::Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Asserts that `e` is the gRPC status `code` with etcd's exact `message`.
#[track_caller]
fn assert_status(e: Error, code: tonic::Code, message: &str) {
    assert_eq!(status(e), (code, message.to_string()));
}

#[test]
fn watch_history_prev_kv_filters_cancel_and_compaction() {
    let c = Cluster::start(3);
    block_on(async {
        let mut cl = connect(&c).await;
        cl.put("a", "1", None).await.unwrap(); // 2
        cl.put("b", "1", None).await.unwrap(); // 3
        cl.put("a", "2", None).await.unwrap(); // 4
        cl.delete("a", None).await.unwrap(); // 5
        cl.put("ab", "x", None).await.unwrap(); // 6

        // History replay from revision 2 over the prefix "a", with prev_kv.
        let (mut watcher, mut stream) = cl
            .watch(
                "a",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(2)
                        .with_prev_key(),
                ),
            )
            .await
            .unwrap();
        let id = watcher.watch_id();
        let got = collect(&mut stream, id, 4).await;
        assert_eq!(
            got,
            [
                put_ev(kv("a", "1", 2, 2, 1), None),
                put_ev(kv("a", "2", 2, 4, 2), Some(kv("a", "1", 2, 2, 1))),
                del_ev(tombstone("a", 5), Some(kv("a", "2", 2, 4, 2))),
                put_ev(kv("ab", "x", 6, 6, 1), None),
            ]
        );

        // Live events follow on the same watcher, no gap, no duplicate.
        cl.put("b", "2", None).await.unwrap(); // 7: not watched
        cl.put("ac", "y", None).await.unwrap(); // 8
        let txn = Txn::new().and_then([
            TxnOp::put("ab", "z", None),
            TxnOp::delete("ac", None),
            TxnOp::put("zz", "q", None),
        ]);
        cl.txn(txn).await.unwrap(); // 9: two events in one revision, delivered together
        let resp = next(&mut stream).await;
        assert_eq!(resp.header().unwrap().revision(), 8);
        assert_eq!(events(&resp), [put_ev(kv("ac", "y", 8, 8, 1), None)]);
        let resp = next(&mut stream).await;
        assert_eq!(resp.header().unwrap().revision(), 9);
        assert_eq!(
            events(&resp),
            [
                put_ev(kv("ab", "z", 6, 9, 2), Some(kv("ab", "x", 6, 6, 1))),
                del_ev(tombstone("ac", 9), Some(kv("ac", "y", 8, 8, 1))),
            ]
        );

        // A second watcher on the same stream, filtered: NOPUT sees only deletes.
        watcher
            .watch(
                "b",
                Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
            )
            .await
            .unwrap();
        let created = next(&mut stream).await;
        assert!(created.created(), "{created:?}");
        let id2 = created.watch_id();
        assert_ne!(id2, id);
        assert!(created.events().is_empty());
        cl.put("b", "3", None).await.unwrap(); // 10: filtered out
        cl.delete("b", None).await.unwrap(); // 11
        let resp = next(&mut stream).await;
        assert_eq!(resp.watch_id(), id2);
        assert_eq!(events(&resp), [del_ev(tombstone("b", 11), None)]);

        // Progress request: a response with watch_id -1, the current revision, no events.
        watcher.request_progress().await.unwrap();
        let resp = next(&mut stream).await;
        assert_eq!(resp.watch_id(), -1, "{resp:?}");
        assert_eq!(resp.header().unwrap().revision(), 11);
        assert!(resp.events().is_empty() && !resp.created() && !resp.canceled());

        // Cancel the first watcher: a canceled response, then nothing more for it.
        watcher.cancel().await.unwrap();
        let resp = next(&mut stream).await;
        assert!(resp.canceled(), "{resp:?}");
        assert_eq!(resp.watch_id(), id);
        assert_eq!(resp.compact_revision(), 0);
        assert_eq!(resp.cancel_reason(), "");
        cl.put("ad", "1", None).await.unwrap(); // 12: nobody watches it now
        cl.delete("b", None).await.unwrap(); // deletes nothing: no revision, no event
        cl.put("b", "4", None).await.unwrap(); // 13: filtered
        cl.delete("b", None).await.unwrap(); // 14
        let resp = next(&mut stream).await;
        assert_eq!(resp.watch_id(), id2);
        assert_eq!(events(&resp), [del_ev(tombstone("b", 14), None)]);

        // start_revision 0 = from now on; a future start waits for its revision.
        let (_w, mut s0) = cl.watch("k", None).await.unwrap();
        let (_w2, mut sf) = cl
            .watch("k", Some(WatchOptions::new().with_start_revision(16)))
            .await
            .unwrap();
        cl.put("k", "15", None).await.unwrap(); // 15
        cl.put("k", "16", None).await.unwrap(); // 16
        let got0 = events(&next(&mut s0).await);
        assert_eq!(got0, [put_ev(kv("k", "15", 15, 15, 1), None)]);
        assert_eq!(
            events(&next(&mut sf).await),
            [put_ev(kv("k", "16", 15, 16, 2), None)]
        );

        // Compaction: a watch from a compacted revision is created, then canceled with the
        // compact revision. etcd 3.4 leaves cancel_reason empty here (etcdctl's "required
        // revision has been compacted" text is made up by the Go client from compact_revision).
        cl.compact(10, None).await.unwrap();
        let (w, mut sc) = cl
            .watch("a", Some(WatchOptions::new().with_start_revision(5)))
            .await
            .unwrap();
        let resp = next(&mut sc).await;
        assert!(resp.canceled(), "{resp:?}");
        assert_eq!(resp.watch_id(), w.watch_id());
        assert_eq!(resp.compact_revision(), 10);
        assert_eq!(resp.cancel_reason(), "");
        assert!(resp.events().is_empty());
        // Watching from exactly the compact revision + 1 still replays.
        let (_w, mut s11) = cl
            .watch("b", Some(WatchOptions::new().with_start_revision(11)))
            .await
            .unwrap();
        let got = events(&next(&mut s11).await);
        assert_eq!(
            got,
            [
                del_ev(tombstone("b", 11), None),
                put_ev(kv("b", "4", 13, 13, 1), None),
                del_ev(tombstone("b", 14), None),
            ]
        );
    });
}

#[test]
fn watch_all_keys_many_revisions_in_order() {
    let c = Cluster::start(3);
    block_on(async {
        let mut cl = connect(&c).await;
        // Watch from the first revision while writes happen concurrently on every endpoint.
        let (w, mut stream) = cl
            .watch(
                "",
                Some(WatchOptions::new().with_all_keys().with_start_revision(2)),
            )
            .await
            .unwrap();
        let mut writers = Vec::new();
        for (i, ep) in c.endpoints().into_iter().enumerate() {
            writers.push(tokio::spawn(async move {
                let mut cl = Client::connect([ep], None).await.unwrap();
                for j in 0..50 {
                    cl.put(format!("w{i}/{j:02}"), format!("{j}"), None)
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let got = collect(&mut stream, w.watch_id(), 150).await;
        let revs: Vec<i64> = got.iter().map(|e| e.kv.modr).collect();
        assert_eq!(revs, (2..152).collect::<Vec<_>>());
        // Per writer, its keys in order.
        for i in 0..3 {
            let mine: Vec<String> = got
                .iter()
                .filter(|e| e.kv.key.starts_with(&format!("w{i}/")))
                .map(|e| e.kv.key.clone())
                .collect();
            let want: Vec<String> = (0..50).map(|j| format!("w{i}/{j:02}")).collect();
            assert_eq!(mine, want);
        }
    });
}

#[test]
fn leases_grant_keepalive_ttl_revoke_list() {
    let c = Cluster::start(3);
    block_on(async {
        let mut cl = connect(&c).await;
        // Explicit id.
        let g = cl
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await
            .unwrap();
        assert_eq!((g.id(), g.ttl(), g.error()), (0x1234, 30, ""));
        assert_eq!(g.header().unwrap().revision(), 1);
        // The same id again.
        let e = cl
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await
            .unwrap_err();
        assert_status(
            e,
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists",
        );
        // Server-chosen id (0): non-zero, positive, distinct.
        let g2 = cl.lease_grant(60, None).await.unwrap();
        assert!(g2.id() > 0 && g2.id() != 0x1234);
        assert_eq!(g2.ttl(), 60);
        // TTLs below the minimum (ceil(1.5 x 1 s election timeout) = 2 s) are raised to it.
        let g1 = cl.lease_grant(1, None).await.unwrap();
        assert_eq!(g1.ttl(), 2);
        // Too large.
        let e = cl.lease_grant(9_000_000_001, None).await.unwrap_err();
        assert_status(
            e,
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL",
        );

        // Attach keys; a key's lease field shows the id.
        cl.put("l/a", "1", Some(PutOptions::new().with_lease(0x1234)))
            .await
            .unwrap(); // 2
        cl.put("l/b", "2", Some(PutOptions::new().with_lease(0x1234)))
            .await
            .unwrap(); // 3
        cl.put("l/c", "3", Some(PutOptions::new().with_lease(g2.id())))
            .await
            .unwrap(); // 4
        let r = cl
            .get("l/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let leases: Vec<i64> = r.kvs().iter().map(|k| k.lease()).collect();
        assert_eq!(leases, [0x1234, 0x1234, g2.id()]);
        // put --ignore-lease keeps the lease; a plain put detaches it.
        cl.put("l/c", "4", Some(PutOptions::new().with_ignore_lease()))
            .await
            .unwrap(); // 5
        let r = cl.get("l/c", None).await.unwrap();
        assert_eq!(r.kvs()[0].lease(), g2.id());
        assert_eq!(r.kvs()[0].value(), b"4");

        // TimeToLive with keys.
        let t = cl
            .lease_time_to_live(0x1234, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!((t.id(), t.granted_ttl()), (0x1234, 30));
        assert!((28..=30).contains(&t.ttl()), "ttl {}", t.ttl());
        let mut keys = t.keys().to_vec();
        keys.sort();
        assert_eq!(keys, [b"l/a".to_vec(), b"l/b".to_vec()]);
        let t = cl.lease_time_to_live(0x1234, None).await.unwrap();
        assert!(t.keys().is_empty(), "keys only when asked");

        // KeepAlive resets to the granted TTL.
        let (mut keeper, mut responses) = cl.lease_keep_alive(0x1234).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let ka = tokio::time::timeout(WAIT, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((ka.id(), ka.ttl()), (0x1234, 30));
        assert_eq!(ka.header().unwrap().revision(), 5);

        // Leases lists all three (the 2 s one may already have expired: at least two).
        let ids: Vec<i64> = cl
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        assert!(ids.contains(&0x1234) && ids.contains(&g2.id()), "{ids:?}");

        // Revoke deletes both attached keys in one revision (6), seen as one watch response.
        let (_w, mut stream) = cl
            .watch(
                "l/",
                Some(WatchOptions::new().with_prefix().with_start_revision(6)),
            )
            .await
            .unwrap();
        let rv = cl.lease_revoke(0x1234).await.unwrap();
        assert_eq!(rv.header().unwrap().revision(), 6);
        let resp = next(&mut stream).await;
        assert_eq!(
            events(&resp),
            [
                del_ev(tombstone("l/a", 6), None),
                del_ev(tombstone("l/b", 6), None)
            ]
        );
        let r = cl
            .get("l/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(
            kvs(r.kvs()),
            [Kv {
                lease: g2.id(),
                ..kv("l/c", "4", 4, 5, 2)
            }]
        );

        // The revoked lease: TimeToLive -1, KeepAlive TTL 0 (not errors); Revoke NotFound.
        let t = cl.lease_time_to_live(0x1234, None).await.unwrap();
        assert_eq!((t.id(), t.ttl(), t.granted_ttl()), (0x1234, -1, 0));
        keeper.keep_alive().await.unwrap();
        let ka = tokio::time::timeout(WAIT, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((ka.id(), ka.ttl()), (0x1234, 0));
        let e = cl.lease_revoke(0x1234).await.unwrap_err();
        assert_status(
            e,
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        );
        let e = cl
            .put("x", "y", Some(PutOptions::new().with_lease(0x1234)))
            .await
            .unwrap_err();
        assert_status(
            e,
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        );

        // The 2 s lease expires by itself.
        raftkv_tests::wait_until_async("the 2 s lease to expire", WAIT, || {
            let mut cl = cl.clone();
            let id = g1.id();
            async move {
                let t = cl.lease_time_to_live(id, None).await.unwrap();
                (t.ttl() == -1).then_some(())
            }
        })
        .await;
        let ids: Vec<i64> = cl
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        assert_eq!(ids, [g2.id()]);
    });
}

#[test]
fn txn_compares_branches_and_nested_responses() {
    let c = Cluster::start(3);
    block_on(async {
        let mut cl = connect(&c).await;
        cl.put("k", "v1", None).await.unwrap(); // 2
        cl.put("k", "v2", None).await.unwrap(); // 3: version 2, create 2, mod 3
        let lease = cl.lease_grant(60, None).await.unwrap().id();
        cl.put("l", "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap(); // 4

        // Each target and operator; (compare, expected outcome).
        let cases = vec![
            (Compare::value("k", CompareOp::Equal, "v2"), true),
            (Compare::value("k", CompareOp::Greater, "v1"), true),
            (Compare::value("k", CompareOp::Less, "v1"), false),
            (Compare::value("k", CompareOp::NotEqual, "v2"), false),
            (Compare::value("missing", CompareOp::NotEqual, "v2"), false),
            (Compare::value("missing", CompareOp::Equal, ""), false),
            (Compare::version("k", CompareOp::Equal, 2), true),
            (Compare::version("k", CompareOp::Greater, 2), false),
            (Compare::version("missing", CompareOp::Equal, 0), true),
            (Compare::create_revision("k", CompareOp::Equal, 2), true),
            (
                Compare::create_revision("missing", CompareOp::Equal, 0),
                true,
            ),
            (Compare::mod_revision("k", CompareOp::Less, 4), true),
            (Compare::mod_revision("k", CompareOp::NotEqual, 3), false),
            (Compare::lease("l", CompareOp::Equal, lease), true),
            (Compare::lease("k", CompareOp::Equal, 0), true),
            (Compare::lease("missing", CompareOp::Equal, 0), true),
            // A range compare: every key in [k, l] must hold.
            (
                Compare::version("k", CompareOp::Greater, 0).with_range("m"),
                true,
            ),
            (
                Compare::version("k", CompareOp::Greater, 1).with_range("m"),
                false,
            ),
            (
                Compare::mod_revision("k", CompareOp::Less, 4).with_prefix(),
                true,
            ),
            (
                Compare::mod_revision("a", CompareOp::Less, 4).with_range("z"),
                false,
            ),
        ];
        for (i, (cmp, want)) in cases.into_iter().enumerate() {
            let r = cl.txn(Txn::new().when([cmp.clone()])).await.unwrap();
            assert_eq!(r.succeeded(), want, "case {i}: {cmp:?}");
            let rev = r.header().unwrap().revision();
            if c.target().is_etcd() && i == 0 {
                // Observed on etcd 3.4.23 about one run in ten: the first read-only txn after
                // the put at revision 4 (sent to another member) answers with header revision
                // 3. A linearizable read must not: raftkv is held to exactly 4.
                assert!((3..=4).contains(&rev), "read-only txn, case {i}: {rev}");
            } else {
                assert_eq!(rev, 4, "read-only txn, case {i}");
            }
            assert!(r.op_responses().is_empty());
        }
        // Compares are ANDed.
        let r = cl
            .txn(Txn::new().when([
                Compare::value("k", CompareOp::Equal, "v2"),
                Compare::version("k", CompareOp::Equal, 1),
            ]))
            .await
            .unwrap();
        assert!(!r.succeeded());

        // Success branch with every op kind, nested txn included; one revision for all.
        let inner = Txn::new()
            .when([Compare::create_revision("new", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("new", "n", None)])
            .or_else([TxnOp::get("new", None)]);
        let r = cl
            .txn(
                Txn::new()
                    .when([Compare::value("k", CompareOp::Equal, "v2")])
                    .and_then([
                        TxnOp::get("k", None),
                        TxnOp::put("k", "v3", Some(PutOptions::new().with_prev_key())),
                        TxnOp::get("k", None),
                        TxnOp::delete("l", Some(DeleteOptions::new().with_prev_key())),
                        TxnOp::txn(inner.clone()),
                    ])
                    .or_else([TxnOp::put("failed", "1", None)]),
            )
            .await
            .unwrap();
        assert!(r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 5);
        let ops = r.op_responses();
        assert_eq!(ops.len(), 5);
        match &ops[0] {
            TxnOpResponse::Get(g) => {
                assert_eq!(kvs(g.kvs()), [kv("k", "v2", 2, 3, 2)]);
                assert_eq!((g.count(), g.more()), (1, false));
            }
            other => panic!("{other:?}"),
        }
        match &ops[1] {
            TxnOpResponse::Put(p) => {
                assert_eq!(p.prev_key().map(Kv::from), Some(kv("k", "v2", 2, 3, 2)));
            }
            other => panic!("{other:?}"),
        }
        match &ops[2] {
            // Reads inside a txn see its earlier writes.
            TxnOpResponse::Get(g) => assert_eq!(kvs(g.kvs()), [kv("k", "v3", 2, 5, 3)]),
            other => panic!("{other:?}"),
        }
        match &ops[3] {
            TxnOpResponse::Delete(d) => {
                assert_eq!(d.deleted(), 1);
                assert_eq!(
                    kvs(d.prev_kvs()),
                    [Kv {
                        lease,
                        ..kv("l", "x", 4, 4, 1)
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        match &ops[4] {
            TxnOpResponse::Txn(t) => {
                assert!(t.succeeded());
                assert_eq!(t.op_responses().len(), 1);
                assert!(matches!(t.op_responses()[0], TxnOpResponse::Put(_)));
            }
            other => panic!("{other:?}"),
        }
        let r = cl
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(
            kvs(r.kvs()),
            [kv("k", "v3", 2, 5, 3), kv("new", "n", 5, 5, 1)]
        );

        // The nested txn again: now its failure branch runs.
        let r = cl
            .txn(Txn::new().and_then([TxnOp::txn(inner)]))
            .await
            .unwrap();
        assert!(r.succeeded(), "no compares = success");
        assert_eq!(r.header().unwrap().revision(), 5, "only reads ran");
        match &r.op_responses()[0] {
            TxnOpResponse::Txn(t) => {
                assert!(!t.succeeded());
                match &t.op_responses()[0] {
                    TxnOpResponse::Get(g) => assert_eq!(kvs(g.kvs()), [kv("new", "n", 5, 5, 1)]),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }

        // Failure branch writes.
        let r = cl
            .txn(
                Txn::new()
                    .when([Compare::version("k", CompareOp::Less, 1)])
                    .and_then([TxnOp::put("s", "1", None)])
                    .or_else([
                        TxnOp::put("f", "1", None),
                        TxnOp::delete("", Some(DeleteOptions::new().with_prefix())),
                    ]),
            )
            .await
            .unwrap();
        assert!(!r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 6);
        match &r.op_responses()[1] {
            TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 3, "k, new and f"),
            other => panic!("{other:?}"),
        }

        // Errors: too many ops, duplicate keys (also across a nested txn), empty key.
        let many: Vec<TxnOp> = (0..129)
            .map(|i| TxnOp::put(format!("t{i}"), "v", None))
            .collect();
        let e = cl.txn(Txn::new().and_then(many)).await.unwrap_err();
        assert_status(
            e,
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        let e = cl
            .txn(Txn::new().and_then([
                TxnOp::put("d", "1", None),
                TxnOp::txn(Txn::new().and_then([TxnOp::put("d", "2", None)])),
            ]))
            .await
            .unwrap_err();
        assert_status(
            e,
            tonic::Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        let e = cl
            .txn(Txn::new().and_then([TxnOp::put("", "1", None)]))
            .await
            .unwrap_err();
        assert_status(
            e,
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        // A compare needs a key too (an empty one is not "all keys").
        let e = cl
            .txn(Txn::new().when([Compare::mod_revision("", CompareOp::Less, 5).with_prefix()]))
            .await
            .unwrap_err();
        assert_status(
            e,
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        let r = cl
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(
            r.header().unwrap().revision(),
            6,
            "refused txns changed nothing"
        );
    });
}

#[test]
fn range_count_keys_only_limits_filters_and_errors() {
    let c = Cluster::start(3);
    block_on(async {
        let mut cl = connect(&c).await;
        for (k, v) in [("a", "3"), ("b", "2"), ("c", "1"), ("a", "4")] {
            cl.put(k, v, None).await.unwrap();
        } // a: create 2 mod 5, b: 3, c: 4
        let all = || GetOptions::new().with_all_keys();

        let r = cl.get("", Some(all().with_count_only())).await.unwrap();
        assert_eq!((r.count(), r.kvs().len(), r.more()), (3, 0, false));
        let r = cl.get("", Some(all().with_limit(2))).await.unwrap();
        assert_eq!((r.count(), r.kvs().len(), r.more()), (3, 2, true));
        let r = cl.get("", Some(all().with_keys_only())).await.unwrap();
        assert_eq!(
            kvs(r.kvs()),
            [
                kv("a", "", 2, 5, 2),
                kv("b", "", 3, 3, 1),
                kv("c", "", 4, 4, 1)
            ]
        );
        // Filters: count ignores them (etcd counts the whole range).
        let r = cl
            .get("", Some(all().with_min_mod_revision(4)))
            .await
            .unwrap();
        assert_eq!(kvs(r.kvs()), [kv("a", "4", 2, 5, 2), kv("c", "1", 4, 4, 1)]);
        assert_eq!(r.count(), 3);
        let r = cl
            .get("", Some(all().with_max_create_revision(3)))
            .await
            .unwrap();
        assert_eq!(kvs(r.kvs()), [kv("a", "4", 2, 5, 2), kv("b", "2", 3, 3, 1)]);
        let r = cl
            .get(
                "",
                Some(
                    all()
                        .with_sort(SortTarget::Value, SortOrder::Ascend)
                        .with_limit(2),
                ),
            )
            .await
            .unwrap();
        assert_eq!(kvs(r.kvs()), [kv("c", "1", 4, 4, 1), kv("b", "2", 3, 3, 1)]);
        assert_eq!((r.count(), r.more()), (3, true));
        let r = cl
            .get(
                "b",
                Some(GetOptions::new().with_from_key().with_serializable()),
            )
            .await
            .unwrap();
        assert_eq!(kvs(r.kvs()).len(), 2);
        let r = cl
            .get("a", Some(GetOptions::new().with_revision(2)))
            .await
            .unwrap();
        assert_eq!(kvs(r.kvs()), [kv("a", "3", 2, 2, 1)]);
        assert_eq!(r.header().unwrap().revision(), 5);
        // Delete range and prev_kvs.
        let d = cl
            .delete(
                "a",
                Some(DeleteOptions::new().with_range("c").with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(d.deleted(), 2);
        assert_eq!(
            kvs(d.prev_kvs()),
            [kv("a", "4", 2, 5, 2), kv("b", "2", 3, 3, 1)]
        );
        assert_eq!(d.header().unwrap().revision(), 6);

        // Header: cluster and member ids are non-zero, the term at least 1.
        let h = d.header().unwrap();
        assert!(h.cluster_id() != 0 && h.member_id() != 0 && h.raft_term() >= 1);

        // Errors with their gRPC codes.
        let e = cl.get("", None).await.unwrap_err();
        assert_status(
            e,
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        let e = cl.put("", "v", None).await.unwrap_err();
        assert_status(
            e,
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        let e = cl
            .get("a", Some(GetOptions::new().with_revision(7)))
            .await
            .unwrap_err();
        assert_status(
            e,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        cl.compact(5, None).await.unwrap();
        let e = cl
            .get("a", Some(GetOptions::new().with_revision(4)))
            .await
            .unwrap_err();
        assert_status(
            e,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        let e = cl.compact(5, None).await.unwrap_err();
        assert_status(
            e,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        let big = vec![b'x'; 1_600_000];
        let e = cl.put("big", big, None).await.unwrap_err();
        assert_status(
            e,
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large",
        );
    });
}

#[test]
fn keep_alive_through_a_follower_and_expiry() {
    let c = Cluster::start(3);
    let leader = c.leader_index();
    let follower = (leader + 1) % 3;
    block_on(async {
        // Everything through one follower: keep-alives must reach the leader's lessor.
        let mut cl = Client::connect([c.endpoint(follower)], None).await.unwrap();
        let id = cl.lease_grant(3, None).await.unwrap().id();
        cl.put("ka", "1", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let (mut keeper, mut responses) = cl.lease_keep_alive(id).await.unwrap();
        // Renew every second for six seconds (twice the TTL): the key stays.
        for _ in 0..6 {
            keeper.keep_alive().await.unwrap();
            let ka = tokio::time::timeout(WAIT, responses.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!((ka.id(), ka.ttl()), (id, 3));
            tokio::time::sleep(Duration::from_secs(1)).await;
            let r = cl.get("ka", None).await.unwrap();
            assert_eq!(r.kvs().len(), 1, "kept-alive key expired");
        }
        // Stop renewing: gone within TTL + slack, not before ~2 s.
        let stopped = std::time::Instant::now();
        let gone = raftkv_tests::wait_until_async("the key to expire", WAIT, || {
            let mut cl = cl.clone();
            async move {
                let r = cl.get("ka", None).await.unwrap();
                r.kvs().is_empty().then(std::time::Instant::now)
            }
        })
        .await;
        let lived = gone - stopped;
        assert!(
            lived >= Duration::from_secs(1) && lived <= Duration::from_secs(6),
            "expired {lived:?} after the last keep-alive (TTL 3 s, renewed ~1 s before)"
        );
        let t = cl.lease_time_to_live(id, None).await.unwrap();
        assert_eq!(t.ttl(), -1);
    });
}
