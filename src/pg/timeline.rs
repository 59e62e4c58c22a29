//! `TimelineId` and timeline history files (`NNNNNNNN.history`): parse, format and ancestry.

use super::{Lsn, ParseError};
use std::fmt;

/// A PostgreSQL timeline id. Timeline 1 is the one initdb creates; each promotion adds one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct TimelineId(pub u32);

impl TimelineId {
    /// The history file name for this timeline, `%08X.history`.
    pub fn history_file_name(self) -> String {
        format!("{:08X}.history", self.0)
    }

    /// Parses `NNNNNNNN.history`.
    pub fn from_history_file_name(name: &str) -> Option<TimelineId> {
        let hex = name.strip_suffix(".history")?;
        if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().filter(|&t| t > 0).map(TimelineId)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One line of a history file: `parent` ended at `switchpoint` (the first LSN of the next timeline).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switchpoint: Lsn,
}

/// The ancestry of a timeline as recorded in its history file.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TimelineHistory {
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parses a history file. Blank lines and `#` comments are skipped; only the first two
    /// tab-separated fields matter; parent timelines must increase.
    pub fn parse(content: &[u8]) -> Result<Self, ParseError> {
        let text = std::str::from_utf8(content).map_err(|_| ParseError::new("timeline history", "<binary>", "UTF-8 text"))?;
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let bad = || ParseError::new("timeline history line", line, "<parent timeline> <switchpoint LSN> [reason]");
            let parent: u32 = fields.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
            let switchpoint: Lsn = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            if let Some(prev) = entries.last() {
                if parent <= prev.parent.0 || switchpoint < prev.switchpoint {
                    return Err(ParseError::new(
                        "timeline history line",
                        line,
                        "timelines and switchpoints in increasing order",
                    ));
                }
            }
            entries.push(HistoryEntry {
                parent: TimelineId(parent),
                switchpoint,
            });
        }
        Ok(TimelineHistory { entries })
    }

    /// Where timeline `tli` ended according to this history, if it is an ancestor.
    pub fn switchpoint_of(&self, tli: TimelineId) -> Option<Lsn> {
        self.entries.iter().find(|e| e.parent == tli).map(|e| e.switchpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_history() {
        let h = TimelineHistory::parse(b"1\t0/D139848\tno recovery target specified\n\n# c\n2\t0/F000000\tbefore 2024-01-01\n").unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.switchpoint_of(TimelineId(1)), Some(Lsn(0xD139848)));
        assert_eq!(h.switchpoint_of(TimelineId(2)), Some(Lsn(0xF000000)));
        assert_eq!(h.switchpoint_of(TimelineId(3)), None);
    }

    #[test]
    fn rejects_bad_history() {
        assert!(TimelineHistory::parse(b"x\t0/1\n").is_err());
        assert!(TimelineHistory::parse(b"1\tnot-an-lsn\n").is_err());
        assert!(TimelineHistory::parse(b"2\t0/5\n1\t0/6\n").is_err());
    }

    #[test]
    fn history_names() {
        assert_eq!(TimelineId(0x1A).history_file_name(), "0000001A.history");
        assert_eq!(TimelineId::from_history_file_name("0000001A.history"), Some(TimelineId(0x1A)));
        assert_eq!(TimelineId::from_history_file_name("00000000.history"), None);
        assert_eq!(TimelineId::from_history_file_name("1A.history"), None);
    }
}
