//! `pgark verify`: reads back a server's backups and the WAL after them and says whether they can
//! still be restored (exit 0), or what is damaged or missing and which point-in-time ranges are
//! lost (exit 9).

use crate::catalog::backup_store::BackupStoreError;
use crate::catalog::Catalog;
use crate::cli::{exit, known_server, load_config};
use crate::verify::{self, Options, Selection, VerifyError};
use std::path::Path;

/// Problems printed in the text output.
const SHOWN: usize = 50;

/// `pgark verify`.
pub fn verify(path: &Path, server: &str, id: Option<String>, all: bool, json: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = known_server(&config, server) {
        return code;
    }
    let selection = match (id, all) {
        (Some(_), true) => {
            eprintln!("error: give a backup id or --all, not both");
            return exit::USAGE;
        }
        (Some(id), false) => Selection::One(id),
        (None, true) => Selection::All,
        (None, false) => Selection::Newest,
    };
    let catalog = Catalog::open(&config.catalog);
    let mut progress = crate::cli::progress::for_terminal("verify");
    let report = match verify::verify(&catalog, server, &selection, &Options::default(), progress.as_mut()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return match e {
                VerifyError::Store(BackupStoreError::NotFound { .. }) | VerifyError::NoBackups(_) => exit::NOT_FOUND,
                VerifyError::Lock(_) => exit::LOCKED,
                _ => exit::FAILURE,
            };
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        for b in &report.backups {
            println!(
                "backup {} of {}: {} ({})",
                b.id,
                server,
                b.status,
                problems(b.problem_count as usize)
            );
        }
        // Thousands of missing segments would bury the summary: the first ones, then a count.
        for p in report.problems.iter().take(SHOWN) {
            println!("  PROBLEM {p}");
        }
        if report.problems.len() > SHOWN {
            println!("  ... and {} more problems (--json lists them all)", report.problems.len() - SHOWN);
        }
        for u in &report.unreachable {
            println!("  {u}");
        }
        println!(
            "verified {} backup(s), {} files, {} chunks, {} WAL segments{}: {} checked in {:.1}s ({}/s); {}",
            report.backups.len(),
            report.files_checked,
            report.chunks_checked,
            report.segments_checked,
            report.wal_end.as_ref().map(|w| format!(" (to {w})")).unwrap_or_default(),
            crate::util::units::human_bytes(report.bytes_checked),
            report.seconds,
            crate::util::units::human_bytes(report.bytes_per_second),
            if report.problems.is_empty() {
                "everything intact".to_string()
            } else {
                problems(report.problems.len())
            }
        );
    }
    if report.problems.is_empty() {
        exit::OK
    } else {
        exit::DAMAGED
    }
}

fn problems(n: usize) -> String {
    match n {
        0 => "no problems".into(),
        1 => "1 problem".into(),
        n => format!("{n} problems"),
    }
}
