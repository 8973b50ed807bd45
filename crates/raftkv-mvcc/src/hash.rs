//! The store's content hash at a revision (etcd's HashKV): members that applied the same log
//! hold the same history, so equal hashes at one revision mean no member's store has diverged.
//! This is raftkv's corruption check.

use prost::Message;
use raftkv_proto::etcdserverpb::RangeRequest;

use crate::error::{RequestError, Result};
use crate::store::Store;

/// What [`Store::hash_kv`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC32 over the store's content at the compact revision, then every event up to
    /// `revision`, in order.
    pub hash: u32,
    /// The compact revision the hash starts from.
    pub compact_revision: i64,
    /// The revision the hash covers.
    pub revision: i64,
}

impl Store {
    /// Hashes everything the store can still show up to `revision` (0 = current): every key as
    /// of the compact revision, then every event after it. Compaction moves the starting point,
    /// so compare hashes taken at the same revision with the same compact revision.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash> {
        let current = self.revision()?;
        let rev = if revision <= 0 { current } else { revision };
        if rev > current {
            return Err(RequestError::FutureRevision.into());
        }
        let compact = self.compact_revision()?;
        if rev < compact {
            return Err(RequestError::Compacted.into());
        }
        let base = compact.max(1);
        let mut h = crc32fast::Hasher::new();
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: base,
            ..Default::default()
        };
        for kv in self.range(&all)?.kvs {
            h.update(&kv.encode_to_vec());
        }
        let mut from = base + 1;
        while from <= rev {
            let batch = self.history(from, 1024, false)?;
            for e in &batch.events {
                if e.kv.as_ref().is_some_and(|kv| kv.mod_revision > rev) {
                    break;
                }
                h.update(&e.encode_to_vec());
            }
            if batch.next <= from {
                break;
            }
            from = batch.next;
        }
        Ok(KvHash {
            hash: h.finalize(),
            compact_revision: compact,
            revision: rev,
        })
    }
}
