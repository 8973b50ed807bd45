//! The store's state behind its lock: the key index, the lease table, the scalars, and the
//! changes applied in memory but not yet committed to sled.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use raftkv_proto::mvccpb::KeyValue;
use raftkv_proto::raftkvpb::StoredLease;

use crate::error::{Error, Result};
use crate::index::{Index, KeyEntry, Live};
use crate::lease::Leases;
use crate::record::{self, MetaState, Record};
use crate::revision::Revision;

/// Largest block written by one commit; bigger pending sets are split. Small blocks keep sled's
/// pages small, which its cache needs in order to evict at all (sled 0.34 never evicts the last
/// page of a cache shard): at 64 KiB sled held a full copy of every block in memory.
const BLOCK_BYTES: usize = 4 << 10;

/// Applied but uncommitted changes, in revision order.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) records: Vec<Record>,
    pub(crate) bytes: usize,
    /// Lease rows to write (`Some`) or delete (`None`).
    pub(crate) leases: BTreeMap<i64, Option<StoredLease>>,
    /// Scalars changed since the last commit.
    pub(crate) dirty: bool,
}

impl Pending {
    pub(crate) fn push(&mut self, record: Record) {
        self.bytes += record.encoded_len();
        self.records.push(record);
        self.dirty = true;
    }

    pub(crate) fn get(&self, rev: Revision) -> Option<&Record> {
        let i = self.records.binary_search_by_key(&rev, |r| r.rev).ok()?;
        self.records.get(i)
    }
}

pub(crate) struct State {
    pub(crate) path: PathBuf,
    /// The live sled database (it changes when the store is defragmented).
    pub(crate) db: sled::Db,
    /// The active tree of `db` (it changes when a snapshot is restored or on defragment).
    pub(crate) tree: sled::Tree,
    /// While a defragmentation copies the database: every batch committed since it began, to
    /// replay onto the copy.
    pub(crate) mirror: Option<Vec<sled::Batch>>,
    pub(crate) index: Index,
    pub(crate) leases: Leases,
    pub(crate) rev: i64,
    /// -1 until the first compaction, as in etcd.
    pub(crate) compact_rev: i64,
    pub(crate) consistent_index: u64,
    pub(crate) pending: Pending,
    /// Set when a commit failed: memory is ahead of disk and must not be used.
    pub(crate) failed: bool,
}

impl State {
    pub(crate) fn meta(&self) -> MetaState {
        MetaState {
            revision: self.rev,
            consistent_index: self.consistent_index,
            compact_revision: self.compact_rev,
        }
    }

    pub(crate) fn corrupt(&self, what: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// The `KeyValue` stored at `rev` for `key` (a put revision the index holds).
    pub(crate) fn kv_for(&self, key: &[u8], entry: &KeyEntry, rev: Revision) -> Result<KeyValue> {
        if entry.last() == Some(rev) {
            if let Some(live) = &entry.live {
                return Ok(live_kv(key, rev, live));
            }
        }
        let record = match self.pending.get(rev) {
            Some(r) => r.clone(),
            None => self.stored_record(rev)?.ok_or_else(|| {
                self.corrupt(format!("revision {rev} of an indexed key is missing"))
            })?,
        };
        record
            .decode_kv()
            .ok_or_else(|| self.corrupt(format!("record {rev} does not decode")))
    }

    /// Reads the committed record at `rev` from sled.
    pub(crate) fn stored_record(&self, rev: Revision) -> Result<Option<Record>> {
        let lo = record::block_key(Revision::default());
        let Some(item) = self.tree.range(lo..=record::block_key(rev)).next_back() else {
            return Ok(None);
        };
        let (_, block) = item?;
        find_in_block(&block, rev).map_err(|()| self.corrupt(format!("block holding {rev}")))
    }

    /// The sled batch that commits everything pending, or `None` when nothing changed.
    pub(crate) fn commit_batch(&self) -> Option<sled::Batch> {
        let p = &self.pending;
        if !p.dirty && p.records.is_empty() && p.leases.is_empty() {
            return None;
        }
        let mut batch = sled::Batch::default();
        let mut start = 0;
        while start < p.records.len() {
            let mut end = start;
            let mut size = 0;
            while end < p.records.len() && (end == start || size < BLOCK_BYTES) {
                size += p.records[end].encoded_len();
                end += 1;
            }
            let chunk = &p.records[start..end];
            batch.insert(
                &record::block_key(chunk[0].rev),
                record::encode_block(chunk),
            );
            start = end;
        }
        for (id, lease) in &p.leases {
            match lease {
                Some(l) => batch.insert(&record::lease_key(*id), l.encode_to_vec()),
                None => batch.remove(&record::lease_key(*id)),
            }
        }
        batch.insert(record::META_STATE, &self.meta().encode());
        Some(batch)
    }
}

/// Builds the full `KeyValue` of a live key.
pub(crate) fn live_kv(key: &[u8], rev: Revision, live: &Live) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: live.create_revision,
        mod_revision: rev.main,
        version: live.version,
        value: live.value.to_vec(),
        lease: live.lease,
    }
}

/// Finds the record at `rev` in an encoded block, copying only that record.
fn find_in_block(mut buf: &[u8], rev: Revision) -> Result<Option<Record>, ()> {
    while !buf.is_empty() {
        let (at, len) = Record::peek(buf).ok_or(())?;
        if at > rev {
            return Ok(None);
        }
        if at == rev {
            return Record::decode_from(buf).map(|(r, _)| Some(r)).ok_or(());
        }
        buf = &buf[len..];
    }
    Ok(None)
}
