//! Snapshot export and restore: an export taken while writes (and compactions) continue
//! restores to exactly the store as it was at the export; a damaged stream is refused and
//! leaves the target store as it was.

mod common;

use common::{answers, apply_both, assert_same_state, random_write, Model, Rng};
use raftkv_mvcc::{Config, Error, Store};

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(dir);
    cfg.commit_records = 13;
    cfg.min_lease_ttl = 5;
    cfg.flush_every_ms = None;
    cfg.cache_capacity = 1 << 20;
    cfg
}

/// A store with `n` random requests applied, and its model.
fn loaded(dir: &std::path::Path, seed: u64, n: u64) -> (Store, Model, u64) {
    let cfg = config(dir);
    let store = Store::open(cfg.clone()).unwrap();
    let mut model = Model::new(cfg.min_lease_ttl, cfg.max_txn_ops);
    let mut rng = Rng(seed);
    for index in 1..=n {
        let w = random_write(&mut rng, &model, 60, 30, true);
        apply_both(&store, &mut model, index, &w);
    }
    (store, model, n)
}

#[test]
fn snapshot_round_trip_while_writes_continue() {
    let src_dir = tempfile::tempdir().unwrap();
    let (src, mut model, mut index) = loaded(src_dir.path(), 7, 400);
    // Some of it committed, some pending, at the export.
    let snap = src.snapshot().unwrap();
    let at_snapshot = model.clone();
    let snap_index = index;
    assert_eq!(snap.revision(), model.rev);
    assert_eq!(snap.consistent_index(), index);
    // Before streaming: more writes, a commit, a compaction above the snapshot's revision.
    let mut rng = Rng(98);
    for _ in 0..100 {
        index += 1;
        let w = random_write(&mut rng, &model, 60, 30, false);
        apply_both(&src, &mut model, index, &w);
    }
    src.commit().unwrap();
    let compact = raftkv_proto::etcdserverpb::CompactionRequest {
        revision: at_snapshot.rev + 3,
        physical: false,
    };
    index += 1;
    src.compact(index, &compact).unwrap().unwrap();
    model.compact(&compact).unwrap();

    // Writes, commits and compactions go on while the snapshot streams.
    let writer = {
        let src = src.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(99);
            for _ in 0..300 {
                index += 1;
                let w = random_write(&mut rng, &model, 60, 30, true);
                apply_both(&src, &mut model, index, &w);
                if rng.chance(10) {
                    src.commit().unwrap();
                }
            }
            let compact = raftkv_proto::etcdserverpb::CompactionRequest {
                revision: model.rev - 5,
                physical: false,
            };
            index += 1;
            src.compact(index, &compact).unwrap().unwrap();
            model.compact(&compact).unwrap();
            (model, index)
        })
    };
    let mut stream = Vec::new();
    let written = snap.write_to(&mut Slow(&mut stream)).unwrap();
    assert_eq!(written as usize, stream.len());
    let (model, _) = writer.join().unwrap();
    // A second stream of the same snapshot, after all those writes, is the same bytes.
    let mut again = Vec::new();
    snap.write_to(&mut again).unwrap();
    assert!(
        again == stream,
        "a snapshot streams the same bytes every time"
    );
    drop(snap);
    assert_same_state(&src, &model, "source after the writes");

    // Restore into a store that already holds other data.
    let dst_dir = tempfile::tempdir().unwrap();
    let (dst, _, _) = loaded(dst_dir.path(), 8, 150);
    dst.restore(&mut stream.as_slice()).unwrap();
    assert_same_state(&dst, &at_snapshot, "restored");
    assert_eq!(dst.consistent_index().unwrap(), snap_index);
    let restored = answers(&dst, 3);

    // It survives a reopen, and goes on applying from the snapshot's index.
    drop(dst);
    let dst = common::reopen(&config(dst_dir.path()));
    assert_eq!(answers(&dst, 3), restored);
    let mut m = at_snapshot.clone();
    let mut rng = Rng(5);
    for index in 401..=450 {
        let w = random_write(&mut rng, &m, 60, 30, true);
        apply_both(&dst, &mut m, index, &w);
    }
    assert_same_state(&dst, &m, "restored, then written");
}

/// A writer that takes its time, so the export overlaps the concurrent writes.
struct Slow<'a>(&'a mut Vec<u8>);

impl std::io::Write for Slow<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn damaged_snapshot_streams_are_refused_and_change_nothing() {
    let src_dir = tempfile::tempdir().unwrap();
    let (src, _, _) = loaded(src_dir.path(), 11, 200);
    let mut stream = Vec::new();
    src.snapshot().unwrap().write_to(&mut stream).unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    let (dst, mut dst_model, dst_index) = loaded(dst_dir.path(), 12, 100);
    let before = answers(&dst, 4);

    let mut rng = Rng(13);
    let mut damaged: Vec<(String, Vec<u8>)> = vec![];
    for cut in [
        0,
        1,
        7,
        8,
        9,
        13,
        stream.len() / 2,
        stream.len() - 5,
        stream.len() - 1,
    ] {
        damaged.push((format!("truncated at {cut}"), stream[..cut].to_vec()));
    }
    let mut positions: Vec<usize> = vec![0, 8, 9, 12, stream.len() - 1, stream.len() - 5];
    positions.extend((0..40).map(|_| rng.below(stream.len() as u64) as usize));
    for pos in positions {
        let mut s = stream.clone();
        let bit = rng.below(8);
        s[pos] ^= 1 << bit;
        damaged.push((format!("bit {bit} of byte {pos} flipped"), s));
    }
    for (what, s) in &damaged {
        let err = dst.restore(&mut s.as_slice()).unwrap_err();
        assert!(
            matches!(err, Error::BadSnapshot(_)),
            "{what}: refused with {err}"
        );
        assert!(answers(&dst, 4) == before, "{what}: the target changed");
    }
    // Still fully working: writes, and a reopen that finds the old state.
    let mut rng = Rng(14);
    let w = random_write(&mut rng, &dst_model, 60, 30, false);
    apply_both(&dst, &mut dst_model, dst_index + 1, &w);
    let after_write = answers(&dst, 4);
    drop(dst);
    let dst = common::reopen(&config(dst_dir.path()));
    assert!(
        answers(&dst, 4) == after_write,
        "reopen after refused restores"
    );
    // And the intact stream still restores.
    dst.restore(&mut stream.as_slice()).unwrap();
    assert!(answers(&dst, 4) == answers(&src, 4));
}
