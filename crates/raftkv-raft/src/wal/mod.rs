//! raftkv's write-ahead log for the Raft log: entries, hard state, conf state and snapshot
//! metadata in a directory of CRC-checked segment files, made durable by one `fdatasync` per
//! [`Wal::sync`] (group commit).
//!
//! # Layout
//!
//! The directory holds segment files `<seq>-<first index>.wal` (16 hex digits each; see
//! `segment.rs`). Records are appended to the last (*active*) segment; the first
//! [`sync`](Wal::sync) after it has reached [`WalConfig::segment_size`] starts a new one (so a
//! segment may exceed the size by one group commit). Every segment starts with a
//! header record holding the log's state at its creation (hard state, conf state, snapshot
//! metadata, index range), so once older segments are deleted the remaining ones still replay to
//! the full state. Record framing is described in `record.rs`.
//!
//! # Semantics (those of raft-rs's `MemStorage`)
//!
//! * [`append`](Wal::append): entries starting at index `i` replace every entry `>= i`. On disk
//!   a later entry record simply overrides earlier ones (replay is last-writer-wins by index).
//! * [`apply_snapshot`](Wal::apply_snapshot): discards the whole log, records the metadata, sets
//!   the conf state and sets the hard state's commit to the snapshot index, all in one record,
//!   so a restart can never see the snapshot without its commit index (raft-rs 0.7 panics with
//!   "hs.commit is out of range" otherwise).
//! * [`compact`](Wal::compact): discards entries below an index. Segment files holding no live
//!   entry are deleted by the next [`sync`](Wal::sync), once the records that made them dead are
//!   durable; the active segment is never deleted.
//!
//! # Durability
//!
//! Writes go to a userspace buffer; [`sync`](Wal::sync) writes it out and issues exactly one
//! `fdatasync`, on the active segment. Creating or deleting a segment also fsyncs the directory.
//! New segments are only started right after a sync, so only the active segment can ever hold
//! unsynced bytes, and nothing becomes durable before the sync that covers it. With [`WalConfig::fsync`] off nothing is fsynced (tests, benches),
//! but the WAL still tracks what *would* be durable, which is what
//! [`simulate_crash`](Wal::simulate_crash) cuts back to.
//!
//! # Recovery
//!
//! [`Wal::open`] replays every segment. A damaged record at the end of the last segment (torn
//! write: incomplete, or failing its CRC with nothing valid after it) is truncated away with a
//! `tracing` warning naming the file and offset. Damage anywhere else (a bad record followed by a
//! valid one, or any damage in a segment that is not the last) is [`Error::Corrupt`] with the
//! file and the byte offset.
//!
//! # Example
//!
//! ```
//! use raft::eraftpb::{Entry, HardState};
//! use raftkv_raft::wal::{Wal, WalConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let cfg = WalConfig { fsync: false, ..WalConfig::default() };
//! let (mut wal, _) = Wal::open(dir.path(), cfg.clone())?;
//! let entries: Vec<Entry> = (1..=3)
//!     .map(|i| Entry { index: i, term: 1, ..Default::default() })
//!     .collect();
//! wal.append(&entries)?;
//! wal.set_hard_state(&HardState { term: 1, commit: 2, ..Default::default() })?;
//! wal.sync()?;
//! drop(wal);
//!
//! let (wal, recovered) = Wal::open(dir.path(), cfg)?;
//! assert_eq!((recovered.first_index, recovered.last_index), (1, 3));
//! assert_eq!(recovered.hard_state.commit, 2);
//! assert_eq!(wal.entries(2, 4, None)?.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod record;
mod segment;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use tracing::{debug, info, warn};

use crate::error::{Damage, Error, Result};
use record::{Record, SegmentHeader, ENTRY_BODY_OVERHEAD, HEADER_LEN};

/// The userspace buffer is written to the file when it grows past this, even before a sync.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Configuration of a [`Wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// A new segment file is started by the first sync after the active one has reached this
    /// size, in bytes. Default 64 MiB.
    pub segment_size: u64,
    /// Whether [`Wal::sync`] really calls `fdatasync` (and directory fsyncs happen). Default
    /// `true`. Turn it off only for tests and benches that do not measure durability.
    pub fsync: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_size: 64 << 20,
            fsync: true,
        }
    }
}

impl WalConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.segment_size == 0 {
            return Err(Error::InvalidConfig {
                field: "segment_size",
                reason: "must be positive",
            });
        }
        Ok(())
    }
}

/// Where an entry's record lives, with its term so `term()` never touches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    pub(crate) term: u64,
    /// Sequence number of the segment holding the record.
    pub(crate) seq: u64,
    /// Byte offset of the record in that segment.
    pub(crate) offset: u64,
    /// Body length of the record.
    pub(crate) len: u32,
}

impl EntryMeta {
    /// The entry's protobuf size (`Entry::compute_size`), as `raft::util::limit_size` counts it.
    pub(crate) fn entry_size(&self) -> u64 {
        u64::from(self.len - ENTRY_BODY_OVERHEAD)
    }
}

/// What [`Wal::open`] found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// The last hard state written (or the default).
    pub hard_state: HardState,
    /// The last conf state written, or that of the last snapshot.
    pub conf_state: ConfState,
    /// Metadata of the last snapshot installed (index 0 if none).
    pub snapshot: SnapshotMetadata,
    /// First index of the log (`snapshot.index + 1` if the log is empty).
    pub first_index: u64,
    /// Last index of the log (`snapshot.index` if the log is empty). Read the entries with
    /// [`Wal::entries`].
    pub last_index: u64,
    /// Number of segment files.
    pub segments: usize,
    /// The torn tail that was cut off the last segment, if any.
    pub truncated_tail: Option<TruncatedTail>,
}

/// A torn or corrupt tail that [`Wal::open`] truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The segment file.
    pub path: PathBuf,
    /// The offset it was truncated to (where the damaged record started).
    pub offset: u64,
    /// How many bytes were cut off.
    pub dropped_bytes: u64,
    /// What was wrong with the first dropped record.
    pub damage: Damage,
}

/// The log as replay and the live WAL both see it: one implementation of MemStorage's rules.
#[derive(Debug, Default)]
struct LogState {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    /// Index of `log[0]` (meaningless when `log` is empty).
    log_first: u64,
    log: VecDeque<EntryMeta>,
}

impl LogState {
    fn first_index(&self) -> u64 {
        if self.log.is_empty() {
            self.snapshot.index + 1
        } else {
            self.log_first
        }
    }

    fn last_index(&self) -> u64 {
        if self.log.is_empty() {
            self.snapshot.index
        } else {
            self.log_first + self.log.len() as u64 - 1
        }
    }

    fn meta(&self, index: u64) -> Option<&EntryMeta> {
        self.log
            .get(usize::try_from(index.checked_sub(self.log_first)?).ok()?)
    }

    /// Places an entry at `index`, dropping any at or after it. An index below the log (only
    /// seen in replay, when older segments were deleted) restarts the log; one past `last + 1`
    /// is a gap and refused.
    fn put(&mut self, index: u64, meta: EntryMeta) -> Result<(), Damage> {
        if self.log.is_empty() || index < self.log_first {
            self.log.clear();
            self.log_first = index;
        } else if index > self.last_index() + 1 {
            return Err(Damage::LogGap {
                index,
                last_index: self.last_index(),
            });
        } else {
            self.log.truncate((index - self.log_first) as usize);
        }
        self.log.push_back(meta);
        Ok(())
    }

    fn compact(&mut self, to: u64) {
        if self.log.is_empty() || to <= self.log_first {
            return;
        }
        let n = ((to - self.log_first) as usize).min(self.log.len());
        self.log.drain(..n);
        self.log_first += n as u64;
    }

    fn install_snapshot(&mut self, meta: &SnapshotMetadata) {
        self.log.clear();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = meta.clone();
    }

    fn term(&self, index: u64) -> Result<u64> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        let first_index = self.first_index();
        if index < first_index {
            return Err(Error::Compacted { index, first_index });
        }
        match self.meta(index) {
            Some(m) => Ok(m.term),
            None => Err(Error::Unavailable {
                index,
                last_index: self.last_index(),
            }),
        }
    }

    fn header(&self, seq: u64) -> SegmentHeader {
        SegmentHeader {
            seq,
            log_first: self.first_index(),
            log_last: self.last_index(),
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
            snapshot: self.snapshot.clone(),
        }
    }
}

/// Replay of the segments, oldest first.
#[derive(Debug, Default)]
struct Replay {
    state: LogState,
    /// Entries `first..=last` that were live when the oldest remaining segment was created and
    /// lived in segments since deleted. Later records must drop or overwrite all of them; if any
    /// survive to the end of replay, entries are missing.
    phantom: Option<(u64, u64)>,
}

impl Replay {
    /// The last index of the full log, counting entries that only deleted segments held.
    fn full_last_index(&self) -> u64 {
        match (self.state.log.is_empty(), self.phantom) {
            (true, Some((_, last))) => last,
            _ => self.state.last_index(),
        }
    }

    /// Applies the record at position `pos` of segment `listed`, the `nth` segment replayed.
    fn apply(
        &mut self,
        listed: &segment::Listed,
        nth: usize,
        pos: usize,
        offset: usize,
        len: u32,
        rec: Record,
    ) -> Result<(), Damage> {
        match rec {
            Record::SegmentHeader(h) if pos == 0 => self.header(listed, nth, h)?,
            Record::SegmentHeader(_) => {
                return Err(Damage::HeaderMismatch(
                    "header record after the start of the segment".into(),
                ))
            }
            _ if pos == 0 => return Err(Damage::MissingHeader),
            Record::Entry { index, term } => {
                if let Some((first, last)) = self.phantom {
                    self.phantom = (first < index).then(|| (first, last.min(index - 1)));
                }
                let meta = EntryMeta {
                    term,
                    seq: listed.seq,
                    offset: offset as u64,
                    len,
                };
                self.state.put(index, meta)?;
            }
            Record::HardState(hs) => self.state.hard_state = hs,
            Record::ConfState(cs) => self.state.conf_state = cs,
            Record::Snapshot(meta) => {
                self.phantom = None;
                self.state.install_snapshot(&meta);
            }
            Record::Compact(to) => {
                if let Some((first, last)) = self.phantom {
                    self.phantom = (to <= last).then(|| (first.max(to), last));
                }
                self.state.compact(to);
            }
        }
        Ok(())
    }

    /// A segment header: the starting state if it is the oldest segment, a cross-check otherwise.
    fn header(
        &mut self,
        listed: &segment::Listed,
        nth: usize,
        h: SegmentHeader,
    ) -> Result<(), Damage> {
        if h.seq != listed.seq || h.log_last + 1 != listed.first_index {
            return Err(Damage::HeaderMismatch(format!(
                "header is for segment {} starting at index {}",
                h.seq,
                h.log_last + 1
            )));
        }
        if nth == 0 {
            self.phantom = (h.log_first <= h.log_last).then_some((h.log_first, h.log_last));
            self.state = LogState {
                hard_state: h.hard_state,
                conf_state: h.conf_state,
                snapshot: h.snapshot,
                ..LogState::default()
            };
        } else if h.log_last != self.full_last_index() {
            return Err(Damage::HeaderMismatch(format!(
                "header says the log ended at {}, the segments before end at {}",
                h.log_last,
                self.full_last_index()
            )));
        }
        Ok(())
    }
}

/// An open segment file.
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
}

/// The write-ahead log. See the [module docs](self).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    cfg: WalConfig,
    /// Segments in sequence order; the last one is active.
    segments: VecDeque<Segment>,
    /// Bytes of the active segment written to its file.
    written: u64,
    /// Bytes of the active segment made durable by the last sync (with `fsync` off: the bytes
    /// that would have been).
    synced: u64,
    /// Length of the active segment's header record: a segment holding nothing more is never
    /// sealed, however small `segment_size` is.
    header_len: u64,
    /// Records not yet written to the active segment's file.
    buf: Vec<u8>,
    state: LogState,
    /// Set when a write or fsync failed: the files' state is unknown, writes are refused.
    failed: bool,
}

impl Wal {
    /// Opens the WAL in `dir` (created if missing), replaying every segment. See the
    /// [module docs](self) for what is truncated and what is an error.
    pub fn open(dir: impl AsRef<Path>, cfg: WalConfig) -> Result<(Wal, Recovered)> {
        cfg.validate()?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
            if cfg.fsync {
                if let Some(parent) = dir.parent() {
                    sync_dir(parent)?;
                }
            }
        }
        let listed = segment::list(&dir)?;
        let mut wal = Wal {
            dir,
            cfg,
            segments: VecDeque::new(),
            written: 0,
            synced: 0,
            header_len: 0,
            buf: Vec::new(),
            state: LogState::default(),
            failed: false,
        };
        let truncated_tail = if listed.is_empty() {
            wal.create_segment(1)?;
            wal.sync()?;
            None
        } else {
            wal.replay(&listed)?
        };
        let recovered = Recovered {
            hard_state: wal.state.hard_state.clone(),
            conf_state: wal.state.conf_state.clone(),
            snapshot: wal.state.snapshot.clone(),
            first_index: wal.first_index(),
            last_index: wal.last_index(),
            segments: wal.segments.len(),
            truncated_tail,
        };
        info!(
            dir = %wal.dir.display(),
            segments = recovered.segments,
            first_index = recovered.first_index,
            last_index = recovered.last_index,
            commit = recovered.hard_state.commit,
            snapshot_index = recovered.snapshot.index,
            "WAL opened"
        );
        Ok((wal, recovered))
    }

    fn replay(&mut self, listed: &[segment::Listed]) -> Result<Option<TruncatedTail>> {
        let mut replay = Replay::default();
        let mut truncated = None;
        let mut active_len = 0;
        for (nth, l) in listed.iter().enumerate() {
            let is_last = nth + 1 == listed.len();
            let bytes = fs::read(&l.path).map_err(|e| Error::io("read", &l.path, e))?;
            let scan = segment::scan(&bytes);
            let corrupt = |offset: usize, damage: Damage| Error::Corrupt {
                path: l.path.clone(),
                offset: offset as u64,
                damage,
            };
            let mut valid_len = bytes.len();
            if let Some(stop) = scan.stop {
                if !is_last || stop.valid_data_follows {
                    return Err(corrupt(stop.offset, stop.damage));
                }
                valid_len = stop.offset;
                let tail = TruncatedTail {
                    path: l.path.clone(),
                    offset: stop.offset as u64,
                    dropped_bytes: (bytes.len() - stop.offset) as u64,
                    damage: stop.damage,
                };
                warn!(
                    file = %tail.path.display(),
                    offset = tail.offset,
                    dropped_bytes = tail.dropped_bytes,
                    damage = %tail.damage,
                    "WAL: truncating torn tail of the last segment"
                );
                truncated = Some(tail);
            }
            if scan.records.is_empty() && !(is_last && (nth > 0 || l.seq == 1)) {
                // Only the last segment may lack its header (created, then a crash before the
                // header was synced), and only if it is not the only one left after deletions.
                return Err(corrupt(0, Damage::MissingHeader));
            }
            for (pos, (off, f)) in scan.records.iter().enumerate() {
                let rec = record::decode(f.body).map_err(|d| corrupt(*off, d))?;
                replay
                    .apply(l, nth, pos, *off, f.body.len() as u32, rec)
                    .map_err(|d| corrupt(*off, d))?;
            }
            let file = if is_last {
                File::options().read(true).append(true).open(&l.path)
            } else {
                File::open(&l.path)
            }
            .map_err(|e| Error::io("open", &l.path, e))?;
            self.segments.push_back(Segment {
                seq: l.seq,
                path: l.path.clone(),
                file,
            });
            active_len = valid_len as u64;
            self.header_len = scan.records.first().map_or(0, |(_, f)| f.end as u64);
        }
        if let Some((first, last)) = replay.phantom {
            return Err(Error::MissingEntries { first, last });
        }
        self.state = replay.state;
        if self.state.hard_state.commit > self.last_index() {
            return Err(Error::CommitBeyondLog {
                commit: self.state.hard_state.commit,
                last_index: self.last_index(),
            });
        }

        let active = self.segments.back().expect("at least one segment");
        if truncated.is_some() || active_len == 0 {
            active
                .file
                .set_len(active_len)
                .map_err(|e| Error::io("truncate", &active.path, e))?;
            if self.cfg.fsync {
                active
                    .file
                    .sync_all()
                    .map_err(|e| Error::io("fsync", &active.path, e))?;
            }
        }
        self.written = active_len;
        self.synced = active_len;
        if active_len == 0 {
            // The active segment lost its header: write it again from the replayed state.
            let listed = listed.last().expect("at least one segment");
            if listed.first_index != self.last_index() + 1 {
                return Err(Error::Corrupt {
                    path: listed.path.clone(),
                    offset: 0,
                    damage: Damage::HeaderMismatch(format!(
                        "empty segment named for index {}, the log ends at {}",
                        listed.first_index,
                        self.last_index()
                    )),
                });
            }
            let header = self.state.header(active.seq);
            self.header_len = u64::from(record::encode_segment_header(&mut self.buf, &header)?)
                + HEADER_LEN as u64;
            self.sync()?;
        }
        Ok(truncated)
    }

    /// The directory of the WAL.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the WAL was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.cfg
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.state.hard_state
    }

    /// The current conf state.
    pub fn conf_state(&self) -> &ConfState {
        &self.state.conf_state
    }

    /// Metadata of the last snapshot installed.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.state.snapshot
    }

    /// First index of the log: that of the first entry, or `snapshot index + 1` if the log is
    /// empty (raft-rs `MemStorage` rules).
    pub fn first_index(&self) -> u64 {
        self.state.first_index()
    }

    /// Last index of the log: that of the last entry, or the snapshot index if the log is empty.
    pub fn last_index(&self) -> u64 {
        self.state.last_index()
    }

    /// Term of the entry at `index`, with `MemStorage`'s rules: the snapshot's term at the
    /// snapshot index, [`Error::Compacted`] below the first index, [`Error::Unavailable`] past
    /// the last.
    pub fn term(&self, index: u64) -> Result<u64> {
        self.state.term(index)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Paths of the segment files, oldest first; the last one is active.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    pub(crate) fn meta(&self, index: u64) -> Option<&EntryMeta> {
        self.state.meta(index)
    }

    /// Appends entries with raft semantics: entries starting at index `i` replace every entry
    /// `>= i`. `entries[0].index` must lie in `first_index()..=last_index() + 1` and the indexes
    /// must be consecutive. Durable after the next [`sync`](Self::sync).
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.check_usable()?;
        if first.index < self.first_index() {
            return Err(Error::AppendCompacted {
                index: first.index,
                first_index: self.first_index(),
            });
        }
        if first.index > self.last_index() + 1 {
            return Err(Error::AppendGap {
                index: first.index,
                last_index: self.last_index(),
            });
        }
        if let Some(w) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
            return Err(Error::NotConsecutive {
                previous: w[0].index,
                next: w[1].index,
            });
        }
        // Refuse an oversized entry before writing any of the batch.
        let max = record::MAX_BODY_LEN;
        if let Some(len) = entries
            .iter()
            .map(|e| e.compute_size() as usize + ENTRY_BODY_OVERHEAD as usize)
            .find(|&len| len > max)
        {
            return Err(Error::RecordTooLarge { len, max });
        }
        self.write(|wal| {
            for e in entries {
                let offset = wal.active_len();
                let len = record::encode_entry(&mut wal.buf, e)?;
                let meta = EntryMeta {
                    term: e.term,
                    seq: wal.active_seq(),
                    offset,
                    len,
                };
                wal.state
                    .put(e.index, meta)
                    .expect("append was checked to continue the log");
                wal.flush_if_full()?;
            }
            Ok(())
        })
    }

    /// Records the hard state. Its commit index must not be past the last index (append the
    /// entries first: raft-rs 0.7 cannot restart from such a state).
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        self.check_usable()?;
        if hs.commit > self.last_index() {
            return Err(Error::CommitBeyondLog {
                commit: hs.commit,
                last_index: self.last_index(),
            });
        }
        if *hs == self.state.hard_state {
            return Ok(());
        }
        self.write(|wal| {
            record::encode_hard_state(&mut wal.buf, hs)?;
            wal.state.hard_state = hs.clone();
            wal.flush_if_full()
        })
    }

    /// Records the conf state.
    pub fn set_conf_state(&mut self, cs: &ConfState) -> Result<()> {
        self.check_usable()?;
        if *cs == self.state.conf_state {
            return Ok(());
        }
        self.write(|wal| {
            record::encode_conf_state(&mut wal.buf, cs)?;
            wal.state.conf_state = cs.clone();
            wal.flush_if_full()
        })
    }

    /// Records an installed snapshot, with `MemStorage::apply_snapshot`'s effect: the whole log
    /// is discarded (first index becomes `index + 1`, `term(index)` the snapshot's term), the
    /// conf state becomes the snapshot's, the hard state's commit becomes `index` and its term
    /// the larger of the two, all in one record. [`Error::SnapshotOutOfDate`] if `index` is below
    /// the first index.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<()> {
        self.check_usable()?;
        if meta.index < self.first_index() {
            return Err(Error::SnapshotOutOfDate {
                index: meta.index,
                first_index: self.first_index(),
            });
        }
        self.write(|wal| {
            record::encode_snapshot(&mut wal.buf, meta)?;
            wal.state.install_snapshot(meta);
            wal.flush_if_full()
        })
    }

    /// Discards the entries below `to` (`MemStorage::compact`): a no-op if `to <= first_index()`,
    /// [`Error::CompactBeyondLog`] if `to > last_index()` (stricter than `MemStorage`, which
    /// accepts `last + 1` and then loses the first index). The next [`sync`](Self::sync) deletes
    /// the segment files left without live entries.
    pub fn compact(&mut self, to: u64) -> Result<()> {
        self.check_usable()?;
        if to <= self.first_index() {
            return Ok(());
        }
        if to > self.last_index() {
            return Err(Error::CompactBeyondLog {
                to,
                last_index: self.last_index(),
            });
        }
        self.write(|wal| {
            record::encode_compact(&mut wal.buf, to)?;
            wal.state.compact(to);
            wal.flush_if_full()
        })
    }

    /// Makes everything written so far durable with one `fdatasync` of the active segment (none
    /// if nothing was written since the last sync). Then deletes the segment files that hold no
    /// live entry, and starts a new segment if the active one has reached the segment size;
    /// either fsyncs the directory.
    pub fn sync(&mut self) -> Result<()> {
        self.check_usable()?;
        self.write(|wal| {
            wal.flush()?;
            if wal.written > wal.synced {
                if wal.cfg.fsync {
                    let active = wal.active();
                    let started = std::time::Instant::now();
                    active
                        .file
                        .sync_data()
                        .map_err(|e| Error::io("fdatasync", &active.path, e))?;
                    metrics::histogram!("etcd_disk_wal_fsync_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                wal.synced = wal.written;
            }
            wal.delete_dead_segments()?;
            if wal.written >= wal.cfg.segment_size && wal.written > wal.header_len {
                wal.roll()?;
            }
            Ok(())
        })
    }

    /// Reads entries `lo..hi` from disk, at most `max_size` bytes of them by
    /// `raft::util::limit_size`'s rule (always at least one).
    pub fn entries(&self, lo: u64, hi: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        if lo < self.first_index() {
            return Err(Error::Compacted {
                index: lo,
                first_index: self.first_index(),
            });
        }
        if hi > self.last_index() + 1 || lo > hi {
            return Err(Error::Unavailable {
                index: hi.saturating_sub(1),
                last_index: self.last_index(),
            });
        }
        let n = self.limited_count(lo, hi, max_size);
        self.read_range(lo, lo + n)
    }

    /// How many entries from `lo` (before `hi`) `raft::util::limit_size` keeps under `max_size`.
    pub(crate) fn limited_count(&self, lo: u64, hi: u64, max_size: Option<u64>) -> u64 {
        let max = match max_size {
            None | Some(raft::NO_LIMIT) => return hi - lo,
            Some(max) => max,
        };
        // The same loop as `limit_size`, including its quirk of treating a running size of 0 as
        // "nothing taken yet".
        let mut size = 0;
        let mut n = 0;
        for index in lo..hi {
            let taken_before = size != 0;
            size += self.meta(index).expect("index in the log").entry_size();
            if taken_before && size > max {
                break;
            }
            n += 1;
        }
        n
    }

    /// Reads entries `lo..hi` (all in the log) from the segment files or the write buffer, one
    /// read per segment.
    pub(crate) fn read_range(&self, lo: u64, hi: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((hi - lo) as usize);
        let mut index = lo;
        while index < hi {
            let first = *self.meta(index).expect("index in the log");
            let in_buf = |m: &EntryMeta| m.seq == self.active_seq() && m.offset >= self.written;
            let first_in_buf = in_buf(&first);
            // The run of entries held in the same place (one segment file, or the buffer).
            let mut end = index + 1;
            while end < hi {
                let m = self.meta(end).expect("index in the log");
                if m.seq != first.seq || in_buf(m) != first_in_buf {
                    break;
                }
                end += 1;
            }
            let last = self.meta(end - 1).expect("index in the log");
            let span_end = last.offset + HEADER_LEN as u64 + u64::from(last.len);
            let seg = self.segment(first.seq);
            let owned;
            let span: &[u8] = if first_in_buf {
                let from = (first.offset - self.written) as usize;
                &self.buf[from..(span_end - self.written) as usize]
            } else {
                let mut v = vec![0; (span_end - first.offset) as usize];
                seg.file
                    .read_exact_at(&mut v, first.offset)
                    .map_err(|e| Error::io("read", &seg.path, e))?;
                owned = v;
                &owned
            };
            for i in index..end {
                let m = self.meta(i).expect("index in the log");
                let at = (m.offset - first.offset) as usize;
                let corrupt = |damage| Error::Corrupt {
                    path: seg.path.clone(),
                    offset: m.offset,
                    damage,
                };
                let f = record::frame_at(span, at).map_err(corrupt)?;
                let e = record::decode_entry(f.body).map_err(corrupt)?;
                if e.index != i || f.body.len() != m.len as usize {
                    return Err(corrupt(Damage::Malformed {
                        kind: "entry",
                        reason: format!("expected entry {i}, found {}", e.index),
                    }));
                }
                out.push(e);
            }
            index = end;
        }
        Ok(out)
    }

    /// Bytes of the active segment made durable by the last [`sync`](Self::sync) (with
    /// [`WalConfig::fsync`] off: the bytes a sync would have made durable).
    pub fn synced_len(&self) -> u64 {
        self.synced
    }

    /// Bytes of the active segment written since the last sync (in the file or still in the
    /// userspace buffer). Only the active segment can hold unsynced bytes.
    pub fn unsynced_len(&self) -> u64 {
        self.active_len() - self.synced
    }

    /// Path of the active segment.
    pub fn active_segment_path(&self) -> &Path {
        &self.active().path
    }

    /// **For tests:** simulates a power loss. The active segment is cut back to what the last
    /// [`sync`](Self::sync) made durable plus the first `keep_unsynced` of the bytes written
    /// since (clamped to [`unsynced_len`](Self::unsynced_len)); a value that ends inside a
    /// record models a torn write. The WAL is consumed; reopen the directory to recover.
    ///
    /// This is exact for the WAL's durability model: segments other than the active one are
    /// always fully synced, and segment creation and deletion are synced when they happen.
    /// Works the same with [`WalConfig::fsync`] off, which is what deterministic tests use.
    pub fn simulate_crash(mut self, keep_unsynced: u64) -> Result<()> {
        let keep = self.synced + keep_unsynced.min(self.unsynced_len());
        // No more writes from this instance, not even on drop.
        self.failed = true;
        let active = self.active();
        (&active.file)
            .write_all(&self.buf)
            .map_err(|e| Error::io("write", &active.path, e))?;
        active
            .file
            .set_len(keep)
            .map_err(|e| Error::io("truncate", &active.path, e))
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            Err(Error::Failed)
        } else {
            Ok(())
        }
    }

    /// Runs a write step; any error in it leaves the files in an unknown state and poisons the
    /// WAL.
    fn write(&mut self, f: impl FnOnce(&mut Wal) -> Result<()>) -> Result<()> {
        let r = f(self);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn active(&self) -> &Segment {
        self.segments
            .back()
            .expect("the WAL always has an active segment")
    }

    fn active_seq(&self) -> u64 {
        self.active().seq
    }

    fn segment(&self, seq: u64) -> &Segment {
        let front = self
            .segments
            .front()
            .expect("the WAL always has a segment")
            .seq;
        &self.segments[(seq - front) as usize]
    }

    /// Bytes of the active segment, written or buffered.
    fn active_len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let active = self.segments.back_mut().expect("active segment");
        active
            .file
            .write_all(&self.buf)
            .map_err(|e| Error::io("write", &active.path, e))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Creates segment `seq` as the new active one and buffers its header.
    fn create_segment(&mut self, seq: u64) -> Result<()> {
        let path = self
            .dir
            .join(segment::file_name(seq, self.last_index() + 1));
        let file = File::options()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        if self.cfg.fsync {
            sync_dir(&self.dir)?;
        }
        debug!(file = %path.display(), seq, "WAL: new segment");
        self.segments.push_back(Segment { seq, path, file });
        self.written = 0;
        self.synced = 0;
        let header = self.state.header(seq);
        self.header_len =
            u64::from(record::encode_segment_header(&mut self.buf, &header)?) + HEADER_LEN as u64;
        Ok(())
    }

    /// Starts the next segment. Called right after a sync, so the segment it seals is fully
    /// durable and only the active segment ever holds unsynced bytes, without an extra fsync.
    fn roll(&mut self) -> Result<()> {
        debug_assert!(self.buf.is_empty() && self.synced == self.written);
        let seq = self.active_seq() + 1;
        self.create_segment(seq)
    }

    /// Deletes the oldest segments while they hold no live entry (never the active one).
    fn delete_dead_segments(&mut self) -> Result<()> {
        let keep_from = self.state.log.front().map_or(self.active_seq(), |m| m.seq);
        let mut deleted = false;
        while self.segments.len() > 1 && self.segments[0].seq < keep_from {
            let seg = self.segments.pop_front().expect("checked length");
            fs::remove_file(&seg.path).map_err(|e| Error::io("delete", &seg.path, e))?;
            debug!(file = %seg.path.display(), "WAL: deleted segment");
            deleted = true;
        }
        if deleted && self.cfg.fsync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for Wal {
    /// Writes out the userspace buffer (no fsync: durability is what [`Wal::sync`] returned).
    fn drop(&mut self) {
        if !self.failed {
            let _ = self.flush();
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}
