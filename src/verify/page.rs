//! The WAL page-header checker: pure, on the bytes of one segment.
//!
//! A segment's checksum (the `.zst` header, the `.sum` object) only proves that the bytes are the
//! ones pgark stored. The page headers prove that they are the segment the file name claims: the
//! right PostgreSQL major (`XLOG_PAGE_MAGIC`), the right cluster (system identifier in the long
//! header of page 0), the right position (`xlp_pageaddr` of every page equals the segment's start
//! plus the page's offset), a plausible timeline. So a segment copied over another's name, or a
//! file from another cluster, is caught although its own checksum is fine.
//!
//! Rules (PostgreSQL's `XLogReaderValidatePageHeader()`; see the replication reference §4.2 and
//! §4.3): every page that is not all zeros (the zero padding after an XLOG_SWITCH) has the magic,
//! only the flag bits 0x0..0xF, the long-header flag on page 0 only, `xlp_pageaddr` equal to its
//! own LSN, and a timeline that never decreases and is at most the file name's (the first segment
//! of a new timeline keeps the parent's id on pages up to the switchpoint). Page 0 of a complete
//! segment must not be all zeros, and its long header carries the segment size, the page size
//! and the system identifier. In a `.partial` the valid WAL ends at the first page that is all
//! zeros or names another position (a preallocated or recycled rest): nothing after it is checked.

use crate::pg::{Lsn, TimelineId};

const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_ALL_FLAGS: u16 = 0x000F;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;

/// `XLOG_PAGE_MAGIC` of a PostgreSQL major (13 to 18), from `include/access/xlog_internal.h` of
/// each release branch (checked against the replication reference and the source).
pub fn page_magic(major: u32) -> Option<u16> {
    match major {
        13 => Some(0xD106),
        14 => Some(0xD10D),
        15 => Some(0xD110),
        16 => Some(0xD113),
        17 => Some(0xD116),
        18 => Some(0xD118),
        _ => None,
    }
}

/// What a segment's pages must agree with.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// `None` for a major this build does not know: the magic is then not checked.
    pub magic: Option<u16>,
    /// The timeline in the file name.
    pub tli: TimelineId,
    /// LSN of the segment's first byte (from the file name).
    pub start: Lsn,
    pub seg_size: u64,
    /// `None` when the index's identifier is unreadable: then not checked.
    pub system_identifier: Option<u64>,
}

/// Whether the bytes are a complete segment or the open (or last) `.partial` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Complete,
    Partial,
}

/// The first page header that does not fit, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page at offset {offset:#x} (LSN {lsn}): {reason}")]
pub struct PageError {
    pub offset: u64,
    pub lsn: Lsn,
    pub reason: String,
}

/// What the check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageSummary {
    /// Pages with a header that was checked.
    pub pages: u64,
    /// All-zero pages (after an XLOG_SWITCH, or the unwritten rest of a `.partial`).
    pub zero_pages: u64,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Checks every page header of one segment (see the module comment for the rules).
pub fn check_segment(data: &[u8], expect: &Expect, kind: Kind) -> Result<PageSummary, PageError> {
    let err = |offset: u64, reason: String| PageError {
        offset,
        lsn: Lsn(expect.start.0 + offset),
        reason,
    };
    if kind == Kind::Complete && data.len() as u64 != expect.seg_size {
        return Err(err(
            0,
            format!("segment is {} bytes, the segment size is {}", data.len(), expect.seg_size),
        ));
    }
    let mut summary = PageSummary::default();
    if data.len() < LONG_HEADER || data[..LONG_HEADER].iter().all(|&b| b == 0) {
        return match kind {
            Kind::Partial => Ok(summary),
            Kind::Complete => Err(err(0, "the first page is empty (all zeros): not a WAL segment".into())),
        };
    }
    // Page 0: the long header, which also gives the page size.
    if kind == Kind::Partial && u64_at(data, 8) != expect.start.0 {
        // A recycled file nothing was written into yet.
        return Ok(summary);
    }
    let blcksz = u32_at(data, 36) as u64;
    if !(blcksz.is_power_of_two() && (1024..=65536).contains(&blcksz) && expect.seg_size % blcksz == 0) {
        return Err(err(0, format!("long header: page size {blcksz} is not a valid XLOG_BLCKSZ")));
    }
    let mut last_tli = 0u32;
    let mut offset = 0u64;
    while (offset as usize) < data.len() {
        let page = &data[offset as usize..(offset + blcksz).min(data.len() as u64) as usize];
        let header_len = if offset == 0 { LONG_HEADER } else { SHORT_HEADER };
        if page.len() < header_len || page.iter().all(|&b| b == 0) {
            if kind == Kind::Partial {
                break;
            }
            summary.zero_pages += 1;
            offset += blcksz;
            continue;
        }
        let lsn = expect.start.0 + offset;
        let pageaddr = u64_at(page, 8);
        if kind == Kind::Partial && pageaddr != lsn {
            break; // the end of the valid WAL: a stale page of a recycled file
        }
        let magic = u16_at(page, 0);
        if let Some(m) = expect.magic.filter(|m| *m != magic) {
            return Err(err(
                offset,
                format!("xlp_magic {magic:#06x}, expected {m:#06x} for this PostgreSQL major"),
            ));
        }
        let info = u16_at(page, 2);
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(err(offset, format!("xlp_info {info:#06x} has unknown flag bits")));
        }
        if (offset == 0) != (info & XLP_LONG_HEADER != 0) {
            return Err(err(
                offset,
                if offset == 0 {
                    "the first page has no long header".to_string()
                } else {
                    "a long header on a page other than the first".to_string()
                },
            ));
        }
        if pageaddr != lsn {
            return Err(err(
                offset,
                format!(
                    "xlp_pageaddr is {}, expected {}: these bytes belong to another position (a segment under a wrong name?)",
                    Lsn(pageaddr),
                    Lsn(lsn)
                ),
            ));
        }
        let tli = u32_at(page, 4);
        if tli == 0 || tli > expect.tli.0 {
            return Err(err(
                offset,
                format!("xlp_tli {tli} is not a timeline this file (timeline {}) can hold", expect.tli),
            ));
        }
        if tli < last_tli {
            return Err(err(offset, format!("xlp_tli {tli} after a page of timeline {last_tli}")));
        }
        last_tli = tli;
        if offset == 0 {
            let seg = u32_at(page, 32) as u64;
            if seg != expect.seg_size {
                return Err(err(
                    0,
                    format!("long header: segment size {seg}, the backup's is {}", expect.seg_size),
                ));
            }
            let sysid = u64_at(page, 24);
            if let Some(s) = expect.system_identifier.filter(|s| *s != sysid) {
                return Err(err(
                    0,
                    format!("long header: system identifier {sysid}, the backup's is {s}: WAL of another cluster"),
                ));
            }
        }
        summary.pages += 1;
        offset += blcksz;
    }
    Ok(summary)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const SEG: u64 = 1 << 20;
    pub const PAGE: usize = 8192;

    pub fn expect(tli: u32, start: u64) -> Expect {
        Expect {
            magic: page_magic(16),
            tli: TimelineId(tli),
            start: Lsn(start),
            seg_size: SEG,
            system_identifier: Some(42),
        }
    }

    /// A complete segment of valid pages (zeros after the headers), pages of timeline `tli`.
    pub fn segment(tli: u32, start: u64) -> Vec<u8> {
        let mut data = vec![0u8; SEG as usize];
        for (i, page) in data.chunks_mut(PAGE).enumerate() {
            let o = (i * PAGE) as u64;
            page[0..2].copy_from_slice(&0xD113u16.to_le_bytes());
            let info: u16 = if i == 0 { 0x0006 } else { 0x0004 };
            page[2..4].copy_from_slice(&info.to_le_bytes());
            page[4..8].copy_from_slice(&tli.to_le_bytes());
            page[8..16].copy_from_slice(&(start + o).to_le_bytes());
            if i == 0 {
                page[24..32].copy_from_slice(&42u64.to_le_bytes());
                page[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
                page[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
            page[100] = 7; // a little content
        }
        data
    }

    #[test]
    fn a_valid_segment_passes() {
        let s = check_segment(&segment(1, 3 * SEG), &expect(1, 3 * SEG), Kind::Complete).unwrap();
        assert_eq!(s.pages, SEG / PAGE as u64);
        // Pages of the parent timeline in the new timeline's file: allowed.
        check_segment(&segment(1, 3 * SEG), &expect(2, 3 * SEG), Kind::Complete).unwrap();
    }

    #[test]
    fn zero_pages_after_a_switch_pass() {
        let mut d = segment(1, 0);
        for b in &mut d[10 * PAGE..] {
            *b = 0;
        }
        let s = check_segment(&d, &expect(1, 0), Kind::Complete).unwrap();
        assert_eq!((s.pages, s.zero_pages), (10, SEG / PAGE as u64 - 10));
    }

    #[test]
    fn a_segment_under_another_name_is_caught() {
        let e = check_segment(&segment(1, 3 * SEG), &expect(1, 4 * SEG), Kind::Complete).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.reason.contains("xlp_pageaddr is 0/300000"), "{e}");
    }

    #[test]
    fn each_field_is_checked() {
        let e = expect(1, 0);
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Damage, &str)> = vec![
            (Box::new(|d| d[0] = 0x10), "xlp_magic"),
            (Box::new(|d| d[2 * PAGE + 3] = 0x01), "unknown flag bits"),
            (Box::new(|d| d[2] = 0x04), "no long header"),
            (Box::new(|d| d[3 * PAGE + 2] = 0x06), "long header on a page"),
            (Box::new(|d| d[5 * PAGE + 9] ^= 0x01), "xlp_pageaddr"),
            (Box::new(|d| d[4 * PAGE + 4] = 3), "xlp_tli 3"),
            (Box::new(|d| d[4] = 0), "xlp_tli 0"),
            (Box::new(|d| d[24] = 43), "system identifier"),
            (Box::new(|d| d[34] = 0x20), "segment size"),
            (Box::new(|d| d[37] = 0x30), "page size"),
            (Box::new(|d| d[..PAGE].fill(0)), "first page is empty"),
            (Box::new(|d| d[7 * PAGE + 50] = 1), "xlp_magic"), // a page left zero, then a byte flipped
            (Box::new(|d| d.truncate(PAGE)), "segment is 8192 bytes"),
        ];
        for (i, (damage, needle)) in cases.iter().enumerate() {
            let mut d = segment(1, 0);
            if i == 11 {
                d[7 * PAGE..8 * PAGE].fill(0);
            }
            damage(&mut d);
            let got = check_segment(&d, &e, Kind::Complete).unwrap_err();
            assert!(got.to_string().contains(needle), "case {i}: {got}");
        }
        // Timelines never decrease from page to page.
        let mut d = segment(2, 0);
        d[9 * PAGE + 4] = 1;
        let got = check_segment(&d, &expect(2, 0), Kind::Complete).unwrap_err();
        assert!(got.to_string().contains("xlp_tli 1 after a page of timeline 2"), "{got}");
        // An unknown major: the magic is not checked, the rest is.
        let mut e = expect(1, 0);
        e.magic = page_magic(12);
        let mut d = segment(1, 0);
        d[0] = 0x99;
        check_segment(&d, &e, Kind::Complete).unwrap();
    }

    #[test]
    fn a_partial_ends_at_the_first_stale_or_empty_page() {
        let mut d = segment(1, 5 * SEG);
        // Pages from 20 on come from a recycled segment (another position).
        let stale = segment(1, 2 * SEG);
        d[20 * PAGE..].copy_from_slice(&stale[20 * PAGE..]);
        let s = check_segment(&d, &expect(1, 5 * SEG), Kind::Partial).unwrap();
        assert_eq!(s.pages, 20);
        assert!(check_segment(&d, &expect(1, 5 * SEG), Kind::Complete).is_err());
        // Nothing written yet: a recycled or zeroed file.
        check_segment(&stale, &expect(1, 5 * SEG), Kind::Partial).unwrap();
        check_segment(&vec![0u8; SEG as usize], &expect(1, 5 * SEG), Kind::Partial).unwrap();
        // A damaged header inside the valid part is still caught.
        d[3 * PAGE] ^= 0xFF;
        assert!(check_segment(&d, &expect(1, 5 * SEG), Kind::Partial).is_err());
        for (major, magic) in [(13, 0xD106), (14, 0xD10D), (15, 0xD110), (16, 0xD113), (17, 0xD116), (18, 0xD118)] {
            assert_eq!(page_magic(major), Some(magic));
        }
    }
}
