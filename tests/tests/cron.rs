//! raftkv-cron as users run it: `raftkv-cron serve` processes against a three-member cluster
//! (raftkv, or etcd with `RAFTKV_TEST_TARGET=etcd`: the scheduler is an ordinary etcd client),
//! jobs added with `raftkv-cron jobs add`.
//!
//! - Three schedulers, a job every second for 30 s: exactly one run per fire, no fire lost,
//!   while the dispatcher's process is killed (-9) and, separately, the process running a
//!   longer job is killed mid-run (that run is recorded lost and re-run once elsewhere).
//! - A scheduler paused (SIGSTOP) past its lease's expiry is fenced: its run is re-run
//!   elsewhere under a higher token, and its own result is never recorded.
//! - Bad job definitions are refused with a clear message.

// Progress and the kills are reported on stderr (`--nocapture`).
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use raftkv_tests::{wait_until, Cluster};
use serde_json::Value;

const LEASE_TTL: &str = "2";

/// Builds `raftkv-cron` once (`RAFTKV_CRON_BIN` names a prebuilt binary instead).
fn cron_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RAFTKV_CRON_BIN") {
            return PathBuf::from(bin);
        }
        raftkv_tests::workspace_binary("raftkv-cron", "raftkv-cron")
    })
}

/// The scheduler processes of one test; killed on drop.
struct Schedulers {
    dir: PathBuf,
    endpoints: String,
    procs: BTreeMap<String, Child>,
}

impl Schedulers {
    fn new(c: &Cluster, dir: &Path) -> Schedulers {
        Schedulers {
            dir: dir.to_path_buf(),
            endpoints: c
                .endpoints()
                .iter()
                .map(|e| e.trim_start_matches("http://").to_string())
                .collect::<Vec<_>>()
                .join(","),
            procs: BTreeMap::new(),
        }
    }

    fn cli(&self) -> Command {
        let mut cmd = Command::new(cron_binary());
        cmd.arg("--endpoints").arg(&self.endpoints);
        cmd
    }

    /// `raftkv-cron <args>`: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .cli()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run raftkv-cron");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn add_job(&self, name: &str, json: &str) {
        let path = self.dir.join(format!("{name}.json"));
        std::fs::write(&path, json).unwrap();
        let (ok, out, err) = self.run(&["jobs", "add", path.to_str().unwrap()]);
        assert!(ok, "jobs add {name}: {out}{err}");
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.log"))
    }

    /// Starts (or restarts) scheduler `node`; its log goes to `<node>.log` (appended).
    fn start(&mut self, node: &str) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(node))
            .unwrap();
        let child = self
            .cli()
            .args(["serve", "--node", node, "--lease-ttl", LEASE_TTL])
            .env("RAFTKV_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start raftkv-cron serve");
        self.procs.insert(node.to_string(), child);
    }

    fn signal(&self, node: &str, sig: &str) {
        let pid = self.procs[node].id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {node}");
    }

    fn kill(&mut self, node: &str) {
        if let Some(mut c) = self.procs.remove(node) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM everyone and wait for them to exit.
    fn stop_all(&mut self) {
        for node in self.procs.keys().cloned().collect::<Vec<_>>() {
            self.signal(&node, "-TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (node, mut c) in std::mem::take(&mut self.procs) {
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("{node} did not stop on SIGTERM; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The history of `job`, as JSON records.
    fn history(&self, job: &str) -> Vec<Value> {
        let (ok, out, err) = self.run(&["jobs", "history", job, "--limit", "1000", "-w", "json"]);
        assert!(ok, "history {job}: {err}");
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(v)) => v,
            other => panic!("history {job} is not a JSON array: {other:?} from {out}"),
        }
    }

    /// The current dispatcher's node name (the election key created first).
    fn dispatcher(&self, c: &Cluster) -> Option<String> {
        let out = c.etcdctl().ok(&[
            "get",
            "/raftkv-cron/dispatcher",
            "--prefix",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--limit=1",
            "--print-value-only",
        ]);
        let name = out.trim().to_string();
        (!name.is_empty()).then_some(name)
    }

    /// The node holding a claim on a fire of `job`, if one does.
    fn claimer(&self, c: &Cluster, job: &str) -> Option<String> {
        let out = c.etcdctl().ok(&[
            "get",
            &format!("/raftkv-cron/claims/{job}/"),
            "--prefix",
            "--print-value-only",
        ]);
        let line = out.lines().next()?;
        let v: Value = serde_json::from_str(line).ok()?;
        v["node"].as_str().map(str::to_string)
    }
}

impl Drop for Schedulers {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An RFC 3339 instant in one spelling (the history writes `Z`, the task env `+00:00`).
fn norm(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.to_utc().to_rfc3339())
        .unwrap_or_else(|_| t.to_string())
}

/// The normalised `scheduled` of a history record.
fn scheduled(r: &Value) -> String {
    norm(r["scheduled"].as_str().unwrap_or_default())
}

/// `(job, scheduled)` of each line `"<job> <scheduled> ..."` in `path`, counted.
fn count_lines(path: &Path, tag: &str) -> BTreeMap<(String, String), usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() >= 3 && f[0] == tag {
            *seen
                .entry((f[1].to_string(), f[2].to_string()))
                .or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn three_schedulers_run_every_fire_once_through_kills() {
    let c = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let mut s = Schedulers::new(&c, dir.path());
    let echo = |tag: &str| {
        format!(
            "echo \\\"{tag} $RAFTKV_CRON_JOB $RAFTKV_CRON_SCHEDULED $RAFTKV_CRON_NODE $RAFTKV_CRON_TOKEN\\\" >> {}",
            out.display()
        )
    };
    s.add_job(
        "tick",
        &format!(
            r#"{{"name":"tick","schedule":"* * * * * *","run":{{"type":"shell","command":"{}"}},"starting_deadline_secs":60}}"#,
            echo("ran")
        ),
    );
    s.add_job(
        "work",
        &format!(
            r#"{{"name":"work","schedule":"*/3 * * * * *","run":{{"type":"shell","command":"{}; sleep 2; {}"}},"starting_deadline_secs":60}}"#,
            echo("start"),
            echo("end")
        ),
    );
    for n in ["a", "b", "c"] {
        s.start(n);
    }
    let started = Instant::now();
    let runs = || count_lines(&out, "ran").len();
    wait_until("the first runs", Duration::from_secs(30), || {
        (runs() >= 3).then_some(())
    });

    // Kill the dispatcher's process, then start it again.
    let d = wait_until("a dispatcher", Duration::from_secs(10), || s.dispatcher(&c));
    let before = runs();
    s.kill(&d);
    eprintln!("killed dispatcher {d} at {:?}", started.elapsed());
    wait_until("fires after the failover", Duration::from_secs(30), || {
        (runs() >= before + 3).then_some(())
    });
    s.start(&d);

    // Kill the process running "work" mid-run, then start it again.
    let victim = wait_until("a claimed run of work", Duration::from_secs(30), || {
        s.claimer(&c, "work")
    });
    s.kill(&victim);
    eprintln!(
        "killed executor {victim} mid-run at {:?}",
        started.elapsed()
    );
    let lost = wait_until("the lost run recorded", Duration::from_secs(30), || {
        let h = s.history("work");
        h.iter().find(|r| r["status"] == "lost").map(scheduled)
    });
    s.start(&victim);
    wait_until("the lost run done again", Duration::from_secs(30), || {
        let h = s.history("work");
        h.iter()
            .any(|r| scheduled(r) == lost && r["status"] == "succeeded")
            .then_some(())
    });
    // Keep going until 30 s have passed.
    wait_until("30 seconds of scheduling", Duration::from_secs(60), || {
        (started.elapsed() >= Duration::from_secs(30)).then_some(())
    });
    s.stop_all();

    // tick: every second from the first fire to the last ran exactly once.
    let ran = count_lines(&out, "ran");
    let tick: Vec<chrono::DateTime<chrono::Utc>> = ran
        .keys()
        .filter(|(j, _)| j == "tick")
        .map(|(_, t)| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc())
        .collect();
    assert!(ran.values().all(|n| *n == 1), "a fire ran twice: {ran:?}");
    assert!(tick.len() >= 25, "only {} tick runs", tick.len());
    for w in tick.windows(2) {
        assert_eq!(
            (w[1] - w[0]).num_seconds(),
            1,
            "fire lost between {} and {}",
            w[0],
            w[1]
        );
    }
    // work: the store records one success per fire. The run whose executor was killed had a
    // child shell that outlived it (SIGKILL leaves orphans): its side effect carries the old,
    // fenced token, lower than the token of the recorded run, so a receiver checking tokens
    // refuses it. Every other fire's side effect happened once.
    let ends = count_lines(&out, "end");
    let history = s.history("work");
    let tokens_of = |t: &str| -> Vec<i64> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(2).map(norm).as_deref() == Some(t))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    for ((_, t), n) in &ends {
        if *n == 1 {
            continue;
        }
        assert_eq!(
            t, &lost,
            "a fire other than the lost one finished twice: {ends:?}"
        );
        let recorded = history
            .iter()
            .find(|r| scheduled(r) == *t && r["status"] == "succeeded")
            .and_then(|r| r["token"].as_i64())
            .unwrap();
        let tokens = tokens_of(t);
        assert_eq!(
            tokens.iter().max(),
            Some(&recorded),
            "{tokens:?} vs {recorded}"
        );
    }
    assert!(
        ends.contains_key(&("work".to_string(), lost.clone())),
        "{ends:?}"
    );
    let succeeded: BTreeSet<(String, i64)> = history
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .map(|r| {
            (
                r["scheduled"].as_str().unwrap().to_string(),
                r["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    let per_fire: BTreeMap<&str, usize> =
        succeeded.iter().fold(BTreeMap::new(), |mut m, (t, _)| {
            *m.entry(t.as_str()).or_insert(0) += 1;
            m
        });
    assert!(per_fire.values().all(|n| *n == 1), "{history:?}");
    eprintln!(
        "{} tick runs, {} work runs, dispatcher {d} and executor {victim} killed",
        tick.len(),
        ends.len()
    );
}

#[test]
fn a_paused_scheduler_is_fenced_when_it_resumes() {
    let c = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let mut s = Schedulers::new(&c, dir.path());
    s.add_job(
        "slow",
        &format!(
            r#"{{"name":"slow","schedule":"0 0 0 1 1 *","run":{{"type":"shell","command":"sleep 2; echo \"done $RAFTKV_CRON_NODE $RAFTKV_CRON_TOKEN\" >> {}"}}}}"#,
            out.display()
        ),
    );
    for n in ["a", "b"] {
        s.start(n);
    }
    // Both are up (one is the dispatcher) before the run is asked for.
    wait_until("a dispatcher", Duration::from_secs(10), || s.dispatcher(&c));
    let (ok, o, e) = s.run(&["jobs", "run-now", "slow"]);
    assert!(ok, "{o}{e}");
    let paused = wait_until("the run claimed", Duration::from_secs(20), || {
        s.claimer(&c, "slow")
    });
    s.signal(&paused, "-STOP");
    // Its lease (2 s) expires; the run is recorded lost and done by the other scheduler.
    let other_done = wait_until("the run done elsewhere", Duration::from_secs(30), || {
        s.history("slow")
            .into_iter()
            .find(|r| r["status"] == "succeeded")
    });
    s.signal(&paused, "-CONT");
    assert_ne!(other_done["node"], paused.as_str());
    assert!(other_done["attempt"].as_i64().unwrap() >= 2);
    // Resumed, the paused scheduler learns its lease is gone and writes nothing: give it the
    // time to try (its task's own output lands in the file meanwhile: fencing guards the store).
    let log = s.log_path(&paused);
    wait_until(
        "the paused scheduler noticing",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.contains("lease lost") || text.contains("result rejected")).then_some(())
        },
    );
    let history = s.history("slow");
    let successes: Vec<&Value> = history
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .collect();
    assert_eq!(successes.len(), 1, "{history:?}");
    assert!(
        history
            .iter()
            .any(|r| r["status"] == "lost" && r["attempt"] == 1),
        "{history:?}"
    );
    // The re-run's token is higher than the fenced one's.
    let lost_token = history
        .iter()
        .find(|r| r["status"] == "lost")
        .and_then(|r| r["token"].as_i64())
        .unwrap();
    assert!(successes[0]["token"].as_i64().unwrap() > lost_token);
    s.stop_all();
}

#[test]
fn bad_job_definitions_are_refused() {
    let c = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let s = Schedulers::new(&c, dir.path());
    let cases = [
        (
            r#"{"name":"x","schedule":"61 * * * *","run":{"type":"shell","command":"true"}}"#,
            "schedule",
        ),
        (
            r#"{"name":"x","schedule":"* * * * *","timezone":"Mars/Base","run":{"type":"shell","command":"true"}}"#,
            "timezone",
        ),
        (
            r#"{"name":"a/b","schedule":"* * * * *","run":{"type":"shell","command":"true"}}"#,
            "name",
        ),
        (r#"{"name":"x","schedule":"* * * * *"}"#, "run"),
        ("not json", "JSON"),
    ];
    for (i, (json, word)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.json"));
        std::fs::write(&path, json).unwrap();
        let (ok, out, err) = s.run(&["jobs", "add", path.to_str().unwrap()]);
        assert!(!ok, "accepted {json}: {out}");
        assert!(
            err.contains(word),
            "{json}: error does not name {word}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, out, _) = s.run(&["jobs", "list", "-w", "json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        Value::Array(vec![]),
        "{out}"
    );
}
