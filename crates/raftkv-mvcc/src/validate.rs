//! Request validation that needs no state: what a node checks before a request reaches Raft,
//! and what the store checks again before applying. Mirrors etcd's `v3rpc/key.go`.

use std::collections::HashSet;

use raftkv_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::error::RequestError;

/// Checks a Range request.
pub fn check_range(r: &RangeRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(RequestError::InvalidSortOption);
    }
    Ok(())
}

/// Checks a Put request.
pub fn check_put(r: &PutRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange request.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

/// Checks a Txn request: op counts (at most `max_ops` per branch, nested txns included as etcd
/// counts them), every op well formed, and no key written twice or written and deleted in one
/// branch.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<(), RequestError> {
    check_txn_ops(r, max_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: i64) -> Result<(), RequestError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_ops {
        return Err(RequestError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(RequestError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<(), RequestError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn_ops(t, max_ops),
        // etcd answers an empty op with "key not found".
        None => Err(RequestError::KeyNotFound),
    }
}

/// A deleted interval as etcd's duplicate check sees it: `range_end` taken literally, so a
/// from-key delete (`"\0"`) covers nothing, exactly as etcd's interval tree treats it.
struct Deleted {
    key: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Deleted {
    fn covers(&self, k: &[u8]) -> bool {
        match &self.end {
            None => self.key == k,
            Some(end) => self.key.as_slice() <= k && k < end.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: returns this level's puts (children included) and deletes.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>), RequestError> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                key: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Deleted], k: &[u8]| dels.iter().any(|d| d.covers(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(RequestError::DuplicateKey);
            }
        }
        puts.extend(puts_then.iter().cloned());
        for k in puts_else {
            // then and else exclude each other, so the same key in both is fine.
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(RequestError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// Whether a txn only reads, in both branches and every nested txn (etcd's `isTxnReadonly`):
/// such a txn changes nothing and needs no Raft entry.
pub fn is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) | None => true,
            Some(Request::RequestTxn(t)) => is_read_only(t),
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
        })
}

/// Whether every range of a read-only txn asks for a serializable read (etcd's
/// `isTxnSerializable`): then the txn is served locally without a ReadIndex round.
pub fn is_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(rr)) => rr.serializable,
            Some(Request::RequestTxn(t)) => is_serializable(t),
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_proto::etcdserverpb::Compare;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(t)),
        }
    }

    #[test]
    fn duplicate_keys() {
        let e = Err(RequestError::DuplicateKey);
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), e);
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            e
        );
        assert_eq!(
            check_txn(&txn(vec![put("c"), del("a", "c")], vec![]), 128),
            Ok(())
        );
        // etcd's interval tree sees a from-key delete as covering nothing.
        assert_eq!(
            check_txn(&txn(vec![del("a", "\0"), put("b")], vec![]), 128),
            Ok(())
        );
        let inner = txn(vec![put("x")], vec![put("x")]);
        assert_eq!(
            check_txn(&txn(vec![nested(inner.clone()), put("x")], vec![]), 128),
            e
        );
        assert_eq!(
            check_txn(&txn(vec![nested(inner), put("y")], vec![]), 128),
            Ok(())
        );
        let inner_del = txn(vec![del("x", "")], vec![]);
        assert_eq!(
            check_txn(&txn(vec![nested(inner_del), put("x")], vec![]), 128),
            e
        );
    }

    #[test]
    fn op_limits_and_empty_keys() {
        let many: Vec<_> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(
            check_txn(&txn(many, vec![]), 128),
            Err(RequestError::TooManyOps)
        );
        let ok: Vec<_> = (0..128).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(ok, vec![]), 128), Ok(()));
        let mut t = txn(vec![], vec![]);
        t.compare.push(Compare::default());
        assert_eq!(check_txn(&t, 128), Err(RequestError::EmptyKey));
        let empty = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&empty, 128), Err(RequestError::KeyNotFound));
        assert_eq!(
            check_put(&PutRequest::default()),
            Err(RequestError::EmptyKey)
        );
        let p = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(RequestError::ValueProvided));
        let r = RangeRequest {
            key: b"k".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(check_range(&r), Err(RequestError::InvalidSortOption));
    }
}
