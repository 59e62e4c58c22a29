//! Size-limited tmpfs mounts (a full or small catalog filesystem, a read-only one). Mounting
//! needs root and mount permission; where that is missing the constructors return `None` and
//! the callers skip with a message saying so.

use pgark::util::os::running_as_root;
use std::path::{Path, PathBuf};
use std::process::Command;

fn mount_tmpfs(options: &str, at: &Path) -> bool {
    running_as_root()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success())
}

/// A tmpfs mounted on an existing directory (a catalog, a volume inside one), unmounted on drop.
pub struct MountedFs {
    path: PathBuf,
}

impl MountedFs {
    /// Mounts a tmpfs with mount `options` (`size=40m`, `ro,size=1m`) on the directory `path`.
    pub fn at(path: &Path, options: &str) -> Option<MountedFs> {
        mount_tmpfs(options, path).then(|| MountedFs { path: path.to_path_buf() })
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A size-limited tmpfs on a temporary directory of its own, unmounted on drop.
pub struct SmallFs {
    pub dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::Builder::new().prefix("pgark-smallfs-").tempdir().ok()?;
        mount_tmpfs(&format!("size={size}"), dir.path()).then_some(SmallFs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
