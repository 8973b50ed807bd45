//! The dispatcher: one scheduler at a time, elected through a lease (etcd's election recipe
//! under `<prefix>dispatcher`), turns schedules into fire records.
//!
//! - It computes fire times from its own clock only, and commits each (job, instant) with one
//!   Txn guarded by its leadership (the election key's create revision) and by the fire key's
//!   absence, together with the job's cursor and, for `forbid`/`replace` jobs, the active-run
//!   marker. A deposed dispatcher's Txn fails on the guard; a fire is never committed twice.
//! - After a failover the new dispatcher resumes each job from its cursor: fires within the
//!   starting deadline run; older ones follow the job's `missed` policy (skip / run once / run
//!   all, with no cap). Disabled jobs only advance their cursor.
//! - Lost runs: a claim deleted while its fire is still claimed (the executor's lease expired)
//!   is recorded as lost and re-dispatched with a new attempt (a new token when claimed),
//!   unless the starting deadline has passed and the policy is `skip`. On taking over, claimed
//!   fires without a claim are found by a scan.
//! - Jobs are followed through a watch: adds, edits and deletes apply without a restart.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use raftkv_client::proto::{EventType, KeyValue};
use raftkv_client::{
    Compare, CompareOp, Election, Leadership, Session, Txn, TxnOp, WatchFilter, WatchOptions,
};
use tokio::sync::watch;

use crate::error::CronError;
use crate::job::{Concurrency, Job, Missed};
use crate::record::{self, Fire, FireState, Run, RunStatus};
use crate::schedule::Schedule;
use crate::store::{self, Ctx};

/// Fires computed per job per pass (a pass repeats at once while a job has more).
const BATCH: usize = 256;
/// A run lost this many times is not re-dispatched again.
const MAX_ATTEMPTS_AFTER_LOSS: u32 = 5;
/// How often terminal fire records beyond the history limit are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// A disabled job's cursor is moved to now when it lags by more than this.
const DISABLED_CURSOR_LAG: chrono::Duration = chrono::Duration::seconds(10);

/// Campaigns, and dispatches while elected, until `shutdown`.
pub(crate) async fn run(
    ctx: Ctx,
    mut shutdown: watch::Receiver<bool>,
    leading: watch::Sender<bool>,
) -> Result<(), CronError> {
    let election = Election::new(&ctx.client, &ctx.keys.election());
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let session = match Session::new(&ctx.client, ctx.lease_ttl).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher cannot get a lease; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = crate::scheduler::stopping(&mut shutdown) => return Ok(()),
                }
            }
        };
        let won = tokio::select! {
            r = election.campaign(&session, ctx.node.clone()) => r,
            _ = crate::scheduler::stopping(&mut shutdown) => {
                let _ = session.close().await;
                return Ok(());
            }
        };
        let leadership = match won {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "campaign failed; campaigning again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tracing::info!(token = leadership.fencing_token(), "elected dispatcher");
        leading.send_replace(true);
        let mut d = Dispatcher::new(ctx.clone(), &leadership);
        let why = tokio::select! {
            r = d.lead() => r,
            lost = session.lost() => {
                tracing::warn!(reason = %lost, "dispatcher lease lost");
                Ok(())
            }
            _ = crate::scheduler::stopping(&mut shutdown) => Ok(()),
        };
        leading.send_replace(false);
        match why {
            Ok(()) => {}
            Err(CronError::Deposed) => tracing::warn!("no longer the dispatcher"),
            Err(e) => tracing::warn!(error = %e, "dispatching interrupted"),
        }
        if *shutdown.borrow() {
            let _ = leadership.resign().await;
            let _ = session.close().await;
            return Ok(());
        }
        // Give up this candidacy (if it still stands) and campaign afresh.
        let _ = leadership.resign().await;
        let _ = session.close().await;
    }
}

/// A job the dispatcher follows.
struct Followed {
    job: Job,
    schedule: Schedule,
    /// The last instant committed (or skipped past).
    cursor: Option<DateTime<Utc>>,
}

struct Dispatcher {
    ctx: Ctx,
    guard: Compare,
    jobs: BTreeMap<String, Followed>,
}

/// What to do with one due instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Run,
    Missed,
}

impl Dispatcher {
    fn new(ctx: Ctx, leadership: &Leadership) -> Dispatcher {
        let guard = Compare::create_revision(
            leadership.key().to_vec(),
            CompareOp::Equal,
            leadership.fencing_token(),
        );
        Dispatcher {
            ctx,
            guard,
            jobs: BTreeMap::new(),
        }
    }

    /// Dispatches until deposed or an error; never returns `Ok` on its own.
    async fn lead(&mut self) -> Result<(), CronError> {
        let ctx = self.ctx.clone();
        let (jobs, rev) = ctx.scan(&ctx.keys.jobs()).await?;
        for kv in jobs {
            self.job_changed(&kv);
        }
        let opts = |filters: Vec<WatchFilter>, prev_kv: bool| WatchOptions {
            prefix: true,
            start_revision: rev + 1,
            filters,
            prev_kv,
            ..Default::default()
        };
        let mut jobs_w = ctx
            .client
            .watch(ctx.keys.jobs(), opts(vec![], false))
            .await?;
        let mut claims_w = ctx
            .client
            .watch(ctx.keys.claims(), opts(vec![WatchFilter::NoPut], true))
            .await?;
        self.recover_lost().await?;
        let mut pruned = std::time::Instant::now();
        loop {
            let more = self.dispatch_due().await?;
            if pruned.elapsed() >= PRUNE_EVERY {
                self.prune().await?;
                pruned = std::time::Instant::now();
            }
            if more {
                continue;
            }
            let next = self.next_wake();
            let clock = ctx.clock.clone();
            let sleep = async move {
                match next {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
                u = jobs_w.next() => match u {
                    Some(Ok(u)) => {
                        for ev in u.events {
                            match (ev.r#type(), ev.kv) {
                                (EventType::Put, Some(kv)) => self.job_changed(&kv),
                                (EventType::Delete, Some(kv)) => {
                                    if let Some(name) = ctx.keys.job_name(&kv.key) {
                                        tracing::info!(job = name, "job deleted");
                                        self.jobs.remove(name);
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(raftkv_client::Error::WatchClosed.into()),
                },
                u = claims_w.next() => match u {
                    Some(Ok(u)) => {
                        for ev in u.events {
                            if ev.r#type() == EventType::Delete {
                                if let Some(prev) = ev.prev_kv {
                                    self.claim_gone(&prev).await?;
                                }
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(raftkv_client::Error::WatchClosed.into()),
                },
            }
        }
    }

    /// A job was added or edited: follow its new definition (keeping its cursor).
    fn job_changed(&mut self, kv: &KeyValue) {
        let Some(name) = self.ctx.keys.job_name(&kv.key) else {
            return;
        };
        let job = match Job::from_json(&kv.value) {
            Ok(j) if j.name == name => j,
            Ok(j) => {
                tracing::warn!(key = name, name = %j.name, "job stored under another name; ignored");
                self.jobs.remove(name);
                return;
            }
            Err(e) => {
                tracing::warn!(job = name, error = %e, "invalid job definition ignored");
                self.jobs.remove(name);
                return;
            }
        };
        let schedule = match Schedule::new(&job.schedule, &job.timezone) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(job = name, error = %e, "invalid schedule ignored");
                self.jobs.remove(name);
                return;
            }
        };
        let cursor = self.jobs.get(name).and_then(|f| f.cursor);
        tracing::info!(job = name, schedule = %job.schedule, enabled = job.enabled, "following job");
        self.jobs.insert(
            name.to_string(),
            Followed {
                job,
                schedule,
                cursor,
            },
        );
    }

    /// The earliest next fire of an enabled job.
    fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.jobs
            .values()
            .filter(|f| f.job.enabled)
            .filter_map(|f| f.schedule.next_after(f.cursor?))
            .min()
    }

    /// Commits every due fire; returns whether some job has more due than one batch held.
    async fn dispatch_due(&mut self) -> Result<bool, CronError> {
        let now = self.ctx.clock.now();
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        let mut more = false;
        for name in names {
            let cursor = self.cursor(&name, now).await?;
            let Some(f) = self.jobs.get(&name) else {
                continue;
            };
            if !f.job.enabled {
                if now - cursor > DISABLED_CURSOR_LAG {
                    self.commit_cursor(&name, now).await?;
                }
                continue;
            }
            let due = f.schedule.between(cursor, now, BATCH);
            if due.is_empty() {
                continue;
            }
            let deadline = now - chrono::Duration::seconds(f.job.starting_deadline_secs as i64);
            let job = f.job.clone();
            let all_late = due.last().is_some_and(|t| *t < deadline);
            if due.len() == BATCH && all_late && job.missed != Missed::RunAll {
                // A long outage: jump over the late fires instead of listing them all.
                let last = f
                    .schedule
                    .last_before(deadline)
                    .unwrap_or(due[due.len() - 1]);
                let keep = job.missed == Missed::RunOnce;
                let missed_to = if keep {
                    f.schedule.last_before(last).unwrap_or(due[0]).max(due[0])
                } else {
                    last
                };
                self.commit_missed(&job, due[0], missed_to, None).await?;
                if keep {
                    self.commit_fire(&job, last).await?;
                }
                more = true;
                continue;
            }
            more |= due.len() == BATCH;
            let plans = plan(&due, deadline, job.missed);
            let missed: Vec<DateTime<Utc>> = plans
                .iter()
                .filter(|(_, p)| *p == Plan::Missed)
                .map(|(t, _)| *t)
                .collect();
            if let (Some(first), Some(last)) = (missed.first(), missed.last()) {
                self.commit_missed(&job, *first, *last, Some(missed.len()))
                    .await?;
            }
            for (at, p) in plans {
                if p == Plan::Run {
                    self.commit_fire(&job, at).await?;
                }
            }
        }
        Ok(more)
    }

    /// The job's cursor: cached, else read, else (a job never dispatched) now, persisted.
    async fn cursor(&mut self, name: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        if let Some(c) = self.jobs.get(name).and_then(|f| f.cursor) {
            return Ok(c);
        }
        let stored = self
            .ctx
            .read::<DateTime<Utc>>(&self.ctx.keys.cursor(name))
            .await?;
        let c = match stored.value {
            Some(c) => c,
            None => {
                self.commit_cursor(name, now).await?;
                now
            }
        };
        if let Some(f) = self.jobs.get_mut(name) {
            f.cursor = Some(c);
        }
        Ok(c)
    }

    fn set_cursor(&mut self, name: &str, at: DateTime<Utc>) {
        if let Some(f) = self.jobs.get_mut(name) {
            if f.cursor.is_none_or(|c| c < at) {
                f.cursor = Some(at);
            }
        }
    }

    async fn commit_cursor(&mut self, name: &str, at: DateTime<Utc>) -> Result<(), CronError> {
        let txn = Txn::new()
            .when([self.guard.clone()])
            .and_then([store::put_cursor(&self.ctx.keys, name, at)]);
        if !self.ctx.txn(txn).await?.succeeded {
            return Err(CronError::Deposed);
        }
        self.set_cursor(name, at);
        Ok(())
    }

    /// Records the fires from `first` to `last` as missed (one history record; `count` of
    /// them if known) and moves the cursor past them.
    async fn commit_missed(
        &mut self,
        job: &Job,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        count: Option<usize>,
    ) -> Result<(), CronError> {
        let now = self.ctx.clock.now();
        let run = Run {
            job: job.name.clone(),
            scheduled: first,
            attempt: 0,
            status: RunStatus::Missed,
            node: None,
            token: 0,
            started: None,
            ended: now,
            code: None,
            output: match count {
                Some(1) => "missed: past its starting deadline".to_string(),
                Some(n) => format!(
                    "{n} fires missed, {} to {}: past their starting deadline",
                    first.to_rfc3339(),
                    last.to_rfc3339()
                ),
                None => format!(
                    "fires missed from {} to {}: past their starting deadline",
                    first.to_rfc3339(),
                    last.to_rfc3339()
                ),
            },
        };
        let txn = Txn::new().when([self.guard.clone()]).and_then([
            store::put_run(&self.ctx.keys, &run),
            store::put_cursor(&self.ctx.keys, &job.name, last),
        ]);
        if !self.ctx.txn(txn).await?.succeeded {
            return Err(CronError::Deposed);
        }
        tracing::info!(job = %job.name, from = %first, to = %last, "fires missed");
        self.set_cursor(&job.name, last);
        Ok(())
    }

    /// Commits the fire of `job` at `at` exactly once, applying the concurrency policy.
    async fn commit_fire(&mut self, job: &Job, at: DateTime<Utc>) -> Result<(), CronError> {
        let keys = self.ctx.keys.clone();
        let fire_key = keys.fire(&job.name, at);
        let now = self.ctx.clock.now();
        let fire = Fire {
            job: job.name.clone(),
            scheduled: at,
            attempt: 1,
            state: FireState::Pending,
            not_before: at,
            node: None,
        };
        for _ in 0..8 {
            let mut when = vec![self.guard.clone(), store::absent(&fire_key)];
            let mut ops = vec![store::put_cursor(&keys, &job.name, at)];
            let mut outcome = FireState::Pending;
            if job.concurrency == Concurrency::Allow {
                ops.push(store::put_json(&fire_key, &fire));
            } else {
                let active_key = keys.active(&job.name);
                let active = self.ctx.read_kv(&active_key).await?;
                when.push(store::unchanged(
                    &active_key,
                    active.as_ref().map_or(0, |kv| kv.mod_revision),
                ));
                // The run the marker points at, if it is still going.
                let mut current = None;
                if let Some(kv) = &active {
                    let old_key = String::from_utf8_lossy(&kv.value).into_owned();
                    let old = self.ctx.read::<Fire>(&old_key).await?;
                    when.push(store::unchanged(&old_key, old.mod_revision));
                    if let Some(old_fire) = old.value.filter(|f| !f.state.is_terminal()) {
                        current = Some((old_key, old_fire));
                    }
                }
                match (job.concurrency, current) {
                    (Concurrency::Forbid, Some((old_key, _))) => {
                        outcome = FireState::Skipped;
                        ops.push(store::put_json(
                            &fire_key,
                            &Fire {
                                state: FireState::Skipped,
                                ..fire.clone()
                            },
                        ));
                        ops.push(store::put_run(
                            &keys,
                            &not_run(
                                &job.name,
                                at,
                                0,
                                RunStatus::Skipped,
                                now,
                                format!("skipped: {old_key} still running (concurrency forbid)"),
                            ),
                        ));
                    }
                    (Concurrency::Replace, Some((old_key, old_fire))) => {
                        ops.push(store::put_json(
                            &old_key,
                            &Fire {
                                state: FireState::Cancelled,
                                ..old_fire.clone()
                            },
                        ));
                        // Deleting the claim revokes the old run's token.
                        ops.push(store::delete(&keys.claim(&job.name, old_fire.scheduled)));
                        ops.push(store::put_run(
                            &keys,
                            &Run {
                                node: old_fire.node.clone(),
                                ..not_run(
                                    &job.name,
                                    old_fire.scheduled,
                                    old_fire.attempt,
                                    RunStatus::Cancelled,
                                    now,
                                    format!(
                                        "cancelled: replaced by the fire at {}",
                                        at.to_rfc3339()
                                    ),
                                )
                            },
                        ));
                        ops.push(store::put_json(&fire_key, &fire));
                        ops.push(store::put_json(&active_key, &fire_key));
                    }
                    _ => {
                        ops.push(store::put_json(&fire_key, &fire));
                        ops.push(TxnOp::put(
                            active_key.as_str(),
                            fire_key.clone(),
                            raftkv_client::PutOptions::default(),
                        ));
                    }
                }
            }
            let resp = self.ctx.txn(Txn::new().when(when).and_then(ops)).await?;
            if resp.succeeded {
                tracing::info!(job = %job.name, scheduled = %at, state = ?outcome, "fire committed");
                self.set_cursor(&job.name, at);
                return Ok(());
            }
            // Why not: deposed, or committed already (by a previous dispatcher), or the active
            // marker moved meanwhile (try again).
            if !self.still_leading().await? {
                return Err(CronError::Deposed);
            }
            if self.ctx.read_kv(&fire_key).await?.is_some() {
                tracing::debug!(job = %job.name, scheduled = %at, "fire was committed already");
                self.set_cursor(&job.name, at);
                return Ok(());
            }
        }
        Err(CronError::Contended(job.name.clone()))
    }

    async fn still_leading(&self) -> Result<bool, CronError> {
        let resp = self.ctx.txn(Txn::new().when([self.guard.clone()])).await?;
        Ok(resp.succeeded)
    }

    /// On taking over: claimed fires whose claim is gone lost their executor.
    async fn recover_lost(&mut self) -> Result<(), CronError> {
        let (fires, _) = self.ctx.scan(&self.ctx.keys.fires()).await?;
        let (claims, _) = self.ctx.scan(&self.ctx.keys.claims()).await?;
        let claimed: HashMap<Vec<u8>, ()> = claims.into_iter().map(|kv| (kv.key, ())).collect();
        for kv in fires {
            let Some(fire) = record::from_json::<Fire>(&kv.key, &kv.value) else {
                continue;
            };
            if fire.state != FireState::Claimed {
                continue;
            }
            let claim_key = self.ctx.keys.claim(&fire.job, fire.scheduled);
            if !claimed.contains_key(claim_key.as_bytes()) {
                self.lost(&kv, fire).await?;
            }
        }
        Ok(())
    }

    /// A claim was deleted: if its fire is still claimed under that claim, the run was lost.
    async fn claim_gone(&mut self, claim: &KeyValue) -> Result<(), CronError> {
        let Some((job, at)) = self.ctx.keys.parse_slot(&claim.key) else {
            return Ok(());
        };
        let fire_key = self.ctx.keys.fire(&job, at);
        let Some(kv) = self.ctx.read_kv(&fire_key).await? else {
            return Ok(());
        };
        let Some(fire) = record::from_json::<Fire>(&kv.key, &kv.value) else {
            return Ok(());
        };
        // The claim and the fire's claimed state were written by one Txn.
        if fire.state == FireState::Claimed && kv.mod_revision == claim.mod_revision {
            self.lost(&kv, fire).await?;
        }
        Ok(())
    }

    /// Records a lost run and re-dispatches its fire, or ends it, per the job's policy.
    async fn lost(&mut self, kv: &KeyValue, fire: Fire) -> Result<(), CronError> {
        let now = self.ctx.clock.now();
        let keys = self.ctx.keys.clone();
        let fire_key = String::from_utf8_lossy(&kv.key).into_owned();
        let job = self.jobs.get(&fire.job).map(|f| f.job.clone());
        let late = job.as_ref().is_none_or(|j| {
            j.missed == Missed::Skip
                && now - fire.scheduled > chrono::Duration::seconds(j.starting_deadline_secs as i64)
        });
        let again = !late && fire.attempt < MAX_ATTEMPTS_AFTER_LOSS;
        let run = Run {
            node: fire.node.clone(),
            token: kv.mod_revision,
            ..not_run(
                job.as_ref().map_or(&fire.job, |j| &j.name).as_str(),
                fire.scheduled,
                fire.attempt,
                RunStatus::Lost,
                now,
                if again {
                    "lost: its executor's lease expired; dispatched again".to_string()
                } else {
                    "lost: its executor's lease expired; not retried (deadline passed or too many losses)".to_string()
                },
            )
        };
        let next = if again {
            Fire {
                attempt: fire.attempt + 1,
                state: FireState::Pending,
                not_before: now,
                node: None,
                ..fire.clone()
            }
        } else {
            Fire {
                state: FireState::Lost,
                ..fire.clone()
            }
        };
        let mut ops = vec![
            store::put_run(&keys, &run),
            store::put_json(&fire_key, &next),
        ];
        if !again {
            ops.push(store::clear_active(&keys, &fire.job, &fire_key));
        }
        let txn = Txn::new()
            .when([
                self.guard.clone(),
                store::unchanged(&fire_key, kv.mod_revision),
            ])
            .and_then(ops);
        if self.ctx.txn(txn).await?.succeeded {
            tracing::warn!(job = %fire.job, scheduled = %fire.scheduled, attempt = fire.attempt, redispatched = again, "run lost");
        } else if !self.still_leading().await? {
            return Err(CronError::Deposed);
        }
        Ok(())
    }

    /// Keeps each job's newest `history_limit` fire records (deleting only finished ones) and
    /// run records.
    async fn prune(&mut self) -> Result<(), CronError> {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            let (fires, _) = self.ctx.scan(&self.ctx.keys.fires_of(&name)).await?;
            if fires.len() > self.ctx.history_limit {
                let old = &fires[..fires.len() - self.ctx.history_limit];
                let finished: Vec<TxnOp> = old
                    .iter()
                    .filter(|kv| {
                        record::from_json::<Fire>(&kv.key, &kv.value)
                            .is_some_and(|f| f.state.is_terminal())
                    })
                    .map(|kv| store::delete(&String::from_utf8_lossy(&kv.key)))
                    .collect();
                for chunk in finished.chunks(100) {
                    self.ctx
                        .txn(Txn::new().and_then(chunk.iter().cloned()))
                        .await?;
                }
            }
            self.ctx.prune_runs(&name).await?;
        }
        Ok(())
    }
}

/// Splits due instants into runs and misses per the `missed` policy: instants before
/// `deadline` are late.
fn plan(
    due: &[DateTime<Utc>],
    deadline: DateTime<Utc>,
    missed: Missed,
) -> Vec<(DateTime<Utc>, Plan)> {
    let late = due.iter().take_while(|t| **t < deadline).count();
    due.iter()
        .enumerate()
        .map(|(i, t)| {
            let p = if i >= late {
                Plan::Run
            } else {
                match missed {
                    Missed::RunAll => Plan::Run,
                    Missed::RunOnce if i + 1 == late => Plan::Run,
                    _ => Plan::Missed,
                }
            };
            (*t, p)
        })
        .collect()
}

/// A history record of a fire that did not run (or was cut short).
fn not_run(
    job: &str,
    at: DateTime<Utc>,
    attempt: u32,
    status: RunStatus,
    now: DateTime<Utc>,
    why: String,
) -> Run {
    Run {
        job: job.to_string(),
        scheduled: at,
        attempt,
        status,
        node: None,
        token: 0,
        started: None,
        ended: now,
        code: None,
        output: why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn plans(missed: Missed) -> Vec<Plan> {
        let due: Vec<DateTime<Utc>> = (1..=5).map(t).collect();
        plan(&due, t(4), missed)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    #[test]
    fn missed_policies_split_late_fires() {
        use Plan::{Missed as M, Run as R};
        // t(1)..t(3) are late (before the deadline t(4)); t(4), t(5) are on time.
        assert_eq!(plans(Missed::Skip), vec![M, M, M, R, R]);
        assert_eq!(plans(Missed::RunOnce), vec![M, M, R, R, R]);
        assert_eq!(plans(Missed::RunAll), vec![R, R, R, R, R]);
    }
}
