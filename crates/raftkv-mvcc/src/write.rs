//! A write transaction over the in-memory state: every change of one request gets the same main
//! revision and the next sub revision, is applied to the index at once (later ops of a txn see
//! earlier ones) and queued as a record for the next commit. The checks that can refuse a request
//! run before any change, so a write transaction never has to roll back.

use prost::Message;
use raftkv_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseHeader,
};
use raftkv_proto::mvccpb::KeyValue;

use crate::index::{entries, IndexKey, KeyRange, Live, RevMark};
use crate::lease;
use crate::record::{self, Record};
use crate::revision::Revision;
use crate::state::{live_kv, State};

pub(crate) struct WriteTxn<'s> {
    pub(crate) st: &'s mut State,
    begin: i64,
    changes: i64,
}

impl<'s> WriteTxn<'s> {
    pub(crate) fn begin(st: &'s mut State) -> Self {
        let begin = st.rev;
        WriteTxn {
            st,
            begin,
            changes: 0,
        }
    }

    /// The revision reads inside this transaction see.
    pub(crate) fn rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    /// Ends the transaction: the store revision moves on only if something changed.
    pub(crate) fn end(self) -> i64 {
        let rev = self.rev();
        self.st.rev = rev;
        rev
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision::new(self.begin + 1, self.changes);
        self.changes += 1;
        r
    }

    /// Writes `key`; returns the new revision.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8], lease_id: i64) -> i64 {
        let rev = self.next_rev();
        let entry = match self.st.index.get_mut(key) {
            Some(e) => e,
            None => self.st.index.entry(IndexKey::from_slice(key)).or_default(),
        };
        let (create_revision, version, old_lease) = match &entry.live {
            Some(l) => (l.create_revision, l.version + 1, l.lease),
            None => (rev.main, 1, 0),
        };
        let live = Live {
            create_revision,
            version,
            lease: lease_id,
            value: value.into(),
        };
        let kv = record::encode_kv(key, rev.main, &live);
        entry.revs.push(RevMark {
            rev,
            tombstone: false,
        });
        entry.live = Some(live);
        lease::reattach(&mut self.st.leases, key, old_lease, lease_id);
        self.st.pending.push(Record {
            rev,
            tombstone: false,
            kv,
        });
        rev.main
    }

    /// Deletes every existing key in `range`, in key order; returns how many.
    pub(crate) fn delete_range(&mut self, range: &KeyRange<'_>) -> i64 {
        let keys: Vec<IndexKey> = entries(&self.st.index, range)
            .filter(|(_, e)| e.live.is_some())
            .map(|(k, _)| IndexKey::from_slice(k))
            .collect();
        for key in &keys {
            self.delete_key(key);
        }
        keys.len() as i64
    }

    fn delete_key(&mut self, key: &[u8]) {
        let rev = self.next_rev();
        let Some(entry) = self.st.index.get_mut(key) else {
            return;
        };
        let old_lease = entry.live.take().map_or(0, |l| l.lease);
        entry.revs.push(RevMark {
            rev,
            tombstone: true,
        });
        lease::reattach(&mut self.st.leases, key, old_lease, 0);
        let tombstone = KeyValue {
            key: key.to_vec(),
            mod_revision: rev.main,
            ..Default::default()
        };
        self.st.pending.push(Record {
            rev,
            tombstone: true,
            kv: tombstone.encode_to_vec(),
        });
    }

    /// Applies a Put whose checks passed (lease exists; for ignore_* the key exists).
    pub(crate) fn put_request(&mut self, req: &PutRequest) -> PutResponse {
        // Building the previous value costs a copy: only when the request needs it.
        let prev = if req.prev_kv || req.ignore_value || req.ignore_lease {
            self.current(&req.key)
        } else {
            None
        };
        let value: &[u8] = match (&prev, req.ignore_value) {
            (Some(p), true) => &p.value,
            _ => &req.value,
        };
        let lease_id = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let revision = self.put(&req.key, value, lease_id);
        PutResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            prev_kv: if req.prev_kv { prev } else { None },
        }
    }

    /// Applies a DeleteRange.
    pub(crate) fn delete_request(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        let prev_kvs = if req.prev_kv {
            entries(&self.st.index, &range)
                .filter_map(|(k, e)| Some(live_kv(k, e.last()?, e.live.as_ref()?)))
                .collect()
        } else {
            Vec::new()
        };
        let deleted = self.delete_range(&range);
        DeleteRangeResponse {
            header: Some(ResponseHeader {
                revision: self.rev(),
                ..Default::default()
            }),
            deleted,
            prev_kvs,
        }
    }

    /// The current value of `key`, if it exists.
    pub(crate) fn current(&self, key: &[u8]) -> Option<KeyValue> {
        let e = self.st.index.get(key)?;
        Some(live_kv(key, e.last()?, e.live.as_ref()?))
    }
}
