//! `pgark wal-get`: PostgreSQL's restore_command. Serves one WAL segment or history file from the
//! catalog into the path recovery asks for: decompressed and verified, written under a temporary
//! name and renamed, so recovery never reads a half-written file. No fsync: the file is a
//! working copy that recovery reads at once and deletes (it fetches it again after a crash), as
//! with PostgreSQL's own `cp` examples.
//!
//! The open `.partial` segment is served under its full name when recovery asks for it: it is
//! full-size (preallocated, zeros after the last flushed byte), so recovery replays up to the last
//! acknowledged commit and then finds the end of WAL, exactly as with a standby's own pg_wal.
//!
//! Exit status follows PostgreSQL's rules: 0 served; 1 not in the catalog (recovery treats that
//! as "end of archive" and moves on); 126 when the file exists but is damaged or cannot be read,
//! which PostgreSQL treats like a failed command and stops recovery, rather than ending it early
//! and silently losing the WAL that follows.

use crate::catalog::segment_file::{self, SegmentChecksum};
use crate::catalog::store::ObjectStore;
use crate::catalog::{fsutil, Layout};
use std::path::Path;

pub const SERVED: i32 = 0;
pub const ABSENT: i32 = 1;
/// Above 125: PostgreSQL aborts recovery instead of taking it as the end of the archive.
pub const DAMAGED: i32 = 126;

#[derive(Debug, thiserror::Error)]
pub enum WalGetError {
    #[error("{name} is not in the catalog of server {server}")]
    Absent { server: String, name: String },
    #[error("{name} in the catalog is damaged: {reason}; recovery must not go on without it")]
    Damaged { name: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0:?} is not a WAL segment, .partial or .history file name")]
    BadName(String),
}

impl WalGetError {
    pub fn exit_code(&self) -> i32 {
        match self {
            WalGetError::Absent { .. } | WalGetError::BadName(_) => ABSENT,
            _ => DAMAGED,
        }
    }
}

fn is_wal_name(name: &str) -> bool {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    (base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit()))
        || (name.len() == 16 && name.ends_with(".history") && name[..8].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The bytes of `name` from the catalog, verified.
pub fn fetch(store: &dyn ObjectStore, server: &str, name: &str) -> Result<Vec<u8>, WalGetError> {
    if !is_wal_name(name) || name.contains('/') {
        return Err(WalGetError::BadName(name.to_string()));
    }
    let dir = Layout::wal_key(server);
    let damaged = |reason: String| WalGetError::Damaged {
        name: name.to_string(),
        reason,
    };
    if let Some(stored) = store.get(&format!("{dir}/{name}.zst"))? {
        return segment_file::decompress(&stored).map_err(|e| damaged(e.to_string()));
    }
    if let Some(plain) = store.get(&format!("{dir}/{name}"))? {
        if let Some(sum) = store.get(&format!("{dir}/{name}.sum"))? {
            let expected = SegmentChecksum::from_sum_text(&String::from_utf8_lossy(&sum))
                .ok_or_else(|| damaged(format!("{name}.sum is unreadable")))?;
            segment_file::verify(&plain, expected).map_err(|e| damaged(e.to_string()))?;
        }
        return Ok(plain);
    }
    // The segment still being written (or the last one of an ended timeline): served under its
    // full name. It is a snapshot: what the receiver had flushed (and more, possibly unflushed,
    // which is harmless: recovery validates every record's CRC and stops at the first bad one).
    if let Some(partial) = store.get(&format!("{dir}/{name}.partial"))? {
        return Ok(partial);
    }
    Err(WalGetError::Absent {
        server: server.to_string(),
        name: name.to_string(),
    })
}

/// Serves `name` into `dest` (temp name, rename). Nothing is written when it is absent.
pub fn wal_get(store: &dyn ObjectStore, server: &str, name: &str, dest: &Path) -> Result<u64, WalGetError> {
    let data = fetch(store, server, name)?;
    fsutil::write_renamed_unsynced(dest, |f| std::io::Write::write_all(f, &data))?;
    Ok(data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    #[test]
    fn serves_compressed_plain_partial_and_history() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let seg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut z = Vec::new();
        segment_file::compress_into(&seg, 1, &mut z).unwrap();
        store.put("main/wal/000000010000000000000002.zst", &z).unwrap();
        store.put("main/wal/000000010000000000000003", b"plain").unwrap();
        store.put("main/wal/000000010000000000000004.partial", b"partial").unwrap();
        store
            .put("main/wal/00000002.history", b"1\t0/3000000\tno recovery target specified\n")
            .unwrap();
        let out = d.path().join("out");
        assert_eq!(wal_get(&store, "main", "000000010000000000000002", &out).unwrap(), 100_000);
        assert_eq!(std::fs::read(&out).unwrap(), seg);
        assert_eq!(fetch(&store, "main", "000000010000000000000003").unwrap(), b"plain");
        assert_eq!(fetch(&store, "main", "000000010000000000000004").unwrap(), b"partial");
        assert!(fetch(&store, "main", "00000002.history").is_ok());

        let missing = d.path().join("missing");
        let e = wal_get(&store, "main", "000000010000000000000009", &missing).unwrap_err();
        assert_eq!(e.exit_code(), ABSENT);
        assert!(!missing.exists(), "nothing may be written for an absent segment");

        let n = z.len();
        z[n - 20] ^= 0xff;
        store.put("main/wal/000000010000000000000002.zst", &z).unwrap();
        let e = fetch(&store, "main", "000000010000000000000002").unwrap_err();
        assert_eq!(e.exit_code(), DAMAGED, "{e}");
        assert_eq!(fetch(&store, "main", "../../etc/passwd").unwrap_err().exit_code(), ABSENT);
    }
}
