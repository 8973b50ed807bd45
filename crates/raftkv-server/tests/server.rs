//! Three members in one process, driven through the etcd gRPC API: writes, reads on every
//! member, leases (grant, keep-alive through a follower, time-to-live, expiry, revoke), member
//! list and status, request limits, a restart from the data dir, the NOSPACE alarm, HashKV
//! across members, MoveLeader, backups, Lock/Election, metrics, and membership changes.

use std::time::{Duration, Instant};

use raftkv_proto::etcdserverpb::{
    alarm_request::AlarmAction, cluster_client::ClusterClient, compare, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, request_op, AlarmRequest,
    AlarmType, Compare, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberListRequest,
    MoveLeaderRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use raftkv_server::{Config, InitialMember, Server};
use tonic::transport::Channel;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Members {
    _dir: tempfile::TempDir,
    configs: Vec<Config>,
    servers: Vec<Option<Server>>,
}

fn configs(dir: &std::path::Path, n: usize) -> Vec<Config> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<InitialMember> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| InitialMember {
            name: format!("m{i}"),
            peer_urls: vec![format!("http://127.0.0.1:{p}")],
        })
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            let mut cfg = Config::new(format!("m{i}"), dir.join(format!("m{i}")));
            cfg.listen_client_urls = vec![format!("http://127.0.0.1:{c}")];
            cfg.listen_peer_urls = vec![format!("http://127.0.0.1:{p}")];
            cfg.initial_advertise_peer_urls = cfg.listen_peer_urls.clone();
            cfg.initial_cluster = initial.clone();
            cfg.lease_checkpoint_interval = Duration::from_secs(1);
            cfg
        })
        .collect()
}

impl Members {
    async fn start(n: usize) -> Members {
        Members::start_with(n, |_| {}).await
    }

    async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> Members {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut configs = configs(dir.path(), n);
        configs.iter_mut().for_each(tweak);
        let mut servers = Vec::new();
        for c in &configs {
            servers.push(Some(Server::start(c.clone()).await.unwrap()));
        }
        Members {
            _dir: dir,
            configs,
            servers,
        }
    }

    fn channel(&self, i: usize) -> Channel {
        let url = self.configs[i].listen_client_urls[0].clone();
        Channel::from_shared(url).unwrap().connect_lazy()
    }

    /// Member `i`'s id, from its Status header.
    async fn member_id(&self, i: usize) -> u64 {
        MaintenanceClient::new(self.channel(i))
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id
    }

    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for i in 0..self.servers.len() {
                if self.servers[i].is_none() {
                    continue;
                }
                let mut m = MaintenanceClient::new(self.channel(i));
                if let Ok(s) = m.status(StatusRequest {}).await {
                    let s = s.into_inner();
                    if s.leader != 0 && s.leader == s.header.unwrap().member_id {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn put(kv: &mut KvClient<Channel>, k: &str, v: &str, lease: i64) -> i64 {
    kv.put(PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn get(kv: &mut KvClient<Channel>, k: &str, serializable: bool) -> Option<Vec<u8>> {
    let r = kv
        .range(RangeRequest {
            key: k.into(),
            serializable,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs.first().map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_serve_the_etcd_api() {
    let mut m = Members::start(3).await;
    let leader = m.leader().await;
    let follower = (leader + 1) % 3;

    // Every member publishes its client URLs.
    let mut cl = ClusterClient::new(m.channel(leader));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = cl
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await
            .unwrap()
            .into_inner()
            .members;
        assert_eq!(members.len(), 3);
        if members.iter().all(|mm| !mm.client_ur_ls.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "client URLs never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes through a follower are forwarded by Raft; revisions start at 2.
    let mut kv = KvClient::new(m.channel(follower));
    assert_eq!(put(&mut kv, "a", "1", 0).await, 2);
    assert_eq!(put(&mut kv, "b", "2", 0).await, 3);
    for i in 0..3 {
        let mut kv = KvClient::new(m.channel(i));
        assert_eq!(get(&mut kv, "a", false).await.as_deref(), Some(&b"1"[..]));
    }

    // Header carries ids and term.
    let r = kv
        .range(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let h = r.header.unwrap();
    assert!(h.cluster_id != 0 && h.member_id != 0 && h.raft_term >= 1);
    assert_eq!(h.revision, 3);

    // Txn: compare and branch.
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: "a".into(),
            target_union: Some(compare::TargetUnion::Value("1".into())),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: "c".into(),
                value: "3".into(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let t = kv.txn(txn).await.unwrap().into_inner();
    assert!(t.succeeded);
    assert_eq!(t.header.unwrap().revision, 4);

    // Bad input: empty key, oversized request, unknown lease. Nothing changes.
    let e = kv.put(PutRequest::default()).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: key is not provided");
    let e = kv
        .put(PutRequest {
            key: "big".into(),
            value: vec![0; 1536 * 1024 + 1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large"
        )
    );
    let e = kv
        .put(PutRequest {
            key: "x".into(),
            lease: 12345,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    assert_eq!(
        put(&mut kv, "d", "4", 0).await,
        5,
        "refusals cost no revision"
    );

    // Leases: grant via a follower (server-chosen id), attach a key, keep alive through the
    // follower (forwarded to the leader), time to live with keys, revoke deletes the key.
    let mut lease = LeaseClient::new(m.channel(follower));
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(g.id > 0);
    assert_eq!(g.ttl, 2, "TTL raised to the minimum");
    put(&mut kv, "leased", "v", g.id).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id: g.id }).await.unwrap();
    let mut ka = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = ka.message().await.unwrap().unwrap();
    assert_eq!((r.id, r.ttl), (g.id, 2));
    tx.send(LeaseKeepAliveRequest { id: 999 }).await.unwrap();
    assert_eq!(
        ka.message().await.unwrap().unwrap().ttl,
        0,
        "unknown lease: TTL 0"
    );
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (t.granted_ttl, t.keys.clone()),
        (2, vec![b"leased".to_vec()])
    );
    assert!((0..=2).contains(&t.ttl), "{t:?}");
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 4242,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1);
    lease
        .lease_revoke(LeaseRevokeRequest { id: g.id })
        .await
        .unwrap();
    assert_eq!(get(&mut kv, "leased", false).await, None);

    // Expiry: a 2 s lease without keep-alives is revoked by the leader, its key deleted.
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 77 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.id, 77);
    let e = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 77 })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: lease already exists");
    put(&mut kv, "short", "v", 77).await;
    let granted = Instant::now();
    while get(&mut kv, "short", false).await.is_some() {
        assert!(
            granted.elapsed() < Duration::from_secs(8),
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        granted.elapsed() >= Duration::from_millis(1500),
        "expired early"
    );

    // Maintenance basics.
    let s = MaintenanceClient::new(m.channel(follower))
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.leader != 0 && s.raft_applied_index > 0 && s.db_size > 0);

    // A member restarts from its data dir and catches up.
    let s = m.servers[follower].take().unwrap();
    s.shutdown().await.unwrap();
    put(&mut KvClient::new(m.channel(leader)), "after", "restart", 0).await;
    m.servers[follower] = Some(Server::start(m.configs[follower].clone()).await.unwrap());
    let mut kv = KvClient::new(m.channel(follower));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut kv, "after", true).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "restarted member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&mut kv, "a", false).await.as_deref(), Some(&b"1"[..]));

    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_raises_nospace_and_refuses_writes_until_disarmed() {
    // A quota no store can meet: the first write raises the alarm.
    let mut m = Members::start_with(1, |c| c.quota_backend_bytes = 1).await;
    m.leader().await;
    let mut kv = KvClient::new(m.channel(0));
    let mut maint = MaintenanceClient::new(m.channel(0));
    let nospace = |e: tonic::Status| {
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded"
            )
        );
    };
    nospace(
        kv.put(PutRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    let get_alarms = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alarms = maint.alarm(get_alarms).await.unwrap().into_inner().alarms;
        if alarms.iter().any(|a| a.alarm == AlarmType::Nospace as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "NOSPACE never raised");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writes and lease grants are refused, deletes and reads still work; nothing changed.
    nospace(
        LeaseClient::new(m.channel(0))
            .lease_grant(LeaseGrantRequest { ttl: 5, id: 0 })
            .await
            .unwrap_err(),
    );
    let d = kv
        .delete_range(DeleteRangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 0);
    assert_eq!(d.header.unwrap().revision, 1, "no write got through");
    let s = maint.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(s.errors[0].contains("NOSPACE"), "{:?}", s.errors);
    // Disarming clears the alarm (the next write over quota raises it again).
    let r = maint
        .alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 0,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.alarms.len(), 1);
    let alarms = maint.alarm(get_alarms).await.unwrap().into_inner().alarms;
    assert!(alarms.is_empty(), "{alarms:?}");
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hash_equal_and_leadership_moves_on_request() {
    let mut m = Members::start(3).await;
    let leader = m.leader().await;
    let mut kv = KvClient::new(m.channel(leader));
    for i in 0..20 {
        put(&mut kv, &format!("k{}", i % 7), &format!("v{i}"), 0).await;
    }
    let rev = put(&mut kv, "last", "v", 0).await;
    // Every member reaches `rev`, then hashes the same content.
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut maint = MaintenanceClient::new(m.channel(i));
        let deadline = Instant::now() + Duration::from_secs(10);
        let h = loop {
            match maint.hash_kv(HashKvRequest { revision: rev }).await {
                Ok(h) => break h.into_inner(),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "member {i} never reached {rev}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(h.hash_revision, rev);
        hashes.push(h.hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // MoveLeader: refused by a follower, done by the leader.
    let target = (leader + 1) % 3;
    let target_id = m.member_id(target).await;
    let e = MaintenanceClient::new(m.channel(target))
        .move_leader(MoveLeaderRequest { target_id })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::FailedPrecondition, "etcdserver: not leader")
    );
    MaintenanceClient::new(m.channel(leader))
        .move_leader(MoveLeaderRequest { target_id })
        .await
        .unwrap();
    assert_eq!(m.leader().await, target);
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restores_into_a_new_cluster_with_the_same_content() {
    use raftkv_proto::etcdserverpb::SnapshotRequest;
    let mut m = Members::start(3).await;
    let leader = m.leader().await;
    let mut kv = KvClient::new(m.channel(leader));
    for i in 0..50 {
        put(&mut kv, &format!("k{:02}", i % 13), &format!("v{i}"), 0).await;
    }
    let g = LeaseClient::new(m.channel(leader))
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 9 })
        .await
        .unwrap()
        .into_inner();
    let rev = put(&mut kv, "leased", "x", g.id).await;

    // Save: the stream's first header names the revision; the bytes go to a file.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let mut stream = MaintenanceClient::new(m.channel(leader))
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut header_rev = None;
    while let Some(msg) = stream.message().await.unwrap() {
        if let Some(h) = msg.header {
            header_rev = Some(h.revision);
        }
        bytes.extend_from_slice(&msg.blob);
        if msg.remaining_bytes == 0 {
            break;
        }
    }
    assert_eq!(header_rev, Some(rev));
    // etcd's shape, which the stock etcdctl requires: 512 * k + 32 bytes, the last 32 the
    // SHA-256 of everything before them.
    assert_eq!(bytes.len() % 512, 32, "stream of {} bytes", bytes.len());
    {
        use sha2::Digest as _;
        let (body, trailer) = bytes.split_at(bytes.len() - 32);
        assert_eq!(sha2::Sha256::digest(body).as_slice(), trailer);
    }
    std::fs::write(&backup, &bytes).unwrap();
    let want = MaintenanceClient::new(m.channel(leader))
        .hash_kv(HashKvRequest { revision: rev })
        .await
        .unwrap()
        .into_inner()
        .hash;
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }

    // A damaged file is refused before anything is written, with or without the hash check:
    // one flipped byte in the padding (or, without padding, the store's final checksum).
    let mut damaged = bytes.clone();
    let at = bytes.len() - 33;
    damaged[at] ^= 0x5a;
    let bad = dir.path().join("damaged.db");
    std::fs::write(&bad, &damaged).unwrap();
    let bad_cfg = configs(&dir.path().join("bad"), 1).remove(0);
    let err = raftkv_server::backup::restore_data_dir(&bad, &bad_cfg)
        .expect_err("a damaged backup")
        .to_string();
    assert!(
        err.contains("snapshot file integrity check failed"),
        "{err}"
    );
    assert!(
        !bad_cfg.data_dir.exists(),
        "a refused restore left a data dir"
    );
    let err = raftkv_server::backup::restore_data_dir_with(&bad, &bad_cfg, true)
        .expect_err("a damaged backup, hash unchecked");
    assert!(
        !bad_cfg.data_dir.exists(),
        "a failed restore left a data dir: {err}"
    );
    // Without its trailer, only with --skip-hash-check (etcdctl's rule).
    let trimmed = dir.path().join("trimmed.db");
    std::fs::write(&trimmed, &bytes[..bytes.len() - 32]).unwrap();
    let err = raftkv_server::backup::restore_data_dir(&trimmed, &bad_cfg)
        .expect_err("a backup without its hash")
        .to_string();
    assert!(err.contains("snapshot missing hash"), "{err}");
    assert_eq!(
        raftkv_server::backup::restore_data_dir_with(&trimmed, &bad_cfg, true).unwrap(),
        rev
    );

    // Restore into a new single-member cluster: same content, same hash, leases kept.
    let cfg = configs(&dir.path().join("restored"), 1).remove(0);
    let restored = raftkv_server::backup::restore_data_dir(&backup, &cfg).unwrap();
    assert_eq!(restored, rev);
    assert!(
        raftkv_server::backup::restore_data_dir(&backup, &cfg).is_err(),
        "an existing data dir is refused"
    );
    let one = Members {
        _dir: dir,
        configs: vec![cfg.clone()],
        servers: vec![Some(Server::start(cfg).await.unwrap())],
    };
    one.leader().await;
    let mut maint = MaintenanceClient::new(one.channel(0));
    let h = maint
        .hash_kv(HashKvRequest { revision: rev })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.hash, want);
    let mut kv = KvClient::new(one.channel(0));
    assert_eq!(
        get(&mut kv, "k00", false).await.as_deref(),
        Some(&b"v39"[..])
    );
    let t = LeaseClient::new(one.channel(0))
        .lease_time_to_live(LeaseTimeToLiveRequest { id: 9, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((t.granted_ttl, t.keys), (600, vec![b"leased".to_vec()]));
    // The new cluster takes writes after the restored revision.
    assert_eq!(put(&mut kv, "new", "w", 0).await, rev + 1);
    let mut one = one;
    for s in one.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

/// A plain HTTP/1.1 GET; returns the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_over_http() {
    let port = free_port();
    let mut m = Members::start_with(1, |c| {
        c.listen_metrics_urls = vec![format!("http://127.0.0.1:{port}")];
    })
    .await;
    m.leader().await;
    let addr = m.servers[0].as_ref().unwrap().metrics_addrs()[0];
    let mut kv = KvClient::new(m.channel(0));
    put(&mut kv, "k", "v", 0).await;
    let (status, body) = http_get(addr, "/health").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    let (status, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for name in [
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "raftkv_apply_duration_seconds_bucket",
        "raftkv_proposals_committed_total",
        "etcd_mvcc_db_total_size_in_bytes",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_follow_etcd() {
    use raftkv_proto::v3electionpb::{
        election_client::ElectionClient, CampaignRequest, LeaderRequest, ProclaimRequest,
        ResignRequest,
    };
    use raftkv_proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
    let mut m = Members::start(3).await;
    let leader = m.leader().await;
    let mut leases = LeaseClient::new(m.channel(leader));
    for id in [0xa, 0xb] {
        leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id })
            .await
            .unwrap();
    }

    // Lock: the second holder waits until the first unlocks; keys follow etcd's layout and
    // their create revisions (the fencing tokens) grow.
    let mut lock = LockClient::new(m.channel((leader + 1) % 3));
    let first = lock
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: 0xa,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.key, b"jobs/a");
    let mut other = LockClient::new(m.channel((leader + 2) % 3));
    let second = tokio::spawn(async move {
        other
            .lock(LockRequest {
                name: b"jobs".to_vec(),
                lease: 0xb,
            })
            .await
            .map(tonic::Response::into_inner)
    });
    let mut kv = KvClient::new(m.channel(leader));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut kv, "jobs/b", false).await.is_none() {
        assert!(Instant::now() < deadline, "second contender never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !second.is_finished(),
        "second lock granted while the first is held"
    );
    lock.unlock(UnlockRequest {
        key: first.key.clone(),
    })
    .await
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("second lock never granted")
        .unwrap()
        .unwrap();
    assert_eq!(second.key, b"jobs/b");
    let rev_of = |r: RangeRequest| {
        let mut kv = kv.clone();
        async move { kv.range(r).await.unwrap().into_inner().kvs[0].create_revision }
    };
    let token_b = rev_of(RangeRequest {
        key: b"jobs/b".to_vec(),
        ..Default::default()
    })
    .await;
    assert!(token_b > 0);

    // Election: the first campaigner leads; observers see it; a resign hands over.
    let mut el = ElectionClient::new(m.channel(leader));
    let a = el
        .campaign(CampaignRequest {
            name: b"boss".to_vec(),
            lease: 0xa,
            value: b"A".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    let mut observe = el
        .observe(LeaderRequest {
            name: b"boss".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen = observe.message().await.unwrap().unwrap().kv.unwrap();
    assert_eq!(seen.value, b"A");
    let mut el_b = ElectionClient::new(m.channel((leader + 1) % 3));
    let b = tokio::spawn(async move {
        el_b.campaign(CampaignRequest {
            name: b"boss".to_vec(),
            lease: 0xb,
            value: b"B".to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
    });
    el.proclaim(ProclaimRequest {
        leader: Some(a.clone()),
        value: b"A2".to_vec(),
    })
    .await
    .unwrap();
    assert_eq!(
        observe.message().await.unwrap().unwrap().kv.unwrap().value,
        b"A2"
    );
    let l = el
        .leader(LeaderRequest {
            name: b"boss".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.kv.unwrap().value, b"A2");
    el.resign(ResignRequest {
        leader: Some(a.clone()),
    })
    .await
    .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("B never elected")
        .unwrap()
        .unwrap();
    assert_eq!(b.leader.unwrap().key, b"boss/b");
    assert_eq!(
        observe.message().await.unwrap().unwrap().kv.unwrap().value,
        b"B"
    );
    let e = el
        .proclaim(ProclaimRequest {
            leader: Some(a),
            value: b"stale".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "election: not leader");
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_grows_by_learner_and_voter_then_shrinks_past_its_leader() {
    use raftkv_proto::etcdserverpb::{MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest};
    use raftkv_server::ClusterState;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let all = configs(dir.path(), 3);
    // Member `i` started with the first `n` members as its initial cluster.
    let with_members = |i: usize, n: usize, state: ClusterState| {
        let mut c = all[i].clone();
        c.initial_cluster = all[0].initial_cluster[..n].to_vec();
        c.initial_cluster_state = state;
        c
    };
    // One founding member.
    let mut m = Members {
        _dir: dir,
        configs: all.clone(),
        servers: vec![
            Some(
                Server::start(with_members(0, 1, ClusterState::New))
                    .await
                    .unwrap(),
            ),
            None,
            None,
        ],
    };
    assert_eq!(m.leader().await, 0);
    let mut kv = KvClient::new(m.channel(0));
    for i in 0..30 {
        put(&mut kv, &format!("k{i}"), "v", 0).await;
    }
    let mut cl = ClusterClient::new(m.channel(0));

    // A learner joins and catches up; promoting it before it has started is refused.
    let peer = |i: usize| all[i].initial_advertise_peer_urls.clone();
    let added = cl
        .member_add(MemberAddRequest {
            peer_ur_ls: peer(1),
            is_learner: true,
        })
        .await
        .unwrap()
        .into_inner();
    let learner = added.member.unwrap();
    assert!(learner.is_learner);
    assert_eq!(added.members.len(), 2);
    let e = cl
        .member_add(MemberAddRequest {
            peer_ur_ls: peer(1),
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: Peer URLs already exists");
    m.servers[1] = Some(
        Server::start(with_members(1, 2, ClusterState::Existing))
            .await
            .unwrap(),
    );
    let mut kv1 = KvClient::new(m.channel(1));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&mut kv1, "k29", true).await.is_none() {
        assert!(Instant::now() < deadline, "learner never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match cl
            .member_promote(MemberPromoteRequest { id: learner.id })
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "promote never accepted: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // A voter joins.
    cl.member_add(MemberAddRequest {
        peer_ur_ls: peer(2),
        is_learner: false,
    })
    .await
    .unwrap();
    m.servers[2] = Some(
        Server::start(with_members(2, 3, ClusterState::Existing))
            .await
            .unwrap(),
    );
    let mut kv2 = KvClient::new(m.channel(2));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&mut kv2, "k29", true).await.is_none() {
        assert!(Instant::now() < deadline, "third member never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rev = put(&mut kv2, "after-grow", "v", 0).await;
    let members = cl
        .member_list(MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|mm| !mm.is_learner), "{members:?}");
    // Every member agrees on the content.
    let mut hashes = Vec::new();
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut maint = MaintenanceClient::new(m.channel(i));
        loop {
            match maint.hash_kv(HashKvRequest { revision: rev }).await {
                Ok(h) => {
                    hashes.push(h.into_inner().hash);
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "{i}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // Remove the leader: leadership moves first, writes continue on the two left.
    let leader = m.leader().await;
    let leader_id = MaintenanceClient::new(m.channel(leader))
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .leader;
    let survivor = (leader + 1) % 3;
    let left = ClusterClient::new(m.channel(survivor))
        .member_remove(MemberRemoveRequest { id: leader_id })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(left.len(), 2);
    let s = m.servers[leader].take().unwrap();
    s.shutdown().await.unwrap();
    let mut kv = KvClient::new(m.channel(survivor));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match kv
            .put(PutRequest {
                key: "after-shrink".into(),
                value: "v".into(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no writes after removing the leader: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

/// Removing the leader through a follower: the follower hands the request to the leader, which
/// moves leadership to another voter before the removal is proposed. So when the removal
/// answers, the follower already follows a new leader (no election timeout to wait out, here
/// 3 s), and a write issued right away commits (before, the follower proposed the removal
/// itself; the removed leader kept its role and dropped the next proposals, which answered
/// "request timed out" after 7 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_through_a_follower_hands_leadership_over_first() {
    use raftkv_proto::etcdserverpb::MemberRemoveRequest;
    let mut m = Members::start_with(3, |c| c.election_timeout = Duration::from_secs(3)).await;
    let leader = m.leader().await;
    let leader_id = m.member_id(leader).await;
    let follower = (leader + 1) % 3;
    let mut kv = KvClient::new(m.channel(follower));
    put(&mut kv, "before", "v", 0).await;

    let left = ClusterClient::new(m.channel(follower))
        .member_remove(MemberRemoveRequest { id: leader_id })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|mm| mm.id != leader_id), "{left:?}");
    // The follower answered once the removal applied there, and already follows another leader.
    let st = MaintenanceClient::new(m.channel(follower))
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        st.leader != 0 && st.leader != leader_id,
        "right after removing the leader {leader_id:x}, the follower's leader is {:x}",
        st.leader
    );
    // A write right away commits, without waiting out an election.
    let started = Instant::now();
    let put = tokio::time::timeout(
        Duration::from_secs(5),
        kv.put(PutRequest {
            key: "after-remove".into(),
            value: "v".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("a write right after removing the leader got no answer in 5 s")
    .expect("a write right after removing the leader");
    assert!(put.into_inner().header.unwrap().revision > 0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the write took {took:?}");
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_update_moves_a_member_to_new_peer_urls() {
    use raftkv_proto::etcdserverpb::MemberUpdateRequest;
    let mut m = Members::start(3).await;
    let leader = m.leader().await;
    let moved = (leader + 1) % 3;
    let moved_id = m.member_id(moved).await;
    let mut cl = ClusterClient::new(m.channel(leader));
    let update = |id: u64, urls: Vec<String>| MemberUpdateRequest {
        id,
        peer_ur_ls: urls,
    };
    // Refusals change nothing.
    let e = cl
        .member_update(update(moved_id ^ 1, vec!["http://127.0.0.1:1".into()]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::NotFound, "etcdserver: member not found")
    );
    let taken = m.configs[leader].initial_advertise_peer_urls.clone();
    let e = cl.member_update(update(moved_id, taken)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists"
        )
    );
    let e = cl
        .member_update(update(moved_id, vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // The member moves to a new peer port: update, then restart it listening there.
    let new_url = format!("http://127.0.0.1:{}", free_port());
    let members = cl
        .member_update(update(moved_id, vec![new_url.clone()]))
        .await
        .unwrap()
        .into_inner()
        .members;
    let entry = members.iter().find(|mm| mm.id == moved_id).unwrap();
    assert_eq!(entry.peer_ur_ls, vec![new_url.clone()]);
    // Every member's table learns it.
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = ClusterClient::new(m.channel(i))
                .member_list(MemberListRequest {
                    linearizable: false,
                })
                .await
                .unwrap()
                .into_inner()
                .members;
            if list
                .iter()
                .any(|mm| mm.id == moved_id && mm.peer_ur_ls == vec![new_url.clone()])
            {
                break;
            }
            assert!(Instant::now() < deadline, "member {i} never saw the update");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    m.servers[moved].take().unwrap().shutdown().await.unwrap();
    let mut cfg = m.configs[moved].clone();
    cfg.listen_peer_urls = vec![new_url.clone()];
    cfg.initial_advertise_peer_urls = vec![new_url];
    m.servers[moved] = Some(Server::start(cfg).await.unwrap());
    // Writes made now reach the moved member over its new link.
    let leader = m.leader().await;
    let mut kv = KvClient::new(m.channel(leader));
    put(&mut kv, "after-move", "v", 0).await;
    let mut kv_moved = KvClient::new(m.channel(moved));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&mut kv_moved, "after-move", true).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the moved member never received new entries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in m.servers.iter_mut().filter_map(Option::take) {
        s.shutdown().await.unwrap();
    }
}
