//! Lease safety.
//!
//! Input per lease: its TTL, when it was granted, every keep-alive sent (with its answer), an
//! optional revoke, and the keys attached to it (put with the lease); plus observations made by
//! readers: a key read (present with which lease, or absent) and `TimeToLive` answers.
//!
//! Two properties, with the timing slack as parameters ([`LeaseBounds`]):
//! - **Expiry** (nothing outlives its lease): a lease refreshed last at `r` must be gone by
//!   `r + ttl + expiry_slack`. `r` is bounded by the keep-alive's answer time (the server
//!   refreshed while handling it); a keep-alive never answered is assumed handled by
//!   `sent + expiry_slack`. Violations: a key still present with the lease, a positive
//!   `TimeToLive`, or a keep-alive answered "alive" when sent after that deadline.
//! - **Liveness while kept alive** (no premature expiry): a keep-alive answered "alive" that was
//!   sent at `s` means the lease lived until at least `s + ttl` (it was refreshed no earlier than
//!   `s`), and it lived at every earlier moment since the grant (an expired lease never comes
//!   back). So the lease is alive until `max(grant invoke, last positive keep-alive sent) + ttl -
//!   early_tolerance`; an attached key read absent (after its put completed), a non-positive
//!   `TimeToLive` or a keep-alive answered "not found", completing before then, is premature.
//!   A revoke ends this guarantee from its invoke on.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::history::{HistoryError, Nanos};

/// Timing slack, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBounds {
    /// How long past `last refresh + ttl` a lease may still be seen alive (the documented
    /// bound: expiry-check interval, revoke proposal and apply, leader changes' extension).
    pub expiry_slack: Nanos,
    /// How much earlier than `refresh + ttl` a lease may expire without a violation (clock
    /// granularity; 0 for the strict property).
    pub early_tolerance: Nanos,
}

/// One keep-alive request and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {
    /// When it was sent.
    pub sent: Nanos,
    /// When its answer arrived (`None`: never).
    pub acked: Option<Nanos>,
    /// The TTL in the answer; `<= 0` means the lease was not found (expired). Ignored when
    /// unanswered.
    pub ttl: i64,
}

/// A key put with a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedKey {
    /// The key.
    pub key: String,
    /// When its put (with the lease) completed.
    pub put_complete: Nanos,
}

/// Everything one lease's owner did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLog {
    /// The lease id.
    pub lease: i64,
    /// Its granted TTL, in nanoseconds.
    pub ttl: Nanos,
    /// When the grant was sent.
    pub grant_invoke: Nanos,
    /// When the grant was answered.
    pub grant_complete: Nanos,
    /// Keep-alives, in any order.
    pub keepalives: Vec<KeepAlive>,
    /// When a revoke was sent, if one was.
    pub revoke_invoke: Option<Nanos>,
    /// Keys attached to the lease (each key attached to one lease in a run).
    pub keys: Vec<AttachedKey>,
}

/// What a reader saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseObservation {
    /// A read of one key.
    Key {
        /// The key.
        key: String,
        /// When the read was sent.
        invoke: Nanos,
        /// When it was answered.
        complete: Nanos,
        /// `Some(lease id)` if present (0: present without a lease), `None` if absent.
        lease: Option<i64>,
    },
    /// A `LeaseTimeToLive` answer.
    TimeToLive {
        /// The lease asked about.
        lease: i64,
        /// When the request was sent.
        invoke: Nanos,
        /// When it was answered.
        complete: Nanos,
        /// The TTL answered; `<= 0`: not found / expired.
        ttl: i64,
    },
}

/// A lease violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LeaseViolation {
    /// A key attached to the lease was seen present after the lease's expiry deadline.
    KeyOutlivedLease {
        /// The lease.
        lease: i64,
        /// The key.
        key: String,
        /// When the read that saw it was sent.
        observed_at: Nanos,
        /// The deadline it should have been gone by.
        deadline: Nanos,
    },
    /// The lease itself was reported alive (keep-alive or `TimeToLive`) after its deadline.
    LeaseOutlived {
        /// The lease.
        lease: i64,
        /// When the request that found it alive was sent.
        observed_at: Nanos,
        /// The deadline.
        deadline: Nanos,
    },
    /// The lease (or a key attached to it) was seen gone while it was guaranteed alive.
    PrematureExpiry {
        /// The lease.
        lease: i64,
        /// The key seen absent, if the evidence is a key read.
        key: Option<String>,
        /// When the evidence's answer arrived.
        observed_at: Nanos,
        /// Until when the lease was guaranteed alive.
        alive_until: Nanos,
    },
}

/// Checks the leases against the observations.
pub fn check_leases(
    leases: &[LeaseLog],
    observations: &[LeaseObservation],
    bounds: LeaseBounds,
) -> Result<Vec<LeaseViolation>, HistoryError> {
    let mut key_owner: HashMap<&str, (usize, Nanos)> = HashMap::new();
    for (index, log) in leases.iter().enumerate() {
        if log.grant_complete < log.grant_invoke {
            return Err(HistoryError {
                index,
                reason: "grant completes before its invoke".into(),
            });
        }
        for k in &log.keys {
            if key_owner.insert(&k.key, (index, k.put_complete)).is_some() {
                return Err(HistoryError {
                    index,
                    reason: format!("key {:?} attached to more than one lease", k.key),
                });
            }
        }
    }
    let by_id: HashMap<i64, usize> = leases
        .iter()
        .enumerate()
        .map(|(i, l)| (l.lease, i))
        .collect();
    let timelines: Vec<Timeline> = leases.iter().map(|l| Timeline::new(l, bounds)).collect();
    let mut violations = Vec::new();

    for (log, tl) in leases.iter().zip(&timelines) {
        // Keep-alives: "alive" after the deadline set by the earlier ones; "gone" too early.
        for (k, ka) in tl.sorted.iter().enumerate() {
            let Some(acked) = ka.acked else { continue };
            if ka.ttl > 0 {
                let deadline = tl.deadline_before(k);
                if ka.sent > deadline {
                    violations.push(LeaseViolation::LeaseOutlived {
                        lease: log.lease,
                        observed_at: ka.sent,
                        deadline,
                    });
                }
            } else if tl.guaranteed(acked) {
                violations.push(LeaseViolation::PrematureExpiry {
                    lease: log.lease,
                    key: None,
                    observed_at: acked,
                    alive_until: tl.alive_until,
                });
            }
        }
    }

    for obs in observations {
        match obs {
            LeaseObservation::Key {
                key,
                invoke,
                complete,
                lease,
            } => {
                let Some(&(index, put_complete)) = key_owner.get(key.as_str()) else {
                    continue;
                };
                let (log, tl) = (&leases[index], &timelines[index]);
                if *lease == Some(log.lease) {
                    let deadline = tl.deadline_at(*invoke);
                    if *invoke > deadline {
                        violations.push(LeaseViolation::KeyOutlivedLease {
                            lease: log.lease,
                            key: key.clone(),
                            observed_at: *invoke,
                            deadline,
                        });
                    }
                } else if *invoke >= put_complete && tl.guaranteed(*complete) {
                    violations.push(LeaseViolation::PrematureExpiry {
                        lease: log.lease,
                        key: Some(key.clone()),
                        observed_at: *complete,
                        alive_until: tl.alive_until,
                    });
                }
            }
            LeaseObservation::TimeToLive {
                lease,
                invoke,
                complete,
                ttl,
            } => {
                let Some(&index) = by_id.get(lease) else {
                    continue;
                };
                let tl = &timelines[index];
                if *ttl > 0 {
                    let deadline = tl.deadline_at(*invoke);
                    if *invoke > deadline {
                        violations.push(LeaseViolation::LeaseOutlived {
                            lease: *lease,
                            observed_at: *invoke,
                            deadline,
                        });
                    }
                } else if tl.guaranteed(*complete) {
                    violations.push(LeaseViolation::PrematureExpiry {
                        lease: *lease,
                        key: None,
                        observed_at: *complete,
                        alive_until: tl.alive_until,
                    });
                }
            }
        }
    }
    Ok(violations)
}

/// One lease's derived times.
struct Timeline {
    /// Keep-alives sorted by send time.
    sorted: Vec<KeepAlive>,
    /// `refresh_bound_prefix[k]`: the latest possible refresh among `sorted[..k]` (or the grant).
    refresh_bound_prefix: Vec<Nanos>,
    ttl: Nanos,
    slack: Nanos,
    /// Guaranteed alive from the grant's completion until this time...
    alive_from: Nanos,
    alive_until: Nanos,
    /// ...unless revoked from this time on.
    revoked: Option<Nanos>,
}

impl Timeline {
    fn new(log: &LeaseLog, bounds: LeaseBounds) -> Self {
        let mut sorted = log.keepalives.clone();
        sorted.sort_by_key(|k| k.sent);
        let mut refresh_bound_prefix = Vec::with_capacity(sorted.len() + 1);
        let mut bound = log.grant_complete;
        refresh_bound_prefix.push(bound);
        for ka in &sorted {
            let refresh = match ka.acked {
                Some(acked) if ka.ttl > 0 => Some(acked),
                Some(_) => None,
                None => Some(ka.sent.saturating_add(bounds.expiry_slack)),
            };
            if let Some(r) = refresh {
                bound = bound.max(r);
            }
            refresh_bound_prefix.push(bound);
        }
        let last_positive_sent = sorted
            .iter()
            .filter(|k| k.acked.is_some() && k.ttl > 0)
            .map(|k| k.sent)
            .max()
            .unwrap_or(0)
            .max(log.grant_invoke);
        let alive_until = last_positive_sent
            .saturating_add(log.ttl)
            .saturating_sub(bounds.early_tolerance);
        Self {
            sorted,
            refresh_bound_prefix,
            ttl: log.ttl,
            slack: bounds.expiry_slack,
            alive_from: log.grant_complete,
            alive_until,
            revoked: log.revoke_invoke,
        }
    }

    /// The expiry deadline given the keep-alives `sorted[..k]`.
    fn deadline_before(&self, k: usize) -> Nanos {
        self.refresh_bound_prefix[k]
            .saturating_add(self.ttl)
            .saturating_add(self.slack)
    }

    /// The expiry deadline for an observation sent at `t` (keep-alives sent before `t`).
    fn deadline_at(&self, t: Nanos) -> Nanos {
        let k = self.sorted.partition_point(|ka| ka.sent < t);
        self.deadline_before(k)
    }

    /// Whether the lease was certainly alive at `t`.
    fn guaranteed(&self, t: Nanos) -> bool {
        t >= self.alive_from && t < self.alive_until && self.revoked.is_none_or(|r| t < r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;
    const BOUNDS: LeaseBounds = LeaseBounds {
        expiry_slack: S,
        early_tolerance: 0,
    };

    /// A 5 s lease granted at 0, kept alive every second until `stop`, key "k" attached at 1 s.
    fn lease(stop: Nanos) -> LeaseLog {
        LeaseLog {
            lease: 7,
            ttl: 5 * S,
            grant_invoke: 0,
            grant_complete: S / 10,
            keepalives: (1..)
                .map(|i| i * S)
                .take_while(|&t| t < stop)
                .map(|t| KeepAlive {
                    sent: t,
                    acked: Some(t + S / 100),
                    ttl: 5,
                })
                .collect(),
            revoke_invoke: None,
            keys: vec![AttachedKey {
                key: "k".into(),
                put_complete: S,
            }],
        }
    }
    fn read(t: Nanos, lease: Option<i64>) -> LeaseObservation {
        LeaseObservation::Key {
            key: "k".into(),
            invoke: t,
            complete: t + S / 100,
            lease,
        }
    }

    #[test]
    fn key_expiring_in_time_passes() {
        // Last keep-alive at 9 s (acked 9.01 s): deadline 9.01 + 5 + 1 = 15.01 s.
        let obs = [
            read(2 * S, Some(7)),
            read(13 * S, Some(7)),
            read(15 * S, Some(7)),
            read(16 * S, None),
            LeaseObservation::TimeToLive {
                lease: 7,
                invoke: 17 * S,
                complete: 17 * S,
                ttl: -1,
            },
        ];
        assert_eq!(
            check_leases(&[lease(10 * S)], &obs, BOUNDS).unwrap(),
            vec![]
        );
    }

    #[test]
    fn key_outliving_its_lease_fails() {
        let obs = [read(16 * S, Some(7))];
        let v = check_leases(&[lease(10 * S)], &obs, BOUNDS).unwrap();
        assert_eq!(
            v,
            vec![LeaseViolation::KeyOutlivedLease {
                lease: 7,
                key: "k".into(),
                observed_at: 16 * S,
                deadline: 9 * S + S / 100 + 6 * S,
            }]
        );
        // The bound is a parameter: with 2 s of slack the same read is fine.
        let loose = LeaseBounds {
            expiry_slack: 2 * S,
            ..BOUNDS
        };
        assert_eq!(check_leases(&[lease(10 * S)], &obs, loose).unwrap(), vec![]);
    }

    #[test]
    fn lease_revived_after_its_deadline_fails() {
        // Keep-alives stop at 2 s, then one sent at 20 s is answered "alive".
        let mut log = lease(2 * S);
        log.keepalives.push(KeepAlive {
            sent: 20 * S,
            acked: Some(20 * S),
            ttl: 5,
        });
        let v = check_leases(&[log], &[], BOUNDS).unwrap();
        assert!(
            matches!(&v[..], [LeaseViolation::LeaseOutlived { observed_at, .. }] if *observed_at == 20 * S),
            "{v:?}"
        );
    }

    #[test]
    fn expiry_while_kept_alive_fails() {
        // Kept alive until 10 s: alive until at least 9 + 5 = 14 s. Gone at 12 s is premature.
        let obs = [read(12 * S, None)];
        let v = check_leases(&[lease(10 * S)], &obs, BOUNDS).unwrap();
        assert!(
            matches!(&v[..], [LeaseViolation::PrematureExpiry { key: Some(_), alive_until, .. }] if *alive_until == 14 * S),
            "{v:?}"
        );
        // A keep-alive answered "not found" while guaranteed alive.
        let mut log = lease(10 * S);
        log.keepalives[3].ttl = 0;
        let v = check_leases(&[log], &[], BOUNDS).unwrap();
        assert!(
            matches!(&v[..], [LeaseViolation::PrematureExpiry { key: None, .. }]),
            "{v:?}"
        );
        // Not after a revoke, nor before the key was attached.
        let mut log = lease(10 * S);
        log.revoke_invoke = Some(11 * S);
        let obs = [read(12 * S, None), read(S / 2, None)];
        assert_eq!(check_leases(&[log], &obs, BOUNDS).unwrap(), vec![]);
    }

    #[test]
    fn unanswered_keepalives_may_refresh() {
        let mut log = lease(3 * S);
        log.keepalives.push(KeepAlive {
            sent: 8 * S,
            acked: None,
            ttl: 0,
        });
        // Deadline: 8 + 1 (assumed handling) + 5 + 1 = 15 s.
        let ok = [read(14 * S, Some(7))];
        assert_eq!(check_leases(&[log.clone()], &ok, BOUNDS).unwrap(), vec![]);
        let bad = [read(15 * S + 1, Some(7))];
        assert_eq!(check_leases(&[log], &bad, BOUNDS).unwrap().len(), 1);
    }

    #[test]
    fn malformed_input_is_an_error() {
        // The same key on two leases.
        let a = lease(S);
        let b = LeaseLog {
            lease: 8,
            ..lease(S)
        };
        assert!(check_leases(&[a.clone(), b], &[], BOUNDS).is_err());
        // A grant answered before it was sent.
        let c = LeaseLog {
            grant_invoke: S,
            ..a
        };
        assert_eq!(check_leases(&[c], &[], BOUNDS).unwrap_err().index, 0);
    }
}
