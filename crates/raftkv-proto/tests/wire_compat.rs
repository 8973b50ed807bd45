//! Wire-compatibility checks against etcd v3: exact bytes, field numbers and
//! RPC shapes that stock etcd clients depend on.

use prost::Message;
use prost_types::{FileDescriptorSet, MethodDescriptorProto};
use raftkv_proto::etcdserverpb::{
    compare, request_op, response_op, watch_request, Compare, LeaseGrantRequest, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchRequest,
};
use raftkv_proto::mvccpb::KeyValue;
use raftkv_proto::raftkvpb::{raft_request, RaftRequest};
use raftkv_proto::FILE_DESCRIPTOR_SET;

#[test]
fn put_request_exact_bytes() {
    let req = PutRequest {
        key: b"foo".to_vec(),
        value: b"bar".to_vec(),
        lease: 5,
        prev_kv: true,
        ..Default::default()
    };
    let expected: &[u8] = &[
        0x0a, 3, b'f', b'o', b'o', // 1: key
        0x12, 3, b'b', b'a', b'r', // 2: value
        0x18, 5, // 3: lease
        0x20, 1, // 4: prev_kv
    ];
    assert_eq!(req.encode_to_vec(), expected);

    let flags = PutRequest {
        ignore_value: true,
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(flags.encode_to_vec(), [0x28, 1, 0x30, 1]); // 5, 6
}

#[test]
fn compare_range_end_is_field_64() {
    let cmp = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(7)),
    };
    let bytes = cmp.encode_to_vec();
    // Tag (64 << 3) | 2 = 514, varint 0x82 0x04.
    assert!(
        bytes.windows(4).any(|w| w == [0x82, 0x04, 1, b'l']),
        "{bytes:x?}"
    );

    // The same message in field order, as a Go client encodes it.
    let go: &[u8] = &[
        0x08, 1, // 1: result GREATER
        0x10, 2, // 2: target MOD
        0x1a, 1, b'k', // 3: key
        0x30, 7, // 6: mod_revision
        0x82, 0x04, 1, b'l', // 64: range_end
    ];
    assert_eq!(Compare::decode(go).unwrap(), cmp);

    // Every target_union case keeps its number.
    for (union, tag) in [
        (compare::TargetUnion::Version(1), 0x20),
        (compare::TargetUnion::CreateRevision(1), 0x28),
        (compare::TargetUnion::ModRevision(1), 0x30),
        (compare::TargetUnion::Lease(1), 0x40),
    ] {
        let c = Compare {
            target_union: Some(union),
            ..Default::default()
        };
        assert_eq!(c.encode_to_vec(), [tag, 1]);
    }
    let c = Compare {
        target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
        ..Default::default()
    };
    assert_eq!(c.encode_to_vec(), [0x3a, 1, b'v']);
}

#[test]
fn enum_values() {
    use raftkv_proto::etcdserverpb::{range_request, watch_create_request, AlarmType};
    assert_eq!(compare::CompareResult::NotEqual as i32, 3);
    assert_eq!(compare::CompareTarget::Lease as i32, 4);
    assert_eq!(range_request::SortOrder::Descend as i32, 2);
    assert_eq!(range_request::SortTarget::Value as i32, 4);
    assert_eq!(watch_create_request::FilterType::Nodelete as i32, 1);
    assert_eq!(AlarmType::Nospace as i32, 1);
    assert_eq!(AlarmType::Corrupt as i32, 2);
    assert_eq!(raftkv_proto::mvccpb::event::EventType::Delete as i32, 1);
    assert_eq!(raftkv_proto::authpb::permission::Type::Readwrite as i32, 2);
}

#[test]
fn range_request_fields() {
    let req = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        limit: 1,
        revision: 2,
        sort_order: 1,
        sort_target: 3,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 4,
        max_mod_revision: 5,
        min_create_revision: 6,
        max_create_revision: 7,
    };
    let expected: &[u8] = &[
        0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 1, 0x20, 2, 0x28, 1, 0x30, 3, 0x38, 1, 0x40, 1, 0x48,
        1, 0x50, 4, 0x58, 5, 0x60, 6, 0x68, 7,
    ];
    assert_eq!(req.encode_to_vec(), expected);
}

#[test]
fn range_response_round_trip() {
    let resp = RangeResponse {
        header: Some(ResponseHeader {
            cluster_id: 0xdead_beef,
            member_id: 42,
            revision: 9,
            raft_term: 3,
        }),
        kvs: vec![KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 9,
            version: 4,
            value: b"bar".to_vec(),
            lease: 0x1234,
        }],
        more: true,
        count: 17,
    };
    let bytes = resp.encode_to_vec();
    assert_eq!(RangeResponse::decode(bytes.as_slice()).unwrap(), resp);

    // A KeyValue encoded by hand in etcd's field order.
    let kv: &[u8] = &[
        0x0a, 1, b'k', 0x10, 2, 0x18, 3, 0x20, 4, 0x2a, 1, b'v', 0x30, 6,
    ];
    let kv = KeyValue::decode(kv).unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (2, 3, 4, 6)
    );
    assert_eq!(kv.value, b"v");
}

#[test]
fn txn_nesting_and_oneofs() {
    let inner = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"x".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let op = RequestOp {
        request: Some(request_op::Request::RequestTxn(inner.clone())),
    };
    let bytes = op.encode_to_vec();
    // 4: request_txn { 2: success { 2: request_put { 1: key } } }
    assert_eq!(bytes, [0x22, 7, 0x12, 5, 0x12, 3, 0x0a, 1, b'x']);
    assert_eq!(RequestOp::decode(bytes.as_slice()).unwrap(), op);

    let resp = ResponseOp {
        response: Some(response_op::Response::ResponseTxn(TxnResponse {
            succeeded: true,
            ..Default::default()
        })),
    };
    assert_eq!(resp.encode_to_vec(), [0x22, 2, 0x10, 1]);
}

#[test]
fn watch_and_lease_fields() {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                start_revision: 5,
                filters: vec![1],
                prev_kv: true,
                watch_id: 9,
                fragment: true,
                ..Default::default()
            },
        )),
    };
    // filters is a packed repeated enum (proto3 default), like etcd's Go encoding.
    assert_eq!(
        create.encode_to_vec(),
        [0x0a, 14, 0x0a, 1, b'k', 0x18, 5, 0x2a, 1, 1, 0x30, 1, 0x38, 9, 0x40, 1]
    );
    let progress = WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            Default::default(),
        )),
    };
    assert_eq!(progress.encode_to_vec(), [0x1a, 0]);

    let grant = LeaseGrantRequest { ttl: 10, id: 7 };
    assert_eq!(grant.encode_to_vec(), [0x08, 10, 0x10, 7]);
}

#[test]
fn raft_request_layout() {
    let req = RaftRequest {
        id: 1,
        request: Some(raft_request::Request::Put(PutRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })),
    };
    assert_eq!(req.encode_to_vec(), [0x08, 1, 0x52, 3, 0x0a, 1, b'a']);
}

fn method<'a>(fds: &'a FileDescriptorSet, service: &str, name: &str) -> &'a MethodDescriptorProto {
    let (package, service) = service.rsplit_once('.').unwrap();
    fds.file
        .iter()
        .filter(|f| f.package() == package)
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == service)
        .flat_map(|s| &s.method)
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("{package}.{service}/{name} missing"))
}

#[test]
fn services_in_descriptor() {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let streaming = |svc: &str, m: &str| {
        let m = method(&fds, svc, m);
        (m.client_streaming(), m.server_streaming())
    };

    for m in ["Range", "Put", "DeleteRange", "Txn", "Compact"] {
        assert_eq!(streaming("etcdserverpb.KV", m), (false, false), "{m}");
    }
    assert_eq!(
        method(&fds, "etcdserverpb.KV", "Compact").input_type(),
        ".etcdserverpb.CompactionRequest"
    );
    assert_eq!(streaming("etcdserverpb.Watch", "Watch"), (true, true));
    assert_eq!(
        streaming("etcdserverpb.Lease", "LeaseKeepAlive"),
        (true, true)
    );
    for m in [
        "LeaseGrant",
        "LeaseRevoke",
        "LeaseTimeToLive",
        "LeaseLeases",
    ] {
        assert_eq!(streaming("etcdserverpb.Lease", m), (false, false), "{m}");
    }
    assert_eq!(
        streaming("etcdserverpb.Maintenance", "Snapshot"),
        (false, true)
    );
    for m in [
        "Alarm",
        "Status",
        "Defragment",
        "Hash",
        "HashKV",
        "MoveLeader",
        "Downgrade",
    ] {
        assert_eq!(
            streaming("etcdserverpb.Maintenance", m),
            (false, false),
            "{m}"
        );
    }
    for m in [
        "MemberAdd",
        "MemberRemove",
        "MemberUpdate",
        "MemberList",
        "MemberPromote",
    ] {
        assert_eq!(streaming("etcdserverpb.Cluster", m), (false, false), "{m}");
    }
    assert_eq!(
        method(&fds, "etcdserverpb.Auth", "UserAdd").input_type(),
        ".etcdserverpb.AuthUserAddRequest"
    );
    assert_eq!(streaming("v3lockpb.Lock", "Lock"), (false, false));
    assert_eq!(streaming("v3lockpb.Lock", "Unlock"), (false, false));
    assert_eq!(streaming("v3electionpb.Election", "Observe"), (false, true));
    assert_eq!(
        streaming("v3electionpb.Election", "Campaign"),
        (false, false)
    );
    assert_eq!(streaming("raftkvpb.Peer", "Messages"), (true, false));
    assert_eq!(streaming("raftkvpb.Peer", "Snapshot"), (true, false));

    let auth: Vec<_> = fds
        .file
        .iter()
        .filter(|f| f.package() == "etcdserverpb")
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "Auth")
        .unwrap()
        .method
        .iter()
        .map(|m| m.name())
        .collect();
    assert_eq!(auth.len(), 17, "{auth:?}");
}
