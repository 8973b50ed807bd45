//! One checker per Raft safety property (Raft paper, figure 3), fed by what the cores report and
//! by reading their logs through `raft::Storage`.

use std::collections::BTreeMap;

use raft::prelude::Entry;
use raft::{GetEntriesContext, Storage};
use raftkv_raft::{Core, StateMachine, WalStorage};

/// What the checkers have seen so far in one run.
#[derive(Default)]
pub(crate) struct Checker {
    /// Election safety: the one leader of each term.
    leaders: BTreeMap<u64, u64>,
    /// Every applied entry anywhere, by index: (term, data). Applied means committed.
    committed: BTreeMap<u64, (u64, Vec<u8>)>,
}

/// The live entries of a node's log, with their first index.
pub(crate) fn log_of(store: &WalStorage) -> (u64, Vec<Entry>) {
    let first = store.first_index().expect("first index");
    let last = store.last_index().expect("last index");
    let entries = store
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("read log");
    (first, entries)
}

impl Checker {
    /// Election safety (§5.2): at most one leader per term.
    pub(crate) fn leader(&mut self, term: u64, id: u64) -> Result<(), String> {
        match self.leaders.insert(term, id) {
            Some(other) if other != id => Err(format!(
                "election safety: nodes {other} and {id} both led term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// State machine safety (§5.4.3): no two nodes apply different entries at one index.
    pub(crate) fn applied(
        &mut self,
        node: u64,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<(), String> {
        match self.committed.get(&index) {
            Some((t, d)) if (*t, d.as_slice()) != (term, data) => Err(format!(
                "state machine safety: node {node} applied term {term} {:?} at index {index}, \
                 another node applied term {t} {:?}",
                String::from_utf8_lossy(data),
                String::from_utf8_lossy(d),
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(index, (term, data.to_vec()));
                Ok(())
            }
        }
    }

    /// Every entry applied anywhere, by index.
    pub(crate) fn committed(&self) -> &BTreeMap<u64, (u64, Vec<u8>)> {
        &self.committed
    }

    /// Leader completeness (§5.4): a new leader's log holds every entry committed so far (those
    /// below its first index are covered by its snapshot).
    pub(crate) fn leader_complete<M: StateMachine>(&self, leader: &Core<M>) -> Result<(), String> {
        self.log_holds_committed(leader, u64::MAX, "leader completeness")
    }

    /// Every committed entry at or below `upto` that is still in `core`'s log is the committed one.
    pub(crate) fn log_holds_committed<M: StateMachine>(
        &self,
        core: &Core<M>,
        upto: u64,
        what: &str,
    ) -> Result<(), String> {
        let (first, log) = log_of(core.storage());
        for (&index, (term, data)) in self.committed.range(first..=upto) {
            let Some(e) = log.get((index - first) as usize) else {
                return Err(format!(
                    "{what}: node {} (term {}) lacks committed index {index} (log {first}..{})",
                    core.id(),
                    core.term(),
                    first + log.len() as u64
                ));
            };
            if (e.term, e.data.as_ref()) != (*term, data.as_slice()) {
                return Err(format!(
                    "{what}: node {} has term {} at committed index {index}, committed term {term}",
                    core.id(),
                    e.term
                ));
            }
        }
        Ok(())
    }
}

/// Log matching (§5.3): if two logs hold an entry with the same index and term, they are
/// identical up to and including that index.
pub(crate) fn log_matching(logs: &[(u64, u64, Vec<Entry>)]) -> Result<(), String> {
    for (i, (id_a, first_a, a)) in logs.iter().enumerate() {
        for (id_b, first_b, b) in &logs[i + 1..] {
            let lo = (*first_a).max(*first_b);
            let hi = (first_a + a.len() as u64).min(first_b + b.len() as u64);
            // Once the terms agree at an index, the logs agree at every index below it.
            let mut matched = false;
            for index in (lo..hi).rev() {
                let ea = &a[(index - first_a) as usize];
                let eb = &b[(index - first_b) as usize];
                matched |= ea.term == eb.term;
                if matched && ea != eb {
                    return Err(format!(
                        "log matching: nodes {id_a} and {id_b} differ at index {index}, term {}",
                        ea.term
                    ));
                }
            }
        }
    }
    Ok(())
}
