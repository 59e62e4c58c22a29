//! Throwaway PostgreSQL clusters for the tests: initdb and pg_ctl on a reserved port
//! (`support::ports`) with a Unix socket in a temp dir. As root, the server runs as the
//! `postgres` OS user (PostgreSQL refuses root) with directories it owns.
//!
//! The server log is checked when a cluster is dropped (and by `check_log`): an `ERROR:` or
//! `PANIC:` line fails the test unless the test declared it with `expect_log`, saying why.

use super::ports::{self, Port};
use pgark::pg::{Lsn, WalSegSize};
use pgark::util::os::running_as_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

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

/// As root, gives `path` (recursively) to the `postgres` OS user the servers run as; nothing
/// otherwise.
pub fn chown_postgres(path: &Path) -> Result<(), String> {
    if !running_as_root() {
        return Ok(());
    }
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

/// `ERROR:` lines that every cluster may log, whatever the test: pgark's own doing, by design.
/// Each entry: substrings that must all be in the line, and why.
const PGARK_BY_DESIGN: &[(&[&str], &str)] = &[(
    &["ERROR:  replication slot \"pgark_", "\" already exists"],
    // Before PostgreSQL 15 (no READ_REPLICATION_SLOT) the receiver creates its slot if missing
    // by sending CREATE_REPLICATION_SLOT at the start of every replication session and taking
    // SQLSTATE 42710 (duplicate_object) as "it exists" (`pg_receivewal --create-slot
    // --if-not-exists` does the same); the server logs that as an ERROR at each reconnect. From
    // 15 on pgark asks first, so there the line is not expected (see `check_log`).
    "pgark's create-if-missing of its replication slot",
)];

/// A running (or stopped) throwaway cluster. Dropping it stops the server, checks its log (see
/// `check_log`) and removes its files.
pub struct Cluster {
    pub bins: PgBinaries,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The bootstrap superuser's name.
    pub superuser: String,
    root: bool,
    /// The server log's `ERROR:`/`PANIC:` lines that the test expects (substrings).
    expected_log: Mutex<Vec<String>>,
    // Dropped after the server is stopped (in `drop`): the port stays reserved until then.
    _port: Port,
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
        chown_postgres(dir.path())?;
        let superuser = bootstrap_superuser(root);
        let out = as_owner(&bins.bin("initdb"), root)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", &superuser, "--no-sync", "-E", "UTF8", "--locale=C"])
            .args(initdb_args)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        check(out, "initdb")?;
        let port = ports::reserve();
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

    /// Wraps an existing data directory (a restored backup, a standby's copy) in this harness's
    /// conventions: a port of its own and the socket in `dir`, appended to its postgresql.conf;
    /// everything under `dir` given to the server's OS user.
    pub fn from_data_dir(bins: &PgBinaries, dir: tempfile::TempDir, data: PathBuf) -> Result<Cluster, String> {
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).map_err(|e| e.to_string())?;
        let port = ports::reserve();
        append(
            &data.join("postgresql.conf"),
            &format!("\nport = {port}\nunix_socket_directories = '{}'\n", socket_dir.display()),
        )?;
        chown_postgres(dir.path())?;
        Ok(Self::assemble(bins, dir, data, port))
    }

    fn assemble(bins: &PgBinaries, dir: tempfile::TempDir, data: PathBuf, port: Port) -> Cluster {
        let root = running_as_root();
        Cluster {
            bins: bins.clone(),
            data,
            socket_dir: dir.path().join("sock"),
            port: port.get(),
            superuser: bootstrap_superuser(root),
            root,
            expected_log: Mutex::new(Vec::new()),
            _port: port,
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
        chown_postgres(&self.data.join("pg_hba.conf"))
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

    /// Declares that the server log may hold `ERROR:`/`PANIC:` lines containing `substring`:
    /// the test provokes them. Say why in a comment where it is called.
    pub fn expect_log(&self, substring: &str) {
        self.expected_log.lock().unwrap().push(substring.to_string());
    }

    /// The server log's `ERROR:` and `PANIC:` lines that no `expect_log` covers.
    pub fn unexpected_log_errors(&self) -> Vec<String> {
        let expected = self.expected_log.lock().unwrap().clone();
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR:") || l.contains("PANIC:"))
            .filter(|l| self.bins.major >= 15 || !PGARK_BY_DESIGN.iter().any(|(parts, _)| parts.iter().all(|p| l.contains(p))))
            .filter(|l| !expected.iter().any(|e| l.contains(e.as_str())))
            .map(str::to_string)
            .collect()
    }

    /// Panics when the server log has an `ERROR:` or `PANIC:` line the test did not declare
    /// with `expect_log`. Runs by itself when the cluster is dropped (unless the test is already
    /// failing).
    pub fn check_log(&self) {
        let bad = self.unexpected_log_errors();
        if !bad.is_empty() {
            panic!(
                "the server log of the cluster on port {} ({}) has {} unexpected ERROR/PANIC line(s); a test that provokes them declares them with Cluster::expect_log:\n{}",
                self.port,
                self.data.display(),
                bad.len(),
                bad.iter().take(20).map(String::as_str).collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.stop("immediate");
        }
        if !std::thread::panicking() {
            self.check_log();
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

/// The server's current WAL position: the flush position on a primary, the replay position on
/// a standby.
pub fn current_flush_lsn(c: &Cluster) -> Lsn {
    let q = if c.psql("SELECT pg_is_in_recovery()").unwrap() == "t" {
        "SELECT pg_last_wal_replay_lsn()"
    } else {
        "SELECT pg_current_wal_flush_lsn()"
    };
    c.psql(q).unwrap().parse().unwrap()
}

/// Generates WAL: `n` rows of ~1 kB incompressible text.
pub fn write_rows(c: &Cluster, n: u32) {
    c.psql(&format!(
        "CREATE TABLE IF NOT EXISTS filler (id serial, t text); INSERT INTO filler (t) SELECT string_agg(md5(random()::text), '') FROM generate_series(1, {n}) g, generate_series(1, 32) h GROUP BY g"
    ))
    .unwrap();
}

pub fn seg_size(c: &Cluster) -> WalSegSize {
    WalSegSize::from_show(&c.psql("SHOW wal_segment_size").unwrap()).unwrap()
}

/// Runs pg_basebackup from `primary` into `dest` with extra arguments (e.g. `-X none`).
pub fn pg_basebackup(primary: &Cluster, dest: &Path, extra: &[&str]) {
    let out = Command::new(primary.bins.client("pg_basebackup"))
        .arg("-h")
        .arg(&primary.socket_dir)
        .args(["-p", &primary.port.to_string(), "-U", &primary.superuser, "-c", "fast", "--no-sync"])
        .args(extra)
        .arg("-D")
        .arg(dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
}

/// A hot standby of `primary` (pg_basebackup -R), started.
pub fn start_standby(primary: &Cluster) -> Cluster {
    let dir = tempfile::Builder::new().prefix("pgark-standby-").tempdir().unwrap();
    let data = dir.path().join("data");
    // A slot of its own (`-C -S`, written into its config by `-R`): without one the primary may
    // recycle a segment before the standby has streamed it ("requested WAL segment ... has
    // already been removed" in the standby's log, seen once in CI).
    static STANDBYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STANDBYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let slot = format!("standby_{}_{n}", std::process::id());
    pg_basebackup(primary, &data, &["-X", "stream", "-R", "-C", "-S", &slot]);
    let standby = Cluster::from_data_dir(&primary.bins, dir, data).unwrap();
    standby.append_conf("hot_standby = on").unwrap();
    standby.start().unwrap();
    standby
}

/// A tablespace `name` in a directory the server owns, beside the cluster.
pub fn make_tablespace(c: &Cluster, name: &str) -> PathBuf {
    let dir = c.base_dir().join(format!("ts_{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    chown_postgres(&dir).unwrap();
    c.psql(&format!("CREATE TABLESPACE {name} LOCATION '{}'", dir.display())).unwrap();
    dir
}

/// pgbench against `c` with `args`, running (stderr piped).
pub fn pgbench(c: &Cluster, args: &[&str]) -> std::process::Child {
    Command::new(c.bins.client("pgbench"))
        .arg("-h")
        .arg(&c.socket_dir)
        .args(["-p", &c.port.to_string(), "-U", &c.superuser])
        .args(args)
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn pgbench_init(c: &Cluster, scale: u32) {
    let o = pgbench(c, &["-i", "-q", "-s", &scale.to_string()]).wait_with_output().unwrap();
    assert!(o.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&o.stderr));
}

/// A checksum of a table's contents (row order does not matter).
pub fn table_sum(c: &Cluster, table: &str) -> String {
    c.psql(&format!("SELECT md5(string_agg(md5(t::text), '' ORDER BY t::text)) FROM {table} t"))
        .unwrap()
}
