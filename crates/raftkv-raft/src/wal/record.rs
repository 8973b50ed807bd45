//! Record framing and payload encoding of the WAL.
//!
//! A segment file is a sequence of records:
//!
//! ```text
//! record  = len:u32le  hcrc:u32le  bcrc:u32le  body[len]
//! body    = kind:u8  payload
//! hcrc    = crc32(len as 4 LE bytes)        (so a damaged length is recognised as damage)
//! bcrc    = crc32(body)
//! ```
//!
//! The header checksum is what lets recovery tell a torn tail from corruption in the middle: a
//! valid header can be trusted to say where the next record starts, and after an invalid one the
//! rest of the file can be searched for any valid record (a 64-bit chance of a false match).
//!
//! Payloads by kind: protobuf messages of raft-rs (`HardState`, `ConfState`, `SnapshotMetadata`),
//! an entry as `index:u64le term:u64le` followed by the protobuf `Entry` (replay reads index and
//! term without decoding the entry), a compaction as `to:u64le`, and the segment header.

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::error::{Damage, Error, Result};

/// Bytes of the record header (`len`, `hcrc`, `bcrc`).
pub(crate) const HEADER_LEN: usize = 12;
/// Largest body accepted, written or read (a raftkv request is at most 1.5 MiB).
pub(crate) const MAX_BODY_LEN: usize = 256 << 20;
/// Bytes an entry record's body adds to the protobuf encoding of the entry (kind, index, term).
pub(crate) const ENTRY_BODY_OVERHEAD: u32 = 1 + 8 + 8;
/// Version written into every segment header.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Record kinds, the first byte of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// First record of every segment: the log's state when the segment was created.
    SegmentHeader = 1,
    /// One log entry; replaces any entry at the same or a higher index.
    Entry = 2,
    /// The hard state (term, vote, commit).
    HardState = 3,
    /// The configuration state.
    ConfState = 4,
    /// An installed snapshot: discards the whole log, sets the conf state, and sets the hard
    /// state's commit to the snapshot index (term to the larger of the two) in the same record.
    Snapshot = 5,
    /// Discards entries below an index.
    Compact = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::SegmentHeader,
            2 => Kind::Entry,
            3 => Kind::HardState,
            4 => Kind::ConfState,
            5 => Kind::Snapshot,
            6 => Kind::Compact,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::SegmentHeader => "segment header",
            Kind::Entry => "entry",
            Kind::HardState => "hard state",
            Kind::ConfState => "conf state",
            Kind::Snapshot => "snapshot",
            Kind::Compact => "compact",
        }
    }
}

/// The log's state when a segment was created, so a segment can be replayed without the ones
/// before it once those are deleted.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SegmentHeader {
    /// The segment's sequence number (also in its file name).
    pub(crate) seq: u64,
    /// First index of the log when the segment was created.
    pub(crate) log_first: u64,
    /// Last index of the log when the segment was created (the file name holds `log_last + 1`).
    pub(crate) log_last: u64,
    pub(crate) hard_state: HardState,
    pub(crate) conf_state: ConfState,
    pub(crate) snapshot: SnapshotMetadata,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    SegmentHeader(SegmentHeader),
    /// An entry's index and term; the entry itself is decoded only when read.
    Entry {
        index: u64,
        term: u64,
    },
    HardState(HardState),
    ConfState(ConfState),
    Snapshot(SnapshotMetadata),
    Compact(u64),
}

/// Appends one framed record to `buf`; `payload` writes the bytes after the kind. Returns the
/// body length.
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    kind: Kind,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<u32> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.push(kind as u8);
    if let Err(e) = payload(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let body_len = buf.len() - start - HEADER_LEN;
    if body_len > MAX_BODY_LEN {
        buf.truncate(start);
        return Err(Error::RecordTooLarge {
            len: body_len,
            max: MAX_BODY_LEN,
        });
    }
    let len = body_len as u32;
    let len_bytes = len.to_le_bytes();
    let bcrc = crc32fast::hash(&buf[start + HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&len_bytes);
    buf[start + 4..start + 8].copy_from_slice(&crc32fast::hash(&len_bytes).to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&bcrc.to_le_bytes());
    Ok(len)
}

fn put_msg(buf: &mut Vec<u8>, what: &'static str, m: &impl Message) -> Result<()> {
    m.write_to_vec(buf)
        .map_err(|source| Error::Encode { what, source })
}

fn put_len_msg(buf: &mut Vec<u8>, what: &'static str, m: &impl Message) -> Result<()> {
    buf.extend_from_slice(&m.compute_size().to_le_bytes());
    put_msg(buf, what, m)
}

/// Encodes an entry record.
pub(crate) fn encode_entry(buf: &mut Vec<u8>, e: &Entry) -> Result<u32> {
    encode(buf, Kind::Entry, |b| {
        b.extend_from_slice(&e.index.to_le_bytes());
        b.extend_from_slice(&e.term.to_le_bytes());
        put_msg(b, "Entry", e)
    })
}

/// Encodes a hard state record.
pub(crate) fn encode_hard_state(buf: &mut Vec<u8>, hs: &HardState) -> Result<u32> {
    encode(buf, Kind::HardState, |b| put_msg(b, "HardState", hs))
}

/// Encodes a conf state record.
pub(crate) fn encode_conf_state(buf: &mut Vec<u8>, cs: &ConfState) -> Result<u32> {
    encode(buf, Kind::ConfState, |b| put_msg(b, "ConfState", cs))
}

/// Encodes a snapshot record.
pub(crate) fn encode_snapshot(buf: &mut Vec<u8>, meta: &SnapshotMetadata) -> Result<u32> {
    encode(buf, Kind::Snapshot, |b| {
        put_msg(b, "SnapshotMetadata", meta)
    })
}

/// Encodes a compaction record.
pub(crate) fn encode_compact(buf: &mut Vec<u8>, to: u64) -> Result<u32> {
    encode(buf, Kind::Compact, |b| {
        b.extend_from_slice(&to.to_le_bytes());
        Ok(())
    })
}

/// Encodes a segment header record.
pub(crate) fn encode_segment_header(buf: &mut Vec<u8>, h: &SegmentHeader) -> Result<u32> {
    encode(buf, Kind::SegmentHeader, |b| {
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&h.seq.to_le_bytes());
        b.extend_from_slice(&h.log_first.to_le_bytes());
        b.extend_from_slice(&h.log_last.to_le_bytes());
        put_len_msg(b, "HardState", &h.hard_state)?;
        put_len_msg(b, "ConfState", &h.conf_state)?;
        put_len_msg(b, "SnapshotMetadata", &h.snapshot)
    })
}

/// A record found in a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framed<'a> {
    /// The body (kind byte and payload).
    pub(crate) body: &'a [u8],
    /// Offset just past the record.
    pub(crate) end: usize,
}

/// Checks the record starting at `off`: header checksum, length, body checksum.
pub(crate) fn frame_at(bytes: &[u8], off: usize) -> Result<Framed<'_>, Damage> {
    let Some(header) = bytes.get(off..off + HEADER_LEN) else {
        return Err(Damage::IncompleteHeader);
    };
    let len_bytes: [u8; 4] = header[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes);
    let hcrc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let bcrc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if len == 0 || len as usize > MAX_BODY_LEN || crc32fast::hash(&len_bytes) != hcrc {
        return Err(Damage::BadHeader);
    }
    let start = off + HEADER_LEN;
    let end = start + len as usize;
    let Some(body) = bytes.get(start..end) else {
        return Err(Damage::IncompleteRecord { len });
    };
    if crc32fast::hash(body) != bcrc {
        return Err(Damage::Checksum);
    }
    Ok(Framed { body, end })
}

/// Whether any valid record starts at or after `from`. Used to decide whether a damaged record
/// is the torn tail of the file or corruption followed by good data.
pub(crate) fn valid_record_from(bytes: &[u8], from: usize) -> Option<usize> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    (from..=bytes.len() - HEADER_LEN).find(|&off| {
        // Cheap length bounds first; almost every offset fails them or the header checksum.
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        len != 0 && len <= bytes.len() - off - HEADER_LEN && frame_at(bytes, off).is_ok()
    })
}

struct Reader<'a> {
    kind: Kind,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: impl Into<String>) -> Damage {
        Damage::Malformed {
            kind: self.kind.name(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Damage> {
        if self.buf.len() < n {
            return Err(self.malformed(format!("needs {n} more bytes, has {}", self.buf.len())));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Damage> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, Damage> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn msg<M: Message>(&self, bytes: &[u8]) -> Result<M, Damage> {
        M::parse_from_bytes(bytes).map_err(|e| self.malformed(e.to_string()))
    }

    fn len_msg<M: Message>(&mut self) -> Result<M, Damage> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        self.msg(bytes)
    }

    fn rest_msg<M: Message>(&mut self) -> Result<M, Damage> {
        let bytes = std::mem::take(&mut self.buf);
        self.msg(bytes)
    }

    fn end(&self) -> Result<(), Damage> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

/// Decodes a record body (as returned by [`frame_at`]).
pub(crate) fn decode(body: &[u8]) -> Result<Record, Damage> {
    let kind = Kind::from_u8(body[0]).ok_or(Damage::UnknownKind(body[0]))?;
    let mut r = Reader {
        kind,
        buf: &body[1..],
    };
    let rec = match kind {
        Kind::SegmentHeader => {
            let version = r.u32()?;
            if version != FORMAT_VERSION {
                return Err(r.malformed(format!("unsupported format version {version}")));
            }
            let h = SegmentHeader {
                seq: r.u64()?,
                log_first: r.u64()?,
                log_last: r.u64()?,
                hard_state: r.len_msg()?,
                conf_state: r.len_msg()?,
                snapshot: r.len_msg()?,
            };
            r.end()?;
            Record::SegmentHeader(h)
        }
        Kind::Entry => {
            let index = r.u64()?;
            let term = r.u64()?;
            Record::Entry { index, term }
        }
        Kind::HardState => Record::HardState(r.rest_msg()?),
        Kind::ConfState => Record::ConfState(r.rest_msg()?),
        Kind::Snapshot => Record::Snapshot(r.rest_msg()?),
        Kind::Compact => {
            let to = r.u64()?;
            r.end()?;
            Record::Compact(to)
        }
    };
    Ok(rec)
}

/// Decodes the full entry of an entry record body, checking it against the index and term the
/// record header carries.
pub(crate) fn decode_entry(body: &[u8]) -> Result<Entry, Damage> {
    if body.first() != Some(&(Kind::Entry as u8)) {
        return Err(Damage::Malformed {
            kind: Kind::Entry.name(),
            reason: format!("record kind is {:?}", body.first()),
        });
    }
    let mut r = Reader {
        kind: Kind::Entry,
        buf: &body[1..],
    };
    let index = r.u64()?;
    let term = r.u64()?;
    let e: Entry = r.rest_msg()?;
    if e.index != index || e.term != term {
        return Err(r.malformed(format!(
            "entry {}/{} filed as {index}/{term}",
            e.index, e.term
        )));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn one(buf: &[u8]) -> Record {
        let f = frame_at(buf, 0).expect("frame");
        assert_eq!(f.end, buf.len());
        decode(f.body).expect("decode")
    }

    #[test]
    fn every_kind_round_trips() {
        let hs = HardState {
            term: 7,
            vote: 2,
            commit: 99,
            ..Default::default()
        };
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![9],
            ..Default::default()
        };
        let meta = SnapshotMetadata {
            index: 50,
            term: 4,
            conf_state: Some(cs.clone()).into(),
            ..Default::default()
        };
        let header = SegmentHeader {
            seq: 3,
            log_first: 51,
            log_last: 80,
            hard_state: hs.clone(),
            conf_state: cs.clone(),
            snapshot: meta.clone(),
        };

        let mut b = Vec::new();
        encode_hard_state(&mut b, &hs).unwrap();
        assert_eq!(one(&b), Record::HardState(hs));
        b.clear();
        encode_conf_state(&mut b, &cs).unwrap();
        assert_eq!(one(&b), Record::ConfState(cs));
        b.clear();
        encode_snapshot(&mut b, &meta).unwrap();
        assert_eq!(one(&b), Record::Snapshot(meta));
        b.clear();
        encode_compact(&mut b, 77).unwrap();
        assert_eq!(one(&b), Record::Compact(77));
        b.clear();
        encode_segment_header(&mut b, &header).unwrap();
        assert_eq!(one(&b), Record::SegmentHeader(header));
        b.clear();
        let e = entry(12, 3, b"hello");
        let len = encode_entry(&mut b, &e).unwrap();
        assert_eq!(len, e.compute_size() + ENTRY_BODY_OVERHEAD);
        assert_eq!(one(&b), Record::Entry { index: 12, term: 3 });
        let f = frame_at(&b, 0).unwrap();
        assert_eq!(decode_entry(f.body).unwrap(), e);
    }

    #[test]
    fn header_layout_is_stable() {
        let mut b = Vec::new();
        encode_compact(&mut b, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(b.len(), HEADER_LEN + 9);
        assert_eq!(&b[0..4], &9u32.to_le_bytes());
        assert_eq!(
            &b[4..8],
            &crc32fast::hash(&9u32.to_le_bytes()).to_le_bytes()
        );
        assert_eq!(&b[8..12], &crc32fast::hash(&b[12..]).to_le_bytes());
        assert_eq!(b[12], Kind::Compact as u8);
        assert_eq!(&b[13..], &0x0102_0304_0506_0708u64.to_le_bytes());
    }

    #[test]
    fn damage_is_classified() {
        let mut b = Vec::new();
        encode_entry(&mut b, &entry(1, 1, b"abcdef")).unwrap();
        let n = b.len();
        assert_eq!(frame_at(&b[..5], 0), Err(Damage::IncompleteHeader));
        assert!(matches!(
            frame_at(&b[..n - 1], 0),
            Err(Damage::IncompleteRecord { .. })
        ));
        let mut flipped = b.clone();
        flipped[n - 1] ^= 0x40;
        assert_eq!(frame_at(&flipped, 0), Err(Damage::Checksum));
        let mut bad_len = b.clone();
        bad_len[0] ^= 0x01;
        assert_eq!(frame_at(&bad_len, 0), Err(Damage::BadHeader));
        assert_eq!(frame_at(&[0u8; 64], 0), Err(Damage::BadHeader));
    }

    #[test]
    fn unknown_kind_and_trailing_bytes_are_malformed() {
        let mut b = Vec::new();
        encode(&mut b, Kind::Compact, |b| {
            b.extend_from_slice(&[0; 9]);
            Ok(())
        })
        .unwrap();
        let f = frame_at(&b, 0).unwrap();
        assert!(matches!(decode(f.body), Err(Damage::Malformed { .. })));
        assert_eq!(decode(&[42, 1, 2]), Err(Damage::UnknownKind(42)));
    }

    #[test]
    fn finds_valid_record_after_garbage() {
        let mut b = vec![0xAB; 37];
        let at = b.len();
        encode_compact(&mut b, 5).unwrap();
        assert_eq!(valid_record_from(&b, 0), Some(at));
        assert_eq!(valid_record_from(&b, at + 1), None);
        assert_eq!(valid_record_from(&[0u8; 100], 0), None);
    }
}
