//! The catalog invariants, checked from outside pgark's code paths (only its on-disk format
//! readers are used), for the crash tests and later features:
//!
//! - every file under a final name is whole: a compressed segment decompresses to a full segment
//!   whose size and CRC-32C match its header (and the server's own copy, when given); a plain
//!   segment is full-size (and equal to the server's); a `.sum` matches its segment; every
//!   history file parses;
//! - the completed segments of each timeline form a run without a hole;
//! - every listed backup verifies: its manifest is there, every chunk it references exists,
//!   decompresses to its recorded size and CRC, and each file's chunks combine to the file's
//!   recorded CRC-32C;
//! - every listed backup has its WAL, continuous from its start segment to its end segment;
//! - temporary files are never referenced (a name with `.tmp` never appears in an index, and no
//!   reader lists them).
//!
//! `check` returns the problems found (empty when all hold), so a crash test can print the seed
//! with them.

use pgark::catalog::backup_store::FileKind;
use pgark::catalog::backup_store::{self, BackupIndex, WalSource};
use pgark::catalog::segment_file::{self, SegmentChecksum};
use pgark::catalog::store::LocalStore;
use pgark::pg::{TimelineHistory, WalFileName, WalSegSize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What `check` looked at.
#[derive(Debug, Default)]
pub struct Checked {
    pub segments: usize,
    pub backups: usize,
    pub chunks: usize,
}

/// Checks `<catalog>/<server>`; `server_pg_wal`: the server's pg_wal, for byte comparisons.
pub fn check(catalog: &Path, server: &str, seg: WalSegSize, server_pg_wal: Option<&Path>) -> Result<Checked, Vec<String>> {
    let mut problems = Vec::new();
    let mut checked = Checked::default();
    let wal = catalog.join(server).join("wal");
    let mut completed: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for entry in std::fs::read_dir(&wal).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".tmp") || name.starts_with(".spare.") {
            continue;
        }
        if name.ends_with(".history") {
            if let Err(e) = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| TimelineHistory::parse(&b).map_err(|e| e.to_string()))
            {
                problems.push(format!("{name}: {e}"));
            }
            continue;
        }
        let (base, kind) = name.split_once('.').unwrap_or((name.as_str(), ""));
        let Ok(w) = WalFileName::parse(base, seg) else {
            problems.push(format!("unexpected file {name} in the WAL directory"));
            continue;
        };
        let bytes = match kind {
            "zst" => match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| segment_file::decompress(&b).map_err(|e| e.to_string()))
            {
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    None
                }
            },
            "" => std::fs::read(&path).ok(),
            "sum" => {
                let sum = std::fs::read_to_string(&path).ok().and_then(|t| SegmentChecksum::from_sum_text(&t));
                let plain = std::fs::read(wal.join(base)).ok();
                match (sum, plain) {
                    (Some(s), Some(p)) if SegmentChecksum::of(&p) == s => {}
                    (None, _) => problems.push(format!("{name}: unreadable")),
                    (_, None) => problems.push(format!("{name}: its segment is missing")),
                    _ => problems.push(format!("{name}: does not match its segment")),
                }
                continue;
            }
            "partial" => continue,
            _ => {
                problems.push(format!("unexpected file {name} in the WAL directory"));
                continue;
            }
        };
        let Some(bytes) = bytes else { continue };
        checked.segments += 1;
        if bytes.len() as u64 != seg.bytes() {
            problems.push(format!("{name}: {} bytes, not a whole segment", bytes.len()));
        }
        if let Some(theirs) = server_pg_wal.and_then(|d| std::fs::read(d.join(base)).ok()) {
            if theirs != bytes {
                problems.push(format!("{name}: differs from the server's {base}"));
            }
        }
        completed.entry(w.tli.0).or_default().insert(w.segno.0);
    }
    for (tli, segs) in &completed {
        let (lo, hi) = (*segs.iter().next().unwrap_or(&0), *segs.iter().last().unwrap_or(&0));
        if (hi - lo + 1) as usize != segs.len() {
            problems.push(format!("timeline {tli}: completed segments {lo:X}..{hi:X} have holes"));
        }
    }

    let store = LocalStore::new(catalog);
    let ids = backup_store::list_ids(&store, server).unwrap_or_default();
    for id in ids {
        if id.contains(".tmp") {
            problems.push(format!("a temporary index is listed: {id}"));
            continue;
        }
        match backup_store::load(&store, server, &id) {
            Ok(idx) => {
                checked.backups += 1;
                checked.chunks += verify_backup(catalog, &idx, &mut problems);
            }
            Err(e) => problems.push(format!("backup {id}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems)
    }
}

/// Verifies one backup's chunks and WAL; returns how many chunks were read.
fn verify_backup(catalog: &Path, idx: &BackupIndex, problems: &mut Vec<String>) -> usize {
    let id = &idx.id;
    let server = &idx.server;
    if !catalog.join(server).join("backups").join(format!("{id}.manifest")).exists() {
        problems.push(format!("backup {id}: its manifest is missing"));
    }
    let mut read = 0;
    let mut cache: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    for f in idx.files.iter().filter(|f| f.kind == FileKind::File) {
        let mut parts = Vec::new();
        for c in &f.chunks {
            if c.object.contains(".tmp") {
                problems.push(format!("backup {id}: {} references a temporary object {}", f.path, c.object));
            }
            let got = match cache.get(&c.object) {
                Some(v) => Some(*v),
                None => {
                    let path = catalog.join(server).join("chunks").join(&c.object);
                    let data = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                        if c.object.ends_with(".zst") {
                            segment_file::decompress(&b).map_err(|e| e.to_string())
                        } else {
                            Ok(b)
                        }
                    });
                    match data {
                        Ok(d) => {
                            read += 1;
                            let v = (d.len() as u64, crc32c::crc32c(&d));
                            cache.insert(c.object.clone(), v);
                            Some(v)
                        }
                        Err(e) => {
                            problems.push(format!("backup {id}: {} chunk {}: {e}", f.path, c.object));
                            None
                        }
                    }
                }
            };
            if let Some((size, crc)) = got {
                if size != c.size {
                    problems.push(format!(
                        "backup {id}: {} chunk {} holds {size} bytes, not {}",
                        f.path, c.object, c.size
                    ));
                }
                parts.push((crc, size));
            }
        }
        if parts.len() == f.chunks.len() {
            let crc = pgark::catalog::backup_store::combine_crc(&parts);
            if f.crc32c.is_some_and(|want| want != crc) {
                problems.push(format!("backup {id}: {} does not match its recorded CRC-32C", f.path));
            }
        }
    }
    if idx.wal_source == WalSource::Catalog {
        let store = LocalStore::new(catalog);
        let presence = backup_store::wal_presence(&store, idx);
        if !presence.present {
            problems.push(format!("backup {id}: WAL missing: {:?}", presence.missing));
        }
    }
    read
}
