//! `raftkv serve`: resolves the settings, installs the log subscriber, runs a
//! [`raftkv_server::Server`] until SIGTERM or SIGINT, then shuts it down gracefully.
//!
//! The flags, their `RAFTKV_*` variables, the `--config-file` layer and their resolution into a
//! `Config` (flag > env > file > default) live in [`raftkv_server::flags`], shared with
//! `raftkv-cron serve --embed`.

use std::time::Duration;

use raftkv_server::flags::process::Signals;
use raftkv_server::{Config, Server};
use tracing::{error, info, warn, Instrument};

pub(crate) use raftkv_server::flags::ServeArgs;

use crate::Failure;

/// How long the runtime waits for stray blocking tasks once the server has shut down.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs `raftkv serve` to completion.
pub(crate) fn run(flags: ServeArgs) -> Result<(), Failure> {
    let settings = flags.resolve().map_err(Failure::Usage)?;
    init_logging(&settings.log_filter)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            error!(error = %e, "cannot start the async runtime");
            Failure::Runtime
        })?;
    // One process is one member: every event carries its name. The server adds term and index.
    let span = tracing::info_span!("node", name = %settings.config.name);
    let result = runtime.block_on(serve(settings.config).instrument(span));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    result
}

/// Installs the log subscriber (see [`raftkv_server::flags::process::init_logging`]).
fn init_logging(filter: &str) -> Result<(), Failure> {
    raftkv_server::flags::process::init_logging(filter).map_err(Failure::Usage)
}

/// Starts the server and waits for a signal or a fatal error.
async fn serve(config: Config) -> Result<(), Failure> {
    // Listen for signals before starting, so a SIGTERM during startup still stops cleanly.
    let mut signals = Signals::new().map_err(|e| {
        error!(error = %e, "cannot listen for signals");
        Failure::Runtime
    })?;
    info!(
        data_dir = %config.data_dir.display(),
        client_urls = ?config.listen_client_urls,
        peer_urls = ?config.listen_peer_urls,
        initial_cluster_state = ?config.initial_cluster_state,
        "starting"
    );
    let start = tokio::select! {
        started = Server::start(config) => started,
        signal = signals.recv() => {
            info!(signal, "stopped before the server started");
            return Ok(());
        }
    };
    let mut server = match start {
        Ok(server) => server,
        Err(raftkv_server::Error::Config(message)) => return Err(Failure::Usage(message)),
        Err(e) => {
            error!(error = %e, "cannot start");
            return Err(Failure::Runtime);
        }
    };
    info!(
        member_id = %format_args!("{:016x}", server.member_id()),
        client_addrs = ?server.client_addrs(),
        peer_addrs = ?server.peer_addrs(),
        "serving"
    );

    let stopped = tokio::select! {
        signal = signals.recv() => {
            info!(signal, "shutting down");
            None
        }
        stopped = server.stopped() => Some(stopped),
    };
    match stopped {
        None => {
            tokio::select! {
                done = server.shutdown() => match done {
                    Ok(()) => {
                        info!("stopped");
                        Ok(())
                    }
                    Err(e) => {
                        error!(error = %e, "shutdown failed");
                        Err(Failure::Runtime)
                    }
                },
                signal = signals.recv() => {
                    warn!(signal, "second signal: exiting without finishing the shutdown");
                    Err(Failure::Runtime)
                }
            }
        }
        Some(Ok(())) => {
            info!("the server stopped by itself");
            Ok(())
        }
        Some(Err(e)) => {
            error!(error = %e, "the server stopped on a fatal error");
            Err(Failure::Runtime)
        }
    }
}
