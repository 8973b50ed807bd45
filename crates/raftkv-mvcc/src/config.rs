//! Store configuration.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// How a [`crate::Store`] is opened. Build it with [`Config::new`] and adjust fields; the store
/// calls [`Config::validate`] when it opens.
#[derive(Clone, Debug)]
pub struct Config {
    /// The sled directory (`--data-dir/db` in a node).
    pub path: PathBuf,
    /// Bytes of sled page cache. Live values are held in memory by the key index, so sled's cache
    /// only serves history reads; keep it small.
    pub cache_capacity: u64,
    /// How often sled writes its buffers to disk in the background; `None` only on explicit
    /// [`crate::Store::sync`]. The store never needs sled to be durable on the write path: after a
    /// crash the node replays its Raft log above the consistent index.
    pub flush_every_ms: Option<u64>,
    /// Applied changes are buffered in memory and committed to sled as one atomic batch once this
    /// many records are pending (or on [`crate::Store::commit`]).
    pub commit_records: usize,
    /// ... or once this many bytes of records are pending.
    pub commit_bytes: usize,
    /// Granted TTLs below this are raised to it (etcd: ceil(1.5 x election timeout)).
    pub min_lease_ttl: i64,
    /// The most operations a txn may hold (etcd's `--max-txn-ops`, 128 by default).
    pub max_txn_ops: usize,
}

impl Config {
    /// Defaults for a store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
            path: path.into(),
            cache_capacity: 64 << 20,
            flush_every_ms: Some(500),
            commit_records: 1000,
            commit_bytes: 4 << 20,
            min_lease_ttl: 2,
            max_txn_ops: 128,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.path.as_os_str().is_empty() {
            return bad("path is empty");
        }
        if self.cache_capacity < (1 << 20) {
            return bad("cache_capacity must be at least 1 MiB");
        }
        if self.commit_records == 0 || self.commit_bytes == 0 {
            return bad("commit_records and commit_bytes must be positive");
        }
        if self.min_lease_ttl < 1 {
            return bad("min_lease_ttl must be at least 1 second");
        }
        if self.max_txn_ops == 0 {
            return bad("max_txn_ops must be positive");
        }
        if self.flush_every_ms == Some(0) {
            return bad("flush_every_ms must be positive (or None)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert!(Config::new("/tmp/x").validate().is_ok());
        let mut c = Config::new("/tmp/x");
        c.max_txn_ops = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("max_txn_ops"), "{err}");
        let mut c = Config::new("");
        c.cache_capacity = 1;
        assert!(c.validate().is_err());
    }
}
