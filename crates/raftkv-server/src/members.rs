//! Cluster membership and alarms as a member knows them: ids derived from `--initial-cluster`
//! the way etcd derives them (a hash of the peer URLs and the cluster token), client URLs learnt
//! from each member's published attributes, and raised alarms. The apply thread owns the table;
//! everyone else reads the latest copy from a `watch` channel.
//!
//! The table is kept in `--data-dir/cluster` (a `StoredCluster` record, written to a temporary
//! file, fsynced and renamed), so a restarted member knows the others' client URLs without
//! replaying the entries that published them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use raft::prelude::{ConfChangeType, ConfChangeV2};
use raftkv_proto::etcdserverpb::{AlarmMember, AlarmType, Member};
use raftkv_proto::raftkvpb::StoredCluster;

use crate::config::Config;
use crate::error::{Error, Result};

/// The membership table and the raised alarms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    /// The cluster id.
    pub cluster_id: u64,
    /// Members by id.
    pub members: BTreeMap<u64, Member>,
    /// Raised alarms, in (member, type) order.
    pub alarms: Vec<AlarmMember>,
}

impl Cluster {
    /// The founding table from `--initial-cluster` (no client URLs known yet).
    pub fn bootstrap(cfg: &Config) -> Cluster {
        let members: BTreeMap<u64, Member> = cfg
            .initial_cluster
            .iter()
            .map(|m| {
                let id = member_id(&m.peer_urls, &cfg.initial_cluster_token);
                let member = Member {
                    id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: Vec::new(),
                    is_learner: false,
                };
                (id, member)
            })
            .collect();
        let ids: Vec<u64> = members.keys().copied().collect();
        Cluster {
            cluster_id: cluster_id(&ids, &cfg.initial_cluster_token),
            members,
            alarms: Vec::new(),
        }
    }

    /// The id of the member called `name`.
    pub fn id_of(&self, name: &str) -> Option<u64> {
        self.members.values().find(|m| m.name == name).map(|m| m.id)
    }

    /// Whether `alarm` is raised by any member.
    pub fn has_alarm(&self, alarm: AlarmType) -> bool {
        self.alarms.iter().any(|a| a.alarm == alarm as i32)
    }

    /// Applies a committed membership change. The proposer puts the member it adds or changes in
    /// the change's context (a `StoredCluster` with the cluster id and that member); a change
    /// without one (the bootstrap entries) adds a voter this table may already know. Returns
    /// whether the table changed.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> bool {
        let context = StoredCluster::decode(&cc.context[..]).unwrap_or_default();
        if context.cluster_id != 0 && context.cluster_id != self.cluster_id {
            self.cluster_id = context.cluster_id;
        }
        let before = self.clone();
        for change in &cc.changes {
            let id = change.node_id;
            let described = context.members.iter().find(|m| m.id == id);
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
                    let m = self.members.entry(id).or_insert_with(|| Member {
                        id,
                        ..Default::default()
                    });
                    if let Some(d) = described {
                        if !d.peer_ur_ls.is_empty() {
                            m.peer_ur_ls = d.peer_ur_ls.clone();
                        }
                    }
                    m.is_learner = learner;
                }
                ConfChangeType::RemoveNode => {
                    self.members.remove(&id);
                    self.alarms.retain(|a| a.member_id != id);
                }
            }
        }
        *self != before
    }

    /// Reads the table kept at `path`, or `None` if there is none yet.
    pub fn load(path: &Path) -> Result<Option<Cluster>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::DataDir {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let stored = StoredCluster::decode(&bytes[..]).map_err(|e| Error::DataDir {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Ok(Some(Cluster::from_stored(stored)))
    }

    /// The table as it is persisted (and carried in snapshots).
    pub fn to_stored(&self) -> StoredCluster {
        StoredCluster {
            cluster_id: self.cluster_id,
            members: self.members.values().cloned().collect(),
            alarms: self.alarms.clone(),
        }
    }

    /// The table from its persisted form.
    pub fn from_stored(stored: StoredCluster) -> Cluster {
        Cluster {
            cluster_id: stored.cluster_id,
            members: stored.members.into_iter().map(|m| (m.id, m)).collect(),
            alarms: stored.alarms,
        }
    }

    /// Writes the table to `path` durably (temporary file, fsync, rename, fsync of the dir).
    pub fn save(&self, path: &Path) -> Result<()> {
        let stored = self.to_stored();
        let io = |source| Error::DataDir {
            path: path.to_path_buf(),
            source,
        };
        let tmp = tmp_path(path);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&stored.encode_to_vec()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// A member's id: FNV-1a over its sorted peer URLs and the cluster token (etcd hashes the same
/// inputs with SHA-1), never 0.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Fnv::default();
    for u in urls {
        h.write(u.as_bytes());
    }
    h.write(token.as_bytes());
    h.finish().max(1)
}

/// The cluster id: FNV-1a over the sorted founding member ids and the token, never 0.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Fnv::default();
    for id in ids {
        h.write(&id.to_be_bytes());
    }
    h.write(token.as_bytes());
    h.finish().max(1)
}

/// 64-bit FNV-1a: a stable hash (std's hashers may change between releases, and ids persist).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InitialMember;

    #[test]
    fn ids_are_stable_distinct_and_token_dependent() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "t");
        assert_eq!(a, member_id(&["http://127.0.0.1:2380".into()], "t"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2381".into()], "t"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "u"));
        assert_eq!(cluster_id(&[1, 2], "t"), cluster_id(&[2, 1], "t"));
    }

    #[test]
    fn table_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new("a", dir.path());
        cfg.initial_cluster.push(InitialMember {
            name: "b".into(),
            peer_urls: vec!["http://127.0.0.1:2480".into()],
        });
        let mut c = Cluster::bootstrap(&cfg);
        assert_eq!(c.members.len(), 2);
        assert!(c.id_of("b").is_some());
        c.alarms.push(AlarmMember {
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        });
        let path = dir.path().join("cluster");
        assert!(Cluster::load(&path).unwrap().is_none());
        c.save(&path).unwrap();
        let back = Cluster::load(&path).unwrap().unwrap();
        assert_eq!(back, c);
        assert!(back.has_alarm(AlarmType::Nospace));
    }
}
