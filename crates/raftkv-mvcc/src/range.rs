//! Range reads with etcd's exact semantics (`etcdserver/apply.go` Range): revision checks,
//! limit with the `more` flag, count, min/max filters, sorting and keys-only.

use std::cmp::Ordering;

use raftkv_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    RangeRequest, RangeResponse, ResponseHeader,
};
use raftkv_proto::mvccpb::KeyValue;

use crate::error::{RequestError, Result};
use crate::index::{entries, KeyRange};
use crate::state::State;

/// Answers `req` against `st` as seen at revision `cur` (the current revision, or the revision a
/// write txn is producing). The header carries only the revision.
pub(crate) fn range(st: &State, req: &RangeRequest, cur: i64) -> Result<RangeResponse> {
    if req.revision > cur {
        return Err(RequestError::FutureRevision.into());
    }
    let at = if req.revision <= 0 { cur } else { req.revision };
    if at < st.compact_rev {
        return Err(RequestError::Compacted.into());
    }
    let order = SortOrder::try_from(req.sort_order).map_err(|_| RequestError::InvalidSortOption)?;
    let target =
        SortTarget::try_from(req.sort_target).map_err(|_| RequestError::InvalidSortOption)?;
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // etcd fetches everything when it must sort or filter, else one extra row for `more`.
    let fetch = if order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    };

    let keys = KeyRange::new(&req.key, &req.range_end);
    let mut count = 0i64;
    let mut kvs = Vec::new();
    for (key, entry) in entries(&st.index, &keys) {
        let Some(rev) = entry.put_at(at) else {
            continue;
        };
        count += 1;
        if !req.count_only && kvs.len() < fetch {
            kvs.push(st.kv_for(key, entry, rev)?);
        }
    }
    let header = Some(ResponseHeader {
        revision: cur,
        ..Default::default()
    });
    if req.count_only {
        return Ok(RangeResponse {
            header,
            kvs: Vec::new(),
            more: false,
            count,
        });
    }

    kvs.retain(|kv| {
        !((req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision)
            || (req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision)
            || (req.max_create_revision != 0 && kv.create_revision > req.max_create_revision)
            || (req.min_create_revision != 0 && kv.create_revision < req.min_create_revision))
    });
    // A non-key target with no order sorts ascending (after the limit was applied: etcd's quirk).
    let order = if order == SortOrder::None && target != SortTarget::Key {
        SortOrder::Ascend
    } else {
        order
    };
    if order != SortOrder::None {
        sort(&mut kvs, target, order == SortOrder::Descend);
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count,
    })
}

/// Stable sort by `target`, so ties keep key order.
pub(crate) fn sort(kvs: &mut [KeyValue], target: SortTarget, descend: bool) {
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    if descend {
        kvs.sort_by(|a, b| cmp(b, a));
    } else {
        kvs.sort_by(cmp);
    }
}
