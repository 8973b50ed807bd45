//! The lease workload: keys attached to short leases whose keep-alives stop at random, checked
//! by [`crate::check::lease::check_leases`].
//!
//! Design:
//! - **Owners** (`LeaseConfig::owners` of them) loop: grant a lease of `ttl_secs`, put 1–3 keys
//!   `<prefix><lease id in hex>/<n>` with it (only acknowledged puts are recorded as attached
//!   keys, with their completion time), then keep the lease alive for a random while (0 to two
//!   TTLs) with a keep-alive every third of the TTL on one `LeaseKeepAlive` stream, recording
//!   every keep-alive with its send time, answer time (`None` when unanswered: the stream is
//!   then dropped and a new one opened) and answered TTL. Then, chosen by the seeded generator,
//!   the owner either **abandons** the lease (no more keep-alives: it must expire on its own)
//!   or **revokes** it (the revoke's send time is recorded), and starts over with a new lease.
//!   A keep-alive answered "not found" ends the lease early (the checker decides whether that
//!   was premature).
//! - **Readers** (`LeaseConfig::readers`) loop over the most recent leases the owners published
//!   (abandoned and revoked ones included, so their disappearance is observed): a linearizable
//!   `Range` of one attached key (recording the lease the key carries, or absence) or a
//!   `LeaseTimeToLive` of the lease. etcd truncates `TimeToLive`'s remaining TTL to whole
//!   seconds and answers -1 for an unknown lease, so an answer of 0 (present, under a second
//!   left) is recorded as 1: the checker reads a non-positive TTL as "gone".
//!
//! Errors and timeouts (members killed, paused or partitioned meanwhile) are unknown outcomes:
//! an unanswered keep-alive is recorded as such, unanswered reads and puts are not recorded, and
//! the client carries on. Every answered request counts one operation ([`Ctx::done`]).
//!
//! The expiry bound ([`LeaseConfig::bounds`]): raftkv checkpoints remaining TTLs through Raft
//! (`--lease-checkpoint-interval`), only the leader expires leases, and a new leader restores
//! deadlines from the checkpoints, so a lease may outlive `last refresh + ttl` by about an
//! election, a checkpoint interval and the revoke's commit: the default slack is 5 s (for a
//! 1 s checkpoint interval). The early tolerance (300 ms) covers clock granularity only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};

use crate::check::lease::{
    check_leases, AttachedKey, KeepAlive, LeaseBounds, LeaseLog, LeaseObservation,
};
use crate::check::Nanos;
use crate::rng::Rng;
use crate::workload::{Anomaly, Ctx};

const NANOS_PER_SEC: Nanos = 1_000_000_000;

/// How many recently granted leases readers choose from.
const RECENT_LEASES: usize = 16;

/// The lease workload's parameters.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Prefix of every key the workload writes.
    pub prefix: String,
    /// Clients granting leases, attaching keys and keeping the leases alive.
    pub owners: usize,
    /// Clients reading the attached keys and asking for the leases' TTLs.
    pub readers: usize,
    /// The TTL of every lease, in seconds.
    pub ttl_secs: i64,
    /// The timing slack the checker allows.
    pub bounds: LeaseBounds,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            prefix: "lease/".to_string(),
            owners: 3,
            readers: 2,
            ttl_secs: 3,
            bounds: LeaseBounds {
                expiry_slack: 5 * NANOS_PER_SEC,
                early_tolerance: 300_000_000,
            },
        }
    }
}

/// Counts that tell whether a run exercised what it should have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Leases granted (acknowledged grants).
    pub leases: usize,
    /// Leases whose owner stopped keeping them alive without revoking them.
    pub abandoned: usize,
    /// Leases revoked (revoke sent).
    pub revoked: usize,
    /// Keys attached (acknowledged puts with a lease).
    pub keys: usize,
    /// Keep-alives answered with a positive TTL.
    pub keepalives_alive: usize,
    /// Keep-alives never answered.
    pub keepalives_unanswered: usize,
    /// Key reads that found the key with its lease.
    pub reads_present: usize,
    /// Key reads that found an attached key gone (after its put), on a lease never revoked:
    /// expiry observed.
    pub reads_expired: usize,
    /// Key reads that found an attached key gone, on a revoked lease.
    pub reads_revoked: usize,
    /// `TimeToLive` answers with a positive TTL.
    pub ttl_alive: usize,
    /// `TimeToLive` answers "not found" (expired or revoked).
    pub ttl_gone: usize,
}

/// What a lease run recorded.
#[derive(Clone, Debug)]
pub struct LeaseRun {
    /// Every granted lease with its keep-alives, revoke and attached keys.
    pub leases: Vec<LeaseLog>,
    /// Every answered read and `TimeToLive`.
    pub observations: Vec<LeaseObservation>,
    /// The bounds the run is checked with.
    pub bounds: LeaseBounds,
    /// Leases abandoned (not revoked, keep-alives stopped on purpose).
    abandoned: usize,
    operations: u64,
}

impl LeaseRun {
    /// Completed (answered) operations.
    pub fn operations(&self) -> u64 {
        self.operations
    }

    /// Runs the lease checker (`"lease"`): one anomaly per violation, or one for a malformed
    /// history.
    pub fn check(&self) -> Vec<Anomaly> {
        match check_leases(&self.leases, &self.observations, self.bounds) {
            Ok(violations) => violations
                .into_iter()
                .map(|v| Anomaly {
                    checker: "lease",
                    detail: format!("{v:?}"),
                })
                .collect(),
            Err(e) => vec![Anomaly {
                checker: "lease",
                detail: format!("malformed lease history: {e:?}"),
            }],
        }
    }

    /// Counts over the recorded history.
    pub fn stats(&self) -> LeaseStats {
        let mut s = LeaseStats {
            leases: self.leases.len(),
            abandoned: self.abandoned,
            ..LeaseStats::default()
        };
        let mut owner = std::collections::HashMap::new();
        for log in &self.leases {
            if log.revoke_invoke.is_some() {
                s.revoked += 1;
            }
            s.keys += log.keys.len();
            for ka in &log.keepalives {
                match ka.acked {
                    Some(_) if ka.ttl > 0 => s.keepalives_alive += 1,
                    Some(_) => {}
                    None => s.keepalives_unanswered += 1,
                }
            }
            for k in &log.keys {
                owner.insert(k.key.as_str(), (log, k.put_complete));
            }
        }
        for obs in &self.observations {
            match obs {
                LeaseObservation::Key {
                    key, invoke, lease, ..
                } => {
                    let Some(&(log, put_complete)) = owner.get(key.as_str()) else {
                        continue;
                    };
                    if *lease == Some(log.lease) {
                        s.reads_present += 1;
                    } else if *invoke >= put_complete {
                        match log.revoke_invoke {
                            Some(r) if r <= *invoke => s.reads_revoked += 1,
                            _ => s.reads_expired += 1,
                        }
                    }
                }
                LeaseObservation::TimeToLive { ttl, .. } => {
                    if *ttl > 0 {
                        s.ttl_alive += 1;
                    } else {
                        s.ttl_gone += 1;
                    }
                }
            }
        }
        s
    }
}

/// A lease readers may look at: its id and acknowledged keys.
#[derive(Clone, Debug)]
struct Target {
    lease: i64,
    keys: Vec<String>,
}

/// The leases owners published, most recent last.
type Recent = Arc<Mutex<VecDeque<Target>>>;

/// Counts one answered operation in the run's meter and the workload's own total.
fn done(ctx: &Ctx, ops: &AtomicU64) {
    ctx.done();
    ops.fetch_add(1, Ordering::Relaxed);
}

/// A per-client generator derived from the workload seed.
fn client_rng(seed: u64, role: u64, index: usize) -> Rng {
    let mut base = Rng(seed ^ role.wrapping_mul(0xA076_1D64_78BD_642F));
    let mut rng = Rng(base.next_u64() ^ (index as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB));
    rng.next_u64();
    rng
}

/// Runs the lease workload until `ctx` is stopped, and returns what it recorded.
pub async fn run(ctx: Ctx, cfg: LeaseConfig) -> LeaseRun {
    let cfg = Arc::new(cfg);
    let recent: Recent = Arc::new(Mutex::new(VecDeque::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let owners: Vec<_> = (0..cfg.owners)
        .map(|i| {
            tokio::spawn(owner(
                ctx.clone(),
                Arc::clone(&cfg),
                i,
                Arc::clone(&recent),
                Arc::clone(&ops),
            ))
        })
        .collect();
    let readers: Vec<_> = (0..cfg.readers)
        .map(|i| {
            tokio::spawn(reader(
                ctx.clone(),
                i,
                Arc::clone(&recent),
                Arc::clone(&ops),
            ))
        })
        .collect();
    let mut leases = Vec::new();
    let mut abandoned = 0;
    for h in owners {
        if let Ok((logs, n)) = h.await {
            leases.extend(logs);
            abandoned += n;
        }
    }
    let mut observations = Vec::new();
    for h in readers {
        if let Ok(obs) = h.await {
            observations.extend(obs);
        }
    }
    LeaseRun {
        leases,
        observations,
        bounds: cfg.bounds,
        abandoned,
        operations: ops.load(Ordering::Relaxed),
    }
}

/// One owner: returns its lease logs and how many leases it abandoned.
async fn owner(
    ctx: Ctx,
    cfg: Arc<LeaseConfig>,
    index: usize,
    recent: Recent,
    ops: Arc<AtomicU64>,
) -> (Vec<LeaseLog>, usize) {
    let mut logs = Vec::new();
    let mut abandoned = 0;
    let Some(mut client) = ctx.connect().await else {
        return (logs, abandoned);
    };
    let mut rng = client_rng(ctx.seed, 1, index);
    let ttl_ms = u64::try_from(cfg.ttl_secs.max(1)).unwrap_or(1) * 1000;
    let interval = Duration::from_millis(ttl_ms / 3);
    while !ctx.stopped() {
        let grant_invoke = ctx.now();
        let Some(grant) = ctx.call(client.lease_grant(cfg.ttl_secs, None)).await else {
            ctx.pause(Duration::from_millis(100)).await;
            continue;
        };
        let grant_complete = ctx.now();
        done(&ctx, &ops);
        let id = grant.id();
        let mut log = LeaseLog {
            lease: id,
            ttl: u64::try_from(grant.ttl().max(0)).unwrap_or(0) * NANOS_PER_SEC,
            grant_invoke,
            grant_complete,
            keepalives: Vec::new(),
            revoke_invoke: None,
            keys: Vec::new(),
        };

        for n in 0..=rng.below(3) {
            if ctx.stopped() {
                break;
            }
            let key = format!("{}{id:x}/{n}", cfg.prefix);
            let opts = PutOptions::new().with_lease(id);
            let put = client.put(key.clone(), format!("owner {index}"), Some(opts));
            if ctx.call(put).await.is_some() {
                log.keys.push(AttachedKey {
                    key,
                    put_complete: ctx.now(),
                });
                done(&ctx, &ops);
            }
        }
        if let Ok(mut r) = recent.lock() {
            r.push_back(Target {
                lease: id,
                keys: log.keys.iter().map(|k| k.key.clone()).collect(),
            });
            while r.len() > RECENT_LEASES {
                r.pop_front();
            }
        }

        // Keep alive for a random while (0 to two TTLs).
        let until = Instant::now() + Duration::from_millis(rng.below(2 * ttl_ms + 1));
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut lost = false;
        while !ctx.stopped() && !lost {
            let now = Instant::now();
            if now >= until {
                break;
            }
            if !ctx.pause(interval.min(until - now)).await || Instant::now() >= until {
                break;
            }
            let (ka, s) = keep_alive_once(&ctx, &mut client, id, stream.take()).await;
            if ka.acked.is_some() {
                done(&ctx, &ops);
                lost = ka.ttl <= 0;
            }
            log.keepalives.push(ka);
            stream = s;
        }
        drop(stream);

        if !ctx.stopped() && !lost {
            if rng.percent(50) {
                log.revoke_invoke = Some(ctx.now());
                if ctx.call(client.lease_revoke(id)).await.is_some() {
                    done(&ctx, &ops);
                }
            } else {
                abandoned += 1;
            }
        }
        logs.push(log);
    }
    (logs, abandoned)
}

/// Sends one keep-alive for `id` (on `stream`, or on a new stream when there is none) and
/// records it; returns the stream to reuse (`None` after any error or timeout).
async fn keep_alive_once(
    ctx: &Ctx,
    client: &mut Client,
    id: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> (KeepAlive, Option<(LeaseKeeper, LeaseKeepAliveStream)>) {
    let sent = ctx.now();
    let unanswered = KeepAlive {
        sent,
        acked: None,
        ttl: 0,
    };
    match stream {
        Some((mut keeper, mut responses)) => {
            if keeper.keep_alive().await.is_err() {
                return (unanswered, None);
            }
            match tokio::time::timeout(ctx.op_timeout, responses.message()).await {
                Ok(Ok(Some(resp))) if resp.id() == id => {
                    let ka = KeepAlive {
                        sent,
                        acked: Some(ctx.now()),
                        ttl: resp.ttl(),
                    };
                    (ka, Some((keeper, responses)))
                }
                _ => (unanswered, None),
            }
        }
        None => {
            // Opening the stream sends a keep-alive and waits for its answer; the client turns
            // a "not found" answer into this error.
            match tokio::time::timeout(ctx.op_timeout, client.lease_keep_alive(id)).await {
                Ok(Ok((keeper, responses))) => {
                    let ka = KeepAlive {
                        sent,
                        acked: Some(ctx.now()),
                        ttl: 1,
                    };
                    (ka, Some((keeper, responses)))
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e == "lease not found" => {
                    let ka = KeepAlive {
                        sent,
                        acked: Some(ctx.now()),
                        ttl: 0,
                    };
                    (ka, None)
                }
                _ => (unanswered, None),
            }
        }
    }
}

/// One reader: returns its observations.
async fn reader(
    ctx: Ctx,
    index: usize,
    recent: Recent,
    ops: Arc<AtomicU64>,
) -> Vec<LeaseObservation> {
    let mut observations = Vec::new();
    let Some(mut client) = ctx.connect().await else {
        return observations;
    };
    let mut rng = client_rng(ctx.seed, 2, index);
    while !ctx.stopped() {
        let target = recent.lock().ok().and_then(|r| {
            if r.is_empty() {
                None
            } else {
                let i = rng.below(r.len() as u64) as usize;
                r.get(i).cloned()
            }
        });
        let Some(target) = target else {
            ctx.pause(Duration::from_millis(50)).await;
            continue;
        };
        if !target.keys.is_empty() && rng.percent(70) {
            let key = &target.keys[rng.below(target.keys.len() as u64) as usize];
            let invoke = ctx.now();
            if let Some(resp) = ctx.call(client.get(key.clone(), None)).await {
                observations.push(LeaseObservation::Key {
                    key: key.clone(),
                    invoke,
                    complete: ctx.now(),
                    lease: resp.kvs().first().map(|kv| kv.lease()),
                });
                done(&ctx, &ops);
            }
        } else {
            let invoke = ctx.now();
            let ttl = client.lease_time_to_live(target.lease, None);
            if let Some(resp) = ctx.call(ttl).await {
                // etcd answers -1 for a lease it does not know, and otherwise the remaining
                // time truncated to whole seconds: 0 means "still there, under a second left"
                // (or past its deadline but not revoked yet). The checker reads `<= 0` as gone,
                // so a 0 is recorded as 1.
                let ttl = if resp.ttl() == 0 { 1 } else { resp.ttl() };
                observations.push(LeaseObservation::TimeToLive {
                    lease: target.lease,
                    invoke,
                    complete: ctx.now(),
                    ttl,
                });
                done(&ctx, &ops);
            }
        }
        ctx.pause(Duration::from_millis(10 + rng.below(30))).await;
    }
    observations
}
