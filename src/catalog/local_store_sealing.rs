//! `encryption.local: true`: the local catalog's objects sealed at rest, and the registry that
//! makes every `Catalog::open` of that catalog seal.
//!
//! Why a registry keyed by the catalog's root rather than a keyring passed to each caller: the
//! catalog is opened in some thirty places (receiver, archiver, backups, prune, verify, drills,
//! restore, wal-get, check, status). Passing a keyring to each would let one forgotten path
//! write plaintext next to sealed objects without any error. Here, once a config with
//! `encryption.local: true` is loaded (`Config::load` registers it), every `Catalog::open` of
//! that root returns the sealing store; there is no way to open it unsealed in that process.
//!
//! What is sealed: every object written through the store (compressed WAL segments, history
//! files, backup chunks and indexes, the server state, pins, records, marks), with the envelope
//! of `catalog::encryption` and the object's key as associated data, like a repository's.
//!
//! The receiver's spool (`wal_store`: the open `.partial` segment, completed segments waiting
//! for the archiver, spares) is written in place at fsync speed, not through this store: the
//! receiver encrypts it itself with `spool_cipher` (looking its keyring up here,
//! `keyring_for_spool`), and this store decrypts spool files on read.
//!
//! Reading: a sealed object is opened (authenticated) with the keyring; an object without an
//! envelope was written before `encryption.local` was turned on and is read as it is (the
//! local catalog is migrated by time: retention replaces it), unless `encryption.local:
//! require` (once migrated): then it is refused, since plaintext would be believed without
//! authentication. A sealed object read without a keyring is an error that says so.

use super::encryption::{self, Keyring, MAGIC, OVERHEAD};
use super::spool_cipher;
use super::store::{Capacity, LocalStore, ObjectStore, Usage};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How a registered catalog is sealed.
#[derive(Clone)]
struct Sealing {
    ring: Arc<Keyring>,
    /// `encryption.local: require`: an object without an envelope is refused, not read.
    require: bool,
    /// New objects (and new spool files) are sealed: `encryption.local` on. `false`: the keys
    /// are only for reading what was sealed before it was turned off (`register_reader`).
    seal: bool,
}

/// Catalog roots whose objects are sealed (as configured and as resolved), and how.
static REGISTRY: Mutex<Vec<(Vec<PathBuf>, Sealing)>> = Mutex::new(Vec::new());

/// The spellings of `root` a lookup matches: as given, and resolved (when it exists).
fn spellings(root: &Path) -> Vec<PathBuf> {
    let mut v = vec![root.to_path_buf()];
    if let Ok(c) = std::fs::canonicalize(root) {
        if c != root {
            v.push(c);
        }
    }
    v
}

/// From now on, objects of the catalog at `root` are sealed with `ring` (`None`: written in
/// plaintext; sealed ones still refuse to open without a key); with `require`, an object
/// without an envelope is refused. A reload registers again.
pub fn register(root: &Path, ring: Option<Arc<Keyring>>, require: bool) {
    let names = spellings(root);
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|(r, _)| !r.iter().any(|n| names.contains(n)));
    if let Some(ring) = ring {
        reg.push((names, Sealing { ring, require, seal: true }));
    }
}

/// `encryption.local` off, but keys configured: nothing new is sealed, and what was sealed
/// while it was on still reads (the receiver finishes an encrypted `.partial` it reopens, the
/// archiver archives an encrypted segment). A reload registers again.
pub fn register_reader(root: &Path, ring: Arc<Keyring>) {
    let names = spellings(root);
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|(r, _)| !r.iter().any(|n| names.contains(n)));
    reg.push((
        names,
        Sealing {
            ring,
            require: false,
            seal: false,
        },
    ));
}

/// Catalog roots whose config names a key source (`encryption.key_file` or `key_command`), read
/// or not: there, a spool file that cannot be decrypted is an error to fix, never moved aside.
static KEY_SOURCES: Mutex<Vec<Vec<PathBuf>>> = Mutex::new(Vec::new());

/// Records whether the config of the catalog at `root` names a key source.
pub fn register_key_source(root: &Path, configured: bool) {
    let names = spellings(root);
    let mut reg = KEY_SOURCES.lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|r| !r.iter().any(|n| names.contains(n)));
    if configured {
        reg.push(names);
    }
}

/// Whether the config of the catalog holding the spool directory `<root>/<server>/wal` names a
/// key source.
pub fn key_source_configured_for_spool(wal_dir: &Path) -> bool {
    let Some(root) = wal_dir.parent().and_then(Path::parent) else {
        return false;
    };
    let names = spellings(root);
    KEY_SOURCES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|r| r.iter().any(|n| names.contains(n)))
}

/// The keyring registered for the catalog at `root`, if new objects are sealed.
pub fn keyring_for(root: &Path) -> Option<Arc<Keyring>> {
    registered(root).filter(|s| s.seal).map(|s| s.ring)
}

/// The keyring that reads the catalog at `root`: sealing, or only reading (`register_reader`).
pub fn reading_keyring_for(root: &Path) -> Option<Arc<Keyring>> {
    registered(root).map(|s| s.ring)
}

fn registered(root: &Path) -> Option<Sealing> {
    if REGISTRY.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
        return None;
    }
    lookup(&spellings(root))
}

fn lookup(names: &[PathBuf]) -> Option<Sealing> {
    let reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.iter()
        .find(|(r, _)| r.iter().any(|n| names.contains(n)))
        .map(|(_, s)| s.clone())
}

/// The keyring new files of the receiver's spool directory `<root>/<server>/wal` are encrypted
/// with: that of its catalog, while `encryption.local` is on.
pub fn keyring_for_spool(wal_dir: &Path) -> Option<Arc<Keyring>> {
    wal_dir.parent().and_then(Path::parent).and_then(keyring_for)
}

/// The keyring that reads the spool directory `<root>/<server>/wal` (see `reading_keyring_for`).
pub fn reading_keyring_for_spool(wal_dir: &Path) -> Option<Arc<Keyring>> {
    wal_dir.parent().and_then(Path::parent).and_then(reading_keyring_for)
}

/// The store of the local catalog at `root`: sealing while registered so.
pub fn store_for(root: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalSealedStore {
        inner: LocalStore::new(root),
        names: Arc::new(spellings(root)),
        #[cfg(test)]
        fixed: None,
    })
}

/// Whether `key` is a file of the receiver's spool, which stays as the receiver wrote it: a
/// plain segment name, a `.partial` or a spare under `<server>/wal/`.
pub fn is_spool_key(key: &str) -> bool {
    let Some((dir, name)) = key.rsplit_once('/') else {
        return false;
    };
    if !dir.ends_with("/wal") && dir != "wal" {
        return false;
    }
    let base = name.strip_suffix(super::wal_store::PARTIAL_SUFFIX).unwrap_or(name);
    (base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit())) || name.starts_with(".spare.")
}

/// The local filesystem store with sealing on top (see the module header).
///
/// The keyring is looked up in the registry at each operation, not once when the catalog is
/// opened: the daemon's long-running tasks (receivers, archivers, schedulers) keep their store
/// across reloads, and a reload that turns `encryption.local` on or rotates the key must reach
/// them at once (a rotation after a leaked key must not keep writing with the old one).
#[derive(Clone)]
pub struct LocalSealedStore {
    inner: LocalStore,
    /// The catalog root's spellings, resolved once (the registry's lookup key).
    names: Arc<Vec<PathBuf>>,
    /// Tests: a sealing of their own instead of the registry's.
    #[cfg(test)]
    fixed: Option<Option<Sealing>>,
}

impl LocalSealedStore {
    fn current(&self) -> Option<Sealing> {
        #[cfg(test)]
        if let Some(f) = &self.fixed {
            return f.clone();
        }
        lookup(&self.names)
    }

    /// `Some`: sealed objects open (and new ones are sealed when `seal`); `None`: plaintext.
    fn ring(&self) -> Option<Arc<Keyring>> {
        self.current().map(|s| s.ring)
    }

    fn sealing(&self, key: &str) -> Option<Arc<Keyring>> {
        self.current().filter(|s| s.seal && !is_spool_key(key)).map(|s| s.ring)
    }

    fn seal(ring: &Keyring, key: &str, plain: &[u8]) -> io::Result<Vec<u8>> {
        encryption::seal(ring, key, plain).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// What was read under `key`, opened when it is sealed.
    fn open(&self, key: &str, data: Vec<u8>) -> io::Result<Vec<u8>> {
        if !encryption::is_sealed(&data) {
            if self.current().is_some_and(|s| s.require) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{key}: not encrypted, and encryption.local: require refuses plaintext objects \
                         (written before encryption, or put there without the key); \
                         restore it from a repository, or set local: true to read it"
                    ),
                ));
            }
            return Ok(data);
        }
        match self.ring() {
            Some(ring) => encryption::open(&ring, key, &data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{key}: encrypted (key id {}) but the config does not set encryption.local: true; \
                     set it, with the key that wrote the catalog, to read it",
                    encryption::key_id_of(&data).map(|k| k.to_string()).unwrap_or_default()
                ),
            )),
        }
    }

    /// A spool file as read, decrypted when the receiver encrypted it (`spool_cipher`). Spool
    /// files are never refused for being plaintext, even under `require`: the one open when
    /// encryption was turned on is still written in plaintext to its end, and the spool is not
    /// authenticated in any case.
    fn open_spool(&self, key: &str, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let ring = self.ring();
        spool_cipher::open_bytes(data, ring.as_deref(), key)
    }

    /// Whether the spool file under `key` (of `len` bytes) ends with a spool trailer.
    fn stored_spool_sealed(&self, key: &str, len: u64) -> io::Result<bool> {
        let path = self.inner.path(key);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(crate::fsio::durable::ctx("open", &path)(e)),
        };
        let mut head = [0u8; 8];
        use std::os::unix::fs::FileExt;
        match f.read_exact_at(&mut head, len - spool_cipher::TRAILER_LEN) {
            Ok(()) => Ok(spool_cipher::is_trailer(&head)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(crate::fsio::durable::ctx("read", &path)(e)),
        }
    }

    /// Whether the file under `key` starts with an envelope (reads 8 bytes).
    fn stored_sealed(&self, key: &str) -> io::Result<bool> {
        let path = self.inner.path(key);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(crate::fsio::durable::ctx("open", &path)(e)),
        };
        let mut head = [0u8; 8];
        match f.read_exact(&mut head) {
            Ok(()) => Ok(&head == MAGIC),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(crate::fsio::durable::ctx("read", &path)(e)),
        }
    }
}

impl ObjectStore for LocalSealedStore {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        match self.sealing(key) {
            Some(ring) => self.inner.put(key, &Self::seal(&ring, key, data)?),
            None => self.inner.put(key, data),
        }
    }

    fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        match self.sealing(key) {
            Some(ring) => {
                let mut plain = Vec::new();
                fill(&mut plain)?;
                self.inner.put(key, &Self::seal(&ring, key, &plain)?)
            }
            None => self.inner.put_from(key, fill),
        }
    }

    /// Sealed objects keep the local store's batched directory fsyncs (`sync`); the size
    /// returned is the plaintext's, as `size` reports it.
    fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
        let Some(ring) = self.sealing(key) else {
            return self.inner.put_once(key, fill);
        };
        let mut plain_len = 0u64;
        let stored = self.inner.put_once(key, &mut |w| {
            let mut plain = Vec::new();
            fill(&mut plain)?;
            plain_len = plain.len() as u64;
            w.write_all(&Self::seal(&ring, key, &plain)?)
        })?;
        Ok(stored.map(|_| plain_len))
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    /// The plaintext's size: a sealed object's stored size less the envelope.
    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let Some(n) = self.inner.size(key)? else {
            return Ok(None);
        };
        if is_spool_key(key) {
            if spool_cipher::sealed_len(n) && self.stored_spool_sealed(key, n)? {
                return Ok(Some(n - spool_cipher::TRAILER_LEN));
            }
            return Ok(Some(n));
        }
        if n >= OVERHEAD as u64 && self.ring().is_some() && self.stored_sealed(key)? {
            return Ok(Some(n - OVERHEAD as u64));
        }
        Ok(Some(n))
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.inner.get(key)? {
            Some(b) if is_spool_key(key) => self.open_spool(key, b).map(Some),
            Some(b) => self.open(key, b).map(Some),
            None => Ok(None),
        }
    }

    fn get_unrecycled(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.inner.get_unrecycled(key)? {
            Some(b) if is_spool_key(key) => self.open_spool(key, b).map(Some),
            Some(b) => self.open(key, b).map(Some),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.inner.list(prefix)
    }

    fn list_all(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.inner.list_all(prefix)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::encryption::Key;

    fn with_ring(root: &Path, ring: Option<Arc<Keyring>>) -> LocalSealedStore {
        LocalSealedStore {
            inner: LocalStore::new(root),
            names: Arc::new(vec![]),
            fixed: Some(ring.map(|ring| Sealing {
                ring,
                require: false,
                seal: true,
            })),
        }
    }

    fn sealed(root: &Path) -> LocalSealedStore {
        with_ring(root, Some(Arc::new(Keyring::new(Key::generate(), vec![]))))
    }

    #[test]
    fn spool_keys_are_recognised() {
        for k in [
            "main/wal/000000010000000000000003",
            "main/wal/000000010000000000000003.partial",
            "main/wal/.spare.12.3",
        ] {
            assert!(is_spool_key(k), "{k}");
        }
        for k in [
            "main/wal/000000010000000000000003.zst",
            "main/wal/000000010000000000000003.sum",
            "main/wal/00000002.history",
            "main/backups/20261203T000000Z/index",
            "main/chunks/ab/abcdef",
            "main/server.state",
            "main/000000010000000000000003",
        ] {
            assert!(!is_spool_key(k), "{k}");
        }
    }

    #[test]
    fn objects_are_sealed_and_spool_keys_pass_through() {
        let d = tempfile::tempdir().unwrap();
        let s = sealed(d.path());
        s.put("main/wal/000000010000000000000003.zst", b"secret row 42").unwrap();
        let at_rest = std::fs::read(d.path().join("main/wal/000000010000000000000003.zst")).unwrap();
        assert!(encryption::is_sealed(&at_rest) && !at_rest.windows(6).any(|w| w == b"secret"));
        assert_eq!(s.get("main/wal/000000010000000000000003.zst").unwrap().unwrap(), b"secret row 42");
        assert_eq!(s.size("main/wal/000000010000000000000003.zst").unwrap(), Some(13));

        assert_eq!(s.put_once("main/chunks/ab/x", &mut |w| w.write_all(b"chunk")).unwrap(), Some(5));
        assert_eq!(s.put_once("main/chunks/ab/x", &mut |w| w.write_all(b"chunk")).unwrap(), None);
        s.sync().unwrap();
        assert!(encryption::is_sealed(&std::fs::read(d.path().join("main/chunks/ab/x")).unwrap()));
        assert_eq!(s.get("main/chunks/ab/x").unwrap().unwrap(), b"chunk");

        s.put_from("main/backups/b1/index", &mut |w| w.write_all(b"{\"index\":1}")).unwrap();
        assert!(encryption::is_sealed(
            &std::fs::read(d.path().join("main/backups/b1/index")).unwrap()
        ));

        // The receiver's spool passes through.
        s.put("main/wal/000000010000000000000004", b"raw wal").unwrap();
        assert_eq!(
            std::fs::read(d.path().join("main/wal/000000010000000000000004")).unwrap(),
            b"raw wal"
        );
        assert_eq!(s.get_unrecycled("main/wal/000000010000000000000004").unwrap().unwrap(), b"raw wal");
        assert_eq!(s.size("main/wal/000000010000000000000004").unwrap(), Some(7));
    }

    #[test]
    fn plaintext_from_before_reads_and_sealed_without_a_key_is_named() {
        let d = tempfile::tempdir().unwrap();
        let plain = with_ring(d.path(), None);
        plain.put("main/server.state", b"before").unwrap();
        let s = sealed(d.path());
        assert_eq!(s.get("main/server.state").unwrap().unwrap(), b"before");
        // `local: require` refuses it, naming it; the spool still passes.
        let strict = LocalSealedStore {
            fixed: Some(s.current().map(|x| Sealing { require: true, ..x })),
            ..s.clone()
        };
        let e = strict.get("main/server.state").unwrap_err().to_string();
        assert!(e.contains("main/server.state") && e.contains("require"), "{e}");
        plain.put("main/wal/000000010000000000000001", b"wal").unwrap();
        assert_eq!(strict.get("main/wal/000000010000000000000001").unwrap().unwrap(), b"wal");
        assert_eq!(s.size("main/server.state").unwrap(), Some(6));
        s.put("main/wal/00000002.history", b"1\t0/5000000\tpromoted\n").unwrap();
        let e = plain.get("main/wal/00000002.history").unwrap_err().to_string();
        assert!(e.contains("main/wal/00000002.history") && e.contains("encryption.local"), "{e}");
        // A flipped byte is caught and named.
        let p = d.path().join("main/wal/00000002.history");
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, b).unwrap();
        let e = s.get("main/wal/00000002.history").unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
    }

    #[test]
    fn the_registry_seals_every_open_of_a_registered_root() {
        let d = tempfile::tempdir().unwrap();
        let ring = Arc::new(Keyring::new(Key::generate(), vec![]));
        // A store opened before the registration (a daemon task across a reload) follows it.
        let before = crate::catalog::Catalog::open(d.path()).store();
        before.put("main/a", b"x").unwrap();
        assert_eq!(std::fs::read(d.path().join("main/a")).unwrap(), b"x");
        register(d.path(), Some(ring), false);
        before.put("main/b", b"x").unwrap();
        assert!(encryption::is_sealed(&std::fs::read(d.path().join("main/b")).unwrap()));
        crate::catalog::Catalog::open(d.path())
            .store()
            .put("main/server.state", b"x")
            .unwrap();
        assert!(encryption::is_sealed(&std::fs::read(d.path().join("main/server.state")).unwrap()));
        assert_eq!(before.get("main/server.state").unwrap().unwrap(), b"x");
        assert_eq!(before.size("main/server.state").unwrap(), Some(1));
        register(d.path(), None, false);
        assert!(keyring_for(d.path()).is_none());
        before.put("main/c", b"x").unwrap();
        assert_eq!(std::fs::read(d.path().join("main/c")).unwrap(), b"x");
    }
}
