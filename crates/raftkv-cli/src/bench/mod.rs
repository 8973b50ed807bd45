//! `raftkv bench`: a load generator for any etcd v3 endpoint (raftkv or etcd itself), modeled
//! on etcd's `tools/benchmark`, so the two servers can be measured by the same client.
//!
//! `--conns` gRPC connections (tonic `Channel`s) are opened round-robin over `--endpoints`;
//! `--clients` concurrent tasks share them (client `i` uses connection `i % conns`) and each
//! sends one request at a time until `--total` requests have been sent or `--duration` has
//! passed, `--rate` capping the requests/s of all of them. Reads go to keys written beforehand
//! (the populate phase is not measured). The report (stdout) gives requests/s and latency
//! statistics like etcd's, max included; `--json` prints one JSON object instead, for
//! `scripts/bench-vs-etcd.sh`. While a phase runs, a progress bar is drawn on stderr when it
//! is a terminal.
//!
//! - [`workload`]: workload kinds, keys, values and the request each operation becomes.
//! - [`watch`]: the `watch` workload (watchers on one prefix, event latency).
//! - [`lease`]: the `lease-keepalive` workload (many leases kept alive, leases lost).
//! - [`pace`]: the `--rate` cap and the progress bar.
//! - [`report`]: latency histograms, error counts and the text and JSON reports.
//!
//! Failed requests are counted by gRPC message and reported; the run fails only when no
//! request succeeded.

pub(crate) mod lease;
pub(crate) mod pace;
pub(crate) mod report;
pub(crate) mod watch;
pub(crate) mod workload;

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::StatusRequest;
use tonic::transport::{Channel, Endpoint};

use pace::{Pacer, Progress};
use report::{ErrorCounts, Report, RunInfo, SharedHistogram};
use workload::{KeyGen, Op, OpKind, OpSpec, Rng, Workload};

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one request (etcd's clients default to a few seconds as well).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests sent with no `--total` and no `--duration` (etcd's benchmark default).
const DEFAULT_TOTAL: u64 = 10_000;
/// Concurrent puts of the populate phase, at least.
const POPULATE_CONCURRENCY: usize = 64;

/// Flags of `raftkv bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Client URLs to connect to, comma-separated (a URL without a scheme gets `http://`).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub(crate) endpoints: Vec<String>,

    /// gRPC connections, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    pub(crate) conns: usize,

    /// Concurrent clients (each sends one request at a time), sharing the connections.
    #[arg(long, default_value_t = 1)]
    pub(crate) clients: usize,

    /// Requests to send [default: 10000 unless --duration is given].
    #[arg(long, conflicts_with = "duration")]
    pub(crate) total: Option<u64>,

    /// Send requests for this many seconds instead of a fixed total.
    #[arg(long, value_name = "SECS")]
    pub(crate) duration: Option<f64>,

    /// Send requests for this many seconds before measuring (not reported).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub(crate) warmup: f64,

    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub(crate) key_size: usize,

    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub(crate) val_size: usize,

    /// Number of distinct keys; reading workloads write all of them first.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) key_space: u64,

    /// Use keys in sequence (request n uses key n modulo the key space) instead of at random.
    #[arg(long)]
    pub(crate) seq_keys: bool,

    /// Send everything to the leader: ask each endpoint's Maintenance.Status which member
    /// leads, and keep only that endpoint (etcd's `--target-leader`).
    #[arg(long)]
    pub(crate) target_leader: bool,

    /// Puts per Txn (`txn-put`).
    #[arg(long, default_value_t = 1)]
    pub(crate) txn_ops: usize,

    /// Reads per write (`mixed`).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rw_ratio: f64,

    /// Cap on requests per second, all clients together (0: no cap). `watch`: puts/s;
    /// `lease-keepalive`: keep-alives/s.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,

    /// Flags of the `watch` and `lease-keepalive` workloads (boxed: keeps the `Bench` variant of
    /// the CLI's command enum small).
    #[command(flatten)]
    pub(crate) streaming: Box<StreamingArgs>,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub(crate) json: bool,

    /// Free text copied into the JSON report's `label` field (e.g. the system under test).
    #[arg(long)]
    pub(crate) label: Option<String>,

    /// What to send: put, range (linearizable), range-serializable, txn-put, mixed, watch or
    /// lease-keepalive.
    #[arg(value_enum)]
    pub(crate) workload: Workload,
}

/// Flags of the streaming workloads, `watch` and `lease-keepalive`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Watch and lease-keepalive")]
pub(crate) struct StreamingArgs {
    /// Watches on the prefix (`watch`).
    #[arg(long, default_value_t = 1000)]
    pub(crate) watchers: usize,

    /// The watched prefix; the keys written are this plus the usual key (`watch`).
    #[arg(long, default_value = "w/")]
    pub(crate) watch_prefix: String,

    /// Watch streams (`watch`) or keep-alive streams (`lease-keepalive`), spread round-robin
    /// over the connections [default: --conns].
    #[arg(long)]
    pub(crate) streams: Option<usize>,

    /// Leases granted and kept alive (`lease-keepalive`).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) leases: u64,

    /// TTL of those leases, in seconds (`lease-keepalive`).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) lease_ttl: i64,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.endpoints.is_empty(), "--endpoints is empty");
        ensure!(self.conns > 0, "--conns must be at least 1");
        ensure!(self.clients > 0, "--clients must be at least 1");
        ensure!(self.key_size > 0, "--key-size must be at least 1");
        ensure!(self.key_space > 0, "--key-space must be at least 1");
        ensure!(
            self.key_space <= KeyGen::max_key_space(self.key_size),
            "--key-space {} needs more than --key-size {} decimal digits",
            self.key_space,
            self.key_size
        );
        if let Some(total) = self.total {
            ensure!(total > 0, "--total must be at least 1");
        }
        if let Some(d) = self.duration {
            ensure!(d.is_finite() && d > 0.0, "--duration must be positive");
        }
        ensure!(
            self.warmup.is_finite() && self.warmup >= 0.0,
            "--warmup must be zero or positive"
        );
        if self.workload == Workload::TxnPut {
            ensure!(self.txn_ops > 0, "--txn-ops must be at least 1");
            ensure!(
                self.key_space >= self.txn_ops as u64,
                "--key-space must be at least --txn-ops (a Txn cannot put a key twice)"
            );
        }
        ensure!(
            self.rw_ratio.is_finite() && self.rw_ratio >= 0.0,
            "--rw-ratio must be zero or positive"
        );
        ensure!(
            self.rate.is_finite() && self.rate >= 0.0,
            "--rate must be zero (no cap) or positive"
        );
        if self.workload == Workload::Watch {
            ensure!(self.streaming.watchers > 0, "--watchers must be at least 1");
            ensure!(
                self.val_size >= watch::STAMP_LEN,
                "--val-size must be at least {} for watch (the value carries the send time)",
                watch::STAMP_LEN
            );
        }
        if self.streaming.streams == Some(0) {
            bail!("--streams must be at least 1");
        }
        Ok(())
    }
}

/// Runs `raftkv bench` on a runtime of its own: for a synchronous `main`.
pub(crate) fn run_blocking(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

/// Runs `raftkv bench`: connect, populate if the workload reads, measure, print the report to
/// stdout. Fails on bad flags, on a connection that cannot be made, or when every measured
/// request failed (the report is printed first).
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let mut endpoints: Vec<String> = args.endpoints.iter().map(|e| normalize_url(e)).collect();
    if args.target_leader {
        endpoints = vec![find_leader(&endpoints).await?];
    }
    let channels = connect_all(&endpoints, args.conns).await?;
    let keys = KeyGen::new(args.key_size, args.key_space, args.seq_keys, args.val_size);

    if args.workload.needs_populated_keys() {
        populate(&channels, &keys, args.clients).await?;
    }

    let spec = OpSpec {
        workload: args.workload,
        txn_ops: args.txn_ops,
        rw_ratio: args.rw_ratio,
    };
    let stop = match (args.total, args.duration) {
        (_, Some(secs)) => Stop::After(Duration::from_secs_f64(secs)),
        (Some(n), None) => Stop::Total(n),
        (None, None) => Stop::Total(DEFAULT_TOTAL),
    };
    let warmup = (args.warmup > 0.0).then(|| Duration::from_secs_f64(args.warmup));
    let streams = args.streaming.streams.unwrap_or(args.conns);
    let outcome = match args.workload {
        Workload::Watch => {
            let spec = watch::WatchSpec {
                watchers: args.streaming.watchers,
                streams,
                prefix: args.streaming.watch_prefix.clone().into_bytes(),
                writers: args.clients,
                warmup,
                stop,
                rate: args.rate,
            };
            watch::run(&channels, &keys, &spec).await?
        }
        Workload::LeaseKeepalive => {
            let spec = lease::LeaseSpec {
                leases: args.streaming.leases,
                ttl: args.streaming.lease_ttl,
                streams,
                in_flight: args.clients,
                warmup,
                stop,
                rate: args.rate,
            };
            lease::run(&channels, &spec).await?
        }
        _ => {
            if let Some(w) = warmup {
                let _discarded = measure(
                    &channels,
                    &keys,
                    spec,
                    args.clients,
                    Stop::After(w),
                    args.rate,
                    "warm-up",
                )
                .await?;
            }
            let title = args.workload.name();
            measure(&channels, &keys, spec, args.clients, stop, args.rate, title).await?
        }
    };

    let report = Report {
        info: RunInfo {
            workload: args.workload.name(),
            endpoints,
            conns: args.conns,
            clients: args.clients,
            key_size: args.key_size,
            val_size: args.val_size,
            key_space: args.key_space,
            seq_keys: args.seq_keys,
            label: args.label.clone(),
        },
        elapsed: outcome.elapsed,
        all: outcome.all,
        parts: outcome.parts,
        errors: outcome.errors,
        extra: outcome.extra,
    };
    let text = if args.json {
        format!("{}\n", report.to_json())
    } else {
        report.to_text()
    };
    // The report is the command's product, so it goes to stdout (not through `tracing`).
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the report")?;

    if report.all.is_empty() && report.errors.total() > 0 {
        bail!(
            "all {} requests failed (see the error distribution above)",
            report.errors.total()
        );
    }
    Ok(())
}

/// Adds `http://` to a bare `host:port`.
fn normalize_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// A note on stderr while the run is set up (stdout carries only the report).
pub(crate) fn progress(message: std::fmt::Arguments<'_>) {
    if std::io::stderr().is_terminal() {
        let _ = writeln!(std::io::stderr(), "bench: {message}");
    }
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad endpoint URL {url:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Opens `conns` connections, round-robin over the endpoints, all at once.
async fn connect_all(endpoints: &[String], conns: usize) -> anyhow::Result<Vec<Channel>> {
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..conns {
        let url = endpoints[i % endpoints.len()].clone();
        pending.spawn(async move { (i, connect(&url).await) });
    }
    let mut channels: Vec<Option<Channel>> = vec![None; conns];
    while let Some(joined) = pending.join_next().await {
        let (i, channel) = joined.context("a connecting task panicked")?;
        channels[i] = Some(channel?);
    }
    Ok(channels.into_iter().flatten().collect())
}

/// The endpoint whose member is the leader, by each endpoint's Maintenance.Status.
async fn find_leader(endpoints: &[String]) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    for url in endpoints {
        let status = async {
            let mut client = MaintenanceClient::new(connect(url).await?);
            let status = client.status(StatusRequest {}).await?.into_inner();
            anyhow::Ok(status)
        }
        .await;
        match status {
            Ok(s) => {
                let member = s.header.map(|h| h.member_id).unwrap_or_default();
                if s.leader != 0 && s.leader == member {
                    return Ok(url.clone());
                }
                seen.push(format!("{url}: member {member:x}, leader {:x}", s.leader));
            }
            Err(e) => seen.push(format!("{url}: {e:#}")),
        }
    }
    bail!(
        "--target-leader: no endpoint is the leader ({})",
        seen.join("; ")
    )
}

/// Writes every key of the key space once, so reads find them. Not measured; any failure is
/// fatal (the measured run would be meaningless).
async fn populate(channels: &[Channel], keys: &KeyGen, clients: usize) -> anyhow::Result<()> {
    progress(format_args!("writing {} keys", keys.key_space()));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let workers = clients.max(POPULATE_CONCURRENCY);
    for w in 0..workers {
        let mut kv = KvClient::new(channels[w % channels.len()].clone());
        let (next, keys) = (Arc::clone(&next), keys.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys.key_space() {
                    return anyhow::Ok(());
                }
                kv.put(keys.put(n))
                    .await
                    .with_context(|| format!("populating key {n}"))?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a populating task panicked")??;
    }
    Ok(())
}

/// When the clients stop.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    /// After this many requests in all.
    Total(u64),
    /// After this much time.
    After(Duration),
}

impl Stop {
    /// For a phase starting at `start`: its deadline, if any, and the requests it may send.
    pub(crate) fn bounds(self, start: Instant) -> (Option<Instant>, u64) {
        match self {
            Stop::After(d) => (Some(start + d), u64::MAX),
            Stop::Total(n) => (None, n),
        }
    }
}

/// What one measured phase produced.
pub(crate) struct Outcome {
    /// Wall time of the measured phase.
    pub(crate) elapsed: Duration,
    /// The latencies the report is about.
    pub(crate) all: hdrhistogram::Histogram<u64>,
    /// Other latencies, reported apart.
    pub(crate) parts: Vec<(&'static str, hdrhistogram::Histogram<u64>)>,
    /// Failed requests.
    pub(crate) errors: ErrorCounts,
    /// Workload-specific figures for the report.
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

/// Runs `clients` concurrent clients until `stop`, at most `rate` requests/s in all (0: no
/// cap), recording every request's latency; a progress bar titled `title` shows on a terminal.
async fn measure(
    channels: &[Channel],
    keys: &KeyGen,
    spec: OpSpec,
    clients: usize,
    stop: Stop,
    rate: f64,
    title: &str,
) -> anyhow::Result<Outcome> {
    let reads = SharedHistogram::new();
    let writes = SharedHistogram::new();
    let next = Arc::new(AtomicU64::new(0));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pacer = Pacer::new(rate);
    let done = Arc::new(AtomicU64::new(0));
    let _bar = Progress::start(title, stop, Arc::clone(&done));
    let start = Instant::now();
    let (deadline, limit) = stop.bounds(start);

    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let (next, keys, pacer, done) = (
            Arc::clone(&next),
            keys.clone(),
            pacer.clone(),
            Arc::clone(&done),
        );
        let (mut read_rec, mut write_rec) = (reads.recorder(), writes.recorder());
        let mut rng = Rng::new(seed ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        tasks.spawn(async move {
            let mut errors = ErrorCounts::default();
            loop {
                pacer.wait().await;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= limit {
                    break;
                }
                let op = keys.op(&spec, seq, &mut rng);
                let kind = op.kind();
                let sent = Instant::now();
                let result = match op {
                    Op::Put(r) => kv.put(r).await.map(drop),
                    Op::Range(r) => kv.range(r).await.map(drop),
                    Op::Txn(r) => kv.txn(r).await.map(drop),
                };
                let latency = sent.elapsed();
                match (result, kind) {
                    (Ok(()), OpKind::Read) => read_rec.record(latency),
                    (Ok(()), OpKind::Write) => write_rec.record(latency),
                    (Err(status), _) => errors.add(&status),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            errors
        });
    }
    let mut errors = ErrorCounts::default();
    while let Some(joined) = tasks.join_next().await {
        errors.merge(joined.context("a client task panicked")?);
    }
    let elapsed = start.elapsed();

    let (reads, writes) = (reads.snapshot(), writes.snapshot());
    let mut all = report::new_histogram();
    all.add(&reads).context("merging histograms")?;
    all.add(&writes).context("merging histograms")?;
    let parts = if spec.workload == Workload::Mixed {
        vec![("read", reads), ("write", writes)]
    } else {
        Vec::new()
    };
    Ok(Outcome {
        elapsed,
        all,
        parts,
        errors,
        extra: serde_json::Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn flags_parse_like_etcds_benchmark() {
        let cli = Cli::try_parse_from([
            "bench",
            "--endpoints",
            "127.0.0.1:2379,http://127.0.0.1:22379",
            "--conns",
            "10",
            "--clients",
            "100",
            "--duration",
            "5",
            "--seq-keys",
            "range-serializable",
        ])
        .unwrap();
        let a = cli.bench;
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(normalize_url(&a.endpoints[0]), "http://127.0.0.1:2379");
        assert_eq!((a.conns, a.clients), (10, 100));
        assert_eq!(a.duration, Some(5.0));
        assert_eq!(a.workload, Workload::RangeSerializable);
        a.validate().unwrap();
    }

    #[test]
    fn watch_and_lease_flags_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "--conns",
            "10",
            "--watchers",
            "1000",
            "--streams",
            "100",
            "--rate",
            "50",
            "watch",
        ])
        .unwrap();
        let a = cli.bench;
        assert_eq!(a.workload, Workload::Watch);
        let w = &a.streaming;
        assert_eq!((w.watchers, w.streams, a.rate), (1000, Some(100), 50.0));
        assert_eq!(w.watch_prefix, "w/");
        a.validate().unwrap();

        let cli = Cli::try_parse_from(["bench", "--leases", "500", "lease-keepalive"]).unwrap();
        let a = cli.bench;
        assert_eq!(a.workload, Workload::LeaseKeepalive);
        let l = &a.streaming;
        assert_eq!((l.leases, l.lease_ttl, l.streams), (500, 10, None));
        a.validate().unwrap();
    }

    #[test]
    fn validation_refuses_bad_rates_and_stampless_watch_values() {
        let cli = Cli::try_parse_from(["bench", "--rate=-1", "put"]).unwrap();
        assert!(cli.bench.validate().is_err());
        let cli = Cli::try_parse_from(["bench", "--val-size", "8", "watch"]).unwrap();
        assert!(cli.bench.validate().is_err());
        let cli = Cli::try_parse_from(["bench", "--streams", "0", "watch"]).unwrap();
        assert!(cli.bench.validate().is_err());
    }

    #[test]
    fn total_and_duration_exclude_each_other() {
        assert!(Cli::try_parse_from(["bench", "--total", "5", "--duration", "1", "put"]).is_err());
    }

    #[test]
    fn validation_refuses_a_key_space_the_key_size_cannot_name() {
        let cli =
            Cli::try_parse_from(["bench", "--key-size", "2", "--key-space", "101", "put"]).unwrap();
        assert!(cli.bench.validate().is_err());
    }
}
