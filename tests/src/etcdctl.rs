//! The stock `etcdctl` (Debian's `etcd-client`, API v3) run as a child process.
//!
//! Short commands run to completion under a timeout ([`Etcdctl::run`]); long-running ones such
//! as `watch` or `lease keep-alive` are spawned and their stdout read line by line
//! ([`Etcdctl::spawn`], [`CtlProcess`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one short `etcdctl` command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks once per test process that `etcdctl` is installed; panics with the fix otherwise.
fn ensure_etcdctl() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        match Command::new("etcdctl")
            .arg("version")
            .env("ETCDCTL_API", "3")
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`etcdctl version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => Err(format!("cannot run `etcdctl` ({e})")),
        }
    });
    if let Err(e) = checked {
        panic!(
            "{e}: the end-to-end tests need the stock etcdctl; run scripts/setup.sh \
             (it installs Debian's etcd-client package)"
        );
    }
}

/// The result of one finished `etcdctl` command.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr (etcdctl also logs client retries there as JSON lines).
    pub stderr: String,
}

impl CtlOutput {
    /// Whether etcdctl exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code (`-1` if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// The `Error: ...` line etcdctl prints last on stderr when a command fails, without the
    /// `Error: ` prefix.
    pub fn error(&self) -> Option<&str> {
        self.stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("Error: "))
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `etcdctl` against a fixed set of endpoints.
#[derive(Debug, Clone)]
pub struct Etcdctl {
    endpoints: String,
}

impl Etcdctl {
    /// An etcdctl for `endpoints` (URLs such as `http://127.0.0.1:2379`).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Self {
        ensure_etcdctl();
        let endpoints = endpoints
            .iter()
            .map(|e| e.as_ref())
            .collect::<Vec<_>>()
            .join(",");
        Etcdctl { endpoints }
    }

    /// The `--endpoints` value this runner passes.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("etcdctl");
        // Only our own settings: a developer's ETCDCTL_* must not change what the tests see.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=10s")
            .args(args);
        cmd
    }

    /// Runs `etcdctl <args>` to completion and returns what it printed, whatever its status.
    pub fn run(&self, args: &[&str]) -> CtlOutput {
        self.run_with_stdin(args, None)
    }

    /// Runs `etcdctl <args>` with `input` on its stdin (for `txn -i`).
    pub fn run_with_input(&self, args: &[&str], input: &str) -> CtlOutput {
        self.run_with_stdin(args, Some(input))
    }

    fn run_with_stdin(&self, args: &[&str], input: Option<&str>) -> CtlOutput {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(input.as_bytes())
                .expect("write etcdctl stdin");
            // Dropping stdin closes it: etcdctl reads to EOF.
        }
        let stdout = read_all(child.stdout.take().expect("piped stdout"));
        let stderr = read_all(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait etcdctl") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "etcdctl {args:?} did not finish within {COMMAND_TIMEOUT:?}\n\
                     --- stdout ---\n{}--- stderr ---\n{}",
                    stdout.join().unwrap_or_default(),
                    stderr.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        CtlOutput {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// Runs `etcdctl <args>`, panics with its output unless it succeeded, and returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.success(), "etcdctl {args:?} failed:\n{out}");
        out.stdout
    }

    /// Runs `etcdctl -w json <args>` and parses its stdout.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-w", "json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all);
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("etcdctl {all:?} printed invalid JSON ({e}):\n{stdout}"))
    }

    /// Runs `etcdctl <args>`, panics unless it failed, and returns its output.
    #[track_caller]
    pub fn fail(&self, args: &[&str]) -> CtlOutput {
        let out = self.run(args);
        assert!(
            !out.success(),
            "etcdctl {args:?} should have failed:\n{out}"
        );
        out
    }

    /// Starts a long-running `etcdctl <args>` (such as `watch`) whose stdout is read line by line.
    pub fn spawn(&self, args: &[&str]) -> CtlProcess {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = read_all(child.stderr.take().expect("piped stderr"));
        CtlProcess {
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A running `etcdctl` command; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct CtlProcess {
    args: Vec<String>,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl CtlProcess {
    /// Reads stdout until at least `n` lines have been printed in all, and returns them all;
    /// panics if that takes longer than `timeout`.
    #[track_caller]
    pub fn wait_for_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_until(&format!("{n} lines"), timeout, |lines| lines.len() >= n);
        self.seen.clone()
    }

    /// Reads stdout until `done(all lines so far)` holds; panics if that takes longer than
    /// `timeout`.
    #[track_caller]
    pub fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    let seen = self.seen.join("\n");
                    panic!(
                        "etcdctl {:?}: no {what} within {timeout:?}; stdout so far:\n{seen}",
                        self.args
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    let stderr = self
                        .stderr
                        .take()
                        .and_then(|h| h.join().ok())
                        .unwrap_or_default();
                    let seen = self.seen.join("\n");
                    panic!(
                        "etcdctl {:?} exited before printing {what}; stdout:\n{seen}\nstderr:\n{stderr}",
                        self.args
                    );
                }
            }
        }
    }

    /// Every stdout line read so far.
    pub fn lines(&self) -> &[String] {
        &self.seen
    }

    /// Collects any further lines printed within `quiet` (to check nothing unexpected follows).
    pub fn drain_for(&mut self, quiet: Duration) -> &[String] {
        let deadline = Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return &self.seen,
            }
        }
    }

    /// Waits (up to `timeout`) for the command to exit on its own; returns its status, the rest
    /// of stdout and all of stderr.
    #[track_caller]
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait etcdctl") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl {:?} still running after {timeout:?}",
                self.args
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, std::mem::take(&mut self.seen), stderr)
    }
}

impl Drop for CtlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
