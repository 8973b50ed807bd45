//! Errors of the write-ahead log and of [`WalStorage`](crate::WalStorage).
//!
//! [`Error`] separates what a caller can expect and handle (a read below the compacted index, a
//! snapshot older than the log) from what is fatal for the node (I/O failure, corruption in the
//! middle of the log, a failed fsync). [`Error::is_fatal`] tells them apart; `From<Error> for
//! raft::Error` maps the expected ones onto raft-rs's own [`raft::StorageError`] variants.

use std::io;
use std::path::PathBuf;

/// Result of the WAL and storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a stretch of a segment file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// Fewer bytes than a record header remain.
    #[error("incomplete record header")]
    IncompleteHeader,
    /// The header's own checksum does not match, or its length is out of range.
    #[error("bad record header")]
    BadHeader,
    /// The header is valid but the record runs past the end of the file.
    #[error("record of {len} bytes runs past the end of the file")]
    IncompleteRecord {
        /// Body length the header announces.
        len: u32,
    },
    /// The record's body fails its CRC32.
    #[error("record checksum mismatch")]
    Checksum,
    /// The record has a valid checksum but a kind this version does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The record has a valid checksum but its payload does not decode.
    #[error("malformed {kind} record: {reason}")]
    Malformed {
        /// The record kind.
        kind: &'static str,
        /// What failed to decode.
        reason: String,
    },
    /// A segment does not start with a segment header record.
    #[error("segment does not start with a header record")]
    MissingHeader,
    /// The segment header disagrees with the file name or with the segments before it.
    #[error("segment header mismatch: {0}")]
    HeaderMismatch(String),
    /// An entry record does not continue the log.
    #[error("entry {index} does not continue the log ending at {last_index}")]
    LogGap {
        /// Index of the entry read.
        index: u64,
        /// Last index of the log before it.
        last_index: u64,
    },
}

/// Errors of the write-ahead log and of [`WalStorage`](crate::WalStorage).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a WAL file or directory failed.
    #[error("WAL I/O error: {op} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"write"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record in the middle of the WAL (or one read back later) is corrupt. A corrupt *tail* is
    /// not an error: [`Wal::open`](crate::wal::Wal::open) truncates it.
    #[error("corrupt WAL record in {path} at byte offset {offset}: {damage}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged record in that file.
        offset: u64,
        /// What is wrong.
        damage: Damage,
    },
    /// A file in the WAL directory ends in `.wal` but its name is not a segment name.
    #[error("unexpected file name in WAL directory: {path}")]
    BadSegmentName {
        /// The file.
        path: PathBuf,
    },
    /// Segment sequence numbers are not consecutive: a segment file is missing.
    #[error("WAL segment missing: {path} follows segment {previous_seq}")]
    MissingSegment {
        /// The segment found after the gap.
        path: PathBuf,
        /// Sequence number of the segment before the gap.
        previous_seq: u64,
    },
    /// Replay ended with live entries that no remaining segment holds (a segment was deleted
    /// while it still held entries).
    #[error("WAL is missing entries {first}..={last}")]
    MissingEntries {
        /// First missing index.
        first: u64,
        /// Last missing index.
        last: u64,
    },
    /// The hard state's commit index points past the last entry of the log. raft-rs 0.7 panics on
    /// such a state ("hs.commit is out of range"), so it is refused when written and when read.
    #[error("hard state commit {commit} is beyond the last log index {last_index}")]
    CommitBeyondLog {
        /// The commit index.
        commit: u64,
        /// The last index of the log.
        last_index: u64,
    },
    /// An append would overwrite entries that were compacted or covered by a snapshot.
    #[error("append at index {index} overwrites compacted entries (first index {first_index})")]
    AppendCompacted {
        /// First index of the append.
        index: u64,
        /// First index of the log.
        first_index: u64,
    },
    /// An append would leave a gap after the last entry.
    #[error("append at index {index} leaves a gap after the last index {last_index}")]
    AppendGap {
        /// First index of the append.
        index: u64,
        /// Last index of the log.
        last_index: u64,
    },
    /// The entries of one append do not have consecutive indexes.
    #[error("appended entries are not consecutive: {previous} then {next}")]
    NotConsecutive {
        /// An entry's index.
        previous: u64,
        /// The index of the entry after it.
        next: u64,
    },
    /// A compaction asks to discard entries the log does not have.
    #[error("compact to {to} is beyond the last index {last_index}")]
    CompactBeyondLog {
        /// The requested first index after compaction.
        to: u64,
        /// Last index of the log.
        last_index: u64,
    },
    /// The requested index is below the first index (compacted or covered by a snapshot).
    #[error("log index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The requested index.
        index: u64,
        /// First index of the log.
        first_index: u64,
    },
    /// The requested index is past the last index.
    #[error("log index {index} is unavailable (last index {last_index})")]
    Unavailable {
        /// The requested index.
        index: u64,
        /// Last index of the log.
        last_index: u64,
    },
    /// A snapshot to install is older than the log's first index.
    #[error("snapshot at index {index} is out of date (first index {first_index})")]
    SnapshotOutOfDate {
        /// The snapshot's index.
        index: u64,
        /// First index of the log.
        first_index: u64,
    },
    /// A record is larger than the WAL accepts.
    #[error("WAL record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The record's body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A protobuf message failed to encode.
    #[error("encoding a {what} failed: {source}")]
    Encode {
        /// The message type.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: protobuf::ProtobufError,
    },
    /// A configuration value is invalid.
    #[error("invalid WAL configuration: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An earlier write or fsync failed; the WAL refuses further writes because the state of the
    /// file is unknown (a failed fsync cannot be retried safely). Reopen it to recover.
    #[error("WAL is unusable after an earlier I/O failure; reopen it")]
    Failed,
    /// raft-rs refused a call (for example `ProposalDropped`: no leader to take a proposal).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A node setting is invalid.
    #[error("invalid node configuration: {0}")]
    NodeConfig(String),
    /// A snapshot message arrived before the state it announces was installed.
    #[error("snapshot at index {needed} announced but the state machine is at {applied}")]
    SnapshotNotInstalled {
        /// The snapshot's index.
        needed: u64,
        /// The state machine's applied index.
        applied: u64,
    },
    /// The state machine could not persist its state.
    #[error("state machine: {0}")]
    StateMachine(String),
    /// A committed conf change entry does not decode.
    #[error("undecodable conf change at index {index}: {source}")]
    ConfChange {
        /// The entry's index.
        index: u64,
        /// The decode error.
        #[source]
        source: protobuf::ProtobufError,
    },
}

/// Why a proposal or a read did not complete; `Display` is etcd's message where etcd has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Raft has no leader to take the request.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request did not commit (or the read index did not arrive) before its deadline.
    #[error("etcdserver: request timed out")]
    TimedOut,
    /// Leadership moved while the request waited for the leader (a ReadIndex round).
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The node stopped before the request completed.
    #[error("etcdserver: server stopped")]
    Stopped,
}

impl Error {
    /// True for errors after which the node must stop: I/O failures, corruption, missing data.
    /// False for refusals of a single request that leave the log unchanged.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Error::AppendCompacted { .. }
                | Error::AppendGap { .. }
                | Error::NotConsecutive { .. }
                | Error::CompactBeyondLog { .. }
                | Error::Compacted { .. }
                | Error::Unavailable { .. }
                | Error::SnapshotOutOfDate { .. }
                | Error::CommitBeyondLog { .. }
                | Error::RecordTooLarge { .. }
                | Error::InvalidConfig { .. }
                | Error::NodeConfig(_)
                | Error::Raft(
                    raft::Error::ProposalDropped
                        | raft::Error::StepLocalMsg
                        | raft::Error::StepPeerNotFound
                )
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<Error> for raft::StorageError {
    fn from(e: Error) -> raft::StorageError {
        match e {
            Error::Compacted { .. } => raft::StorageError::Compacted,
            Error::Unavailable { .. } => raft::StorageError::Unavailable,
            Error::SnapshotOutOfDate { .. } => raft::StorageError::SnapshotOutOfDate,
            other => raft::StorageError::Other(Box::new(other)),
        }
    }
}

impl From<Error> for raft::Error {
    fn from(e: Error) -> raft::Error {
        raft::Error::Store(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_onto_raft_storage_errors() {
        let e: raft::Error = Error::Compacted {
            index: 1,
            first_index: 2,
        }
        .into();
        assert_eq!(e, raft::Error::Store(raft::StorageError::Compacted));
        let e: raft::Error = Error::Unavailable {
            index: 3,
            last_index: 2,
        }
        .into();
        assert_eq!(e, raft::Error::Store(raft::StorageError::Unavailable));
        let e: raft::Error = Error::SnapshotOutOfDate {
            index: 1,
            first_index: 2,
        }
        .into();
        assert_eq!(e, raft::Error::Store(raft::StorageError::SnapshotOutOfDate));
        let e: raft::Error = Error::Failed.into();
        assert!(matches!(
            e,
            raft::Error::Store(raft::StorageError::Other(_))
        ));
        assert!(Error::Failed.is_fatal());
        assert!(!Error::AppendGap {
            index: 5,
            last_index: 3
        }
        .is_fatal());
    }

    #[test]
    fn corrupt_names_file_and_offset() {
        let e = Error::Corrupt {
            path: PathBuf::from("/d/0000000000000001-0000000000000001.wal"),
            offset: 4242,
            damage: Damage::Checksum,
        };
        let s = e.to_string();
        assert!(s.contains("0000000000000001-0000000000000001.wal"), "{s}");
        assert!(s.contains("4242"), "{s}");
    }
}
