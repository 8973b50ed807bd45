//! `snapshot save` streams Maintenance.Snapshot from one endpoint into `<file>.part`, checks the
//! stream's SHA-256 trailer (etcdctl checks its length only; we check the hash too), syncs it and
//! renames it to `<file>`: the file is the stream as sent, in etcd's shape, so the stock
//! etcdctl restores what raftkv saves and the other way round. `snapshot restore` builds the data
//! dir of one member of a new cluster from such a file, with etcdctl's flags
//! (`raftkv_server::backup::restore_data_dir_with`), verifying the trailer unless
//! `--skip-hash-check`; run it once per member, then start each with `raftkv serve` and the same
//! cluster flags.

use std::io::Write as _;

use clap::{Args, Subcommand};
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::SnapshotRequest;
use raftkv_server::backup::HashCheck;

use super::conn::Conn;
use super::format::emit;
use super::{CtlError, CtlResult, GlobalArgs, EXIT_ERROR, EXIT_INTERRUPTED};

/// `snapshot` and its subcommands.
#[derive(Args, Debug, Clone)]
pub(crate) struct SnapshotArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: SnapshotCommand,
}

/// The snapshot subcommands.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum SnapshotCommand {
    /// Stores an etcd node backend snapshot to a given file.
    Save {
        /// The file to write.
        #[arg(value_name = "FILENAME")]
        args: Vec<String>,
    },
    /// Restores a member snapshot to a new data directory, for a member of a new cluster.
    Restore(RestoreArgs),
}

/// `snapshot restore`'s arguments, etcdctl's names and defaults.
#[derive(Args, Debug, Clone)]
pub(crate) struct RestoreArgs {
    /// The snapshot file written by `snapshot save`.
    #[arg(value_name = "FILENAME")]
    file: std::path::PathBuf,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory [default: NAME.etcd].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Initial cluster configuration for restore bootstrap [default: NAME=PEER-URLS].
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Initial cluster token for the etcd cluster during restore bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// Ignore the snapshot's SHA-256 trailer (or its absence). The member snapshot's own
    /// checksums are verified either way.
    #[arg(long)]
    skip_hash_check: bool,
}

/// `snapshot ...`.
pub(crate) async fn run(a: SnapshotArgs) -> CtlResult {
    match a.command {
        SnapshotCommand::Save { args } => save(&a.global, &args).await,
        SnapshotCommand::Restore(r) => restore(r),
    }
}

fn restore(r: RestoreArgs) -> CtlResult {
    let bad = |e: raftkv_server::Error| CtlError::new(EXIT_ERROR, e.to_string());
    let data_dir = r
        .data_dir
        .unwrap_or_else(|| std::path::PathBuf::from(format!("{}.etcd", r.name)));
    let peer_urls: Vec<String> = r
        .initial_advertise_peer_urls
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let initial = r
        .initial_cluster
        .unwrap_or_else(|| format!("{}={}", r.name, peer_urls.join(&format!(",{}=", r.name))));
    let mut cfg = raftkv_server::Config::new(r.name, data_dir);
    cfg.initial_cluster = raftkv_server::config::parse_initial_cluster(&initial).map_err(bad)?;
    cfg.initial_cluster_token = r.initial_cluster_token;
    cfg.listen_peer_urls = peer_urls.clone();
    cfg.initial_advertise_peer_urls = peer_urls;
    raftkv_server::backup::restore_data_dir_with(&r.file, &cfg, r.skip_hash_check).map_err(bad)?;
    Ok(())
}

async fn save(g: &GlobalArgs, args: &[String]) -> CtlResult {
    if args.len() != 1 {
        return Err(CtlError::args("snapshot save expects one argument"));
    }
    let endpoints = g.endpoint_list();
    if endpoints.len() != 1 {
        return Err(CtlError::new(
            EXIT_INTERRUPTED,
            format!(
                "snapshot must be requested to one selected node, not multiple [{}]",
                endpoints.join(" ")
            ),
        ));
    }
    let path = &args[0];
    let part = format!("{path}.part");
    let io = |e: std::io::Error| CtlError::new(EXIT_ERROR, format!("could not write {part}: {e}"));
    let conn = Conn::connect(g).await?;
    let mut stream = MaintenanceClient::new(conn.channel())
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let mut file = std::fs::File::create(&part).map_err(io)?;
    let mut check = HashCheck::new();
    let received = loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                check.update(&chunk.blob);
                if let Err(e) = file.write_all(&chunk.blob) {
                    break Err(io(e));
                }
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status.into()),
        }
    }
    .and_then(|()| {
        check
            .finish()
            .map_err(|e| CtlError::new(EXIT_ERROR, e.to_string()))
    });
    if let Err(e) = received {
        drop(file);
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&part, path).map_err(io)?;
    emit(&format!("Snapshot saved at {path}\n"));
    Ok(())
}
