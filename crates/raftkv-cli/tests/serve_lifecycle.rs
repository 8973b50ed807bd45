//! `raftkv serve` as a process: a single member starts, serves, and stops cleanly on SIGTERM
//! and SIGINT (exit status 0); a runtime failure such as a taken port exits 1 with one logged
//! line. Waits are on the process's own output, each with a deadline.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// A running `raftkv serve` whose stderr lines arrive on a channel.
struct Member {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Member {
    fn start(data_dir: &Path, client_url: &str) -> Member {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
            .args(["serve", "--name", "solo", "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", client_url])
            .args(["--listen-peer-urls", "http://127.0.0.1:0"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:0"])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn raftkv");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Member {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {DEADLINE:?}; stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit status and all of stderr.
    fn exit(mut self) -> (i32, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("raftkv did not exit; stderr:\n{}", self.seen.join("\n"));
            }
            // Drain what has arrived while waiting for the exit.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.seen.push(line);
            }
        };
        self.seen.extend(self.lines.iter());
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

#[test]
fn sigterm_and_sigint_stop_gracefully_and_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("solo.etcd");
    for signal in ["TERM", "INT"] {
        let mut member = Member::start(&data_dir, "http://127.0.0.1:0");
        member.wait_for("serving");
        member.signal(signal);
        let (code, stderr) = member.exit();
        assert_eq!(code, 0, "after SIG{signal}:\n{stderr}");
        assert!(
            stderr.contains(&format!("signal=\"SIG{signal}\"")),
            "{stderr}"
        );
        assert!(stderr.contains("node{name=solo}"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_taken_port_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", taken.local_addr().unwrap());
    let member = Member::start(&dir.path().join("solo.etcd"), &url);
    let (code, stderr) = member.exit();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot start"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unusable_data_dir_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let member = Member::start(&file.join("solo.etcd"), "http://127.0.0.1:0");
    let (code, stderr) = member.exit();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot start"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
