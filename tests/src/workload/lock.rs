//! The lock workload: etcd's Lock API with fencing tokens guarding a resource, checked by
//! [`crate::check::lock::check_locks`].
//!
//! Design:
//! - Each resource `r` has a **guard** key `<prefix>fence/<r>` holding the highest token written
//!   so far as a 20-digit zero-padded decimal (so byte order is numeric order), created as
//!   twenty zeros when the run starts (`create_revision == 0` txn, retried until answered), and
//!   a data key `<prefix>data/<r>`.
//! - Each client (`LockConfig::clients`) loops: grant a lease of `ttl_secs` and keep it alive
//!   from a task (a keep-alive every third of the TTL); `Lock(<prefix>res<r>)` with the lease for
//!   a random resource; read the returned lock key's create revision, which is the **fencing
//!   token** (etcd's lock key create revision only grows and is unique), and record an
//!   [`Acquire`] (invoke and completion of the `Lock` call). Then 1–3 **fenced writes**, each one
//!   txn `if value(fence) < "<token:020>~" then put fence = "<token:020>", put data`: the
//!   trailing `~` (above every digit) makes the comparison "fence <= token", so the holder may
//!   write twice with its token while any smaller token is rejected. A write is recorded as a
//!   [`FencedWrite`] (accepted = the txn succeeded; unknown outcome = `complete: None`).
//! - How the turn ends, chosen by the seeded generator: usually `Unlock` and revoke the lease;
//!   sometimes the keep-alives just stop and the lease expires (the next holder takes over after
//!   expiry); sometimes the client becomes a **stale holder**: it stops its keep-alives while
//!   holding the lock, waits until the guard shows a newer token (another client took over after
//!   the expiry and wrote) or a few TTLs pass, and writes again with its old token, which the
//!   guard must reject.
//! - A `Lock` call waits for the current holder at most [`Ctx::op_timeout`]; on timeout or error
//!   the client revokes its lease (deleting its waiting key) and starts over.
//!
//! Errors and timeouts (members killed, paused or partitioned meanwhile) are unknown outcomes;
//! the client carries on. Every answered request counts one operation ([`Ctx::done`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp};

use crate::check::lock::{check_locks, Acquire, FencedWrite};
use crate::rng::Rng;
use crate::workload::{Anomaly, Ctx};

/// The lock workload's parameters.
#[derive(Clone, Debug)]
pub struct LockConfig {
    /// Prefix of every key the workload writes (locks, guards, data).
    pub prefix: String,
    /// Clients competing for the locks.
    pub clients: usize,
    /// Locks, each guarding one resource.
    pub resources: usize,
    /// The TTL of the clients' leases, in seconds.
    pub ttl_secs: i64,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            prefix: "lock/".to_string(),
            clients: 4,
            resources: 2,
            ttl_secs: 3,
        }
    }
}

/// Counts that tell whether a run exercised what it should have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Acquisitions recorded (lock granted and token read).
    pub acquires: usize,
    /// Fenced writes the guard accepted.
    pub accepted: usize,
    /// Fenced writes the guard rejected.
    pub rejected: usize,
    /// Fenced writes with an unknown outcome.
    pub unknown: usize,
    /// Writes attempted by stale holders (keep-alives stopped while holding).
    pub stale_writes: usize,
    /// Stale holders' writes the guard rejected.
    pub stale_rejected: usize,
    /// Turns ended by letting the lease expire while holding the lock.
    pub expired_turns: usize,
}

/// What a lock run recorded.
#[derive(Clone, Debug)]
pub struct LockRun {
    /// Every acquisition.
    pub acquires: Vec<Acquire>,
    /// Every fenced write.
    pub writes: Vec<FencedWrite>,
    /// Stale and expiry counts (the rest of [`LockStats`] is derived from the records).
    extra: LockStats,
    operations: u64,
}

impl LockRun {
    /// Completed (answered) operations.
    pub fn operations(&self) -> u64 {
        self.operations
    }

    /// Runs the lock checker (`"lock"`): one anomaly per violation.
    pub fn check(&self) -> Vec<Anomaly> {
        check_locks(&self.acquires, &self.writes)
            .into_iter()
            .map(|v| Anomaly {
                checker: "lock",
                detail: format!("{v:?}"),
            })
            .collect()
    }

    /// Counts over the recorded history.
    pub fn stats(&self) -> LockStats {
        let mut s = LockStats {
            acquires: self.acquires.len(),
            ..self.extra
        };
        for w in &self.writes {
            match (w.complete, w.accepted) {
                (None, _) => s.unknown += 1,
                (Some(_), true) => s.accepted += 1,
                (Some(_), false) => s.rejected += 1,
            }
        }
        s
    }
}

/// One client's records.
#[derive(Default)]
struct ClientLog {
    acquires: Vec<Acquire>,
    writes: Vec<FencedWrite>,
    extra: LockStats,
}

/// Counts one answered operation in the run's meter and the workload's own total.
fn done(ctx: &Ctx, ops: &AtomicU64) {
    ctx.done();
    ops.fetch_add(1, Ordering::Relaxed);
}

/// A token as the guard stores it.
fn padded(token: i64) -> String {
    format!("{token:020}")
}

/// Runs the lock workload until `ctx` is stopped, and returns what it recorded.
pub async fn run(ctx: Ctx, cfg: LockConfig) -> LockRun {
    let cfg = Arc::new(cfg);
    let ops = Arc::new(AtomicU64::new(0));
    init_guards(&ctx, &cfg, &ops).await;
    let clients: Vec<_> = (0..cfg.clients)
        .map(|i| {
            tokio::spawn(client_loop(
                ctx.clone(),
                Arc::clone(&cfg),
                i,
                Arc::clone(&ops),
            ))
        })
        .collect();
    let mut out = LockRun {
        acquires: Vec::new(),
        writes: Vec::new(),
        extra: LockStats::default(),
        operations: 0,
    };
    for h in clients {
        if let Ok(log) = h.await {
            out.acquires.extend(log.acquires);
            out.writes.extend(log.writes);
            out.extra.stale_writes += log.extra.stale_writes;
            out.extra.stale_rejected += log.extra.stale_rejected;
            out.extra.expired_turns += log.extra.expired_turns;
        }
    }
    out.operations = ops.load(Ordering::Relaxed);
    out
}

/// Creates every guard key (twenty zeros) that does not exist yet.
async fn init_guards(ctx: &Ctx, cfg: &LockConfig, ops: &AtomicU64) {
    let Some(mut client) = ctx.connect().await else {
        return;
    };
    for r in 0..cfg.resources {
        let fence = format!("{}fence/{r}", cfg.prefix);
        while !ctx.stopped() {
            let txn = Txn::new()
                .when([Compare::create_revision(fence.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(fence.clone(), padded(0), None)]);
            if ctx.call(client.txn(txn)).await.is_some() {
                done(ctx, ops);
                break;
            }
            ctx.pause(Duration::from_millis(100)).await;
        }
    }
}

/// Keeps lease `id` alive (a keep-alive every `interval`, reopening the stream after errors)
/// until aborted or the lease is gone.
async fn keep_alive(ctx: Ctx, mut client: Client, id: i64, interval: Duration) {
    let mut stream = None;
    while !ctx.stopped() {
        let (mut keeper, mut responses) = match stream.take() {
            Some(s) => s,
            None => match ctx.call(client.lease_keep_alive(id)).await {
                Some(s) => s,
                None => {
                    ctx.pause(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        if !ctx.pause(interval).await || keeper.keep_alive().await.is_err() {
            continue;
        }
        match tokio::time::timeout(ctx.op_timeout, responses.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() <= 0 => return,
            Ok(Ok(Some(_))) => stream = Some((keeper, responses)),
            _ => {}
        }
    }
}

/// How one turn ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Unlock and revoke.
    Release,
    /// Stop the keep-alives and let the lease expire.
    Expire,
    /// Stop the keep-alives while holding, then write again once superseded.
    Stale,
}

/// One client: returns its records.
async fn client_loop(
    ctx: Ctx,
    cfg: Arc<LockConfig>,
    index: usize,
    ops: Arc<AtomicU64>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let Some(mut client) = ctx.connect().await else {
        return log;
    };
    let mut rng = Rng(ctx.seed ^ 0x5EED_10C4 ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.next_u64();
    let ttl_ms = u64::try_from(cfg.ttl_secs.max(1)).unwrap_or(1) * 1000;
    let interval = Duration::from_millis(ttl_ms / 3);
    while !ctx.stopped() {
        let Some(grant) = ctx.call(client.lease_grant(cfg.ttl_secs, None)).await else {
            ctx.pause(Duration::from_millis(100)).await;
            continue;
        };
        done(&ctx, &ops);
        let lease = grant.id();
        let keeper = tokio::spawn(keep_alive(ctx.clone(), client.clone(), lease, interval));

        let r = rng.below(cfg.resources.max(1) as u64);
        let resource = format!("{}res{r}", cfg.prefix);
        let invoke = ctx.now();
        let locked = ctx
            .call(client.lock(resource.clone(), Some(LockOptions::new().with_lease(lease))))
            .await;
        let Some(locked) = locked else {
            keeper.abort();
            if ctx.call(client.lease_revoke(lease)).await.is_some() {
                done(&ctx, &ops);
            }
            continue;
        };
        let complete = ctx.now();
        done(&ctx, &ops);
        let key = locked.key().to_vec();
        // The token: the lock key's create revision.
        let token = ctx
            .call(client.get(key.clone(), None))
            .await
            .and_then(|resp| {
                done(&ctx, &ops);
                resp.kvs().first().map(|kv| kv.create_revision())
            });
        let Some(token) = token else {
            keeper.abort();
            if ctx.call(client.lease_revoke(lease)).await.is_some() {
                done(&ctx, &ops);
            }
            continue;
        };
        log.acquires.push(Acquire {
            client: index,
            resource: resource.clone(),
            token,
            invoke,
            complete,
        });

        let ending = match rng.below(100) {
            0..=14 => Ending::Stale,
            15..=29 => Ending::Expire,
            _ => Ending::Release,
        };
        for _ in 0..=rng.below(3) {
            if ctx.stopped() {
                break;
            }
            fenced_write(&ctx, &mut client, &cfg, index, r, token, &ops, &mut log).await;
            ctx.pause(Duration::from_millis(rng.below(50))).await;
        }
        match ending {
            Ending::Release => {
                keeper.abort();
                if ctx.call(client.unlock(key)).await.is_some() {
                    done(&ctx, &ops);
                }
                if ctx.call(client.lease_revoke(lease)).await.is_some() {
                    done(&ctx, &ops);
                }
            }
            Ending::Expire => {
                keeper.abort();
                log.extra.expired_turns += 1;
            }
            Ending::Stale => {
                keeper.abort();
                let fence = format!("{}fence/{r}", cfg.prefix);
                let mine = padded(token);
                let deadline = Instant::now() + Duration::from_millis(4 * ttl_ms);
                // Wait until another holder's write moved the guard past this token.
                while !ctx.stopped() && Instant::now() < deadline {
                    let moved = ctx.call(client.get(fence.clone(), None)).await.map(|resp| {
                        done(&ctx, &ops);
                        resp.kvs()
                            .first()
                            .is_some_and(|kv| kv.value() > mine.as_bytes())
                    });
                    if moved == Some(true) {
                        break;
                    }
                    ctx.pause(Duration::from_millis(200)).await;
                }
                if !ctx.stopped() {
                    log.extra.stale_writes += 1;
                    let accepted =
                        fenced_write(&ctx, &mut client, &cfg, index, r, token, &ops, &mut log)
                            .await;
                    if accepted == Some(false) {
                        log.extra.stale_rejected += 1;
                    }
                }
            }
        }
    }
    log
}

/// One fenced write of resource `r` with `token`: records it and returns whether the guard
/// accepted it (`None`: unknown).
#[allow(clippy::too_many_arguments)]
async fn fenced_write(
    ctx: &Ctx,
    client: &mut Client,
    cfg: &LockConfig,
    index: usize,
    r: u64,
    token: i64,
    ops: &AtomicU64,
    log: &mut ClientLog,
) -> Option<bool> {
    let fence = format!("{}fence/{r}", cfg.prefix);
    let data = format!("{}data/{r}", cfg.prefix);
    let txn = Txn::new()
        .when([Compare::value(
            fence.clone(),
            CompareOp::Less,
            format!("{}~", padded(token)),
        )])
        .and_then([
            TxnOp::put(fence, padded(token), None),
            TxnOp::put(data, format!("client {index} token {token}"), None),
        ]);
    let invoke = ctx.now();
    let answer = ctx.call(client.txn(txn)).await;
    let complete = answer.as_ref().map(|_| ctx.now());
    let accepted = answer.as_ref().map(|resp| resp.succeeded());
    if answer.is_some() {
        done(ctx, ops);
    }
    log.writes.push(FencedWrite {
        client: index,
        resource: format!("{}res{r}", cfg.prefix),
        token,
        invoke,
        complete,
        accepted: accepted.unwrap_or(false),
    });
    accepted
}
