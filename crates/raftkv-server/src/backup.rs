//! Backups, as etcd does them: `Maintenance.Snapshot` streams a consistent point-in-time copy of
//! a member (a [`MemberSnapshot`]), and [`restore_data_dir`] builds the data dir of a member of a
//! *new* cluster from such a file (`raftkv snapshot restore`, like `etcdctl snapshot restore`):
//! the store as of the backup, a membership table from the new `--initial-cluster`, and a WAL
//! that starts with a Raft snapshot at the backup's index, so every member restored from the
//! same file starts from the same log position.

use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

use raft::prelude::{ConfState, Snapshot, SnapshotMetadata};
use raftkv_mvcc::Store;
use raftkv_proto::etcdserverpb::SnapshotResponse;
use raftkv_raft::{SnapshotSource, StorageConfig, WalStorage};
use tokio::sync::mpsc;
use tonic::Status;

use crate::config::Config;
use crate::error::{store_status, Error, Result};
use crate::header::Headers;
use crate::members::Cluster;
use crate::snapshot::{self, MemberSnapshot};

/// Bytes per `SnapshotResponse` message.
const CHUNK: usize = 1 << 20;

/// Writes a member snapshot of `store` and `cluster` to an unlinked temporary file in `dir`
/// (reclaimed when the stream ends, however it ends) and returns a receiver of the messages
/// streaming it: the first carries the header, each carries the bytes still to come.
pub async fn stream(
    store: Store,
    cluster: Cluster,
    dir: &Path,
    headers: Headers,
) -> Result<mpsc::Receiver<Result<SnapshotResponse, Status>>, Status> {
    let dir = dir.to_path_buf();
    let written = tokio::task::spawn_blocking(move || -> Result<_, Status> {
        let mut snap = MemberSnapshot::capture(&store, &cluster).map_err(|e| store_status(&e))?;
        let mut file = tempfile::tempfile_in(&dir)
            .map_err(|e| Status::internal(format!("etcdserver: snapshot file: {e}")))?;
        {
            let mut w = BufWriter::new(&mut file);
            snap.write_to(&mut w).map_err(Status::internal)?;
            w.flush()
                .map_err(|e| Status::internal(format!("etcdserver: snapshot file: {e}")))?;
        }
        let size = file
            .stream_position()
            .map_err(|e| Status::internal(format!("etcdserver: snapshot file: {e}")))?;
        file.rewind()
            .map_err(|e| Status::internal(format!("etcdserver: snapshot file: {e}")))?;
        Ok((file, size, snap.revision()))
    })
    .await
    .map_err(|e| Status::internal(format!("etcdserver: {e}")))??;
    let (file, size, revision) = written;
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(file);
        let mut left = size;
        let mut first = true;
        loop {
            let mut blob = vec![0u8; CHUNK.min(left as usize)];
            if let Err(e) = r.read_exact(&mut blob) {
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "etcdserver: snapshot file: {e}"
                ))));
                return;
            }
            left -= blob.len() as u64;
            let msg = SnapshotResponse {
                header: first.then(|| headers.at(revision)),
                remaining_bytes: left,
                blob,
                ..Default::default()
            };
            first = false;
            if tx.blocking_send(Ok(msg)).is_err() || left == 0 {
                return;
            }
        }
    });
    Ok(rx)
}

/// Creates `cfg.data_dir` for member `cfg.name` of a new cluster `cfg.initial_cluster` from the
/// backup at `backup`. Refuses a data dir that exists and is not empty. Returns the store
/// revision restored.
pub fn restore_data_dir(backup: &Path, cfg: &Config) -> Result<i64> {
    cfg.validate()?;
    let dir = &cfg.data_dir;
    let io = |source| Error::DataDir {
        path: dir.clone(),
        source,
    };
    if dir.exists() && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Err(Error::Config(format!(
            "--data-dir {} already exists and is not empty",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::File::open(backup).map_err(|source| Error::DataDir {
        path: backup.to_path_buf(),
        source,
    })?;
    let mut r = BufReader::new(file);
    snapshot::read_cluster(&mut r)
        .map_err(|e| Error::Config(format!("{}: {e}", backup.display())))?;

    let cluster = Cluster::bootstrap(cfg);
    let mut store_cfg = raftkv_mvcc::Config::new(dir.join("db"));
    store_cfg.cache_capacity = cfg.backend_cache_bytes;
    store_cfg.min_lease_ttl = cfg.min_lease_ttl();
    store_cfg.max_txn_ops = cfg.max_txn_ops;
    let store = Store::open(store_cfg)?;
    store.restore(&mut r)?;
    store.sync()?;
    let index = store.consistent_index()?;
    let revision = store.revision()?;
    drop(store);

    let (mut wal, _) = WalStorage::open(dir.join("wal"), StorageConfig::default())?;
    let conf_state = ConfState {
        voters: cluster.members.keys().copied().collect(),
        ..Default::default()
    };
    let meta = SnapshotMetadata {
        index,
        term: 1,
        conf_state: Some(conf_state).into(),
        ..Default::default()
    };
    let mut snap = Snapshot::default();
    snap.set_metadata(meta);
    wal.apply_snapshot(snap)?;
    wal.sync()?;
    cluster.save(&dir.join("cluster"))?;
    tracing::info!(
        data_dir = %dir.display(),
        revision,
        index,
        "data dir restored from backup"
    );
    Ok(revision)
}
