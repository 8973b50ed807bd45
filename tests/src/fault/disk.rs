//! A small filesystem for a data directory, to make a member's disk fill up: a size-limited
//! tmpfs mounted over the directory.
//!
//! Mounting needs root (or `CAP_SYS_ADMIN`). [`SmallDisk::mount`] returns `Err` with the reason
//! when the machine does not allow it, so a test can skip with that message instead of failing
//! (a developer's unprivileged shell; CI as root can). The mount is lazily unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tmpfs of a fixed size mounted over a directory. Unmounted (lazily) on drop.
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
    mounted: bool,
}

impl SmallDisk {
    /// Mounts a `bytes`-sized tmpfs over `path` (created if missing; what it held is hidden
    /// while mounted). `Err` explains why it cannot be done here.
    pub fn mount(path: &Path, bytes: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg("tmpfs")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mounting a tmpfs needs root or CAP_SYS_ADMIN; `mount -t tmpfs` said: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            path: path.to_path_buf(),
            mounted: true,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts now (lazily: processes still holding files keep them until they close).
    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        let out = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run umount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "umount {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.mounted = false;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "cannot unmount a test tmpfs");
        }
    }
}

/// The total size of the files under `dir`.
pub fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Copies the tree under `from` into `to` (created if missing).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
