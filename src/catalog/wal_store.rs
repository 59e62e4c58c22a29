//! The WAL spool of one server: `<catalog>/<server>/wal/`.
//!
//! WAL is written in place into a preallocated `<segment>.partial`: either a spare left by an
//! archived segment (recycled, as PostgreSQL recycles its own) or a zero-filled file made ahead
//! of time, so that `fdatasync` never has to update the file size. Two positions are kept
//! apart: `write_pos` moves as WAL is received, `flush_pos` only after `fdatasync` of everything
//! up to it. Only `flush_pos` may be reported to the server.
//!
//! Writes bypass the page cache (`fsio::direct`): received bytes are copied into an aligned
//! staging buffer and written with `O_DIRECT` in large aligned pieces; at an fsync the partial
//! last block goes out too (padded with zeros) and stays staged, to be rewritten whole once more
//! WAL arrives. So `write_pos` can be ahead of what the file holds, never `flush_pos`: a sync
//! writes everything staged before its fdatasync. Where the filesystem refuses `O_DIRECT` the same
//! pieces go through the page cache.
//!
//! At a segment boundary: fdatasync, rename to the final name, put the next `.partial` in place
//! (rename of a spare), then one fsync of the directory covers both renames. That is one
//! fdatasync and one directory fsync per segment, against pg_receivewal's five fsyncs and double
//! write of every byte.
//!
//! Files in the directory:
//! - `TTTTTTTTXXXXXXXXYYYYYYYY.partial`: the open segment, or the last one of an ended timeline
//! - `TTTTTTTTXXXXXXXXYYYYYYYY`: complete, not yet archived (or archived uncompressed)
//! - `TTTTTTTTXXXXXXXXYYYYYYYY.zst` / `.sum`: archived (see `segment_file`)
//! - `NNNNNNNN.history`: timeline history files
//! - `.spare.*`: full-size files ready to become the next `.partial`; `*.tmp`: half-built, swept
//! - `TTTTTTTTXXXXXXXXYYYYYYYY.partial.unreadable`: an encrypted `.partial` whose key is no
//!   longer configured, kept aside untouched (the segment is streamed again)
//!
//! With `encryption.local`, every `.partial` this store puts in place is encrypted with
//! `spool_cipher` (its trailer, with a fresh nonce, written and fdatasynced before the file takes
//! its `.partial` name), and received bytes are encrypted in the stage just before each write.
//! A `.partial` opened again keeps the form it was written in.

use super::local_store_sealing;
use super::spool_cipher::{self, SpoolCipher};
use crate::fsio::direct::{self, AlignedBuf, DirectSupport, ALIGN};
use crate::fsio::durable::{self, ctx};
use crate::pg::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const PARTIAL_SUFFIX: &str = ".partial";
pub const ZST_SUFFIX: &str = ".zst";
pub const SUM_SUFFIX: &str = ".sum";
/// A `.partial` encrypted with a key no longer configured, moved aside (see `open_partial`).
pub const UNREADABLE_SUFFIX: &str = ".partial.unreadable";
const SPARE_PREFIX: &str = ".spare.";

/// A full-size file ready to become the next `.partial`.
struct Spare {
    path: PathBuf,
    /// `encryption.local`: the trailer this process wrote and fdatasynced into it, with a fresh
    /// nonce no file has used (`prepare_spool_file`), so the segment boundary only renames it.
    /// `None`: not prepared (found by a scan, or encryption off); `open_partial` prepares it.
    cipher: Option<SpoolCipher>,
}

/// Full-size files ready to become the next `.partial`, shared with the archiver that refills it.
#[derive(Clone)]
pub struct SparePool {
    files: Arc<Mutex<Vec<Spare>>>,
    counter: Arc<AtomicU64>,
    nonce: u64,
}

impl Default for SparePool {
    fn default() -> Self {
        SparePool {
            files: Default::default(),
            counter: Default::default(),
            nonce: rand::random(),
        }
    }
}

impl SparePool {
    pub fn len(&self) -> usize {
        self.files.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self) -> Option<Spare> {
        self.files.lock().ok()?.pop()
    }

    pub fn add(&self, path: PathBuf) {
        if let Ok(mut f) = self.files.lock() {
            f.push(Spare { path, cipher: None });
        }
    }

    /// Takes a spare not prepared for encryption with key `key` (one a scan found after a
    /// restart, or prepared before a rotation), for the archiver to prepare while idle.
    pub fn take_unprepared(&self, key: super::encryption::KeyId) -> Option<PathBuf> {
        let mut f = self.files.lock().ok()?;
        let i = f.iter().position(|s| s.cipher.as_ref().is_none_or(|c| c.key_id() != key))?;
        Some(f.remove(i).path)
    }

    /// A spare whose trailer `prepare_spool_file` wrote with `cipher` (`None`: prepared for
    /// plaintext).
    pub fn add_prepared(&self, path: PathBuf, cipher: Option<SpoolCipher>) {
        if let Ok(mut f) = self.files.lock() {
            f.push(Spare { path, cipher });
        }
    }

    /// A fresh name for a spare in `dir`: unique across processes too. A pid alone is not
    /// (in a container pgark is PID 1 at every restart, audit finding 9), so the name also
    /// carries a random part chosen once per pool.
    pub fn new_name(&self, dir: &Path) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{SPARE_PREFIX}{}.{:016x}.{n}", std::process::id(), self.nonce))
    }

    /// A pool holding the spares a directory scan found.
    pub fn from_scan(scan: &WalDirScan) -> SparePool {
        let pool = SparePool::default();
        for s in &scan.spares {
            pool.add(s.clone()); // prepared again when used: its trailer may be stale
        }
        pool
    }
}

/// Writes a zero-filled file of `size` bytes (directly, without filling the page cache) and
/// fdatasyncs it: a spare ready for use.
pub fn create_zero_filled(path: &Path, size: u64, direct: &DirectSupport) -> io::Result<()> {
    let tmp = durable::tmp_path(path);
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(ctx("create", &tmp))?;
        direct::write_zeros(direct, &tmp, &f, 0, size).map_err(ctx("zero-fill", &tmp))?;
        durable::fdatasync(&f, &tmp)?;
        std::fs::rename(&tmp, path).map_err(ctx("rename into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Gives a file about to become a `.partial` (or a spare) its final form and returns its cipher:
/// with `ring` (`encryption.local`), a segment's size plus a trailer with a fresh nonce; without,
/// exactly a segment's size. Fdatasynced whenever anything changed, so that the form a crash
/// leaves is the one written (a file renamed into place with a stale trailer would reuse an
/// earlier file's keystream).
pub fn prepare_spool_file(path: &Path, seg: WalSegSize, ring: Option<&super::encryption::Keyring>) -> io::Result<Option<SpoolCipher>> {
    let cipher = ring.map(SpoolCipher::fresh);
    let seg = seg.bytes();
    let want = seg + if cipher.is_some() { spool_cipher::TRAILER_LEN } else { 0 };
    let f = OpenOptions::new().write(true).open(path).map_err(ctx("open", path))?;
    let resized = f.metadata().map_err(ctx("stat", path))?.len() != want;
    if resized {
        f.set_len(want).map_err(ctx("set the length of", path))?;
    }
    if let Some(c) = &cipher {
        f.write_all_at(&c.trailer(), seg).map_err(ctx("write the spool trailer of", path))?;
    }
    if resized || cipher.is_some() {
        durable::fdatasync(&f, path)?;
    }
    Ok(cipher)
}

/// Whether a spool file of `len` bytes is a whole segment: plaintext, or with the trailer of
/// `spool_cipher`.
pub fn full_size(len: u64, seg: WalSegSize) -> bool {
    len == seg.bytes() || len == seg.bytes() + spool_cipher::TRAILER_LEN
}

/// What a directory scan found.
#[derive(Debug, Default)]
pub struct WalDirScan {
    /// Segments complete under their final name (plain, `.zst`, or both).
    pub completed: BTreeSet<WalFileName>,
    pub partials: BTreeSet<WalFileName>,
    pub histories: BTreeSet<TimelineId>,
    /// Plain complete segments (archived or not: the archiver decides).
    pub plain: BTreeSet<WalFileName>,
    pub compressed: BTreeSet<WalFileName>,
    pub sums: BTreeSet<WalFileName>,
    pub spares: Vec<PathBuf>,
}

impl WalDirScan {
    /// Where streaming resumes: the start of the newest timeline's open segment, else the
    /// segment after its last complete one.
    pub fn resume_point(&self, seg: WalSegSize) -> Option<(TimelineId, Lsn)> {
        let newest = self.completed.iter().chain(self.partials.iter()).map(|n| n.tli).max()?;
        let last_complete = self.completed.iter().filter(|n| n.tli == newest).map(|n| n.segno).max();
        let partial = self.partials.iter().filter(|n| n.tli == newest).map(|n| n.segno).max();
        let segno = match (last_complete, partial) {
            (Some(c), Some(p)) => p.max(c.next()),
            (Some(c), None) => c.next(),
            (None, Some(p)) => p,
            (None, None) => return None,
        };
        Some((newest, seg.segment_start(segno)))
    }

    /// Complete segments the archiver still has to process: plain ones without `.zst` (with
    /// compression) or without `.sum` (without).
    pub fn unarchived(&self, compression: super::Compression) -> Vec<WalFileName> {
        self.plain
            .iter()
            .filter(|n| match compression {
                super::Compression::Zstd(_) => true,
                super::Compression::None => !self.sums.contains(n),
            })
            .copied()
            .collect()
    }

    /// The newest segment stored under its final name.
    pub fn last_completed(&self) -> Option<WalFileName> {
        self.completed.iter().max_by_key(|n| (n.tli, n.segno)).copied()
    }
}

/// Removes half-built `*.tmp` files left by an interrupted run: those of processes that are gone
/// (and this process's own, left by an earlier run with the same pid), never a live writer's (a
/// `pgark backup` writing beside the daemon). Call before the archiver of this directory starts.
pub fn sweep_temporary(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(ctx("list", dir))?;
        if entry.file_name().to_str().is_some_and(|n| durable::is_stale_tmp(n, true)) {
            let path = entry.path();
            tracing::info!(file = %path.display(), "removing a half-written file left by an interrupted run");
            std::fs::remove_file(&path).map_err(ctx("remove", &path))?;
        }
    }
    Ok(())
}

/// Lists the WAL directory (ignoring `*.tmp` files, which are never data).
pub fn scan(dir: &Path, seg: WalSegSize) -> io::Result<WalDirScan> {
    let mut out = WalDirScan::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(ctx("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(ctx("list", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = entry.path();
        if name.ends_with(durable::TMP_SUFFIX) {
            continue;
        }
        if name.starts_with(SPARE_PREFIX) {
            match std::fs::metadata(&path) {
                Ok(m) if full_size(m.len(), seg) => out.spares.push(path),
                _ => std::fs::remove_file(&path).map_err(ctx("remove", &path))?,
            }
            continue;
        }
        if let Some(tli) = TimelineId::from_history_file_name(&name) {
            out.histories.insert(tli);
            continue;
        }
        let (base, kind) = match name.split_once('.') {
            None => (name.as_str(), ""),
            Some((b, k)) => (b, k),
        };
        let Ok(wal) = WalFileName::parse(base, seg) else { continue };
        match kind {
            "" => {
                out.plain.insert(wal);
                out.completed.insert(wal);
            }
            "zst" => {
                out.compressed.insert(wal);
                out.completed.insert(wal);
            }
            "sum" => {
                out.sums.insert(wal);
            }
            "partial" => {
                out.partials.insert(wal);
            }
            _ => {}
        }
    }
    Ok(out)
}

struct OpenSegment {
    name: WalFileName,
    path: PathBuf,
    /// Ordinary descriptor: fdatasync, and writes where direct I/O is refused.
    file: File,
    /// `O_DIRECT` descriptor, when the filesystem allows it.
    direct: Option<File>,
    /// Created full-size but unwritten (during a catch-up): an fdatasync must allocate blocks.
    sparse: bool,
    /// An existing `.partial` opened again (a reconnect, a restart): it may hold WAL an earlier
    /// session acknowledged, so it is never removed as "empty" (audit finding 1).
    reopened: bool,
    /// `encryption.local`: the keystream this file is written with.
    cipher: Option<SpoolCipher>,
}

/// How much received WAL is staged before it is written (aligned, so whole pieces go out)
/// while WAL flows; an idle receiver keeps `IDLE_STAGE_BYTES` (`release_idle`).
const STAGE_BYTES: usize = 1 << 20;
/// The stage of an idle receiver: enough for a few small commits, 1/16 of the full stage.
const IDLE_STAGE_BYTES: usize = 64 << 10;

/// The writer side of one server's WAL spool.
pub struct WalStore {
    dir: PathBuf,
    seg: WalSegSize,
    spares: SparePool,
    open: Option<OpenSegment>,
    write_pos: Lsn,
    flush_pos: Lsn,
    /// End of what has been handed to the kernel (`pwrite`): the *write* position reported to
    /// the server. Bytes still in the stage are not counted (audit finding 12: a primary using
    /// `synchronous_commit = remote_write` releases commits on it).
    written_pos: Lsn,
    completed_tx: mpsc::Sender<WalFileName>,
    /// Whether a segment without a spare is zero-filled first (best for frequent small fdatasyncs)
    /// or created full-size but unwritten (best for a catch-up: each byte written once).
    zero_fill: bool,
    /// Received bytes of the open segment not yet written: file offsets
    /// `[stage_off, stage_off + stage_len)`, `stage_off` aligned (see the module comment).
    stage: AlignedBuf,
    stage_off: u64,
    stage_len: usize,
    direct: DirectSupport,
}

impl WalStore {
    /// `completed_tx` receives every segment that reaches its final name (for the archiver).
    pub fn new(dir: PathBuf, seg: WalSegSize, spares: SparePool, completed_tx: mpsc::Sender<WalFileName>) -> Self {
        WalStore {
            dir,
            seg,
            spares,
            open: None,
            write_pos: Lsn::INVALID,
            flush_pos: Lsn::INVALID,
            written_pos: Lsn::INVALID,
            completed_tx,
            zero_fill: true,
            stage: AlignedBuf::new(STAGE_BYTES),
            stage_off: 0,
            stage_len: 0,
            direct: DirectSupport::default(),
        }
    }

    /// The receiver says whether it is acknowledging at the tip (zero-fill new segments so that
    /// the many small fdatasyncs never touch metadata) or catching up (write each byte once; the
    /// one fdatasync at the segment end pays for the allocation).
    pub fn set_zero_fill(&mut self, zero_fill: bool) {
        self.zero_fill = zero_fill;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn seg(&self) -> WalSegSize {
        self.seg
    }

    pub fn write_pos(&self) -> Lsn {
        self.write_pos
    }

    pub fn flush_pos(&self) -> Lsn {
        self.flush_pos
    }

    /// What the kernel has (written with `pwrite`, maybe not yet synced): never ahead of
    /// `write_pos`, never behind `flush_pos`. This is the write position to report.
    pub fn written_pos(&self) -> Lsn {
        self.written_pos.max(self.flush_pos)
    }

    /// Hands a complete segment to the archiver (again: it skips what it has queued already).
    pub fn queue_for_archive(&self, name: WalFileName) {
        let _ = self.completed_tx.send(name);
    }

    /// Disconnects the archiver: it stops once it has nothing more queued.
    pub fn detach_archiver(&mut self) {
        self.completed_tx = mpsc::channel().0;
    }

    /// Connects a (restarted) archiver.
    pub fn attach_archiver(&mut self, tx: mpsc::Sender<WalFileName>) {
        self.completed_tx = tx;
    }

    pub fn has_unflushed(&self) -> bool {
        self.write_pos > self.flush_pos
    }

    /// The segment being written, if any.
    pub fn open_segment(&self) -> Option<WalFileName> {
        self.open.as_ref().map(|o| o.name)
    }

    fn path_of(&self, name: WalFileName, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}", name.format(self.seg)))
    }

    /// Starts (or restarts) writing on `tli` at `start`, which must be a segment boundary.
    /// Any data of an existing `.partial` for that segment is overwritten as it arrives again.
    pub fn begin(&mut self, tli: TimelineId, start: Lsn) -> io::Result<()> {
        assert_eq!(self.seg.offset(start), 0, "streaming must start at a segment boundary");
        self.open = None;
        durable::create_dir_durable(&self.dir)?;
        self.open_partial(WalFileName::new(tli, self.seg.segno(start)))?;
        durable::fsync_dir(&self.dir)?;
        self.write_pos = start;
        self.flush_pos = start;
        self.written_pos = start;
        self.stage_off = 0;
        self.stage_len = 0;
        Ok(())
    }

    /// Puts `<name>.partial` in place (existing, recycled spare, or new zero-filled file) and
    /// opens it. The caller fsyncs the directory.
    fn open_partial(&mut self, name: WalFileName) -> io::Result<()> {
        let path = self.path_of(name, PARTIAL_SUFFIX);
        let mut existing = std::fs::metadata(&path).map(|m| m.len()).ok();
        let ring = local_store_sealing::reading_keyring_for_spool(&self.dir);
        if let Some(len) = existing.filter(|&len| spool_cipher::sealed_len(len) && full_size(len, self.seg)) {
            let f = File::open(&path).map_err(ctx("open", &path))?;
            if let Err(e) = spool_cipher::of_file(&f, len, ring.as_deref(), &path) {
                if e.kind() != io::ErrorKind::InvalidData {
                    return Err(e);
                }
                if local_store_sealing::key_source_configured_for_spool(&self.dir) {
                    // A key is configured but does not open it (unreadable here, rotated out
                    // too early, `key_command` with `local` off): an error to fix, never a file
                    // moved out of reach.
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e}; the receiver cannot go on writing it: make its key readable (encryption.key_file, old_key_files), or set encryption.local: true while using key_command"),
                    ));
                }
                // No key configured at all (encryption removed from the config): streaming must
                // not stop for it (a synchronous primary would stop committing). It is kept
                // aside, untouched, and the segment streamed again from its start into a new file.
                let mut aside = self.dir.join(format!("{}{UNREADABLE_SUFFIX}", name.format(self.seg)));
                let mut n = 0;
                while aside.exists() {
                    n += 1;
                    aside = self.dir.join(format!("{}{UNREADABLE_SUFFIX}.{n}", name.format(self.seg)));
                }
                std::fs::rename(&path, &aside).map_err(ctx("move aside", &path))?;
                durable::fsync_dir(&self.dir)?;
                tracing::error!(file = %aside.display(), error = %e,
                    "an encrypted .partial cannot be read: no key is configured; moved aside and streaming that segment again from its start. To read it, configure its key and, with pgark stopped, rename it back over the segment's .partial if the server no longer has that WAL");
                existing = None;
            }
        }
        let size_ok = existing.is_some_and(|len| full_size(len, self.seg));
        let mut sparse = false;
        let mut fresh_cipher = None;
        if !size_ok {
            let _ = std::fs::remove_file(&path);
            let writer_ring = local_store_sealing::keyring_for_spool(&self.dir);
            let mut spare = self.spares.take();
            if let (Some(s), Some(r)) = (&spare, &writer_ring) {
                // A plaintext spare (recycled before encryption was turned on) would keep old
                // WAL in plaintext past what is written into it: not used.
                let len = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
                if len == self.seg.bytes() {
                    durable::durable_remove(&s.path)?;
                    spare = None;
                } else if s.cipher.as_ref().is_some_and(|c| c.key_id() == r.current().id()) {
                    // Prepared by the archiver, off this path: only the rename is left.
                    let s = spare.take().expect("checked above");
                    if let Err(e) = std::fs::rename(&s.path, &path) {
                        self.spares.add_prepared(s.path, s.cipher); // still a spare
                        return Err(ctx("recycle spare into", &path)(e));
                    }
                    fresh_cipher = s.cipher;
                }
            }
            let fresh = match spare.map(|s| s.path) {
                _ if fresh_cipher.is_some() => None,
                Some(spare) => Some(spare),
                None if self.zero_fill => {
                    tracing::debug!(file = %path.display(), "no spare segment ready; zero-filling a new one");
                    let tmp = durable::tmp_path(&path);
                    create_zero_filled(&tmp, self.seg.bytes(), &self.direct)?;
                    Some(tmp)
                }
                None => {
                    let tmp = durable::tmp_path(&path);
                    let f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&tmp)
                        .map_err(ctx("create", &tmp))?;
                    // Blocks allocated (unwritten) in one step, not one allocation per write.
                    if let Err(e) = direct::preallocate(&f, self.seg.bytes()) {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(ctx("size", &tmp)(e));
                    }
                    sparse = true;
                    Some(tmp)
                }
            };
            if let Some(fresh) = fresh {
                // Encrypted or not, the file takes its final form before it takes the name: a
                // crash never leaves a `.partial` that this session would write in the wrong
                // form, nor one that reuses an earlier file's keystream.
                let prepared = prepare_spool_file(&fresh, self.seg, writer_ring.as_deref())
                    .and_then(|c| std::fs::rename(&fresh, &path).map(|()| c).map_err(ctx("put in place", &path)));
                match prepared {
                    Ok(c) => fresh_cipher = c,
                    Err(e) => {
                        let _ = std::fs::remove_file(&fresh);
                        return Err(io::Error::new(e.kind(), format!("preparing {}: {e}", path.display())));
                    }
                }
            }
        }
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(ctx("open", &path))?;
        let cipher = match existing.filter(|_| size_ok) {
            // Opened again: it keeps the form (and keystream) it was written with.
            Some(len) => spool_cipher::of_file(&file, len, ring.as_deref(), &path)?,
            None => fresh_cipher,
        };
        // An existing `.partial` (a reconnect, a restart, a timeline streamed again up to a
        // switchpoint) may hold WAL past where this session will write that an earlier one
        // acknowledged: it is written exactly, through the page cache, never padded. Fresh files
        // (zero-filled, recycled, new) hold nothing worth keeping past the data.
        let direct = if size_ok {
            None
        } else {
            direct::open_for_direct_writes(&self.direct, &path)
        };
        self.open = Some(OpenSegment {
            name,
            path,
            file,
            direct,
            sparse,
            reopened: size_ok,
            cipher,
        });
        Ok(())
    }

    /// Takes WAL that starts exactly at `write_pos` (staged, written in aligned pieces). Returns
    /// the segments this completed. Blocking at segment boundaries (fdatasync, renames, directory
    /// fsync) and when a staged piece is written.
    pub fn write(&mut self, start: Lsn, mut data: &[u8]) -> io::Result<Vec<WalFileName>> {
        debug_assert_eq!(start, self.write_pos, "caller checks contiguity");
        if self.open.is_none() {
            return Err(io::Error::other("no open segment: begin() was not called"));
        }
        if self.stage.capacity() < STAGE_BYTES && data.len() > self.stage.capacity() - self.stage_len {
            self.resize_stage(STAGE_BYTES); // WAL flows again
        }
        let mut completed = Vec::new();
        while !data.is_empty() {
            let off = self.seg.offset(self.write_pos);
            let n = data
                .len()
                .min((self.seg.bytes() - off) as usize)
                .min(self.stage.capacity() - self.stage_len);
            self.stage.as_mut_slice()[self.stage_len..self.stage_len + n].copy_from_slice(&data[..n]);
            self.stage_len += n;
            self.write_pos = Lsn(self.write_pos.0 + n as u64);
            data = &data[n..];
            if self.seg.offset(self.write_pos) == 0 {
                completed.push(self.complete_segment()?);
            } else if self.stage_len == self.stage.capacity() {
                self.write_stage(false)?;
            }
        }
        Ok(completed)
    }

    /// Gives back most of the stage while the server is idle: with a hundred servers, a full
    /// stage each is 100 MB held for nothing. It grows again with the next larger write.
    pub fn release_idle(&mut self) {
        if self.stage.capacity() > IDLE_STAGE_BYTES && self.stage_len <= IDLE_STAGE_BYTES {
            self.resize_stage(IDLE_STAGE_BYTES);
        }
    }

    /// A stage of `bytes`, holding what the current one holds (at most one partial block
    /// after a write; checked by the callers).
    fn resize_stage(&mut self, bytes: usize) {
        let mut stage = AlignedBuf::new(bytes);
        stage.as_mut_slice()[..self.stage_len].copy_from_slice(self.stage.slice(self.stage_len));
        self.stage = stage;
    }

    /// Writes the staged bytes' whole blocks (and, with `partial`, the last partial block too,
    /// padded: zeros, random bytes in an encrypted file) at their offset, then keeps only the
    /// bytes of an incomplete last block staged.
    ///
    /// Only direct writes and fresh encrypted files are padded (they go only to fresh files, see
    /// `open_partial`); otherwise exactly the received bytes are written, so bytes already in a
    /// reopened file past them are never touched.
    fn write_stage(&mut self, partial: bool) -> io::Result<()> {
        let whole = self.stage_len / ALIGN * ALIGN;
        let open = self.open.as_ref().ok_or_else(|| io::Error::other("no open segment to write"))?;
        let direct = open.direct.as_ref().filter(|_| self.direct.usable());
        // A fresh encrypted file is padded through the page cache too: the block's old bytes
        // must not stay next to the data (see `spool_cipher::open_bytes`).
        let pad_always = open.cipher.is_some() && !open.reopened;
        let upto = match (partial, direct.is_some() || pad_always) {
            (false, _) => whole,
            (true, true) => self.stage_len.div_ceil(ALIGN) * ALIGN,
            (true, false) => self.stage_len,
        };
        if upto > 0 {
            let padding = &mut self.stage.as_mut_slice()[self.stage_len..upto.max(self.stage_len)];
            match open.cipher {
                // Random, not encrypted zeros (which would be this file's keystream for WAL
                // still to come) nor plain zeros (which a reader would decrypt into it).
                Some(_) => rand::RngCore::fill_bytes(&mut rand::thread_rng(), padding),
                None => padding.fill(0),
            }
            // Only the received bytes are encrypted. What stays staged is decrypted again
            // after the write.
            let real = self.stage_len.min(upto);
            if let Some(c) = &open.cipher {
                c.apply(self.stage_off, &mut self.stage.as_mut_slice()[..real]);
            }
            // Exactly the data if the direct write is refused: the padding was only for it.
            let written = direct::write_preferring_direct(
                &self.direct,
                &open.path,
                direct,
                &open.file,
                self.stage.slice(upto),
                if pad_always { upto } else { self.stage_len.min(upto) },
                self.stage_off,
            );
            if let Some(c) = &open.cipher {
                let keep = if written.is_ok() { whole } else { 0 };
                c.apply(self.stage_off + keep as u64, &mut self.stage.as_mut_slice()[keep..real]);
            }
            written.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "write of {upto} bytes at offset {} (up to {}) to {}: {e}",
                        self.stage_off,
                        self.write_pos,
                        open.path.display()
                    ),
                )
            })?;
            let seg_start = self.seg.segment_start(open.name.segno);
            self.written_pos = self.written_pos.max(Lsn(seg_start.0 + self.stage_off + real as u64));
        }
        if whole > 0 {
            let rest = self.stage_len - whole;
            self.stage.as_mut_slice().copy_within(whole..self.stage_len, 0);
            self.stage_off += whole as u64;
            self.stage_len = rest;
        }
        Ok(())
    }

    /// fdatasync, rename to the final name, put the next `.partial` in place, fsync directory.
    fn complete_segment(&mut self) -> io::Result<WalFileName> {
        self.write_stage(true)?;
        let open = self.open.take().ok_or_else(|| io::Error::other("no open segment to complete"))?;
        durable::fdatasync(&open.file, &open.path)?;
        self.stage_off = 0;
        self.stage_len = 0;
        drop(open.file);
        let final_path = self.path_of(open.name, "");
        std::fs::rename(&open.path, &final_path).map_err(ctx("rename complete segment to", &final_path))?;
        self.written_pos = self.write_pos;
        // The next .partial may fail (no space for it): the directory fsync for the rename
        // above and the archiver's notice happen regardless (audit finding 8).
        let next = self.open_partial(WalFileName::new(open.name.tli, open.name.segno.next()));
        durable::fsync_dir(&self.dir)?;
        self.flush_pos = self.write_pos;
        if self.completed_tx.send(open.name).is_err() {
            next?;
            return Err(io::Error::other(format!(
                "{} is complete but the archiver is not running; the session restarts it",
                final_path.display()
            )));
        }
        next?;
        Ok(open.name)
    }

    /// Before latency-critical fsyncs: if the open segment was created sparse during a catch-up,
    /// zero-fill its unwritten rest once, so that the many small fdatasyncs that follow at the tip
    /// never have to allocate blocks (the point of preallocation in the first place).
    pub fn densify(&mut self) -> io::Result<()> {
        // After the last staged block, which the next sync writes.
        let from = self.stage_off + (self.stage_len.div_ceil(ALIGN) * ALIGN) as u64;
        let size = self.seg.bytes();
        let Some(open) = self.open.as_mut().filter(|o| o.sparse) else {
            return Ok(());
        };
        direct::write_zeros(&self.direct, &open.path, &open.file, from, size).map_err(ctx("zero-fill", &open.path))?;
        open.sparse = false;
        Ok(())
    }

    /// Makes everything received durable: the staged rest written, then one fdatasync for all of
    /// it. Returns how long both took, or `None` when there was nothing to flush.
    pub fn sync(&mut self) -> io::Result<Option<Duration>> {
        if !self.has_unflushed() {
            return Ok(None);
        }
        let target = self.write_pos;
        let t = Instant::now();
        // What is still staged goes to the file first: flush_pos covers only what fdatasync did.
        self.write_stage(true)?;
        let open = self
            .open
            .as_ref()
            .ok_or_else(|| io::Error::other("unflushed data but no open segment"))?;
        durable::fdatasync(&open.file, &open.path)?;
        self.flush_pos = target;
        self.written_pos = target;
        Ok(Some(t.elapsed()))
    }

    /// The current timeline ended: make its last segment durable and keep it as `.partial`.
    /// A segment this session created and wrote nothing into is dropped; one that existed
    /// before (reopened) is always kept: it may hold WAL an earlier session acknowledged, which
    /// the server no longer has on this timeline (a failover whose switchpoint is exactly the
    /// start of this segment, audit finding 1).
    pub fn end_timeline(&mut self) -> io::Result<()> {
        self.sync()?;
        if let Some(open) = self.open.take() {
            let empty = self.write_pos == self.seg.segment_start(open.name.segno);
            drop(open.file);
            if empty && !open.reopened {
                durable::durable_remove(&open.path)?;
            }
        }
        Ok(())
    }

    pub fn has_history(&self, tli: TimelineId) -> bool {
        self.dir.join(tli.history_file_name()).exists()
    }

    /// The segment after the open one, for callers that need the segment number of a position.
    pub fn segno_of(&self, lsn: Lsn) -> SegNo {
        self.seg.segno(lsn)
    }
}

/// What the receiver's hot loop needs of a WAL store: contiguous writes, and a flush position
/// that only `sync` (fdatasync) advances. `WalStore` is the real one; the loop's unit tests use
/// an in-memory sink.
pub trait WalSink {
    fn seg(&self) -> WalSegSize;
    /// End of what was received.
    fn write_pos(&self) -> Lsn;
    /// End of what is durable.
    fn flush_pos(&self) -> Lsn;
    /// End of what the kernel has (reported as the write position).
    fn written_pos(&self) -> Lsn;
    fn has_unflushed(&self) -> bool;
    /// Whether new segments are zero-filled first (at the tip) or not (catching up).
    fn set_zero_fill(&mut self, zero_fill: bool);
    /// Writes `data` at `start` (= `write_pos`); returns the segments it completed.
    fn write(&mut self, start: Lsn, data: &[u8]) -> io::Result<Vec<WalFileName>>;
    /// Prepares for a sync at a pause (see `WalStore::densify`).
    fn densify(&mut self) -> io::Result<()>;
    /// Makes everything written durable; how long it took, if there was anything.
    fn sync(&mut self) -> io::Result<Option<Duration>>;
    /// No WAL has come for a while: give back buffers sized for a flow of it.
    fn release_idle(&mut self) {}
}

impl WalSink for WalStore {
    fn seg(&self) -> WalSegSize {
        WalStore::seg(self)
    }
    fn release_idle(&mut self) {
        WalStore::release_idle(self)
    }
    fn write_pos(&self) -> Lsn {
        WalStore::write_pos(self)
    }
    fn flush_pos(&self) -> Lsn {
        WalStore::flush_pos(self)
    }
    fn written_pos(&self) -> Lsn {
        WalStore::written_pos(self)
    }
    fn has_unflushed(&self) -> bool {
        WalStore::has_unflushed(self)
    }
    fn set_zero_fill(&mut self, zero_fill: bool) {
        WalStore::set_zero_fill(self, zero_fill)
    }
    fn write(&mut self, start: Lsn, data: &[u8]) -> io::Result<Vec<WalFileName>> {
        WalStore::write(self, start, data)
    }
    fn densify(&mut self) -> io::Result<()> {
        WalStore::densify(self)
    }
    fn sync(&mut self) -> io::Result<Option<Duration>> {
        WalStore::sync(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    fn store(dir: &Path) -> (WalStore, mpsc::Receiver<WalFileName>) {
        let (tx, rx) = mpsc::channel();
        (
            WalStore::new(dir.to_path_buf(), WalSegSize::new(SEG).unwrap(), SparePool::default(), tx),
            rx,
        )
    }

    #[test]
    fn writes_across_segments_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        let seg = WalSegSize::new(SEG).unwrap();
        let (mut s, rx) = store(d.path());
        s.begin(TimelineId(1), Lsn(SEG)).unwrap();
        let data: Vec<u8> = (0..(SEG as usize * 2 + 100)).map(|i| (i % 253) as u8).collect();
        let done = s.write(Lsn(SEG), &data).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!(s.flush_pos(), Lsn(3 * SEG));
        assert!(s.has_unflushed());
        s.sync().unwrap();
        assert_eq!(s.flush_pos(), Lsn(3 * SEG + 100));
        let first = std::fs::read(d.path().join("000000010000000000000001")).unwrap();
        assert_eq!(&first[..], &data[..SEG as usize]);
        let scan = scan(d.path(), seg).unwrap();
        assert_eq!(scan.resume_point(seg), Some((TimelineId(1), Lsn(3 * SEG))));
        assert_eq!(scan.partials.len(), 1);
    }

    #[test]
    fn staged_writes_reach_the_file_at_every_sync_and_segment_end_and_the_stage_shrinks_when_idle() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _rx) = store(d.path());
        s.begin(TimelineId(1), Lsn(0)).unwrap();
        let data: Vec<u8> = (0..SEG as usize + 5000).map(|i| (i * 7 % 251) as u8).collect();
        let partial = d.path().join("000000010000000000000000.partial");
        // Uneven pieces, a sync now and then: the file holds everything up to each sync.
        let mut pos = 0usize;
        for (i, &len) in [1usize, 4095, 4096, 5000, 3, 70_000, 200_000].iter().cycle().enumerate() {
            if pos + len >= SEG as usize {
                break;
            }
            s.write(Lsn(pos as u64), &data[pos..pos + len]).unwrap();
            pos += len;
            if i % 3 == 1 {
                // An idle receiver's smaller stage, synced or not, then a flow again.
                s.release_idle();
            }
            if i % 2 == 0 {
                s.sync().unwrap();
                assert_eq!(s.flush_pos(), Lsn(pos as u64));
                let on_disk = std::fs::read(&partial).unwrap();
                assert_eq!(&on_disk[..pos], &data[..pos], "after a sync at {pos}");
            }
        }
        // The rest of the segment and into the next: the completed segment is exact.
        s.write(Lsn(pos as u64), &data[pos..]).unwrap();
        let done = std::fs::read(d.path().join("000000010000000000000000")).unwrap();
        assert!(done == data[..SEG as usize], "completed segment differs");
        s.sync().unwrap();
        let next = std::fs::read(d.path().join("000000010000000000000001.partial")).unwrap();
        assert_eq!(&next[..5000], &data[SEG as usize..]);
    }

    /// Streaming a segment again from its start (a reconnect, or a timeline streamed again up to a
    /// switchpoint) must never destroy WAL an earlier session made durable past where it stops.
    #[test]
    fn streaming_a_partial_again_keeps_what_lies_beyond() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _rx) = store(d.path());
        s.begin(TimelineId(1), Lsn(0)).unwrap();
        let data: Vec<u8> = (0..300_000usize).map(|i| (i % 247) as u8 + 1).collect();
        s.write(Lsn(0), &data).unwrap();
        s.sync().unwrap();
        // A new session re-sends only the first 10_001 bytes (ending mid-block), then stops.
        s.begin(TimelineId(1), Lsn(0)).unwrap();
        s.write(Lsn(0), &data[..10_001]).unwrap();
        s.sync().unwrap();
        s.end_timeline().unwrap();
        let on_disk = std::fs::read(d.path().join("000000010000000000000000.partial")).unwrap();
        assert!(on_disk[..300_000] == data[..], "acknowledged WAL past the new end was overwritten");
    }

    #[test]
    fn sparse_segment_is_densified_once_and_keeps_its_data() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _rx) = store(d.path());
        s.set_zero_fill(false);
        s.begin(TimelineId(1), Lsn(0)).unwrap();
        s.write(Lsn(0), &[7u8; 100]).unwrap();
        s.densify().unwrap();
        s.sync().unwrap();
        let path = d.path().join("000000010000000000000000.partial");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), SEG);
        assert!(m.blocks() * 512 >= SEG, "still sparse: {} blocks", m.blocks());
        let content = std::fs::read(&path).unwrap();
        assert_eq!(&content[..100], &[7u8; 100]);
        assert!(content[100..].iter().all(|&b| b == 0));
    }

    /// Audit finding 12: the write position reported never counts bytes still staged in
    /// pgark's buffer (a primary with synchronous_commit = remote_write trusts it).
    #[test]
    fn reported_write_position_is_what_the_file_holds() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _rx) = store(d.path());
        s.begin(TimelineId(1), Lsn(0)).unwrap();
        s.write(Lsn(0), &[9u8; 3000]).unwrap();
        assert_eq!(s.write_pos(), Lsn(3000), "received");
        assert_eq!(s.written_pos(), Lsn(0), "staged bytes are not written yet");
        let on_disk = std::fs::read(d.path().join("000000010000000000000000.partial")).unwrap();
        assert!(on_disk[..3000].iter().all(|&b| b == 0), "the test expects nothing written yet");
        s.sync().unwrap();
        assert_eq!(s.written_pos(), s.write_pos());
        let on_disk = std::fs::read(d.path().join("000000010000000000000000.partial")).unwrap();
        assert!(on_disk[..3000].iter().all(|&b| b == 9));
    }

    /// Audit finding 1: a `.partial` opened again (it holds WAL an earlier session acknowledged)
    /// is kept when its timeline ends before anything is written into it; only a fresh, empty
    /// one is dropped.
    #[test]
    fn a_reopened_partial_survives_an_immediate_timeline_end() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _rx) = store(d.path());
        s.begin(TimelineId(1), Lsn(SEG)).unwrap();
        s.write(Lsn(SEG), &[7u8; 5000]).unwrap();
        s.sync().unwrap();
        // Reconnect: the server says timeline 1 ends exactly at this segment's start.
        s.begin(TimelineId(1), Lsn(SEG)).unwrap();
        s.end_timeline().unwrap();
        let p = d.path().join("000000010000000000000001.partial");
        let kept = std::fs::read(&p).expect("the acknowledged WAL was deleted");
        assert_eq!(&kept[..5000], &[7u8; 5000]);
    }

    /// Audit finding 8: a segment renamed to its final name is handed to the archiver even
    /// when putting the next `.partial` in place fails.
    #[test]
    fn a_failed_boundary_still_hands_the_segment_to_the_archiver() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, rx) = store(d.path());
        s.begin(TimelineId(1), Lsn(0)).unwrap();
        // The next .partial cannot be created: a directory stands in its way.
        std::fs::create_dir(d.path().join("000000010000000000000001.partial")).unwrap();
        std::fs::write(d.path().join("000000010000000000000001.partial/x"), b"x").unwrap();
        let err = s.write(Lsn(0), &vec![1u8; SEG as usize]).unwrap_err();
        assert!(err.to_string().contains("000000010000000000000001"), "{err}");
        assert!(d.path().join("000000010000000000000000").exists());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![WalFileName::new(TimelineId(1), SegNo(0))]);
    }

    /// Audit finding 9: spare names never repeat across restarts that reuse the pid.
    #[test]
    fn spare_names_are_unique_across_pools() {
        let d = tempfile::tempdir().unwrap();
        let a = SparePool::default().new_name(d.path());
        std::fs::write(&a, b"").unwrap();
        let b = SparePool::default().new_name(d.path());
        assert_ne!(a, b, "a second pool (a restart with the same pid) reused a spare's name");
    }

    #[test]
    fn timeline_end_keeps_partial_and_drops_empty() {
        let d = tempfile::tempdir().unwrap();
        let seg = WalSegSize::new(SEG).unwrap();
        let (mut s, _rx) = store(d.path());
        s.begin(TimelineId(1), Lsn(0)).unwrap();
        s.write(Lsn(0), &[1u8; 10]).unwrap();
        s.end_timeline().unwrap();
        assert!(d.path().join("000000010000000000000000.partial").exists());
        s.begin(TimelineId(2), Lsn(0)).unwrap();
        s.write(Lsn(0), &vec![2u8; SEG as usize]).unwrap();
        s.end_timeline().unwrap();
        assert!(!d.path().join("000000020000000000000001.partial").exists(), "empty partial kept");
        let scan = scan(d.path(), seg).unwrap();
        assert_eq!(scan.resume_point(seg), Some((TimelineId(2), Lsn(SEG))));
    }

    #[test]
    fn scan_ignores_and_sweep_removes_temporary_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("000000010000000000000001.zst.tmp"), b"half").unwrap();
        let s = scan(d.path(), WalSegSize::new(SEG).unwrap()).unwrap();
        assert!(s.completed.is_empty());
        sweep_temporary(d.path()).unwrap();
        assert!(!d.path().join("000000010000000000000001.zst.tmp").exists());
    }
}
