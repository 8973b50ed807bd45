//! The `lease-keepalive` workload: how many keep-alives a cluster answers while it holds many
//! leases, and whether it loses any.
//!
//! First `--leases` leases of `--lease-ttl` seconds are granted (not measured). Then
//! `--streams` LeaseKeepAlive streams, spread round-robin over the connections, each own a
//! share of the leases and cycle through it, keeping up to `--clients / --streams` keep-alives
//! in flight (a closed loop, like the other workloads' clients; `--rate` caps the sends). A
//! keep-alive's latency is from its send to the response carrying its lease ID. The report's
//! rate is keep-alive responses per second. At the end every lease is checked with
//! TimeToLive: a lease the cluster no longer knows (TTL ≤ 0), or one a keep-alive answered
//! with TTL 0, counts as lost (`leases_lost`). Then the leases are revoked (not measured).
//!
//! The leases survive only if each is renewed within its TTL: at `r` keep-alives/s, a lease
//! is renewed every `--leases / r` seconds, so the run fails early if `--rate` is too low for
//! that to be under half the TTL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::pace::{Pacer, Progress};
use super::report::{new_histogram, ErrorCounts, SharedHistogram};
use super::{Outcome, Stop};

/// Concurrent requests of the unmeasured grant, check and revoke phases.
const SETUP_CONCURRENCY: usize = 64;
/// How long a stream waits for the answers still due after its phase ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the lease-keepalive workload needs beyond the connections.
#[derive(Clone, Debug)]
pub(crate) struct LeaseSpec {
    /// Leases granted and kept alive.
    pub(crate) leases: u64,
    /// Their TTL in seconds.
    pub(crate) ttl: i64,
    /// Keep-alive streams.
    pub(crate) streams: usize,
    /// Keep-alives in flight in all (spread over the streams, at least one each).
    pub(crate) in_flight: usize,
    /// Unmeasured keep-alives before the measured phase.
    pub(crate) warmup: Option<Duration>,
    /// When the measured phase stops.
    pub(crate) stop: Stop,
    /// The cap in keep-alives/s (0: none).
    pub(crate) rate: f64,
}

impl LeaseSpec {
    /// Refuses settings under which leases would expire for the client's own slowness.
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.leases > 0, "--leases must be at least 1");
        ensure!(self.ttl > 0, "--lease-ttl must be at least 1");
        ensure!(self.streams > 0, "--streams must be at least 1");
        if self.rate > 0.0 {
            let cycle = self.leases as f64 / self.rate;
            ensure!(
                cycle <= self.ttl as f64 / 2.0,
                "--rate {} renews each of {} leases every {cycle:.1} s: more than half of \
                 --lease-ttl {}, so leases would expire for the client's pace",
                self.rate,
                self.leases,
                self.ttl
            );
        }
        Ok(())
    }
}

/// Lease indices `s`, `s + n`, `s + 2n`, ... of `ids`: the share of stream `s` of `n`.
pub(crate) fn share(ids: &[i64], s: usize, n: usize) -> Vec<i64> {
    ids.iter().skip(s).step_by(n).copied().collect()
}

/// Runs `f(i)` for `i` in `0..n` on [`SETUP_CONCURRENCY`] workers spread over the channels.
async fn for_each<T, F, Fut>(channels: &[Channel], n: u64, f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(LeaseClient<Channel>, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..SETUP_CONCURRENCY {
        let client = LeaseClient::new(channels[w % channels.len()].clone());
        let (next, f) = (Arc::clone(&next), f.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                out.push((i, f(client.clone(), i).await?));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a lease task panicked")??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// What the keep-alive streams of one phase share.
struct Phase {
    pacer: Pacer,
    deadline: Option<Instant>,
    limit: u64,
    sent: AtomicU64,
    done: Arc<AtomicU64>,
    latencies: SharedHistogram,
}

/// One stream: cycle through `leases` with up to `window` keep-alives in flight until the
/// phase ends, then wait for the answers still due. Returns the leases answered with TTL 0.
async fn keep_alive_stream(
    channel: Channel,
    leases: Vec<i64>,
    window: usize,
    phase: Arc<Phase>,
) -> anyhow::Result<(Vec<i64>, ErrorCounts)> {
    let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(window + 1);
    let window = window.min(leases.len()).max(1);
    let mut pending: HashMap<i64, Instant> = HashMap::with_capacity(window);
    let mut rec = phase.latencies.recorder();
    let mut lost = Vec::new();
    let mut errors = ErrorCounts::default();
    let mut cursor = 0usize;
    let mut stopping = false;

    // Sends keep-alives until `window` are in flight; false once the phase is over.
    let fill = |pending: &mut HashMap<i64, Instant>, cursor: &mut usize| {
        let mut batch = Vec::new();
        while pending.len() + batch.len() < window {
            if phase.deadline.is_some_and(|d| Instant::now() >= d)
                || phase.sent.fetch_add(1, Ordering::Relaxed) >= phase.limit
            {
                return (batch, false);
            }
            // The next lease of the cycle not already in flight (window ≤ share, so one is).
            let id = loop {
                let id = leases[*cursor % leases.len()];
                *cursor += 1;
                if !pending.contains_key(&id) && !batch.contains(&id) {
                    break id;
                }
            };
            batch.push(id);
        }
        (batch, true)
    };

    let (first, more) = fill(&mut pending, &mut cursor);
    stopping |= !more;
    for id in first {
        phase.pacer.wait().await;
        pending.insert(id, Instant::now());
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .context("queueing a keep-alive")?;
    }
    let mut stream = LeaseClient::new(channel)
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .context("opening a keep-alive stream")?
        .into_inner();
    let mut drain_deadline = None;
    while !pending.is_empty() {
        let next = match drain_deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                Ok(r) => r,
                Err(_) => {
                    for _ in 0..pending.len() {
                        errors.add(&tonic::Status::deadline_exceeded(
                            "no keep-alive response before the drain deadline",
                        ));
                    }
                    break;
                }
            },
            None => stream.message().await,
        };
        let resp = match next {
            Ok(Some(resp)) => resp,
            Ok(None) => bail!("a keep-alive stream ended with {} due", pending.len()),
            Err(status) => {
                errors.add(&status);
                break;
            }
        };
        let Some(sent) = pending.remove(&resp.id) else {
            continue;
        };
        rec.record(sent.elapsed());
        phase.done.fetch_add(1, Ordering::Relaxed);
        if resp.ttl <= 0 {
            lost.push(resp.id);
        }
        if !stopping {
            let (batch, more) = fill(&mut pending, &mut cursor);
            stopping |= !more;
            for id in batch {
                phase.pacer.wait().await;
                pending.insert(id, Instant::now());
                tx.send(LeaseKeepAliveRequest { id })
                    .await
                    .context("queueing a keep-alive")?;
            }
        }
        if stopping && drain_deadline.is_none() {
            drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
        }
    }
    Ok((lost, errors))
}

/// Keeps every lease alive over the streams until `stop`.
async fn keep_alive_phase(
    channels: &[Channel],
    ids: &[i64],
    spec: &LeaseSpec,
    stop: Stop,
    title: &str,
) -> anyhow::Result<(SharedHistogram, HashSet<i64>, ErrorCounts, Duration)> {
    let start = Instant::now();
    let (deadline, limit) = stop.bounds(start);
    let done = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(Phase {
        pacer: Pacer::new(spec.rate),
        deadline,
        limit,
        sent: AtomicU64::new(0),
        done: Arc::clone(&done),
        latencies: SharedHistogram::new(),
    });
    let _bar = Progress::start(title, stop, done);
    let streams = spec.streams.min(ids.len());
    let window = spec.in_flight.div_ceil(streams).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..streams {
        let channel = channels[s % channels.len()].clone();
        tasks.spawn(keep_alive_stream(
            channel,
            share(ids, s, streams),
            window,
            Arc::clone(&phase),
        ));
    }
    let (mut lost, mut errors) = (HashSet::new(), ErrorCounts::default());
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.context("a keep-alive stream panicked")??;
        lost.extend(l);
        errors.merge(e);
    }
    let elapsed = start.elapsed();
    Ok((phase.latencies.clone(), lost, errors, elapsed))
}

/// Runs the workload: grant, keep alive (warm-up, measured), check, revoke.
pub(crate) async fn run(channels: &[Channel], spec: &LeaseSpec) -> anyhow::Result<Outcome> {
    spec.validate()?;
    super::progress(format_args!(
        "granting {} leases of {} s",
        spec.leases, spec.ttl
    ));
    let ttl = spec.ttl;
    let ids: Vec<i64> = for_each(channels, spec.leases, move |mut c, _| async move {
        let r = c
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .context("granting a lease")?
            .into_inner();
        ensure!(r.error.is_empty(), "granting a lease: {}", r.error);
        Ok(r.id)
    })
    .await?;

    if let Some(warmup) = spec.warmup {
        keep_alive_phase(channels, &ids, spec, Stop::After(warmup), "warm-up").await?;
    }
    let (latencies, mut lost, errors, elapsed) =
        keep_alive_phase(channels, &ids, spec, spec.stop, "lease-keepalive").await?;

    super::progress(format_args!("checking {} leases", ids.len()));
    let check = ids.clone();
    let ttls: Vec<i64> = for_each(channels, ids.len() as u64, move |mut c, i| {
        let id = check[usize::try_from(i).unwrap_or(usize::MAX)];
        async move {
            let r = c
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
                .await
                .context("asking a lease's TTL")?
                .into_inner();
            Ok(r.ttl)
        }
    })
    .await?;
    let mut min_ttl = i64::MAX;
    for (&id, &t) in ids.iter().zip(&ttls) {
        min_ttl = min_ttl.min(t);
        if t <= 0 {
            lost.insert(id);
        }
    }

    super::progress(format_args!("revoking {} leases", ids.len()));
    let revoke = ids.clone();
    // A lost lease cannot be revoked: "not found" is expected there, so errors are ignored.
    let _revoked: Vec<bool> = for_each(channels, ids.len() as u64, move |mut c, i| {
        let id = revoke[usize::try_from(i).unwrap_or(usize::MAX)];
        async move { Ok(c.lease_revoke(LeaseRevokeRequest { id }).await.is_ok()) }
    })
    .await?;

    let mut extra = serde_json::Map::new();
    extra.insert("leases".into(), json!(spec.leases));
    extra.insert("lease_ttl_s".into(), json!(spec.ttl));
    extra.insert("streams".into(), json!(spec.streams.min(ids.len())));
    extra.insert("leases_lost".into(), json!(lost.len()));
    extra.insert("min_ttl_left_s".into(), json!(min_ttl));
    let mut all = new_histogram();
    all.add(latencies.snapshot())
        .context("merging histograms")?;
    Ok(Outcome {
        elapsed,
        all,
        parts: Vec::new(),
        errors,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_lease_once() {
        let ids: Vec<i64> = (100..110).collect();
        let mut all: Vec<i64> = (0..3).flat_map(|s| share(&ids, s, 3)).collect();
        assert_eq!(share(&ids, 0, 3), vec![100, 103, 106, 109]);
        all.sort_unstable();
        assert_eq!(all, ids);
    }

    #[test]
    fn a_rate_too_low_to_renew_every_lease_in_time_is_refused() {
        let spec = LeaseSpec {
            leases: 10_000,
            ttl: 10,
            streams: 4,
            in_flight: 4,
            warmup: None,
            stop: Stop::Total(1),
            rate: 1_000.0,
        };
        assert!(spec.validate().is_err(), "10 s per cycle with a 10 s TTL");
        let fast = LeaseSpec {
            rate: 5_000.0,
            ..spec.clone()
        };
        fast.validate().unwrap();
        let unlimited = LeaseSpec { rate: 0.0, ..spec };
        unlimited.validate().unwrap();
    }
}
