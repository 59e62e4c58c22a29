//! The restore record: what a finished restore leaves in the catalog about the files it wrote,
//! so that the next `--delta` restore into the same directory need not read files nobody has
//! touched since.
//!
//! For every file restored from the backup it holds the file's identity on disk as of the end
//! of the restore (device, inode, size, and mtime and ctime to the nanosecond) and the chunks it
//! holds (object name, size, CRC-32C), which pgark verified while writing them. A later delta
//! restore trusts a file's recorded chunks only while that identity is exactly the same: a
//! write, a truncation, a chmod or chown, a replacement by another file all change the mtime or
//! the ctime, and the ctime is set by the kernel alone (no tool can set it back). Every other
//! file is read and checksummed. `--verify-existing` ignores the record.
//!
//! The record is an optimisation, never a source of truth about the backup: a missing,
//! unreadable or foreign record only means more reading. It is removed before a restore writes
//! anything and written again only after that restore has finished and everything is durable,
//! and it is ignored for a directory with a `postmaster.pid` (a cluster that did not shut down
//! cleanly: after a crash, file times on disk can be older than the bytes). It lives in the catalog
//! (`<server>/restores/<sha256 of the target path>.json`), not in the data directory, where
//! PostgreSQL, `pg_basebackup` and the next backup would carry it along.

use crate::catalog::store::ObjectStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const FORMAT: u32 = 1;

/// A file's identity on disk: equal identities mean nothing has changed it in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileIdentity {
    /// The identity of a regular file (not following symlinks); `None` for anything else or
    /// when it cannot be read.
    pub fn of(path: &Path) -> Option<FileIdentity> {
        let m = std::fs::symlink_metadata(path).ok()?;
        m.file_type().is_file().then(|| FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedChunk {
    /// The chunk's object name (its SHA-256): equal names mean equal bytes.
    pub object: String,
    pub size: u64,
    pub crc32c: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFile {
    pub identity: FileIdentity,
    pub chunks: Vec<RecordedChunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub format: u32,
    pub target_dir: String,
    pub backup_id: String,
    /// Unix seconds.
    pub written_at: u64,
    /// By absolute path (tablespace files at their restored location).
    pub files: BTreeMap<String, RecordedFile>,
}

impl RestoreRecord {
    pub fn new(target_dir: &Path, backup_id: &str) -> Self {
        RestoreRecord {
            format: FORMAT,
            target_dir: target_dir.display().to_string(),
            backup_id: backup_id.to_string(),
            written_at: crate::util::time::unix_now(),
            files: BTreeMap::new(),
        }
    }

    /// The recorded chunks of `path`, if the file on disk is exactly the one recorded.
    pub fn unchanged(&self, path: &Path) -> Option<&[RecordedChunk]> {
        let f = self.files.get(&path.display().to_string())?;
        (FileIdentity::of(path) == Some(f.identity)).then_some(&f.chunks[..])
    }
}

/// Store key of the record for restores of `server` into `target_dir`.
pub fn key(server: &str, target_dir: &Path) -> String {
    let h = Sha256::digest(target_dir.display().to_string().as_bytes());
    format!("{server}/restores/{}.json", crate::util::hex::to_hex(&h))
}

/// The record of the last finished restore into `target_dir`, or `None` (logged when one was
/// there but unusable).
pub fn load(store: &dyn ObjectStore, server: &str, target_dir: &Path) -> Option<RestoreRecord> {
    let key = key(server, target_dir);
    let bytes = match store.get(&key) {
        Ok(b) => b?,
        Err(e) => {
            tracing::info!(record = %key, error = %e, "cannot read the record of the last restore here; every existing file will be read");
            return None;
        }
    };
    match decode(&bytes, target_dir) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(record = %key, error = %e, "ignoring an unreadable restore record; every existing file will be read");
            None
        }
    }
}

/// Parses a stored record: `Ok(None)` when it is of another format or for another directory.
pub fn decode(bytes: &[u8], target_dir: &Path) -> Result<Option<RestoreRecord>, serde_json::Error> {
    let r: RestoreRecord = serde_json::from_slice(bytes)?;
    Ok((r.format == FORMAT && r.target_dir == target_dir.display().to_string()).then_some(r))
}

/// Removes the record durably. Called before a restore writes anything: from then on the old
/// record no longer describes the directory, and a crash (a power loss can even bring back old
/// timestamps over new bytes: inode times reach the disk with the next journal commit, direct
/// writes at once) must never leave it behind to vouch for files this restore changed.
pub fn remove(store: &dyn ObjectStore, server: &str, target_dir: &Path) -> io::Result<()> {
    store.delete(&key(server, target_dir))
}

/// Replaces the record atomically.
pub fn save(store: &dyn ObjectStore, server: &str, record: &RestoreRecord) -> io::Result<()> {
    let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
    store.put(&key(server, Path::new(&record.target_dir)), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    #[test]
    fn any_change_to_a_file_breaks_its_identity() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let id = FileIdentity::of(&p).unwrap();
        assert_eq!(FileIdentity::of(&p), Some(id));
        // Same bytes written again: the times move.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"abc").unwrap();
        assert_ne!(FileIdentity::of(&p), Some(id));
        let id = FileIdentity::of(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(FileIdentity::of(&p), Some(id), "a chmod changes the ctime");
        std::os::unix::fs::symlink(&p, d.path().join("l")).unwrap();
        assert_eq!(FileIdentity::of(&d.path().join("l")), None, "links are not files");
    }

    #[test]
    fn round_trip_and_foreign_records() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let target = d.path().join("data");
        std::fs::create_dir(&target).unwrap();
        let file = target.join("PG_VERSION");
        std::fs::write(&file, b"15\n").unwrap();
        let mut r = RestoreRecord::new(&target, "20261201T000000Z");
        let chunks = vec![RecordedChunk {
            object: "ab/abcd.zst".into(),
            size: 3,
            crc32c: 7,
        }];
        r.files.insert(
            file.display().to_string(),
            RecordedFile {
                identity: FileIdentity::of(&file).unwrap(),
                chunks: chunks.clone(),
            },
        );
        save(&store, "main", &r).unwrap();
        let back = load(&store, "main", &target).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.unchanged(&file), Some(&chunks[..]));
        assert_eq!(back.unchanged(&target.join("other")), None);
        assert!(load(&store, "main", &d.path().join("elsewhere")).is_none());
        assert!(load(&store, "other", &target).is_none());
        // Garbage under the key: ignored, not an error.
        store.put(&key("main", &target), b"{not json").unwrap();
        assert!(load(&store, "main", &target).is_none());
    }
}
