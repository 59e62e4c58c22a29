//! `Lsn`: a position in the WAL stream (a byte offset), with PostgreSQL's `X/X` text form.

use super::ParseError;
use std::fmt;
use std::str::FromStr;

/// A WAL location: the byte offset in the server's infinite WAL stream.
///
/// `Lsn(0)` is PostgreSQL's `InvalidXLogRecPtr`; in a standby status update it means "unknown".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// `self + n`, or `None` on overflow (a server can never send such a position legitimately).
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead.
    pub fn saturating_sub(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl FromStr for Lsn {
    type Err = ParseError;

    /// Parses `X/X` (each half 1 to 8 hex digits; PostgreSQL 19 pads the low half, so padding is accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            ParseError::new(
                "LSN",
                s,
                "two hexadecimal numbers of up to 8 digits separated by '/', like 0/16B3748",
            )
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let half = |t: &str| {
            if t.is_empty() || t.len() > 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(t, 16).map_err(|_| err())
        };
        Ok(Lsn(((half(hi)? as u64) << 32) | half(lo)? as u64))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let cases = [
            ("0/0", 0u64),
            ("0/16B3748", 0x16B3748),
            ("1/0", 1 << 32),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
            ("0/0D139848", 0xD139848),
            ("a/b", (0xA << 32) | 0xB),
        ];
        for (text, value) in cases {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.0, value, "{text}");
            assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
        assert_eq!(Lsn(0xD139848).to_string(), "0/D139848");
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in ["", "0", "/", "0/", "/0", "x/0", "0/123456789", "1/2/3", "-1/0", "0/ 1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn checked_math() {
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(5).checked_add(3), Some(Lsn(8)));
        assert_eq!(Lsn(5).saturating_sub(Lsn(8)), 0);
    }
}
