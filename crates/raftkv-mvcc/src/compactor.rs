//! Physical compaction: a background thread that rewrites the blocks holding revisions a logical
//! compaction dropped. Logical compaction (the index and the compact revision) happens at once,
//! on the applying thread; this only reclaims space, so it may lag without changing any answer.
//! Snapshot exports hold it off so that they stream a stable set of blocks, and so does a
//! defragmentation while it copies the database.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use crate::record::{self, Record};
use crate::revision::Revision;

/// Blocks rewritten per sled batch (and per turn of the gate).
const BLOCKS_PER_BATCH: usize = 64;

/// One logical compaction's dropped revisions that live in committed blocks, sorted.
pub(crate) struct Job {
    pub(crate) generation: u64,
    pub(crate) removed: Vec<Revision>,
}

#[derive(Debug, Default)]
pub(crate) struct GateState {
    /// Snapshot exports and defragmentations in progress.
    pub(crate) holds: usize,
    /// The active tree generation; jobs for older ones are dropped.
    pub(crate) generation: u64,
    /// The active tree, read at each batch: a defragmentation swaps it for its copy (same
    /// generation, same content) while jobs wait.
    pub(crate) tree: Option<sled::Tree>,
    /// Jobs submitted and not yet finished.
    pub(crate) queued: usize,
}

/// Coordinates the compactor with snapshot exports and restores.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    pub(crate) state: Mutex<GateState>,
    /// Signalled when a hold is released or a job finishes.
    released: Condvar,
}

impl Gate {
    pub(crate) fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until every submitted job has finished.
    pub(crate) fn wait_idle(&self) {
        let mut g = self.lock();
        while g.queued > 0 {
            g = self.released.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes a hold that keeps the compactor away until the returned guard drops.
    pub(crate) fn hold(self: &Arc<Self>) -> Hold {
        self.lock().holds += 1;
        Hold(Arc::clone(self))
    }
}

/// Dropping it releases a [`Gate::hold`].
#[derive(Debug)]
pub(crate) struct Hold(Arc<Gate>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.lock().holds -= 1;
        self.0.released.notify_all();
    }
}

/// The compactor thread; dropping the handle stops it after its current batch.
pub(crate) struct Compactor {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
    gate: Arc<Gate>,
}

impl Compactor {
    pub(crate) fn start(gate: Arc<Gate>) -> std::io::Result<Self> {
        let submitted = Arc::clone(&gate);
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = thread::Builder::new()
            .name("raftkv-compactor".into())
            .spawn(move || {
                for job in rx {
                    if let Err(e) = run(&gate, &job) {
                        tracing::error!(error = %e, "physical compaction failed; space stays in use until the next compaction");
                    }
                    gate.lock().queued -= 1;
                    gate.released.notify_all();
                }
            })?;
        Ok(Compactor {
            jobs: Some(tx),
            thread: Some(thread),
            gate: submitted,
        })
    }

    pub(crate) fn submit(&self, job: Job) {
        if job.removed.is_empty() {
            return;
        }
        if let Some(tx) = &self.jobs {
            self.gate.lock().queued += 1;
            // The thread only stops when this handle drops, so a send cannot fail before then.
            if tx.send(job).is_err() {
                self.gate.lock().queued -= 1;
            }
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(gate: &Gate, job: &Job) -> Result<(), sled::Error> {
    let lo = record::block_key(Revision::default());
    let mut i = 0;
    while i < job.removed.len() {
        let mut g = gate.lock();
        while g.holds > 0 {
            g = gate.released.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.generation != job.generation {
            return Ok(());
        }
        let Some(tree) = g.tree.clone() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let mut blocks = 0;
        while i < job.removed.len() && blocks < BLOCKS_PER_BATCH {
            let rev = job.removed[i];
            let Some(item) = tree.range(lo..=record::block_key(rev)).next_back() else {
                i += 1;
                continue;
            };
            let (key, value) = item?;
            let Some(records) = record::decode_block(&value) else {
                tracing::error!(block = ?key, "undecodable block skipped by compaction");
                i += 1;
                continue;
            };
            let last = records.last().map_or(rev, |r| r.rev);
            let start = i;
            while i < job.removed.len() && job.removed[i] <= last {
                i += 1;
            }
            if start == i {
                // Not in any block (already gone): skip it.
                i += 1;
                continue;
            }
            let dropped = &job.removed[start..i];
            let kept: Vec<&Record> = records
                .iter()
                .filter(|r| dropped.binary_search(&r.rev).is_err())
                .collect();
            if kept.is_empty() {
                batch.remove(key);
            } else if kept.len() < records.len() {
                batch.insert(key, record::encode_block(kept));
            }
            blocks += 1;
        }
        tree.apply_batch(batch)?;
        drop(g);
    }
    tracing::debug!(revisions = job.removed.len(), "physical compaction done");
    Ok(())
}
