//! The one place for crash-safety sequences: write under a temporary name, fsync the file,
//! rename, fsync the directory. Every durable publish in pgark goes through here.
//!
//! Rule of the catalog: a file under its final name is complete and durable. Anything half-built
//! carries the `.tmp` suffix and is removed on the next start.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Suffix of files being built; never read as data, swept at start.
pub const TMP_SUFFIX: &str = ".tmp";

/// Adds I/O context (what we did, on which path) to an error.
pub fn ctx<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The temporary sibling used while building `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// fsyncs a directory so that creations, renames and removals in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(ctx("fsync of directory", dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Renames `from` to `to` and fsyncs the directory (or both, if they differ). The caller must
/// already have fsynced `from`'s contents.
pub fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to).map_err(|e| io::Error::new(e.kind(), format!("rename {} to {}: {e}", from.display(), to.display())))?;
    fsync_dir(parent(to))?;
    if parent(from) != parent(to) {
        fsync_dir(parent(from))?;
    }
    Ok(())
}

/// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
/// A crash leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(data))
}

/// Like `write_atomic`, with the contents produced by `fill` (for streaming writers such as a
/// compressor). On any error the temporary file is removed.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    write_via_temp(&tmp_path(path), path, fill, true)
}

/// The shared sequence: create `tmp`, fill it, optionally fsync it, rename it to `path` (then
/// fsync the directory when durable); on any error `tmp` is removed.
fn write_via_temp(tmp: &Path, path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>, durable: bool) -> io::Result<()> {
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(ctx("create", tmp))?;
        fill(&mut f).map_err(ctx("write", tmp))?;
        if durable {
            f.sync_all().map_err(ctx("fsync", tmp))?;
        }
        drop(f);
        if durable {
            durable_rename(tmp, path)
        } else {
            std::fs::rename(tmp, path).map_err(|e| io::Error::new(e.kind(), format!("rename {} to {}: {e}", tmp.display(), path.display())))
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Writes `path` under a temporary name and renames it into place, with no fsync: the name
/// never shows half-written contents to a reader, but durability waits for `sync_filesystem`.
/// Whoever publishes something that refers to such files must sync first.
///
/// The temporary name is unique per call, so concurrent writers of the same content-addressed
/// name never trip over each other's temporary file (the last rename wins, with equal bytes).
pub fn write_renamed_unsynced(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{n}{TMP_SUFFIX}", std::process::id()));
    write_via_temp(&PathBuf::from(tmp), path, fill, false)
}

/// Flushes every file and directory of the filesystem that holds `dir` (syncfs(2)): one call
/// instead of an fsync per file after a bulk write.
pub fn sync_filesystem(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).map_err(ctx("open", dir))?;
    // SAFETY: syncfs takes a valid open descriptor, which `d` holds for the call's duration.
    let rc = unsafe { libc::syncfs(d.as_raw_fd()) };
    if rc != 0 {
        return Err(ctx("syncfs of the filesystem holding", dir)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Removes a file and fsyncs its directory; a file already gone is fine.
pub fn durable_remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => fsync_dir(parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("remove", path)(e)),
    }
}

/// Creates a directory (and parents) and fsyncs the parent so the new entry is durable.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(ctx("create directory", dir))?;
    fsync_dir(parent(dir))
}

/// fdatasync: the file's data (and the metadata needed to read it back, not its timestamps).
pub fn fdatasync(file: &File, path: &Path) -> io::Result<()> {
    file.sync_data().map_err(ctx("fdatasync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let failed = write_atomic_with(&p, |_| Err(io::Error::other("boom")));
        assert!(failed.unwrap_err().to_string().contains("boom"));
        assert!(!tmp_path(&p).exists(), "temporary file left behind");
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
    }
}
