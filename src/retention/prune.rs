//! Applying the policy to the catalog: read one server's backups, pins and WAL, ask `policy`
//! what stays, and delete the rest safely.
//!
//! Safety, in order:
//! - the server's backup lock and the exclusive side of its restore lock are held for the whole
//!   prune (a running backup, restore, verify or drill makes the prune wait for its next turn:
//!   it never deletes what they read);
//! - the intent record (`catalog::prune_intent`) is written before the first deletion; a prune
//!   killed midway leaves it and the next one finishes the job (what the policy still lets go;
//!   a backup pinned in between is kept, which undoes that part);
//! - backups go first (each by removing its index, one atomic step), oldest first; WAL after,
//!   only segments older than the oldest backup a rule keeps (pinned backups keep their own
//!   start-to-end WAL), never one the archiver has not processed yet, never a `.history` file
//!   (a few hundred bytes each, and recovery reads them to follow timelines);
//! - chunks no remaining backup references go last (`collect_garbage`);
//! - nothing an off-site repository still lacks is deleted (`OffsiteHold`), unless disk
//!   pressure is critical (then it is deleted, logged and counted in the report).

use super::policy::{decide, BackupFacts, Mode, Policy, Verdict};
use crate::catalog::backup_store::{self, segment_range, BackupIndex, BackupStoreError};
use crate::catalog::continuity::{list_wal, Continuity, WalObjectKind};
use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::offsite_mark::OffsiteHold;
use crate::catalog::pin;
use crate::catalog::prune_intent::{self, PruneIntent};
use crate::catalog::Catalog;
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegSize};
use serde::Serialize;
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("{0}")]
    Locked(#[from] LockError),
    #[error("{0}")]
    Catalog(#[from] BackupStoreError),
    #[error("backup index {key}: {reason}; retention stops here until it is removed (pgark delete-backup --force {server} {id}) or restored from a copy")]
    UnreadableIndex {
        key: String,
        reason: String,
        server: String,
        id: String,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PruneError {
    let what = what.into();
    move |source| PruneError::Io { what, source }
}

/// The earliest point a restore can reach without crossing a gap in the WAL, up to the newest WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryWindow {
    /// The backup it starts from.
    pub backup: String,
    /// Unix seconds and LSN where that backup is consistent.
    pub from_time: u64,
    pub from_lsn: Lsn,
    /// The newest WAL segment held.
    pub to_segment: Option<String>,
}

/// A run of WAL segments that would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRange {
    pub timeline: TimelineId,
    pub first: String,
    pub last: String,
    pub files: usize,
    pub bytes: u64,
}

/// A backup that would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoomedBackup {
    pub id: String,
    pub end_time: u64,
    pub reason: String,
}

/// What a prune of one server decides (and, unless a dry run, did).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub server: String,
    pub dry_run: bool,
    pub critical_pressure: bool,
    /// An interrupted prune this run finished (its pid and start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<(u32, u64)>,
    pub verdicts: Vec<Verdict>,
    pub backups: Vec<DoomedBackup>,
    pub wal: Vec<WalRange>,
    pub window_before: Option<RecoveryWindow>,
    pub window_after: Option<RecoveryWindow>,
    /// Bytes freed: WAL plus chunks no longer referenced (estimated in a dry run: WAL only).
    pub bytes_freed: u64,
    pub chunks_removed: usize,
    /// Backups and WAL files the policy lets go but a repository still lacks: kept.
    pub held_for_offsite: Vec<String>,
    pub wal_held_for_offsite: usize,
    /// WAL files the policy lets go but object lock still protects (a repository's): kept.
    pub wal_locked: usize,
    /// At critical pressure: backups and WAL files deleted although a repository lacked them.
    pub offsite_overridden: usize,
}

/// What one backup looks like to the policy, with its index.
struct Loaded {
    index: BackupIndex,
    facts: BackupFacts,
}

fn load_backups(catalog: &Catalog, server: &str, now: u64) -> Result<Vec<Loaded>, PruneError> {
    let store = catalog.store();
    let pins = pin::load_all(store.as_ref(), server).map_err(io(format!("reading the pins of {server}")))?;
    // An index that does not load stops the prune (its WAL and chunks are unknown: deleting
    // around it could take what it needs), with an error that says how to get past it.
    let mut indexes = Vec::new();
    for id in backup_store::list_ids(store.as_ref(), server).map_err(io(format!("listing the backups of {server}")))? {
        match backup_store::load(store.as_ref(), server, &id) {
            Ok(i) => indexes.push(i),
            Err(BackupStoreError::BadIndex { key, reason }) => {
                return Err(PruneError::UnreadableIndex {
                    key,
                    reason,
                    server: server.to_string(),
                    id,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(indexes
        .into_iter()
        .map(|index| {
            let usable = backup_store::wal_presence(store.as_ref(), &index).present;
            let pinned = pins.get(&index.id).filter(|p| p.active(now)).map(|p| match p.until {
                pin::PinUntil::Forever => None,
                pin::PinUntil::Time(t) => Some(t),
            });
            Loaded {
                facts: BackupFacts {
                    id: index.id.clone(),
                    start_time: index.start_time,
                    end_time: index.end_time,
                    usable,
                    pinned,
                },
                index,
            }
        })
        .collect())
}

/// The recovery window given the backups that anchor WAL (oldest first).
fn window<'a>(anchors: impl Iterator<Item = &'a BackupIndex>, continuity: &Continuity, seg: WalSegSize) -> Option<RecoveryWindow> {
    let to_segment = continuity.holdings.newest().map(|n| n.format(seg));
    anchors
        .filter(|b| continuity.first_gap_after(seg.segno(b.end_lsn).0).is_none())
        .map(|b| RecoveryWindow {
            backup: b.id.clone(),
            from_time: b.end_time,
            from_lsn: b.end_lsn,
            to_segment: to_segment.clone(),
        })
        .next()
}

/// The window of a server as it is now (for `list-backups` and the metrics): from the oldest
/// restorable backup whose WAL runs without a gap to the newest segment.
pub fn current_window(catalog: &Catalog, server: &str) -> Result<Option<RecoveryWindow>, PruneError> {
    let store = catalog.store();
    let backups = backup_store::load_all(store.as_ref(), server)?;
    let Some(seg) = backups.first().and_then(|b| WalSegSize::new(b.wal_segment_size).ok()) else {
        return Ok(None);
    };
    let continuity = Continuity::load(store.as_ref(), server, seg, None).map_err(io(format!("listing the WAL of {server}")))?;
    let usable: Vec<&BackupIndex> = backups
        .iter()
        .filter(|b| backup_store::wal_presence(store.as_ref(), b).present)
        .collect();
    Ok(window(usable.into_iter(), &continuity, seg))
}

/// Decides and (unless `dry_run`) applies `policy` to `server`. Deleting takes the server's
/// backup and restore locks (refused at once, `PruneError::Locked`, while a backup, restore,
/// verify or drill of the server runs). A prune with nothing to delete and nothing to finish
/// takes no lock at all (the daemon asks hourly and after every backup, and must not get in the
/// way of a `pgark prune` or a backup starting then); a dry run never does.
pub fn prune(
    catalog: &Catalog,
    server: &str,
    policy: &Policy,
    now: u64,
    mode: Mode,
    dry_run: bool,
    hold: &OffsiteHold,
) -> Result<PruneReport, PruneError> {
    let look = plan(catalog, server, policy, now, mode, true, hold)?;
    let idle = look.backups.is_empty() && look.wal.is_empty() && look.resumed.is_none();
    if dry_run || idle {
        return Ok(PruneReport { dry_run, ..look });
    }
    let _backup = CatalogLock::acquire_backup(catalog.root(), server)?;
    let _restore = CatalogLock::acquire_no_restore(catalog.root(), server)?;
    // Decided again under the locks: the catalog may have changed since the look.
    plan(catalog, server, policy, now, mode, false, hold)
}

/// The decision, and with `look_only` false its execution (the caller holds the locks).
fn plan(
    catalog: &Catalog,
    server: &str,
    policy: &Policy,
    now: u64,
    mode: Mode,
    look_only: bool,
    hold: &OffsiteHold,
) -> Result<PruneReport, PruneError> {
    let dry_run = look_only;
    let store = catalog.store();
    let leftover = prune_intent::load(store.as_ref(), server).map_err(io(format!("reading the prune intent of {server}")))?;
    let loaded = load_backups(catalog, server, now)?;
    let facts: Vec<BackupFacts> = loaded.iter().map(|l| l.facts.clone()).collect();
    let mut verdicts = decide(policy, &facts, now, mode);
    let (mut held, mut overridden) = (Vec::new(), 0usize);
    // A backup a repository lacks stays (and so does its WAL) until it is uploaded.
    for (l, v) in loaded.iter().zip(verdicts.iter_mut()) {
        if v.keep() {
            continue;
        }
        if let Some(repo) = hold.lacks_backup(&l.index.id) {
            if mode == Mode::Critical {
                tracing::warn!(server, backup = %l.index.id, repository = repo, "retention: critical disk pressure: deleting a backup the repository does not have yet");
                overridden += 1;
            } else {
                held.push(l.index.id.clone());
                v.kept_by.push(super::policy::Reason::Offsite(repo.to_string()));
                v.prune_reason.clear();
            }
        }
    }
    // A repository with object lock: a backup whose index is still locked stays (its delete
    // would be refused; pgark never tries). Free on any other store (no lock, no request).
    for (l, v) in loaded.iter().zip(verdicts.iter_mut()) {
        if v.keep() {
            continue;
        }
        let key = backup_store::index_key(server, &l.index.id);
        if let Some(until) = store
            .locked_until(&key)
            .map_err(io(format!("reading the lock of {key}")))?
            .filter(|&t| t > now as i64)
        {
            v.kept_by.push(super::policy::Reason::Locked(until));
            v.prune_reason.clear();
        }
    }
    let seg = loaded.first().and_then(|l| WalSegSize::new(l.index.wal_segment_size).ok());
    let mut report = PruneReport {
        server: server.to_string(),
        dry_run,
        critical_pressure: mode == Mode::Critical,
        resumed: leftover.as_ref().map(|i| (i.pid, i.started_at)),
        verdicts: verdicts.clone(),
        backups: vec![],
        wal: vec![],
        window_before: None,
        window_after: None,
        bytes_freed: 0,
        chunks_removed: 0,
        held_for_offsite: held,
        wal_held_for_offsite: 0,
        wal_locked: 0,
        offsite_overridden: overridden,
    };
    let Some(seg) = seg else {
        finish_leftover(catalog, server, leftover.is_some(), dry_run)?;
        return Ok(report);
    };
    let continuity = Continuity::load(store.as_ref(), server, seg, None).map_err(io(format!("listing the WAL of {server}")))?;
    report.window_before = window(loaded.iter().filter(|l| l.facts.usable).map(|l| &l.index), &continuity, seg);
    report.window_after = window(
        loaded
            .iter()
            .zip(&verdicts)
            .filter(|(l, v)| l.facts.usable && v.anchors_wal())
            .map(|(l, _)| &l.index),
        &continuity,
        seg,
    );
    report.backups = loaded
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| !v.keep())
        .map(|(l, v)| DoomedBackup {
            id: l.index.id.clone(),
            end_time: l.index.end_time,
            reason: v.prune_reason.clone(),
        })
        .collect();
    if let Some(i) = &leftover {
        let undone: Vec<&String> = i
            .backups
            .iter()
            .filter(|id| !report.backups.iter().any(|b| &b.id == *id) && loaded.iter().any(|l| &l.index.id == *id))
            .collect();
        if !undone.is_empty() {
            tracing::warn!(server, backups = ?undone, "an interrupted prune meant to delete these backups; the policy keeps them now, so they stay");
        }
    }
    let wal_keys = wal_to_delete(catalog, server, seg, &loaded, &verdicts, Occasion { now, hold, mode }, &mut report)?;
    // Nothing to delete and nothing left to finish: no intent record, no chunk walk (the
    // garbage collection reads every index, too much for a no-op).
    if dry_run || (report.backups.is_empty() && wal_keys.is_empty() && leftover.is_none()) {
        return Ok(report);
    }
    prune_intent::save(
        store.as_ref(),
        server,
        &PruneIntent::new(now, report.backups.iter().map(|b| b.id.clone()).collect(), wal_keys.clone()),
    )
    .map_err(io(format!("writing the prune intent of {server}")))?;
    let mut pinned_meanwhile = Vec::new();
    for b in &report.backups {
        // A `pgark keep` may have landed since the pins were read: look again, just before.
        if pin::load(store.as_ref(), server, &b.id)
            .map_err(io(format!("reading the pin of {}", b.id)))?
            .is_some_and(|p| p.active(now))
        {
            tracing::warn!(server, backup = %b.id, "retention: the backup was pinned while the prune ran; keeping it");
            pinned_meanwhile.push(b.id.clone());
            continue;
        }
        tracing::info!(server, backup = %b.id, reason = %b.reason, "retention: deleting backup");
        backup_store::delete(store.as_ref(), server, &b.id).map_err(io(format!("deleting backup {} of {server}", b.id)))?;
        fail::fail_point!("prune-after-backup");
    }
    if !pinned_meanwhile.is_empty() {
        // The WAL plan assumed those backups would go: leave the WAL to the next prune.
        report.backups.retain(|b| !pinned_meanwhile.contains(&b.id));
        report.wal.clear();
        report.bytes_freed = 0;
    } else {
        for k in &wal_keys {
            store.delete(k).map_err(io(format!("deleting {k}")))?;
        }
    }
    if !report.wal.is_empty() {
        for r in &report.wal {
            tracing::info!(server, timeline = r.timeline.0, first = %r.first, last = %r.last, files = r.files, "retention: deleted WAL");
        }
    }
    let g = backup_store::collect_garbage(store.as_ref(), server)?;
    report.bytes_freed += g.bytes;
    report.chunks_removed = g.chunks;
    prune_intent::remove(store.as_ref(), server).map_err(io(format!("removing the prune intent of {server}")))?;
    Ok(report)
}

/// With no backups at all, an intent record can only be the remains of a prune that deleted
/// the last one: nothing left to do but remove it.
fn finish_leftover(catalog: &Catalog, server: &str, leftover: bool, dry_run: bool) -> Result<(), PruneError> {
    if leftover && !dry_run {
        let store = catalog.store();
        backup_store::collect_garbage(store.as_ref(), server)?;
        prune_intent::remove(store.as_ref(), server).map_err(io(format!("removing the prune intent of {server}")))?;
    }
    Ok(())
}

/// How long after a `pgark restore` finished the WAL from its backup's start is kept whatever
/// the policy says: PostgreSQL recovers the restored copy later, through `wal-get`, and a prune
/// must not delete what that recovery has yet to read.
pub const RESTORE_LEASE: u64 = 24 * 3600;

/// The oldest segment a recent restore may still read (see `RESTORE_LEASE`), from the restore
/// records (`<server>/restores/`): the start segment of the backup each restored.
fn leased_floor(catalog: &Catalog, server: &str, seg: WalSegSize, loaded: &[Loaded], now: u64) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Lease {
        backup_id: String,
        written_at: u64,
    }
    let store = catalog.store();
    let keys = store.list(&format!("{server}/restores")).ok()?;
    keys.iter()
        .filter_map(|k| store.get(k).ok().flatten())
        .filter_map(|b| serde_json::from_slice::<Lease>(&b).ok())
        .filter(|l| l.written_at + RESTORE_LEASE > now)
        .filter_map(|l| loaded.iter().find(|b| b.index.id == l.backup_id))
        .map(|b| seg.segno(b.index.start_lsn).0)
        .min()
}

/// When a prune runs, and under which constraints: the time, what repositories still lack, and
/// whether disk pressure is critical (then the repositories' lack is overridden).
struct Occasion<'a> {
    now: u64,
    hold: &'a OffsiteHold,
    mode: Mode,
}

/// The WAL objects that go (keys), and the ranges for the report.
fn wal_to_delete(
    catalog: &Catalog,
    server: &str,
    seg: WalSegSize,
    loaded: &[Loaded],
    verdicts: &[Verdict],
    Occasion { now, hold, mode }: Occasion,
    report: &mut PruneReport,
) -> Result<Vec<String>, PruneError> {
    // The oldest start among the backups a rule keeps: WAL before it serves no retained backup.
    let Some(cutoff) = loaded
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| v.anchors_wal())
        .map(|(l, _)| seg.segno(l.index.start_lsn).0)
        .min()
    else {
        return Ok(vec![]);
    };
    let cutoff = match leased_floor(catalog, server, seg, loaded, now) {
        Some(floor) if floor < cutoff => {
            tracing::info!(server, "retention: keeping the WAL a restore of the last 24 hours may still replay");
            floor
        }
        _ => cutoff,
    };
    // Pinned (and other kept) backups below the cutoff keep their own start-to-end segments.
    let protected: Vec<(u64, u64)> = loaded
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| v.keep())
        .map(|(l, _)| segment_range(seg, l.index.start_lsn, l.index.end_lsn))
        .collect();
    let store = catalog.store();
    let listing = list_wal(store.as_ref(), server, seg).map_err(io(format!("listing the WAL of {server}")))?;
    // A plain file is the archiver's until it is done with it: with compression it publishes
    // the `.zst` and then recycles the plain file as a spare (a rename this prune must not race),
    // without it it publishes a `.sum`. So a segment with a plain file and no `.sum` waits.
    let summed: BTreeSet<WalFileName> = listing
        .objects
        .iter()
        .filter(|o| o.kind == WalObjectKind::Sum)
        .map(|o| o.name)
        .collect();
    let archivers: BTreeSet<WalFileName> = listing
        .objects
        .iter()
        .filter(|o| o.kind == WalObjectKind::Plain && !summed.contains(&o.name))
        .map(|o| o.name)
        .collect();
    let mut keys = Vec::new();
    let mut doomed: Vec<(WalFileName, u64)> = Vec::new();
    for o in &listing.objects {
        let n = o.name.segno.0;
        if n >= cutoff || protected.iter().any(|&(a, b)| (a..=b).contains(&n)) {
            continue;
        }
        // Nor a `.partial`: the receiver may be writing it (a catch-up below a backup that
        // carried its own WAL), and an ended timeline's last one is small.
        if archivers.contains(&o.name) || o.kind == WalObjectKind::Partial {
            continue;
        }
        if let Some(repo) = hold.lacks_wal(&o.name.format(seg)) {
            if mode != Mode::Critical {
                report.wal_held_for_offsite += 1;
                continue;
            }
            tracing::warn!(server, segment = %o.name.format(seg), repository = repo, "retention: critical disk pressure: deleting WAL the repository does not have yet");
            report.offsite_overridden += 1;
        }
        if store
            .locked_until(&o.key)
            .map_err(io(format!("reading the lock of {}", o.key)))?
            .is_some_and(|t| t > now as i64)
        {
            // Below every retained backup's start, so a hole here harms no restore.
            report.wal_locked += 1;
            continue;
        }
        let size = store.size(&o.key).ok().flatten().unwrap_or(0);
        keys.push(o.key.clone());
        doomed.push((o.name, size));
    }
    doomed.sort_by_key(|(n, _)| (n.tli, n.segno));
    for (name, size) in doomed {
        report.bytes_freed += size;
        match report.wal.last_mut() {
            Some(r) if r.timeline == name.tli && WalFileName::parse(&r.last, seg).is_ok_and(|l| l.segno.0 + 1 >= name.segno.0) => {
                r.files += 1;
                r.last = name.format(seg);
                r.bytes += size;
            }
            _ => report.wal.push(WalRange {
                timeline: name.tli,
                first: name.format(seg),
                last: name.format(seg),
                files: 1,
                bytes: size,
            }),
        }
    }
    Ok(keys)
}
