//! The KV API: [`Client::get`], [`Client::put`], [`Client::delete`], [`Client::compact`] and
//! [`Client::txn`] with the [`Txn`] builder. Calls return etcd's response messages
//! ([`crate::proto`]) unchanged.

use raftkv_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};

use crate::client::{Call, Client};
use crate::error::Result;

/// The end of the range of keys starting with `prefix`: `prefix` with its last byte below 0xff
/// incremented (trailing 0xff bytes dropped). An empty or all-0xff prefix gives `"\0"`: every
/// key from `prefix` on, as etcd's `GetPrefixRangeEnd` does.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Works out `(key, range_end)` from a key and the range options shared by get, delete and
/// watch. An empty key with `prefix` or `from_key` means every key.
pub(crate) fn key_range(
    key: Vec<u8>,
    prefix: bool,
    from_key: bool,
    range_end: Option<Vec<u8>>,
) -> (Vec<u8>, Vec<u8>) {
    if let Some(end) = range_end {
        return (key, end);
    }
    if prefix {
        if key.is_empty() {
            return (vec![0], vec![0]);
        }
        let end = prefix_range_end(&key);
        return (key, end);
    }
    if from_key {
        let key = if key.is_empty() { vec![0] } else { key };
        return (key, vec![0]);
    }
    (key, Vec::new())
}

/// Options of [`Client::get`] (etcd's RangeRequest fields). `Default` reads one key at the
/// latest revision, linearizably.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Every key starting with the key.
    pub prefix: bool,
    /// Every key greater than or equal to the key.
    pub from_key: bool,
    /// An explicit exclusive end of the range (wins over `prefix` and `from_key`).
    pub range_end: Option<Vec<u8>>,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read at this revision (0: the latest).
    pub revision: i64,
    /// Sort by this target in this order.
    pub sort: Option<(SortTarget, SortOrder)>,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Serve from the member's local state without a ReadIndex round (may be stale).
    pub serializable: bool,
    /// Only keys modified at or after this revision (0: no bound).
    pub min_mod_revision: i64,
    /// Only keys modified at or before this revision (0: no bound).
    pub max_mod_revision: i64,
    /// Only keys created at or after this revision (0: no bound).
    pub min_create_revision: i64,
    /// Only keys created at or before this revision (0: no bound).
    pub max_create_revision: i64,
}

impl GetOptions {
    /// Every key starting with the key.
    pub fn prefix() -> Self {
        GetOptions {
            prefix: true,
            ..Default::default()
        }
    }

    pub(crate) fn into_request(self, key: Vec<u8>) -> RangeRequest {
        let (key, range_end) = key_range(key, self.prefix, self.from_key, self.range_end);
        let (sort_target, sort_order) = self.sort.unwrap_or((SortTarget::Key, SortOrder::None));
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: sort_order as i32,
            sort_target: sort_target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        }
    }
}

/// Options of [`Client::put`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Attach the key to this lease (0: none).
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl PutOptions {
    /// Attach the key to `lease`.
    pub fn lease(lease: i64) -> Self {
        PutOptions {
            lease,
            ..Default::default()
        }
    }

    fn into_request(self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// Options of [`Client::delete`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Every key starting with the key.
    pub prefix: bool,
    /// Every key greater than or equal to the key.
    pub from_key: bool,
    /// An explicit exclusive end of the range.
    pub range_end: Option<Vec<u8>>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

impl DeleteOptions {
    /// Every key starting with the key.
    pub fn prefix() -> Self {
        DeleteOptions {
            prefix: true,
            ..Default::default()
        }
    }

    fn into_request(self, key: Vec<u8>) -> DeleteRangeRequest {
        let (key, range_end) = key_range(key, self.prefix, self.from_key, self.range_end);
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

/// The comparison of a [`Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

impl From<CompareOp> for CompareResult {
    fn from(op: CompareOp) -> Self {
        match op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        }
    }
}

/// One guard of a [`Txn`]. On a missing key a value compare is false; the other targets
/// compare against 0, so `Compare::create_revision(k, Equal, 0)` means "k does not exist".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare(pub raftkv_proto::etcdserverpb::Compare);

impl Compare {
    fn new(key: Vec<u8>, op: CompareOp, target: CompareTarget, operand: TargetUnion) -> Self {
        Compare(raftkv_proto::etcdserverpb::Compare {
            result: CompareResult::from(op) as i32,
            target: target as i32,
            key,
            range_end: Vec::new(),
            target_union: Some(operand),
        })
    }

    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare::new(
            key.into(),
            op,
            CompareTarget::Value,
            TargetUnion::Value(value.into()),
        )
    }

    /// Compares the key's version (0 when absent).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Compare::new(
            key.into(),
            op,
            CompareTarget::Version,
            TargetUnion::Version(version),
        )
    }

    /// Compares the key's create revision (0 when absent).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Compare::new(
            key.into(),
            op,
            CompareTarget::Create,
            TargetUnion::CreateRevision(revision),
        )
    }

    /// Compares the key's last modification revision (0 when absent).
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Compare::new(
            key.into(),
            op,
            CompareTarget::Mod,
            TargetUnion::ModRevision(revision),
        )
    }

    /// Compares the key's lease id (0 when absent or without a lease).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Compare::new(
            key.into(),
            op,
            CompareTarget::Lease,
            TargetUnion::Lease(lease),
        )
    }

    /// Applies the comparison to every key in `[key, end)` instead of the key alone.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.0.range_end = end.into();
        self
    }

    /// Applies the comparison to every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = prefix_range_end(&self.0.key);
        self
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnOp(pub RequestOp);

impl TxnOp {
    /// A put, as [`Client::put`].
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, opts: PutOptions) -> Self {
        TxnOp(RequestOp {
            request: Some(Request::RequestPut(
                opts.into_request(key.into(), value.into()),
            )),
        })
    }

    /// A range read, as [`Client::get`] (`serializable` is ignored inside a txn).
    pub fn get(key: impl Into<Vec<u8>>, opts: GetOptions) -> Self {
        TxnOp(RequestOp {
            request: Some(Request::RequestRange(opts.into_request(key.into()))),
        })
    }

    /// A delete, as [`Client::delete`].
    pub fn delete(key: impl Into<Vec<u8>>, opts: DeleteOptions) -> Self {
        TxnOp(RequestOp {
            request: Some(Request::RequestDeleteRange(opts.into_request(key.into()))),
        })
    }

    /// A nested transaction.
    pub fn txn(txn: Txn) -> Self {
        TxnOp(RequestOp {
            request: Some(Request::RequestTxn(txn.into_request())),
        })
    }
}

/// A transaction: if every [`Compare`] of `when` holds, the `and_then` operations run,
/// otherwise the `or_else` ones; atomically, at one revision.
///
/// ```
/// use raftkv_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, GetOptions};
/// // Create "k" only if it does not exist; otherwise read it.
/// let txn = Txn::new()
///     .when([Compare::create_revision("k", CompareOp::Equal, 0)])
///     .and_then([TxnOp::put("k", "v", PutOptions::default())])
///     .or_else([TxnOp::get("k", GetOptions::default())]);
/// assert_eq!(txn.into_request().success.len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no guard: the `and_then` branch runs).
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds guards (ANDed).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares);
        self
    }

    /// Adds operations to the branch taken when every guard holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to the branch taken when some guard fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// The wire request.
    pub fn into_request(self) -> TxnRequest {
        TxnRequest {
            compare: self.compare.into_iter().map(|c| c.0).collect(),
            success: self.success.into_iter().map(|o| o.0).collect(),
            failure: self.failure.into_iter().map(|o| o.0).collect(),
        }
    }

    /// True if no operation writes (a read-only txn is retried like a range).
    fn read_only(req: &TxnRequest) -> bool {
        req.success
            .iter()
            .chain(&req.failure)
            .all(|op| match &op.request {
                Some(Request::RequestRange(_)) | None => true,
                Some(Request::RequestTxn(t)) => Txn::read_only(t),
                Some(_) => false,
            })
    }
}

impl Client {
    /// Reads a key or a range (retried on `Unavailable`).
    pub async fn get(&self, key: impl Into<Vec<u8>>, opts: GetOptions) -> Result<RangeResponse> {
        let req = opts.into_request(key.into());
        self.unary(Call::Safe, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).range(req).await }
        })
        .await
    }

    /// Writes a key (not retried once sent).
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: PutOptions,
    ) -> Result<PutResponse> {
        let req = opts.into_request(key.into(), value.into());
        self.unary(Call::Write, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).put(req).await }
        })
        .await
    }

    /// Deletes a key or a range (not retried once sent).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: DeleteOptions,
    ) -> Result<DeleteRangeResponse> {
        let req = opts.into_request(key.into());
        self.unary(Call::Write, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).delete_range(req).await }
        })
        .await
    }

    /// Runs a transaction. Not retried once sent, unless it only reads.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let req = txn.into_request();
        let call = if Txn::read_only(&req) {
            Call::Safe
        } else {
            Call::Write
        };
        self.unary(call, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).txn(req).await }
        })
        .await
    }

    /// Compacts the history up to `revision`; `physical` waits until the space is reclaimed.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        self.unary(Call::Write, |ch| async move {
            KvClient::new(ch)
                .compact(CompactionRequest { revision, physical })
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"abc"), b"abd");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }

    #[test]
    fn ranges() {
        assert_eq!(
            key_range(b"a".to_vec(), true, false, None),
            (b"a".to_vec(), b"b".to_vec())
        );
        assert_eq!(key_range(Vec::new(), true, false, None), (vec![0], vec![0]));
        assert_eq!(
            key_range(b"a".to_vec(), false, true, None),
            (b"a".to_vec(), vec![0])
        );
        assert_eq!(
            key_range(b"a".to_vec(), true, false, Some(b"z".to_vec())),
            (b"a".to_vec(), b"z".to_vec())
        );
    }

    #[test]
    fn read_only_txns() {
        let r = Txn::new()
            .and_then([TxnOp::get("a", GetOptions::default())])
            .into_request();
        assert!(Txn::read_only(&r));
        let w = Txn::new()
            .and_then([TxnOp::txn(
                Txn::new().or_else([TxnOp::delete("a", DeleteOptions::default())]),
            )])
            .into_request();
        assert!(!Txn::read_only(&w));
    }
}
