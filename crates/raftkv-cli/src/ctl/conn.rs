//! The connection the etcdctl-like commands share: an endpoint list (`--endpoints` or
//! `RAFTKV_ENDPOINTS`; bare `host:port` or `http://` URLs), dialled in order with
//! `--dial-timeout`, every unary call bounded by `--command-timeout`, and reads retried on the
//! next endpoint when one is unreachable or answers `Unavailable` (as clientv3 retries reads).
//!
//! Deliberately small and self-contained: the commands only see [`Conn::call`] and the
//! channel, so it can be swapped for `raftkv-client` once that crate lands.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{CtlError, GlobalArgs, EXIT_ERROR};

/// The message etcdctl prints when a dial or a command runs out of time.
pub(crate) const DEADLINE: &str = "context deadline exceeded";

/// Whether a call may be retried on another endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads and other idempotent calls: retried on `Unavailable`.
    Safe,
    /// Writes: sent once.
    Never,
}

/// A connection to one of the configured endpoints.
pub(crate) struct Conn {
    /// The endpoints as URLs (`http://` added where missing).
    urls: Vec<String>,
    /// Which endpoint `channel` talks to.
    current: usize,
    channel: Channel,
    dial_timeout: Duration,
    command_timeout: Duration,
}

/// Adds `http://` to a bare `host:port`.
pub(crate) fn to_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Dials one endpoint.
pub(crate) async fn dial(endpoint: &str, timeout: Duration) -> Result<Channel, CtlError> {
    let ep = Endpoint::from_shared(to_url(endpoint))
        .map_err(|e| CtlError::new(EXIT_ERROR, format!("bad endpoint {endpoint:?}: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    match tokio::time::timeout(timeout, ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(_)) | Err(_) => Err(CtlError::new(EXIT_ERROR, DEADLINE)),
    }
}

impl Conn {
    /// Dials the endpoints in order and keeps the first that answers.
    pub(crate) async fn connect(g: &GlobalArgs) -> Result<Conn, CtlError> {
        let urls: Vec<String> = g.endpoint_list().iter().map(|e| to_url(e)).collect();
        if urls.is_empty() {
            return Err(CtlError::new(EXIT_ERROR, "no endpoints given"));
        }
        let mut last = CtlError::new(EXIT_ERROR, DEADLINE);
        for (i, url) in urls.iter().enumerate() {
            match dial(url, g.dial_timeout).await {
                Ok(channel) => {
                    return Ok(Conn {
                        current: i,
                        channel,
                        urls,
                        dial_timeout: g.dial_timeout,
                        command_timeout: g.command_timeout,
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The channel to the current endpoint (for streams, which are not retried).
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The `--command-timeout`.
    pub(crate) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Runs one unary call with the command timeout. A `Retry::Safe` call that finds its
    /// endpoint unreachable or `Unavailable` moves on to the next endpoint, each tried once.
    pub(crate) async fn call<T, F, Fut>(&mut self, retry: Retry, mut f: F) -> Result<T, CtlError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let mut tries = 0;
        loop {
            let result = tokio::time::timeout_at(deadline, f(self.channel.clone())).await;
            let status = match result {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => return Err(CtlError::new(EXIT_ERROR, DEADLINE)),
            };
            tries += 1;
            let retryable = retry == Retry::Safe
                && status.code() == Code::Unavailable
                && tries < self.urls.len();
            if !retryable {
                return Err(status.into());
            }
            // Move on to the next endpoint that dials.
            let mut next = None;
            for step in 1..self.urls.len() {
                let i = (self.current + step) % self.urls.len();
                if let Ok(ch) = dial(&self.urls[i], self.dial_timeout).await {
                    next = Some((i, ch));
                    break;
                }
            }
            match next {
                Some((i, ch)) => {
                    self.current = i;
                    self.channel = ch;
                }
                None => return Err(status.into()),
            }
        }
    }
}

impl From<Status> for CtlError {
    fn from(s: Status) -> CtlError {
        let message = match s.code() {
            Code::DeadlineExceeded if s.message().is_empty() => DEADLINE.to_string(),
            _ if s.message().is_empty() => format!("{:?}", s.code()),
            _ => s.message().to_string(),
        };
        CtlError::new(EXIT_ERROR, message)
    }
}
