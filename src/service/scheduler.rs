//! The daemon's per-server backup task: publishes the newest backup's facts as metrics (also for
//! backups taken by `pgark backup` in another process), takes backups when `backup_schedule`
//! says they are due, and gives retention its turns (`retention_task`: after each backup, at
//! least hourly, at the critical disk level).

use crate::backup::schedule::Schedule;
use crate::backup::{BackupError, BackupJob};
use crate::catalog::backup_store::BackupFactsCache;
use crate::catalog::space::DiskThresholds;
use crate::catalog::store::ObjectStore;
use crate::catalog::Catalog;
use crate::config::ServerConfig;
use crate::service::hooks::{HookEvent, Hooks};
use crate::service::status::StatusBoard;
use crate::util::progress::LogLines;
use crate::util::time::unix_now;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the catalog is re-read for metrics and schedule decisions.
const POLL: Duration = Duration::from_secs(15);
/// After a failed scheduled backup, wait this long (or the interval, if shorter) before retrying.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// Start of the newest published backup, after refreshing the metrics and the status board
/// (recovery window start, newest backup) from the catalog. Reads only indexes it has not seen
/// (`BackupFactsCache`).
fn refresh(store: &dyn ObjectStore, cache: &mut BackupFactsCache, server: &str, board: &StatusBoard) -> Option<(u64, String)> {
    match cache.refresh(store, server) {
        Ok(all) => {
            let stored: u64 = all.iter().map(|b| b.stored_new_bytes).sum();
            crate::service::metrics::backups_in_catalog(server, all.len(), stored);
            let oldest_start = all.iter().map(|b| b.start_time).min();
            board.update(server, |s| {
                s.oldest_backup_start = oldest_start;
                s.newest_backup_end = all.last().map(|b| b.end_time);
            });
            let last = all.last()?;
            crate::service::metrics::backup_succeeded_gauges(
                server,
                last.end_time,
                Duration::from_secs(last.end_time.saturating_sub(last.start_time)),
                last.original_bytes,
                last.stored_new_bytes,
            );
            Some((last.start_time, last.id.clone()))
        }
        Err(e) => {
            tracing::warn!(server, error = %e, "cannot read the server's backups for metrics");
            None
        }
    }
}

pub async fn run(
    cfg: ServerConfig,
    catalog: PathBuf,
    disk_pressure: tokio::sync::watch::Receiver<DiskThresholds>,
    board: StatusBoard,
    hooks: Hooks,
    cancel: CancellationToken,
    (mirrors, chunks_local): (Vec<(String, Catalog)>, bool),
) {
    let server = cfg.name.clone();
    let mut retry_at: Option<u64> = None;
    let mut held_back = false;
    // Garbage of interrupted backups first: a walk of the server's backups and chunks, here
    // (not before the receiver starts: a synchronous standby's primary waits for that) and on
    // a blocking thread; the schedule's first backup waits for it, not for its lock.
    let (root, name) = (catalog.clone(), server.clone());
    let cleaning = tokio::task::spawn_blocking(move || crate::backup::clean_interrupted(&root, &name));
    tokio::select! {
        _ = cancel.cancelled() => return,
        r = cleaning => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(server = %server, error = %e, "could not clean up after interrupted backups"),
            Err(e) => tracing::warn!(server = %server, error = %e, "could not clean up after interrupted backups"),
        },
    }
    let mut cache = Some(BackupFactsCache::default());
    let store = Catalog::open(&catalog).store();
    let mut pruner =
        crate::service::retention_task::Pruner::new(&server, Catalog::open(&catalog), cfg.retention.clone(), cfg.repositories.clone());
    let mut after_backup = false;
    // The newest backup's id last seen: a new one (also from `pgark backup`) triggers a prune.
    // By id, not by start time: two small backups can start in the same second.
    let mut seen_newest: Option<String> = None;
    loop {
        fail::fail_point!("backup-scheduler");
        // Catalog reads block: off the async workers.
        let (s, b, name, mut c) = (store.clone(), board.clone(), server.clone(), cache.take().unwrap_or_default());
        let (newest, c) = match tokio::task::spawn_blocking(move || (refresh(s.as_ref(), &mut c, &name, &b), c)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(server = %server, error = %e, "reading the catalog's backups failed (a bug)");
                (None, BackupFactsCache::default())
            }
        };
        cache = Some(c);
        // A backup `pgark backup` took in another process counts as "after a backup" too.
        let last_start = newest.as_ref().map(|(t, _)| *t);
        let newest_id = newest.map(|(_, id)| id);
        if newest_id.is_some() && seen_newest.is_some() && newest_id != seen_newest {
            after_backup = true;
        }
        seen_newest = newest_id.or(seen_newest);
        let level = board
            .catalog_space()
            .map(|s| s.pressure)
            .unwrap_or(crate::catalog::space::Level::Ok);
        let check_interval = disk_pressure.borrow().check_interval;
        pruner.tick(&board, std::mem::take(&mut after_backup), level, check_interval).await;
        // Retention's continuity look and pressure reaction follow the catalog watch's pace.
        let mut wait = POLL.min(check_interval);
        if let Some(schedule) = &cfg.backup.schedule {
            let now = unix_now();
            let due = schedule.next_due(last_start, now).max(retry_at.unwrap_or(0));
            // Wake when the next backup is due, if that comes before the next poll.
            wait = wait.min(Duration::from_secs(due.saturating_sub(now).max(1)));
            let thresholds = *disk_pressure.borrow();
            let refused = match Catalog::open(&catalog).capacity(None) {
                Ok(cap) => thresholds.check_backup_allowed(cap).err(),
                Err(_) => None,
            };
            if due <= now && refused.is_some() != held_back {
                held_back = refused.is_some();
                match &refused {
                    Some(reason) => tracing::warn!(server = %server, "scheduled backup is due but held back: {reason}"),
                    None => tracing::info!(server = %server, "catalog space is back above the critical level; scheduled backups resume"),
                }
            }
            if due <= now && refused.is_none() {
                // The pre_backup hook may veto the backup (see `service::hooks`): the veto is
                // retried like a failed backup, and is no backup failure (the hook's failure is
                // counted instead).
                // A stop does not wait for the hook: dropping the run kills its process group.
                let pre = tokio::select! {
                    _ = cancel.cancelled() => return,
                    o = hooks.run(HookEvent::pre_backup(&server, "scheduled")) => o,
                };
                if pre.vetoes() {
                    let wait = retry_wait(schedule);
                    tracing::error!(server = %server, retry_in_seconds = wait.as_secs(),
                        "scheduled backup NOT started: vetoed by the pre_backup hook, which {}", pre.describe());
                    retry_at = Some(unix_now() + wait.as_secs());
                    continue;
                }
                if cancel.is_cancelled() {
                    return;
                }
                tracing::info!(server = %server, "scheduled backup is due; starting it");
                let job = BackupJob {
                    server: cfg.name.clone(),
                    conninfo: cfg.conninfo.clone(),
                    settings: cfg.backup.clone(),
                    catalog: catalog.clone(),
                    label: Some(format!("scheduled {}", schedule_text(schedule))),
                    fast_checkpoint: cfg.backup.fast_checkpoint,
                    max_rate_kb: cfg.backup.max_rate_kb,
                    wal_progress: std::sync::Arc::new(board.clone()),
                    disk_pressure: thresholds,
                    cancel: cancel.child_token(),
                    mirrors: mirrors.clone(),
                    chunks_local,
                    // A `pgark backup` or prune running now: this turn is retried later.
                    lock_wait: std::time::Duration::ZERO,
                    incremental: crate::backup::incremental::scheduled_mode(
                        Catalog::open(&catalog).store().as_ref(),
                        &server,
                        cfg.backup.full_every,
                        unix_now(),
                    ),
                };
                let handle = crate::backup::spawn_on_own_thread(job, Box::new(LogLines::new("backup")));
                let result = handle.await;
                let post = match &result {
                    Ok(Ok(idx)) => Some(HookEvent::post_backup(&server, "scheduled", Ok(idx.id.as_str()))),
                    Ok(Err(BackupError::Cancelled)) => None,
                    Ok(Err(e)) => Some(HookEvent::post_backup(&server, "scheduled", Err(&e.to_string()))),
                    Err(_) => Some(HookEvent::post_backup(
                        &server,
                        "scheduled",
                        Err("the backup thread ended without a result"),
                    )),
                };
                if let Some(event) = post {
                    // Bounded by the hook's timeout (and by a stop); a failure is logged and
                    // counted by `run`.
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = hooks.run(event) => {}
                    }
                }
                match result {
                    Ok(Ok(idx)) => {
                        tracing::info!(server = %server, id = %idx.id, "scheduled backup complete");
                        // The duration comes from the index (whole seconds), like the refresh
                        // from the catalog, so that the gauge does not change when it runs.
                        crate::service::metrics::backup_succeeded(
                            &server,
                            idx.end_time,
                            Duration::from_secs(idx.end_time.saturating_sub(idx.start_time)),
                            idx.original_bytes,
                            idx.stored_new_bytes,
                        );
                        retry_at = None;
                        after_backup = true;
                    }
                    Ok(Err(BackupError::Cancelled)) => return,
                    Ok(Err(e)) => {
                        // A backup not started (another one holds the lock, no space) is not a
                        // failed backup.
                        if !matches!(e, BackupError::Locked(_) | BackupError::DiskPressure { .. }) {
                            crate::service::metrics::backup_failed(&server);
                        }
                        let wait = retry_wait(schedule);
                        tracing::error!(server = %server, error = %e, retry_in_seconds = wait.as_secs(), "scheduled backup failed");
                        retry_at = Some(unix_now() + wait.as_secs());
                    }
                    Err(_) => tracing::error!(server = %server, "scheduled backup thread ended without a result"),
                }
                continue;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(if held_back {
                // A due backup waits for space: look again as often as space is measured.
                wait.min(disk_pressure.borrow().check_interval)
            } else {
                wait
            }) => {}
        }
    }
}

/// How long after a failed (or vetoed) scheduled backup the next attempt waits.
fn retry_wait(schedule: &Schedule) -> Duration {
    match schedule {
        Schedule::Every(d) => RETRY_AFTER_FAILURE.min(*d),
        Schedule::Cron { .. } => RETRY_AFTER_FAILURE,
    }
}

fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron { text, .. } => format!("cron {text}"),
    }
}
