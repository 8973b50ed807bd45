//! Response headers: every etcd response carries the cluster id, the answering member's id, the
//! store revision the answer reflects and the current Raft term.

use raftkv_proto::etcdserverpb::ResponseHeader;
use raftkv_raft::Status;
use tokio::sync::watch;

/// Stamps headers for one member. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Headers {
    cluster_id: u64,
    member_id: u64,
    status: watch::Receiver<Status>,
}

impl Headers {
    /// Headers of `member_id` in `cluster_id`; the term is read from the node's `status`.
    pub fn new(cluster_id: u64, member_id: u64, status: watch::Receiver<Status>) -> Self {
        Headers {
            cluster_id,
            member_id,
            status,
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
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
            cluster_id: self.cluster_id,
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
