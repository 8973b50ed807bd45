//! Point-in-time export and import of the whole store, for Raft snapshots and backups.
//!
//! The stream is `RKVSNAP1`, then frames `[tag u8][len u32 BE][payload]`: one `M` (a
//! `StoreMeta`), `L` per lease (a `StoredLease`), `B` per block of records, and a final `E`
//! whose payload is the CRC-32 of every byte before it. Because the store is multi-version, an
//! export streams the revisions up to its own without stopping writes; it only holds off
//! physical compaction while it runs.

use std::io::{Read, Write};

use prost::Message;
use raftkv_proto::raftkvpb::{StoreMeta, StoredLease};

use crate::compactor::Hold;
use crate::error::{Error, Result};
use crate::record::{self, MetaState, Record};
use crate::revision::Revision;
use crate::store::{load, tree_name, Store, ACTIVE};

const MAGIC: &[u8; 8] = b"RKVSNAP1";
const TAG_META: u8 = b'M';
const TAG_LEASE: u8 = b'L';
const TAG_BLOCK: u8 = b'B';
const TAG_END: u8 = b'E';
const MAX_FRAME: usize = 64 << 20;
const BATCH_BLOCKS: usize = 64;

/// A consistent view of the store at one revision, ready to be streamed with
/// [`Snapshot::write_to`]. Writes continue while it exists.
pub struct Snapshot {
    meta: MetaState,
    leases: Vec<StoredLease>,
    /// Records that were not committed when the snapshot was taken.
    pending: Vec<Record>,
    tree: sled::Tree,
    _hold: Hold,
}

impl Snapshot {
    /// The store revision the snapshot captures.
    pub fn revision(&self) -> i64 {
        self.meta.revision
    }

    /// The Raft index of the last request the snapshot includes.
    pub fn consistent_index(&self) -> u64 {
        self.meta.consistent_index
    }

    /// Streams the snapshot; returns the bytes written.
    pub fn write_to(&self, w: &mut impl Write) -> Result<u64> {
        let mut out = Framer {
            w,
            crc: crc32fast::Hasher::new(),
            written: 0,
        };
        out.raw(MAGIC)?;
        let meta = StoreMeta {
            revision: self.meta.revision,
            compact_revision: self.meta.compact_revision,
            consistent_index: self.meta.consistent_index,
        };
        out.frame(TAG_META, &meta.encode_to_vec())?;
        for l in &self.leases {
            out.frame(TAG_LEASE, &l.encode_to_vec())?;
        }
        // Committed blocks hold everything below the first pending record; later blocks belong
        // to writes after the snapshot (or repeat its pending records) and are skipped.
        let bound = self
            .pending
            .first()
            .map_or(Revision::new(self.meta.revision + 1, 0), |r| r.rev);
        for item in self.tree.scan_prefix([record::BLOCK_PREFIX]) {
            let (k, v) = item?;
            let records = record::decode_block(&v).ok_or_else(|| Error::Corrupt {
                path: Default::default(),
                what: format!("block {:?}", k.as_ref()),
            })?;
            let kept: Vec<&Record> = records.iter().filter(|r| r.rev < bound).collect();
            if kept.is_empty() {
                break;
            }
            out.frame(TAG_BLOCK, &record::encode_block(kept))?;
        }
        for chunk in self.pending.chunks(1000) {
            out.frame(TAG_BLOCK, &record::encode_block(chunk))?;
        }
        let crc = out.crc.clone().finalize();
        out.frame(TAG_END, &crc.to_be_bytes())?;
        Ok(out.written)
    }
}

struct Framer<'w, W: Write> {
    w: &'w mut W,
    crc: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Framer<'_, W> {
    fn raw(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        self.crc.update(b);
        self.written += b.len() as u64;
        Ok(())
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> Result<()> {
        self.raw(&[tag])?;
        self.raw(&(payload.len() as u32).to_be_bytes())?;
        self.raw(payload)
    }
}

impl Store {
    /// Captures the store at its current revision. Stream it with [`Snapshot::write_to`].
    pub fn snapshot(&self) -> Result<Snapshot> {
        let hold = self.gate().hold();
        let st = self.read()?;
        Ok(Snapshot {
            meta: st.meta(),
            leases: st.leases.iter().map(|(id, l)| l.stored(*id)).collect(),
            pending: st.pending.records.clone(),
            tree: st.tree.clone(),
            _hold: hold,
        })
    }

    /// Replaces the whole store with a snapshot stream. The stream is written to a fresh tree
    /// and verified end to end before it becomes active, so a bad or truncated stream (or a
    /// crash part way) leaves the store as it was.
    pub fn restore(&self, r: &mut impl Read) -> Result<()> {
        let _copy = self.copy();
        let mut st = self.write_for_restore();
        let mut gate = self.gate().lock();
        let generation = gate.generation + 1;
        let name = tree_name(generation);
        let db = st.db.clone();
        db.drop_tree(&name)?;
        let tree = db.open_tree(&name)?;
        if let Err(e) = import(&tree, r) {
            drop(tree);
            db.drop_tree(&name)?;
            return Err(e);
        }
        db.insert(ACTIVE, &generation.to_be_bytes())?;
        db.flush()?;
        let old = st.tree.name();
        let (state, removed) = load(self.config(), db.clone(), tree)?;
        db.drop_tree(old)?;
        gate.generation = generation;
        gate.tree = Some(state.tree.clone());
        drop(gate);
        self.install(&mut st, state, removed, generation);
        tracing::info!(
            revision = st.rev,
            consistent_index = st.consistent_index,
            "store restored from snapshot"
        );
        Ok(())
    }
}

/// Reads a whole stream into `tree`, verifying it as it goes.
fn import(tree: &sled::Tree, r: &mut impl Read) -> Result<()> {
    let bad = |m: &str| Error::BadSnapshot(m.to_string());
    let mut crc = crc32fast::Hasher::new();
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a raftkv snapshot (bad magic)"));
    }
    crc.update(&magic);
    let mut meta: Option<StoreMeta> = None;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut last_rev: Option<Revision> = None;
    loop {
        let mut head = [0u8; 5];
        read_exact(r, &mut head)?;
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(bad("frame too large"));
        }
        let mut payload = vec![0u8; len];
        read_exact(r, &mut payload)?;
        if head[0] == TAG_END {
            let want = crc.finalize();
            let got = payload
                .as_slice()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| bad("end frame"))?;
            if want != got {
                return Err(bad("checksum mismatch"));
            }
            break;
        }
        crc.update(&head);
        crc.update(&payload);
        match head[0] {
            TAG_META if meta.is_none() => {
                meta = Some(StoreMeta::decode(payload.as_slice()).map_err(|_| bad("meta"))?);
            }
            TAG_LEASE if meta.is_some() => {
                let l = StoredLease::decode(payload.as_slice()).map_err(|_| bad("lease"))?;
                batch.insert(&record::lease_key(l.id), payload);
                in_batch += 1;
            }
            TAG_BLOCK if meta.is_some() => {
                let records = record::decode_block(&payload).ok_or_else(|| bad("block"))?;
                let (Some(first), Some(last)) = (records.first(), records.last()) else {
                    return Err(bad("empty block"));
                };
                if last_rev.is_some_and(|l| first.rev <= l)
                    || records.iter().any(|r| r.decode_kv().is_none())
                {
                    return Err(bad("block out of order or undecodable"));
                }
                last_rev = Some(last.rev);
                batch.insert(&record::block_key(first.rev), payload);
                in_batch += 1;
            }
            _ => return Err(bad("unexpected frame")),
        }
        if in_batch >= BATCH_BLOCKS {
            tree.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    let meta = meta.ok_or_else(|| bad("no meta frame"))?;
    let state = MetaState {
        revision: meta.revision,
        consistent_index: meta.consistent_index,
        compact_revision: meta.compact_revision,
    };
    batch.insert(record::META_STATE, &state.encode());
    tree.apply_batch(batch)?;
    Ok(())
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::BadSnapshot("truncated stream".into()),
        _ => Error::SnapshotIo(e),
    })
}
