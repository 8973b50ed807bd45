//! The history reader: every event from a revision onward, in order, whole revisions at a
//! time. This is what watchers replay before they go live.

use raftkv_proto::mvccpb::{event::EventType, Event};

use crate::error::{RequestError, Result};
use crate::record::{self, Record};
use crate::revision::Revision;
use crate::state::State;
use crate::store::Store;

/// A slice of history returned by [`Store::history`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryBatch {
    /// Events in revision order; a revision's events are never split across batches.
    pub events: Vec<Event>,
    /// The first revision not covered: pass it to the next call.
    pub next: i64,
    /// The store revision when the batch was read; `next > revision` means caught up.
    pub revision: i64,
}

impl Store {
    /// Reads events with revisions from `from` onward, stopping after the revision in which
    /// `max_events` is reached. `from` below the compact revision is
    /// [`RequestError::Compacted`]. With `prev_kv`, each event carries the key's previous value
    /// when that is still readable.
    pub fn history(&self, from: i64, max_events: usize, prev_kv: bool) -> Result<HistoryBatch> {
        let st = self.read()?;
        if from < st.compact_rev {
            return Err(RequestError::Compacted.into());
        }
        let from = from.max(1);
        let mut out = Collector {
            events: Vec::new(),
            max: max_events.max(1),
            last_main: None,
            full: false,
        };
        if from <= st.rev {
            let lo = record::block_key(Revision::default());
            let start = st
                .tree
                .range(lo..=record::block_key(Revision::new(from, 0)))
                .next_back()
                .transpose()?
                .map_or(lo.to_vec(), |(k, _)| k.to_vec());
            let hi = [record::BLOCK_PREFIX + 1];
            'blocks: for item in st.tree.range(start..hi.to_vec()) {
                let (k, v) = item?;
                let records = record::decode_block(&v)
                    .ok_or_else(|| st.corrupt(format!("block {:?}", k.as_ref())))?;
                for r in records.iter().filter(|r| r.rev.main >= from) {
                    if !out.push(&st, r, prev_kv)? {
                        break 'blocks;
                    }
                }
            }
            if !out.full {
                for r in st.pending.records.iter().filter(|r| r.rev.main >= from) {
                    if !out.push(&st, r, prev_kv)? {
                        break;
                    }
                }
            }
        }
        let next = match (out.full, out.last_main) {
            (true, Some(m)) => m + 1,
            _ => st.rev.max(from - 1) + 1,
        };
        Ok(HistoryBatch {
            events: out.events,
            next,
            revision: st.rev,
        })
    }
}

struct Collector {
    events: Vec<Event>,
    max: usize,
    last_main: Option<i64>,
    full: bool,
}

impl Collector {
    /// Adds `r` unless the batch is full and `r` starts a new revision; false once full.
    fn push(&mut self, st: &State, r: &Record, prev_kv: bool) -> Result<bool> {
        let kv = r
            .decode_kv()
            .ok_or_else(|| st.corrupt(format!("record {}", r.rev)))?;
        // A compaction drops revisions from the index at once but from disk in the background:
        // skip what it dropped so the answer does not depend on the compactor's progress.
        if r.rev.main <= st.compact_rev
            && !st
                .index
                .get(kv.key.as_slice())
                .is_some_and(|e| e.revs.iter().any(|m| m.rev == r.rev))
        {
            return Ok(true);
        }
        if self.events.len() >= self.max && self.last_main != Some(r.rev.main) {
            self.full = true;
            return Ok(false);
        }
        let prev = if prev_kv {
            previous(st, &kv.key, r.rev.main)?
        } else {
            None
        };
        self.events.push(Event {
            r#type: if r.tombstone {
                EventType::Delete
            } else {
                EventType::Put
            } as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        self.last_main = Some(r.rev.main);
        Ok(true)
    }
}

/// The value `key` had just before revision `main`, as etcd computes a watch event's prev_kv.
fn previous(st: &State, key: &[u8], main: i64) -> Result<Option<raftkv_proto::mvccpb::KeyValue>> {
    if main - 1 < st.compact_rev {
        return Ok(None);
    }
    let Some(entry) = st.index.get(key) else {
        return Ok(None);
    };
    match entry.put_at(main - 1) {
        Some(rev) => st.kv_for(key, entry, rev).map(Some),
        None => Ok(None),
    }
}
