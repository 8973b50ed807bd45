//! The node thread over an in-process transport: proposals through any node return the applied
//! output, ReadIndex answers once the node has applied up to it, and a node without a quorum
//! answers with etcd's errors instead of hanging.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use raft::prelude::Message;
use raftkv_raft::node::{self, NodeConfig};
use raftkv_raft::{
    NodeHandle, RequestError, StateMachine, StorageConfig, Transport, WalConfig, WalStorage,
};

#[derive(Default)]
struct Log {
    applied: u64,
    data: Vec<Vec<u8>>,
}

impl StateMachine for Log {
    type Output = (u64, usize);

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> Option<(u64, usize)> {
        if index <= self.applied {
            return None;
        }
        self.applied = index;
        self.data.push(data.to_vec());
        Some((index, self.data.len()))
    }

    fn persist(&mut self) -> Result<(), String> {
        Ok(())
    }
}

type Handles = Arc<OnceLock<Vec<NodeHandle<(u64, usize)>>>>;

struct Loopback(Handles);

impl Transport for Loopback {
    fn send(&self, messages: Vec<Message>) {
        if let Some(nodes) = self.0.get() {
            for m in messages {
                if let Some(n) = nodes.get(m.to as usize - 1) {
                    n.step(m);
                }
            }
        }
    }
}

fn start(
    dir: &std::path::Path,
    id: u64,
    voters: &[u64],
    handles: &Handles,
) -> NodeHandle<(u64, usize)> {
    let storage_cfg = StorageConfig {
        wal: WalConfig {
            fsync: false,
            ..WalConfig::default()
        },
        ..StorageConfig::default()
    };
    let (storage, _) = WalStorage::open(dir.join(id.to_string()), storage_cfg).unwrap();
    let mut cfg = NodeConfig::new(id);
    cfg.tick = Duration::from_millis(10);
    cfg.request_timeout = Duration::from_millis(500);
    let (handle, _join) = node::start(
        cfg,
        storage,
        Log::default(),
        voters,
        Loopback(handles.clone()),
    )
    .unwrap();
    handle
}

/// Proposes, retrying only a proposal raft dropped (no leader at that moment, so it was never
/// appended) once the node knows a leader again; bounded by a deadline.
async fn propose(
    n: &NodeHandle<(u64, usize)>,
    data: Vec<u8>,
) -> Result<(u64, usize), RequestError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = n.propose(data.clone()).await;
        if out != Err(RequestError::NoLeader) || tokio::time::Instant::now() > deadline {
            return out;
        }
        let mut status = n.watch_status();
        let _ = tokio::time::timeout_at(deadline, status.wait_for(|s| s.leader != 0)).await;
    }
}

#[tokio::test]
async fn proposals_and_reads_through_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let handles: Handles = Arc::new(OnceLock::new());
    let nodes: Vec<_> = (1..=3)
        .map(|id| start(dir.path(), id, &[1, 2, 3], &handles))
        .collect();
    assert!(handles.set(nodes.clone()).is_ok());
    // Every node learns the leader (statuses are published on change: no polling).
    for n in &nodes {
        let mut status = n.watch_status();
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.leader != 0))
            .await
            .expect("a leader within 10 s")
            .unwrap();
    }
    let mut last = 0;
    for (i, n) in nodes.iter().enumerate() {
        let out = propose(n, vec![i as u8]).await;
        let (index, count) = out.unwrap();
        assert!(index > last, "indexes grow: {index} after {last}");
        assert_eq!(count, i + 1, "each proposal applied once");
        last = index;
    }
    for n in &nodes {
        let read = n.read_index().await.unwrap();
        assert!(
            read >= last,
            "read index {read} covers the last write {last}"
        );
        assert!(n.status().applied >= read);
    }
}

#[tokio::test]
async fn without_a_quorum_requests_fail_with_etcd_errors() {
    let dir = tempfile::tempdir().unwrap();
    let handles: Handles = Arc::new(OnceLock::new());
    // Node 1 of a three-node cluster whose peers never start.
    let lone = start(dir.path(), 1, &[1, 2, 3], &handles);
    assert!(handles.set(vec![lone.clone()]).is_ok());
    assert_eq!(
        lone.propose(b"x".to_vec()).await,
        Err(RequestError::NoLeader)
    );
    assert_eq!(lone.read_index().await, Err(RequestError::TimedOut));
    assert_eq!(RequestError::NoLeader.to_string(), "etcdserver: no leader");
    assert_eq!(
        RequestError::TimedOut.to_string(),
        "etcdserver: request timed out"
    );
}

#[tokio::test]
async fn a_learner_joins_is_promoted_and_removed() {
    use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
    let change = |kind: ConfChangeType, node: u64| ConfChangeV2 {
        changes: vec![ConfChangeSingle {
            change_type: kind,
            node_id: node,
            ..Default::default()
        }]
        .into(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let handles: Handles = Arc::new(OnceLock::new());
    let mut nodes: Vec<_> = (1..=3)
        .map(|id| start(dir.path(), id, &[1, 2, 3], &handles))
        .collect();
    // Node 4 starts empty and waits to be added.
    nodes.push(start(dir.path(), 4, &[], &handles));
    assert!(handles.set(nodes.clone()).is_ok());
    for n in &nodes[..3] {
        let mut status = n.watch_status();
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.leader != 0))
            .await
            .expect("a leader within 10 s")
            .unwrap();
    }
    let leader = nodes[0].status().leader as usize - 1;
    propose(&nodes[leader], b"before".to_vec()).await.unwrap();
    let cs = nodes[leader]
        .change_membership(change(ConfChangeType::AddLearnerNode, 4))
        .await
        .unwrap();
    assert_eq!((cs.voters.len(), cs.learners.as_slice()), (3, &[4][..]));
    // The learner catches up: a read through it sees everything written before.
    let (index, _) = propose(&nodes[leader], b"after".to_vec()).await.unwrap();
    let mut status = nodes[3].watch_status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.leader != 0))
        .await
        .expect("the learner learns the leader")
        .unwrap();
    assert!(nodes[3].read_index().await.unwrap() >= index);
    let cs = nodes[leader]
        .change_membership(change(ConfChangeType::AddNode, 4))
        .await
        .unwrap();
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    assert_eq!(voters, vec![1, 2, 3, 4]);
    assert!(cs.learners.is_empty());
    let cs = nodes[leader]
        .change_membership(change(ConfChangeType::RemoveNode, 4))
        .await
        .unwrap();
    assert_eq!(cs.voters.len(), 3);
    assert!(!cs.voters.contains(&4));
}
