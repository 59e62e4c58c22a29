//! WAL segment arithmetic and file names: `WalSegSize`, `SegNo` and `WalFileName`.

use super::{Lsn, ParseError, TimelineId};
use std::fmt;

/// The server's `wal_segment_size`: a power of two from 1 MiB to 1 GiB, fixed at initdb.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct WalSegSize(u64);

impl WalSegSize {
    pub const DEFAULT: WalSegSize = WalSegSize(16 * 1024 * 1024);

    pub fn new(bytes: u64) -> Result<Self, ParseError> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(WalSegSize(bytes))
        } else {
            Err(ParseError::new(
                "wal_segment_size",
                &bytes.to_string(),
                "a power of two from 1MB to 1GB",
            ))
        }
    }

    /// Parses the `SHOW wal_segment_size` answer: `"16MB"`, `"1GB"`.
    pub fn from_show(text: &str) -> Result<Self, ParseError> {
        let err = || ParseError::new("wal_segment_size", text, "a size such as 16MB or 1GB");
        let t = text.trim();
        let (num, mult) = if let Some(n) = t.strip_suffix("GB") {
            (n, 1u64 << 30)
        } else if let Some(n) = t.strip_suffix("MB") {
            (n, 1 << 20)
        } else if let Some(n) = t.strip_suffix("kB") {
            (n, 1 << 10)
        } else {
            return Err(err());
        };
        let n: u64 = num.trim().parse().map_err(|_| err())?;
        WalSegSize::new(n.checked_mul(mult).ok_or_else(err)?).map_err(|_| err())
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per "xlogid" (the middle 8 hex digits of a file name).
    fn segs_per_id(self) -> u64 {
        0x1_0000_0000 / self.0
    }

    pub fn segno(self, lsn: Lsn) -> SegNo {
        SegNo(lsn.0 / self.0)
    }

    pub fn offset(self, lsn: Lsn) -> u64 {
        lsn.0 & (self.0 - 1)
    }

    pub fn segment_start(self, segno: SegNo) -> Lsn {
        Lsn(segno.0 * self.0)
    }

    /// Rounds `lsn` down to the start of its segment (where streaming must begin).
    pub fn align_down(self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - self.offset(lsn))
    }
}

/// A WAL segment number: `lsn / wal_segment_size`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegNo(pub u64);

impl SegNo {
    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

/// What kind of file a WAL-directory name denotes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalFileKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`: a complete segment.
    Segment,
    /// `….partial`: an incomplete segment.
    Partial,
}

/// A segment file name: timeline plus segment number, formatted `%08X%08X%08X`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct WalFileName {
    pub tli: TimelineId,
    pub segno: SegNo,
}

impl WalFileName {
    pub fn new(tli: TimelineId, segno: SegNo) -> Self {
        WalFileName { tli, segno }
    }

    pub fn format(self, seg: WalSegSize) -> String {
        let per = seg.segs_per_id();
        format!("{:08X}{:08X}{:08X}", self.tli.0, self.segno.0 / per, self.segno.0 % per)
    }

    /// Parses a 24-hex-digit segment name, checking the low part against the segment size.
    pub fn parse(name: &str, seg: WalSegSize) -> Result<Self, ParseError> {
        let err = || ParseError::new("WAL file name", name, "24 upper-case hexadecimal digits");
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
            return Err(err());
        }
        let part = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).map_err(|_| err());
        let (tli, hi, lo) = (part(0..8)?, part(8..16)?, part(16..24)?);
        let per = seg.segs_per_id();
        if tli == 0 || lo >= per {
            return Err(ParseError::new(
                "WAL file name",
                name,
                "a timeline above 0 and a segment number valid for the segment size",
            ));
        }
        Ok(WalFileName {
            tli: TimelineId(tli as u32),
            segno: SegNo(hi * per + lo),
        })
    }

    pub fn start_lsn(self, seg: WalSegSize) -> Lsn {
        seg.segment_start(self.segno)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.format(WalSegSize::DEFAULT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes() {
        assert_eq!(WalSegSize::from_show("16MB").unwrap().bytes(), 16 << 20);
        assert_eq!(WalSegSize::from_show("1GB").unwrap().bytes(), 1 << 30);
        assert_eq!(WalSegSize::from_show("1MB").unwrap().bytes(), 1 << 20);
        for bad in ["", "16", "3MB", "2GB", "512kB", "MB", "-16MB"] {
            assert!(WalSegSize::from_show(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_round_trip_for_each_size() {
        let cases = [
            (16u64 << 20, 1u32, 0x1FFu64, "0000000100000001000000FF"),
            (16 << 20, 2, 0, "000000020000000000000000"),
            (1 << 30, 3, 5, "000000030000000100000001"),
            (1 << 20, 0x1A, 4097, "0000001A0000000100000001"),
        ];
        for (size, tli, segno, text) in cases {
            let seg = WalSegSize::new(size).unwrap();
            let name = WalFileName::new(TimelineId(tli), SegNo(segno));
            assert_eq!(name.format(seg), text);
            assert_eq!(WalFileName::parse(text, seg).unwrap(), name);
        }
    }

    #[test]
    fn name_parse_rejects() {
        let seg = WalSegSize::DEFAULT;
        for bad in [
            "",
            "00000001000000000000000",
            "000000010000000000000100",
            "00000000000000000000000A",
            "0000000100000000000000ag",
        ] {
            assert!(WalFileName::parse(bad, seg).is_err(), "{bad}");
        }
    }

    #[test]
    fn lsn_segment_math() {
        let seg = WalSegSize::DEFAULT;
        let lsn: Lsn = "1/2345678".parse().unwrap();
        assert_eq!(seg.segno(lsn), SegNo(0x102));
        assert_eq!(seg.offset(lsn), 0x345678);
        assert_eq!(seg.align_down(lsn), "1/2000000".parse().unwrap());
        assert_eq!(seg.segment_start(SegNo(0x123)), "1/23000000".parse::<Lsn>().unwrap());
    }
}
