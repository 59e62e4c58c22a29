//! `pgark drill`: run one restore drill of a server now (see `drill`), print a line per step
//! (or the record as JSON), and exit 0 when it passed, 9 when it failed.

use crate::cli::exit;
use crate::drill::{self, DrillError, DrillRequest};
use crate::restore::target::{RecoveryTarget, TargetOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// The server's name in the config.
    pub server: String,
    /// Backup id (default: the newest that reaches the target).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover up to this time ('2026-11-23 14:05:00+00'; without a zone: this machine's local time).
    #[arg(long, value_name = "TIMESTAMP", conflicts_with = "target_lsn")]
    pub target_time: Option<String>,
    /// Recover up to this WAL position, e.g. 0/5000060.
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Keep the scratch directory (and its PostgreSQL log) afterwards, for debugging.
    #[arg(long)]
    pub keep: bool,
    /// Print the drill's record as JSON (what is stored in the catalog).
    #[arg(long)]
    pub json: bool,
}

fn fail(e: impl std::fmt::Display, code: i32) -> i32 {
    eprintln!("error: {e}");
    code
}

/// The exit code of a drill that could not start.
pub fn code_for(e: &DrillError) -> i32 {
    match e {
        DrillError::Usage(_) => exit::USAGE,
        DrillError::Busy { .. } => exit::LOCKED,
        DrillError::Plan(r) => exit::for_restore(r),
        DrillError::Io(_) => exit::FAILURE,
    }
}

/// `pgark drill`.
pub async fn drill(a: DrillArgs) -> i32 {
    let config = match crate::cli::load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = crate::cli::known_server(&config, &a.server) {
        return code;
    }
    let target = match RecoveryTarget::from_options(TargetOptions {
        time: a.target_time.as_deref(),
        lsn: a.target_lsn.as_deref(),
        xid: None,
        name: None,
        immediate: false,
        timeline: None,
        inclusive: None,
        action: None,
    }) {
        Ok(t) => t,
        Err(e) => return fail(e, exit::USAGE),
    };
    let server = &config.servers[&a.server];
    let req = DrillRequest {
        catalog: config.catalog.clone(),
        source: config.backup_catalog(),
        config_path: config.path.clone(),
        server: a.server.clone(),
        conninfo_user: Some(server.conninfo.user.clone()),
        backup: a.backup.clone(),
        target,
        settings: server.drill.clone(),
        keep: a.keep,
        interrupted: Default::default(),
    };
    let flag = req.interrupted.clone();
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("interrupted: stopping the drill and cleaning up");
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let json = a.json;
    let result = tokio::task::spawn_blocking(move || {
        drill::run(&req, &mut |line| {
            if json {
                tracing::info!("{line}");
            } else {
                println!("{line}");
            }
        })
    })
    .await;
    signals.abort();
    let record = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let code = code_for(&e);
            return fail(e, code);
        }
        Err(e) => return fail(format!("the drill thread ended without a result: {e}"), exit::FAILURE),
    };
    if let Some(event) = crate::service::hooks::HookEvent::drill_finished(&config.catalog, &record) {
        crate::service::hooks::Hooks::new(&config).run(event).await;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&record).unwrap_or_default());
    } else if record.success {
        println!(
            "drill PASSED: backup {} recovered in {:.1}s (restore {:.1}s, recovery {:.1}s)",
            record.backup_id.as_deref().unwrap_or("?"),
            record.total_seconds.unwrap_or_default(),
            record.restore_seconds.unwrap_or_default(),
            record.recovery_seconds.unwrap_or_default()
        );
    } else {
        println!(
            "drill FAILED at step {}: {}",
            record.failed_step.as_deref().unwrap_or("?"),
            record.error.as_deref().unwrap_or("")
        );
        if let Some(t) = &record.log_tail {
            println!("PostgreSQL log (last lines):\n{t}");
        }
    }
    if record.success {
        exit::OK
    } else {
        exit::DAMAGED
    }
}
