//! [`Store`]: the cheap, cloneable handle every other part of a node uses.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;
use raftkv_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, TxnRequest, TxnResponse,
};
use raftkv_proto::raftkvpb::StoredLease;

use crate::compactor::{Compactor, Gate, Job};
use crate::config::Config;
use crate::error::{Error, RequestError, Result};
use crate::index::{Index, IndexKey, KeyEntry, KeyRange, Live, RevMark};
use crate::layout::Layout;
use crate::lease::{Lease, LeaseInfo, Leases, MAX_LEASE_TTL};
use crate::range::range;
use crate::record::{self, MetaState, Record};
use crate::revision::Revision;
use crate::state::{Pending, State};
use crate::txn::{check_put_standalone, txn};
use crate::validate;
use crate::write::WriteTxn;

/// Key in sled's default tree naming the generation of the active data tree.
pub(crate) const ACTIVE: &[u8] = b"active-generation";

/// A revisioned key-value store with etcd v3 semantics. Cloning is cheap; all clones share one
/// store. Reads may run from any thread at any time; writes (the `index`-taking methods) come
/// from the one thread applying the Raft log, in log order.
///
/// Every write takes the Raft index it is applied at. An index at or below
/// [`Store::consistent_index`] was applied already: the call changes nothing and returns
/// `Ok(None)`. A refused request (`Err(Error::Request(_))`) changes nothing either.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// First field, so it is stopped (and its tree handle released) before the rest drops.
    compactor: Compactor,
    config: Config,
    layout: Layout,
    /// The number of the live copy in `layout`. Held for the whole of a defragmentation or a
    /// snapshot restore, so the two never overlap.
    copy: Mutex<u64>,
    /// The index, leases and pending changes. Held for the length of one read or one applied
    /// request, never across I/O to anything but sled.
    state: RwLock<State>,
    gate: Arc<Gate>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if !st.failed {
            if let Some(batch) = st.commit_batch() {
                if let Err(e) = st
                    .tree
                    .apply_batch(batch)
                    .and_then(|()| st.db.flush().map(drop))
                {
                    tracing::error!(error = %e, "final commit on close failed; the Raft log replays it");
                }
            }
        }
    }
}

/// Opens sled. When the same process closed the store a moment ago, sled's flusher thread may
/// still hold the directory's file lock for a few milliseconds: wait that out (bounded) instead
/// of failing a restart. Another process holding the lock still fails after the bound.
pub(crate) fn open_sled(config: &Config, path: &std::path::Path) -> Result<sled::Db> {
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(config.flush_every_ms)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

pub(crate) fn tree_name(generation: u64) -> String {
    format!("kv-{generation}")
}

impl Store {
    /// Opens (or creates) the store at `config.path`, rebuilding the in-memory index from disk.
    pub fn open(config: Config) -> Result<Store> {
        config.validate()?;
        let (layout, copy) = Layout::open(&config.path)?;
        let db = open_sled(&config, &layout.dir(copy))?;
        let generation = match db.get(ACTIVE)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| Error::Corrupt {
                path: config.path.clone(),
                what: "active generation".into(),
            })?),
            None => 0,
        };
        // Trees other than the active one are leftovers of an interrupted restore.
        for name in db.tree_names() {
            if name.starts_with(b"kv-") && name.as_ref() != tree_name(generation).as_bytes() {
                db.drop_tree(name)?;
            }
        }
        let tree = db.open_tree(tree_name(generation))?;
        let (state, removed) = load(&config, db, tree)?;
        let gate = Arc::new(Gate::default());
        {
            let mut g = gate.lock();
            g.generation = generation;
            g.tree = Some(state.tree.clone());
        }
        let compactor = Compactor::start(Arc::clone(&gate)).map_err(Error::SnapshotIo)?;
        compactor.submit(Job {
            generation,
            removed,
        });
        tracing::info!(
            path = %config.path.display(),
            revision = state.rev,
            compact_revision = state.compact_rev,
            consistent_index = state.consistent_index,
            keys = state.index.len(),
            leases = state.leases.len(),
            "mvcc store opened"
        );
        Ok(Store {
            shared: Arc::new(Shared {
                config,
                layout,
                copy: Mutex::new(copy),
                state: RwLock::new(state),
                gate,
                compactor,
            }),
        })
    }

    pub(crate) fn read(&self) -> Result<RwLockReadGuard<'_, State>> {
        let st = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        if st.failed {
            return Err(Error::Failed);
        }
        Ok(st)
    }

    pub(crate) fn write(&self) -> Result<RwLockWriteGuard<'_, State>> {
        let st = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
        if st.failed {
            return Err(Error::Failed);
        }
        Ok(st)
    }

    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.shared.gate
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.shared.layout
    }

    /// Locks the number of the live copy: held by a defragmentation or a restore throughout.
    pub(crate) fn copy(&self) -> MutexGuard<'_, u64> {
        self.shared.copy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The current revision (1 for an empty store).
    pub fn revision(&self) -> Result<i64> {
        Ok(self.read()?.rev)
    }

    /// The revision of the last compaction, or -1 if there was none.
    pub fn compact_revision(&self) -> Result<i64> {
        Ok(self.read()?.compact_rev)
    }

    /// The Raft index of the last applied request.
    pub fn consistent_index(&self) -> Result<u64> {
        Ok(self.read()?.consistent_index)
    }

    /// A Range read, at the current revision or `req.revision`.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        validate::check_range(req)?;
        let st = self.read()?;
        range(&st, req, st.rev)
    }

    /// Applies a Put.
    pub fn put(&self, index: u64, req: &PutRequest) -> Result<Option<PutResponse>> {
        self.apply(index, |st| {
            validate::check_put(req)?;
            check_put_standalone(st, req)?;
            let mut w = WriteTxn::begin(st);
            let resp = w.put_request(req);
            w.end();
            Ok(resp)
        })
    }

    /// Applies a DeleteRange. Deleting nothing leaves the revision unchanged.
    pub fn delete_range(
        &self,
        index: u64,
        req: &DeleteRangeRequest,
    ) -> Result<Option<DeleteRangeResponse>> {
        self.apply(index, |st| {
            validate::check_delete(req)?;
            let mut w = WriteTxn::begin(st);
            let resp = w.delete_request(req);
            w.end();
            Ok(resp)
        })
    }

    /// Applies a Txn: one revision for all its writes (none if it writes nothing).
    pub fn txn(&self, index: u64, req: &TxnRequest) -> Result<Option<TxnResponse>> {
        let max_ops = self.shared.config.max_txn_ops;
        self.apply(index, |st| {
            validate::check_txn(req, max_ops)?;
            txn(st, req)
        })
    }

    /// Serves a read-only txn ([`validate::is_read_only`]) at the current revision, outside the
    /// Raft log: it changes nothing, so it needs no index. A txn that writes is refused with
    /// [`Error::Config`] (a caller bug: writes must be applied through [`Store::txn`]).
    pub fn txn_read(&self, req: &TxnRequest) -> Result<TxnResponse> {
        if !validate::is_read_only(req) {
            return Err(Error::Config("txn_read given a txn that writes".into()));
        }
        validate::check_txn(req, self.shared.config.max_txn_ops)?;
        let mut st = self.write()?;
        txn(&mut st, req)
    }

    /// Applies a compaction at `req.revision`: revisions it supersedes become unreadable at once
    /// and their space is reclaimed in the background.
    pub fn compact(
        &self,
        index: u64,
        req: &CompactionRequest,
    ) -> Result<Option<CompactionResponse>> {
        let shared = &self.shared;
        self.apply(index, |st| {
            if req.revision <= st.compact_rev {
                return Err(RequestError::Compacted.into());
            }
            if req.revision > st.rev {
                return Err(RequestError::FutureRevision.into());
            }
            st.compact_rev = req.revision;
            st.pending.dirty = true;
            let mut removed = compact_index(&mut st.index, req.revision);
            // Dropped revisions not yet committed simply never reach disk; only the committed
            // ones (below the first pending record) are left for the compactor.
            if let Some(first) = st.pending.records.first().map(|r| r.rev) {
                let pending = std::mem::take(&mut st.pending.records);
                st.pending.records = pending
                    .into_iter()
                    .filter(|r| removed.binary_search(&r.rev).is_err())
                    .collect();
                st.pending.bytes = st.pending.records.iter().map(Record::encoded_len).sum();
                removed.retain(|r| *r < first);
            }
            // Commit the compaction (with its index) before the compactor removes anything from
            // disk: a crash in between must not reopen at an earlier index with revisions that
            // index still needs already gone.
            st.consistent_index = index;
            commit_locked(st)?;
            let generation = shared.gate.lock().generation;
            shared.compactor.submit(Job {
                generation,
                removed,
            });
            Ok(CompactionResponse {
                header: Some(header(st.rev)),
            })
        })
    }

    /// Blocks until the space of every compaction applied so far has been reclaimed on disk
    /// (etcd's `CompactionRequest.physical`). Answers never depend on it.
    pub fn wait_compacted(&self) {
        self.shared.gate.wait_idle();
    }

    /// Applies a lease grant. `req.id` must be chosen (non-zero) before the request is proposed.
    pub fn lease_grant(
        &self,
        index: u64,
        req: &LeaseGrantRequest,
    ) -> Result<Option<LeaseGrantResponse>> {
        let min_ttl = self.shared.config.min_lease_ttl;
        self.apply(index, |st| {
            if req.id == 0 {
                return Err(RequestError::LeaseNotFound.into());
            }
            if req.ttl > MAX_LEASE_TTL {
                return Err(RequestError::LeaseTtlTooLarge.into());
            }
            if st.leases.contains_key(&req.id) {
                return Err(RequestError::LeaseExists.into());
            }
            let lease = Lease {
                ttl: req.ttl.max(min_ttl),
                ..Lease::default()
            };
            st.pending.leases.insert(req.id, Some(lease.stored(req.id)));
            let ttl = lease.ttl;
            st.leases.insert(req.id, lease);
            Ok(LeaseGrantResponse {
                header: Some(header(st.rev)),
                id: req.id,
                ttl,
                error: String::new(),
            })
        })
    }

    /// Applies a lease revoke (or expiry): the lease's keys are deleted in one revision.
    pub fn lease_revoke(
        &self,
        index: u64,
        req: &LeaseRevokeRequest,
    ) -> Result<Option<LeaseRevokeResponse>> {
        self.apply(index, |st| {
            let Some(lease) = st.leases.get(&req.id) else {
                return Err(RequestError::LeaseNotFound.into());
            };
            let keys: Vec<IndexKey> = lease.keys.iter().cloned().collect();
            let mut w = WriteTxn::begin(st);
            for key in &keys {
                w.delete_range(&KeyRange::Single(key));
            }
            let rev = w.end();
            st.leases.remove(&req.id);
            st.pending.leases.insert(req.id, None);
            Ok(LeaseRevokeResponse {
                header: Some(header(rev)),
            })
        })
    }

    /// Applies lease checkpoints: records each lease's remaining TTL so that a new leader keeps
    /// deadlines instead of granting every lease its full TTL again. Unknown ids are skipped.
    pub fn lease_checkpoint(
        &self,
        index: u64,
        req: &LeaseCheckpointRequest,
    ) -> Result<Option<LeaseCheckpointResponse>> {
        self.apply(index, |st| {
            for cp in &req.checkpoints {
                if let Some(l) = st.leases.get_mut(&cp.id) {
                    l.remaining_ttl = cp.remaining_ttl;
                    st.pending.leases.insert(cp.id, Some(l.stored(cp.id)));
                }
            }
            Ok(LeaseCheckpointResponse {
                header: Some(header(st.rev)),
            })
        })
    }

    /// Records that Raft entry `index` was applied without touching the store (a new leader's
    /// empty entry, a membership change, a request for another part of the node), so that the
    /// consistent index, and the snapshots announced with it, count it.
    pub fn skip(&self, index: u64) -> Result<()> {
        self.apply(index, |_| Ok(())).map(|_| ())
    }

    /// One lease, with its attached keys if `with_keys`.
    pub fn lease(&self, id: i64, with_keys: bool) -> Result<Option<LeaseInfo>> {
        Ok(self.read()?.leases.get(&id).map(|l| l.info(id, with_keys)))
    }

    /// Every lease, by id, without keys.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>> {
        Ok(self
            .read()?
            .leases
            .iter()
            .map(|(id, l)| l.info(*id, false))
            .collect())
    }

    /// Commits pending changes to sled (not necessarily to disk; see [`Store::sync`]). The store
    /// commits by itself when enough is pending; a node also calls this on a timer.
    pub fn commit(&self) -> Result<()> {
        let mut st = self.write()?;
        commit_locked(&mut st)
    }

    /// Commits and makes everything committed durable on disk.
    pub fn sync(&self) -> Result<()> {
        let db = {
            let mut st = self.write()?;
            commit_locked(&mut st)?;
            st.db.clone()
        };
        db.flush()?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        let db = self.read()?.db.clone();
        Ok(db.size_on_disk()?)
    }

    /// Runs `f` as the request applied at `index`; see the type's docs for the contract.
    fn apply<T>(&self, index: u64, f: impl FnOnce(&mut State) -> Result<T>) -> Result<Option<T>> {
        let mut st = self.write()?;
        if index <= st.consistent_index {
            return Ok(None);
        }
        let result = f(&mut st);
        if st.failed {
            return result.map(Some);
        }
        st.consistent_index = index;
        st.pending.dirty = true;
        let cfg = &self.shared.config;
        if st.pending.records.len() >= cfg.commit_records || st.pending.bytes >= cfg.commit_bytes {
            commit_locked(&mut st)?;
        }
        result.map(Some)
    }

    /// Replaces the whole state with `state`, whose tree is `tree` of `generation`.
    pub(crate) fn install(
        &self,
        st: &mut State,
        state: State,
        removed: Vec<Revision>,
        generation: u64,
    ) {
        *st = state;
        self.shared.compactor.submit(Job {
            generation,
            removed,
        });
    }

    pub(crate) fn write_for_restore(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

pub(crate) fn commit_locked(st: &mut State) -> Result<()> {
    let Some(batch) = st.commit_batch() else {
        return Ok(());
    };
    if let Some(mirror) = &mut st.mirror {
        mirror.push(batch.clone());
    }
    if let Err(e) = st.tree.apply_batch(batch) {
        st.failed = true;
        tracing::error!(error = %e, "commit to sled failed; the store refuses further work");
        return Err(e.into());
    }
    st.pending = Pending::default();
    Ok(())
}

/// Drops the revisions a compaction at `at` supersedes from `index`; returns them, sorted.
fn compact_index(index: &mut Index, at: i64) -> Vec<Revision> {
    let mut removed = Vec::new();
    index.retain(|_, e| {
        e.compact(at, &mut removed);
        !e.is_empty()
    });
    removed.sort_unstable();
    removed
}

/// Rebuilds the in-memory state from `tree`. Returns it with the revisions that the persisted
/// compaction drops but that are still on disk (a compaction interrupted by a crash).
pub(crate) fn load(
    config: &Config,
    db: sled::Db,
    tree: sled::Tree,
) -> Result<(State, Vec<Revision>)> {
    let corrupt = |what: String| Error::Corrupt {
        path: config.path.clone(),
        what,
    };
    let meta = match tree.get(record::META_STATE)? {
        Some(v) => MetaState::decode(&v).ok_or_else(|| corrupt("meta state".into()))?,
        None => MetaState {
            revision: 1,
            consistent_index: 0,
            compact_revision: -1,
        },
    };
    let mut leases = Leases::new();
    for item in tree.scan_prefix([record::LEASE_PREFIX]) {
        let (_, v) = item?;
        let l = StoredLease::decode(v.as_ref()).map_err(|e| corrupt(format!("lease: {e}")))?;
        leases.insert(
            l.id,
            Lease {
                ttl: l.ttl,
                remaining_ttl: l.remaining_ttl,
                keys: Default::default(),
            },
        );
    }
    // Gather every record, sort by key then revision, fold into entries and bulk-build the tree:
    // full B-tree nodes take a third less memory than the same map built by random inserts.
    let mut records: Vec<(IndexKey, RevMark, Option<Live>)> = Vec::new();
    for item in tree.scan_prefix([record::BLOCK_PREFIX]) {
        let (k, v) = item?;
        let block =
            record::decode_block(&v).ok_or_else(|| corrupt(format!("block {:?}", k.as_ref())))?;
        for r in block {
            let kv = r
                .decode_kv()
                .ok_or_else(|| corrupt(format!("record {}", r.rev)))?;
            let mark = RevMark {
                rev: r.rev,
                tombstone: r.tombstone,
            };
            let live = (!r.tombstone).then(|| Live {
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                value: kv.value.into_boxed_slice(),
            });
            records.push((IndexKey::from_vec(kv.key), mark, live));
        }
    }
    records.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.rev.cmp(&b.1.rev)));
    let mut entries: Vec<(IndexKey, KeyEntry)> = Vec::new();
    for (key, mark, live) in records {
        match entries.last_mut() {
            Some((k, e)) if *k == key => {
                e.revs.push(mark);
                e.live = live;
            }
            _ => entries.push((
                key,
                KeyEntry {
                    revs: std::iter::once(mark).collect(),
                    live,
                },
            )),
        }
    }
    let mut index: Index = entries.into_iter().collect();
    for (key, entry) in &index {
        if let Some(live) = entry.live.as_ref().filter(|l| l.lease != 0) {
            match leases.get_mut(&live.lease) {
                Some(l) => {
                    l.keys.insert(key.clone());
                }
                None => tracing::warn!(lease = live.lease, "key attached to an unknown lease"),
            }
        }
    }
    let removed = if meta.compact_revision >= 0 {
        compact_index(&mut index, meta.compact_revision)
    } else {
        Vec::new()
    };
    let state = State {
        path: config.path.clone(),
        db,
        tree,
        mirror: None,
        index,
        leases,
        rev: meta.revision,
        compact_rev: meta.compact_revision,
        consistent_index: meta.consistent_index,
        pending: Pending::default(),
        failed: false,
    };
    Ok((state, removed))
}
