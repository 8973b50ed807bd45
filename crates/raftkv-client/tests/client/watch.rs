//! Watch: history then live events, options, compaction, and resuming across the loss of the
//! member the watch was connected to.

use std::time::Duration;

use raftkv_client::proto::{EventType, KeyValue};
use raftkv_client::{
    Client, DeleteOptions, Error, PutOptions, WatchFilter, WatchOptions, WatchUpdate, Watcher,
};

use crate::cluster::Cluster;

/// The next update, failing after 10 s.
async fn next(w: &mut Watcher) -> WatchUpdate {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("no watch update within 10 s")
        .expect("watch ended")
        .expect("watch failed")
}

/// Collects events until one at `last` revision or later arrives.
async fn collect_until(w: &mut Watcher, last: i64) -> Vec<KeyValue> {
    let mut out = Vec::new();
    while out
        .last()
        .is_none_or(|kv: &KeyValue| kv.mod_revision < last)
    {
        let u = next(w).await;
        out.extend(u.events.into_iter().filter_map(|e| e.kv));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_live() {
    let cluster = Cluster::start().await;
    let c = cluster.client().await;
    for i in 0..3 {
        c.put(format!("w/{i}"), format!("v{i}"), PutOptions::default())
            .await
            .unwrap();
    }
    c.put("other", "x", PutOptions::default()).await.unwrap();
    // From revision 2: the three puts of history, then live writes, with prev_kv.
    let mut w = c
        .watch(
            "w/",
            WatchOptions {
                prefix: true,
                start_revision: 2,
                prev_kv: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let hist = collect_until(&mut w, 4).await;
    let revs: Vec<i64> = hist.iter().map(|kv| kv.mod_revision).collect();
    assert_eq!(revs, [2, 3, 4]);
    c.put("w/0", "again", PutOptions::default()).await.unwrap();
    let u = next(&mut w).await;
    assert_eq!(u.events.len(), 1);
    assert_eq!(u.events[0].prev_kv.as_ref().unwrap().value, b"v0");
    assert_eq!(u.events[0].kv.as_ref().unwrap().value, b"again");
    c.delete("w/1", DeleteOptions::default()).await.unwrap();
    let u = next(&mut w).await;
    assert_eq!(u.events[0].r#type, EventType::Delete as i32);

    // A watch from now with a filter sees only deletes.
    let mut deletes = c
        .watch(
            "w/",
            WatchOptions {
                prefix: true,
                filters: vec![WatchFilter::NoPut],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.put("w/9", "x", PutOptions::default()).await.unwrap();
    c.delete("w/9", DeleteOptions::default()).await.unwrap();
    let u = next(&mut deletes).await;
    assert_eq!(u.events.len(), 1);
    assert_eq!(u.events[0].r#type, EventType::Delete as i32);
    deletes.cancel().await;

    // A compacted start revision ends the watcher with a typed error.
    let now = c.put("w/0", "last", PutOptions::default()).await.unwrap();
    let now = now.header.unwrap().revision;
    c.compact(now, false).await.unwrap();
    let mut old = c
        .watch(
            "w/",
            WatchOptions {
                prefix: true,
                start_revision: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), old.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, Error::Compacted { compact_revision } if compact_revision == now),
        "{e:?}"
    );
    assert!(
        old.next().await.is_none(),
        "the watcher ends after the error"
    );
    drop(w);
    cluster.shutdown().await;
}

/// Writes `n` keys `r/<tag>-<i>` through `c`, retrying puts refused while a leader is elected
/// (a retried put may have been applied twice: the watch checks below compare against the
/// store's own history, not against `n`).
async fn write(c: &Client, tag: &str, n: usize) -> i64 {
    let mut last = 0;
    for i in 0..n {
        loop {
            match c
                .put(format!("r/{tag}-{i}"), "v", PutOptions::default())
                .await
            {
                Ok(r) => {
                    last = r.header.unwrap().revision;
                    break;
                }
                Err(e) if e.is_unavailable() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("put: {e}"),
            }
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_another_member_without_loss_or_repeats() {
    let mut cluster = Cluster::start().await;
    // The watcher's client talks to member 0 first; the writer never does.
    let watcher_client = cluster.client_of(&[0, 1, 2]).await;
    let writer = cluster.client_of(&[1, 2]).await;
    let start = writer
        .put("r/start", "", PutOptions::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut w = watcher_client
        .watch(
            "r/",
            WatchOptions {
                prefix: true,
                start_revision: start,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(watcher_client.current_endpoint(), cluster.endpoint(0));

    let before = write(&writer, "a", 20).await;
    let mut seen = collect_until(&mut w, before).await;

    // The watched member goes away; writes go on through the others while the watcher moves.
    let background = {
        let writer = writer.clone();
        tokio::spawn(async move { write(&writer, "b", 30).await })
    };
    cluster.stop(0).await;
    let after = background.await.unwrap();
    seen.extend(collect_until(&mut w, after).await);
    assert_ne!(watcher_client.current_endpoint(), cluster.endpoint(0));

    // Exactly the store's history: every revision once, in order.
    let mut reference = writer
        .watch(
            "r/",
            WatchOptions {
                prefix: true,
                start_revision: start,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let expected = collect_until(&mut reference, after).await;
    let revs = |kvs: &[KeyValue]| {
        kvs.iter()
            .map(|kv| (kv.mod_revision, kv.key.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(revs(&seen), revs(&expected));
    assert_eq!(
        expected.len() as i64,
        after - start + 1,
        "one event per revision from the start"
    );
    w.cancel().await;
    reference.cancel().await;
    cluster.shutdown().await;
}
