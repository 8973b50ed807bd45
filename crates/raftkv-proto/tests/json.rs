//! The generated serde impls speak etcd 3.4's gateway JSON: proto field names as written in the
//! .proto files (`create_revision`, but also etcd's `ID`, `TTL`, `peerURLs`), 64-bit integers as
//! strings, bytes as base64, zero values omitted, enums by name; input takes either spelling.

use raftkv_proto::etcdserverpb::{
    LeaseTimeToLiveResponse, Member, MemberListResponse, StatusResponse, WatchRequest,
    WatchResponse,
};
use raftkv_proto::mvccpb::{event::EventType, Event, KeyValue};

#[test]
fn output_uses_proto_names_and_etcds_encodings() {
    let ttl = LeaseTimeToLiveResponse {
        header: None,
        id: 7,
        ttl: -1,
        granted_ttl: 0,
        keys: vec![b"k".to_vec()],
    };
    assert_eq!(
        serde_json::to_string(&ttl).unwrap(),
        r#"{"ID":"7","TTL":"-1","keys":["aw=="]}"#
    );
    let list = MemberListResponse {
        header: None,
        members: vec![Member {
            id: u64::MAX,
            name: "m0".into(),
            peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
            client_ur_ls: vec![],
            is_learner: false,
        }],
    };
    assert_eq!(
        serde_json::to_string(&list).unwrap(),
        r#"{"members":[{"ID":"18446744073709551615","name":"m0","peerURLs":["http://127.0.0.1:2380"]}]}"#
    );
    let status = StatusResponse {
        db_size: 20480,
        raft_index: 3,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&status).unwrap(),
        r#"{"dbSize":"20480","raftIndex":"3"}"#
    );
    let watch = WatchResponse {
        watch_id: -1,
        compact_revision: 3,
        canceled: true,
        events: vec![Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: b"a".to_vec(),
                mod_revision: 5,
                ..Default::default()
            }),
            prev_kv: None,
        }],
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&watch).unwrap(),
        r#"{"watch_id":"-1","canceled":true,"compact_revision":"3","events":[{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"5"}}]}"#
    );
}

#[test]
fn input_takes_both_spellings_and_oneofs_by_field_name() {
    let a: WatchRequest = serde_json::from_str(
        r#"{"create_request":{"key":"YQ==","range_end":"Yg==","start_revision":"2","prev_kv":true,"filters":["NOPUT"]}}"#,
    )
    .unwrap();
    let b: WatchRequest = serde_json::from_str(
        r#"{"createRequest":{"key":"YQ==","rangeEnd":"Yg==","startRevision":2,"prevKv":true,"filters":[0]}}"#,
    )
    .unwrap();
    assert_eq!(a, b);
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(
        json,
        r#"{"create_request":{"key":"YQ==","range_end":"Yg==","start_revision":"2","filters":["NOPUT"],"prev_kv":true}}"#
    );
}
