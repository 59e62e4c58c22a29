//! `pgark status`: the running daemon's view, or, when it is not running, what the catalog says.

use crate::catalog::Catalog;
use crate::cli::{daemon_client, exit};
use crate::config::Config;
use crate::service::status::{ConnState, DaemonStatus, ServerStatus};

/// `pgark status`: asks the running daemon; falls back to the catalog when it is not running.
pub async fn status(path: &std::path::Path, json: bool) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut status = match daemon_client::daemon_status(&config.metrics_listen).await {
        Ok(s) => s,
        Err(e) => return status_offline(&config, &e.to_string(), json),
    };
    add_locks(&config, &mut status);
    let all_streaming = status
        .servers
        .iter()
        .all(|s| s.state == crate::service::status::ConnState::Streaming);
    if json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        println!("pgark {} (pid {}), catalog {}", status.version, status.pid, status.catalog);
        println!(
            "{:<16} {:<10} {:>4} {:>14} {:>14} {:>12} {:<26} NOTE",
            "SERVER", "STATE", "TLI", "RECEIVED", "FLUSHED", "LAG", "LAST SEGMENT"
        );
        for s in &status.servers {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            println!(
                "{:<16} {:<10} {:>4} {:>14} {:>14} {:>12} {:<26} {}",
                s.server,
                format!("{:?}", s.state).to_lowercase(),
                opt(s.timeline.map(|t| t.to_string())),
                opt(s.received_lsn.map(|l| l.to_string())),
                opt(s.flushed_lsn.map(|l| l.to_string())),
                opt(s.lag_bytes.map(|l| l.to_string())),
                opt(s.last_segment.clone()),
                if s.state == crate::service::status::ConnState::Streaming {
                    String::new()
                } else {
                    s.last_error.clone().unwrap_or_default()
                }
            );
        }
        print_details(&status);
    }
    if all_streaming {
        exit::OK
    } else {
        exit::NOT_STREAMING
    }
}

/// `pgark status` without a daemon: what the catalog says of each server, in the same schema.
fn status_offline(config: &Config, why: &str, json: bool) -> i32 {
    let mut status = offline_status(config, why);
    add_locks(config, &mut status);
    if json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        println!("pgark serve is not running: {why}");
        for s in &status.servers {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
            println!(
                "  {}: not streaming; last known timeline {} flushed {} (from the catalog){}",
                s.server,
                opt(s.timeline.map(|t| t.to_string())),
                opt(s.flushed_lsn.map(|l| format!("\"{l}\""))),
                s.last_error.as_deref().map(|e| format!("; {e}")).unwrap_or_default()
            );
            print_locks(s);
        }
    }
    exit::NOT_STREAMING
}

fn add_locks(config: &Config, status: &mut DaemonStatus) {
    for s in &mut status.servers {
        s.locks = crate::catalog::lock::holders(&config.catalog, &s.server);
    }
}

fn print_locks(s: &ServerStatus) {
    for l in &s.locks {
        println!("  lock: {} ({}) held by pid {}: {}", l.lock, l.mode, l.pid, l.command);
    }
}

/// The lines under the table: catalog space, each server's recovery window and warnings.
fn print_details(status: &crate::service::status::DaemonStatus) {
    use crate::util::units::human_bytes;
    let time = |t: Option<u64>| t.map(crate::util::time::format_utc).unwrap_or_else(|| "-".into());
    if let Some(c) = &status.catalog_space {
        let eta = match c.full_eta_seconds {
            Some(s) => format!(
                ", full in about {} at the current WAL rate",
                humantime::format_duration(std::time::Duration::from_secs(s as u64))
            ),
            None => String::new(),
        };
        println!(
            "catalog: {} free of {} ({:?}){eta}",
            human_bytes(c.free_bytes),
            human_bytes(c.total_bytes),
            c.pressure
        );
    }
    for s in &status.servers {
        let r = s.retention.clone().unwrap_or_default();
        println!(
            "{}: recoverable from {} to {}",
            s.server,
            time(r.window_start),
            time(s.wal_durable_at)
        );
        if !r.wal_gaps.is_empty() {
            println!(
                "  WAL GAP: {} (point-in-time recovery cannot cross it; take a new backup; acknowledge a known gap with pgark verify --acknowledge-gap)",
                r.wal_gaps.join(", ")
            );
        }
        if r.wal_gaps_acknowledged > 0 {
            println!("  acknowledged WAL gaps: {}", r.wal_gaps_acknowledged);
        }
        if let Some(e) = &r.last_prune_error {
            println!("  retention: the last prune failed: {e}");
        }
        print_locks(s);
        if let Some(m) = &s.monitor {
            println!(
                "  server: sync_state {}, slot {} retaining {}, pg_wal {}",
                m.sync_state.as_deref().unwrap_or("-"),
                m.slot_wal_status.as_deref().unwrap_or("missing"),
                m.slot_retained_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                m.pg_wal_bytes.map(human_bytes).unwrap_or_else(|| "-".into())
            );
        }
        for w in s.slot_warning.iter().chain(s.monitor_error.iter()) {
            println!("  warning: {w}");
        }
        for o in &s.offsite {
            let lag = match (o.lag_bytes, o.lag_seconds) {
                (Some(b), Some(t)) => format!("lag {} ({t:.1} s)", human_bytes(b)),
                _ => "lag unknown".into(),
            };
            println!(
                "  repository {}: {lag}, {} backups, {} queued ({}), {} uploaded",
                o.repository,
                o.backups,
                o.queued_objects,
                human_bytes(o.queued_bytes),
                human_bytes(o.uploaded_bytes_total)
            );
            if let Some(e) = &o.last_error {
                println!(
                    "    FAILING since {}: {e}; retrying at {} (the local catalog keeps everything meanwhile)",
                    time(o.failing_since),
                    time(o.retry_at)
                );
            }
        }
    }
}

/// Each server as its `server.state` last recorded it.
fn offline_status(config: &Config, why: &str) -> DaemonStatus {
    let store = Catalog::open(&config.catalog).store();
    let servers = config
        .servers
        .values()
        .map(|cfg| {
            let mut s = ServerStatus::new(&cfg.name, cfg.synchronous);
            s.state = ConnState::Stopped;
            match crate::catalog::state::load(store.as_ref(), &cfg.name) {
                Ok(Some(st)) => {
                    s.timeline = Some(st.timeline);
                    s.flushed_lsn = Some(st.flushed_lsn);
                }
                Ok(None) => {}
                Err(e) => s.last_error = Some(e.to_string()),
            }
            s
        })
        .collect();
    DaemonStatus {
        daemon_running: false,
        reason: Some(why.to_string()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: 0,
        catalog: config.catalog.display().to_string(),
        catalog_space: None,
        servers,
        task_failures: Vec::new(),
    }
}
