//! Locks and elections built on sessions: mutual exclusion, fencing tokens, campaign,
//! proclaim, observe and resign.

use std::time::Duration;

use raftkv_client::{
    Compare, CompareOp, Election, Error, GetOptions, Mutex, PutOptions, Session, Txn, TxnOp,
};

use crate::cluster::{eventually, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_mutually_exclusive_with_increasing_fencing_tokens() {
    let cluster = Cluster::start().await;
    let c1 = cluster.client_of(&[0, 1, 2]).await;
    let c2 = cluster.client_of(&[1, 2, 0]).await;
    let s1 = Session::new(&c1, 10).await.unwrap();
    let s2 = Session::new(&c2, 10).await.unwrap();

    let g1 = raftkv_client::lock("my-lock", &s1).await.unwrap();
    assert_eq!(g1.key(), format!("my-lock/{:x}", s1.lease()).as_bytes());
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let g2 = Mutex::new("my-lock").lock(&s2).await.unwrap();
        let _ = tx.send(g2.fencing_token());
        g2.unlock().await.unwrap();
        s2
    });
    // The second session waits while the first holds the lock.
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut rx)
            .await
            .is_err(),
        "second session took a held lock"
    );

    // A write fenced by the first holder's token succeeds while it holds the lock...
    let fenced = |key: Vec<u8>, token: i64| {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, token)])
            .and_then([TxnOp::put("resource", "w", PutOptions::default())])
    };
    let (k1, t1) = (g1.key().to_vec(), g1.fencing_token());
    assert!(c1.txn(fenced(k1.clone(), t1)).await.unwrap().succeeded);
    g1.unlock().await.unwrap();
    // ...and fails once it released it.
    assert!(!c1.txn(fenced(k1, t1)).await.unwrap().succeeded);

    let t2 = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("second session never got the lock")
        .unwrap();
    assert!(t2 > t1, "fencing tokens increase: {t1} then {t2}");
    let s2 = waiter.await.unwrap();

    // Free again: try_lock takes it; a held lock refuses try_lock without leaving a key.
    let g = Mutex::new("my-lock").try_lock(&s2).await.unwrap().unwrap();
    assert!(Mutex::new("my-lock").try_lock(&s1).await.unwrap().is_none());
    let keys = c1.get("my-lock/", GetOptions::prefix()).await.unwrap();
    assert_eq!(keys.kvs.len(), 1);
    // A lock attempt given up (its future dropped by a timeout) withdraws its key.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), Mutex::new("my-lock").lock(&s1))
            .await
            .is_err()
    );
    eventually(
        Duration::from_secs(5),
        "the withdrawn key's delete",
        || async {
            let keys = c1.get("my-lock/", GetOptions::prefix()).await.unwrap();
            (keys.kvs.len() == 1).then_some(())
        },
    )
    .await;
    // Closing the session releases its lock; the old guard's release then finds nothing.
    s2.close().await.unwrap();
    let g1 = tokio::time::timeout(Duration::from_secs(10), Mutex::new("my-lock").lock(&s1))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(g.unlock().await, Err(Error::SessionExpired)));
    g1.unlock().await.unwrap();
    cluster.shutdown().await;
}

/// The observer's next leader value, failing after 10 s.
async fn observed(o: &mut raftkv_client::Observer) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), o.next())
        .await
        .expect("no observation")
        .expect("observer ended")
        .expect("observer failed")
        .value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_observe_resign() {
    let cluster = Cluster::start().await;
    let c = cluster.client().await;
    let s1 = Session::new(&c, 10).await.unwrap();
    let s2 = Session::new(&c, 10).await.unwrap();
    let election = Election::new(&c, "leader");
    assert!(election.leader().await.unwrap().is_none());
    let mut observer = election.observe();

    let l1 = election.campaign(&s1, "one").await.unwrap();
    assert_eq!(observed(&mut observer).await, b"one");
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"one");

    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let e2 = election.clone();
    let second = tokio::spawn(async move {
        let l2 = e2.campaign(&s2, "two").await.unwrap();
        let _ = tx.send(l2.fencing_token());
        (s2, l2)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut rx)
            .await
            .is_err(),
        "two leaders at once"
    );
    l1.proclaim("one, again").await.unwrap();
    assert_eq!(observed(&mut observer).await, b"one, again");
    let t1 = l1.fencing_token();
    l1.resign().await.unwrap();

    let t2 = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("second candidate never won")
        .unwrap();
    assert!(t2 > t1);
    assert_eq!(observed(&mut observer).await, b"two");
    let (s2, l2) = second.await.unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"two");

    // A leader whose session ended can no longer proclaim.
    s2.close().await.unwrap();
    let e = l2.proclaim("zombie").await.unwrap_err();
    assert!(matches!(e, Error::NotLeader), "{e:?}");
    assert!(election.leader().await.unwrap().is_none());
    drop(s1);
    cluster.shutdown().await;
}
