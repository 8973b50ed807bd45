//! Runs one attempt of a job's action: a shell command (with the fencing token and the fire's
//! identity in its environment) or an HTTP request, bounded by the job's timeout and cancellable
//! when the run's token is revoked.

use std::collections::VecDeque;
use std::process::Stdio;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::job::Action;
use crate::record::RunStatus;

/// Bytes of output kept in the history.
pub const OUTPUT_TAIL: usize = 4096;

/// Who runs and under which token.
#[derive(Clone, Debug)]
pub struct RunContext {
    /// The job's name.
    pub job: String,
    /// The fire's scheduled instant.
    pub scheduled: DateTime<Utc>,
    /// The attempt number.
    pub attempt: u32,
    /// The fencing token (the claim's revision).
    pub token: i64,
    /// The executor's node name.
    pub node: String,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Succeeded, Failed, TimedOut, or Cancelled (token revoked).
    pub status: RunStatus,
    /// Exit code or HTTP status.
    pub code: Option<i32>,
    /// The tail of the output (or the error).
    pub output: String,
}

/// Runs `action`; ends early (status `Cancelled`) when `cancel` becomes true.
pub async fn run(action: &Action, ctx: &RunContext, mut cancel: watch::Receiver<bool>) -> Outcome {
    let work = async {
        match action {
            Action::Shell { command, .. } => shell(command, ctx).await,
            Action::Http {
                method,
                url,
                body,
                headers,
                ..
            } => http(method, url, body, headers, ctx).await,
        }
    };
    tokio::select! {
        out = tokio::time::timeout(action.timeout(), work) => match out {
            Ok(o) => o,
            Err(_) => Outcome {
                status: RunStatus::TimedOut,
                code: None,
                output: format!("killed after the {:?} timeout", action.timeout()),
            },
        },
        _ = cancel.wait_for(|c| *c) => Outcome {
            status: RunStatus::Cancelled,
            code: None,
            output: "cancelled: the run's fencing token was revoked".into(),
        },
    }
}

/// `sh -c command`; the child is killed if this future is dropped (timeout, cancel).
async fn shell(command: &str, ctx: &RunContext) -> Outcome {
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("RAFTKV_CRON_JOB", &ctx.job)
        .env("RAFTKV_CRON_SCHEDULED", ctx.scheduled.to_rfc3339())
        .env("RAFTKV_CRON_ATTEMPT", ctx.attempt.to_string())
        .env("RAFTKV_CRON_TOKEN", ctx.token.to_string())
        .env("RAFTKV_CRON_NODE", &ctx.node)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                status: RunStatus::Failed,
                code: None,
                output: format!("cannot start sh: {e}"),
            }
        }
    };
    let (tail_tx, mut tail_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(out, tail_tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(err, tail_tx.clone())));
    }
    drop(tail_tx);
    let mut tail: VecDeque<u8> = VecDeque::with_capacity(OUTPUT_TAIL);
    let collect = async {
        while let Some(chunk) = tail_rx.recv().await {
            tail.extend(chunk);
            while tail.len() > OUTPUT_TAIL {
                tail.pop_front();
            }
        }
    };
    let (status, ()) = tokio::join!(child.wait(), collect);
    for r in readers {
        let _ = r.await;
    }
    let output = String::from_utf8_lossy(tail.make_contiguous()).into_owned();
    match status {
        Ok(s) if s.success() => Outcome {
            status: RunStatus::Succeeded,
            code: Some(0),
            output,
        },
        Ok(s) => Outcome {
            status: RunStatus::Failed,
            code: s.code(),
            output,
        },
        Err(e) => Outcome {
            status: RunStatus::Failed,
            code: None,
            output: format!("waiting for sh: {e}"),
        },
    }
}

/// Copies a child's pipe into `tx` until it closes.
async fn pump(mut r: impl AsyncRead + Unpin, tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

async fn http(
    method: &str,
    url: &str,
    body: &str,
    headers: &std::collections::BTreeMap<String, String>,
    ctx: &RunContext,
) -> Outcome {
    let failed = |output: String| Outcome {
        status: RunStatus::Failed,
        code: None,
        output,
    };
    let method = match reqwest::Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(e) => return failed(format!("method {method:?}: {e}")),
    };
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => return failed(format!("HTTP client: {e}")),
    };
    let mut req = client
        .request(method, url)
        .header("X-Raftkv-Cron-Job", &ctx.job)
        .header("X-Raftkv-Cron-Scheduled", ctx.scheduled.to_rfc3339())
        .header("X-Raftkv-Cron-Attempt", ctx.attempt.to_string())
        .header("X-Raftkv-Cron-Token", ctx.token.to_string())
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let start = text.len().saturating_sub(OUTPUT_TAIL);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            Outcome {
                status: if status.is_success() {
                    RunStatus::Succeeded
                } else {
                    RunStatus::Failed
                },
                code: Some(i32::from(status.as_u16())),
                output: text[start..].to_string(),
            }
        }
        Err(e) => failed(format!("request failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn ctx() -> RunContext {
        RunContext {
            job: "j".into(),
            scheduled: Utc::now(),
            attempt: 2,
            token: 42,
            node: "n1".into(),
        }
    }

    fn sh(command: &str, timeout_secs: u64) -> Action {
        Action::Shell {
            command: command.into(),
            timeout_secs,
        }
    }

    #[tokio::test]
    async fn shell_runs_see_their_token_and_report_status_and_output() {
        let (_tx, rx) = watch::channel(false);
        let out = run(
            &sh("echo token=$RAFTKV_CRON_TOKEN attempt=$RAFTKV_CRON_ATTEMPT job=$RAFTKV_CRON_JOB; echo oops >&2; exit 3", 10),
            &ctx(),
            rx.clone(),
        )
        .await;
        assert_eq!(out.status, RunStatus::Failed);
        assert_eq!(out.code, Some(3));
        assert!(out.output.contains("token=42 attempt=2 job=j"), "{out:?}");
        assert!(out.output.contains("oops"), "{out:?}");
        let ok = run(&sh("true", 10), &ctx(), rx).await;
        assert_eq!((ok.status, ok.code), (RunStatus::Succeeded, Some(0)));
    }

    #[tokio::test]
    async fn output_keeps_only_its_tail() {
        let (_tx, rx) = watch::channel(false);
        let out = run(&sh("seq 1 5000; echo last-line", 10), &ctx(), rx).await;
        assert!(out.output.len() <= OUTPUT_TAIL);
        assert!(
            out.output.ends_with("last-line\n"),
            "{:?}",
            &out.output[out.output.len() - 20..]
        );
    }

    /// A one-shot HTTP server on 127.0.0.1: answers the first request with `status` and
    /// `body`, and returns the request it read.
    async fn http_once(
        status: u16,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body its Content-Length announces.
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len || n == 0 {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        (url, task)
    }

    fn http_action(url: &str) -> Action {
        Action::Http {
            method: "POST".into(),
            url: url.into(),
            body: "payload".into(),
            headers: [("X-Extra".to_string(), "yes".to_string())].into(),
            timeout_secs: 10,
        }
    }

    #[tokio::test]
    async fn http_runs_carry_the_token_and_map_the_status() {
        let (_tx, rx) = watch::channel(false);
        let (url, server) = http_once(200, "all good").await;
        let out = run(&http_action(&url), &ctx(), rx.clone()).await;
        assert_eq!(
            out,
            Outcome {
                status: RunStatus::Succeeded,
                code: Some(200),
                output: "all good".into()
            }
        );
        let req = server.await.unwrap().to_ascii_lowercase();
        assert!(req.starts_with("post /hook "), "{req}");
        assert!(req.contains("x-raftkv-cron-token: 42"), "{req}");
        assert!(req.contains("x-raftkv-cron-job: j"), "{req}");
        assert!(req.contains("x-extra: yes"), "{req}");
        assert!(req.ends_with("payload"), "{req}");
        let (url, _server) = http_once(503, "later").await;
        let out = run(&http_action(&url), &ctx(), rx.clone()).await;
        assert_eq!((out.status, out.code), (RunStatus::Failed, Some(503)));
        // Nobody listening: a failure with the reason, not a panic.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        let out = run(&http_action(&closed), &ctx(), rx).await;
        assert_eq!((out.status, out.code), (RunStatus::Failed, None));
        assert!(out.output.starts_with("request failed"), "{out:?}");
    }

    #[tokio::test]
    async fn timeouts_and_cancels_kill_the_command() {
        let (_tx, rx) = watch::channel(false);
        let started = Instant::now();
        let out = run(&sh("sleep 30", 1), &ctx(), rx).await;
        assert_eq!(out.status, RunStatus::TimedOut);
        assert!(started.elapsed().as_secs() < 10);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move { run(&sh("sleep 30", 60), &ctx(), rx).await });
        tx.send_replace(true);
        let out = task.await.unwrap();
        assert_eq!(out.status, RunStatus::Cancelled);
    }
}
