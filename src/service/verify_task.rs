//! The daemon's scheduled verify of one server (`verify_schedule`): every backup, newest first,
//! and the WAL from the oldest one's start to the newest segment, read at `verify_max_rate` so
//! that WAL streaming never waits behind it. Each backup's result is stored in the catalog (as by
//! `pgark verify`); the run's outcome goes to the metrics and the log.

use crate::catalog::backup_store;
use crate::catalog::Catalog;
use crate::config::ServerConfig;
use crate::util::progress::LogLines;
use crate::util::time::unix_now;
use crate::verify::{Options, Selection, VerifyError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a server without backups is looked at again.
const POLL: Duration = Duration::from_secs(15);
/// After a verify that could not run to its end, try again this much later.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(600);
/// After a verify stopped for a critical-pressure prune, wait this long before starting again.
const RETRY_AFTER_PREEMPT: Duration = Duration::from_secs(600);

/// The end of the last verify found in the catalog: the newest backup's stored result, and
/// whether it was intact. Read once at start, so that a restart does not verify again at once.
/// The stop flags of the scheduled verifies running now, by server: a prune at the critical
/// disk level stops one (`preempt`), since the verify's shared restore lock would hold the prune
/// off for hours while the catalog fills.
static RUNNING: std::sync::Mutex<std::collections::BTreeMap<String, Arc<AtomicBool>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Stops the scheduled verify of `server` if one runs; whether one did.
pub fn preempt(server: &str) -> bool {
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    match running.get(server) {
        Some(stop) => {
            stop.store(true, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

fn last_stored(catalog: &Catalog, server: &str) -> Option<(u64, bool)> {
    // The newest result of any backup: with frequent backups the newest backup has often not
    // been verified yet, and a restart must not start a full verify at once because of that.
    let store = catalog.store();
    let ids = backup_store::list_ids(store.as_ref(), server).ok()?;
    ids.iter()
        .filter_map(|id| crate::verify::record::load(store.as_ref(), server, id))
        .max_by_key(|r| r.verified_at)
        .map(|r| (r.verified_at, r.problem_count == 0))
}

/// Runs until `cancel`; returns at once when the server has no `verify_schedule`.
/// `catalog`: where backups are read (`Config::backup_catalog`).
pub async fn run(cfg: ServerConfig, catalog: Catalog, hooks: crate::service::hooks::Hooks, cancel: CancellationToken) {
    let Some(schedule) = cfg.verify_schedule.clone() else {
        // Nothing to do, but stay: the daemon supervises this task and restarts it when it ends.
        cancel.cancelled().await;
        return;
    };
    let server = cfg.name.clone();
    let (c, s) = (catalog.clone(), server.clone());
    let stored = tokio::task::spawn_blocking(move || last_stored(&c, &s)).await.ok().flatten();
    crate::service::metrics::register_verify(&server, stored.filter(|(_, ok)| *ok).map(|(t, _)| t));
    let mut last = stored.map(|(t, _)| t);
    let mut not_before = 0u64;
    loop {
        let now = unix_now();
        let due = schedule.next_due(last, now).max(not_before);
        if due > now {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(due - now).min(POLL)) => continue,
            }
        }
        tracing::info!(server = %server, max_rate = cfg.verify_max_rate, "scheduled verify is due; starting it");
        let stop = Arc::new(AtomicBool::new(false));
        let opts = Options {
            jobs: 2,
            max_rate: Some(cfg.verify_max_rate),
            stop: stop.clone(),
        };
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server.clone(), stop.clone());
        let (c, s) = (catalog.clone(), server.clone());
        let mut job =
            tokio::task::spawn_blocking(move || crate::verify::verify(&c, &s, &Selection::All, &opts, &mut LogLines::new("verify")));
        let outcome = tokio::select! {
            r = &mut job => r,
            _ = cancel.cancelled() => {
                stop.store(true, Ordering::Relaxed);
                let _ = job.await;
                RUNNING.lock().unwrap_or_else(|e| e.into_inner()).remove(&server);
                return;
            }
        };
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).remove(&server);
        let ended = unix_now();
        match outcome {
            Ok(Ok(report)) if report.problems.is_empty() => {
                tracing::info!(server = %server, backups = report.backups.len(), segments = report.segments_checked,
                    bytes = report.bytes_checked, seconds = report.seconds, "scheduled verify: everything intact");
                crate::service::metrics::verify_finished(&server, "ok", Some(0), ended);
                last = Some(ended);
            }
            Ok(Ok(report)) => {
                for p in &report.problems {
                    tracing::error!(server = %server, "verify: {p}");
                }
                for u in &report.unreachable {
                    tracing::error!(server = %server, "verify: {u}");
                }
                tracing::error!(server = %server, problems = report.problems.len(), "scheduled verify found damaged or missing data; `pgark verify --all` shows it");
                crate::service::metrics::verify_finished(&server, "damaged", Some(report.problems.len() as u64), ended);
                if let Some(event) = crate::service::hooks::HookEvent::verify_found(catalog.root(), &report) {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = hooks.run(event) => {}
                    }
                }
                last = Some(ended);
            }
            Ok(Err(VerifyError::NoBackups(_))) => not_before = ended + POLL.as_secs(),
            Ok(Err(VerifyError::Stopped)) if cancel.is_cancelled() => return,
            Ok(Err(VerifyError::Stopped)) => {
                tracing::warn!(server = %server, "scheduled verify stopped so that a prune can free space (critical disk level); it starts again in 10 minutes");
                not_before = ended + RETRY_AFTER_PREEMPT.as_secs();
            }
            Ok(Err(e)) => {
                tracing::error!(server = %server, error = %e, retry_in_seconds = RETRY_AFTER_FAILURE.as_secs(), "scheduled verify failed");
                crate::service::metrics::verify_finished(&server, "failed", None, ended);
                let event = crate::service::hooks::HookEvent::on_verify_failure(&server, &[], 0, &e.to_string());
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = hooks.run(event) => {}
                }
                not_before = ended + RETRY_AFTER_FAILURE.as_secs();
            }
            Err(e) => {
                tracing::error!(server = %server, error = %e, "scheduled verify thread ended without a result (a bug)");
                crate::service::metrics::verify_finished(&server, "failed", None, ended);
                not_before = ended + RETRY_AFTER_FAILURE.as_secs();
            }
        }
    }
}
