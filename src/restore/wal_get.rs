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
//! Prefetch: after serving segment N, a detached `pgark wal-prefetch` process decompresses the next
//! `PREFETCH_AHEAD` complete segments into `pg_wal/pgark_prefetch/` (beside the path recovery asks
//! for, so handing one over is a rename), while PostgreSQL replays N. WAL fetch is where restores
//! are usually slow; this keeps it off the replay's critical path. Only complete, immutable
//! segments are prefetched (never the open `.partial`); the spool is emptied when recovery asks
//! for a segment the catalog does not have (the end of the archive).
//!
//! Exit status follows PostgreSQL's rules: 0 served; 1 not in the catalog (recovery treats that
//! as "end of archive" and moves on); 126 when the file exists but is damaged or cannot be read,
//! which PostgreSQL treats like a failed command and stops recovery, rather than ending it early
//! and silently losing the WAL that follows.

use crate::catalog::segment_file::{self, SegmentChecksum};
use crate::catalog::store::ObjectStore;
use crate::catalog::Layout;
use crate::fsio::durable;
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
///
/// A running `pgark serve` moves a segment forward while we look (`.partial` renamed to its full
/// name, then compressed to `.zst` and the plain file removed), so a single pass over the three
/// forms can miss a segment that exists. Moves only go forward, so another pass finds it; only a
/// segment absent in several passes is reported absent (which ends recovery's archive).
pub fn fetch(store: &dyn ObjectStore, server: &str, name: &str) -> Result<Vec<u8>, WalGetError> {
    if !is_wal_name(name) || name.contains('/') {
        return Err(WalGetError::BadName(name.to_string()));
    }
    let mut passes = 0;
    loop {
        match fetch_once(store, server, name) {
            Err(WalGetError::Absent { .. }) if passes < 2 => passes += 1,
            other => return other,
        }
    }
}

fn fetch_once(store: &dyn ObjectStore, server: &str, name: &str) -> Result<Vec<u8>, WalGetError> {
    let dir = Layout::wal_key(server);
    let damaged = |reason: String| WalGetError::Damaged {
        name: name.to_string(),
        reason,
    };
    if let Some(stored) = store.get(&format!("{dir}/{name}.zst"))? {
        return segment_file::decompress(&stored).map_err(|e| damaged(e.to_string()));
    }
    // A plain segment may be recycled (renamed to a spare and overwritten) the moment its
    // `.zst` exists: read only if it stayed itself, else the next pass finds the `.zst`.
    if let Some(plain) = store.get_unrecycled(&format!("{dir}/{name}"))? {
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
    // Its file becomes the complete segment, and may then be recycled: read only if it stayed
    // itself (else the next pass finds the complete segment).
    if let Some(partial) = store.get_unrecycled(&format!("{dir}/{name}.partial"))? {
        return Ok(partial);
    }
    // In a repository the open segment is a compressed snapshot (see `offsite::upload`).
    if let Some(stored) = store.get(&format!("{dir}/{name}.partial.zst"))? {
        return segment_file::decompress(&stored).map_err(|e| damaged(e.to_string()));
    }
    Err(WalGetError::Absent {
        server: server.to_string(),
        name: name.to_string(),
    })
}

/// Serves `name` into `dest` (temp name, rename). Nothing is written when it is absent.
pub fn wal_get(store: &dyn ObjectStore, server: &str, name: &str, dest: &Path) -> Result<u64, WalGetError> {
    let data = fetch(store, server, name)?;
    durable::write_renamed_unsynced(dest, |f| std::io::Write::write_all(f, &data))?;
    Ok(data.len() as u64)
}

/// Segments decompressed ahead of recovery.
pub const PREFETCH_AHEAD: u64 = 8;
/// Spool directory, inside the directory recovery restores into (pg_wal).
pub const PREFETCH_DIR: &str = "pgark_prefetch";

fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The segment after `name` on the same timeline (24 hex digits: timeline, log, seg; the
/// segment-number split depends on the segment size, so the caller passes it).
pub fn next_segment(name: &str, seg_size: u64) -> Option<String> {
    if !is_segment(name) || seg_size == 0 {
        return None;
    }
    let per_log = 0x1_0000_0000u64 / seg_size;
    let tli = &name[..8];
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let n = log * per_log + seg + 1;
    Some(format!("{tli}{:08X}{:08X}", n / per_log, n % per_log))
}

/// Serves `name` as restore_command, using and refilling the prefetch spool beside `dest`.
/// `spawn_prefetch` starts the background filler (a detached process in production).
pub fn serve(
    store: &dyn ObjectStore,
    server: &str,
    name: &str,
    dest: &Path,
    spawn_prefetch: &dyn Fn(&Path, &str),
) -> Result<u64, WalGetError> {
    let spool = dest.parent().map(|p| p.join(PREFETCH_DIR));
    if let (Some(spool), true) = (&spool, is_segment(name)) {
        let ready = spool.join(name);
        if let Ok(meta) = std::fs::metadata(&ready) {
            if std::fs::rename(&ready, dest).is_ok() {
                trim_spool(spool, name);
                spawn_prefetch(spool, name);
                return Ok(meta.len());
            }
        }
    }
    match wal_get(store, server, name, dest) {
        Ok(n) => {
            if let (Some(spool), true) = (&spool, is_segment(name)) {
                trim_spool(spool, name);
                spawn_prefetch(spool, name);
            }
            Ok(n)
        }
        Err(e) => {
            if let (Some(spool), WalGetError::Absent { .. }, true) = (&spool, &e, is_segment(name)) {
                // The end of the archive: nothing more to prefetch.
                let _ = std::fs::remove_dir_all(spool);
            }
            Err(e)
        }
    }
}

/// Removes spooled segments recovery has passed.
fn trim_spool(spool: &Path, current: &str) {
    if let Ok(entries) = std::fs::read_dir(spool) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if is_segment(&n) && n.as_str() < current {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The prefetcher: fills `spool` with the complete segments after `after`, up to
/// `PREFETCH_AHEAD`, one process at a time (flock on the spool), each file under a temporary
/// name and renamed. Stops at the first segment the catalog does not hold complete.
pub fn prefetch(store: &dyn ObjectStore, server: &str, after: &str, spool: &Path, seg_size: u64) -> Result<usize, WalGetError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(spool)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.join(".lock"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(0); // another prefetcher is at work
    }
    let dir = Layout::wal_key(server);
    let mut name = after.to_string();
    let mut fetched = 0;
    for _ in 0..PREFETCH_AHEAD {
        let Some(next) = next_segment(&name, seg_size) else { break };
        name = next;
        let out = spool.join(&name);
        if out.exists() {
            continue;
        }
        let complete = store.size(&format!("{dir}/{name}.zst"))?.is_some() || store.size(&format!("{dir}/{name}"))?.is_some();
        if !complete {
            break;
        }
        let data = fetch(store, server, &name)?;
        // Durable: a spooled segment is trusted when recovery asks for it, also after an OS
        // crash in between (written in the background, so the fsync costs recovery nothing).
        durable::write_atomic(&out, &data)?;
        fetched += 1;
    }
    Ok(fetched)
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

    /// Audit finding 4: a plain segment recycled while wal-get reads it (renamed to a spare and
    /// overwritten with another segment's WAL) is never served: wal-get serves the `.zst` or
    /// nothing, never the other segment's bytes.
    #[test]
    fn a_plain_segment_recycled_while_read_is_never_served() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let wal = d.path().join("main/wal");
        std::fs::create_dir_all(&wal).unwrap();
        let name = "000000010000000000000002";
        let good: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut z = Vec::new();
        segment_file::compress_into(&good, 1, &mut z).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        /// Stops the writer thread also when an assertion fails (else the scope never ends).
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            // The archiver and the receiver: plain file appears, .zst published, the plain inode
            // renamed to a spare and overwritten in place; then it starts over.
            s.spawn(|| {
                let garbage = vec![0xEEu8; good.len()];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::write(wal.join("tmp"), &good).unwrap();
                    std::fs::rename(wal.join("tmp"), wal.join(name)).unwrap();
                    store.put(&format!("main/wal/{name}.zst"), &z).unwrap();
                    std::fs::rename(wal.join(name), wal.join("spare")).unwrap();
                    let f = std::fs::OpenOptions::new().write(true).open(wal.join("spare")).unwrap();
                    std::os::unix::fs::FileExt::write_all_at(&f, &garbage, 0).unwrap();
                    std::fs::remove_file(wal.join(format!("{name}.zst"))).unwrap();
                }
            });
            let _stop = StopOnDrop(&stop);
            let mut served = 0;
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(3) {
                if let Ok(b) = fetch(&store, "main", name) {
                    assert!(b == good, "served another segment's bytes as {name}");
                    served += 1;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(served > 0, "nothing was ever served");
        });
    }

    #[test]
    fn next_segment_names() {
        let s16 = 16 * 1024 * 1024;
        assert_eq!(next_segment("000000010000000000000002", s16).unwrap(), "000000010000000000000003");
        assert_eq!(next_segment("0000000100000000000000FF", s16).unwrap(), "000000010000000100000000");
        assert_eq!(
            next_segment("000000020000000A0000003F", 64 * 1024 * 1024).unwrap(),
            "000000020000000B00000000"
        );
        assert!(next_segment("00000002.history", s16).is_none());
    }

    #[test]
    fn prefetch_fills_the_spool_and_serve_uses_it() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path().join("cat"));
        let s16 = 16 * 1024 * 1024;
        for n in 2..6u8 {
            let mut z = Vec::new();
            segment_file::compress_into(&[n; 1000], 1, &mut z).unwrap();
            store.put(&format!("main/wal/0000000100000000000000{n:02X}.zst"), &z).unwrap();
        }
        store.put("main/wal/000000010000000000000006.partial", b"open").unwrap();
        let pg_wal = d.path().join("pg_wal");
        std::fs::create_dir_all(&pg_wal).unwrap();
        let spool = pg_wal.join(PREFETCH_DIR);
        assert_eq!(
            prefetch(&store, "main", "000000010000000000000002", &spool, s16).unwrap(),
            3,
            "3, 4, 5; never the partial"
        );
        let dest = pg_wal.join("RECOVERYXLOG");
        let spawned = std::cell::Cell::new(0);
        let spawn = |_: &Path, _: &str| spawned.set(spawned.get() + 1);
        serve(&store, "main", "000000010000000000000003", &dest, &spawn).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), vec![3u8; 1000]);
        assert!(!spool.join("000000010000000000000003").exists(), "handed over by rename");
        assert_eq!(spawned.get(), 1);
        assert!(serve(&store, "main", "000000010000000000000009", &dest, &spawn).is_err());
        assert!(!spool.exists(), "the spool goes at the end of the archive");
    }
}
