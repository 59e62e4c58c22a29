//! `pgark restore`: plan (which backup, where every tablespace goes, which settings), then
//! extract the files, write the recovery settings, and make the directory startable.
//!
//! `plan` is pure over what it reads from the catalog; `--print-only` shows it without writing.

pub mod extract;
pub mod plan;
mod pool;
pub mod recovery;
pub mod target;
pub mod wal_get;

use crate::catalog::backup_store::{self, BackupIndex};
use crate::catalog::restore_record as record;
use crate::catalog::store::ObjectStore;
use crate::catalog::Catalog;
use crate::catalog::Layout;
use crate::pg::{Lsn, SegNo, TimelineHistory, TimelineId, WalFileName, WalSegSize};
use crate::util::progress::Progress;
use extract::{ExtractOptions, ExtractStats};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use target::RecoveryTarget;

pub struct RestoreRequest {
    /// What to restore from: the local catalog, a repository, or both in order.
    pub catalog: Catalog,
    /// `--repo` as given, repeated in the restore_command written for PostgreSQL.
    pub repo: Option<String>,
    /// The config file, named in the restore_command written for PostgreSQL (`pgark wal-get`).
    pub config_path: PathBuf,
    pub server: String,
    pub backup: Option<String>,
    pub target_dir: PathBuf,
    pub target: RecoveryTarget,
    /// `--tablespace NAME|OID|OLD_PATH=DIR`.
    pub tablespace_maps: Vec<(String, PathBuf)>,
    pub delta: bool,
    /// With delta: read and checksum every existing file, ignoring the record of the last
    /// restore (see `record`).
    pub verify_existing: bool,
    pub jobs: usize,
    pub standby: bool,
    pub owner: Option<String>,
    /// Set by SIGINT/SIGTERM (see `extract::ExtractOptions::interrupted`).
    pub interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// A restore nobody waits for (a drill): see `extract::ExtractOptions::background`.
    pub background: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TablespacePlan {
    pub oid: u32,
    pub name: Option<String>,
    pub original: String,
    pub location: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestorePlan {
    pub server: String,
    pub backup_id: String,
    pub why: String,
    pub target_dir: PathBuf,
    pub tablespaces: Vec<TablespacePlan>,
    pub settings: Vec<(String, String)>,
    pub signal_file: String,
    pub delta: bool,
    #[serde(skip)]
    pub index: BackupIndex,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Bad input: options, target directory, tablespace mapping (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error("{0}")]
    Plan(#[from] plan::PlanError),
    #[error("{0}")]
    Store(#[from] backup_store::BackupStoreError),
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Upper bound of the WAL in the catalog: the end of the newest timeline's newest segment
/// (complete or open).
/// The newest WAL position in the catalog, and the parsed history files.
type WalFacts = (Option<(TimelineId, Lsn)>, BTreeMap<TimelineId, TimelineHistory>);

fn wal_end(store: &dyn ObjectStore, server: &str, seg: WalSegSize) -> std::io::Result<WalFacts> {
    let mut newest: Option<WalFileName> = None;
    let mut histories = BTreeMap::new();
    for key in store.list(&Layout::wal_key(server))? {
        let name = key.rsplit('/').next().unwrap_or_default();
        if let Some(tli) = TimelineId::from_history_file_name(name) {
            if let Ok(Some(bytes)) = store.get(&key) {
                if let Ok(h) = TimelineHistory::parse(&bytes) {
                    histories.insert(tli, h);
                }
            }
            continue;
        }
        let base = name.split('.').next().unwrap_or_default();
        let ext = name.strip_prefix(base).unwrap_or_default();
        if !matches!(ext, "" | ".zst" | ".partial") {
            continue;
        }
        if let Ok(w) = WalFileName::parse(base, seg) {
            if newest.is_none_or(|n| (w.tli, w.segno) > (n.tli, n.segno)) {
                newest = Some(w);
            }
        }
    }
    Ok((newest.map(|n| (n.tli, seg.segment_start(SegNo(n.segno.0 + 1)))), histories))
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

fn postmaster_running(data: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Decides everything without writing: which backup, where each tablespace goes, the
/// recovery settings.
pub fn plan(req: &RestoreRequest) -> Result<RestorePlan, RestoreError> {
    let (index, choice) = choose_backup(req)?;
    let target_dir = absolute(&req.target_dir);
    check_target_dir(&target_dir, req.delta)?;
    let tablespaces = tablespace_plan(&index, &req.tablespace_maps, req.delta)?;
    Ok(RestorePlan {
        server: req.server.clone(),
        backup_id: choice.backup_id,
        why: choice.why,
        target_dir,
        tablespaces,
        settings: recovery_settings(req)?,
        signal_file: if req.standby { "standby.signal" } else { "recovery.signal" }.into(),
        delta: req.delta,
        index,
    })
}

/// The catalog's usable backups and WAL, and the backup the request and target pick.
fn choose_backup(req: &RestoreRequest) -> Result<(BackupIndex, plan::Choice), RestoreError> {
    let store = req.catalog.store();
    let all = backup_store::load_all(store.as_ref(), &req.server)?;
    let usable: Vec<BackupIndex> = all
        .iter()
        .filter(|b| backup_store::wal_presence(store.as_ref(), b).present)
        .cloned()
        .collect();
    let seg_size = all
        .first()
        .and_then(|b| WalSegSize::new(b.wal_segment_size).ok())
        .unwrap_or_else(|| WalSegSize::new(16 * 1024 * 1024).expect("16 MiB is a valid segment size"));
    let (mut wal_end, histories) = wal_end(store.as_ref(), &req.server, seg_size)?;
    // A backup that carries its own WAL reaches at least its end.
    for b in usable.iter().filter(|b| b.wal_source == backup_store::WalSource::Backup) {
        if wal_end.is_none_or(|(t, l)| (b.end_timeline, b.end_lsn) > (t, l)) {
            wal_end = Some((b.end_timeline, b.end_lsn));
        }
    }
    if let Some(id) = req.backup.as_deref().filter(|i| *i != "latest") {
        if all.iter().any(|b| b.id == id) && !usable.iter().any(|b| b.id == id) {
            return Err(plan::PlanError::NotUsable {
                id: id.to_string(),
                why: "WAL it needs is missing from the catalog (see pgark show-backup)".into(),
            }
            .into());
        }
    }
    let choice = plan::choose(
        &req.server,
        &plan::Catalog {
            backups: &usable,
            wal_end,
            histories: &histories,
        },
        req.backup.as_deref(),
        &req.target,
    )?;
    let index = usable
        .iter()
        .find(|b| b.id == choice.backup_id)
        .cloned()
        .ok_or_else(|| plan::PlanError::UnknownBackup(choice.backup_id.clone()))?;
    Ok((index, choice))
}

/// Refuses a directory a running PostgreSQL uses, and (without delta) one that is not empty.
fn check_target_dir(target_dir: &Path, delta: bool) -> Result<(), RestoreError> {
    if let Some(pid) = postmaster_running(target_dir) {
        return Err(RestoreError::Usage(format!(
            "{} belongs to a running PostgreSQL (postmaster pid {pid}); stop it first",
            target_dir.display()
        )));
    }
    if !delta && !dir_is_empty(target_dir) {
        return Err(RestoreError::Usage(format!(
            "target directory {} is not empty; choose an empty directory, or pass --delta to update an older copy of this cluster in place",
            target_dir.display()
        )));
    }
    Ok(())
}

/// Tablespaces: the mapping given (by name, oid or original location), else back where they
/// were, if that place is free.
fn tablespace_plan(index: &BackupIndex, requested: &[(String, PathBuf)], delta: bool) -> Result<Vec<TablespacePlan>, RestoreError> {
    let mut maps: BTreeMap<u32, PathBuf> = BTreeMap::new();
    for (key, dir) in requested {
        let t = index.tablespaces.iter().filter(|t| t.oid.is_some()).find(|t| {
            t.oid.map(|o| o.to_string()).as_deref() == Some(key.as_str())
                || t.name.as_deref() == Some(key.as_str())
                || t.location.as_deref() == Some(key.as_str())
        });
        let Some(t) = t else {
            let known: Vec<String> = index
                .tablespaces
                .iter()
                .filter_map(|t| {
                    Some(format!(
                        "{} (oid {}, {})",
                        t.name.clone().unwrap_or_else(|| "?".into()),
                        t.oid?,
                        t.location.clone().unwrap_or_default()
                    ))
                })
                .collect();
            return Err(RestoreError::Usage(format!(
                "--tablespace {key}=...: the backup has no tablespace named {key:?}; it has: {}",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        };
        maps.insert(t.oid.unwrap_or_default(), absolute(dir));
    }
    let mut tablespaces = Vec::new();
    for t in &index.tablespaces {
        let (Some(oid), Some(orig)) = (t.oid, t.location.clone()) else {
            continue;
        };
        let location = maps.get(&oid).cloned().unwrap_or_else(|| PathBuf::from(&orig));
        if !delta && !dir_is_empty(&location) {
            return Err(RestoreError::Usage(format!(
                "tablespace {} (oid {oid}) would be restored to {}, which is not empty; map it elsewhere with --tablespace {}=DIR",
                t.name.clone().unwrap_or_default(),
                location.display(),
                t.name.clone().unwrap_or_else(|| oid.to_string())
            )));
        }
        tablespaces.push(TablespacePlan {
            oid,
            name: t.name.clone(),
            original: orig,
            location,
        });
    }
    Ok(tablespaces)
}

/// restore_command (`pgark wal-get` with this binary and config) and the target's settings.
fn recovery_settings(req: &RestoreRequest) -> Result<Vec<(String, String)>, RestoreError> {
    let pgark =
        std::env::current_exe().map_err(|e| RestoreError::Io(std::io::Error::new(e.kind(), format!("locating the pgark binary: {e}"))))?;
    let config_path = std::fs::canonicalize(&req.config_path).unwrap_or_else(|_| absolute(&req.config_path));
    let cmd = recovery::restore_command(&pgark, &config_path, &req.server, req.repo.as_deref());
    Ok(if req.standby {
        vec![
            ("restore_command".to_string(), cmd),
            ("recovery_target_timeline".to_string(), "latest".to_string()),
        ]
    } else {
        recovery::settings(&cmd, &req.target)
    })
}

/// uid and gid of `--owner`'s user.
pub fn lookup_user(name: &str) -> Result<(u32, u32), RestoreError> {
    match crate::util::os::user_ids(name) {
        Ok(Some(ids)) => Ok(ids),
        Ok(None) => Err(RestoreError::Usage(format!("--owner {name:?}: no such user"))),
        Err(e) => Err(RestoreError::Usage(format!("--owner {e}"))),
    }
}

/// Carries out a plan.
pub fn execute(req: &RestoreRequest, plan: &RestorePlan, progress: &mut dyn Progress) -> Result<ExtractStats, RestoreError> {
    let owner = match &req.owner {
        Some(name) => Some(lookup_user(name)?),
        None => None,
    };
    let store: Arc<dyn ObjectStore> = req.catalog.store();
    // A stale postmaster.pid: the cluster crashed (a live one was refused by `plan`), and after a
    // crash file times on disk can lag behind their bytes: read everything.
    let crashed = plan.target_dir.join("postmaster.pid").exists();
    let previous = (plan.delta && !req.verify_existing && !crashed)
        .then(|| record::load(store.as_ref(), &req.server, &plan.target_dir))
        .flatten();
    if let Err(e) = record::remove(store.as_ref(), &req.server, &plan.target_dir) {
        tracing::warn!(server = %req.server, error = %e, "cannot remove the record of the last restore into this directory");
    }
    let opts = ExtractOptions {
        target_dir: plan.target_dir.clone(),
        tablespaces: plan.tablespaces.iter().map(|t| (t.oid, t.location.clone())).collect(),
        delta: plan.delta,
        jobs: req.jobs.max(1),
        owner,
        previous,
        interrupted: req.interrupted.clone(),
        background: req.background,
    };
    let stats = extract::extract(store.clone(), &plan.index, &opts, progress)?;
    if req.interrupted.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(extract::ExtractError::Interrupted.into());
    }
    let rewritten = recovery::write(&plan.target_dir, &plan.settings, req.standby)?;
    extract::finish(&opts, &stats, &[])?;
    save_record(store.as_ref(), &req.server, plan, &stats, &rewritten);
    Ok(stats)
}

/// Records what this restore left on disk, for the next `--delta` into the same directory. A
/// failure costs only that restore's speed, so it is logged, not fatal.
fn save_record(store: &dyn ObjectStore, server: &str, plan: &RestorePlan, stats: &ExtractStats, rewritten: &[PathBuf]) {
    let mut r = record::RestoreRecord::new(&plan.target_dir, &plan.backup_id);
    for (path, chunks) in &stats.restored {
        if rewritten.contains(path) {
            continue;
        }
        if let Some(identity) = record::FileIdentity::of(path) {
            r.files.insert(
                path.display().to_string(),
                record::RecordedFile {
                    identity,
                    chunks: chunks.clone(),
                },
            );
        }
    }
    if let Err(e) = record::save(store, server, &r) {
        tracing::warn!(server, error = %e, "cannot record this restore in the catalog; a later --delta restore here will read every file");
    }
}
