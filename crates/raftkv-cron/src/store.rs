//! Small helpers over the raftkv client shared by the dispatcher and the executors: reading
//! records with their revisions, and the compares and operations the transactions are made of.

use chrono::{DateTime, Utc};
use raftkv_client::proto::etcdserverpb::response_op::Response;
use raftkv_client::proto::etcdserverpb::TxnResponse;
use raftkv_client::proto::KeyValue;
use raftkv_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use serde::Serialize;

use crate::clock::Clock;
use crate::error::CronError;
use crate::keys::Keys;
use crate::record::{self, Run};

/// What every part of a scheduler process shares.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) keys: Keys,
    pub(crate) node: String,
    pub(crate) clock: Clock,
    pub(crate) lease_ttl: i64,
    pub(crate) history_limit: usize,
}

/// A key's value and mod revision (0 if absent).
pub(crate) struct Read<T> {
    pub(crate) value: Option<T>,
    pub(crate) mod_revision: i64,
}

impl Ctx {
    /// One key, linearizably.
    pub(crate) async fn read_kv(&self, key: &str) -> Result<Option<KeyValue>, CronError> {
        let r = self.client.get(key, GetOptions::default()).await?;
        Ok(r.kvs.into_iter().next())
    }

    /// One record and its mod revision; an unparseable value reads as absent (logged).
    pub(crate) async fn read<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Read<T>, CronError> {
        Ok(match self.read_kv(key).await? {
            Some(kv) => Read {
                value: record::from_json(&kv.key, &kv.value),
                mod_revision: kv.mod_revision,
            },
            None => Read {
                value: None,
                mod_revision: 0,
            },
        })
    }

    /// Every key-value under `prefix`, in key order.
    pub(crate) async fn scan(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), CronError> {
        let r = self.client.get(prefix, GetOptions::prefix()).await?;
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        Ok((r.kvs, rev))
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, CronError> {
        Ok(self.client.txn(txn).await?)
    }

    /// Keeps the newest `history_limit` run records of `job`, deleting older ones.
    pub(crate) async fn prune_runs(&self, job: &str) -> Result<(), CronError> {
        let prefix = self.keys.runs_of(job);
        let r = self
            .client
            .get(
                prefix.as_str(),
                GetOptions {
                    prefix: true,
                    keys_only: true,
                    ..Default::default()
                },
            )
            .await?;
        if r.kvs.len() <= self.history_limit {
            return Ok(());
        }
        let keep_from = r.kvs[r.kvs.len() - self.history_limit].key.clone();
        self.client
            .delete(
                prefix.as_str(),
                DeleteOptions {
                    range_end: Some(keep_from),
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }
}

pub(crate) fn put_json<T: Serialize>(key: &str, v: &T) -> TxnOp {
    TxnOp::put(key, record::to_json(v), PutOptions::default())
}

pub(crate) fn put_run(keys: &Keys, run: &Run) -> TxnOp {
    put_json(&keys.run(&run.job, run.scheduled, run.attempt), run)
}

pub(crate) fn put_cursor(keys: &Keys, job: &str, at: DateTime<Utc>) -> TxnOp {
    put_json(&keys.cursor(job), &at)
}

pub(crate) fn delete(key: &str) -> TxnOp {
    TxnOp::delete(key, DeleteOptions::default())
}

/// `key` is absent.
pub(crate) fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

/// `key` was last modified at `rev` (0: absent).
pub(crate) fn unchanged(key: &str, rev: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, rev)
}

/// Deletes the job's active-run marker if it still points at `fire_key`.
pub(crate) fn clear_active(keys: &Keys, job: &str, fire_key: &str) -> TxnOp {
    let active = keys.active(job);
    TxnOp::txn(
        Txn::new()
            .when([Compare::value(
                active.as_str(),
                CompareOp::Equal,
                fire_key.as_bytes().to_vec(),
            )])
            .and_then([delete(&active)]),
    )
}

/// The key-values a txn's `i`-th operation (a get) returned.
pub(crate) fn range_result(resp: &TxnResponse, i: usize) -> Vec<KeyValue> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}
