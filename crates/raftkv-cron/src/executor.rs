//! The executor, one per scheduler process: claims pending fires on its own lease, runs them,
//! and writes each result only if its claim still stands.
//!
//! - **Claim**: one Txn — the fire is unchanged since it was seen and has no claim — puts the
//!   claim (on this executor's lease) and marks the fire claimed, and reads the job. The Txn's
//!   revision is the run's **fencing token**, passed to the task.
//! - **Spread**: an executor waits a little before claiming, longer the more runs it has going,
//!   so idle nodes win.
//! - **Result**: one Txn guarded by the claim's mod revision writes the history record, the
//!   fire's next state (done, failed, or pending again for a retry after backoff), deletes the
//!   claim and clears the job's active marker. If the claim is gone (this executor's lease
//!   expired, e.g. it was paused, or a `replace` fire revoked it), the Txn fails: the late
//!   result is rejected and nothing is written.
//! - A revoked claim (deleted by someone else) cancels its run; a lost lease cancels them all
//!   and the executor starts over with a new lease.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use raftkv_client::proto::{EventType, KeyValue};
use raftkv_client::{
    Compare, GetOptions, PutOptions, Session, Txn, TxnOp, WatchFilter, WatchOptions,
};
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::CronError;
use crate::job::Job;
use crate::record::{self, Claim, Fire, FireState, Run, RunStatus};
use crate::runner::{self, Outcome, RunContext};
use crate::store::{self, Ctx};

/// The extra wait per run already going on this node, before claiming.
const BUSY_DELAY: Duration = Duration::from_millis(100);
/// Random extra wait before claiming, so executors do not all race at once.
const JITTER_MS: u64 = 40;

/// Runs the executor until `shutdown`; returns an error only if it cannot work at all.
pub(crate) async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) -> Result<(), CronError> {
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let session = match Session::new(&ctx.client, ctx.lease_ttl).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(error = %e, "executor cannot get a lease; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = crate::scheduler::stopping(&mut shutdown) => return Ok(()),
                }
            }
        };
        let mut exec = Executor {
            ctx: ctx.clone(),
            session: Arc::clone(&session),
            running: Arc::new(Mutex::new(HashMap::new())),
            busy: Arc::new(AtomicUsize::new(0)),
            tasks: tokio::task::JoinSet::new(),
        };
        let why = exec.serve(&mut shutdown).await;
        exec.cancel_all();
        // Claim attempts and runs of this lease end here; an aborted run's child is killed and
        // its claim expires with the lease (or is revoked below), so it is re-dispatched.
        exec.tasks.abort_all();
        while exec.tasks.join_next().await.is_some() {}
        drop(exec);
        match why {
            Ok(Stop::Shutdown) => {
                if let Ok(s) = Arc::try_unwrap(session) {
                    let _ = s.close().await;
                }
                return Ok(());
            }
            Ok(Stop::LeaseLost) => {
                tracing::warn!("executor lease lost: its runs are fenced; starting over");
            }
            Err(e) => {
                tracing::warn!(error = %e, "executor interrupted; starting over");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = crate::scheduler::stopping(&mut shutdown) => return Ok(()),
                }
            }
        }
    }
}

enum Stop {
    Shutdown,
    LeaseLost,
}

/// A run in progress on this node: its token and the switch that cancels it.
struct Running {
    token: i64,
    cancel: watch::Sender<bool>,
}

struct Executor {
    ctx: Ctx,
    session: Arc<Session>,
    /// By claim key.
    running: Arc<Mutex<HashMap<String, Running>>>,
    busy: Arc<AtomicUsize>,
    /// Claim attempts and the runs they start.
    tasks: tokio::task::JoinSet<()>,
}

impl Executor {
    async fn serve(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Stop, CronError> {
        let ctx = &self.ctx;
        let (fires, rev) = ctx.scan(&ctx.keys.fires()).await?;
        let watch_from = |prefix: &str, filters: Vec<WatchFilter>| {
            ctx.client.watch(
                prefix.to_string(),
                WatchOptions {
                    prefix: true,
                    start_revision: rev + 1,
                    filters,
                    ..Default::default()
                },
            )
        };
        let mut fire_w = watch_from(&ctx.keys.fires(), vec![WatchFilter::NoDelete]).await?;
        let mut claim_w = watch_from(&ctx.keys.claims(), vec![WatchFilter::NoPut]).await?;
        for kv in fires {
            self.consider(kv);
        }
        let session = Arc::clone(&self.session);
        loop {
            tokio::select! {
                u = fire_w.next() => match u {
                    Some(Ok(u)) => {
                        for ev in u.events {
                            if let Some(kv) = ev.kv {
                                self.consider(kv);
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(CronError::Client(raftkv_client::Error::WatchClosed)),
                },
                u = claim_w.next() => match u {
                    Some(Ok(u)) => {
                        for ev in u.events {
                            if ev.r#type() == EventType::Delete {
                                if let Some(kv) = ev.kv {
                                    self.revoked(&kv);
                                }
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(CronError::Client(raftkv_client::Error::WatchClosed)),
                },
                lost = session.lost() => {
                    tracing::warn!(reason = %lost, "executor lease lost");
                    return Ok(Stop::LeaseLost);
                }
                _ = crate::scheduler::stopping(shutdown) => return Ok(Stop::Shutdown),
            }
        }
    }

    /// A fire record was written: if it is pending, try to claim it (after its backoff and a
    /// short, load-dependent delay).
    fn consider(&mut self, kv: KeyValue) {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let Some(fire) = record::from_json::<Fire>(&kv.key, &kv.value) else {
            return;
        };
        if fire.state != FireState::Pending {
            return;
        }
        let ctx = self.ctx.clone();
        let session = Arc::clone(&self.session);
        let running = Arc::clone(&self.running);
        let busy = Arc::clone(&self.busy);
        let seen = kv.mod_revision;
        let span = tracing::info_span!("fire", job = %fire.job, scheduled = %fire.scheduled, attempt = fire.attempt);
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(
            async move {
                let load = busy.load(Ordering::Relaxed).min(20) as u32;
                let delay = BUSY_DELAY * load + Duration::from_millis(jitter(&ctx.node, &key));
                let not_before = fire.not_before.max(ctx.clock.now());
                ctx.clock.sleep_until(not_before).await;
                tokio::time::sleep(delay).await;
                match claim(&ctx, &session, &key, &fire, seen).await {
                    Ok(Some((token, job))) => {
                        let (cancel, cancel_rx) = watch::channel(false);
                        let claim_key = ctx.keys.claim(&fire.job, fire.scheduled);
                        if let Ok(mut r) = running.lock() {
                            r.insert(claim_key.clone(), Running { token, cancel });
                        }
                        busy.fetch_add(1, Ordering::Relaxed);
                        let result = execute(&ctx, &key, &fire, token, job, cancel_rx).await;
                        busy.fetch_sub(1, Ordering::Relaxed);
                        if let Ok(mut r) = running.lock() {
                            if r.get(&claim_key).is_some_and(|x| x.token == token) {
                                r.remove(&claim_key);
                            }
                        }
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "writing a run's result failed; the claim expires with the lease and the run is re-dispatched");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "claim attempt failed"),
                }
            }
            .instrument(span),
        );
    }

    /// A claim was deleted: if it was one of this node's running claims, its token is revoked
    /// (a `replace` fire, or the lease expired): stop the run.
    fn revoked(&self, kv: &KeyValue) {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        if let Ok(r) = self.running.lock() {
            if let Some(run) = r.get(&key) {
                tracing::info!(claim = %key, token = run.token, "claim revoked: cancelling its run");
                run.cancel.send_replace(true);
            }
        }
    }

    fn cancel_all(&self) {
        if let Ok(mut r) = self.running.lock() {
            for (_, run) in r.drain() {
                run.cancel.send_replace(true);
            }
        }
    }
}

/// A per-(node, fire) pseudo-random delay in `0..JITTER_MS` milliseconds.
fn jitter(node: &str, key: &str) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(node.as_bytes());
    h.write(key.as_bytes());
    h.finish() % JITTER_MS
}

/// Claims the fire at `key` if it is still as seen (mod revision `seen`) and unclaimed.
/// Returns the token and the job definition.
async fn claim(
    ctx: &Ctx,
    session: &Session,
    key: &str,
    fire: &Fire,
    seen: i64,
) -> Result<Option<(i64, Option<Job>)>, CronError> {
    let claim_key = ctx.keys.claim(&fire.job, fire.scheduled);
    let claimed = Fire {
        state: FireState::Claimed,
        node: Some(ctx.node.clone()),
        ..fire.clone()
    };
    let claim = Claim {
        node: ctx.node.clone(),
        attempt: fire.attempt,
    };
    let txn = Txn::new()
        .when([store::unchanged(key, seen), store::absent(&claim_key)])
        .and_then([
            TxnOp::put(
                claim_key.as_str(),
                record::to_json(&claim),
                PutOptions::lease(session.lease()),
            ),
            store::put_json(key, &claimed),
            TxnOp::get(ctx.keys.job(&fire.job), GetOptions::default()),
        ]);
    let resp = ctx.txn(txn).await?;
    if !resp.succeeded {
        return Ok(None);
    }
    let token = resp.header.as_ref().map_or(0, |h| h.revision);
    let job = store::range_result(&resp, 2)
        .first()
        .and_then(|kv| record::from_json::<Job>(&kv.key, &kv.value))
        .filter(|j| j.validate().is_ok());
    tracing::info!(token, node = %ctx.node, "claimed");
    Ok(Some((token, job)))
}

/// Runs a claimed fire and writes its result under its token.
async fn execute(
    ctx: &Ctx,
    key: &str,
    fire: &Fire,
    token: i64,
    job: Option<Job>,
    cancel: watch::Receiver<bool>,
) -> Result<(), CronError> {
    let started = Utc::now();
    let outcome = match &job {
        Some(job) => {
            let rc = RunContext {
                job: fire.job.clone(),
                scheduled: fire.scheduled,
                attempt: fire.attempt,
                token,
                node: ctx.node.clone(),
            };
            runner::run(&job.run, &rc, cancel).await
        }
        None => Outcome {
            status: RunStatus::Failed,
            code: None,
            output: "the job was deleted, or its definition is invalid".into(),
        },
    };
    let ended = Utc::now();
    let run = Run {
        job: fire.job.clone(),
        scheduled: fire.scheduled,
        attempt: fire.attempt,
        status: outcome.status,
        node: Some(ctx.node.clone()),
        token,
        started: Some(started),
        ended,
        code: outcome.code,
        output: outcome.output,
    };
    let retry = job.as_ref().is_some_and(|j| {
        matches!(run.status, RunStatus::Failed | RunStatus::TimedOut)
            && fire.attempt <= j.retries.max
    });
    let next = if retry {
        let backoff = job
            .as_ref()
            .map(|j| j.retries.backoff(fire.attempt))
            .unwrap_or_default();
        Fire {
            attempt: fire.attempt + 1,
            state: FireState::Pending,
            not_before: ctx.clock.now() + chrono::Duration::from_std(backoff).unwrap_or_default(),
            node: None,
            ..fire.clone()
        }
    } else {
        Fire {
            state: match run.status {
                RunStatus::Succeeded => FireState::Succeeded,
                RunStatus::Cancelled => FireState::Cancelled,
                _ => FireState::Failed,
            },
            ..fire.clone()
        }
    };
    let claim_key = ctx.keys.claim(&fire.job, fire.scheduled);
    let mut ops = vec![
        store::put_run(&ctx.keys, &run),
        store::put_json(key, &next),
        store::delete(&claim_key),
    ];
    if next.state.is_terminal() {
        ops.push(store::clear_active(&ctx.keys, &fire.job, key));
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            claim_key.as_str(),
            raftkv_client::CompareOp::Equal,
            token,
        )])
        .and_then(ops);
    let resp = ctx.txn(txn).await?;
    if resp.succeeded {
        tracing::info!(token, status = ?run.status, retry, "run recorded");
        ctx.prune_runs(&fire.job).await?;
    } else {
        tracing::warn!(
            token,
            status = ?run.status,
            "result rejected: the claim no longer holds this token (fenced)"
        );
    }
    Ok(())
}
