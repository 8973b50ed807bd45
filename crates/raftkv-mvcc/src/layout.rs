//! The store's directory. sled never gives space back to the file system, so the live database
//! is one numbered copy, `sled-<n>`, named by the file `CURRENT`; defragmenting writes the next
//! copy beside it, switches `CURRENT` by an atomic rename and deletes the old copy. A crash at any
//! point leaves `CURRENT` naming a complete copy; copies it does not name are leftovers, removed
//! when the store opens.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const CURRENT: &str = "CURRENT";
const PREFIX: &str = "sled-";

/// The store directory and the number of its live copy.
#[derive(Debug)]
pub(crate) struct Layout {
    root: PathBuf,
}

fn dir_error(path: &Path, source: std::io::Error) -> Error {
    Error::Dir {
        path: path.to_path_buf(),
        source,
    }
}

impl Layout {
    /// Opens (creating it if needed) the directory at `root`; returns it with the number of the
    /// live copy, after removing every other copy.
    pub(crate) fn open(root: &Path) -> Result<(Layout, u64)> {
        fs::create_dir_all(root).map_err(|e| dir_error(root, e))?;
        let layout = Layout {
            root: root.to_path_buf(),
        };
        let current_path = root.join(CURRENT);
        let live = match fs::read_to_string(&current_path) {
            Ok(s) => parse_copy(s.trim()).ok_or_else(|| Error::Corrupt {
                path: current_path.clone(),
                what: format!("CURRENT names {:?}", s.trim()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                layout.switch(0)?;
                0
            }
            Err(e) => return Err(dir_error(&current_path, e)),
        };
        for entry in fs::read_dir(root).map_err(|e| dir_error(root, e))? {
            let entry = entry.map_err(|e| dir_error(root, e))?;
            let name = entry.file_name();
            match name.to_str().and_then(parse_copy) {
                Some(n) if n != live => {
                    tracing::info!(path = %entry.path().display(), "removing a stale store copy");
                    layout.remove(n)?;
                }
                _ => {}
            }
        }
        Ok((layout, live))
    }

    /// The directory of copy `n`.
    pub(crate) fn dir(&self, n: u64) -> PathBuf {
        self.root.join(format!("{PREFIX}{n}"))
    }

    /// Makes copy `n` the live one: `CURRENT` is replaced by rename, then the directory synced.
    /// An error means `CURRENT` still names the old copy; once the rename is done the switch
    /// counts as made (a failed directory sync is only logged).
    pub(crate) fn switch(&self, n: u64) -> Result<()> {
        let tmp = self.root.join("CURRENT.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            writeln!(f, "{PREFIX}{n}")?;
            f.sync_all()?;
            fs::rename(&tmp, self.root.join(CURRENT))
        };
        write().map_err(|e| dir_error(&self.root, e))?;
        if let Err(e) = fs::File::open(&self.root).and_then(|d| d.sync_all()) {
            tracing::warn!(path = %self.root.display(), error = %e, "cannot sync the store directory after switching copies");
        }
        Ok(())
    }

    /// Deletes copy `n` (nothing if it does not exist).
    pub(crate) fn remove(&self, n: u64) -> Result<()> {
        let dir = self.dir(n);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(dir_error(&dir, e)),
        }
    }
}

fn parse_copy(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_starts_at_copy_zero_and_stale_copies_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, live) = Layout::open(dir.path()).unwrap();
        assert_eq!(live, 0);
        fs::create_dir_all(layout.dir(0)).unwrap();
        fs::create_dir_all(layout.dir(1)).unwrap();
        fs::write(layout.dir(1).join("db"), b"half written").unwrap();
        // Copy 1 never became live: it goes on the next open.
        let (layout, live) = Layout::open(dir.path()).unwrap();
        assert_eq!(live, 0);
        assert!(layout.dir(0).exists() && !layout.dir(1).exists());
        // Once switched, copy 0 is the stale one.
        fs::create_dir_all(layout.dir(1)).unwrap();
        layout.switch(1).unwrap();
        let (layout, live) = Layout::open(dir.path()).unwrap();
        assert_eq!(live, 1);
        assert!(!layout.dir(0).exists() && layout.dir(1).exists());
    }

    #[test]
    fn a_garbled_current_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CURRENT), "elsewhere\n").unwrap();
        let e = Layout::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("CURRENT names"), "{e}");
    }
}
