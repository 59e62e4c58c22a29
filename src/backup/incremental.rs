//! Incremental backups (PostgreSQL 17+): the server sends only the blocks changed since a
//! parent backup (`UPLOAD_MANIFEST` with the parent's backup_manifest, then `BASE_BACKUP
//! INCREMENTAL`), and pgark rebuilds every `INCREMENTAL.*` file into the whole file before the
//! backup is published.
//!
//! Why rebuild at backup time instead of storing a chain and combining at restore: the rebuilt
//! file reuses the parent's chunks wherever no block changed (content addressing stores only
//! the 4 MiB chunks that did), so the cost in the catalog is nearly the same as a chain's,
//! while every backup stays whole. A restore, verify, drill or `repo copy` of an incremental
//! backup is exactly that of a full one, at full speed; and deleting any backup (retention, a
//! lost object) can never break another, which a chain cannot promise. The rebuild reads only
//! the chunks with changed blocks, on the backup host, while the server has long finished.
//!
//! The rebuild follows pg_combinebackup (see `pg::incremental`); the parent is always whole.
//! The backup_label loses its `INCREMENTAL FROM` lines, as pg_combinebackup writes it.
//! The `INCREMENTAL.*` files are read from where the receive kept them (`changed_blocks`, a
//! scratch file); they never become chunks.

use super::changed_blocks::ChangedBlocks;
use super::error::BackupError;
use super::pipeline::{Pipeline, PipelineConfig};
use crate::catalog::backup_store::{self, combine_crc, BackupIndex, ChunkRef, FileKind, StoredFile, CHUNK_SIZE};
use crate::catalog::file_reader::{read_chunk, StoredFileReader};
use crate::catalog::store::ObjectStore;
use crate::pg::incremental::{self, IncrementalHeader, ReadAt};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Whether a backup is taken incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncrementalMode {
    /// A full backup.
    #[default]
    Off,
    /// Incremental when the server and the catalog allow it, else full (with the reason logged).
    Auto,
    /// Incremental or nothing (`--incremental=require`).
    Require,
}

impl IncrementalMode {
    pub fn parse(text: &str) -> Result<IncrementalMode, String> {
        match text {
            "" | "auto" | "yes" | "on" | "true" => Ok(IncrementalMode::Auto),
            "require" => Ok(IncrementalMode::Require),
            "off" | "no" | "false" => Ok(IncrementalMode::Off),
            other => Err(format!("--incremental={other:?}: expected auto, require or off")),
        }
    }
}

/// What a scheduled backup is under `backup_full_every`: full when no full backup started within
/// `full_every` (or none exists), else incremental (falling back to full when not possible).
pub fn scheduled_mode(store: &dyn ObjectStore, server: &str, full_every: Option<std::time::Duration>, now: u64) -> IncrementalMode {
    let Some(every) = full_every else {
        return IncrementalMode::Off;
    };
    let Ok(ids) = backup_store::list_ids(store, server) else {
        return IncrementalMode::Off;
    };
    for id in ids.iter().rev() {
        match backup_store::load(store, server, id) {
            Ok(idx) if idx.incremental.is_none() => {
                return if now.saturating_sub(idx.start_time) < every.as_secs() {
                    IncrementalMode::Auto
                } else {
                    IncrementalMode::Off
                };
            }
            Ok(_) => {}
            Err(_) => return IncrementalMode::Off,
        }
    }
    IncrementalMode::Off
}

/// The parent an incremental backup continues from.
pub struct Parent {
    pub index: BackupIndex,
    /// Its backup_manifest as the server wrote it (what UPLOAD_MANIFEST sends back).
    pub manifest: Vec<u8>,
}

/// The newest backup of `server` an incremental can continue from, or why there is none.
pub fn choose_parent(
    store: &dyn ObjectStore,
    server: &str,
    pg_version: u32,
    system_identifier: u64,
    chunks_local: bool,
) -> Result<Parent, String> {
    if pg_version < 170000 {
        return Err(format!(
            "the server runs PostgreSQL {}; incremental backups need 17 or later",
            pg_version / 10000
        ));
    }
    if !chunks_local {
        return Err("backups_local is false: the parent's unchanged blocks are not in the local catalog".into());
    }
    let index = backup_store::newest(store, server)
        .map_err(|e| format!("cannot read the newest backup: {e}"))?
        .ok_or("there is no backup to continue from yet")?;
    if index.pg_version / 10000 != pg_version / 10000 {
        return Err(format!(
            "the newest backup {} is of PostgreSQL {}, the server runs {}",
            index.id,
            index.pg_version / 10000,
            pg_version / 10000
        ));
    }
    if index.system_identifier != system_identifier.to_string() {
        return Err(format!("the newest backup {} is of another cluster", index.id));
    }
    let manifest = store
        .get(&backup_store::manifest_key(server, &index.id))
        .map_err(|e| format!("cannot read the backup_manifest of {}: {e}", index.id))?
        .ok_or_else(|| format!("the newest backup {} has no backup_manifest", index.id))?;
    Ok(Parent { index, manifest })
}

/// What the rebuild produced.
pub struct Rebuilt {
    pub files: Vec<StoredFile>,
    /// New bytes stored by the rebuild.
    pub stored_new: u64,
    pub incremental_files: u64,
    /// Bytes of the `INCREMENTAL.*` files received.
    pub incremental_bytes: u64,
}

/// A file of the result: kept as received, or rebuilt (its chunks as they come back from the
/// workers; taken-over chunks are there from the start).
enum Building {
    Kept(StoredFile),
    Rebuilt {
        file: StoredFile,
        chunks: Vec<Option<(u32, ChunkRef)>>,
    },
}

/// Rebuilds every `INCREMENTAL.*` file of `files` (as received and stored) into the whole file,
/// with the parent's unchanged chunks taken over and the changed ones stored through a
/// pipeline; rewrites the backup_label. Every other file is kept as received.
pub fn rebuild(
    server: &str,
    parent: &BackupIndex,
    files: Vec<StoredFile>,
    changed: &ChangedBlocks,
    store: &Arc<dyn ObjectStore>,
    cfg: PipelineConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Rebuilt, BackupError> {
    let parents: HashMap<&str, &StoredFile> = parent
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File)
        .map(|f| (f.path.as_str(), f))
        .collect();
    let pipeline = Pipeline::start(cfg, Arc::clone(store));
    let n = files.len();
    let mut out: Vec<Option<Building>> = (0..n).map(|_| None).collect();
    let (mut incremental_files, mut incremental_bytes) = (0u64, 0u64);
    // Visibility maps last: which of their pages to clear depends on the heap files.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| visibility_map_of(&whole_path(&files[i])).is_some());
    let mut stale: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut files: Vec<Option<StoredFile>> = files.into_iter().map(Some).collect();
    for i in order {
        if cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        if pipeline.has_failed() {
            break;
        }
        let Some(f) = files[i].take() else { continue };
        fail::fail_point!("incremental-rebuild");
        let whole = whole_path(&f);
        let vm_pages = visibility_map_of(&whole)
            .and_then(|rel| stale.get(&rel))
            .cloned()
            .unwrap_or_default();
        let built = match incremental::full_path(&f.path).filter(|_| f.kind == FileKind::File) {
            Some(whole) => {
                incremental_files += 1;
                incremental_bytes += f.size;
                let prior = parents.get(whole.as_str()).copied().ok_or_else(|| {
                    damaged(format!(
                        "the server sent {} as changed blocks, but the parent backup {} has no {whole}",
                        f.path, parent.id
                    ))
                })?;
                let (b, blocks) = rebuild_file(server, &f, whole.clone(), prior, changed, &vm_pages, store.as_ref(), &pipeline, i)?;
                if let Some((rel, segno)) = main_fork(&whole) {
                    let base = segno * RELSEG_BLOCKS;
                    stale
                        .entry(rel)
                        .or_default()
                        .extend(blocks.iter().map(|&b| (base + u64::from(b)) / HEAP_BLOCKS_PER_VM_PAGE));
                }
                b
            }
            None if f.kind == FileKind::File && f.path == "backup_label" => relabel(server, f, store.as_ref(), &pipeline, i)?,
            None if f.kind == FileKind::File && !vm_pages.is_empty() => clear_pages(server, f, &vm_pages, store.as_ref(), &pipeline, i)?,
            None => {
                if let (FileKind::File, Some((rel, segno))) = (f.kind, main_fork(&f.path)) {
                    // Sent whole (new, or most of it changed): any of its blocks may have lost
                    // its all-visible bit.
                    let first = segno * RELSEG_BLOCKS / HEAP_BLOCKS_PER_VM_PAGE;
                    let last = ((segno + 1) * RELSEG_BLOCKS - 1) / HEAP_BLOCKS_PER_VM_PAGE;
                    stale.entry(rel).or_default().extend(first..=last);
                }
                Building::Kept(f)
            }
        };
        out[i] = Some(built);
    }
    let results = pipeline.finish()?;
    let mut stored_new = 0;
    for r in results {
        if r.new {
            stored_new += r.chunk_ref.stored;
        }
        let slot = match out.get_mut(r.file) {
            Some(Some(Building::Rebuilt { chunks, .. })) => chunks.get_mut(r.chunk),
            _ => None,
        }
        .ok_or_else(|| damaged(format!("a rebuilt chunk ({}, {}) has no file", r.file, r.chunk)))?;
        *slot = Some((r.crc32c, r.chunk_ref));
    }
    let files = out
        .into_iter()
        .map(|b| {
            b.ok_or_else(|| damaged("a file was left out of the rebuild".into()))
                .and_then(finish)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rebuilt {
        files,
        stored_new,
        incremental_files,
        incremental_bytes,
    })
}

/// Blocks in a relation segment file (1 GiB of 8 kB pages, PostgreSQL's default build).
const RELSEG_BLOCKS: u64 = 131_072;
/// Heap blocks one visibility-map page covers: 2 bits each in the page after its 24-byte header.
const HEAP_BLOCKS_PER_VM_PAGE: u64 = (incremental::BLCKSZ - 24) * 4;

/// The path a received file has once rebuilt.
fn whole_path(f: &StoredFile) -> String {
    incremental::full_path(&f.path).unwrap_or_else(|| f.path.clone())
}

/// `base/5/16384.2` → (`base/5/16384`, 2): a relation's main fork segment; None for anything else.
fn main_fork(path: &str) -> Option<(String, u64)> {
    let (dir, name) = path.rsplit_once('/')?;
    let (node, segno) = match name.split_once('.') {
        Some((n, s)) => (n, s.parse::<u64>().ok()?),
        None => (name, 0),
    };
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then(|| (format!("{dir}/{node}"), segno))
}

/// `base/5/16384_vm` → `base/5/16384`: the relation whose visibility map this is (its first
/// segment, which covers 32 TB of heap).
fn visibility_map_of(path: &str) -> Option<String> {
    let rel = path.strip_suffix("_vm")?;
    main_fork(rel).filter(|(_, s)| *s == 0).map(|(r, _)| r)
}

/// A visibility map sent whole, with `pages` zeroed (see `rebuild_file`).
fn clear_pages(
    server: &str,
    f: StoredFile,
    pages: &BTreeSet<u64>,
    store: &dyn ObjectStore,
    pipeline: &Pipeline,
    i: usize,
) -> Result<Building, BackupError> {
    let mut reader = StoredFileReader::new(store, server, &f);
    let mut chunks = Vec::with_capacity(f.chunks.len());
    let mut start = 0u64;
    for (k, c) in f.chunks.iter().enumerate() {
        let end = start + c.size;
        let hit: Vec<u64> = pages
            .range(start / incremental::BLCKSZ..end.div_ceil(incremental::BLCKSZ))
            .copied()
            .collect();
        if hit.is_empty() {
            let crc = match c.crc32c {
                Some(crc) => crc,
                None => crc32c::crc32c(reader.chunk(k).map_err(BackupError::Io)?),
            };
            chunks.push(Some((crc, c.clone())));
        } else {
            let mut buf = reader.chunk(k).map_err(BackupError::Io)?.to_vec();
            zero_pages(&mut buf, start, &hit);
            chunks.push(None);
            pipeline.submit(i, k, buf);
        }
        start = end;
    }
    Ok(Building::Rebuilt { file: f, chunks })
}

/// Zeroes the 8 kB pages `pages` (page numbers in the file) inside `buf`, which holds the file
/// from byte `start`. PostgreSQL takes an all-zero visibility-map page for a new one: no bit
/// set, nothing claimed all-visible or all-frozen; the next VACUUM sets them again.
fn zero_pages(buf: &mut [u8], start: u64, pages: &[u64]) {
    for &p in pages.iter().filter(|&&p| p * incremental::BLCKSZ >= start) {
        let from = (p * incremental::BLCKSZ - start) as usize;
        let to = (from + incremental::BLCKSZ as usize).min(buf.len());
        if from < to {
            buf[from..to].fill(0);
        }
    }
}

fn damaged(why: String) -> BackupError {
    BackupError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why))
}

/// The file with its chunks in place; a rebuilt one's CRC-32C combined from theirs.
fn finish(b: Building) -> Result<StoredFile, BackupError> {
    let (mut f, chunks) = match b {
        Building::Kept(f) => return Ok(f),
        Building::Rebuilt { file, chunks } => (file, chunks),
    };
    let chunks: Vec<(u32, ChunkRef)> = chunks
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| damaged(format!("{}: a rebuilt chunk was lost", f.path)))?;
    f.crc32c = Some(combine_crc(&chunks.iter().map(|(crc, c)| (*crc, c.size)).collect::<Vec<_>>()));
    f.stored_bytes = chunks.iter().map(|(_, c)| c.stored).sum();
    f.size = chunks.iter().map(|(_, c)| c.size).sum();
    f.chunks = chunks.into_iter().map(|(_, c)| c).collect();
    Ok(f)
}

/// The backup_label without its `INCREMENTAL FROM` lines, stored as a new chunk.
fn relabel(server: &str, f: StoredFile, store: &dyn ObjectStore, pipeline: &Pipeline, i: usize) -> Result<Building, BackupError> {
    let mut text = Vec::new();
    for c in &f.chunks {
        text.extend(read_chunk(store, server, c)?);
    }
    let label = incremental::full_backup_label(&text);
    if label == text {
        return Ok(Building::Kept(f));
    }
    // A false return means the workers failed; `finish` returns their error.
    pipeline.submit(i, 0, label);
    Ok(Building::Rebuilt {
        file: f,
        chunks: vec![None],
    })
}

/// One `INCREMENTAL.*` file rebuilt over its parent file, chunk by chunk: a chunk with no
/// changed block and the same extent as the parent's is the parent's chunk; any other is put
/// together (parent bytes, zeros, changed blocks) and stored. Returns the changed blocks too.
///
/// `vm_pages`, for a visibility map: pages to zero. PostgreSQL clears a heap block's
/// all-visible bit without WAL naming the map's block, so WAL summaries miss it and the server
/// does not send that page: pg_combinebackup (17, 18) then restores a map that calls a page
/// all-visible after rows on it were deleted, and index-only scans return deleted rows
/// (reproduced; VACUUM warns "visibility map bit is set" on such a page). pgark zeroes every
/// map page covering a heap block that changed: the map only loses bits, which is always safe.
#[allow(clippy::too_many_arguments)]
fn rebuild_file(
    server: &str,
    f: &StoredFile,
    whole: String,
    prior: &StoredFile,
    changed: &ChangedBlocks,
    vm_pages: &BTreeSet<u64>,
    store: &dyn ObjectStore,
    pipeline: &Pipeline,
    i: usize,
) -> Result<(Building, Vec<u32>), BackupError> {
    let mut incr = changed
        .reader(&f.path)
        .ok_or_else(|| damaged(format!("{}: the server sent it, but its changed blocks were not kept", f.path)))?;
    let mut first = [0u8; 12];
    incr.read_exact_at(&mut first, 0).map_err(BackupError::Io)?;
    let want = incremental::header_read_len(&first).unwrap_or(12).min(f.size as usize);
    let mut head = vec![0u8; want];
    incr.read_exact_at(&mut head, 0).map_err(BackupError::Io)?;
    let h = IncrementalHeader::parse(&f.path, &head, f.size).map_err(|e| damaged(e.to_string()))?;
    let len = h.reconstructed_len();
    let mut file = f.clone();
    file.path = whole;
    file.size = len;
    file.chunks.clear();
    file.crc32c = None;
    let mut prior_reader = StoredFileReader::new(store, server, prior);
    let count = len.div_ceil(CHUNK_SIZE as u64) as usize;
    let mut chunks = Vec::with_capacity(count);
    let mut prior_at = 0u64;
    let prior_starts: Vec<(u64, &ChunkRef)> = prior
        .chunks
        .iter()
        .map(|c| {
            let s = prior_at;
            prior_at += c.size;
            (s, c)
        })
        .collect();
    for k in 0..count {
        let start = k as u64 * CHUNK_SIZE as u64;
        let end = (start + CHUNK_SIZE as u64).min(len);
        let hit: Vec<u64> = vm_pages
            .range(start / incremental::BLCKSZ..end.div_ceil(incremental::BLCKSZ))
            .copied()
            .collect();
        let same = prior_starts
            .get(k)
            .filter(|(s, c)| hit.is_empty() && *s == start && c.size == end - start && h.range_is_prior(start, end, prior.size));
        if let Some((_, c)) = same {
            let crc = match c.crc32c {
                Some(crc) => crc,
                // An index from before chunks carried their CRC: read it once.
                None => crc32c::crc32c(prior_reader.chunk(k).map_err(BackupError::Io)?),
            };
            let mut c = (*c).clone();
            c.crc32c = Some(crc);
            chunks.push(Some((crc, c)));
            continue;
        }
        let mut buf = vec![0u8; (end - start) as usize];
        incremental::reconstruct_range(&h, &mut incr, &mut prior_reader, prior.size, start, &mut buf).map_err(BackupError::Io)?;
        zero_pages(&mut buf, start, &hit);
        chunks.push(None);
        pipeline.submit(i, k, buf);
    }
    // A file rebuilt empty (truncated to nothing) has no chunks but is complete.
    Ok((Building::Rebuilt { file, chunks }, h.blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_and_their_visibility_maps() {
        assert_eq!(main_fork("base/5/16384"), Some(("base/5/16384".into(), 0)));
        assert_eq!(
            main_fork("pg_tblspc/9/PG_17_1/5/16384.3"),
            Some(("pg_tblspc/9/PG_17_1/5/16384".into(), 3))
        );
        assert_eq!(main_fork("base/5/16384_vm"), None);
        assert_eq!(main_fork("base/5/PG_VERSION"), None);
        assert_eq!(main_fork("backup_label"), None);
        assert_eq!(visibility_map_of("base/5/16384_vm").as_deref(), Some("base/5/16384"));
        assert_eq!(visibility_map_of("base/5/16384_fsm"), None);
        // Heap block 40000 of segment 0 is on map page 1; block 0 of segment 1 on page 4.
        assert_eq!(40_000 / HEAP_BLOCKS_PER_VM_PAGE, 1);
        assert_eq!(RELSEG_BLOCKS / HEAP_BLOCKS_PER_VM_PAGE, 4);
    }

    #[test]
    fn backup_full_every_picks_full_or_incremental() {
        use crate::catalog::backup_store::{publish, tests::index, IncrementalOrigin};
        use crate::catalog::store::LocalStore;
        use crate::pg::Lsn;
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let every = Some(std::time::Duration::from_secs(7 * 86400));
        let t0 = 1_800_000_000;
        assert_eq!(scheduled_mode(&store, "main", every, t0), IncrementalMode::Off, "no backup yet");
        let mut full = index("20270115T080000Z", &[]);
        full.start_time = t0;
        publish(&store, &full).unwrap();
        let mut inc = index("20270116T080000Z", &[]);
        inc.start_time = t0 + 86400;
        inc.incremental = Some(IncrementalOrigin {
            parent: full.id.clone(),
            from_lsn: Lsn(0),
            full: full.id.clone(),
            incremental_files: 1,
            incremental_bytes: 1,
        });
        publish(&store, &inc).unwrap();
        assert_eq!(scheduled_mode(&store, "main", every, t0 + 6 * 86400), IncrementalMode::Auto);
        assert_eq!(
            scheduled_mode(&store, "main", every, t0 + 8 * 86400),
            IncrementalMode::Off,
            "the full is a week old"
        );
        assert_eq!(scheduled_mode(&store, "main", None, t0 + 86400), IncrementalMode::Off);
        assert_eq!(IncrementalMode::parse("require"), Ok(IncrementalMode::Require));
        assert!(IncrementalMode::parse("maybe").is_err());
    }

    #[test]
    fn zeroes_only_the_named_pages_of_the_piece() {
        let b = incremental::BLCKSZ as usize;
        // The piece holds pages 2 and 3 of the file.
        let mut buf = vec![7u8; 2 * b];
        zero_pages(&mut buf, 2 * b as u64, &[1, 3, 9]);
        assert!(buf[..b].iter().all(|&x| x == 7));
        assert!(buf[b..].iter().all(|&x| x == 0));
    }
}
