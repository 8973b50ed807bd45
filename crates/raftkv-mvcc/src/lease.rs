//! Leases as data: id, granted TTL, the last checkpointed remaining TTL, and the keys attached.
//! The store keeps no timers; the server decides expiry and applies it as a revoke.

use std::collections::{BTreeMap, BTreeSet};

use raftkv_proto::raftkvpb::StoredLease;

use crate::index::IndexKey;

/// The longest TTL etcd accepts, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease id (never 0).
    pub id: i64,
    /// The granted TTL in seconds, after raising it to the minimum.
    pub ttl: i64,
    /// The remaining TTL at the last checkpoint, in seconds; 0 when never checkpointed (the full
    /// TTL applies).
    pub remaining_ttl: i64,
    /// The attached keys, in key order.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Lease {
    pub(crate) ttl: i64,
    pub(crate) remaining_ttl: i64,
    pub(crate) keys: BTreeSet<IndexKey>,
}

impl Lease {
    pub(crate) fn stored(&self, id: i64) -> StoredLease {
        StoredLease {
            id,
            ttl: self.ttl,
            remaining_ttl: self.remaining_ttl,
        }
    }

    pub(crate) fn info(&self, id: i64, with_keys: bool) -> LeaseInfo {
        LeaseInfo {
            id,
            ttl: self.ttl,
            remaining_ttl: self.remaining_ttl,
            keys: if with_keys {
                self.keys.iter().map(|k| k.to_vec()).collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Every lease, by id.
pub(crate) type Leases = BTreeMap<i64, Lease>;

/// Moves `key` from lease `old` to lease `new` (0 = none).
pub(crate) fn reattach(leases: &mut Leases, key: &[u8], old: i64, new: i64) {
    if old == new {
        return;
    }
    if old != 0 {
        if let Some(l) = leases.get_mut(&old) {
            l.keys.remove(key);
        }
    }
    if new != 0 {
        if let Some(l) = leases.get_mut(&new) {
            l.keys.insert(IndexKey::from_slice(key));
        }
    }
}
