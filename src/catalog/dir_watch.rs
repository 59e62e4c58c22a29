//! Whether directories of the local catalog may have changed since the last look, from one stat
//! each. Periodic passes (the uploader's every 250 ms, the continuity index's every 15 s) skip
//! listing a directory whose names cannot have changed, so that their cost follows the catalog's
//! changes, not its size. The usage walk (`usage`) applies the same racy rule to its own cache.
//!
//! A directory's mtime moves with every name created, renamed or removed in it, not with writes
//! into its files: a watch answers "the same names", never "the same contents". The ctime, inode
//! and device are compared too, so a directory replaced, or whose mtime was set back (`rsync -a`,
//! `touch -d`), still counts as changed. Timestamps advance by the clock tick, not per change, so
//! a directory changed within the last `RACY_SECS` may change again without its times moving:
//! such a stamp is not trusted, and the next look reports a change (git's "racily clean" rule).

use crate::fsio::durable::ctx;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Seconds after its last change during which a directory's mtime is not trusted.
pub const RACY_SECS: i64 = 2;

/// A directory's mtime (seconds, nanoseconds) when it can be trusted to move with the next
/// change of its names; `None` while it changed less than `racy_secs` ago.
pub fn trusted_mtime(meta: &std::fs::Metadata, racy_secs: i64) -> Option<(i64, i64)> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    (now - meta.mtime() >= racy_secs).then(|| (meta.mtime(), meta.mtime_nsec()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    /// Never looked at, or looked at while it was changing (or by a caller that failed to list
    /// it): the next look reports a change.
    Untrusted,
    Missing,
    /// mtime and ctime (seconds, nanoseconds), inode, device.
    At((i64, i64), (i64, i64), u64, u64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata, racy_secs: i64) -> Stamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(i64::MAX, |d| d.as_secs() as i64);
        if now - meta.mtime().max(meta.ctime()) < racy_secs {
            return Stamp::Untrusted;
        }
        Stamp::At(
            (meta.mtime(), meta.mtime_nsec()),
            (meta.ctime(), meta.ctime_nsec()),
            meta.ino(),
            meta.dev(),
        )
    }
}

/// A set of directories watched together (a server's WAL directory, its backups directory...).
#[derive(Clone, Debug)]
pub struct DirWatch {
    dirs: Vec<(PathBuf, Stamp)>,
    racy_secs: i64,
}

impl DirWatch {
    pub fn new(dirs: Vec<PathBuf>) -> DirWatch {
        DirWatch {
            dirs: dirs.into_iter().map(|d| (d, Stamp::Untrusted)).collect(),
            racy_secs: RACY_SECS,
        }
    }

    /// `racy_secs` other than `RACY_SECS` (tests that change directories faster).
    pub fn with_racy_secs(mut self, racy_secs: i64) -> DirWatch {
        self.racy_secs = racy_secs;
        self
    }

    /// Whether any of the directories may have changed since the last call. Called *before*
    /// the caller lists them, so that a change made after this look is reported by the next
    /// one; a caller whose listing then fails calls `forget`.
    pub fn changed(&mut self) -> io::Result<bool> {
        let mut changed = false;
        for (dir, known) in &mut self.dirs {
            let now = match std::fs::metadata(&*dir) {
                Ok(m) => Stamp::of(&m, self.racy_secs),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Stamp::Missing,
                Err(e) => {
                    *known = Stamp::Untrusted;
                    return Err(ctx("stat", dir)(e));
                }
            };
            changed |= now == Stamp::Untrusted || *known == Stamp::Untrusted || now != *known;
            *known = now;
        }
        Ok(changed)
    }

    /// The next `changed` reports a change (what the caller derived from a listing is lost).
    pub fn forget(&mut self) {
        for (_, s) in &mut self.dirs {
            *s = Stamp::Untrusted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_changes_of_names_only_once_each() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let mut w = DirWatch::new(vec![a.clone(), t.path().to_path_buf()]).with_racy_secs(0);
        // Each change in a clock tick of its own (mtimes are coarse: that is the racy case).
        let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(w.changed().unwrap(), "the first look is a change");
        assert!(!w.changed().unwrap());
        tick();
        std::fs::create_dir(&a).unwrap();
        assert!(w.changed().unwrap(), "a directory that appeared");
        assert!(!w.changed().unwrap());
        tick();
        std::fs::write(a.join("x"), b"1").unwrap();
        assert!(w.changed().unwrap(), "a file created");
        assert!(!w.changed().unwrap());
        // Writing into an existing file is not a change of names.
        std::fs::write(a.join("x"), b"22").unwrap();
        assert!(!w.changed().unwrap());
        tick();
        std::fs::rename(a.join("x"), a.join("y")).unwrap();
        assert!(w.changed().unwrap(), "a rename");
        w.forget();
        assert!(w.changed().unwrap(), "after forget");
        tick();
        // Its mtime set back to what it was: the ctime still moved.
        tick();
        let before = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(a.join("z"), b"1").unwrap();
        std::fs::File::open(&a).unwrap().set_modified(before).unwrap();
        assert!(w.changed().unwrap(), "a change hidden by setting the mtime back");
        tick();
        std::fs::remove_file(a.join("y")).unwrap();
        std::fs::remove_file(a.join("z")).unwrap();
        std::fs::remove_dir(&a).unwrap();
        assert!(w.changed().unwrap(), "a directory that went away");
    }

    /// A directory changed within the racy window is reported as changed at every look until
    /// its mtime is old enough to be trusted: a change in the same clock tick is not missed.
    #[test]
    fn a_recent_change_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let mut w = DirWatch::new(vec![t.path().to_path_buf()]);
        std::fs::write(t.path().join("x"), b"1").unwrap();
        assert!(w.changed().unwrap());
        assert!(w.changed().unwrap(), "changed less than RACY_SECS ago: not trusted");
    }
}
