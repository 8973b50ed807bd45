//! The long fault run: `soak --minutes N [--seed S] [--hold SECS] [--settle SECS]` (what
//! `scripts/soak.sh` runs). Starts a proxied three-member raftkv cluster, runs every workload
//! under a seeded random fault schedule for N minutes, checks the histories and prints the
//! summary table (Markdown). Exits 1 if any checker found an anomaly.

// A command-line program: its progress and table go to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use clap::Parser;
use raftkv_tests::soak::{self, Plan, Schedule};

/// Runs the fault workloads under a random fault schedule and prints what happened.
#[derive(Parser, Debug)]
#[command(name = "soak")]
struct Args {
    /// How long to inject faults, in minutes.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// The seed of the schedule and the workloads, decimal or 0x-hex (default: from the
    /// clock, printed).
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// How long each fault lasts, in seconds.
    #[arg(long, default_value_t = 8)]
    hold: u64,
    /// Quiet seconds before each fault (the throughput baseline).
    #[arg(long, default_value_t = 12)]
    settle: u64,
    /// Also write the table to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn parse_seed(s: &str) -> Result<u64, std::num::ParseIntError> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let plan = Plan {
        seed,
        schedule: Schedule::Random {
            duration: Duration::from_secs(args.minutes * 60),
        },
        hold: Duration::from_secs(args.hold),
        settle: Duration::from_secs(args.settle),
        server_flags: Plan::default_server_flags(),
    };
    eprintln!("soak: seed {seed:#x}, {} minutes of faults", args.minutes);
    let summary = soak::run(&plan, &mut |line| eprintln!("soak: {line}"));
    let table = summary.table();
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table)?;
    }
    if !summary.anomalies.is_empty() {
        anyhow::bail!("{} anomalies found", summary.anomalies.len());
    }
    Ok(())
}
