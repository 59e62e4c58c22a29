//! Client-side encryption as a layer over any `ObjectStore`: every object is sealed on the way
//! in and opened (authenticated) on the way out, with the envelope of `catalog::encryption`.
//! The object's key is its name in the envelope's associated data, so an object copied over
//! another's name does not open; `pgark repo copy` moves sealed bytes unchanged between
//! repositories because keys are the same in every repository (the prefix is not part of it).
//!
//! Sizes are reported as the plaintext's (the stored size less the envelope), so that the
//! readers comparing sizes recorded at backup time (verify's chunk check) see no difference.

use super::encryption::{self, Keyring, OVERHEAD};
use super::store::{Capacity, ObjectStore, Usage};
use std::io::{self, Write};
use std::sync::Arc;

#[derive(Clone)]
pub struct SealedStore {
    inner: Arc<dyn ObjectStore>,
    ring: Arc<Keyring>,
}

impl SealedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, ring: Arc<Keyring>) -> SealedStore {
        SealedStore { inner, ring }
    }

    /// The store underneath (sealed bytes: what `repo copy` moves).
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn seal(&self, key: &str, plain: &[u8]) -> io::Result<Vec<u8>> {
        encryption::seal(&self.ring, key, plain).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    fn open(&self, key: &str, sealed: Vec<u8>) -> io::Result<Vec<u8>> {
        encryption::open(&self.ring, key, &sealed).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
}

impl ObjectStore for SealedStore {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let sealed = self.seal(key, data)?;
        self.inner.put(key, &sealed)
    }

    fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        let mut plain = Vec::new();
        fill(&mut plain)?;
        self.put(key, &plain)
    }

    fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
        if self.inner.size(key)?.is_some() {
            return Ok(None);
        }
        let mut plain = Vec::new();
        fill(&mut plain)?;
        let sealed = self.seal(key, &plain)?;
        // Known absent a moment ago: a plain put (a second existence check would cost another
        // round trip to object storage; two writers of one content-named chunk write the same).
        self.inner.put(key, &sealed)?;
        Ok(Some(plain.len() as u64))
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        Ok(self.inner.size(key)?.map(|n| n.saturating_sub(OVERHEAD as u64)))
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.inner.get(key)? {
            Some(b) => self.open(key, b).map(Some),
            None => Ok(None),
        }
    }

    fn get_unrecycled(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.inner.get_unrecycled(key)? {
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

    fn locked_until(&self, key: &str) -> io::Result<Option<i64>> {
        self.inner.locked_until(key)
    }

    fn retain(&self, key: &str) -> io::Result<()> {
        self.inner.retain(key)
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
    use crate::catalog::store::LocalStore;

    #[test]
    fn objects_are_sealed_at_rest_and_open_by_name() {
        let d = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(d.path()));
        let ring = Arc::new(Keyring::new(Key::generate(), vec![]));
        let s = SealedStore::new(Arc::clone(&local), ring);
        s.put("srv/wal/a", b"secret row 42").unwrap();
        let at_rest = std::fs::read(d.path().join("srv/wal/a")).unwrap();
        assert!(encryption::is_sealed(&at_rest));
        assert!(!at_rest.windows(6).any(|w| w == b"secret"));
        assert_eq!(s.get("srv/wal/a").unwrap().unwrap(), b"secret row 42");
        assert_eq!(s.size("srv/wal/a").unwrap(), Some(13));
        assert_eq!(s.put_once("srv/c/x", &mut |w| w.write_all(b"abc")).unwrap(), Some(3));
        assert_eq!(s.put_once("srv/c/x", &mut |w| w.write_all(b"abc")).unwrap(), None);
        // Moved under another name: refused, naming the object.
        std::fs::copy(d.path().join("srv/wal/a"), d.path().join("srv/wal/b")).unwrap();
        let e = s.get("srv/wal/b").unwrap_err();
        assert!(
            e.to_string().contains("srv/wal/b") && e.to_string().contains("authentication failed"),
            "{e}"
        );
        // A wrong key names the key it needs.
        let other = SealedStore::new(local, Arc::new(Keyring::new(Key::generate(), vec![])));
        assert!(other.get("srv/wal/a").unwrap_err().to_string().contains("not in the keyring"));
    }
}
