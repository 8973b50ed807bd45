//! On-disk encoding: records (one change of one key at one revision) packed into blocks of
//! consecutive revisions, plus the keys of the sled tree.
//!
//! The tree holds, under one-byte prefixes:
//! - `b` + first revision (16 bytes) -> a block: records `[main u64][sub u64][kind u8][len u32][KeyValue]`
//!   in ascending revision order. A block covers revisions from its key up to the next block's key;
//!   compaction rewrites a block in place and never changes its key.
//! - `l` + lease id (8 bytes) -> a `StoredLease`.
//! - `m` + name -> store metadata (`m/state`: revision, consistent index, compact revision).

use prost::Message;
use raftkv_proto::mvccpb::KeyValue;

use crate::revision::Revision;

pub(crate) const BLOCK_PREFIX: u8 = b'b';
pub(crate) const LEASE_PREFIX: u8 = b'l';
pub(crate) const META_STATE: &[u8] = b"m/state";

const PUT: u8 = 0;
const TOMBSTONE: u8 = 1;
const HEADER: usize = Revision::LEN + 1 + 4;

/// One change: the key's `KeyValue` after a put, or (tombstone) just its key and mod revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) rev: Revision,
    pub(crate) tombstone: bool,
    /// The prost-encoded `KeyValue`.
    pub(crate) kv: Vec<u8>,
}

impl Record {
    pub(crate) fn decode_kv(&self) -> Option<KeyValue> {
        KeyValue::decode(self.kv.as_slice()).ok()
    }

    pub(crate) fn encoded_len(&self) -> usize {
        HEADER + self.kv.len()
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rev.to_bytes());
        out.push(if self.tombstone { TOMBSTONE } else { PUT });
        out.extend_from_slice(&(self.kv.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.kv);
    }

    /// The revision and encoded length of the record at the front of `buf`, without copying it.
    pub(crate) fn peek(buf: &[u8]) -> Option<(Revision, usize)> {
        let rev = Revision::from_bytes(buf)?;
        let len_at = Revision::LEN + 1;
        let len = u32::from_be_bytes(buf.get(len_at..HEADER)?.try_into().ok()?) as usize;
        (buf.len() >= HEADER + len).then_some((rev, HEADER + len))
    }

    /// Decodes one record from the front of `buf`, returning it and the rest.
    pub(crate) fn decode_from(buf: &[u8]) -> Option<(Record, &[u8])> {
        if buf.len() < HEADER {
            return None;
        }
        let rev = Revision::from_bytes(buf)?;
        let tombstone = match buf[Revision::LEN] {
            PUT => false,
            TOMBSTONE => true,
            _ => return None,
        };
        let len_at = Revision::LEN + 1;
        let len = u32::from_be_bytes(buf[len_at..HEADER].try_into().ok()?) as usize;
        let body = buf.get(HEADER..HEADER + len)?;
        let record = Record {
            rev,
            tombstone,
            kv: body.to_vec(),
        };
        Some((record, &buf[HEADER + len..]))
    }
}

/// Encodes a live key's `KeyValue` straight from borrowed parts, byte for byte what prost would
/// produce (fields in number order, zero values omitted), without building the message first.
pub(crate) fn encode_kv(key: &[u8], mod_revision: i64, live: &crate::index::Live) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
        if !b.is_empty() {
            out.push(tag);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
    fn int(out: &mut Vec<u8>, tag: u8, v: i64) {
        if v != 0 {
            out.push(tag);
            varint(out, v as u64);
        }
    }
    let mut out = Vec::with_capacity(key.len() + live.value.len() + 48);
    bytes(&mut out, 0x0a, key);
    int(&mut out, 0x10, live.create_revision);
    int(&mut out, 0x18, mod_revision);
    int(&mut out, 0x20, live.version);
    bytes(&mut out, 0x2a, &live.value);
    int(&mut out, 0x30, live.lease);
    out
}

/// Encodes records into one block value.
pub(crate) fn encode_block<'r>(records: impl IntoIterator<Item = &'r Record>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode_into(&mut out);
    }
    out
}

/// Decodes a whole block; `None` if any record is malformed.
pub(crate) fn decode_block(mut buf: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (r, rest) = Record::decode_from(buf)?;
        out.push(r);
        buf = rest;
    }
    Some(out)
}

pub(crate) fn block_key(first: Revision) -> [u8; 1 + Revision::LEN] {
    let mut k = [0u8; 1 + Revision::LEN];
    k[0] = BLOCK_PREFIX;
    k[1..].copy_from_slice(&first.to_bytes());
    k
}

pub(crate) fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE_PREFIX;
    k[1..].copy_from_slice(&(id as u64).to_be_bytes());
    k
}

/// The persisted scalar state, written with every commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MetaState {
    pub(crate) revision: i64,
    pub(crate) consistent_index: u64,
    pub(crate) compact_revision: i64,
}

impl MetaState {
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.revision.to_be_bytes());
        b[8..16].copy_from_slice(&self.consistent_index.to_be_bytes());
        b[16..].copy_from_slice(&self.compact_revision.to_be_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 24 {
            return None;
        }
        Some(MetaState {
            revision: i64::from_be_bytes(b[..8].try_into().ok()?),
            consistent_index: u64::from_be_bytes(b[8..16].try_into().ok()?),
            compact_revision: i64::from_be_bytes(b[16..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_reject_garbage() {
        let records = vec![
            Record {
                rev: Revision::new(2, 0),
                tombstone: false,
                kv: KeyValue {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                }
                .encode_to_vec(),
            },
            Record {
                rev: Revision::new(3, 1),
                tombstone: true,
                kv: vec![],
            },
        ];
        let block = encode_block(&records);
        assert_eq!(decode_block(&block), Some(records.clone()));
        assert_eq!(decode_block(&block[..block.len() - 1]), None);
        let mut bad = block.clone();
        bad[16] = 9;
        assert_eq!(decode_block(&bad), None);
        assert_eq!(
            records[0].encoded_len() + records[1].encoded_len(),
            block.len()
        );
    }

    #[test]
    fn hand_encoding_matches_prost() {
        for (value, lease, create) in [
            (vec![7u8; 300], 0, 2),
            (vec![], -5, 1),
            (vec![1], 1 << 40, 9),
        ] {
            let live = crate::index::Live {
                create_revision: create,
                version: 3,
                lease,
                value: value.clone().into(),
            };
            let want = KeyValue {
                key: b"some/key".to_vec(),
                create_revision: create,
                mod_revision: 1 << 33,
                version: 3,
                value,
                lease,
            }
            .encode_to_vec();
            assert_eq!(encode_kv(b"some/key", 1 << 33, &live), want);
        }
    }

    #[test]
    fn meta_round_trips() {
        let m = MetaState {
            revision: 7,
            consistent_index: 99,
            compact_revision: -1,
        };
        assert_eq!(MetaState::decode(&m.encode()), Some(m));
        assert_eq!(MetaState::decode(&[0; 3]), None);
    }
}
