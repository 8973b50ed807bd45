//! The member snapshot format, used both to catch up a lagging follower (streamed by the Raft
//! transport) and for backups (`Maintenance.Snapshot`, `raftkv snapshot restore`): the
//! membership table as a length-prefixed `StoredCluster` record, then the store's own
//! CRC-checked snapshot stream.

use std::io::{Read, Write};

use prost::Message;
use raftkv_mvcc::Store;
use raftkv_proto::raftkvpb::StoredCluster;
use raftkv_raft::SnapshotSource;

use crate::members::Cluster;

/// Largest membership record accepted when reading a snapshot.
const MAX_CLUSTER_RECORD: usize = 64 << 20;

/// A point-in-time copy of a member: its membership table and its store.
pub struct MemberSnapshot {
    cluster: StoredCluster,
    store: raftkv_mvcc::Snapshot,
}

impl MemberSnapshot {
    /// Captures `store` (compaction is held off while the snapshot lives) and `cluster`.
    pub fn capture(store: &Store, cluster: &Cluster) -> raftkv_mvcc::Result<Self> {
        Ok(MemberSnapshot {
            cluster: cluster.to_stored(),
            store: store.snapshot()?,
        })
    }

    /// The store revision the snapshot holds.
    pub fn revision(&self) -> i64 {
        self.store.revision()
    }
}

impl SnapshotSource for MemberSnapshot {
    fn write_to(&mut self, w: &mut dyn Write) -> Result<(), String> {
        let c = self.cluster.encode_to_vec();
        w.write_all(&(c.len() as u32).to_be_bytes())
            .and_then(|()| w.write_all(&c))
            .map_err(|e| e.to_string())?;
        self.store
            .write_to(&mut WriteAdapter(w))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Reads the membership record at the start of a member snapshot; the store's stream follows.
pub fn read_cluster(r: &mut dyn Read) -> Result<StoredCluster, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| format!("snapshot too short: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CLUSTER_RECORD {
        return Err(format!(
            "not a raftkv snapshot (membership record of {len} bytes)"
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .map_err(|e| format!("snapshot too short: {e}"))?;
    StoredCluster::decode(&buf[..]).map_err(|e| format!("not a raftkv snapshot: {e}"))
}

/// `&mut dyn Read` as a sized `Read` (the store's restore is generic).
pub(crate) struct ReadAdapter<'a>(pub(crate) &'a mut dyn Read);

impl Read for ReadAdapter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

struct WriteAdapter<'a>(&'a mut dyn Write);

impl Write for WriteAdapter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
