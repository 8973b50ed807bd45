//! The process edge both binaries share: the `tracing` subscriber they install and the signals
//! that ask them to stop.

use std::io::IsTerminal;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installs the `tracing` subscriber: human-readable lines on stderr, filtered by `filter`
/// (`--log-level` / `RAFTKV_LOG`, EnvFilter syntax). The error is one line for the user.
pub fn init_logging(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// SIGTERM and SIGINT, the signals that ask for a graceful stop.
#[derive(Debug)]
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Starts listening (do it before starting anything a signal should stop).
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
