//! The daemon's per-server drill task: publishes the last successful drill's facts as metrics
//! (also for drills `pgark drill` ran in another process) and, when `drill.schedule` is set, runs
//! a restore drill when one is due.
//!
//! A drill runs on a blocking thread (it restores, starts PostgreSQL and waits for recovery), so
//! it never holds an async worker that streaming needs; `ONE_AT_A_TIME` keeps the servers' drills
//! from running together in this daemon, and the catalog's drill lock (`drill::run`) keeps a
//! `pgark drill` elsewhere from running beside one. The schedule counts from the start of the
//! newest drill in the catalog, whatever its result: a failed drill is reported (metrics, record,
//! log), not retried in a loop that would restore again and again next to production.
//!
//! Cancellation: on stop the running drill is told to stop (`DrillRequest::interrupted`); it stops
//! PostgreSQL at once and removes its directory, and this task waits for that.

use crate::catalog::drill_record;
use crate::catalog::Catalog;
use crate::config::ServerConfig;
use crate::drill::{DrillError, DrillRequest};
use crate::restore::target::{RecoveryTarget, TargetOptions};
use crate::util::time::unix_now;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the catalog's drill records are re-read for the metrics.
const POLL: Duration = Duration::from_secs(60);
/// After a drill that could not start (no usable backup yet, another drill running), wait this
/// long before trying again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(300);

/// One drill at a time in this daemon, whichever server.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Start of the newest drill in the catalog, after publishing the last successful one.
fn refresh(catalog: &std::path::Path, server: &str) -> Option<u64> {
    let store = Catalog::open(catalog).store();
    match drill_record::latest(store.as_ref(), server) {
        Ok((newest, success)) => {
            if let Some(s) = success {
                crate::service::metrics::drill_last_success(server, s.finished_at, s.total_seconds.unwrap_or_default());
            }
            newest.map(|n| n.started_at)
        }
        Err(e) => {
            tracing::warn!(server, error = %e, "cannot read the server's drill records for metrics");
            None
        }
    }
}

pub async fn run(
    cfg: ServerConfig,
    catalog: PathBuf,
    source: crate::catalog::Catalog,
    config_path: PathBuf,
    hooks: crate::service::hooks::Hooks,
    cancel: CancellationToken,
) {
    let server = cfg.name.clone();
    crate::service::metrics::register_drill(&server);
    let mut retry_at: Option<u64> = None;
    loop {
        fail::fail_point!("drill-scheduler");
        let (c, s) = (catalog.clone(), server.clone());
        let last_start = tokio::task::spawn_blocking(move || refresh(&c, &s)).await.ok().flatten();
        let mut wait = POLL;
        if let Some(schedule) = &cfg.drill.schedule {
            let now = unix_now();
            let due = schedule.next_due(last_start, now).max(retry_at.unwrap_or(0));
            wait = wait.min(Duration::from_secs(due.saturating_sub(now).max(1)));
            if due <= now {
                retry_at = None;
                let guard = tokio::select! {
                    _ = cancel.cancelled() => return,
                    g = ONE_AT_A_TIME.lock() => g,
                };
                tracing::info!(server = %server, "scheduled restore drill is due; starting it");
                let result = drill_now(&cfg, &source, &catalog, &config_path, &cancel).await;
                drop(guard);
                match result {
                    Some(Ok(record)) => {
                        let label = if record.success { "success" } else { "failure" };
                        crate::service::metrics::drill_run(&server, label);
                        if record.success {
                            crate::service::metrics::drill_last_success(
                                &server,
                                record.finished_at,
                                record.total_seconds.unwrap_or_default(),
                            );
                            tracing::info!(server = %server, backup = ?record.backup_id, rto_seconds = record.total_seconds, "scheduled restore drill passed");
                        } else {
                            tracing::error!(server = %server, step = ?record.failed_step, error = ?record.error, "scheduled restore drill FAILED");
                        }
                        if let Some(event) = crate::service::hooks::HookEvent::drill_finished(&catalog, &record) {
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                _ = hooks.run(event) => {}
                            }
                        }
                    }
                    Some(Err(e)) => {
                        crate::service::metrics::drill_run(&server, "error");
                        tracing::warn!(server = %server, error = %e, retry_in_seconds = RETRY_AFTER_ERROR.as_secs(), "scheduled restore drill could not start");
                        retry_at = Some(unix_now() + RETRY_AFTER_ERROR.as_secs());
                    }
                    None => return,
                }
                continue;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs one drill on a blocking thread; `None` when the daemon stopped it.
async fn drill_now(
    cfg: &ServerConfig,
    source: &crate::catalog::Catalog,
    catalog: &std::path::Path,
    config_path: &std::path::Path,
    cancel: &CancellationToken,
) -> Option<Result<drill_record::DrillRecord, DrillError>> {
    let target = match RecoveryTarget::from_options(TargetOptions {
        time: None,
        lsn: None,
        xid: None,
        name: None,
        immediate: false,
        timeline: None,
        inclusive: None,
        action: None,
    }) {
        Ok(t) => t,
        Err(e) => return Some(Err(DrillError::Usage(e.to_string()))),
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let req = DrillRequest {
        catalog: catalog.to_path_buf(),
        source: source.clone(),
        config_path: config_path.to_path_buf(),
        server: cfg.name.clone(),
        conninfo_user: Some(cfg.conninfo.user.clone()),
        backup: None,
        target,
        settings: cfg.drill.clone(),
        keep: false,
        interrupted: interrupted.clone(),
    };
    let server = cfg.name.clone();
    let mut handle =
        tokio::task::spawn_blocking(move || crate::drill::run(&req, &mut |line| tracing::info!(server = %server, "drill: {line}")));
    tokio::select! {
        r = &mut handle => Some(r.unwrap_or_else(|e| Err(DrillError::Io(format!("the drill thread died: {e}"))))),
        _ = cancel.cancelled() => {
            interrupted.store(true, Ordering::Relaxed);
            let _ = handle.await;
            None
        }
    }
}
