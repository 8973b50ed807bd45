//! The node's errors: [`Error`] for what stops a node from starting or running, and the mapping
//! of request refusals onto gRPC statuses with etcd's exact codes and messages (Go clients match
//! errors by message text).

use tonic::{Code, Status};

/// Why a node could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid; the message names the flag.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory cannot be created, opened or locked.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory at fault.
        path: std::path::PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// A listen address is taken or cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The MVCC store failed.
    #[error("store: {0}")]
    Store(#[from] raftkv_mvcc::Error),
    /// The Raft log or node failed.
    #[error("raft: {0}")]
    Raft(#[from] raftkv_raft::Error),
    /// The node stopped by itself (a fatal store or log failure); the message says why.
    #[error("node stopped: {0}")]
    Stopped(String),
    /// A gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A backup file is damaged or not in a shape `snapshot restore` accepts.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

/// The node's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// etcd's message for a request above `--max-request-bytes`.
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
/// etcd's message for writes refused under the NOSPACE alarm.
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// etcd's message for a request to a stopping server.
pub const STOPPED: &str = "etcdserver: server stopped";

/// The gRPC status etcd returns for a store refusal.
pub fn request_status(e: raftkv_mvcc::RequestError) -> Status {
    use raftkv_mvcc::RequestError as R;
    let code = match e {
        R::Compacted | R::FutureRevision | R::LeaseTtlTooLarge => Code::OutOfRange,
        R::LeaseNotFound => Code::NotFound,
        R::LeaseExists => Code::FailedPrecondition,
        R::EmptyKey
        | R::KeyNotFound
        | R::ValueProvided
        | R::LeaseProvided
        | R::TooManyOps
        | R::DuplicateKey
        | R::InvalidSortOption => Code::InvalidArgument,
    };
    Status::new(code, e.to_string())
}

/// The gRPC status for a store error: the etcd refusal, or Internal for a broken store.
pub fn store_status(e: &raftkv_mvcc::Error) -> Status {
    match e.as_request() {
        Some(r) => request_status(r),
        None => {
            tracing::error!(error = %e, "store failure while serving a request");
            Status::internal(format!("etcdserver: {e}"))
        }
    }
}

/// The gRPC status etcd returns when Raft could not serve a request.
pub fn raft_status(e: raftkv_raft::RequestError) -> Status {
    use raftkv_raft::RequestError as R;
    match e {
        R::Stopped => Status::unavailable(STOPPED),
        other => Status::unavailable(other.to_string()),
    }
}

/// "etcdserver: request is too large".
pub fn too_large() -> Status {
    Status::invalid_argument(REQUEST_TOO_LARGE)
}

/// "etcdserver: mvcc: database space exceeded".
pub fn no_space() -> Status {
    Status::resource_exhausted(NO_SPACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_etcds() {
        use raftkv_mvcc::RequestError as R;
        let s = request_status(R::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(request_status(R::LeaseNotFound).code(), Code::NotFound);
        assert_eq!(request_status(R::EmptyKey).code(), Code::InvalidArgument);
        let s = raft_status(raftkv_raft::RequestError::NoLeader);
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "etcdserver: no leader")
        );
        assert_eq!(no_space().code(), Code::ResourceExhausted);
    }
}
