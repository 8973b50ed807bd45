//! Read-only txns served outside the log: same answer as applying them, nothing changes.

use raftkv_mvcc::{validate, Config, Store};
use raftkv_proto::etcdserverpb::{
    compare, request_op::Request, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn read_only_txn_matches_the_applied_answer_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path())).unwrap();
    let put = PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    };
    store.put(1, &put).unwrap();
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: b"a".to_vec(),
            target_union: Some(compare::TargetUnion::Version(1)),
            ..Default::default()
        }],
        success: vec![range_op("a")],
        failure: vec![range_op("b")],
    };
    assert!(validate::is_read_only(&txn) && !validate::is_serializable(&txn));
    let read = store.txn_read(&txn).unwrap();
    assert!(read.succeeded);
    assert_eq!(read.header.as_ref().unwrap().revision, 2);
    assert_eq!(
        (store.revision().unwrap(), store.consistent_index().unwrap()),
        (2, 1)
    );
    let applied = store.txn(2, &txn).unwrap().unwrap();
    assert_eq!(read, applied);

    // A txn that writes is refused and changes nothing.
    let mut writes = txn.clone();
    writes.failure.push(RequestOp {
        request: Some(Request::RequestPut(put)),
    });
    assert!(!validate::is_read_only(&writes));
    assert!(store.txn_read(&writes).is_err());
    assert_eq!(store.revision().unwrap(), 2);
}
