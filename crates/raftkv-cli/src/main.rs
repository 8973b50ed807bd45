//! The `raftkv` binary: `raftkv serve` runs one cluster member with etcd's flags; `raftkv bench`
//! loads etcd v3 endpoints (raftkv's or etcd's) and reports throughput and latency; the
//! etcdctl-like client commands (`get`, `put`, `txn`, `watch`, `lease`, `member`, ...) talk to
//! any etcd v3 endpoint with etcdctl 3.4's flags, output and exit codes.
//!
//! - [`serve`]: the `serve` command: settings from flags, `RAFTKV_*` variables and a TOML file,
//!   the log subscriber, signals and the server's lifetime.
//! - [`mod@bench`]: the `bench` command, modeled on etcd's `tools/benchmark`.
//! - [`ctl`]: the client commands (etcdctl's exit codes: 1 for most errors, 128 for bad
//!   arguments, 5 for a watch canceled by the server, ...).
//!
//! Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a bad flag, variable or
//! config-file value (as clap does), 1 for a runtime failure (data dir unusable, port in use,
//! a fatal server error).

mod bench;
mod ctl;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// raftkv: an etcd-compatible key-value store replicated with Raft.
#[derive(Parser, Debug)]
#[command(name = "raftkv", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a cluster member, configured with etcd's flags.
    ///
    /// Flags keep etcd's names, meanings and defaults, so etcd's scripts carry over. Every flag
    /// can also be set by an environment variable, `RAFTKV_` and the flag's name in upper snake
    /// case (`--data-dir`: `RAFTKV_DATA_DIR`; `--log-level` is `RAFTKV_LOG`), or by a key of the
    /// TOML file named by `--config-file`, the flag's name without its dashes (`data-dir =
    /// "n1.etcd"`; a URL list is one comma-separated string or an array of strings).
    ///
    /// Precedence: flag, then environment, then config file, then default.
    ///
    /// SIGTERM or SIGINT shuts the member down gracefully (exit status 0); a second signal
    /// exits at once. Exit status 2: a bad setting; 1: a runtime failure.
    Serve(Box<serve::ServeArgs>),
    /// Generate load against etcd v3 endpoints (raftkv or etcd) and report throughput and
    /// latency, as etcd's benchmark tool does.
    Bench(bench::BenchArgs),
    /// The etcdctl-like client commands.
    #[command(flatten)]
    Ctl(ctl::CtlCommand),
}

/// Why the binary exits non-zero.
#[derive(Debug)]
enum Failure {
    /// A bad flag, variable or config-file value: printed as one line, exit status 2.
    Usage(String),
    /// A runtime failure, already logged: exit status 1.
    Runtime,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(ctl::hoist_global_flags(std::env::args_os().collect()));
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => bench::run_blocking(args).map_err(|e| {
            report_usage_error(&format!("{e:#}"));
            Failure::Runtime
        }),
        Command::Ctl(cmd) => return ctl::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            report_usage_error(&message);
            ExitCode::from(2)
        }
        Err(Failure::Runtime) => ExitCode::FAILURE,
    }
}

/// Prints a usage error the way clap prints its own.
#[expect(
    clippy::print_stderr,
    reason = "usage errors come before the log subscriber exists, and read best as clap's do"
)]
fn report_usage_error(message: &str) {
    eprintln!("error: {message}");
}
