//! PostgreSQL 17+ incremental backup files, sans I/O: the `INCREMENTAL.<relfilenode>[.<segno>]`
//! header, which block of a reconstructed file comes from where, and the `backup_label` lines
//! an incremental backup adds.
//!
//! Layout (host byte order; little-endian on every platform pgark runs on):
//! `u32 magic 0xD3AE1F0D | u32 n | u32 truncation_block_length | u32 block[n]` (ascending,
//! relative to the segment), zero padding to a multiple of BLCKSZ when n > 0, then n page
//! images in the same order.
//!
//! Reconstruction follows pg_combinebackup (`reconstruct.c`) for a chain whose previous member
//! is a full file: block `b` of the result is the incremental's image when it has one; else the
//! previous file's block when `b` is below the truncation length and the previous file has it;
//! else zeros. The result is as long as the truncation length, or longer when the incremental
//! holds blocks beyond it.

use super::{Lsn, TimelineId};
use std::io;

pub const MAGIC: u32 = 0xD3AE_1F0D;
/// PostgreSQL's page size; pgark's incremental support requires the default.
pub const BLCKSZ: u64 = 8192;
/// The name prefix of an incremental file.
pub const PREFIX: &str = "INCREMENTAL.";
/// More blocks than a relation segment can hold with any supported build (32 GiB of 8 kB
/// pages): a header claiming more is damaged, not a reason to allocate.
const MAX_BLOCKS: u32 = 1 << 22;
/// Bytes before the block numbers.
const FIXED: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IncrementalError {
    #[error("{file}: not an incremental file (magic {found:#x}, expected {MAGIC:#x})")]
    Magic { file: String, found: u32 },
    #[error("{file}: damaged incremental header: {why}")]
    Header { file: String, why: String },
}

/// The parsed header of one incremental file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalHeader {
    /// Block numbers present, ascending.
    pub blocks: Vec<u32>,
    /// The reconstructed file's minimum length in blocks.
    pub truncation_blocks: u32,
    /// Where the first page image starts.
    pub header_len: u64,
}

/// Bytes to read from the start of an incremental file to parse its header, given its first 12.
pub fn header_read_len(first: &[u8]) -> Option<usize> {
    let n = u32::from_le_bytes(first.get(4..8)?.try_into().ok()?);
    Some(FIXED + 4 * n.min(MAX_BLOCKS) as usize)
}

impl IncrementalHeader {
    /// Parses the header from the file's first bytes (at least `header_read_len`), checking it
    /// against the file's size: `header_len + n × BLCKSZ` must be exactly the size.
    pub fn parse(file: &str, bytes: &[u8], file_size: u64) -> Result<IncrementalHeader, IncrementalError> {
        let bad = |why: String| IncrementalError::Header {
            file: file.to_string(),
            why,
        };
        let word = |i: usize| bytes.get(i * 4..i * 4 + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let magic = word(0).ok_or_else(|| bad(format!("{} bytes, shorter than a header", bytes.len())))?;
        if magic != MAGIC {
            return Err(IncrementalError::Magic {
                file: file.to_string(),
                found: magic,
            });
        }
        let n = word(1).ok_or_else(|| bad("no block count".into()))?;
        let truncation_blocks = word(2).ok_or_else(|| bad("no truncation length".into()))?;
        if n > MAX_BLOCKS || truncation_blocks > MAX_BLOCKS {
            return Err(bad(format!(
                "{n} blocks, truncation length {truncation_blocks}: more than a segment holds"
            )));
        }
        let mut blocks = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            let b = word(3 + i).ok_or_else(|| bad(format!("the header lists {n} blocks but ends after {i}")))?;
            if blocks.last().is_some_and(|&p| b <= p) {
                return Err(bad(format!(
                    "block numbers not ascending ({b} after {})",
                    blocks.last().copied().unwrap_or(0)
                )));
            }
            if b >= MAX_BLOCKS {
                return Err(bad(format!("block number {b} is beyond any segment")));
            }
            blocks.push(b);
        }
        let mut header_len = (FIXED + 4 * n as usize) as u64;
        if n > 0 {
            header_len = header_len.div_ceil(BLCKSZ) * BLCKSZ;
        }
        let expected = header_len + u64::from(n) * BLCKSZ;
        if expected != file_size {
            return Err(bad(format!("{n} blocks need {expected} bytes, the file has {file_size}")));
        }
        Ok(IncrementalHeader {
            blocks,
            truncation_blocks,
            header_len,
        })
    }

    /// Blocks in the reconstructed file.
    pub fn block_length(&self) -> u32 {
        self.blocks
            .last()
            .map_or(self.truncation_blocks, |&b| self.truncation_blocks.max(b + 1))
    }

    /// Bytes of the reconstructed file.
    pub fn reconstructed_len(&self) -> u64 {
        u64::from(self.block_length()) * BLCKSZ
    }

    /// Where block `b`'s image is in the incremental file, if it has one.
    pub fn image_offset(&self, b: u32) -> Option<u64> {
        self.blocks.binary_search(&b).ok().map(|i| self.header_len + i as u64 * BLCKSZ)
    }

    /// Whether the byte range `[start, end)` of the result is exactly the previous file's bytes
    /// there (no block of it in this file, all below the truncation length and within the
    /// previous file of `prior_len` bytes): such a range can be taken over unread.
    pub fn range_is_prior(&self, start: u64, end: u64, prior_len: u64) -> bool {
        let (first, last) = (start / BLCKSZ, end.div_ceil(BLCKSZ));
        let i = self.blocks.partition_point(|&b| u64::from(b) < first);
        let none_here = self.blocks.get(i).is_none_or(|&b| u64::from(b) >= last);
        none_here && end <= u64::from(self.truncation_blocks) * BLCKSZ && end <= prior_len
    }
}

/// Random reads of a file, wherever it is stored.
pub trait ReadAt {
    /// Fills `buf` with the bytes at `offset`; a short file is an error.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Fills `out` with the reconstructed file's bytes at `start` (block-aligned; `out` a whole
/// number of blocks, inside `reconstructed_len`): the previous file's bytes first (of
/// `prior_len`; only below the truncation length), zeros past them, then this file's images.
pub fn reconstruct_range(
    h: &IncrementalHeader,
    incremental: &mut dyn ReadAt,
    prior: &mut dyn ReadAt,
    prior_len: u64,
    start: u64,
    out: &mut [u8],
) -> io::Result<()> {
    let end = start + out.len() as u64;
    let prior_end = (prior_len / BLCKSZ * BLCKSZ).min(u64::from(h.truncation_blocks) * BLCKSZ).min(end);
    let from_prior = prior_end.saturating_sub(start) as usize;
    if from_prior > 0 {
        prior.read_exact_at(&mut out[..from_prior], start)?;
    }
    out[from_prior..].fill(0);
    let first = (start / BLCKSZ) as u32;
    let i = h.blocks.partition_point(|&b| b < first);
    for (k, &b) in h.blocks[i..].iter().enumerate() {
        let at = u64::from(b) * BLCKSZ;
        if at >= end {
            break;
        }
        let o = (at - start) as usize;
        incremental.read_exact_at(&mut out[o..o + BLCKSZ as usize], h.header_len + (i + k) as u64 * BLCKSZ)?;
    }
    Ok(())
}

/// `base/5/INCREMENTAL.16384.1` → `base/5/16384.1`; None for any other path.
pub fn full_path(path: &str) -> Option<String> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    };
    let bare = name.strip_prefix(PREFIX).filter(|b| !b.is_empty())?;
    Some(match dir {
        Some(d) => format!("{d}/{bare}"),
        None => bare.to_string(),
    })
}

const FROM_LSN: &str = "INCREMENTAL FROM LSN: ";
const FROM_TLI: &str = "INCREMENTAL FROM TLI: ";

/// The backup_label without its `INCREMENTAL FROM` lines, as pg_combinebackup writes it: a
/// server refuses to start from a label that still has them.
pub fn full_backup_label(label: &[u8]) -> Vec<u8> {
    label
        .split_inclusive(|&c| c == b'\n')
        .filter(|l| !l.starts_with(FROM_LSN.as_bytes()) && !l.starts_with(FROM_TLI.as_bytes()))
        .flatten()
        .copied()
        .collect()
}

/// Where an incremental backup's label says it continues from.
pub fn incremental_from(label: &[u8]) -> Option<(Lsn, TimelineId)> {
    let text = String::from_utf8_lossy(label);
    let mut lsn = None;
    let mut tli = None;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix(FROM_LSN) {
            lsn = v.trim().parse::<Lsn>().ok();
        } else if let Some(v) = l.strip_prefix(FROM_TLI) {
            tli = v.trim().parse::<u32>().ok().map(TimelineId);
        }
    }
    Some((lsn?, tli?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(blocks: &[u32], trunc: u32, fill: impl Fn(u32) -> u8) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [MAGIC, blocks.len() as u32, trunc].into_iter().chain(blocks.iter().copied()) {
            v.extend_from_slice(&w.to_le_bytes());
        }
        if !blocks.is_empty() {
            v.resize(v.len().div_ceil(BLCKSZ as usize) * BLCKSZ as usize, 0);
        }
        for &b in blocks {
            v.extend(std::iter::repeat_n(fill(b), BLCKSZ as usize));
        }
        v
    }

    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let s = self
                .0
                .get(offset as usize..offset as usize + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(s);
            Ok(())
        }
    }

    fn rebuild(incr: &[u8], prior: &[u8]) -> Vec<u8> {
        let h = IncrementalHeader::parse("f", incr, incr.len() as u64).unwrap();
        let mut out = vec![0xEE; h.reconstructed_len() as usize];
        reconstruct_range(
            &h,
            &mut Mem(incr.to_vec()),
            &mut Mem(prior.to_vec()),
            prior.len() as u64,
            0,
            &mut out,
        )
        .unwrap();
        out
    }

    fn blocks_of(data: &[u8]) -> Vec<u8> {
        data.chunks(BLCKSZ as usize).map(|b| b[0]).collect()
    }

    #[test]
    fn blocks_come_from_the_newest_backup_that_has_them() {
        let prior: Vec<u8> = (0..6u8).flat_map(|b| std::iter::repeat_n(10 + b, BLCKSZ as usize)).collect();
        // Blocks 1 and 4 changed; the file still has 6 blocks.
        let out = rebuild(&file(&[1, 4], 6, |b| 100 + b as u8), &prior);
        assert_eq!(blocks_of(&out), [10, 101, 12, 13, 104, 15]);
        // Truncated to 3 blocks, then block 5 written: 3 and 4 are zeros, not the old data.
        let out = rebuild(&file(&[5], 3, |_| 99), &prior);
        assert_eq!(blocks_of(&out), [10, 11, 12, 0, 0, 99]);
        // Extended past the old end with no WAL for the new blocks: zeros.
        let out = rebuild(&file(&[], 8, |_| 0), &prior);
        assert_eq!(blocks_of(&out), [10, 11, 12, 13, 14, 15, 0, 0]);
        // Nothing changed and nothing truncated: the prior file, taken over unread.
        let h = IncrementalHeader::parse("f", &file(&[], 6, |_| 0), 12).unwrap();
        assert!(h.range_is_prior(0, 6 * BLCKSZ, prior.len() as u64));
        let h = IncrementalHeader::parse("f", &file(&[4], 6, |_| 1), 2 * BLCKSZ).unwrap();
        assert!(h.range_is_prior(0, 4 * BLCKSZ, prior.len() as u64));
        assert!(!h.range_is_prior(0, 5 * BLCKSZ, prior.len() as u64));
    }

    #[test]
    fn damaged_headers_are_refused() {
        let good = file(&[2, 3], 4, |_| 1);
        assert!(matches!(
            IncrementalHeader::parse("x", &[0u8; 16], 16),
            Err(IncrementalError::Magic { .. })
        ));
        let e = IncrementalHeader::parse("base/1/INCREMENTAL.5", &good, good.len() as u64 + 1).unwrap_err();
        assert!(
            e.to_string().contains("base/1/INCREMENTAL.5") && e.to_string().contains("need"),
            "{e}"
        );
        let mut unsorted = good.clone();
        unsorted[12..16].copy_from_slice(&7u32.to_le_bytes());
        assert!(IncrementalHeader::parse("x", &unsorted, good.len() as u64).is_err());
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(IncrementalHeader::parse("x", &huge, good.len() as u64).is_err());
        assert!(IncrementalHeader::parse("x", &good[..14], good.len() as u64).is_err());
    }

    #[test]
    fn names_and_labels() {
        assert_eq!(full_path("base/5/INCREMENTAL.16384.1").as_deref(), Some("base/5/16384.1"));
        assert_eq!(
            full_path("pg_tblspc/9/PG_17/5/INCREMENTAL.3_vm").as_deref(),
            Some("pg_tblspc/9/PG_17/5/3_vm")
        );
        assert_eq!(full_path("base/5/16384"), None);
        assert_eq!(full_path("base/5/INCREMENTAL."), None);
        let label = b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nCHECKPOINT LOCATION: 0/4000080\nINCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\nSTART TIMELINE: 1\n";
        let full = full_backup_label(label);
        assert_eq!(
            full,
            b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nCHECKPOINT LOCATION: 0/4000080\nSTART TIMELINE: 1\n"
        );
        assert_eq!(incremental_from(label), Some((Lsn(0x2000028), TimelineId(1))));
        assert_eq!(incremental_from(&full), None);
    }
}
