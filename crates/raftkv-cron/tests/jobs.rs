//! The admin API ([`raftkv_cron::jobs::Jobs`]) against a one-member raftkv started in-process:
//! add (create-only, replace, the cursor set once), list, enable/disable, run-now, history and
//! remove (with and without purge).

use chrono::{DateTime, TimeZone, Utc};
use raftkv_client::{Client, GetOptions, PutOptions};
use raftkv_cron::clock::{Clock, ManualClock};
use raftkv_cron::job::{Action, Concurrency, Job, Missed, Retries};
use raftkv_cron::jobs::Jobs;
use raftkv_cron::keys::Keys;
use raftkv_cron::record::{self, Fire, FireState, Run, RunStatus};
use raftkv_cron::CronError;
use raftkv_server::Server;

mod common;

/// One member on 127.0.0.1, a client on it, and the admin API under `/t/`.
struct Store {
    server: Option<Server>,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Store {
    async fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = common::start_node(dir.path()).await;
        Store {
            server: Some(server),
            client,
            _dir: dir,
        }
    }

    fn jobs(&self) -> Jobs {
        Jobs::new(self.client.clone(), Keys::new("/t"))
    }

    async fn value(&self, key: &str) -> Option<Vec<u8>> {
        let r = self.client.get(key, GetOptions::default()).await.unwrap();
        r.kvs.into_iter().next().map(|kv| kv.value)
    }

    async fn count(&self, prefix: &str) -> usize {
        let r = self.client.get(prefix, GetOptions::prefix()).await.unwrap();
        r.kvs.len()
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

fn shell(name: &str) -> Job {
    Job {
        name: name.into(),
        schedule: "*/5 * * * * *".into(),
        timezone: "UTC".into(),
        run: Action::Shell {
            command: "echo hi".into(),
            timeout_secs: 10,
        },
        concurrency: Concurrency::Allow,
        missed: Missed::Skip,
        starting_deadline_secs: 60,
        retries: Retries::default(),
        enabled: true,
    }
}

fn ms(n: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_creates_once_and_sets_the_cursor_once() {
    let store = Store::start().await;
    let start = ms(1_800_000_000_123);
    let clock = ManualClock::new(start);
    let jobs = store.jobs().with_clock(Clock::Manual(clock.clone()));
    let keys = jobs.keys().clone();

    let job = shell("backup");
    jobs.add(&job, false).await.unwrap();
    assert_eq!(jobs.get("backup").await.unwrap(), job);
    let cursor = store.value(&keys.cursor("backup")).await.unwrap();
    assert_eq!(cursor, b"\"2027-01-15T08:00:00.123Z\"");
    let parsed: DateTime<Utc> = serde_json::from_slice(&cursor).unwrap();
    assert_eq!(parsed, start);

    // Create-only refuses a second add; replace overwrites but keeps the cursor.
    clock.set(ms(1_900_000_000_000));
    let mut changed = shell("backup");
    changed.schedule = "0 3 * * *".into();
    assert!(matches!(
        jobs.add(&changed, false).await,
        Err(CronError::Exists(n)) if n == "backup"
    ));
    assert_eq!(jobs.get("backup").await.unwrap().schedule, "*/5 * * * * *");
    jobs.add(&changed, true).await.unwrap();
    assert_eq!(jobs.get("backup").await.unwrap().schedule, "0 3 * * *");
    assert_eq!(store.value(&keys.cursor("backup")).await.unwrap(), cursor);

    // Invalid definitions never reach the store, with the field named.
    let mut bad = shell("broken");
    bad.timezone = "Mars/Olympus".into();
    let e = jobs.add(&bad, false).await.unwrap_err();
    assert!(e.to_string().contains("timezone"), "{e}");
    assert!(matches!(
        jobs.get("broken").await,
        Err(CronError::NotFound(_))
    ));
    assert_eq!(store.value(&keys.cursor("broken")).await, None);
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_enable_disable_and_missing_jobs() {
    let store = Store::start().await;
    let jobs = store.jobs();
    for name in ["zeta", "alpha", "mid"] {
        jobs.add(&shell(name), false).await.unwrap();
    }
    // A value that is not a job is skipped, not fatal.
    store
        .client
        .put(
            jobs.keys().job("garbage"),
            "{not json",
            PutOptions::default(),
        )
        .await
        .unwrap();
    let names: Vec<String> = jobs
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);

    jobs.set_enabled("mid", false).await.unwrap();
    assert!(!jobs.get("mid").await.unwrap().enabled);
    // Idempotent.
    jobs.set_enabled("mid", false).await.unwrap();
    jobs.set_enabled("mid", true).await.unwrap();
    assert!(jobs.get("mid").await.unwrap().enabled);

    for e in [
        jobs.set_enabled("nope", true).await.unwrap_err(),
        jobs.remove("nope", false).await.unwrap_err(),
        jobs.run_now("nope").await.unwrap_err(),
        jobs.get("a/b").await.unwrap_err(),
    ] {
        assert!(matches!(e, CronError::NotFound(_)), "{e}");
    }
    assert!(jobs.history("nope", 10).await.unwrap().is_empty());
    assert_eq!(jobs.last_run("nope").await.unwrap(), None);
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_creates_a_pending_fire_per_millisecond() {
    let store = Store::start().await;
    let clock = ManualClock::new(ms(1_800_000_000_500));
    let jobs = store.jobs().with_clock(Clock::Manual(clock));
    let keys = jobs.keys().clone();
    jobs.add(&shell("adhoc"), false).await.unwrap();

    let first = jobs.run_now("adhoc").await.unwrap();
    assert_eq!(first, ms(1_800_000_000_500));
    // The clock did not move: the same millisecond is taken, so the next one is used.
    let second = jobs.run_now("adhoc").await.unwrap();
    assert_eq!(second, ms(1_800_000_000_501));

    let value = store.value(&keys.fire("adhoc", first)).await.unwrap();
    let fire: Fire = record::from_json(b"fire", &value).unwrap();
    assert_eq!(
        fire,
        Fire {
            job: "adhoc".into(),
            scheduled: first,
            attempt: 1,
            state: FireState::Pending,
            not_before: first,
            node: None,
        }
    );
    assert_eq!(store.count(&keys.fires_of("adhoc")).await, 2);
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_newest_first_and_purge_removes_the_records() {
    let store = Store::start().await;
    let jobs = store.jobs();
    let keys = jobs.keys().clone();
    jobs.add(&shell("nightly"), false).await.unwrap();
    jobs.add(&shell("nightly2"), false).await.unwrap();

    let run = |at: i64, attempt: u32, status: RunStatus| Run {
        job: "nightly".into(),
        scheduled: ms(at),
        attempt,
        status,
        node: Some("n1".into()),
        token: at,
        started: Some(ms(at)),
        ended: ms(at + 1500),
        code: Some(0),
        output: "done\n".into(),
    };
    let runs = [
        run(1_000, 1, RunStatus::Failed),
        run(1_000, 2, RunStatus::Succeeded),
        run(2_000, 1, RunStatus::Succeeded),
        run(3_000, 1, RunStatus::TimedOut),
    ];
    for r in &runs {
        store
            .client
            .put(
                keys.run(&r.job, r.scheduled, r.attempt),
                record::to_json(r),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    // Another job's history (a name sharing the prefix) is not mixed in.
    let mut other = run(9_000, 1, RunStatus::Failed);
    other.job = "nightly2".into();
    store
        .client
        .put(
            keys.run("nightly2", other.scheduled, 1),
            record::to_json(&other),
            PutOptions::default(),
        )
        .await
        .unwrap();

    let all = jobs.history("nightly", 0).await.unwrap();
    let order: Vec<(i64, u32)> = all
        .iter()
        .map(|r| (r.scheduled.timestamp_millis(), r.attempt))
        .collect();
    assert_eq!(order, [(3_000, 1), (2_000, 1), (1_000, 2), (1_000, 1)]);
    assert_eq!(jobs.history("nightly", 2).await.unwrap(), all[..2].to_vec());
    assert_eq!(
        jobs.last_run("nightly").await.unwrap().as_ref(),
        all.first()
    );

    let fired = jobs.run_now("nightly").await.unwrap();
    store
        .client
        .put(keys.claim("nightly", fired), "{}", PutOptions::default())
        .await
        .unwrap();
    store
        .client
        .put(keys.active("nightly"), "x", PutOptions::default())
        .await
        .unwrap();

    // Without purge: definition, cursor and active marker go; history, fires, claims stay.
    jobs.remove("nightly", false).await.unwrap();
    assert!(matches!(
        jobs.get("nightly").await,
        Err(CronError::NotFound(_))
    ));
    assert_eq!(store.value(&keys.cursor("nightly")).await, None);
    assert_eq!(store.value(&keys.active("nightly")).await, None);
    assert_eq!(jobs.history("nightly", 0).await.unwrap().len(), 4);
    assert_eq!(store.count(&keys.fires_of("nightly")).await, 1);

    // Re-added and removed with purge: everything of the job goes, the other job's stays.
    jobs.add(&shell("nightly"), false).await.unwrap();
    jobs.remove("nightly", true).await.unwrap();
    assert!(jobs.history("nightly", 0).await.unwrap().is_empty());
    assert_eq!(store.count(&keys.fires_of("nightly")).await, 0);
    assert_eq!(store.value(&keys.claim("nightly", fired)).await, None);
    assert_eq!(jobs.history("nightly2", 0).await.unwrap(), [other]);
    assert!(jobs.get("nightly2").await.is_ok());
    store.stop().await;
}
