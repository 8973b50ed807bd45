//! Single-threaded throughput of the MVCC store on preloaded stores of 10k and 1M keys
//! (`key-%07d`, 256-byte values):
//!
//! - `put`: `Store::put` overwriting a random existing key, with increasing Raft indexes. No
//!   fsync: commits go to sled every `Config.commit_records` records and sled flushes in the
//!   background (`flush_every_ms`), as on a node.
//! - `get`: `Store::range` of one random key at the current revision.
//! - `range100`: `Store::range` with `range_end` covering 100 consecutive keys (one request =
//!   one element; keys/s is 100x).
//! - `txn`: a compare-and-swap: one compare on a random key's MOD revision (equal to its current
//!   one, so it succeeds) and one put of that key in `success`.
//!
//! Each store is built lazily, once per process, by the first benchmark that needs it (so a
//! filter such as `cargo bench -p raftkv-mvcc -- 10k` never builds the 1M store), and is shared
//! by the benchmarks after it. Reads run before writes so that they see the freshly loaded store.
//!
//! ```text
//! cargo bench -p raftkv-mvcc --bench mvcc
//! ```
// The preload time goes to stderr, next to criterion's own output.
#![allow(clippy::print_stderr)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use raftkv_mvcc::{Config, Store};
use raftkv_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

const KEY_PREFIX: &[u8] = b"key-";
const KEY_DIGITS: usize = 7;
const VALUE_SIZE: usize = 256;
const RANGE_KEYS: u64 = 100;

/// SplitMix64: a tiny deterministic generator, good enough to pick keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn key(i: u64) -> Vec<u8> {
    let mut k = KEY_PREFIX.to_vec();
    k.resize(KEY_PREFIX.len() + KEY_DIGITS, b'0');
    set_key(&mut k, i);
    k
}

/// Overwrites the digits of a `key-%07d` buffer in place, without allocating.
fn set_key(buf: &mut [u8], mut i: u64) {
    for b in buf[KEY_PREFIX.len()..].iter_mut().rev() {
        *b = b'0' + (i % 10) as u8;
        i /= 10;
    }
}

/// A loaded store with the bookkeeping the write benchmarks need.
struct Fixture {
    store: Store,
    keys: u64,
    /// The next Raft index to apply at.
    next_index: u64,
    /// The current mod revision of every key, for the txn's compare.
    mod_revs: Vec<i64>,
    rng: Rng,
    // Declared last: the store closes before its directory is removed.
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(keys: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Config::new(dir.path())).expect("open store");
        let mut req = PutRequest {
            key: key(0),
            value: vec![b'v'; VALUE_SIZE],
            ..Default::default()
        };
        let mut mod_revs = Vec::with_capacity(keys as usize);
        let t = Instant::now();
        for i in 0..keys {
            set_key(&mut req.key, i);
            req.value[..8].copy_from_slice(&i.to_le_bytes());
            let resp = store.put(i + 1, &req).expect("put").expect("new index");
            mod_revs.push(resp.header.expect("header").revision);
        }
        store.sync().expect("sync");
        eprintln!(
            "preloaded {keys} keys in {:.2} s ({:.0} puts/s)",
            t.elapsed().as_secs_f64(),
            keys as f64 / t.elapsed().as_secs_f64()
        );
        Fixture {
            store,
            keys,
            next_index: keys + 1,
            mod_revs,
            rng: Rng(0x5EED ^ keys),
            _dir: dir,
        }
    }
}

fn bench_size(c: &mut Criterion, label: &str, keys: u64) {
    // Built by the first benchmark that runs (criterion skips filtered-out closures).
    let mut fixture: Option<Fixture> = None;
    let mut group = c.benchmark_group(format!("mvcc/{label}"));
    group
        .throughput(Throughput::Elements(1))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    group.bench_function("get", |b| {
        let f = fixture.get_or_insert_with(|| Fixture::new(keys));
        let mut req = RangeRequest {
            key: key(0),
            ..Default::default()
        };
        b.iter(|| {
            set_key(&mut req.key, f.rng.below(f.keys));
            let resp = f.store.range(&req).expect("range");
            debug_assert_eq!(resp.kvs.len(), 1);
            black_box(resp)
        });
    });

    group.bench_function("range100", |b| {
        let f = fixture.get_or_insert_with(|| Fixture::new(keys));
        let mut req = RangeRequest {
            key: key(0),
            range_end: key(0),
            ..Default::default()
        };
        b.iter(|| {
            let start = f.rng.below(f.keys - RANGE_KEYS + 1);
            set_key(&mut req.key, start);
            set_key(&mut req.range_end, start + RANGE_KEYS);
            let resp = f.store.range(&req).expect("range");
            debug_assert_eq!(resp.kvs.len() as u64, RANGE_KEYS);
            black_box(resp)
        });
    });

    // Writes: equal-sized samples, so that each one amortizes commits the same way.
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function("put", |b| {
        let f = fixture.get_or_insert_with(|| Fixture::new(keys));
        let mut req = PutRequest {
            key: key(0),
            value: vec![b'p'; VALUE_SIZE],
            ..Default::default()
        };
        b.iter(|| {
            let i = f.rng.below(f.keys);
            set_key(&mut req.key, i);
            let resp = f.store.put(f.next_index, &req).expect("put");
            f.next_index += 1;
            let rev = resp.and_then(|r| r.header).expect("applied").revision;
            f.mod_revs[i as usize] = rev;
        });
    });

    group.bench_function("txn", |b| {
        let f = fixture.get_or_insert_with(|| Fixture::new(keys));
        let mut req = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key(0),
                target_union: Some(TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key(0),
                    value: vec![b't'; VALUE_SIZE],
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        b.iter(|| {
            let i = f.rng.below(f.keys);
            let cmp = &mut req.compare[0];
            set_key(&mut cmp.key, i);
            cmp.target_union = Some(TargetUnion::ModRevision(f.mod_revs[i as usize]));
            if let Some(Request::RequestPut(p)) = &mut req.success[0].request {
                set_key(&mut p.key, i);
            }
            let resp = f
                .store
                .txn(f.next_index, &req)
                .expect("txn")
                .expect("applied");
            f.next_index += 1;
            assert!(resp.succeeded, "the compare on the mod revision must hold");
            f.mod_revs[i as usize] = resp.header.expect("header").revision;
        });
    });

    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_size(&mut c, "10k", 10_000);
    bench_size(&mut c, "1M", 1_000_000);
    c.final_summary();
}
