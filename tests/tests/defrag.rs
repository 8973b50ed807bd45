//! Defragment under load: stock `etcdctl defrag` on every member of a three-member cluster
//! (5 MiB live, 15 MiB freed by deletes and compaction) while clients keep writing and
//! reading. No request may fail, each member's database must shrink, and afterwards every
//! member holds the same content (HashKV) with every write in it.

// The measured numbers are reported on stderr (`--nocapture`) for docs/benchmarks.md.
#![allow(clippy::print_stderr)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions, DeleteOptions, GetOptions};
use raftkv_tests::{block_on, wait_until_async, Cluster, Etcdctl};

async fn one(endpoint: String) -> Client {
    Client::connect([endpoint], None).await.expect("connect")
}

async fn db_sizes(c: &Cluster) -> Vec<i64> {
    let mut sizes = Vec::new();
    for ep in c.endpoints() {
        let s = one(ep).await.maintenance_client().status().await.unwrap();
        sizes.push(s.db_size());
    }
    sizes
}

#[test]
fn defragment_under_load_fails_no_request_and_shrinks_every_member() {
    let c = Cluster::start(3);
    block_on(async {
        let client = Client::connect(c.endpoints(), None).await.unwrap();
        // Churn: 1200 keys written three times with 4 KiB values, then deleted and compacted;
        // 1200 more stay.
        let value = vec![b'x'; 4096];
        let mut tasks = Vec::new();
        for t in 0..8 {
            let mut kv = client.kv_client();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..3 {
                    for k in (t..1200).step_by(8) {
                        kv.put(format!("churn/{k:04}"), value.clone(), None)
                            .await
                            .unwrap_or_else(|e| panic!("churn put {round}/{k}: {e}"));
                    }
                }
                // Live data the defragmentation has to copy.
                for k in (t..1200).step_by(8) {
                    kv.put(format!("keep/{k:04}"), value.clone(), None)
                        .await
                        .unwrap_or_else(|e| panic!("keep put {k}: {e}"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut kv = client.kv_client();
        kv.delete("churn/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        let rev = kv
            .get("churn/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        kv.compact(rev, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        let before = db_sizes(&c).await;

        // Load: writers put numbered keys, readers read linearizably; any error is a failure.
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let slowest = Arc::new(AtomicU64::new(0));
        let mut load = Vec::new();
        for w in 0..4 {
            let mut kv = client.kv_client();
            let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
            let slowest = Arc::clone(&slowest);
            load.push(tokio::spawn(async move {
                let mut written = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load/{w}/{i:06}");
                    let started = Instant::now();
                    if let Err(e) = kv.put(key.clone(), i.to_string(), None).await {
                        return Err(format!("put {key}: {e}"));
                    }
                    slowest.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    written.push(key);
                    ops.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(written)
            }));
        }
        for r in 0..2 {
            let mut kv = client.kv_client();
            let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = kv
                        .get(
                            "load/",
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )
                        .await
                    {
                        return Err(format!("reader {r}: {e}"));
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Vec::new())
            }));
        }
        // The load is running before the defragmentation starts, and goes on after it.
        wait_until_async("load started", Duration::from_secs(10), || {
            let n = ops.load(Ordering::Relaxed);
            async move { (n >= 100).then_some(()) }
        })
        .await;
        // host:port endpoints: etcdctl 3.4 sends a URL endpoint as the HTTP/2 authority.
        let endpoints: Vec<String> = c
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect();
        let ctl = Etcdctl::new(&endpoints);
        let out =
            tokio::task::spawn_blocking(move || ctl.run(&["--command-timeout=60s", "defrag"]))
                .await
                .unwrap();
        assert!(out.success(), "etcdctl defrag failed: {out:?}");
        assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
        let at_end = ops.load(Ordering::Relaxed);
        wait_until_async("load after defrag", Duration::from_secs(10), || {
            let n = ops.load(Ordering::Relaxed);
            async move { (n >= at_end + 100).then_some(()) }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let mut written = Vec::new();
        for t in load {
            match t.await.unwrap() {
                Ok(keys) => written.extend(keys),
                Err(e) => panic!("a request failed during defragment: {e}"),
            }
        }
        eprintln!(
            "{} operations, {} writes during the run, slowest put {} ms",
            ops.load(Ordering::Relaxed),
            written.len(),
            slowest.load(Ordering::Relaxed) / 1000
        );

        // Every member shrank.
        let after = db_sizes(&c).await;
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(a < b, "member {i}: db size {b} -> {a}");
        }
        eprintln!("db sizes before {before:?}, after {after:?}");
        // Every write is there, and every member holds the same content.
        let resp = kv
            .get(
                "load/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        let rev = resp.header().unwrap().revision();
        let mut got: Vec<String> = resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        got.sort();
        written.sort();
        assert_eq!(got, written);
        let mut hashes = Vec::new();
        for ep in c.endpoints() {
            let m = one(ep).await.maintenance_client();
            let h = wait_until_async("member caught up", Duration::from_secs(10), || {
                let mut m = m.clone();
                async move { m.hash_kv(rev).await.ok().map(|h| h.hash()) }
            })
            .await;
            hashes.push(h);
        }
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    });
}
