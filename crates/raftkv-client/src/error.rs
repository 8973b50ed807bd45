//! [`Error`]: everything a call can fail with. Server refusals are recognised by etcd's exact
//! message text, as Go's `rpctypes` does, so they arrive typed whichever server sent them.

use tonic::{Code, Status};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The revision asked for has been compacted away. `compact_revision` is the compaction
    /// point when the server says it (watches do), 0 when it does not (ranges, compactions).
    #[error("etcdserver: mvcc: required revision has been compacted (compact revision {compact_revision})")]
    Compacted {
        /// The oldest revision still available is `compact_revision`; 0 if unknown.
        compact_revision: i64,
    },
    /// The revision asked for is beyond the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist (never granted, expired or revoked).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The requested lease TTL is above the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// The request has an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put with `ignore_value` or `ignore_lease` named a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A transaction has more operations than the server allows (128 by default).
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A transaction branch writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The request is larger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The NOSPACE alarm is raised: writes are refused until it is disarmed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The member has no Raft leader. Reads and idempotent calls are retried on this.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The leader changed while the request was in flight; its outcome is unknown for writes.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The server gave up waiting for Raft; the outcome of a write is unknown.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The client-side deadline ([`ClientOptions::request_timeout`](crate::ClientOptions))
    /// passed; the outcome of a write is unknown.
    #[error("request deadline exceeded (client side)")]
    DeadlineExceeded,
    /// Any other `Unavailable` answer (server stopping, connection refused or reset).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Any other `InvalidArgument` answer.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A watch was cancelled by the server for another reason than compaction.
    #[error("watch cancelled by the server: {0}")]
    WatchCanceled(String),
    /// A watch (or an election observer) ended because the client stopped it.
    #[error("watch closed")]
    WatchClosed,
    /// The session's lease was lost while a lock or an election was waiting or held.
    #[error("session expired: its lease is gone")]
    SessionExpired,
    /// Proclaim or resign by a candidate that is no longer the leader.
    #[error("election: not leader")]
    NotLeader,
    /// An endpoint could not be parsed, or no endpoint was given.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An option is out of range; the message names it.
    #[error("invalid client option: {0}")]
    InvalidOption(String),
    /// Any other gRPC status, unchanged.
    #[error("gRPC status: {0}")]
    Status(Status),
    /// A transport-level failure outside a call (building a channel).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for errors a read or an idempotent call may be retried on (possibly elsewhere):
    /// etcd's `Unavailable` family (no leader, leader changed, request timed out, connection
    /// refused) and the client's own deadline.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NoLeader
                | Error::LeaderChanged
                | Error::Timeout
                | Error::DeadlineExceeded
                | Error::Unavailable(_)
        )
    }
}

impl From<Status> for Error {
    /// Maps by etcd's exact message first (as Go's `rpctypes.Error` does), then by code.
    fn from(s: Status) -> Self {
        match s.message() {
            "etcdserver: mvcc: required revision has been compacted" => {
                return Error::Compacted {
                    compact_revision: 0,
                }
            }
            "etcdserver: mvcc: required revision is a future revision" => {
                return Error::FutureRevision
            }
            "etcdserver: requested lease not found" => return Error::LeaseNotFound,
            "etcdserver: lease already exists" => return Error::LeaseExists,
            "etcdserver: too large lease TTL" => return Error::LeaseTtlTooLarge,
            "etcdserver: key is not provided" => return Error::EmptyKey,
            "etcdserver: key not found" => return Error::KeyNotFound,
            "etcdserver: too many operations in txn request" => return Error::TooManyOps,
            "etcdserver: duplicate key given in txn request" => return Error::DuplicateKey,
            "etcdserver: request is too large" => return Error::RequestTooLarge,
            "etcdserver: mvcc: database space exceeded" => return Error::NoSpace,
            "etcdserver: no leader" => return Error::NoLeader,
            "etcdserver: leader changed" => return Error::LeaderChanged,
            "etcdserver: request timed out" => return Error::Timeout,
            _ => {}
        }
        match s.code() {
            Code::Unavailable => Error::Unavailable(s.message().to_owned()),
            Code::InvalidArgument => Error::InvalidArgument(s.message().to_owned()),
            _ => Error::Status(s),
        }
    }
}

/// True if the call failed while connecting, so the request never left the client: the only
/// failure after which a write may be retried.
pub(crate) fn never_sent(s: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// True for statuses after which a stream (watch, keep-alive) is re-opened, possibly on
/// another endpoint: the server is going away or the connection broke.
pub(crate) fn stream_transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_messages_map_to_variants() {
        let e = Error::from(Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(matches!(
            e,
            Error::Compacted {
                compact_revision: 0
            }
        ));
        let e = Error::from(Status::not_found("etcdserver: requested lease not found"));
        assert!(matches!(e, Error::LeaseNotFound));
        let e = Error::from(Status::unavailable("etcdserver: no leader"));
        assert!(matches!(e, Error::NoLeader) && e.is_unavailable());
        let e = Error::from(Status::unavailable("etcdserver: server stopped"));
        assert!(matches!(e, Error::Unavailable(_)) && e.is_unavailable());
        let e = Error::from(Status::invalid_argument("bad"));
        assert!(matches!(e, Error::InvalidArgument(ref m) if m == "bad"));
        let e = Error::from(Status::permission_denied("no"));
        assert!(matches!(e, Error::Status(_)) && !e.is_unavailable());
    }
}
