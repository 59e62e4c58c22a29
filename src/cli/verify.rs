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
pub fn verify(path: &Path, repo: Option<&str>, server: &str, id: Option<String>, all: bool, json: bool) -> i32 {
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
    let catalog = match repo {
        // The local catalog, and with `backups_local: false` the repositories' chunks.
        None => config.backup_catalog(),
        Some(_) => match crate::cli::catalog_for(&config, repo, false) {
            Ok(c) => c,
            Err(code) => return code,
        },
    };
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
    if !report.acknowledged_missing.is_empty() && !json {
        println!(
            "  (not counted: {} segment(s) missing inside acknowledged WAL gaps)",
            report.acknowledged_missing.len()
        );
    }
    if report.problems.is_empty() {
        return exit::OK;
    }
    if let Some(event) = crate::service::hooks::HookEvent::verify_found(&config.catalog, &report) {
        let hooks = crate::service::hooks::Hooks::new(&config);
        tokio::runtime::Handle::current().block_on(hooks.run(event));
    }
    exit::DAMAGED
}

/// `pgark verify --acknowledge-gap SEGMENT`: records the gap holding `segment` as known.
pub fn acknowledge_gap(path: &Path, server: &str, segment: &str, note: &str) -> i32 {
    use crate::catalog::continuity::{self, Continuity};
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = known_server(&config, server) {
        return code;
    }
    let store = Catalog::open(&config.catalog).store();
    let seg = match crate::catalog::state::load(store.as_ref(), server) {
        Ok(Some(s)) => match crate::pg::WalSegSize::new(s.wal_segment_size) {
            Ok(seg) => seg,
            Err(e) => {
                eprintln!("error: {}: {e}", crate::catalog::state::key(server));
                return exit::FAILURE;
            }
        },
        Ok(None) => {
            eprintln!("error: the catalog holds no WAL of {server}");
            return exit::NOT_FOUND;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    let name = match crate::pg::WalFileName::parse(segment.trim(), seg) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: --acknowledge-gap: {e}");
            return exit::USAGE;
        }
    };
    let c = match Continuity::load(store.as_ref(), server, seg, None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: reading the WAL of {server}: {e}");
            return exit::FAILURE;
        }
    };
    let Some((gap, _)) = c
        .gaps
        .iter()
        .find(|(g, _)| g.timeline == name.tli && (g.first..=g.last).contains(&name.segno.0))
    else {
        let known: Vec<String> = c.gaps.iter().map(|(g, _)| g.describe(seg)).collect();
        eprintln!(
            "error: --acknowledge-gap {segment}: no WAL gap of {server} holds this segment; gaps now: {}",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
        return exit::USAGE;
    };
    match continuity::acknowledge(store.as_ref(), server, *gap, note, crate::util::time::unix_now()) {
        Ok(()) => {
            println!(
                "acknowledged the WAL gap {} of {server}: it stays listed but no longer alerts (recorded in {})",
                gap.describe(seg),
                continuity::gaps_key(server)
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: recording the acknowledgement: {e}");
            exit::FAILURE
        }
    }
}

fn problems(n: usize) -> String {
    match n {
        0 => "no problems".into(),
        1 => "1 problem".into(),
        n => format!("{n} problems"),
    }
}
