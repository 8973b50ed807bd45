//! Crash atomicity: a child process (this test binary, re-executed) applies entries to a store
//! with tiny commit batches while sled flushes every millisecond, then `abort()`s at a random
//! point. The parent reopens the directory: the store must be exactly the state after some
//! applied index, its consistent index.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Rng;
use raftkv_mvcc::{Config, Store};
use raftkv_proto::etcdserverpb::{
    request_op::Request, CompactionRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

const DIR_ENV: &str = "RAFTKV_MVCC_CRASH_DIR";
const MODE_ENV: &str = "RAFTKV_MVCC_CRASH_MODE";

/// The store lives in `<dir>/db`; the child leaves notes beside it.
fn config(dir: &Path) -> Config {
    let mut cfg = Config::new(dir.join("db"));
    cfg.commit_records = 7; // not a multiple of any entry's size: batches end mid-stream
    cfg.flush_every_ms = Some(1);
    cfg.cache_capacity = 1 << 20;
    cfg
}

/// How many keys entry `i` of run `seed` writes (besides the shared ones).
fn entry_width(seed: u64, i: u64) -> u64 {
    1 + Rng(seed.wrapping_mul(1_000_003).wrapping_add(i)).below(6)
}

fn entry_key(i: u64, j: u64) -> Vec<u8> {
    format!("e/{i:06}/{j}").into_bytes()
}

/// Entry `i`: one txn writing `e/<i>/<j>` for every j, the `last` key and one of 5 shared keys.
fn entry(seed: u64, i: u64) -> TxnRequest {
    let put = |key: Vec<u8>, value: String| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key,
            value: value.into_bytes(),
            ..Default::default()
        })),
    };
    let mut success: Vec<RequestOp> = (0..entry_width(seed, i))
        .map(|j| put(entry_key(i, j), format!("{i}/{j}")))
        .collect();
    success.push(put(b"last".to_vec(), i.to_string()));
    success.push(put(format!("shared/{}", i % 5).into_bytes(), i.to_string()));
    TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    }
}

/// The child: runs only when the parent set the environment, never in a normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(DIR_ENV), std::env::var(MODE_ENV)) else {
        return;
    };
    let store = Store::open(config(Path::new(&dir))).unwrap();
    if mode == "compact" {
        compact_child(&store);
    }
    let seed: u64 = mode.parse().unwrap();
    let mut rng = Rng(seed);
    let limit = if rng.chance(50) {
        // Abort from another thread at a random moment, possibly inside a commit.
        let delay = Duration::from_micros(rng.below(400_000));
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            std::process::abort();
        });
        u64::MAX
    } else {
        1 + rng.below(4000)
    };
    let mut i = 1;
    while i <= limit {
        store.txn(i, &entry(seed, i)).unwrap().unwrap();
        if rng.chance(1) {
            store.commit().unwrap();
        }
        i += 1;
    }
    std::fs::write(Path::new(&dir).join("applied"), limit.to_string()).unwrap();
    std::process::abort();
}

/// Writes, makes them durable, compacts without committing, lets the background compactor
/// finish, and dies.
fn compact_child(store: &Store) -> ! {
    let put = |i: u64, k: &str, v: &str| {
        let req = PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        };
        store.put(i, &req).unwrap().unwrap();
    };
    put(1, "k", "v1"); // revision 2
    put(2, "k", "v2"); // 3
    put(3, "j", "w"); // 4
    store.sync().unwrap();
    let req = CompactionRequest {
        revision: 3,
        physical: false,
    };
    store.compact(4, &req).unwrap().unwrap();
    store.wait_compacted();
    std::process::abort();
}

fn run_child(dir: &Path, mode: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(MODE_ENV, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die by abort()");
}

fn get(store: &Store, key: &[u8], range_end: &[u8], revision: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .range(&RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            revision,
            ..Default::default()
        })
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// Checks that the store holds exactly entries 1..=k, k being its consistent index.
fn verify_prefix(dir: &Path, seed: u64) -> u64 {
    let store = Store::open(config(dir)).unwrap();
    let k = store.consistent_index().unwrap();
    assert_eq!(
        store.revision().unwrap(),
        1 + k as i64,
        "seed {seed}: revision"
    );
    let mut want = vec![];
    for i in 1..=k {
        for j in 0..entry_width(seed, i) {
            want.push((entry_key(i, j), format!("{i}/{j}").into_bytes()));
        }
    }
    want.sort();
    let got = get(&store, b"e/", b"e0", 0);
    assert_eq!(
        got.len(),
        want.len(),
        "seed {seed}: entry keys at index {k}"
    );
    assert!(
        got == want,
        "seed {seed}: entries differ from a prefix at index {k}"
    );
    let last = get(&store, b"last", b"", 0);
    if k == 0 {
        assert!(last.is_empty());
    } else {
        assert_eq!(last, vec![(b"last".to_vec(), k.to_string().into_bytes())]);
    }
    for s in 0..5 {
        let key = format!("shared/{s}").into_bytes();
        let want: Vec<_> = (1..=k)
            .rev()
            .find(|i| i % 5 == s)
            .map(|i| (key.clone(), i.to_string().into_bytes()))
            .into_iter()
            .collect();
        assert_eq!(get(&store, &key, b"", 0), want, "seed {seed}: shared/{s}");
    }
    // History agrees: exactly k revisions of events, each entry's in one revision.
    let h = store.history(1, usize::MAX, false).unwrap();
    let puts_per_entry: u64 = (1..=k).map(|i| entry_width(seed, i) + 2).sum();
    assert_eq!(
        h.events.len() as u64,
        puts_per_entry,
        "seed {seed}: history"
    );
    k
}

#[test]
fn batches_are_atomic_across_crashes() {
    let started = Instant::now();
    let mut indexes = vec![];
    for seed in 1..=12u64 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        let dir = tempfile::tempdir().unwrap();
        run_child(dir.path(), &seed.to_string());
        let k = verify_prefix(dir.path(), seed);
        if let Ok(applied) = std::fs::read_to_string(dir.path().join("applied")) {
            let applied: u64 = applied.parse().unwrap();
            assert!(
                k <= applied,
                "seed {seed}: index {k} was never applied ({applied})"
            );
        }
        indexes.push(k);
        // The reopened store keeps working from its consistent index on.
        let store = common::reopen(&config(dir.path()));
        let k = store.consistent_index().unwrap();
        store.txn(k + 1, &entry(seed, k + 1)).unwrap().unwrap();
        assert_eq!(store.revision().unwrap(), k as i64 + 2);
    }
    assert!(indexes.len() >= 4, "too few crash runs: {indexes:?}");
    assert!(
        indexes.iter().any(|k| *k > 0),
        "no run got anything durable: {indexes:?}"
    );
}

/// A compaction must not physically remove revisions before it is itself committed: otherwise
/// a crash in between reopens at the index before the compaction with revisions already gone.
#[test]
fn compaction_is_atomic_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    run_child(dir.path(), "compact");
    let store = Store::open(config(dir.path())).unwrap();
    let k = store.consistent_index().unwrap();
    assert!(k >= 3, "the synced writes survive");
    if k == 3 {
        // The compaction is lost: everything it would drop must still be readable.
        assert_eq!(store.compact_revision().unwrap(), -1);
        assert_eq!(
            get(&store, b"k", b"", 2),
            vec![(b"k".to_vec(), b"v1".to_vec())]
        );
        assert_eq!(store.history(2, usize::MAX, false).unwrap().events.len(), 3);
    } else {
        assert_eq!(store.compact_revision().unwrap(), 3);
    }
    assert_eq!(
        get(&store, b"k", b"", 3),
        vec![(b"k".to_vec(), b"v2".to_vec())]
    );
}
