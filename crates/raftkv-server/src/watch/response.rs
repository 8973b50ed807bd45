//! Cutting a watcher's events into `WatchResponse`s under the size bound.
//!
//! - A watcher that asked for `fragment` gets etcd's `sendFragments` exactly: one logical
//!   response, split when it reaches the bound and has at least two events, every piece but the
//!   last marked `fragment = true`; the client joins them back.
//! - Any other watcher gets whole revisions per response, cut at revision boundaries so that a
//!   response stays under the bound when it can. A single revision larger than the bound goes
//!   out whole, as etcd sends it. (etcd would also send several revisions whole in one response;
//!   splitting between revisions keeps messages within clients' default receive limits and is
//!   allowed by the watch guarantees.)

use prost::Message;
use raftkv_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use raftkv_proto::mvccpb::Event;

/// Field number of `WatchResponse.events`.
const EVENTS_FIELD: u32 = 11;

/// Bytes `ev` adds to an encoded `WatchResponse`.
fn event_len(ev: &Event) -> usize {
    prost::encoding::message::encoded_len(EVENTS_FIELD, ev)
}

/// The responses carrying `events` (non-empty, in revision order) for watcher `watch_id`.
pub(crate) fn responses(
    header: ResponseHeader,
    watch_id: i64,
    events: Vec<Event>,
    max_bytes: usize,
    fragment: bool,
) -> Vec<WatchResponse> {
    let base = WatchResponse {
        header: Some(header),
        watch_id,
        ..Default::default()
    };
    if fragment {
        fragments(base, events, max_bytes)
    } else {
        whole_revisions(base, events, max_bytes)
    }
}

/// etcd's `sendFragments`.
fn fragments(base: WatchResponse, events: Vec<Event>, max_bytes: usize) -> Vec<WatchResponse> {
    let lens: Vec<usize> = events.iter().map(event_len).collect();
    let whole = base.encoded_len() + lens.iter().sum::<usize>();
    if whole < max_bytes || events.len() < 2 {
        return vec![WatchResponse { events, ..base }];
    }
    // Every piece is encoded with `fragment = true` while its size is measured, as etcd does.
    let piece_base = WatchResponse {
        fragment: true,
        ..base.clone()
    }
    .encoded_len();
    let mut out = Vec::new();
    let mut events = events.into_iter().zip(lens).peekable();
    while events.peek().is_some() {
        let mut piece = Vec::new();
        let mut size = piece_base;
        while let Some((_, len)) = events.peek() {
            if !piece.is_empty() && size + len >= max_bytes {
                break;
            }
            size += len;
            piece.push(events.next().map(|(ev, _)| ev).expect("peeked"));
        }
        out.push(WatchResponse {
            events: piece,
            fragment: events.peek().is_some(),
            ..base.clone()
        });
    }
    out
}

/// Whole revisions per response, each response under `max_bytes` when possible.
fn whole_revisions(
    base: WatchResponse,
    events: Vec<Event>,
    max_bytes: usize,
) -> Vec<WatchResponse> {
    let rev = |ev: &Event| ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let base_len = base.encoded_len();
    let mut out = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut cur_len = base_len;
    let mut events = events.into_iter().peekable();
    while let Some(first) = events.next() {
        // One revision's events.
        let r = rev(&first);
        let mut group_len = event_len(&first);
        let mut group = vec![first];
        while let Some(ev) = events.next_if(|ev| rev(ev) == r) {
            group_len += event_len(&ev);
            group.push(ev);
        }
        if !cur.is_empty() && cur_len + group_len >= max_bytes {
            out.push(WatchResponse {
                events: std::mem::take(&mut cur),
                ..base.clone()
            });
            cur_len = base_len;
        }
        cur.append(&mut group);
        cur_len += group_len;
    }
    if !cur.is_empty() {
        out.push(WatchResponse {
            events: cur,
            ..base
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_proto::mvccpb::KeyValue;

    fn ev(rev: i64, value_len: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: vec![b'v'; value_len],
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn revs(r: &WatchResponse) -> Vec<i64> {
        r.events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    }

    #[test]
    fn small_responses_go_whole() {
        for fragment in [false, true] {
            let out = responses(
                ResponseHeader::default(),
                3,
                vec![ev(2, 10), ev(3, 10)],
                1024,
                fragment,
            );
            assert_eq!(out.len(), 1);
            assert_eq!(revs(&out[0]), [2, 3]);
            assert!(!out[0].fragment);
        }
    }

    #[test]
    fn fragments_split_anywhere_and_mark_all_but_the_last() {
        // Three events of one revision, each about 400 bytes, bound 1000: two pieces.
        let events = vec![ev(5, 400), ev(5, 400), ev(5, 400)];
        let out = responses(ResponseHeader::default(), 1, events, 1000, true);
        assert_eq!(
            out.iter().map(|r| r.events.len()).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(
            out.iter().map(|r| r.fragment).collect::<Vec<_>>(),
            [true, false]
        );
        assert!(out.iter().all(|r| r.encoded_len() < 1000));
    }

    #[test]
    fn a_single_oversized_event_is_sent_whole_even_with_fragment() {
        let out = responses(ResponseHeader::default(), 1, vec![ev(5, 5000)], 1000, true);
        assert_eq!(out.len(), 1);
        assert!(!out[0].fragment);
    }

    #[test]
    fn without_fragment_cuts_only_between_revisions() {
        let events = vec![ev(5, 400), ev(5, 400), ev(6, 400), ev(7, 100)];
        let out = responses(ResponseHeader::default(), 1, events, 1000, false);
        let got: Vec<_> = out.iter().map(revs).collect();
        assert_eq!(got, vec![vec![5, 5], vec![6, 7]]);
        assert!(out.iter().all(|r| !r.fragment));
    }
}
