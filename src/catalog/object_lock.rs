//! Object lock on a repository (`object_lock: true`): which objects are locked, for how long,
//! and when a lock is extended.
//!
//! What a restore needs is written once and locked: WAL segments and history files, backup
//! chunks, indexes and manifests. Each is written with a retention of `period` from the moment
//! it is stored, and a chunk that a new backup reuses has its retention pushed to `period` from
//! then, because that backup needs it as long. Objects rewritten in place (the open segment's
//! `.partial.zst`, `server.state`, pins, verify results, prune intents) are not locked: locking
//! them would keep one locked version per rewrite, every 10 s for the partial.
//!
//! The period (chosen by `config::repositories` from the repository's retention) must cover
//! what that retention keeps.

pub use super::s3_raw::LockMode;
use std::time::Duration;

/// How objects are locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    /// Each locked object's retention, from when it is written (or reused).
    pub period: Duration,
}

/// A locked chunk reused by a new backup is re-locked when its retention ends sooner than
/// `period - RELOCK_SLACK` from now: reusing it daily then costs one request every other day
/// per chunk, not one per backup.
pub const RELOCK_SLACK: Duration = Duration::from_secs(86_400);

/// Whether `key` (a repository key, `<server>/…`) is written once and locked.
pub fn is_locked_kind(key: &str) -> bool {
    let mut parts = key.splitn(3, '/');
    let (_server, dir, rest) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
    match dir {
        Some("chunks") => true,
        Some("wal") => !rest.contains('/') && !rest.contains(".partial") && !rest.starts_with('.'),
        Some("backups") => !rest.contains('/') && (rest.ends_with(".json") || rest.ends_with(".manifest")),
        _ => false,
    }
}

/// Whether an object locked until `until` (Unix seconds) must be re-locked for a new use at
/// `now` under `lock`.
pub fn needs_relock(lock: &ObjectLock, until: Option<i64>, now: i64) -> bool {
    let want = now + lock.period.as_secs() as i64 - RELOCK_SLACK.as_secs() as i64;
    until.is_none_or(|u| u < want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_written_once_is_locked() {
        for k in [
            "main/wal/000000010000000000000001.zst",
            "main/wal/00000002.history",
            "main/chunks/ab/abcdef.zst",
            "main/backups/20261203T101010Z.json",
            "main/backups/20261203T101010Z.manifest",
        ] {
            assert!(is_locked_kind(k), "{k}");
        }
        for k in [
            "main/wal/000000010000000000000002.partial.zst",
            "main/server.state",
            "main/backups/20261203T101010Z.keep",
            "main/backups/20261203T101010Z.verify",
            "main/backups/20261203T101010Z.running",
            "main/prune.intent",
            "main/wal.gaps",
            "main/offsite/x.json",
        ] {
            assert!(!is_locked_kind(k), "{k}");
        }
    }

    #[test]
    fn reused_objects_are_relocked_only_when_their_lock_ends_too_soon() {
        let lock = ObjectLock {
            mode: LockMode::Compliance,
            period: Duration::from_secs(10 * 86_400),
        };
        let now = 1_000_000_000;
        assert!(needs_relock(&lock, None, now));
        assert!(needs_relock(&lock, Some(now + 8 * 86_400), now));
        assert!(!needs_relock(&lock, Some(now + 9 * 86_400), now));
        assert!(!needs_relock(&lock, Some(now + 10 * 86_400), now));
    }
}
