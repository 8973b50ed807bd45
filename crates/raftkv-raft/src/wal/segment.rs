//! Segment files: their names, listing a WAL directory, and scanning one file into records.
//!
//! A segment is named `<seq>-<first index>.wal`, both 16 hex digits (etcd's convention): `seq`
//! counts segments from 1 without gaps, `first index` is the index the next entry appended was
//! going to have when the segment was created (a hint for humans; replay does not rely on it).

use std::fs;
use std::path::{Path, PathBuf};

use super::record::{self, Framed};
use crate::error::{Damage, Error, Result};

/// Extension of segment files.
const EXT: &str = "wal";

/// File name of a segment.
pub(crate) fn file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.{EXT}")
}

/// Parses a segment file name into `(seq, first_index)`.
pub(crate) fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(EXT)?.strip_suffix('.')?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

/// A segment file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) seq: u64,
    pub(crate) first_index: u64,
    pub(crate) path: PathBuf,
}

/// Lists the segment files of `dir` in sequence order, checking that no sequence number is
/// missing. Files not ending in `.wal` are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| Error::io("read directory", dir, e))?;
        let path = ent.path();
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(&format!(".{EXT}")) {
            continue;
        }
        let (seq, first_index) =
            parse_name(name).ok_or(Error::BadSegmentName { path: path.clone() })?;
        out.push(Listed {
            seq,
            first_index,
            path,
        });
    }
    out.sort_by_key(|l| l.seq);
    for w in out.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(Error::MissingSegment {
                path: w[1].path.clone(),
                previous_seq: w[0].seq,
            });
        }
    }
    Ok(out)
}

/// Where the valid records of a segment stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    /// Offset of the first damaged record.
    pub(crate) offset: usize,
    /// What is wrong with it.
    pub(crate) damage: Damage,
    /// Whether a valid record follows the damage: if so it is corruption in the middle, never a
    /// torn tail.
    pub(crate) valid_data_follows: bool,
}

/// The result of scanning a segment's bytes.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// `(offset, record)` for every valid record before the first damage.
    pub(crate) records: Vec<(usize, Framed<'a>)>,
    /// The first damage, if the file does not end cleanly.
    pub(crate) stop: Option<Stop>,
}

/// Walks the records of a segment's bytes up to the end or the first damaged record.
pub(crate) fn scan(bytes: &[u8]) -> Scan<'_> {
    let mut records = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        match record::frame_at(bytes, off) {
            Ok(f) => {
                records.push((off, f));
                off = f.end;
            }
            Err(damage) => {
                let valid_data_follows = match damage {
                    // The header is trustworthy: the record is simply incomplete.
                    Damage::IncompleteHeader | Damage::IncompleteRecord { .. } => false,
                    // The header says where the next record starts; look from there on.
                    Damage::Checksum => {
                        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4"));
                        let next = off + record::HEADER_LEN + len as usize;
                        record::valid_record_from(bytes, next).is_some()
                    }
                    // The length cannot be trusted: search every later offset.
                    _ => record::valid_record_from(bytes, off + 1).is_some(),
                };
                return Scan {
                    records,
                    stop: Some(Stop {
                        offset: off,
                        damage,
                        valid_data_follows,
                    }),
                };
            }
        }
    }
    Scan {
        records,
        stop: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::encode_compact;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        let n = file_name(1, 0x2a);
        assert_eq!(n, "0000000000000001-000000000000002a.wal");
        assert_eq!(parse_name(&n), Some((1, 42)));
        assert_eq!(parse_name("0000000000000001-000000000000002a.tmp"), None);
        assert_eq!(parse_name("1-2.wal"), None);
        assert_eq!(parse_name("000000000000000g-000000000000002a.wal"), None);
    }

    #[test]
    fn list_rejects_gaps_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        for (s, f) in [(2, 10), (1, 1), (3, 20)] {
            fs::write(dir.path().join(file_name(s, f)), b"").unwrap();
        }
        fs::write(dir.path().join("README"), b"").unwrap();
        let l = list(dir.path()).unwrap();
        assert_eq!(l.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![1, 2, 3]);

        fs::remove_file(dir.path().join(file_name(2, 10))).unwrap();
        assert!(matches!(
            list(dir.path()),
            Err(Error::MissingSegment {
                previous_seq: 1,
                ..
            })
        ));
        fs::write(dir.path().join(file_name(2, 10)), b"").unwrap();
        fs::write(dir.path().join("junk.wal"), b"").unwrap();
        assert!(matches!(
            list(dir.path()),
            Err(Error::BadSegmentName { .. })
        ));
    }

    #[test]
    fn scan_tells_torn_tail_from_middle_damage() {
        let mut b = Vec::new();
        for i in 0..3 {
            encode_compact(&mut b, i).unwrap();
        }
        let rec = b.len() / 3;
        assert_eq!(scan(&b).records.len(), 3);
        assert!(scan(&b).stop.is_none());

        // Torn last record.
        let s = scan(&b[..b.len() - 3]);
        assert_eq!(s.records.len(), 2);
        assert!(!s.stop.unwrap().valid_data_follows);

        // Checksum damage in the middle record: the third record follows.
        let mut m = b.clone();
        m[rec + record::HEADER_LEN + 2] ^= 1;
        let s = scan(&m);
        assert_eq!(s.records.len(), 1);
        let stop = s.stop.unwrap();
        assert_eq!(stop.offset, rec);
        assert_eq!(stop.damage, Damage::Checksum);
        assert!(stop.valid_data_follows);

        // Damaged length in the middle record: found by searching.
        let mut m = b.clone();
        m[rec] ^= 0x80;
        let stop = scan(&m).stop.unwrap();
        assert_eq!(stop.damage, Damage::BadHeader);
        assert!(stop.valid_data_follows);

        // Zeros after the records (extended but never written): a torn tail.
        let mut z = b.clone();
        z.extend_from_slice(&[0; 100]);
        let s = scan(&z);
        assert_eq!(s.records.len(), 3);
        assert!(!s.stop.unwrap().valid_data_follows);
    }
}
