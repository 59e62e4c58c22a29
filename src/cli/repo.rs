//! `pgark repo copy`: copy backups and WAL from one repository to another (see `offsite::copy`).

use crate::cli::{exit, load_config};
use crate::offsite::copy::{copy_server, CopyError, Side};
use std::path::Path;

/// `pgark repo copy`.
pub fn copy(path: &Path, from: &str, to: &str, server: Option<&str>, json: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if from == to {
        eprintln!("error: --from and --to are both {from:?}");
        return exit::USAGE;
    }
    let open = |name: &str| {
        config.open_repository(name).map_err(|e| {
            eprintln!("error: {e}");
            exit::USAGE
        })
    };
    let (a, b) = match (open(from), open(to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    if a.encrypted != b.encrypted {
        eprintln!("error: objects are copied as stored; both repositories use the same encryption setting of this config");
        return exit::USAGE;
    }
    let servers: Vec<String> = match server {
        Some(s) => {
            if let Err(code) = crate::cli::known_server(&config, s) {
                return code;
            }
            vec![s.to_string()]
        }
        None => config.servers.keys().cloned().collect(),
    };
    let (sa, sb) = (
        Side {
            name: from,
            raw: a.raw.as_ref(),
            catalog: &a.catalog,
        },
        Side {
            name: to,
            raw: b.raw.as_ref(),
            catalog: &b.catalog,
        },
    );
    let mut reports = Vec::new();
    let mut code = exit::OK;
    for s in &servers {
        match copy_server(&sa, &sb, s) {
            Ok(r) => {
                if !json {
                    println!(
                        "{s}: {} WAL objects, {} backups ({} chunks), {} bytes copied from {from} to {to}; {} backups were there already",
                        r.wal_objects,
                        r.backups.len(),
                        r.chunks,
                        r.bytes,
                        r.backups_present
                    );
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("error: copy of {s} from {from} to {to}: {e}; run the copy again to finish it");
                code = code.max(match e {
                    CopyError::Locked(_) => exit::LOCKED,
                    CopyError::Io(_) => exit::FAILURE,
                });
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
    }
    code
}
