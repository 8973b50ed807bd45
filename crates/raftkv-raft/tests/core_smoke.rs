//! Three cores over an in-memory message queue: a leader is elected by ticks alone, proposals
//! commit and apply on every node with the proposer's request id, and a restarted node catches
//! up from its WAL.

use raftkv_raft::{Core, CoreConfig, StateMachine, StorageConfig, WalConfig, WalStorage};

/// Remembers every applied entry; volatile (restarts replay the log).
#[derive(Default)]
struct Log {
    entries: Vec<(u64, Vec<u8>)>,
}

impl StateMachine for Log {
    type Output = u64;

    fn applied_index(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.0)
    }

    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> Option<u64> {
        if index <= self.applied_index() {
            return None;
        }
        self.entries.push((index, data.to_vec()));
        Some(index)
    }

    fn persist(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn open(dir: &std::path::Path, id: u64) -> Core<Log> {
    let cfg = StorageConfig {
        wal: WalConfig {
            fsync: false,
            ..WalConfig::default()
        },
        ..StorageConfig::default()
    };
    let (storage, _) = WalStorage::open(dir.join(id.to_string()), cfg).unwrap();
    Core::new(CoreConfig::new(id), storage, Log::default(), &[1, 2, 3]).unwrap()
}

/// Ticks and delivers until `done` holds; panics after `max_rounds`.
fn run(
    nodes: &mut [Option<Core<Log>>],
    max_rounds: usize,
    mut done: impl FnMut(&[Option<Core<Log>>]) -> bool,
) -> Vec<(u64, u64)> {
    let mut acked = Vec::new();
    for _ in 0..max_rounds {
        if done(nodes) {
            return acked;
        }
        let mut mail = Vec::new();
        for node in nodes.iter_mut().flatten() {
            node.tick();
            let p = node.advance().unwrap();
            mail.extend(p.messages);
            acked.extend(p.applied.iter().map(|a| (node.id(), a.request_id)));
        }
        while !mail.is_empty() {
            for m in std::mem::take(&mut mail) {
                if let Some(Some(to)) = nodes.get_mut(m.to as usize - 1) {
                    to.step(m).unwrap();
                    let p = to.advance().unwrap();
                    mail.extend(p.messages);
                    acked.extend(p.applied.iter().map(|a| (to.id(), a.request_id)));
                }
            }
        }
    }
    panic!("condition not reached within {max_rounds} rounds");
}

#[test]
fn elects_commits_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<Core<Log>>> = (1..=3).map(|id| Some(open(dir.path(), id))).collect();
    run(&mut nodes, 100, |n| {
        n.iter()
            .flatten()
            .any(|c| c.role() == raft::StateRole::Leader)
    });
    let leader = nodes
        .iter()
        .flatten()
        .find(|c| c.role() == raft::StateRole::Leader)
        .unwrap()
        .id();
    let follower = if leader == 1 { 2 } else { 1 };
    // A follower forwards the proposal to the leader; every node applies it.
    nodes[follower as usize - 1]
        .as_mut()
        .unwrap()
        .propose(77, b"hello".to_vec())
        .unwrap();
    let acked = run(&mut nodes, 50, |n| {
        n.iter()
            .flatten()
            .all(|c| c.state_machine().entries.iter().any(|e| e.1 == b"hello"))
    });
    assert!(
        acked.contains(&(follower, 77)),
        "proposer sees its request id: {acked:?}"
    );
    // Crash a follower, write more, restart it from its WAL: it catches up.
    let down = if leader == 3 { 2 } else { 3 };
    nodes[down as usize - 1] = None;
    for i in 0..5u64 {
        nodes[leader as usize - 1]
            .as_mut()
            .unwrap()
            .propose(100 + i, vec![i as u8])
            .unwrap();
    }
    run(&mut nodes, 50, |n| {
        n[leader as usize - 1]
            .as_ref()
            .unwrap()
            .state_machine()
            .entries
            .len()
            >= 6
    });
    nodes[down as usize - 1] = Some(open(dir.path(), down));
    run(&mut nodes, 100, |n| {
        n.iter()
            .flatten()
            .all(|c| c.state_machine().entries.len() == 6)
    });
    let logs: Vec<_> = nodes
        .iter()
        .flatten()
        .map(|c| c.state_machine().entries.clone())
        .collect();
    assert!(
        logs.windows(2).all(|w| w[0] == w[1]),
        "state machine safety"
    );
}
