//! The toy state machine: an append-only register log of `(index, term, data)` that persists
//! itself to one file (write a temporary file, then rename) and reloads it on restart.

use std::fs;
use std::path::{Path, PathBuf};

use raftkv_raft::StateMachine;

/// A copy of a register's state, as the separate snapshot state stream would carry it.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    /// The log index the state reflects (the sender's applied index).
    pub(crate) applied: u64,
    /// The applied entries.
    pub(crate) entries: Vec<(u64, u64, Vec<u8>)>,
}

/// The register log of one node.
pub(crate) struct Register {
    path: PathBuf,
    /// Applied index: the last applied entry's, or what an installed image reflected.
    pub(crate) applied: u64,
    /// Every applied normal entry with a payload, in index order.
    pub(crate) entries: Vec<(u64, u64, Vec<u8>)>,
}

impl Register {
    /// The register persisted in `dir`, or an empty one.
    pub(crate) fn load(dir: &Path) -> Register {
        let path = dir.join("register");
        let mut reg = Register {
            path,
            applied: 0,
            entries: Vec::new(),
        };
        let Ok(bytes) = fs::read(&reg.path) else {
            return reg;
        };
        let mut r = Reader(&bytes);
        reg.applied = r.u64();
        let n = r.u64();
        for _ in 0..n {
            let (index, term, len) = (r.u64(), r.u64(), r.u64() as usize);
            reg.entries.push((index, term, r.take(len).to_vec()));
        }
        reg
    }

    /// The state to ship with a snapshot.
    pub(crate) fn image(&self, applied: u64) -> Image {
        Image {
            applied: applied.max(self.applied),
            entries: self.entries.clone(),
        }
    }

    /// Replaces the state with a newer one received beside a snapshot, durably (a restore is
    /// atomic and durable before the snapshot message is stepped).
    pub(crate) fn install(&mut self, image: &Image) {
        self.applied = image.applied;
        self.entries = image.entries.clone();
        self.persist().expect("persist installed image");
    }
}

impl StateMachine for Register {
    /// The entry's term and data, for the harness's invariant checks.
    type Output = (u64, Vec<u8>);

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Option<Self::Output> {
        if index <= self.applied {
            return None;
        }
        self.applied = index;
        self.entries.push((index, term, data.to_vec()));
        Some((term, data.to_vec()))
    }

    fn persist(&mut self) -> Result<(), String> {
        let mut buf = Vec::new();
        buf.extend(self.applied.to_le_bytes());
        buf.extend((self.entries.len() as u64).to_le_bytes());
        for (index, term, data) in &self.entries {
            buf.extend(index.to_le_bytes());
            buf.extend(term.to_le_bytes());
            buf.extend((data.len() as u64).to_le_bytes());
            buf.extend(data);
        }
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, &buf).map_err(|e| e.to_string())?;
        fs::rename(&tmp, &self.path).map_err(|e| e.to_string())
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
}
