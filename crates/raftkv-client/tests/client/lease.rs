//! Leases: the plain calls, error mapping, and the keeper keeping a lease alive past its TTL
//! and reporting its loss.

use std::time::{Duration, Instant};

use raftkv_client::{Error, GetOptions, LeaseKeeperOptions, LeaseLost, PutOptions};

use crate::cluster::{eventually, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_calls_and_errors() {
    let cluster = Cluster::start().await;
    let c = cluster.client().await;
    let g = c.grant(20, 0).await.unwrap();
    assert!(g.id > 0 && g.ttl == 20);
    c.put("leased", "v", PutOptions::lease(g.id)).await.unwrap();
    let t = c.time_to_live(g.id, true).await.unwrap();
    assert_eq!((t.granted_ttl, t.keys), (20, vec![b"leased".to_vec()]));
    assert!(c
        .leases()
        .await
        .unwrap()
        .leases
        .iter()
        .any(|l| l.id == g.id));
    let k = c.keep_alive_once(g.id).await.unwrap();
    assert_eq!((k.id, k.ttl), (g.id, 20));

    // Unknown leases: TTL 0 / -1 where etcd says so, typed errors elsewhere.
    assert_eq!(c.keep_alive_once(4242).await.unwrap().ttl, 0);
    assert_eq!(c.time_to_live(4242, false).await.unwrap().ttl, -1);
    let e = c.revoke(4242).await.unwrap_err();
    assert!(matches!(e, Error::LeaseNotFound), "{e:?}");
    let e = c.put("x", "v", PutOptions::lease(4242)).await.unwrap_err();
    assert!(matches!(e, Error::LeaseNotFound), "{e:?}");
    let e = c.grant(20, g.id).await.unwrap_err();
    assert!(matches!(e, Error::LeaseExists), "{e:?}");

    c.revoke(g.id).await.unwrap();
    assert!(c
        .get("leased", GetOptions::default())
        .await
        .unwrap()
        .kvs
        .is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_keeps_the_lease_past_its_ttl_and_reports_loss() {
    let cluster = Cluster::start().await;
    let c = cluster.client().await;
    let keeper = c.lease_keeper(2).await.unwrap();
    let id = keeper.id();
    assert_eq!(keeper.ttl(), 2);
    c.put("kept", "v", PutOptions::lease(id)).await.unwrap();

    // Three TTLs later the key is still there: the keeper renewed it all along.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(6) {
        let t = c.time_to_live(id, false).await.unwrap();
        assert!(t.ttl > 0, "lease expired while kept alive: {t:?}");
        assert!(keeper.is_lost().is_none());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        c.get("kept", GetOptions::default())
            .await
            .unwrap()
            .kvs
            .len(),
        1
    );

    // Revoked behind its back: the next keep-alive gets TTL 0 and the loss is reported.
    c.revoke(id).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), keeper.lost())
        .await
        .expect("loss not reported");
    assert_eq!(why, LeaseLost::Expired);

    // A keeper that revokes on drop deletes its keys when dropped.
    let keeper = c
        .lease_keeper_with(
            10,
            LeaseKeeperOptions {
                id: 0,
                revoke_on_drop: true,
            },
        )
        .await
        .unwrap();
    c.put("dropped", "v", PutOptions::lease(keeper.id()))
        .await
        .unwrap();
    drop(keeper);
    eventually(Duration::from_secs(5), "revoke on drop", || async {
        let r = c.get("dropped", GetOptions::default()).await.unwrap();
        r.kvs.is_empty().then_some(())
    })
    .await;

    // An explicit revoke through the keeper.
    let keeper = c.lease_keeper(10).await.unwrap();
    let id = keeper.id();
    keeper.revoke().await.unwrap();
    assert_eq!(c.time_to_live(id, false).await.unwrap().ttl, -1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_survives_the_loss_of_its_member() {
    let mut cluster = Cluster::start().await;
    let c = cluster.client().await;
    let keeper = c.lease_keeper(3).await.unwrap();
    let id = keeper.id();
    cluster.stop(0).await;
    cluster.leader().await;
    let other = cluster.client_of(&[1, 2]).await;
    // Past the TTL after the failure the lease is still alive.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(5) {
        let t = other.time_to_live(id, false).await.unwrap();
        assert!(t.ttl > 0, "lease lost after failover: {t:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(keeper.is_lost().is_none());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_reports_an_unreachable_cluster_after_the_ttl() {
    let mut cluster = Cluster::start().await;
    let c = cluster.client_of(&[0]).await;
    let keeper = c.lease_keeper(2).await.unwrap();
    // Without a quorum no keep-alive can succeed.
    cluster.stop(1).await;
    cluster.stop(2).await;
    let why = tokio::time::timeout(Duration::from_secs(15), keeper.lost())
        .await
        .expect("loss not reported");
    assert!(matches!(why, LeaseLost::Unreachable { .. }), "{why:?}");
    cluster.shutdown().await;
}
