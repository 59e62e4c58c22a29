//! The narrow storage interface for finished catalog objects (compressed segments, history
//! files, checksums), so that an S3-compatible or encrypting backend can replace the local
//! filesystem later without touching the receiver.
//!
//! Keys are relative paths with `/` separators, such as `main/wal/000000010000000000000003.zst`.
//! `put` is atomic and durable: after it returns, the object is complete under its key, and a
//! crash during it leaves no object at all. The open `.partial` segment is not an object: it is
//! the receiver's local spool, written in place for speed (see `wal_store`).

use crate::fsio::durable;
use crate::fsio::write_behind::WriteBehind;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub trait ObjectStore: Send + Sync + 'static {
    /// Stores what `fill` writes under `key`, atomically and durably, replacing any previous
    /// object. Streaming, so large objects never need to be held in memory.
    fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()>;
    /// Stores `data` under `key`, atomically and durably, replacing any previous object.
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.put_from(key, &mut |w| w.write_all(data))
    }
    /// Stores a content-addressed object (a backup chunk) once: when `key` exists already it is
    /// left untouched and `Ok(None)` returned, else the object is written, its data made durable,
    /// and `Ok(Some(stored bytes))` returned. Its name becomes durable at the next `sync`, which
    /// covers many objects at once (one directory fsync each, not one per object).
    fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>>;
    /// Makes durable the names of every object `put_once` stored so far.
    fn sync(&self) -> io::Result<()>;
    /// The object's size in bytes, or `None` if there is none.
    fn size(&self, key: &str) -> io::Result<Option<u64>>;
    /// The object's bytes, or `None` if there is none.
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Like `get`, for an object that may be recycled in place while it is read (a plain WAL
    /// segment: the archiver renames its file to a spare, which the receiver then overwrites):
    /// `None` unless the object stayed the same object for the whole read.
    fn get_unrecycled(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.get(key)
    }
    /// Keys directly under `prefix` (a "directory"), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Every key under `prefix`, at any depth, sorted. The default walks `list` level by level;
    /// object storage answers it with one request per thousand keys.
    fn list_all(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut todo = vec![prefix.trim_end_matches('/').to_string()];
        while let Some(p) = todo.pop() {
            for k in self.list(&p)? {
                // A "directory" lists children; an object lists nothing (or fails as not a
                // directory): both end the descent.
                match self.list(&k) {
                    Ok(children) if !children.is_empty() => todo.push(k),
                    _ => out.push(k),
                }
            }
        }
        out.sort();
        Ok(out)
    }
    /// Removes the object; removing a missing object succeeds. A store with object lock
    /// refuses a locked object (`ErrorKind::PermissionDenied`, with the date it is locked until).
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Until when (Unix seconds) the object is locked against deletion; `None`: not locked,
    /// which is every object of a store without object lock.
    fn locked_until(&self, _key: &str) -> io::Result<Option<i64>> {
        Ok(None)
    }
    /// A new backup reuses the stored object `key`: a store with object lock extends its lock
    /// to a full period from now (the backup needs it that long); other stores do nothing.
    fn retain(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }
    /// How many objects, and how many bytes, live under `prefix` at any depth.
    fn usage(&self, prefix: &str) -> io::Result<Usage>;
    /// Free and total bytes of the space objects are stored in, when the backend has a limit
    /// (a filesystem does; an object store bucket would answer `None`).
    fn capacity(&self) -> io::Result<Option<Capacity>>;
}

/// Objects and bytes under a prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
}

/// Room left where the catalog is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    /// Bytes an unprivileged writer can still use.
    pub free: u64,
    pub total: u64,
}

/// Free and total bytes of the filesystem holding `path` (statvfs; `free` is what an
/// unprivileged writer can use, as `df` reports it).
pub fn filesystem_capacity(path: &Path) -> io::Result<Capacity> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("statvfs {}: {e}", path.display())));
    }
    let unit = st.f_frsize as u64;
    Ok(Capacity {
        free: (st.f_bavail as u64).saturating_mul(unit),
        total: (st.f_blocks as u64).saturating_mul(unit),
    })
}

/// Objects as files under a root directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    direct: crate::fsio::direct::DirectSupport,
    /// Directories where `put_once` created names not yet fsynced.
    unsynced_dirs: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<PathBuf>>>,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into(),
            direct: Default::default(),
            unsynced_dirs: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key`. Keys are built by pgark, never taken from users or the network;
    /// `..` is still refused as a second line of defence.
    pub fn path(&self, key: &str) -> PathBuf {
        debug_assert!(!key.split('/').any(|c| c == ".."), "key {key:?} escapes the catalog");
        self.root.join(key)
    }
}

impl ObjectStore for LocalStore {
    /// From memory: the block-aligned part of `data` (a compressed segment built in an aligned
    /// buffer) is written directly, not through the page cache (see `fsio::direct`).
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            durable::create_dir_durable(dir)?;
        }
        // The direct descriptor must be opened on the temporary file being filled, never on the
        // final name (an object of that name may exist already, from before a crash).
        durable::write_atomic_at_tmp(&path, |f, tmp| {
            crate::fsio::direct::write_at(&self.direct, tmp, f, data, 0).map(|_| ())
        })
    }

    fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            durable::create_dir_durable(dir)?;
        }
        durable::write_atomic_with(&path, |f| {
            let mut w = io::BufWriter::with_capacity(256 * 1024, WriteBehind::new(f));
            fill(&mut w)?;
            w.flush()
        })
    }

    fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        durable::create_dir_durable(&dir)?;
        let mut stored = 0u64;
        let created = durable::write_once(&path, |f| {
            let mut w = io::BufWriter::with_capacity(256 * 1024, WriteBehind::new(f));
            fill(&mut w)?;
            w.flush()?;
            drop(w);
            stored = f.metadata()?.len();
            Ok(())
        })?;
        if !created {
            return Ok(None);
        }
        if let Ok(mut d) = self.unsynced_dirs.lock() {
            d.insert(dir);
        }
        Ok(Some(stored))
    }

    /// One fsync per directory `put_once` added names to: only what this store wrote is flushed
    /// (never a whole filesystem, and always the filesystem the objects are on, also when a
    /// volume is mounted inside the catalog; audit finding 3).
    fn sync(&self) -> io::Result<()> {
        let dirs: Vec<PathBuf> = match self.unsynced_dirs.lock() {
            Ok(d) => d.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        };
        for d in &dirs {
            durable::fsync_dir(d)?;
        }
        if let Ok(mut d) = self.unsynced_dirs.lock() {
            for x in &dirs {
                d.remove(x);
            }
        }
        Ok(())
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let path = self.path(key);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(durable::ctx("stat", &path)(e)),
        }
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(durable::ctx("read", &path)(e)),
        }
    }

    /// Reads through one descriptor, then checks that the name still leads to that same inode:
    /// if the file was renamed away (to be recycled) at any moment before the check, the bytes
    /// read may be another segment's, and nothing is returned (audit finding 4). A file under a
    /// segment's final name is never written, so the same inode means the same bytes.
    fn get_unrecycled(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let path = self.path(key);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(durable::ctx("open", &path)(e)),
        };
        let before = f.metadata().map_err(durable::ctx("stat", &path))?;
        let mut data = Vec::with_capacity(before.len() as usize);
        f.read_to_end(&mut data).map_err(durable::ctx("read", &path))?;
        match std::fs::metadata(&path) {
            Ok(now) if now.dev() == before.dev() && now.ino() == before.ino() => Ok(Some(data)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(durable::ctx("stat", &path)(e)),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.path(prefix);
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(durable::ctx("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(durable::ctx("list", &dir))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push(format!("{}/{name}", prefix.trim_end_matches('/')));
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        durable::durable_remove(&self.path(key))
    }

    fn usage(&self, prefix: &str) -> io::Result<Usage> {
        let mut total = Usage::default();
        let mut dirs = vec![self.path(prefix)];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(durable::ctx("list", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(durable::ctx("list", &dir))?;
                // A file removed between readdir and stat (compression, garbage collection) is
                // simply no longer there.
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(durable::ctx("stat", &entry.path())(e)),
                };
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if meta.is_file() {
                    total.objects += 1;
                    // Allocated blocks, not the apparent length: what the filesystem really gives.
                    total.bytes += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
                }
            }
        }
        Ok(total)
    }

    fn capacity(&self) -> io::Result<Option<Capacity>> {
        filesystem_capacity(&self.root).map(Some)
    }
}

/// A store that counts reads and listings, for tests that check a periodic pass costs only
/// what changed.
#[cfg(test)]
pub mod counting {
    use super::{Capacity, ObjectStore, Usage};
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    pub struct CountingStore<S> {
        inner: S,
        gets: AtomicUsize,
        /// Every prefix listed, in order.
        lists: Mutex<Vec<String>>,
    }

    impl<S: ObjectStore> CountingStore<S> {
        pub fn new(inner: S) -> Self {
            CountingStore {
                inner,
                gets: AtomicUsize::new(0),
                lists: Mutex::new(Vec::new()),
            }
        }

        pub fn gets(&self) -> usize {
            self.gets.load(Ordering::Relaxed)
        }

        /// How many listings of `prefix` were made.
        pub fn lists_of(&self, prefix: &str) -> usize {
            self.lists.lock().map(|l| l.iter().filter(|p| *p == prefix).count()).unwrap_or(0)
        }
    }

    impl<S: ObjectStore> ObjectStore for CountingStore<S> {
        fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>) -> io::Result<()> {
            self.inner.put_from(key, fill)
        }
        fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>) -> io::Result<Option<u64>> {
            self.inner.put_once(key, fill)
        }
        fn sync(&self) -> io::Result<()> {
            self.inner.sync()
        }
        fn size(&self, key: &str) -> io::Result<Option<u64>> {
            self.inner.size(key)
        }
        fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            self.inner.get(key)
        }
        fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
            if let Ok(mut l) = self.lists.lock() {
                l.push(prefix.to_string());
            }
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> io::Result<()> {
            self.inner.delete(key)
        }
        fn usage(&self, prefix: &str) -> io::Result<Usage> {
            self.inner.usage(prefix)
        }
        fn capacity(&self) -> io::Result<Option<Capacity>> {
            self.inner.capacity()
        }
    }
}
