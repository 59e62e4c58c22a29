//! `pgark prune` (apply the retention policy now, or show what it would do) and `pgark keep`
//! (pin a backup, or release a pin).

use crate::catalog::offsite_mark::OffsiteHold;
use crate::catalog::pin::{self, Pin, PinUntil};
use crate::catalog::{backup_store, Catalog};
use crate::cli::{exit, known_server, load_config};
use crate::retention::policy::{Mode, Policy};
use crate::retention::prune::{PruneError, PruneReport, RecoveryWindow};
use crate::util::time::{format_utc, unix_now};
use crate::util::units::human_bytes;
use std::path::Path;

/// `pgark prune`.
pub fn prune(path: &Path, repo: Option<&str>, server: Option<&str>, dry_run: bool, json: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let servers: Vec<String> = match server {
        Some(s) => match known_server(&config, s) {
            Ok(()) => vec![s.to_string()],
            Err(code) => return code,
        },
        None => config.servers.keys().cloned().collect(),
    };
    let catalog = match crate::cli::catalog_for(&config, repo, false) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut reports = Vec::new();
    let mut code = exit::OK;
    for s in &servers {
        let (policy, holders) = crate::cli::policy_for(&config, s, repo);
        let policy = &policy;
        let hold = OffsiteHold::load(catalog.store().as_ref(), s, &holders);
        match crate::retention::prune(&catalog, s, policy, unix_now(), Mode::Normal, dry_run, &hold) {
            Ok(r) => {
                if !json {
                    print_report(&r, policy);
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("error: prune of {s}: {e}");
                code = code.max(match e {
                    PruneError::Locked(_) => exit::LOCKED,
                    _ => exit::FAILURE,
                });
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
    }
    code
}

/// The policy in one line, as the config sets it.
pub fn describe_policy(p: &Policy) -> String {
    let mut parts = Vec::new();
    if let Some(n) = p.redundancy {
        parts.push(format!("redundancy {n}"));
    }
    if let Some(w) = p.recovery_window {
        parts.push(format!("recovery_window {}", humantime::format_duration(w)));
    }
    for (k, v) in [
        ("keep_daily", p.keep_daily),
        ("keep_weekly", p.keep_weekly),
        ("keep_monthly", p.keep_monthly),
    ] {
        if let Some(n) = v {
            parts.push(format!("{k} {n}"));
        }
    }
    if parts.is_empty() {
        return "no retention policy: everything is kept".into();
    }
    parts.push(format!("min_redundancy {}", p.min_redundancy));
    parts.join(", ")
}

pub fn describe_window(w: &Option<RecoveryWindow>) -> String {
    match w {
        Some(w) => format!(
            "from {} ({}, end of backup {}) to {}",
            format_utc(w.from_time),
            w.from_lsn,
            w.backup,
            w.to_segment.as_deref().unwrap_or("the newest WAL")
        ),
        None => "none (no restorable backup with unbroken WAL after it)".into(),
    }
}

fn print_report(r: &PruneReport, policy: &Policy) {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!("server {}: {}", r.server, describe_policy(policy));
    if let Some((pid, at)) = r.resumed {
        println!("  finishing an interrupted prune (pid {pid}, started {})", format_utc(at));
    }
    for v in r.verdicts.iter().filter(|v| v.keep()) {
        let why: Vec<String> = v.kept_by.iter().map(|k| k.label()).collect();
        println!("  keep backup {}: {}", v.id, why.join(", "));
    }
    for b in &r.backups {
        println!("  {verb} backup {} (ended {}): {}", b.id, format_utc(b.end_time), b.reason);
    }
    for w in &r.wal {
        println!(
            "  {verb} WAL timeline {}: {} to {} ({} files, {}): older than every backup kept",
            w.timeline.0,
            w.first,
            w.last,
            w.files,
            human_bytes(w.bytes)
        );
    }
    if r.backups.is_empty() && r.wal.is_empty() {
        println!("  nothing to delete");
    }
    println!("  recovery window before: {}", describe_window(&r.window_before));
    println!("  recovery window after:  {}", describe_window(&r.window_after));
    if !r.dry_run && (r.bytes_freed > 0 || r.chunks_removed > 0) {
        println!("  freed {} ({} chunks)", human_bytes(r.bytes_freed), r.chunks_removed);
    }
}

/// Parses `--until`: a time (`2027-01-31`, `2027-01-31 12:00:00+00`) or a duration from now
/// (`90d`).
pub fn parse_until(text: &str, now: u64) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(text.trim()) {
        return Ok(now + d.as_secs());
    }
    crate::restore::target::parse_time(text)
        .map(|micros| (micros / 1_000_000).max(0) as u64)
        .map_err(|_| format!("--until {text:?}: expected a time such as 2027-01-31 or '2027-01-31 12:00:00+00', or a duration such as 90d"))
}

/// `pgark keep`.
pub fn keep(path: &Path, server: &str, id: &str, until: Option<&str>, release: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = known_server(&config, server) {
        return code;
    }
    let store = Catalog::open(&config.catalog).store();
    if let Err(e) = backup_store::load(store.as_ref(), server, id) {
        eprintln!("error: {e}");
        return match e {
            backup_store::BackupStoreError::NotFound { .. } => exit::NOT_FOUND,
            _ => exit::FAILURE,
        };
    }
    if release {
        return match pin::remove(store.as_ref(), server, id) {
            Ok(()) => {
                println!("backup {id} of {server} is no longer pinned; retention decides again");
                exit::OK
            }
            Err(e) => {
                eprintln!("error: releasing the pin of {id}: {e}");
                exit::FAILURE
            }
        };
    }
    match pin_backup(store.as_ref(), server, id, until) {
        Ok(msg) => {
            println!("{msg}");
            exit::OK
        }
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

/// Pins `id` until `until` (`None` or "forever": forever); the message to print.
pub fn pin_backup(
    store: &dyn crate::catalog::store::ObjectStore,
    server: &str,
    id: &str,
    until: Option<&str>,
) -> Result<String, (i32, String)> {
    let now = unix_now();
    let until = match until {
        None | Some("forever") => PinUntil::Forever,
        Some(t) => PinUntil::Time(parse_until(t, now).map_err(|m| (exit::USAGE, m))?),
    };
    pin::save(store, server, id, &Pin::new(until, now)).map_err(|e| (exit::FAILURE, format!("pinning {id}: {e}")))?;
    Ok(match until {
        PinUntil::Forever => format!("backup {id} of {server} is pinned until released (pgark keep --release)"),
        PinUntil::Time(t) => format!("backup {id} of {server} is pinned until {}", format_utc(t)),
    } + "; it restores to its end, and keeps the WAL from its start to its end")
}
