//! `pgark wal-get` (PostgreSQL's restore_command) and `wal-prefetch`. Exit codes follow the
//! restore_command contract (see `restore::wal_get`); `wal-prefetch` uses `cli::exit`.

use crate::cli::exit;
use crate::config::Config;
use crate::restore::wal_get;
use std::path::Path;

fn fail(e: impl std::fmt::Display, code: i32) -> i32 {
    eprintln!("error: {e}");
    code
}

/// `pgark wal-get`: exit 0 served, 1 absent, 126 damaged (PostgreSQL then stops recovery).
pub fn wal_get(config_path: &Path, repo: Option<&str>, server: &str, name: &str, dest: &Path) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return fail(e, wal_get::DAMAGED),
    };
    if !config.servers.contains_key(server) {
        return fail(format!("{}: no server named {server:?}", config.path.display()), wal_get::DAMAGED);
    }
    let store = match config.read_catalog(repo) {
        Ok(c) => c.store(),
        Err(e) => return fail(e, wal_get::DAMAGED),
    };
    let seg_size = crate::catalog::state::load(store.as_ref(), server)
        .ok()
        .flatten()
        .map(|s| s.wal_segment_size);
    let config_path = config.path.clone();
    let spawn = |spool: &Path, after: &str| {
        let Some(seg) = seg_size else { return };
        let Ok(exe) = std::env::current_exe() else { return };
        use std::os::unix::process::CommandExt;
        let spawned = std::process::Command::new(exe)
            .arg("wal-prefetch")
            .arg("--config")
            .arg(&config_path)
            .args(repo.map(|r| vec!["--repo", r]).unwrap_or_default())
            .args([server, after])
            .arg(spool)
            .arg(seg.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "prefetch not started");
        }
    };
    match wal_get::serve(store.as_ref(), server, name, dest, &spawn) {
        Ok(n) => {
            tracing::debug!(file = name, bytes = n, "served");
            wal_get::SERVED
        }
        Err(e) => {
            let code = e.exit_code();
            if code == wal_get::ABSENT {
                tracing::info!("{e}");
            } else if repo.is_none() && !config.repositories.is_empty() && e.to_string().contains("repository ") {
                // The local catalog lacked the file and a repository did not answer: recovery
                // stops rather than taking the silence for the end of the archive.
                tracing::error!(
                    "{e}; recovery stops here rather than end early. If the local catalog holds all the WAL this recovery needs, \
                     put --repo local in restore_command (pgark restore --repo local writes it so)"
                );
            } else {
                tracing::error!("{e}");
            }
            code
        }
    }
}

/// `pgark wal-prefetch` (internal, started by wal-get): fills the prefetch spool.
pub fn wal_prefetch(config_path: &Path, repo: Option<&str>, server: &str, after: &str, spool: &Path, seg_size: u64) -> i32 {
    let Ok(config) = Config::load(config_path) else {
        return exit::USAGE;
    };
    let Ok(store) = config.read_catalog(repo).map(|c| c.store()) else {
        return exit::USAGE;
    };
    match wal_get::prefetch(store.as_ref(), server, after, spool, seg_size) {
        Ok(_) => exit::OK,
        Err(_) => exit::FAILURE,
    }
}
