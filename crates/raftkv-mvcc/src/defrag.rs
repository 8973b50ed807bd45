//! Online defragmentation. sled reuses the space compaction frees but never returns it to the
//! file system, so the store copies its live database into a fresh one and switches to it, while
//! reads and writes go on:
//!
//! 1. Mirroring starts: from now on every batch the store commits is also kept aside.
//! 2. The live trees are copied into the next copy's directory, no lock held. The copy may see
//!    some of the batches committed meanwhile, or parts of them: that does not matter, because
//! 3. the mirrored batches are then replayed onto the copy in commit order (each one sets or
//!    removes whole keys, so replaying a batch the copy already saw changes nothing), in rounds,
//!    until few are left;
//! 4. under the write lock, for about as long as one commit takes: the last batches are
//!    replayed, the copy flushed, `CURRENT` switched and the store's handles swapped.
//!
//! The physical compactor waits for the whole of it (its batches change the tree without going
//! through a commit), and so does a snapshot restore. A failure at any step before the switch
//! leaves the store on its old copy, unchanged.

use std::time::Instant;

use crate::compactor::Hold;
use crate::error::{Error, Result};
use crate::store::{commit_locked, open_sled, tree_name, Store, ACTIVE};

/// Replay rounds end once a round has at most this many batches left to replay.
const FEW_BATCHES: usize = 4;
/// Entries copied per sled batch.
const COPY_BATCH: usize = 1024;

/// What a defragmentation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defragmented {
    /// Bytes on disk before.
    pub before: u64,
    /// Bytes on disk after.
    pub after: u64,
    /// Batches committed while the copy was made, replayed onto it.
    pub replayed: usize,
    /// Microseconds writes waited for the switch.
    pub pause_micros: u64,
}

impl Store {
    /// Rewrites the store into a fresh database and switches to it, returning the space that
    /// compacted revisions and deleted keys left behind. Reads and writes continue meanwhile
    /// (they wait only for the final switch). Blocks the calling thread for the copy: run it off
    /// any async executor. On error the store is unchanged and keeps serving.
    pub fn defragment(&self) -> Result<Defragmented> {
        let mut copy = self.copy();
        let hold = self.gate().hold();
        let (db, tree) = {
            let mut st = self.write()?;
            commit_locked(&mut st)?;
            st.mirror = Some(Vec::new());
            (st.db.clone(), st.tree.clone())
        };
        let before = db.size_on_disk()?;
        let next = *copy + 1;
        let done = self.copy_and_switch(&db, &tree, next, hold);
        // Stop mirroring whatever happened.
        if let Ok(mut st) = self.write() {
            st.mirror = None;
        }
        let (replayed, pause_micros, old_in_use) = match done {
            Ok(v) => v,
            Err(e) => {
                if let Err(rm) = self.layout().remove(next) {
                    tracing::warn!(error = %rm, "cannot remove an abandoned store copy; it goes at the next open");
                }
                return Err(Error::Defragment(Box::new(e)));
            }
        };
        let old = *copy;
        *copy = next;
        drop((db, tree));
        let after = self.size_on_disk()?;
        if old_in_use {
            // A snapshot export still streams from the old copy: it goes at the next open.
            tracing::info!(
                copy = old,
                "old store copy still read by a snapshot; kept until restart"
            );
        } else if let Err(e) = self.layout().remove(old) {
            tracing::warn!(error = %e, "cannot remove the old store copy; it goes at the next open");
        }
        tracing::info!(before, after, replayed, pause_micros, "store defragmented");
        Ok(Defragmented {
            before,
            after,
            replayed,
            pause_micros,
        })
    }

    /// Steps 2-4: copies `db` (active tree `tree`) into copy `next` and switches to it. Returns
    /// the batches replayed, the final pause, and whether another hold (a snapshot export) still
    /// reads the old copy.
    fn copy_and_switch(
        &self,
        db: &sled::Db,
        tree: &sled::Tree,
        next: u64,
        hold: Hold,
    ) -> Result<(usize, u64, bool)> {
        self.layout().remove(next)?;
        let new_db = open_sled(self.config(), &self.layout().dir(next))?;
        let active = db.get(ACTIVE)?;
        if let Some(g) = &active {
            new_db.insert(ACTIVE, g)?;
        }
        let name = tree.name();
        let new_tree = new_db.open_tree(&name)?;
        copy_tree(tree, &new_tree)?;
        let mut replayed = 0;
        loop {
            let batches = {
                let mut st = self.write()?;
                std::mem::take(st.mirror.get_or_insert_with(Vec::new))
            };
            let n = batches.len();
            for b in batches {
                new_tree.apply_batch(b)?;
            }
            replayed += n;
            if n <= FEW_BATCHES {
                break;
            }
        }
        // Most of the copy reaches disk now, so the flush under the lock is short.
        new_db.flush()?;
        let mut st = self.write()?;
        let paused = Instant::now();
        commit_locked(&mut st)?;
        for b in st.mirror.take().unwrap_or_default() {
            new_tree.apply_batch(b)?;
            replayed += 1;
        }
        new_db.flush()?;
        // Until here nothing the store uses has changed; from here the copy is the store.
        self.layout().switch(next)?;
        st.db = new_db;
        st.tree = new_tree.clone();
        let old_in_use = {
            let mut g = self.gate().lock();
            debug_assert_eq!(tree_name(g.generation).as_bytes(), name.as_ref());
            g.tree = Some(new_tree);
            g.holds > 1
        };
        drop(st);
        drop(hold);
        Ok((replayed, paused.elapsed().as_micros() as u64, old_in_use))
    }
}

/// Copies every entry of `from` into `to`, in batches.
fn copy_tree(from: &sled::Tree, to: &sled::Tree) -> Result<()> {
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for item in from.iter() {
        let (k, v) = item?;
        batch.insert(k, v);
        n += 1;
        if n == COPY_BATCH {
            to.apply_batch(std::mem::take(&mut batch))?;
            n = 0;
        }
    }
    to.apply_batch(batch)?;
    Ok(())
}
