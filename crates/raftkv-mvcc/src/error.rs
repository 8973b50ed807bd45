//! Errors of the store: the expected ones a request can get (with etcd's exact messages, since
//! clients match on the text) kept apart from the fatal ones (disk, corruption).

use std::path::PathBuf;

/// An error a well-formed request can legitimately get. `Display` is etcd's exact message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The requested revision was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store's.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist, or an empty txn op.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More than the allowed number of operations in one txn.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// The same key written twice (or written and deleted) in one txn branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// An unknown sort order or sort target.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// The lease does not exist (or is the zero lease).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with this id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A TTL above the maximum of 9,000,000,000 seconds.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
}

/// Everything that can go wrong in the store. [`Error::Request`] is expected and leaves the
/// store unchanged; every other variant is fatal for this store handle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was refused; nothing changed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// sled failed (I/O, or its own corruption check).
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// A record on disk does not decode.
    #[error("corrupt store at {path}: {what}")]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What failed to decode.
        what: String,
    },
    /// A snapshot stream is truncated, fails its checksum or does not decode.
    #[error("bad snapshot stream: {0}")]
    BadSnapshot(String),
    /// Reading or writing a snapshot stream failed.
    #[error("snapshot I/O: {0}")]
    SnapshotIo(#[from] std::io::Error),
    /// The store directory could not be read or changed.
    #[error("store directory {path}: {source}")]
    Dir {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A defragmentation failed part way and was abandoned; the store goes on serving from its
    /// old copy, unchanged. Not fatal.
    #[error("defragment abandoned: {0}")]
    Defragment(Box<Error>),
    /// A configuration value is out of range.
    #[error("invalid store config: {0}")]
    Config(String),
    /// An earlier commit failed, so memory is ahead of disk: the store refuses further work and
    /// must be reopened (which replays from the last committed consistent index).
    #[error("store is failed after an earlier storage error; reopen it")]
    Failed,
}

impl Error {
    /// The request error, if this is an expected refusal rather than a fatal failure.
    pub fn as_request(&self) -> Option<RequestError> {
        match self {
            Error::Request(e) => Some(*e),
            _ => None,
        }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_etcds() {
        // Go clients map errors by these exact strings.
        let cases = [
            (
                RequestError::Compacted,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                RequestError::FutureRevision,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (RequestError::EmptyKey, "etcdserver: key is not provided"),
            (
                RequestError::DuplicateKey,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                RequestError::TooManyOps,
                "etcdserver: too many operations in txn request",
            ),
            (
                RequestError::LeaseNotFound,
                "etcdserver: requested lease not found",
            ),
            (
                RequestError::LeaseTtlTooLarge,
                "etcdserver: too large lease TTL",
            ),
        ];
        for (e, msg) in cases {
            assert_eq!(e.to_string(), msg);
            assert_eq!(Error::from(e).to_string(), msg);
        }
    }
}
