//! Why a peer transport could not be set up. Failures at run time (a peer down, a broken
//! stream) are not errors to the caller: Raft retransmits, so they are logged and retried.

/// A peer transport refused its configuration or a peer's addresses.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A peer URL does not parse as a URI.
    #[error("peer {peer}: invalid URL {url:?}: {source}")]
    InvalidUrl {
        /// The peer's Raft id.
        peer: u64,
        /// The URL as given.
        url: String,
        /// Why it was refused.
        source: tonic::transport::Error,
    },
    /// A peer was given without any URL.
    #[error("peer {peer}: no URL")]
    NoUrl {
        /// The peer's Raft id.
        peer: u64,
    },
    /// A [`super::TransportConfig`] setting is out of range.
    #[error("invalid transport configuration: {0}")]
    Config(String),
}

/// `e` and its sources joined with ": " (tonic's transport errors say little on their own).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
