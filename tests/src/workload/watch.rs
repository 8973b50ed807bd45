//! The watch workload: watchers over a key prefix that drop and resume their streams, against
//! a writer and periodic compactions, checked with [`check_watchers`].
//!
//! Tasks (all stock `etcd-client` clients):
//!
//! - **Writer**: one request at a time, mostly puts and some deletes of `<prefix>k<nnnn>`,
//!   through a client of one endpoint. Each acknowledged write is counted in the meter and
//!   remembered with its header revision (a delete only when it deleted something: otherwise it
//!   made no revision). Failures and timeouts are expected under faults: back off and move to
//!   the next endpoint (a client balanced over every endpoint keeps sending a third of its
//!   requests to a paused member, each waiting for the op timeout).
//! - **Log keeper**: reads the *authoritative* event log of the prefix with its own watch
//!   stream, started at the first revision of the run, and knows how far the log is complete
//!   from the stream itself: an event response covers everything up to its revision, and a
//!   progress response (asked for every second; raftkv, like etcd, answers it once the stream
//!   is in sync) covers everything up to its header revision. Every `compact_every` it takes
//!   the current revision `R` from a linearizable get, waits until the log is complete through
//!   `R`, and only then compacts at `R` (not physical): nothing is ever compacted that is not
//!   in the log. Its stream is checked as it goes (strictly increasing revisions, nothing
//!   before the start), and cross-checked at the end against the acknowledged writes (each must
//!   be in the log as an event of its key and type) and against a read of the prefix at the
//!   final revision (each key's last logged event must match its state).
//! - **Watchers** (`watchers` of them): each watches the prefix (every third one the sub-range
//!   `[<prefix>k<keys/2>, <prefix>~~)`, which holds half the keys and the sentinel, so range
//!   filtering is checked too), each stream on one endpoint chosen at random (the next one
//!   after a failure), from an explicit start revision. Every stream is a [`Segment`]. A
//!   watcher drops its stream after a random 0.3–3 s and resumes at one past the last revision
//!   it saw (or was told it was caught up to by a progress response, which it asks for every
//!   second and records as `caught_up_to`). A quarter of the drops *lag*: the watcher waits
//!   until a compaction has passed its resume revision (a condition on the keeper's compaction
//!   revision, with a deadline) before reconnecting, so the server must answer with a
//!   cancel-on-compaction notice, which ends the segment with `compacted`; the watcher then
//!   resumes at the compaction revision. Stream errors (a member killed) and silent streams (a
//!   member paused: a progress request unanswered for twice the op timeout) resume the same
//!   way on the next endpoint.
//!
//! After the stop flag (raised once every fault has healed), the writer puts the sentinel
//! `<prefix>~end`; each watcher reads on until it receives the sentinel's event and records its
//! revision as the last segment's `caught_up_to`; the keeper reads the log through the
//! sentinel's acknowledged revision. Each has 30 s for this, reconnecting as needed. The log is
//! then cut at the sentinel (a write whose outcome stayed unknown may land later) and the
//! prefix is read at that revision for the final-state cross-check.
//!
//! [`WatchLog::check`] reports, as checker "watch": every [`check_watchers`] violation; a
//! watcher that never saw the sentinel; a log that could not be completed, or that disagrees
//! with the acknowledged writes or with the final state; a sentinel that could not be written.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType as WireEventType, GetOptions, WatchOptions, WatchResponse,
    WatchStream, Watcher,
};
use tokio::task::JoinSet;

use crate::check::watch::{
    check_watchers, Event, EventType, KeyRange, RangeEnd, Segment, WatcherLog,
};
use crate::rng::Rng;
use crate::workload::{Anomaly, Ctx};

/// How long, after the stop flag, the sentinel may take to be written and seen everywhere.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before retrying after a failure.
const BACKOFF: Duration = Duration::from_millis(100);
/// How often stream loops look at the clock, the stop flag and their timers.
const TICK: Duration = Duration::from_millis(100);
/// How often a stream asks for a progress response.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The sentinel key's suffix (after every `k<nnnn>` key).
const SENTINEL: &str = "~end";
/// [`Shared::sentinel`] when the sentinel could not be written.
const SENTINEL_FAILED: i64 = -1;

/// What the watch workload does.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The key prefix (every key the workload writes and watches is under it).
    pub prefix: String,
    /// Concurrent watchers.
    pub watchers: usize,
    /// Keys written.
    pub keys: usize,
    /// How often the log keeper compacts (at a revision it has already logged).
    pub compact_every: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            prefix: "watch/".into(),
            watchers: 4,
            keys: 16,
            compact_every: Duration::from_secs(5),
        }
    }
}

/// What a watch run recorded: the authoritative log, the acknowledged writes and every
/// watcher's segments. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct WatchLog {
    /// The first revision of the run (the log covers the prefix from here).
    start: i64,
    /// The authoritative event log of the prefix, in revision order.
    log: Vec<Event>,
    /// Every event of the prefix up to this revision is in `log`.
    logged_through: i64,
    /// The sentinel's acknowledged revision, if it was written.
    sentinel: Option<i64>,
    /// Acknowledged writes that made a revision.
    acked: Vec<Event>,
    /// Acknowledged writes (including deletes of absent keys).
    writes: u64,
    /// What each watcher received.
    watchers: Vec<WatcherLog>,
    /// Whether each watcher saw the sentinel.
    caught_up: Vec<bool>,
    /// Events received by all watchers.
    events_received: u64,
    /// Successful compactions, in order.
    compactions: Vec<i64>,
    /// The prefix at the sentinel's revision: key -> mod revision.
    final_state: Option<BTreeMap<String, i64>>,
    /// Problems found while recording (each an anomaly).
    problems: Vec<String>,
}

impl WatchLog {
    /// Operations for the summary: acknowledged writes plus events received by watchers.
    pub fn operations(&self) -> u64 {
        self.writes + self.events_received
    }

    /// The authoritative event log (cut at the sentinel).
    pub fn log(&self) -> &[Event] {
        &self.log
    }

    /// What each watcher received.
    pub fn watchers(&self) -> &[WatcherLog] {
        &self.watchers
    }

    /// The revisions the workload compacted at.
    pub fn compactions(&self) -> &[i64] {
        &self.compactions
    }

    /// How many watch streams ended with a cancel-on-compaction notice.
    pub fn compaction_notices(&self) -> usize {
        self.watchers
            .iter()
            .flat_map(|w| &w.segments)
            .filter(|s| s.compacted.is_some())
            .count()
    }

    /// Runs the watch checker and the log's own cross-checks (checker "watch").
    pub fn check(&self) -> Vec<Anomaly> {
        let anomaly = |detail: String| Anomaly {
            checker: "watch",
            detail,
        };
        let mut out: Vec<Anomaly> = self.problems.iter().cloned().map(anomaly).collect();

        // Every acknowledged write is in the log, as an event of its key and type.
        let in_log: HashMap<(i64, &str), EventType> = self
            .log
            .iter()
            .map(|e| ((e.revision, e.key.as_str()), e.kind))
            .collect();
        for a in self
            .acked
            .iter()
            .filter(|a| a.revision <= self.logged_through)
        {
            if in_log.get(&(a.revision, a.key.as_str())) != Some(&a.kind) {
                out.push(anomaly(format!(
                    "acknowledged write {a:?} is not in the event log read by watch"
                )));
            }
        }

        // Each key's last logged event matches the prefix's state at the sentinel.
        if let (Some(state), Some(s)) = (&self.final_state, self.sentinel) {
            if self.logged_through >= s {
                let mut last: BTreeMap<&str, &Event> = BTreeMap::new();
                for e in &self.log {
                    last.insert(e.key.as_str(), e);
                }
                for (key, e) in &last {
                    let actual = state.get(*key).copied();
                    let expected = (e.kind == EventType::Put).then_some(e.revision);
                    if actual != expected {
                        out.push(anomaly(format!(
                            "key {key:?} at revision {s}: the log's last event is {e:?}, the \
                             store has mod revision {actual:?}"
                        )));
                    }
                }
                for (key, rev) in state {
                    if !last.contains_key(key.as_str()) && *rev >= self.start {
                        out.push(anomaly(format!(
                            "key {key:?} has mod revision {rev} at revision {s}, but the log \
                             has no event of it"
                        )));
                    }
                }
            }
        }

        // The watchers, against the part of the log known complete.
        let through = self.logged_through;
        let clipped: Vec<WatcherLog> = self
            .watchers
            .iter()
            .map(|w| WatcherLog {
                segments: w
                    .segments
                    .iter()
                    .map(|s| Segment {
                        events: s
                            .events
                            .iter()
                            .filter(|e| e.revision <= through)
                            .cloned()
                            .collect(),
                        caught_up_to: s.caught_up_to.filter(|&c| c <= through),
                        ..s.clone()
                    })
                    .collect(),
                ..w.clone()
            })
            .collect();
        out.extend(
            check_watchers(&self.log, &clipped)
                .into_iter()
                .map(|v| anomaly(format!("{v:?}"))),
        );
        if self.sentinel.is_some() {
            for (w, caught) in self.caught_up.iter().enumerate() {
                if !caught {
                    out.push(anomaly(format!(
                        "watcher {w} did not receive the sentinel {:?} within {FINISH_TIMEOUT:?}",
                        self.sentinel
                    )));
                }
            }
        }
        out
    }
}

/// State the tasks share.
#[derive(Debug, Default)]
struct Shared {
    /// The highest revision compacted so far (0: none).
    compacted: AtomicI64,
    /// The sentinel: 0 while not written, [`SENTINEL_FAILED`], or its revision.
    sentinel: AtomicI64,
}

/// Runs until `ctx.stopped()`, then writes the sentinel, lets every watcher and the log keeper
/// read through it, and returns what was recorded. See the module docs.
pub async fn run(ctx: Ctx, cfg: WatchConfig) -> WatchLog {
    let mut out = WatchLog::default();
    let Some(r0) = first_revision(&ctx, &cfg).await else {
        out.problems
            .push("the run stopped before any revision could be read".into());
        return out;
    };
    let start = r0 + 1;
    out.start = start;
    let shared = Arc::new(Shared::default());

    let writer = tokio::spawn(write(ctx.clone(), cfg.clone(), shared.clone()));
    let keeper = tokio::spawn(keep_log(ctx.clone(), cfg.clone(), shared.clone(), start));
    let mut watchers = JoinSet::new();
    for id in 0..cfg.watchers {
        watchers.spawn(watch(ctx.clone(), cfg.clone(), shared.clone(), id, start));
    }

    match writer.await {
        Ok(w) => {
            out.acked = w.acked;
            out.writes = w.writes;
            out.problems.extend(w.problems);
        }
        Err(e) => out.problems.push(format!("the writer task failed: {e}")),
    }
    let mut runs: Vec<WatcherRun> = Vec::new();
    while let Some(joined) = watchers.join_next().await {
        match joined {
            Ok(run) => runs.push(run),
            Err(e) => out.problems.push(format!("a watcher task failed: {e}")),
        }
    }
    runs.sort_by_key(|r| r.log.watcher);
    for r in runs {
        out.events_received += r.events;
        out.caught_up.push(r.caught_up);
        out.watchers.push(r.log);
    }
    match keeper.await {
        Ok(k) => {
            out.log = k.log;
            out.logged_through = k.through;
            out.compactions = k.compactions;
            out.problems.extend(k.problems);
        }
        Err(e) => out
            .problems
            .push(format!("the log keeper task failed: {e}")),
    }

    let sentinel = shared.sentinel.load(Ordering::SeqCst);
    if sentinel > 0 {
        out.sentinel = Some(sentinel);
        out.log.retain(|e| e.revision <= sentinel);
        out.logged_through = out.logged_through.min(sentinel);
        out.final_state = final_state(&ctx, &cfg, sentinel).await;
        if out.final_state.is_none() {
            out.problems.push(format!(
                "the prefix could not be read at the sentinel's revision {sentinel}"
            ));
        }
    }
    tracing::info!(
        writes = out.writes,
        log = out.log.len(),
        events = out.events_received,
        segments = out.watchers.iter().map(|w| w.segments.len()).sum::<usize>(),
        compactions = out.compactions.len(),
        notices = out.compaction_notices(),
        "watch workload finished"
    );
    out
}

fn key(prefix: &str, n: u64) -> String {
    format!("{prefix}k{n:04}")
}

fn sentinel_key(prefix: &str) -> String {
    format!("{prefix}{SENTINEL}")
}

/// Watcher `id`'s range: the prefix, or for every third watcher the upper half of the keys
/// plus the sentinel.
fn watcher_range(cfg: &WatchConfig, id: usize) -> KeyRange {
    if id % 3 == 2 {
        KeyRange {
            start: key(&cfg.prefix, (cfg.keys / 2) as u64),
            end: RangeEnd::Before(format!("{}~~", cfg.prefix)),
        }
    } else {
        KeyRange {
            start: cfg.prefix.clone(),
            end: RangeEnd::Prefix,
        }
    }
}

/// A client of one endpoint (index taken modulo their number).
async fn connect_to(ctx: &Ctx, endpoint: usize) -> Option<Client> {
    let ep = ctx
        .endpoints
        .get(endpoint % ctx.endpoints.len().max(1))?
        .clone();
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(ctx.op_timeout);
    ctx.call(Client::connect([ep], Some(opts))).await
}

/// A client of every endpoint, retrying until `deadline` (even after the stop flag).
async fn connect_until(ctx: &Ctx, deadline: Instant) -> Option<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(ctx.op_timeout);
    loop {
        if let Some(c) = ctx
            .call(Client::connect(ctx.endpoints.clone(), Some(opts.clone())))
            .await
        {
            return Some(c);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// The current revision (a linearizable get's header), retried until it answers; `None` if the
/// run stops first.
async fn first_revision(ctx: &Ctx, cfg: &WatchConfig) -> Option<i64> {
    loop {
        let mut client = ctx.connect().await?;
        if let Some(resp) = ctx.call(client.get(cfg.prefix.as_str(), None)).await {
            if let Some(h) = resp.header() {
                return Some(h.revision());
            }
        }
        if ctx.stopped() {
            return None;
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// The prefix at revision `rev`: key -> mod revision.
async fn final_state(ctx: &Ctx, cfg: &WatchConfig, rev: i64) -> Option<BTreeMap<String, i64>> {
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let mut client = connect_until(ctx, deadline).await?;
    loop {
        let opts = GetOptions::new().with_prefix().with_revision(rev);
        if let Some(resp) = ctx.call(client.get(cfg.prefix.as_str(), Some(opts))).await {
            return Some(
                resp.kvs()
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            kv.mod_revision(),
                        )
                    })
                    .collect(),
            );
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// What the writer recorded.
struct Written {
    acked: Vec<Event>,
    writes: u64,
    problems: Vec<String>,
}

/// The writer task. See the module docs.
async fn write(ctx: Ctx, cfg: WatchConfig, shared: Arc<Shared>) -> Written {
    let mut rng = Rng(ctx.seed ^ 0x7772_6974_6572);
    let mut out = Written {
        acked: Vec::new(),
        writes: 0,
        problems: Vec::new(),
    };
    let mut endpoint = 0usize;
    let mut client: Option<Client> = None;
    while !ctx.stopped() {
        if client.is_none() {
            client = connect_to(&ctx, endpoint).await;
        }
        let Some(c) = client.as_mut() else {
            endpoint += 1;
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let k = key(&cfg.prefix, rng.below(cfg.keys as u64));
        let ok = if rng.percent(85) {
            let value = rng.next_u64().to_string();
            match ctx.call(c.put(k.as_str(), value, None)).await {
                Some(resp) => {
                    if let Some(h) = resp.header() {
                        out.acked.push(Event {
                            revision: h.revision(),
                            key: k,
                            kind: EventType::Put,
                        });
                    }
                    true
                }
                None => false,
            }
        } else {
            match ctx.call(c.delete(k.as_str(), None)).await {
                Some(resp) => {
                    if let Some(h) = resp.header().filter(|_| resp.deleted() > 0) {
                        out.acked.push(Event {
                            revision: h.revision(),
                            key: k,
                            kind: EventType::Delete,
                        });
                    }
                    true
                }
                None => false,
            }
        };
        if ok {
            out.writes += 1;
            ctx.done();
        } else {
            // Its member may be dead, paused or cut off: the next one.
            endpoint += 1;
            client = None;
            tokio::time::sleep(BACKOFF).await;
        }
    }

    // The sentinel: the cluster is healed now, so it must go through.
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let sentinel = sentinel_key(&cfg.prefix);
    loop {
        if client.is_none() {
            client = connect_until(&ctx, deadline).await;
        }
        if let Some(c) = client.as_mut() {
            if let Some(resp) = ctx.call(c.put(sentinel.as_str(), "end", None)).await {
                if let Some(h) = resp.header() {
                    out.acked.push(Event {
                        revision: h.revision(),
                        key: sentinel.clone(),
                        kind: EventType::Put,
                    });
                    out.writes += 1;
                    ctx.done();
                    shared.sentinel.store(h.revision(), Ordering::SeqCst);
                    return out;
                }
            }
        }
        if Instant::now() >= deadline {
            out.problems.push(format!(
                "the sentinel {sentinel:?} could not be written within {FINISH_TIMEOUT:?} after \
                 the run stopped"
            ));
            shared.sentinel.store(SENTINEL_FAILED, Ordering::SeqCst);
            return out;
        }
        tokio::time::sleep(BACKOFF).await;
        client = None;
    }
}

/// One open watch stream and its liveness bookkeeping.
struct Live {
    watcher: Watcher,
    stream: WatchStream,
    /// When a progress request went unanswered (any message clears it).
    asked: Option<Instant>,
    last_ask: Instant,
}

impl Live {
    /// Opens a watch of `range` from `start` on `endpoint`.
    async fn open(ctx: &Ctx, endpoint: usize, range: &KeyRange, start: i64) -> Option<Live> {
        let mut client = connect_to(ctx, endpoint).await?;
        let opts = WatchOptions::new().with_start_revision(start);
        let opts = match &range.end {
            RangeEnd::Single => opts,
            RangeEnd::Prefix => opts.with_prefix(),
            RangeEnd::AllFrom => opts.with_from_key(),
            RangeEnd::Before(end) => opts.with_range(end.as_str()),
        };
        let (watcher, stream) = ctx
            .call(client.watch(range.start.as_str(), Some(opts)))
            .await?;
        Some(Live {
            watcher,
            stream,
            asked: None,
            last_ask: Instant::now(),
        })
    }

    fn heard(&mut self) {
        self.asked = None;
    }

    /// Asks for progress if it is time.
    async fn maybe_ask(&mut self) {
        if self.last_ask.elapsed() >= PROGRESS_EVERY {
            self.last_ask = Instant::now();
            if self.watcher.request_progress().await.is_ok() {
                self.asked.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Whether a progress request stayed unanswered (nothing at all heard) for `limit`.
    fn silent_for(&self, limit: Duration) -> bool {
        self.asked.is_some_and(|a| a.elapsed() > limit)
    }
}

/// A watch response, as the workload sees it.
enum Resp {
    Events(Vec<Event>),
    /// A progress response: everything up to this revision was delivered.
    Progress(i64),
    /// Canceled because the start revision was compacted.
    Compacted(i64),
    /// Canceled for another reason.
    Canceled(String),
    /// A created response (the stream's only watch was created by `watch()` already).
    Other,
}

fn classify(resp: &WatchResponse) -> Resp {
    if resp.canceled() {
        if resp.compact_revision() > 0 {
            Resp::Compacted(resp.compact_revision())
        } else {
            Resp::Canceled(resp.cancel_reason().to_string())
        }
    } else if resp.created() {
        Resp::Other
    } else if resp.events().is_empty() {
        Resp::Progress(resp.header().map_or(0, |h| h.revision()))
    } else {
        Resp::Events(
            resp.events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    Some(Event {
                        revision: kv.mod_revision(),
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        kind: match e.event_type() {
                            WireEventType::Put => EventType::Put,
                            WireEventType::Delete => EventType::Delete,
                        },
                    })
                })
                .collect(),
        )
    }
}

/// What wakes a stream loop.
enum Wake {
    Message(Result<Option<WatchResponse>, etcd_client::Error>),
    Tick,
}

async fn next_wake(live: &mut Live, tick: &mut tokio::time::Interval) -> Wake {
    tokio::select! {
        m = live.stream.message() => Wake::Message(m),
        _ = tick.tick() => Wake::Tick,
    }
}

/// What the log keeper recorded.
struct Kept {
    log: Vec<Event>,
    through: i64,
    compactions: Vec<i64>,
    problems: Vec<String>,
}

/// The log keeper and compactor. See the module docs.
async fn keep_log(ctx: Ctx, cfg: WatchConfig, shared: Arc<Shared>, start: i64) -> Kept {
    let mut k = Kept {
        log: Vec::new(),
        through: start - 1,
        compactions: Vec::new(),
        problems: Vec::new(),
    };
    let range = KeyRange {
        start: cfg.prefix.clone(),
        end: RangeEnd::Prefix,
    };
    let mut endpoint = 0usize;
    let mut ops: Option<Client> = None;
    let mut live: Option<Live> = None;
    let mut tick = tokio::time::interval(TICK);
    let mut next_compact = Instant::now() + cfg.compact_every;
    // A compaction waiting for the log to be complete through it, and since when.
    let mut target: Option<(i64, Instant)> = None;
    let mut finish_by: Option<Instant> = None;
    loop {
        if ctx.stopped() && finish_by.is_none() {
            finish_by = Some(Instant::now() + FINISH_TIMEOUT);
            target = None;
        }
        if let Some(by) = finish_by {
            let s = shared.sentinel.load(Ordering::SeqCst);
            if s == SENTINEL_FAILED || (s > 0 && k.through >= s) {
                break;
            }
            if Instant::now() >= by {
                k.problems.push(format!(
                    "the event log could only be read through revision {} of {s} (sentinel) \
                     within {FINISH_TIMEOUT:?} after the run stopped",
                    k.through
                ));
                break;
            }
        }
        let Some(l) = live.as_mut() else {
            live = Live::open(&ctx, endpoint, &range, k.through + 1).await;
            if live.is_none() {
                endpoint += 1;
                tokio::time::sleep(BACKOFF).await;
            }
            continue;
        };
        let mut reset = false;
        match next_wake(l, &mut tick).await {
            Wake::Message(Ok(Some(resp))) => {
                l.heard();
                match classify(&resp) {
                    Resp::Events(events) => {
                        for e in events {
                            let last = k.log.last().map_or(start - 1, |l| l.revision);
                            if e.revision <= last || e.revision <= k.through {
                                k.problems.push(format!(
                                    "the log keeper's stream (from {}) repeated or reordered \
                                     {e:?}: the log was complete through {} (last event at {last})",
                                    k.through + 1,
                                    k.through
                                ));
                                continue;
                            }
                            k.through = e.revision;
                            k.log.push(e);
                        }
                    }
                    Resp::Progress(p) => k.through = k.through.max(p),
                    Resp::Compacted(c) => {
                        k.problems.push(format!(
                            "the log keeper's watch from {} was canceled by a compaction at {c}: \
                             the log misses revisions {}..{c}",
                            k.through + 1,
                            k.through + 1
                        ));
                        k.through = c - 1;
                        reset = true;
                    }
                    Resp::Canceled(_) => reset = true,
                    Resp::Other => {}
                }
            }
            Wake::Message(_) => reset = true,
            Wake::Tick => {
                if finish_by.is_none() && target.is_none() && Instant::now() >= next_compact {
                    match current_revision(&ctx, &cfg, &mut ops).await {
                        Some(r) => target = Some((r, Instant::now())),
                        None => next_compact = Instant::now() + cfg.compact_every / 4,
                    }
                }
                l.maybe_ask().await;
                if l.silent_for(ctx.op_timeout * 2) {
                    reset = true;
                }
                // A target the stream cannot reach (its member is cut off): another member.
                if target.is_some_and(|(_, since)| since.elapsed() > ctx.op_timeout * 3) {
                    target = None;
                    next_compact = Instant::now();
                    reset = true;
                }
            }
        }
        if reset {
            live = None;
            endpoint += 1;
        }
        if let Some((r, _)) = target.filter(|&(r, _)| k.through >= r) {
            target = None;
            next_compact = Instant::now() + cfg.compact_every;
            if let Some(c) = ops.as_mut() {
                if ctx.call(c.compact(r, None)).await.is_some() {
                    k.compactions.push(r);
                    shared.compacted.fetch_max(r, Ordering::SeqCst);
                } else {
                    ops = None;
                }
            }
        }
    }
    k
}

/// The current revision from a linearizable get (through `ops`, connected if needed).
async fn current_revision(ctx: &Ctx, cfg: &WatchConfig, ops: &mut Option<Client>) -> Option<i64> {
    if ops.is_none() {
        *ops = connect_until(ctx, Instant::now()).await;
    }
    let c = ops.as_mut()?;
    match ctx.call(c.get(cfg.prefix.as_str(), None)).await {
        Some(resp) => resp.header().map(|h| h.revision()),
        None => {
            *ops = None;
            None
        }
    }
}

/// What one watcher recorded.
struct WatcherRun {
    log: WatcherLog,
    caught_up: bool,
    events: u64,
}

/// One watcher. See the module docs.
async fn watch(
    ctx: Ctx,
    cfg: WatchConfig,
    shared: Arc<Shared>,
    id: usize,
    start: i64,
) -> WatcherRun {
    let mut rng = Rng(ctx.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let range = watcher_range(&cfg, id);
    let sentinel = sentinel_key(&cfg.prefix);
    let n = ctx.endpoints.len().max(1);
    let mut segments: Vec<Segment> = Vec::new();
    let mut next = start;
    let mut endpoint = id % n;
    let mut caught_up = false;
    let mut events = 0u64;
    let mut finish_by: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    let over = |finish_by: &mut Option<Instant>| {
        if !ctx.stopped() {
            return false;
        }
        let by = *finish_by.get_or_insert_with(|| Instant::now() + FINISH_TIMEOUT);
        Instant::now() >= by || shared.sentinel.load(Ordering::SeqCst) == SENTINEL_FAILED
    };
    'streams: while !caught_up {
        if over(&mut finish_by) {
            break;
        }
        let Some(mut live) = Live::open(&ctx, endpoint, &range, next).await else {
            endpoint = (endpoint + 1) % n;
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        segments.push(Segment {
            start_revision: next,
            ..Segment::default()
        });
        let Some(seg) = segments.last_mut() else {
            break;
        };
        let drop_at = Instant::now() + Duration::from_millis(300 + rng.below(2700));
        let lag = rng.percent(25);
        loop {
            match next_wake(&mut live, &mut tick).await {
                Wake::Message(Ok(Some(resp))) => {
                    live.heard();
                    match classify(&resp) {
                        Resp::Events(evs) => {
                            for e in evs {
                                events += 1;
                                next = next.max(e.revision + 1);
                                let rev = e.revision;
                                let is_sentinel = e.key == sentinel;
                                seg.events.push(e);
                                if is_sentinel {
                                    seg.caught_up_to = Some(rev);
                                    caught_up = true;
                                    break 'streams;
                                }
                            }
                        }
                        Resp::Progress(p) if p > 0 => {
                            seg.caught_up_to = Some(seg.caught_up_to.map_or(p, |c| c.max(p)));
                            next = next.max(p + 1);
                        }
                        Resp::Compacted(c) => {
                            seg.compacted = Some(c);
                            next = next.max(c);
                            continue 'streams;
                        }
                        Resp::Canceled(reason) => {
                            tracing::debug!(watcher = id, %reason, "watch canceled");
                            endpoint = (endpoint + 1) % n;
                            continue 'streams;
                        }
                        Resp::Progress(_) | Resp::Other => {}
                    }
                }
                Wake::Message(_) => {
                    // The stream broke (a member killed or restarted): the next member.
                    endpoint = (endpoint + 1) % n;
                    tokio::time::sleep(BACKOFF).await;
                    continue 'streams;
                }
                Wake::Tick => {
                    if over(&mut finish_by) {
                        break 'streams;
                    }
                    if !ctx.stopped() && Instant::now() >= drop_at {
                        drop(live);
                        if lag {
                            // Until a compaction passes the resume revision, so that the new
                            // stream must be told about it.
                            let until = Instant::now() + cfg.compact_every * 3 + ctx.op_timeout;
                            while shared.compacted.load(Ordering::SeqCst) <= next
                                && !ctx.stopped()
                                && Instant::now() < until
                            {
                                tokio::time::sleep(TICK).await;
                            }
                        }
                        endpoint = rng.below(n as u64) as usize;
                        continue 'streams;
                    }
                    live.maybe_ask().await;
                    if live.silent_for(ctx.op_timeout * 2) {
                        // A paused member: the next one.
                        endpoint = (endpoint + 1) % n;
                        continue 'streams;
                    }
                }
            }
        }
    }
    WatcherRun {
        log: WatcherLog {
            watcher: id,
            range,
            segments,
        },
        caught_up,
        events,
    }
}
