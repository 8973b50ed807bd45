//! [`FaultCluster`]: a [`Cluster`] whose members reach each other through one [`Proxy`] per
//! directed peer link, plus the process faults (kill, restart, SIGSTOP/SIGCONT).
//!
//! Member ids derive from the peer URLs of the membership table, so every member keeps dialling
//! the real URLs; only the socket changes. Each raftkv member `i` is started with
//! `RAFTKV_PEER_DIAL_OVERRIDES="<url of j>=<addr of P(i→j)>,..."` (the server's test-only dial
//! hook, `raftkv_server::transport::DIAL_OVERRIDES_ENV`), so `P(i→j)` carries exactly what `i`
//! sends to `j`. raftkv's transport uses one connection per direction (the `Messages` stream
//! `i` dials carries `i`'s messages; `j` answers on the stream it dials to `i`), so:
//!
//! - cutting `P(i→j)` alone is an asymmetric fault: `j` no longer hears from `i`, while `i`
//!   still hears from `j` (including `j`'s answers to what got through earlier);
//! - a partition between `i` and `j` cuts both `P(i→j)` and `P(j→i)`, which is what
//!   [`FaultCluster::partition`] does for every pair across the two groups.
//!
//! Client traffic is never proxied: clients (and etcdctl) reach every member directly, so an
//! isolated member still answers what it can answer alone. Forwarding between members over
//! client URLs (lease keep-alives and TimeToLive, MemberPromote to the leader) is not proxied
//! either.
//!
//! Limitations: proxies exist for the founding members only (the overrides are read once at
//! process start; a member added later with [`Cluster::add_member`] dials directly and is dialled
//! directly); and the reference etcd has no dial hook, so proxied clusters are raftkv-only
//! ([`proxies_supported`]). Process faults work on both targets: use
//! [`FaultCluster::start_unproxied`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::cluster::{Cluster, Target};
use crate::etcdctl::Etcdctl;
use crate::fault::proxy::{Mode, Proxy};
use crate::wait::wait_until;

/// The environment variable of the server's dial hook (mirrors
/// `raftkv_server::transport::DIAL_OVERRIDES_ENV`, which this crate does not depend on).
pub const DIAL_OVERRIDES_ENV: &str = "RAFTKV_PEER_DIAL_OVERRIDES";

/// Whether `target` can run behind per-link proxies; `Err` says why not.
pub fn proxies_supported(target: Target) -> Result<(), String> {
    match target {
        Target::Raftkv => Ok(()),
        Target::Etcd => Err(
            "the reference etcd has no peer dial override: its members dial the \
             advertised peer URLs, which also define member ids, so a per-directed-link proxy \
             cannot be inserted (advertising proxy URLs would give one proxy per destination, \
             shared by all senders)"
                .to_string(),
        ),
    }
}

/// What a member's `endpoint status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The member's own id.
    pub member_id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its Raft term.
    pub raft_term: u64,
    /// Its Raft log index.
    pub raft_index: u64,
}

/// A cluster with fault injection. See the module docs.
#[derive(Debug)]
pub struct FaultCluster {
    cluster: Cluster,
    /// `(from, to)` -> the proxy `from` dials to reach `to`. Empty when started unproxied.
    links: BTreeMap<(usize, usize), Proxy>,
    paused: Vec<bool>,
}

impl FaultCluster {
    /// Starts an `n`-member raftkv cluster whose peer links all go through proxies (in
    /// [`Mode::Pass`]) and waits until it is ready. Panics on the etcd target (see
    /// [`proxies_supported`]).
    pub fn start(n: usize) -> FaultCluster {
        FaultCluster::start_with(n, &[])
    }

    /// [`FaultCluster::start`] with `extra` flags for every member.
    pub fn start_with(n: usize, extra: &[&str]) -> FaultCluster {
        if let Err(why) = proxies_supported(Target::from_env()) {
            panic!("a proxied cluster cannot run on this target: {why}");
        }
        let mut links = BTreeMap::new();
        let cluster = Cluster::start_with_env(n, extra, |i, peer_urls| {
            let mut overrides = Vec::new();
            for (j, url) in peer_urls.iter().enumerate().filter(|&(j, _)| j != i) {
                let target = socket_of(url);
                let proxy = Proxy::start(target)
                    .unwrap_or_else(|e| panic!("cannot start proxy m{i}->m{j}: {e}"));
                overrides.push(format!("{url}={}", proxy.addr()));
                links.insert((i, j), proxy);
            }
            vec![(DIAL_OVERRIDES_ENV.to_string(), overrides.join(","))]
        });
        FaultCluster {
            cluster,
            links,
            paused: vec![false; n],
        }
    }

    /// An `n`-member cluster of the current target without proxies: process faults only.
    pub fn start_unproxied(n: usize) -> FaultCluster {
        FaultCluster {
            cluster: Cluster::start(n),
            links: BTreeMap::new(),
            paused: vec![false; n],
        }
    }

    /// The underlying cluster (etcdctl, HashKV, member ids, ...).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The underlying cluster, mutably.
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }

    /// How many members (founding ones, which are the proxied ones).
    pub fn len(&self) -> usize {
        self.paused.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.paused.is_empty()
    }

    /// The proxy carrying what member `from` sends to member `to`.
    #[track_caller]
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        assert!(
            !self.links.is_empty(),
            "this cluster was started without proxies (start_unproxied)"
        );
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no link m{from}->m{to}"))
    }

    /// Sets the mode of the directed link `from -> to` only.
    #[track_caller]
    pub fn set_link(&self, from: usize, to: usize, mode: Mode) {
        self.link(from, to).set_mode(mode);
    }

    /// Cuts every link between a member of `a` and a member of `b`, both directions, with
    /// [`Mode::Blackhole`] (silent loss, nothing reset). Links within a group are untouched.
    #[track_caller]
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        self.partition_with(a, b, Mode::Blackhole);
    }

    /// [`FaultCluster::partition`] with the given mode ([`Mode::Drop`] for a "reset" partition).
    #[track_caller]
    pub fn partition_with(&self, a: &[usize], b: &[usize], mode: Mode) {
        for &i in a {
            for &j in b {
                assert_ne!(i, j, "m{i} is on both sides of the partition");
                self.set_link(i, j, mode);
                self.set_link(j, i, mode);
            }
        }
    }

    /// Cuts member `i` off from every other member (blackhole, both directions).
    #[track_caller]
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.len()).filter(|&j| j != i).collect();
        self.partition(&[i], &others);
    }

    /// Finds the leader (all running members agreeing) and isolates it; returns its index.
    pub fn isolate_leader(&self) -> usize {
        let leader = self.cluster.leader_index();
        self.isolate(leader);
        leader
    }

    /// Finds the leader and SIGKILLs it; returns its index.
    pub fn kill_leader(&mut self) -> usize {
        let leader = self.cluster.leader_index();
        self.kill(leader);
        leader
    }

    /// Finds the leader and stops it with SIGSTOP; returns its index.
    pub fn pause_leader(&mut self) -> usize {
        let leader = self.cluster.leader_index();
        self.pause(leader);
        leader
    }

    /// Delays every chunk `from` sends to `to` by `delay` (one direction; call twice for both).
    #[track_caller]
    pub fn delay_link(&self, from: usize, to: usize, delay: Duration) {
        self.set_link(
            from,
            to,
            Mode::Delay {
                fixed: delay,
                jitter: Duration::ZERO,
            },
        );
    }

    /// Puts every link back to [`Mode::Pass`] (connections that lost bytes are closed; the
    /// members re-dial).
    pub fn heal(&self) {
        self.links.values().for_each(Proxy::heal);
    }

    /// SIGKILLs member `i` (resumed first if paused, so nothing stays stopped).
    pub fn kill(&mut self, i: usize) {
        self.paused[i] = false;
        self.cluster.kill(i);
    }

    /// Restarts member `i` with the same flags, environment and data directory (killing it
    /// first if it runs) and waits until it answers a serializable read.
    pub fn restart(&mut self, i: usize) {
        self.paused[i] = false;
        self.cluster.restart(i);
    }

    /// Stops member `i` with SIGSTOP: its process stays, its sockets stay open, it answers
    /// nothing (a GC pause or a frozen VM, as its peers see it).
    #[track_caller]
    pub fn pause(&mut self, i: usize) {
        assert!(!self.paused[i], "m{i} is already paused");
        self.signal(i, "-STOP");
        self.paused[i] = true;
    }

    /// Resumes a member stopped by [`FaultCluster::pause`] with SIGCONT.
    #[track_caller]
    pub fn resume(&mut self, i: usize) {
        assert!(self.paused[i], "m{i} is not paused");
        self.signal(i, "-CONT");
        self.paused[i] = false;
    }

    /// Whether member `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.paused[i]
    }

    #[track_caller]
    fn signal(&self, i: usize, sig: &str) {
        let pid = self
            .cluster
            .pid(i)
            .unwrap_or_else(|| panic!("m{i} is not running"));
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} (m{i}) failed");
    }

    /// Member `i`'s `endpoint status`, or `None` if it does not answer.
    pub fn status(&self, i: usize) -> Option<Status> {
        status(&self.cluster, i)
    }

    /// Waits (up to `timeout`) until every member of `group` reports the same leader and that
    /// leader is in `group`; returns its index. For a majority side of a partition, where
    /// [`Cluster::leader_index`] (which asks every running member) cannot agree.
    #[track_caller]
    pub fn leader_among(&self, group: &[usize], timeout: Duration) -> usize {
        wait_until(
            &format!("members {group:?} to agree on a leader among them"),
            timeout,
            || {
                let mut leader = None;
                for &i in group {
                    let s = self.status(i)?;
                    if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                        return None;
                    }
                    leader = Some(s.leader);
                }
                let leader = leader?;
                group
                    .iter()
                    .copied()
                    .find(|&i| self.cluster.member_id(i) == leader)
            },
        )
    }

    /// See [`wait_hashkv_equal`].
    #[track_caller]
    pub fn wait_hashkv_equal(&self, members: &[usize], timeout: Duration) -> i64 {
        wait_hashkv_equal(&self.cluster, members, timeout)
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        // Stopped members are SIGKILLed by the cluster's drop all the same; proxies close after.
        for i in 0..self.paused.len() {
            if self.paused[i] {
                self.cluster.kill(i);
            }
        }
    }
}

/// Member `i`'s `endpoint status`, or `None` if it does not answer.
pub fn status(cluster: &Cluster, i: usize) -> Option<Status> {
    // Without the scheme (see `Cluster::status_leader`), and a short timeout: a paused or
    // partitioned member must not hold a poll loop for long.
    let addr = cluster.endpoint(i).replace("http://", "");
    let out =
        Etcdctl::new(&[addr]).run(&["endpoint", "status", "-w", "json", "--command-timeout=2s"]);
    if !out.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).ok()?;
    let s = &v.get(0)?["Status"];
    Some(Status {
        member_id: s["header"]["member_id"].as_u64()?,
        leader: s["leader"].as_u64()?,
        raft_term: s["raftTerm"].as_u64().unwrap_or(0),
        raft_index: s["raftIndex"].as_u64().unwrap_or(0),
    })
}

/// Waits until `members` agree: takes the current revision from a linearizable read (through
/// the leader), waits until each member has applied it, and until their `HashKV` at that
/// revision is equal (a member still catching up on its own may answer a different hash
/// briefly). Returns the revision. The convergence check of every fault test: no divergence.
/// Call it once the faults are healed: a member cut off from the leader makes each of its
/// linearizable reads wait for etcdctl's command timeout.
#[track_caller]
pub fn wait_hashkv_equal(cluster: &Cluster, members: &[usize], timeout: Duration) -> i64 {
    let rev = wait_until("a linearizable read to answer", timeout, || {
        members
            .iter()
            .find_map(|&i| cluster.linearizable_revision(i))
    });
    for &i in members {
        wait_until(&format!("m{i} to apply revision {rev}"), timeout, || {
            (cluster.serializable_revision(i)? >= rev).then_some(())
        });
    }
    wait_until(
        &format!("HashKV at revision {rev} to be equal on {members:?}"),
        timeout,
        || {
            let hashes: Vec<u64> = members
                .iter()
                .map(|&i| cluster.hash_kv(i, rev).hash)
                .collect();
            hashes.windows(2).all(|w| w[0] == w[1]).then_some(())
        },
    );
    rev
}

/// `http://127.0.0.1:<port>` as a socket address.
#[track_caller]
fn socket_of(url: &str) -> SocketAddr {
    let hostport = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("peer URL {url:?} is not http://<ip>:<port>: {e}"))
}
