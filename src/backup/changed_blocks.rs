//! The changed-block files (`INCREMENTAL.*`) of one incremental backup, from the moment they
//! arrive until the rebuild has made whole files of them.
//!
//! They are an intermediate: the published index never references them. Stored as chunks like
//! the rest of the stream (hashed twice, compressed, written, then read back, decompressed and
//! finally collected as garbage after publishing), they took about a third of an incremental
//! backup's CPU (1% of a 1.6 GB database changed: 35 MB of them). Here they go, as they
//! arrive, to one unnamed scratch file in the server's catalog directory (`fsio::scratch`):
//! page-cache writes in 1 MiB pieces, never fsynced, gone when the backup ends, fails or is
//! killed. Nothing half-written can be seen in the catalog, because nothing here has a name.
//!
//! - Each file's CRC-32C is computed on the way in: the server's `backup_manifest` checks it
//!   like any other file's.
//! - The catalog's free-space reserve (`min_free_space`) holds for them as for chunks: checked
//!   before each piece is written.
//! - With `encryption.local` on, the bytes are encrypted with XChaCha20 under the catalog key
//!   and a fresh nonce (`catalog::spool_cipher`), like the receiver's spool: no page of the
//!   database reaches the catalog's disk in the clear. XChaCha20's block counter covers 256 GiB,
//!   so each 64 GiB of the file has a cipher (a nonce) of its own.
//! - Never fsynced does not mean never written: a backup longer than the kernel's
//!   `dirty_expire_centisecs` (30 s by default) sees them written out by the flusher.
//! - A path sent twice is a damaged stream, refused.

use super::error::{tar_err, BackupError};
use super::pipeline::{free_space, PipelineError};
use crate::catalog::encryption::Keyring;
use crate::catalog::spool_cipher::SpoolCipher;
use crate::pg::incremental::ReadAt;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes gathered before a write (and a free-space check).
const PIECE: usize = 1 << 20;
/// Bytes of the file one cipher (nonce) encrypts: well within XChaCha20's 2^32 blocks of 64
/// bytes, and a multiple of `PIECE`, so a write never spans two.
const CIPHER_REGION: u64 = 64 << 30;

/// Where one file's bytes lie in the scratch file.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    len: u64,
}

/// The file being received.
struct Current {
    path: String,
    offset: u64,
    /// Its size as the tar header gives it (for the free-space error's "needed").
    size: u64,
    crc: u32,
}

pub struct ChangedBlocks {
    file: File,
    dir: PathBuf,
    /// With encryption: the ring, and the cipher of each `CIPHER_REGION` written so far.
    ring: Option<Keyring>,
    ciphers: Vec<SpoolCipher>,
    min_free: u64,
    /// Bytes not yet written; they start at `written`.
    pending: Vec<u8>,
    written: u64,
    spans: HashMap<String, Span>,
    current: Option<Current>,
}

impl ChangedBlocks {
    /// An empty set in a scratch file in `dir`, encrypted when `ring` is given; `min_free` is
    /// the free space the catalog's filesystem must keep.
    pub fn create(dir: &Path, ring: Option<&Keyring>, min_free: u64) -> io::Result<ChangedBlocks> {
        Ok(ChangedBlocks {
            file: crate::fsio::scratch::unnamed_file(dir)?,
            dir: dir.to_path_buf(),
            ring: ring.cloned(),
            ciphers: Vec::new(),
            min_free,
            pending: Vec::with_capacity(PIECE),
            written: 0,
            spans: HashMap::new(),
            current: None,
        })
    }

    /// Starts file `path` of `size` bytes (the tar header's); ends any file not ended. A path
    /// already kept is refused (the server sends each file once).
    pub fn begin(&mut self, server: &str, path: &str, size: u64) -> Result<(), BackupError> {
        self.end();
        if self.spans.contains_key(path) {
            return Err(tar_err(server, &format!("{path} was sent twice")));
        }
        self.current = Some(Current {
            path: path.to_string(),
            offset: self.written + self.pending.len() as u64,
            size,
            crc: 0,
        });
        Ok(())
    }

    /// Bytes of the file begun last.
    pub fn append(&mut self, mut data: &[u8]) -> Result<(), BackupError> {
        if let Some(c) = self.current.as_mut() {
            c.crc = crc32c::crc32c_append(c.crc, data);
        }
        while !data.is_empty() {
            let take = (PIECE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == PIECE {
                self.write_pending()?;
            }
        }
        Ok(())
    }

    /// Ends the file begun last: its CRC-32C (None if none was begun).
    pub fn end(&mut self) -> Option<u32> {
        let c = self.current.take()?;
        let len = self.written + self.pending.len() as u64 - c.offset;
        self.spans.insert(c.path, Span { offset: c.offset, len });
        Some(c.crc)
    }

    /// Writes what is still gathered: every file reads back after this.
    pub fn finish_writing(&mut self) -> Result<(), BackupError> {
        self.end();
        self.write_pending()
    }

    /// Bytes kept so far.
    pub fn bytes(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Random reads of file `path`, as it was received (None: no such file kept).
    pub fn reader<'a>(&'a self, path: &'a str) -> Option<SpanReader<'a>> {
        let span = *self.spans.get(path)?;
        Some(SpanReader { blocks: self, span, path })
    }

    fn write_pending(&mut self) -> Result<(), BackupError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let free = free_space(&self.dir).map_err(|e| self.io_error("checking the free space for", e))?;
        if free < self.min_free + self.pending.len() as u64 {
            let needed = self.current.as_ref().map_or(self.pending.len() as u64, |c| {
                c.size.saturating_sub(self.written.saturating_sub(c.offset))
            });
            return Err(BackupError::Pipeline(PipelineError::NoSpace {
                path: self.dir.clone(),
                free,
                reserve: self.min_free,
                written: self.written,
                needed,
            }));
        }
        if let Some(ring) = &self.ring {
            let region = ((self.written + self.pending.len() as u64 - 1) / CIPHER_REGION) as usize;
            while self.ciphers.len() <= region {
                self.ciphers.push(SpoolCipher::fresh(ring));
            }
            apply(&self.ciphers, self.written, &mut self.pending);
        }
        fail::fail_point!("changed-blocks-write", |_| Err(
            self.io_error("writing", io::Error::from_raw_os_error(libc::EIO))
        ));
        self.file
            .write_all_at(&self.pending, self.written)
            .map_err(|e| self.io_error("writing", e))?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn io_error(&self, what: &str, e: io::Error) -> BackupError {
        BackupError::Io(io::Error::new(
            e.kind(),
            format!(
                "{what} the incremental backup's changed blocks (a scratch file in {}, {} bytes so far): {e}",
                self.dir.display(),
                self.written
            ),
        ))
    }
}

/// One kept file, read at any offset (`ReadAt`).
pub struct SpanReader<'a> {
    blocks: &'a ChangedBlocks,
    span: Span,
    path: &'a str,
}

impl ReadAt for SpanReader<'_> {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.span.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {} bytes at {offset} asked of a {}-byte file",
                    self.path,
                    buf.len(),
                    self.span.len
                ),
            ));
        }
        let at = self.span.offset + offset;
        if at + buf.len() as u64 > self.blocks.written {
            return Err(io::Error::other(format!(
                "{}: read before the changed blocks were all written",
                self.path
            )));
        }
        self.blocks.file.read_exact_at(buf, at).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: reading it back from the scratch file in {}: {e}",
                    self.path,
                    self.blocks.dir.display()
                ),
            )
        })?;
        apply(&self.blocks.ciphers, at, buf);
        Ok(())
    }
}

/// Encrypts or decrypts `buf`, which lies at `at` in the file, with the cipher of each region
/// it touches (nothing without encryption).
fn apply(ciphers: &[SpoolCipher], mut at: u64, mut buf: &mut [u8]) {
    while !buf.is_empty() {
        let Some(c) = ciphers.get((at / CIPHER_REGION) as usize) else {
            return;
        };
        let within = at % CIPHER_REGION;
        let n = ((CIPHER_REGION - within) as usize).min(buf.len());
        let (head, rest) = buf.split_at_mut(n);
        c.apply(within, head);
        buf = rest;
        at += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::encryption::Key;

    fn filled(ring: Option<&Keyring>) -> (tempfile::TempDir, ChangedBlocks, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let mut cb = ChangedBlocks::create(dir.path(), ring, 0).unwrap();
        let big: Vec<u8> = (0..PIECE as u32 * 2 + 777).map(|i| (i % 251) as u8).collect();
        cb.begin("s", "base/5/INCREMENTAL.16384", 11).unwrap();
        cb.append(b"hello ").unwrap();
        cb.append(b"world").unwrap();
        assert_eq!(cb.end(), Some(crc32c::crc32c(b"hello world")));
        cb.begin("s", "base/5/INCREMENTAL.16385", big.len() as u64).unwrap();
        for part in big.chunks(65_000) {
            cb.append(part).unwrap();
        }
        cb.finish_writing().unwrap();
        (dir, cb, big)
    }

    #[test]
    fn files_read_back_at_any_offset_and_leave_no_name() {
        let (dir, cb, big) = filled(None);
        let mut r = cb.reader("base/5/INCREMENTAL.16384").unwrap();
        let mut buf = [0u8; 5];
        r.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world");
        let mut r = cb.reader("base/5/INCREMENTAL.16385").unwrap();
        let mut buf = vec![0u8; PIECE + 10];
        r.read_exact_at(&mut buf, 100).unwrap();
        assert_eq!(buf, big[100..100 + PIECE + 10]);
        assert!(r.read_exact_at(&mut [0u8; 2], big.len() as u64 - 1).is_err(), "a read past the end");
        assert!(cb.reader("base/5/INCREMENTAL.1").is_none());
        assert_eq!(cb.bytes(), 11 + big.len() as u64);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn encrypted_nothing_of_it_is_on_disk_in_the_clear() {
        let ring = Keyring::new(Key::generate(), vec![]);
        let (_dir, cb, big) = filled(Some(&ring));
        let mut raw = vec![0u8; 11];
        cb.file.read_exact_at(&mut raw, 0).unwrap();
        assert_ne!(raw, b"hello world");
        let mut r = cb.reader("base/5/INCREMENTAL.16385").unwrap();
        let mut buf = vec![0u8; 4096];
        r.read_exact_at(&mut buf, PIECE as u64 - 7).unwrap();
        assert_eq!(buf, big[PIECE - 7..PIECE - 7 + 4096]);
    }

    #[test]
    fn the_free_space_reserve_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut cb = ChangedBlocks::create(dir.path(), None, u64::MAX / 2).unwrap();
        cb.begin("s", "base/5/INCREMENTAL.1", 10).unwrap();
        cb.append(b"0123456789").unwrap();
        let e = cb.finish_writing().unwrap_err();
        assert!(matches!(e, BackupError::Pipeline(PipelineError::NoSpace { .. })), "{e}");
    }

    #[test]
    fn a_read_before_the_last_piece_is_written_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut cb = ChangedBlocks::create(dir.path(), None, 0).unwrap();
        cb.begin("s", "base/5/INCREMENTAL.1", 4).unwrap();
        cb.append(b"abcd").unwrap();
        cb.end();
        let mut r = cb.reader("base/5/INCREMENTAL.1").unwrap();
        assert!(r.read_exact_at(&mut [0u8; 4], 0).is_err());
    }

    #[test]
    fn a_path_sent_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cb = ChangedBlocks::create(dir.path(), None, 0).unwrap();
        cb.begin("s", "base/5/INCREMENTAL.1", 1).unwrap();
        cb.append(b"a").unwrap();
        cb.end();
        let e = cb.begin("s", "base/5/INCREMENTAL.1", 1).unwrap_err();
        assert!(e.to_string().contains("sent twice"), "{e}");
    }

    #[test]
    fn each_region_has_its_own_cipher_and_reads_cross_them() {
        let ring = Keyring::new(Key::generate(), vec![]);
        let ciphers = vec![SpoolCipher::fresh(&ring), SpoolCipher::fresh(&ring)];
        let plain: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let mut buf = plain.clone();
        let at = CIPHER_REGION - 1000;
        apply(&ciphers, at, &mut buf);
        // The part before the boundary is the first cipher's keystream at its offset, the part
        // after it the second's from 0.
        let mut head = plain[..1000].to_vec();
        ciphers[0].apply(CIPHER_REGION - 1000, &mut head);
        let mut tail = plain[1000..].to_vec();
        ciphers[1].apply(0, &mut tail);
        assert_eq!(buf[..1000], head[..]);
        assert_eq!(buf[1000..], tail[..]);
        apply(&ciphers, at, &mut buf);
        assert_eq!(buf, plain);
    }
}
