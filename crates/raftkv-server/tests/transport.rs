//! The gRPC peer transport between three real nodes (WAL in tempdirs, a small state machine),
//! connected only through `PeerService` servers on 127.0.0.1 and `PeerTransport`s: proposals
//! commit and apply everywhere; a member whose server goes away and comes back on the same port
//! catches up once the others' links re-dial; a member that missed compacted entries is caught
//! up by a snapshot streamed through the transport.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_raft::node::{self, NodeConfig};
use raftkv_raft::{
    NodeHandle, RequestError, SnapshotSource, StateMachine, StorageConfig, WalConfig, WalStorage,
};
use raftkv_server::transport::{PeerCloser, PeerService, PeerTransport};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// What one member's state machine holds; shared with the test so it can look inside.
#[derive(Default)]
struct State {
    applied: u64,
    data: Vec<Vec<u8>>,
    /// How many snapshots were installed.
    restores: usize,
}

/// An append-only log of payloads that snapshots as (applied, payloads).
struct Log(Arc<Mutex<State>>);

type Out = (u64, usize);

impl StateMachine for Log {
    type Output = Out;

    fn applied_index(&self) -> u64 {
        self.0.lock().unwrap().applied
    }

    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> Option<Out> {
        let mut s = self.0.lock().unwrap();
        if index <= s.applied {
            return None;
        }
        s.applied = index;
        s.data.push(data.to_vec());
        Some((index, s.data.len()))
    }

    fn skip(&mut self, index: u64) {
        let mut s = self.0.lock().unwrap();
        s.applied = s.applied.max(index);
    }

    fn persist(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotSource>, String> {
        let s = self.0.lock().unwrap();
        Ok(Box::new(LogSnapshot(s.applied, s.data.clone())))
    }

    fn restore(&mut self, r: &mut dyn std::io::Read) -> Result<(), String> {
        let mut word = [0u8; 8];
        let mut next = |r: &mut dyn std::io::Read| -> Result<Option<u64>, String> {
            match r.read_exact(&mut word) {
                Ok(()) => Ok(Some(u64::from_be_bytes(word))),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        let applied = next(r)?.ok_or("empty snapshot")?;
        let mut data = Vec::new();
        while let Some(len) = next(r)? {
            let mut d = vec![0; len as usize];
            r.read_exact(&mut d).map_err(|e| e.to_string())?;
            data.push(d);
        }
        let mut s = self.0.lock().unwrap();
        (s.applied, s.data) = (applied, data);
        s.restores += 1;
        Ok(())
    }
}

struct LogSnapshot(u64, Vec<Vec<u8>>);

impl SnapshotSource for LogSnapshot {
    fn write_to(&mut self, w: &mut dyn std::io::Write) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        w.write_all(&self.0.to_be_bytes()).map_err(io)?;
        for d in &self.1 {
            w.write_all(&(d.len() as u64).to_be_bytes()).map_err(io)?;
            w.write_all(d).map_err(io)?;
        }
        Ok(())
    }
}

/// A running peer server: its listener closes and its streams end on [`Served::stop`].
struct Served {
    closer: PeerCloser,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

fn serve(node: NodeHandle<Out>, listener: TcpListener) -> Served {
    let service = PeerService::new(node);
    let closer = service.closer();
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(
        Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Served { closer, stop, task }
}

impl Served {
    /// Stops accepting, ends the open peer streams, and waits for the server to finish.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.closer.close();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the peer server stops within 5 s")
            .unwrap()
            .unwrap();
    }
}

struct Member {
    addr: SocketAddr,
    node: NodeHandle<Out>,
    state: Arc<Mutex<State>>,
    server: Option<Served>,
}

impl Member {
    fn len(&self) -> usize {
        self.state.lock().unwrap().data.len()
    }

    fn restores(&self) -> usize {
        self.state.lock().unwrap().restores
    }

    /// Serves again on the same port (retried until a deadline: the old socket may linger).
    async fn restart_server(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "cannot rebind {}: {e}",
                    self.addr
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.server = Some(serve(self.node.clone(), listener));
    }

    async fn stop_server(&mut self) {
        self.server.take().expect("server running").stop().await;
    }
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=raftkv_server=debug`).
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Three founding voters, ids 1..=3 (index = id - 1). Keep the tempdir alive.
async fn cluster(snapshot_every: u64) -> (tempfile::TempDir, Vec<Member>) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let peers: Vec<(u64, Vec<String>)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, vec![format!("http://{a}")]))
        .collect();
    let mut members = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let storage_cfg = StorageConfig {
            wal: WalConfig {
                fsync: false,
                ..WalConfig::default()
            },
            ..StorageConfig::default()
        };
        let (storage, _) = WalStorage::open(dir.path().join(id.to_string()), storage_cfg).unwrap();
        let mut cfg = NodeConfig::new(id);
        cfg.tick = Duration::from_millis(50);
        cfg.request_timeout = Duration::from_secs(5);
        cfg.core.snapshot_every = snapshot_every;
        cfg.core.keep_entries = 0;
        let transport =
            PeerTransport::new(tokio::runtime::Handle::current(), id, peers.clone()).unwrap();
        assert_eq!(transport.peers().len(), 2, "its own id is skipped");
        let state = Arc::new(Mutex::new(State::default()));
        let (node, _join) =
            node::start(cfg, storage, Log(Arc::clone(&state)), &[1, 2, 3], transport).unwrap();
        let server = Some(serve(node.clone(), listener));
        members.push(Member {
            addr: addrs[i],
            node,
            state,
            server,
        });
    }
    (dir, members)
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader's index in `members` once all of them agree on one.
async fn leader(members: &[Member]) -> usize {
    let mut leader = 0;
    eventually(
        "a leader every member knows",
        Duration::from_secs(10),
        || {
            leader = members[0].node.status().leader;
            leader != 0 && members.iter().all(|m| m.node.status().leader == leader)
        },
    )
    .await;
    leader as usize - 1
}

/// Proposes, retrying only a proposal raft dropped for want of a leader (never appended).
async fn propose(n: &NodeHandle<Out>, data: Vec<u8>) -> Out {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match n.propose(data.clone()).await {
            Err(RequestError::NoLeader) if Instant::now() < deadline => {
                let mut status = n.watch_status();
                let _ = tokio::time::timeout_at(deadline, status.wait_for(|s| s.leader != 0)).await;
            }
            out => return out.expect("proposal applied"),
        }
    }
}

/// Waits until every listed member has applied `count` payloads, then checks they agree.
async fn all_applied(members: &[&Member], count: usize) {
    eventually(
        &format!("{count} entries applied on every member"),
        Duration::from_secs(10),
        || members.iter().all(|m| m.len() >= count),
    )
    .await;
    let first = members[0].state.lock().unwrap().data.clone();
    assert_eq!(first.len(), count);
    for m in members {
        assert_eq!(m.state.lock().unwrap().data, first, "members agree");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_commit_and_apply_on_every_member() {
    let (_dir, members) = cluster(10_000).await;
    let leader = leader(&members).await;
    let mut last = 0;
    for i in 0..100u32 {
        let (index, count) = propose(&members[leader].node, i.to_be_bytes().to_vec()).await;
        assert!(index > last, "indexes grow");
        assert_eq!(count, i as usize + 1, "each proposal applied once");
        last = index;
    }
    // A proposal through a follower is forwarded to the leader over the transport too.
    let follower = (leader + 1) % 3;
    let (_, count) = propose(&members[follower].node, b"via follower".to_vec()).await;
    assert_eq!(count, 101);
    all_applied(&members.iter().collect::<Vec<_>>(), 101).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_server_restarts_catches_up_over_reconnected_links() {
    let (_dir, mut members) = cluster(10_000).await;
    let leader = leader(&members).await;
    let down = (leader + 1) % 3;
    for i in 0..10u8 {
        propose(&members[leader].node, vec![i]).await;
    }
    all_applied(&members.iter().collect::<Vec<_>>(), 10).await;

    members[down].stop_server().await;
    // The other two are a quorum: writes keep committing while the member is unreachable.
    // Keep it away long enough for the links to it to fail a few dials and back off.
    let gone = Instant::now();
    let mut count = 10;
    while count < 30 || gone.elapsed() < Duration::from_millis(400) {
        propose(&members[leader].node, vec![count as u8]).await;
        count += 1;
    }
    let up: Vec<&Member> = (0..3).filter(|&i| i != down).map(|i| &members[i]).collect();
    all_applied(&up, count).await;
    assert_eq!(
        members[down].len(),
        10,
        "nothing reaches a member without a server"
    );

    members[down].restart_server().await;
    all_applied(&members.iter().collect::<Vec<_>>(), count).await;
    propose(&members[down].node, b"after".to_vec()).await;
    all_applied(&members.iter().collect::<Vec<_>>(), count + 1).await;
    assert_eq!(
        members[down].restores(),
        0,
        "caught up from the log, no snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_compacted_log_gets_a_snapshot_through_the_transport() {
    let (_dir, mut members) = cluster(10).await;
    let leader = leader(&members).await;
    let down = (leader + 1) % 3;
    for i in 0..5u8 {
        propose(&members[leader].node, vec![i]).await;
    }
    all_applied(&members.iter().collect::<Vec<_>>(), 5).await;

    members[down].stop_server().await;
    // Enough entries for the leader to compact past everything the member has, and large
    // enough that the snapshot spans several chunks (about 4 MiB at 1 MiB a chunk).
    for i in 5..45u8 {
        propose(&members[leader].node, vec![i; 100_000]).await;
    }
    assert_eq!(members[down].len(), 5);
    assert_eq!(members[down].restores(), 0);

    members[down].restart_server().await;
    all_applied(&members.iter().collect::<Vec<_>>(), 45).await;
    assert!(
        members[down].restores() >= 1,
        "the member was caught up by a snapshot"
    );
    // Its state machine then applies new entries on top of the restored state.
    propose(&members[leader].node, b"after".to_vec()).await;
    all_applied(&members.iter().collect::<Vec<_>>(), 46).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_misaddressed_snapshot_stream_is_refused() {
    use protobuf::Message as _;
    use raft::prelude::{Message, MessageType};
    use raftkv_proto::raftkvpb::peer_client::PeerClient;
    use raftkv_proto::raftkvpb::SnapshotChunk;

    let (_dir, members) = cluster(10_000).await;
    let target = &members[0];
    let mut client = PeerClient::connect(format!("http://{}", target.addr))
        .await
        .unwrap();
    let snapshot_for = |to: u64| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        (m.to, m.from, m.term) = (to, 2, 1);
        m.mut_snapshot().mut_metadata().index = 1_000;
        m.mut_snapshot().mut_metadata().term = 1;
        m.write_to_bytes().unwrap()
    };
    let chunk = |raft_message: Vec<u8>, last: bool| SnapshotChunk {
        raft_message,
        data: vec![0; 16],
        last,
    };

    // The data stops before the chunk marked last: the node must not install it.
    let truncated = vec![chunk(snapshot_for(1), false), chunk(Vec::new(), false)];
    let err = client
        .snapshot(tokio_stream::iter(truncated))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::Internal, "snapshot not installed")
    );
    assert_eq!(target.restores(), 0);

    // Addressed to another node, or not a snapshot message at all.
    let misaddressed = vec![chunk(snapshot_for(7), true)];
    let err = client
        .snapshot(tokio_stream::iter(misaddressed))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .snapshot(tokio_stream::iter(Vec::<SnapshotChunk>::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // The node is unharmed: the cluster still commits.
    let leader = leader(&members).await;
    propose(&members[leader].node, b"still fine".to_vec()).await;
    all_applied(&members.iter().collect::<Vec<_>>(), 1).await;
}
