//! The hub: one task per node that reads each newly applied revision range from the store once
//! and broadcasts it to every watch stream as a [`LiveBatch`].
//!
//! The apply thread only publishes its revision on a `watch` channel, so nothing the hub or a
//! stream does can block a write. The broadcast channel is bounded and never waits for
//! receivers: a stream that falls behind by more than its capacity gets `Lagged` and reads the
//! missed revisions from the store itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use raftkv_mvcc::{RequestError, Store};
use raftkv_proto::mvccpb::Event;
use tokio::sync::{broadcast, watch};

use super::stopped;

/// Consecutive revisions `from..=to` and all their events, in revision order.
#[derive(Debug)]
pub(crate) struct LiveBatch {
    /// The first revision covered. Batches follow each other without gaps unless the hub had
    /// to skip revisions that were compacted before it read them.
    pub(crate) from: i64,
    /// The last revision covered.
    pub(crate) to: i64,
    pub(crate) events: Vec<Event>,
    /// Whether the events carry their previous key-values (read only while some watcher asks).
    pub(crate) with_prev_kv: bool,
}

/// Starts the hub. It stops at shutdown, when the revision channel closes, or when the store
/// fails; dropping its sender then ends every stream's live feed.
pub(crate) fn spawn(
    store: Store,
    revisions: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
    capacity: usize,
    batch_events: usize,
    prev_kv_demand: Arc<AtomicUsize>,
) -> broadcast::WeakSender<Arc<LiveBatch>> {
    let (live, _) = broadcast::channel(capacity.max(1));
    let weak = live.downgrade();
    let hub = Hub {
        store,
        live,
        batch_events: batch_events.max(1),
        prev_kv_demand,
    };
    tokio::spawn(hub.run(revisions, shutdown));
    weak
}

struct Hub {
    store: Store,
    live: broadcast::Sender<Arc<LiveBatch>>,
    batch_events: usize,
    prev_kv_demand: Arc<AtomicUsize>,
}

impl Hub {
    async fn run(self, mut revisions: watch::Receiver<i64>, mut shutdown: watch::Receiver<bool>) {
        let mut next = match self.store.revision() {
            Ok(rev) => rev + 1,
            Err(e) => {
                tracing::error!(error = %e, "watch hub cannot read the store revision");
                return;
            }
        };
        loop {
            let published = *revisions.borrow_and_update();
            if let Err(e) = self.feed(&mut next, published).await {
                tracing::error!(error = %e, next, "watch hub stopped: store failure");
                return;
            }
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        tracing::debug!("watch hub stopped: revision channel closed");
                        return;
                    }
                }
                () = stopped(&mut shutdown) => return,
            }
        }
    }

    /// Broadcasts every revision from `next` through `published`.
    async fn feed(&self, next: &mut i64, published: i64) -> raftkv_mvcc::Result<()> {
        while *next <= published {
            if self.live.receiver_count() == 0 {
                // Nobody listens. A stream subscribing later reads the store revision after
                // subscribing, so it never expects these revisions from the feed.
                *next = published + 1;
                return Ok(());
            }
            let with_prev_kv = self.prev_kv_demand.load(Ordering::Relaxed) > 0;
            match self.store.history(*next, self.batch_events, with_prev_kv) {
                Ok(batch) => {
                    let to = batch.next - 1;
                    if to >= *next {
                        // An error only means no receiver right now; see above.
                        let _ = self.live.send(Arc::new(LiveBatch {
                            from: *next,
                            to,
                            events: batch.events,
                            with_prev_kv,
                        }));
                    }
                    *next = batch.next;
                }
                Err(e) if e.as_request() == Some(RequestError::Compacted) => {
                    // Compacted before the hub read it: skip ahead. Streams see the next
                    // batch start past what they expect and fall back to the store, where
                    // their watchers get the compaction cancel.
                    *next = self.store.compact_revision()?.max(*next + 1);
                }
                Err(e) => return Err(e),
            }
            // A long backlog must not hold a runtime worker.
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}
