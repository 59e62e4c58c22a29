//! The backup commands of the CLI: `backup`, `list-backups`, `show-backup`, `delete-backup`.
//! Output for people by default, `--json` for scripts; exit codes in `cli::exit`.

use crate::backup::{self, BackupError, BackupJob};
use crate::catalog::backup_store::{self, BackupIndex, WalPresence};
use crate::catalog::lock::CatalogLock;
use crate::catalog::store::ObjectStore;
use crate::catalog::Catalog;
use crate::cli::exit;
use crate::config::Config;
use serde::Serialize;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// What `list-backups --json` and `show-backup --json` print for one backup (the index without
/// its file list, plus whether it is usable now).
#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub server: String,
    pub id: String,
    pub label: String,
    /// `ok` when usable for a restore; `wal-missing` when WAL it needs is gone from the catalog.
    pub status: &'static str,
    pub usable: bool,
    pub start_time: String,
    pub end_time: String,
    pub duration_seconds: u64,
    pub start_lsn: String,
    pub end_lsn: String,
    pub timeline: u32,
    pub end_timeline: u32,
    pub pg_version: u32,
    pub system_identifier: String,
    pub from_standby: bool,
    pub checkpoint: String,
    pub compression: String,
    pub original_bytes: u64,
    pub stored_new_bytes: u64,
    pub stored_total_bytes: u64,
    pub file_count: usize,
    pub wal_source: backup_store::WalSource,
    pub wal: WalPresence,
    pub tablespaces: Vec<crate::catalog::backup_store::TablespaceRecord>,
}

pub fn summarize(store: &dyn ObjectStore, idx: &BackupIndex) -> BackupSummary {
    let wal = backup_store::wal_presence(store, idx);
    BackupSummary {
        server: idx.server.clone(),
        id: idx.id.clone(),
        label: idx.label.clone(),
        status: if wal.present { "ok" } else { "wal-missing" },
        usable: wal.present,
        start_time: crate::util::time::format_utc(idx.start_time),
        end_time: crate::util::time::format_utc(idx.end_time),
        duration_seconds: idx.end_time.saturating_sub(idx.start_time),
        start_lsn: idx.start_lsn.to_string(),
        end_lsn: idx.end_lsn.to_string(),
        timeline: idx.start_timeline.0,
        end_timeline: idx.end_timeline.0,
        pg_version: idx.pg_version,
        system_identifier: idx.system_identifier.clone(),
        from_standby: idx.from_standby,
        checkpoint: idx.checkpoint.clone(),
        compression: idx.compression.clone(),
        original_bytes: idx.original_bytes,
        stored_new_bytes: idx.stored_new_bytes,
        stored_total_bytes: idx.stored_total_bytes,
        file_count: idx.file_count(),
        wal_source: idx.wal_source,
        wal,
        tablespaces: idx.tablespaces.clone(),
    }
}

fn load_config(path: &Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

fn known_server(config: &Config, server: &str) -> Result<(), i32> {
    if config.servers.contains_key(server) {
        return Ok(());
    }
    let known: Vec<&str> = config.servers.keys().map(String::as_str).collect();
    eprintln!(
        "error: {}: no server named {server:?}; the config defines: {}",
        config.path.display(),
        known.join(", ")
    );
    Err(exit::USAGE)
}

/// `pgark backup`.
pub async fn backup(
    path: &Path,
    server: &str,
    label: Option<String>,
    checkpoint: Option<String>,
    max_rate_kb: Option<u32>,
    json: bool,
) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = known_server(&config, server) {
        return code;
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
    let cancel = CancellationToken::new();
    let job = BackupJob {
        server: cfg.name.clone(),
        conninfo: cfg.conninfo.clone(),
        settings: cfg.backup.clone(),
        catalog: config.catalog.clone(),
        label,
        fast_checkpoint: fast,
        max_rate_kb,
        wal_progress: std::sync::Arc::new(crate::cli::daemon_client::DaemonHttp {
            addr: config.metrics_listen.clone(),
            catalog: config.catalog.clone(),
        }),
        disk_pressure: config.disk_pressure,
        cancel: cancel.clone(),
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
    match result {
        Ok(idx) => {
            let s = summarize(Catalog::open(&config.catalog).store().as_ref(), &idx);
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

fn servers_to_show<'a>(config: &'a Config, server: Option<&'a str>) -> Result<Vec<&'a str>, i32> {
    match server {
        Some(s) => known_server(config, s).map(|_| vec![s]),
        None => Ok(config.servers.keys().map(String::as_str).collect()),
    }
}

/// `pgark list-backups`.
pub fn list_backups(path: &Path, server: Option<&str>, json: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let servers = match servers_to_show(&config, server) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = Catalog::open(&config.catalog).store();
    let mut all = Vec::new();
    for s in servers {
        match backup_store::load_all(store.as_ref(), s) {
            Ok(list) => all.extend(list.iter().map(|i| summarize(store.as_ref(), i))),
            Err(e) => {
                eprintln!("error: {s}: {e}");
                return exit::FAILURE;
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return exit::OK;
    }
    if all.is_empty() {
        println!("no backups");
        return exit::OK;
    }
    println!(
        "{:<12} {:<18} {:<12} {:<24} {:>6} {:>14} {:>14} {:>4} {:>10} {:>10}  LABEL",
        "SERVER", "ID", "STATUS", "START", "SECS", "START LSN", "END LSN", "TLI", "SIZE", "STORED"
    );
    for b in &all {
        println!(
            "{:<12} {:<18} {:<12} {:<24} {:>6} {:>14} {:>14} {:>4} {:>10} {:>10}  {}",
            b.server,
            b.id,
            b.status,
            b.start_time,
            b.duration_seconds,
            b.start_lsn,
            b.end_lsn,
            b.end_timeline,
            crate::util::units::human_bytes(b.original_bytes),
            crate::util::units::human_bytes(b.stored_new_bytes),
            b.label
        );
    }
    exit::OK
}

fn load_one(config: &Config, server: &str, id: &str) -> Result<BackupIndex, i32> {
    known_server(config, server)?;
    let store = Catalog::open(&config.catalog).store();
    backup_store::load(store.as_ref(), server, id).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            backup_store::BackupStoreError::NotFound { .. } => exit::NOT_FOUND,
            _ => exit::FAILURE,
        }
    })
}

/// `pgark show-backup`.
pub fn show_backup(path: &Path, server: &str, id: &str, json: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let idx = match load_one(&config, server, id) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let s = summarize(Catalog::open(&config.catalog).store().as_ref(), &idx);
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return exit::OK;
    }
    let major = s.pg_version / 10000;
    println!("backup {} of server {}", s.id, s.server);
    println!("  label:              {}", s.label);
    println!(
        "  status:             {}{}",
        s.status,
        if s.usable { "" } else { " (not usable for a restore)" }
    );
    println!("  start / end time:   {} / {} ({}s)", s.start_time, s.end_time, s.duration_seconds);
    println!("  start / end LSN:    {} / {}", s.start_lsn, s.end_lsn);
    println!("  timeline:           {} (end {})", s.timeline, s.end_timeline);
    println!(
        "  PostgreSQL:         {major} ({}), system identifier {}{}",
        s.pg_version,
        s.system_identifier,
        if s.from_standby { ", taken from a standby" } else { "" }
    );
    println!(
        "  size:               {} in {} files; stored {} new, {} referenced ({})",
        crate::util::units::human_bytes(s.original_bytes),
        s.file_count,
        crate::util::units::human_bytes(s.stored_new_bytes),
        crate::util::units::human_bytes(s.stored_total_bytes),
        s.compression
    );
    let wal_where = match s.wal_source {
        backup_store::WalSource::Catalog => "catalog",
        backup_store::WalSource::Backup => "inside the backup",
    };
    println!(
        "  WAL needed:         {} to {} ({wal_where}): {}",
        s.wal.first,
        s.wal.last,
        if s.wal.present {
            "present".to_string()
        } else {
            format!("MISSING {}", s.wal.missing.join(", "))
        }
    );
    for t in &s.tablespaces {
        if let (Some(oid), Some(loc)) = (t.oid, &t.location) {
            println!("  tablespace:         {oid} at {loc}");
        }
    }
    exit::OK
}

/// `pgark delete-backup`.
pub fn delete_backup(path: &Path, server: &str, id: &str, force: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let idx = match load_one(&config, server, id) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let store = Catalog::open(&config.catalog).store();
    let _lock = match CatalogLock::acquire_backup(&config.catalog, server) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::LOCKED;
        }
    };
    let _no_restore = match CatalogLock::acquire_no_restore(&config.catalog, server) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::LOCKED;
        }
    };
    let others_usable = match backup_store::load_all(store.as_ref(), server) {
        Ok(all) => all.iter().filter(|b| b.id != id).any(|b| summarize(store.as_ref(), b).usable),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if summarize(store.as_ref(), &idx).usable && !others_usable && !force {
        eprintln!("error: {id} is the only usable backup of {server}; deleting it leaves nothing to restore from. Take a new backup first, or pass --force.");
        return exit::REFUSED;
    }
    if let Err(e) = backup_store::delete(store.as_ref(), server, id) {
        eprintln!("error: deleting {id}: {e}");
        return exit::FAILURE;
    }
    match backup_store::collect_garbage(store.as_ref(), server) {
        Ok(g) => {
            println!(
                "deleted backup {id} of {server}; freed {} in {} chunks",
                crate::util::units::human_bytes(g.bytes),
                g.chunks
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("warning: backup {id} deleted, but removing its chunks failed ({e}); the next backup will retry");
            exit::OK
        }
    }
}
