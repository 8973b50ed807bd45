//! HashKV: equal for equal histories, different for different content, stable across reopen
//! and compaction-aware.

use raftkv_mvcc::{Config, Store};
use raftkv_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};

fn put(s: &Store, index: u64, k: &str, v: &str) {
    let req = PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };
    s.put(index, &req).unwrap();
}

fn fill(s: &Store, last: &str) {
    put(s, 1, "a", "1");
    put(s, 2, "b", "2");
    put(s, 3, "a", "3");
    let del = DeleteRangeRequest {
        key: "b".into(),
        ..Default::default()
    };
    s.delete_range(4, &del).unwrap();
    put(s, 5, "c", last);
}

#[test]
fn equal_histories_hash_equal_and_divergence_shows() {
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Store::open(Config::new(d1.path())).unwrap();
    let b = Store::open(Config::new(d2.path())).unwrap();
    let c = Store::open(Config::new(d3.path())).unwrap();
    fill(&a, "x");
    fill(&b, "x");
    fill(&c, "y");
    let ha = a.hash_kv(0).unwrap();
    assert_eq!(ha.revision, 6);
    assert_eq!(ha, b.hash_kv(0).unwrap());
    assert_ne!(
        ha.hash,
        c.hash_kv(0).unwrap().hash,
        "different value, different hash"
    );
    // At an earlier revision the diverging write is not covered yet.
    assert_eq!(a.hash_kv(5).unwrap().hash, c.hash_kv(5).unwrap().hash);
    assert!(a.hash_kv(7).is_err(), "future revision");

    // Same after a reopen, and equal again after both compact at the same revision.
    drop(a);
    let a = Store::open(Config::new(d1.path())).unwrap();
    assert_eq!(a.hash_kv(0).unwrap(), ha);
    let compact = CompactionRequest {
        revision: 4,
        physical: false,
    };
    a.compact(6, &compact).unwrap();
    b.compact(6, &compact).unwrap();
    let (ca, cb) = (a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    assert_eq!(ca, cb);
    assert_eq!(ca.compact_revision, 4);
    assert!(a.hash_kv(3).is_err(), "compacted revision");
}
