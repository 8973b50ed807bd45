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

#[cfg(test)]
mod tests {
    use raftkv_proto::etcdserverpb::{PutRequest, RangeRequest};

    use crate::{Config, Store};

    fn store_with(puts: &[(&str, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).unwrap();
        for (i, (k, v)) in puts.iter().enumerate() {
            let req = PutRequest {
                key: k.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
                ..Default::default()
            };
            store.put(i as u64 + 1, &req).unwrap();
        }
        (dir, store)
    }

    fn keys(resp: &raftkv_proto::etcdserverpb::RangeResponse) -> Vec<&[u8]> {
        resp.kvs.iter().map(|kv| kv.key.as_slice()).collect()
    }

    #[test]
    fn non_key_target_without_order_sorts_after_the_limit() {
        // Observed on etcd 3.4.23: a v3, b v1, c v2; NONE + VERSION + limit 2 -> [b, c], more.
        let (_d, s) = store_with(&[
            ("a", "1"),
            ("a", "2"),
            ("a", "3"),
            ("b", "1"),
            ("c", "1"),
            ("c", "2"),
        ]);
        let req = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 2,
            sort_target: 1,
            ..Default::default()
        };
        let resp = s.range(&req).unwrap();
        assert_eq!(keys(&resp), vec![&b"b"[..], b"c"]);
        assert!(resp.more);
        assert_eq!(resp.count, 3);
        // With an explicit order everything is fetched first: DESCEND by version -> a, c.
        let resp = s
            .range(&RangeRequest {
                sort_order: 2,
                ..req
            })
            .unwrap();
        assert_eq!(keys(&resp), vec![&b"a"[..], b"c"]);
    }

    #[test]
    fn limit_more_count_and_filters() {
        let (_d, s) = store_with(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]);
        let all = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"e".to_vec(),
            ..Default::default()
        };
        let r = s
            .range(&RangeRequest {
                limit: 4,
                ..all.clone()
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4));
        let r = s
            .range(&RangeRequest {
                limit: 3,
                ..all.clone()
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (3, true, 4));
        // Filters prune after counting: count stays 4.
        let r = s
            .range(&RangeRequest {
                min_mod_revision: 4,
                limit: 1,
                ..all.clone()
            })
            .unwrap();
        assert_eq!((keys(&r), r.more, r.count), (vec![&b"c"[..]], true, 4));
        let r = s
            .range(&RangeRequest {
                count_only: true,
                ..all.clone()
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.count), (0, 4));
        let r = s
            .range(&RangeRequest {
                keys_only: true,
                ..all
            })
            .unwrap();
        assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    }
}
