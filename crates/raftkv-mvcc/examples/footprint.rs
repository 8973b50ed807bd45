//! Memory and disk footprint of a loaded store, plus load, point-get and reopen rates.
//!
//! Loads N keys (`key-%07d`, 256-byte values) through `Store::put` with increasing Raft indexes
//! (no fsync on the write path: sled's background flush only), calls `sync()`, then reports the
//! load rate, resident memory (VmRSS / VmHWM from `/proc/self/status`), the size on disk, the raw
//! data size (key + value bytes) and RSS/raw. It then measures single-threaded point gets on
//! random keys, closes the store and reopens it in a fresh child process (so the resident memory
//! of the rebuilt index is not mixed with this process's allocator state).
//!
//! ```text
//! cargo run --release -p raftkv-mvcc --example footprint
//! cargo run --release -p raftkv-mvcc --example footprint -- --keys 100000 --commit-records 4000
//! ```
//!
//! Options: `--keys N` (1000000), `--value-size N` (256), `--gets N` (2000000),
//! `--cache-capacity BYTES` (Config default), `--commit-records N` (Config default),
//! `--commit-bytes N` (Config default), `--random-order` (load keys in a shuffled order instead
//! of ascending), `--dir PATH` (a temporary directory by default; kept if given),
//! `--skip-reopen`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raftkv_mvcc::{Config, Store};
use raftkv_proto::etcdserverpb::{PutRequest, RangeRequest};

const KEY_PREFIX: &[u8] = b"key-";
const KEY_DIGITS: usize = 7;

struct Args {
    keys: u64,
    value_size: usize,
    gets: u64,
    cache_capacity: Option<u64>,
    commit_records: Option<usize>,
    commit_bytes: Option<usize>,
    random_order: bool,
    dir: Option<PathBuf>,
    skip_reopen: bool,
    /// Internal: open the store at this path, report, exit.
    reopen: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        keys: 1_000_000,
        value_size: 256,
        gets: 2_000_000,
        cache_capacity: None,
        commit_records: None,
        commit_bytes: None,
        random_order: false,
        dir: None,
        skip_reopen: false,
        reopen: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| {
            s.replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--keys" => a.keys = num(val()?)?,
            "--value-size" => a.value_size = num(val()?)? as usize,
            "--gets" => a.gets = num(val()?)?,
            "--cache-capacity" => a.cache_capacity = Some(num(val()?)?),
            "--commit-records" => a.commit_records = Some(num(val()?)? as usize),
            "--commit-bytes" => a.commit_bytes = Some(num(val()?)? as usize),
            "--random-order" => a.random_order = true,
            "--dir" => a.dir = Some(val()?.into()),
            "--skip-reopen" => a.skip_reopen = true,
            "--reopen" => a.reopen = Some(val()?.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.keys == 0 || a.keys > 10u64.pow(KEY_DIGITS as u32) {
        return Err(format!("--keys must be in 1..={}", 10u64.pow(7)));
    }
    Ok(a)
}

fn config(path: &Path, a: &Args) -> Config {
    let mut c = Config::new(path);
    if let Some(v) = a.cache_capacity {
        c.cache_capacity = v;
    }
    if let Some(v) = a.commit_records {
        c.commit_records = v;
    }
    if let Some(v) = a.commit_bytes {
        c.commit_bytes = v;
    }
    c
}

/// SplitMix64: a tiny deterministic generator, good enough to pick keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn key_buf() -> Vec<u8> {
    let mut k = KEY_PREFIX.to_vec();
    k.resize(KEY_PREFIX.len() + KEY_DIGITS, b'0');
    k
}

/// Writes `key-%07d` of `i` into a buffer made by [`key_buf`], without allocating.
fn set_key(buf: &mut [u8], mut i: u64) {
    for b in buf[KEY_PREFIX.len()..].iter_mut().rev() {
        *b = b'0' + (i % 10) as u8;
        i /= 10;
    }
}

/// (VmRSS, VmHWM) in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `du` of `dir`: (allocated bytes, apparent bytes).
fn du(dir: &Path) -> (u64, u64) {
    let run = |args: &[&str]| {
        Command::new("du")
            .args(args)
            .arg(dir)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    (run(&["-s", "-B1"]), run(&["-s", "-b"]))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64())
}

/// Child mode: open the store, report the index rebuild time and memory on one line.
fn reopen(path: &Path, a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (rss0, _) = rss();
    let t = Instant::now();
    let store = Store::open(config(path, a))?;
    let took = t.elapsed();
    let (rss1, hwm1) = rss();
    // One read, so the store is known to answer.
    let probe = store.range(&RangeRequest {
        key: {
            let mut k = key_buf();
            set_key(&mut k, 0);
            k
        },
        ..Default::default()
    })?;
    println!(
        "REOPEN {} {} {} {} {}",
        took.as_secs_f64(),
        rss0,
        rss1,
        hwm1,
        probe.count
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse_args()?;
    if let Some(path) = &a.reopen {
        return reopen(path, &a);
    }
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let cfg = config(&dir, &a);
    println!(
        "footprint: {} keys, {}-byte values, {} order; cache_capacity={} commit_records={} \
         commit_bytes={} flush_every_ms={:?}; dir {}",
        a.keys,
        a.value_size,
        if a.random_order {
            "random"
        } else {
            "ascending"
        },
        cfg.cache_capacity,
        cfg.commit_records,
        cfg.commit_bytes,
        cfg.flush_every_ms,
        dir.display()
    );

    let (rss_base, _) = rss();
    let store = Store::open(cfg)?;

    // Load.
    let mut order: Vec<u64> = (0..a.keys).collect();
    if a.random_order {
        let mut rng = Rng(7);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    let mut req = PutRequest {
        key: key_buf(),
        value: vec![0; a.value_size],
        ..Default::default()
    };
    let t = Instant::now();
    for (n, &i) in order.iter().enumerate() {
        set_key(&mut req.key, i);
        // Vary the value a little so that blocks are not trivially compressible.
        req.value[..8].copy_from_slice(&i.to_le_bytes());
        store
            .put(n as u64 + 1, &req)?
            .ok_or("put reported an already-applied index")?;
    }
    let load = t.elapsed();
    let t = Instant::now();
    store.sync()?;
    let sync = t.elapsed();
    drop(order);

    let (rss_loaded, hwm_loaded) = rss();
    let on_disk = store.size_on_disk()?;
    let (du_alloc, du_apparent) = du(&dir);
    let raw = a.keys * (KEY_PREFIX.len() + KEY_DIGITS + a.value_size) as u64;

    // Point gets on random keys (one reused request, as a server would hand over a decoded one).
    let mut get = RangeRequest {
        key: key_buf(),
        ..Default::default()
    };
    let mut rng = Rng(42);
    let mut found = 0u64;
    let t = Instant::now();
    for _ in 0..a.gets {
        set_key(&mut get.key, rng.below(a.keys));
        found += store.range(&get)?.kvs.len() as u64;
    }
    let gets = t.elapsed();
    if found != a.gets {
        return Err(format!("{found} of {} gets found their key", a.gets).into());
    }
    let (rss_after_gets, _) = rss();

    let revision = store.revision()?;
    let t = Instant::now();
    drop(store);
    let close = t.elapsed();

    let reopened = if a.skip_reopen {
        None
    } else {
        let out = Command::new(std::env::current_exe()?)
            .arg("--reopen")
            .arg(&dir)
            .args(
                a.cache_capacity
                    .into_iter()
                    .flat_map(|v| ["--cache-capacity".to_string(), v.to_string()]),
            )
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("REOPEN "))
            .ok_or_else(|| {
                format!(
                    "reopen child failed: {}{}",
                    text,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let f: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(f64::NAN))
            .collect();
        Some(f)
    };

    let row = |name: &str, value: String| println!("| {name:<36} | {value:>24} |");
    println!();
    println!("| {:<36} | {:>24} |", "measure", "value");
    println!("|{:-<38}|{:->26}|", "", "");
    row(
        "keys loaded (revision after)",
        format!("{} ({revision})", a.keys),
    );
    row(
        "load: puts/s (single thread)",
        format!("{} ({:.2} s)", rate(a.keys, load), load.as_secs_f64()),
    );
    row("sync() after load", format!("{:.3} s", sync.as_secs_f64()));
    row("raw data (key + value bytes)", mib(raw));
    row("VmRSS before open", mib(rss_base));
    row("VmRSS after load + sync", mib(rss_loaded));
    row("VmHWM after load + sync", mib(hwm_loaded));
    row(
        "RSS / raw",
        format!("{:.2}x", rss_loaded as f64 / raw as f64),
    );
    row(
        "(RSS - RSS before open) / raw",
        format!("{:.2}x", (rss_loaded - rss_base) as f64 / raw as f64),
    );
    row("Store::size_on_disk()", mib(on_disk));
    row("du -s (allocated)", mib(du_alloc));
    row("du -sb (apparent)", mib(du_apparent));
    row(
        "on disk (du) / raw",
        format!("{:.2}x", du_alloc as f64 / raw as f64),
    );
    row(
        "point gets/s (single thread)",
        format!("{} ({} gets)", rate(a.gets, gets), a.gets),
    );
    row("VmRSS after gets", mib(rss_after_gets));
    row(
        "close (drop, final flush)",
        format!("{:.3} s", close.as_secs_f64()),
    );
    if let Some(f) = reopened {
        row(
            "reopen: Store::open (index rebuild)",
            format!("{:.3} s", f[0]),
        );
        row("reopen: VmRSS after open", mib(f[2] as u64));
        row("reopen: VmHWM after open", mib(f[3] as u64));
        row("reopen: RSS / raw", format!("{:.2}x", f[2] / raw as f64));
    }
    Ok(())
}
