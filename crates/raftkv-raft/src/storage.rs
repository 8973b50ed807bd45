//! [`WalStorage`]: raft-rs's [`Storage`] over the [`Wal`], with the contract of raft-rs's
//! `MemStorage`, plus the mutators the Ready loop calls.
//!
//! Reads never wait on the disk for recent entries: the newest entries, up to
//! [`StorageConfig::entry_cache_bytes`], are kept in memory; older ones are read back from their
//! segment file through the WAL's per-entry index (segment, offset), and terms always come from
//! that index. Nothing needs interior mutability: the driver owns the `RawNode` and mutates the
//! storage through `RawNode::mut_store()`.
//!
//! # Snapshots carry metadata only
//!
//! raftkv's state machine is multi-version and idempotent by applied index, so a Raft snapshot
//! holds only metadata (index, term, conf state; `data` is empty) and the state itself is
//! streamed by the transport. The driver reports what it has applied with
//! [`WalStorage::set_applied`]; [`Storage::snapshot`] answers with that metadata, or
//! `SnapshotTemporarilyUnavailable` while less than the requested index has been applied.
//!
//! # Example: the storage side of a Ready loop
//!
//! ```
//! use raft::eraftpb::{ConfState, Entry, HardState};
//! use raft::{GetEntriesContext, Storage};
//! use raftkv_raft::{StorageConfig, WalConfig, WalStorage};
//!
//! let dir = tempfile::tempdir()?;
//! let cfg = StorageConfig {
//!     wal: WalConfig { fsync: false, ..WalConfig::default() },
//!     ..StorageConfig::default()
//! };
//! let (mut store, _) = WalStorage::open(dir.path(), cfg.clone())?;
//! store.set_conf_state(ConfState { voters: vec![1], ..Default::default() })?;
//! // Ready: entries, then the hard state, then one fdatasync for both.
//! let entries: Vec<Entry> = (1..=3)
//!     .map(|i| Entry { index: i, term: 1, ..Default::default() })
//!     .collect();
//! store.append(&entries)?;
//! store.set_hard_state(HardState { term: 1, vote: 1, commit: 3, ..Default::default() })?;
//! store.sync()?;
//! drop(store);
//!
//! let (store, _) = WalStorage::open(dir.path(), cfg)?;
//! assert_eq!(store.initial_state()?.hard_state.commit, 3);
//! assert_eq!(store.term(2)?, 1);
//! assert_eq!(store.entries(1, 4, None, GetEntriesContext::empty(false))?.len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::path::Path;

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::error::Result;
use crate::wal::{Recovered, Wal, WalConfig};

/// Configuration of a [`WalStorage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The WAL's configuration.
    pub wal: WalConfig,
    /// Bytes of the newest entries kept in memory (by `Entry::compute_size`). Older entries are
    /// read back from disk. Default 64 MiB; 0 reads every entry from the WAL.
    pub entry_cache_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            wal: WalConfig::default(),
            entry_cache_bytes: 64 << 20,
        }
    }
}

impl StorageConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        self.wal.validate()
    }
}

/// raft-rs [`Storage`] backed by raftkv's [`Wal`]. See the [module docs](self).
#[derive(Debug)]
pub struct WalStorage {
    wal: Wal,
    /// The newest entries: a suffix of the log ending at its last index.
    cache: VecDeque<Entry>,
    /// Sum of `compute_size` over `cache`.
    cache_bytes: u64,
    cache_cap: u64,
    /// What the state machine has applied: the metadata `snapshot()` answers with.
    applied: SnapshotMetadata,
}

impl WalStorage {
    /// Opens (or creates) the storage in `dir`, replaying the WAL and loading the newest entries
    /// into the cache. The applied metadata starts as the last installed snapshot's; the driver
    /// should call [`set_applied`](Self::set_applied) with the state machine's once it knows it.
    pub fn open(dir: impl AsRef<Path>, cfg: StorageConfig) -> Result<(WalStorage, Recovered)> {
        cfg.validate()?;
        let (wal, recovered) = Wal::open(dir, cfg.wal)?;
        let mut s = WalStorage {
            wal,
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_cap: cfg.entry_cache_bytes,
            applied: recovered.snapshot.clone(),
        };
        s.warm_cache()?;
        Ok((s, recovered))
    }

    fn warm_cache(&mut self) -> Result<()> {
        let (first, last) = (self.wal.first_index(), self.wal.last_index());
        let mut lo = last + 1;
        let mut bytes = 0;
        while lo > first {
            let size = self
                .wal
                .meta(lo - 1)
                .expect("index in the log")
                .entry_size();
            if bytes + size > self.cache_cap {
                break;
            }
            bytes += size;
            lo -= 1;
        }
        self.cache = self.wal.read_range(lo, last + 1)?.into();
        self.cache_bytes = bytes;
        Ok(())
    }

    /// Index of the first cached entry (`last_index + 1` if the cache is empty).
    fn cache_first(&self) -> u64 {
        self.wal.last_index() + 1 - self.cache.len() as u64
    }

    fn evict(&mut self) {
        while self.cache_bytes > self.cache_cap {
            let e = self.cache.pop_front().expect("bytes imply entries");
            self.cache_bytes -= u64::from(e.compute_size());
        }
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    /// The WAL underneath, for its inspection methods.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        self.wal.hard_state()
    }

    /// The current conf state.
    pub fn conf_state(&self) -> &ConfState {
        self.wal.conf_state()
    }

    /// The applied metadata [`Storage::snapshot`] answers with.
    pub fn applied(&self) -> &SnapshotMetadata {
        &self.applied
    }

    /// Number of entries held in memory.
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Records what the state machine has applied: the index, its term and the conf state in
    /// force there. [`Storage::snapshot`] answers with it. Kept in memory only: after a restart
    /// the driver sets it again from the state machine.
    pub fn set_applied(&mut self, index: u64, term: u64, conf_state: ConfState) {
        self.applied = SnapshotMetadata {
            index,
            term,
            conf_state: Some(conf_state).into(),
            ..Default::default()
        };
    }

    /// Appends entries (`MemStorage::append`): those starting at index `i` replace every entry
    /// `>= i`. Durable after [`sync`](Self::sync).
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let cache_first = self.cache_first();
        if let Err(e) = self.wal.append(entries) {
            if e.is_fatal() {
                // The log may hold part of the batch: let reads go to the WAL.
                self.clear_cache();
            }
            return Err(e);
        }
        if first.index < cache_first {
            self.clear_cache();
        } else {
            for e in self.cache.drain((first.index - cache_first) as usize..) {
                self.cache_bytes -= u64::from(e.compute_size());
            }
        }
        for e in entries {
            self.cache_bytes += u64::from(e.compute_size());
            self.cache.push_back(e.clone());
        }
        self.evict();
        Ok(())
    }

    /// Records the hard state (its commit must not be past the last index).
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<()> {
        self.wal.set_hard_state(&hs)
    }

    /// Records a new commit index in the hard state (from a `LightReady`).
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        let mut hs = self.wal.hard_state().clone();
        hs.commit = commit;
        self.wal.set_hard_state(&hs)
    }

    /// Records the conf state.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<()> {
        self.wal.set_conf_state(&cs)
    }

    /// Installs a snapshot (`MemStorage::apply_snapshot`): discards the log, records the
    /// metadata, takes its conf state, sets the hard state's commit to its index and term to the
    /// larger term, in one WAL record. Its `data` is ignored (the state is streamed separately;
    /// install it in the state machine first). The applied metadata becomes the snapshot's if it
    /// is newer. [`Error::SnapshotOutOfDate`](crate::Error::SnapshotOutOfDate) if the index is
    /// below the first index.
    pub fn apply_snapshot(&mut self, mut snapshot: Snapshot) -> Result<()> {
        let meta = snapshot.take_metadata();
        self.wal.apply_snapshot(&meta)?;
        self.clear_cache();
        if meta.index >= self.applied.index {
            self.applied = meta;
        }
        Ok(())
    }

    /// Discards the entries below `to` (`MemStorage::compact`; `to` must not be past the last
    /// index). Compact to the applied index at most, keeping the applied entry so followers just
    /// behind can still be matched by term. Segment files are deleted by the next
    /// [`sync`](Self::sync).
    pub fn compact(&mut self, to: u64) -> Result<()> {
        self.wal.compact(to)?;
        let live = self.wal.last_index() + 1 - self.wal.first_index();
        while self.cache.len() as u64 > live {
            let e = self.cache.pop_front().expect("longer than live");
            self.cache_bytes -= u64::from(e.compute_size());
        }
        Ok(())
    }

    /// Makes everything recorded so far durable with one `fdatasync` (group commit).
    pub fn sync(&mut self) -> Result<()> {
        self.wal.sync()
    }

    /// **For tests:** simulates a power loss; see [`Wal::simulate_crash`].
    pub fn simulate_crash(self, keep_unsynced: u64) -> Result<()> {
        self.wal.simulate_crash(keep_unsynced)
    }
}

impl Storage for WalStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.wal.hard_state().clone(),
            self.wal.conf_state().clone(),
        ))
    }

    /// Entries `low..high`, limited to `max_size` by `raft::util::limit_size`'s rule.
    ///
    /// # Panics
    ///
    /// If `high > last_index() + 1`, as `MemStorage` does (raft-rs never asks for that).
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.wal.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = self.wal.last_index();
        assert!(
            high <= last + 1,
            "index out of bound (last: {}, high: {high})",
            last + 1
        );
        if low >= high {
            return Ok(Vec::new());
        }
        let hi = low + self.wal.limited_count(low, high, max_size.into());
        let cache_first = self.cache_first();
        let mut out = if low < cache_first {
            self.wal.read_range(low, hi.min(cache_first))?
        } else {
            Vec::with_capacity((hi - low) as usize)
        };
        let from = low.max(cache_first);
        if from < hi {
            let skip = (from - cache_first) as usize;
            out.extend(
                self.cache
                    .iter()
                    .skip(skip)
                    .take((hi - from) as usize)
                    .cloned(),
            );
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.wal.term(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.wal.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.wal.last_index())
    }

    /// A metadata-only snapshot at the applied index; `SnapshotTemporarilyUnavailable` while
    /// nothing, or less than `request_index`, has been applied.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.applied.index == 0 || self.applied.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut s = Snapshot::default();
        s.set_metadata(self.applied.clone());
        Ok(s)
    }
}
