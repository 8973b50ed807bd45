//! Leases: [`Client::grant`], [`Client::revoke`], [`Client::time_to_live`],
//! [`Client::leases`], [`Client::keep_alive_once`], and [`LeaseKeeper`], a handle whose
//! background task keeps a lease alive and reports when it is lost.

use std::time::Duration;

use raftkv_proto::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Backoff, Call, Client};
use crate::error::{stream_transient, Error, Result};

/// Why a [`LeaseKeeper`]'s lease is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseLost {
    /// The server answered a keep-alive with TTL 0: the lease expired or was revoked.
    Expired,
    /// No keep-alive succeeded for longer than the lease's TTL; the cluster must be assumed
    /// to have expired it. `last_error` is the last failure seen.
    Unreachable {
        /// The last error of a keep-alive attempt.
        last_error: String,
    },
    /// Revoked through [`LeaseKeeper::revoke`].
    Revoked,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseLost::Expired => f.write_str("lease expired (the server reports TTL 0)"),
            LeaseLost::Unreachable { last_error } => write!(
                f,
                "lease presumed expired: no keep-alive succeeded within its TTL ({last_error})"
            ),
            LeaseLost::Revoked => f.write_str("lease revoked"),
        }
    }
}

/// Options of [`Client::lease_keeper_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseKeeperOptions {
    /// The lease id to ask for (0: the server chooses).
    pub id: i64,
    /// Revoke the lease when the keeper is dropped (best effort, in a spawned task). Without
    /// it, a dropped keeper's lease expires after its TTL.
    pub revoke_on_drop: bool,
}

impl Client {
    /// Grants a lease of `ttl` seconds (raised to the server's minimum); `id` 0 lets the server
    /// choose. Not retried once sent.
    pub async fn grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let r = self
            .unary(Call::Write, |ch| async move {
                LeaseClient::new(ch)
                    .lease_grant(LeaseGrantRequest { ttl, id })
                    .await
            })
            .await?;
        if !r.error.is_empty() {
            return Err(Error::from(tonic::Status::unknown(r.error)));
        }
        Ok(r)
    }

    /// Revokes a lease, deleting its keys. Not retried once sent.
    pub async fn revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.unary(Call::Write, |ch| async move {
            LeaseClient::new(ch)
                .lease_revoke(LeaseRevokeRequest { id })
                .await
        })
        .await
    }

    /// The lease's remaining and granted TTL, and with `keys` its keys. An unknown lease has
    /// TTL -1 (not an error, as in etcd).
    pub async fn time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.unary(Call::Safe, |ch| async move {
            LeaseClient::new(ch)
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                .await
        })
        .await
    }

    /// Every live lease.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse> {
        self.unary(Call::Safe, |ch| async move {
            LeaseClient::new(ch)
                .lease_leases(LeaseLeasesRequest {})
                .await
        })
        .await
    }

    /// One keep-alive round trip. The answer's TTL is 0 if the lease is unknown (not an error,
    /// as in etcd).
    pub async fn keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        self.unary(Call::Safe, |ch| async move {
            let req = futures_util::stream::iter([LeaseKeepAliveRequest { id }]);
            let mut stream = LeaseClient::new(ch)
                .lease_keep_alive(req)
                .await?
                .into_inner();
            match stream.message().await? {
                Some(r) => Ok(tonic::Response::new(r)),
                None => Err(tonic::Status::unavailable(
                    "keep-alive stream closed without an answer",
                )),
            }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds and keeps it alive in the background.
    pub async fn lease_keeper(&self, ttl: i64) -> Result<LeaseKeeper> {
        self.lease_keeper_with(ttl, LeaseKeeperOptions::default())
            .await
    }

    /// [`lease_keeper`](Self::lease_keeper) with options.
    pub async fn lease_keeper_with(
        &self,
        ttl: i64,
        opts: LeaseKeeperOptions,
    ) -> Result<LeaseKeeper> {
        let g = self.grant(ttl, opts.id).await?;
        let (state_tx, state_rx) = watch::channel(KeeperState {
            ttl: g.ttl,
            lost: None,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = KeepTask {
            client: self.clone(),
            id: g.id,
            ttl: g.ttl,
            state: state_tx,
        };
        tokio::spawn(task.run(stop_rx, opts.revoke_on_drop));
        Ok(LeaseKeeper {
            client: self.clone(),
            id: g.id,
            state: state_rx,
            stop: Some(stop_tx),
        })
    }
}

/// What the keep-alive task publishes.
#[derive(Clone, Debug)]
struct KeeperState {
    /// TTL granted by the last successful keep-alive.
    ttl: i64,
    lost: Option<LeaseLost>,
}

/// A lease kept alive by a background task: a keep-alive every TTL/3 over a stream that is
/// re-opened on another endpoint after a failure. Dropping it stops the keep-alives.
#[derive(Debug)]
pub struct LeaseKeeper {
    client: Client,
    id: i64,
    state: watch::Receiver<KeeperState>,
    /// Dropped (or sent `true` = revoke) to stop the task.
    stop: Option<oneshot::Sender<bool>>,
}

impl LeaseKeeper {
    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL the server granted at the last keep-alive, in seconds.
    pub fn ttl(&self) -> i64 {
        self.state.borrow().ttl
    }

    /// Whether the lease is known to be lost, and why.
    pub fn is_lost(&self) -> Option<LeaseLost> {
        self.state.borrow().lost.clone()
    }

    /// Waits until the lease is lost and says why. Never resolves while it is kept alive.
    pub async fn lost(&self) -> LeaseLost {
        let mut rx = self.state.clone();
        let lost = match rx.wait_for(|s| s.lost.is_some()).await {
            Ok(s) => s.lost.clone(),
            Err(_) => None,
        };
        match lost {
            Some(why) => why,
            // The task ended without reporting: only after a stop, which needs `self` gone.
            None => std::future::pending().await,
        }
    }

    /// Stops the keep-alives and revokes the lease (deleting its keys).
    pub async fn revoke(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
        self.client.revoke(self.id).await?;
        Ok(())
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        // Dropping the sender stops the task; it revokes if asked to at creation.
        self.stop.take();
    }
}

/// The background task of one [`LeaseKeeper`].
struct KeepTask {
    client: Client,
    id: i64,
    ttl: i64,
    state: watch::Sender<KeeperState>,
}

enum Stream {
    Stop { dropped: bool },
    Lost(LeaseLost),
    Broke(String),
}

impl KeepTask {
    async fn run(mut self, mut stop: oneshot::Receiver<bool>, revoke_on_drop: bool) {
        let opts = self.client.options().clone();
        let mut backoff = Backoff::new(&opts);
        // The lease is safe until this instant, counted from the last successful renewal.
        let mut safe_until = Instant::now() + secs(self.ttl);
        loop {
            let i = self.client.pick(Call::Write).await;
            let end = self
                .stream_once(i, &mut stop, &mut safe_until, &mut backoff)
                .await;
            match end {
                Stream::Stop { dropped } => {
                    if !dropped {
                        self.state
                            .send_modify(|s| s.lost = Some(LeaseLost::Revoked));
                    } else if revoke_on_drop {
                        let _ = self.client.revoke(self.id).await;
                    }
                    return;
                }
                Stream::Lost(why) => {
                    tracing::warn!(lease = format_args!("{:x}", self.id), %why, "lease lost");
                    self.state.send_modify(|s| s.lost = Some(why));
                    return;
                }
                Stream::Broke(last_error) => {
                    self.client.failover(i);
                    if Instant::now() >= safe_until {
                        let why = LeaseLost::Unreachable { last_error };
                        tracing::warn!(lease = format_args!("{:x}", self.id), %why, "lease lost");
                        self.state.send_modify(|s| s.lost = Some(why));
                        return;
                    }
                    let pause = backoff.step();
                    tokio::select! {
                        r = &mut stop => {
                            if r.is_ok() {
                                self.state.send_modify(|s| s.lost = Some(LeaseLost::Revoked));
                            } else if revoke_on_drop {
                                let _ = self.client.revoke(self.id).await;
                            }
                            return;
                        }
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    async fn stream_once(
        &mut self,
        i: usize,
        stop: &mut oneshot::Receiver<bool>,
        safe_until: &mut Instant,
        backoff: &mut Backoff,
    ) -> Stream {
        let stopped = |r: std::result::Result<bool, oneshot::error::RecvError>| Stream::Stop {
            dropped: r.is_err(),
        };
        let (tx, rx) = mpsc::channel(1);
        // The first request goes out with the call: etcd's server (grpc-go) sends the response
        // headers only with its first answer, so waiting for the stream to open before asking
        // would wait forever.
        let mut first = Some(Instant::now());
        if tx.try_send(LeaseKeepAliveRequest { id: self.id }).is_err() {
            first = None;
        }
        let mut lease = LeaseClient::new(self.client.channel_at(i));
        let open = lease.lease_keep_alive(ReceiverStream::new(rx));
        let mut stream = tokio::select! {
            r = &mut *stop => return stopped(r),
            () = tokio::time::sleep_until(*safe_until) => {
                return Stream::Broke("keep-alive stream did not open".into());
            }
            r = open => match r {
                Ok(s) => s.into_inner(),
                Err(s) => return Stream::Broke(s.to_string()),
            },
        };
        loop {
            let sent_at = match first.take() {
                Some(at) => at,
                None => {
                    if tx
                        .send(LeaseKeepAliveRequest { id: self.id })
                        .await
                        .is_err()
                    {
                        return Stream::Broke("keep-alive stream closed".into());
                    }
                    Instant::now()
                }
            };
            let answer = tokio::select! {
                r = &mut *stop => return stopped(r),
                () = tokio::time::sleep_until(*safe_until) => {
                    return Stream::Broke("no keep-alive answer within the TTL".into());
                }
                m = stream.message() => m,
            };
            match answer {
                Ok(Some(r)) if r.ttl <= 0 => return Stream::Lost(LeaseLost::Expired),
                Ok(Some(r)) => {
                    self.ttl = r.ttl;
                    // Counted from when the request left: the server's clock started later.
                    *safe_until = sent_at + secs(r.ttl);
                    backoff.reset(self.client.options());
                    self.state.send_modify(|s| s.ttl = r.ttl);
                }
                Ok(None) => return Stream::Broke("keep-alive stream ended".into()),
                Err(s) if stream_transient(&s) => return Stream::Broke(s.to_string()),
                Err(s) => {
                    return match Error::from(s) {
                        Error::LeaseNotFound => Stream::Lost(LeaseLost::Expired),
                        e => Stream::Broke(e.to_string()),
                    }
                }
            }
            let renew = sent_at + secs(self.ttl) / 3;
            tokio::select! {
                r = &mut *stop => return stopped(r),
                () = tokio::time::sleep_until(renew) => {}
            }
        }
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl.max(1)).unwrap_or(1))
}
