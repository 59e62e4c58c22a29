//! The drill's scratch directory and the PostgreSQL it starts there.
//!
//! Layout: `<drill.path>/<server>-<unix time>-<pid>/` holding `data/` (the restore),
//! `tblspc/<oid>/` (its tablespaces), `sock/` (the Unix socket directory, mode 0700), `pg_hba.conf`
//! (trust over that socket only), `postgres.log` and, when PostgreSQL runs as another user, a copy
//! of the pgark binary for its `restore_command`. As root, everything below the scratch directory
//! belongs to `drill.os_user` and PostgreSQL runs as that user.
//!
//! The postmaster is our child (not daemonized by `pg_ctl`), in a process group of its own (a
//! Ctrl-C on the terminal reaches pgark, which then stops it), so that its exit is seen at once
//! and it never outlives the drill: `Postmaster`'s drop stops it immediately if nobody did.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The drill's own directory, removed on drop unless kept.
pub struct Scratch {
    pub dir: PathBuf,
    /// uid and gid PostgreSQL runs as (`None`: as this process).
    pub owner: Option<(u32, u32)>,
    pub keep: bool,
}

impl Scratch {
    /// Creates `<base>/<server>-<started>-<pid>`: `base` searchable by everyone (so that the
    /// server's user reaches its directory; created 0711 when missing), the scratch directory
    /// 0700 and owned by `owner`.
    pub fn create(base: &Path, server: &str, started: u64, owner: Option<(u32, u32)>, keep: bool) -> Result<Scratch, String> {
        if !base.exists() {
            std::fs::create_dir_all(base).map_err(|e| format!("create {}: {e}", base.display()))?;
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711)).map_err(|e| format!("chmod {}: {e}", base.display()))?;
        }
        let dir = base.join(format!("{server}-{started}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let s = Scratch { dir, owner, keep };
        std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("chmod {}: {e}", s.dir.display()))?;
        let sock = s.socket_dir();
        std::fs::create_dir(&sock).map_err(|e| format!("create {}: {e}", sock.display()))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("chmod {}: {e}", sock.display()))?;
        s.chown(&s.dir)?;
        s.chown(&sock)?;
        Ok(s)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn tablespace_dir(&self, oid: u32) -> PathBuf {
        self.dir.join("tblspc").join(oid.to_string())
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn hba_file(&self) -> PathBuf {
        self.dir.join("pg_hba.conf")
    }

    /// Gives `path` to the server's user (nothing to do without one).
    pub fn chown(&self, path: &Path) -> Result<(), String> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Writes a file of the drill (not a crash-safety matter: the directory is thrown away).
    pub fn write(&self, path: &Path, text: &str, mode: u32) -> Result<(), String> {
        std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {}: {e}", path.display()))?;
        self.chown(path)
    }

    /// The end of PostgreSQL's log (the last `lines` lines), for a failure report.
    pub fn log_tail(&self, lines: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.log_file()).ok()?;
        let all: Vec<&str> = text.lines().collect();
        Some(all[all.len().saturating_sub(lines)..].join("\n"))
    }

    /// Removes the directory. A `pgark wal-prefetch` that recovery started may still be
    /// finishing a file in `pg_wal/` for a moment: retried a few times.
    pub fn remove(&self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("remove {}: {last}", self.dir.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = self.remove() {
                tracing::warn!(error = %e, "cannot remove the drill's scratch directory");
            }
        }
    }
}

/// The file that marks a scratch directory kept on purpose (`--keep`): never swept.
pub const KEPT_MARKER: &str = "KEPT_BY_PGARK_DRILL";

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes the scratch directories of `server`'s earlier drills whose pgark process is gone (it
/// was killed: nothing else leaves one behind), unless kept on purpose. A PostgreSQL still
/// running in one (an orphan of that drill) is stopped at once first. Returns what was removed.
pub fn sweep_stale(base: &Path, server: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(base) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{server}-")) else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(time), Some(pid), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(_), Ok(pid)) = (time.parse::<u64>(), pid.parse::<i32>()) else {
            continue;
        };
        let dir = e.path();
        if pid == std::process::id() as i32 || alive(pid) || dir.join(KEPT_MARKER).exists() {
            continue;
        }
        let pm = std::fs::read_to_string(dir.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        // Only a postmaster whose working directory is this drill's data directory: after a
        // reboot the pid may belong to anything, the production PostgreSQL included.
        let data = dir.join("data");
        let ours = |p: i32| {
            let cwd = std::fs::read_link(format!("/proc/{p}/cwd")).ok();
            let data = std::fs::canonicalize(&data).unwrap_or_else(|_| data.clone());
            cwd.is_some_and(|c| c == data)
        };
        if let Some(pm) = pm.filter(|p| alive(*p) && ours(*p)) {
            tracing::warn!(dir = %dir.display(), pid = pm, "stopping the PostgreSQL a killed drill left running");
            // SAFETY: signalling a pid read from the drill's own postmaster.pid, checked alive.
            unsafe {
                libc::kill(pm, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pm) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the scratch directory of a drill that was killed");
                removed.push(dir);
            }
            Err(err) => tracing::warn!(dir = %dir.display(), error = %err, "cannot remove the scratch directory of a killed drill"),
        }
    }
    removed
}

/// A running postmaster, stopped at once (SIGQUIT, then SIGKILL) if dropped while it runs.
pub struct Postmaster {
    child: Child,
    pub started: Instant,
}

impl Postmaster {
    /// `postgres -D <data>` as `owner` (when set), output appended to the log file.
    pub fn start(postgres: &Path, scratch: &Scratch) -> Result<Postmaster, String> {
        let log_path = scratch.log_file();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        scratch.chown(&log_path)?;
        let err = log.try_clone().map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(postgres);
        cmd.arg("-D")
            .arg(scratch.data_dir())
            .current_dir(&scratch.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        if let Some((uid, gid)) = scratch.owner {
            // std drops the supplementary groups when a root parent sets the uid.
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", postgres.display()))?;
        Ok(Postmaster {
            child,
            started: Instant::now(),
        })
    }

    /// `Some(status)` once the postmaster has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid; it is not reaped before `wait` below, so the pid
        // cannot belong to another process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Fast shutdown (SIGINT), waiting at most `limit`; then immediate (SIGQUIT), then SIGKILL.
    /// The error says which escalation was needed.
    pub fn stop(&mut self, limit: Duration) -> Result<(), String> {
        for (sig, wait, name) in [
            (libc::SIGINT, limit, "fast"),
            (libc::SIGQUIT, Duration::from_secs(10), "immediate"),
            (libc::SIGKILL, Duration::from_secs(10), "SIGKILL"),
        ] {
            if self.exited().is_some() {
                return if name == "fast" {
                    Ok(())
                } else {
                    Err(format!(
                        "the fast shutdown took longer than {}s; stopped it another way",
                        limit.as_secs()
                    ))
                };
            }
            self.signal(sig);
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if self.exited().is_some() {
                    return if name == "fast" {
                        Ok(())
                    } else {
                        Err(format!(
                            "the fast shutdown took longer than {}s; stopped with {name}",
                            limit.as_secs()
                        ))
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err("the postmaster did not exit even after SIGKILL".into())
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.stop(Duration::ZERO);
        }
    }
}

/// A free TCP port number. With `listen_addresses = ''` it only names the socket file in the
/// drill's private socket directory, so it can never clash with production; a free one anyway
/// keeps `pg_stat_activity`-style tooling and humans from confusing it with a real port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54329)
}
