//! The scheduler engine against a real raftkv node in this process: three schedulers share
//! every-second jobs with exactly one run per fire; DST changes in a named zone, crossed with a
//! hand-set clock, fire each fixed-time job once; edits and deletes apply through watches;
//! `forbid` skips overlapping fires; a revoked claim's late result is rejected.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use raftkv_client::{Client, GetOptions};
use raftkv_cron::clock::{Clock, ManualClock};
use raftkv_cron::job::{Action, Concurrency, Job, Missed, Retries};
use raftkv_cron::jobs::Jobs;
use raftkv_cron::keys::Keys;
use raftkv_cron::record::{Fire, FireState, Run, RunStatus};
use raftkv_cron::{Scheduler, SchedulerOptions};
use raftkv_server::Server;

mod common;

/// A one-member raftkv node and a client to it.
async fn node(dir: &Path) -> (Server, Client) {
    common::start_node(dir).await
}

fn shell(name: &str, schedule: &str, command: String) -> Job {
    Job {
        name: name.into(),
        schedule: schedule.into(),
        timezone: "UTC".into(),
        run: Action::Shell {
            command,
            timeout_secs: 30,
        },
        concurrency: Concurrency::Allow,
        missed: Missed::Skip,
        starting_deadline_secs: 60,
        retries: Retries::default(),
        enabled: true,
    }
}

async fn schedulers(client: &Client, n: usize, clock: Clock, keys: &Keys) -> Vec<Scheduler> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut o = SchedulerOptions::new(format!("node{i}"));
        o.lease_ttl = 2;
        o.clock = clock.clone();
        o.keys = keys.clone();
        out.push(Scheduler::start(client.clone(), o).await.unwrap());
    }
    out
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every fire record of `job`, by scheduled instant.
async fn fires(client: &Client, keys: &Keys, job: &str) -> BTreeMap<DateTime<Utc>, Fire> {
    let r = client
        .get(keys.fires_of(job), GetOptions::prefix())
        .await
        .unwrap();
    r.kvs
        .iter()
        .map(|kv| {
            let f: Fire = serde_json::from_slice(&kv.value).unwrap();
            (f.scheduled, f)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_run_each_fire_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path()).await;
    let keys = Keys::default();
    let jobs = Jobs::new(client.clone(), keys.clone());
    let log = dir.path().join("runs.log");
    let command = format!(
        "echo \"$RAFTKV_CRON_JOB $RAFTKV_CRON_SCHEDULED $RAFTKV_CRON_NODE $RAFTKV_CRON_TOKEN\" >> {}",
        log.display()
    );
    jobs.add(&shell("tick", "* * * * * *", command.clone()), false)
        .await
        .unwrap();
    jobs.add(&shell("tock", "*/2 * * * * *", command), false)
        .await
        .unwrap();
    let scheds = schedulers(&client, 3, Clock::System, &keys).await;
    // Let it run until "tick" has 8 succeeded runs.
    wait_for("8 runs of tick", Duration::from_secs(30), || {
        let jobs = &jobs;
        async move {
            let h = jobs.history("tick", 100).await.ok()?;
            (h.iter()
                .filter(|r| r.status == RunStatus::Succeeded)
                .count()
                >= 8)
                .then_some(())
        }
    })
    .await;
    for s in scheds {
        s.shutdown().await;
    }
    // Each fire ran once: one line per scheduled instant, and the fires of "tick" are
    // consecutive seconds.
    let text = std::fs::read_to_string(&log).unwrap();
    // (job, scheduled instant) -> how many times it ran.
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split(' ');
        let (job, scheduled) = (f.next().unwrap(), f.next().unwrap());
        *seen
            .entry((job.to_string(), scheduled.to_string()))
            .or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "a fire ran twice: {text}");
    assert!(seen.keys().any(|(j, _)| j == "tock"), "{text}");
    let tick = fires(&client, &keys, "tick").await;
    let instants: Vec<DateTime<Utc>> = tick.keys().copied().collect();
    assert!(instants.len() >= 8, "{instants:?}");
    for w in instants.windows(2) {
        assert_eq!(
            (w[1] - w[0]).num_seconds(),
            1,
            "a fire is missing: {instants:?}"
        );
    }
    // Every finished fire has exactly one history record, and tokens are distinct.
    let history = jobs.history("tick", 100).await.unwrap();
    let mut tokens: Vec<i64> = history.iter().map(|r| r.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), history.len());
    let done = tick
        .values()
        .filter(|f| f.state == FireState::Succeeded)
        .count();
    assert_eq!(done, history.len(), "{history:?}");
    // Work was spread: more than one node ran something.
    let nodes: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    assert!(nodes.len() >= 2, "all runs on one node: {nodes:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_time_jobs_fire_once_across_dst_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path()).await;
    let keys = Keys::new("/dst/");
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let clock = ManualClock::new(at("2026-03-07T00:00:00Z"));
    let jobs = Jobs::new(client.clone(), keys.clone()).with_clock(Clock::Manual(clock.clone()));
    let mut spring = shell("spring", "0 30 2 * * *", "true".into());
    spring.timezone = "America/New_York".into();
    spring.starting_deadline_secs = 7 * 86400;
    jobs.add(&spring, false).await.unwrap();
    let scheds = schedulers(&client, 2, Clock::Manual(clock.clone()), &keys).await;
    // Spring forward (2026-03-08, 02:00 EST -> 03:00 EDT): 02:30 does not exist that day.
    clock.set(at("2026-03-09T12:00:00Z"));
    let expected_spring = vec![
        at("2026-03-07T07:30:00Z"),
        at("2026-03-08T07:00:00Z"),
        at("2026-03-09T06:30:00Z"),
    ];
    wait_for("spring-forward fires", Duration::from_secs(20), || {
        let (client, keys) = (&client, &keys);
        let expected = expected_spring.clone();
        async move {
            let f = fires(client, keys, "spring").await;
            let done = f.values().all(|f| f.state == FireState::Succeeded);
            (done && f.keys().copied().collect::<Vec<_>>() == expected).then_some(())
        }
    })
    .await;
    // Fall back (2026-11-01, 02:00 EDT -> 01:00 EST): 01:30 happens twice, runs once.
    clock.set(at("2026-10-31T00:00:00Z"));
    let mut fall = shell("fall", "0 30 1 * * *", "true".into());
    fall.timezone = "America/New_York".into();
    fall.starting_deadline_secs = 7 * 86400;
    jobs.add(&fall, false).await.unwrap();
    jobs.set_enabled("spring", false).await.unwrap();
    clock.set(at("2026-11-02T12:00:00Z"));
    let expected_fall = vec![
        at("2026-10-31T05:30:00Z"),
        at("2026-11-01T05:30:00Z"),
        at("2026-11-02T06:30:00Z"),
    ];
    wait_for("fall-back fires", Duration::from_secs(20), || {
        let (client, keys) = (&client, &keys);
        let expected = expected_fall.clone();
        async move {
            let f = fires(client, keys, "fall").await;
            let done = f.values().all(|f| f.state == FireState::Succeeded);
            (done && f.keys().copied().collect::<Vec<_>>() == expected).then_some(())
        }
    })
    .await;
    for s in scheds {
        s.shutdown().await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_and_forbid_apply_through_watches() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path()).await;
    let keys = Keys::new("/edits/");
    let jobs = Jobs::new(client.clone(), keys.clone());
    let scheds = schedulers(&client, 2, Clock::System, &keys).await;
    // A job added while the schedulers run starts firing.
    let mut slow = shell("slow", "* * * * * *", "sleep 3".into());
    slow.concurrency = Concurrency::Forbid;
    jobs.add(&slow, false).await.unwrap();
    // Forbid: while a 3 s run is going, the next fires are skipped, not run.
    let history = wait_for("a skipped fire", Duration::from_secs(20), || {
        let jobs = &jobs;
        async move {
            let h = jobs.history("slow", 100).await.ok()?;
            h.iter()
                .any(|r| r.status == RunStatus::Skipped)
                .then_some(h)
        }
    })
    .await;
    assert!(
        history.iter().all(|r| r.status != RunStatus::Failed),
        "{history:?}"
    );
    // An edit takes effect: the job now fails fast; its runs record failures.
    let mut edited = shell("slow", "* * * * * *", "exit 7".into());
    edited.concurrency = Concurrency::Forbid;
    jobs.add(&edited, true).await.unwrap();
    wait_for("a run of the edited job", Duration::from_secs(20), || {
        let jobs = &jobs;
        async move {
            let h = jobs.history("slow", 100).await.ok()?;
            h.iter().any(|r| r.code == Some(7)).then_some(())
        }
    })
    .await;
    // A delete stops it: no fire is committed after the delete is seen.
    jobs.remove("slow", false).await.unwrap();
    let after_delete = Utc::now() + chrono::Duration::seconds(1);
    let settle = Instant::now();
    // Two seconds of quiet prove nothing fires (checked, not used to synchronise).
    while settle.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let f = fires(&client, &keys, "slow").await;
    assert!(
        f.keys().all(|t| *t <= after_delete),
        "fired after its delete: {:?}",
        f.keys().last()
    );
    for s in scheds {
        s.shutdown().await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_claim_is_revoked_cannot_write_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path()).await;
    let keys = Keys::new("/fence/");
    let jobs = Jobs::new(client.clone(), keys.clone());
    let marker = dir.path().join("started");
    let mut job = shell(
        "long",
        "0 0 0 1 1 *",
        format!("touch {}; sleep 4; echo finished", marker.display()),
    );
    job.missed = Missed::Skip;
    jobs.add(&job, false).await.unwrap();
    let scheds = schedulers(&client, 1, Clock::System, &keys).await;
    let at = jobs.run_now("long").await.unwrap();
    wait_for("the run to start", Duration::from_secs(20), || {
        let m = marker.clone();
        async move { m.exists().then_some(()) }
    })
    .await;
    // Revoke its token the way a lease expiry does: delete the claim.
    client
        .delete(keys.claim("long", at), Default::default())
        .await
        .unwrap();
    // The dispatcher records the loss and dispatches it again; the first attempt's late result
    // must never be recorded as a success of attempt 1.
    let history: Vec<Run> = wait_for("the re-dispatched attempt", Duration::from_secs(30), || {
        let jobs = &jobs;
        async move {
            let h = jobs.history("long", 100).await.ok()?;
            h.iter()
                .any(|r| r.attempt == 2 && r.status != RunStatus::Lost)
                .then_some(h)
        }
    })
    .await;
    assert!(
        !history
            .iter()
            .any(|r| r.attempt == 1 && r.status == RunStatus::Succeeded),
        "a fenced result was written: {history:?}"
    );
    assert!(
        history
            .iter()
            .any(|r| r.attempt == 1 && r.status == RunStatus::Lost),
        "{history:?}"
    );
    for s in scheds {
        s.shutdown().await;
    }
    server.shutdown().await.unwrap();
}
