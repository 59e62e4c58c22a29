//! The catalog locks: one `pgark serve` per catalog, one backup per server, and no backup
//! deleted while a restore reads it.
//!
//! An exclusive `flock` on `<catalog>/serve.lock`, which holds the owner's pid. The kernel drops
//! the lock when its process dies, so a lock left by a killed daemon is simply taken over (and
//! logged); a lock held by a live process is refused with its pid.
//!
//! `<catalog>/<server>/restore.lock` is shared: every `pgark restore` of the server holds it
//! for reading from before it chooses a backup until the last file is written, and
//! `delete-backup` needs it exclusively, so it is refused (not blocked) while a restore runs,
//! instead of removing chunks the restore is about to read.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "serve.lock";
pub const BACKUP_LOCK_FILE: &str = "backup.lock";
pub const RESTORE_LOCK_FILE: &str = "restore.lock";
pub const DRILL_LOCK_FILE: &str = "drill.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("catalog {path} is in use by another pgark serve (pid {pid}); stop it first or use another catalog")]
    Held { path: PathBuf, pid: String },
    #[error(
        "a backup or prune of server {server} is already running (pid {pid}, lock {path}; `pgark status` shows it); wait for it to finish"
    )]
    BackupRunning { server: String, path: PathBuf, pid: String },
    #[error("a pgark restore, verify or drill of server {server} is reading its backups (lock {path}); try again when it has finished")]
    RestoreRunning { server: String, path: PathBuf },
    #[error("lock file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held for the daemon's lifetime; dropping it releases the lock.
#[derive(Debug)]
pub struct CatalogLock {
    _file: File,
    pub path: PathBuf,
    /// The file holds this process's pid (an exclusive lock taken by `acquire_file`): emptied
    /// on release, so that only a lock left by a process that died names a pid to the next one.
    owns_pid: bool,
}

impl Drop for CatalogLock {
    fn drop(&mut self) {
        if self.owns_pid {
            // Still under the flock (closing the file releases it); a failure only costs the
            // next holder a needless "stale lock" warning.
            let _ = self._file.set_len(0);
        }
    }
}

impl CatalogLock {
    pub fn acquire(catalog: &Path) -> Result<CatalogLock, LockError> {
        Self::acquire_file(catalog.join(LOCK_FILE))
    }

    /// The lock a backup of `server` holds (`<catalog>/<server>/backup.lock`), so a scheduled
    /// backup and a `pgark backup` never build at once or collect each other's chunks.
    pub fn acquire_backup(catalog: &Path, server: &str) -> Result<CatalogLock, LockError> {
        let dir = catalog.join(server);
        // Durably: this may be the first thing to create `<catalog>/<server>`, under which
        // acknowledged WAL and published backups go.
        crate::fsio::durable::create_dir_durable(&dir).map_err(|e| LockError::Io {
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

    /// The shared lock a restore of `server` holds while it reads backups. Waits while a
    /// `delete-backup` holds it (that takes a moment). `None` when the lock file can neither be
    /// created nor opened (a catalog this user may only read): the restore goes on unprotected,
    /// and says so.
    pub fn acquire_restore_reader(catalog: &Path, server: &str) -> Result<Option<CatalogLock>, LockError> {
        let path = catalog.join(server).join(RESTORE_LOCK_FILE);
        let file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) {
            Ok(f) => f,
            Err(_) => match File::open(&path) {
                Ok(f) => f,
                Err(_) if !catalog.join(server).is_dir() => return Ok(None), // nothing to protect
                Err(e) => {
                    tracing::warn!(lock = %path.display(), error = %e, "cannot open the restore lock; a delete-backup running now could remove what this restore reads");
                    return Ok(None);
                }
            },
        };
        loop {
            // SAFETY: flock on a valid, owned file descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } == 0 {
                return Ok(Some(CatalogLock {
                    _file: file,
                    path,
                    owns_pid: false,
                }));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(LockError::Io { path, source: err });
            }
        }
    }

    /// One restore drill at a time on this catalog (`<catalog>/drill.lock`), whoever runs it
    /// (`pgark drill`, the daemon's schedule): two at once would double the disk and CPU a drill
    /// takes next to production. Refused at once with the holder's pid (`LockError::Held`).
    pub fn acquire_drill(catalog: &Path) -> Result<CatalogLock, LockError> {
        Self::acquire_file(catalog.join(DRILL_LOCK_FILE))
    }

    /// The exclusive side of the restore lock, taken by `delete-backup`: refused at once while
    /// any restore of `server` holds it.
    pub fn acquire_no_restore(catalog: &Path, server: &str) -> Result<CatalogLock, LockError> {
        let dir = catalog.join(server);
        let path = dir.join(RESTORE_LOCK_FILE);
        let io = |path: &Path, e| LockError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LockError::RestoreRunning {
                    server: server.to_string(),
                    path,
                });
            }
            return Err(io(&path, err));
        }
        Ok(CatalogLock {
            _file: file,
            path,
            owns_pid: false,
        })
    }

    /// Whether a `pgark serve` holds `<catalog>/serve.lock` now: `Some(pid as recorded)` if so
    /// (`pgark check`). Probed with a shared, non-blocking `flock` released at once; a daemon
    /// starting in that same instant is refused as if another one ran (exit 4) and can simply
    /// be started again. A missing lock file means no daemon has run here.
    pub fn serve_lock_holder(catalog: &Path) -> Result<Option<String>, LockError> {
        let path = catalog.join(LOCK_FILE);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LockError::Io { path, source: e }),
        };
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(None); // released when `file` is dropped
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(LockError::Io { path, source: err });
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        Ok(Some(if pid.is_empty() { "unknown".into() } else { pid.to_string() }))
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
        Ok(CatalogLock {
            _file: file,
            path,
            owns_pid: true,
        })
    }
}

/// A process holding one of a server's locks, as `pgark status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockHolder {
    /// `backup.lock` or `restore.lock`.
    pub lock: String,
    /// `exclusive` or `shared`.
    pub mode: String,
    pub pid: u32,
    /// The holder's command line, when readable (`pgark prune …`, `pgark serve …`).
    pub command: String,
}

/// Who holds `server`'s backup and restore locks now, from the kernel's table (`/proc/locks`):
/// reading it takes no lock, so looking never gets in a backup's way. Empty where the table is
/// not available.
pub fn holders(catalog: &Path, server: &str) -> Vec<LockHolder> {
    use std::os::unix::fs::MetadataExt;
    let Ok(table) = std::fs::read_to_string("/proc/locks") else {
        return vec![];
    };
    let mut out = Vec::new();
    for name in [BACKUP_LOCK_FILE, RESTORE_LOCK_FILE] {
        let Ok(meta) = std::fs::metadata(catalog.join(server).join(name)) else {
            continue;
        };
        for line in table.lines() {
            // "1: FLOCK  ADVISORY  WRITE 19732 fe:00:10049146 0 EOF"
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[1] != "FLOCK" {
                continue;
            }
            let inode = f[5].rsplit(':').next().and_then(|i| i.parse::<u64>().ok());
            let (Some(inode), Ok(pid)) = (inode, f[4].parse::<u32>()) else {
                continue;
            };
            if inode != meta.ino() {
                continue;
            }
            let command = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            out.push(LockHolder {
                lock: name.to_string(),
                mode: if f[3] == "WRITE" { "exclusive" } else { "shared" }.to_string(),
                pid,
                command,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_come_from_the_kernel_table() {
        let dir = tempfile::tempdir().unwrap();
        let b = CatalogLock::acquire_backup(dir.path(), "main").unwrap();
        let r = CatalogLock::acquire_restore_reader(dir.path(), "main").unwrap();
        let h = holders(dir.path(), "main");
        let me = std::process::id();
        assert!(
            h.iter().any(|h| h.lock == "backup.lock" && h.mode == "exclusive" && h.pid == me),
            "{h:?}"
        );
        assert!(
            h.iter().any(|h| h.lock == "restore.lock" && h.mode == "shared" && h.pid == me),
            "{h:?}"
        );
        drop((b, r));
        assert!(holders(dir.path(), "main").is_empty());
    }

    #[test]
    fn delete_is_refused_while_a_restore_reads_and_allowed_after() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("main")).unwrap();
        let r1 = CatalogLock::acquire_restore_reader(dir.path(), "main").unwrap();
        let r2 = CatalogLock::acquire_restore_reader(dir.path(), "main").unwrap();
        assert!(r1.is_some() && r2.is_some(), "restores share the lock");
        let err = CatalogLock::acquire_no_restore(dir.path(), "main").unwrap_err();
        assert!(matches!(err, LockError::RestoreRunning { .. }), "{err}");
        assert!(err.to_string().contains("drill of server main"), "{err}");
        drop(r1);
        assert!(
            CatalogLock::acquire_no_restore(dir.path(), "main").is_err(),
            "one restore still reads"
        );
        drop(r2);
        let del = CatalogLock::acquire_no_restore(dir.path(), "main").unwrap();
        drop(del);
        assert!(CatalogLock::acquire_restore_reader(dir.path(), "main").unwrap().is_some());
    }

    /// A clean release leaves no pid behind (the next holder has nothing to call stale); a lock
    /// left by a dead process keeps its pid until the next holder writes its own.
    #[test]
    fn a_released_lock_names_no_pid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("main")).unwrap();
        let path = dir.path().join("main").join(BACKUP_LOCK_FILE);
        let held = CatalogLock::acquire_backup(dir.path(), "main").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), std::process::id().to_string());
        drop(held);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::write(&path, "4194304\n").unwrap(); // a holder that died (SIGKILL)
        let held = CatalogLock::acquire_backup(dir.path(), "main").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), std::process::id().to_string());
        drop(held);
    }

    #[test]
    fn serve_lock_holder_sees_a_held_lock_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CatalogLock::serve_lock_holder(dir.path()).unwrap(), None);
        let held = CatalogLock::acquire(dir.path()).unwrap();
        let me = std::process::id().to_string();
        assert_eq!(CatalogLock::serve_lock_holder(dir.path()).unwrap(), Some(me));
        drop(held);
        assert_eq!(CatalogLock::serve_lock_holder(dir.path()).unwrap(), None);
        // The probe did not keep the lock.
        drop(CatalogLock::acquire(dir.path()).unwrap());
    }
}
