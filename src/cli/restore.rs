//! `pgark restore`: plan, print the plan, write the files (stopping cleanly on a signal), report.

use crate::cli::exit;
use crate::config::Config;
use crate::restore::target::{RecoveryTarget, TargetOptions};
use crate::restore::{self, RestoreRequest};
use std::path::PathBuf;

/// The restore options as given on the command line.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// The server's name in the config.
    pub server: String,
    /// Backup id, or latest (default: chosen from the target).
    pub backup: Option<String>,
    /// Where to restore; must be empty unless --delta.
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// Recover up to this time ('2026-11-23 14:05:00+00'; without a zone: this machine's local time).
    #[arg(long, value_name = "TIMESTAMP")]
    pub target_time: Option<String>,
    /// Recover up to this WAL position, e.g. 0/5000060.
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover up to this transaction id (its commit included unless --target-inclusive false).
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,
    /// A restore point created with pg_create_restore_point().
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long)]
    pub target_immediate: bool,
    /// latest (default), current, or a timeline number.
    #[arg(long, value_name = "TIMELINE")]
    pub target_timeline: Option<String>,
    /// Whether to stop just after (true, default) or just before the target.
    #[arg(long, value_name = "BOOL")]
    pub target_inclusive: Option<String>,
    /// What PostgreSQL does at the target: pause (default), promote or shutdown.
    #[arg(long, value_name = "ACTION")]
    pub target_action: Option<String>,
    /// Put a tablespace elsewhere: NAME=DIR, where NAME is its name, oid or original location. Repeatable.
    #[arg(long = "tablespace", value_name = "NAME=DIR")]
    pub tablespaces: Vec<String>,
    /// Update an older, stopped copy of the cluster in place: rewrite only the 4 MiB chunks whose contents differ, remove extra files.
    /// Files pgark restored there before and nothing has changed since are compared by their recorded checksums without reading them.
    #[arg(long)]
    pub delta: bool,
    /// With --delta: read and checksum every existing file, even those the last restore's record vouches for.
    #[arg(long, requires = "delta")]
    pub verify_existing: bool,
    /// Parallel decompression and writes (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: Option<u32>,
    /// Write standby.signal instead of recovery.signal (build a replica).
    #[arg(long)]
    pub standby: bool,
    /// Owner of the restored files (when run as root), e.g. postgres.
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// Show the plan (backup, tablespaces, settings) and write nothing.
    #[arg(long)]
    pub print_only: bool,
    /// Restore from this repository alone (`local`: the local catalog alone). Default: the local
    /// catalog first, then each repository in the config's order, object by object.
    #[arg(long, value_name = "NAME")]
    pub repo: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn fail(e: impl std::fmt::Display, code: i32) -> i32 {
    eprintln!("error: {e}");
    code
}

/// `pgark restore`.
pub fn restore(a: RestoreArgs) -> i32 {
    let req = match request(&a) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // Held until the last file is written, so `delete-backup` cannot remove the chosen backup's
    // chunks underneath; taken before choosing, so the choice only sees backups that stay.
    let _reading = match crate::catalog::lock::CatalogLock::acquire_restore_reader(req.catalog.root(), &req.server) {
        Ok(l) => l,
        Err(e) => return fail(e, exit::FAILURE),
    };
    let plan = match restore::plan(&req) {
        Ok(p) => p,
        Err(e) => {
            let code = exit::for_restore(&e);
            return fail(e, code);
        }
    };
    if !a.json {
        print_plan(&plan);
    }
    if a.print_only {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&plan).unwrap_or_default());
        }
        return exit::OK;
    }
    let signals = stop_on_signals(req.interrupted.clone());
    let started = std::time::Instant::now();
    let mut progress = crate::cli::progress::for_terminal("restore");
    let result = restore::execute(&req, &plan, progress.as_mut());
    if let Some(s) = signals {
        s.abort();
    }
    match result {
        Ok(stats) => {
            print_outcome(&a, &plan, &stats, started.elapsed().as_secs_f64());
            exit::OK
        }
        Err(e) => {
            let code = exit::for_restore(&e);
            eprintln!(
                "error: restore into {} failed: {e}\nThe directory is incomplete (marker file {}; no global/pg_control), so PostgreSQL will not start on it. Fix the cause and run the restore again (with --delta to reuse what was written).",
                plan.target_dir.display(),
                restore::extract::MARKER
            );
            code
        }
    }
}

/// The command line checked and turned into a request; the error is the exit code (the
/// message is printed).
fn request(a: &RestoreArgs) -> Result<RestoreRequest, i32> {
    let config = Config::load(&a.config).map_err(|e| fail(e, exit::USAGE))?;
    if !config.servers.contains_key(&a.server) {
        let known: Vec<&str> = config.servers.keys().map(String::as_str).collect();
        return Err(fail(
            format!(
                "{}: no server named {:?}; the config defines: {}",
                config.path.display(),
                a.server,
                known.join(", ")
            ),
            exit::USAGE,
        ));
    }
    let target = RecoveryTarget::from_options(TargetOptions {
        time: a.target_time.as_deref(),
        lsn: a.target_lsn.as_deref(),
        xid: a.target_xid.as_deref(),
        name: a.target_name.as_deref(),
        immediate: a.target_immediate,
        timeline: a.target_timeline.as_deref(),
        inclusive: a.target_inclusive.as_deref(),
        action: a.target_action.as_deref(),
    })
    .map_err(|e| fail(e, exit::USAGE))?;
    if a.standby && target.kind != restore::target::TargetKind::End {
        return Err(fail(
            "--standby builds a replica that follows the WAL; it takes no recovery target",
            exit::USAGE,
        ));
    }
    let mut maps = Vec::new();
    for m in &a.tablespaces {
        match m.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => maps.push((k.to_string(), PathBuf::from(v))),
            _ => {
                return Err(fail(
                    format!("--tablespace {m:?}: expected NAME=DIR (NAME: tablespace name, oid or original location)"),
                    exit::USAGE,
                ))
            }
        }
    }
    if a.owner.is_none() && crate::util::os::running_as_root() && !a.print_only {
        tracing::warn!("running as root without --owner: the restored files belong to root, and PostgreSQL must run as their owner (use --owner postgres)");
    }
    let catalog = config.read_catalog(a.repo.as_deref()).map_err(|e| fail(e, exit::USAGE))?;
    Ok(RestoreRequest {
        background: false,
        catalog,
        repo: a.repo.clone(),
        config_path: config.path.clone(),
        server: a.server.clone(),
        backup: a.backup.clone(),
        target_dir: a.target_dir.clone(),
        target,
        tablespace_maps: maps,
        delta: a.delta,
        verify_existing: a.verify_existing,
        jobs: a
            .jobs
            .map(|j| j as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
        standby: a.standby,
        owner: a.owner.clone(),
        interrupted: Default::default(),
    })
}

fn print_plan(plan: &restore::RestorePlan) {
    println!("restoring backup {} of {} ({})", plan.backup_id, plan.server, plan.why);
    println!("  into {}{}", plan.target_dir.display(), if plan.delta { " (delta)" } else { "" });
    for t in &plan.tablespaces {
        println!(
            "  tablespace {} (oid {}): {} -> {}",
            t.name.clone().unwrap_or_default(),
            t.oid,
            t.original,
            t.location.display()
        );
    }
    for (k, v) in &plan.settings {
        println!("  {k} = {}", restore::recovery::quote(v));
    }
    println!("  and {}", plan.signal_file);
}

/// SIGINT/SIGTERM while files are written: the workers stop after their current chunk, and
/// pg_control is not published; the directory is never half-published. A second signal exits
/// at once (the directory is just as unstartable).
fn stop_on_signals(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Option<tokio::task::JoinHandle<()>> {
    tokio::runtime::Handle::try_current().ok().map(|h| {
        h.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            for n in 0..2 {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if n == 0 {
                    tracing::warn!("interrupted: stopping the restore after the chunks being written (again to exit at once)");
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                } else {
                    eprintln!("interrupted again: exiting now; the target directory is incomplete and PostgreSQL will not start on it");
                    std::process::exit(exit::FAILURE);
                }
            }
        })
    })
}

fn print_outcome(a: &RestoreArgs, plan: &restore::RestorePlan, stats: &restore::extract::ExtractStats, secs: f64) {
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "plan": plan, "stats": stats, "seconds": secs })).unwrap_or_default()
        );
        return;
    }
    println!(
        "restored in {secs:.1}s: {} files written ({}), {} unchanged{}, {} removed. Start PostgreSQL on {} to recover{}.",
        stats.files_written,
        crate::util::units::human_bytes(stats.bytes_written),
        stats.files_unchanged,
        if stats.files_trusted > 0 {
            format!(
                " ({} known unchanged from the last restore's record, not read)",
                stats.files_trusted
            )
        } else {
            String::new()
        },
        stats.files_removed,
        plan.target_dir.display(),
        if a.standby { " and follow as a standby" } else { "" }
    );
}
