//! The `watch` workload: event latency as a watcher sees it.
//!
//! `--watchers` watches on one prefix are spread round-robin over `--streams` Watch streams,
//! which are spread round-robin over the connections (the way many clients of one service
//! watch the same directory). Once every watch is created, `--clients` writers put keys under
//! the prefix, paced by `--rate`, each value starting with the time its put was sent (16 hex
//! digits of nanoseconds since the benchmark started, then the usual filler). A watcher's event
//! latency is the time it receives the event minus that send time, so it covers the put's
//! commit and the fan-out to every watcher; every watcher records every event. The report's
//! main histogram is the event latency; the puts' own latencies are reported apart. After
//! the writers stop, the watchers are given a few seconds to receive what is due, and events
//! never received are reported as `events_missing`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcdserverpb::{watch_request, PutRequest, WatchCreateRequest, WatchRequest};
use raftkv_proto::mvccpb::event::EventType;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::pace::{Pacer, Progress};
use super::report::{new_histogram, ErrorCounts, SharedHistogram};
use super::workload::{KeyGen, Rng};
use super::{Outcome, Stop};

/// Bytes of the send time at the start of each value.
pub(crate) const STAMP_LEN: usize = 16;
/// How long creating every watch may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long watchers may take to receive the last events after the writers stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the watch workload needs beyond the connections and keys.
#[derive(Clone, Debug)]
pub(crate) struct WatchSpec {
    /// Watches in all.
    pub(crate) watchers: usize,
    /// Watch streams they are spread over.
    pub(crate) streams: usize,
    /// The watched prefix; every key written starts with it.
    pub(crate) prefix: Vec<u8>,
    /// Concurrent writers.
    pub(crate) writers: usize,
    /// Unmeasured writing before the measured phase.
    pub(crate) warmup: Option<Duration>,
    /// When the measured writing stops.
    pub(crate) stop: Stop,
    /// The writers' cap in puts/s (0: none).
    pub(crate) rate: f64,
}

/// The send time, as the first [`STAMP_LEN`] bytes of a value: nanoseconds since `base`.
pub(crate) fn stamp(value: &mut [u8], nanos: u64) {
    let hex = format!("{nanos:016x}");
    value[..STAMP_LEN].copy_from_slice(hex.as_bytes());
}

/// The send time a value carries, if it starts with one.
pub(crate) fn read_stamp(value: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(value.get(..STAMP_LEN)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

pub(crate) use raftkv_client::prefix_range_end as prefix_end;

/// Nanoseconds since `base`.
fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What the receiving side of the watchers shares.
struct Sink {
    /// Send times at or after this (ns since `base`) are measured; `u64::MAX` until then.
    measure_from: AtomicU64,
    /// Measured events received, over all watchers.
    received: AtomicU64,
    /// Event latencies.
    events: SharedHistogram,
}

/// Opens the streams, creates every watch, and returns one receiving task per stream plus the
/// senders that keep the streams open (dropping them ends the streams).
async fn open_watchers(
    channels: &[Channel],
    spec: &WatchSpec,
    base: Instant,
    sink: &Arc<Sink>,
) -> anyhow::Result<(
    tokio::task::JoinSet<anyhow::Result<()>>,
    Vec<mpsc::Sender<WatchRequest>>,
)> {
    let range_end = prefix_end(&spec.prefix);
    let mut opening = tokio::task::JoinSet::new();
    for s in 0..spec.streams {
        // Watchers s, s + streams, s + 2 * streams, ... live on stream s.
        let count = (spec.watchers + spec.streams - 1 - s) / spec.streams;
        if count == 0 {
            continue;
        }
        let channel = channels[s % channels.len()].clone();
        let (key, range_end) = (spec.prefix.clone(), range_end.clone());
        opening.spawn(async move {
            let (tx, rx) = mpsc::channel(count + 1);
            for _ in 0..count {
                let create = WatchCreateRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    ..WatchCreateRequest::default()
                };
                let req = WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
                };
                tx.send(req).await.context("queueing a watch create")?;
            }
            let mut stream = WatchClient::new(channel)
                .watch(ReceiverStream::new(rx))
                .await
                .context("opening a watch stream")?
                .into_inner();
            let mut created = 0;
            while created < count {
                let resp = stream
                    .message()
                    .await
                    .context("creating watches")?
                    .context("the watch stream ended while creating watches")?;
                if resp.canceled {
                    bail!("a watch was refused: {:?}", resp.cancel_reason);
                }
                if resp.created {
                    created += 1;
                }
            }
            anyhow::Ok((tx, stream))
        });
    }
    let mut senders = Vec::new();
    let mut receivers = tokio::task::JoinSet::new();
    let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
    while let Some(joined) = tokio::time::timeout_at(deadline, opening.join_next())
        .await
        .context("creating the watches timed out")?
    {
        let (tx, mut stream) = joined.context("a watch-opening task panicked")??;
        senders.push(tx);
        let sink = Arc::clone(sink);
        receivers.spawn(async move {
            let mut rec = sink.events.recorder();
            let mut received = 0u64;
            loop {
                let resp = match stream.message().await {
                    Ok(Some(resp)) => resp,
                    // The stream closes when the senders are dropped at the end.
                    Ok(None) => break,
                    Err(status) if status.code() == tonic::Code::Cancelled => break,
                    Err(status) => return Err(status).context("a watch stream failed"),
                };
                let now = nanos_since(base);
                let from = sink.measure_from.load(Ordering::Relaxed);
                for ev in &resp.events {
                    if ev.r#type != EventType::Put as i32 {
                        continue;
                    }
                    let Some(sent) = ev.kv.as_ref().and_then(|kv| read_stamp(&kv.value)) else {
                        continue;
                    };
                    if sent >= from {
                        rec.record(Duration::from_nanos(now.saturating_sub(sent)));
                        received += 1;
                    }
                }
                // Counted per response, so the drain sees every event before the abort.
                if received > 0 {
                    sink.received.fetch_add(received, Ordering::Relaxed);
                    received = 0;
                }
            }
            Ok(())
        });
    }
    Ok((receivers, senders))
}

/// Puts under the prefix until `stop`; returns the puts acknowledged and the errors.
async fn write(
    channels: &[Channel],
    keys: &KeyGen,
    spec: &WatchSpec,
    base: Instant,
    stop: Stop,
    puts: &SharedHistogram,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<(u64, ErrorCounts)> {
    let pacer = Pacer::new(spec.rate);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (deadline, limit) = stop.bounds(start);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..spec.writers {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let (next, keys, pacer, done) = (
            Arc::clone(&next),
            keys.clone(),
            pacer.clone(),
            Arc::clone(done),
        );
        let prefix = spec.prefix.clone();
        let mut rec = puts.recorder();
        let mut rng = Rng::new(nanos_since(base) ^ (c as u64).wrapping_mul(0x9E37_79B9));
        let mut value = keys.value().to_vec();
        tasks.spawn(async move {
            let (mut acked, mut errors) = (0u64, ErrorCounts::default());
            loop {
                pacer.wait().await;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= limit {
                    break;
                }
                let mut key = prefix.clone();
                key.extend(keys.pick(seq, &mut rng));
                let sent = Instant::now();
                stamp(&mut value, nanos_since(base));
                let req = PutRequest {
                    key,
                    value: value.clone(),
                    ..PutRequest::default()
                };
                match kv.put(req).await {
                    Ok(_) => {
                        rec.record(sent.elapsed());
                        acked += 1;
                    }
                    Err(status) => errors.add(&status),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (acked, errors)
        });
    }
    let (mut acked, mut errors) = (0, ErrorCounts::default());
    while let Some(joined) = tasks.join_next().await {
        let (a, e) = joined.context("a writer task panicked")?;
        acked += a;
        errors.merge(e);
    }
    Ok((acked, errors))
}

/// Runs the watch workload: watchers, optional warm-up writing, measured writing, drain.
pub(crate) async fn run(
    channels: &[Channel],
    keys: &KeyGen,
    spec: &WatchSpec,
) -> anyhow::Result<Outcome> {
    ensure!(spec.watchers > 0, "--watchers must be at least 1");
    ensure!(spec.streams > 0, "--streams must be at least 1");
    let base = Instant::now();
    let sink = Arc::new(Sink {
        measure_from: AtomicU64::new(u64::MAX),
        received: AtomicU64::new(0),
        events: SharedHistogram::new(),
    });
    super::progress(format_args!(
        "creating {} watchers on {} streams",
        spec.watchers, spec.streams
    ));
    let (mut receivers, senders) = open_watchers(channels, spec, base, &sink).await?;

    let done = Arc::new(AtomicU64::new(0));
    if let Some(warmup) = spec.warmup {
        let _bar = Progress::start("warm-up", Stop::After(warmup), Arc::clone(&done));
        let discard = SharedHistogram::new();
        write(
            channels,
            keys,
            spec,
            base,
            Stop::After(warmup),
            &discard,
            &done,
        )
        .await?;
        done.store(0, Ordering::Relaxed);
    }

    let puts = SharedHistogram::new();
    sink.measure_from
        .store(nanos_since(base), Ordering::Relaxed);
    let start = Instant::now();
    let (acked, errors) = {
        let _bar = Progress::start("watch", spec.stop, Arc::clone(&done));
        write(channels, keys, spec, base, spec.stop, &puts, &done).await?
    };
    let write_elapsed = start.elapsed();

    // Wait for the watchers to receive what is due, then close the streams.
    let expected = acked.saturating_mul(spec.watchers as u64);
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while sink.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // End the streams; the receivers' recorders flush as their tasks are dropped.
    drop(senders);
    receivers.abort_all();
    let mut stream_errors = ErrorCounts::default();
    while let Some(joined) = receivers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stream_errors.add(&tonic::Status::unknown(format!("{e:#}")));
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e).context("a watch receiver panicked"),
        }
    }
    let received = sink.received.load(Ordering::Relaxed);
    let mut all_errors = errors;
    all_errors.merge(stream_errors);

    let mut extra = serde_json::Map::new();
    extra.insert("watchers".into(), json!(spec.watchers));
    extra.insert("streams".into(), json!(spec.streams));
    extra.insert("puts".into(), json!(acked));
    extra.insert("events_expected".into(), json!(expected));
    extra.insert("events_received".into(), json!(received));
    extra.insert(
        "events_missing".into(),
        json!(expected.saturating_sub(received)),
    );
    let mut all = new_histogram();
    all.add(sink.events.snapshot())
        .context("merging histograms")?;
    Ok(Outcome {
        elapsed: write_elapsed,
        all,
        parts: vec![("put", puts.snapshot())],
        errors: all_errors,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_keeps_the_value_size() {
        let mut v = vec![b'a'; 256];
        stamp(&mut v, 123_456_789_012);
        assert_eq!(v.len(), 256);
        assert_eq!(read_stamp(&v), Some(123_456_789_012));
        assert_eq!(&v[STAMP_LEN..], &[b'a'; 256 - STAMP_LEN][..]);
        assert_eq!(read_stamp(b"short"), None);
        assert_eq!(read_stamp(&[b'z'; 32]), None);
    }
}
