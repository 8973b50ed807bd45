//! One watcher: what it watches (keys, filters, options) and where it stands in the revision
//! sequence. Pure data and matching; the stream task moves it along.

use raftkv_proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use raftkv_proto::mvccpb::{event::EventType, Event};

/// etcd's reason for a create whose `key >= range_end` (mvcc `ErrEmptyWatcherRange`).
pub(crate) const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's reason for a create reusing a live watch id (mvcc `ErrWatcherDuplicateID`).
pub(crate) const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The keys a watcher covers, decoded from etcd's `key`/`range_end` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keys {
    /// `range_end` empty: exactly this key.
    Single(Box<[u8]>),
    /// `range_end == "\0"`: every key at or after this one.
    From(Box<[u8]>),
    /// `[key, range_end)`, with `key < range_end`.
    Between(Box<[u8]>, Box<[u8]>),
}

impl Keys {
    /// Decodes a create request's keys as etcd does: an empty key means `"\0"` (the smallest
    /// key), and a non-empty `range_end` must be greater than the key.
    pub(crate) fn new(key: &[u8], range_end: &[u8]) -> Result<Keys, &'static str> {
        let key: Box<[u8]> = if key.is_empty() {
            Box::new([0])
        } else {
            key.into()
        };
        match range_end {
            [] => Ok(Keys::Single(key)),
            [0] => Ok(Keys::From(key)),
            end if *key < *end => Ok(Keys::Between(key, end.into())),
            _ => Err(EMPTY_RANGE),
        }
    }

    /// True if `k` is covered.
    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        match self {
            Keys::Single(key) => **key == *k,
            Keys::From(key) => k >= &**key,
            Keys::Between(key, end) => k >= &**key && k < &**end,
        }
    }
}

/// A watcher on one stream.
#[derive(Debug)]
pub(crate) struct Watcher {
    pub(crate) keys: Keys,
    /// The next revision this watcher has to see: every event below it was delivered (or
    /// filtered out). Only grows.
    pub(crate) next: i64,
    /// Progress notifications wait until the stream has been fed up to here: the revision the
    /// watcher was created at, or its explicit start revision if later (etcd: `rev < startRev`
    /// counts as unsynced).
    pub(crate) sync_floor: i64,
    /// Revisions below `next` may exist that the live feed will not bring: read them from the
    /// store before going live (etcd's "unsynced").
    pub(crate) behind: bool,
    /// Cancelled after its start revision was compacted. Like etcd, it keeps its id and gets no
    /// events until the client cancels it.
    pub(crate) compacted: bool,
    /// No events since the last progress tick (etcd's `progress[id]`).
    pub(crate) quiet: bool,
    pub(crate) opts: Options,
}

/// The create request's switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Options {
    pub(crate) prev_kv: bool,
    pub(crate) progress_notify: bool,
    pub(crate) fragment: bool,
    pub(crate) no_put: bool,
    pub(crate) no_delete: bool,
}

impl Options {
    pub(crate) fn from_request(req: &WatchCreateRequest) -> Options {
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        Options {
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
        }
    }
}

impl Watcher {
    /// A watcher that delivers from revision `next` on. `current` is the store revision at
    /// creation: anything at or below it has to come from history.
    pub(crate) fn new(
        keys: Keys,
        next: i64,
        start_revision: i64,
        current: i64,
        opts: Options,
    ) -> Watcher {
        Watcher {
            keys,
            next,
            sync_floor: current.max(start_revision),
            behind: next <= current,
            compacted: false,
            quiet: true,
            opts,
        }
    }

    /// True while the watcher takes part in event delivery.
    pub(crate) fn active(&self) -> bool {
        !self.compacted
    }

    /// True if `ev` is for this watcher (keys and filters; not revisions).
    pub(crate) fn wants(&self, ev: &Event) -> bool {
        let Some(kv) = ev.kv.as_ref() else {
            return false;
        };
        if !self.keys.contains(&kv.key) {
            return false;
        }
        match EventType::try_from(ev.r#type) {
            Ok(EventType::Put) => !self.opts.no_put,
            Ok(EventType::Delete) => !self.opts.no_delete,
            Err(_) => false,
        }
    }

    /// The events of `events` (in revision order, covering revisions up to `to`) this watcher
    /// has not seen yet, as it should receive them (prev_kv kept only if it asked), and moves
    /// it past `to`.
    pub(crate) fn take(&mut self, events: &[Event], to: i64) -> Vec<Event> {
        let next = self.next;
        let out = events
            .iter()
            .filter(|ev| ev.kv.as_ref().is_some_and(|kv| kv.mod_revision >= next))
            .filter(|ev| self.wants(ev))
            .map(|ev| Event {
                r#type: ev.r#type,
                kv: ev.kv.clone(),
                prev_kv: if self.opts.prev_kv {
                    ev.prev_kv.clone()
                } else {
                    None
                },
            })
            .collect::<Vec<_>>();
        self.next = self.next.max(to + 1);
        if !out.is_empty() {
            self.quiet = false;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_proto::mvccpb::KeyValue;

    fn ev(t: EventType, key: &[u8], rev: i64) -> Event {
        Event {
            r#type: t as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    #[test]
    fn keys_follow_etcds_convention() {
        assert_eq!(Keys::new(b"", b""), Ok(Keys::Single(Box::new([0]))));
        let all = Keys::new(b"", b"\0").unwrap();
        assert!(all.contains(b"\0") && all.contains(b"zzz"));
        let from = Keys::new(b"b", b"\0").unwrap();
        assert!(!from.contains(b"a") && from.contains(b"b") && from.contains(b"c"));
        let prefix = Keys::new(b"a/", b"a0").unwrap();
        assert!(prefix.contains(b"a/") && prefix.contains(b"a/x") && !prefix.contains(b"a0"));
        assert_eq!(Keys::new(b"b", b"a"), Err(EMPTY_RANGE));
        assert_eq!(Keys::new(b"b", b"b"), Err(EMPTY_RANGE));
    }

    #[test]
    fn take_skips_seen_revisions_filters_and_strips_prev_kv() {
        let opts = Options {
            no_delete: true,
            ..Options::default()
        };
        let mut w = Watcher::new(Keys::new(b"k", b"").unwrap(), 3, 3, 2, opts);
        let events = [
            ev(EventType::Put, b"k", 2),
            ev(EventType::Put, b"k", 3),
            ev(EventType::Put, b"j", 4),
            ev(EventType::Delete, b"k", 5),
        ];
        let got = w.take(&events, 6);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kv.as_ref().unwrap().mod_revision, 3);
        assert_eq!(got[0].prev_kv, None);
        assert_eq!(w.next, 7);
        assert!(!w.quiet);
        assert!(w.take(&events, 6).is_empty(), "nothing twice");
    }
}
