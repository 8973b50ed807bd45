//! Reopening a store gives back exactly what it had: after `sync()`, every answer is identical;
//! after a plain drop (no sync, no commit), the store is the state after some applied index
//! (its consistent index), i.e. a prefix of the requests it applied.

mod common;

use common::{answers, apply_both, random_write, Model, Rng, Write};
use raftkv_mvcc::{Config, Store};
use raftkv_proto::mvccpb::KeyValue;

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(dir);
    cfg.commit_records = 50;
    cfg.commit_bytes = 64 << 10;
    cfg.min_lease_ttl = 5;
    cfg.flush_every_ms = None;
    cfg.cache_capacity = 1 << 20;
    cfg
}

/// What the model says the store holds after an applied index.
struct AfterIndex {
    rev: i64,
    compact_rev: i64,
    leases: Vec<raftkv_mvcc::LeaseInfo>,
    lease_keys: Vec<Vec<Vec<u8>>>,
}

fn after(m: &Model) -> AfterIndex {
    AfterIndex {
        rev: m.rev,
        compact_rev: m.compact_rev,
        leases: m.lease_infos(),
        lease_keys: (0..=6).map(|id| m.lease_keys(id)).collect(),
    }
}

fn all_at(store: &Store, at: i64) -> Vec<KeyValue> {
    common::store_all_at(store, at).unwrap().kvs
}

#[test]
fn reopen_after_sync_and_after_plain_drop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let store = Store::open(cfg.clone()).unwrap();
    let mut model = Model::new(cfg.min_lease_ttl, cfg.max_txn_ops);
    let mut rng = Rng(0x5eed);
    let mut index = 0;
    let mut accepted = 0;
    for n in 0..3000 {
        let w = random_write(
            &mut rng,
            &model,
            200,
            if n % 50 == 0 { 3000 } else { 40 },
            true,
        );
        index += 1;
        accepted += apply_both(&store, &mut model, index, &w) as u32;
        if rng.chance(2) {
            store.commit().unwrap();
        }
    }
    assert!(
        accepted > 2000,
        "the workload is mostly accepted: {accepted}"
    );
    assert!(
        model.compact_rev > 1000,
        "the workload compacted: {}",
        model.compact_rev
    );

    // 1. sync, drop, reopen: every answer identical, and still the model's.
    store.sync().unwrap();
    let before = answers(&store, 1);
    drop(store);
    let store = common::reopen(&cfg);
    let after_reopen = answers(&store, 1);
    assert_eq!(before.len(), after_reopen.len());
    for (b, a) in before.iter().zip(&after_reopen) {
        assert_eq!(b, a);
    }
    for at in [model.compact_rev, model.rev - 1, model.rev] {
        assert_eq!(all_at(&store, at), model.all_at(at), "at {at}");
    }
    common::assert_history_paged(&store, &model, model.compact_rev, 500, true);

    // 2. More requests (no compaction), then drop without sync or commit.
    let mut states = vec![(index, after(&model))];
    for _ in 0..1000 {
        let w = random_write(&mut rng, &model, 200, 40, false);
        assert!(!matches!(w, Write::Compact(_)));
        index += 1;
        apply_both(&store, &mut model, index, &w);
        states.push((index, after(&model)));
    }
    drop(store);
    let store = common::reopen(&cfg);
    let k = store.consistent_index().unwrap();
    let (_, want) = states
        .iter()
        .find(|(i, _)| *i == k)
        .unwrap_or_else(|| panic!("consistent index {k} is not an applied index"));
    assert_eq!(
        store.revision().unwrap(),
        want.rev,
        "revision after index {k}"
    );
    assert_eq!(store.compact_revision().unwrap(), want.compact_rev);
    // The model's history answers any revision up to `want.rev` as it was after index k.
    for at in (want.compact_rev..=want.rev).step_by(7).chain([want.rev]) {
        assert_eq!(all_at(&store, at), model.all_at(at), "revision {at}");
    }
    assert_eq!(
        store.leases().unwrap(),
        want.leases,
        "leases after index {k}"
    );
    for id in 0..=6 {
        let keys = store.lease(id, true).unwrap().map(|l| l.keys);
        if let Some(keys) = keys {
            assert_eq!(keys, want.lease_keys[id as usize], "lease {id} keys");
        }
    }
    // A plain drop commits what was applied: nothing is lost at all.
    assert_eq!(k, index, "a clean drop keeps every applied request");

    // 3. The reopened store goes on from there; applied indexes stay applied.
    let w = random_write(&mut rng, &model, 200, 40, false);
    index += 1;
    apply_both(&store, &mut model, index, &w);
    let replay = raftkv_proto::etcdserverpb::PutRequest {
        key: b"k0001".to_vec(),
        value: b"replayed".to_vec(),
        ..Default::default()
    };
    assert_eq!(store.put(index, &replay).unwrap(), None);

    // 4. No drop at all: copy the directory of the live, idle store (as a crash would leave
    // it, minus the final commit) and open the copy. It holds a prefix of what was applied.
    let mut states = vec![(index, after(&model))];
    for n in 0..2000 {
        let w = random_write(
            &mut rng,
            &model,
            200,
            if n % 20 == 0 { 2000 } else { 200 },
            false,
        );
        index += 1;
        apply_both(&store, &mut model, index, &w);
        states.push((index, after(&model)));
    }
    store.wait_compacted();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::mem::forget(store); // never dropped: no final commit, no flush
    let store = Store::open(config(copy.path())).unwrap();
    let k = store.consistent_index().unwrap();
    let (_, want) = states
        .iter()
        .find(|(i, _)| *i == k)
        .unwrap_or_else(|| panic!("consistent index {k} is not an applied index"));
    assert_eq!(
        store.revision().unwrap(),
        want.rev,
        "revision after index {k}"
    );
    for at in (want.compact_rev..=want.rev).step_by(5).chain([want.rev]) {
        assert_eq!(all_at(&store, at), model.all_at(at), "revision {at}");
    }
    assert_eq!(
        store.leases().unwrap(),
        want.leases,
        "leases after index {k}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
