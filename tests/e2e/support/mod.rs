//! Everything the end-to-end tests share; test files import from here only (`use
//! crate::support::*`), never from one another.
//!
//! - `pgcluster`: throwaway PostgreSQL clusters (log check included) and helpers that drive them;
//! - `ports`: race-free TCP ports for clusters and pgark's metrics endpoint;
//! - `daemon`: `pgark serve` as a child process (`Pgark`), its status and metrics;
//! - `cli`: one-shot `pgark` commands;
//! - `catalog`: a catalog without a daemon, backups read back by hand, WAL byte-exactness;
//! - `restore`: `pgark restore` and starting restored or recovered clusters;
//! - `writers`: concurrent committers and the RPO=0 check;
//! - `tls`: a cluster with TLS and a role per authentication method;
//! - `http`: the one HTTP client; `fs`: small tmpfs mounts;
//! - `faults` (the disk-fault shim), `faultproxy` (the TCP fault proxy), `invariants` (the
//!   catalog checker of the crash tests).

pub mod catalog;
pub mod cli;
pub mod daemon;
pub mod faultproxy;
pub mod faults;
pub mod fs;
pub mod http;
pub mod invariants;
pub mod pgcluster;
pub mod ports;
pub mod restore;
pub mod seaweed;
pub mod tls;
pub mod writers;

pub use catalog::*;
pub use cli::*;
pub use daemon::*;
pub use fs::*;
pub use pgcluster::*;
pub use restore::*;
pub use tls::*;
pub use writers::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn pg() -> PgBinaries {
    PgBinaries::find().expect("PostgreSQL server binaries are required for the end-to-end tests")
}

/// The majors of the version matrix besides PostgreSQL 15.
pub const MATRIX_MAJORS: [u32; 5] = [13, 14, 16, 17, 18];

/// Other majors for the version matrix: dirs in `PGARK_PG_MATRIX` (colon-separated), else
/// `/opt/pgark-pg/*/native/bin` as installed by `.ci/install-pg-matrix`. A missing major fails
/// the calling test, saying how to install it, unless `PGARK_SKIP_MATRIX=1` (then the test
/// says it skipped them and runs the majors it found); with `PGARK_REQUIRE_MATRIX=1` (CI) a
/// missing major fails whatever `PGARK_SKIP_MATRIX` says.
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
    let missing: Vec<u32> = MATRIX_MAJORS.into_iter().filter(|m| !majors.contains(m)).collect();
    if missing.is_empty() {
        return found;
    }
    let flag = |name: &str| std::env::var(name).as_deref() == Ok("1");
    let what = format!("PostgreSQL {missing:?} binaries missing from the version matrix (found {majors:?})");
    let install =
        "install them with `sudo bash .ci/install-pg-matrix` (into /opt/pgark-pg) or list their bin directories in PGARK_PG_MATRIX";
    if flag("PGARK_REQUIRE_MATRIX") {
        panic!("{what}; PGARK_REQUIRE_MATRIX=1 requires them: {install}");
    }
    if flag("PGARK_SKIP_MATRIX") {
        // Straight to stderr, past the test harness's capture: a skip is seen even when the
        // test passes.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED (PGARK_SKIP_MATRIX=1): {what}; not tested on them");
        return found;
    }
    panic!("{what}: {install}, or set PGARK_SKIP_MATRIX=1 to skip them");
}

/// As root the test clusters run as `postgres`, whose restore_command (`pgark wal-get`) must read
/// the catalog: the deployment the README describes, `catalog_group: postgres`.
pub fn catalog_group_yaml() -> &'static str {
    if pgark::util::os::running_as_root() {
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

/// Polls `f` every 100 ms until it holds; panics naming `what` (what is awaited) after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last 60 lines of `text` (a log, in a failure message).
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A `servers:` entry (indented by 2) with `extra` keys (one per line).
pub fn server_yaml(name: &str, conninfo: &str, extra: &str) -> String {
    let mut s = format!("  {name}:\n    conninfo: \"{conninfo}\"\n    slot: pgark_{name}\n    status_interval: 1s\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("    {}\n", line.trim()));
    }
    s
}
