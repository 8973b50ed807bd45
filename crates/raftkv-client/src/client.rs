//! [`Client`]: the endpoint list, one lazily connected tonic `Channel` per endpoint, failover
//! and the retry policy every call goes through.
//!
//! # Retry policy
//! - *Safe* calls (Range, Status, MemberList, LeaseTimeToLive, LeaseLeases, keep-alives) are
//!   retried on etcd's `Unavailable` family (no leader, leader changed, request timed out,
//!   server stopped, connection refused) and on the client's own per-attempt timeout, on the
//!   next endpoint, with exponential backoff, until [`ClientOptions::retry_deadline`].
//! - *Writes* (Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke) are retried only when the
//!   connection could not be made, i.e. the request never left the client. Any other failure is
//!   returned: the write may or may not have been applied.
//! - Any `Unavailable` answer or connect failure moves the client to the next endpoint.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv_proto::etcdserverpb::{
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient, MemberListRequest,
    MemberListResponse, StatusRequest, StatusResponse,
};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::{never_sent, Error, Result};

/// Settings of a [`Client`]. `Default` gives etcd-like values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Time allowed to open a TCP connection to one endpoint.
    pub connect_timeout: Duration,
    /// Client-side timeout of one attempt of a unary call (`None`: no timeout). Streams are not
    /// affected. A write that hits it fails with [`Error::DeadlineExceeded`] (outcome unknown).
    pub request_timeout: Option<Duration>,
    /// Total time a safe call keeps retrying before its last error is returned.
    pub retry_deadline: Duration,
    /// First backoff between retries; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Largest backoff between retries (also used by watch and keep-alive reconnects).
    pub backoff_max: Duration,
    /// Send writes (and lease grants, revokes and keep-alives) to the Raft leader's endpoint,
    /// found with Maintenance.Status on every endpoint, instead of the current endpoint. Saves
    /// the follower's forwarding hop; the leader is re-discovered after any failure.
    pub prefer_leader: bool,
    /// HTTP/2 keep-alive ping interval on each connection (`None`: off). Detects dead peers on
    /// idle watch and keep-alive streams.
    pub keep_alive_interval: Option<Duration>,
    /// How long a keep-alive ping may go unanswered before the connection is closed.
    pub keep_alive_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Some(Duration::from_secs(10)),
            retry_deadline: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            prefer_leader: false,
            keep_alive_interval: Some(Duration::from_secs(10)),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }
}

impl ClientOptions {
    /// Checks that every duration is usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidOption(format!("{what} must be positive")));
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout");
        }
        if self.request_timeout.is_some_and(|t| t.is_zero()) {
            return bad("request_timeout");
        }
        if self.backoff_initial.is_zero() {
            return bad("backoff_initial");
        }
        if self.backoff_max < self.backoff_initial {
            return Err(Error::InvalidOption(
                "backoff_max must be at least backoff_initial".into(),
            ));
        }
        if self.keep_alive_interval.is_some_and(|t| t.is_zero()) {
            return bad("keep_alive_interval");
        }
        Ok(())
    }
}

/// A handle on a raftkv (or etcd) cluster. Cheap to clone: clones share the channels and the
/// endpoint choice. Must be created inside a Tokio runtime.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What every clone shares. The endpoint choice and the known leader are atomics: no lock is
/// ever taken on a call path.
struct Inner {
    endpoints: Vec<(String, Channel)>,
    /// Index of the endpoint calls go to.
    current: AtomicUsize,
    /// Index of the leader's endpoint, [`UNKNOWN`] until discovered or after a failure.
    leader: AtomicUsize,
    opts: ClientOptions,
}

const UNKNOWN: usize = usize::MAX;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("current", &self.inner.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Whether a call may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// Safe to repeat: retried on `Unavailable`.
    Safe,
    /// May change state: retried only if never sent; goes to the leader if preferred.
    Write,
}

/// Exponential backoff bounded by the options.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(opts: &ClientOptions) -> Self {
        Backoff {
            next: opts.backoff_initial,
            max: opts.backoff_max,
        }
    }

    /// The next pause (doubling up to the maximum).
    pub(crate) fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self, opts: &ClientOptions) {
        self.next = opts.backoff_initial;
    }
}

/// `host:port` becomes `http://host:port`; URLs are kept.
fn normalize(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

impl Client {
    /// A client for `endpoints` (`http://host:port` or `host:port`). Connections are opened
    /// lazily, so this succeeds even if no endpoint is up yet; the first call finds one.
    pub async fn connect(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        opts: ClientOptions,
    ) -> Result<Client> {
        opts.validate()?;
        let mut eps = Vec::new();
        for e in endpoints {
            let given: String = e.into();
            let url = normalize(given.trim());
            let invalid = |reason: String| Error::InvalidEndpoint {
                endpoint: given.clone(),
                reason,
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| invalid(e.to_string()))?
                .connect_timeout(opts.connect_timeout)
                .tcp_nodelay(true);
            if let Some(i) = opts.keep_alive_interval {
                ep = ep
                    .http2_keep_alive_interval(i)
                    .keep_alive_timeout(opts.keep_alive_timeout)
                    .keep_alive_while_idle(true);
            }
            eps.push((url, ep.connect_lazy()));
        }
        if eps.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given".into(),
            });
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: eps,
                current: AtomicUsize::new(0),
                leader: AtomicUsize::new(UNKNOWN),
                opts,
            }),
        })
    }

    /// The endpoints, as normalised URLs, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The URL of the endpoint calls currently go to.
    pub fn current_endpoint(&self) -> String {
        self.inner.endpoints[self.current()].0.clone()
    }

    /// The channel of the current endpoint, for services this crate does not wrap (build any
    /// `raftkv_proto` tonic client on it). Calls made on it get no failover.
    pub fn channel(&self) -> Channel {
        self.inner.endpoints[self.current()].1.clone()
    }

    /// The channel of endpoint `index` (in [`endpoints`](Self::endpoints) order), if any.
    pub fn endpoint_channel(&self, index: usize) -> Option<Channel> {
        self.inner.endpoints.get(index).map(|(_, c)| c.clone())
    }

    pub(crate) fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len()
    }

    pub(crate) fn channel_at(&self, i: usize) -> Channel {
        self.inner.endpoints[i].1.clone()
    }

    /// Moves off endpoint `bad` (if it is still the current one) and forgets the leader.
    pub(crate) fn failover(&self, bad: usize) {
        let n = self.inner.endpoints.len();
        let moved = self
            .inner
            .current
            .compare_exchange(bad, (bad + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        self.inner.leader.store(UNKNOWN, Ordering::Relaxed);
        if moved && n > 1 {
            tracing::debug!(
                from = %self.inner.endpoints[bad].0,
                to = %self.inner.endpoints[(bad + 1) % n].0,
                "failing over"
            );
        }
    }

    /// The endpoint a call of kind `call` goes to.
    pub(crate) async fn pick(&self, call: Call) -> usize {
        if call == Call::Write && self.inner.opts.prefer_leader {
            if let Some(l) = self.discover_leader().await {
                return l;
            }
        }
        self.current()
    }

    /// Runs a unary call with the retry policy of `call` (see the module docs).
    pub(crate) async fn unary<T, F, Fut>(&self, call: Call, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let opts = &self.inner.opts;
        let deadline = Instant::now() + opts.retry_deadline;
        let mut backoff = Backoff::new(opts);
        loop {
            let i = self.pick(call).await;
            let attempt = f(self.channel_at(i));
            let res = match opts.request_timeout {
                Some(t) => match tokio::time::timeout(t, attempt).await {
                    Ok(r) => r.map_err(Attempt::Status),
                    Err(_) => Err(Attempt::TimedOut),
                },
                None => attempt.await.map_err(Attempt::Status),
            };
            let err = match res {
                Ok(r) => return Ok(r.into_inner()),
                Err(e) => e,
            };
            let (unavailable, sent) = match &err {
                Attempt::TimedOut => (true, true),
                Attempt::Status(s) => (s.code() == Code::Unavailable, !never_sent(s)),
            };
            if unavailable || !sent {
                self.failover(i);
            }
            let retry = match call {
                Call::Safe => unavailable || !sent,
                Call::Write => !sent,
            };
            let pause = backoff.step();
            if !retry || Instant::now() + pause > deadline {
                return Err(match err {
                    Attempt::TimedOut => Error::DeadlineExceeded,
                    Attempt::Status(s) => Error::from(s),
                });
            }
            tracing::debug!(endpoint = %self.inner.endpoints[i].0, ?pause, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Finds the leader's endpoint: asks every endpoint for its Status and keeps the one whose
    /// member id is the leader it reports. Cached until the next failure.
    async fn discover_leader(&self) -> Option<usize> {
        let known = self.inner.leader.load(Ordering::Relaxed);
        if known != UNKNOWN {
            return Some(known);
        }
        let timeout = self.inner.opts.connect_timeout;
        let asks = self.inner.endpoints.iter().enumerate().map(|(i, (_, ch))| {
            let ch = ch.clone();
            async move {
                let r = tokio::time::timeout(
                    timeout,
                    MaintenanceClient::new(ch).status(StatusRequest {}),
                )
                .await;
                match r {
                    Ok(Ok(s)) => {
                        let s = s.into_inner();
                        let me = s.header.map(|h| h.member_id).unwrap_or_default();
                        (s.leader != 0 && s.leader == me).then_some(i)
                    }
                    _ => None,
                }
            }
        });
        let found = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next()?;
        self.inner.leader.store(found, Ordering::Relaxed);
        Some(found)
    }

    /// The URL of the Raft leader's endpoint, if one of the endpoints is the leader.
    pub async fn leader_endpoint(&self) -> Option<String> {
        let i = self.discover_leader().await?;
        Some(self.inner.endpoints[i].0.clone())
    }

    /// Maintenance.Status of the current endpoint (retried elsewhere on failure).
    pub async fn status(&self) -> Result<StatusResponse> {
        self.unary(Call::Safe, |ch| async move {
            MaintenanceClient::new(ch).status(StatusRequest {}).await
        })
        .await
    }

    /// Maintenance.Status of one endpoint (given as in [`connect`](Self::connect) or as listed
    /// by [`endpoints`](Self::endpoints)), without failover: for health tables.
    pub async fn endpoint_status(&self, endpoint: &str) -> Result<StatusResponse> {
        let url = normalize(endpoint.trim());
        let ch = match self.inner.endpoints.iter().find(|(u, _)| *u == url) {
            Some((_, ch)) => ch.clone(),
            None => Endpoint::from_shared(url.clone())
                .map_err(|e| Error::InvalidEndpoint {
                    endpoint: endpoint.to_owned(),
                    reason: e.to_string(),
                })?
                .connect_timeout(self.inner.opts.connect_timeout)
                .connect_lazy(),
        };
        let mut maintenance = MaintenanceClient::new(ch);
        let call = maintenance.status(StatusRequest {});
        match self.inner.opts.request_timeout {
            Some(t) => match tokio::time::timeout(t, call).await {
                Ok(r) => Ok(r?.into_inner()),
                Err(_) => Err(Error::DeadlineExceeded),
            },
            None => Ok(call.await?.into_inner()),
        }
    }

    /// Cluster.MemberList (retried). `linearizable` asks the member to confirm with the leader.
    pub async fn member_list(&self, linearizable: bool) -> Result<MemberListResponse> {
        self.unary(Call::Safe, |ch| async move {
            ClusterClient::new(ch)
                .member_list(MemberListRequest { linearizable })
                .await
        })
        .await
    }
}

/// How one attempt failed.
enum Attempt {
    Status(Status),
    TimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(normalize("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(normalize("https://a:1"), "https://a:1");
    }

    #[test]
    fn options_validate() {
        assert!(ClientOptions::default().validate().is_ok());
        let o = ClientOptions {
            backoff_max: Duration::from_millis(1),
            ..ClientOptions::default()
        };
        assert!(o.validate().is_err());
    }

    #[tokio::test]
    async fn connect_needs_an_endpoint() {
        let none: Vec<String> = vec![];
        assert!(Client::connect(none, ClientOptions::default())
            .await
            .is_err());
        let c = Client::connect(["127.0.0.1:1", "http://127.0.0.1:2"], Default::default())
            .await
            .unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        c.failover(0);
        assert_eq!(c.current_endpoint(), "http://127.0.0.1:2");
        c.failover(0);
        assert_eq!(c.current(), 1, "a stale failover does not move again");
    }
}
