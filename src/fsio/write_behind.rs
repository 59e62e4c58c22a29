//! Page-cache writes that reach the disk in pieces as they are written, not all at once at the
//! fsync.
//!
//! A file written through the page cache and then fsynced (a backup chunk, a large catalog
//! object) goes to the disk in the kernel's largest requests, all at the fsync. On a disk
//! without FUA every fdatasync is a cache flush that waits for whatever was queued before it,
//! so a synchronous standby's acknowledgement that lands behind such a burst waits for all of
//! it: on the CI machine, 150 MB/s of such files made a concurrent 8 KiB write + fdatasync 18x
//! slower at p99 (`bench/sync_interference_bench.py`, "page cache").
//!
//! `WriteBehind` starts the writeback of each `PIECE` as soon as it is written
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and waits for the piece before it, so at most
//! two pieces are in flight and the final fsync finds little left to write. The fsync stays:
//! `sync_file_range` makes nothing durable (no metadata, no cache flush).
//!
//! Errors: an EIO from `sync_file_range` is returned as a write error, and the caller drops the
//! file (it has seen the error, so a later fsync of that descriptor could not be trusted to
//! report it again). Where the call is not supported (EINVAL, ENOSYS, ESPIPE, EOPNOTSUPP) the
//! writer stops using it and writes plainly.

use super::direct::PIECE;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

/// A writer over `file` (positioned at offset 0, written front to back).
pub struct WriteBehind<'a> {
    file: &'a File,
    /// Bytes written so far.
    written: u64,
    /// Bytes whose writeback was started.
    started: u64,
    supported: bool,
}

impl<'a> WriteBehind<'a> {
    pub fn new(file: &'a File) -> Self {
        WriteBehind {
            file,
            written: 0,
            started: 0,
            supported: true,
        }
    }

    fn range(&mut self, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
        if !self.supported {
            return Ok(());
        }
        // SAFETY: a valid descriptor for the life of `self.file`; no memory is passed.
        let rc = unsafe { libc::sync_file_range(self.file.as_raw_fd(), offset as i64, len as i64, flags) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE | libc::EOPNOTSUPP) => {
                self.supported = false;
                Ok(())
            }
            _ => Err(io::Error::new(e.kind(), format!("sync_file_range at {offset}: {e}"))),
        }
    }
}

impl Write for WriteBehind<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        let piece = PIECE as u64;
        while self.written - self.started >= piece {
            let at = self.started;
            self.range(at, piece, libc::SYNC_FILE_RANGE_WRITE)?;
            if at >= piece {
                self.range(
                    at - piece,
                    piece,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )?;
            }
            self.started += piece;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn what_is_written_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let data: Vec<u8> = (0..PIECE * 3 + 12_345).map(|i| (i % 253) as u8).collect();
        let f = File::create(&path).unwrap();
        let mut w = io::BufWriter::with_capacity(100_000, WriteBehind::new(&f));
        for part in data.chunks(77_777) {
            w.write_all(part).unwrap();
        }
        w.flush().unwrap();
        let started = w.get_ref().started;
        drop(w);
        f.sync_all().unwrap();
        assert_eq!(started, 3 * PIECE as u64, "writeback started piece by piece");
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_descriptor_that_cannot_do_it_writes_plainly() {
        let (r, w) = std::io::pipe().unwrap();
        let f = File::from(std::os::fd::OwnedFd::from(w));
        let reader = std::thread::spawn(move || {
            let mut r = r;
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all.len()
        });
        let mut wb = WriteBehind::new(&f);
        let data = vec![7u8; PIECE + 10];
        wb.write_all(&data).unwrap();
        assert!(!wb.supported, "ESPIPE on a pipe turns it off");
        drop(f);
        assert_eq!(reader.join().unwrap(), PIECE + 10);
    }
}
