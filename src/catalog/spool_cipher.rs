//! `encryption.local`: the receiver's spool (the open `.partial`, completed segments waiting for
//! the archiver, spares) encrypted at rest, without slowing the acknowledged write path.
//!
//! The spool cannot use the object envelope of `catalog::encryption`: WAL is written in place,
//! piece by piece, at its offset in a preallocated file, and fsynced before the acknowledgement.
//! An AEAD needs the whole object. So a spool file is encrypted with the XChaCha20 stream cipher,
//! which encrypts any byte range at its offset independently:
//!
//! ```text
//! file = segment bytes, each XORed with the keystream at its offset  (segment size)
//!      | trailer (4096 bytes): "PGARKSPL" | format 1 | key id (8) | nonce (24) | zeros
//! ```
//!
//! - The trailer sits after the segment, so offsets within the segment are unchanged and the
//!   file stays a whole number of 4 KiB blocks (direct I/O). A sealed file's size is
//!   `segment + 4096`, which is 4096 modulo 8192; a plaintext segment's is a multiple of 1 MiB.
//!   The two are told apart by size first, magic second, never by content alone.
//! - Each new `.partial` gets a fresh random 192-bit nonce (a recycled spare too), written and
//!   fdatasynced before the file takes its name (by the archiver when it prepares a spare, off
//!   the receiver's path). Within one file a byte offset only ever receives the same WAL byte
//!   (the server sends only WAL it has flushed; a new timeline is a new file), so a keystream
//!   position never encrypts two different plaintexts. Limit: an upstream whose WAL diverges
//!   on the same timeline (a standby re-pointed, or rewound, without a timeline switch) would
//!   break that for the reopened `.partial`.
//! - Keystream is never written or handed out for bytes not yet written: the padding of a
//!   partial block is random bytes (encrypted zeros would be the keystream itself, plain zeros
//!   would decrypt into it), and readers of a `.partial` decrypt only the blocks and WAL pages
//!   that were written (`open_bytes`). Left: within the last written WAL page, up to one 4 KiB
//!   block past the data may be decrypted with this file's keystream by a reader: a recycled
//!   file's old ciphertext, or zeros after data a reopened `.partial` got without padding.
//! - The cipher key is derived from the catalog key (BLAKE3 `derive_key` with this module's
//!   context), so the stream cipher never shares a key with the envelope's AEAD.
//! - Not authenticated: confidentiality at rest, like disk encryption. The spool is short-lived:
//!   the archiver turns each segment into a sealed, authenticated `.zst` within seconds, and
//!   PostgreSQL's own CRC on every WAL record still catches a damaged byte at replay.

use super::encryption::{Key, KeyId, Keyring};
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::XChaCha20;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes a sealed spool file has after its segment.
pub const TRAILER_LEN: u64 = 4096;
const MAGIC: &[u8; 8] = b"PGARKSPL";
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 24;
/// BLAKE3 `derive_key` context: the spool cipher's key is never the envelope's.
const KDF_CONTEXT: &str = "pgark 2026-12 spool XChaCha20 stream cipher";

/// The keystream of one spool file.
#[derive(Clone)]
pub struct SpoolCipher {
    key_id: KeyId,
    key: [u8; 32],
    nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for SpoolCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpoolCipher(key id {})", self.key_id)
    }
}

impl SpoolCipher {
    /// A cipher for a new spool file: the keyring's current key, a fresh random nonce.
    pub fn fresh(ring: &Keyring) -> SpoolCipher {
        Self::with_key(ring.current(), rand::random())
    }

    fn with_key(key: &Key, nonce: [u8; NONCE_LEN]) -> SpoolCipher {
        SpoolCipher {
            key_id: key.id(),
            key: key.derive(KDF_CONTEXT),
            nonce,
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Encrypts (or decrypts: the same operation) `buf`, which lies at `offset` in the segment.
    pub fn apply(&self, offset: u64, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let mut c = XChaCha20::new(&self.key.into(), &self.nonce.into());
        c.seek(offset);
        c.apply_keystream(buf);
    }

    /// The trailer naming this cipher's key and nonce.
    pub fn trailer(&self) -> Vec<u8> {
        let mut t = vec![0u8; TRAILER_LEN as usize];
        t[..8].copy_from_slice(MAGIC);
        t[8] = FORMAT;
        t[9..17].copy_from_slice(&self.key_id.0);
        t[17..17 + NONCE_LEN].copy_from_slice(&self.nonce);
        t
    }
}

/// Whether `head` (the first 8 bytes of a trailer block) is a spool trailer's magic.
pub fn is_trailer(head: &[u8]) -> bool {
    head.len() >= 8 && &head[..8] == MAGIC
}

/// Whether a spool file of `len` bytes can be a sealed one (checked before its trailer is read).
pub fn sealed_len(len: u64) -> bool {
    len >= TRAILER_LEN && len % 8192 == TRAILER_LEN
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpoolSealError {
    #[error("{file}: encrypted spool file (key id {id}) but the config does not set encryption.local; set it, with the key that wrote the catalog, to read it")]
    NoKeyring { file: String, id: KeyId },
    #[error("{file}: encrypted with key {id}, which is not in the keyring (keys: {known}); add it to encryption.old_key_files")]
    UnknownKey { file: String, id: KeyId, known: String },
    #[error("{file}: spool trailer format {format}, this pgark reads format {FORMAT}: written by a newer pgark; run that version (or newer) to read it")]
    UnknownFormat { file: String, format: u8 },
}

impl From<SpoolSealError> for io::Error {
    fn from(e: SpoolSealError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }
}

/// The cipher a trailer names (`Ok(None)`: not a trailer, the file is plaintext). `file` names
/// the file in errors.
pub fn from_trailer(trailer: &[u8], ring: Option<&Keyring>, file: &str) -> Result<Option<SpoolCipher>, SpoolSealError> {
    if trailer.len() < 17 + NONCE_LEN || &trailer[..8] != MAGIC {
        return Ok(None);
    }
    if trailer[8] != FORMAT {
        return Err(SpoolSealError::UnknownFormat {
            file: file.to_string(),
            format: trailer[8],
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&trailer[9..17]);
    let id = KeyId(id);
    let Some(ring) = ring else {
        return Err(SpoolSealError::NoKeyring {
            file: file.to_string(),
            id,
        });
    };
    let Some(key) = ring.get(id) else {
        return Err(SpoolSealError::UnknownKey {
            file: file.to_string(),
            id,
            known: ring.ids().iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
        });
    };
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&trailer[17..17 + NONCE_LEN]);
    Ok(Some(SpoolCipher::with_key(key, nonce)))
}

/// The cipher of an open spool file of `len` bytes (`Ok(None)`: plaintext).
pub fn of_file(file: &File, len: u64, ring: Option<&Keyring>, path: &Path) -> io::Result<Option<SpoolCipher>> {
    if !sealed_len(len) {
        return Ok(None);
    }
    let mut trailer = vec![0u8; 17 + NONCE_LEN];
    file.read_exact_at(&mut trailer, len - TRAILER_LEN)
        .map_err(crate::fsio::durable::ctx("read the spool trailer of", path))?;
    match from_trailer(&trailer, ring, &path.display().to_string())? {
        Some(c) => Ok(Some(c)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {len} bytes, the size of an encrypted spool file, but no spool trailer: damaged",
                path.display()
            ),
        )),
    }
}

/// The id of the key that encrypted the spool file at `path` (`None`: plaintext or gone): read
/// from its trailer alone, for `check`'s census of the keys the catalog needs.
pub fn key_id_of_file(path: &Path) -> io::Result<Option<KeyId>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::fsio::durable::ctx("open", path)(e)),
    };
    let len = f.metadata().map_err(crate::fsio::durable::ctx("stat", path))?.len();
    if !sealed_len(len) {
        return Ok(None);
    }
    let mut head = [0u8; 17];
    f.read_exact_at(&mut head, len - TRAILER_LEN)
        .map_err(crate::fsio::durable::ctx("read the spool trailer of", path))?;
    if !is_trailer(&head) {
        return Ok(None);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[9..17]);
    Ok(Some(KeyId(id)))
}

/// A whole spool file as read (`data`) turned into the segment's plaintext: decrypted and the
/// trailer cut off when it is sealed, unchanged when it is not. A file of the sealed size
/// without a trailer (damaged) is an error naming it.
///
/// For a `.partial` (`file` ends so), only what was written is decrypted: the bytes past it are
/// old content (zeros, or a recycled file's ciphertext under another nonce), and decrypting
/// them would hand out this file's keystream for WAL still to come. So 4 KiB blocks that are all
/// zeros on disk stay zeros, and so does everything from the first WAL page whose header is not
/// the continuation of the first page's (same magic, consecutive page address).
pub fn open_bytes(mut data: Vec<u8>, ring: Option<&Keyring>, file: &str) -> io::Result<Vec<u8>> {
    let len = data.len() as u64;
    if !sealed_len(len) {
        return Ok(data);
    }
    let seg = (len - TRAILER_LEN) as usize;
    let Some(cipher) = from_trailer(&data[seg..], ring, file)? else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{file}: {len} bytes, the size of an encrypted spool file, but no spool trailer: damaged; restore this segment from a repository or stream it again"),
        ));
    };
    data.truncate(seg);
    if !file.ends_with(".partial") {
        cipher.apply(0, &mut data);
        return Ok(data);
    }
    let zero_blocks: Vec<bool> = data.chunks(BLOCK).map(|b| b.iter().all(|&x| x == 0)).collect();
    cipher.apply(0, &mut data);
    for (block, zero) in data.chunks_mut(BLOCK).zip(zero_blocks) {
        if zero {
            block.fill(0);
        }
    }
    let end = written_pages(&data);
    data[end..].fill(0);
    Ok(data)
}

/// Direct-I/O block: the unit the receiver writes (and pads) in.
const BLOCK: usize = 4096;

/// The length of the run of WAL pages at the start of `plain` that belong together: the first
/// page's long header carries a WAL page magic (0xD1xx, every major since 9.x), the long-header
/// flag and the page size (`XLOG_BLCKSZ`, 1 to 64 KiB), and each next page the same magic and
/// the next page address. Where page 0 cannot be read that way (a file nothing was written
/// into: all zeros after the block rule), nothing is kept; where it is written but its page
/// size is not one PostgreSQL builds with, everything is kept (never hide WAL on a doubt).
fn written_pages(plain: &[u8]) -> usize {
    const XLP_LONG_HEADER: u16 = 0x0002;
    let u16_at = |p: &[u8], at: usize| p.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |p: &[u8], at: usize| p.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |p: &[u8], at: usize| p.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let (Some(magic), Some(info), Some(first), Some(blcksz)) = (u16_at(plain, 0), u16_at(plain, 2), u64_at(plain, 8), u32_at(plain, 36))
    else {
        return 0;
    };
    if magic & 0xFF00 != 0xD100 || info & XLP_LONG_HEADER == 0 {
        return 0;
    }
    let page = blcksz as usize;
    if !(page.is_power_of_two() && (1024..=65536).contains(&page)) || first % blcksz as u64 != 0 {
        return plain.len();
    }
    let mut end = 0;
    for (i, p) in plain.chunks(page).enumerate() {
        match (u16_at(p, 0), u64_at(p, 8)) {
            (Some(m), Some(a)) if m == magic && a == first + (i * page) as u64 => end += p.len(),
            _ => break,
        }
    }
    end
}

/// Reads a spool file's segment bytes through its cipher (the archiver's streaming path).
pub struct DecryptingReader<R> {
    inner: io::Take<R>,
    cipher: Option<SpoolCipher>,
    offset: u64,
}

impl<R: Read> DecryptingReader<R> {
    /// Reads the first `segment` bytes of `inner`, decrypted with `cipher` when there is one.
    pub fn new(inner: R, segment: u64, cipher: Option<SpoolCipher>) -> Self {
        DecryptingReader {
            inner: inner.take(segment),
            cipher,
            offset: 0,
        }
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &self.cipher {
            c.apply(self.offset, &mut buf[..n]);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(Key::generate(), vec![])
    }

    #[test]
    fn ranges_encrypt_independently_and_the_whole_file_opens() {
        let r = ring();
        let c = SpoolCipher::fresh(&r);
        let seg = 1usize << 20;
        let plain: Vec<u8> = (0..seg).map(|i| (i % 251) as u8).collect();
        // Written in uneven pieces at their offsets, as the receiver does.
        let mut file = plain.clone();
        for (a, b) in [(0, 10), (10, 4096), (4096, 70_001), (70_001, seg)] {
            c.apply(a as u64, &mut file[a..b]);
        }
        assert_ne!(&file[..64], &plain[..64]);
        file.extend_from_slice(&c.trailer());
        assert!(sealed_len(file.len() as u64));
        assert_eq!(open_bytes(file.clone(), Some(&r), "f").unwrap(), plain);
        // Streaming reads give the same.
        let mut out = Vec::new();
        let cipher = from_trailer(&file[seg..], Some(&r), "f").unwrap();
        DecryptingReader::new(&file[..], seg as u64, cipher).read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
        // Each file its own nonce: the same bytes encrypt differently.
        let d = SpoolCipher::fresh(&r);
        let mut again = plain[..64].to_vec();
        d.apply(0, &mut again);
        assert_ne!(&again[..], &file[..64]);
    }

    #[test]
    fn plaintext_passes_and_missing_keys_are_named() {
        let plain = vec![7u8; 1 << 20];
        assert_eq!(open_bytes(plain.clone(), None, "f").unwrap(), plain);
        let r = ring();
        let mut sealed = vec![0u8; 1 << 20];
        sealed.extend_from_slice(&SpoolCipher::fresh(&r).trailer());
        let e = open_bytes(sealed.clone(), None, "main/wal/X.partial").unwrap_err().to_string();
        assert!(e.contains("main/wal/X.partial") && e.contains("encryption.local"), "{e}");
        let e = open_bytes(sealed, Some(&ring()), "main/wal/X.partial").unwrap_err().to_string();
        assert!(e.contains("not in the keyring"), "{e}");
        // Size first: a plaintext segment is never taken for a sealed one by its content.
        let mut looks_like = vec![0u8; 1 << 20];
        let n = looks_like.len();
        looks_like[n - 4096..n - 4088].copy_from_slice(MAGIC);
        assert_eq!(open_bytes(looks_like.clone(), None, "f").unwrap(), looks_like);
    }

    /// A `.partial` read back: everything written is there, whatever the WAL page size; what was
    /// never written reads as zeros.
    #[test]
    fn a_partial_keeps_every_written_page_of_any_page_size() {
        let r = ring();
        for page in [8192usize, 16384, 65536] {
            let seg = 1usize << 20;
            let written = 5 * page + 100;
            let mut plain = vec![0u8; seg];
            for (i, b) in plain[..written].iter_mut().enumerate() {
                *b = (i % 249) as u8 | 1;
            }
            for p in (0..written).step_by(page) {
                plain[p..p + 2].copy_from_slice(&0xD116u16.to_le_bytes());
                plain[p + 2..p + 4].copy_from_slice(&(if p == 0 { 2u16 } else { 0 }).to_le_bytes());
                plain[p + 8..p + 16].copy_from_slice(&((16u64 << 20) + p as u64).to_le_bytes());
            }
            plain[36..40].copy_from_slice(&(page as u32).to_le_bytes());
            let c = SpoolCipher::fresh(&r);
            // On disk: the written bytes encrypted, random padding to the block, zeros after.
            let mut file = plain.clone();
            c.apply(0, &mut file[..written]);
            let padded = written.div_ceil(4096) * 4096;
            for b in &mut file[written..padded] {
                *b = rand::random();
            }
            file.extend_from_slice(&c.trailer());
            let read = open_bytes(file, Some(&r), "main/wal/000000010000000000000001.partial").unwrap();
            assert_eq!(read[..written], plain[..written], "page size {page}");
            assert!(read[(written / page + 1) * page..].iter().all(|&b| b == 0), "page size {page}");
        }
    }

    #[test]
    fn the_key_id_is_read_from_the_trailer_alone() {
        let d = tempfile::tempdir().unwrap();
        let r = ring();
        let sealed = d.path().join("sealed.partial");
        let mut b = vec![1u8; 1 << 20];
        b.extend_from_slice(&SpoolCipher::fresh(&r).trailer());
        std::fs::write(&sealed, &b).unwrap();
        assert_eq!(key_id_of_file(&sealed).unwrap(), Some(r.current().id()));
        let plain = d.path().join("plain.partial");
        std::fs::write(&plain, vec![1u8; 1 << 20]).unwrap();
        assert_eq!(key_id_of_file(&plain).unwrap(), None);
        assert_eq!(key_id_of_file(&d.path().join("gone")).unwrap(), None);
    }
}
