//! Writing a backup's files into a target directory: parallel decompression and writes, every
//! file checked against the CRC-32C recorded at backup time, tablespaces at their (remapped)
//! locations, and `--delta` that rewrites only files whose contents differ.
//!
//! Half-restored safety: before any file is written a marker file is put in the target and
//! `global/pg_control` is removed; `pg_control` is written last, under a temporary name, and
//! renamed into place only after everything else is synced (`finish`). PostgreSQL refuses to
//! start without `pg_control`, so an interrupted restore can never be started by accident.

use crate::basebackup::progress::Progress;
use crate::basebackup::tar::EntryKind;
use crate::catalog::backup_store::{self, BackupIndex, StoredFile};
use crate::catalog::store::ObjectStore;
use crate::catalog::{fsutil, segment_file};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Left in the target while a restore is incomplete.
pub const MARKER: &str = "pgark_restore_incomplete";
const PG_CONTROL: &str = "global/pg_control";
const PG_CONTROL_TMP: &str = "global/pg_control.pgark-restore";

pub struct ExtractOptions {
    pub target_dir: PathBuf,
    /// Final location of every tablespace, by oid.
    pub tablespaces: BTreeMap<u32, PathBuf>,
    pub delta: bool,
    pub jobs: usize,
    /// uid and gid to own everything written (root only).
    pub owner: Option<(u32, u32)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExtractStats {
    pub files_written: u64,
    pub files_unchanged: u64,
    pub files_removed: u64,
    pub bytes_written: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("restored file {file} does not match the backup: {reason}. The catalog copy is damaged; restore from another backup")]
    Corrupt { file: String, reason: String },
    #[error("the backup lists {0:?}, which is not a plain relative path")]
    BadPath(String),
    #[error("the backup has a file in tablespace {0} but no location for it")]
    NoTablespace(u32),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a backup path goes on disk.
fn destination(opts: &ExtractOptions, path: &str) -> Result<PathBuf, ExtractError> {
    if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(ExtractError::BadPath(path.to_string()));
    }
    if let Some(rest) = path.strip_prefix("pg_tblspc/") {
        if let Some((oid, inner)) = rest.split_once('/') {
            let oid: u32 = oid.parse().map_err(|_| ExtractError::BadPath(path.to_string()))?;
            let loc = opts.tablespaces.get(&oid).ok_or(ExtractError::NoTablespace(oid))?;
            return Ok(loc.join(inner));
        }
    }
    Ok(opts.target_dir.join(path))
}

/// Every regular file and symlink under `dir` (not following symlinks), as absolute paths.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Reads a stored file's bytes chunk by chunk, verifying each compressed chunk's own checksum.
fn read_chunks(
    store: &dyn ObjectStore,
    server: &str,
    f: &StoredFile,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), ExtractError> {
    for c in &f.chunks {
        let key = backup_store::chunk_key(server, &c.object);
        let stored = store
            .get(&key)
            .map_err(|e| ExtractError::Io {
                path: PathBuf::from(&key),
                source: e,
            })?
            .ok_or_else(|| ExtractError::Corrupt {
                file: f.path.clone(),
                reason: format!("chunk {key} is missing from the catalog"),
            })?;
        let data = if c.object.ends_with(".zst") {
            segment_file::decompress(&stored).map_err(|e| ExtractError::Corrupt {
                file: f.path.clone(),
                reason: format!("chunk {key}: {e}"),
            })?
        } else {
            stored
        };
        if data.len() as u64 != c.size {
            return Err(ExtractError::Corrupt {
                file: f.path.clone(),
                reason: format!("chunk {key} holds {} bytes, {} expected", data.len(), c.size),
            });
        }
        sink(&data).map_err(|e| ExtractError::Io {
            path: PathBuf::from(&f.path),
            source: e,
        })?;
    }
    Ok(())
}

/// CRC-32C and size of an existing file (for `--delta`).
fn file_crc(path: &Path) -> io::Result<(u32, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut crc, mut n) = (0u32, 0u64);
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((crc, n));
        }
        crc = crc32c::crc32c_append(crc, &buf[..k]);
        n += k as u64;
    }
}

fn write_file(store: &dyn ObjectStore, server: &str, f: &StoredFile, dest: &Path) -> Result<u64, ExtractError> {
    let _ = std::fs::remove_file(dest); // replaces a file or a stale symlink, never writes through it
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(io_err(dest))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, file);
    let mut crc = 0u32;
    let mut n = 0u64;
    read_chunks(store, server, f, |d| {
        crc = crc32c::crc32c_append(crc, d);
        n += d.len() as u64;
        w.write_all(d)
    })?;
    let file = w.into_inner().map_err(|e| ExtractError::Io {
        path: dest.to_path_buf(),
        source: e.into_error(),
    })?;
    if n != f.size || f.crc32c.is_some_and(|c| c != crc) {
        return Err(ExtractError::Corrupt {
            file: f.path.clone(),
            reason: format!(
                "{n} bytes with CRC-32C {crc:08x}, the backup recorded {} bytes with {:08x}",
                f.size,
                f.crc32c.unwrap_or(0)
            ),
        });
    }
    file.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o7777))
        .map_err(io_err(dest))?;
    Ok(n)
}

/// Restores the files. The caller then writes the recovery settings and calls `finish`.
pub fn extract(
    store: Arc<dyn ObjectStore>,
    idx: &BackupIndex,
    opts: &ExtractOptions,
    progress: &mut dyn Progress,
) -> Result<ExtractStats, ExtractError> {
    let target = &opts.target_dir;
    std::fs::create_dir_all(target).map_err(io_err(target))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700)).map_err(io_err(target))?;
    std::fs::write(
        target.join(MARKER),
        "pgark restore has not finished writing this directory; global/pg_control is written last, so PostgreSQL cannot start on it. Run the restore again.\n",
    )
    .map_err(io_err(&target.join(MARKER)))?;
    let control = target.join(PG_CONTROL);
    match std::fs::remove_file(&control) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&control)(e)),
    }
    for loc in opts.tablespaces.values() {
        std::fs::create_dir_all(loc).map_err(io_err(loc))?;
        std::fs::set_permissions(loc, std::fs::Permissions::from_mode(0o700)).map_err(io_err(loc))?;
    }

    // Directories and tablespace links first.
    let mut wanted: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &idx.files {
        let dest = destination(opts, &f.path)?;
        match f.kind {
            EntryKind::Directory => {
                std::fs::create_dir_all(&dest).map_err(io_err(&dest))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode & 0o7777 | 0o700)).map_err(io_err(&dest))?;
            }
            EntryKind::Symlink => {
                let oid: u32 = f
                    .path
                    .strip_prefix("pg_tblspc/")
                    .and_then(|o| o.parse().ok())
                    .ok_or_else(|| ExtractError::BadPath(f.path.clone()))?;
                let loc = opts.tablespaces.get(&oid).ok_or(ExtractError::NoTablespace(oid))?;
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                if std::fs::read_link(&dest).ok().as_deref() != Some(loc.as_path()) {
                    let _ = std::fs::remove_file(&dest);
                    std::os::unix::fs::symlink(loc, &dest).map_err(io_err(&dest))?;
                }
                wanted.insert(dest);
            }
            EntryKind::File => {
                wanted.insert(dest);
            }
        }
    }

    // Files, on `jobs` threads.
    let files: Vec<&StoredFile> = idx.files.iter().filter(|f| f.kind == EntryKind::File).collect();
    let next = Mutex::new(0usize);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<ExtractError>> = Mutex::new(None);
    let written = AtomicU64::new(0);
    let unchanged = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let done_bytes = AtomicU64::new(0);
    progress.begin(Some(idx.original_bytes));
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = {
                    let Ok(mut n) = next.lock() else { return };
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(f) = files.get(i) else { return };
                let result = (|| -> Result<(), ExtractError> {
                    let mut dest = destination(opts, &f.path)?;
                    if f.path == PG_CONTROL {
                        dest = target.join(PG_CONTROL_TMP);
                    } else if opts.delta && f.crc32c.is_some() {
                        if let Ok((crc, size)) = file_crc(&dest) {
                            if size == f.size && Some(crc) == f.crc32c {
                                let mode = f.mode & 0o7777;
                                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).map_err(io_err(&dest))?;
                                unchanged.fetch_add(1, Ordering::Relaxed);
                                return Ok(());
                            }
                        }
                    }
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                    }
                    let n = write_file(store.as_ref(), &idx.server, f, &dest)?;
                    written.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                })();
                done_bytes.fetch_add(f.size, Ordering::Relaxed);
                if let Err(e) = result {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                    return;
                }
            });
        }
        // This thread reports progress while the workers run.
        while !failed.load(Ordering::Relaxed) && next.lock().map(|n| *n < files.len() + opts.jobs.max(1)).unwrap_or(false) {
            progress.update(done_bytes.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    progress.update(idx.original_bytes, bytes.load(Ordering::Relaxed));

    // Delta: remove what the backup does not have.
    let mut removed = 0u64;
    if opts.delta {
        let mut existing = Vec::new();
        walk(target, &mut existing).map_err(io_err(target))?;
        for loc in opts.tablespaces.values() {
            walk(loc, &mut existing).map_err(io_err(loc))?;
        }
        let keep = |p: &Path| wanted.contains(p) || p == target.join(MARKER) || p == target.join(PG_CONTROL_TMP);
        for p in existing {
            if !keep(&p) {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
                removed += 1;
            }
        }
    }
    progress.end();
    Ok(ExtractStats {
        files_written: written.into_inner(),
        files_unchanged: unchanged.into_inner(),
        files_removed: removed,
        bytes_written: bytes.into_inner(),
    })
}

/// Makes the restore durable and startable: owner, sync, then `pg_control` into place and the
/// marker removed.
pub fn finish(opts: &ExtractOptions) -> Result<(), ExtractError> {
    let target = &opts.target_dir;
    if let Some((uid, gid)) = opts.owner {
        let mut all = vec![target.clone()];
        all.extend(opts.tablespaces.values().cloned());
        for root in all {
            chown_tree(&root, uid, gid).map_err(io_err(&root))?;
        }
    }
    fsutil::sync_filesystem(target).map_err(io_err(target))?;
    for loc in opts.tablespaces.values() {
        fsutil::sync_filesystem(loc).map_err(io_err(loc))?;
    }
    let tmp = target.join(PG_CONTROL_TMP);
    if tmp.exists() {
        fsutil::durable_rename(&tmp, &target.join(PG_CONTROL)).map_err(io_err(&tmp))?;
    }
    fsutil::durable_remove(&target.join(MARKER)).map_err(io_err(target))?;
    Ok(())
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(root)?.is_dir() {
        for e in std::fs::read_dir(root)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}
