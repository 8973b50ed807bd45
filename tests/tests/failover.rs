//! Leader failure: SIGKILL the leader of a three-member cluster and check that writes continue
//! on the new leader, that a watch on a surviving member delivers every event exactly once (a
//! client resumes from its last revision if the stream breaks), that a lease keeps its deadline
//! (a 10 s lease does not live 20 s), and that the killed member catches up after a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use raftkv_tests::{block_on, wait_until_async, Cluster};

/// Acknowledged writes: key -> revision.
type Acked = Arc<Mutex<BTreeMap<String, i64>>>;

/// Writes `w/<n>` through `client` every 20 ms until `stop`; records acknowledged ones. A failed
/// or timed-out attempt is not retried under the same key (it may still have committed).
async fn writer(mut client: Client, acked: Acked, stop: Arc<AtomicBool>) {
    let mut n = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let key = format!("w/{n:05}");
        n += 1;
        let put = client.put(key.clone(), "v", None);
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(3), put).await {
            let rev = resp.header().expect("header").revision();
            acked.lock().unwrap().insert(key, rev);
        }
    }
}

/// One watch event: (revision, key, is put).
type Seen = Arc<Mutex<Vec<(i64, String, bool)>>>;

/// Watches prefix `w/` on `endpoint` from `start`, recording events; when the stream fails or
/// ends, reconnects and resumes from the last seen revision + 1, as clients do.
async fn watcher(endpoint: String, start: i64, seen: Seen, stop: Arc<AtomicBool>) {
    let mut next_rev = start;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut client) = Client::connect([endpoint.clone()], None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_rev);
        let Ok((_w, mut stream)) = client.watch("w/", Some(opts)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let msg = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
            let resp = match msg {
                Err(_) => continue, // no event yet: check `stop` again
                Ok(Ok(Some(resp))) => resp,
                Ok(_) => break, // error or end: resume
            };
            assert!(
                !resp.canceled(),
                "watch canceled: {resp:?} (compact revision {})",
                resp.compact_revision()
            );
            let mut seen = seen.lock().unwrap();
            for e in resp.events() {
                let kv = e.kv().expect("kv");
                seen.push((
                    kv.mod_revision(),
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    e.event_type() == EventType::Put,
                ));
                next_rev = kv.mod_revision() + 1;
            }
        }
    }
}

#[test]
fn leader_kill_writes_continue_watch_resumes_lease_deadline_kept() {
    let mut c = Cluster::start(3);
    let target = c.target();
    let leader = c.leader_index();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let survivor_eps: Vec<String> = survivors.iter().map(|&i| c.endpoint(i)).collect();
    let watch_ep = c.endpoint(survivors[0]);

    block_on(async {
        let mut cl = Client::connect(survivor_eps.clone(), None)
            .await
            .expect("connect");
        let start = cl
            .get("none", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
            + 1;

        // The watch on a surviving member, opened before anything happens.
        let stop_watch = Arc::new(AtomicBool::new(false));
        let seen: Seen = Arc::default();
        let watch_task = tokio::spawn(watcher(
            watch_ep.clone(),
            start,
            seen.clone(),
            stop_watch.clone(),
        ));

        // The lease, kept without keep-alives.
        let granted_at = Instant::now();
        let lease = cl.lease_grant(10, None).await.unwrap();
        let grant_answered = Instant::now();
        assert_eq!(lease.ttl(), 10);
        cl.put(
            "lease/key",
            "x",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .unwrap();

        // Writes, before, during and after the kill.
        let stop_writes = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        let write_task = tokio::spawn(writer(cl.clone(), acked.clone(), stop_writes.clone()));

        // Kill the leader half-way through the lease: a new leader that reset the TTL would
        // keep the key until about 5 + election + 10 s = 16-18 s after the grant.
        tokio::time::sleep_until((granted_at + Duration::from_secs(5)).into()).await;
        let before_kill = acked.lock().unwrap().len();
        assert!(
            before_kill > 10,
            "only {before_kill} writes before the kill"
        );
        c.kill(leader);
        let killed_at = Instant::now();

        // Writes continue through the surviving members.
        wait_until_async(
            "20 writes acknowledged after the kill",
            Duration::from_secs(15),
            || {
                let n = acked.lock().unwrap().len();
                async move { (n >= before_kill + 20).then_some(()) }
            },
        )
        .await;
        let recovered_in = killed_at.elapsed();

        // The lease: its key disappears no later than 16 s after the grant (10 s TTL plus a
        // generous election allowance), and not before 8 s.
        let limit = if target.is_etcd() {
            // etcd 3.4 bug #9395: the new leader gives every lease its full TTL again. Lease
            // checkpointing (--experimental-enable-lease-checkpoint) only checkpoints leases
            // whose remaining TTL exceeds the 5-minute checkpoint interval, so a 10 s lease
            // still lives about kill + election + 10 s. Only bound it loosely there.
            Duration::from_secs(30)
        } else {
            Duration::from_secs(16)
        };
        let gone_at = wait_until_async(
            "the leased key to disappear",
            limit.saturating_sub(granted_at.elapsed()),
            || {
                let mut cl = cl.clone();
                async move {
                    match cl.get("lease/key", None).await {
                        Ok(r) if r.kvs().is_empty() => Some(Instant::now()),
                        _ => None,
                    }
                }
            },
        )
        .await;
        let lived = gone_at - granted_at;
        let lived_min = gone_at - grant_answered;
        assert!(
            lived_min >= Duration::from_secs(8),
            "the 10 s lease expired after only {lived_min:?}"
        );
        assert!(lived <= limit, "the 10 s lease lived {lived:?}");
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "{target:?}: writes resumed {recovered_in:?} after the kill; \
                 the 10 s lease lived {lived_min:?}..{lived:?}"
            );
        }
        let t = cl.lease_time_to_live(lease.id(), None).await.unwrap();
        assert_eq!(t.ttl(), -1, "expired lease is gone");

        // Stop writing; the watcher must deliver every acknowledged write, once, in order.
        stop_writes.store(true, Ordering::Relaxed);
        write_task.await.unwrap();
        let acked = acked.lock().unwrap().clone();
        let last = *acked.values().max().unwrap();
        wait_until_async(
            "the watch to deliver every write",
            Duration::from_secs(15),
            || {
                let done = seen.lock().unwrap().last().is_some_and(|e| e.0 >= last);
                async move { done.then_some(()) }
            },
        )
        .await;
        stop_watch.store(true, Ordering::Relaxed);
        watch_task.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        for pair in seen.windows(2) {
            assert!(pair[0].0 < pair[1].0, "out of order or duplicate: {pair:?}");
        }
        let by_key: BTreeMap<String, i64> = seen
            .iter()
            .map(|(rev, key, put)| {
                assert!(put, "only puts under w/");
                (key.clone(), *rev)
            })
            .collect();
        assert_eq!(by_key.len(), seen.len(), "a key delivered twice");
        for (key, rev) in &acked {
            assert_eq!(
                by_key.get(key),
                Some(rev),
                "acknowledged write {key}@{rev} missing"
            );
        }
        let after_kill = seen
            .iter()
            .filter(|e| e.0 > start + before_kill as i64)
            .count();
        assert!(
            after_kill >= 20,
            "watch delivered {after_kill} events after the kill"
        );

        // Restart the killed member: it catches up (a serializable read on it sees the latest).
        c.restart(leader);
        let latest = cl.put("final", "done", None).await.unwrap();
        let latest_rev = latest.header().unwrap().revision();
        let mut on_restarted = Client::connect([c.endpoint(leader)], None)
            .await
            .expect("connect to restarted member");
        wait_until_async(
            "the restarted member to catch up",
            Duration::from_secs(30),
            || {
                let mut cl = on_restarted.clone();
                async move {
                    let r = cl
                        .get("final", Some(GetOptions::new().with_serializable()))
                        .await
                        .ok()?;
                    (r.kvs().first().map(|kv| kv.value()) == Some(b"done".as_slice())).then_some(())
                }
            },
        )
        .await;
        let r = on_restarted
            .get(
                "w/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_serializable()
                        .with_count_only(),
                ),
            )
            .await
            .unwrap();
        let r2 = cl
            .get(
                "w/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(r.count(), r2.count());
        assert!(r.header().unwrap().revision() >= latest_rev);
        // And the restarted member serves linearizable reads and writes again.
        on_restarted.put("after-restart", "1", None).await.unwrap();
        let r = on_restarted.get("after-restart", None).await.unwrap();
        assert_eq!(r.kvs().len(), 1);
    });
}

/// Strips the implementation-specific header ids from `get -w json` output.
fn without_ids(mut v: serde_json::Value) -> serde_json::Value {
    let h = v["header"].as_object_mut().expect("header");
    for f in ["cluster_id", "member_id", "raft_term"] {
        h.remove(f).expect(f);
    }
    v
}

#[test]
fn whole_cluster_restart_keeps_data_leases_and_compaction() {
    let mut c = Cluster::start(3);
    let ctl = c.etcdctl();
    for i in 0..20 {
        ctl.ok(&["put", &format!("k{i:02}"), &format!("v{i}")]); // revisions 2..=21
    }
    ctl.ok(&["del", "k00"]); // 22
    let grant = ctl.ok(&["lease", "grant", "600"]);
    let id = grant.split(' ').nth(1).expect("lease id").to_string();
    ctl.ok(&["put", &format!("--lease={id}"), "lk", "x"]); // 23
    ctl.ok(&["compaction", "10"]);
    let before = without_ids(ctl.json(&["get", "--prefix", ""]));
    assert_eq!(before["header"]["revision"], 23);
    assert_eq!(before["count"], 20);

    for i in 0..3 {
        c.kill(i);
    }
    c.restart_many(&[0, 1, 2]);
    c.leader_index();
    let ctl = c.etcdctl();
    wait_until_linearizable(&ctl);
    assert_eq!(without_ids(ctl.json(&["get", "--prefix", ""])), before);
    for i in 0..3 {
        let local = c
            .etcdctl_for(i)
            .json(&["get", "--prefix", "", "--consistency=s"]);
        assert_eq!(without_ids(local), before, "member {i}");
    }
    // The compaction survived; the compact revision itself is still readable.
    let out = ctl.run(&["get", "k05", "--rev=9"]);
    assert_eq!(
        out.error(),
        Some("etcdserver: mvcc: required revision has been compacted"),
        "{out}"
    );
    assert_eq!(ctl.ok(&["get", "k05", "--rev=10"]), "k05\nv5\n");
    // The lease survived with its keys.
    let ttl = ctl.ok(&["lease", "timetolive", "--keys", &id]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(600s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([lk])\n"), "{ttl}");
    // Writes continue from the same revision.
    let put = ctl.json(&["put", "after", "1"]);
    assert_eq!(put["header"]["revision"], 24);
}

/// Waits until a linearizable read succeeds through `ctl` (a leader exists and serves reads).
fn wait_until_linearizable(ctl: &raftkv_tests::Etcdctl) {
    raftkv_tests::wait_until("a linearizable read", Duration::from_secs(30), || {
        ctl.run(&["get", "probe"]).success().then_some(())
    });
}
