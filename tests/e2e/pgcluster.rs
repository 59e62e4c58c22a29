//! Throwaway PostgreSQL clusters for `pgark demo`, the tests and the benchmarks: initdb and
//! pg_ctl on a free port with a Unix socket in a temp dir. As root, the server runs as the
//! `postgres` OS user (PostgreSQL refuses root) with directories it owns.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where the PostgreSQL server binaries are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub major: u32,
}

impl PgBinaries {
    /// Finds binaries: `$PGARK_PG_BINDIR`, `initdb` on PATH, `pg_config --bindir`, then the
    /// newest `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<PgBinaries, String> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(d) = std::env::var("PGARK_PG_BINDIR") {
            candidates.push(PathBuf::from(d));
        }
        if let Ok(path) = std::env::var("PATH") {
            for dir in std::env::split_paths(&path) {
                if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                    candidates.push(dir);
                }
            }
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        debian.sort();
        candidates.extend(debian.into_iter().rev().map(|(_, p)| p));
        for dir in candidates {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() && dir.join("postgres").is_file() {
                return Self::at(&dir);
            }
        }
        Err("no PostgreSQL server binaries found: install postgresql (apt-get install postgresql) or set PGARK_PG_BINDIR to the directory holding initdb, pg_ctl and postgres".into())
    }

    pub fn at(dir: &Path) -> Result<PgBinaries, String> {
        let out = Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| format!("{}/postgres --version: {e}", dir.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = text
            .split_whitespace()
            .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
            .ok_or_else(|| format!("cannot read the version from {:?}", text.trim()))?;
        Ok(PgBinaries {
            bindir: dir.to_path_buf(),
            major,
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// A client tool (psql, pgbench, pg_basebackup…): from this bindir if present, else the
    /// system's (the embedded npm builds ship only server binaries).
    pub fn client(&self, name: &str) -> PathBuf {
        let own = self.bindir.join(name);
        if own.is_file() {
            return own;
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name);
            if p.is_file() {
                return p;
            }
        }
        PathBuf::from(name)
    }
}

/// Whether we are root (and so must run PostgreSQL as `postgres`).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free TCP port on 127.0.0.1 (racy by nature; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54329)
}

/// Runs a command as the cluster's OS user.
fn as_owner(cmd: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

fn chown_postgres(path: &Path) -> Result<(), String> {
    let st = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("chown postgres {} failed", path.display()))
    }
}

fn check(out: Output, what: &str) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// The bootstrap superuser initdb creates: `postgres` when we run servers as that OS user.
fn bootstrap_superuser(root: bool) -> String {
    if root {
        "postgres".to_string()
    } else {
        std::env::var("USER").unwrap_or_else(|_| "postgres".into())
    }
}

/// A running (or stopped) throwaway cluster. Dropping it stops the server and removes its files.
pub struct Cluster {
    pub bins: PgBinaries,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The bootstrap superuser's name.
    pub superuser: String,
    root: bool,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Cluster {
    /// initdb a new cluster with settings for replication tests and trust auth on the socket.
    pub fn init(bins: &PgBinaries, extra_conf: &[&str]) -> Result<Cluster, String> {
        Self::init_with(bins, extra_conf, &[])
    }

    /// Like `init`, with extra initdb arguments (e.g. `--wal-segsize=1`).
    pub fn init_with(bins: &PgBinaries, extra_conf: &[&str], initdb_args: &[&str]) -> Result<Cluster, String> {
        let root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("pgark-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).map_err(|e| format!("create {}: {e}", socket_dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        if root {
            chown_postgres(dir.path())?;
        }
        let superuser = bootstrap_superuser(root);
        let out = as_owner(&bins.bin("initdb"), root)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", &superuser, "--no-sync", "-E", "UTF8", "--locale=C"])
            .args(initdb_args)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        check(out, "initdb")?;
        let port = free_port();
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nfsync = on\nshared_buffers = 64MB\nlogging_collector = off\nwal_keep_size = 0\nmax_wal_size = 256MB\nmin_wal_size = 32MB\n",
            socket_dir.display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf)?;
        append(
            &data.join("pg_hba.conf"),
            "\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        Ok(Self::assemble(bins, dir, data, port))
    }

    /// Wraps an existing data directory (e.g. a restored backup) in this harness's conventions.
    pub fn from_data_dir(bins: &PgBinaries, dir: tempfile::TempDir, data: PathBuf, port: u16) -> Result<Cluster, String> {
        let root = running_as_root();
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).map_err(|e| e.to_string())?;
        if root {
            chown_postgres(dir.path())?;
        }
        Ok(Self::assemble(bins, dir, data, port))
    }

    fn assemble(bins: &PgBinaries, dir: tempfile::TempDir, data: PathBuf, port: u16) -> Cluster {
        let root = running_as_root();
        Cluster {
            bins: bins.clone(),
            data,
            socket_dir: dir.path().join("sock"),
            port,
            superuser: bootstrap_superuser(root),
            root,
            log: dir.path().join("server.log"),
            _dir: dir,
        }
    }

    /// The temp dir this cluster lives in (for sibling files such as backups).
    pub fn base_dir(&self) -> &Path {
        self._dir.path()
    }

    /// Appends settings to postgresql.conf (effective at the next start or reload).
    pub fn append_conf(&self, text: &str) -> Result<(), String> {
        append(&self.data.join("postgresql.conf"), &format!("\n{text}\n"))
    }

    /// Replaces pg_hba.conf.
    pub fn write_hba(&self, text: &str) -> Result<(), String> {
        std::fs::write(self.data.join("pg_hba.conf"), text).map_err(|e| e.to_string())?;
        if self.root {
            chown_postgres(&self.data.join("pg_hba.conf"))?;
        }
        Ok(())
    }

    pub fn start(&self) -> Result<(), String> {
        let out = as_owner(&self.bins.bin("pg_ctl"), self.root)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        check(out, "pg_ctl start")
            .map(|_| ())
            .map_err(|e| format!("{e}\nserver log:\n{}", self.log_tail()))
    }

    /// Stops the server: mode is smart, fast or immediate.
    pub fn stop(&self, mode: &str) -> Result<(), String> {
        let out = as_owner(&self.bins.bin("pg_ctl"), self.root)
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", mode, "stop"])
            .output()
            .map_err(|e| format!("pg_ctl stop: {e}"))?;
        check(out, "pg_ctl stop").map(|_| ())
    }

    pub fn reload(&self) -> Result<(), String> {
        let out = as_owner(&self.bins.bin("pg_ctl"), self.root)
            .arg("-D")
            .arg(&self.data)
            .arg("reload")
            .output()
            .map_err(|e| e.to_string())?;
        check(out, "pg_ctl reload").map(|_| ())
    }

    pub fn promote(&self) -> Result<(), String> {
        let out = as_owner(&self.bins.bin("pg_ctl"), self.root)
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "promote"])
            .output()
            .map_err(|e| e.to_string())?;
        check(out, "pg_ctl promote").map(|_| ())
    }

    /// SIGKILLs the postmaster (the worst moment is the caller's choice).
    pub fn kill9(&self) -> Result<(), String> {
        let pid = self.postmaster_pid().ok_or("no postmaster.pid")?;
        // SAFETY: kill with a pid read from postmaster.pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..100 {
            // SAFETY: signal 0 only probes for existence.
            if unsafe { libc::kill(pid, 0) } != 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Children notice the postmaster's death on their own; give them a moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// A libpq connection string over the Unix socket.
    pub fn conninfo(&self, user: &str) -> String {
        format!("host={} port={} user={user}", self.socket_dir.display(), self.port)
    }

    /// Runs SQL with psql as the superuser; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bins.client("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", &self.superuser, "-d", "postgres", "-c", sql])
            .env("PGSSLMODE", "disable")
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        check(out, &format!("psql {sql:?}")).map(|s| s.trim().to_string())
    }

    pub fn pg_wal(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn is_root(&self) -> bool {
        self.root
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.stop("immediate");
        }
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))
}
