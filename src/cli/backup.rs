//! `pgark backup`: takes a base backup now, with a progress bar on a terminal, and prints its
//! summary (`--json` for scripts; exit codes in `cli::exit`).

use crate::backup::{self, BackupError, BackupJob};
use crate::catalog::Catalog;
use crate::cli::output::summarize;
use crate::cli::{exit, known_server, load_config};
use crate::service::hooks::{HookEvent, Hooks};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// The options of `pgark backup` besides the config and the server.
#[derive(Debug, Default)]
pub struct BackupOptions {
    pub label: Option<String>,
    /// `fast` or `spread`; `None`: the config's.
    pub checkpoint: Option<String>,
    pub max_rate_kb: Option<u32>,
    /// `--keep`: a pin, checked before anything starts.
    pub keep: Option<String>,
    pub json: bool,
    /// `--wait`: how long to wait for a running backup or prune of the server.
    pub lock_wait: std::time::Duration,
    /// `--incremental`.
    pub incremental: crate::backup::IncrementalMode,
}

/// `pgark backup`.
pub async fn backup(path: &Path, server: &str, options: BackupOptions) -> i32 {
    let BackupOptions {
        label,
        checkpoint,
        max_rate_kb,
        keep,
        json,
        lock_wait,
        incremental,
    } = options;
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = known_server(&config, server) {
        return code;
    }
    if let Some(k) = keep.as_deref().filter(|k| *k != "forever") {
        if let Err(m) = crate::cli::prune::parse_until(k, crate::util::time::unix_now()) {
            eprintln!("error: {}", m.replace("--until", "--keep"));
            return exit::USAGE;
        }
    }
    if let Err(e) = config.check_catalog_writable() {
        eprintln!("error: {e}");
        return exit::FAILURE;
    }
    let cfg = config.servers[server].clone();
    let fast = match checkpoint.as_deref() {
        Some("fast") => true,
        Some("spread") => false,
        _ => cfg.backup.fast_checkpoint,
    };
    // The pre_backup hook may veto the backup (docs/configuration.md#hooks).
    let hooks = Hooks::new(&config);
    let pre = hooks.run(HookEvent::pre_backup(server, "manual")).await;
    if pre.vetoes() {
        eprintln!(
            "error: backup of {server} not started: vetoed by the pre_backup hook, which {}",
            pre.describe()
        );
        return exit::FAILURE;
    }
    let cancel = CancellationToken::new();
    let job = BackupJob {
        server: cfg.name.clone(),
        conninfo: cfg.conninfo.clone(),
        settings: cfg.backup.clone(),
        catalog: config.catalog.clone(),
        label,
        fast_checkpoint: fast,
        max_rate_kb: max_rate_kb.or(cfg.backup.max_rate_kb),
        wal_progress: std::sync::Arc::new(crate::cli::daemon_client::DaemonHttp {
            addr: config.metrics_listen.clone(),
            catalog: config.catalog.clone(),
        }),
        disk_pressure: config.disk_pressure,
        cancel: cancel.clone(),
        mirrors: match config.open_repositories() {
            Ok(r) => r.into_iter().map(|r| (r.name, r.catalog)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "the backup is written to the local catalog only; the daemon's uploader copies it when the repository can be opened");
                Vec::new()
            }
        },
        chunks_local: config.backups_local,
        lock_wait,
        incremental,
    };
    let handle = backup::spawn_on_own_thread(job, crate::cli::progress::for_terminal("backup"));
    let stop = cancel.clone();
    let signals = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: abandoning the backup (nothing of it will be kept)");
            stop.cancel();
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let stop = cancel.clone();
    let term_task = tokio::spawn(async move {
        if let Some(t) = term.as_mut() {
            if t.recv().await.is_some() {
                tracing::warn!("SIGTERM: abandoning the backup (nothing of it will be kept)");
                stop.cancel();
            }
        }
    });
    let result = handle
        .await
        .unwrap_or_else(|e| Err(BackupError::Io(std::io::Error::other(format!("backup thread: {e}")))));
    signals.abort();
    term_task.abort();
    let post = match &result {
        Ok(idx) => Some(HookEvent::post_backup(server, "manual", Ok(idx.id.as_str()))),
        Err(BackupError::Cancelled) => None,
        Err(e) => Some(HookEvent::post_backup(server, "manual", Err(&e.to_string()))),
    };
    if let Some(event) = post {
        // Its failure is logged; the backup's own result decides the exit code.
        hooks.run(event).await;
    }
    match result {
        Ok(idx) => {
            let catalog = Catalog::open(&config.catalog);
            if keep.is_some() {
                match crate::cli::prune::pin_backup(catalog.store().as_ref(), server, &idx.id, keep.as_deref()) {
                    Ok(msg) if !json => println!("{msg}"),
                    Ok(_) => {}
                    Err((_, msg)) => {
                        eprintln!("error: the backup is complete but pinning it failed: {msg}");
                        return exit::FAILURE;
                    }
                }
            }
            let view = crate::cli::output::RetentionView::load(
                &catalog,
                server,
                &config.servers[server].retention,
                &config.servers[server].repositories,
            );
            let s = summarize(catalog.store().as_ref(), &idx, &view);
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                println!(
                    "backup {} of {} complete: {} to {} (timeline {}), {} in {} files, {} newly stored, {}s",
                    s.id,
                    s.server,
                    s.start_lsn,
                    s.end_lsn,
                    s.end_timeline,
                    crate::util::units::human_bytes(s.original_bytes),
                    s.file_count,
                    crate::util::units::human_bytes(s.stored_new_bytes),
                    s.duration_seconds
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: backup of {server} failed: {e}");
            exit::for_backup(&e)
        }
    }
}
