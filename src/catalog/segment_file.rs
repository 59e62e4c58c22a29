//! The stored form of a completed WAL segment: `<name>.zst`.
//!
//! A zstd skippable frame first (magic 0x184D2A50) carrying our header: `PGARKSEG`, format
//! version, original size and CRC-32C of the original bytes; then one ordinary zstd frame with
//! zstd's own content checksum. Standard `zstd -d` ignores the skippable frame and restores the
//! segment; pgark additionally verifies size and CRC, so a damaged file is named, never replayed.
//!
//! With compression off, the segment is stored as-is under its plain name and its checksum in a
//! `<name>.sum` object (text: `crc32c <8 hex> size <bytes>`).

use std::io::{self, Read, Write};

const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const HEADER_MAGIC: &[u8; 8] = b"PGARKSEG";
const VERSION: u32 = 1;
const HEADER_PAYLOAD: usize = 8 + 4 + 8 + 4;

/// The recorded identity of a segment's original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentChecksum {
    pub size: u64,
    pub crc32c: u32,
}

impl SegmentChecksum {
    pub fn of(data: &[u8]) -> Self {
        SegmentChecksum {
            size: data.len() as u64,
            crc32c: crc32c::crc32c(data),
        }
    }

    pub fn to_sum_text(self) -> String {
        format!("crc32c {:08x} size {}\n", self.crc32c, self.size)
    }

    pub fn from_sum_text(text: &str) -> Option<Self> {
        let mut f = text.split_whitespace();
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("crc32c"), Some(c), Some("size"), Some(s)) => Some(SegmentChecksum {
                crc32c: u32::from_str_radix(c, 16).ok()?,
                size: s.parse().ok()?,
            }),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentFileError {
    #[error("not a pgark segment file (no PGARKSEG header)")]
    NoHeader,
    #[error("segment file format version {0} is not supported")]
    Version(u32),
    #[error("decompression failed: {0}")]
    Decompress(io::Error),
    #[error("content does not match its recorded checksum (expected {expected_size} bytes crc32c {expected_crc:08x}, got {got_size} bytes crc32c {got_crc:08x})")]
    Mismatch {
        expected_size: u64,
        expected_crc: u32,
        got_size: u64,
        got_crc: u32,
    },
}

/// Compresses a segment into `out` with the header, returning its checksum.
pub fn compress_into(data: &[u8], level: i32, out: &mut impl Write) -> io::Result<SegmentChecksum> {
    let sum = SegmentChecksum::of(data);
    compress_stream(&mut &data[..], sum, level, out)?;
    Ok(sum)
}

/// Checksums a segment by streaming through it (1 MiB at a time).
pub fn checksum_stream(input: &mut impl Read) -> io::Result<SegmentChecksum> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut crc, mut size) = (0u32, 0u64);
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(SegmentChecksum { size, crc32c: crc });
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        size += n as u64;
    }
}

/// Writes the header for `sum`, then compresses `input` (whose checksum `sum` must be) into
/// `out` without holding the segment in memory.
pub fn compress_stream(input: &mut impl Read, sum: SegmentChecksum, level: i32, out: &mut impl Write) -> io::Result<()> {
    out.write_all(&SKIPPABLE_MAGIC.to_le_bytes())?;
    out.write_all(&(HEADER_PAYLOAD as u32).to_le_bytes())?;
    out.write_all(HEADER_MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&sum.size.to_le_bytes())?;
    out.write_all(&sum.crc32c.to_le_bytes())?;
    let mut enc = zstd::stream::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(sum.size))?;
    io::copy(input, &mut enc)?;
    enc.finish()?;
    Ok(())
}

/// A reusable compression context for `compress_to_slice`: level set, zstd's content checksum on
/// (as the streaming writer does).
pub fn compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
    Ok(c)
}

/// Room `compress_to_slice` may need for `size` input bytes.
pub fn stored_bound(size: usize) -> usize {
    8 + HEADER_PAYLOAD + zstd::zstd_safe::compress_bound(size)
}

/// Writes the stored form of `data` (header, then one zstd frame) into the start of `out`, in
/// one call with the whole input in memory: faster than streaming, which compresses each piece
/// against a window of earlier pieces (zstd's "extDict" path). Returns the stored length. `out`
/// must hold `stored_bound(data.len())` bytes.
pub fn compress_to_slice(data: &[u8], sum: SegmentChecksum, cctx: &mut zstd::bulk::Compressor<'_>, out: &mut [u8]) -> io::Result<usize> {
    let head = 8 + HEADER_PAYLOAD;
    if out.len() < head {
        return Err(io::Error::other("output buffer too small for the header"));
    }
    out[..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&(HEADER_PAYLOAD as u32).to_le_bytes());
    out[8..16].copy_from_slice(HEADER_MAGIC);
    out[16..20].copy_from_slice(&VERSION.to_le_bytes());
    out[20..28].copy_from_slice(&sum.size.to_le_bytes());
    out[28..32].copy_from_slice(&sum.crc32c.to_le_bytes());
    let n = cctx.compress_to_buffer(data, &mut out[head..])?;
    Ok(head + n)
}

/// Reads the header of a stored segment.
pub fn read_header(stored: &[u8]) -> Result<SegmentChecksum, SegmentFileError> {
    if stored.len() < 8 + HEADER_PAYLOAD
        || stored[..4] != SKIPPABLE_MAGIC.to_le_bytes()
        || stored[4..8] != (HEADER_PAYLOAD as u32).to_le_bytes()
        || &stored[8..16] != HEADER_MAGIC
    {
        return Err(SegmentFileError::NoHeader);
    }
    let version = u32::from_le_bytes(stored[16..20].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SegmentFileError::Version(version));
    }
    Ok(SegmentChecksum {
        size: u64::from_le_bytes(stored[20..28].try_into().expect("8 bytes")),
        crc32c: u32::from_le_bytes(stored[28..32].try_into().expect("4 bytes")),
    })
}

/// The most a zstd frame can expand: a block of at most 128 KiB from at least 4 bytes (an RLE
/// block). A header claiming more than this times the compressed size is damaged, and is
/// refused before anything of the claimed size is allocated.
const MAX_ZSTD_RATIO: u64 = 32 * 1024;

/// Decompresses a stored segment and verifies it against its header.
pub fn decompress(stored: &[u8]) -> Result<Vec<u8>, SegmentFileError> {
    let expected = read_header(stored)?;
    // One-shot decompression into a buffer of the recorded size: no intermediate copies. A
    // header claiming more than 1 GiB is refused rather than allocated.
    let compressed = stored.len() - (8 + HEADER_PAYLOAD);
    if expected.size > 1 << 30 || expected.size > (compressed as u64).saturating_mul(MAX_ZSTD_RATIO) {
        return Err(SegmentFileError::Decompress(io::Error::other(format!(
            "header claims {} bytes, more than any segment or chunk, or than {compressed} compressed bytes can hold",
            expected.size
        ))));
    }
    let out = zstd::bulk::decompress(&stored[8 + HEADER_PAYLOAD..], expected.size as usize).map_err(SegmentFileError::Decompress)?;
    verify(&out, expected)?;
    Ok(out)
}

/// Decompresses a stored segment or chunk into the start of `out` with a reusable decompressor
/// (no allocation, no new zstd context per call), verifies it against its header, and returns
/// the verified checksum, so that callers need not compute the CRC again. `out` must hold at
/// least the recorded size.
pub fn decompress_into(
    stored: &[u8],
    dctx: &mut zstd::bulk::Decompressor<'_>,
    out: &mut [u8],
) -> Result<SegmentChecksum, SegmentFileError> {
    let expected = read_header(stored)?;
    if expected.size > out.len() as u64 {
        return Err(SegmentFileError::Decompress(io::Error::other(format!(
            "header claims {} bytes, more than the {} expected here",
            expected.size,
            out.len()
        ))));
    }
    let out = &mut out[..expected.size as usize];
    let n = dctx
        .decompress_to_buffer(&stored[8 + HEADER_PAYLOAD..], out)
        .map_err(SegmentFileError::Decompress)?;
    verify(&out[..n], expected)?;
    Ok(expected)
}

/// Checks bytes against a recorded checksum.
pub fn verify(data: &[u8], expected: SegmentChecksum) -> Result<(), SegmentFileError> {
    let got = SegmentChecksum::of(data);
    if got != expected {
        return Err(SegmentFileError::Mismatch {
            expected_size: expected.size,
            expected_crc: expected.crc32c,
            got_size: got.size,
            got_crc: got.crc32c,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut stored = Vec::new();
        let sum = compress_into(&data, 3, &mut stored).unwrap();
        assert_eq!(sum, SegmentChecksum::of(&data));
        assert_eq!(checksum_stream(&mut &data[..]).unwrap(), sum);
        let mut dctx = zstd::bulk::Decompressor::new().unwrap();
        let mut out = vec![0u8; data.len() + 10];
        assert_eq!(decompress_into(&stored, &mut dctx, &mut out).unwrap(), sum);
        assert_eq!(&out[..data.len()], &data[..]);
        assert!(
            decompress_into(&stored, &mut dctx, &mut out[..data.len() - 1]).is_err(),
            "too small a buffer"
        );
        // The one-call form stores the same thing, readable the same ways.
        let mut cctx = compressor(3).unwrap();
        let mut one = vec![0u8; stored_bound(data.len())];
        let n = compress_to_slice(&data, sum, &mut cctx, &mut one).unwrap();
        assert_eq!(decompress(&one[..n]).unwrap(), data);
        assert_eq!(zstd::stream::decode_all(&one[..n]).unwrap(), data);
        assert!(stored.len() < data.len());
        assert_eq!(decompress(&stored).unwrap(), data);
        // Plain zstd tooling can read it too: the header is a skippable frame.
        assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), data);
        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(decompress(&bad).is_err());
        assert!(matches!(
            decompress(b"not a segment file at all, no header"),
            Err(SegmentFileError::NoHeader)
        ));
    }

    #[test]
    fn sum_text() {
        let s = SegmentChecksum {
            size: 16777216,
            crc32c: 0xdeadbeef,
        };
        assert_eq!(SegmentChecksum::from_sum_text(&s.to_sum_text()), Some(s));
        assert_eq!(SegmentChecksum::from_sum_text("crc32c zz size 1"), None);
    }
}
