//! The daemon's retention and WAL-continuity duties for one server, driven by the backup task's
//! loop (`scheduler`): prune after each backup, at start (which also finishes a prune a crash
//! interrupted) and at least hourly; prune down to `min_redundancy` at the critical disk level
//! when `retention.on_critical_pressure: prune`; and every `disk_pressure.check_interval`
//! (15 s by default), the WAL continuity index (gaps) for `status` and the metrics.

use crate::catalog::continuity::Continuity;
use crate::catalog::dir_watch::DirWatch;
use crate::catalog::offsite_mark::OffsiteHold;
use crate::catalog::space::Level;
use crate::catalog::{backup_store, Catalog, Layout};
use crate::pg::WalSegSize;
use crate::retention::policy::{Mode, OnCriticalPressure, Policy};
use crate::retention::prune::{current_window, PruneError, RecoveryWindow};
use crate::service::status::{RetentionStatus, StatusBoard};
use crate::util::time::unix_now;
use std::time::{Duration, Instant};

/// The policy is applied at least this often.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// After a prune refused by a lock (a backup, restore, verify or drill runs), try again after
/// `RETRY_LOCKED_FIRST`, doubling up to `RETRY_LOCKED`: a backup that has just published still
/// holds its lock for a moment, and the prune it triggered should not wait a minute for that,
/// while a long backup should not make retention look at the catalog every few seconds.
const RETRY_LOCKED_FIRST: Duration = Duration::from_secs(5);
const RETRY_LOCKED: Duration = Duration::from_secs(60);
/// At the critical level, a pressure prune runs at most this often.
const CRITICAL_EVERY: Duration = Duration::from_secs(60);
/// The continuity index and the recovery window are computed again at least this often even
/// when no name in the server's directories changed (a pin that expired moves the floor).
const CONTINUITY_REFRESH: Duration = Duration::from_secs(600);

pub struct Pruner {
    server: String,
    catalog: Catalog,
    policy: Policy,
    /// Repositories whose upload progress holds the local prune back.
    repositories: Vec<String>,
    next_prune: Option<Instant>,
    next_continuity: Option<Instant>,
    next_critical: Option<Instant>,
    /// The backups seen last time (count, newest id): a change recomputes the window.
    seen: (usize, Option<String>),
    /// Prunes refused by a lock since the last one that ran (the retry backs off).
    locked_in_a_row: u32,
    /// The server's directory, its WAL and its backups: the continuity index is read again only
    /// when a name there changed (or `CONTINUITY_REFRESH` passed), so an idle catalog costs
    /// three stats every interval, not a listing of every segment and history file.
    continuity_watch: DirWatch,
    continuity_at: Option<Instant>,
}

impl Pruner {
    pub fn new(server: &str, catalog: Catalog, policy: Policy, repositories: Vec<String>) -> Pruner {
        Pruner {
            server: server.to_string(),
            policy,
            repositories,
            next_prune: None,
            next_continuity: None,
            next_critical: None,
            seen: (0, None),
            locked_in_a_row: 0,
            continuity_watch: DirWatch::new(vec![
                catalog.layout().server_dir(server),
                catalog.root().join(Layout::wal_key(server)),
                catalog.root().join(backup_store::backups_key(server)),
            ]),
            continuity_at: None,
            catalog,
        }
    }

    /// One turn: called by the backup task every poll and right after each backup.
    pub async fn tick(&mut self, board: &StatusBoard, after_backup: bool, level: Level, continuity_every: Duration) {
        let now = Instant::now();
        let critical = level == Level::Critical && self.policy.on_critical_pressure == OnCriticalPressure::Prune;
        let mode = if critical && self.next_critical.is_none_or(|t| now >= t) {
            self.next_critical = Some(now + CRITICAL_EVERY);
            Some(Mode::Critical)
        } else if after_backup || self.next_prune.is_none_or(|t| now >= t) {
            Some(Mode::Normal)
        } else {
            None
        };
        let mut window_known = false;
        if let Some(mode) = mode {
            window_known = self.prune(board, mode).await;
        }
        if after_backup || self.next_continuity.is_none_or(|t| now >= t) {
            self.next_continuity = Some(now + continuity_every);
            // Three stats, off the runtime's threads like every other disk access here (a
            // stalled disk must not stall the daemon).
            let mut watch = self.continuity_watch.clone();
            let changed = match tokio::task::spawn_blocking(move || (watch.changed().unwrap_or(true), watch)).await {
                Ok((changed, watch)) => {
                    self.continuity_watch = watch;
                    changed
                }
                Err(_) => true,
            };
            if changed || after_backup || self.continuity_at.is_none_or(|t| now.duration_since(t) >= CONTINUITY_REFRESH) {
                self.continuity_at = Some(now);
                if !self.continuity(board, !window_known).await {
                    self.continuity_watch.forget();
                }
            }
        }
    }

    /// Applies the policy; true when the report gave the recovery window.
    async fn prune(&mut self, board: &StatusBoard, mode: Mode) -> bool {
        let (catalog, server, policy) = (self.catalog.clone(), self.server.clone(), self.policy.clone());
        let repositories = self.repositories.clone();
        let result = tokio::task::spawn_blocking(move || {
            let hold = OffsiteHold::load(catalog.store().as_ref(), &server, &repositories);
            crate::retention::prune(&catalog, &server, &policy, unix_now(), mode, false, &hold)
        })
        .await;
        let server = self.server.as_str();
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(server, error = %e, "the prune task failed (a bug)");
                self.next_prune = Some(Instant::now() + RETRY_LOCKED);
                return false;
            }
        };
        match result {
            Ok(r) => {
                self.next_prune = Some(Instant::now() + PRUNE_EVERY);
                self.locked_in_a_row = 0;
                if let Some((pid, at)) = r.resumed {
                    tracing::warn!(server, pid, started_at = at, "finished a prune that was interrupted");
                }
                let wal_files: usize = r.wal.iter().map(|w| w.files).sum();
                if !r.backups.is_empty() || wal_files > 0 {
                    tracing::info!(
                        server,
                        backups = r.backups.len(),
                        wal_files,
                        bytes = r.bytes_freed,
                        critical_pressure = r.critical_pressure,
                        "retention: pruned"
                    );
                }
                crate::service::metrics::pruned(server, r.backups.len(), r.bytes_freed, "ok");
                self.publish_window(board, &r.window_after, Some(unix_now()), None);
                true
            }
            Err(PruneError::Locked(e)) => {
                if mode == Mode::Critical && crate::service::verify_task::preempt(server) {
                    // The scheduled verify's shared lock held the prune off: it stops; try
                    // again as soon as it has.
                    tracing::warn!(
                        server,
                        "retention: critical disk level: stopping the scheduled verify so that the prune can run"
                    );
                    self.next_critical = Some(Instant::now() + Duration::from_secs(2));
                }
                let wait = RETRY_LOCKED_FIRST
                    .saturating_mul(1 << self.locked_in_a_row.min(4))
                    .min(RETRY_LOCKED);
                self.locked_in_a_row += 1;
                tracing::info!(server, retry_in_seconds = wait.as_secs(), "retention: prune postponed ({e})");
                self.next_prune = Some(Instant::now() + wait);
                false
            }
            Err(e) => {
                tracing::error!(server, error = %e, "retention: prune failed; trying again in a minute");
                crate::service::metrics::pruned(server, 0, 0, "failed");
                board.update(server, |s| {
                    s.retention.get_or_insert_with(Default::default).last_prune_error = Some(e.to_string());
                });
                self.next_prune = Some(Instant::now() + RETRY_LOCKED);
                false
            }
        }
    }

    /// Reads the WAL directory for gaps since the oldest backup; the recovery window too when
    /// `window` (the backups or the gaps changed since it was last computed). False when it
    /// could not.
    async fn continuity(&mut self, board: &StatusBoard, window: bool) -> bool {
        let (catalog, server) = (self.catalog.clone(), self.server.clone());
        let seen = self.seen.clone();
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let store = catalog.store();
            let ids = backup_store::list_ids(store.as_ref(), &server)?;
            let key = (ids.len(), ids.last().cloned());
            let oldest = crate::catalog::continuity::floor_backup(store.as_ref(), &server, unix_now())
                .ok()
                .flatten();
            let Some(oldest) = oldest else {
                return Ok((key, None, None));
            };
            let Ok(seg) = WalSegSize::new(oldest.wal_segment_size) else {
                return Ok((key, None, None));
            };
            let c = Continuity::load(store.as_ref(), &server, seg, Some(seg.segno(oldest.start_lsn).0))?;
            let gaps: Vec<(String, bool)> = c.gaps.iter().map(|(g, a)| (g.describe(seg), *a)).collect();
            let w = if window || key != seen {
                Some(current_window(&catalog, &server).map_err(|e| std::io::Error::other(e.to_string()))?)
            } else {
                None
            };
            Ok((key, Some(gaps), w))
        })
        .await;
        let server = self.server.as_str();
        match result {
            Ok(Ok((key, gaps, w))) => {
                self.seen = key;
                let gaps = gaps.unwrap_or_default();
                let open: Vec<String> = gaps.iter().filter(|(_, a)| !a).map(|(g, _)| g.clone()).collect();
                let acked = gaps.len() - open.len();
                crate::service::metrics::wal_gaps(server, open.len(), acked);
                if !open.is_empty() {
                    tracing::warn!(server, gaps = ?open, "the catalog's WAL has gaps: point-in-time recovery cannot cross them; take a new backup, and acknowledge known gaps with pgark verify --acknowledge-gap");
                }
                if let Some(w) = w {
                    self.publish_window(board, &w, None, Some((open, acked)));
                } else {
                    board.update(server, |s| {
                        let r = s.retention.get_or_insert_with(Default::default);
                        r.wal_gaps = open;
                        r.wal_gaps_acknowledged = acked;
                    });
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(server, error = %e, "cannot read the catalog's WAL for gaps");
                return false;
            }
            Err(e) => {
                tracing::error!(server, error = %e, "the continuity task failed (a bug)");
                return false;
            }
        }
        true
    }

    fn publish_window(&self, board: &StatusBoard, w: &Option<RecoveryWindow>, pruned_at: Option<u64>, gaps: Option<(Vec<String>, usize)>) {
        crate::service::metrics::recovery_window_start(&self.server, w.as_ref().map(|w| w.from_time));
        board.update(&self.server, |s| {
            let r: &mut RetentionStatus = s.retention.get_or_insert_with(Default::default);
            r.window_start = w.as_ref().map(|w| w.from_time);
            r.window_start_lsn = w.as_ref().map(|w| w.from_lsn);
            r.window_backup = w.as_ref().map(|w| w.backup.clone());
            if let Some(t) = pruned_at {
                r.last_prune_at = Some(t);
                r.last_prune_error = None;
            }
            if let Some((open, acked)) = gaps {
                r.wal_gaps = open;
                r.wal_gaps_acknowledged = acked;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16: an idle catalog's continuity index is not read again every interval;
    /// a change of names in the server's WAL directory is seen at the next tick.
    #[tokio::test]
    async fn an_unchanged_catalog_is_not_read_again() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["main/wal", "main/backups"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        let mut p = Pruner::new("main", Catalog::open(d.path()), Policy::default(), Vec::new());
        p.continuity_watch = std::mem::replace(&mut p.continuity_watch, DirWatch::new(Vec::new())).with_racy_secs(0);
        let board = StatusBoard::default();
        async fn tick(p: &mut Pruner, board: &StatusBoard) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            p.tick(board, false, Level::Ok, Duration::ZERO).await
        }
        // The first ticks (the first prune may write in the server's directory).
        for _ in 0..3 {
            tick(&mut p, &board).await;
        }
        let read_at = p.continuity_at;
        for _ in 0..3 {
            tick(&mut p, &board).await;
        }
        assert_eq!(p.continuity_at, read_at, "an unchanged catalog was read again");
        std::fs::write(d.path().join("main/wal/000000010000000000000001.zst"), b"x").unwrap();
        tick(&mut p, &board).await;
        assert_ne!(p.continuity_at, read_at, "a new segment was not seen");
    }
}
