//! Direct I/O (`O_DIRECT`) from block-aligned buffers, bypassing the page cache, with a fallback
//! to ordinary writes where the filesystem refuses it. Used for the bulk data pgark writes and
//! does not read back soon: WAL segments as they are received (the archiver reads each once,
//! also directly) and restored files (and, for `--delta`, reading old copies back).
//!
//! Why: through the page cache every byte is copied into freshly allocated pages and written
//! back later. Measured on the CI machine (a VM that returns freed memory to its host, so a
//! page first touched costs a host fault) that copy was 90% of the receiver's CPU while catching
//! up and a quarter of a restore's; written directly, 1 GB costs 0.17 CPU seconds against 0.4-3
//! through the cache, and the cache is left to the database. Writers of one file through the
//! page cache also serialize on its inode lock; direct writes into preallocated blocks take it
//! shared.
//!
//! The daemon's direct requests are at most `PIECE` bytes (a restore's are whole). A request is
//! served whole once the device has it, and a synchronous standby's fdatasync (one small write
//! and a cache flush) queues behind whatever is in flight. Measured on the CI machine (virtio
//! disk, no I/O scheduler; `bench/sync_interference_bench.py`), an 8 KiB write + fdatasync
//! beside reads of 300 MB/s: p99 22.7 ms when the reads are 16 MiB requests, 1.1 ms in 256 KiB
//! pieces; beside direct writes of 150 MB/s, 2.3 ms in 1 MiB requests and 1.1 ms in 256 KiB.
//! Sequential throughput at one request in flight was the same from 256 KiB to 16 MiB (within
//! the run-to-run noise of 700-900 MB/s reading, 500-570 MB/s writing).
//!
//! `DirectSupport` remembers that direct I/O failed here (EINVAL: a filesystem without it, or
//! an alignment the device refuses) and says so once in the log; the same bytes then go through
//! the page cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of buffers, offsets and lengths for direct writes: the page size, which is at least
/// the logical block size of any device PostgreSQL data lives on.
pub const ALIGN: usize = 4096;

/// The largest direct request (see the module header): what a synchronous fdatasync may have to
/// wait behind, per request in flight.
pub const PIECE: usize = 256 << 10;

/// A reusable byte buffer whose start is `ALIGN`-aligned (without `unsafe`: an over-allocated
/// vector and the offset of its first aligned byte).
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    cap: usize,
}

impl AlignedBuf {
    pub fn new(cap: usize) -> Self {
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, cap }
    }

    /// The whole aligned region, `cap` bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.cap]
    }

    /// The first `len` bytes (at most `cap`).
    pub fn slice(&self, len: usize) -> &[u8] {
        &self.raw[self.start..self.start + len.min(self.cap)]
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }
}

/// Whether direct I/O still works here, and how large a request may be; shared by the threads
/// of one restore or one store.
#[derive(Debug)]
pub struct DirectSupport {
    broken: AtomicBool,
    /// The largest request: `PIECE` for the daemon's background writers and readers, unbounded
    /// for a restore (the job the machine is there for at that moment).
    max_request: usize,
}

impl Default for DirectSupport {
    /// Requests of at most `PIECE` bytes.
    fn default() -> Self {
        DirectSupport {
            broken: AtomicBool::new(false),
            max_request: PIECE,
        }
    }
}

impl Clone for DirectSupport {
    fn clone(&self) -> Self {
        DirectSupport {
            broken: AtomicBool::new(self.broken.load(Ordering::Relaxed)),
            max_request: self.max_request,
        }
    }
}

impl DirectSupport {
    /// Requests as large as the caller's buffer (a restore).
    pub fn whole_requests() -> Self {
        DirectSupport {
            max_request: usize::MAX,
            ..DirectSupport::default()
        }
    }

    pub fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    /// Direct I/O failed here: from now on everything goes through the page cache.
    pub fn give_up(&self, path: &Path, e: &io::Error) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            tracing::info!(file = %path.display(), error = %e, "direct I/O is not available here; writing through the page cache");
        }
    }
}

/// Writes `data` at `offset` into the existing file `path`: the `ALIGN`-multiple prefix with
/// `O_DIRECT` (when `data` starts on an aligned address and `offset` is aligned), the rest
/// through `buffered`, an ordinary descriptor of the same file. Returns whether the page cache
/// was used (the caller then hands that range to writeback early).
pub fn write_at(support: &DirectSupport, path: &Path, buffered: &File, data: &[u8], offset: u64) -> io::Result<bool> {
    let aligned = if support.usable() && offset % ALIGN as u64 == 0 && data.as_ptr().align_offset(ALIGN) == 0 {
        data.len() / ALIGN * ALIGN
    } else {
        0
    };
    let mut cached = false;
    if aligned > 0 {
        let direct = open_for_direct_writes(support, path);
        cached = write_preferring_direct(support, path, direct.as_ref(), buffered, &data[..aligned], aligned, offset)?;
    }
    if aligned == data.len() {
        return Ok(cached);
    }
    buffered.write_all_at(&data[aligned..], offset + aligned as u64)?;
    Ok(true)
}

/// The one write-with-fallback step: `data` through `direct` while direct I/O works here;
/// where the kernel refuses it (EINVAL: no O_DIRECT, or an alignment the device will not take)
/// direct I/O is given up for good and `data[..fallback_len]` goes through `buffered` instead
/// (a direct write may carry padding that the page cache must not write). Returns whether the
/// page cache was used.
pub fn write_preferring_direct(
    support: &DirectSupport,
    path: &Path,
    direct: Option<&File>,
    buffered: &File,
    data: &[u8],
    fallback_len: usize,
    offset: u64,
) -> io::Result<bool> {
    if let Some(d) = direct.filter(|_| support.usable()) {
        match write_all_direct(d, data, offset, support.max_request) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => support.give_up(path, &e),
            other => return other.map(|()| false),
        }
    }
    buffered.write_all_at(&data[..fallback_len.min(data.len())], offset)?;
    Ok(true)
}

/// Reads exactly `buf.len()` bytes at `offset` of `path`: the aligned prefix with `O_DIRECT`
/// (straight from the device into `buf`, leaving the page cache alone), the rest through
/// `buffered`. Fails (UnexpectedEof) when the file is shorter.
pub fn read_at(support: &DirectSupport, path: &Path, buffered: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let aligned = if support.usable() && offset % ALIGN as u64 == 0 && buf.as_ptr().align_offset(ALIGN) == 0 {
        buf.len() / ALIGN * ALIGN
    } else {
        0
    };
    let mut done = 0;
    if aligned > 0 {
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
            .open(path);
        match direct.and_then(|f| read_exact_direct(&f, &mut buf[..aligned], offset, support.max_request)) {
            Ok(()) => done = aligned,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => support.give_up(path, &e),
            Err(e) => return Err(e),
        }
    }
    buffered.read_exact_at(&mut buf[done..], offset + done as u64)
}

fn open_direct(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `data` at `offset` through a direct descriptor, `max_request` bytes at a time.
fn write_all_direct(f: &File, data: &[u8], offset: u64, max_request: usize) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let n = max_request.min(data.len() - done);
        f.write_all_at(&data[done..done + n], offset + done as u64)?;
        done += n;
    }
    Ok(())
}

/// Fills `buf` from `offset` with direct reads of at most `max_request` bytes. A short read
/// means end of file (then UnexpectedEof, without retrying at the unaligned offset that
/// follows, which O_DIRECT refuses).
fn read_exact_direct(f: &File, buf: &mut [u8], offset: u64, max_request: usize) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let end = buf.len().min(done.saturating_add(max_request));
        let n = f.read_at(&mut buf[done..end], offset + done as u64)?;
        if n == 0 || (n % ALIGN != 0 && done + n < buf.len()) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

/// Opens `path` for direct writes, or `None` (logged once through `support`) where the
/// filesystem refuses `O_DIRECT`.
pub fn open_for_direct_writes(support: &DirectSupport, path: &Path) -> Option<File> {
    if !support.usable() {
        return None;
    }
    match open_direct(path) {
        Ok(f) => Some(f),
        // EINVAL: this filesystem has no O_DIRECT. Anything else (EMFILE, EACCES) is about
        // this file now, not about direct I/O: this file goes through the page cache.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            support.give_up(path, &e);
            None
        }
        Err(_) => None,
    }
}

/// Writes zeros over `[from, to)` of `path` (both `ALIGN`-aligned), directly where possible, a
/// `PIECE` at a time.
pub fn write_zeros(support: &DirectSupport, path: &Path, buffered: &File, from: u64, to: u64) -> io::Result<()> {
    let mut zeros = AlignedBuf::new(PIECE);
    let direct = open_for_direct_writes(support, path);
    let mut off = from;
    while off < to {
        let n = zeros.capacity().min((to - off) as usize);
        write_preferring_direct(support, path, direct.as_ref(), buffered, &zeros.as_mut_slice()[..n], n, off)?;
        off += n as u64;
    }
    Ok(())
}

/// Gives a new file its blocks up front (one extent allocation instead of one per write, and
/// what lets direct writes into it run in parallel); falls back to a plain size change where
/// the filesystem cannot preallocate.
pub fn preallocate(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if size > 0 {
        // SAFETY: fallocate on an open descriptor with mode 0 (allocate, extend the size).
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
    }
    file.set_len(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut b = AlignedBuf::new(3 * ALIGN);
        assert_eq!(b.as_mut_slice().as_ptr().align_offset(ALIGN), 0);
        assert_eq!(b.as_mut_slice().len(), 3 * ALIGN);
        assert_eq!(b.slice(10).len(), 10);
        assert_eq!(b.slice(10 * ALIGN).len(), 3 * ALIGN);
    }

    #[test]
    fn writes_aligned_prefix_and_tail_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let f = File::create(&path).unwrap();
        preallocate(&f, 4 * ALIGN as u64).unwrap();
        let support = DirectSupport::default();
        let mut buf = AlignedBuf::new(2 * ALIGN);
        let n = ALIGN + 100;
        for (i, b) in buf.as_mut_slice()[..n].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let plain = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        write_at(&support, &path, &plain, buf.slice(n), ALIGN as u64).unwrap();
        // An unaligned offset goes through the page cache.
        assert!(write_at(&support, &path, &plain, b"xyz", 3).unwrap());
        let content = std::fs::read(&path).unwrap();
        assert_eq!(content.len(), 4 * ALIGN);
        assert_eq!(&content[3..6], b"xyz");
        assert_eq!(&content[ALIGN..ALIGN + n], buf.slice(n));
        assert!(content[ALIGN + n..].iter().all(|&b| b == 0));

        let mut back = AlignedBuf::new(2 * ALIGN);
        read_at(&support, &path, &plain_reader(&path), &mut back.as_mut_slice()[..n], ALIGN as u64).unwrap();
        assert_eq!(back.slice(n), buf.slice(n));
        let err = read_at(&support, &path, &plain_reader(&path), back.as_mut_slice(), 3 * ALIGN as u64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "past the end");
    }

    #[test]
    fn data_larger_than_a_piece_goes_in_pieces_and_reads_back_whole() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let f = File::create(&path).unwrap();
        let n = 3 * PIECE + ALIGN + 100;
        preallocate(&f, (4 * PIECE) as u64).unwrap();
        let support = DirectSupport::default();
        let mut buf = AlignedBuf::new(4 * PIECE);
        for (i, b) in buf.as_mut_slice()[..n].iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        let plain = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        write_at(&support, &path, &plain, buf.slice(n), 0).unwrap();
        let content = std::fs::read(&path).unwrap();
        assert_eq!(&content[..n], buf.slice(n));
        let mut back = AlignedBuf::new(4 * PIECE);
        read_at(&support, &path, &plain_reader(&path), &mut back.as_mut_slice()[..n], 0).unwrap();
        assert_eq!(back.slice(n), buf.slice(n));
        // Past the end, in the last piece: a short read, not a loop.
        let err = read_at(&support, &path, &plain_reader(&path), back.as_mut_slice(), PIECE as u64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    fn plain_reader(path: &Path) -> File {
        File::open(path).unwrap()
    }
}
