//! Collecting latencies and errors while clients run, and printing the result: a text report
//! shaped like etcd's `tools/benchmark` (`pkg/report`), or one JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Lowest latency told apart, in nanoseconds (values below land in the first bucket).
const LOWEST_NS: u64 = 100;
/// Highest latency recorded, in nanoseconds; longer ones saturate there.
const HIGHEST_NS: u64 = 120_000_000_000;
/// Samples a client buffers before taking the shared histogram's lock.
const FLUSH_EVERY: usize = 256;

/// A fresh latency histogram (nanoseconds, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: creation cannot fail.
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3).expect("valid histogram bounds")
}

/// One histogram shared by every client of a run (or of one op kind).
///
/// Clients do not each own a histogram (about 160 KiB apiece at these bounds, too much for a
/// thousand clients): they buffer samples in a [`Recorder`] and merge them in batches. The std
/// `Mutex` is held only to record a batch, never across an `.await`.
#[derive(Clone, Debug)]
pub(crate) struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

impl SharedHistogram {
    /// An empty histogram.
    pub(crate) fn new() -> Self {
        SharedHistogram(Arc::new(Mutex::new(new_histogram())))
    }

    /// A client's buffered handle.
    pub(crate) fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            buf: Vec::with_capacity(FLUSH_EVERY),
        }
    }

    /// A copy of what has been recorded so far.
    pub(crate) fn snapshot(&self) -> Histogram<u64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // A panicking client cannot leave the histogram half-updated in a way that matters.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A client's buffer in front of a [`SharedHistogram`]; flushes when full and when dropped.
#[derive(Debug)]
pub(crate) struct Recorder {
    shared: SharedHistogram,
    buf: Vec<u64>,
}

impl Recorder {
    /// Records one request's latency.
    pub(crate) fn record(&mut self, latency: Duration) {
        self.buf
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        if self.buf.len() >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Merges the buffered samples into the shared histogram.
    pub(crate) fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = self.shared.lock();
        for &v in &self.buf {
            h.saturating_record(v);
        }
        self.buf.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Failed requests, counted by gRPC status message.
#[derive(Clone, Debug, Default)]
pub(crate) struct ErrorCounts(BTreeMap<String, u64>);

impl ErrorCounts {
    /// Counts one failure.
    pub(crate) fn add(&mut self, status: &tonic::Status) {
        let message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_owned()
        };
        *self.0.entry(message).or_insert(0) += 1;
    }

    /// Adds another client's counts.
    pub(crate) fn merge(&mut self, other: ErrorCounts) {
        for (message, n) in other.0 {
            *self.0.entry(message).or_insert(0) += n;
        }
    }

    /// All failures.
    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Messages, most frequent first.
    fn by_count(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<_> = self.0.iter().map(|(m, &n)| (m.as_str(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

/// The settings a report repeats, so a JSON line stands on its own.
#[derive(Clone, Debug)]
pub(crate) struct RunInfo {
    /// Workload name.
    pub(crate) workload: &'static str,
    /// Endpoints the connections went to.
    pub(crate) endpoints: Vec<String>,
    /// gRPC connections.
    pub(crate) conns: usize,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Key size in bytes.
    pub(crate) key_size: usize,
    /// Value size in bytes.
    pub(crate) val_size: usize,
    /// Distinct keys.
    pub(crate) key_space: u64,
    /// Keys by request number rather than at random.
    pub(crate) seq_keys: bool,
    /// `--label`, copied through.
    pub(crate) label: Option<String>,
}

/// The outcome of one measured run.
#[derive(Debug)]
pub(crate) struct Report {
    /// What was run.
    pub(crate) info: RunInfo,
    /// Wall time of the measured phase.
    pub(crate) elapsed: Duration,
    /// Latencies of the successful requests.
    pub(crate) all: Histogram<u64>,
    /// Per op kind (`mixed` only): name and latencies.
    pub(crate) parts: Vec<(&'static str, Histogram<u64>)>,
    /// Failed requests.
    pub(crate) errors: ErrorCounts,
    /// Workload-specific figures (`watch`: events missing; `lease-keepalive`: leases lost),
    /// top-level fields of the JSON and a "Details" section of the text.
    pub(crate) extra: serde_json::Map<String, Value>,
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

/// The percentiles reported, as (label, JSON key, quantile).
const PERCENTILES: [(&str, &str, f64); 5] = [
    ("10%", "p10_ms", 0.10),
    ("50%", "p50_ms", 0.50),
    ("90%", "p90_ms", 0.90),
    ("99%", "p99_ms", 0.99),
    ("99.9%", "p999_ms", 0.999),
];

fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Latency statistics of one histogram, in milliseconds, as JSON fields.
fn stats_json(h: &Histogram<u64>, elapsed: Duration) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("requests".into(), json!(h.len()));
    m.insert("rps".into(), json!(rate(h.len(), elapsed)));
    if h.is_empty() {
        return m;
    }
    m.insert("avg_ms".into(), json!(ms(h.mean())));
    m.insert("stddev_ms".into(), json!(ms(h.stdev())));
    m.insert("min_ms".into(), json!(ms(h.min() as f64)));
    m.insert("max_ms".into(), json!(ms(h.max() as f64)));
    for (_, key, q) in PERCENTILES {
        m.insert(key.into(), json!(ms(h.value_at_quantile(q) as f64)));
    }
    m
}

impl Report {
    /// One JSON object: settings, totals, latency statistics in milliseconds, errors by message.
    pub(crate) fn to_json(&self) -> Value {
        let i = &self.info;
        let mut m = serde_json::Map::new();
        if let Some(label) = &i.label {
            m.insert("label".into(), json!(label));
        }
        m.insert("workload".into(), json!(i.workload));
        m.insert("endpoints".into(), json!(i.endpoints));
        m.insert("conns".into(), json!(i.conns));
        m.insert("clients".into(), json!(i.clients));
        m.insert("key_size".into(), json!(i.key_size));
        m.insert("val_size".into(), json!(i.val_size));
        m.insert("key_space".into(), json!(i.key_space));
        m.insert("seq_keys".into(), json!(i.seq_keys));
        m.insert("duration_s".into(), json!(self.elapsed.as_secs_f64()));
        m.insert("errors".into(), json!(self.errors.total()));
        m.extend(stats_json(&self.all, self.elapsed));
        m.extend(self.extra.clone());
        let errors: serde_json::Map<String, Value> = self
            .errors
            .by_count()
            .into_iter()
            .map(|(msg, n)| (msg.to_owned(), json!(n)))
            .collect();
        m.insert("error_messages".into(), Value::Object(errors));
        if !self.parts.is_empty() {
            let parts: serde_json::Map<String, Value> = self
                .parts
                .iter()
                .map(|(name, h)| {
                    (
                        (*name).to_owned(),
                        Value::Object(stats_json(h, self.elapsed)),
                    )
                })
                .collect();
            m.insert("ops".into(), Value::Object(parts));
        }
        Value::Object(m)
    }

    /// The human-readable report, in etcd's layout (times in milliseconds rather than seconds).
    pub(crate) fn to_text(&self) -> String {
        let i = &self.info;
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "Workload: {} ({} conns, {} clients, {} endpoint{}; key {} B, value {} B, {} {} keys)",
            i.workload,
            i.conns,
            i.clients,
            i.endpoints.len(),
            if i.endpoints.len() == 1 { "" } else { "s" },
            i.key_size,
            i.val_size,
            i.key_space,
            if i.seq_keys { "sequential" } else { "random" },
        );
        summary(&mut s, "Summary", &self.all, self.elapsed, &self.errors);
        for (name, h) in &self.parts {
            summary(
                &mut s,
                &format!("Summary ({name})"),
                h,
                self.elapsed,
                &ErrorCounts::default(),
            );
        }
        if !self.extra.is_empty() {
            let _ = writeln!(s, "\nDetails:");
            for (k, v) in &self.extra {
                let _ = writeln!(s, "  {k}:\t{v}");
            }
        }
        let errors = self.errors.by_count();
        if !errors.is_empty() {
            let _ = writeln!(s, "\nError distribution:");
            for (msg, n) in errors {
                let _ = writeln!(s, "  [{n}]\t{msg}");
            }
        }
        s
    }
}

/// Summary, histogram and latency distribution of one histogram.
fn summary(s: &mut String, title: &str, h: &Histogram<u64>, elapsed: Duration, e: &ErrorCounts) {
    let _ = writeln!(s, "\n{title}:");
    let _ = writeln!(s, "  Total:\t{:.4} secs.", elapsed.as_secs_f64());
    let _ = writeln!(s, "  Requests:\t{}", h.len());
    if e.total() > 0 {
        let _ = writeln!(s, "  Errors:\t{}", e.total());
    }
    if h.is_empty() {
        let _ = writeln!(s, "  (no successful request)");
        return;
    }
    let _ = writeln!(s, "  Slowest:\t{:.4} ms.", ms(h.max() as f64));
    let _ = writeln!(s, "  Fastest:\t{:.4} ms.", ms(h.min() as f64));
    let _ = writeln!(s, "  Average:\t{:.4} ms.", ms(h.mean()));
    let _ = writeln!(s, "  Stddev:\t{:.4} ms.", ms(h.stdev()));
    let _ = writeln!(s, "  Requests/sec:\t{:.4}", rate(h.len(), elapsed));

    let _ = writeln!(s, "\nResponse time histogram (ms):");
    for (upper, count, bar) in buckets(h, 10, 40) {
        let _ = writeln!(s, "  {:.3} [{count}]\t|{bar}", ms(upper as f64));
    }

    let _ = writeln!(s, "\nLatency distribution:");
    for (label, _, q) in PERCENTILES {
        let _ = writeln!(
            s,
            "  {label} in {:.4} ms.",
            ms(h.value_at_quantile(q) as f64)
        );
    }
    let _ = writeln!(s, "  max in {:.4} ms.", ms(h.max() as f64));
}

/// etcd's histogram: `n` equal-width buckets from the fastest to the slowest request, as
/// (upper bound in ns, count, bar of up to `width` characters). The first line is the fastest
/// value alone, as etcd prints it.
fn buckets(h: &Histogram<u64>, n: usize, width: usize) -> Vec<(u64, u64, String)> {
    let (lo, hi) = (h.min(), h.max());
    let step = ((hi - lo) as f64 / n as f64).max(1.0);
    let mut bounds: Vec<u64> = vec![lo];
    bounds.extend((1..=n).map(|k| lo + (step * k as f64) as u64));
    if let Some(last) = bounds.last_mut() {
        *last = (*last).max(hi);
    }
    let mut counts = vec![0u64; bounds.len()];
    for v in h.iter_recorded() {
        // The low end of the value's HDR bucket, so the fastest request counts in the first
        // line (etcd's first line is the fastest value alone).
        let value = h.lowest_equivalent(v.value_iterated_to()).clamp(lo, hi);
        let idx = bounds.partition_point(|&b| b < value).min(bounds.len() - 1);
        counts[idx] += v.count_at_value();
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    bounds
        .into_iter()
        .zip(counts)
        .map(|(b, c)| {
            let len = (c as f64 / max as f64 * width as f64).round() as usize;
            (b, c, "∎".repeat(len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(latencies_us: &[u64]) -> Report {
        let shared = SharedHistogram::new();
        {
            let mut r = shared.recorder();
            for &us in latencies_us {
                r.record(Duration::from_micros(us));
            }
        }
        let mut errors = ErrorCounts::default();
        errors.add(&tonic::Status::unavailable("etcdserver: no leader"));
        errors.add(&tonic::Status::unavailable("etcdserver: no leader"));
        errors.add(&tonic::Status::deadline_exceeded(""));
        Report {
            info: RunInfo {
                workload: "put",
                endpoints: vec!["http://127.0.0.1:2379".into()],
                conns: 1,
                clients: 1,
                key_size: 8,
                val_size: 256,
                key_space: 10,
                seq_keys: false,
                label: Some("etcd".into()),
            },
            elapsed: Duration::from_secs(2),
            all: shared.snapshot(),
            parts: Vec::new(),
            errors,
            extra: serde_json::Map::from_iter([("leases_lost".to_owned(), json!(0))]),
        }
    }

    #[test]
    fn json_has_rates_percentiles_and_errors_by_message() {
        let lat: Vec<u64> = (1..=1000).collect();
        let j = report(&lat).to_json();
        assert_eq!(j["label"], "etcd");
        assert_eq!(j["requests"], 1000);
        assert_eq!(j["rps"], 500.0);
        assert_eq!(j["errors"], 3);
        assert_eq!(j["error_messages"]["etcdserver: no leader"], 2);
        assert_eq!(j["error_messages"]["DeadlineExceeded"], 1);
        assert_eq!(j["leases_lost"], 0);
        let max = j["max_ms"].as_f64().unwrap();
        assert!((0.999..=1.001).contains(&max), "max {max}");
        let p50 = j["p50_ms"].as_f64().unwrap();
        assert!((0.499..=0.501).contains(&p50), "p50 {p50}");
        let p999 = j["p999_ms"].as_f64().unwrap();
        assert!((0.998..=1.001).contains(&p999), "p99.9 {p999}");
    }

    #[test]
    fn text_report_lists_every_request_in_the_histogram() {
        let lat: Vec<u64> = (1..=1000).collect();
        let r = report(&lat);
        let text = r.to_text();
        assert!(text.contains("Requests/sec:\t500.0000"), "{text}");
        assert!(text.contains("99.9% in"), "{text}");
        assert!(text.contains("max in 1.000"), "{text}");
        assert!(text.contains("leases_lost:\t0"), "{text}");
        assert!(text.contains("[2]\tetcdserver: no leader"), "{text}");
        let total: u64 = buckets(&r.all, 10, 40).iter().map(|b| b.1).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn a_single_latency_value_makes_one_bucket_of_everything() {
        let r = report(&[250; 10]);
        let total: u64 = buckets(&r.all, 10, 40).iter().map(|b| b.1).sum();
        assert_eq!(total, 10);
    }
}
