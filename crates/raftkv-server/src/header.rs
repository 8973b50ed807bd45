//! Response headers: every etcd response carries the cluster id, the answering member's id, the
//! store revision the answer reflects and the current Raft term.

use std::sync::Arc;

use raftkv_proto::etcdserverpb::ResponseHeader;
use raftkv_raft::Status;
use tokio::sync::watch;

use crate::members::Cluster;

/// Stamps headers for one member. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Headers {
    cluster_id: ClusterId,
    member_id: u64,
    status: watch::Receiver<Status>,
}

/// Where the cluster id comes from: fixed, or the membership table (a member that joined an
/// existing cluster learns the id from the change that added it).
#[derive(Clone, Debug)]
enum ClusterId {
    Fixed(u64),
    Table(watch::Receiver<Arc<Cluster>>),
}

impl Headers {
    /// Headers of `member_id` in `cluster_id`; the term is read from the node's `status`.
    pub fn new(cluster_id: u64, member_id: u64, status: watch::Receiver<Status>) -> Self {
        Headers {
            cluster_id: ClusterId::Fixed(cluster_id),
            member_id,
            status,
        }
    }

    /// Headers of `member_id`, with the cluster id read from the membership table.
    pub fn from_table(
        cluster: watch::Receiver<Arc<Cluster>>,
        member_id: u64,
        status: watch::Receiver<Status>,
    ) -> Self {
        Headers {
            cluster_id: ClusterId::Table(cluster),
            member_id,
            status,
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        match &self.cluster_id {
            ClusterId::Fixed(id) => *id,
            ClusterId::Table(t) => t.borrow().cluster_id,
        }
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// The node's latest Raft status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A header at store revision `revision`.
    pub fn at(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.member_id,
            revision,
            raft_term: self.status.borrow().term,
        }
    }

    /// Fills the ids and term into a header the store produced (keeping its revision), or
    /// creates one at revision 0.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.at(revision));
    }
}
