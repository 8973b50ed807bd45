//! A scheduler process's engine: the dispatcher candidate and the executor, side by side, over
//! one raftkv client (remote endpoints, or the node embedded in the same process).

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::clock::Clock;
use crate::error::CronError;
use crate::keys::Keys;
use crate::store::Ctx;
use crate::{dispatcher, executor};

/// How a scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// This node's name, recorded in claims and history.
    pub node: String,
    /// The key layout.
    pub keys: Keys,
    /// TTL of the dispatcher's and the executor's leases, in seconds: how long a dead node
    /// keeps its role and its runs.
    pub lease_ttl: i64,
    /// The dispatcher's clock.
    pub clock: Clock,
    /// History records (and finished fire records) kept per job.
    pub history_limit: usize,
}

impl SchedulerOptions {
    /// Defaults for node `node`: the default prefix, 5 s leases, the system clock, 100
    /// records per job.
    pub fn new(node: impl Into<String>) -> Self {
        SchedulerOptions {
            node: node.into(),
            keys: Keys::default(),
            lease_ttl: 5,
            clock: Clock::System,
            history_limit: 100,
        }
    }
}

/// A running scheduler.
#[derive(Debug)]
pub struct Scheduler {
    shutdown: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
    dispatcher: JoinHandle<Result<(), CronError>>,
    executor: JoinHandle<Result<(), CronError>>,
}

impl Scheduler {
    /// Starts campaigning for dispatcher and executing runs.
    pub async fn start(
        client: raftkv_client::Client,
        opts: SchedulerOptions,
    ) -> Result<Scheduler, CronError> {
        if opts.lease_ttl < 1 {
            return Err(CronError::Option(
                "lease_ttl must be at least 1 second".into(),
            ));
        }
        if opts.history_limit == 0 {
            return Err(CronError::Option("history_limit must be at least 1".into()));
        }
        let ctx = Ctx {
            client,
            keys: opts.keys,
            node: opts.node.clone(),
            clock: opts.clock,
            lease_ttl: opts.lease_ttl,
            history_limit: opts.history_limit,
        };
        let (shutdown, rx) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(false);
        let span = tracing::info_span!("scheduler", node = %opts.node);
        let dispatcher = tokio::spawn(
            dispatcher::run(ctx.clone(), rx.clone(), leading_tx).instrument(span.clone()),
        );
        let executor = tokio::spawn(executor::run(ctx, rx).instrument(span));
        Ok(Scheduler {
            shutdown,
            leading,
            dispatcher,
            executor,
        })
    }

    /// Whether this scheduler is the dispatcher right now.
    pub fn is_dispatcher(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver that follows [`Scheduler::is_dispatcher`].
    pub fn dispatcher_status(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Resolves only if the scheduler stopped by itself (a task failed).
    pub async fn stopped(&mut self) -> Result<(), CronError> {
        let r = tokio::select! {
            r = &mut self.dispatcher => r,
            r = &mut self.executor => r,
        };
        match r {
            Ok(r) => r,
            Err(e) => Err(CronError::Task(e.to_string())),
        }
    }

    /// Stops: the dispatcher resigns, running tasks are killed and their claims released (so
    /// another node re-runs them).
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in [self.dispatcher, self.executor] {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "scheduler task ended with an error"),
                Err(e) => tracing::warn!(error = %e, "scheduler task failed"),
            }
        }
    }
}

/// Waits until `shutdown` reads true (or its sender is gone), holding no borrow afterwards.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await.map(drop);
}
