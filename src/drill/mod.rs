//! Restore drills: prove that a backup restores and recovers, by doing it.
//!
//! A drill restores a backup of one server (with `restore::plan` and `restore::execute`, holding
//! the server's restore lock as a reader so that a prune or `delete-backup` cannot remove what it
//! reads) into a scratch directory, starts PostgreSQL of the backup's major there on a private
//! Unix socket (no TCP, no archiving, no replication, small memory: safe next to production),
//! lets it replay the catalog's WAL through `pgark wal-get` and promote, then checks it: every
//! database accepts a connection, `pg_amcheck --all` finds no corruption, the `drill.sql`
//! queries pass. It stops the cluster, removes the directory (also on failure, unless kept), and
//! records what happened (`catalog::drill_record`), including the measured recovery time.
//!
//! `run` returns `Err` only when no drill could start (bad input, unknown backup, unreachable
//! target, another drill running); a drill that started and failed is an `Ok` record with
//! `success: false`, the failing step, its error and PostgreSQL's log tail.

pub mod binaries;
pub mod checks;
pub mod postgres;

use crate::catalog::drill_record::{self, CheckRecord, DrillRecord, RecoveredPoint};
use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::Catalog;
use crate::config::drill::DrillSettings;
use crate::restore::target::{RecoveryTarget, TargetKind};
use crate::restore::{self, recovery, RestoreError, RestoreRequest};
use crate::util::time::unix_now;
use postgres::{Postmaster, Scratch};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the fast shutdown of the restored cluster may take before it is stopped harder.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// How often the end of recovery is polled.
const POLL: Duration = Duration::from_millis(250);
/// Lines of PostgreSQL's log kept in a failed drill's record.
const LOG_TAIL_LINES: usize = 40;

/// What to drill.
pub struct DrillRequest {
    /// The catalog's root directory (locks, drill records).
    pub catalog: PathBuf,
    /// Where the backup is read from (`Config::backup_catalog`: the local catalog, or with
    /// `backups_local: false` the local indexes and the repositories' chunks).
    pub source: Catalog,
    /// The config file, named in the restore_command (`pgark wal-get --config`).
    pub config_path: PathBuf,
    pub server: String,
    /// The user of the server's `conninfo`: one of the roles tried on the restored cluster.
    pub conninfo_user: Option<String>,
    /// Backup id (default: the newest that reaches the target).
    pub backup: Option<String>,
    /// The recovery target; its action is always `promote` (the drill must end recovery).
    pub target: RecoveryTarget,
    pub settings: DrillSettings,
    /// Keep the scratch directory (for debugging).
    pub keep: bool,
    /// Set to stop the drill early (SIGINT, the daemon stopping): it fails as `interrupted`
    /// and cleans up.
    pub interrupted: Arc<AtomicBool>,
}

/// Why no drill could run (nothing recorded).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Usage(String),
    #[error("another restore drill is running on this catalog (pid {pid}, lock {path}); drills run one at a time")]
    Busy { pid: String, path: PathBuf },
    /// Choosing the backup failed: unknown id, target unreachable, no usable backup.
    #[error(transparent)]
    Plan(RestoreError),
    #[error("{0}")]
    Io(String),
}

/// A failed step: its name and error.
struct Failed {
    step: &'static str,
    error: String,
}

fn failed(step: &'static str, error: impl Into<String>) -> Failed {
    Failed { step, error: error.into() }
}

/// The target as people read it (`end of WAL`, `recovery_target_time = …`).
pub fn describe_target(t: &RecoveryTarget) -> String {
    if t.kind == TargetKind::End {
        return "end of WAL".into();
    }
    t.settings()
        .into_iter()
        .find(|(k, _)| {
            !matches!(
                *k,
                "recovery_target_timeline" | "recovery_target_action" | "recovery_target_inclusive"
            )
        })
        .map(|(k, v)| format!("{k} = {v}"))
        .unwrap_or_else(|| "end of WAL".into())
}

/// The settings that make a drill safe next to production, written into the restored
/// `postgresql.auto.conf` (after the restore's own): no TCP, a private socket, no archiving or
/// replication, little memory, nothing shared with the original server's files, no synchronous
/// standby to wait for, promotion at the target, and no hot standby (connections wait for the end
/// of recovery, so the original's max_connections and friends need not be matched).
pub fn safe_settings(major: u32, port: u16, socket_dir: &std::path::Path, hba: &std::path::Path) -> Vec<(String, String)> {
    let mut s: Vec<(&str, String)> = vec![
        ("listen_addresses", String::new()),
        ("port", port.to_string()),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("unix_socket_permissions", "0700".into()),
        ("hba_file", hba.display().to_string()),
        ("ssl", "off".into()),
        ("archive_mode", "off".into()),
        ("max_wal_senders", "0".into()),
        ("synchronous_standby_names", String::new()),
        ("hot_standby", "off".into()),
        ("recovery_target_action", "promote".into()),
        ("shared_buffers", "32MB".into()),
        ("huge_pages", "off".into()),
        ("max_connections", "10".into()),
        ("superuser_reserved_connections", "2".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        // Never the original's (a path an original postgresql.conf may name): one of ours.
        (
            "external_pid_file",
            socket_dir.join("postmaster.external.pid").display().to_string(),
        ),
        ("cluster_name", "pgark drill".into()),
    ];
    if major < 15 {
        s.push(("stats_temp_directory", "pg_stat_tmp".into()));
    }
    if major >= 16 {
        s.push(("reserved_connections", "0".into()));
    }
    s.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The roles tried on the restored cluster, in order (it has production's roles).
fn candidate_roles(req: &DrillRequest) -> Vec<String> {
    let mut c: Vec<String> = Vec::new();
    if crate::util::os::running_as_root() {
        c.push(req.settings.os_user.clone());
    } else if let Ok(u) = std::env::var("USER") {
        c.push(u);
    }
    c.push("postgres".into());
    if let Some(u) = &req.conninfo_user {
        c.push(u.clone());
    }
    let mut seen = std::collections::BTreeSet::new();
    c.retain(|r| !r.is_empty() && seen.insert(r.clone()));
    c
}

/// What a drill builds up while it runs.
struct Progress<'a> {
    report: &'a mut dyn FnMut(&str),
    record: DrillRecord,
}

impl Progress<'_> {
    fn say(&mut self, line: &str) {
        (self.report)(line);
    }
}

/// Runs one drill to its end. `report` receives a line per step (printed by the CLI, logged by
/// the daemon). The record is stored in the catalog before it is returned (a failure to store it
/// is logged).
pub fn run(req: &DrillRequest, report: &mut dyn FnMut(&str)) -> Result<DrillRecord, DrillError> {
    let _drill_lock = CatalogLock::acquire_drill(&req.catalog).map_err(|e| match e {
        LockError::Held { path, pid } => DrillError::Busy { pid, path },
        other => DrillError::Io(other.to_string()),
    })?;
    // Records are named by their start second: a drill that follows another within the same
    // second (one failing at once, say) starts at the next, so that neither record replaces the
    // other. Drills run one at a time (the lock above), so this is the only collision.
    let store = Catalog::open(&req.catalog).store();
    let mut started_at = unix_now();
    while matches!(store.size(&drill_record::key(&req.server, started_at)), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(100));
        started_at = unix_now();
    }
    let t0 = Instant::now();
    let owner = if crate::util::os::running_as_root() {
        match crate::util::os::user_ids(&req.settings.os_user) {
            Ok(Some(ids)) => Some(ids),
            Ok(None) => {
                return Err(DrillError::Usage(format!(
                    "drill.os_user {:?}: no such user (PostgreSQL refuses to run as root; name the user it runs as)",
                    req.settings.os_user
                )))
            }
            Err(e) => return Err(DrillError::Usage(format!("drill.os_user {e}"))),
        }
    } else {
        None
    };
    for dir in postgres::sweep_stale(&req.settings.path, &req.server) {
        report(&format!("removed {}, left by a drill that was killed", dir.display()));
    }
    let scratch = Scratch::create(&req.settings.path, &req.server, started_at, owner, req.keep)
        .map_err(|e| DrillError::Io(format!("drill.path: {e}")))?;
    let mut target = req.target.clone();
    target.action = Some("promote".into());
    let mut restore_req = RestoreRequest {
        catalog: req.source.clone(),
        repo: None,
        config_path: req.config_path.clone(),
        server: req.server.clone(),
        backup: req.backup.clone(),
        target_dir: scratch.data_dir(),
        target,
        tablespace_maps: Vec::new(),
        // Only to learn the chosen backup's tablespaces (nothing is written with this plan):
        // without delta, planning would refuse their original, production, locations.
        delta: true,
        verify_existing: false,
        jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4),
        standby: false,
        owner: owner.map(|_| req.settings.os_user.clone()),
        interrupted: req.interrupted.clone(),
        background: true,
    };
    // Held from before the choice until the last file is written (as `pgark restore` does).
    let reading = CatalogLock::acquire_restore_reader(&req.catalog, &req.server).map_err(|e| DrillError::Io(e.to_string()))?;
    let first = match restore::plan(&restore_req) {
        Ok(p) => p,
        Err(e) => {
            // Nothing was written: nothing to keep, even with --keep.
            let _ = scratch.remove();
            return Err(DrillError::Plan(e));
        }
    };
    let mut p = Progress {
        report,
        record: DrillRecord {
            format: drill_record::FORMAT,
            server: req.server.clone(),
            started_at,
            finished_at: started_at,
            success: false,
            failed_step: None,
            error: None,
            log_tail: None,
            backup_id: Some(first.backup_id.clone()),
            target: describe_target(&req.target),
            pg_major: Some(binaries::major_of(first.index.pg_version)),
            pg_bindir: None,
            recovered: RecoveredPoint::default(),
            checks: Vec::new(),
            restore_seconds: None,
            recovery_seconds: None,
            total_seconds: None,
            scratch_dir: scratch.dir.display().to_string(),
            kept: false,
        },
    };
    p.say(&format!(
        "drill of {}: backup {} ({}), target {}, in {}",
        req.server,
        first.backup_id,
        first.why,
        p.record.target,
        scratch.dir.display()
    ));
    restore_req.backup = Some(first.backup_id.clone());
    restore_req.delta = false;
    restore_req.tablespace_maps = first
        .tablespaces
        .iter()
        .map(|t| (t.oid.to_string(), scratch.tablespace_dir(t.oid)))
        .collect();
    let outcome = drill_steps(req, &restore_req, reading, &scratch, t0, &mut p);
    if let Err(f) = outcome {
        p.say(&format!("FAILED at {}: {}", f.step, f.error));
        p.record.failed_step = Some(f.step.to_string());
        p.record.error = Some(f.error);
        p.record.log_tail = scratch.log_tail(LOG_TAIL_LINES).filter(|t| !t.is_empty());
    } else {
        p.record.success = true;
    }
    if req.keep {
        p.record.kept = true;
        if let Err(e) = scratch.write(&scratch.dir.join(postgres::KEPT_MARKER), "kept by pgark drill --keep\n", 0o600) {
            p.say(&format!("warning: {e}"));
        }
        p.say(&format!("kept {} (--keep): remove it when done", scratch.dir.display()));
    } else {
        match scratch.remove() {
            Ok(()) => p.say(&format!("removed {}", scratch.dir.display())),
            Err(e) => p.say(&format!("warning: {e}")),
        }
    }
    p.record.finished_at = unix_now();
    match drill_record::save(store.as_ref(), &p.record) {
        Ok(()) => {}
        Err(e) => {
            tracing::error!(server = %req.server, error = %e, "cannot record the drill in the catalog");
            p.say(&format!("warning: cannot record the drill in the catalog: {e}"));
        }
    }
    Ok(p.record)
}

/// The steps after the choice of backup; the first failure ends them.
fn drill_steps(
    req: &DrillRequest,
    restore_req: &RestoreRequest,
    reading: Option<CatalogLock>,
    scratch: &Scratch,
    t0: Instant,
    p: &mut Progress,
) -> Result<(), Failed> {
    let major = p.record.pg_major.unwrap_or_default();
    let bins = binaries::find(req.settings.pg_bindir.as_deref(), major).map_err(|e| failed("binaries", e))?;
    p.record.pg_bindir = Some(bins.bindir.display().to_string());
    p.say(&format!("binaries: PostgreSQL {major} from {}", bins.bindir.display()));

    let pgark = pgark_for_postgres(scratch).map_err(|e| failed("access", e))?;
    let config = std::fs::canonicalize(&req.config_path).unwrap_or_else(|_| req.config_path.clone());
    if scratch.owner.is_some() {
        check_wal_get_access(&pgark, &config, req, scratch).map_err(|e| failed("access", e))?;
        p.say(&format!("access: {} can run pgark wal-get on this catalog", req.settings.os_user));
    }

    // restore
    let mut plan = restore::plan(restore_req).map_err(|e| failed("restore", e.to_string()))?;
    let port = postgres::free_port();
    let mut settings = vec![(
        "restore_command".to_string(),
        recovery::restore_command(&pgark, &config, &req.server, None),
    )];
    let safe = safe_settings(major, port, &scratch.socket_dir(), &scratch.hba_file());
    settings.extend(
        plan.settings
            .iter()
            .filter(|(k, _)| k != "restore_command" && !safe.iter().any(|(s, _)| s == k))
            .cloned(),
    );
    settings.extend(safe);
    plan.settings = settings;
    let restore_started = Instant::now();
    let mut progress = crate::util::progress::LogLines::new("restore");
    let stats = restore::execute(restore_req, &plan, &mut progress);
    // `reading` (the restore lock, shared) is held to the end of the drill, recovery included:
    // PostgreSQL reads the catalog's WAL through wal-get, which a prune must not delete.
    let _reading = reading;
    // The restore record serves a later --delta into the same directory: none will come.
    let store = Catalog::open(&req.catalog).store();
    let _ = crate::catalog::restore_record::remove(store.as_ref(), &req.server, &plan.target_dir);
    let stats = stats.map_err(|e| failed("restore", e.to_string()))?;
    let restore_secs = restore_started.elapsed().as_secs_f64();
    p.record.restore_seconds = Some(restore_secs);
    p.say(&format!(
        "restore: {} files ({}) in {restore_secs:.1}s",
        stats.files_written,
        crate::util::units::human_bytes(stats.bytes_written)
    ));

    // configure
    let data = scratch.data_dir();
    if !data.join("postgresql.conf").exists() {
        // Packaged clusters (Debian) keep it outside the data directory: the safe settings
        // in postgresql.auto.conf and the defaults are all a drill needs.
        scratch
            .write(&data.join("postgresql.conf"), "# written by pgark drill\n", 0o600)
            .map_err(|e| failed("start", e))?;
    }
    scratch
        .write(
            &scratch.hba_file(),
            "# pgark drill: only over the drill's private socket directory (mode 0700)\nlocal all all trust\n",
            0o600,
        )
        .map_err(|e| failed("start", e))?;

    // start and recover
    if req.interrupted.load(Ordering::Relaxed) {
        return Err(failed("interrupted", "stopped before PostgreSQL was started"));
    }
    let mut pm = Postmaster::start(&bins.bin("postgres"), scratch).map_err(|e| failed("start", e))?;
    p.say(&format!(
        "start: postgres on socket {} port {} (no TCP){}",
        scratch.socket_dir().display(),
        port,
        scratch.owner.map(|_| format!(" as {}", req.settings.os_user)).unwrap_or_default()
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("start", format!("cannot start the drill's I/O runtime: {e}")))?;
    let mut ep = checks::Endpoint {
        socket_dir: scratch.socket_dir(),
        port,
        user: String::new(),
    };
    let roles = candidate_roles(req);
    let deadline = pm.started + req.settings.timeout;
    let superuser = loop {
        if let Some(status) = pm.exited() {
            return Err(failed(
                "recovery",
                format!("PostgreSQL exited during startup or recovery ({status}); see its log"),
            ));
        }
        if req.interrupted.load(Ordering::Relaxed) {
            // At once (immediate shutdown): a stopping daemon waits only a few seconds.
            let _ = pm.stop(Duration::ZERO);
            return Err(failed("interrupted", "stopped during recovery"));
        }
        let why = match block(&rt, &req.interrupted, checks::probe(&ep, &roles)) {
            Some(checks::Probe::Ready(su)) => break su,
            Some(checks::Probe::NotYet(why)) => why,
            None => continue, // interrupted: handled at the top
        };
        if Instant::now() > deadline {
            let _ = pm.stop(Duration::from_secs(10));
            return Err(failed(
                "recovery",
                format!(
                    "recovery did not end within drill.timeout ({}); last: {why}",
                    humantime::format_duration(req.settings.timeout)
                ),
            ));
        }
        std::thread::sleep(POLL);
    };
    ep.user = superuser;
    let recovery_secs = pm.started.elapsed().as_secs_f64();
    let total = t0.elapsed().as_secs_f64();
    p.record.recovery_seconds = Some(recovery_secs);
    p.record.total_seconds = Some(total);
    match block(&rt, &req.interrupted, checks::recovered_point(&ep)) {
        Some(Ok(pt)) => p.record.recovered = pt,
        Some(Err(e)) => tracing::warn!(server = %req.server, error = %e, "cannot read where recovery ended"),
        None => return Err(stop_interrupted(&mut pm)),
    }
    p.say(&format!(
        "recovery: ended after {recovery_secs:.1}s at {} on timeline {} (last commit {}); {total:.1}s since the drill began",
        p.record.recovered.replay_lsn.as_deref().unwrap_or("?"),
        p.record.recovered.timeline.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
        p.record.recovered.last_commit_time.as_deref().unwrap_or("none replayed"),
    ));

    // checks (all of them, the first failure named)
    let mut first_failure: Option<Failed> = None;
    let mut note = |p: &mut Progress, step: &'static str, c: CheckRecord| {
        let state = if c.skipped {
            "skipped"
        } else if c.ok {
            "ok"
        } else {
            "FAILED"
        };
        p.say(&format!("check {}: {state}: {}", c.name, c.detail));
        if !c.ok && first_failure.is_none() {
            first_failure = Some(failed(step, format!("{}: {}", c.name, c.detail)));
        }
        p.record.checks.push(c);
    };
    match block(&rt, &req.interrupted, checks::connect_every_database(&ep)) {
        None => return Err(stop_interrupted(&mut pm)),
        Some(Ok(list)) => list.into_iter().for_each(|c| note(p, "connect", c)),
        Some(Err(e)) => note(
            p,
            "connect",
            CheckRecord {
                name: "connect".into(),
                ok: false,
                detail: e,
                skipped: false,
            },
        ),
    }
    match checks::run_amcheck(&bins.bindir, &ep, &scratch.dir.join("pg_amcheck.out"), &req.interrupted) {
        Some(c) => note(p, "amcheck", c),
        None => return Err(stop_interrupted(&mut pm)),
    }
    match block(&rt, &req.interrupted, checks::run_sql(&ep, &req.settings.sql, req.settings.timeout)) {
        Some(list) => list.into_iter().for_each(|c| note(p, "sql", c)),
        None => return Err(stop_interrupted(&mut pm)),
    }
    drop(rt);

    // stop
    match pm.stop(STOP_WAIT) {
        Ok(()) => p.say("stop: fast shutdown done"),
        Err(e) => p.say(&format!("stop: warning: {e}")),
    }
    match first_failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Runs `fut` on the drill's runtime unless the drill is interrupted first (`None`).
fn block<T>(rt: &tokio::runtime::Runtime, flag: &AtomicBool, fut: impl std::future::Future<Output = T>) -> Option<T> {
    rt.block_on(async {
        tokio::select! {
            r = fut => Some(r),
            _ = checks::interrupted(flag) => None,
        }
    })
}

/// An interrupted drill stops PostgreSQL at once (immediate shutdown: a stopping daemon waits
/// only a few seconds, and the copy is thrown away).
fn stop_interrupted(pm: &mut Postmaster) -> Failed {
    let _ = pm.stop(Duration::ZERO);
    failed(
        "interrupted",
        "stopped by a signal or the daemon stopping; PostgreSQL was stopped at once",
    )
}

/// Before restoring anything: can PostgreSQL's user run the `restore_command` recovery will run?
/// It asks `pgark wal-get` (as that user, with the drill's pgark and config) for a history file no
/// catalog has: "not in the catalog" (exit 1) proves it could load the config and search the
/// server's WAL directory; anything else (a config or catalog it may not read) would only show up
/// later as a recovery that cannot fetch WAL.
fn check_wal_get_access(pgark: &std::path::Path, config: &std::path::Path, req: &DrillRequest, scratch: &Scratch) -> Result<(), String> {
    let Some((uid, gid)) = scratch.owner else { return Ok(()) };
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(pgark)
        .arg("wal-get")
        .arg("--config")
        .arg(config)
        .arg(&req.server)
        .arg(ACCESS_PROBE)
        .arg(scratch.dir.join(ACCESS_PROBE))
        .current_dir(&scratch.dir)
        .env("PGARK_LOG", "error")
        .uid(uid)
        .gid(gid)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {} as {}: {e}", pgark.display(), req.settings.os_user))?;
    if out.status.code() == Some(crate::restore::wal_get::ABSENT) {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Err(format!(
        "PostgreSQL's user {} cannot run its restore_command (pgark wal-get --config {} {}: {}): {}; it must read the config file and the catalog: set catalog_group to a group {} is in (see docs/catalog-format.md, Catalog permissions), and make the directories above them searchable",
        req.settings.os_user,
        config.display(),
        req.server,
        out.status,
        text.trim(),
        req.settings.os_user
    ))
}

/// A history file name no catalog holds (timeline 0xFFFF), for `check_wal_get_access`.
const ACCESS_PROBE: &str = "0000FFFF.history";

/// The pgark binary the restored PostgreSQL's `restore_command` runs. As another user (pgark
/// runs as root), a copy in the scratch directory: pgark's own path may sit where that user
/// cannot reach (under /root, a private build directory).
fn pgark_for_postgres(scratch: &Scratch) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the pgark binary: {e}"))?;
    if scratch.owner.is_none() {
        return Ok(exe);
    }
    let copy = scratch.dir.join("pgark");
    std::fs::copy(&exe, &copy).map_err(|e| format!("copying {} to {}: {e}", exe.display(), copy.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", copy.display()))?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::target::TargetOptions;

    fn target(lsn: Option<&str>) -> RecoveryTarget {
        RecoveryTarget::from_options(TargetOptions {
            time: None,
            lsn,
            xid: None,
            name: None,
            immediate: false,
            timeline: None,
            inclusive: None,
            action: None,
        })
        .unwrap()
    }

    #[test]
    fn stale_scratch_directories_of_dead_drills_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let mk = |name: &str| {
            let d = base.path().join(name);
            std::fs::create_dir_all(d.join("data")).unwrap();
            d
        };
        // pid 2^22+1 is above Linux's pid_max limit: never alive.
        let dead = mk("main-100-4194305");
        let kept = mk("main-101-4194305");
        std::fs::write(kept.join(postgres::KEPT_MARKER), b"").unwrap();
        let mine = mk(&format!("main-102-{}", std::process::id()));
        let other_server = mk("other-103-4194305");
        let unrelated = mk("main-notes");
        assert_eq!(postgres::sweep_stale(base.path(), "main"), vec![dead.clone()]);
        assert!(!dead.exists());
        for d in [kept, mine, other_server, unrelated] {
            assert!(d.exists(), "{d:?} must stay");
        }
    }

    #[test]
    fn targets_and_safe_settings() {
        assert_eq!(describe_target(&target(None)), "end of WAL");
        assert_eq!(describe_target(&target(Some("0/3000060"))), "recovery_target_lsn = 0/3000060");
        let s = safe_settings(15, 5999, std::path::Path::new("/d/sock"), std::path::Path::new("/d/pg_hba.conf"));
        let get = |k: &str| s.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("listen_addresses"), Some(""));
        assert_eq!(get("archive_mode"), Some("off"));
        assert_eq!(get("max_wal_senders"), Some("0"));
        assert_eq!(get("recovery_target_action"), Some("promote"));
        assert_eq!(get("synchronous_standby_names"), Some(""));
        assert_eq!(get("stats_temp_directory"), None);
        assert!(safe_settings(13, 1, std::path::Path::new("/s"), std::path::Path::new("/h"))
            .iter()
            .any(|(k, _)| k == "stats_temp_directory"));
    }
}
