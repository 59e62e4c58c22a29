//! `pgark serve` and `check-config`.

use crate::cli::exit;
use crate::config::Config;
use std::path::PathBuf;

/// `pgark serve`: runs the daemon until SIGTERM/SIGINT.
pub async fn serve(config: PathBuf) -> i32 {
    match crate::service::daemon::serve_with_signals(config).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit::for_daemon(&e)
        }
    }
}

/// `check-config` / `serve --check`.
pub fn check_config(path: &std::path::Path) -> i32 {
    match Config::load(path).and_then(|c| c.check_catalog_writable().map(|_| c)) {
        Ok(c) => {
            for w in crate::catalog::perms::check(&c.catalog, c.catalog_group.as_deref()) {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: OK ({} server{}, catalog {})",
                path.display(),
                c.servers.len(),
                if c.servers.len() == 1 { "" } else { "s" },
                c.catalog.display()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}
