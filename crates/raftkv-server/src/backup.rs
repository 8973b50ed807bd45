//! Backups, as etcd does them: `Maintenance.Snapshot` streams a consistent point-in-time copy of
//! a member (a [`MemberSnapshot`]), and [`restore_data_dir`] builds the data dir of a member of a
//! *new* cluster from such a file (`raftkv snapshot restore`, like `etcdctl snapshot restore`):
//! the store as of the backup, a membership table from the new `--initial-cluster`, and a WAL
//! that starts with a Raft snapshot at the backup's index, so every member restored from the
//! same file starts from the same log position.
//!
//! A backup has etcd's outer shape, which the stock etcdctl 3.4 requires of the stream it saves:
//! the member snapshot, zero padding to a multiple of [`ALIGN`] bytes (etcd's bolt file is a
//! whole number of pages), then the SHA-256 of everything before it ([`HASH_LEN`] bytes). So
//! its length is `512 * k + 32` ([`has_hash_trailer`]). The member snapshot declares its own end
//! (length-prefixed membership record, then the store's frames up to their `E` frame), so the
//! reader knows where the padding starts, and checks that it is shorter than [`ALIGN`] and all
//! zeros.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Take, Write};
use std::path::{Path, PathBuf};

use raft::prelude::{ConfState, Snapshot, SnapshotMetadata};
use raftkv_mvcc::Store;
use raftkv_proto::etcdserverpb::SnapshotResponse;
use raftkv_raft::{SnapshotSource, StorageConfig, WalStorage};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;

use crate::config::Config;
use crate::error::{store_status, Error, Result};
use crate::header::Headers;
use crate::members::Cluster;
use crate::snapshot::{self, MemberSnapshot};

/// A backup's content (member snapshot and padding) is a multiple of this many bytes.
pub const ALIGN: u64 = 512;
/// Length of the SHA-256 trailer that ends a backup.
pub const HASH_LEN: usize = 32;

/// Whether a backup of `size` bytes ends with a SHA-256 trailer: etcdctl's own test
/// (`hasChecksum`: the length is 32 more than a multiple of 512).
pub fn has_hash_trailer(size: u64) -> bool {
    size % ALIGN == HASH_LEN as u64
}

/// Why a backup stream or file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The stream does not end with a SHA-256 trailer (etcdctl's message).
    #[error("sha256 checksum not found [bytes: {0}]")]
    NoChecksum(u64),
    /// The file has no SHA-256 trailer and the check was not skipped (etcdctl's message).
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    /// The SHA-256 trailer does not match the content: the file is damaged.
    #[error("snapshot file integrity check failed: expected sha256 {expected}, got {got}")]
    Mismatch {
        /// The trailer (hex).
        expected: String,
        /// The hash of the content (hex).
        got: String,
    },
    /// The content is not a raftkv member snapshot, or is followed by something else than
    /// its zero padding.
    #[error("{path}: {what}")]
    Format {
        /// The backup file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The backup file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The backup file.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
}

/// Checks a backup stream as it arrives, as `etcdctl snapshot save` does (and, unlike it, also
/// verifies the hash): every byte but the last [`HASH_LEN`] is hashed, and at the end those must
/// be the hash, and the length `512 * k + 32`.
#[derive(Debug, Clone, Default)]
pub struct HashCheck {
    hasher: Sha256,
    /// The last bytes seen (at most [`HASH_LEN`]): not hashed yet, the trailer if the stream
    /// ends here.
    tail: Vec<u8>,
    size: u64,
}

impl HashCheck {
    /// A check of an empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        if data.len() >= HASH_LEN {
            self.hasher.update(&self.tail);
            let (body, tail) = data.split_at(data.len() - HASH_LEN);
            self.hasher.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            let extra = self.tail.len().saturating_sub(HASH_LEN);
            self.hasher.update(&self.tail[..extra]);
            self.tail.drain(..extra);
        }
    }

    /// The bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the stream's shape and trailer.
    pub fn finish(self) -> Result<(), BackupError> {
        if !has_hash_trailer(self.size) {
            return Err(BackupError::NoChecksum(self.size));
        }
        let got = self.hasher.finalize();
        if got.as_slice() != self.tail.as_slice() {
            return Err(BackupError::Mismatch {
                expected: hex(&self.tail),
                got: hex(&got),
            });
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `snap` as a backup (member snapshot, zero padding to a multiple of [`ALIGN`], SHA-256
/// trailer) to `w`; returns the bytes written.
pub fn write_backup(snap: &mut MemberSnapshot, w: &mut dyn Write) -> Result<u64, String> {
    let mut h = Hashing {
        inner: w,
        hasher: Sha256::new(),
        written: 0,
    };
    snap.write_to(&mut h)?;
    let pad = (ALIGN - h.written % ALIGN) % ALIGN;
    h.write_all(&vec![0u8; pad as usize])
        .map_err(|e| e.to_string())?;
    let Hashing {
        inner,
        hasher,
        written,
    } = h;
    inner
        .write_all(&hasher.finalize())
        .map_err(|e| e.to_string())?;
    Ok(written + HASH_LEN as u64)
}

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
            write_backup(&mut snap, &mut w).map_err(Status::internal)?;
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
/// backup at `backup`, after verifying its SHA-256 trailer. Refuses a data dir that exists and
/// is not empty. Returns the store revision restored.
pub fn restore_data_dir(backup: &Path, cfg: &Config) -> Result<i64> {
    restore_data_dir_with(backup, cfg, false)
}

/// [`restore_data_dir`], with etcdctl's `--skip-hash-check`: a trailer, if the file has one
/// (its length is `512 * k + 32`), is then cut off unchecked, and a file without one is
/// accepted. The member snapshot's own checksums are verified either way. Nothing is left in
/// the data dir if the restore fails.
pub fn restore_data_dir_with(backup: &Path, cfg: &Config, skip_hash_check: bool) -> Result<i64> {
    cfg.validate()?;
    let dir = &cfg.data_dir;
    let io = |source| Error::DataDir {
        path: dir.clone(),
        source,
    };
    let existed = dir.exists();
    if existed && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Err(Error::Config(format!(
            "--data-dir {} already exists and is not empty",
            dir.display()
        )));
    }
    // The trailer (unless skipped) is checked before anything is written.
    let mut r = open_backup(backup, skip_hash_check)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let restored = restore_into(&mut r, backup, cfg);
    if restored.is_err() {
        let cleaned = if existed {
            std::fs::read_dir(dir).and_then(|entries| {
                entries.map(|e| e.map(|e| e.path())).try_for_each(|p| {
                    let p = p?;
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    }
                })
            })
        } else {
            std::fs::remove_dir_all(dir)
        };
        if let Err(e) = cleaned {
            tracing::warn!(
                data_dir = %dir.display(),
                error = %e,
                "cannot clean up after a failed restore"
            );
        }
    }
    restored
}

/// Opens a backup file: checks its SHA-256 trailer (unless `skip_hash_check`) and returns a
/// reader of its content (member snapshot and padding), without the trailer.
fn open_backup(path: &Path, skip_hash_check: bool) -> Result<BufReader<Take<File>>, BackupError> {
    let io = |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let hashed = has_hash_trailer(size);
    let content = if hashed { size - HASH_LEN as u64 } else { size };
    if !skip_hash_check {
        if !hashed {
            return Err(BackupError::MissingHash);
        }
        let mut check = HashCheck::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            check.update(&buf[..n]);
        }
        if check.size() != size {
            return Err(BackupError::Format {
                path: path.to_path_buf(),
                what: format!("changed while read ({} bytes, then {})", size, check.size()),
            });
        }
        check.finish()?;
        file.rewind().map_err(io)?;
    }
    Ok(BufReader::new(file.take(content)))
}

/// Reads the rest of a backup's content after its member snapshot: the zero padding to a
/// multiple of [`ALIGN`], or nothing.
fn read_padding(r: &mut impl Read) -> std::io::Result<Option<String>> {
    let mut rest = Vec::new();
    r.take(ALIGN).read_to_end(&mut rest)?;
    if rest.len() as u64 >= ALIGN || rest.iter().any(|&b| b != 0) {
        let mut more = 0u64;
        loop {
            let n = std::io::copy(&mut r.take(1 << 20), &mut std::io::sink())?;
            if n == 0 {
                break;
            }
            more += n;
        }
        return Ok(Some(format!(
            "{} unexpected bytes after the end of the snapshot",
            rest.len() as u64 + more
        )));
    }
    Ok(None)
}

fn restore_into(r: &mut BufReader<Take<File>>, backup: &Path, cfg: &Config) -> Result<i64> {
    let dir = &cfg.data_dir;
    let format = |what: String| BackupError::Format {
        path: backup.to_path_buf(),
        what,
    };
    snapshot::read_cluster(r).map_err(format)?;

    let cluster = Cluster::bootstrap(cfg);
    let mut store_cfg = raftkv_mvcc::Config::new(dir.join("db"));
    store_cfg.cache_capacity = cfg.backend_cache_bytes;
    store_cfg.min_lease_ttl = cfg.min_lease_ttl();
    store_cfg.max_txn_ops = cfg.max_txn_ops;
    let store = Store::open(store_cfg)?;
    store.restore(r)?;
    match read_padding(r) {
        Ok(None) => {}
        Ok(Some(what)) => return Err(format(what).into()),
        Err(source) => {
            return Err(BackupError::Io {
                path: backup.to_path_buf(),
                source,
            }
            .into())
        }
    }
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
