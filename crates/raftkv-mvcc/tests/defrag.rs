//! Online defragmentation: the space compaction and deletes free comes back, the content stays
//! the same (also after reopening from the new copy), and writes made while it copies survive.

// The measured numbers are reported on stderr (`--nocapture`) for docs/benchmarks.md.
#![allow(clippy::print_stderr)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raftkv_mvcc::{Config, Store};
use raftkv_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest};

fn put(s: &Store, index: u64, k: &str, v: &[u8]) {
    let req = PutRequest {
        key: k.into(),
        value: v.to_vec(),
        ..Default::default()
    };
    s.put(index, &req).unwrap().expect("a new index");
}

fn all(s: &Store) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
    let req = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    s.range(&req)
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect()
}

/// Writes `keys` keys `rounds` times over with 2 KiB values, deletes half, compacts at the
/// end and waits for the space to be freed. Returns the next free Raft index.
fn churn(s: &Store, keys: usize, rounds: usize) -> u64 {
    let mut index = 1;
    for round in 0..rounds {
        for k in 0..keys {
            put(s, index, &format!("key/{k:05}"), &vec![round as u8; 2048]);
            index += 1;
        }
    }
    for k in (0..keys).step_by(2) {
        let del = DeleteRangeRequest {
            key: format!("key/{k:05}").into(),
            ..Default::default()
        };
        s.delete_range(index, &del).unwrap();
        index += 1;
    }
    let compact = CompactionRequest {
        revision: s.revision().unwrap(),
        physical: true,
    };
    s.compact(index, &compact).unwrap();
    index += 1;
    s.wait_compacted();
    s.sync().unwrap();
    index
}

#[test]
fn defragment_returns_space_and_keeps_content_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(Config::new(dir.path())).unwrap();
    let next = churn(&s, 2000, 5);
    let before = (s.revision().unwrap(), all(&s), s.hash_kv(0).unwrap());
    let size_before = s.size_on_disk().unwrap();

    let d = s.defragment().unwrap();
    assert_eq!(d.before, size_before);
    assert!(
        d.after * 2 < d.before,
        "defragment freed too little: {} -> {} bytes",
        d.before,
        d.after
    );
    assert_eq!(s.size_on_disk().unwrap(), d.after);
    assert_eq!(
        before,
        (s.revision().unwrap(), all(&s), s.hash_kv(0).unwrap())
    );
    // Only the new copy is left on disk.
    let copies: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sled-"))
        .collect();
    assert_eq!(copies, vec!["sled-1".to_string()]);

    // Writes go to the new copy, and reopening reads it.
    put(&s, next, "after", b"defrag");
    s.sync().unwrap();
    let expected = (s.revision().unwrap(), all(&s), s.hash_kv(0).unwrap());
    drop(s);
    let s = Store::open(Config::new(dir.path())).unwrap();
    assert_eq!(
        expected,
        (s.revision().unwrap(), all(&s), s.hash_kv(0).unwrap())
    );
    assert_eq!(s.consistent_index().unwrap(), next);
    // And again: copies keep counting up.
    s.defragment().unwrap();
    assert_eq!(
        expected,
        (s.revision().unwrap(), all(&s), s.hash_kv(0).unwrap())
    );
}

#[test]
fn writes_during_defragment_all_land_in_the_new_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    // Commit often, so that many batches are mirrored and replayed.
    config.commit_records = 8;
    let s = Store::open(config.clone()).unwrap();
    let mut index = churn(&s, 1000, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let s = s.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut written = 0u64;
            // Keep writing until the defragmentation is over, and at least a few thousand.
            while !stop.load(Ordering::Relaxed) || written < 3000 {
                put(
                    &s,
                    index,
                    &format!("live/{:03}", written % 500),
                    &written.to_be_bytes(),
                );
                index += 1;
                written += 1;
            }
            (index, written)
        })
    };
    let d = s.defragment().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (next, written) = writer.join().unwrap();
    assert!(written >= 3000);
    s.sync().unwrap();
    let expected = (s.revision().unwrap(), all(&s), s.hash_kv(0).unwrap());
    drop(s);
    let s = Store::open(config).unwrap();
    assert_eq!(s.consistent_index().unwrap(), next - 1);
    assert_eq!(
        expected,
        (s.revision().unwrap(), all(&s), s.hash_kv(0).unwrap())
    );
    // The last value written to each live key is the one read back.
    let last = written - 1;
    let got = s
        .range(&RangeRequest {
            key: format!("live/{:03}", last % 500).into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(got.kvs[0].value, last.to_be_bytes().to_vec());
    eprintln!("defragment: {d:?}, {written} writes meanwhile");
}
