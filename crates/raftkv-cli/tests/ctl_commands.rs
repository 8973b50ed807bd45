//! The etcdctl-like commands of `raftkv`, run as a user types them against a real
//! three-member raftkv cluster (`raftkv serve` processes on loopback): output in each format,
//! stdin, exit codes, `watch` ended by SIGINT, the lease lifecycle, cluster views, compaction.
//!
//! One cluster serves the whole file (the scenarios run in sequence in one test, each under its
//! own key prefix), so the file costs one cluster start. Waiting is on conditions with deadlines.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_raftkv");
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A three-member cluster of `raftkv serve` processes, killed on drop.
struct Cluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("raftkv-ctl-")
            .tempdir()
            .expect("temp dir");
        // Hold all listeners until every port is picked, so the ports are distinct.
        let listeners: Vec<TcpListener> = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        drop(listeners);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial = (0..n)
            .map(|i| format!("m{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for i in 0..n {
            let client = format!("http://127.0.0.1:{}", ports[2 * i]);
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log");
            let child = Command::new(BIN)
                .arg("serve")
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={}", peer(i)))
                .arg(format!("--initial-advertise-peer-urls={}", peer(i)))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=ctl-test")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn raftkv serve");
            children.push(child);
            endpoints.push(client);
        }
        let cluster = Cluster {
            children,
            endpoints,
            dir,
        };
        wait_until("every member to be healthy", START_TIMEOUT, || {
            cluster.ctl(&["endpoint", "health"], None).code == Some(0)
        });
        cluster
    }

    /// Runs `raftkv <args> --endpoints=<all>` with `stdin` (or none).
    fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(BIN);
        // Right behind the command name: after `--` it would belong to `lock`'s command.
        cmd.args(&args[..1])
            .arg(format!("--endpoints={}", self.endpoints.join(",")))
            .args(&args[1..])
            .env_remove("RAFTKV_ENDPOINTS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("spawn raftkv");
        if let Some(input) = stdin {
            let mut w = child.stdin.take().expect("stdin");
            w.write_all(input.as_bytes()).expect("write stdin");
        }
        Run::from(child.wait_with_output().expect("wait raftkv"))
    }

    /// Like [`Cluster::ctl`], and asserts success.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let r = self.ctl(args, None);
        assert_eq!(r.code, Some(0), "raftkv {args:?} failed: {r:?}");
        r.stdout
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for i in 0..self.children.len() {
            let path: PathBuf = self.dir.path().join(format!("m{i}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("===== m{i} =====\n");
            s += &lines[lines.len().saturating_sub(40)..].join("\n");
            s += "\n";
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{}", self.log_tails());
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One finished command.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

#[track_caller]
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}"))
}

fn revision(c: &Cluster) -> i64 {
    json(&c.ok(&["get", "ctl-rev-probe", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .expect("revision")
}

#[test]
fn ctl_commands_against_a_three_member_cluster() {
    let c = Cluster::start(3);
    put_get_del(&c);
    txn_from_stdin(&c);
    watch_until_sigint(&c);
    lease_lifecycle(&c);
    cluster_views(&c);
    compaction(&c);
    lock_and_snapshot(&c);
}

fn put_get_del(c: &Cluster) {
    assert_eq!(c.ok(&["put", "kv/a", "1"]), "OK\n");
    assert_eq!(c.ok(&["put", "kv/b", "2"]), "OK\n");
    assert_eq!(c.ok(&["put", "kv/a", "11", "--prev-kv"]), "OK\nkv/a\n1\n");
    assert_eq!(c.ok(&["get", "kv/a"]), "kv/a\n11\n");
    assert_eq!(c.ok(&["get", "kv/a", "--print-value-only"]), "11\n");
    assert_eq!(
        c.ok(&["get", "kv/", "--prefix", "--keys-only"]),
        "kv/a\n\nkv/b\n\n"
    );
    assert_eq!(c.ok(&["get", "kv/", "--prefix", "--count-only"]), "2\n");
    assert_eq!(
        c.ok(&[
            "get",
            "kv/",
            "--prefix",
            "--sort-by=KEY",
            "--order=DESCEND",
            "--limit=1"
        ]),
        "kv/b\n2\n"
    );
    assert_eq!(c.ok(&["get", "kv/a", "kv/c"]), "kv/a\n11\nkv/b\n2\n");
    assert_eq!(c.ok(&["get", "kv/nope"]), "");

    // JSON: etcdctl's field names, base64 bytes, numbers for 64-bit integers.
    let v = json(&c.ok(&["get", "kv/a", "-w", "json"]));
    assert_eq!(v["kvs"][0]["key"], "a3YvYQ==");
    assert_eq!(v["kvs"][0]["value"], "MTE=");
    assert_eq!(v["kvs"][0]["version"], 2);
    assert_eq!(v["count"], 1);
    assert!(v["header"]["cluster_id"].as_u64().is_some());
    assert!(v["header"]["raft_term"].as_u64().is_some());
    let raw = c.ok(&["get", "kv/", "--prefix", "--limit=1", "-w", "json"]);
    assert!(raw.contains(r#""more":true,"count":2}"#), "{raw}");

    // Leading global flags work too, as with etcdctl.
    let r = Command::new(BIN)
        .arg(format!("--endpoints={}", c.endpoints[0]))
        .args(["-w", "json", "put", "kv/c", "3"])
        .output()
        .expect("run");
    assert!(r.status.success());
    assert!(json(&String::from_utf8_lossy(&r.stdout))["header"]["revision"].is_u64());

    // Endpoints from RAFTKV_ENDPOINTS; unreachable ones are skipped for reads.
    let r = Command::new(BIN)
        .args(["get", "kv/a"])
        .env(
            "RAFTKV_ENDPOINTS",
            format!(
                "127.0.0.1:1,{}",
                c.endpoints[2].trim_start_matches("http://")
            ),
        )
        .output()
        .expect("run");
    assert_eq!(Run::from(r).stdout, "kv/a\n11\n");

    // No table for KV commands: etcdctl's error and exit code 4.
    let r = c.ctl(&["get", "kv/a", "-w", "table"], None);
    assert_eq!(r.code, Some(4));
    assert_eq!(r.stderr, "Error: table not supported as output format\n");

    // The value from stdin.
    let r = c.ctl(&["put", "kv/stdin"], Some("from stdin\n"));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "OK\n"));
    assert_eq!(c.ok(&["get", "kv/stdin"]), "kv/stdin\nfrom stdin\n\n");
    let r = c.ctl(&["put", "kv/x"], Some(""));
    assert_eq!(r.code, Some(128));
    assert_eq!(
        r.stderr,
        "Error: put command needs 1 argument and input from stdin or 2 arguments\n"
    );

    // Server errors: etcd's message, exit code 1.
    let r = c.ctl(&["put", "kv/l", "v", "--lease=1234"], None);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr, "Error: etcdserver: requested lease not found\n");

    assert_eq!(c.ok(&["del", "kv/b", "--prev-kv"]), "1\nkv/b\n2\n");
    assert_eq!(c.ok(&["del", "kv/b"]), "0\n");
    let v = json(&c.ok(&["del", "kv/", "--prefix", "-w", "json"]));
    assert_eq!(v["deleted"], 3);
}

fn txn_from_stdin(c: &Cluster) {
    c.ok(&["put", "txn/k", "v1"]);
    let input = "value(\"txn/k\") = \"v1\"\n\nput txn/new \"a b\"\nget txn/k\n\ndel txn/k\n\n";
    let r = c.ctl(&["txn"], Some(input));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "SUCCESS\n\nOK\n\ntxn/k\nv1\n");
    assert_eq!(c.ok(&["get", "txn/new", "--print-value-only"]), "a b\n");

    let input = "mod(\"txn/k\") > \"100000\"\n\n\nget txn/new\n\n";
    let r = c.ctl(&["txn", "-w", "json"], Some(input));
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = json(&r.stdout);
    assert!(v.get("succeeded").is_none(), "false is omitted: {v}");
    assert_eq!(
        v["responses"][0]["Response"]["ResponseRange"]["kvs"][0]["value"],
        "YSBi"
    );

    let r = c.ctl(&["txn", "-i"], Some("\nput txn/i 1\n\n\n"));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        r.stdout,
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\nOK\n"
    );

    let r = c.ctl(&["txn"], Some("bogus\n"));
    assert_eq!(r.code, Some(3));
    assert_eq!(r.stderr, "Error: malformed comparison: bogus\n");
    let r = c.ctl(&["txn"], Some("value(\"txn/k\") = \"v1\"\n"));
    assert_eq!((r.code, r.stderr.as_str()), (Some(3), "Error: EOF\n"));
}

fn watch_until_sigint(c: &Cluster) {
    let start = revision(c) + 1;
    let mut child = Command::new(BIN)
        .args(["watch", "watch/", "--prefix", "--prev-kv"])
        .arg(format!("--rev={start}"))
        .arg(format!("--endpoints={}", c.endpoints[1]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("line")).is_err() {
                break;
            }
        }
    });
    c.ok(&["put", "watch/a", "1"]);
    c.ok(&["put", "watch/a", "2"]);
    c.ok(&["del", "watch/a"]);
    let expected = [
        "PUT", "watch/a", "1", "PUT", "watch/a", "1", "watch/a", "2", "DELETE", "watch/a", "2",
        "watch/a", "",
    ];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => panic!("watch printed only {got:?}"),
        }
    }
    assert_eq!(got, expected);
    assert_eq!(sigint(&mut child), Some(0), "watch ends cleanly on SIGINT");
}

fn lease_lifecycle(c: &Cluster) {
    let out = c.ok(&["lease", "grant", "60"]);
    let id = out
        .strip_prefix("lease ")
        .and_then(|s| s.strip_suffix(" granted with TTL(60s)\n"))
        .unwrap_or_else(|| panic!("unexpected grant output {out:?}"))
        .to_string();
    assert_eq!(id.len(), 16);
    c.ok(&["put", "lease/k", "v", &format!("--lease={id}")]);
    let ttl = c.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining("))
            && ttl.ends_with("s), attached keys([lease/k])\n"),
        "{ttl}"
    );
    let v = json(&c.ok(&["lease", "timetolive", &id, "--keys", "-w", "json"]));
    assert_eq!(v["granted-ttl"], 60);
    assert_eq!(v["keys"][0], "bGVhc2Uvaw==");
    assert!(c.ok(&["lease", "list"]).contains(&format!("\n{id}\n")));
    assert_eq!(
        c.ok(&["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        c.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(c.ok(&["get", "lease/k"]), "");
    assert_eq!(
        c.ok(&["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    let r = c.ctl(&["lease", "revoke", &id], None);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "Error: failed to revoke lease (etcdserver: requested lease not found)\n"
    );
    let r = c.ctl(&["lease", "keep-alive", "--once", &id], None);
    assert_eq!(r.code, Some(2));
    let r = c.ctl(&["lease", "grant", "abc"], None);
    assert_eq!(r.code, Some(128));
    assert_eq!(
        r.stderr,
        "Error: bad TTL (strconv.ParseInt: parsing \"abc\": invalid syntax)\n"
    );
}

fn cluster_views(c: &Cluster) {
    let list = c.ok(&["member", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    for l in &lines {
        let fields: Vec<&str> = l.split(", ").collect();
        assert_eq!(fields.len(), 6, "{l}");
        assert_eq!(fields[1], "started");
        assert!(c.endpoints.contains(&fields[4].to_string()), "{l}");
        assert_eq!(fields[5], "false");
    }
    let table = c.ok(&["member", "list", "-w", "table"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 7, "{table}");
    assert!(
        rows[0].starts_with("+------------------+---------+------+"),
        "{table}"
    );
    assert!(
        rows[1].starts_with("|        ID        | STATUS  | NAME |")
            && rows[1].ends_with(" IS LEARNER |"),
        "{table}"
    );
    assert!(
        rows[3].contains(" | started |   m") && rows[3].ends_with(" |      false |"),
        "{table}"
    );

    let status = c.ok(&["endpoint", "status", "-w", "table"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines.len(), 7, "{status}");
    assert!(lines[1].contains("|        ID        |"), "{status}");
    assert!(
        lines[1].ends_with(
            "| IS LEADER | IS LEARNER | RAFT TERM | RAFT INDEX | RAFT APPLIED INDEX | ERRORS |"
        ),
        "{status}"
    );
    let leaders = lines[3..6]
        .iter()
        .filter(|l| l.split('|').nth(5).map(str::trim) == Some("true"))
        .count();
    assert_eq!(leaders, 1, "exactly one leader: {status}");
    let v = json(&c.ok(&["endpoint", "status", "-w", "json"]));
    assert_eq!(v.as_array().map(Vec::len), Some(3));
    assert!(v[0]["Status"]["leader"].as_u64().is_some());

    let health = c.ok(&["endpoint", "health", "-w", "table"]);
    assert_eq!(health.matches("|   true |").count(), 3, "{health}");
    let health = c.ok(&["endpoint", "health", "--cluster"]);
    assert_eq!(
        health
            .lines()
            .filter(|l| l.contains(" is healthy: successfully committed proposal: took = "))
            .count(),
        3,
        "{health}"
    );

    // An unreachable endpoint: etcdctl's lines and exit code.
    let r = Command::new(BIN)
        .args([
            "endpoint",
            "health",
            "--endpoints=127.0.0.1:1",
            "--dial-timeout=500ms",
        ])
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "127.0.0.1:1 is unhealthy: failed to commit proposal: context deadline exceeded\n\
         Error: unhealthy cluster\n"
    );
}

fn compaction(c: &Cluster) {
    c.ok(&["put", "compact/k", "1"]);
    let old = revision(c);
    c.ok(&["put", "compact/k", "2"]);
    let now = revision(c);
    assert_eq!(
        c.ok(&["compaction", &now.to_string()]),
        format!("compacted revision {now}\n")
    );
    let r = c.ctl(&["get", "compact/k", &format!("--rev={old}")], None);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    let r = c.ctl(&["compaction", &old.to_string()], None);
    assert_eq!(r.code, Some(1));
    let r = c.ctl(&["watch", "compact/k", &format!("--rev={old}")], None);
    assert_eq!(r.code, Some(5), "{r:?}");
    assert_eq!(
        r.stderr,
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
         Error: watch is canceled by the server\n"
    );
}

/// Spawns a long-running `raftkv` command and returns it with a channel of its stdout lines.
fn spawn_lines(c: &Cluster, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(&args[..1])
        .arg(format!("--endpoints={}", c.endpoints.join(",")))
        .args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn raftkv");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("line")).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn sigint(child: &mut Child) -> Option<i32> {
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    child.wait().expect("wait").code()
}

fn lock_and_snapshot(c: &Cluster) {
    // `lock` prints the lock key (and its empty value), holds it until SIGINT, then releases.
    let (mut holder, lines) = spawn_lines(c, &["lock", "ctl-lock"]);
    let Ok(key) = lines.recv_timeout(Duration::from_secs(20)) else {
        let _ = holder.kill();
        let out = holder.wait_with_output().expect("wait lock");
        panic!("lock printed no key: {:?}", Run::from(out));
    };
    assert!(key.starts_with("ctl-lock/"), "{key}");
    assert_eq!(sigint(&mut holder), Some(0), "lock ends cleanly on SIGINT");
    // Released: a second lock gets it and runs a command with the key in its environment.
    let r = c.ctl(
        &[
            "lock",
            "ctl-lock",
            "--",
            "sh",
            "-c",
            "echo got $ETCD_LOCK_KEY",
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.starts_with("got ctl-lock/"), "{r:?}");

    // `snapshot save` needs exactly one endpoint, as in etcdctl.
    assert_eq!(
        c.ctl(&["put", "snap-key", "snap-value"], None).code,
        Some(0)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snap.db");
    let path = path.to_str().expect("utf-8 path");
    let r = c.ctl(&["snapshot", "save", path], None);
    assert_eq!(r.code, Some(5), "{r:?}");
    assert!(r
        .stderr
        .starts_with("Error: snapshot must be requested to one selected node, not multiple ["));
    let r = Command::new(BIN)
        .args(["snapshot", "save", path])
        .arg(format!("--endpoints={}", c.endpoints[0]))
        .output()
        .expect("run");
    let r = Run::from(r);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, format!("Snapshot saved at {path}\n"));
    assert!(std::fs::metadata(path).expect("snapshot file").len() > 0);
    assert!(!std::path::Path::new(&format!("{path}.part")).exists());

    // `snapshot restore` builds a new single-member cluster's data dir that serves the data.
    let ports: Vec<u16> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let data_dir = dir.path().join("restored");
    let data_dir_flag = format!("--data-dir={}", data_dir.display());
    let initial = format!("--initial-cluster=r0={peer}");
    let advertise = format!("--initial-advertise-peer-urls={peer}");
    let r = Run::from(
        Command::new(BIN)
            .args(["snapshot", "restore", path, "--name=r0"])
            .args([&data_dir_flag, &initial, &advertise])
            .output()
            .expect("run"),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = Run::from(
        Command::new(BIN)
            .args(["snapshot", "restore", path, "--name=r0"])
            .args([&data_dir_flag, &initial, &advertise])
            .output()
            .expect("run"),
    );
    assert_eq!(r.code, Some(1), "an existing data dir is refused: {r:?}");
    let log = std::fs::File::create(dir.path().join("r0.log")).expect("log");
    let mut member = Command::new(BIN)
        .args(["serve", "--name=r0", &data_dir_flag, &initial, &advertise])
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("clone log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn restored member");
    let mut got = String::new();
    wait_until("the restored member to serve", START_TIMEOUT, || {
        let r = Run::from(
            Command::new(BIN)
                .args(["get", "snap-key", "--print-value-only"])
                .arg(format!("--endpoints={client}"))
                .output()
                .expect("run"),
        );
        got = r.stdout;
        r.code == Some(0)
    });
    let _ = member.kill();
    let _ = member.wait();
    assert_eq!(got, "snap-value\n");
}
