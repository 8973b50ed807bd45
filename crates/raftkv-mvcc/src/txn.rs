//! Transactions with etcd's semantics (`etcdserver/apply.go` Txn): every compare, nested ones
//! included, is evaluated against the state before the txn; then the chosen branches are checked
//! (puts need their lease and, for ignore_*, their key; ranges need a valid revision); only then
//! do the ops run, in order, sharing one revision.

use std::cmp::Ordering;

use raftkv_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    Compare, PutRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

use crate::error::{Error, RequestError, Result};
use crate::index::{entries, KeyRange};
use crate::range::range;
use crate::state::State;
use crate::write::WriteTxn;

/// The branch each txn on the path takes, depth first (etcd's `compareToPath`).
pub(crate) fn compare_path(st: &State, req: &TxnRequest, out: &mut Vec<bool>) {
    let ok = req.compare.iter().all(|c| compare_holds(st, c));
    out.push(ok);
    for op in branch(req, ok) {
        if let Some(Request::RequestTxn(t)) = &op.request {
            compare_path(st, t, out);
        }
    }
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// One compare against the current state: every key in the range must satisfy it; with no key,
/// a VALUE compare fails and the others compare against zeros.
fn compare_holds(st: &State, c: &Compare) -> bool {
    let target = CompareTarget::try_from(c.target).ok();
    let mut any = false;
    for (_, entry) in entries(&st.index, &KeyRange::new(&c.key, &c.range_end)) {
        let (Some(live), Some(rev)) = (&entry.live, entry.last()) else {
            continue;
        };
        any = true;
        let fields = Fields {
            create: live.create_revision,
            modified: rev.main,
            version: live.version,
            lease: live.lease,
            value: &live.value,
        };
        if !compare_fields(c, target, &fields) {
            return false;
        }
    }
    if any {
        return true;
    }
    if target == Some(CompareTarget::Value) {
        return false;
    }
    compare_fields(c, target, &Fields::default())
}

#[derive(Default)]
struct Fields<'a> {
    create: i64,
    modified: i64,
    version: i64,
    lease: i64,
    value: &'a [u8],
}

fn compare_fields(c: &Compare, target: Option<CompareTarget>, f: &Fields<'_>) -> bool {
    let u = c.target_union.as_ref();
    let ord = match target {
        Some(CompareTarget::Value) => {
            let v: &[u8] = match u {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            f.value.cmp(v)
        }
        Some(CompareTarget::Create) => f.create.cmp(match u {
            Some(TargetUnion::CreateRevision(r)) => r,
            _ => &0,
        }),
        Some(CompareTarget::Mod) => f.modified.cmp(match u {
            Some(TargetUnion::ModRevision(r)) => r,
            _ => &0,
        }),
        Some(CompareTarget::Version) => f.version.cmp(match u {
            Some(TargetUnion::Version(r)) => r,
            _ => &0,
        }),
        Some(CompareTarget::Lease) => f.lease.cmp(match u {
            Some(TargetUnion::Lease(r)) => r,
            _ => &0,
        }),
        None => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// The checks a standalone Put gets (lease first, then ignore_*), as etcd orders them.
pub(crate) fn check_put_standalone(st: &State, req: &PutRequest) -> Result<(), RequestError> {
    if req.lease != 0 && !st.leases.contains_key(&req.lease) {
        return Err(RequestError::LeaseNotFound);
    }
    check_ignore(st, req)
}

fn check_ignore(st: &State, req: &PutRequest) -> Result<(), RequestError> {
    if (req.ignore_value || req.ignore_lease)
        && st
            .index
            .get(req.key.as_slice())
            .and_then(|e| e.live.as_ref())
            .is_none()
    {
        return Err(RequestError::KeyNotFound);
    }
    Ok(())
}

/// Walks the chosen branches checking every put (`puts`) or every range (`!puts`) against the
/// pre-txn state.
fn check_path(
    st: &State,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    puts: bool,
) -> Result<(), RequestError> {
    let succeeded = path[*pos];
    *pos += 1;
    for op in branch(req, succeeded) {
        match &op.request {
            Some(Request::RequestTxn(t)) => check_path(st, t, path, pos, puts)?,
            Some(Request::RequestPut(p)) if puts => {
                check_ignore(st, p)?;
                if p.lease != 0 && !st.leases.contains_key(&p.lease) {
                    return Err(RequestError::LeaseNotFound);
                }
            }
            Some(Request::RequestRange(r)) if !puts && r.revision != 0 => {
                if r.revision > st.rev {
                    return Err(RequestError::FutureRevision);
                }
                if r.revision < st.compact_rev {
                    return Err(RequestError::Compacted);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs a txn whose request was validated. Refusals happen before any change.
pub(crate) fn txn(st: &mut State, req: &TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_path(st, req, &mut path);
    // etcd checks every put on the path first, then every range.
    check_path(st, req, &path, &mut 0, true)?;
    check_path(st, req, &path, &mut 0, false)?;
    let mut w = WriteTxn::begin(st);
    let result = execute(&mut w, req, &path, &mut 0);
    let rev = w.end();
    let mut resp = result.map_err(|e| {
        // A refusal here would leave a half-applied txn: the checks above must prevent it.
        st.failed = true;
        st.corrupt(format!("txn op failed after its checks passed: {e}"))
    })?;
    resp.header = Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    });
    Ok(resp)
}

fn execute(
    w: &mut WriteTxn<'_>,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, Error> {
    let succeeded = path[*pos];
    *pos += 1;
    let ops = branch(req, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                Some(Response::ResponseRange(range(w.st, r, w.rev())?))
            }
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(w.put_request(p))),
            Some(Request::RequestDeleteRange(d)) => {
                Some(Response::ResponseDeleteRange(w.delete_request(d)))
            }
            Some(Request::RequestTxn(t)) => Some(Response::ResponseTxn(execute(w, t, path, pos)?)),
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use raftkv_proto::etcdserverpb::{
        request_op::Request, response_op::Response, Compare, DeleteRangeRequest, PutRequest,
        RangeRequest, RequestOp, TxnRequest,
    };

    use super::*;
    use crate::{Config, Store};

    fn op(r: Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }
    fn put(k: &str) -> RequestOp {
        op(Request::RequestPut(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        }))
    }
    fn get(k: &str) -> RequestOp {
        op(Request::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn nested_headers_follow_the_txn_revision() {
        // Observed on etcd 3.4.23: [range k1, put k1, range k1] at rev 3 -> headers 3, 4, 4;
        // a nested txn's own header is present and empty.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(Config::new(dir.path())).unwrap();
        s.put(
            1,
            &PutRequest {
                key: b"x".to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
        s.put(
            2,
            &PutRequest {
                key: b"y".to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
        let inner = TxnRequest {
            compare: vec![],
            success: vec![get("k1")],
            failure: vec![],
        };
        let req = TxnRequest {
            compare: vec![Compare {
                key: b"nope".to_vec(),
                target: CompareTarget::Create as i32,
                result: CompareResult::Equal as i32,
                ..Default::default()
            }],
            success: vec![
                get("k1"),
                put("k1"),
                get("k1"),
                op(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"absent".to_vec(),
                    ..Default::default()
                })),
                op(Request::RequestTxn(inner)),
            ],
            failure: vec![],
        };
        let resp = s.txn(3, &req).unwrap().unwrap();
        assert!(resp.succeeded);
        assert_eq!(resp.header.as_ref().unwrap().revision, 4);
        let revs: Vec<i64> = resp
            .responses
            .iter()
            .map(|r| match r.response.as_ref().unwrap() {
                Response::ResponseRange(r) => r.header.as_ref().unwrap().revision,
                Response::ResponsePut(r) => r.header.as_ref().unwrap().revision,
                Response::ResponseDeleteRange(r) => r.header.as_ref().unwrap().revision,
                Response::ResponseTxn(t) => t.header.as_ref().unwrap().revision,
            })
            .collect();
        assert_eq!(revs, vec![3, 4, 4, 4, 0]);
        let Some(Response::ResponseRange(after)) = &resp.responses[2].response else {
            panic!("range response expected");
        };
        assert_eq!(after.kvs[0].mod_revision, 4);
    }

    #[test]
    fn a_refused_txn_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(Config::new(dir.path())).unwrap();
        let lease_put = op(Request::RequestPut(PutRequest {
            key: b"b".to_vec(),
            lease: 42,
            ..Default::default()
        }));
        let req = TxnRequest {
            compare: vec![],
            success: vec![put("a"), lease_put],
            failure: vec![],
        };
        let err = s.txn(1, &req).unwrap_err();
        assert_eq!(err.as_request(), Some(RequestError::LeaseNotFound));
        assert_eq!(s.revision().unwrap(), 1);
        let r = s
            .range(&RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })
            .unwrap();
        assert!(r.kvs.is_empty());
    }
}
