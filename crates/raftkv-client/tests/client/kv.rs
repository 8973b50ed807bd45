//! KV calls with their options, the txn builder, failover of reads and error mapping.

use raftkv_client::proto::{etcdserverpb::response_op::Response, SortOrder, SortTarget};
use raftkv_client::{Compare, CompareOp, DeleteOptions, Error, GetOptions, PutOptions, Txn, TxnOp};

use crate::cluster::Cluster;

fn keys(r: &raftkv_client::proto::etcdserverpb::RangeResponse) -> Vec<&[u8]> {
    r.kvs.iter().map(|kv| kv.key.as_slice()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_options() {
    let cluster = Cluster::start().await;
    let c = cluster.client().await;

    // Revisions start at 2; each put adds one.
    let r = c.put("a/1", "x", PutOptions::default()).await.unwrap();
    assert_eq!(r.header.unwrap().revision, 2);
    c.put("a/2", "y", PutOptions::default()).await.unwrap();
    c.put("a/3", "z", PutOptions::default()).await.unwrap();
    c.put("b", "w", PutOptions::default()).await.unwrap();
    // prev_kv on overwrite.
    let r = c
        .put(
            "a/1",
            "x2",
            PutOptions {
                prev_kv: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.prev_kv.unwrap().value, b"x");

    let r = c.get("a/1", GetOptions::default()).await.unwrap();
    assert_eq!(r.kvs[0].value, b"x2");
    assert_eq!(r.kvs[0].version, 2);
    assert_eq!(r.header.unwrap().revision, 6);

    let r = c.get("a/", GetOptions::prefix()).await.unwrap();
    assert_eq!(keys(&r), [&b"a/1"[..], b"a/2", b"a/3"]);
    let r = c
        .get(
            "a/2",
            GetOptions {
                from_key: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), [&b"a/2"[..], b"a/3", b"b"]);
    let r = c
        .get(
            "a/1",
            GetOptions {
                range_end: Some(b"a/3".to_vec()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), [&b"a/1"[..], b"a/2"]);
    let r = c
        .get(
            "a/",
            GetOptions {
                prefix: true,
                limit: 2,
                sort: Some((SortTarget::Key, SortOrder::Descend)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), [&b"a/3"[..], b"a/2"]);
    assert!(r.more);
    assert_eq!(r.count, 3);
    // An old revision.
    let r = c
        .get(
            "a/1",
            GetOptions {
                revision: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.kvs[0].value, b"x");
    let r = c
        .get(
            "",
            GetOptions {
                prefix: true,
                keys_only: true,
                serializable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.kvs.len(), 4);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let r = c
        .get(
            "a/",
            GetOptions {
                prefix: true,
                count_only: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (3, 0));
    let r = c
        .get(
            "",
            GetOptions {
                from_key: true,
                min_mod_revision: 4,
                max_create_revision: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), [&b"a/1"[..], b"a/3"]);
    let r = c
        .get(
            "",
            GetOptions {
                from_key: true,
                min_create_revision: 5,
                max_mod_revision: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), [&b"b"[..]]);

    // ignore_value keeps the value; on a missing key it is refused.
    c.put(
        "b",
        "",
        PutOptions {
            ignore_value: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        c.get("b", GetOptions::default()).await.unwrap().kvs[0].value,
        b"w"
    );
    let e = c
        .put(
            "nope",
            "",
            PutOptions {
                ignore_value: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::KeyNotFound), "{e:?}");

    // Delete a prefix with prev_kv.
    let r = c
        .delete(
            "a/",
            DeleteOptions {
                prefix: true,
                prev_kv: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.deleted, 3);
    assert_eq!(r.prev_kvs.len(), 3);
    assert!(c
        .get("a/", GetOptions::prefix())
        .await
        .unwrap()
        .kvs
        .is_empty());

    // Compaction: old revisions become errors, typed.
    let now = c
        .get("b", GetOptions::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    c.compact(now, true).await.unwrap();
    let e = c
        .get(
            "a/1",
            GetOptions {
                revision: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Compacted { .. }), "{e:?}");
    let e = c.compact(now, false).await.unwrap_err();
    assert!(matches!(e, Error::Compacted { .. }), "{e:?}");
    let e = c.compact(now + 100, false).await.unwrap_err();
    assert!(matches!(e, Error::FutureRevision), "{e:?}");
    let e = c
        .get(
            "b",
            GetOptions {
                revision: now + 100,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::FutureRevision), "{e:?}");
    let e = c.put("", "v", PutOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::EmptyKey), "{e:?}");

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_builder_branches() {
    let cluster = Cluster::start().await;
    let c = cluster.client().await;
    let put = c.put("k", "v", PutOptions::default()).await.unwrap();
    let rev = put.header.unwrap().revision;
    let lease = c.grant(30, 0).await.unwrap().id;
    c.put("l", "x", PutOptions::lease(lease)).await.unwrap();

    // Every compare target holds: the success branch runs, with a nested txn.
    let t = c
        .txn(
            Txn::new()
                .when([
                    Compare::value("k", CompareOp::Equal, "v"),
                    Compare::version("k", CompareOp::Equal, 1),
                    Compare::create_revision("k", CompareOp::Equal, rev),
                    Compare::mod_revision("k", CompareOp::Less, rev + 1),
                    Compare::lease("l", CompareOp::Equal, lease),
                    Compare::create_revision("missing", CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put("k2", "v2", PutOptions::default()),
                    TxnOp::get("k", GetOptions::default()),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::value("k", CompareOp::NotEqual, "v")])
                            .or_else([TxnOp::delete("l", DeleteOptions::default())]),
                    ),
                ])
                .or_else([TxnOp::put("failed", "1", PutOptions::default())]),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.responses.len(), 3);
    match &t.responses[1].response {
        Some(Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"v"),
        other => panic!("{other:?}"),
    }
    match &t.responses[2].response {
        Some(Response::ResponseTxn(inner)) => assert!(!inner.succeeded),
        other => panic!("{other:?}"),
    }
    assert!(c
        .get("l", GetOptions::default())
        .await
        .unwrap()
        .kvs
        .is_empty());
    assert_eq!(
        c.get("k2", GetOptions::default()).await.unwrap().kvs.len(),
        1
    );

    // A failing compare takes the else branch.
    let t = c
        .txn(
            Txn::new()
                .when([Compare::value("k", CompareOp::Greater, "zzz")])
                .and_then([TxnOp::put("never", "1", PutOptions::default())])
                .or_else([TxnOp::get("k", GetOptions::default())]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert!(c
        .get("never", GetOptions::default())
        .await
        .unwrap()
        .kvs
        .is_empty());

    // Range compares and read-only txns.
    let t = c
        .txn(
            Txn::new()
                .when([Compare::version("k", CompareOp::Greater, 0).with_prefix()])
                .and_then([TxnOp::get("k", GetOptions::prefix())]),
        )
        .await
        .unwrap();
    assert!(t.succeeded);

    // Refusals, typed.
    let e = c
        .txn(Txn::new().and_then([
            TxnOp::put("d", "1", PutOptions::default()),
            TxnOp::put("d", "2", PutOptions::default()),
        ]))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DuplicateKey), "{e:?}");
    let many = (0..129).map(|i| TxnOp::put(format!("m{i}"), "v", PutOptions::default()));
    let e = c.txn(Txn::new().and_then(many)).await.unwrap_err();
    assert!(matches!(e, Error::TooManyOps), "{e:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_fail_over_when_an_endpoint_is_down() {
    let mut cluster = Cluster::start().await;
    let c = cluster.client().await;
    c.put("k", "v", PutOptions::default()).await.unwrap();
    assert_eq!(c.current_endpoint(), cluster.endpoint(0));
    cluster.stop(0).await;
    // The read goes to member 0 first, fails, and is retried on the others (waiting out an
    // election if member 0 led).
    let r = c.get("k", GetOptions::default()).await.unwrap();
    assert_eq!(r.kvs[0].value, b"v");
    assert_ne!(c.current_endpoint(), cluster.endpoint(0));
    cluster.leader().await;
    c.put("k", "v2", PutOptions::default()).await.unwrap();

    // A write to a refused connection was never sent, so it is retried elsewhere.
    let c2 = cluster.client().await;
    c2.put("k", "v3", PutOptions::default()).await.unwrap();
    assert_ne!(c2.current_endpoint(), cluster.endpoint(0));
    let s = c2.status().await.unwrap();
    assert!(s.leader != 0);
    assert_eq!(c2.member_list(false).await.unwrap().members.len(), 3);
    assert!(c2.endpoint_status(&cluster.endpoint(0)).await.is_err());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_leader_sends_writes_to_the_leader() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let eps: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let c = raftkv_client::Client::connect(
        eps,
        raftkv_client::ClientOptions {
            prefer_leader: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.leader_endpoint().await, Some(cluster.endpoint(leader)));
    let r = c.put("k", "v", PutOptions::default()).await.unwrap();
    let member = c.endpoint_status(&cluster.endpoint(leader)).await.unwrap();
    assert_eq!(
        r.header.unwrap().member_id,
        member.header.unwrap().member_id
    );
    cluster.shutdown().await;
}
