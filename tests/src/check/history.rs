//! Recorded operations of the KV workloads.
//!
//! A workload stamps each request with [`Clock::now`] just before sending it (`invoke`) and just
//! after its answer arrives (`complete`). A request whose outcome is unknown (timed out, the
//! connection dropped) is recorded with `complete: None`: it may have taken effect at any time
//! after its invoke, or never; its result fields are ignored.
//!
//! The kinds map onto etcd requests as follows (values are strings; "absent" is `None`):
//! - [`OpKind::Put`]: `Put(key, value)`.
//! - [`OpKind::Delete`]: `DeleteRange(key)` of one key.
//! - [`OpKind::Get`]: a linearizable `Range(key)`; `value: None` when the key does not exist.
//! - [`OpKind::Cas`]: `Txn(compare value(key) == expect, or create_revision(key) == 0 when
//!   expect is None).then(put(key, new))`; `succeeded` is the response's `succeeded`.
//! - [`OpKind::Txn`]: a multi-key transaction, see [`Txn`].
//!
//! Histories serialise to JSON (serde) so a failing one can be written next to the test's logs
//! and inspected or re-checked later.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Nanoseconds since the start of a run (see [`Clock`]).
pub type Nanos = u64;

/// One recorded request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (logical process) that issued it. A client issues one request at a time.
    pub client: usize,
    /// When the request was sent.
    pub invoke: Nanos,
    /// When its answer arrived; `None` when the outcome is unknown.
    pub complete: Option<Nanos>,
    /// What was asked, and what was answered.
    pub kind: OpKind,
}

/// The request and its result. Result fields are ignored when the outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Write `value` to `key`.
    Put {
        /// The key.
        key: String,
        /// The value written.
        value: String,
    },
    /// Delete `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Read `key`: `value` is what was read (`None`: absent).
    Get {
        /// The key.
        key: String,
        /// The value read.
        value: Option<String>,
    },
    /// If `key`'s value is `expect` (`None`: the key is absent), write `new`.
    Cas {
        /// The key.
        key: String,
        /// The value compared against (`None`: compare absence).
        expect: Option<String>,
        /// The value written if the comparison holds.
        new: String,
        /// Whether the comparison held (and so the write happened).
        succeeded: bool,
    },
    /// A multi-key transaction.
    Txn(Txn),
}

/// A multi-key transaction, as one atomic step: at its linearization point it evaluates every
/// comparison against the current state, reads `reads` from that same state (before its own
/// writes), and applies `writes` only if every comparison held (`succeeded`).
///
/// In etcd terms: `Txn(compares).then([range k for reads..., put/delete for writes...])
/// .else([range k for reads...])`, with the ranges before the writes. A transaction with no
/// comparisons always succeeds. The linearizability checker checks the keys a transaction
/// touches together: keys connected by transactions form one partition whose model is the map
/// of all of them (see [`super::linear`]); workloads keep multi-key transactions to a small
/// group of keys so the other keys stay independent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// `(key, expected value)`; `None` compares absence.
    pub compare: Vec<(String, Option<String>)>,
    /// `(key, value read)`; `None` when the key was absent.
    pub reads: Vec<(String, Option<String>)>,
    /// `(key, value written)`; `None` deletes the key. Applied only if `succeeded`.
    pub writes: Vec<(String, Option<String>)>,
    /// Whether every comparison held.
    pub succeeded: bool,
}

impl Op {
    /// Whether the outcome is unknown (no answer was received).
    pub fn is_unknown(&self) -> bool {
        self.complete.is_none()
    }

    /// The keys the operation touches, sorted and without repeats.
    pub fn keys(&self) -> Vec<&str> {
        let keys: BTreeSet<&str> = match &self.kind {
            OpKind::Put { key, .. }
            | OpKind::Delete { key }
            | OpKind::Get { key, .. }
            | OpKind::Cas { key, .. } => std::iter::once(key.as_str()).collect(),
            OpKind::Txn(txn) => txn
                .compare
                .iter()
                .chain(&txn.reads)
                .chain(&txn.writes)
                .map(|(k, _)| k.as_str())
                .collect(),
        };
        keys.into_iter().collect()
    }

    /// The writes this operation made (known outcome) or may have made (unknown outcome):
    /// `(key, value)` with `None` for a delete. Empty for reads and known-failed comparisons.
    pub fn writes(&self) -> Vec<(&str, Option<&str>)> {
        let applies = |succeeded: bool| self.is_unknown() || succeeded;
        match &self.kind {
            OpKind::Put { key, value } => vec![(key.as_str(), Some(value.as_str()))],
            OpKind::Delete { key } => vec![(key.as_str(), None)],
            OpKind::Get { .. } => Vec::new(),
            OpKind::Cas {
                key,
                new,
                succeeded,
                ..
            } if applies(*succeeded) => vec![(key.as_str(), Some(new.as_str()))],
            OpKind::Cas { .. } => Vec::new(),
            OpKind::Txn(txn) if applies(txn.succeeded) => txn
                .writes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect(),
            OpKind::Txn(_) => Vec::new(),
        }
    }

    /// Checks the record itself: completion not before invoke, a transaction writes each key
    /// at most once.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(complete) = self.complete {
            if complete < self.invoke {
                return Err(format!(
                    "completes at {complete} before its invoke at {}",
                    self.invoke
                ));
            }
        }
        if let OpKind::Txn(txn) = &self.kind {
            let mut seen = BTreeSet::new();
            for (key, _) in &txn.writes {
                if !seen.insert(key) {
                    return Err(format!("transaction writes {key:?} twice"));
                }
            }
        }
        Ok(())
    }
}

/// A malformed record in a history (a workload bug, not a finding about the server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryError {
    /// Index of the offending record in the input.
    pub index: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {}", self.index, self.reason)
    }
}

impl std::error::Error for HistoryError {}

/// Validates every op ([`Op::validate`]).
pub fn validate_ops(ops: &[Op]) -> Result<(), HistoryError> {
    for (index, op) in ops.iter().enumerate() {
        op.validate()
            .map_err(|reason| HistoryError { index, reason })?;
    }
    Ok(())
}

/// A recorded history: the ops of every client, in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The operations.
    pub ops: Vec<Op>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one operation.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// Parses [`History::to_json`]'s output.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// Writes the history as JSON to `path` (for a failing test to leave behind).
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = self.to_json().map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// A monotonic clock for stamping operations: nanoseconds since it was created. Copy it into
/// every client of a run so their stamps are comparable.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the clock was created.
    pub fn now(&self) -> Nanos {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_shape() {
        let mut h = History::new();
        h.push(Op {
            client: 1,
            invoke: 5,
            complete: Some(9),
            kind: OpKind::Cas {
                key: "k".into(),
                expect: None,
                new: "v".into(),
                succeeded: true,
            },
        });
        h.push(Op {
            client: 2,
            invoke: 6,
            complete: None,
            kind: OpKind::Txn(Txn {
                compare: vec![("a".into(), Some("1".into()))],
                reads: vec![("b".into(), None)],
                writes: vec![("a".into(), Some("2".into())), ("b".into(), None)],
                succeeded: false,
            }),
        });
        let text = h.to_json().unwrap();
        assert!(text.contains("\"op\": \"cas\""), "{text}");
        assert_eq!(History::from_json(&text).unwrap(), h);
        assert_eq!(h.ops[1].keys(), vec!["a", "b"]);
        // Unknown outcome: the writes may have happened whatever `succeeded` says.
        assert_eq!(h.ops[1].writes(), vec![("a", Some("2")), ("b", None)]);
    }

    #[test]
    fn validation_catches_bad_records() {
        let bad = Op {
            client: 0,
            invoke: 10,
            complete: Some(3),
            kind: OpKind::Delete { key: "k".into() },
        };
        let err = validate_ops(&[bad]).unwrap_err();
        assert_eq!(err.index, 0);
        let dup = Op {
            client: 0,
            invoke: 1,
            complete: Some(3),
            kind: OpKind::Txn(Txn {
                writes: vec![("k".into(), None), ("k".into(), Some("x".into()))],
                succeeded: true,
                ..Txn::default()
            }),
        };
        assert!(dup.validate().is_err());
    }

    #[test]
    fn clock_is_monotonic() {
        let clock = Clock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
