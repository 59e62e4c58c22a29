//! Scratch files: data a command needs for a while and never again, kept out of every name.
//!
//! A scratch file has no name in the directory it lives in (`O_TMPFILE`), so neither a crash
//! nor a kill can leave it behind, and nothing that lists the directory (garbage collection,
//! stale-temp cleanup, usage walks) ever sees it. Where the filesystem cannot create unnamed
//! files, it is created under a unique name and unlinked at once: the same lifetime, with a
//! window of microseconds in which a crash would leave a `.scratch-<pid>-*` file (removed by the
//! next scratch file made in that directory once that process is gone).
//!
//! Never fsynced: its content is worth nothing after the process ends.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const NAMED_PREFIX: &str = ".scratch-";

/// A new, empty, unnamed file in `dir` (on `dir`'s filesystem), open for reading and writing.
pub fn unnamed_file(dir: &Path) -> io::Result<File> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("creating a scratch file in {}: {e}", dir.display()));
    match OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        // O_EXCL: the file can never be linked into a directory (through /proc/self/fd) either.
        .custom_flags(libc::O_TMPFILE | libc::O_EXCL)
        .open(dir)
    {
        Ok(f) => return Ok(f),
        // Unsupported here (EOPNOTSUPP, EISDIR on kernels without O_TMPFILE, EINVAL): a named
        // file instead. Anything else (no such directory, permissions, EIO) is the answer.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {}
        Err(e) => return Err(context(e)),
    }
    remove_leftovers(dir);
    let path = dir.join(format!("{NAMED_PREFIX}{}-{:016x}", std::process::id(), rand::random::<u64>()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(context)?;
    std::fs::remove_file(&path).map_err(context)?;
    Ok(f)
}

/// Named scratch files a crash left between their creation and their unlink: those of
/// processes that are gone (another live process's may be in that window right now).
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NAMED_PREFIX) else { continue };
        let owner = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if owner.is_none_or(|pid| !super::durable::process_alive(pid)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn leaves_no_name_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = unnamed_file(dir.path()).unwrap();
        f.write_all_at(b"changed blocks", 4096).unwrap();
        let mut buf = [0u8; 7];
        f.read_exact_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"changed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let e = unnamed_file(&gone).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn leftovers_of_a_crash_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that cannot be running (above the kernel's maximum), and this live process.
        std::fs::write(dir.path().join(".scratch-2147483646-00"), b"x").unwrap();
        let live = format!(".scratch-{}-00", std::process::id());
        std::fs::write(dir.path().join(&live), b"x").unwrap();
        std::fs::write(dir.path().join("keep"), b"x").unwrap();
        remove_leftovers(dir.path());
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from(live), std::ffi::OsString::from("keep")]);
    }
}
