//! The etcdctl-like client commands of the `raftkv` binary (`get`, `put`, `txn`, `watch`,
//! `lease`, ...), with etcdctl 3.4's names, flags, output (`-w simple|json|table`), error
//! lines (`Error: <message>` on stderr) and exit codes.
//!
//! - [`conn`]: endpoints, dial and command timeouts, retries of reads.
//! - [`mod@format`]: etcdctl's simple, JSON and table output.
//! - [`kv`]: `put`, `get`, `del`, `compaction`.
//! - [`txn`]: `txn` and etcdctl's transaction grammar.
//! - [`watch`]: the `watch` command.
//! - [`lease`]: `lease grant|revoke|keep-alive|timetolive|list`.
//! - [`cluster`]: `member list|add|remove|promote`, `endpoint status|health`.
//! - [`snapshot`]: `snapshot save|restore`.
//! - [`concurrency`]: `lock` and `elect` over the v3lock and v3election services.
//!
//! Global flags (`--endpoints`, `-w`, ...) may come before or after the command, as with
//! etcdctl: [`hoist_global_flags`] moves leading ones behind the command name for clap.

pub(crate) mod cluster;
pub(crate) mod concurrency;
pub(crate) mod conn;
pub(crate) mod format;
pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod maintenance;
pub(crate) mod snapshot;
pub(crate) mod txn;
pub(crate) mod watch;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use format::Format;

/// etcdctl's exit codes (`ctlv3/command/error.go`).
pub(crate) const EXIT_ERROR: u8 = 1;
/// A lost or refused connection (`lease keep-alive`).
pub(crate) const EXIT_BAD_CONNECTION: u8 = 2;
/// Malformed input (`txn`).
pub(crate) const EXIT_INVALID_INPUT: u8 = 3;
/// An unsupported output format.
pub(crate) const EXIT_BAD_FEATURE: u8 = 4;
/// A watch canceled by the server.
pub(crate) const EXIT_INTERRUPTED: u8 = 5;
/// Bad arguments.
pub(crate) const EXIT_BAD_ARGS: u8 = 128;

/// A failed command: etcdctl's exit code and the message after `Error: `.
#[derive(Debug)]
pub(crate) struct CtlError {
    code: u8,
    message: String,
}

impl CtlError {
    /// A failure with exit status `code`.
    pub(crate) fn new(code: u8, message: impl Into<String>) -> CtlError {
        CtlError {
            code,
            message: message.into(),
        }
    }

    /// A bad-arguments failure (exit status 128).
    pub(crate) fn args(message: impl Into<String>) -> CtlError {
        CtlError::new(EXIT_BAD_ARGS, message)
    }
}

/// What a command returns.
pub(crate) type CtlResult = Result<(), CtlError>;

/// Flags every client command takes (etcdctl's global flags).
#[derive(Args, Debug, Clone)]
pub(crate) struct GlobalArgs {
    /// gRPC endpoints, comma-separated (`host:port` or `http://host:port`).
    #[arg(
        long,
        global = true,
        overrides_with = "endpoints",
        env = "RAFTKV_ENDPOINTS",
        default_value = "127.0.0.1:2379"
    )]
    pub(crate) endpoints: String,

    /// Dial timeout for client connections.
    #[arg(
        long,
        global = true,
        overrides_with = "dial_timeout",
        default_value = "2s",
        value_parser = format::parse_go_duration
    )]
    pub(crate) dial_timeout: Duration,

    /// Timeout for short running commands (excluding the dial timeout).
    #[arg(
        long,
        global = true,
        overrides_with = "command_timeout",
        default_value = "5s",
        value_parser = format::parse_go_duration
    )]
    pub(crate) command_timeout: Duration,

    /// Output format: simple, json or table.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        overrides_with = "write_out",
        default_value = "simple"
    )]
    pub(crate) write_out: String,

    /// Print byte strings as hex encoded strings.
    #[arg(long, global = true)]
    pub(crate) hex: bool,
}

impl GlobalArgs {
    /// The endpoints, split on commas.
    pub(crate) fn endpoint_list(&self) -> Vec<String> {
        self.endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The `-w` format.
    pub(crate) fn format(&self) -> Result<Format, CtlError> {
        Format::parse(&self.write_out)
    }
}

/// The client commands, flattened into the binary's command list.
#[derive(Subcommand, Debug)]
pub(crate) enum CtlCommand {
    /// Puts the given key into the store (the value from stdin when omitted).
    Put(kv::PutArgs),
    /// Gets the key or a range of keys.
    Get(kv::GetArgs),
    /// Removes the specified key or range of keys [key, range_end).
    Del(kv::DelArgs),
    /// Txn processes all the requests in one transaction (read from stdin).
    Txn(txn::TxnArgs),
    /// Watches events stream on keys or prefixes.
    Watch(watch::WatchArgs),
    /// Lease related commands.
    Lease(lease::LeaseArgs),
    /// Membership related commands.
    Member(cluster::MemberArgs),
    /// Endpoint related commands.
    Endpoint(cluster::EndpointArgs),
    /// Compacts the event history in etcd.
    Compaction(kv::CompactionArgs),
    /// Manages etcd node snapshots.
    Snapshot(snapshot::SnapshotArgs),
    /// Defragments the storage of the etcd members with given endpoints.
    Defrag(maintenance::DefragArgs),
    /// Acquires a named lock.
    Lock(concurrency::LockArgs),
    /// Observes and participates in leader election.
    Elect(concurrency::ElectArgs),
}

/// Names of the client commands (for [`hoist_global_flags`]).
const COMMANDS: &[&str] = &[
    "put",
    "get",
    "del",
    "txn",
    "watch",
    "lease",
    "member",
    "endpoint",
    "compaction",
    "snapshot",
    "defrag",
    "lock",
    "elect",
];

/// Global flags that take a value as the next argument when written without `=`.
const VALUE_FLAGS: &[&str] = &[
    "--endpoints",
    "--dial-timeout",
    "--command-timeout",
    "-w",
    "--write-out",
];

/// Moves global flags written before a client command (`raftkv --endpoints=X get k`) behind
/// it, where clap accepts them. Anything else is returned unchanged.
pub(crate) fn hoist_global_flags(args: Vec<OsString>) -> Vec<OsString> {
    let mut leading = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let Some(a) = args[i].to_str() else {
            return args;
        };
        if !a.starts_with('-') {
            break;
        }
        let name = a.split('=').next().unwrap_or(a);
        if VALUE_FLAGS.contains(&name) && a.contains('=') || name == "--hex" {
            leading.push(args[i].clone());
            i += 1;
        } else if VALUE_FLAGS.contains(&name) {
            if i + 1 >= args.len() {
                return args;
            }
            leading.push(args[i].clone());
            leading.push(args[i + 1].clone());
            i += 2;
        } else {
            return args;
        }
    }
    let is_ctl = args
        .get(i)
        .and_then(|a| a.to_str())
        .is_some_and(|a| COMMANDS.contains(&a));
    if leading.is_empty() || !is_ctl {
        return args;
    }
    let mut out = vec![args[0].clone(), args[i].clone()];
    out.extend(leading);
    out.extend(args[i + 1..].iter().cloned());
    out
}

/// Runs a client command and returns the process exit status; errors are printed as
/// etcdctl prints them.
pub(crate) fn run(cmd: CtlCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            format::emit_err(&format!("Error: cannot start the runtime: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cmd {
            CtlCommand::Put(a) => kv::put(a).await,
            CtlCommand::Get(a) => kv::get(a).await,
            CtlCommand::Del(a) => kv::del(a).await,
            CtlCommand::Compaction(a) => kv::compaction(a).await,
            CtlCommand::Txn(a) => txn::run(a).await,
            CtlCommand::Watch(a) => watch::run(a).await,
            CtlCommand::Lease(a) => lease::run(a).await,
            CtlCommand::Member(a) => cluster::member(a).await,
            CtlCommand::Endpoint(a) => cluster::endpoint(a).await,
            CtlCommand::Snapshot(a) => snapshot::run(a).await,
            CtlCommand::Defrag(a) => maintenance::defrag(a).await,
            CtlCommand::Lock(a) => concurrency::lock(a).await,
            CtlCommand::Elect(a) => concurrency::elect(a).await,
        }
    });
    // Streams may still be open; do not wait for their tasks.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                format::emit_err(&format!("Error: {}\n", e.message));
            }
            ExitCode::from(e.code)
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: how the long-running commands (`watch`,
/// `lease keep-alive`, `lock`, `elect`) are told to clean up and exit 0.
pub(crate) async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
}

/// Parses a hexadecimal lease or member id as etcdctl does.
pub(crate) fn parse_hex_id(s: &str) -> Result<u64, std::num::ParseIntError> {
    u64::from_str_radix(s, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn leading_global_flags_move_behind_the_command() {
        assert_eq!(
            hoist_global_flags(os(&[
                "raftkv",
                "--endpoints",
                "a:1",
                "-w",
                "json",
                "get",
                "k"
            ])),
            os(&["raftkv", "get", "--endpoints", "a:1", "-w", "json", "k"])
        );
        assert_eq!(
            hoist_global_flags(os(&["raftkv", "--endpoints=a:1", "lease", "grant", "5"])),
            os(&["raftkv", "lease", "--endpoints=a:1", "grant", "5"])
        );
        let serve = os(&["raftkv", "serve", "--name", "x"]);
        assert_eq!(hoist_global_flags(serve.clone()), serve);
        let bench = os(&["raftkv", "--endpoints", "a", "bench"]);
        assert_eq!(hoist_global_flags(bench.clone()), bench);
    }
}
