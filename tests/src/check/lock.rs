//! Lock safety as fencing can check it.
//!
//! The lock workload acquires a lock (etcd's `Lock` API; the token is the revision of the
//! holder's key, which etcd makes unique and increasing), then writes to a resource guarded by
//! the token: the guard accepts a write only if its token is at least the highest it has
//! accepted. Holders can lose the lock without knowing (lease expiry under a partition), so
//! mutual exclusion itself is not checked; what must hold is:
//! - **Tokens are unique**: no two acquisitions by different clients got the same token.
//! - **Acquisitions are ordered**: an acquisition that completed before another began has the
//!   smaller token.
//! - **Accepted writes are fenced**: for accepted writes `A`, `B` with `A` completed before `B`
//!   began, `A.token < B.token`, or the tokens are equal and both come from the same client
//!   (one holder writing twice in its critical section).
//! - **Writers held their token**: when acquisitions are given, an accepted write's token was
//!   acquired by the same client on the same resource.
//!
//! Writes with an unknown outcome are ignored (whether the guard accepted them is unknown).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::history::Nanos;

/// A successful lock acquisition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    /// The client that acquired.
    pub client: usize,
    /// The lock / guarded resource name.
    pub resource: String,
    /// The fencing token it got.
    pub token: i64,
    /// When the request was sent.
    pub invoke: Nanos,
    /// When the acquisition was acknowledged.
    pub complete: Nanos,
}

/// A write to a guarded resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedWrite {
    /// The writer.
    pub client: usize,
    /// The resource.
    pub resource: String,
    /// The token it presented.
    pub token: i64,
    /// When it was sent.
    pub invoke: Nanos,
    /// When the answer arrived (`None`: unknown outcome, ignored).
    pub complete: Option<Nanos>,
    /// Whether the guard accepted it.
    pub accepted: bool,
}

/// A fencing violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LockViolation {
    /// Two clients were handed the same token.
    DuplicateToken {
        /// One acquisition.
        first: Acquire,
        /// The other.
        second: Acquire,
    },
    /// An acquisition got a token not above one acquired strictly before it.
    AcquireOrder {
        /// The earlier acquisition.
        earlier: Acquire,
        /// The later one, with a token not greater.
        later: Acquire,
    },
    /// An accepted write's token did not increase over an accepted write strictly before it.
    TokenWentBackwards {
        /// The earlier accepted write.
        earlier: FencedWrite,
        /// The later accepted write.
        later: FencedWrite,
    },
    /// An accepted write carries a token its client never acquired on that resource.
    UnheldToken {
        /// The write.
        write: FencedWrite,
    },
}

/// Checks acquisitions and writes (any order). `acquires` may be empty (then only the writes
/// are checked).
pub fn check_locks(acquires: &[Acquire], writes: &[FencedWrite]) -> Vec<LockViolation> {
    let mut violations = Vec::new();
    let mut by_resource: BTreeMap<&str, (Vec<&Acquire>, Vec<&FencedWrite>)> = BTreeMap::new();
    for a in acquires {
        by_resource.entry(&a.resource).or_default().0.push(a);
    }
    for w in writes {
        if w.accepted && w.complete.is_some() {
            by_resource.entry(&w.resource).or_default().1.push(w);
        }
    }
    for (_, (acqs, accepted)) in by_resource {
        // Unique tokens.
        let mut owners: HashMap<i64, &Acquire> = HashMap::new();
        for &a in &acqs {
            match owners.get(&a.token) {
                Some(first) if first.client != a.client => {
                    violations.push(LockViolation::DuplicateToken {
                        first: (*first).clone(),
                        second: a.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    owners.insert(a.token, a);
                }
            }
        }
        // Real-time order of acquisitions: strictly increasing tokens.
        for (earlier, later) in sweep(
            &acqs,
            |a| (a.invoke, Some(a.complete), a.token, a.client),
            false,
        ) {
            violations.push(LockViolation::AcquireOrder {
                earlier: earlier.clone(),
                later: later.clone(),
            });
        }
        for (earlier, later) in sweep(
            &accepted,
            |w| (w.invoke, w.complete, w.token, w.client),
            true,
        ) {
            violations.push(LockViolation::TokenWentBackwards {
                earlier: earlier.clone(),
                later: later.clone(),
            });
        }
        if !acqs.is_empty() {
            let held: HashSet<(usize, i64)> = acqs.iter().map(|a| (a.client, a.token)).collect();
            for w in &accepted {
                if !held.contains(&(w.client, w.token)) {
                    violations.push(LockViolation::UnheldToken {
                        write: (*w).clone(),
                    });
                }
            }
        }
    }
    violations
}

/// Finds, for each record `B`, a record `A` that completed strictly before `B` began and whose
/// token is not below `B`'s (equal allowed only for the same client when `same_client_equal`).
/// At most one violation per `B`. `O(n log n)`.
fn sweep<'a, T>(
    records: &[&'a T],
    fields: impl Fn(&T) -> (Nanos, Option<Nanos>, i64, usize),
    same_client_equal: bool,
) -> Vec<(&'a T, &'a T)> {
    let mut by_complete: Vec<&'a T> = records
        .iter()
        .copied()
        .filter(|r| fields(r).1.is_some())
        .collect();
    by_complete.sort_by_key(|r| fields(r).1);
    let mut by_invoke: Vec<&'a T> = records.to_vec();
    by_invoke.sort_by_key(|r| fields(r).0);
    // The highest token completed so far, and a record with that token from another client.
    let mut best: Option<&'a T> = None;
    let mut other: Option<&'a T> = None;
    let mut next = 0;
    let mut out = Vec::new();
    for b in by_invoke {
        let (invoke, _, token, client) = fields(b);
        while next < by_complete.len() && fields(by_complete[next]).1 < Some(invoke) {
            let a = by_complete[next];
            next += 1;
            let (_, _, a_token, a_client) = fields(a);
            match best.map(&fields) {
                Some((_, _, t, _)) if a_token < t => {}
                Some((_, _, t, c)) if a_token == t => {
                    if a_client != c && other.is_none() {
                        other = Some(a);
                    }
                }
                _ => {
                    best = Some(a);
                    other = None;
                }
            }
        }
        let Some(top) = best else { continue };
        let (_, _, t, c) = fields(top);
        if t > token {
            out.push((top, b));
        } else if t == token {
            if !same_client_equal || c != client {
                out.push((top, b));
            } else if let Some(o) = other {
                out.push((o, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acq(client: usize, token: i64, invoke: u64, complete: u64) -> Acquire {
        Acquire {
            client,
            resource: "r".into(),
            token,
            invoke,
            complete,
        }
    }
    fn write(client: usize, token: i64, invoke: u64, complete: u64) -> FencedWrite {
        FencedWrite {
            client,
            resource: "r".into(),
            token,
            invoke,
            complete: Some(complete),
            accepted: true,
        }
    }

    #[test]
    fn increasing_tokens_pass() {
        let acqs = [acq(0, 10, 0, 5), acq(1, 20, 1, 30), acq(0, 35, 31, 40)];
        let writes = [
            write(0, 10, 6, 8),
            write(0, 10, 9, 12), // same holder twice
            write(1, 20, 31, 33),
            write(0, 35, 41, 45),
            // Concurrent writes may land in either order.
            write(1, 20, 40, 50),
            FencedWrite {
                accepted: false,
                ..write(1, 20, 46, 48)
            },
        ];
        assert_eq!(check_locks(&acqs, &writes), vec![]);
    }

    #[test]
    fn token_going_backwards_fails() {
        let acqs = [acq(0, 10, 0, 5), acq(1, 20, 6, 8)];
        let writes = [write(1, 20, 9, 12), write(0, 10, 15, 18)];
        assert_eq!(
            check_locks(&acqs, &writes),
            vec![LockViolation::TokenWentBackwards {
                earlier: writes[0].clone(),
                later: writes[1].clone()
            }]
        );
    }

    #[test]
    fn equal_tokens_from_two_writers_fail() {
        let writes = [write(0, 10, 0, 5), write(1, 10, 6, 8)];
        assert!(matches!(
            &check_locks(&[], &writes)[..],
            [LockViolation::TokenWentBackwards { .. }]
        ));
        // The same, hidden behind a same-client write with the same token.
        let writes = [write(0, 10, 0, 5), write(1, 10, 1, 4), write(0, 10, 6, 8)];
        assert!(!check_locks(&[], &writes).is_empty());
    }

    #[test]
    fn duplicate_and_misordered_acquisitions_fail() {
        let acqs = [acq(0, 10, 0, 5), acq(1, 10, 1, 6)];
        assert!(check_locks(&acqs, &[])
            .iter()
            .any(|v| matches!(v, LockViolation::DuplicateToken { .. })));
        let acqs = [acq(0, 10, 0, 5), acq(1, 7, 6, 8)];
        assert_eq!(
            check_locks(&acqs, &[]),
            vec![LockViolation::AcquireOrder {
                earlier: acqs[0].clone(),
                later: acqs[1].clone()
            }]
        );
    }

    #[test]
    fn write_with_a_token_never_acquired_fails() {
        let acqs = [acq(0, 10, 0, 5)];
        let writes = [write(1, 10, 6, 8)];
        assert_eq!(
            check_locks(&acqs, &writes),
            vec![LockViolation::UnheldToken {
                write: writes[0].clone()
            }]
        );
    }
}
