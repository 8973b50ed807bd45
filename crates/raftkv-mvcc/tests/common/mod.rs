//! Shared by the integration tests: an independent in-memory model of etcd v3's MVCC semantics
//! (written from etcd 3.4/3.5 `etcdserver/apply.go`, `mvcc/` and `v3rpc/key.go` behaviour, not
//! from this crate's sources) and small helpers to compare a [`Store`] against it.
//!
//! The model keeps every revision of every key, so it answers a range at any revision, and the
//! full event log, so it answers history queries.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashSet};

use raftkv_mvcc::{Error, LeaseInfo, RequestError, Store};
use raftkv_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use raftkv_proto::mvccpb::{event::EventType, Event, KeyValue};

/// The model's error: an etcd refusal, or a request whose outcome etcd leaves undefined (etcd
/// panics while applying it), which the harness must not send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MErr {
    Req(RequestError),
    Undefined,
}

impl From<RequestError> for MErr {
    fn from(e: RequestError) -> Self {
        MErr::Req(e)
    }
}

pub type MResult<T> = Result<T, MErr>;

/// One change of one key.
#[derive(Clone, Debug)]
struct Rec {
    main: i64,
    sub: i64,
    /// `None` = deleted.
    kv: Option<KeyValue>,
}

#[derive(Clone, Debug)]
struct Ev {
    main: i64,
    key: Vec<u8>,
    kv: Option<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MLease {
    pub ttl: i64,
    pub remaining_ttl: i64,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub rev: i64,
    /// -1 until the first compaction.
    pub compact_rev: i64,
    keys: BTreeMap<Vec<u8>, Vec<Rec>>,
    events: Vec<Ev>,
    pub leases: BTreeMap<i64, MLease>,
    pub min_lease_ttl: i64,
    pub max_txn_ops: usize,
}

pub fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// etcd's key/range_end convention.
pub fn in_range(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        key <= k && k < end
    }
}

/// A write in progress: every change gets main `begin + 1` and the next sub.
struct Tx {
    begin: i64,
    changes: i64,
}

impl Tx {
    fn rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }
}

pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

impl Model {
    pub fn new(min_lease_ttl: i64, max_txn_ops: usize) -> Self {
        Model {
            rev: 1,
            compact_rev: -1,
            keys: BTreeMap::new(),
            events: Vec::new(),
            leases: BTreeMap::new(),
            min_lease_ttl,
            max_txn_ops,
        }
    }

    // ---------------------------------------------------------------- reads

    /// The key's value as of revision `at`.
    pub fn kv_at(&self, key: &[u8], at: i64) -> Option<&KeyValue> {
        let recs = self.keys.get(key)?;
        recs.iter()
            .rev()
            .find(|r| r.main <= at)
            .and_then(|r| r.kv.as_ref())
    }

    /// The key's value now (including changes of a write in progress).
    pub fn current(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key)?.last()?.kv.as_ref()
    }

    /// Every key existing at `at` in the range, in key order.
    pub fn kvs_at(&self, key: &[u8], end: &[u8], at: i64) -> Vec<KeyValue> {
        self.keys
            .keys()
            .filter(|k| in_range(key, end, k))
            .filter_map(|k| self.kv_at(k, at).cloned())
            .collect()
    }

    fn current_in(&self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        self.keys
            .keys()
            .filter(|k| in_range(key, end, k))
            .filter_map(|k| self.current(k).cloned())
            .collect()
    }

    /// A Range, validated, as seen at revision `cur`.
    pub fn range(&self, req: &RangeRequest) -> MResult<RangeResponse> {
        check_range(req)?;
        self.range_at(req, self.rev)
    }

    fn range_at(&self, req: &RangeRequest, cur: i64) -> MResult<RangeResponse> {
        if req.revision > cur {
            return Err(RequestError::FutureRevision.into());
        }
        let at = if req.revision <= 0 { cur } else { req.revision };
        if at < self.compact_rev {
            return Err(RequestError::Compacted.into());
        }
        let all = self.kvs_at(&req.key, &req.range_end, at);
        let count = all.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                header: header(cur),
                kvs: vec![],
                more: false,
                count,
            });
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let order = SortOrder::try_from(req.sort_order).unwrap();
        let target = SortTarget::try_from(req.sort_target).unwrap();
        let mut kvs: Vec<KeyValue> = if order != SortOrder::None || filtered || req.limit <= 0 {
            all
        } else {
            all.into_iter().take(req.limit as usize + 1).collect()
        };
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        let order = if order == SortOrder::None && target != SortTarget::Key {
            SortOrder::Ascend
        } else {
            order
        };
        if order != SortOrder::None {
            // Stable: ties keep key order in both directions.
            let field = |kv: &KeyValue| -> (i64, Vec<u8>) {
                match target {
                    SortTarget::Key => (0, kv.key.clone()),
                    SortTarget::Version => (kv.version, vec![]),
                    SortTarget::Create => (kv.create_revision, vec![]),
                    SortTarget::Mod => (kv.mod_revision, vec![]),
                    SortTarget::Value => (0, kv.value.clone()),
                }
            };
            if order == SortOrder::Descend {
                kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv)));
            } else {
                kvs.sort_by_key(field);
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header: header(cur),
            kvs,
            more,
            count,
        })
    }

    /// Every key and value at revision `at` (all fields), for whole-state comparisons.
    pub fn all_at(&self, at: i64) -> Vec<KeyValue> {
        self.kvs_at(&[0], &[0], at)
    }

    /// Does the store still hold event `e` after the compactions so far? Compaction at C keeps,
    /// of each key, only the latest change at or below C, and not even that if it is a delete
    /// below C (a delete at C itself stays for watchers starting at C, as in etcd since #18089).
    fn retained(&self, e_idx: usize) -> bool {
        let e = &self.events[e_idx];
        if e.main > self.compact_rev {
            return true;
        }
        if e.kv.is_none() && e.main < self.compact_rev {
            return false;
        }
        // The latest change of this key at or below compact_rev must be this very event.
        let later = self.events[e_idx + 1..]
            .iter()
            .any(|o| o.key == e.key && o.main <= self.compact_rev);
        !later
    }

    /// Events from `from` on, whole revisions at a time, stopping after the revision in which
    /// `max_events` is reached. Returns the events and the `next` revision.
    pub fn history(
        &self,
        from: i64,
        max_events: usize,
        prev_kv: bool,
    ) -> MResult<(Vec<Event>, i64)> {
        if from < self.compact_rev {
            return Err(RequestError::Compacted.into());
        }
        let from = from.max(1);
        let max = max_events.max(1);
        let mut out = Vec::new();
        let mut last: Option<i64> = None;
        let mut full = false;
        for (i, e) in self.events.iter().enumerate() {
            if e.main < from || !self.retained(i) {
                continue;
            }
            if out.len() >= max && last != Some(e.main) {
                full = true;
                break;
            }
            let kv = match &e.kv {
                Some(kv) => kv.clone(),
                None => KeyValue {
                    key: e.key.clone(),
                    mod_revision: e.main,
                    ..Default::default()
                },
            };
            // The value at revision main - 1, if that revision is not compacted.
            let prev = if prev_kv && e.main > self.compact_rev {
                self.kv_at(&e.key, e.main - 1).cloned()
            } else {
                None
            };
            out.push(Event {
                r#type: if e.kv.is_some() {
                    EventType::Put
                } else {
                    EventType::Delete
                } as i32,
                kv: Some(kv),
                prev_kv: prev,
            });
            last = Some(e.main);
        }
        let next = match (full, last) {
            (true, Some(m)) => m + 1,
            _ => self.rev.max(from - 1) + 1,
        };
        Ok((out, next))
    }

    /// Live keys attached to `lease`, sorted.
    pub fn lease_keys(&self, lease: i64) -> Vec<Vec<u8>> {
        self.keys
            .keys()
            .filter(|k| self.current(k).is_some_and(|kv| kv.lease == lease))
            .cloned()
            .collect()
    }

    pub fn lease_info(&self, id: i64, with_keys: bool) -> Option<LeaseInfo> {
        let l = self.leases.get(&id)?;
        Some(LeaseInfo {
            id,
            ttl: l.ttl,
            remaining_ttl: l.remaining_ttl,
            keys: if with_keys {
                self.lease_keys(id)
            } else {
                vec![]
            },
        })
    }

    pub fn lease_infos(&self) -> Vec<LeaseInfo> {
        self.leases
            .keys()
            .map(|id| self.lease_info(*id, false).unwrap())
            .collect()
    }

    // ---------------------------------------------------------------- writes

    fn write_put(&mut self, tx: &mut Tx, key: &[u8], value: Vec<u8>, lease: i64) -> i64 {
        let main = tx.begin + 1;
        let sub = tx.changes;
        tx.changes += 1;
        let (create_revision, version) = match self.current(key) {
            Some(p) => (p.create_revision, p.version + 1),
            None => (main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        self.keys.entry(key.to_vec()).or_default().push(Rec {
            main,
            sub,
            kv: Some(kv.clone()),
        });
        self.events.push(Ev {
            main,
            key: key.to_vec(),
            kv: Some(kv),
        });
        main
    }

    fn write_delete(&mut self, tx: &mut Tx, key: &[u8]) {
        let main = tx.begin + 1;
        let sub = tx.changes;
        tx.changes += 1;
        self.keys
            .get_mut(key)
            .expect("deleting a key the model never saw")
            .push(Rec {
                main,
                sub,
                kv: None,
            });
        self.events.push(Ev {
            main,
            key: key.to_vec(),
            kv: None,
        });
    }

    fn exec_put(&mut self, tx: &mut Tx, req: &PutRequest) -> MResult<PutResponse> {
        let prev = self.current(&req.key).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            // Inside a txn this passed the pre-txn check but an earlier op of the same txn
            // deleted the key: etcd panics applying it.
            return Err(MErr::Undefined);
        }
        let value = if req.ignore_value {
            prev.as_ref().unwrap().value.clone()
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease {
            prev.as_ref().unwrap().lease
        } else {
            req.lease
        };
        let rev = self.write_put(tx, &req.key, value, lease);
        Ok(PutResponse {
            header: header(rev),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn exec_delete(&mut self, tx: &mut Tx, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let victims = self.current_in(&req.key, &req.range_end);
        for kv in &victims {
            self.write_delete(tx, &kv.key);
        }
        DeleteRangeResponse {
            header: header(tx.rev()),
            deleted: victims.len() as i64,
            prev_kvs: if req.prev_kv { victims } else { vec![] },
        }
    }

    pub fn put(&mut self, req: &PutRequest) -> MResult<PutResponse> {
        check_put(req)?;
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(RequestError::LeaseNotFound.into());
        }
        if (req.ignore_value || req.ignore_lease) && self.current(&req.key).is_none() {
            return Err(RequestError::KeyNotFound.into());
        }
        let mut tx = Tx {
            begin: self.rev,
            changes: 0,
        };
        let resp = self.exec_put(&mut tx, req)?;
        self.rev = tx.rev();
        Ok(resp)
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> MResult<DeleteRangeResponse> {
        if req.key.is_empty() {
            return Err(RequestError::EmptyKey.into());
        }
        let mut tx = Tx {
            begin: self.rev,
            changes: 0,
        };
        let resp = self.exec_delete(&mut tx, req);
        self.rev = tx.rev();
        Ok(resp)
    }

    fn compare_holds(&self, c: &Compare) -> bool {
        let kvs = self.current_in(&c.key, &c.range_end);
        let target = CompareTarget::try_from(c.target).ok();
        if kvs.is_empty() {
            if target == Some(CompareTarget::Value) {
                return false;
            }
            return compare_kv(c, target, &KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(c, target, kv))
    }

    /// etcd's compareToPath: the branch of every txn on the chosen path, depth first.
    fn path(&self, req: &TxnRequest, out: &mut Vec<bool>) {
        let ok = req.compare.iter().all(|c| self.compare_holds(c));
        out.push(ok);
        for op in if ok { &req.success } else { &req.failure } {
            if let Some(Request::RequestTxn(t)) = &op.request {
                self.path(t, out);
            }
        }
    }

    /// etcd's checkRequests: visits the ops on the chosen path in order.
    fn visit_path<'r>(
        req: &'r TxnRequest,
        path: &[bool],
        pos: &mut usize,
        f: &mut dyn FnMut(&'r Request) -> Result<(), RequestError>,
    ) -> Result<(), RequestError> {
        let ok = path[*pos];
        *pos += 1;
        for op in if ok { &req.success } else { &req.failure } {
            match &op.request {
                Some(Request::RequestTxn(t)) => Self::visit_path(t, path, pos, f)?,
                Some(r) => f(r)?,
                None => {}
            }
        }
        Ok(())
    }

    fn exec_txn(
        &mut self,
        tx: &mut Tx,
        req: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
    ) -> MResult<TxnResponse> {
        let ok = path[*pos];
        *pos += 1;
        let mut responses = vec![];
        for op in if ok { &req.success } else { &req.failure } {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => {
                    Some(Response::ResponseRange(self.range_at(r, tx.rev())?))
                }
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.exec_put(tx, p)?)),
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.exec_delete(tx, d)))
                }
                Some(Request::RequestTxn(t)) => {
                    Some(Response::ResponseTxn(self.exec_txn(tx, t, path, pos)?))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: ok,
            responses,
        })
    }

    /// A Txn. On `Err` the model may be half-changed: call it on a clone.
    pub fn txn(&mut self, req: &TxnRequest) -> MResult<TxnResponse> {
        check_txn(req, self.max_txn_ops)?;
        let mut path = vec![];
        self.path(req, &mut path);
        // etcd checks every put on the path first, then every range.
        Self::visit_path(req, &path, &mut 0, &mut |r| match r {
            Request::RequestPut(p) => {
                if (p.ignore_value || p.ignore_lease) && self.current(&p.key).is_none() {
                    return Err(RequestError::KeyNotFound);
                }
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return Err(RequestError::LeaseNotFound);
                }
                Ok(())
            }
            _ => Ok(()),
        })?;
        let (rev, compact_rev) = (self.rev, self.compact_rev);
        Self::visit_path(req, &path, &mut 0, &mut |r| match r {
            Request::RequestRange(q) if q.revision != 0 => {
                if q.revision > rev {
                    Err(RequestError::FutureRevision)
                } else if q.revision < compact_rev {
                    Err(RequestError::Compacted)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        })?;
        let mut tx = Tx {
            begin: self.rev,
            changes: 0,
        };
        let mut resp = self.exec_txn(&mut tx, req, &path, &mut 0)?;
        self.rev = tx.rev();
        resp.header = header(self.rev);
        Ok(resp)
    }

    pub fn compact(&mut self, req: &CompactionRequest) -> MResult<CompactionResponse> {
        if req.revision <= self.compact_rev {
            return Err(RequestError::Compacted.into());
        }
        if req.revision > self.rev {
            return Err(RequestError::FutureRevision.into());
        }
        self.compact_rev = req.revision;
        Ok(CompactionResponse {
            header: header(self.rev),
        })
    }

    pub fn lease_grant(&mut self, req: &LeaseGrantRequest) -> MResult<LeaseGrantResponse> {
        if req.id == 0 {
            return Err(RequestError::LeaseNotFound.into());
        }
        if req.ttl > MAX_LEASE_TTL {
            return Err(RequestError::LeaseTtlTooLarge.into());
        }
        if self.leases.contains_key(&req.id) {
            return Err(RequestError::LeaseExists.into());
        }
        let ttl = req.ttl.max(self.min_lease_ttl);
        self.leases.insert(
            req.id,
            MLease {
                ttl,
                remaining_ttl: 0,
            },
        );
        Ok(LeaseGrantResponse {
            header: header(self.rev),
            id: req.id,
            ttl,
            error: String::new(),
        })
    }

    pub fn lease_revoke(&mut self, req: &LeaseRevokeRequest) -> MResult<LeaseRevokeResponse> {
        if !self.leases.contains_key(&req.id) {
            return Err(RequestError::LeaseNotFound.into());
        }
        let mut tx = Tx {
            begin: self.rev,
            changes: 0,
        };
        for k in self.lease_keys(req.id) {
            self.write_delete(&mut tx, &k);
        }
        self.rev = tx.rev();
        self.leases.remove(&req.id);
        Ok(LeaseRevokeResponse {
            header: header(self.rev),
        })
    }

    pub fn lease_checkpoint(
        &mut self,
        req: &LeaseCheckpointRequest,
    ) -> MResult<LeaseCheckpointResponse> {
        for cp in &req.checkpoints {
            if let Some(l) = self.leases.get_mut(&cp.id) {
                l.remaining_ttl = cp.remaining_ttl;
            }
        }
        Ok(LeaseCheckpointResponse {
            header: header(self.rev),
        })
    }
}

fn compare_kv(c: &Compare, target: Option<CompareTarget>, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let u = c.target_union.as_ref();
    let ord = match target {
        Some(CompareTarget::Value) => {
            let want: Vec<u8> = match u {
                Some(TargetUnion::Value(v)) => v.clone(),
                _ => vec![],
            };
            kv.value.cmp(&want)
        }
        Some(CompareTarget::Version) => kv.version.cmp(&match u {
            Some(TargetUnion::Version(v)) => *v,
            _ => 0,
        }),
        Some(CompareTarget::Create) => kv.create_revision.cmp(&match u {
            Some(TargetUnion::CreateRevision(v)) => *v,
            _ => 0,
        }),
        Some(CompareTarget::Mod) => kv.mod_revision.cmp(&match u {
            Some(TargetUnion::ModRevision(v)) => *v,
            _ => 0,
        }),
        Some(CompareTarget::Lease) => kv.lease.cmp(&match u {
            Some(TargetUnion::Lease(v)) => *v,
            _ => 0,
        }),
        None => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

// -------------------------------------------------------------------- validation (v3rpc/key.go)

pub fn check_range(r: &RangeRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(RequestError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

fn check_txn_request(r: &TxnRequest, max_ops: i64) -> Result<(), RequestError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_ops {
        return Err(RequestError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(RequestError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(Request::RequestRange(q)) => check_range(q)?,
            Some(Request::RequestPut(p)) => check_put(p)?,
            Some(Request::RequestDeleteRange(d)) => {
                if d.key.is_empty() {
                    return Err(RequestError::EmptyKey);
                }
            }
            Some(Request::RequestTxn(t)) => check_txn_request(t, max_ops - opc)?,
            None => return Err(RequestError::KeyNotFound),
        }
    }
    Ok(())
}

/// A delete as etcd's interval tree sees it: a point, or `[key, end)` taken literally.
struct Del(Vec<u8>, Vec<u8>);

impl Del {
    fn hits(&self, k: &[u8]) -> bool {
        if self.1.is_empty() {
            self.0 == k
        } else {
            self.0.as_slice() <= k && k < self.1.as_slice()
        }
    }
}

/// etcd's checkIntervals.
fn intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Del>), RequestError> {
    let mut dels: Vec<Del> = vec![];
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            dels.push(Del(d.key.clone(), d.range_end.clone()));
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (then_puts, then_dels) = intervals(&t.success)?;
        let (else_puts, else_dels) = intervals(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || dels.iter().any(|d| d.hits(k)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &else_puts {
            if puts.contains(k) && !then_puts.contains(k) {
                return Err(RequestError::DuplicateKey);
            }
            if dels.iter().any(|d| d.hits(k)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        if let Some(Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || dels.iter().any(|d| d.hits(&p.key)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<(), RequestError> {
    check_txn_request(r, max_ops as i64)?;
    intervals(&r.success)?;
    intervals(&r.failure)?;
    Ok(())
}

// -------------------------------------------------------------------- store helpers

/// A store answer reduced to what the model predicts: the response, or the refusal. Fatal
/// errors fail the test.
pub fn req_result<T>(r: Result<T, Error>) -> Result<T, RequestError> {
    r.map_err(|e| match e.as_request() {
        Some(re) => re,
        None => panic!("fatal store error: {e}"),
    })
}

/// Everything in the store at revision `at` (0 = current).
pub fn store_all_at(store: &Store, at: i64) -> Result<RangeResponse, RequestError> {
    req_result(store.range(&RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision: at,
        ..Default::default()
    }))
}

/// Compares the whole readable state of `store` with `model`: scalars, every readable revision
/// (all kvs with all fields), compacted reads refused, every history start, every lease.
pub fn assert_same_state(store: &Store, model: &Model, ctx: &str) {
    assert_eq!(store.revision().unwrap(), model.rev, "{ctx}: revision");
    assert_eq!(
        store.compact_revision().unwrap(),
        model.compact_rev,
        "{ctx}: compact revision"
    );
    let lo = model.compact_rev.max(1);
    for at in lo..=model.rev {
        let got = store_all_at(store, at).unwrap_or_else(|e| panic!("{ctx}: range @{at}: {e}"));
        let want = model.all_at(at);
        assert_eq!(got.kvs, want, "{ctx}: kvs at revision {at}");
        assert_eq!(got.count, want.len() as i64, "{ctx}: count at {at}");
        assert_eq!(got.header, header(model.rev), "{ctx}: header at {at}");
    }
    if model.compact_rev > 1 {
        assert_eq!(
            store_all_at(store, model.compact_rev - 1),
            Err(RequestError::Compacted),
            "{ctx}: read below the compact revision"
        );
    }
    assert_eq!(
        store_all_at(store, model.rev + 1),
        Err(RequestError::FutureRevision),
        "{ctx}: future read"
    );
    for from in (model.compact_rev - 1).max(-1)..=model.rev + 2 {
        for prev_kv in [false, true] {
            let want = model.history(from, usize::MAX, prev_kv);
            let got = req_result(store.history(from, usize::MAX, prev_kv));
            match (got, want) {
                (Ok(g), Ok((events, next))) => {
                    assert_eq!(
                        g.events, events,
                        "{ctx}: history from {from} prev_kv={prev_kv}"
                    );
                    assert_eq!(g.next, next, "{ctx}: history next from {from}");
                    assert_eq!(g.revision, model.rev, "{ctx}: history revision");
                }
                (Err(g), Err(MErr::Req(w))) => assert_eq!(g, w, "{ctx}: history from {from}"),
                (g, w) => panic!("{ctx}: history from {from}: store {g:?}, model {w:?}"),
            }
        }
    }
    assert_eq!(
        store.leases().unwrap(),
        model.lease_infos(),
        "{ctx}: leases"
    );
    for id in model.leases.keys().copied().chain([0, 12345]) {
        assert_eq!(
            store.lease(id, true).unwrap(),
            model.lease_info(id, true),
            "{ctx}: lease {id}"
        );
    }
}

/// Pages through history from `from` with batches of `max` events and checks every batch
/// against the model, and that the pages together are the whole history.
pub fn assert_history_paged(store: &Store, model: &Model, from: i64, max: usize, prev_kv: bool) {
    let want_all = match model.history(from, usize::MAX, prev_kv) {
        Ok((e, _)) => e,
        Err(MErr::Req(e)) => {
            assert_eq!(
                req_result(store.history(from, max, prev_kv)).unwrap_err(),
                e,
                "history from {from}"
            );
            return;
        }
        Err(MErr::Undefined) => unreachable!(),
    };
    let mut got_all = vec![];
    let mut at = from;
    for _ in 0..10_000 {
        let b = req_result(store.history(at, max, prev_kv)).expect("history page");
        let (want, next) = model.history(at, max, prev_kv).unwrap();
        assert_eq!(b.events, want, "history page from {at} max {max}");
        assert_eq!(b.next, next, "history next from {at} max {max}");
        got_all.extend(b.events);
        if b.next > b.revision {
            break;
        }
        assert!(b.next > at, "history must advance");
        at = b.next;
    }
    assert_eq!(got_all, want_all, "paged history from {from} max {max}");
}

/// A tiny deterministic PRNG (splitmix64) for the non-proptest tests.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// Opens the store at `cfg.path` again after its previous handle was dropped (`Store::open`
/// itself waits out the moment sled's background thread still holds the directory lock).
pub fn reopen(cfg: &raftkv_mvcc::Config) -> Store {
    Store::open(cfg.clone()).unwrap_or_else(|e| panic!("reopen {}: {e}", cfg.path.display()))
}

// -------------------------------------------------------------------- a random workload

/// One write request of a random workload.
#[derive(Clone, Debug)]
pub enum Write {
    Put(PutRequest),
    Del(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    Grant(LeaseGrantRequest),
    Revoke(LeaseRevokeRequest),
    Checkpoint(LeaseCheckpointRequest),
}

fn workload_key(rng: &mut Rng, keys: u64) -> Vec<u8> {
    match rng.below(10) {
        0 => format!("p/{}", rng.below(keys / 4 + 1)).into_bytes(),
        _ => format!("k{:04}", rng.below(keys)).into_bytes(),
    }
}

/// A random write against a key space of about `keys` keys, with values up to `max_value`
/// bytes; compactions only when `compact` is set.
pub fn random_write(rng: &mut Rng, m: &Model, keys: u64, max_value: u64, compact: bool) -> Write {
    let value = |rng: &mut Rng| -> Vec<u8> {
        let n = rng.below(max_value + 1) as usize;
        let b = b'a' + rng.below(26) as u8;
        vec![b; n]
    };
    let lease = |rng: &mut Rng| -> i64 {
        if rng.chance(70) {
            0
        } else {
            1 + rng.below(5) as i64
        }
    };
    let put = |rng: &mut Rng| PutRequest {
        key: workload_key(rng, keys),
        value: value(rng),
        lease: lease(rng),
        prev_kv: rng.chance(30),
        ..Default::default()
    };
    match rng.below(100) {
        0..=49 => {
            let mut p = put(rng);
            if rng.chance(5) {
                p.ignore_value = true;
                p.value.clear();
            }
            Write::Put(p)
        }
        50..=61 => {
            let key = workload_key(rng, keys);
            let range_end = match rng.below(4) {
                0 => {
                    let mut e = key.clone();
                    e.truncate(4);
                    *e.last_mut().unwrap() += 1;
                    e
                }
                1 => workload_key(rng, keys),
                _ => vec![],
            };
            Write::Del(DeleteRangeRequest {
                key,
                range_end,
                prev_kv: rng.chance(50),
            })
        }
        62..=84 => {
            let key = workload_key(rng, keys);
            let compare = vec![Compare {
                key: key.clone(),
                target: CompareTarget::Mod as i32,
                result: rng.below(4) as i32,
                target_union: Some(TargetUnion::ModRevision(rng.below(m.rev as u64 + 1) as i64)),
                range_end: vec![],
            }];
            let n = 1 + rng.below(4);
            let mut seen = HashSet::new();
            let mut branch = |rng: &mut Rng| -> Vec<RequestOp> {
                (0..n)
                    .filter_map(|_| {
                        let p = put(rng);
                        seen.insert(p.key.clone()).then_some(RequestOp {
                            request: Some(if rng.chance(80) {
                                Request::RequestPut(p)
                            } else {
                                Request::RequestRange(RangeRequest {
                                    key: p.key,
                                    ..Default::default()
                                })
                            }),
                        })
                    })
                    .collect()
            };
            let success = branch(rng);
            let failure = branch(rng);
            Write::Txn(TxnRequest {
                compare,
                success,
                failure,
            })
        }
        85..=86 if compact => Write::Compact(CompactionRequest {
            revision: (m.rev - rng.below(50) as i64).max(m.compact_rev + 1),
            physical: false,
        }),
        87..=92 => Write::Grant(LeaseGrantRequest {
            id: 1 + rng.below(5) as i64,
            ttl: rng.below(100) as i64,
        }),
        93..=95 => Write::Revoke(LeaseRevokeRequest {
            id: 1 + rng.below(5) as i64,
        }),
        _ => Write::Checkpoint(LeaseCheckpointRequest {
            checkpoints: vec![raftkv_proto::etcdserverpb::LeaseCheckpoint {
                id: 1 + rng.below(5) as i64,
                remaining_ttl: rng.below(100) as i64,
            }],
        }),
    }
}

fn compare_outcome<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: Result<Option<T>, Error>,
    want: MResult<T>,
) -> bool {
    match (req_result(got), want) {
        (Ok(Some(g)), Ok(w)) => {
            assert_eq!(g, w, "{what}");
            true
        }
        (Err(g), Err(MErr::Req(w))) => {
            assert_eq!(g, w, "{what}");
            false
        }
        (g, w) => panic!("{what}: store {g:?}, model {w:?}"),
    }
}

/// Applies `w` at `index` to both and checks the store answered as the model did. Returns
/// whether it was accepted.
pub fn apply_both(store: &Store, m: &mut Model, index: u64, w: &Write) -> bool {
    let what = format!("index {index}: {w:?}");
    match w {
        Write::Put(r) => compare_outcome(&what, store.put(index, r), m.put(r)),
        Write::Del(r) => compare_outcome(&what, store.delete_range(index, r), m.delete_range(r)),
        Write::Txn(r) => {
            let mut next = m.clone();
            let want = next.txn(r);
            assert_ne!(want, Err(MErr::Undefined), "{what}");
            let ok = compare_outcome(&what, store.txn(index, r), want);
            if ok {
                *m = next;
            }
            ok
        }
        Write::Compact(r) => compare_outcome(&what, store.compact(index, r), m.compact(r)),
        Write::Grant(r) => compare_outcome(&what, store.lease_grant(index, r), m.lease_grant(r)),
        Write::Revoke(r) => compare_outcome(&what, store.lease_revoke(index, r), m.lease_revoke(r)),
        Write::Checkpoint(r) => compare_outcome(
            &what,
            store.lease_checkpoint(index, r),
            m.lease_checkpoint(r),
        ),
    }
}

/// Every answer the store gives to a fixed battery of reads, rendered for comparison: ranges
/// (whole state at sampled revisions and random requests), paged history from sampled starts,
/// leases and the scalars.
pub fn answers(store: &Store, seed: u64) -> Vec<String> {
    let mut out = vec![];
    let rev = store.revision().unwrap();
    let compact = store.compact_revision().unwrap();
    out.push(format!(
        "rev {rev} compact {compact} ci {}",
        store.consistent_index().unwrap()
    ));
    let lo = compact.max(1);
    let step = ((rev - lo) / 100).max(1);
    let mut revs: Vec<i64> = (lo..=rev).step_by(step as usize).collect();
    revs.extend((rev - 10).max(lo)..=rev + 1);
    revs.push(lo - 1);
    for at in revs {
        out.push(format!("all@{at}: {:?}", store_all_at(store, at)));
    }
    let mut rng = Rng(seed);
    for _ in 0..200 {
        let key = workload_key(&mut rng, 200);
        let range_end = match rng.below(3) {
            0 => vec![],
            1 => vec![0],
            _ => workload_key(&mut rng, 200),
        };
        let req = RangeRequest {
            key,
            range_end,
            limit: rng.below(5) as i64,
            revision: lo - 1 + rng.below((rev - lo + 3) as u64) as i64,
            sort_order: rng.below(3) as i32,
            sort_target: rng.below(5) as i32,
            keys_only: rng.chance(20),
            count_only: rng.chance(10),
            min_mod_revision: if rng.chance(10) {
                rng.below(rev as u64) as i64
            } else {
                0
            },
            max_create_revision: if rng.chance(10) {
                rng.below(rev as u64) as i64
            } else {
                0
            },
            ..Default::default()
        };
        out.push(format!("{req:?}: {:?}", req_result(store.range(&req))));
    }
    let froms = [
        compact - 1,
        compact,
        compact + 1,
        rev / 2,
        rev - 3,
        rev,
        rev + 1,
    ];
    for from in froms {
        let mut at = from;
        loop {
            let b = req_result(store.history(at, 300, true));
            out.push(format!("history {at}: {b:?}"));
            match b {
                Ok(b) if b.next <= b.revision => at = b.next,
                _ => break,
            }
        }
    }
    out.push(format!("leases {:?}", store.leases().unwrap()));
    for id in 0..=6 {
        out.push(format!("lease {id} {:?}", store.lease(id, true).unwrap()));
    }
    out
}
