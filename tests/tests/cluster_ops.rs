//! Cluster operations end to end, with real member processes and the stock etcdctl:
//! - growing a cluster 1 -> 3 -> 5 and shrinking it to 3 (the leader among the removed) under a
//!   steady write load, without losing an acknowledged write;
//! - a learner that catches up by snapshot (the log is compacted) and is promoted; what a learner
//!   refuses to serve (as etcd's learners do); the cluster id a joining member logs;
//! - `snapshot save` (raftkv's and the stock etcdctl's) -> `snapshot restore` -> a new
//!   single-member cluster with the same data; a damaged snapshot file is refused;
//! - `etcdctl lock` mutual exclusion across members, handed over on release and on a killed
//!   holder's lease expiry;
//! - `etcdctl elect` failover when the leader's campaign process is killed.
//!
//! Every expectation also holds for the reference etcd (`RAFTKV_TEST_TARGET=etcd`).
//!
//! The tests report timings and error counts on stderr (shown with `--nocapture`).
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions,
};
use raftkv_tests::{block_on, wait_until, Cluster, Target};

/// How long a member may take to catch up with the leader.
const CATCH_UP: Duration = Duration::from_secs(60);

fn client_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10))
}

/// Connects to one endpoint.
async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint], Some(client_options()))
        .await
        .unwrap_or_else(|e| panic!("connect {endpoint}: {e}"))
}

/// Every key with its value and metadata (key, value, create rev, mod rev, version, lease),
/// read from `endpoint`, serializable (local) or linearizable.
async fn all_keys(endpoint: &str, serializable: bool) -> (i64, Vec<(String, String, [i64; 4])>) {
    let mut opts = GetOptions::new().with_all_keys();
    if serializable {
        opts = opts.with_serializable();
    }
    let resp = connect(endpoint)
        .await
        .get("", Some(opts))
        .await
        .unwrap_or_else(|e| panic!("range all keys on {endpoint}: {e}"));
    let rev = resp.header().expect("header").revision();
    let kvs = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                [
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                ],
            )
        })
        .collect();
    (rev, kvs)
}

/// Waits until every listed member's serializable revision is at least `rev`.
fn wait_revision(c: &Cluster, members: &[usize], rev: i64) {
    for &i in members {
        wait_until(
            &format!("{} to reach revision {rev}", c.name(i)),
            CATCH_UP,
            || c.serializable_revision(i).filter(|&r| r >= rev),
        );
    }
}

/// Asserts that the listed members answer the same `HashKV` at `rev`, and returns it.
#[track_caller]
fn assert_same_hash(c: &Cluster, members: &[usize], rev: i64) -> u64 {
    let hashes: Vec<(String, u64, i64)> = members
        .iter()
        .map(|&i| {
            let h = c.hash_kv(i, rev);
            (c.name(i).to_string(), h.hash, h.compact_revision)
        })
        .collect();
    assert!(
        hashes
            .iter()
            .all(|h| (h.1, h.2) == (hashes[0].1, hashes[0].2)),
        "HashKV at revision {rev} differs between members (name, hash, compact revision): \
         {hashes:?}"
    );
    hashes[0].1
}

/// The `member list` every listed member answers must be exactly `expected` voters (by name
/// and peer URL, all started).
#[track_caller]
fn assert_voters(c: &Cluster, members: &[usize], expected: &[usize]) {
    let mut want: Vec<(u64, String, Vec<String>)> = expected
        .iter()
        .map(|&i| (c.member_id(i), c.name(i).to_string(), vec![c.peer_url(i)]))
        .collect();
    want.sort();
    // One cluster: every member answers with the same cluster id.
    let ids: Vec<(String, u64)> = members
        .iter()
        .map(|&i| {
            let v = c
                .etcdctl_for(i)
                .json(&["get", "--consistency=s", "cluster-id-probe"]);
            let id = v["header"]["cluster_id"].as_u64().expect("cluster_id");
            (c.name(i).to_string(), id)
        })
        .collect();
    assert!(
        ids.iter().all(|(_, id)| *id == ids[0].1),
        "members report different cluster ids: {ids:x?}"
    );
    for &i in members {
        let list = c.member_list(i);
        let mut got: Vec<(u64, String, Vec<String>)> = list
            .iter()
            .map(|m| (m.id, m.name.clone(), m.peer_urls.clone()))
            .collect();
        got.sort();
        assert_eq!(got, want, "member list on {}: {list:?}", c.name(i));
        assert!(
            list.iter().all(|m| !m.is_learner && m.is_started()),
            "member list on {}: every member should be a started voter: {list:?}",
            c.name(i)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Grow and shrink under writes.

/// What the writer saw.
#[derive(Debug, Default)]
struct WriterLog {
    /// Acknowledged keys and the revision each put answered.
    acked: BTreeMap<String, i64>,
    /// Failed puts by kind ("<gRPC code>: <message>", "transport", "client timeout").
    errors: BTreeMap<String, usize>,
    /// Failures that a client should not retry (anything but the kinds in `retryable`).
    fatal: Vec<String>,
    /// Puts that got no answer within the client's 10 s timeout (the server gives up after 7 s):
    /// key, endpoint, when.
    unanswered: Vec<String>,
}

/// The endpoints the writer uses, and a generation bumped on each change, so the test knows
/// when no put is still in flight to an endpoint it took away.
#[derive(Debug, Default)]
struct WriterTargets {
    endpoints: Mutex<(u64, Vec<String>)>,
    /// The generation of the endpoint list the last finished put was issued under.
    done_gen: AtomicU64,
}

impl WriterTargets {
    fn set(&self, endpoints: Vec<String>) -> u64 {
        let mut e = self.endpoints.lock().unwrap();
        e.0 += 1;
        e.1 = endpoints;
        e.0
    }
}

/// Whether a failed put is of a kind clients retry (the member or the cluster is between
/// leaders or configurations): gRPC Unavailable (no leader, leader changed, request timed out,
/// server stopped), DeadlineExceeded, or the connection itself.
fn classify(e: &etcd_client::Error) -> (String, bool) {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let kind = format!("{:?}: {}", s.code(), s.message());
            let retryable = matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            );
            (kind, retryable)
        }
        etcd_client::Error::TransportError(t) => (format!("transport: {t}"), true),
        other => (format!("other: {other}"), false),
    }
}

/// Puts `w/<n>` continuously (one put in flight, at most one every 5 ms), round-robin over the
/// current endpoints, each key once (a failed put may still have committed, so it is never
/// repeated under the same key); records what was acknowledged and every failure's kind.
async fn writer(targets: Arc<WriterTargets>, log: Arc<Mutex<WriterLog>>, stop: Arc<AtomicBool>) {
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (gen, endpoints) = targets.endpoints.lock().unwrap().clone();
        let ep = endpoints[n as usize % endpoints.len()].clone();
        let key = format!("w/{n:06}");
        n += 1;
        let client = match clients.get(&ep) {
            Some(c) => c.clone(),
            None => match Client::connect([ep.as_str()], Some(client_options())).await {
                Ok(c) => {
                    clients.insert(ep.clone(), c.clone());
                    c
                }
                Err(e) => {
                    let mut log = log.lock().unwrap();
                    *log.errors.entry(format!("connect: {e}")).or_default() += 1;
                    targets.done_gen.store(gen, Ordering::SeqCst);
                    continue;
                }
            },
        };
        let mut kv = client.kv_client();
        let put = kv.put(key.clone(), ep.clone(), None);
        let res = tokio::time::timeout(Duration::from_secs(10), put).await;
        {
            let mut log = log.lock().unwrap();
            match res {
                Ok(Ok(resp)) => {
                    let rev = resp.header().expect("put header").revision();
                    log.acked.insert(key, rev);
                }
                Ok(Err(e)) => {
                    let (kind, retryable) = classify(&e);
                    if !retryable {
                        log.fatal.push(format!("put {key} via {ep}: {kind}"));
                    }
                    *log.errors.entry(kind).or_default() += 1;
                }
                Err(_) => {
                    *log.errors
                        .entry("client timeout (10 s)".into())
                        .or_default() += 1;
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .saturating_sub(Duration::from_secs(10));
                    log.unanswered
                        .push(format!("{key} via {ep}, sent at {:.3}", at.as_secs_f64()));
                }
            }
        }
        targets.done_gen.store(gen, Ordering::SeqCst);
    }
}

/// Points the writer at `endpoints` and waits until no put is in flight to an older list.
fn retarget(targets: &WriterTargets, endpoints: Vec<String>) {
    let gen = targets.set(endpoints);
    wait_until(
        "the writer to use the new endpoints",
        Duration::from_secs(20),
        || (targets.done_gen.load(Ordering::SeqCst) >= gen).then_some(()),
    );
}

/// Waits until the writer has `more` further acknowledged writes: the cluster takes writes.
fn wait_writes(log: &Mutex<WriterLog>, more: usize, during: &str) {
    let from = log.lock().unwrap().acked.len();
    wait_until(
        &format!("{more} more acknowledged writes {during}"),
        Duration::from_secs(60),
        || (log.lock().unwrap().acked.len() >= from + more).then_some(()),
    );
}

#[test]
fn grow_one_to_five_and_shrink_to_three_under_writes_loses_no_acknowledged_write() {
    let t0 = Instant::now();
    let mut c = Cluster::start(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let targets = Arc::new(WriterTargets::default());
    targets.set(vec![c.endpoint(0)]);
    let log = Arc::new(Mutex::new(WriterLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = rt.spawn(writer(targets.clone(), log.clone(), stop.clone()));
    wait_writes(&log, 20, "on the single member");

    // Grow one member at a time; each new member serves before the next is added, and writes
    // go on through every change.
    for _ in 1..5 {
        let step = Instant::now();
        let before = log
            .lock()
            .unwrap()
            .acked
            .values()
            .copied()
            .max()
            .unwrap_or(0);
        let i = c.add_member(false);
        // Caught up: a linearizable read on the new member sees every write acknowledged
        // before it was added.
        wait_until(
            &format!("{} to serve linearizable reads", c.name(i)),
            CATCH_UP,
            || c.linearizable_revision(i).filter(|&r| r >= before),
        );
        wait_writes(&log, 20, &format!("after adding {}", c.name(i)));
        retarget(&targets, c.current_endpoints());
        eprintln!(
            "added {} ({:x}) in {:?}; {} acknowledged writes so far",
            c.name(i),
            c.member_id(i),
            step.elapsed(),
            log.lock().unwrap().acked.len()
        );
    }
    let all: Vec<usize> = (0..5).collect();
    assert_voters(&c, &all, &all);

    // Shrink to three: the leader first, then a follower (of the new leader). The writer stops
    // using a member before it is removed.
    let leader = c.leader_index();
    for step_no in 0..2 {
        let step = Instant::now();
        let current_leader = c.leader_index();
        let gone = if step_no == 0 {
            leader
        } else {
            *c.current_members()
                .iter()
                .rev()
                .find(|&&i| i != current_leader)
                .expect("a follower")
        };
        let rest: Vec<String> = c
            .current_members()
            .into_iter()
            .filter(|&i| i != gone)
            .map(|i| c.endpoint(i))
            .collect();
        retarget(&targets, rest);
        c.remove_member(gone);
        wait_writes(&log, 20, &format!("after removing {}", c.name(gone)));
        eprintln!(
            "removed {} ({}) in {:?}",
            c.name(gone),
            if gone == current_leader {
                "leader"
            } else {
                "follower"
            },
            step.elapsed()
        );
    }
    let new_leader = c.leader_index();
    assert_ne!(new_leader, leader, "the removed leader is still the leader");
    stop.store(true, Ordering::Relaxed);
    rt.block_on(task).expect("writer task");

    let log = std::mem::take(&mut *log.lock().unwrap());
    eprintln!(
        "writer: {} acknowledged, errors by kind: {:#?}, unanswered puts: {:#?}",
        log.acked.len(),
        log.errors,
        log.unanswered
    );
    assert!(
        log.fatal.is_empty(),
        "puts failed with errors a client must not retry: {:#?}",
        log.fatal
    );
    assert!(
        log.acked.len() >= 100,
        "only {} writes acknowledged",
        log.acked.len()
    );

    // Every acknowledged write, at its revision, on every remaining member (local reads), and
    // the members agree on the whole history.
    let remaining = c.current_members();
    assert_eq!(remaining.len(), 3);
    let last_acked = log.acked.values().copied().max().expect("acked");
    let rev = rt.block_on(async {
        let (rev, _) = all_keys(&c.endpoint(new_leader), false).await;
        rev
    });
    assert!(rev >= last_acked);
    wait_revision(&c, &remaining, rev);
    for &i in &remaining {
        let (_, kvs) = rt.block_on(all_keys(&c.endpoint(i), true));
        let have: HashMap<&str, i64> = kvs.iter().map(|(k, _, m)| (k.as_str(), m[1])).collect();
        let missing: Vec<(&String, &i64)> = log
            .acked
            .iter()
            .filter(|(k, rev)| have.get(k.as_str()) != Some(rev))
            .collect();
        assert!(
            missing.is_empty(),
            "{} lacks {} acknowledged writes (key, acknowledged revision), first: {:?}",
            c.name(i),
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    assert_same_hash(&c, &remaining, rev);
    assert_voters(&c, &remaining, &remaining);
    eprintln!("grow/shrink test took {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. A learner catching up by snapshot.

/// Puts `n` keys `load/<i>` (100-byte values) through `endpoints`, 16 puts in flight.
async fn load(endpoints: &[String], n: usize) {
    let client = Client::connect(endpoints, Some(client_options()))
        .await
        .expect("connect");
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let mut kv = client.kv_client();
            tokio::spawn(async move {
                for i in (t..n).step_by(16) {
                    kv.put(format!("load/{i:05}"), "x".repeat(100), None)
                        .await
                        .unwrap_or_else(|e| panic!("put load/{i:05}: {e}"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
}

/// etcd 3.4 serves a learner only serializable ranges and `endpoint status`: everything else
/// answers "etcdserver: rpc not supported for learner" (gRPC Unavailable), so clients move on
/// to a voter: unary calls, streams (Watch, Snapshot) and the JSON gateway alike, and
/// `member promote` too (the Go client sends it to a voter).
#[test]
fn learner_refuses_what_etcd_learners_refuse() {
    const REFUSED: &str = "etcdserver: rpc not supported for learner";
    let mut c = Cluster::start(3);
    let l = c.add_member(true);
    let ctl = c.etcdctl_for(l);
    assert!(ctl.run(&["get", "--consistency=s", "k"]).success());
    assert!(ctl.run(&["endpoint", "status"]).success());
    let id = format!("{:x}", c.member_id(l));
    for args in [
        &["get", "k"][..],
        &["put", "k", "v"][..],
        &["member", "list"][..],
        &["member", "promote", &id][..],
    ] {
        let out = ctl.fail(args);
        assert_eq!(
            out.error(),
            Some(REFUSED),
            "etcdctl {args:?} on a learner:\n{out}"
        );
    }
    // Streams.
    block_on(async {
        let mut cl = connect(&c.endpoint(l)).await;
        let watch = async {
            let (_, mut stream) = cl.watch("k", None).await?;
            stream.message().await
        };
        match watch.await {
            Err(etcd_client::Error::GRpcStatus(s)) => {
                assert_eq!((s.code(), s.message()), (tonic::Code::Unavailable, REFUSED));
            }
            other => panic!("watch on a learner: {other:?}"),
        }
        let mut snap = connect(&c.endpoint(l)).await;
        let snapshot = async {
            let mut stream = snap.snapshot().await?;
            stream.message().await
        };
        match snapshot.await {
            Err(etcd_client::Error::GRpcStatus(s)) => {
                assert_eq!((s.code(), s.message()), (tonic::Code::Unavailable, REFUSED));
            }
            other => panic!("snapshot on a learner: {other:?}"),
        }
    });
    // The JSON gateway: the same refusals (HTTP 503 with the gRPC code and message), a
    // serializable range served.
    let (status, body) = http_post(
        &c.endpoint(l),
        "/v3/kv/put",
        r#"{"key":"aw==","value":"dg=="}"#,
    );
    assert_eq!(status, 503, "gateway put on a learner: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("gateway error body");
    assert_eq!(
        (v["code"].as_i64(), v["message"].as_str()),
        (Some(14), Some(REFUSED)),
        "{body}"
    );
    let (status, body) = http_post(&c.endpoint(l), "/v3/kv/range", r#"{"key":"aw=="}"#);
    assert_eq!(
        status, 503,
        "gateway linearizable range on a learner: {body}"
    );
    let (status, body) = http_post(
        &c.endpoint(l),
        "/v3/kv/range",
        r#"{"key":"aw==","serializable":true}"#,
    );
    assert_eq!(
        status, 200,
        "gateway serializable range on a learner: {body}"
    );
    let (status, body) = http_post(&c.endpoint(l), "/v3/maintenance/status", "{}");
    assert_eq!(status, 200, "gateway status on a learner: {body}");
    // Once promoted, it serves everything.
    c.promote_member(l);
    wait_until(
        &format!("{} to serve writes once promoted", c.name(l)),
        Duration::from_secs(20),
        || ctl.run(&["put", "k", "v"]).success().then_some(()),
    );
}

/// A plain HTTP/1.1 POST of a JSON `body` to `path` at `endpoint` (`http://host:port`); returns
/// the status code and the response body.
fn http_post(endpoint: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read response");
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    // Chunked bodies (a short one: a single chunk) are unwrapped.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest.split("\r\n").nth(1).unwrap_or("").to_string()
    } else {
        rest.to_string()
    };
    (status, body)
}

/// The log line a member writes when it has installed a snapshot streamed by the leader.
fn snapshot_installed_line(target: Target) -> &'static str {
    match target {
        Target::Raftkv => "snapshot installed",
        Target::Etcd => "received and saved database snapshot",
    }
}

#[test]
fn learner_catches_up_by_snapshot_and_is_promoted() {
    let t0 = Instant::now();
    let mut c = Cluster::start_with(3, &["--snapshot-count=100"]);
    // etcd keeps 5000 entries behind each snapshot for slow followers; write past them so the
    // learner's entries are gone from the leader's log there too.
    let n = if c.target().is_etcd() { 6000 } else { 3000 };
    block_on(load(&c.endpoints(), n));
    eprintln!("loaded {n} keys in {:?}", t0.elapsed());
    let rev = block_on(async { all_keys(&c.endpoint(0), false).await.0 });

    let step = Instant::now();
    let l = c.add_member(true);
    let listed = c.member_list(0);
    let me = listed
        .iter()
        .find(|m| m.id == c.member_id(l))
        .expect("the learner is listed");
    assert!(
        me.is_learner,
        "{} should be listed as a learner: {me:?}",
        c.name(l)
    );
    wait_revision(&c, &[l], rev);
    eprintln!(
        "learner caught up to revision {rev} in {:?}",
        step.elapsed()
    );
    let (learner_rev, kvs) = block_on(all_keys(&c.endpoint(l), true));
    assert_eq!(learner_rev, rev);
    assert_eq!(
        kvs.iter().filter(|(k, ..)| k.starts_with("load/")).count(),
        n
    );
    let text = std::fs::read_to_string(c.log_path(l)).expect("learner log");
    let line = snapshot_installed_line(c.target());
    assert!(
        text.contains(line),
        "{} caught up without installing a snapshot (no `{line}` in {})",
        c.name(l),
        c.log_path(l).display()
    );

    c.promote_member(l);
    let all: Vec<usize> = (0..4).collect();
    assert_voters(&c, &all, &all);
    // A voter serves linearizable reads and writes.
    let wrote = block_on(async {
        let mut cl = connect(&c.endpoint(l)).await;
        let put = cl.put("after-promote", "v", None).await.expect("put");
        let got = cl.get("after-promote", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"v");
        put.header().expect("header").revision()
    });
    wait_revision(&c, &all, wrote);
    assert_same_hash(&c, &all, wrote);
    eprintln!("learner test took {:?}", t0.elapsed());
}

/// A member added with `--initial-cluster-state existing` starts with a provisional cluster id
/// (its own `--initial-cluster`'s) until the leader's log brings the real one: its start line
/// must not claim the provisional one, and it logs the real one once it has joined.
#[test]
fn a_joining_member_logs_the_cluster_id_it_joins() {
    let mut c = Cluster::start(1);
    if c.target().is_etcd() {
        eprintln!("raftkv's log lines only; nothing to check on etcd");
        return;
    }
    let v = c
        .etcdctl_for(0)
        .json(&["get", "--consistency=s", "cluster-id-probe"]);
    let id = format!(
        "{:x}",
        v["header"]["cluster_id"].as_u64().expect("cluster_id")
    );
    let i = c.add_member(false);
    let log = c.log_path(i);
    let joined = wait_until(
        &format!("{} to log the cluster it joined", c.name(i)),
        CATCH_UP,
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find(|l| l.contains("joined the cluster"))
                .map(str::to_string)
        },
    );
    assert!(joined.contains(&format!("cluster={id}")), "{joined}");
    let text = std::fs::read_to_string(&log).expect("log");
    let started = text
        .lines()
        .find(|l| l.contains("member started"))
        .expect("a start line");
    assert!(
        !started.contains("cluster=") || started.contains(&format!("cluster={id} ")),
        "the start line names another cluster than {id}: {started}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Snapshot save -> restore -> a new cluster.

/// How the backup is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Saver {
    /// The target's own client (`raftkv snapshot save`; the stock etcdctl for etcd).
    Own,
    /// The stock `etcdctl snapshot save`, whatever the target.
    StockEtcdctl,
}

/// Loads a cluster (leases, overwrites, deletes, a physical compaction), saves a backup with
/// `saver`, restores it into a new single-member cluster and checks the new cluster serves the
/// same data: revision, every key with its metadata, HashKV, compaction, leases with their keys.
fn save_restore_and_compare(saver: Saver) {
    let t0 = Instant::now();
    let src = Cluster::start(3);
    let ep = src.endpoint(0);
    let (lease_a, lease_b, compacted_at) = block_on(async {
        let mut cl = connect(&ep).await;
        let a = cl.lease_grant(600, None).await.expect("grant").id();
        let b = cl.lease_grant(900, None).await.expect("grant").id();
        for i in 0..200 {
            let opts = match i {
                0..50 => Some(PutOptions::new().with_lease(a)),
                50..70 => Some(PutOptions::new().with_lease(b)),
                _ => None,
            };
            cl.put(format!("k/{i:03}"), format!("v0-{i}"), opts)
                .await
                .expect("put");
        }
        for i in 100..150 {
            cl.put(format!("k/{i:03}"), format!("v1-{i}"), None)
                .await
                .expect("put");
        }
        let compact_at = cl
            .delete(
                "k/15",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("delete")
            .header()
            .expect("header")
            .revision();
        cl.compact(compact_at, Some(CompactionOptions::new().with_physical()))
            .await
            .expect("compact");
        for i in 200..210 {
            cl.put(format!("k/{i:03}"), format!("v2-{i}"), None)
                .await
                .expect("put");
        }
        (a, b, compact_at)
    });
    let (rev, src_kvs) = block_on(all_keys(&ep, false));
    let src_hash = src.hash_kv(0, rev);
    assert_eq!(src_hash.compact_revision, compacted_at);

    // Outside the source cluster's directory, which goes with it.
    let backup_dir = tempfile::tempdir().expect("tempdir");
    let file = backup_dir.path().join("backup.db");
    match saver {
        Saver::Own => src.snapshot_save(0, &file),
        Saver::StockEtcdctl => {
            let saved = src
                .etcdctl_for(0)
                .ok(&["snapshot", "save", &file.display().to_string()]);
            assert!(
                saved.contains("Snapshot saved at"),
                "snapshot save printed: {saved}"
            );
        }
    }
    eprintln!(
        "snapshot of revision {rev} saved ({} bytes) after {:?}",
        std::fs::metadata(&file).expect("snapshot file").len(),
        t0.elapsed()
    );
    // etcd's shape: 512 * k + 32 bytes, a SHA-256 trailer last, which restore verifies.
    let len = std::fs::metadata(&file).expect("snapshot file").len();
    assert_eq!(len % 512, 32, "a snapshot file of {len} bytes");
    let mut damaged = std::fs::read(&file).expect("read the snapshot");
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let bad = backup_dir.path().join("damaged.db");
    std::fs::write(&bad, &damaged).expect("write a damaged copy");
    let bad_dir = backup_dir.path().join("damaged.etcd");
    let (mut cmd, refusal) = match src.target() {
        Target::Raftkv => (
            std::process::Command::new(raftkv_tests::cluster::raftkv_binary()),
            "snapshot file integrity check failed",
        ),
        Target::Etcd => {
            let mut cmd = std::process::Command::new("etcdctl");
            cmd.env("ETCDCTL_API", "3");
            (cmd, "expected sha256")
        }
    };
    let out = cmd
        .args(["snapshot", "restore", &bad.display().to_string()])
        .arg(format!("--data-dir={}", bad_dir.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run snapshot restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(refusal),
        "restoring a damaged snapshot ({}): {stderr}",
        out.status
    );
    drop(src);

    let dst = Cluster::start_restored(1, Path::new(&file), &[]);
    let dep = dst.endpoint(0);
    let (dst_rev, dst_kvs) = block_on(all_keys(&dep, false));
    assert_eq!(dst_rev, rev, "the restored member's revision");
    assert_eq!(dst_kvs, src_kvs, "every key, value, revision and lease");
    let dst_hash = dst.hash_kv(0, rev);
    assert_eq!(
        (dst_hash.hash, dst_hash.compact_revision),
        (src_hash.hash, src_hash.compact_revision),
        "HashKV at revision {rev}"
    );
    assert_voters(&dst, &[0], &[0]);

    block_on(async {
        let mut cl = connect(&dep).await;
        // The compaction carried over.
        let err = cl
            .get(
                "k/000",
                Some(GetOptions::new().with_revision(compacted_at - 1)),
            )
            .await
            .expect_err("a read below the compact revision");
        assert!(
            err.to_string()
                .contains("required revision has been compacted"),
            "{err}"
        );
        // The leases carried over, with their keys.
        let mut ids: Vec<i64> = cl
            .leases()
            .await
            .expect("leases")
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        ids.sort();
        let mut want = vec![lease_a, lease_b];
        want.sort();
        assert_eq!(ids, want);
        let ttl = cl
            .lease_time_to_live(lease_a, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        assert_eq!(ttl.granted_ttl(), 600);
        assert!(ttl.ttl() > 0, "lease a expired: {ttl:?}");
        assert_eq!(ttl.keys().len(), 50);
        // The new cluster takes writes after the restored history.
        let put = cl.put("after-restore", "v", None).await.expect("put");
        assert_eq!(put.header().expect("header").revision(), rev + 1);
    });
    eprintln!("snapshot test ({saver:?}) took {:?}", t0.elapsed());
}

#[test]
fn snapshot_save_restore_serves_same_data_in_a_new_cluster() {
    save_restore_and_compare(Saver::Own);
}

/// The stock etcdctl 3.4 checks that the stream ends with etcd's SHA-256 trailer (its length is
/// 32 more than a multiple of 512; "sha256 checksum not found" otherwise), and its file restores
/// with the target's own `snapshot restore`.
#[test]
fn stock_etcdctl_snapshot_save_restore_serves_same_data() {
    save_restore_and_compare(Saver::StockEtcdctl);
}

// ---------------------------------------------------------------------------------------------
// 4. `etcdctl lock` mutual exclusion.

/// The command each `etcdctl lock` runs while it holds the lock: appends `start <name>` (with
/// the lock key and revision etcdctl passes in its environment) to `<dir>/events`, waits until
/// the test creates `<dir>/release-<name>`, then appends `end <name>` and exits.
const HOLDER: &str = r#"
echo "start $1 $(date +%s.%N) ${ETCD_LOCK_KEY:-} ${ETCD_LOCK_REV:-}" >> "$2/events"
while [ ! -e "$2/release-$1" ]; do sleep 0.02; done
echo "end $1 $(date +%s.%N)" >> "$2/events"
"#;

fn events(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The words of each event line: (kind, holder).
fn event_kinds(dir: &Path) -> Vec<(String, String)> {
    events(dir)
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace();
            (
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Polls `happened` for `quiet` and panics with `what` if it ever holds (a negative check over a
/// quiet period; synchronisation happens before it, on conditions).
#[track_caller]
fn assert_never(what: &str, quiet: Duration, happened: impl Fn() -> bool) {
    let until = Instant::now() + quiet;
    while Instant::now() < until {
        assert!(!happened(), "{what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Number of keys under `prefix/` (holders and waiters of a lock or election).
fn keys_under(c: &Cluster, prefix: &str) -> usize {
    let p = format!("{prefix}/");
    let out = c.etcdctl().ok(&["get", "--prefix", "--keys-only", &p]);
    out.lines().filter(|l| !l.is_empty()).count()
}

#[test]
fn lock_excludes_across_members_and_passes_on_release_and_on_kill() {
    let t0 = Instant::now();
    let c = Cluster::start(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    std::fs::write(d.join("holder.sh"), HOLDER).expect("write holder");
    let script = d.join("holder.sh").display().to_string();
    let ds = d.display().to_string();
    // A 3 s session lease: a killed holder's lock is freed within about 3 s.
    let lock = |member: usize, name: &str| {
        c.etcdctl_for(member)
            .spawn(&["lock", "--ttl=3", "mylock", "--", "sh", &script, name, &ds])
    };
    let release = |name: &str| std::fs::write(d.join(format!("release-{name}")), "").unwrap();
    let started = |name: &str| {
        event_kinds(&d)
            .iter()
            .any(|(k, h)| k == "start" && h == name)
    };

    let mut procs: HashMap<&str, _> = HashMap::new();
    procs.insert("A", lock(0, "A"));
    procs.insert("B", lock(1, "B"));
    let first = wait_until("a first holder", Duration::from_secs(30), || {
        event_kinds(&d).first().map(|(_, h)| h.clone())
    });
    let second = if first == "A" { "B" } else { "A" };
    // Both are registered (holder and waiter), and the waiter stays out while the lock is held.
    wait_until("holder and waiter keys", Duration::from_secs(10), || {
        (keys_under(&c, "mylock") == 2).then_some(())
    });
    assert_never(
        &format!("{second} acquired while {first} held"),
        Duration::from_millis(1500),
        || started(second),
    );

    // Released: the waiter takes over.
    let freed = Instant::now();
    release(&first);
    wait_until(
        &format!("{second} to acquire"),
        Duration::from_secs(20),
        || started(second).then_some(()),
    );
    eprintln!("lock passed on release in {:?}", freed.elapsed());
    let (status, _, stderr) = procs
        .remove(first.as_str())
        .unwrap()
        .wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "etcdctl lock for {first}: {status}\n{stderr}"
    );

    // Killed: a third waiter (on the third member) takes over once the session lease expires.
    procs.insert("C", lock(2, "C"));
    wait_until("holder and waiter keys", Duration::from_secs(10), || {
        (keys_under(&c, "mylock") == 2).then_some(())
    });
    assert_never(
        &format!("C acquired while {second} held"),
        Duration::from_millis(1000),
        || started("C"),
    );
    drop(procs.remove(second).unwrap()); // SIGKILL: no unlock, no lease revoke
    let killed = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("events"))
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, format!("killed {second}\n").as_bytes())
        })
        .expect("append killed");
    wait_until("C to acquire", Duration::from_secs(20), || {
        started("C").then_some(())
    });
    let took = killed.elapsed();
    eprintln!("lock passed on a killed holder in {took:?}");
    release("C");
    let (status, _, stderr) = procs
        .remove("C")
        .unwrap()
        .wait_exit(Duration::from_secs(20));
    assert!(status.success(), "etcdctl lock for C: {status}\n{stderr}");
    // The killed holder's command is still running (etcdctl does not kill it): let it end.
    release(second);

    // The holders' intervals never overlap: each start follows the previous holder's end.
    let evs = event_kinds(&d);
    let mut holder: Option<String> = None;
    for (kind, who) in &evs {
        match kind.as_str() {
            "start" => {
                assert!(
                    holder.is_none(),
                    "{who} started while {holder:?} held: {evs:?}"
                );
                holder = Some(who.clone());
            }
            "end" | "killed" => {
                if holder.as_deref() == Some(who) {
                    holder = None;
                }
            }
            _ => panic!("unexpected event {kind}"),
        }
    }
    let starts: Vec<&str> = evs
        .iter()
        .filter(|(k, _)| k == "start")
        .map(|(_, h)| h.as_str())
        .collect();
    assert_eq!(starts, [first.as_str(), second, "C"]);
    // The lock revisions etcdctl hands its command (fencing tokens) increase.
    let revs: Vec<i64> = events(&d)
        .iter()
        .filter(|l| l.starts_with("start"))
        .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "lock revisions {revs:?}"
    );
    eprintln!("events: {:#?}", events(&d));
    eprintln!("lock test took {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 5. `etcdctl elect` failover.

/// The lease id (hex) in an election key `<name>/<lease hex>`.
fn lease_of(key: &str) -> String {
    key.rsplit('/').next().expect("lease part").to_string()
}

#[test]
fn election_fails_over_when_the_leaders_process_is_killed() {
    let t0 = Instant::now();
    let c = Cluster::start(3);
    let mut observer = c.etcdctl_for(2).spawn(&["elect", "-l", "myelection"]);
    let mut p1 = c.etcdctl_for(0).spawn(&["elect", "myelection", "p1"]);
    let lines = p1.wait_for_lines(2, Duration::from_secs(30));
    assert!(lines[0].starts_with("myelection/"), "{lines:?}");
    assert_eq!(lines[1], "p1");
    let p1_lease = lease_of(&lines[0]);
    observer.wait_until("p1 as leader", Duration::from_secs(30), |l| {
        l.iter().any(|x| x == "p1")
    });

    let mut p2 = c.etcdctl_for(1).spawn(&["elect", "myelection", "p2"]);
    wait_until("p2 to campaign", Duration::from_secs(10), || {
        (keys_under(&c, "myelection") == 2).then_some(())
    });
    assert!(
        p2.drain_for(Duration::from_millis(500)).is_empty(),
        "p2 leads while p1 does: {:?}",
        p2.lines()
    );

    // etcdctl elect has no session TTL flag: its session lease has etcd's default 60 s TTL and
    // is kept alive every 20 s. After a SIGKILL nothing revokes it, so p2 leads when it expires:
    // no earlier than its remaining TTL, and not much later.
    let ttl = c
        .etcdctl()
        .ok(&["lease", "timetolive", &p1_lease, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(ttl.trim()).expect("timetolive json");
    let granted = v["granted-ttl"].as_i64().expect("granted-ttl");
    let remaining = v["ttl"].as_i64().expect("ttl");
    assert_eq!(granted, 60, "etcdctl's session TTL: {v}");
    drop(p1); // SIGKILL
    let killed = Instant::now();
    let lines = {
        p2.wait_until(
            "p2 to lead",
            Duration::from_secs(granted as u64 + 20),
            |l| l.len() >= 2,
        );
        p2.lines().to_vec()
    };
    let took = killed.elapsed();
    eprintln!("p2 leads {took:?} after p1 was killed (lease had {remaining} s left)");
    assert!(lines[0].starts_with("myelection/"), "{lines:?}");
    assert_eq!(lines[1], "p2");
    assert!(
        took + Duration::from_secs(2) >= Duration::from_secs(remaining as u64),
        "p2 led after {took:?}, before p1's lease ({remaining} s left) could expire"
    );
    observer.wait_until("p2 as leader", Duration::from_secs(20), |l| {
        l.iter().any(|x| x == "p2")
    });
    let seen: Vec<&String> = observer
        .lines()
        .iter()
        .filter(|l| !l.starts_with("myelection/"))
        .collect();
    assert_eq!(seen, ["p1", "p2"], "observer: {:?}", observer.lines());
    let leader = c.etcdctl().ok(&["get", "--prefix", "myelection/"]);
    assert!(
        leader.lines().filter(|l| *l == "p1").count() == 0,
        "p1's key is still there: {leader}"
    );
    eprintln!("election test took {:?}", t0.elapsed());
}
