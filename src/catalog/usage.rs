//! How much of the catalog each server uses (WAL, backups) and how well its WAL compresses
//! there: the inputs of the catalog metrics and of the time-to-full projection.

use super::backup_store;
use super::store::{ObjectStore, Usage};
use super::Layout;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One server's share of the catalog.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerUsage {
    pub wal: Usage,
    pub backups: Usage,
    /// Stored bytes per WAL byte for compressed segments (`None` before the first one).
    pub wal_stored_ratio: Option<f64>,
}

pub fn server_usage(store: &dyn ObjectStore, server: &str) -> io::Result<ServerUsage> {
    let wal_key = Layout::wal_key(server);
    let wal = store.usage(&wal_key)?;
    let backups = add(
        store.usage(&backup_store::chunks_key(server))?,
        store.usage(&backup_store::backups_key(server))?,
    );
    let seg = super::state::load(store, server).ok().flatten().map(|s| s.wal_segment_size);
    let mut compressed = Usage::default();
    if let Some(seg) = seg {
        for key in store.list(&wal_key)? {
            if key.ends_with(".zst") {
                if let Some(size) = store.size(&key)? {
                    compressed.objects += 1;
                    compressed.bytes += size;
                }
            }
        }
        return Ok(ServerUsage {
            wal,
            backups,
            wal_stored_ratio: stored_ratio(compressed, seg),
        });
    }
    Ok(ServerUsage {
        wal,
        backups,
        wal_stored_ratio: None,
    })
}

/// Directory trees' usage kept between walks (the daemon's catalog watch), so that a walk costs
/// about what changed, not one stat per file of the catalog:
/// - a directory whose mtime is the same as at the last walk has the same names: it is not
///   listed again, unless it had changed less than 2 s before that walk (see `refresh`);
/// - objects written once under their final name (chunks, compressed WAL segments: `.zst`,
///   `.raw`) keep the size recorded when first seen;
/// - every other file (an open `.partial` segment grows in place; small state files are
///   replaced) is stat'ed at each walk, as before.
pub struct UsageCache {
    dirs: HashMap<PathBuf, CachedDir>,
    seen: HashSet<PathBuf>,
    /// Files stat'ed by the last walk (for tests and the debug log).
    pub stats: u64,
    /// `RACY_SECS`, or 0 in tests that change directories between walks faster than that.
    racy_secs: i64,
}

impl Default for UsageCache {
    fn default() -> Self {
        UsageCache {
            dirs: HashMap::new(),
            seen: HashSet::new(),
            stats: 0,
            racy_secs: super::dir_watch::RACY_SECS,
        }
    }
}

#[derive(Default)]
struct CachedDir {
    mtime: (i64, i64),
    files: HashMap<OsString, FileSize>,
    subdirs: Vec<PathBuf>,
}

#[derive(Clone, Copy, Default)]
struct FileSize {
    /// Allocated bytes (what the filesystem gives up), as `ObjectStore::usage` counts.
    allocated: u64,
    len: u64,
}

/// The mtime remembered for a listing the next walk must not trust (no directory has it).
const NOT_TRUSTED: (i64, i64) = (i64::MIN, -1);

fn written_once(name: &OsString) -> bool {
    let n = name.as_encoded_bytes();
    n.ends_with(b".zst") || n.ends_with(b".raw")
}

impl UsageCache {
    /// Starts a round of walks: directories no walk of the round visits are forgotten at `end_round`.
    pub fn begin_round(&mut self) {
        self.seen.clear();
        self.stats = 0;
    }

    pub fn end_round(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        self.dirs.retain(|d, _| seen.contains(d));
        self.seen = seen;
    }

    /// Objects and allocated bytes under `root` (absent: nothing).
    pub fn usage(&mut self, root: &Path) -> io::Result<Usage> {
        let mut total = Usage::default();
        self.each_file(root, &mut |_, s| {
            total.objects += 1;
            total.bytes += s.allocated;
        })?;
        Ok(total)
    }

    /// Files directly in `dir` whose name ends with `suffix`: how many, and their apparent bytes.
    fn lengths(&self, dir: &Path, suffix: &str) -> Usage {
        let mut u = Usage::default();
        if let Some(d) = self.dirs.get(dir) {
            for (name, s) in &d.files {
                if name.as_encoded_bytes().ends_with(suffix.as_bytes()) {
                    u.objects += 1;
                    u.bytes += s.len;
                }
            }
        }
        u
    }

    fn each_file(&mut self, root: &Path, f: &mut dyn FnMut(&OsString, FileSize)) -> io::Result<()> {
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            if !self.refresh(&dir)? {
                continue;
            }
            if let Some(d) = self.dirs.get(&dir) {
                for (name, s) in &d.files {
                    f(name, *s);
                }
                pending.extend(d.subdirs.iter().cloned());
            }
        }
        Ok(())
    }

    /// Brings one directory's entry up to date; false when it does not exist.
    fn refresh(&mut self, dir: &Path) -> io::Result<bool> {
        use crate::fsio::durable::ctx;
        // The mtime first: a change after this look is seen by the next walk.
        let meta = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ctx("stat", dir)(e)),
        };
        self.seen.insert(dir.to_path_buf());
        let mtime = (meta.mtime(), meta.mtime_nsec());
        // A directory changed within the last `RACY` may change again without its mtime moving
        // (timestamps advance by the clock tick, not per change): its listing is not trusted
        // by the next walk, which lists it again (git's "racily clean" rule).
        let remembered = super::dir_watch::trusted_mtime(&meta, self.racy_secs).unwrap_or(NOT_TRUSTED);
        let known = self.dirs.remove(dir);
        let mut entry = match known {
            Some(d) if d.mtime == mtime => {
                // Same names; only files that change in place are looked at again.
                let mut d = d;
                for (name, size) in d.files.iter_mut().filter(|(n, _)| !written_once(n)) {
                    self.stats += 1;
                    match std::fs::symlink_metadata(dir.join(name)) {
                        Ok(m) => *size = sizes(&m),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(ctx("stat", &dir.join(name))(e)),
                    }
                }
                d
            }
            old => {
                let old_files = old.map(|d| d.files).unwrap_or_default();
                let mut d = CachedDir {
                    mtime: remembered,
                    ..CachedDir::default()
                };
                let entries = std::fs::read_dir(dir).map_err(ctx("list", dir))?;
                for e in entries {
                    let e = e.map_err(ctx("list", dir))?;
                    let name = e.file_name();
                    if let Some(s) = old_files.get(&name).filter(|_| written_once(&name)) {
                        d.files.insert(name, *s);
                        continue;
                    }
                    self.stats += 1;
                    // Removed between readdir and stat (compression, garbage collection): gone.
                    let m = match e.metadata() {
                        Ok(m) => m,
                        Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(ctx("stat", &e.path())(err)),
                    };
                    if m.is_dir() {
                        d.subdirs.push(e.path());
                    } else if m.is_file() {
                        d.files.insert(name, sizes(&m));
                    }
                }
                d
            }
        };
        entry.files.shrink_to_fit();
        self.dirs.insert(dir.to_path_buf(), entry);
        Ok(true)
    }
}

fn sizes(m: &std::fs::Metadata) -> FileSize {
    FileSize {
        allocated: m.blocks() * 512,
        len: m.len(),
    }
}

/// `server_usage` for a local catalog through `cache`: the same numbers, at the cost of what
/// changed since the last walk.
pub fn server_usage_cached(cache: &mut UsageCache, layout: &Layout, store: &dyn ObjectStore, server: &str) -> io::Result<ServerUsage> {
    let server_dir = layout.server_dir(server);
    let wal_dir = layout.root().join(Layout::wal_key(server));
    let wal = cache.usage(&wal_dir)?;
    let backups = add(cache.usage(&server_dir.join("chunks"))?, cache.usage(&server_dir.join("backups"))?);
    let seg = super::state::load(store, server).ok().flatten().map(|s| s.wal_segment_size);
    Ok(ServerUsage {
        wal,
        backups,
        wal_stored_ratio: seg.and_then(|seg| stored_ratio(cache.lengths(&wal_dir, ".zst"), seg)),
    })
}

fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        objects: a.objects + b.objects,
        bytes: a.bytes + b.bytes,
    }
}

/// Stored bytes per original byte over `compressed` segments of `segment_size` bytes each.
pub fn stored_ratio(compressed: Usage, segment_size: u64) -> Option<f64> {
    if compressed.objects == 0 || segment_size == 0 {
        return None;
    }
    Some(compressed.bytes as f64 / (compressed.objects as f64 * segment_size as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    /// The cached walk gives what the full walk gives, and stats only what changed.
    #[test]
    fn cached_walk_matches_and_stats_only_changes() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let layout = Layout::new(d.path());
        let wal = d.path().join(Layout::wal_key("main"));
        let chunks = d.path().join("main/chunks");
        std::fs::create_dir_all(&wal).unwrap();
        for i in 0..40 {
            let sub = chunks.join(format!("{:02x}", i % 4));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("{i:064x}.zst")), vec![1u8; 5000 + i]).unwrap();
            std::fs::write(wal.join(format!("{:024X}.zst", i + 1)), vec![2u8; 100 + i]).unwrap();
        }
        std::fs::write(wal.join("000000010000000000000099.partial"), vec![0u8; 10]).unwrap();
        let full = |s: &LocalStore| server_usage(s, "main").unwrap();
        let mut cache = UsageCache {
            racy_secs: 0,
            ..UsageCache::default()
        };
        let round = |cache: &mut UsageCache| {
            cache.begin_round();
            let u = server_usage_cached(cache, &layout, &store, "main").unwrap();
            cache.end_round();
            (u, cache.stats)
        };
        let (u, first) = round(&mut cache);
        assert_eq!(u, full(&store));
        assert!(first >= 81, "the first walk stats everything ({first})");
        let (u, second) = round(&mut cache);
        assert_eq!(u, full(&store));
        assert_eq!(second, 1, "nothing changed: only the partial is looked at again");
        // The partial grows in place; one new segment, one chunk removed.
        std::fs::write(wal.join("000000010000000000000099.partial"), vec![0u8; 9000]).unwrap();
        std::fs::write(wal.join(format!("{:024X}.zst", 77)), vec![3u8; 321]).unwrap();
        std::fs::remove_file(chunks.join("00").join(format!("{:064x}.zst", 0))).unwrap();
        let (u, third) = round(&mut cache);
        assert_eq!(u, full(&store));
        assert!(third <= 4, "{third} stats for two changes");
        std::fs::remove_dir_all(&chunks).unwrap();
        let (u, _) = round(&mut cache);
        assert_eq!(u, full(&store));
    }

    /// A file added right after a walk, maybe within the same clock tick (the directory's
    /// mtime unchanged), is seen by the next walk: a recently changed directory is listed again.
    #[test]
    fn a_change_within_the_same_tick_is_not_missed() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let layout = Layout::new(d.path());
        let wal = d.path().join(Layout::wal_key("main"));
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join(format!("{:024X}.zst", 1)), vec![2u8; 100]).unwrap();
        let mut cache = UsageCache::default();
        for i in 2..20 {
            cache.begin_round();
            server_usage_cached(&mut cache, &layout, &store, "main").unwrap();
            cache.end_round();
            std::fs::write(wal.join(format!("{:024X}.zst", i)), vec![2u8; 100]).unwrap();
            cache.begin_round();
            let u = server_usage_cached(&mut cache, &layout, &store, "main").unwrap();
            cache.end_round();
            assert_eq!(u.wal.objects, i as u64, "a segment added after walk {i} was missed");
        }
    }

    #[test]
    fn ratio() {
        assert_eq!(stored_ratio(Usage::default(), 16 << 20), None);
        let r = stored_ratio(
            Usage {
                objects: 2,
                bytes: 16 << 20,
            },
            16 << 20,
        )
        .unwrap();
        assert!((r - 0.5).abs() < 1e-9);
    }
}
