//! What each repository has of one server, as far as the local catalog's retention must know:
//! `<server>/offsite/<repository>.json`, written by the uploader after every pass that changed
//! it. The local prune reads the marks of every configured repository and deletes no WAL and no
//! backup that one of them still lacks (`OffsiteHold`), except at critical disk pressure.
//!
//! A mark is a snapshot, so it says two things about WAL: the lowest-named object the repository
//! lacked then (`wal_missing_from`; everything named below it was uploaded), and the highest
//! name that existed locally then (`wal_seen_until`; nothing above it is known to be uploaded).
//! A repository with no mark yet (just configured; the uploader never finished a pass) holds
//! everything.

use super::store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::io;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsiteMark {
    pub format: u32,
    pub repository: String,
    /// Base name (24 hex digits) of the lowest complete segment the repository lacked.
    pub wal_missing_from: Option<String>,
    /// Base name of the highest complete segment held locally at `written_at`.
    pub wal_seen_until: Option<String>,
    /// Backups the repository has (uploaded, or found there).
    pub backups: Vec<String>,
    /// Unix seconds.
    pub written_at: u64,
}

pub fn key(server: &str, repository: &str) -> String {
    format!("{server}/offsite/{repository}.json")
}

pub fn load(store: &dyn ObjectStore, server: &str, repository: &str) -> io::Result<Option<OffsiteMark>> {
    let key = key(server, repository);
    match store.get(&key)? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{key}: {e}"))),
    }
}

pub fn save(store: &dyn ObjectStore, server: &str, mark: &OffsiteMark) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(mark).map_err(io::Error::other)?;
    store.put(&key(server, &mark.repository), &bytes)
}

/// What the configured repositories still lack of one server, for the local prune.
#[derive(Debug, Clone, Default)]
pub struct OffsiteHold {
    marks: Vec<(String, Option<OffsiteMark>)>,
}

impl OffsiteHold {
    /// Nothing held (no repositories).
    pub fn none() -> OffsiteHold {
        OffsiteHold::default()
    }

    /// The marks of `repositories` for `server` (an unreadable mark holds like a missing one).
    pub fn load(store: &dyn ObjectStore, server: &str, repositories: &[String]) -> OffsiteHold {
        OffsiteHold {
            marks: repositories
                .iter()
                .map(|r| (r.clone(), load(store, server, r).ok().flatten()))
                .collect(),
        }
    }

    /// The first repository that may still lack segment `base` (24 hex digits), if any.
    pub fn lacks_wal(&self, base: &str) -> Option<&str> {
        self.marks
            .iter()
            .find(|(_, m)| match m {
                None => true,
                Some(m) => {
                    let missing = m.wal_missing_from.as_deref().is_some_and(|from| base >= from);
                    let unseen = m.wal_seen_until.as_deref().is_none_or(|until| base > until);
                    missing || unseen
                }
            })
            .map(|(r, _)| r.as_str())
    }

    /// The first repository that lacks backup `id`, if any.
    pub fn lacks_backup(&self, id: &str) -> Option<&str> {
        self.marks
            .iter()
            .find(|(_, m)| !m.as_ref().is_some_and(|m| m.backups.iter().any(|b| b == id)))
            .map(|(r, _)| r.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_any_repository_may_lack() {
        let mark = |from: Option<&str>, until: Option<&str>, backups: &[&str]| OffsiteMark {
            format: FORMAT,
            repository: "r".into(),
            wal_missing_from: from.map(Into::into),
            wal_seen_until: until.map(Into::into),
            backups: backups.iter().map(|s| s.to_string()).collect(),
            written_at: 0,
        };
        let a = "000000010000000000000001";
        let b = "000000010000000000000005";
        let c = "000000010000000000000009";
        let h = OffsiteHold {
            marks: vec![("one".into(), Some(mark(Some(b), Some(c), &["x"])))],
        };
        assert_eq!(h.lacks_wal(a), None);
        assert_eq!(h.lacks_wal(b), Some("one"));
        assert_eq!(h.lacks_wal("00000001000000000000000A"), Some("one"));
        assert_eq!(h.lacks_backup("x"), None);
        assert_eq!(h.lacks_backup("y"), Some("one"));
        let all_up = OffsiteHold {
            marks: vec![("one".into(), Some(mark(None, Some(c), &[])))],
        };
        assert_eq!(all_up.lacks_wal(c), None);
        assert_eq!(
            all_up.lacks_wal("00000001000000000000000A"),
            Some("one"),
            "newer than the mark: unknown"
        );
        let unknown = OffsiteHold {
            marks: vec![("one".into(), Some(mark(None, Some(c), &[]))), ("two".into(), None)],
        };
        assert_eq!(unknown.lacks_wal(a), Some("two"));
        assert_eq!(OffsiteHold::none().lacks_wal(a), None);
        assert_eq!(OffsiteHold::none().lacks_backup("x"), None);
    }
}
