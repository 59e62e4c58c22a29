//! The catalog locks: one `pgark serve` per catalog, one backup per server.
//!
//! An exclusive `flock` on `<catalog>/serve.lock`, which holds the owner's pid. The kernel drops
//! the lock when its process dies, so a lock left by a killed daemon is simply taken over (and
//! logged); a lock held by a live process is refused with its pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "serve.lock";
pub const BACKUP_LOCK_FILE: &str = "backup.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("catalog {path} is in use by another pgark serve (pid {pid}); stop it first or use another catalog")]
    Held { path: PathBuf, pid: String },
    #[error("a backup of server {server} is already running (pid {pid}, lock {path}); wait for it to finish")]
    BackupRunning { server: String, path: PathBuf, pid: String },
    #[error("lock file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held for the daemon's lifetime; dropping it releases the lock.
#[derive(Debug)]
pub struct CatalogLock {
    _file: File,
    pub path: PathBuf,
}

impl CatalogLock {
    pub fn acquire(catalog: &Path) -> Result<CatalogLock, LockError> {
        Self::acquire_file(catalog.join(LOCK_FILE))
    }

    /// The lock a backup of `server` holds (`<catalog>/<server>/backup.lock`), so a scheduled
    /// backup and a `pgark backup` never build at once or collect each other's chunks.
    pub fn acquire_backup(catalog: &Path, server: &str) -> Result<CatalogLock, LockError> {
        let dir = catalog.join(server);
        std::fs::create_dir_all(&dir).map_err(|e| LockError::Io {
            path: dir.clone(),
            source: e,
        })?;
        Self::acquire_file(dir.join(BACKUP_LOCK_FILE)).map_err(|e| match e {
            LockError::Held { path, pid } => LockError::BackupRunning {
                server: server.to_string(),
                path,
                pid,
            },
            other => other,
        })
    }

    fn acquire_file(path: PathBuf) -> Result<CatalogLock, LockError> {
        let io = |e| LockError::Io {
            path: path.clone(),
            source: e,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim().to_string();
        // SAFETY: flock on a valid, owned file descriptor has no memory-safety requirements.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LockError::Held {
                    path,
                    pid: if previous.is_empty() { "unknown".into() } else { previous },
                });
            }
            return Err(io(err));
        }
        let me = std::process::id().to_string();
        if !previous.is_empty() && previous != me {
            tracing::warn!(lock = %path.display(), stale_pid = %previous, "taking over a stale catalog lock left by a process that is gone");
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(format!("{me}\n").as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(CatalogLock { _file: file, path })
    }
}
