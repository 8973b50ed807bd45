//! Distributed locks and leader election built on KV, leases and revisions, the way etcd's Go
//! `clientv3/concurrency` package builds them (the server needs no Lock or Election service).
//!
//! # Key layout (compatible with etcd's concurrency package)
//! A [`Session`] is a lease kept alive. Each contender for a lock or an election named `name`
//! owns one key, `<name>/<session lease id in lowercase hex>`, attached to its lease. Contenders
//! are ordered by the keys' create revisions: the oldest key holds the lock (or leads). A
//! waiting contender watches only the key created just before its own (no thundering herd) and
//! re-checks when it is deleted. If a session's lease is lost its keys vanish, so a crashed
//! holder releases the lock after the lease TTL.
//!
//! # Fencing
//! A lock key's create revision ([`LockGuard::fencing_token`]) grows with every acquisition of
//! the same lock. A lease can expire while its holder is paused, so a guarded resource should
//! check the token rather than trust the holder:
//! - inside raftkv, make the protected write a txn guarded by
//!   `Compare::create_revision(guard.key(), CompareOp::Equal, guard.fencing_token())`: it fails
//!   once the lock key is gone or re-created;
//! - outside, the resource remembers the highest token it has accepted and refuses lower ones.

use std::pin::Pin;
use std::task::{Context, Poll};

use raftkv_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    response_op::Response,
};
use raftkv_proto::mvccpb::{event::EventType, KeyValue};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kv::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use crate::lease::{LeaseKeeper, LeaseKeeperOptions, LeaseLost};
use crate::watch::{WatchFilter, WatchOptions};

/// etcd's default session TTL, in seconds.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// A lease kept alive for locks and elections. Dropping it stops the keep-alives (its keys go
/// after the TTL); [`close`](Self::close) revokes it at once.
#[derive(Debug)]
pub struct Session {
    client: Client,
    keeper: LeaseKeeper,
}

impl Session {
    /// A session over a new lease of `ttl` seconds.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session> {
        Session::with_options(client, ttl, LeaseKeeperOptions::default()).await
    }

    /// A session with lease options (a chosen lease id, revoke on drop).
    pub async fn with_options(
        client: &Client,
        ttl: i64,
        opts: LeaseKeeperOptions,
    ) -> Result<Session> {
        let keeper = client.lease_keeper_with(ttl, opts).await?;
        Ok(Session {
            client: client.clone(),
            keeper,
        })
    }

    /// The session's lease id.
    pub fn lease(&self) -> i64 {
        self.keeper.id()
    }

    /// The client the session uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Waits until the session's lease is lost.
    pub async fn lost(&self) -> LeaseLost {
        self.keeper.lost().await
    }

    /// Revokes the lease: every lock and candidacy of the session ends.
    pub async fn close(self) -> Result<()> {
        self.keeper.revoke().await
    }

    /// This session's key under `prefix` (`<prefix><lease id in hex>`).
    fn key_under(&self, prefix: &[u8]) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(format!("{:x}", self.lease()).as_bytes());
        k
    }
}

/// `name` + "/", as etcd's `NewMutex` and `NewElection` form their prefix.
fn prefix_of(name: &str) -> Vec<u8> {
    format!("{name}/").into_bytes()
}

/// Creates the session's key under `prefix` with `value` unless it exists. Returns the key's
/// create revision, the revision of the request, and the key's current value.
async fn enqueue(
    session: &Session,
    key: &[u8],
    value: &[u8],
) -> Result<(i64, i64, Option<KeyValue>)> {
    let client = &session.client;
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, PutOptions::lease(session.lease()))])
        .or_else([TxnOp::get(key, GetOptions::default())]);
    let r = client.txn(txn).await?;
    let rev = r.header.map(|h| h.revision).unwrap_or_default();
    if r.succeeded {
        return Ok((rev, rev, None));
    }
    let kv = r.responses.into_iter().find_map(|op| match op.response {
        Some(Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
        _ => None,
    });
    match kv {
        Some(kv) => Ok((kv.create_revision, rev, Some(kv))),
        // Deleted between the compare and now: the lease is gone.
        None => Err(Error::SessionExpired),
    }
}

/// Waits until no key under `prefix` has a create revision at or below `max_create_revision`
/// (etcd's `waitDeletes`): each time, watches the newest such key until it is deleted.
async fn wait_deletes(client: &Client, prefix: &[u8], max_create_revision: i64) -> Result<()> {
    loop {
        let r = client
            .get(
                prefix,
                GetOptions {
                    prefix: true,
                    sort: Some((SortTarget::Create, SortOrder::Descend)),
                    limit: 1,
                    max_create_revision,
                    ..Default::default()
                },
            )
            .await?;
        let Some(kv) = r.kvs.first() else {
            return Ok(());
        };
        let rev = r.header.map(|h| h.revision).unwrap_or_default();
        let mut w = client
            .watch(
                kv.key.clone(),
                WatchOptions {
                    start_revision: rev + 1,
                    filters: vec![WatchFilter::NoPut],
                    ..Default::default()
                },
            )
            .await?;
        loop {
            match w.next().await {
                Some(Ok(u))
                    if u.events
                        .iter()
                        .any(|e| e.r#type == EventType::Delete as i32) =>
                {
                    break
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(Error::WatchClosed),
            }
        }
    }
}

/// Fails with [`Error::SessionExpired`] if `key` no longer exists with `create_revision`.
async fn check_key(client: &Client, key: &[u8], create_revision: i64) -> Result<()> {
    let r = client.get(key, GetOptions::default()).await?;
    match r.kvs.first() {
        Some(kv) if kv.create_revision == create_revision => Ok(()),
        _ => Err(Error::SessionExpired),
    }
}

/// Waits for `wait` unless the session's lease is lost first.
async fn unless_lost<T>(
    session: &Session,
    wait: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = wait => r,
        _ = session.lost() => Err(Error::SessionExpired),
    }
}

/// A key this client created for a lock or a candidacy, deleted (only if it still has the
/// create revision we gave it) on [`release`](Self::release) or, while armed, on drop in a
/// spawned task: a lock future dropped mid-wait leaves no key behind.
#[derive(Debug)]
struct OwnedKey {
    client: Client,
    key: Vec<u8>,
    revision: i64,
    armed: bool,
}

impl OwnedKey {
    fn fenced_delete(key: Vec<u8>, revision: i64) -> Txn {
        Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key, DeleteOptions::default())])
    }

    /// Deletes the key if it is still ours; true if it was.
    async fn release(&mut self) -> Result<bool> {
        self.armed = false;
        let txn = OwnedKey::fenced_delete(self.key.clone(), self.revision);
        Ok(self.client.txn(txn).await?.succeeded)
    }
}

impl Drop for OwnedKey {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let txn = OwnedKey::fenced_delete(std::mem::take(&mut self.key), self.revision);
            rt.spawn(async move {
                let _ = client.txn(txn).await;
            });
        }
    }
}

/// A distributed mutex named `name` (keys under `<name>/`), as etcd's `concurrency.Mutex`.
///
/// As in etcd, the lock belongs to the session: locking again with a session that holds it
/// returns at once with the same key, and releasing either guard releases the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutex {
    prefix: Vec<u8>,
}

impl Mutex {
    /// The mutex named `name` (interoperates with `etcdctl lock <name>`).
    pub fn new(name: &str) -> Self {
        Mutex {
            prefix: prefix_of(name),
        }
    }

    /// Waits until the lock is held by `session`; fails with [`Error::SessionExpired`] if the
    /// session's lease is lost first. Cancel-safe: dropping the future (say, under a
    /// `tokio::time::timeout`) withdraws the session's key.
    pub async fn lock(&self, session: &Session) -> Result<LockGuard> {
        let client = &session.client;
        let key = session.key_under(&self.prefix);
        let (revision, _, _) = enqueue(session, &key, b"").await?;
        let mut owned = OwnedKey {
            client: client.clone(),
            key,
            revision,
            armed: true,
        };
        let waited = unless_lost(session, async {
            wait_deletes(client, &self.prefix, revision - 1).await?;
            check_key(client, &owned.key, revision).await
        })
        .await;
        if let Err(e) = waited {
            let _ = owned.release().await;
            return Err(e);
        }
        Ok(LockGuard { owned })
    }

    /// Takes the lock if nobody else holds it; `Ok(None)` (and no key left behind) otherwise.
    pub async fn try_lock(&self, session: &Session) -> Result<Option<LockGuard>> {
        let client = &session.client;
        let key = session.key_under(&self.prefix);
        let (revision, _, _) = enqueue(session, &key, b"").await?;
        let mut owned = OwnedKey {
            client: client.clone(),
            key,
            revision,
            armed: true,
        };
        let owner = client.get(self.prefix.clone(), first_created()).await?;
        if owner.kvs.first().map(|kv| kv.create_revision) == Some(revision) {
            return Ok(Some(LockGuard { owned }));
        }
        owned.release().await?;
        Ok(None)
    }
}

/// Takes the lock `name` with `session` (see [`Mutex::lock`]).
pub async fn lock(name: &str, session: &Session) -> Result<LockGuard> {
    Mutex::new(name).lock(session).await
}

/// A held lock. [`unlock`](Self::unlock) releases it; dropping the guard releases it in a
/// spawned task (best effort); either way it is gone once the session's lease is. Releases
/// are fenced: they delete the key only if it still has this guard's create revision.
#[derive(Debug)]
pub struct LockGuard {
    owned: OwnedKey,
}

impl LockGuard {
    /// The lock key (`<name>/<lease id in hex>`).
    pub fn key(&self) -> &[u8] {
        &self.owned.key
    }

    /// The lock key's create revision: larger for every later holder of the same lock. See the
    /// module docs for how a resource checks it.
    pub fn fencing_token(&self) -> i64 {
        self.owned.revision
    }

    /// Releases the lock (deletes the key). Fails with [`Error::SessionExpired`] if the key
    /// was already gone: the lock had been lost before.
    pub async fn unlock(mut self) -> Result<()> {
        if self.owned.release().await? {
            Ok(())
        } else {
            Err(Error::SessionExpired)
        }
    }
}

/// A leader election named `name` (keys under `<name>/`), as etcd's `concurrency.Election`.
#[derive(Clone, Debug)]
pub struct Election {
    client: Client,
    prefix: Vec<u8>,
}

impl Election {
    /// The election named `name` (interoperates with `etcdctl elect <name>`).
    pub fn new(client: &Client, name: &str) -> Self {
        Election {
            client: client.clone(),
            prefix: prefix_of(name),
        }
    }

    /// Waits until `session` leads, with `value` proclaimed. If the session already had a
    /// candidacy (same lease), it resumes it and proclaims `value`. Cancel-safe: dropping the
    /// future withdraws the candidacy. Leadership lasts until [`Leadership::resign`] or the
    /// end of the session (dropping the [`Leadership`] does not resign, as in etcd).
    pub async fn campaign(
        &self,
        session: &Session,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership> {
        let value = value.into();
        let client = &self.client;
        let key = session.key_under(&self.prefix);
        let (rev, _, existing) = enqueue(session, &key, &value).await?;
        let mut owned = OwnedKey {
            client: client.clone(),
            key: key.clone(),
            revision: rev,
            armed: true,
        };
        let leadership = Leadership {
            client: client.clone(),
            key,
            revision: rev,
            lease: session.lease(),
        };
        if existing.is_some_and(|kv| kv.value != value) {
            leadership.proclaim(value).await?;
        }
        let waited = unless_lost(session, async {
            wait_deletes(client, &self.prefix, rev - 1).await?;
            check_key(client, &leadership.key, rev).await
        })
        .await;
        if let Err(e) = waited {
            let _ = owned.release().await;
            return Err(e);
        }
        owned.armed = false;
        Ok(leadership)
    }

    /// The current leader's key-value (its value is the proclamation), if any.
    pub async fn leader(&self) -> Result<Option<KeyValue>> {
        let r = self
            .client
            .get(self.prefix.clone(), first_created())
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    /// A stream of leaders: the current one (if any), then each new leader or proclamation.
    /// It follows changes through endpoint failures; drop it to stop.
    pub fn observe(&self) -> Observer {
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(observe(self.client.clone(), self.prefix.clone(), tx));
        Observer { rx, task }
    }
}

fn first_created() -> GetOptions {
    GetOptions {
        prefix: true,
        sort: Some((SortTarget::Create, SortOrder::Ascend)),
        limit: 1,
        ..Default::default()
    }
}

/// Leadership won by [`Election::campaign`].
#[derive(Debug)]
pub struct Leadership {
    client: Client,
    key: Vec<u8>,
    revision: i64,
    lease: i64,
}

impl Leadership {
    /// The leader key (`<name>/<lease id in hex>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The leader key's create revision: a fencing token, as [`LockGuard::fencing_token`].
    pub fn fencing_token(&self) -> i64 {
        self.revision
    }

    /// Announces a new value without losing leadership. Fails with [`Error::NotLeader`] if the
    /// leader key is gone (resigned, or the session expired).
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                value,
                PutOptions::lease(self.lease),
            )]);
        if self.client.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Gives up leadership (deletes the leader key if it is still this campaign's).
    pub async fn resign(self) -> Result<()> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then([TxnOp::delete(self.key.clone(), DeleteOptions::default())]);
        self.client.txn(txn).await?;
        Ok(())
    }
}

/// The stream of [`Election::observe`]: each item is the leader's key-value.
#[derive(Debug)]
pub struct Observer {
    rx: mpsc::Receiver<Result<KeyValue>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// The next leader (or proclamation); `None` after an error was yielded.
    pub async fn next(&mut self) -> Option<Result<KeyValue>> {
        self.rx.recv().await
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_util::Stream for Observer {
    type Item = Result<KeyValue>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The observer task: find the leader (waiting for one if needed), report it, follow its key
/// until deleted, repeat.
async fn observe(client: Client, prefix: Vec<u8>, tx: mpsc::Sender<Result<KeyValue>>) {
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        let r = observe_once(&client, &prefix, &tx, &mut last).await;
        match r {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// One leader's reign. Ok(false) when the receiver is gone.
async fn observe_once(
    client: &Client,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<KeyValue>>,
    last: &mut Option<(Vec<u8>, i64)>,
) -> Result<bool> {
    let r = client.get(prefix, first_created()).await?;
    let rev = r.header.map(|h| h.revision).unwrap_or_default();
    let leader = match r.kvs.into_iter().next() {
        Some(kv) => kv,
        None => {
            // No leader: the first key created from now on is the next one.
            let mut w = client
                .watch(
                    prefix,
                    WatchOptions {
                        prefix: true,
                        start_revision: rev + 1,
                        filters: vec![WatchFilter::NoDelete],
                        ..Default::default()
                    },
                )
                .await?;
            loop {
                match w.next().await {
                    Some(Ok(u)) => {
                        if let Some(kv) = u.events.into_iter().find_map(|e| e.kv) {
                            break kv;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(Error::WatchClosed),
                }
            }
        }
    };
    let mut w = client
        .watch(
            leader.key.clone(),
            WatchOptions {
                start_revision: leader.mod_revision + 1,
                ..Default::default()
            },
        )
        .await?;
    let seen = (leader.key.clone(), leader.mod_revision);
    if last.as_ref() != Some(&seen) {
        *last = Some(seen);
        if tx.send(Ok(leader)).await.is_err() {
            return Ok(false);
        }
    }
    loop {
        let u = match w.next().await {
            Some(Ok(u)) => u,
            Some(Err(e)) => return Err(e),
            None => return Err(Error::WatchClosed),
        };
        for e in u.events {
            if e.r#type == EventType::Delete as i32 {
                return Ok(true);
            }
            if let Some(kv) = e.kv {
                *last = Some((kv.key.clone(), kv.mod_revision));
                if tx.send(Ok(kv)).await.is_err() {
                    return Ok(false);
                }
            }
        }
    }
}
