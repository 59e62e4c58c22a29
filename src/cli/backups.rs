//! `list-backups`, `show-backup` and `delete-backup`.

use crate::catalog::backup_store::{self, BackupIndex};
use crate::catalog::lock::CatalogLock;
use crate::catalog::Catalog;
use crate::cli::output::{summarize, RetentionView};
use crate::cli::{exit, known_server, load_config};
use crate::config::Config;
use std::path::Path;

fn servers_to_show<'a>(config: &'a Config, server: Option<&'a str>) -> Result<Vec<&'a str>, i32> {
    match server {
        Some(s) => known_server(config, s).map(|_| vec![s]),
        None => Ok(config.servers.keys().map(String::as_str).collect()),
    }
}

/// `pgark list-backups`.
pub fn list_backups(path: &Path, repo: Option<&str>, server: Option<&str>, json: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let servers = match servers_to_show(&config, server) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let catalog = match crate::cli::catalog_for(&config, repo, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = catalog.store();
    let mut all = Vec::new();
    let mut windows = Vec::new();
    let mut damaged = false;
    for s in servers {
        let (policy, holders) = crate::cli::policy_for(&config, s, repo);
        let view = RetentionView::load(&catalog, s, &policy, &holders);
        let ids = match backup_store::list_ids(store.as_ref(), s) {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!("error: {s}: {e}");
                return exit::FAILURE;
            }
        };
        // One unreadable index is reported, not a reason to hide every other backup.
        for id in ids {
            match backup_store::load(store.as_ref(), s, &id) {
                Ok(i) => all.push(summarize(store.as_ref(), &i, &view)),
                // Deleted since it was listed (a prune, `delete-backup`): not there, not damaged.
                Err(backup_store::BackupStoreError::NotFound { .. }) => {}
                Err(e) => {
                    eprintln!(
                        "error: {e}; pgark delete-backup --config {} --force {s} {id} removes it",
                        path.display()
                    );
                    damaged = true;
                }
            }
        }
        windows.push((s, view));
    }
    let done = if damaged { exit::FAILURE } else { exit::OK };
    if json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return done;
    }
    for (s, view) in &windows {
        println!(
            "server {s}: retention: {}; recovery window: {}{}",
            crate::cli::prune::describe_policy(&config.servers[*s].retention),
            crate::cli::prune::describe_window(&view.window),
            if view.gaps.is_empty() {
                String::new()
            } else {
                format!("; WAL gaps: {}", view.gaps.join(", "))
            }
        );
    }
    if all.is_empty() {
        println!("no backups");
        return done;
    }
    println!(
        "{:<12} {:<18} {:<12} {:<12} {:<24} {:>6} {:>14} {:>14} {:>4} {:>10} {:>10} {:>10} {:<8}  {:<28} LABEL",
        "SERVER", "ID", "STATUS", "TYPE", "START", "SECS", "START LSN", "END LSN", "TLI", "SIZE", "SENT", "STORED", "VERIFIED", "KEPT BY"
    );
    for b in &all {
        let kept = if b.kept_by.is_empty() {
            "(prune: next run)".to_string()
        } else {
            b.kept_by.join(",")
        };
        println!(
            "{:<12} {:<18} {:<12} {:<12} {:<24} {:>6} {:>14} {:>14} {:>4} {:>10} {:>10} {:>10} {:<8}  {:<28} {}",
            b.server,
            b.id,
            b.status,
            b.kind,
            b.start_time,
            b.duration_seconds,
            b.start_lsn,
            b.end_lsn,
            b.end_timeline,
            crate::util::units::human_bytes(b.original_bytes),
            b.received_bytes.map_or_else(|| "-".to_string(), crate::util::units::human_bytes),
            crate::util::units::human_bytes(b.stored_new_bytes),
            b.verify_status,
            kept,
            b.label
        );
    }
    done
}

fn load_one(config: &Config, catalog: &Catalog, server: &str, id: &str) -> Result<BackupIndex, i32> {
    known_server(config, server)?;
    let store = catalog.store();
    backup_store::load(store.as_ref(), server, id).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            backup_store::BackupStoreError::NotFound { .. } => exit::NOT_FOUND,
            _ => exit::FAILURE,
        }
    })
}

/// `pgark show-backup`.
pub fn show_backup(path: &Path, repo: Option<&str>, server: &str, id: &str, json: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let catalog = match crate::cli::catalog_for(&config, repo, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let idx = match load_one(&config, &catalog, server, id) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let (policy, holders) = crate::cli::policy_for(&config, server, repo);
    let view = RetentionView::load(&catalog, server, &policy, &holders);
    let s = summarize(catalog.store().as_ref(), &idx, &view);
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
    match &s.parent {
        Some(p) => println!(
            "  type:               incremental: the server sent only the blocks changed since backup {p}{}; the files are whole again (restoring needs no other backup)",
            s.received_bytes.map(|b| format!(" ({})", crate::util::units::human_bytes(b))).unwrap_or_default()
        ),
        None => println!("  type:               full"),
    }
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
    println!(
        "  retention:          {}",
        if s.kept_by.is_empty() {
            format!("deleted by the next prune: {}", s.prune_reason.as_deref().unwrap_or(""))
        } else {
            format!("kept by {}", s.kept_by.join(", "))
        }
    );
    println!("  point in time:      {}", s.pitr);
    println!(
        "  verified:           {}{}",
        s.verify_status,
        match s.verify_status.as_str() {
            "never" => " (pgark verify checks it)".to_string(),
            "ok" => format!(" at {}", s.verified_at),
            _ => format!(" at {} (`pgark verify {} {}` names the problems)", s.verified_at, s.server, s.id),
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
    if let Err(code) = known_server(&config, server) {
        return code;
    }
    let store = Catalog::open(&config.catalog).store();
    // An index that no longer parses can still be removed (with --force): otherwise nothing
    // could get rid of it, and retention stops at it.
    let idx = match backup_store::load(store.as_ref(), server, id) {
        Ok(i) => Some(i),
        Err(e @ backup_store::BackupStoreError::NotFound { .. }) => {
            eprintln!("error: {e}");
            return exit::NOT_FOUND;
        }
        Err(e @ backup_store::BackupStoreError::BadIndex { .. }) if force => {
            eprintln!("warning: {e}; deleting the backup anyway (--force)");
            None
        }
        Err(e @ backup_store::BackupStoreError::BadIndex { .. }) => {
            eprintln!("error: {e}; pgark delete-backup --force removes the backup");
            return exit::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
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
    let only = match idx.as_ref().map(|i| backup_store::is_only_usable(store.as_ref(), i)) {
        None => false,
        Some(Ok(only)) => only,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if only && !force {
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
