//! The in-memory key index: for every key, the revisions that still exist in storage and, when
//! the key exists now, its current value. Reads at the current revision never touch disk.

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use crate::revision::Revision;

/// One stored revision of a key: a put, or a tombstone (the key was deleted at `rev`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RevMark {
    pub(crate) rev: Revision,
    pub(crate) tombstone: bool,
}

/// The current value of a key that exists. Its mod revision is the entry's last revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Live {
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) value: Box<[u8]>,
}

/// Everything the index knows about one key.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyEntry {
    /// Uncompacted revisions, ascending.
    pub(crate) revs: SmallVec<[RevMark; 1]>,
    /// The current value, when the key exists now.
    pub(crate) live: Option<Live>,
}

impl KeyEntry {
    /// The revision holding the key's value as of store revision `at`, if the key existed then.
    pub(crate) fn put_at(&self, at: i64) -> Option<Revision> {
        let i = self.revs.partition_point(|m| m.rev.main <= at);
        let mark = self.revs.get(i.checked_sub(1)?)?;
        (!mark.tombstone).then_some(mark.rev)
    }

    /// The key's last revision (its mod revision while it exists).
    pub(crate) fn last(&self) -> Option<Revision> {
        self.revs.last().map(|m| m.rev)
    }

    /// Drops revisions made obsolete by a compaction at `at`: everything before the latest
    /// revision at or below `at`, and that one too if it is a tombstone below `at`. Returns the
    /// dropped revisions.
    ///
    /// A tombstone at `at` itself is kept (until a later compaction): a watcher may start at
    /// the compact revision (an etcd client resumes there after a cancel-on-compaction notice)
    /// and must get that revision's deletes (etcd #18089, fixed by "keep tombstone if revision
    /// == compactAtRev").
    pub(crate) fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) {
        let i = self.revs.partition_point(|m| m.rev.main <= at);
        if i == 0 {
            return;
        }
        let latest = self.revs[i - 1];
        let keep_from = if latest.tombstone && latest.rev.main < at {
            i
        } else {
            i - 1
        };
        removed.extend(self.revs.drain(..keep_from).map(|m| m.rev));
    }

    /// True when nothing of the key remains.
    pub(crate) fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `--prefix` rule): the prefix
/// with its last byte below 0xff incremented and what follows dropped; `"\0"` (every key from
/// the prefix on) when there is none.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The interval of keys a request names, decoded from etcd's `key`/`range_end` convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// `range_end` empty: exactly `key`.
    Single(&'a [u8]),
    /// `range_end == "\0"`: every key at or after `key`.
    From(&'a [u8]),
    /// `[key, range_end)`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// Decodes etcd's convention.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    /// True if `k` lies in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => k >= key && k < end,
        }
    }

    fn bounds(&self) -> Option<Bounds<'a>> {
        match *self {
            KeyRange::Single(key) => Some((Bound::Included(key), Bound::Included(key))),
            KeyRange::From(key) => Some((Bound::Included(key), Bound::Unbounded)),
            KeyRange::Between(key, end) if key < end => {
                Some((Bound::Included(key), Bound::Excluded(end)))
            }
            KeyRange::Between(..) => None,
        }
    }
}

/// Lower and upper bounds of a key range.
type Bounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A key as the index stores it: inline up to 16 bytes, so comparing short keys during a lookup
/// does not chase a pointer (a cache miss per compared key at a million keys).
pub(crate) type IndexKey = SmallVec<[u8; 16]>;

/// Key -> entry, ordered by key bytes.
pub(crate) type Index = BTreeMap<IndexKey, KeyEntry>;

/// Iterates the entries of `index` inside `range`, in key order.
pub(crate) fn entries<'i>(index: &'i Index, range: &KeyRange<'_>) -> Entries<'i> {
    match range {
        // A single key is a point lookup; only real ranges walk the tree.
        KeyRange::Single(key) => Entries::One(index.get_key_value(*key)),
        _ => match range.bounds() {
            Some(b) => Entries::Many(index.range::<[u8], _>(b)),
            None => Entries::One(None),
        },
    }
}

/// The iterator [`entries`] returns.
pub(crate) enum Entries<'i> {
    One(Option<(&'i IndexKey, &'i KeyEntry)>),
    Many(std::collections::btree_map::Range<'i, IndexKey, KeyEntry>),
}

impl<'i> Iterator for Entries<'i> {
    type Item = (&'i [u8], &'i KeyEntry);

    fn next(&mut self) -> Option<Self::Item> {
        let (k, e) = match self {
            Entries::One(one) => one.take()?,
            Entries::Many(it) => it.next()?,
        };
        Some((k.as_slice(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(main: i64, tombstone: bool) -> RevMark {
        RevMark {
            rev: Revision::new(main, 0),
            tombstone,
        }
    }

    #[test]
    fn put_at_follows_history() {
        let e = KeyEntry {
            revs: [mark(2, false), mark(4, true), mark(6, false)]
                .into_iter()
                .collect(),
            live: None,
        };
        assert_eq!(e.put_at(1), None);
        assert_eq!(e.put_at(2), Some(Revision::new(2, 0)));
        assert_eq!(e.put_at(3), Some(Revision::new(2, 0)));
        assert_eq!(e.put_at(4), None);
        assert_eq!(e.put_at(5), None);
        assert_eq!(e.put_at(100), Some(Revision::new(6, 0)));
    }

    #[test]
    fn compaction_keeps_latest_and_drops_older_tombstones() {
        let mut e = KeyEntry {
            revs: [
                mark(2, false),
                mark(3, false),
                mark(4, true),
                mark(6, false),
            ]
            .into_iter()
            .collect(),
            live: None,
        };
        let mut removed = vec![];
        e.compact(1, &mut removed);
        assert!(removed.is_empty());
        e.compact(3, &mut removed);
        assert_eq!(removed, vec![Revision::new(2, 0)]);
        removed.clear();
        e.compact(5, &mut removed);
        assert_eq!(removed, vec![Revision::new(3, 0), Revision::new(4, 0)]);
        assert_eq!(e.revs.as_slice(), &[mark(6, false)]);
        removed.clear();
        e.compact(9, &mut removed);
        assert!(removed.is_empty());
        let mut dead = KeyEntry {
            revs: [mark(2, false), mark(3, true)].into_iter().collect(),
            live: None,
        };
        // A tombstone at the compact revision stays (a watch may start there)...
        dead.compact(3, &mut removed);
        assert_eq!(removed, vec![Revision::new(2, 0)]);
        assert_eq!(dead.revs.as_slice(), &[mark(3, true)]);
        assert_eq!(dead.put_at(3), None);
        // ...until a later compaction.
        removed.clear();
        dead.compact(4, &mut removed);
        assert_eq!(removed, vec![Revision::new(3, 0)]);
        assert!(dead.is_empty());
    }

    #[test]
    fn key_ranges() {
        let mut index = Index::new();
        for k in [&b"a"[..], b"b", b"ba", b"c"] {
            index.insert(IndexKey::from_slice(k), KeyEntry::default());
        }
        let keys = |r: KeyRange<'_>| {
            entries(&index, &r)
                .map(|(k, _)| k.to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(KeyRange::new(b"b", b"")), vec![b"b".to_vec()]);
        assert_eq!(
            keys(KeyRange::new(b"b", b"c")),
            vec![b"b".to_vec(), b"ba".to_vec()]
        );
        assert_eq!(keys(KeyRange::new(b"b", b"\0")).len(), 3);
        assert!(keys(KeyRange::new(b"c", b"a")).is_empty());
        assert!(KeyRange::new(b"b", b"c").contains(b"bz"));
        assert!(!KeyRange::new(b"b", b"c").contains(b"c"));
    }
}
