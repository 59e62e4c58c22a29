//! Disk pressure: the free-space levels of the catalog's filesystem that change what pgark does.
//!
//! Below `catalog_free_warning` pgark warns (log, metric, status). Below `catalog_free_critical`
//! it stops starting base backups (scheduled and `pgark backup`), the one thing that can eat the
//! room WAL streaming needs, stops preparing zero-filled spare segments ahead of need, and keeps
//! streaming and compressing WAL (compression shrinks what is stored) for as long as the disk
//! lets it. Streaming is never stopped on purpose: a stopped
//! receiver makes the primary keep WAL for the slot instead, moving the problem onto the server
//! (see `docs/operations.md` on `max_slot_wal_keep_size`).

use crate::catalog::store::Capacity;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A free-space level: absolute bytes or a share of the filesystem.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    Percent(f64),
}

impl Threshold {
    /// The level in bytes on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            Threshold::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }

    /// `15%`, `2.5%`, or a size (`10GiB`, `500MB`, bytes).
    pub fn parse(text: &str) -> Result<Threshold, String> {
        if let Some(p) = text.trim().strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(p) if (0.0..100.0).contains(&p) => Ok(Threshold::Percent(p)),
                _ => Err(format!(
                    "{text:?}: expected a percentage from 0% to below 100%, or a size such as 10GiB"
                )),
            };
        }
        crate::util::units::parse_size(text)
            .map(Threshold::Bytes)
            .map_err(|e| format!("{e}, or a percentage such as 10%"))
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Bytes(b) => write!(f, "{}", crate::util::units::human_bytes(*b)),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

pub const DEFAULT_CATALOG_FREE_WARNING: Threshold = Threshold::Percent(15.0);
pub const DEFAULT_CATALOG_FREE_CRITICAL: Threshold = Threshold::Percent(5.0);

/// How often the daemon measures the catalog's free space (one statvfs) ...
pub const DEFAULT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
/// ... and walks each server's share of it (a directory walk, costlier).
pub const DEFAULT_USAGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskThresholds {
    pub catalog_free_warning: Threshold,
    pub catalog_free_critical: Threshold,
    /// `disk_pressure.check_interval`: how often free space is measured.
    pub check_interval: std::time::Duration,
    /// `disk_pressure.usage_interval`: how often each server's usage is walked.
    pub usage_interval: std::time::Duration,
}

impl Default for DiskThresholds {
    fn default() -> Self {
        DiskThresholds {
            catalog_free_warning: DEFAULT_CATALOG_FREE_WARNING,
            catalog_free_critical: DEFAULT_CATALOG_FREE_CRITICAL,
            check_interval: DEFAULT_CHECK_INTERVAL,
            usage_interval: DEFAULT_USAGE_INTERVAL,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

/// The catalog's current level, shared between the task that measures it (the daemon's catalog
/// watch) and the code that acts on it (the archiver), without either knowing the other.
#[derive(Clone, Default, Debug)]
pub struct SharedLevel(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl SharedLevel {
    pub fn set(&self, level: Level) {
        let n = match level {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        };
        self.0.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Level {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Level::Ok,
            1 => Level::Warning,
            _ => Level::Critical,
        }
    }
}

impl Level {
    /// The metric value: 0 ok, 1 warning, 2 critical.
    pub fn as_number(self) -> f64 {
        match self {
            Level::Ok => 0.0,
            Level::Warning => 1.0,
            Level::Critical => 2.0,
        }
    }
}

impl DiskThresholds {
    pub fn level(&self, cap: Capacity) -> Level {
        if cap.free < self.catalog_free_critical.bytes(cap.total) {
            Level::Critical
        } else if cap.free < self.catalog_free_warning.bytes(cap.total) {
            Level::Warning
        } else {
            Level::Ok
        }
    }

    /// Refuses to start a base backup when the catalog is at the critical level.
    pub fn check_backup_allowed(&self, cap: Capacity) -> Result<(), String> {
        match self.level(cap) {
            Level::Critical => Err(format!(
                "the catalog's filesystem has {} free, below disk_pressure.catalog_free_critical ({}); \
                 base backups are not started so that WAL streaming keeps the space (free space, or raise the disk)",
                crate::util::units::human_bytes(cap.free),
                self.catalog_free_critical
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse() {
        assert_eq!(Threshold::parse("15%").unwrap(), Threshold::Percent(15.0));
        assert_eq!(Threshold::parse("2.5 %").unwrap(), Threshold::Percent(2.5));
        assert_eq!(Threshold::parse("10GiB").unwrap(), Threshold::Bytes(10 << 30));
        assert_eq!(Threshold::parse("4096").unwrap(), Threshold::Bytes(4096));
        for bad in ["150%", "-1%", "lots", "x%"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn levels() {
        let t = DiskThresholds {
            catalog_free_warning: Threshold::Percent(20.0),
            catalog_free_critical: Threshold::Bytes(100),
            ..Default::default()
        };
        let cap = |free| Capacity { free, total: 1000 };
        assert_eq!(t.level(cap(500)), Level::Ok);
        assert_eq!(t.level(cap(199)), Level::Warning);
        assert_eq!(t.level(cap(99)), Level::Critical);
        assert!(t.check_backup_allowed(cap(150)).is_ok());
        let e = t.check_backup_allowed(cap(50)).unwrap_err();
        assert!(e.contains("catalog_free_critical"), "{e}");
    }
}
