//! Test harness: real PostgreSQL clusters (crate::pgcluster) and the real `pgark` binary as a
//! child process, so that SIGKILL and SIGTERM tests hit exactly what users run.

#![allow(dead_code)]

use crate::pgcluster::{free_port, Cluster, PgBinaries};
use pgark::catalog::segment_file;
use pgark::pg::{Lsn, WalFileName, WalSegSize};
use pgark::service::status::{ConnState, DaemonStatus, ServerStatus};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn pg() -> PgBinaries {
    PgBinaries::find().expect("PostgreSQL server binaries are required for the end-to-end tests")
}

/// Other majors for the version matrix: dirs in `PGARK_PG_MATRIX` (colon-separated), else
/// `/opt/pgark-pg/*/native/bin` as installed by `.ci/install-pg-matrix`. With
/// `PGARK_REQUIRE_MATRIX=1` (CI), a missing version fails instead of being skipped.
pub fn matrix() -> Vec<PgBinaries> {
    let dirs: Vec<PathBuf> = match std::env::var("PGARK_PG_MATRIX") {
        Ok(v) if !v.is_empty() => v.split(':').map(PathBuf::from).collect(),
        _ => {
            let mut d: Vec<PathBuf> = std::fs::read_dir("/opt/pgark-pg")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("native/bin"))
                .filter(|p| p.join("postgres").is_file())
                .collect();
            d.sort();
            d
        }
    };
    let found: Vec<PgBinaries> = dirs.iter().filter_map(|d| PgBinaries::at(d).ok()).collect();
    let majors: Vec<u32> = found.iter().map(|b| b.major).collect();
    if std::env::var("PGARK_REQUIRE_MATRIX").as_deref() == Ok("1") {
        for want in [13, 14, 16, 17, 18] {
            assert!(
                majors.contains(&want),
                "PostgreSQL {want} binaries missing from the version matrix (found {majors:?}); run .ci/install-pg-matrix"
            );
        }
    } else if found.is_empty() {
        eprintln!("SKIP version matrix: no PostgreSQL 13/14/16/17/18 binaries (run .ci/install-pg-matrix to install them)");
    }
    found
}

/// As root the test clusters run as `postgres`, whose restore_command (`pgark wal-get`) must read
/// the catalog: the deployment the README describes, `catalog_group: postgres`.
pub fn catalog_group_yaml() -> &'static str {
    if crate::pgcluster::running_as_root() {
        "catalog_group: postgres\n"
    } else {
        ""
    }
}

/// Waits at most `limit` for `child` to exit; panics saying `what` otherwise.
pub fn wait_exit(child: &mut std::process::Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < limit, "{what} did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn current_flush_lsn(c: &Cluster) -> Lsn {
    let q = if c.psql("SELECT pg_is_in_recovery()").unwrap() == "t" {
        "SELECT pg_last_wal_replay_lsn()"
    } else {
        "SELECT pg_current_wal_flush_lsn()"
    };
    c.psql(q).unwrap().parse().unwrap()
}

/// A running `pgark serve` child process.
pub struct Pgark {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub catalog: PathBuf,
    pub metrics: String,
    pub log: PathBuf,
    extra_env: Vec<(String, String)>,
    /// Extra keys under `metrics:` (each line indented by 2), and extra top-level YAML.
    metrics_extra: String,
    top: String,
}

impl Pgark {
    /// Writes a config with the given `servers:` YAML body (already indented by 2) and starts.
    pub fn start(servers_yaml: &str) -> Pgark {
        Self::start_env(servers_yaml, &[])
    }

    pub fn start_env(servers_yaml: &str, env: &[(&str, &str)]) -> Pgark {
        Self::start_full("", "", servers_yaml, env)
    }

    /// `metrics_extra`: lines under `metrics:` besides `listen` (indented by 2); `top`: other
    /// top-level YAML (`disk_pressure:` ...).
    pub fn start_full(metrics_extra: &str, top: &str, servers_yaml: &str, env: &[(&str, &str)]) -> Pgark {
        Self::start_in(None, metrics_extra, top, servers_yaml, env)
    }

    /// Like `start_full`, with the catalog at `catalog` (a small filesystem, say) instead of
    /// inside the test's temporary directory.
    pub fn start_in(catalog: Option<&Path>, metrics_extra: &str, top: &str, servers_yaml: &str, env: &[(&str, &str)]) -> Pgark {
        let dir = tempfile::Builder::new().prefix("pgark-test-").tempdir().unwrap();
        let catalog = catalog.map_or_else(|| dir.path().join("catalog"), Path::to_path_buf);
        let metrics = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("pgark.yaml");
        let log = dir.path().join("pgark.log");
        let mut p = Pgark {
            child: None,
            dir,
            config,
            catalog,
            metrics,
            log,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            metrics_extra: metrics_extra.to_string(),
            top: top.to_string(),
        };
        p.rewrite_servers(servers_yaml);
        p.spawn();
        p
    }

    pub fn rewrite_servers(&self, servers_yaml: &str) {
        let lines = |t: &str| t.lines().map(|l| format!("{l}\n")).collect::<String>();
        std::fs::write(
            &self.config,
            format!(
                "catalog: {}\n{}metrics:\n  listen: {}\n{}{}servers:\n{servers_yaml}",
                self.catalog.display(),
                catalog_group_yaml(),
                self.metrics,
                lines(&self.metrics_extra),
                lines(&self.top),
            ),
        )
        .unwrap();
    }

    /// Replaces the extra top-level YAML (then `rewrite_servers` and `hup` to apply it).
    pub fn set_top(&mut self, top: &str) {
        self.top = top.to_string();
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgark"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("PGARK_LOG", "info,pgark=debug")
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "pgark HTTP endpoint", || {
            self.status().is_some() || self.exited()
        });
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn term(&mut self) -> i32 {
        let mut c = self.child.take().expect("pgark is running");
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "pgark did not stop within 30s of SIGTERM\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the extra environment of the next `spawn` (fault rules, say).
    pub fn set_env(&mut self, env: &[(String, String)]) {
        self.extra_env = env.to_vec();
    }

    /// SIGTERM and wait; returns the exit code and how long the stop took.
    pub fn term_timed(&mut self) -> (i32, Duration) {
        let start = Instant::now();
        let code = self.term();
        (code, start.elapsed())
    }

    pub fn hup(&self) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), libc::SIGHUP) };
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self) -> Option<DaemonStatus> {
        let mut s = std::net::TcpStream::connect_timeout(&self.metrics.parse().ok()?, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        serde_json::from_str(resp.split_once("\r\n\r\n")?.1).ok()
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.metrics).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string())
    }

    /// The value of one series on `/metrics`, e.g. `pgark_up{server="main"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.http_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn server(&self, name: &str) -> Option<ServerStatus> {
        self.status()?.servers.into_iter().find(|s| s.server == name)
    }

    pub fn wait_streaming(&self, name: &str) {
        wait_until(Duration::from_secs(60), &format!("{name} streaming"), || {
            self.server(name).is_some_and(|s| s.state == ConnState::Streaming)
        });
    }

    /// Waits until pgark has durably stored WAL up to `lsn`.
    pub fn wait_flushed(&self, name: &str, lsn: Lsn) {
        let start = Instant::now();
        loop {
            let s = self.server(name);
            if s.as_ref().and_then(|s| s.flushed_lsn).is_some_and(|f| f >= lsn) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "pgark did not flush {lsn} (status {s:?})\n{}",
                tail(&self.log_text())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wal_dir(&self, server: &str) -> PathBuf {
        self.catalog.join(server).join("wal")
    }
}

impl Drop for Pgark {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- pgark log ---\n{}", tail(&self.log_text()));
        }
    }
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The original bytes of a completed segment in the catalog (decompressed and verified).
pub fn stored_segment(wal_dir: &Path, name: &str) -> Option<Vec<u8>> {
    if let Ok(b) = std::fs::read(wal_dir.join(format!("{name}.zst"))) {
        return Some(segment_file::decompress(&b).unwrap_or_else(|e| panic!("{name}.zst: {e}")));
    }
    std::fs::read(wal_dir.join(name)).ok()
}

/// Every completed segment in the catalog, as (name, parsed).
pub fn completed_segments(wal_dir: &Path, seg: WalSegSize) -> Vec<(String, WalFileName)> {
    let mut out: Vec<(String, WalFileName)> = std::fs::read_dir(wal_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_string();
            let base = n.strip_suffix(".zst").unwrap_or(&n).to_string();
            let w = WalFileName::parse(&base, seg).ok()?;
            Some((base, w))
        })
        .collect();
    out.sort_by_key(|(_, w)| (w.tli, w.segno));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Compares every completed segment in the catalog with the server's own file. Returns how
/// many were compared; panics on the first difference.
pub fn assert_byte_exact(wal_dir: &Path, pg_wal: &Path, seg: WalSegSize) -> usize {
    let mut compared = 0;
    for (name, _) in completed_segments(wal_dir, seg) {
        let ours = stored_segment(wal_dir, &name).unwrap();
        let Ok(theirs) = std::fs::read(pg_wal.join(&name)) else { continue };
        assert_eq!(ours.len(), theirs.len(), "{name}: size differs");
        if ours != theirs {
            let at = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap();
            panic!("{name}: stored segment differs from the server's at byte {at}");
        }
        compared += 1;
    }
    compared
}

/// Checks that the completed segments of each timeline form a run with no hole.
pub fn assert_no_gap(wal_dir: &Path, seg: WalSegSize) {
    let segs = completed_segments(wal_dir, seg);
    for w in segs.windows(2) {
        if w[0].1.tli == w[1].1.tli {
            assert_eq!(w[0].1.segno.0 + 1, w[1].1.segno.0, "gap between {} and {}", w[0].0, w[1].0);
        }
    }
}

/// A size-limited tmpfs mounted on an existing directory (a volume inside a catalog), unmounted
/// on drop; `None` where mounting is not allowed.
pub struct MountedFs {
    path: PathBuf,
}

impl SmallFs {
    pub fn mount_at(size: &str, path: &Path) -> Option<MountedFs> {
        let ok = crate::pgcluster::running_as_root()
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
        ok.then(|| MountedFs { path: path.to_path_buf() })
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A size-limited tmpfs, unmounted on drop. `None` where mounting is not allowed (not root, or no
/// mount permission in this container): callers skip with a message saying so.
pub struct SmallFs {
    pub dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::Builder::new().prefix("pgark-smallfs-").tempdir().ok()?;
        let ok = crate::pgcluster::running_as_root()
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
        ok.then_some(SmallFs { dir })
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

pub fn server_yaml(name: &str, conninfo: &str, extra: &str) -> String {
    let mut s = format!("  {name}:\n    conninfo: \"{conninfo}\"\n    slot: pgark_{name}\n    status_interval: 1s\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("    {}\n", line.trim()));
    }
    s
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
    let out = std::process::Command::new(primary.bins.client("pg_basebackup"))
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
    pg_basebackup(primary, &data, &["-X", "stream", "-R"]);
    let port = free_port();
    let standby = Cluster::from_data_dir(&primary.bins, dir, data, port).unwrap();
    standby
        .append_conf(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            standby.socket_dir.display()
        ))
        .unwrap();
    if crate::pgcluster::running_as_root() {
        assert!(std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(standby.base_dir())
            .status()
            .unwrap()
            .success());
    }
    standby.start().unwrap();
    standby
}
