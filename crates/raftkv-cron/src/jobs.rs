//! The admin API behind `raftkv-cron jobs ...`: add, list, remove, enable and disable jobs,
//! trigger a run by hand and read the history, all as transactions on the store (see
//! [`crate::keys`] for the layout).
//!
//! - [`Jobs::add`] creates `jobs/<name>` (only if absent, unless replacing) and, in the same
//!   Txn, `cursor/<name>` = now if the job has no cursor yet, so the dispatcher never back-fills
//!   fires from before the job existed.
//! - [`Jobs::run_now`] creates a pending fire record for the current millisecond directly; the
//!   executors claim it like any other. A manual run ignores the job's concurrency policy (as
//!   `kubectl create job --from=cronjob/...` does) and its `enabled` flag.

use chrono::{DateTime, TimeZone, Utc};
use raftkv_client::proto::{KeyValue, SortOrder, SortTarget};
use raftkv_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};

use crate::clock::Clock;
use crate::error::CronError;
use crate::job::{Job, JobError};
use crate::keys::Keys;
use crate::record::{self, Fire, FireState, Run};

/// Read-modify-write attempts before [`CronError::Contended`].
const RMW_ATTEMPTS: usize = 5;
/// Fire keys tried by [`Jobs::run_now`] (the next millisecond if one is taken).
const RUN_NOW_ATTEMPTS: i64 = 5;

/// The job admin API over one store and key prefix.
#[derive(Clone, Debug)]
pub struct Jobs {
    client: Client,
    keys: Keys,
    clock: Clock,
}

/// `at` cut to whole milliseconds: the precision of fire keys.
pub fn to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at.timestamp_millis())
        .single()
        .unwrap_or(at)
}

fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

fn present(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Greater, 0)
}

fn put(key: &str, value: Vec<u8>) -> TxnOp {
    TxnOp::put(key, value, PutOptions::default())
}

/// The key of every claim of `job` (the layout has no helper for one job's claims).
fn claims_of(keys: &Keys, job: &str) -> String {
    format!("{}{job}/", keys.claims())
}

/// Refuses names that are not valid job names before they are used in a key (`a/b` would
/// otherwise address another job's records).
fn check_name(name: &str) -> Result<(), CronError> {
    if crate::job::valid_name(name) {
        Ok(())
    } else {
        Err(CronError::NotFound(name.to_string()))
    }
}

/// Parses a stored job definition (without validating it: a definition the current build would
/// refuse can still be listed, disabled and removed).
fn parse_job(kv: &KeyValue) -> Result<Job, JobError> {
    serde_json::from_slice(&kv.value).map_err(|e| JobError::Json(e.to_string()))
}

impl Jobs {
    /// The API over `client`, with keys under `keys`, on the system clock.
    pub fn new(client: Client, keys: Keys) -> Jobs {
        Jobs {
            client,
            keys,
            clock: Clock::System,
        }
    }

    /// Uses `clock` for "now" (new cursors, manual runs).
    pub fn with_clock(mut self, clock: Clock) -> Jobs {
        self.clock = clock;
        self
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The store client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn now(&self) -> DateTime<Utc> {
        to_millis(self.clock.now())
    }

    /// Validates `job` and stores it. Without `replace`, a job of the same name must not exist
    /// ([`CronError::Exists`]); with it, the definition is overwritten. Either way the job's
    /// cursor is set to now if it has none, in the same Txn.
    pub async fn add(&self, job: &Job, replace: bool) -> Result<(), CronError> {
        job.validate()?;
        let key = self.keys.job(&job.name);
        let cursor = self.keys.cursor(&job.name);
        let ops = [
            put(&key, job.to_json()),
            TxnOp::txn(
                Txn::new()
                    .when([absent(&cursor)])
                    .and_then([put(&cursor, record::to_json(&self.now()))]),
            ),
        ];
        let txn = if replace {
            Txn::new().and_then(ops)
        } else {
            Txn::new().when([absent(&key)]).and_then(ops)
        };
        if !self.client.txn(txn).await?.succeeded {
            return Err(CronError::Exists(job.name.clone()));
        }
        tracing::info!(job = %job.name, replace, "job stored");
        Ok(())
    }

    async fn get_kv(&self, name: &str) -> Result<KeyValue, CronError> {
        check_name(name)?;
        let r = self
            .client
            .get(self.keys.job(name), GetOptions::default())
            .await?;
        r.kvs
            .into_iter()
            .next()
            .ok_or_else(|| CronError::NotFound(name.to_string()))
    }

    /// The job called `name` ([`CronError::NotFound`] if there is none).
    pub async fn get(&self, name: &str) -> Result<Job, CronError> {
        let kv = self.get_kv(name).await?;
        Ok(parse_job(&kv)?)
    }

    /// Every job, sorted by name. A stored value that is not a job is skipped with a warning.
    pub async fn list(&self) -> Result<Vec<Job>, CronError> {
        let r = self
            .client
            .get(self.keys.jobs(), GetOptions::prefix())
            .await?;
        let mut jobs: Vec<Job> = r
            .kvs
            .iter()
            .filter_map(|kv| match parse_job(kv) {
                Ok(job) => Some(job),
                Err(e) => {
                    tracing::warn!(
                        key = %String::from_utf8_lossy(&kv.key),
                        error = %e,
                        "unreadable job definition skipped"
                    );
                    None
                }
            })
            .collect();
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(jobs)
    }

    /// Deletes the job, its cursor and its active-run marker; with `purge`, also its fires,
    /// claims (an executor still running one sees its claim revoked) and history.
    pub async fn remove(&self, name: &str, purge: bool) -> Result<(), CronError> {
        check_name(name)?;
        let key = self.keys.job(name);
        let mut ops = vec![
            TxnOp::delete(key.as_str(), DeleteOptions::default()),
            TxnOp::delete(self.keys.cursor(name), DeleteOptions::default()),
            TxnOp::delete(self.keys.active(name), DeleteOptions::default()),
        ];
        if purge {
            for prefix in [
                self.keys.fires_of(name),
                claims_of(&self.keys, name),
                self.keys.runs_of(name),
            ] {
                ops.push(TxnOp::delete(prefix, DeleteOptions::prefix()));
            }
        }
        let txn = Txn::new().when([present(&key)]).and_then(ops);
        if !self.client.txn(txn).await?.succeeded {
            return Err(CronError::NotFound(name.to_string()));
        }
        tracing::info!(job = %name, purge, "job removed");
        Ok(())
    }

    /// Enables or disables the job (a read-modify-write guarded by the job's mod revision,
    /// retried a few times, then [`CronError::Contended`]).
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), CronError> {
        for _ in 0..RMW_ATTEMPTS {
            let kv = self.get_kv(name).await?;
            let mut job = parse_job(&kv)?;
            if job.enabled == enabled {
                return Ok(());
            }
            job.enabled = enabled;
            let key = self.keys.job(name);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision,
                )])
                .and_then([put(&key, job.to_json())]);
            if self.client.txn(txn).await?.succeeded {
                tracing::info!(job = %name, enabled, "job updated");
                return Ok(());
            }
        }
        Err(CronError::Contended(name.to_string()))
    }

    /// Creates a pending fire of the job for now (to the millisecond; the next millisecond if
    /// that fire exists already) and returns its instant. The executors pick it up.
    pub async fn run_now(&self, name: &str) -> Result<DateTime<Utc>, CronError> {
        check_name(name)?;
        let job_key = self.keys.job(name);
        let now = self.now();
        for offset in 0..RUN_NOW_ATTEMPTS {
            let at = now + chrono::Duration::milliseconds(offset);
            let fire_key = self.keys.fire(name, at);
            let fire = Fire {
                job: name.to_string(),
                scheduled: at,
                attempt: 1,
                state: FireState::Pending,
                not_before: at,
                node: None,
            };
            let txn = Txn::new()
                .when([present(&job_key), absent(&fire_key)])
                .and_then([put(&fire_key, record::to_json(&fire))])
                .or_else([TxnOp::get(
                    job_key.as_str(),
                    GetOptions {
                        count_only: true,
                        ..Default::default()
                    },
                )]);
            let resp = self.client.txn(txn).await?;
            if resp.succeeded {
                tracing::info!(job = %name, scheduled = %at, "manual run requested");
                return Ok(at);
            }
            if !job_exists(&resp) {
                return Err(CronError::NotFound(name.to_string()));
            }
        }
        Err(CronError::Contended(name.to_string()))
    }

    /// The job's newest `limit` history records (0: all), newest first. Records that do not
    /// parse are skipped (logged). History outlives a job removed without `--purge`.
    pub async fn history(&self, name: &str, limit: usize) -> Result<Vec<Run>, CronError> {
        check_name(name)?;
        let r = self
            .client
            .get(
                self.keys.runs_of(name),
                GetOptions {
                    prefix: true,
                    limit: i64::try_from(limit).unwrap_or(i64::MAX),
                    sort: Some((SortTarget::Key, SortOrder::Descend)),
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.kvs
            .iter()
            .filter_map(|kv| record::from_json::<Run>(&kv.key, &kv.value))
            .collect())
    }

    /// The job's newest history record, if any.
    pub async fn last_run(&self, name: &str) -> Result<Option<Run>, CronError> {
        Ok(self.history(name, 1).await?.into_iter().next())
    }
}

/// Whether the `or_else` count of a failed [`Jobs::run_now`] Txn found the job.
fn job_exists(resp: &raftkv_client::proto::etcdserverpb::TxnResponse) -> bool {
    use raftkv_client::proto::etcdserverpb::response_op::Response;
    match resp.responses.first().and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.count > 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_cut_to_milliseconds() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T18:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(to_millis(at).to_rfc3339(), "2026-11-25T18:00:00.123+00:00");
        assert_eq!(to_millis(to_millis(at)), to_millis(at));
    }

    #[test]
    fn claim_prefix_of_one_job_excludes_longer_names() {
        let keys = Keys::new("/c");
        let p = claims_of(&keys, "a");
        assert_eq!(p, "/c/claims/a/");
        let at = Utc.timestamp_millis_opt(5).unwrap();
        assert!(keys.claim("a", at).starts_with(&p));
        assert!(!keys.claim("ab", at).starts_with(&p));
    }

    #[test]
    fn names_outside_the_alphabet_are_never_keys() {
        assert!(matches!(check_name("a/b"), Err(CronError::NotFound(n)) if n == "a/b"));
        assert!(matches!(check_name(""), Err(CronError::NotFound(_))));
        assert!(check_name("nightly-backup.v2").is_ok());
    }
}
