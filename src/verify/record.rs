//! What a verify found, and the per-backup result stored in the catalog:
//! `<server>/backups/<id>.verify` (JSON, replaced atomically by `ObjectStore::put`), read by
//! `list-backups`, `show-backup` and the daemon's schedule.

use crate::catalog::backup_store::verify_key;
use crate::catalog::store::ObjectStore;
use serde::{Deserialize, Serialize};

/// Format version of the stored record.
pub const RECORD_FORMAT: u32 = 1;
/// At most this many problems are stored per backup (the count is always exact).
pub const MAX_STORED_PROBLEMS: usize = 100;

/// What a problem concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// The backup's index or manifest.
    Backup,
    /// A file of the backup (its path).
    File,
    /// A stored chunk (its object name under `chunks/`).
    Chunk,
    /// A WAL segment or history file (its name).
    Wal,
}

/// One thing found damaged or missing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Problem {
    pub subject: Subject,
    /// The file path, chunk object, or WAL file name.
    pub object: String,
    /// The backup it was found in (`None` for WAL, which backups share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.subject {
            Subject::Backup => "backup",
            Subject::File => "file",
            Subject::Chunk => "chunk",
            Subject::Wal => "WAL",
        };
        match &self.backup {
            Some(b) if self.subject != Subject::Backup => write!(f, "{what} {} (backup {b}): {}", self.object, self.message),
            _ => write!(f, "{what} {}: {}", self.object, self.message),
        }
    }
}

/// `ok` or `damaged`.
pub fn status_text(problems: u64) -> &'static str {
    if problems == 0 {
        "ok"
    } else {
        "damaged"
    }
}

/// The stored result of the last verify of one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub format: u32,
    pub backup: String,
    /// Unix seconds when the verify ended.
    pub verified_at: u64,
    /// `ok` or `damaged`.
    pub status: String,
    pub problem_count: u64,
    /// The first `MAX_STORED_PROBLEMS`.
    pub problems: Vec<Problem>,
    /// Point-in-time ranges no longer reachable, as sentences.
    #[serde(default)]
    pub unreachable: Vec<String>,
    /// Stored bytes read for this backup (chunks shared with a backup verified earlier in the
    /// same run are counted there) and the WAL from its start.
    pub bytes_checked: u64,
    pub seconds: f64,
}

/// Stores the record atomically (replacing the previous one).
pub fn store(store: &dyn ObjectStore, server: &str, record: &VerifyRecord) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    store.put(&verify_key(server, &record.backup), &json)
}

/// The last stored result for a backup; `None` when it was never verified (or the record is
/// unreadable, which is logged: it is only a report, the next verify replaces it).
pub fn load(store: &dyn ObjectStore, server: &str, id: &str) -> Option<VerifyRecord> {
    let key = verify_key(server, id);
    let bytes = match store.get(&key) {
        Ok(b) => b?,
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "cannot read the verify result");
            return None;
        }
    };
    match serde_json::from_slice::<VerifyRecord>(&bytes) {
        Ok(r) if r.format == RECORD_FORMAT => Some(r),
        Ok(r) => {
            tracing::warn!(object = %key, format = r.format, "verify result of an unknown format version; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "unreadable verify result; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        assert!(load(&s, "main", "A").is_none());
        let r = VerifyRecord {
            format: RECORD_FORMAT,
            backup: "A".into(),
            verified_at: 5,
            status: "damaged".into(),
            problem_count: 1,
            problems: vec![Problem {
                subject: Subject::Chunk,
                object: "ab/ab.zst".into(),
                backup: Some("A".into()),
                message: "missing".into(),
            }],
            unreachable: vec![],
            bytes_checked: 10,
            seconds: 0.5,
        };
        store(&s, "main", &r).unwrap();
        assert_eq!(load(&s, "main", "A"), Some(r));
        s.put(&verify_key("main", "B"), b"not json").unwrap();
        assert!(load(&s, "main", "B").is_none());
    }
}
