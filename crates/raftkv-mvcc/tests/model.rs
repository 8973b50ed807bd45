//! Model-based property test: random sequences of every request kind, applied to the store and
//! to the independent model in `common/`, compared response by response, with whole-state
//! comparisons (every revision, every history start, every lease) along the way, commits,
//! replays of applied indexes and reopens in the middle of sequences.

mod common;

use common::{
    assert_history_paged, assert_same_state, header, req_result, store_all_at, MErr, Model,
};
use proptest::prelude::*;
use raftkv_mvcc::{Config, RequestError, Store};
use raftkv_proto::etcdserverpb::{
    compare::TargetUnion, request_op::Request, CompactionRequest, Compare, DeleteRangeRequest,
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};

/// Keys chosen so that prefixes, ranges and from-key ranges overlap.
const KEYS: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"ba", b"bb", b"c", b"d"];
/// Range ends beyond KEYS (some before their key: empty ranges).
const ENDS: &[&[u8]] = &[b"a", b"ab", b"b", b"ba", b"c", b"d", b"z", b"\x01"];
const VALUES: &[&[u8]] = &[b"", b"v1", b"v2", b"zz"];
/// 0 = no lease; 99 is never granted.
const LEASES: &[i64] = &[0, 0, 0, 0, 0, 1, 2, 3, 1, 2, 3, 99];
const REVOKE_IDS: &[i64] = &[1, 2, 3, 99];
const GRANT_IDS: &[i64] = &[0, 1, 1, 1, 2, 2, 2, 3, 3, 3, -4];
const TTLS: &[i64] = &[-1, 0, 1, 2, 5, 60, 9_000_000_000, 9_000_000_001];
const MAX_TXN_OPS: usize = 10;
const MIN_LEASE_TTL: i64 = 3;

/// A revision picked relative to the current one when the op runs: -1 ..= current + 1.
#[derive(Clone, Copy, Debug)]
struct RevSel(u16);

impl RevSel {
    fn at(self, m: &Model) -> i64 {
        (self.0 as i64 % (m.rev + 3)) - 1
    }
}

#[derive(Clone, Debug)]
enum EndSel {
    Single,
    FromKey,
    Prefix,
    To(u8),
}

#[derive(Clone, Debug)]
struct KeySel {
    key: u8,
    end: EndSel,
}

impl KeySel {
    fn build(&self) -> (Vec<u8>, Vec<u8>) {
        let key = KEYS[self.key as usize % KEYS.len()].to_vec();
        let end = match self.end {
            EndSel::Single => vec![],
            EndSel::FromKey => vec![0],
            EndSel::Prefix => {
                let mut e = key.clone();
                *e.last_mut().unwrap() += 1;
                e
            }
            EndSel::To(i) => ENDS[i as usize % ENDS.len()].to_vec(),
        };
        (key, end)
    }
}

#[derive(Clone, Debug)]
struct PutSpec {
    key: u8,
    value: u8,
    lease: u8,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
    /// Keep a value/lease together with ignore_* (an invalid request).
    invalid: bool,
}

impl PutSpec {
    fn build(&self) -> PutRequest {
        let mut r = PutRequest {
            key: KEYS[self.key as usize % KEYS.len()].to_vec(),
            value: VALUES[self.value as usize % VALUES.len()].to_vec(),
            lease: LEASES[self.lease as usize % LEASES.len()],
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        };
        if !self.invalid {
            if r.ignore_value {
                r.value.clear();
            }
            if r.ignore_lease {
                r.lease = 0;
            }
        }
        r
    }
}

#[derive(Clone, Debug)]
struct DelSpec {
    keys: KeySel,
    prev_kv: bool,
}

impl DelSpec {
    fn build(&self) -> DeleteRangeRequest {
        let (key, range_end) = self.keys.build();
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

#[derive(Clone, Debug)]
struct RangeSpec {
    keys: KeySel,
    limit: i64,
    revision: Option<RevSel>,
    sort_order: i32,
    sort_target: i32,
    keys_only: bool,
    count_only: bool,
    /// min_mod, max_mod, min_create, max_create.
    filters: [Option<RevSel>; 4],
}

impl RangeSpec {
    fn build(&self, m: &Model) -> RangeRequest {
        let (key, range_end) = self.keys.build();
        let f = |i: usize| self.filters[i].map_or(0, |s| s.at(m));
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision.map_or(0, |s| s.at(m)),
            sort_order: self.sort_order,
            sort_target: self.sort_target,
            serializable: false,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: f(0),
            max_mod_revision: f(1),
            min_create_revision: f(2),
            max_create_revision: f(3),
        }
    }
}

#[derive(Clone, Debug)]
enum UnionSel {
    None,
    /// The field matching the target, from a selector.
    Matching(u16),
    /// A field of another target.
    Other(u8, u16),
}

#[derive(Clone, Debug)]
struct CmpSpec {
    keys: KeySel,
    target: i32,
    result: i32,
    union: UnionSel,
}

impl CmpSpec {
    fn build(&self, m: &Model) -> Compare {
        let (key, range_end) = self.keys.build();
        let value = |t: i32, sel: u16| -> TargetUnion {
            match t {
                0 => TargetUnion::Version(sel as i64 % 4),
                1 => TargetUnion::CreateRevision(RevSel(sel).at(m)),
                2 => TargetUnion::ModRevision(RevSel(sel).at(m)),
                3 => TargetUnion::Value(VALUES[sel as usize % VALUES.len()].to_vec()),
                _ => TargetUnion::Lease(LEASES[sel as usize % LEASES.len()]),
            }
        };
        Compare {
            result: self.result,
            target: self.target,
            key,
            range_end,
            target_union: match self.union {
                UnionSel::None => None,
                UnionSel::Matching(sel) => Some(value(self.target, sel)),
                UnionSel::Other(t, sel) => Some(value((self.target + 1 + t as i32 % 4) % 5, sel)),
            },
        }
    }
}

#[derive(Clone, Debug)]
enum OpSpec {
    Put(PutSpec),
    Del(DelSpec),
    Range(RangeSpec),
    Txn(Box<TxnSpec>),
    Empty,
}

#[derive(Clone, Debug)]
struct TxnSpec {
    compare: Vec<CmpSpec>,
    success: Vec<OpSpec>,
    failure: Vec<OpSpec>,
}

impl TxnSpec {
    fn build(&self, m: &Model) -> TxnRequest {
        let ops = |v: &[OpSpec]| -> Vec<RequestOp> {
            v.iter()
                .map(|o| RequestOp {
                    request: match o {
                        OpSpec::Put(p) => Some(Request::RequestPut(p.build())),
                        OpSpec::Del(d) => Some(Request::RequestDeleteRange(d.build())),
                        OpSpec::Range(r) => Some(Request::RequestRange(r.build(m))),
                        OpSpec::Txn(t) => Some(Request::RequestTxn(t.build(m))),
                        OpSpec::Empty => None,
                    },
                })
                .collect()
        };
        TxnRequest {
            compare: self.compare.iter().map(|c| c.build(m)).collect(),
            success: ops(&self.success),
            failure: ops(&self.failure),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(PutSpec),
    Del(DelSpec),
    Txn(TxnSpec),
    Compact(RevSel),
    Grant(u8, u8),
    Revoke(u8),
    Checkpoint(Vec<(u8, i64)>),
    Range(RangeSpec),
    History(RevSel, u8, bool),
    Commit(bool),
    Check,
    Reopen,
    Replay(u16),
}

// ------------------------------------------------------------------------- strategies

fn rev_sel() -> impl Strategy<Value = RevSel> {
    any::<u16>().prop_map(RevSel)
}

fn key_sel() -> impl Strategy<Value = KeySel> {
    (
        any::<u8>(),
        prop_oneof![
            5 => Just(EndSel::Single),
            2 => Just(EndSel::FromKey),
            2 => Just(EndSel::Prefix),
            2 => any::<u8>().prop_map(EndSel::To),
        ],
    )
        .prop_map(|(key, end)| KeySel { key, end })
}

fn put_spec() -> impl Strategy<Value = PutSpec> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<bool>(),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease, invalid)| PutSpec {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
                invalid,
            },
        )
}

fn del_spec() -> impl Strategy<Value = DelSpec> {
    (key_sel(), any::<bool>()).prop_map(|(keys, prev_kv)| DelSpec { keys, prev_kv })
}

fn opt_rev(p: f64) -> impl Strategy<Value = Option<RevSel>> {
    prop::option::weighted(p, rev_sel())
}

fn range_spec() -> impl Strategy<Value = RangeSpec> {
    (
        key_sel(),
        prop_oneof![4 => Just(0i64), 3 => 1i64..4, 1 => Just(-1i64)],
        opt_rev(0.4),
        prop_oneof![100 => Just(0i32), 100 => 1i32..3, 1 => Just(7i32)],
        prop_oneof![200 => 0i32..5, 1 => Just(9i32)],
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        [opt_rev(0.1), opt_rev(0.1), opt_rev(0.1), opt_rev(0.1)],
    )
        .prop_map(
            |(keys, limit, revision, sort_order, sort_target, keys_only, count_only, filters)| {
                RangeSpec {
                    keys,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    keys_only,
                    count_only,
                    filters,
                }
            },
        )
}

fn cmp_spec() -> impl Strategy<Value = CmpSpec> {
    (
        prop_oneof![4 => key_sel().prop_map(|k| KeySel { end: EndSel::Single, ..k }), 1 => key_sel()],
        0i32..5,
        0i32..4,
        prop_oneof![
            1 => Just(UnionSel::None),
            8 => any::<u16>().prop_map(UnionSel::Matching),
            1 => (any::<u8>(), any::<u16>()).prop_map(|(t, s)| UnionSel::Other(t, s)),
        ],
    )
        .prop_map(|(keys, target, result, union)| CmpSpec {
            keys,
            target,
            result,
            union,
        })
}

fn op_spec(depth: u32) -> BoxedStrategy<OpSpec> {
    let leaf = prop_oneof![
        20 => put_spec().prop_map(OpSpec::Put),
        8 => del_spec().prop_map(OpSpec::Del),
        12 => range_spec().prop_map(OpSpec::Range),
        1 => Just(OpSpec::Empty),
    ];
    if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![
            40 => leaf,
            7 => txn_spec(depth - 1).prop_map(|t| OpSpec::Txn(Box::new(t))),
        ]
        .boxed()
    }
}

fn branch(depth: u32) -> impl Strategy<Value = Vec<OpSpec>> {
    (
        prop::collection::vec(op_spec(depth), 0..=3),
        prop::bool::weighted(0.015),
    )
        .prop_map(|(mut ops, bloat)| {
            if bloat {
                // One op too many.
                while ops.len() <= MAX_TXN_OPS {
                    ops.push(OpSpec::Del(DelSpec {
                        keys: KeySel {
                            key: 7,
                            end: EndSel::Single,
                        },
                        prev_kv: false,
                    }));
                }
            }
            ops
        })
}

fn txn_spec(depth: u32) -> BoxedStrategy<TxnSpec> {
    (
        prop::collection::vec(cmp_spec(), 0..=2),
        branch(depth),
        branch(depth),
    )
        .prop_map(|(compare, success, failure)| TxnSpec {
            compare,
            success,
            failure,
        })
        .boxed()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => put_spec().prop_map(Op::Put),
        5 => del_spec().prop_map(Op::Del),
        10 => txn_spec(2).prop_map(Op::Txn),
        2 => rev_sel().prop_map(Op::Compact),
        5 => (any::<u8>(), any::<u8>()).prop_map(|(i, t)| Op::Grant(i, t)),
        2 => any::<u8>().prop_map(Op::Revoke),
        1 => prop::collection::vec((any::<u8>(), 0i64..100), 0..3).prop_map(Op::Checkpoint),
        5 => range_spec().prop_map(Op::Range),
        2 => (rev_sel(), 1u8..6, any::<bool>()).prop_map(|(f, m, p)| Op::History(f, m, p)),
        2 => any::<bool>().prop_map(Op::Commit),
        1 => Just(Op::Check),
        1 => Just(Op::Reopen),
        1 => any::<u16>().prop_map(Op::Replay),
    ]
}

// ------------------------------------------------------------------------- the harness

struct Harness {
    _dir: tempfile::TempDir,
    cfg: Config,
    store: Option<Store>,
    model: Model,
    /// The next Raft index to apply.
    index: u64,
    /// The last index whose request the store accepted.
    last_ok: u64,
}

impl Harness {
    fn new(commit_records: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path());
        cfg.commit_records = commit_records;
        cfg.min_lease_ttl = MIN_LEASE_TTL;
        cfg.max_txn_ops = MAX_TXN_OPS;
        cfg.cache_capacity = 1 << 20;
        cfg.flush_every_ms = None;
        let store = Store::open(cfg.clone()).unwrap();
        Harness {
            _dir: dir,
            cfg,
            store: Some(store),
            model: Model::new(MIN_LEASE_TTL, MAX_TXN_OPS),
            index: 0,
            last_ok: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    /// Applies one write at a fresh index to both and compares the outcome.
    fn write<T: PartialEq + std::fmt::Debug>(
        &mut self,
        n: usize,
        what: &str,
        apply_store: impl FnOnce(&Store, u64) -> raftkv_mvcc::Result<Option<T>>,
        apply_model: impl FnOnce(&mut Model) -> Result<T, MErr>,
    ) {
        let mut next = self.model.clone();
        let want = apply_model(&mut next);
        if want == Err(MErr::Undefined) {
            return; // etcd panics on it: not a request to send
        }
        self.index += 1;
        let ci_before = self.store().consistent_index().unwrap();
        let got = req_result(apply_store(self.store(), self.index));
        match (got, want) {
            (Ok(Some(g)), Ok(w)) => {
                assert_eq!(g, w, "op #{n} {what}: response");
                self.model = next;
                self.last_ok = self.index;
                assert_eq!(self.store().consistent_index().unwrap(), self.index);
            }
            (Err(g), Err(MErr::Req(w))) => {
                assert_eq!(g, w, "op #{n} {what}: refusal");
                let ci = self.store().consistent_index().unwrap();
                assert!(
                    ci == ci_before || ci == self.index,
                    "op #{n}: consistent index {ci}"
                );
            }
            (g, w) => panic!("op #{n} {what}: store {g:?}, model {w:?}"),
        }
        self.light_check(n, what);
    }

    /// After every op: scalars, the current state and the leases.
    fn light_check(&self, n: usize, what: &str) {
        let s = self.store();
        assert_eq!(
            s.revision().unwrap(),
            self.model.rev,
            "op #{n} {what}: revision"
        );
        assert_eq!(
            s.compact_revision().unwrap(),
            self.model.compact_rev,
            "op #{n} {what}: compact revision"
        );
        let got = store_all_at(s, 0).unwrap();
        assert_eq!(
            got.kvs,
            self.model.all_at(self.model.rev),
            "op #{n} {what}: state"
        );
        assert_eq!(got.header, header(self.model.rev));
        // The oldest readable revision is where compaction bugs show.
        if self.model.compact_rev >= 1 {
            let at = self.model.compact_rev;
            assert_eq!(
                store_all_at(s, at).unwrap().kvs,
                self.model.all_at(at),
                "op #{n} {what}: state at the compact revision {at}"
            );
        }
        assert_eq!(
            s.leases().unwrap(),
            self.model.lease_infos(),
            "op #{n} {what}: leases"
        );
        for id in REVOKE_IDS {
            assert_eq!(
                s.lease(*id, true).unwrap(),
                self.model.lease_info(*id, true),
                "op #{n} {what}: lease {id} and its keys"
            );
        }
    }

    fn run(&mut self, n: usize, op: &Op) {
        let m = &self.model;
        match op {
            Op::Put(p) => {
                let req = p.build();
                self.write(n, "put", |s, i| s.put(i, &req), |m| m.put(&req));
            }
            Op::Del(d) => {
                let req = d.build();
                self.write(
                    n,
                    "delete",
                    |s, i| s.delete_range(i, &req),
                    |m| m.delete_range(&req),
                );
            }
            Op::Txn(t) => {
                let req = t.build(m);
                self.write(n, "txn", |s, i| s.txn(i, &req), |m| m.txn(&req));
            }
            Op::Compact(r) => {
                let req = CompactionRequest {
                    revision: r.at(m),
                    physical: false,
                };
                self.write(n, "compact", |s, i| s.compact(i, &req), |m| m.compact(&req));
            }
            Op::Grant(id, ttl) => {
                let req = LeaseGrantRequest {
                    id: GRANT_IDS[*id as usize % GRANT_IDS.len()],
                    ttl: TTLS[*ttl as usize % TTLS.len()],
                };
                self.write(
                    n,
                    "grant",
                    |s, i| s.lease_grant(i, &req),
                    |m| m.lease_grant(&req),
                );
            }
            Op::Revoke(id) => {
                let req = LeaseRevokeRequest {
                    id: REVOKE_IDS[*id as usize % REVOKE_IDS.len()],
                };
                self.write(
                    n,
                    "revoke",
                    |s, i| s.lease_revoke(i, &req),
                    |m| m.lease_revoke(&req),
                );
            }
            Op::Checkpoint(cps) => {
                let req = LeaseCheckpointRequest {
                    checkpoints: cps
                        .iter()
                        .map(|(id, ttl)| LeaseCheckpoint {
                            id: LEASES[*id as usize % LEASES.len()],
                            remaining_ttl: *ttl,
                        })
                        .collect(),
                };
                self.write(
                    n,
                    "checkpoint",
                    |s, i| s.lease_checkpoint(i, &req),
                    |m| m.lease_checkpoint(&req),
                );
            }
            Op::Range(r) => {
                let req = r.build(m);
                let got = req_result(self.store().range(&req));
                let want = m.range(&req).map_err(|e| match e {
                    MErr::Req(e) => e,
                    MErr::Undefined => unreachable!(),
                });
                assert_eq!(got, want, "op #{n}: range {req:?}");
            }
            Op::History(from, max, prev_kv) => {
                let from = from.at(m).max(m.compact_rev - 1);
                assert_history_paged(self.store(), m, from, *max as usize, *prev_kv);
            }
            Op::Commit(sync) => {
                if *sync {
                    self.store().sync().unwrap();
                } else {
                    self.store().commit().unwrap();
                }
            }
            Op::Check => assert_same_state(self.store(), m, &format!("op #{n} check")),
            Op::Reopen => {
                let ci = self.store().consistent_index().unwrap();
                drop(self.store.take());
                self.store = Some(common::reopen(&self.cfg));
                assert_eq!(
                    self.store().consistent_index().unwrap(),
                    ci,
                    "op #{n}: reopen ci"
                );
                assert_same_state(self.store(), &self.model, &format!("op #{n} reopen"));
            }
            Op::Replay(sel) => {
                let ci = self.store().consistent_index().unwrap();
                if ci == 0 {
                    return;
                }
                let old = 1 + *sel as u64 % ci;
                let req = PutRequest {
                    key: b"a".to_vec(),
                    value: b"replayed".to_vec(),
                    ..Default::default()
                };
                assert_eq!(
                    self.store().put(old, &req).unwrap(),
                    None,
                    "op #{n}: replay"
                );
                let del = DeleteRangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    prev_kv: false,
                };
                assert_eq!(self.store().delete_range(old, &del).unwrap(), None);
                let grant = LeaseGrantRequest { id: 42, ttl: 10 };
                assert_eq!(self.store().lease_grant(old, &grant).unwrap(), None);
                let revoke = LeaseRevokeRequest { id: 1 };
                assert_eq!(self.store().lease_revoke(old, &revoke).unwrap(), None);
                let compact = CompactionRequest {
                    revision: self.model.rev,
                    physical: false,
                };
                assert_eq!(self.store().compact(old, &compact).unwrap(), None);
                let txn = TxnRequest {
                    success: vec![RequestOp {
                        request: Some(Request::RequestPut(req.clone())),
                    }],
                    ..Default::default()
                };
                assert_eq!(self.store().txn(old, &txn).unwrap(), None);
                assert_eq!(self.store().consistent_index().unwrap(), ci);
                self.light_check(n, "replay");
            }
        }
    }
}

fn run_case(commit_records: usize, pregrant: bool, ops: &[Op]) {
    let mut h = Harness::new(commit_records);
    if pregrant {
        // Leases 1 and 2 exist from the start, so more puts carry a lease.
        h.run(0, &Op::Grant(1, 4));
        h.run(0, &Op::Grant(4, 5));
    }
    for (n, op) in ops.iter().enumerate() {
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.run(n, op)));
        if let Err(cause) = step {
            // Name the ops up to the failing one: the rest of the sequence never ran.
            let msg = cause
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| cause.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{msg}\nrepro: commit_records {commit_records}, pregrant {pregrant}, ops {:#?}",
                &ops[..=n]
            );
        }
    }
    assert_same_state(h.store(), &h.model, "end");
    assert!(h.store().consistent_index().unwrap() >= h.last_ok);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        max_shrink_time: 120_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(
        commit_records in prop_oneof![Just(1usize), Just(3), Just(1000)],
        pregrant in any::<bool>(),
        ops in prop::collection::vec(op(), 20..60),
    ) {
        run_case(commit_records, pregrant, &ops);
    }
}

/// The model itself, on the cases the brief spells out (so a wrong model does not hide a bug).
#[test]
fn model_sanity() {
    let mut m = Model::new(2, 128);
    assert_eq!(m.rev, 1);
    let put = |k: &str, v: &str| PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };
    assert_eq!(m.put(&put("a", "1")).unwrap().header, header(2));
    assert_eq!(m.put(&put("a", "1")).unwrap().header, header(3));
    let kv = m.current(b"a").unwrap().clone();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let del = DeleteRangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    };
    assert_eq!(m.delete_range(&del).unwrap().deleted, 1);
    assert_eq!(m.delete_range(&del).unwrap().header, header(4)); // nothing: +0
    m.put(&put("a", "2")).unwrap();
    let kv = m.current(b"a").unwrap().clone();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    assert_eq!(m.kv_at(b"a", 3).unwrap().value, b"1");
    assert!(m.kv_at(b"a", 4).is_none());
    // Compares over missing keys: VALUE false, others against 0.
    let missing = |target: i32, result: i32| TxnRequest {
        compare: vec![Compare {
            key: b"zzz".to_vec(),
            target,
            result,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(!m.txn(&missing(3, 0)).unwrap().succeeded);
    assert!(m.txn(&missing(1, 0)).unwrap().succeeded);
    assert_eq!(m.rev, 5);
    // Puts are checked before ranges, across the whole path.
    let t = future_range_then_unknown_lease_put();
    assert_eq!(
        m.clone().txn(&t),
        Err(MErr::Req(RequestError::LeaseNotFound))
    );
    // The sort quirk: a non-key target without an order sorts only the limit + 1 fetched.
    let mut m = Model::new(2, 128);
    for (k, v) in [("a", "zz"), ("b", "v1"), ("c", "v2"), ("d", "")] {
        m.put(&put(k, v)).unwrap();
    }
    let keys = |order: i32| -> (Vec<Vec<u8>>, bool, i64) {
        let r = m
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                limit: 2,
                sort_order: order,
                sort_target: 4, // VALUE
                ..Default::default()
            })
            .unwrap();
        (
            r.kvs.into_iter().map(|kv| kv.key).collect(),
            r.more,
            r.count,
        )
    };
    assert_eq!(keys(0), (vec![b"b".to_vec(), b"c".to_vec()], true, 4));
    assert_eq!(keys(1), (vec![b"d".to_vec(), b"b".to_vec()], true, 4));
    assert_eq!(keys(2), (vec![b"a".to_vec(), b"c".to_vec()], true, 4));
}

/// Regression cases found while writing the suite, kept as plain tests.
/// A txn breaking two rules: a range at a future revision, then a put with an unknown lease.
fn future_range_then_unknown_lease_put() -> TxnRequest {
    TxnRequest {
        success: vec![
            RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b"a".to_vec(),
                    revision: 100,
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"b".to_vec(),
                    lease: 7,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    }
}

#[test]
fn txn_checks_puts_before_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path())).unwrap();
    let t = future_range_then_unknown_lease_put();
    // etcd (apply.go Txn) runs checkRequests(checkPut) over the whole path, then checkRange.
    assert_eq!(
        store.txn(1, &t).unwrap_err().as_request(),
        Some(RequestError::LeaseNotFound)
    );
    assert_eq!(store.revision().unwrap(), 1);
}

/// A compaction at C keeps the tombstones at C (a watch may start at C and must see them, etcd
/// #18089) and drops those below C, from the index at once and from disk in the background;
/// `history(C)` must not depend on how far the background got.
#[test]
fn history_at_compact_revision_does_not_depend_on_physical_compaction() {
    use raftkv_proto::mvccpb::event::EventType;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path())).unwrap();
    let put = PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    };
    store.put(1, &put).unwrap();
    let del = DeleteRangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    };
    store.delete_range(2, &del).unwrap(); // revision 3
    store.commit().unwrap(); // the tombstone is in a committed block
    store
        .compact(
            3,
            &CompactionRequest {
                revision: 3,
                physical: false,
            },
        )
        .unwrap();
    let first = store.history(3, 100, true).unwrap();
    store.wait_compacted();
    let later = store.history(3, 100, true).unwrap();
    assert_eq!(first, later);
    let kinds: Vec<_> = later
        .events
        .iter()
        .map(|e| (e.r#type(), e.kv.as_ref().unwrap().mod_revision))
        .collect();
    assert_eq!(kinds, [(EventType::Delete, 3)], "{later:?}");

    // A later compaction drops that tombstone like any other.
    store.put(4, &put).unwrap(); // revision 4
    store.commit().unwrap();
    store
        .compact(
            5,
            &CompactionRequest {
                revision: 4,
                physical: false,
            },
        )
        .unwrap();
    let first = store.history(4, 100, true).unwrap();
    store.wait_compacted();
    assert_eq!(first, store.history(4, 100, true).unwrap());
    assert_eq!(first.events.len(), 1, "{first:?}");
    assert_eq!(first.events[0].r#type(), EventType::Put);
}

/// A tombstone kept at the compact revision survives a physical compaction and a reopen (the
/// index is rebuilt from disk and the compaction applied again).
#[test]
fn the_delete_at_the_compact_revision_survives_a_reopen() {
    use raftkv_proto::mvccpb::event::EventType;
    let dir = tempfile::tempdir().unwrap();
    let put = PutRequest {
        key: b"w/k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let (deleted, next) = {
        let store = Store::open(Config::new(dir.path())).unwrap();
        store.put(1, &put).unwrap().unwrap();
        let del = DeleteRangeRequest {
            key: b"w/k".to_vec(),
            ..Default::default()
        };
        let deleted = store.delete_range(2, &del).unwrap().unwrap();
        let next = store.put(3, &put).unwrap().unwrap();
        let compact = CompactionRequest {
            revision: deleted.header.unwrap().revision,
            physical: true,
        };
        store.compact(4, &compact).unwrap().unwrap();
        store.wait_compacted();
        store.sync().unwrap();
        (
            deleted.header.unwrap().revision,
            next.header.unwrap().revision,
        )
    };
    let store = Store::open(Config::new(dir.path())).unwrap();
    let got: Vec<_> = store
        .history(deleted, 100, false)
        .unwrap()
        .events
        .iter()
        .map(|e| (e.r#type(), e.kv.as_ref().unwrap().mod_revision))
        .collect();
    assert_eq!(got, [(EventType::Delete, deleted), (EventType::Put, next)]);
}
