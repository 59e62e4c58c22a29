//! Writing a backup's files into a target directory: parallel decompression and writes, every
//! file checked against the CRC-32C recorded at backup time, tablespaces at their (remapped)
//! locations, and `--delta` that rewrites only files whose contents differ.
//!
//! Half-restored safety: before any file is written a marker file is put in the target and
//! `global/pg_control` is removed; `pg_control` is written last, under a temporary name, and
//! renamed into place only after everything else is synced (`finish`). PostgreSQL refuses to
//! start without `pg_control`, so an interrupted restore can never be started by accident.

use super::pool;
use crate::catalog::backup_store::FileKind;
use crate::catalog::backup_store::{self, BackupIndex, ChunkRef, StoredFile};
use crate::catalog::restore_record::{RecordedChunk, RestoreRecord};
use crate::catalog::segment_file;
use crate::catalog::store::ObjectStore;
use crate::fsio::direct::{self as direct, AlignedBuf, DirectSupport};
use crate::fsio::durable;
use crate::util::progress::Progress;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
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
    /// With delta: the record of the last restore into this directory (see `record`), whose
    /// unchanged files are compared by their recorded chunks instead of being read.
    pub previous: Option<RestoreRecord>,
    /// Set by SIGINT/SIGTERM: the workers stop after the chunk they are writing, and the
    /// directory stays unstartable (marker, no `pg_control`) for a later `--delta` to finish.
    pub interrupted: std::sync::Arc<AtomicBool>,
    /// Nobody waits for this restore (a drill): its direct writes go in pieces of
    /// `fsio::direct::PIECE`, like the daemon's, so that a synchronous server's fdatasync never
    /// queues behind a whole chunk. A real restore writes whole chunks.
    pub background: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtractStats {
    pub files_written: u64,
    pub files_unchanged: u64,
    pub files_removed: u64,
    pub bytes_written: u64,
    /// Existing files (delta) found unchanged through the last restore's record, without reading them.
    pub files_trusted: u64,
    /// Files and directories `finish` must make durable.
    #[serde(skip)]
    pub to_sync: Vec<PathBuf>,
    /// Every file restored from the backup (at its final path) and the chunks it now holds: the
    /// next restore record.
    #[serde(skip)]
    pub restored: Vec<(PathBuf, Vec<RecordedChunk>)>,
    #[serde(skip)]
    pub dirs: BTreeSet<PathBuf>,
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
    #[error("interrupted by a signal")]
    Interrupted,
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

/// What one restore thread reuses from chunk to chunk: the block-aligned buffer chunks are
/// decompressed into (and written from, with direct I/O) and a zstd context.
struct Worker {
    buf: AlignedBuf,
    dctx: zstd::bulk::Decompressor<'static>,
}

impl Worker {
    fn new() -> Result<Worker, ExtractError> {
        Ok(Worker {
            buf: AlignedBuf::new(backup_store::CHUNK_SIZE),
            dctx: zstd::bulk::Decompressor::new().map_err(|e| ExtractError::Io {
                path: PathBuf::from("(zstd context)"),
                source: e,
            })?,
        })
    }

    /// Makes room for chunk `c` (of `file`) in the buffer; refuses absurd sizes.
    fn make_room(&mut self, file: &str, key: &str, c: &ChunkRef) -> Result<(), ExtractError> {
        if c.size > MAX_CHUNK {
            return Err(ExtractError::Corrupt {
                file: file.to_string(),
                reason: format!("chunk {key} is listed with {} bytes, more than any chunk", c.size),
            });
        }
        if c.size as usize > self.buf.capacity() {
            self.buf = AlignedBuf::new(c.size as usize);
        }
        Ok(())
    }
}

/// Reads one stored chunk into `w.buf`, decompressed and checked against its recorded size (a
/// compressed chunk also carries its own size and CRC-32C, which decompression verifies).
/// Returns the chunk's CRC-32C.
fn load_chunk(store: &dyn ObjectStore, server: &str, file: &str, c: &ChunkRef, w: &mut Worker) -> Result<u32, ExtractError> {
    let key = backup_store::chunk_key(server, &c.object);
    let corrupt = |reason: String| ExtractError::Corrupt {
        file: file.to_string(),
        reason,
    };
    w.make_room(file, &key, c)?;
    let stored = store
        .get(&key)
        .map_err(|e| ExtractError::Io {
            path: PathBuf::from(&key),
            source: e,
        })?
        .ok_or_else(|| corrupt(format!("chunk {key} is missing from the catalog")))?;
    let (size, crc) = if c.object.ends_with(".zst") {
        let sum =
            segment_file::decompress_into(&stored, &mut w.dctx, w.buf.as_mut_slice()).map_err(|e| corrupt(format!("chunk {key}: {e}")))?;
        (sum.size, sum.crc32c)
    } else {
        let n = stored.len().min(w.buf.capacity());
        w.buf.as_mut_slice()[..n].copy_from_slice(&stored[..n]);
        (stored.len() as u64, crc32c::crc32c(&stored))
    };
    if size != c.size {
        return Err(corrupt(format!("chunk {key} holds {size} bytes, {} expected", c.size)));
    }
    Ok(crc)
}

/// Chunks are cut at `CHUNK_SIZE`; an index listing far more is damaged, not a reason to
/// allocate.
const MAX_CHUNK: u64 = 64 << 20;

/// The SHA-256 a chunk is named by (`ab/<hex>.zst`).
fn chunk_hash(c: &ChunkRef) -> Option<&str> {
    c.object.rsplit('/').next()?.split('.').next()
}

/// Whether `have` holds exactly the chunk's bytes: BLAKE3 when the backup recorded it, else the
/// SHA-256 the chunk is named by. Both are 256-bit: a stale copy is never taken for current.
fn same_content(c: &ChunkRef, have: &[u8]) -> bool {
    if have.len() as u64 != c.size {
        return false;
    }
    match &c.blake3 {
        Some(b) => blake3::hash(have).to_hex().as_str() == b.as_str(),
        None => Some(crate::util::hex::to_hex(&Sha256::digest(have)).as_str()) == chunk_hash(c),
    }
}

/// One unit of parallel work: a chunk of a file, at its offset.
struct Task {
    file: usize,
    chunk: usize,
    offset: u64,
}

/// Per-file state shared by the tasks of that file.
struct FileState<'a> {
    f: &'a StoredFile,
    dest: PathBuf,
    /// The file existed before (delta); unchanged chunks are verified, not rewritten.
    existed: bool,
    /// The chunks the existing file holds, per the last restore's record (it has not changed
    /// since): compared by name, never read.
    trusted: Option<Vec<RecordedChunk>>,
    crcs: Mutex<Vec<Option<u32>>>,
    wrote: AtomicBool,
    /// Already fsynced by its task (single-chunk files).
    synced: AtomicBool,
}

/// Restores (or, with delta, checks and patches) one chunk.
fn restore_chunk(
    store: &dyn ObjectStore,
    server: &str,
    st: &FileState<'_>,
    t: &Task,
    delta: bool,
    w: &mut Worker,
    direct: &DirectSupport,
) -> Result<u64, ExtractError> {
    if st.f.chunks.len() == 1 {
        return restore_whole(store, server, st, delta, w);
    }
    let c = &st.f.chunks[t.chunk];
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&st.dest)
        .map_err(io_err(&st.dest))?;
    if delta && st.existed {
        match &st.trusted {
            // Known from the record: the same chunk is there, or (otherwise) it is not.
            Some(old) => {
                if let Some(crc) = recorded_crc(old, t.chunk, c) {
                    record(st, t.chunk, crc);
                    return Ok(0);
                }
            }
            None => {
                w.make_room(&st.f.path, &c.object, c)?;
                let have = &mut w.buf.as_mut_slice()[..c.size as usize];
                if direct::read_at(direct, &st.dest, &file, have, t.offset).is_ok() && same_content(c, have) {
                    record(st, t.chunk, crc32c::crc32c(have));
                    return Ok(0);
                }
            }
        }
    }
    let crc = load_chunk(store, server, &st.f.path, c, w)?;
    let data = w.buf.slice(c.size as usize);
    if direct::write_at(direct, &st.dest, &file, data, t.offset).map_err(io_err(&st.dest))? {
        start_writeback(&file, t.offset, data.len() as u64);
    }
    record(st, t.chunk, crc);
    st.wrote.store(true, Ordering::Relaxed);
    Ok(data.len() as u64)
}

/// A file of one chunk (most files): checked, written and fsynced with a single open, so a
/// cluster's thousand small files cost one open each, not three.
fn restore_whole(store: &dyn ObjectStore, server: &str, st: &FileState<'_>, delta: bool, w: &mut Worker) -> Result<u64, ExtractError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let c = &st.f.chunks[0];
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(st.f.mode & 0o7777)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&st.dest)
    };
    let mut file = match open() {
        Ok(f) => f,
        // A symlink (or other non-file) where the file goes: replace it, never write through it.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            std::fs::remove_file(&st.dest).map_err(io_err(&st.dest))?;
            open().map_err(io_err(&st.dest))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = st.dest.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            open().map_err(io_err(&st.dest))?
        }
        Err(e) => return Err(io_err(&st.dest)(e)),
    };
    if let Some(crc) = st
        .trusted
        .as_deref()
        .filter(|old| old.len() == 1)
        .and_then(|old| recorded_crc(old, 0, c))
    {
        file.set_permissions(std::fs::Permissions::from_mode(st.f.mode & 0o7777))
            .map_err(io_err(&st.dest))?;
        record(st, 0, crc);
        return Ok(0);
    }
    if delta && st.trusted.is_none() {
        let mut have = Vec::with_capacity(c.size as usize + 1);
        (&mut file).take(c.size + 1).read_to_end(&mut have).map_err(io_err(&st.dest))?;
        if same_content(c, &have) {
            file.set_permissions(std::fs::Permissions::from_mode(st.f.mode & 0o7777))
                .map_err(io_err(&st.dest))?;
            record(st, 0, crc32c::crc32c(&have));
            return Ok(0);
        }
        file.rewind().map_err(io_err(&st.dest))?;
    }
    let crc = load_chunk(store, server, &st.f.path, c, w)?;
    let data = w.buf.slice(c.size as usize);
    file.set_len(0).map_err(io_err(&st.dest))?;
    file.write_all(data).map_err(io_err(&st.dest))?;
    file.set_permissions(std::fs::Permissions::from_mode(st.f.mode & 0o7777))
        .map_err(io_err(&st.dest))?;
    file.sync_all().map_err(io_err(&st.dest))?;
    record(st, 0, crc);
    st.wrote.store(true, Ordering::Relaxed);
    st.synced.store(true, Ordering::Relaxed);
    Ok(data.len() as u64)
}

/// The CRC-32C of chunk `i` as the record has it, if the recorded file holds exactly chunk `c`
/// there (same object name, the SHA-256 of its bytes, and size).
fn recorded_crc(old: &[RecordedChunk], i: usize, c: &ChunkRef) -> Option<u32> {
    old.get(i).filter(|r| r.object == c.object && r.size == c.size).map(|r| r.crc32c)
}

/// Asks the kernel to start writing a range back now (as PostgreSQL's checkpoint_flush_after
/// does), so the final fsync finds little left to do and the disk works while we decompress.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on an open descriptor; a failure only loses the hint.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// fsyncs every file written (on `jobs` threads) and every directory: only what the restore
/// wrote, unlike syncfs, which would also flush whatever else is dirty on that filesystem.
fn sync_written(paths: &[PathBuf], dirs: &BTreeSet<PathBuf>, jobs: usize) -> Result<(), ExtractError> {
    pool::run(
        paths,
        jobs,
        || Ok(()),
        |_, p| {
            // A file the recovery settings removed since (a standby.signal from the backup)
            // needs no sync.
            match std::fs::File::open(p).and_then(|f| f.sync_all()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(p)(e)),
            }
        },
        || None,
        || {},
    )?;
    for d in dirs {
        durable::fsync_dir(d).map_err(io_err(d))?;
    }
    Ok(())
}

fn record(st: &FileState<'_>, chunk: usize, crc: u32) {
    if let Ok(mut v) = st.crcs.lock() {
        v[chunk] = Some(crc);
    }
}

/// Creates (or, with delta, resizes) every file before the parallel work, so that tasks only
/// write at offsets: a 1 GiB relation segment spreads over every job.
fn prepare_file(f: &StoredFile, dest: &Path, delta: bool) -> Result<bool, ExtractError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let existed = delta && std::fs::symlink_metadata(dest).map(|m| m.is_file()).unwrap_or(false);
    if !existed {
        let _ = std::fs::remove_file(dest); // a stale symlink or special file: never write through it
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!existed)
        .open(dest)
        .map_err(io_err(dest))?;
    if existed {
        if file.metadata().map_err(io_err(dest))?.len() != f.size {
            file.set_len(f.size).map_err(io_err(dest))?;
        }
    } else {
        direct::preallocate(&file, f.size).map_err(io_err(dest))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o7777))
        .map_err(io_err(dest))?;
    Ok(existed)
}

/// Restores the files. The caller then writes the recovery settings and calls `finish`.
pub fn extract(
    store: Arc<dyn ObjectStore>,
    idx: &BackupIndex,
    opts: &ExtractOptions,
    progress: &mut dyn Progress,
) -> Result<ExtractStats, ExtractError> {
    prepare_target(opts)?;
    let wanted = make_layout(idx, opts)?;
    let states = file_states(idx, opts)?;
    let bytes = restore_chunks(store.as_ref(), idx, opts, &states, progress)?;
    progress.update(idx.original_bytes, bytes);
    let mut stats = check_files(idx, opts, &states)?;
    stats.bytes_written = bytes;
    if opts.delta {
        stats.files_removed = remove_extras(opts, &wanted)?;
    }
    progress.end();
    Ok(stats)
}

/// Makes the target unstartable until `finish`: the marker in, `pg_control` out; creates the
/// tablespace locations.
fn prepare_target(opts: &ExtractOptions) -> Result<(), ExtractError> {
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
    Ok(())
}

/// Directories and tablespace links; returns every path the backup puts a file or link at
/// (what a delta keeps).
fn make_layout(idx: &BackupIndex, opts: &ExtractOptions) -> Result<BTreeSet<PathBuf>, ExtractError> {
    let mut wanted: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &idx.files {
        let dest = destination(opts, &f.path)?;
        match f.kind {
            FileKind::Directory => {
                // Delta: a symlink (or file) where a directory goes is replaced, never followed,
                // so nothing is written outside the target (a pg_wal link becomes a directory).
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    std::fs::remove_file(&dest).map_err(io_err(&dest))?;
                }
                std::fs::create_dir_all(&dest).map_err(io_err(&dest))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode & 0o7777 | 0o700)).map_err(io_err(&dest))?;
            }
            FileKind::Symlink => {
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
            FileKind::File => {
                wanted.insert(dest);
            }
        }
    }
    Ok(wanted)
}

/// Every regular file of the backup, created (or resized) here when it has several chunks, so
/// that its chunks can be written at offsets in parallel; whether the last restore's record
/// vouches for it is decided before anything touches it (a truncate or chmod would change its
/// identity).
fn file_states<'a>(idx: &'a BackupIndex, opts: &ExtractOptions) -> Result<Vec<FileState<'a>>, ExtractError> {
    let mut states = Vec::new();
    for f in idx.files.iter().filter(|f| f.kind == FileKind::File) {
        let dest = if f.path == PG_CONTROL {
            opts.target_dir.join(PG_CONTROL_TMP)
        } else {
            destination(opts, &f.path)?
        };
        let trusted = match (&opts.previous, opts.delta) {
            (Some(r), true) => r.unchanged(&dest).map(<[RecordedChunk]>::to_vec),
            _ => None,
        };
        // Single-chunk files are created by their task.
        let existed = if f.chunks.len() == 1 {
            opts.delta && std::fs::symlink_metadata(&dest).map(|m| m.is_file()).unwrap_or(false)
        } else {
            prepare_file(f, &dest, opts.delta)?
        };
        states.push(FileState {
            f,
            dest,
            trusted: trusted.filter(|_| existed),
            existed,
            crcs: Mutex::new(vec![None; f.chunks.len()]),
            wrote: AtomicBool::new(!existed),
            synced: AtomicBool::new(false),
        });
    }
    Ok(states)
}

/// Restores every chunk on `jobs` threads, biggest files first; returns the bytes written.
fn restore_chunks(
    store: &dyn ObjectStore,
    idx: &BackupIndex,
    opts: &ExtractOptions,
    states: &[FileState<'_>],
    progress: &mut dyn Progress,
) -> Result<u64, ExtractError> {
    let mut order: Vec<usize> = (0..states.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(states[i].f.size));
    let mut tasks = Vec::new();
    for i in order {
        let mut offset = 0u64;
        for (j, c) in states[i].f.chunks.iter().enumerate() {
            tasks.push(Task { file: i, chunk: j, offset });
            offset += c.size;
        }
    }
    let bytes = AtomicU64::new(0);
    let done_bytes = AtomicU64::new(0);
    // A restore is the job the machine is there for now: whole requests, none held back. A
    // drill is not.
    let direct = if opts.background {
        DirectSupport::default()
    } else {
        DirectSupport::whole_requests()
    };
    progress.begin(Some(idx.original_bytes));
    pool::run(
        &tasks,
        opts.jobs,
        Worker::new,
        |w, t| {
            let st = &states[t.file];
            let n = restore_chunk(store, &idx.server, st, t, opts.delta, w, &direct)?;
            bytes.fetch_add(n, Ordering::Relaxed);
            done_bytes.fetch_add(st.f.chunks[t.chunk].size, Ordering::Relaxed);
            Ok(())
        },
        || opts.interrupted.load(Ordering::Relaxed).then_some(ExtractError::Interrupted),
        || progress.update(done_bytes.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed)),
    )?;
    Ok(bytes.into_inner())
}

/// Every file against the CRC-32C recorded at backup time; collects what `finish` must make
/// durable and what the next restore record holds.
fn check_files(idx: &BackupIndex, opts: &ExtractOptions, states: &[FileState<'_>]) -> Result<ExtractStats, ExtractError> {
    let target = &opts.target_dir;
    let mut stats = ExtractStats::default();
    stats.dirs.insert(target.clone());
    for f in idx.files.iter().filter(|f| f.kind != FileKind::File) {
        let d = destination(opts, &f.path)?;
        stats.dirs.insert(if f.kind == FileKind::Symlink {
            d.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            d
        });
    }
    stats.dirs.extend(opts.tablespaces.values().cloned());
    for st in states {
        let crcs = st.crcs.lock().map(|v| v.clone()).unwrap_or_default();
        stats.files_trusted += u64::from(st.trusted.is_some() && !st.wrote.load(Ordering::Relaxed));
        let parts: Option<Vec<(u32, u64)>> = crcs.iter().zip(&st.f.chunks).map(|(c, ch)| c.map(|c| (c, ch.size))).collect();
        let crc = parts.map(|p| crate::catalog::backup_store::combine_crc(&p));
        if st.f.crc32c.is_some() && crc != st.f.crc32c {
            return Err(ExtractError::Corrupt {
                file: st.f.path.clone(),
                reason: format!(
                    "its contents have CRC-32C {}, the backup recorded {:08x}",
                    crc.map(|c| format!("{c:08x}")).unwrap_or_else(|| "(incomplete)".into()),
                    st.f.crc32c.unwrap_or(0)
                ),
            });
        }
        let final_path = if st.f.path == PG_CONTROL {
            target.join(PG_CONTROL)
        } else {
            st.dest.clone()
        };
        let chunks =
            st.f.chunks
                .iter()
                .zip(&crcs)
                .map(|(c, crc)| RecordedChunk {
                    object: c.object.clone(),
                    size: c.size,
                    crc32c: crc.unwrap_or_default(),
                })
                .collect();
        stats.restored.push((final_path, chunks));
        if st.wrote.load(Ordering::Relaxed) {
            stats.files_written += 1;
            if !st.synced.load(Ordering::Relaxed) {
                stats.to_sync.push(st.dest.clone());
            }
            if let Some(parent) = st.dest.parent() {
                stats.dirs.insert(parent.to_path_buf());
            }
        } else {
            stats.files_unchanged += 1;
            // A file found identical may hold bytes that exist only in the page cache (an
            // interrupted earlier restore, a cluster stopped with -m immediate): it is fsynced
            // like a written one before pg_control is published (audit finding 13). Only the
            // files the restore record vouches for (a finished, durable restore, untouched
            // since) are not.
            if st.trusted.is_none() {
                stats.to_sync.push(st.dest.clone());
                if let Some(parent) = st.dest.parent() {
                    stats.dirs.insert(parent.to_path_buf());
                }
            }
        }
    }
    Ok(stats)
}

/// Delta: removes what the backup does not have; returns how many files went.
fn remove_extras(opts: &ExtractOptions, wanted: &BTreeSet<PathBuf>) -> Result<u64, ExtractError> {
    let target = &opts.target_dir;
    let mut existing = Vec::new();
    walk(target, &mut existing).map_err(io_err(target))?;
    for loc in opts.tablespaces.values() {
        walk(loc, &mut existing).map_err(io_err(loc))?;
    }
    let keep = |p: &Path| wanted.contains(p) || p == target.join(MARKER) || p == target.join(PG_CONTROL_TMP);
    let mut removed = 0;
    for p in existing {
        if !keep(&p) {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes the restore durable and startable: owner, fsync of what was written, then `pg_control`
/// into place and the marker removed.
pub fn finish(opts: &ExtractOptions, stats: &ExtractStats, extra: &[PathBuf]) -> Result<(), ExtractError> {
    let target = &opts.target_dir;
    if let Some((uid, gid)) = opts.owner {
        let mut all = vec![target.clone()];
        all.extend(opts.tablespaces.values().cloned());
        for root in all {
            chown_tree(&root, uid, gid).map_err(io_err(&root))?;
        }
    }
    let mut paths: Vec<PathBuf> = stats.to_sync.clone();
    paths.extend(extra.iter().cloned());
    sync_written(&paths, &stats.dirs, opts.jobs)?;
    if opts.interrupted.load(Ordering::Relaxed) {
        return Err(ExtractError::Interrupted);
    }
    let tmp = target.join(PG_CONTROL_TMP);
    if tmp.exists() {
        durable::durable_rename(&tmp, &target.join(PG_CONTROL)).map_err(io_err(&tmp))?;
    }
    durable::durable_remove(&target.join(MARKER)).map_err(io_err(target))?;
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
