//! The local catalog first, then each repository in order, as one read-mostly `ObjectStore`:
//! what `restore`, `wal-get`, `list-backups` and `show-backup` read when no `--repo` is given.
//! A backup whose chunks or WAL were pruned locally, or a fresh machine with an empty local
//! catalog, is served from the first repository that has each object.
//!
//! Repositories are opened only when the local catalog lacks something (opening one reads its
//! secrets, and may run `encryption.key_command`: `wal-get` runs once per segment). Reading an
//! object from a repository that does not answer is an error, never "absent": ending recovery
//! early because a store did not answer would silently lose the WAL it holds. Listings leave
//! such a repository out, with a warning, so a restore from the local catalog still works.
//!
//! Writes (a restore's record, a lock's directory) go to the local catalog only.

use super::store::{Capacity, ObjectStore, Usage};
use std::io::{self, Write};
use std::sync::{Arc, OnceLock};

/// Opens a repository's store (called at most once).
pub type Opener = Box<dyn Fn() -> Result<Arc<dyn ObjectStore>, String> + Send + Sync>;

struct Tail {
    name: String,
    open: Opener,
    store: OnceLock<Result<Arc<dyn ObjectStore>, String>>,
}

pub struct ChainStore {
    local: Arc<dyn ObjectStore>,
    tails: Vec<Tail>,
}

impl ChainStore {
    pub fn new(local: Arc<dyn ObjectStore>, repositories: Vec<(String, Opener)>) -> ChainStore {
        ChainStore {
            local,
            tails: repositories
                .into_iter()
                .map(|(name, open)| Tail {
                    name,
                    open,
                    store: OnceLock::new(),
                })
                .collect(),
        }
    }

    fn tail(&self, t: &Tail) -> io::Result<Arc<dyn ObjectStore>> {
        match t.store.get_or_init(|| (t.open)()) {
            Ok(s) => Ok(Arc::clone(s)),
            Err(e) => Err(io::Error::other(format!("repository {}: {e}", t.name))),
        }
    }

    /// The first answer that is `Some`, local first.
    fn first<T>(&self, f: impl Fn(&dyn ObjectStore) -> io::Result<Option<T>>) -> io::Result<Option<T>> {
        if let Some(v) = f(self.local.as_ref())? {
            return Ok(Some(v));
        }
        for t in &self.tails {
            if let Some(v) = f(self.tail(t)?.as_ref())? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

impl ObjectStore for ChainStore {
    fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        self.local.put_from(key, fill)
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.local.put(key, data)
    }

    fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
        self.local.put_once(key, fill)
    }

    fn sync(&self) -> io::Result<()> {
        self.local.sync()
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        self.first(|s| s.size(key))
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.first(|s| s.get(key))
    }

    fn get_unrecycled(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.first(|s| s.get_unrecycled(key))
    }

    /// The union of every source's keys. A repository that cannot be listed is left out with a
    /// warning: a restore from the local catalog must not fail because object storage is
    /// down (reading an object the local catalog lacks still fails loudly).
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = self.local.list(prefix)?;
        for t in &self.tails {
            match self.tail(t).and_then(|s| s.list(prefix)) {
                Ok(keys) => out.extend(keys),
                Err(e) => {
                    tracing::warn!(repository = %t.name, error = %e, "cannot list the repository; going on with what the local catalog and the other repositories hold")
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.local.delete(key)
    }

    fn usage(&self, prefix: &str) -> io::Result<Usage> {
        self.local.usage(prefix)
    }

    fn capacity(&self) -> io::Result<Option<Capacity>> {
        self.local.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    #[test]
    fn local_first_then_repositories_in_order_opened_only_when_needed() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<Arc<dyn ObjectStore>> = dirs
            .iter()
            .map(|d| Arc::new(LocalStore::new(d.path())) as Arc<dyn ObjectStore>)
            .collect();
        stores[0].put("s/wal/a", b"local").unwrap();
        stores[1].put("s/wal/a", b"first repo").unwrap();
        stores[1].put("s/wal/b", b"first repo").unwrap();
        stores[2].put("s/wal/b", b"second repo").unwrap();
        stores[2].put("s/wal/c", b"second repo").unwrap();
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let opener = |s: &Arc<dyn ObjectStore>| -> Opener {
            let (s, opened) = (Arc::clone(s), Arc::clone(&opened));
            Box::new(move || {
                opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Arc::clone(&s))
            })
        };
        let chain = ChainStore::new(
            Arc::clone(&stores[0]),
            vec![("one".into(), opener(&stores[1])), ("two".into(), opener(&stores[2]))],
        );
        assert_eq!(chain.get("s/wal/a").unwrap().unwrap(), b"local");
        assert_eq!(
            opened.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing opened while local has it"
        );
        assert_eq!(chain.get("s/wal/b").unwrap().unwrap(), b"first repo");
        assert_eq!(chain.get("s/wal/c").unwrap().unwrap(), b"second repo");
        assert_eq!(chain.get("s/wal/d").unwrap(), None);
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2, "each opened once");
        assert_eq!(chain.list("s/wal").unwrap(), ["s/wal/a", "s/wal/b", "s/wal/c"]);
        chain.put("s/restores/r", b"x").unwrap();
        assert!(dirs[0].path().join("s/restores/r").exists());

        let broken = ChainStore::new(
            Arc::clone(&stores[0]),
            vec![("down".into(), Box::new(|| Err("no key".to_string())))],
        );
        assert_eq!(broken.get("s/wal/a").unwrap().unwrap(), b"local");
        assert_eq!(
            broken.list("s/wal").unwrap(),
            ["s/wal/a"],
            "a repository that does not answer is left out of listings"
        );
        let e = broken.get("s/wal/z").unwrap_err().to_string();
        assert!(e.contains("repository down") && e.contains("no key"), "{e}");
    }
}
