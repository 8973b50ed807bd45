//! Durability: every acknowledged write is present in the final state, unless a write that may
//! have come after it replaced it.
//!
//! Input: the history's ops and the final state read after every fault healed (a linearizable
//! read of the workload's whole keyspace once no request is in flight). For each key the final
//! value must have been written by some write `c` (known or unknown outcome; "absent" may also be
//! the initial state or a delete) such that no acknowledged write began after `c` completed:
//! otherwise that later acknowledged write was lost. This is weaker than linearizability but
//! holds across crashes and restarts where histories are split, and names the lost write.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::history::{validate_ops, HistoryError, Op};

/// A durability violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DurabilityViolation {
    /// The final value's every possible writer precedes an acknowledged write that is gone.
    LostWrite {
        /// The key.
        key: String,
        /// Its final value (`None`: absent).
        final_value: Option<String>,
        /// The last-invoked acknowledged write to the key, which began after every write that
        /// could have produced the final value had completed.
        lost: Op,
    },
    /// The final value was never written to the key by any op.
    PhantomValue {
        /// The key.
        key: String,
        /// Its final value.
        final_value: String,
    },
}

/// Checks the final state against the history. `final_state` maps every key present at the
/// end to its value; keys written in the history and missing from it are taken as absent.
pub fn check_durability(
    ops: &[Op],
    final_state: &BTreeMap<String, String>,
) -> Result<Vec<DurabilityViolation>, HistoryError> {
    validate_ops(ops)?;
    // Per key: (value, invoke, complete (None: unknown), acknowledged, op index).
    type Write<'a> = (Option<&'a str>, u64, Option<u64>, usize);
    let mut writes: BTreeMap<&str, Vec<Write<'_>>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        for (key, value) in op.writes() {
            writes
                .entry(key)
                .or_default()
                .push((value, op.invoke, op.complete, index));
        }
    }
    let keys: BTreeSet<&str> = writes
        .keys()
        .copied()
        .chain(final_state.keys().map(String::as_str))
        .collect();
    let mut violations = Vec::new();
    for key in keys {
        let final_value = final_state.get(key).map(String::as_str);
        let key_writes = writes.get(key).map(Vec::as_slice).unwrap_or(&[]);
        // The latest-invoked acknowledged write.
        let last_acked = key_writes
            .iter()
            .filter(|w| w.2.is_some())
            .max_by_key(|w| w.1);
        let candidates: Vec<&Write<'_>> =
            key_writes.iter().filter(|w| w.0 == final_value).collect();
        let superseded = |complete: Option<u64>| match (last_acked, complete) {
            (None, _) | (_, None) => false,
            (Some(acked), Some(c)) => acked.1 > c,
        };
        // The initial state (absent) precedes every write.
        let initial_ok = final_value.is_none() && last_acked.is_none();
        if initial_ok || candidates.iter().any(|w| !superseded(w.2)) {
            continue;
        }
        match (final_value, last_acked) {
            (Some(v), _) if candidates.is_empty() => {
                violations.push(DurabilityViolation::PhantomValue {
                    key: key.to_owned(),
                    final_value: v.to_owned(),
                });
            }
            (_, Some(acked)) => violations.push(DurabilityViolation::LostWrite {
                key: key.to_owned(),
                final_value: final_value.map(str::to_owned),
                lost: ops[acked.3].clone(),
            }),
            // Unreachable in practice: no acknowledged write means nothing supersedes.
            (_, None) => {}
        }
    }
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::history::{OpKind, Txn};

    fn put(client: usize, invoke: u64, complete: Option<u64>, k: &str, v: &str) -> Op {
        Op {
            client,
            invoke,
            complete,
            kind: OpKind::Put {
                key: k.into(),
                value: v.into(),
            },
        }
    }
    fn state(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn last_acknowledged_write_present_passes() {
        let ops = [
            put(0, 0, Some(10), "a", "1"),
            put(0, 20, Some(30), "a", "2"),
            put(1, 0, Some(5), "b", "x"),
        ];
        let v = check_durability(&ops, &state(&[("a", "2"), ("b", "x")])).unwrap();
        assert_eq!(v, vec![]);
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        let ops = [
            put(0, 0, Some(10), "a", "1"),
            put(0, 20, Some(30), "a", "2"),
        ];
        let v = check_durability(&ops, &state(&[("a", "1")])).unwrap();
        assert_eq!(
            v,
            vec![DurabilityViolation::LostWrite {
                key: "a".into(),
                final_value: Some("1".into()),
                lost: ops[1].clone(),
            }]
        );
        // Absent at the end although written and acknowledged.
        let v = check_durability(&ops[..1], &state(&[])).unwrap();
        assert!(matches!(
            &v[..],
            [DurabilityViolation::LostWrite {
                final_value: None,
                ..
            }]
        ));
    }

    #[test]
    fn concurrent_and_unknown_writes_may_win() {
        // Overlapping acknowledged writes: either may be last.
        let ops = [
            put(0, 0, Some(30), "a", "1"),
            put(1, 10, Some(20), "a", "2"),
        ];
        assert_eq!(
            check_durability(&ops, &state(&[("a", "1")])).unwrap(),
            vec![]
        );
        assert_eq!(
            check_durability(&ops, &state(&[("a", "2")])).unwrap(),
            vec![]
        );
        // An unknown-outcome write may have taken effect (last), or not.
        let ops = [put(0, 0, Some(10), "a", "1"), put(1, 5, None, "a", "2")];
        assert_eq!(
            check_durability(&ops, &state(&[("a", "2")])).unwrap(),
            vec![]
        );
        assert_eq!(
            check_durability(&ops, &state(&[("a", "1")])).unwrap(),
            vec![]
        );
        // A delete supersedes; a failed CAS writes nothing; a succeeded txn writes.
        let ops = [
            put(0, 0, Some(10), "a", "1"),
            Op {
                client: 0,
                invoke: 20,
                complete: Some(30),
                kind: OpKind::Delete { key: "a".into() },
            },
            Op {
                client: 1,
                invoke: 40,
                complete: Some(50),
                kind: OpKind::Cas {
                    key: "a".into(),
                    expect: Some("zz".into()),
                    new: "3".into(),
                    succeeded: false,
                },
            },
            Op {
                client: 1,
                invoke: 60,
                complete: Some(70),
                kind: OpKind::Txn(Txn {
                    writes: vec![("b".into(), Some("t".into()))],
                    succeeded: true,
                    ..Txn::default()
                }),
            },
        ];
        assert_eq!(
            check_durability(&ops, &state(&[("b", "t")])).unwrap(),
            vec![]
        );
        let v = check_durability(&ops, &state(&[("a", "3"), ("b", "t")])).unwrap();
        assert!(
            matches!(&v[..], [DurabilityViolation::PhantomValue { .. }]),
            "{v:?}"
        );
    }

    #[test]
    fn value_never_written_fails() {
        let ops = [put(0, 0, Some(10), "a", "1")];
        let v = check_durability(&ops, &state(&[("a", "1"), ("zz", "q")])).unwrap();
        assert_eq!(
            v,
            vec![DurabilityViolation::PhantomValue {
                key: "zz".into(),
                final_value: "q".into()
            }]
        );
    }
}
