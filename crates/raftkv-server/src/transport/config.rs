//! Tuning of the peer transport.

use std::time::Duration;

use super::error::TransportError;
use super::MAX_MESSAGE_BYTES;

/// Settings of a [`super::PeerTransport`]. The defaults suit a LAN cluster.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Messages queued per peer before new ones are dropped (Raft retransmits).
    pub queue_len: usize,
    /// A batch stops taking queued messages once its encoded size reaches this many bytes.
    pub max_batch_bytes: usize,
    /// How long dialling one peer URL may take.
    pub connect_timeout: Duration,
    /// First wait before re-dialling a peer whose connection or stream broke.
    pub backoff_min: Duration,
    /// The wait doubles after each failure up to this.
    pub backoff_max: Duration,
    /// HTTP/2 keep-alive ping interval on peer connections (also while idle).
    pub keep_alive_interval: Duration,
    /// A connection whose keep-alive ping is unanswered this long is closed and re-dialled.
    pub keep_alive_timeout: Duration,
    /// Size of one snapshot chunk's data.
    pub snapshot_chunk_bytes: usize,
    /// Snapshot chunks buffered between the writing thread and the stream.
    pub snapshot_queue_chunks: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            queue_len: 1024,
            max_batch_bytes: 4 << 20,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(3),
            keep_alive_timeout: Duration::from_secs(5),
            snapshot_chunk_bytes: 1 << 20,
            snapshot_queue_chunks: 4,
        }
    }
}

impl TransportConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |why: &str| Err(TransportError::Config(why.to_string()));
        if self.queue_len == 0 {
            return bad("queue_len must be positive");
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive");
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_timeout.is_zero() {
            return bad("keep-alive interval and timeout must be positive");
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > MAX_MESSAGE_BYTES / 4 {
            return bad("max_batch_bytes must be positive and well below MAX_MESSAGE_BYTES");
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > MAX_MESSAGE_BYTES / 4 {
            return bad("snapshot_chunk_bytes must be positive and well below MAX_MESSAGE_BYTES");
        }
        if self.snapshot_queue_chunks == 0 {
            return bad("snapshot_queue_chunks must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        TransportConfig::default().validate().unwrap();
        let cfg = TransportConfig {
            backoff_min: Duration::from_secs(5),
            ..TransportConfig::default()
        };
        assert!(matches!(cfg.validate(), Err(TransportError::Config(_))));
        let cfg = TransportConfig {
            queue_len: 0,
            ..TransportConfig::default()
        };
        assert!(cfg.validate().is_err());
    }
}
