//! The checks: each a small pure function from one server's `Facts` to an `Outcome`, listed by
//! name in `CHECKS` (the order of the report). A check whose facts could not be gathered (its
//! connection failed) says "not checked" as a warning: the failed connection is the failure.

use super::facts::{Facts, Sql};
use super::{Level, Outcome};
use crate::catalog::space::Level as SpaceLevel;
use crate::util::time::format_utc;
use crate::util::units::human_bytes;

pub type CheckFn = fn(&Facts) -> Outcome;

/// Every check, by name, in report order.
pub const CHECKS: &[(&str, CheckFn)] = &[
    ("config", config),
    ("catalog_writable", catalog_writable),
    ("catalog_permissions", catalog_permissions),
    ("catalog_space", catalog_space),
    ("daemon", daemon),
    ("replication_connection", replication_connection),
    ("monitoring_connection", monitoring_connection),
    ("role_replication", role_replication),
    ("role_pg_monitor", role_pg_monitor),
    ("slot", slot),
    ("synchronous", synchronous),
    ("wal_recent", wal_recent),
    ("backup_age", backup_age),
    ("retention", retention),
    ("wal_gaps", wal_gaps),
    ("verify", verify),
    ("drill", drill),
    ("repositories", repositories),
    ("local_encryption", local_encryption),
    ("synchronized_standby_slots", synchronized_standby_slots),
    ("idle_replication_slot_timeout", idle_replication_slot_timeout),
    ("data_checksums", data_checksums),
    ("incremental_backups", incremental_backups),
];

/// WAL older than this (and the server ahead of pgark) fails `wal_recent`, unless twice the
/// server's `archive_timeout` is longer.
pub const WAL_STALE_MIN: u64 = 5 * 60;

/// `idle_replication_slot_timeout` below this warns: pgark's downtime budget (a weekend's
/// outage of the backup host should not cost the slot).
pub const IDLE_SLOT_TIMEOUT_BUDGET: u64 = 24 * 3600;

fn age(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn not_checked(why: &str) -> Outcome {
    Outcome::warning(format!("not checked: {why}"))
}

/// The monitoring facts, or the outcome that says they are missing.
fn sql(f: &Facts) -> Result<&Sql, Outcome> {
    f.sql
        .as_ref()
        .map_err(|_| not_checked("the monitoring connection failed (see monitoring_connection)"))
}

fn major(f: &Facts) -> u32 {
    match (&f.sql, &f.replication) {
        (Ok(s), _) if s.server_version_num > 0 => s.server_version_num / 10000,
        (_, Ok(r)) => r.server_version_num / 10000,
        _ => 0,
    }
}

fn config(f: &Facts) -> Outcome {
    Outcome::ok(format!("servers.{} in {} is valid", f.server, f.config_file.display()))
}

fn catalog_writable(f: &Facts) -> Outcome {
    match &f.writable {
        Ok(dir) => Outcome::ok(format!("created and removed a file in {}", dir.display())),
        Err(e) => Outcome::failed(format!(
            "{e}: pgark cannot store WAL or backups; give pgark's OS user write access (and check the filesystem is mounted read-write)"
        )),
    }
}

fn catalog_permissions(f: &Facts) -> Outcome {
    let Some(mode) = f.root_mode else {
        return not_checked(&format!("catalog {} does not exist", f.catalog.display()));
    };
    let detail = f.perms_problems.join("; ");
    if mode & 0o007 != 0 {
        Outcome::failed(detail)
    } else if !f.perms_problems.is_empty() {
        Outcome::warning(detail)
    } else {
        Outcome::ok(format!(
            "{} mode {mode:04o}, not readable by others{}",
            f.catalog.display(),
            f.catalog_group.as_deref().map(|g| format!(", group {g}")).unwrap_or_default()
        ))
    }
}

fn catalog_space(f: &Facts) -> Outcome {
    let cap = match &f.capacity {
        Ok(c) => *c,
        Err(e) => return Outcome::failed(format!("cannot measure the catalog's free space: {e}")),
    };
    let t = &f.thresholds;
    let shown = format!("{} free of {}", human_bytes(cap.free), human_bytes(cap.total));
    match t.level(cap) {
        SpaceLevel::Ok => Outcome::ok(format!("{shown} (warning below {})", t.catalog_free_warning)),
        SpaceLevel::Warning => Outcome::warning(format!(
            "{shown}, below disk_pressure.catalog_free_warning ({}): free space (pgark prune, delete-backup) or grow the filesystem",
            t.catalog_free_warning
        )),
        SpaceLevel::Critical => Outcome::failed(format!(
            "{shown}, below disk_pressure.catalog_free_critical ({}): base backups are refused; free space or grow the filesystem now",
            t.catalog_free_critical
        )),
    }
}

fn daemon(f: &Facts) -> Outcome {
    match &f.daemon {
        Ok(Some(pid)) => Outcome::ok(format!("pgark serve is running (pid {pid})")),
        Ok(None) => Outcome::warning(format!(
            "pgark serve is not running on catalog {}: no WAL is received; start it (systemctl start pgark, or pgark serve --config {})",
            f.catalog.display(),
            f.config_file.display()
        )),
        Err(e) => Outcome::warning(format!("cannot tell whether pgark serve runs: {e}")),
    }
}

fn retention(f: &Facts) -> Outcome {
    let r = match &f.retention {
        Ok(r) => r,
        Err(e) => return Outcome::failed(format!("cannot evaluate the retention policy: {e}")),
    };
    if r.usable < r.min_redundancy as usize {
        return Outcome::failed(format!(
            "{} restorable backup(s), fewer than retention.min_redundancy ({}): take a backup (pgark backup {})",
            r.usable, r.min_redundancy, f.server
        ));
    }
    if !r.has_rules {
        return Outcome::warning(
            "no retention policy: nothing is ever deleted and the catalog grows without bound; set retention (redundancy, recovery_window, keep_daily…)"
                .to_string(),
        );
    }
    if !r.overdue_backups.is_empty() || r.overdue_wal_files > 0 {
        return Outcome::warning(format!(
            "{} backup(s) and {} WAL file(s) the policy lets go are still there: is pgark serve running? pgark prune --config {} {} applies it now",
            r.overdue_backups.len(),
            r.overdue_wal_files,
            f.config_file.display(),
            f.server
        ));
    }
    if let Some(w) = r.recovery_window {
        let covered = r.window_start.map(|s| f.now.saturating_sub(s));
        if covered.is_none_or(|c| c < w) {
            return Outcome::warning(format!(
                "the catalog reaches back {} of the {} recovery window (a young catalog, or a WAL gap)",
                covered.map(age).unwrap_or_else(|| "nothing".into()),
                age(w)
            ));
        }
    }
    Outcome::ok(format!(
        "{} restorable backup(s); restores reach back to {}",
        r.usable,
        r.window_start.map(format_utc).unwrap_or_else(|| "-".into())
    ))
}

fn wal_gaps(f: &Facts) -> Outcome {
    let r = match &f.retention {
        Ok(r) => r,
        Err(e) => return Outcome::failed(format!("cannot read the catalog's WAL: {e}")),
    };
    let open: Vec<&str> = r.gaps.iter().filter(|(_, a)| !a).map(|(g, _)| g.as_str()).collect();
    let acked = r.gaps.len() - open.len();
    if !open.is_empty() {
        return Outcome::failed(format!(
            "WAL missing since the oldest backup: {}; point-in-time recovery cannot cross it. Take a new backup; once understood, pgark verify --acknowledge-gap records it",
            open.join(", ")
        ));
    }
    Outcome::ok(if acked > 0 {
        format!("no WAL gap since the oldest backup ({acked} acknowledged)")
    } else {
        "no WAL gap since the oldest backup".to_string()
    })
}

fn verify(f: &Facts) -> Outcome {
    let records = match &f.verifies {
        Ok(v) => v,
        Err(e) => return Outcome::failed(format!("cannot read the verify results: {e}")),
    };
    let damaged: Vec<&str> = records.iter().filter(|r| r.status != "ok").map(|r| r.backup.as_str()).collect();
    if !damaged.is_empty() {
        return Outcome::failed(format!(
            "the last verify of backup(s) {} found damaged or missing data: pgark verify --config {} {} --all names it; take a new backup",
            damaged.join(", "),
            f.config_file.display(),
            f.server
        ));
    }
    let schedule = f.cfg.verify_schedule.as_ref();
    let Some(newest) = records.first() else {
        return match schedule {
            Some(_) => Outcome::warning("verify_schedule is set but nothing has been verified yet"),
            None => Outcome::ok("never verified and no verify_schedule (pgark verify reads every chunk and segment back)"),
        };
    };
    let shown = format!("last verify {} ({}): intact", format_utc(newest.verified_at), newest.backup);
    let Some(schedule) = schedule else {
        return Outcome::ok(format!("{shown} (no verify_schedule)"));
    };
    periodic(schedule, newest.verified_at, f.now, shown, "verify_schedule")
}

/// How late the run after `last` is against `schedule` at `now`: `None` while not yet due, else
/// (the due time, seconds late, one interval of the schedule: from that due time to the next).
/// `next_due` is asked as of just after `last` (for cron it never answers a time before `now`).
/// With `encryption.local: true`, the local catalog's objects can be opened with the keyring
/// (which key ids it still needs); without, it holds no sealed object it could not read.
fn local_encryption(f: &Facts) -> Outcome {
    let k = match &f.local_keys {
        Err(e) => return Outcome::failed(format!("cannot read the local catalog's objects: {e}")),
        Ok(k) => k,
    };
    let ids = k.key_ids.iter().cloned().collect::<Vec<_>>().join(", ");
    if !k.configured {
        if k.key_ids.is_empty() {
            return Outcome::ok("the local catalog is not encrypted (encryption.local is off)");
        }
        if k.key_ids.iter().all(|id| k.keyring.contains(id)) {
            return Outcome::warning(format!(
                "encryption.local is off, but the local catalog still holds objects encrypted with key(s) {ids}, which the configured key file reads: keep it until retention has replaced them"
            ));
        }
        return Outcome::failed(format!(
            "the local catalog holds objects sealed with key(s) {ids}, but encryption.local is not true: set it, with those keys, or they cannot be read"
        ));
    }
    let unknown: Vec<&String> = k.key_ids.iter().filter(|id| !k.keyring.contains(id)).collect();
    if !unknown.is_empty() {
        return Outcome::failed(format!(
            "local catalog objects are sealed with key(s) {} that the keyring lacks (add them to encryption.old_key_files)",
            unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let keys = if ids.is_empty() { "none yet".to_string() } else { ids };
    if !k.unreadable.is_empty() {
        return Outcome::warning(format!(
            "the receiver moved aside {} encrypted .partial file(s) it could not read without a key: {}; configure their key, and if the server no longer has that WAL, rename each back over its .partial with pgark stopped",
            k.unreadable.len(),
            k.unreadable.join(", ")
        ));
    }
    if k.plaintext > 0 && k.require {
        return Outcome::failed(format!(
            "{} of the {} local catalog objects looked at are not encrypted, and encryption.local: require refuses them (reads fail): restore them from a repository, or set local: true until retention has replaced them",
            k.plaintext, k.looked_at
        ));
    }
    if k.plaintext > 0 {
        return Outcome::warning(format!(
            "{} of the {} local catalog objects looked at were written before encryption.local: true and are not encrypted (retention replaces them; a new backup is sealed); keys in use {keys}",
            k.plaintext, k.looked_at
        ));
    }
    Outcome::ok(format!(
        "the local catalog is encrypted: {} objects looked at, keys in use {keys} (the keyring has {})",
        k.looked_at,
        k.keyring.join(", ")
    ))
}

/// Every repository answers, holds this server's backups, and can be read with the keyring;
/// its uploads are not stalled.
fn repositories(f: &Facts) -> Outcome {
    if f.repositories.is_empty() {
        return Outcome::ok("no repositories configured (the local catalog is the only copy)");
    }
    let mut failed = Vec::new();
    let mut warned = Vec::new();
    let mut fine = Vec::new();
    for r in &f.repositories {
        match &r.holds {
            Err(e) => failed.push(format!("{}: {e}", r.name)),
            Ok(h) => {
                let unknown: Vec<&String> = h.key_ids.iter().filter(|id| !h.keyring.contains(id)).collect();
                if !unknown.is_empty() {
                    failed.push(format!(
                        "{}: objects sealed with key(s) {} that the keyring lacks (add them to encryption.old_key_files)",
                        r.name,
                        unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                    continue;
                }
                if !h.encrypted && !h.key_ids.is_empty() {
                    failed.push(format!("{}: holds encrypted objects but no encryption key is configured", r.name));
                    continue;
                }
                if let Some(l) = &h.lock {
                    match (&l.bucket, l.newest_index_until) {
                        (None, _) => {
                            failed.push(format!(
                                "{}: object_lock is set but the bucket does not have object lock enabled (it can only be enabled when the bucket is created: aws s3api create-bucket --object-lock-enabled-for-bucket)",
                                r.name
                            ));
                            continue;
                        }
                        (Some(_), until) if h.backups > 0 && until.is_none_or(|t| t <= f.now as i64) => {
                            failed.push(format!("{}: the newest backup's index is not under object lock", r.name));
                            continue;
                        }
                        (Some(Some(rule)), _) => warned.push(format!(
                            "{}: the bucket has a default retention ({rule}): every rewrite of an object pgark keeps up to date (the open segment's partial, every offsite_partial_interval) is kept locked; remove the default rule, pgark locks what it must itself",
                            r.name
                        )),
                        _ => {}
                    }
                }
                let stalled = matches!(f.daemon, Ok(Some(_))) && r.mark.as_ref().is_none_or(|m| f.now.saturating_sub(m.written_at) > 600);
                if h.backups == 0 {
                    warned.push(format!("{}: no backup of this server yet", r.name));
                } else if stalled {
                    warned.push(format!(
                        "{}: the daemon has not recorded an upload pass for over 10 minutes (pgark status shows the uploader's error)",
                        r.name
                    ));
                } else {
                    let mut keys = if h.key_ids.is_empty() {
                        "not encrypted".to_string()
                    } else {
                        format!("keys in use {}", h.key_ids.iter().cloned().collect::<Vec<_>>().join(", "))
                    };
                    if let Some(l) = &h.lock {
                        keys.push_str(&format!(
                            ", object lock {} for {} (newest index locked until {})",
                            l.configured.mode.as_s3(),
                            humantime::format_duration(l.configured.period),
                            l.newest_index_until
                                .map(|t| crate::util::time::format_utc(t.max(0) as u64))
                                .unwrap_or_else(|| "-".into())
                        ));
                    }
                    fine.push(format!(
                        "{}: {} backups (newest {}), {} WAL objects, {keys}",
                        r.name,
                        h.backups,
                        h.newest_backup.as_deref().unwrap_or("-"),
                        h.wal_objects
                    ));
                }
            }
        }
    }
    if !failed.is_empty() {
        Outcome::failed(failed.join("; "))
    } else if !warned.is_empty() {
        Outcome::warning(warned.into_iter().chain(fine).collect::<Vec<_>>().join("; "))
    } else {
        Outcome::ok(fine.join("; "))
    }
}

fn lateness(schedule: &crate::backup::schedule::Schedule, last: u64, now: u64) -> Option<(u64, u64, u64)> {
    let due = schedule.next_due(Some(last), last + 1);
    if now <= due {
        return None;
    }
    let interval = schedule.next_due(Some(due), due + 1).saturating_sub(due).max(60);
    Some((due, now - due, interval))
}

/// A periodic task's check (verify, drill): OK while on time, a warning when due, FAILED when
/// more than one interval of `key` late.
fn periodic(schedule: &crate::backup::schedule::Schedule, last: u64, now: u64, shown: String, key: &str) -> Outcome {
    match lateness(schedule, last, now) {
        None => Outcome::ok(shown),
        Some((_, late, interval)) if late > interval => Outcome::failed(format!(
            "{shown}; the next is overdue by {} (more than one interval of {key}): see pgark serve's log",
            age(late)
        )),
        Some((_, late, _)) => Outcome::warning(format!("{shown}; the next is due since {}", age(late))),
    }
}

fn drill(f: &Facts) -> Outcome {
    let (newest, passed) = match &f.drills {
        Ok(d) => d,
        Err(e) => return Outcome::failed(format!("cannot read the drill records: {e}")),
    };
    let schedule = f.cfg.drill.schedule.as_ref();
    let Some(newest) = newest else {
        return match schedule {
            Some(_) => Outcome::warning(
                "drill.schedule is set but no drill has run yet (the first needs a restorable backup); pgark drill runs one now",
            ),
            None => Outcome::ok("no restore drill yet and no drill.schedule: nothing has proved a restore works (pgark drill)"),
        };
    };
    let when = format_utc(newest.started_at);
    if !newest.success {
        return Outcome::failed(format!(
            "the last drill ({when}) FAILED at step {}: {}; {}; see its record (pgark drill --json) and fix it before you need a restore",
            newest.failed_step.as_deref().unwrap_or("?"),
            newest.error.as_deref().unwrap_or(""),
            match passed {
                Some(p) => format!("the last one that passed was {}", format_utc(p.started_at)),
                None => "no drill has ever passed".to_string(),
            }
        ));
    }
    let shown = format!(
        "last drill {when} passed: backup {} recovered in {:.0}s",
        newest.backup_id.as_deref().unwrap_or("?"),
        newest.total_seconds.unwrap_or_default()
    );
    let Some(schedule) = schedule else {
        return Outcome::ok(format!("{shown} (no drill.schedule)"));
    };
    periodic(schedule, newest.started_at, f.now, shown, "drill.schedule")
}

fn replication_connection(f: &Facts) -> Outcome {
    let r = match &f.replication {
        Ok(r) => r,
        Err(e) => {
            return Outcome::failed(format!(
                "{} (replication): {e}; check conninfo, pg_hba.conf (a `replication` line for this user and host) and that the server runs",
                f.cfg.conninfo
            ))
        }
    };
    if let Ok(Some(st)) = &f.state {
        if st.system_identifier != r.system.system_identifier {
            return Outcome::failed(format!(
                "{} is system {}, but the catalog holds WAL of system {}: conninfo points at another cluster, or it was rebuilt (use a new server name for it)",
                f.cfg.conninfo, r.system.system_identifier, st.system_identifier
            ));
        }
    }
    Outcome::ok(format!(
        "{}: system {}, timeline {}, at {}, PostgreSQL {}",
        f.cfg.conninfo,
        r.system.system_identifier,
        r.system.timeline,
        r.system.xlogpos,
        r.server_version_num / 10000
    ))
}

fn monitoring_connection(f: &Facts) -> Outcome {
    let ci = f.cfg.monitor_settings().conninfo;
    match &f.sql {
        Ok(s) => Outcome::ok(format!("{ci}: as {}", s.monitoring_user)),
        Err(e) => Outcome::failed(format!(
            "{ci}: {e}; pgark cannot watch the slot and the synchronous state (set monitor_conninfo, or allow this user to connect to the database)"
        )),
    }
}

fn role_replication(f: &Facts) -> Outcome {
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let user = &s.replication_user;
    match s.role_replication {
        Some(true) => Outcome::ok(format!("role {user} may replicate")),
        Some(false) => Outcome::failed(format!(
            "role {user} has no REPLICATION attribute: pgark cannot stream; ALTER ROLE {user} REPLICATION"
        )),
        None => Outcome::failed(format!(
            "no role named {user} on the server: create it (CREATE ROLE {user} LOGIN REPLICATION)"
        )),
    }
}

fn role_pg_monitor(f: &Facts) -> Outcome {
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let user = &s.monitoring_user;
    if s.pg_monitor {
        Outcome::ok(format!("role {user} is a member of pg_monitor"))
    } else {
        Outcome::warning(format!(
            "role {user} is not a member of pg_monitor: monitoring is reduced (no pg_wal size; the state of every walsender hidden, pgark's own included: sync_state, lags); GRANT pg_monitor TO {user}"
        ))
    }
}

fn slot(f: &Facts) -> Outcome {
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let m = &s.monitor;
    let name = &f.cfg.slot;
    if !m.slot_exists {
        let create = if f.cfg.create_slot {
            "pgark serve creates it when it connects (create_slot: true), but WAL the server removed meanwhile is lost: take a backup after"
        } else {
            "create it: SELECT pg_create_physical_replication_slot('<slot>', true), or set create_slot: true"
        };
        return Outcome::failed(format!(
            "replication slot {name} does not exist: the server keeps no WAL for pgark; {}",
            create.replace("<slot>", name)
        ));
    }
    let status = m.slot_wal_status.as_deref().unwrap_or("unknown");
    let active = m.slot_active == Some(true);
    let mut detail = format!("slot {name} {}, wal_status {status}", if active { "active" } else { "inactive" });
    if let Some(r) = m.slot_retained_bytes {
        detail.push_str(&format!(", retaining {}", human_bytes(r)));
    }
    if let Some(safe) = m.slot_safe_wal_size_bytes {
        detail.push_str(&format!(", safe_wal_size {}", human_bytes(safe.max(0) as u64)));
    }
    match status {
        "lost" => Outcome::failed(format!(
            "{detail}: the server removed WAL pgark had not received (max_slot_wal_keep_size); pgark cannot continue from it: \
             drop the slot (SELECT pg_drop_replication_slot('{name}')), restart pgark serve to recreate it, and take a new backup"
        )),
        "unreserved" => Outcome::warning(format!(
            "{detail}: the server will remove WAL pgark has not received at the next checkpoint; make sure pgark streams, or raise max_slot_wal_keep_size"
        )),
        _ if !active && matches!(f.daemon, Ok(Some(_))) => Outcome::warning(format!(
            "{detail}: pgark serve runs but is not streaming from this slot; see pgark status and its log"
        )),
        _ => Outcome::ok(detail),
    }
}

fn synchronous(f: &Facts) -> Outcome {
    if !f.cfg.synchronous {
        if let Ok(s) = sql(f) {
            if s.monitor.named_in_synchronous_standby_names {
                return Outcome::warning(format!(
                    "synchronous: false, but synchronous_standby_names ({:?}) names pgark: the server waits for pgark at every commit, and pgark serve acknowledges each one as with synchronous: true (it follows the server); set synchronous: true so that the config says what happens",
                    s.monitor.synchronous_standby_names
                ));
            }
        }
        return Outcome::ok("synchronous: false (pgark is an asynchronous standby; RPO > 0)");
    }
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let m = &s.monitor;
    let app = &f.cfg.conninfo.application_name;
    if !m.named_in_synchronous_standby_names {
        return Outcome::failed(format!(
            "synchronous: true, but synchronous_standby_names ({:?}) does not name pgark's application_name {app:?}: commits do not wait for pgark (RPO > 0); \
             ALTER SYSTEM SET synchronous_standby_names = '{app}' (or add it to the list) and SELECT pg_reload_conf()",
            m.synchronous_standby_names
        ));
    }
    let running = matches!(f.daemon, Ok(Some(_)));
    match m.sync_state.as_deref() {
        Some(st @ ("sync" | "quorum")) => Outcome::ok(format!(
            "named in synchronous_standby_names ({:?}), pg_stat_replication says {st}",
            m.synchronous_standby_names
        )),
        _ if !running => Outcome::warning(
            "named in synchronous_standby_names, but pgark serve is not running: commits that need pgark's acknowledgement wait until it is back; start it",
        ),
        Some("potential") => Outcome::warning(
            "pg_stat_replication says potential: another standby is the synchronous one now; pgark takes over if that one fails".to_string(),
        ),
        Some(other) => Outcome::failed(format!(
            "pg_stat_replication says {other}, not sync: commits do not wait for pgark; check synchronous_standby_names and reload the server"
        )),
        None if m.walsender_state_hidden => Outcome::warning(format!(
            "named in synchronous_standby_names ({:?}); pgark's walsender is there, but the server hides its sync_state from role {} (not a member of pg_monitor); GRANT pg_monitor TO {} to see whether commits wait for pgark",
            m.synchronous_standby_names, s.monitoring_user, s.monitoring_user
        )),
        None => Outcome::failed(format!(
            "pgark serve runs but has no walsender on the server ({app:?} is not in pg_stat_replication): commits may be waiting; see pgark status and its log"
        )),
    }
}

/// `max(WAL_STALE_MIN, 2 × archive_timeout)`: with `archive_timeout` set, a busy server
/// switches segments at least that often; without it the floor is the server's checkpoint
/// rhythm, and an idle server is told apart by its slot (nothing left to receive).
pub fn wal_stale_after(archive_timeout: Option<u64>) -> u64 {
    WAL_STALE_MIN.max(archive_timeout.unwrap_or(0) * 2)
}

fn wal_recent(f: &Facts) -> Outcome {
    let newest = match &f.newest_wal {
        Ok(n) => n,
        Err(e) => return Outcome::failed(format!("cannot read the WAL directory: {e}")),
    };
    let Some((name, mtime)) = newest else {
        return Outcome::failed("no WAL in the catalog: pgark has never streamed from this server; start pgark serve and see pgark status");
    };
    let archive_timeout = f.sql.as_ref().ok().and_then(|s| s.seconds("archive_timeout"));
    let limit = wal_stale_after(archive_timeout);
    let old = f.now.saturating_sub(*mtime);
    let shown = format!("newest WAL {name} written {} ago", age(old));
    if old <= limit {
        return Outcome::ok(format!("{shown} (limit {})", age(limit)));
    }
    match f.sql.as_ref().ok().map(|s| (&s.monitor.slot_retained_bytes, s.monitor.slot_exists)) {
        Some((Some(0), true)) => Outcome::ok(format!("{shown}; the server has written nothing since (idle)")),
        Some((Some(behind), true)) => Outcome::failed(format!(
            "{shown} (limit {}), and the server is {} ahead of what pgark has: see pgark status and pgark serve's log",
            age(limit),
            human_bytes(*behind)
        )),
        _ => Outcome::failed(format!(
            "{shown} (limit {}), and whether the server wrote more since is unknown (no slot or no monitoring connection)",
            age(limit)
        )),
    }
}

fn backup_age(f: &Facts) -> Outcome {
    let newest = match &f.newest_backup {
        Ok(n) => n.clone(),
        Err(e) => return Outcome::failed(format!("cannot read the backups: {e}")),
    };
    let schedule = f.cfg.backup.schedule.as_ref();
    let Some((id, start)) = newest else {
        return match (schedule, f.backup_running) {
            (_, true) => Outcome::ok("no backup yet; the first one is being taken"),
            (Some(_), false) => Outcome::failed(format!(
                "no backup, though backup_schedule is set: nothing can be restored; run pgark backup --config {} {} and see pgark serve's log for why the schedule did not",
                f.config_file.display(),
                f.server
            )),
            (None, false) => Outcome::warning(format!(
                "no backup and no backup_schedule: nothing can be restored; run pgark backup --config {} {}, or set backup_schedule",
                f.config_file.display(),
                f.server
            )),
        };
    };
    let shown = format!("newest backup {id} started {} ago", age(f.now.saturating_sub(start)));
    let Some(schedule) = schedule else {
        return Outcome::ok(format!("{shown} (no backup_schedule)"));
    };
    // The first due time after that backup (asked as of just after its start: for cron,
    // `next_due` never answers a time before its `now`).
    let Some((due, late, interval)) = lateness(schedule, start, f.now) else {
        let due = schedule.next_due(Some(start), start + 1);
        return Outcome::ok(format!("{shown}; the next is due at {}", format_utc(due)));
    };
    if f.backup_running {
        Outcome::ok(format!("{shown}; a backup is being taken"))
    } else if late > interval {
        Outcome::failed(format!(
            "{shown}: overdue by {} (more than one interval of backup_schedule): see pgark serve's log (disk pressure, failed backups), or run pgark backup",
            age(late)
        ))
    } else {
        Outcome::warning(format!("{shown}: due since {} ({} ago)", format_utc(due), age(late)))
    }
}

/// The names of `synchronized_standby_slots` (comma-separated, maybe double-quoted).
pub fn slot_list(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| n.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(n).to_string())
        .collect()
}

fn synchronized_standby_slots(f: &Facts) -> Outcome {
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let Some(v) = s.setting("synchronized_standby_slots") else {
        return Outcome::ok(format!(
            "not applicable (PostgreSQL {} has no synchronized_standby_slots)",
            major(f)
        ));
    };
    if slot_list(v).iter().any(|n| n == &f.cfg.slot || n == "*") {
        Outcome::failed(format!(
            "synchronized_standby_slots ({v:?}) lists pgark's slot {}: logical walsenders wait for pgark, and stall while it is down; \
             remove it (ALTER SYSTEM SET synchronized_standby_slots = '<the other slots>'; SELECT pg_reload_conf())",
            f.cfg.slot
        ))
    } else {
        Outcome::ok(format!("pgark's slot is not in synchronized_standby_slots ({v:?})"))
    }
}

fn idle_replication_slot_timeout(f: &Facts) -> Outcome {
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    if s.setting("idle_replication_slot_timeout").is_none() {
        return Outcome::ok(format!(
            "not applicable (PostgreSQL {} has no idle_replication_slot_timeout)",
            major(f)
        ));
    }
    match s.seconds("idle_replication_slot_timeout") {
        Some(0) => Outcome::ok("idle_replication_slot_timeout is off"),
        Some(t) if t < IDLE_SLOT_TIMEOUT_BUDGET => Outcome::warning(format!(
            "idle_replication_slot_timeout is {}: when pgark is down longer, the server invalidates its slot at a checkpoint and pgark cannot continue \
             (a new slot, a new backup); raise it to at least {} or set it to 0",
            age(t),
            age(IDLE_SLOT_TIMEOUT_BUDGET)
        )),
        Some(t) => Outcome::ok(format!("idle_replication_slot_timeout is {}", age(t))),
        None => Outcome::warning("idle_replication_slot_timeout has a value pgark cannot read"),
    }
}

fn data_checksums(f: &Facts) -> Outcome {
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    match s.setting("data_checksums") {
        Some("on") => Outcome::ok("data checksums are on"),
        Some(_) => Outcome::warning(
            "data checksums are off: pgark verify checks the backup against itself, but cannot catch a page corrupted in the database \
             before it was backed up; enable them with pg_checksums --enable -D <data directory> on the stopped server (or initdb --data-checksums)",
        ),
        None => not_checked("data_checksums is not reported"),
    }
}

/// Whether the server can give incremental backups (PostgreSQL 17+ with summarize_wal): a
/// failure when `backup_full_every` asks for them (every scheduled backup would be full), a
/// note otherwise.
fn incremental_backups(f: &Facts) -> Outcome {
    let s = match sql(f) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let wanted = f.cfg.backup.full_every.is_some();
    match s.setting("summarize_wal") {
        None if wanted => Outcome::failed(format!(
            "backup_full_every is set, but PostgreSQL {} has no incremental backups (17 or later): every scheduled backup is full",
            major(f)
        )),
        None => Outcome::ok(format!("not available (PostgreSQL {} has no incremental backups)", major(f))),
        Some("on") if wanted => Outcome::ok("summarize_wal is on: scheduled backups are incremental between full ones (backup_full_every)"),
        Some("on") => Outcome::ok("summarize_wal is on: `pgark backup --incremental` and backup_full_every can be used"),
        Some(_) if wanted => Outcome::failed(
            "summarize_wal is off, so backup_full_every cannot work (every scheduled backup is full): ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();",
        ),
        Some(_) => Outcome::ok("summarize_wal is off: incremental backups are not possible (ALTER SYSTEM SET summarize_wal = on enables them)"),
    }
}

/// The level of the worst result.
pub fn worst(levels: impl IntoIterator<Item = Level>) -> Level {
    levels.into_iter().max().unwrap_or(Level::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::space::DiskThresholds;
    use crate::catalog::store::Capacity;
    use crate::check::facts::{Facts, Sql};
    use crate::config::Config;
    use crate::monitor::ServerFacts;

    const NOW: u64 = 1_800_000_000;

    fn facts(extra: &str) -> Facts {
        let text = format!("catalog: /nonexistent\nservers:\n  main:\n    conninfo: host=/tmp user=rep\n    slot: pgark\n{extra}");
        let c = Config::parse(&text, std::path::Path::new("/etc/pgark.yaml")).unwrap();
        let monitor = ServerFacts {
            slot_exists: true,
            slot_active: Some(true),
            slot_wal_status: Some("reserved".into()),
            slot_retained_bytes: Some(0),
            sync_state: Some("sync".into()),
            named_in_synchronous_standby_names: true,
            synchronous_standby_names: "pgark".into(),
            ..Default::default()
        };
        let mut settings = std::collections::BTreeMap::new();
        settings.insert("data_checksums".into(), ("on".into(), None));
        settings.insert("archive_timeout".into(), ("0".into(), Some("s".into())));
        Facts {
            server: "main".into(),
            config_file: c.path.clone(),
            catalog: c.catalog.clone(),
            catalog_group: None,
            thresholds: DiskThresholds::default(),
            cfg: c.servers["main"].clone(),
            now: NOW,
            daemon: Ok(Some("42".into())),
            writable: Ok("/nonexistent/main".into()),
            root_mode: Some(0o700),
            perms_problems: vec![],
            capacity: Ok(Capacity { free: 900, total: 1000 }),
            newest_wal: Ok(Some(("000000010000000000000003.partial".into(), NOW - 10))),
            newest_backup: Ok(Some(("20261201T000000Z".into(), NOW - 3600))),
            backup_running: false,
            state: Ok(None),
            replication: Err("not asked".into()),
            sql: Ok(Sql {
                monitor,
                server_version_num: 150000,
                role_replication: Some(true),
                replication_user: "rep".into(),
                pg_monitor: true,
                monitoring_user: "rep".into(),
                settings,
            }),
            drills: Ok((None, None)),
            repositories: vec![],
            local_keys: Ok(Default::default()),
            verifies: Ok(vec![]),
            retention: Ok(super::super::facts::RetentionFacts {
                has_rules: true,
                min_redundancy: 1,
                usable: 1,
                window_start: Some(NOW - 3600),
                ..Default::default()
            }),
        }
    }

    fn level(f: &Facts, name: &str) -> Outcome {
        let (_, check) = CHECKS.iter().find(|(n, _)| *n == name).unwrap();
        check(f)
    }

    fn sql_mut(f: &mut Facts) -> &mut Sql {
        f.sql.as_mut().unwrap()
    }

    #[test]
    fn healthy_facts_pass_every_database_check() {
        let f = facts("");
        for (name, check) in CHECKS {
            if *name == "replication_connection" {
                continue;
            }
            let o = check(&f);
            assert_eq!(o.level, Level::Ok, "{name}: {}", o.detail);
        }
    }

    #[test]
    fn local_encryption_states() {
        use crate::check::facts::LocalKeyFacts;
        let mut f = facts("");
        let with = |configured: bool, ids: &[&str], ring: &[&str], plaintext: usize| {
            Ok(LocalKeyFacts {
                configured,
                key_ids: ids.iter().map(|s| s.to_string()).collect(),
                plaintext,
                require: false,
                looked_at: 3,
                keyring: ring.iter().map(|s| s.to_string()).collect(),
                unreadable: Vec::new(),
            })
        };
        assert_eq!(level(&f, "local_encryption").level, Level::Ok);
        f.local_keys = with(false, &["aa"], &[], 0);
        let o = level(&f, "local_encryption");
        assert!(
            o.level == Level::Failed && o.detail.contains("encryption.local is not true"),
            "{}",
            o.detail
        );
        // Off, but the key file kept: they read.
        f.local_keys = with(false, &["aa"], &["aa"], 0);
        assert_eq!(level(&f, "local_encryption").level, Level::Warning);
        // A .partial moved aside: named.
        f.local_keys = with(true, &["aa"], &["aa"], 0);
        if let Ok(k) = &mut f.local_keys {
            k.unreadable = vec!["main/wal/000000010000000000000003.partial.unreadable".into()];
        }
        let o = level(&f, "local_encryption");
        assert!(
            o.level == Level::Warning && o.detail.contains("000000010000000000000003.partial.unreadable"),
            "{}",
            o.detail
        );
        f.local_keys = with(true, &["aa", "bb"], &["bb"], 0);
        let o = level(&f, "local_encryption");
        assert!(
            o.level == Level::Failed && o.detail.contains("aa") && !o.detail.contains("bb"),
            "{}",
            o.detail
        );
        f.local_keys = with(true, &["aa", "bb"], &["bb", "aa"], 1);
        assert_eq!(level(&f, "local_encryption").level, Level::Warning);
        if let Ok(k) = &mut f.local_keys {
            k.require = true;
        }
        assert_eq!(level(&f, "local_encryption").level, Level::Failed);
        f.local_keys = with(true, &["aa", "bb"], &["bb", "aa"], 0);
        let o = level(&f, "local_encryption");
        assert!(o.level == Level::Ok && o.detail.contains("keys in use aa, bb"), "{}", o.detail);
    }

    #[test]
    fn repository_states() {
        use crate::check::facts::{RepositoryFacts, RepositoryHoldings};
        let mut f = facts("");
        assert_eq!(level(&f, "repositories").level, Level::Ok);
        let holds = |ids: &[&str], ring: &[&str]| RepositoryHoldings {
            backups: 2,
            newest_backup: Some("b".into()),
            wal_objects: 9,
            key_ids: ids.iter().map(|s| s.to_string()).collect(),
            keyring: ring.iter().map(|s| s.to_string()).collect(),
            encrypted: !ring.is_empty(),
            lock: None,
        };
        f.repositories = vec![RepositoryFacts {
            name: "offsite".into(),
            holds: Ok(holds(&["aa"], &["aa", "bb"])),
            mark: Some(crate::catalog::offsite_mark::OffsiteMark {
                written_at: f.now,
                ..Default::default()
            }),
        }];
        let o = level(&f, "repositories");
        assert_eq!(o.level, Level::Ok, "{}", o.detail);
        assert!(o.detail.contains("keys in use aa"), "{}", o.detail);
        f.repositories[0].holds = Ok(holds(&["aa", "cc"], &["aa"]));
        let o = level(&f, "repositories");
        assert_eq!(o.level, Level::Failed);
        assert!(o.detail.contains("cc") && o.detail.contains("old_key_files"), "{}", o.detail);
        f.repositories[0].holds = Err("LIST main/wal: connection refused".into());
        assert_eq!(level(&f, "repositories").level, Level::Failed);
        f.repositories[0].holds = Ok(RepositoryHoldings {
            backups: 0,
            ..holds(&[], &[])
        });
        assert_eq!(level(&f, "repositories").level, Level::Warning);
        // Object lock: the bucket must have it; a default rule is a warning; the newest index
        // must be locked.
        let lock = |bucket: Option<Option<String>>, until: Option<i64>| {
            Ok(RepositoryHoldings {
                lock: Some(crate::check::facts::LockFacts {
                    configured: crate::catalog::object_lock::ObjectLock {
                        mode: crate::catalog::object_lock::LockMode::Compliance,
                        period: std::time::Duration::from_secs(86_400),
                    },
                    bucket,
                    newest_index_until: until,
                }),
                ..holds(&["aa"], &["aa"])
            })
        };
        let later = Some(f.now as i64 + 3600);
        f.repositories[0].holds = lock(Some(None), later);
        let o = level(&f, "repositories");
        assert_eq!(o.level, Level::Ok, "{}", o.detail);
        assert!(o.detail.contains("object lock COMPLIANCE for 1day"), "{}", o.detail);
        f.repositories[0].holds = lock(None, later);
        let o = level(&f, "repositories");
        assert!(
            o.level == Level::Failed && o.detail.contains("does not have object lock enabled"),
            "{}",
            o.detail
        );
        f.repositories[0].holds = lock(Some(None), None);
        let o = level(&f, "repositories");
        assert!(
            o.level == Level::Failed && o.detail.contains("not under object lock"),
            "{}",
            o.detail
        );
        f.repositories[0].holds = lock(Some(Some("GOVERNANCE 30 days".into())), later);
        let o = level(&f, "repositories");
        assert!(
            o.level == Level::Warning && o.detail.contains("default retention (GOVERNANCE 30 days)"),
            "{}",
            o.detail
        );
    }

    #[test]
    fn slot_states() {
        let mut f = facts("");
        sql_mut(&mut f).monitor.slot_wal_status = Some("unreserved".into());
        assert_eq!(level(&f, "slot").level, Level::Warning);
        sql_mut(&mut f).monitor.slot_wal_status = Some("lost".into());
        let o = level(&f, "slot");
        assert_eq!(o.level, Level::Failed);
        assert!(o.detail.contains("pg_drop_replication_slot"), "{}", o.detail);
        sql_mut(&mut f).monitor.slot_exists = false;
        assert_eq!(level(&f, "slot").level, Level::Failed);
        sql_mut(&mut f).monitor.slot_exists = true;
        sql_mut(&mut f).monitor.slot_wal_status = Some("extended".into());
        sql_mut(&mut f).monitor.slot_safe_wal_size_bytes = Some(1 << 20);
        let o = level(&f, "slot");
        assert_eq!(o.level, Level::Ok);
        assert!(o.detail.contains("safe_wal_size 1"), "{}", o.detail);
    }

    #[test]
    fn synchronous_states() {
        let mut f = facts("");
        sql_mut(&mut f).monitor.named_in_synchronous_standby_names = false;
        assert_eq!(level(&f, "synchronous").level, Level::Failed);
        sql_mut(&mut f).monitor.named_in_synchronous_standby_names = true;
        sql_mut(&mut f).monitor.sync_state = None;
        assert_eq!(level(&f, "synchronous").level, Level::Failed, "daemon runs, no walsender");
        sql_mut(&mut f).monitor.walsender_state_hidden = true;
        let o = level(&f, "synchronous");
        assert_eq!(o.level, Level::Warning, "a walsender whose state is hidden: {}", o.detail);
        assert!(o.detail.contains("GRANT pg_monitor"), "{}", o.detail);
        sql_mut(&mut f).monitor.walsender_state_hidden = false;
        f.daemon = Ok(None);
        assert_eq!(level(&f, "synchronous").level, Level::Warning, "daemon down");
        assert_eq!(level(&f, "daemon").level, Level::Warning);
        let mut f = facts("    synchronous: false\n");
        sql_mut(&mut f).monitor.named_in_synchronous_standby_names = false;
        assert_eq!(level(&f, "synchronous").level, Level::Ok);
        sql_mut(&mut f).monitor.named_in_synchronous_standby_names = true;
        let o = level(&f, "synchronous");
        assert_eq!(o.level, Level::Warning, "the server waits for an asynchronous pgark");
        assert!(o.detail.contains("set synchronous: true"), "{}", o.detail);
    }

    #[test]
    fn stale_wal_fails_only_when_the_server_is_ahead() {
        let mut f = facts("");
        f.newest_wal = Ok(Some(("000000010000000000000003.partial".into(), NOW - 3600)));
        assert_eq!(level(&f, "wal_recent").level, Level::Ok, "idle server");
        sql_mut(&mut f).monitor.slot_retained_bytes = Some(16 << 20);
        assert_eq!(level(&f, "wal_recent").level, Level::Failed);
        sql_mut(&mut f)
            .settings
            .insert("archive_timeout".into(), ("3600".into(), Some("s".into())));
        assert_eq!(level(&f, "wal_recent").level, Level::Ok, "2 × archive_timeout");
        f.newest_wal = Ok(None);
        assert_eq!(level(&f, "wal_recent").level, Level::Failed);
        assert_eq!(wal_stale_after(None), 300);
        assert_eq!(wal_stale_after(Some(600)), 1200);
    }

    #[test]
    fn backup_age_against_the_schedule() {
        let mut f = facts("    backup_schedule: 1d\n");
        assert_eq!(level(&f, "backup_age").level, Level::Ok);
        f.newest_backup = Ok(Some(("old".into(), NOW - 86400 - 3600)));
        assert_eq!(level(&f, "backup_age").level, Level::Warning, "due, less than an interval late");
        f.newest_backup = Ok(Some(("older".into(), NOW - 3 * 86400)));
        assert_eq!(level(&f, "backup_age").level, Level::Failed);
        f.backup_running = true;
        assert_eq!(level(&f, "backup_age").level, Level::Ok);
        f.backup_running = false;
        f.newest_backup = Ok(None);
        assert_eq!(level(&f, "backup_age").level, Level::Failed, "schedule, no backup");
        let mut f = facts("");
        f.newest_backup = Ok(None);
        assert_eq!(level(&f, "backup_age").level, Level::Warning, "no schedule, no backup");
        // Cron: a daily backup three days old is more than one interval late.
        let mut f = facts("    backup_schedule: 0 3 * * *\n");
        f.newest_backup = Ok(Some(("older".into(), NOW - 3 * 86400)));
        assert_eq!(level(&f, "backup_age").level, Level::Failed);
    }

    #[test]
    fn version_specific_settings() {
        let mut f = facts("");
        sql_mut(&mut f)
            .settings
            .insert("synchronized_standby_slots".into(), ("other, \"pgark\"".into(), None));
        assert_eq!(level(&f, "synchronized_standby_slots").level, Level::Failed);
        sql_mut(&mut f)
            .settings
            .insert("synchronized_standby_slots".into(), ("other".into(), None));
        assert_eq!(level(&f, "synchronized_standby_slots").level, Level::Ok);
        sql_mut(&mut f)
            .settings
            .insert("idle_replication_slot_timeout".into(), ("60".into(), Some("min".into())));
        let o = level(&f, "idle_replication_slot_timeout");
        assert_eq!(o.level, Level::Warning);
        assert!(o.detail.contains("invalidates"), "{}", o.detail);
        sql_mut(&mut f)
            .settings
            .insert("idle_replication_slot_timeout".into(), ("0".into(), Some("s".into())));
        assert_eq!(level(&f, "idle_replication_slot_timeout").level, Level::Ok);
        sql_mut(&mut f).settings.insert("data_checksums".into(), ("off".into(), None));
        let o = level(&f, "data_checksums");
        assert_eq!(o.level, Level::Warning);
        assert!(o.detail.contains("pg_checksums"), "{}", o.detail);
        assert_eq!(level(&f, "incremental_backups").level, Level::Ok);
        f.cfg.backup.full_every = Some(std::time::Duration::from_secs(7 * 86400));
        assert_eq!(
            level(&f, "incremental_backups").level,
            Level::Failed,
            "no summarize_wal (before 17)"
        );
        sql_mut(&mut f).settings.insert("summarize_wal".into(), ("off".into(), None));
        let o = level(&f, "incremental_backups");
        assert_eq!(o.level, Level::Failed);
        assert!(o.detail.contains("ALTER SYSTEM SET summarize_wal"), "{}", o.detail);
        sql_mut(&mut f).settings.insert("summarize_wal".into(), ("on".into(), None));
        assert_eq!(level(&f, "incremental_backups").level, Level::Ok);
    }

    #[test]
    fn catalog_checks() {
        let mut f = facts("");
        f.root_mode = Some(0o755);
        f.perms_problems = vec!["readable by every user".into()];
        assert_eq!(level(&f, "catalog_permissions").level, Level::Failed);
        f.root_mode = Some(0o750);
        assert_eq!(level(&f, "catalog_permissions").level, Level::Warning);
        f.capacity = Ok(Capacity { free: 100, total: 1000 });
        assert_eq!(level(&f, "catalog_space").level, Level::Warning);
        f.capacity = Ok(Capacity { free: 10, total: 1000 });
        assert_eq!(level(&f, "catalog_space").level, Level::Failed);
        f.writable = Err("read-only".into());
        assert_eq!(level(&f, "catalog_writable").level, Level::Failed);
    }

    #[test]
    fn failed_connections_fail_once_and_leave_the_rest_unchecked() {
        let mut f = facts("");
        f.sql = Err("connection refused".into());
        assert_eq!(level(&f, "monitoring_connection").level, Level::Failed);
        for name in ["role_replication", "slot", "synchronous", "data_checksums"] {
            let o = level(&f, name);
            assert_eq!(o.level, Level::Warning, "{name}");
            assert!(o.detail.starts_with("not checked"), "{name}: {}", o.detail);
        }
        assert_eq!(level(&f, "replication_connection").level, Level::Failed);
        assert_eq!(slot_list(" a, \"b\" ,,c"), vec!["a", "b", "c"]);
        assert_eq!(worst([Level::Ok, Level::Warning]), Level::Warning);
    }
}
