//! WAL append throughput with real `fdatasync`: batches of 1, 16 and 256 entries of 256-byte
//! payload per sync (one group commit each), and the raw `fdatasync` latency floor of the disk
//! (4 KiB write + `fdatasync`).
//!
//! Runs in `CARGO_TARGET_TMPDIR` (under `target/`, so on the project's disk, not a tmpfs), or
//! in `RAFTKV_BENCH_DIR` if set. After criterion's report it prints a summary in MB/s and
//! fsyncs/s (skipped with `--test` or `--list`).
//!
//! ```text
//! cargo bench -p raftkv-raft --bench wal
//! ```

// A bench reports on the terminal.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use raft::eraftpb::Entry;
use raftkv_raft::{Wal, WalConfig};

const PAYLOAD: usize = 256;
const BATCHES: [usize; 3] = [1, 16, 256];

fn bench_dir() -> PathBuf {
    std::env::var_os("RAFTKV_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// A WAL with real fsync and a source of entries to append to it.
struct Appender {
    _dir: tempfile::TempDir,
    wal: Wal,
    next: u64,
    /// Template entry; its 256-byte `data` is shared by every clone (a reference count).
    payload: Entry,
}

impl Appender {
    fn new() -> Appender {
        std::fs::create_dir_all(bench_dir()).unwrap();
        let dir = tempfile::tempdir_in(bench_dir()).unwrap();
        let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let payload = Entry {
            term: 1,
            data: vec![0xA5; PAYLOAD].into(),
            ..Default::default()
        };
        Appender {
            _dir: dir,
            wal,
            next: 1,
            payload,
        }
    }

    /// Appends `batch` entries and syncs them: one group commit.
    fn commit(&mut self, batch: usize) {
        let entries: Vec<Entry> = (0..batch as u64)
            .map(|i| {
                let mut e = self.payload.clone();
                e.index = self.next + i;
                e
            })
            .collect();
        self.next += batch as u64;
        self.wal.append(&entries).unwrap();
        self.wal.sync().unwrap();
        // Keep the disk footprint bounded: compact (the next sync deletes old segments).
        if self.next - self.wal.first_index() > 500_000 {
            self.wal.compact(self.next - 1).unwrap();
        }
    }
}

fn append_fsync(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append_fsync");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    for batch in BATCHES {
        let mut a = Appender::new();
        g.throughput(Throughput::Bytes((batch * PAYLOAD) as u64));
        g.bench_function(BenchmarkId::new("entries_per_sync", batch), |b| {
            b.iter(|| a.commit(batch))
        });
    }
    g.finish();
}

/// 4 KiB written then `fdatasync`ed, appending (the file grows, as a WAL's does) or overwriting
/// the same block (data only, no size change).
struct Floor {
    _dir: tempfile::TempDir,
    file: File,
    block: Vec<u8>,
    len: u64,
}

impl Floor {
    fn new() -> Floor {
        std::fs::create_dir_all(bench_dir()).unwrap();
        let dir = tempfile::tempdir_in(bench_dir()).unwrap();
        let file = File::options()
            .create(true)
            .read(true)
            .append(true)
            .open(dir.path().join("floor"))
            .unwrap();
        Floor {
            _dir: dir,
            file,
            block: vec![0x5A; 4096],
            len: 0,
        }
    }

    fn append(&mut self) {
        if self.len >= 64 << 20 {
            self.file.set_len(0).unwrap();
            self.len = 0;
        }
        self.file.write_all(&self.block).unwrap();
        self.len += 4096;
        self.file.sync_data().unwrap();
    }

    fn overwrite(&mut self) {
        if self.len == 0 {
            self.file.write_all(&self.block).unwrap();
            self.file.sync_all().unwrap();
            self.len = 4096;
        }
        self.file.write_all_at(&self.block, 0).unwrap();
        self.file.sync_data().unwrap();
    }
}

fn fdatasync_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("fdatasync_floor_4k");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    let mut f = Floor::new();
    g.bench_function("append", |b| b.iter(|| f.append()));
    let mut f = Floor::new();
    g.bench_function("overwrite", |b| b.iter(|| f.overwrite()));
    g.finish();
}

/// Runs `op` for about `secs` seconds and returns the latencies, sorted.
fn timed(secs: u64, mut op: impl FnMut()) -> Vec<Duration> {
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        op();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    let i = ((lat.len() as f64 * p) as usize).min(lat.len() - 1);
    lat[i].as_secs_f64() * 1e6
}

fn summary() {
    println!();
    println!("== raftkv-raft WAL summary (fsync on, {PAYLOAD}-byte payloads) ==");
    println!(
        "{:<28} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "case", "fsyncs/s", "entries/s", "payload MB/s", "p50 us", "p99 us"
    );
    for batch in BATCHES {
        let mut a = Appender::new();
        let lat = timed(5, || a.commit(batch));
        let total: f64 = lat.iter().map(Duration::as_secs_f64).sum();
        let syncs = lat.len() as f64 / total;
        println!(
            "{:<28} {:>10.0} {:>12.0} {:>12.2} {:>10.0} {:>10.0}",
            format!("append {batch} entries + sync"),
            syncs,
            syncs * batch as f64,
            syncs * (batch * PAYLOAD) as f64 / 1e6,
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    for (name, overwrite) in [
        ("4 KiB append + fdatasync", false),
        ("4 KiB overwrite + fdatasync", true),
    ] {
        let mut f = Floor::new();
        let lat = timed(5, || if overwrite { f.overwrite() } else { f.append() });
        let total: f64 = lat.iter().map(Duration::as_secs_f64).sum();
        println!(
            "{:<28} {:>10.0} {:>12} {:>12} {:>10.0} {:>10.0}",
            name,
            lat.len() as f64 / total,
            "-",
            "-",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    append_fsync(&mut c);
    fdatasync_floor(&mut c);
    c.final_summary();
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--test" || a == "--list") {
        summary();
    }
}
