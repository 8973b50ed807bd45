//! The WAL on disk: recovery from torn and corrupt files, segment rollover and deletion,
//! conflicting appends, snapshots and crashes, each checked across a reopen.

use std::fs;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raftkv_raft::{Damage, Error, Recovered, Wal, WalConfig};

fn cfg() -> WalConfig {
    WalConfig {
        fsync: false,
        ..WalConfig::default()
    }
}

fn small_segments(size: u64) -> WalConfig {
    WalConfig {
        segment_size: size,
        fsync: false,
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes().into(),
        ..Default::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn open(dir: &Path, cfg: WalConfig) -> (Wal, Recovered) {
    Wal::open(dir, cfg).expect("open WAL")
}

fn terms(wal: &Wal) -> Vec<(u64, u64)> {
    (wal.first_index()..=wal.last_index())
        .map(|i| (i, wal.term(i).unwrap()))
        .collect()
}

fn all_entries(wal: &Wal) -> Vec<Entry> {
    wal.entries(wal.first_index(), wal.last_index() + 1, None)
        .unwrap()
}

/// Writes `n` single-entry records after the header, syncing after each, and returns the WAL's
/// only segment path with the offset each entry record starts at (plus the final length).
fn write_n(dir: &Path, n: u64) -> (PathBuf, Vec<u64>) {
    let (mut wal, _) = open(dir, cfg());
    let mut offsets = vec![wal.synced_len()];
    for i in 1..=n {
        wal.append(&[entry(i, 1)]).unwrap();
        wal.sync().unwrap();
        offsets.push(wal.synced_len());
    }
    assert_eq!(wal.segment_count(), 1);
    (wal.active_segment_path().to_path_buf(), offsets)
}

#[test]
fn fresh_wal_is_empty_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = open(dir.path(), cfg());
    assert_eq!((rec.first_index, rec.last_index), (1, 0));
    assert_eq!(rec.hard_state, HardState::default());
    assert_eq!(rec.segments, 1);
    assert_eq!(wal.unsynced_len(), 0, "the header is synced at creation");
    drop(wal);
    let (_, rec) = open(&dir.path().join("missing/dirs/created"), cfg());
    assert_eq!(rec.last_index, 0);
}

#[test]
fn torn_tail_is_truncated_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    const N: u64 = 5;
    let (path, offsets) = write_n(dir.path(), N);
    let full = fs::read(&path).unwrap();
    let (last_start, end) = (offsets[N as usize - 1], offsets[N as usize]);
    assert_eq!(end, full.len() as u64);
    for cut in last_start..end {
        fs::write(&path, &full[..cut as usize]).unwrap();
        let (wal, rec) = open(dir.path(), cfg());
        assert_eq!(rec.last_index, N - 1, "cut at {cut}");
        match &rec.truncated_tail {
            None => assert_eq!(cut, last_start),
            Some(t) => {
                assert_eq!(t.path, path);
                assert_eq!(t.offset, last_start, "cut at {cut}");
                assert_eq!(t.dropped_bytes, cut - last_start);
            }
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), last_start);
        assert_eq!(all_entries(&wal), entries(1..=N - 1, 1));
    }
    // The truncated WAL takes new writes and replays them.
    let (mut wal, _) = open(dir.path(), cfg());
    wal.append(&[entry(N, 2)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, rec) = open(dir.path(), cfg());
    assert!(rec.truncated_tail.is_none());
    assert_eq!(wal.term(N).unwrap(), 2);
}

#[test]
fn checksum_flip_in_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = write_n(dir.path(), 4);
    let mut bytes = fs::read(&path).unwrap();
    let last_start = offsets[3] as usize;
    for at in [last_start + 8, last_start + 13, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        fs::write(&path, &b).unwrap();
        let (wal, rec) = open(dir.path(), cfg());
        assert_eq!(rec.last_index, 3);
        let t = rec.truncated_tail.expect("truncated");
        assert_eq!((t.offset, t.damage), (last_start as u64, Damage::Checksum));
        drop(wal);
        // Put the record back for the next flip.
        fs::write(&path, &bytes).unwrap();
    }
    // A damaged length field in the last record is also a torn tail.
    bytes[last_start] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let (_, rec) = open(dir.path(), cfg());
    assert_eq!(rec.last_index, 3);
    assert_eq!(rec.truncated_tail.unwrap().damage, Damage::BadHeader);
}

#[test]
fn checksum_flip_in_an_earlier_record_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = write_n(dir.path(), 4);
    let good = fs::read(&path).unwrap();
    for &start in &offsets[..3] {
        let start = start as usize;
        // Body byte (checksum), then length byte (header damage found by searching).
        for (at, damage) in [
            (start + 20, Damage::Checksum),
            (start + 1, Damage::BadHeader),
        ] {
            let mut b = good.clone();
            b[at] ^= 0x04;
            fs::write(&path, &b).unwrap();
            let err = Wal::open(dir.path(), cfg()).expect_err("corrupt middle");
            match &err {
                Error::Corrupt {
                    path: p,
                    offset,
                    damage: d,
                } => {
                    assert_eq!(p, &path);
                    assert_eq!(*offset, start as u64);
                    assert_eq!(d, &damage);
                }
                other => panic!("unexpected error {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("offset {start}")), "{msg}");
            // Nothing was truncated.
            assert_eq!(fs::read(&path).unwrap(), b);
        }
    }
}

#[test]
fn corrupt_record_at_the_end_of_a_sealed_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(300));
    for i in 1..=20 {
        wal.append(&[entry(i, 1)]).unwrap();
        wal.sync().unwrap();
    }
    let paths = wal.segment_paths();
    assert!(paths.len() >= 3);
    drop(wal);
    let first = &paths[0];
    let mut b = fs::read(first).unwrap();
    let n = b.len();
    b[n - 1] ^= 0xff;
    fs::write(first, &b).unwrap();
    match Wal::open(dir.path(), small_segments(300)) {
        Err(Error::Corrupt { path, damage, .. }) => {
            assert_eq!(&path, first);
            assert_eq!(damage, Damage::Checksum);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Cut short instead: still an error, a sealed segment cannot be torn.
    fs::write(first, &b[..n - 3]).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small_segments(300)),
        Err(Error::Corrupt {
            damage: Damage::IncompleteRecord { .. },
            ..
        })
    ));
}

#[test]
fn segments_roll_over_and_compaction_deletes_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(1024);
    let (mut wal, _) = open(dir.path(), cfg.clone());
    for i in 1..=200 {
        wal.append(&[entry(i, 1 + i / 50)]).unwrap();
        wal.sync().unwrap();
    }
    let before = wal.segment_count();
    assert!(before > 10, "{before} segments");
    // Names: consecutive sequence numbers; the first index is the next entry's at creation.
    let names: Vec<String> = wal
        .segment_paths()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names[0], "0000000000000001-0000000000000001.wal");
    assert!(names[1].starts_with("0000000000000002-"));

    wal.compact(150).unwrap();
    assert_eq!(wal.first_index(), 150);
    assert_eq!(wal.segment_count(), before, "deletion waits for the sync");
    wal.sync().unwrap();
    let after = wal.segment_count();
    assert!(after < before / 2, "{before} -> {after}");
    // Every remaining segment but the first starts past the compaction point; the first holds
    // entry 150.
    for p in wal.segment_paths().iter().skip(1) {
        let name = p.file_name().unwrap().to_str().unwrap();
        let first = u64::from_str_radix(&name[17..33], 16).unwrap();
        assert!(first > 150, "{name}");
    }
    assert_eq!(wal.entries(150, 151, None).unwrap(), vec![entry(150, 4)]);
    let expect_terms = terms(&wal);
    drop(wal);

    let (wal, rec) = open(dir.path(), cfg.clone());
    assert_eq!((rec.first_index, rec.last_index), (150, 200));
    assert_eq!(rec.segments, after);
    assert_eq!(terms(&wal), expect_terms);
    assert!(matches!(wal.term(149), Err(Error::Compacted { .. })));
    let all = all_entries(&wal);
    assert_eq!(all.len(), 51);
    assert_eq!(all[0], entry(150, 4));

    // Compacting everything up to the last entry keeps the active segment and the last entry.
    let (mut wal, _) = (wal, ());
    wal.compact(200).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    let (wal, rec) = open(dir.path(), cfg);
    assert_eq!((rec.first_index, rec.last_index), (200, 200));
    assert_eq!(all_entries(&wal), vec![entry(200, 5)]);
}

#[test]
fn tiny_segment_size_rolls_once_per_sync_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(1));
    for i in 1..=5 {
        wal.append(&[entry(i, 1)]).unwrap();
        wal.sync().unwrap();
        // Syncing with nothing new does not start segments holding only a header.
        wal.sync().unwrap();
        wal.sync().unwrap();
    }
    assert_eq!(wal.segment_count(), 6);
    wal.compact(5).unwrap();
    wal.sync().unwrap();
    // Left: the segment holding entry 5, the one holding the compaction record, and the one that
    // sync started.
    assert_eq!(wal.segment_count(), 3);
    drop(wal);
    let (wal, rec) = open(dir.path(), small_segments(1));
    assert_eq!((rec.first_index, rec.last_index), (5, 5));
    assert_eq!(all_entries(&wal), vec![entry(5, 1)]);
}

#[test]
fn compact_refuses_to_go_past_the_last_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), cfg());
    wal.append(&entries(1..=5, 1)).unwrap();
    assert!(matches!(
        wal.compact(6),
        Err(Error::CompactBeyondLog {
            to: 6,
            last_index: 5
        })
    ));
    wal.compact(1).unwrap();
    assert_eq!(wal.first_index(), 1);
    // A refused request does not poison the WAL.
    wal.compact(3).unwrap();
    assert_eq!(wal.first_index(), 3);
}

#[test]
fn conflicting_append_survives_restart() {
    for segment_size in [64 << 20, 400] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_segments(segment_size);
        let (mut wal, _) = open(dir.path(), cfg.clone());
        wal.append(&entries(1..=10, 1)).unwrap();
        wal.sync().unwrap();
        wal.append(&entries(6..=8, 2)).unwrap();
        assert_eq!(wal.last_index(), 8);
        wal.sync().unwrap();
        drop(wal);

        let (mut wal, rec) = open(dir.path(), cfg.clone());
        assert_eq!(rec.last_index, 8);
        let mut expect = entries(1..=5, 1);
        expect.extend(entries(6..=8, 2));
        assert_eq!(all_entries(&wal), expect);

        // Overwrite again, from the very first index, and append past the old end.
        wal.append(&entries(1..=12, 3)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (wal, _) = open(dir.path(), cfg);
        assert_eq!(all_entries(&wal), entries(1..=12, 3));
    }
}

#[test]
fn append_checks_continuity() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), cfg());
    wal.append(&entries(1..=3, 1)).unwrap();
    assert!(matches!(
        wal.append(&[entry(5, 1)]),
        Err(Error::AppendGap {
            index: 5,
            last_index: 3
        })
    ));
    assert!(matches!(
        wal.append(&[entry(4, 1), entry(6, 1)]),
        Err(Error::NotConsecutive {
            previous: 4,
            next: 6
        })
    ));
    wal.compact(3).unwrap();
    assert!(matches!(
        wal.append(&[entry(2, 2)]),
        Err(Error::AppendCompacted {
            index: 2,
            first_index: 3
        })
    ));
    wal.append(&[]).unwrap();
    wal.append(&[entry(4, 1)]).unwrap();
    assert_eq!(wal.last_index(), 4);
}

fn snapshot_meta(index: u64, term: u64, voters: Vec<u64>) -> SnapshotMetadata {
    SnapshotMetadata {
        index,
        term,
        conf_state: Some(ConfState {
            voters,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[test]
fn snapshot_survives_restart_with_its_commit_index() {
    for segment_size in [64 << 20, 300] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_segments(segment_size);
        let (mut wal, _) = open(dir.path(), cfg.clone());
        wal.append(&entries(1..=10, 1)).unwrap();
        wal.set_hard_state(&HardState {
            term: 2,
            vote: 1,
            commit: 5,
            ..Default::default()
        })
        .unwrap();
        wal.sync().unwrap();
        let meta = snapshot_meta(20, 3, vec![1, 2, 3]);
        assert!(matches!(
            wal.apply_snapshot(&snapshot_meta(0, 1, vec![])),
            Err(Error::SnapshotOutOfDate { .. })
        ));
        wal.apply_snapshot(&meta).unwrap();
        wal.sync().unwrap();
        assert_eq!(
            wal.segment_count(),
            1,
            "segments before the snapshot are deleted"
        );
        drop(wal);

        let (mut wal, rec) = open(dir.path(), cfg.clone());
        assert_eq!((rec.first_index, rec.last_index), (21, 20));
        assert_eq!(rec.snapshot, meta);
        assert_eq!(wal.term(20).unwrap(), 3);
        assert!(matches!(wal.term(19), Err(Error::Compacted { .. })));
        assert!(matches!(wal.term(21), Err(Error::Unavailable { .. })));
        assert!(rec.hard_state.commit >= 20);
        assert_eq!(rec.hard_state.term, 3);
        assert_eq!(rec.hard_state.vote, 1);
        assert_eq!(rec.conf_state.voters, vec![1, 2, 3]);

        wal.append(&entries(21..=25, 3)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (wal, rec) = open(dir.path(), cfg);
        assert_eq!((rec.first_index, rec.last_index), (21, 25));
        assert_eq!(all_entries(&wal), entries(21..=25, 3));
    }
}

#[test]
fn hard_state_commit_past_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), cfg());
    wal.append(&entries(1..=3, 1)).unwrap();
    let hs = HardState {
        term: 1,
        commit: 4,
        ..Default::default()
    };
    assert!(matches!(
        wal.set_hard_state(&hs),
        Err(Error::CommitBeyondLog {
            commit: 4,
            last_index: 3
        })
    ));
    wal.append(&[entry(4, 1)]).unwrap();
    wal.set_hard_state(&hs).unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(open(dir.path(), cfg()).1.hard_state, hs);
}

#[test]
fn unsynced_writes_can_be_lost_synced_ones_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), cfg());
    wal.append(&entries(1..=5, 1)).unwrap();
    let hs = HardState {
        term: 1,
        commit: 5,
        ..Default::default()
    };
    wal.set_hard_state(&hs).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.unsynced_len(), 0);
    wal.append(&entries(6..=10, 2)).unwrap();
    wal.set_hard_state(&HardState {
        term: 2,
        commit: 10,
        ..Default::default()
    })
    .unwrap();
    assert!(wal.unsynced_len() > 0);
    wal.simulate_crash(0).unwrap();

    let (mut wal, rec) = open(dir.path(), cfg());
    assert_eq!(rec.last_index, 5);
    assert_eq!(rec.hard_state, hs);
    assert!(rec.truncated_tail.is_none());

    // Keeping every unsynced byte is the other extreme: all of it is back.
    wal.append(&entries(6..=10, 2)).unwrap();
    wal.simulate_crash(u64::MAX).unwrap();
    let (wal, rec) = open(dir.path(), cfg());
    assert_eq!(rec.last_index, 10);
    assert_eq!(all_entries(&wal)[9], entry(10, 2));
}

/// A crash can keep any prefix of the unsynced bytes. Whatever the cut, the WAL reopens to the
/// state after some prefix of the writes (here each write is one record).
#[test]
fn any_torn_unsynced_prefix_recovers_to_a_prefix_of_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), cfg());
    wal.append(&entries(1..=3, 1)).unwrap();
    wal.sync().unwrap();
    let synced = wal.synced_len();
    let path = wal.active_segment_path().to_path_buf();

    // Each step writes one record; remember (end offset, last index, commit) after it.
    let mut states = vec![(synced, 3, 0)];
    let mut hs = HardState::default();
    for i in 4..=9 {
        if i % 3 == 0 {
            hs.commit = wal.last_index();
            wal.set_hard_state(&hs).unwrap();
        } else {
            // Overwrite the last entry every other time: replay must follow the latest.
            let at = wal.last_index() + u64::from(i % 2 == 0);
            wal.append(&[entry(at, i)]).unwrap();
        }
        states.push((synced + wal.unsynced_len(), wal.last_index(), hs.commit));
    }
    let total = wal.unsynced_len();
    wal.simulate_crash(total).unwrap();
    let full = fs::read(&path).unwrap();
    assert_eq!(full.len() as u64, synced + total);

    for cut in synced..=synced + total {
        fs::write(&path, &full[..cut as usize]).unwrap();
        let (wal, rec) = open(dir.path(), cfg());
        let (end, last, commit) = *states.iter().rev().find(|s| s.0 <= cut).unwrap();
        assert_eq!(rec.last_index, last, "cut {cut}");
        assert_eq!(rec.hard_state.commit, commit, "cut {cut}");
        assert_eq!(fs::metadata(&path).unwrap().len(), end, "cut {cut}");
        assert_eq!(all_entries(&wal).len() as u64, last);
    }
}

#[test]
fn a_new_segment_that_lost_its_header_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(200);
    let (mut wal, _) = open(dir.path(), cfg.clone());
    // Append and sync one entry at a time until a sync rolls to a new segment, whose header is
    // then not synced yet.
    let mut last = 0;
    let segments = loop {
        let segments = wal.segment_count();
        last += 1;
        wal.append(&[entry(last, 1)]).unwrap();
        wal.sync().unwrap();
        if wal.segment_count() > segments {
            break segments + 1;
        }
    };
    assert_eq!(wal.synced_len(), 0);
    assert!(wal.unsynced_len() > 0, "the new header");
    // One more entry, unsynced, in the new segment.
    wal.append(&[entry(last + 1, 1)]).unwrap();
    wal.simulate_crash(0).unwrap();

    let (mut wal, rec) = open(dir.path(), cfg.clone());
    assert_eq!(rec.last_index, last);
    assert_eq!(rec.segments, segments);
    wal.append(&[entry(last + 1, 2)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, _) = open(dir.path(), cfg);
    let mut expect: Vec<(u64, u64)> = (1..=last).map(|i| (i, 1)).collect();
    expect.push((last + 1, 2));
    assert_eq!(terms(&wal), expect);
}

#[test]
fn missing_segments_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(300);
    let (mut wal, _) = open(dir.path(), cfg.clone());
    for i in 1..=30 {
        wal.append(&[entry(i, 1)]).unwrap();
        wal.sync().unwrap();
    }
    let paths = wal.segment_paths();
    drop(wal);
    assert!(paths.len() >= 4);

    // A hole in the sequence.
    let saved = fs::read(&paths[1]).unwrap();
    fs::remove_file(&paths[1]).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), cfg.clone()),
        Err(Error::MissingSegment {
            previous_seq: 1,
            ..
        })
    ));
    fs::write(&paths[1], saved).unwrap();

    // The oldest segment deleted while it still held live entries.
    fs::remove_file(&paths[0]).unwrap();
    match Wal::open(dir.path(), cfg) {
        Err(Error::MissingEntries { first, .. }) => assert_eq!(first, 1),
        other => panic!("expected missing entries, got {other:?}"),
    }
}

#[test]
fn reads_come_from_disk_and_from_the_write_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(500));
    wal.append(&entries(1..=20, 1)).unwrap();
    wal.sync().unwrap();
    // Not synced: partly still in the userspace buffer.
    wal.append(&entries(15..=30, 2)).unwrap();
    let mut expect = entries(1..=14, 1);
    expect.extend(entries(15..=30, 2));
    assert_eq!(all_entries(&wal), expect);
    assert_eq!(wal.entries(10, 20, None).unwrap(), expect[9..19].to_vec());
    // `max_size` follows raft::util::limit_size.
    for max in [0, 1, 40, 100, 1000] {
        let mut limited = expect.clone();
        raft::util::limit_size(&mut limited, Some(max));
        assert_eq!(wal.entries(1, 31, Some(max)).unwrap(), limited, "max {max}");
    }
    assert!(matches!(
        wal.entries(0, 3, None),
        Err(Error::Compacted { .. })
    ));
    assert!(matches!(
        wal.entries(1, 32, None),
        Err(Error::Unavailable { .. })
    ));
}

#[test]
fn corruption_found_on_read_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), cfg());
    wal.append(&entries(1..=3, 1)).unwrap();
    wal.sync().unwrap();
    let path = wal.active_segment_path().to_path_buf();
    let mut b = fs::read(&path).unwrap();
    let n = b.len();
    b[n - 2] ^= 1;
    fs::write(&path, &b).unwrap();
    match wal.entries(3, 4, None) {
        Err(Error::Corrupt { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected corruption, got {other:?}"),
    }
}
