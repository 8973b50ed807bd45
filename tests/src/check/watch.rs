//! Watch guarantees.
//!
//! Input: the store's true event log (every `(revision, key, type)` of the run, from a final
//! history read or rebuilt from acknowledged writes; it must cover every revision a watcher
//! could have been sent), and per watcher its key range and what it received, split into
//! *segments*: one per watch stream, each with the start revision it asked for (the first
//! segment's, then each reconnect's `start_revision`), the events received in order, the
//! compaction notice that ended it if any, and how far it knows it was caught up (a progress
//! notification's or the final write's revision).
//!
//! Checked per segment:
//! - nothing before the start revision ([`WatchViolation::BeforeStart`]);
//! - nothing below a compaction revision the watcher was told about in an earlier segment
//!   ([`WatchViolation::BelowCompaction`]);
//! - every event is real and in range ([`WatchViolation::Phantom`]);
//! - no event twice ([`WatchViolation::Duplicate`]);
//! - in log order ([`WatchViolation::OutOfOrder`]);
//! - no gaps: the events received are exactly the log's matching events from the start
//!   revision on, up to the last one received, and up to `caught_up_to` when given (unless a
//!   compaction notice cut the segment short) ([`WatchViolation::Gap`]).
//!
//! And across segments: a reconnect resumes at most one past what the watcher had seen (or at
//! the compaction revision it was told about) ([`WatchViolation::ResumeGap`]); a reconnect
//! that resumes earlier may legitimately see events again.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// Put or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A put.
    Put,
    /// A delete.
    Delete,
}

/// One event: a change of one key at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// The revision of the change.
    pub revision: i64,
    /// The key.
    pub key: String,
    /// Put or delete.
    pub kind: EventType,
}

/// The end of a watched key range, with etcd's meanings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeEnd {
    /// Only the start key (no `range_end`).
    Single,
    /// Every key with the start as prefix (`--prefix`).
    Prefix,
    /// Every key at or after the start (`range_end` = `"\0"`).
    AllFrom,
    /// Keys in `[start, end)`.
    Before(String),
}

/// A watched key range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// The start key.
    pub start: String,
    /// The end.
    pub end: RangeEnd,
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub fn contains(&self, key: &str) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start,
            RangeEnd::Prefix => key.starts_with(&self.start),
            RangeEnd::AllFrom => key >= self.start.as_str(),
            RangeEnd::Before(end) => key >= self.start.as_str() && key < end.as_str(),
        }
    }
}

/// One watch stream of a watcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The start revision asked for (for a watch created at "now", the created response's
    /// header revision + 1).
    pub start_revision: i64,
    /// The events received, in arrival order.
    pub events: Vec<Event>,
    /// The compaction revision of a cancel-on-compaction notice that ended the stream.
    pub compacted: Option<i64>,
    /// A revision the watcher knows it was caught up to on this stream (every matching event
    /// up to it must have arrived).
    pub caught_up_to: Option<i64>,
}

/// One watcher's whole record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherLog {
    /// An id for reports.
    pub watcher: usize,
    /// The watched range.
    pub range: KeyRange,
    /// Its streams, in order.
    pub segments: Vec<Segment>,
}

/// A watch violation. `segment` indexes [`WatcherLog::segments`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum WatchViolation {
    /// An event below the segment's start revision.
    BeforeStart {
        /// The watcher.
        watcher: usize,
        /// The segment.
        segment: usize,
        /// The event.
        event: Event,
    },
    /// An event below a compaction revision the watcher had been told about.
    BelowCompaction {
        /// The watcher.
        watcher: usize,
        /// The segment.
        segment: usize,
        /// The event.
        event: Event,
        /// The compaction revision it had been told.
        compact_revision: i64,
    },
    /// An event not in the store's log, or not in the watched range.
    Phantom {
        /// The watcher.
        watcher: usize,
        /// The segment.
        segment: usize,
        /// The event.
        event: Event,
    },
    /// An event received twice on one stream.
    Duplicate {
        /// The watcher.
        watcher: usize,
        /// The segment.
        segment: usize,
        /// The event.
        event: Event,
    },
    /// An event that comes before, in the log, one already received.
    OutOfOrder {
        /// The watcher.
        watcher: usize,
        /// The segment.
        segment: usize,
        /// The event.
        event: Event,
        /// The event received just before it.
        after: Event,
    },
    /// A matching event that should have arrived and did not.
    Gap {
        /// The watcher.
        watcher: usize,
        /// The segment.
        segment: usize,
        /// The first missing event.
        missing: Event,
        /// The event received in its place (`None`: the stream ended or was caught up).
        next_received: Option<Event>,
    },
    /// A reconnect resumed past revisions the watcher had not seen.
    ResumeGap {
        /// The watcher.
        watcher: usize,
        /// The new segment.
        segment: usize,
        /// The revision it resumed from.
        resumed_from: i64,
        /// The highest revision it had seen or been caught up to before.
        seen_through: i64,
    },
}

/// Checks every watcher against the store's event log.
pub fn check_watchers(log: &[Event], watchers: &[WatcherLog]) -> Vec<WatchViolation> {
    let mut log: Vec<&Event> = log.iter().collect();
    // Stable: events of one revision keep their order.
    log.sort_by_key(|e| e.revision);
    let mut violations = Vec::new();
    for w in watchers {
        let matching: Vec<&Event> = log
            .iter()
            .copied()
            .filter(|e| w.range.contains(&e.key))
            .collect();
        let position: HashMap<(i64, &str), usize> = matching
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.revision, e.key.as_str()), i))
            .collect();
        let mut told_compaction: Option<i64> = None;
        let mut seen_through: Option<i64> = None;
        for (s, seg) in w.segments.iter().enumerate() {
            if let Some(seen) = seen_through {
                let explained = told_compaction.is_some_and(|c| seg.start_revision <= c);
                if seg.start_revision > seen + 1 && !explained {
                    violations.push(WatchViolation::ResumeGap {
                        watcher: w.watcher,
                        segment: s,
                        resumed_from: seg.start_revision,
                        seen_through: seen,
                    });
                }
            }
            check_segment(
                w.watcher,
                s,
                seg,
                &matching,
                &position,
                told_compaction,
                &mut violations,
            );
            let last = seg.events.iter().map(|e| e.revision).max();
            let through = [
                Some(seg.start_revision - 1),
                last,
                seg.caught_up_to,
                seen_through,
            ]
            .into_iter()
            .flatten()
            .max();
            seen_through = through;
            if let Some(c) = seg.compacted {
                told_compaction = Some(told_compaction.map_or(c, |t| t.max(c)));
            }
        }
    }
    violations
}

fn check_segment(
    watcher: usize,
    segment: usize,
    seg: &Segment,
    matching: &[&Event],
    position: &HashMap<(i64, &str), usize>,
    told_compaction: Option<i64>,
    out: &mut Vec<WatchViolation>,
) {
    // The first matching event at or after the start revision.
    let mut expected = matching.partition_point(|e| e.revision < seg.start_revision);
    let mut seen: HashSet<usize> = HashSet::new();
    let mut previous: Option<&Event> = None;
    for event in &seg.events {
        if event.revision < seg.start_revision {
            out.push(WatchViolation::BeforeStart {
                watcher,
                segment,
                event: event.clone(),
            });
            continue;
        }
        if let Some(c) = told_compaction.filter(|&c| event.revision < c) {
            out.push(WatchViolation::BelowCompaction {
                watcher,
                segment,
                event: event.clone(),
                compact_revision: c,
            });
            continue;
        }
        let Some(&at) = position
            .get(&(event.revision, event.key.as_str()))
            .filter(|&&at| matching[at].kind == event.kind)
        else {
            out.push(WatchViolation::Phantom {
                watcher,
                segment,
                event: event.clone(),
            });
            continue;
        };
        if !seen.insert(at) {
            out.push(WatchViolation::Duplicate {
                watcher,
                segment,
                event: event.clone(),
            });
            continue;
        }
        if at < expected {
            out.push(WatchViolation::OutOfOrder {
                watcher,
                segment,
                event: event.clone(),
                after: previous.cloned().unwrap_or_else(|| event.clone()),
            });
        } else {
            if at > expected {
                out.push(WatchViolation::Gap {
                    watcher,
                    segment,
                    missing: matching[expected].clone(),
                    next_received: Some(event.clone()),
                });
            }
            expected = at + 1;
        }
        previous = Some(event);
    }
    if seg.compacted.is_none() {
        if let Some(through) = seg.caught_up_to {
            if let Some(missing) = matching
                .get(expected)
                .filter(|e| e.revision <= through && !seen.contains(&expected))
            {
                out.push(WatchViolation::Gap {
                    watcher,
                    segment,
                    missing: (*missing).clone(),
                    next_received: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: i64, key: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            kind: EventType::Put,
        }
    }
    fn del(revision: i64, key: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            kind: EventType::Delete,
        }
    }
    /// Revisions 2..=10: "a/1" at even revisions, "b" at odd ones, plus a txn at 11 writing
    /// "a/2" and deleting "a/1".
    fn log() -> Vec<Event> {
        let mut log: Vec<Event> = (2..=10)
            .map(|r| ev(r, if r % 2 == 0 { "a/1" } else { "b" }))
            .collect();
        log.push(ev(11, "a/2"));
        log.push(del(11, "a/1"));
        log
    }
    fn prefix_a() -> KeyRange {
        KeyRange {
            start: "a/".into(),
            end: RangeEnd::Prefix,
        }
    }
    fn watcher(segments: Vec<Segment>) -> WatcherLog {
        WatcherLog {
            watcher: 3,
            range: prefix_a(),
            segments,
        }
    }
    fn seg(start: i64, events: Vec<Event>) -> Segment {
        Segment {
            start_revision: start,
            events,
            compacted: None,
            caught_up_to: None,
        }
    }
    fn a_events(revs: &[i64]) -> Vec<Event> {
        revs.iter().map(|&r| ev(r, "a/1")).collect()
    }

    #[test]
    fn complete_watchers_pass() {
        let mut full = a_events(&[2, 4, 6, 8, 10]);
        full.extend([ev(11, "a/2"), del(11, "a/1")]);
        let w = watcher(vec![Segment {
            caught_up_to: Some(11),
            ..seg(1, full)
        }]);
        assert_eq!(check_watchers(&log(), &[w]), vec![]);
        // Reconnecting from the next revision after the last one seen, and once from earlier
        // (re-seeing an event is the client's choice).
        let w = watcher(vec![
            seg(3, a_events(&[4, 6])),
            seg(7, a_events(&[8])),
            seg(8, a_events(&[8, 10])),
        ]);
        assert_eq!(check_watchers(&log(), &[w]), vec![]);
        // Ranges.
        let r = KeyRange {
            start: "a/".into(),
            end: RangeEnd::Before("a/2".into()),
        };
        assert!(r.contains("a/1") && !r.contains("a/2") && !r.contains("b"));
        let all = KeyRange {
            start: "a".into(),
            end: RangeEnd::AllFrom,
        };
        assert!(all.contains("b") && !all.contains("0"));
    }

    #[test]
    fn skipped_revision_fails() {
        let w = watcher(vec![seg(1, a_events(&[2, 6]))]);
        assert_eq!(
            check_watchers(&log(), &[w]),
            vec![WatchViolation::Gap {
                watcher: 3,
                segment: 0,
                missing: ev(4, "a/1"),
                next_received: Some(ev(6, "a/1")),
            }]
        );
        // A missing trailing event when the watcher knows it is caught up.
        let w = watcher(vec![Segment {
            caught_up_to: Some(9),
            ..seg(1, a_events(&[2, 4, 6]))
        }]);
        assert!(matches!(
            &check_watchers(&log(), &[w])[..],
            [WatchViolation::Gap { next_received: None, missing, .. }] if missing.revision == 8
        ));
        // Half of a transaction's revision.
        let w = watcher(vec![Segment {
            caught_up_to: Some(11),
            ..seg(10, vec![ev(10, "a/1"), ev(11, "a/2")])
        }]);
        assert!(matches!(
            &check_watchers(&log(), &[w])[..],
            [WatchViolation::Gap { missing, .. }] if *missing == del(11, "a/1")
        ));
    }

    #[test]
    fn duplicate_fails() {
        let w = watcher(vec![seg(1, a_events(&[2, 4, 4, 6]))]);
        assert_eq!(
            check_watchers(&log(), &[w]),
            vec![WatchViolation::Duplicate {
                watcher: 3,
                segment: 0,
                event: ev(4, "a/1"),
            }]
        );
    }

    #[test]
    fn event_before_start_fails() {
        let w = watcher(vec![seg(5, a_events(&[4, 6]))]);
        assert_eq!(
            check_watchers(&log(), &[w]),
            vec![WatchViolation::BeforeStart {
                watcher: 3,
                segment: 0,
                event: ev(4, "a/1"),
            }]
        );
    }

    #[test]
    fn out_of_order_and_phantom_events_fail() {
        let w = watcher(vec![seg(1, a_events(&[2, 6, 4]))]);
        let v = check_watchers(&log(), &[w]);
        assert!(
            v.iter().any(
                |x| matches!(x, WatchViolation::OutOfOrder { event, .. } if event.revision == 4)
            ),
            "{v:?}"
        );
        // Out of range, never written, wrong type.
        let w = watcher(vec![seg(
            1,
            vec![ev(2, "a/1"), ev(3, "b"), ev(4, "a/9"), del(6, "a/1")],
        )]);
        let v = check_watchers(&log(), &[w]);
        assert_eq!(
            v.iter()
                .filter(|x| matches!(x, WatchViolation::Phantom { .. }))
                .count(),
            3,
            "{v:?}"
        );
    }

    #[test]
    fn compaction_notices() {
        // Told about a compaction at 8: resuming at 8 is fine, events below 8 afterwards are not.
        let ok = watcher(vec![
            Segment {
                compacted: Some(8),
                ..seg(1, a_events(&[2]))
            },
            seg(8, a_events(&[8, 10])),
        ]);
        assert_eq!(check_watchers(&log(), &[ok]), vec![]);
        let bad = watcher(vec![
            Segment {
                compacted: Some(8),
                ..seg(1, vec![])
            },
            seg(3, a_events(&[4, 6, 8])),
        ]);
        let v = check_watchers(&log(), &[bad]);
        assert_eq!(
            v.iter()
                .filter(|x| matches!(
                    x,
                    WatchViolation::BelowCompaction {
                        compact_revision: 8,
                        ..
                    }
                ))
                .count(),
            2,
            "{v:?}"
        );
    }

    #[test]
    fn resuming_past_unseen_revisions_fails() {
        let w = watcher(vec![seg(1, a_events(&[2, 4])), seg(7, a_events(&[8]))]);
        assert_eq!(
            check_watchers(&log(), &[w]),
            vec![WatchViolation::ResumeGap {
                watcher: 3,
                segment: 1,
                resumed_from: 7,
                seen_through: 4,
            }]
        );
    }
}
