//! A cluster of real server processes on loopback: `raftkv serve` or the reference `etcd`,
//! started with the same etcd flags.
//!
//! Each member gets a client and a peer port on 127.0.0.1 (picked by binding port 0), a data
//! directory in the cluster's temporary directory, and a log file that receives its stdout and
//! stderr. When a test panics while a [`Cluster`] is alive, the tail of every member's log is
//! printed. Dropping the cluster SIGKILLs and reaps every member.

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
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RAFTKV_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|d| if d.is_relative() { root.join(d) } else { d })
            .unwrap_or_else(|| root.join("target"));
        let out = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-p", "raftkv-cli", "--bin", "raftkv"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            return Err(format!(
                "`cargo build -p raftkv-cli --bin raftkv` failed (last lines):\n{tail}"
            ));
        }
        Ok(target_dir.join("debug").join("raftkv"))
    });
    match bin {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
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
    log: PathBuf,
    args: Vec<String>,
    /// The running process; `None` once the test killed it. A mutex so that `&Cluster` can
    /// notice a member that exited on its own.
    child: Mutex<Option<Child>>,
    /// The member id the server reports (status header), learned once it answers.
    id: Option<u64>,
}

/// A running cluster of `raftkv` (or etcd) processes. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    target: Target,
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts an `n`-member cluster with etcd's default timings (100 ms heartbeat, 1 s election
    /// timeout) and waits until every member answers and a leader exists.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with `extra` etcd flags appended to every member's command line.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let target = Target::from_env();
        let dir = tempfile::Builder::new()
            .prefix("raftkv-e2e-")
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(2 * n);
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (_, prefix) = target.program();
        let members = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
                let data_dir = dir.path().join(&name);
                let mut args = prefix.clone();
                args.extend([
                    format!("--name={name}"),
                    format!("--data-dir={}", data_dir.display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={}", peer_url(i)),
                    format!("--initial-advertise-peer-urls={}", peer_url(i)),
                    format!("--initial-cluster={initial_cluster}"),
                    "--initial-cluster-state=new".to_string(),
                    format!("--initial-cluster-token={token}"),
                    "--heartbeat-interval=100".to_string(),
                    "--election-timeout=1000".to_string(),
                ]);
                args.extend(target.extra_flags());
                args.extend(extra.iter().map(|s| s.to_string()));
                Member {
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: ports[2 * i],
                    args,
                    child: Mutex::new(None),
                    id: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            target,
            members,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
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

    /// An etcdctl with every member's endpoint.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(&self.endpoints())
    }

    /// An etcdctl talking to member `i` only.
    pub fn etcdctl_for(&self, i: usize) -> Etcdctl {
        Etcdctl::new(&[self.endpoint(i)])
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
            let id = wait_until(
                &format!("member {} to become healthy", self.members[i].name),
                START_TIMEOUT,
                || {
                    self.check_alive(i);
                    if !ctl.run(&["endpoint", "health"]).success() {
                        return None;
                    }
                    let out = ctl.run(&["get", "--consistency=s", "health-probe", "-w", "json"]);
                    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).ok()?;
                    v["header"]["member_id"].as_u64()
                },
            );
            self.members[i].id = Some(id);
        }
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
