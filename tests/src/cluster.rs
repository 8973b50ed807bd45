//! A cluster of real server processes on loopback: `raftkv serve` or the reference `etcd`,
//! started with the same etcd flags.
//!
//! Each member gets a client and a peer port on 127.0.0.1 (picked by binding port 0), a data
//! directory in the cluster's temporary directory, and a log file that receives its stdout and
//! stderr. When a test panics while a [`Cluster`] is alive, the tail of every member's log is
//! printed. Dropping the cluster SIGKILLs and reaps every member.
//!
//! Membership changes go the etcd way, through the stock etcdctl: [`Cluster::add_member`]
//! (`member add`, then the new process with `--initial-cluster-state existing`),
//! [`Cluster::promote_member`] and [`Cluster::remove_member`]; members keep their index (and
//! name `m<index>`) for the whole test, removed ones included. [`Cluster::start_restored`]
//! starts a new cluster from a `snapshot save` file.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::etcdctl::Etcdctl;
use crate::wait::wait_until;

/// How long a cluster (or a restarted member) may take to elect a leader and answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How many lines of each member's log are printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Which server the tests drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `raftkv serve` from this workspace (the default).
    Raftkv,
    /// The reference `etcd` on `PATH` (`RAFTKV_TEST_TARGET=etcd`).
    Etcd,
}

impl Target {
    /// The target chosen by `RAFTKV_TEST_TARGET` (`etcd` or `raftkv`; unset means raftkv).
    pub fn from_env() -> Target {
        match std::env::var("RAFTKV_TEST_TARGET").as_deref() {
            Ok("etcd") => Target::Etcd,
            Ok("raftkv") | Ok("") | Err(_) => Target::Raftkv,
            Ok(other) => panic!("RAFTKV_TEST_TARGET={other}: expected `etcd` or `raftkv`"),
        }
    }

    /// Whether the tests run against the reference etcd.
    pub fn is_etcd(self) -> bool {
        self == Target::Etcd
    }

    /// The program to run and the arguments that come before the etcd flags.
    fn program(self) -> (PathBuf, Vec<String>) {
        match self {
            Target::Raftkv => (raftkv_binary().to_path_buf(), vec!["serve".to_string()]),
            Target::Etcd => {
                ensure_etcd();
                (PathBuf::from("etcd"), Vec::new())
            }
        }
    }

    /// Flags only the reference etcd gets.
    fn extra_flags(self) -> Vec<String> {
        match self {
            Target::Raftkv => Vec::new(),
            Target::Etcd => vec![
                // etcd 3.4 with its default capnslog logger panics at start-up (nil zap logger)
                // when `--experimental-enable-lease-checkpoint` is given.
                "--logger=zap".to_string(),
                // Persist remaining lease TTLs so a new leader does not reset them (etcd #9395).
                "--experimental-enable-lease-checkpoint".to_string(),
                "--enable-v2=false".to_string(),
            ],
        }
    }
}

fn ensure_etcd() {
    static CHECKED: OnceLock<bool> = OnceLock::new();
    let ok = *CHECKED.get_or_init(|| {
        Command::new("etcd")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    assert!(
        ok,
        "RAFTKV_TEST_TARGET=etcd but `etcd --version` does not run: \
         run scripts/setup.sh (it installs Debian's etcd-server package)"
    );
}

/// The workspace root (this crate lives in `<root>/tests`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Builds `raftkv` once per test process (`cargo build -p raftkv-cli --bin raftkv`) and
/// returns its path. `RAFTKV_BIN` names a prebuilt binary instead.
pub fn raftkv_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("RAFTKV_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => workspace_binary("raftkv-cli", "raftkv"),
    })
}

/// Builds binary `bin` of workspace package `package` (debug profile, the tests' target dir)
/// and returns its path; panics with the build's last lines if it fails.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { root.join(d) } else { d })
        .unwrap_or_else(|| root.join("target"));
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        panic!("`cargo build -p {package} --bin {bin}` failed (last lines):\n{tail}");
    }
    target_dir.join("debug").join(bin)
}

/// Ports handed out in this process, never handed out twice (parallel tests each pick ports).
static USED_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Picks `n` distinct free ports on 127.0.0.1: binds port 0, reads the port, releases it.
fn free_ports(n: usize) -> Vec<u16> {
    let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut seen: HashSet<u16> = used.iter().copied().collect();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        held.push(l);
        if seen.insert(port) {
            ports.push(port);
        }
    }
    used.extend(&ports);
    ports
}

/// One member process and what it needs to be restarted.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Added with `member add --learner` and not promoted yet.
    learner: bool,
    /// Removed from the cluster with `member remove` (its process is stopped).
    removed: bool,
    log: PathBuf,
    args: Vec<String>,
    /// The running process; `None` once the test killed it. A mutex so that `&Cluster` can
    /// notice a member that exited on its own.
    child: Mutex<Option<Child>>,
    /// The member id the server reports (status header), learned once it answers.
    id: Option<u64>,
    /// Extra environment variables of the process (e.g. the fault harness's dial overrides).
    env: Vec<(String, String)>,
}

impl Member {
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// One entry of `etcdctl member list -w json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member id.
    pub id: u64,
    /// Its name; empty until the member has started and published it.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs; empty until the member has started and published them.
    pub client_urls: Vec<String>,
    /// Whether it is a learner (non-voting).
    pub is_learner: bool,
}

impl MemberInfo {
    fn from_json(v: &serde_json::Value) -> MemberInfo {
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        MemberInfo {
            id: v["ID"].as_u64().expect("member ID"),
            name: v["name"].as_str().unwrap_or("").to_string(),
            peer_urls: strings(&v["peerURLs"]),
            client_urls: strings(&v["clientURLs"]),
            is_learner: v["isLearner"].as_bool().unwrap_or(false),
        }
    }

    /// Whether the member has started: published its name and client URLs.
    pub fn is_started(&self) -> bool {
        !self.name.is_empty() && !self.client_urls.is_empty()
    }
}

/// A member's `HashKV` answer (`etcdctl endpoint hashkv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// The hash of the key-value store's history up to the requested revision.
    pub hash: u64,
    /// The compact revision the hash starts from.
    pub compact_revision: i64,
    /// The member's current revision (response header).
    pub revision: i64,
}

/// Errors etcd (and raftkv) answer to a membership change that may succeed if repeated once
/// the cluster has settled: nothing was proposed.
const RECONFIG_NOT_YET: &[&str] = &[
    "unhealthy cluster",
    "not enough started members",
    "in sync with leader",
];

/// A running cluster of `raftkv` (or etcd) processes. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    target: Target,
    members: Vec<Member>,
    dir: tempfile::TempDir,
    /// `--initial-cluster-token`, which members added later need too (it goes into member ids).
    token: String,
    /// The extra flags every member gets (members added later too).
    extra: Vec<String>,
}

impl Cluster {
    /// Starts an `n`-member cluster with etcd's default timings (100 ms heartbeat, 1 s election
    /// timeout) and waits until every member answers and a leader exists.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with `extra` etcd flags appended to every member's command line.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::create(n, extra);
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// Like [`Cluster::start_with`], with environment variables per member: `env(i, peer_urls)`
    /// gives member `i`'s, knowing every member's peer URL (in member order) before any
    /// starts. They stay with the member across restarts. The fault harness
    /// (`fault::net`) uses it to route each member's peer links through its own proxies.
    pub fn start_with_env(
        n: usize,
        extra: &[&str],
        mut env: impl FnMut(usize, &[String]) -> Vec<(String, String)>,
    ) -> Cluster {
        let mut cluster = Cluster::create(n, extra);
        let peer_urls: Vec<String> = cluster.members.iter().map(Member::peer_url).collect();
        for i in 0..n {
            cluster.members[i].env = env(i, &peer_urls);
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// Starts an `n`-member cluster whose members' data directories are first restored from
    /// `snapshot` (a file written by `etcdctl snapshot save`): with `raftkv snapshot restore`,
    /// or `etcdctl snapshot restore` for etcd, each with the new cluster's `--name`,
    /// `--initial-cluster`, `--initial-cluster-token` and `--initial-advertise-peer-urls`.
    /// Waits like [`Cluster::start`].
    pub fn start_restored(n: usize, snapshot: &Path, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::create(n, extra);
        let initial_cluster = cluster.initial_cluster();
        for i in 0..n {
            let m = &cluster.members[i];
            let args = [
                "snapshot".to_string(),
                "restore".to_string(),
                snapshot.display().to_string(),
                format!("--name={}", m.name),
                format!("--data-dir={}", cluster.data_dir(i).display()),
                format!("--initial-cluster={initial_cluster}"),
                format!("--initial-cluster-token={}", cluster.token),
                format!("--initial-advertise-peer-urls={}", m.peer_url()),
            ];
            let mut cmd = match cluster.target {
                Target::Raftkv => Command::new(raftkv_binary()),
                Target::Etcd => {
                    let mut cmd = Command::new("etcdctl");
                    cmd.env("ETCDCTL_API", "3");
                    cmd
                }
            };
            let out = cmd
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .expect("run snapshot restore");
            assert!(
                out.status.success(),
                "{:?} snapshot restore for {} failed ({}):\n{}{}",
                cluster.target,
                m.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// Reserves ports and a directory for `n` founding members; starts nothing.
    fn create(n: usize, extra: &[&str]) -> Cluster {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let target = Target::from_env();
        let dir = tempfile::Builder::new()
            .prefix("raftkv-e2e-")
            .tempdir()
            .expect("create temp dir");
        let token = format!(
            "e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ports = free_ports(2 * n);
        let mut cluster = Cluster {
            target,
            members: Vec::new(),
            dir,
            token,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            cluster.push_member(ports[2 * i], ports[2 * i + 1], false);
        }
        let initial_cluster = cluster.initial_cluster();
        for i in 0..n {
            cluster.members[i].args = cluster.member_args(i, &initial_cluster, "new");
        }
        cluster
    }

    /// Appends member `m<len>` on the given ports (its command line is set by the caller).
    fn push_member(&mut self, client_port: u16, peer_port: u16, learner: bool) -> usize {
        let i = self.members.len();
        let name = format!("m{i}");
        self.members.push(Member {
            log: self.dir.path().join(format!("{name}.log")),
            name,
            client_port,
            peer_port,
            learner,
            removed: false,
            args: Vec::new(),
            child: Mutex::new(None),
            id: None,
            env: Vec::new(),
        });
        i
    }

    /// `--initial-cluster` for the current members (`name=peer URL`, removed ones left out).
    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .filter(|m| !m.removed)
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// Member `i`'s full command line with `--initial-cluster` and `--initial-cluster-state`.
    fn member_args(&self, i: usize, initial_cluster: &str, state: &str) -> Vec<String> {
        let (_, mut args) = self.target.program();
        let m = &self.members[i];
        let client_url = format!("http://127.0.0.1:{}", m.client_port);
        args.extend([
            format!("--name={}", m.name),
            format!("--data-dir={}", self.data_dir(i).display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={}", m.peer_url()),
            format!("--initial-advertise-peer-urls={}", m.peer_url()),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-state={state}"),
            format!("--initial-cluster-token={}", self.token),
            "--heartbeat-interval=100".to_string(),
            "--election-timeout=1000".to_string(),
        ]);
        args.extend(self.target.extra_flags());
        args.extend(self.extra.iter().cloned());
        args
    }

    /// The target these processes run.
    pub fn target(&self) -> Target {
        self.target
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URL of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The client URLs of the running members.
    pub fn live_endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.endpoint(i))
            .collect()
    }

    /// The member name of member `i` (`m0`, `m1`, ...).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The member id member `i` reports in its response headers.
    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i].id.expect("member id is learned at start")
    }

    /// The path of member `i`'s log file.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.members[i].log.clone()
    }

    /// Whether member `i`'s process is running (not killed by the test).
    pub fn is_running(&self, i: usize) -> bool {
        lock(&self.members[i].child).is_some()
    }

    /// An etcdctl with the endpoint of every member that has not been removed.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(&self.current_endpoints())
    }

    /// The client URLs of the members that have not been removed, in member order.
    pub fn current_endpoints(&self) -> Vec<String> {
        self.current_members()
            .into_iter()
            .map(|i| self.endpoint(i))
            .collect()
    }

    /// The indexes of the members that have not been removed.
    pub fn current_members(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.members[i].removed)
            .collect()
    }

    /// Whether member `i` is a learner (added with `--learner`, not promoted yet).
    pub fn is_learner(&self, i: usize) -> bool {
        self.members[i].learner
    }

    /// The peer URL of member `i`.
    pub fn peer_url(&self, i: usize) -> String {
        self.members[i].peer_url()
    }

    /// An etcdctl for the running voters except `except` (membership changes go there:
    /// a learner refuses them, and a member being removed may stop before it answers).
    fn voters_etcdctl(&self, except: Option<usize>) -> Etcdctl {
        let eps: Vec<String> = (0..self.members.len())
            .filter(|&i| Some(i) != except && self.is_running(i) && !self.members[i].learner)
            .map(|i| self.endpoint(i))
            .collect();
        assert!(!eps.is_empty(), "no running voter to send the change to");
        Etcdctl::new(&eps)
    }

    /// Runs a membership change, repeating it while the cluster answers that it is not ready
    /// yet (etcd's strict reconfiguration checks: every voter connected for 5 s, enough
    /// started members, a learner in sync); panics on any other failure or after
    /// [`START_TIMEOUT`].
    fn reconfigure(&self, ctl: &Etcdctl, args: &[&str]) -> String {
        let mut refusals = 0;
        let out = wait_until(
            &format!("etcdctl {args:?} to succeed"),
            START_TIMEOUT,
            || {
                let out = ctl.run(args);
                if out.success() {
                    return Some(out);
                }
                let err = out.error().unwrap_or_default();
                assert!(
                    RECONFIG_NOT_YET.iter().any(|e| err.contains(e)),
                    "etcdctl {args:?} failed:\n{out}"
                );
                refusals += 1;
                None
            },
        );
        if refusals > 0 {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("etcdctl {args:?}: refused {refusals} times before it was accepted");
            }
        }
        out.stdout
    }

    /// Adds a member the etcd way and returns its index: reserves two ports, runs
    /// `etcdctl member add m<i> --peer-urls=... [--learner]`, starts the process with
    /// `--initial-cluster` listing the current members and itself and
    /// `--initial-cluster-state existing`, and waits until it answers a serializable read (with
    /// the member id `member add` returned) and every voter lists it as started.
    pub fn add_member(&mut self, learner: bool) -> usize {
        let ports = free_ports(2);
        let ctl = self.voters_etcdctl(None);
        let i = self.push_member(ports[0], ports[1], learner);
        let name = self.members[i].name.clone();
        let peer = format!("--peer-urls={}", self.members[i].peer_url());
        let mut args = vec!["-w", "json", "member", "add", &name, &peer];
        if learner {
            args.push("--learner");
        }
        let out = self.reconfigure(&ctl, &args);
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("member add printed invalid JSON ({e}):\n{out}"));
        let added = MemberInfo::from_json(&v["member"]);
        assert_eq!(added.is_learner, learner, "member add answered {v}");
        let initial_cluster = self.initial_cluster();
        self.members[i].args = self.member_args(i, &initial_cluster, "existing");
        self.spawn(i);
        let id = self.wait_answering(i);
        assert_eq!(
            id, added.id,
            "{name} reports member id {id:x}, `member add` returned {:x}",
            added.id
        );
        self.members[i].id = Some(id);
        // Asked of the voters: etcd's learners refuse `member list`.
        let voters: Vec<usize> = self
            .current_members()
            .into_iter()
            .filter(|&j| !self.members[j].learner)
            .collect();
        for j in voters {
            let ctl = self.etcdctl_for(j);
            wait_until(
                &format!("{} to list {name} as started", self.members[j].name),
                START_TIMEOUT,
                || {
                    self.check_alive(i);
                    let out = ctl.run(&["member", "list", "-w", "json"]);
                    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).ok()?;
                    v["members"]
                        .as_array()?
                        .iter()
                        .map(MemberInfo::from_json)
                        .any(|m| m.id == id && m.is_started() && m.name == name)
                        .then_some(())
                },
            );
        }
        i
    }

    /// Removes member `i` with `etcdctl member remove <id>` (sent to the other voters), then
    /// stops its process (etcd exits on its own once removed; either way it is gone).
    pub fn remove_member(&mut self, i: usize) {
        let id = format!("{:x}", self.member_id(i));
        let ctl = self.voters_etcdctl(Some(i));
        self.reconfigure(&ctl, &["member", "remove", &id]);
        self.members[i].removed = true;
        self.kill(i);
    }

    /// Promotes learner `i` with `etcdctl member promote <id>`, repeating while it is refused
    /// as not in sync with the leader.
    pub fn promote_member(&mut self, i: usize) {
        assert!(self.members[i].learner, "{} is not a learner", self.name(i));
        let id = format!("{:x}", self.member_id(i));
        let ctl = self.voters_etcdctl(None);
        self.reconfigure(&ctl, &["member", "promote", &id]);
        self.members[i].learner = false;
    }

    /// Saves a backup of member `i` to `file` with the target's own client: `raftkv snapshot
    /// save`, or the stock `etcdctl snapshot save` for etcd. Panics unless it succeeded and
    /// printed `Snapshot saved at <file>`.
    #[track_caller]
    pub fn snapshot_save(&self, i: usize, file: &Path) {
        let file = file.display().to_string();
        let stdout = match self.target {
            Target::Etcd => self.etcdctl_for(i).ok(&["snapshot", "save", &file]),
            Target::Raftkv => {
                let out = Command::new(raftkv_binary())
                    .args(["snapshot", "save", &file])
                    .arg(format!("--endpoints={}", self.endpoint(i)))
                    .env_remove("RAFTKV_ENDPOINTS")
                    .stdin(Stdio::null())
                    .output()
                    .expect("run raftkv snapshot save");
                assert!(
                    out.status.success(),
                    "raftkv snapshot save failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        assert!(
            stdout.contains(&format!("Snapshot saved at {file}")),
            "snapshot save printed: {stdout}"
        );
    }

    /// `etcdctl member list` as member `i` answers it.
    pub fn member_list(&self, i: usize) -> Vec<MemberInfo> {
        let v = self.etcdctl_for(i).json(&["member", "list"]);
        v["members"]
            .as_array()
            .unwrap_or_else(|| panic!("member list without members: {v}"))
            .iter()
            .map(MemberInfo::from_json)
            .collect()
    }

    /// Member `i`'s current revision from a serializable read (answered locally, learners
    /// too), or `None` if it does not answer.
    pub fn serializable_revision(&self, i: usize) -> Option<i64> {
        let out =
            self.etcdctl_for(i)
                .run(&["get", "--consistency=s", "health-probe", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).ok()?;
        v["header"]["revision"].as_i64()
    }

    /// Member `i`'s current revision from a linearizable read (a ReadIndex round through the
    /// leader), or `None` if it does not answer.
    pub fn linearizable_revision(&self, i: usize) -> Option<i64> {
        let out = self
            .etcdctl_for(i)
            .run(&["get", "health-probe", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).ok()?;
        v["header"]["revision"].as_i64()
    }

    /// Member `i`'s `HashKV` at `rev` (`etcdctl endpoint hashkv --rev`).
    #[track_caller]
    pub fn hash_kv(&self, i: usize, rev: i64) -> HashKv {
        // Without the scheme, as in `status_leader`.
        let addr = format!("127.0.0.1:{}", self.members[i].client_port);
        let rev = format!("--rev={rev}");
        let v = Etcdctl::new(&[addr]).json(&["endpoint", "hashkv", &rev]);
        let h = &v[0]["HashKV"];
        HashKv {
            hash: h["hash"].as_u64().unwrap_or_else(|| panic!("hashkv: {v}")),
            compact_revision: h["compact_revision"].as_i64().unwrap_or(0),
            revision: h["header"]["revision"]
                .as_i64()
                .unwrap_or_else(|| panic!("hashkv: {v}")),
        }
    }

    /// An etcdctl talking to member `i` only.
    pub fn etcdctl_for(&self, i: usize) -> Etcdctl {
        Etcdctl::new(&[self.endpoint(i)])
    }

    /// How member `i`'s process ended if it exited on its own (a crash, a fatal error), or
    /// `None` while it runs (or was never started / was killed by the test).
    pub fn exit_status(&self, i: usize) -> Option<std::process::ExitStatus> {
        lock(&self.members[i].child)
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process id of member `i`, if it is running (for signals such as SIGSTOP).
    pub fn pid(&self, i: usize) -> Option<u32> {
        lock(&self.members[i].child).as_ref().map(Child::id)
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = lock(&self.members[i].child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts member `i` with the same flags and data directory (killing it first if it is
    /// running), and waits until it answers a serializable read.
    pub fn restart(&mut self, i: usize) {
        self.restart_many(&[i]);
    }

    /// Restarts several members at once (e.g. the whole cluster: a member alone without a
    /// quorum may not answer until its peers are back), then waits until each answers a
    /// serializable read.
    pub fn restart_many(&mut self, members: &[usize]) {
        for &i in members {
            self.kill(i);
            self.spawn(i);
        }
        for &i in members {
            let ctl = self.etcdctl_for(i);
            wait_until(
                &format!("restarted member {} to answer", self.members[i].name),
                START_TIMEOUT,
                || {
                    self.check_alive(i);
                    ctl.run(&["get", "--consistency=s", "health-probe"])
                        .success()
                        .then_some(())
                },
            );
        }
    }

    /// The index of the member every running member agrees is the leader (from each
    /// member's `endpoint status`), waiting (with a deadline) until there is one.
    pub fn leader_index(&self) -> usize {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let last = match self.poll_leader() {
                Ok(i) => return i,
                Err(why) => why,
            };
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {START_TIMEOUT:?} waiting for the running members to agree on \
                 a leader; last answer: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks every running member for its status: the leader's index when all agree on a
    /// running member, or why not.
    fn poll_leader(&self) -> Result<usize, String> {
        let mut leader = None;
        for i in (0..self.members.len()).filter(|&i| self.is_running(i)) {
            self.check_alive(i);
            let l = self.status_leader(i)?;
            if l == 0 || leader.is_some_and(|prev| prev != l) {
                return Err(format!(
                    "member {i} reports leader {l:x}, others {leader:x?}"
                ));
            }
            leader = Some(l);
        }
        let leader = leader.ok_or("no running member")?;
        (0..self.members.len())
            .find(|&i| self.members[i].id == Some(leader) && self.is_running(i))
            .ok_or_else(|| format!("leader {leader:x} is not a running member"))
    }

    /// The leader id member `i` reports in `endpoint status`.
    fn status_leader(&self, i: usize) -> Result<u64, String> {
        // The endpoint without its scheme: etcdctl dials `endpoint status` with the endpoint
        // string as the HTTP/2 :authority, and "http://..." there is invalid HTTP/2 that only
        // some servers tolerate (etcd does). The etcdctl tests check that form separately.
        let addr = format!("127.0.0.1:{}", self.members[i].client_port);
        let out = Etcdctl::new(&[addr]).run(&["endpoint", "status", "-w", "json"]);
        if !out.success() {
            return Err(format!("`endpoint status` on member {i} failed: {out}"));
        }
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .map_err(|e| format!("`endpoint status` on member {i}: {e}: {out}"))?;
        v.get(0)
            .and_then(|s| s["Status"]["leader"].as_u64())
            .ok_or_else(|| format!("`endpoint status` on member {i} has no leader: {out}"))
    }

    fn spawn(&mut self, i: usize) {
        let (program, _) = self.target.program();
        let m = &mut self.members[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open member log");
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(&program)
            .args(&m.args)
            .envs(m.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        *lock(&m.child) = Some(child);
    }

    /// Panics if member `i` was started and has exited on its own (a crash): no point waiting.
    #[track_caller]
    fn check_alive(&self, i: usize) {
        let exited = lock(&self.members[i].child)
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!(
                "member {} exited on its own ({status})",
                self.members[i].name
            );
        }
    }

    /// Waits until every member answers `endpoint health` (a linearizable read, so a leader
    /// exists) and learns each member's id from a response header. Only KV and health are
    /// needed here, so a broken Maintenance service fails the tests that use it, not all.
    fn wait_ready(&mut self) {
        let n = self.members.len();
        for i in 0..n {
            let ctl = self.etcdctl_for(i);
            wait_until(
                &format!("member {} to become healthy", self.members[i].name),
                START_TIMEOUT,
                || {
                    self.check_alive(i);
                    ctl.run(&["endpoint", "health"]).success().then_some(())
                },
            );
            let id = self.wait_answering(i);
            self.members[i].id = Some(id);
        }
    }

    /// Waits until member `i` answers a serializable read (a learner does too) and returns the
    /// member id in its header.
    fn wait_answering(&self, i: usize) -> u64 {
        let ctl = self.etcdctl_for(i);
        wait_until(
            &format!("member {} to answer", self.members[i].name),
            START_TIMEOUT,
            || {
                self.check_alive(i);
                let out = ctl.run(&["get", "--consistency=s", "health-probe", "-w", "json"]);
                let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).ok()?;
                v["header"]["member_id"].as_u64()
            },
        )
    }

    /// The last lines of every member's log.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            s.push_str(&format!(
                "===== {} ({}), last {} lines of {} =====\n",
                m.name,
                if lock(&m.child).is_some() {
                    "running"
                } else if m.removed {
                    "removed"
                } else {
                    "killed"
                },
                lines.len() - from,
                m.log.display()
            ));
            for l in &lines[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// The temporary directory holding data directories and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "\n----- cluster logs ({:?}) -----\n{}",
                    self.target,
                    self.log_tails()
                );
            }
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test must still be able to clean up).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
