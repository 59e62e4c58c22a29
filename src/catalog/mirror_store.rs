//! A backup's writes, mirrored into the repositories while the backup is taken: each chunk goes
//! to the local catalog and to every repository as it is stored (deduplicated per repository:
//! a chunk a repository has already is not sent again), then the manifest and the index last,
//! so the repository's copy is complete when the backup is, instead of an upload afterwards.
//!
//! The local catalog is the primary: it answers every read, and its failure fails the backup.
//! A repository that fails is dropped from this backup's mirrors (logged once, named in
//! `failed()`); the uploader copies the backup there later, from the local catalog. Only what
//! makes up a backup is mirrored (chunks, manifest, index): intent records and deletions stay
//! local (a repository's stray chunks of a failed backup go at its next prune).

use super::store::{Capacity, ObjectStore, Usage};
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

pub struct Mirror {
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
}

pub struct MirrorStore {
    primary: Arc<dyn ObjectStore>,
    /// False (`backups_local: false`): chunks go to the mirrors only, and a chunk no mirror
    /// took fails the backup.
    chunks_local: bool,
    mirrors: Vec<Mirror>,
    /// Per mirror: why it was dropped.
    failed: Mutex<Vec<Option<String>>>,
    /// Per mirror: chunk keys known to be there (listed once, then written).
    present: Mutex<Vec<BTreeSet<String>>>,
    /// Per mirror: whether its chunks were listed (then a chunk not in `present` is absent,
    /// and is written without asking first: one request per chunk, not two).
    listed: Mutex<Vec<bool>>,
    /// Chunk uploads in flight: the backup's compression workers hand a chunk over and go on,
    /// `UPLOADERS` threads send them; bounded, so at most `QUEUED` chunks wait in memory. The
    /// index waits until every upload has landed.
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Upload>>>,
    pending: Arc<(Mutex<usize>, std::sync::Condvar)>,
    deferred: Mutex<Vec<String>>,
    /// `backups_local: false`: stored sizes of the chunks this backup handed to the mirrors
    /// (the local catalog cannot answer `size` for them; the upload may still be in flight).
    sizes: Mutex<std::collections::HashMap<String, u64>>,
}

/// One chunk for one mirror.
type Upload = (usize, String, Arc<Vec<u8>>);

/// How long the index waits for a repository to hold the backup's WAL (the daemon's uploader
/// sends the last segment a moment after the backup ends); past it the uploader writes the
/// index when the WAL is there.
const WAL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

const UPLOADERS: usize = 4;
const QUEUED: usize = 8;

impl Drop for MirrorStore {
    fn drop(&mut self) {
        // Closing the queue ends the upload threads (they hold no reference to the store
        // between jobs).
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
    }
}

impl MirrorStore {
    pub fn start(primary: Arc<dyn ObjectStore>, mirrors: Vec<Mirror>, chunks_local: bool) -> Arc<MirrorStore> {
        let n = mirrors.len();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Upload>(QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        let pending: Arc<(Mutex<usize>, std::sync::Condvar)> = Default::default();
        Arc::new_cyclic(|me: &std::sync::Weak<MirrorStore>| {
            for _ in 0..UPLOADERS {
                let (me, rx, pending) = (me.clone(), Arc::clone(&rx), Arc::clone(&pending));
                let spawned = std::thread::Builder::new().name("pgark-mirror".into()).spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((i, key, data)) = job else { return };
                    if let Some(store) = me.upgrade() {
                        store.upload(i, &key, &data);
                    }
                    let (count, cv) = &*pending;
                    if let Ok(mut c) = count.lock() {
                        *c = c.saturating_sub(1);
                    }
                    cv.notify_all();
                });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a mirror upload thread");
                }
            }
            MirrorStore {
                primary,
                chunks_local,
                mirrors,
                failed: Mutex::new(vec![None; n]),
                present: Mutex::new(vec![BTreeSet::new(); n]),
                listed: Mutex::new(vec![false; n]),
                queue: Mutex::new(Some(tx)),
                pending,
                deferred: Mutex::new(Vec::new()),
                sizes: Mutex::new(std::collections::HashMap::new()),
            }
        })
    }

    /// Hands a chunk to the upload threads (waits while the queue is full).
    fn enqueue(&self, i: usize, key: &str, data: &Arc<Vec<u8>>) {
        let tx = self.queue.lock().ok().and_then(|q| q.clone());
        let Some(tx) = tx else { return };
        if let Ok(mut c) = self.pending.0.lock() {
            *c += 1;
        }
        if tx.send((i, key.to_string(), Arc::clone(data))).is_err() {
            if let Ok(mut c) = self.pending.0.lock() {
                *c = c.saturating_sub(1);
            }
            self.drop_mirror(i, &io::Error::other("the upload threads stopped"));
        }
    }

    fn upload(&self, i: usize, key: &str, data: &[u8]) {
        if !self.healthy(i) {
            return;
        }
        if let Err(e) = self.mirrors[i].store.put(key, data) {
            self.drop_mirror(i, &e);
        }
    }

    /// Waits until every queued chunk has landed (or failed, dropping its mirror); then, with
    /// `backups_local: false`, at least one mirror must still hold the backup.
    fn drain(&self) -> io::Result<()> {
        let (count, cv) = &*self.pending;
        let mut c = count.lock().map_err(|_| io::Error::other("mirror queue poisoned"))?;
        while *c > 0 {
            c = cv.wait(c).map_err(|_| io::Error::other("mirror queue poisoned"))?;
        }
        drop(c);
        if !self.chunks_local && !self.any_healthy() {
            return Err(self.none_left("the backup's chunks"));
        }
        Ok(())
    }

    fn any_healthy(&self) -> bool {
        self.failed.lock().map(|f| f.iter().any(Option::is_none)).unwrap_or(false)
    }

    fn none_left(&self, what: &str) -> io::Error {
        let why = self
            .failed()
            .into_iter()
            .map(|(n, w)| format!("{n}: {w}"))
            .collect::<Vec<_>>()
            .join("; ");
        io::Error::other(format!(
            "{what}: no repository took the chunk (backups_local is false, so the backup cannot go on): {why}"
        ))
    }

    /// The repositories dropped from this backup, and why.
    pub fn failed(&self) -> Vec<(String, String)> {
        let f = self.failed.lock().map(|f| f.clone()).unwrap_or_default();
        self.mirrors
            .iter()
            .zip(f)
            .filter_map(|(m, why)| why.map(|w| (m.name.clone(), w)))
            .collect()
    }

    fn healthy(&self, i: usize) -> bool {
        self.failed.lock().map(|f| f[i].is_none()).unwrap_or(false)
    }

    fn drop_mirror(&self, i: usize, e: &io::Error) {
        if let Ok(mut f) = self.failed.lock() {
            if f[i].is_none() {
                tracing::warn!(repository = %self.mirrors[i].name, error = %e,
                    "cannot write the backup to the repository while it is taken; the uploader will copy it afterwards");
                f[i] = Some(e.to_string());
            }
        }
    }

    /// A chunk's bytes from the local catalog, else from another healthy mirror than `except`.
    fn find_chunk(&self, key: &str, except: usize) -> io::Result<Option<Vec<u8>>> {
        if let Some(b) = self.primary.get(key)? {
            return Ok(Some(b));
        }
        for (j, m) in self.mirrors.iter().enumerate() {
            if j != except && self.healthy(j) {
                if let Ok(Some(b)) = m.store.get(key) {
                    return Ok(Some(b));
                }
            }
        }
        Ok(None)
    }

    fn mirrored(key: &str) -> bool {
        key.contains("/chunks/") || (key.contains("/backups/") && (key.ends_with(".json") || key.ends_with(".manifest")))
    }

    fn each(&self, key: &str, f: impl Fn(usize, &dyn ObjectStore) -> io::Result<()>) {
        if !Self::mirrored(key) {
            return;
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            if self.healthy(i) {
                if let Err(e) = f(i, m.store.as_ref()) {
                    self.drop_mirror(i, &e);
                }
            }
        }
    }

    /// Waits (up to `WAL_WAIT`) until `store` holds every complete WAL segment the index needs.
    fn wal_arrived(&self, store: &dyn ObjectStore, key: &str, index: &[u8]) -> io::Result<bool> {
        let id = key.rsplit('/').next().and_then(|n| n.strip_suffix(".json")).unwrap_or_default();
        let index = super::backup_store::decode_index(key, id, index).map_err(|e| io::Error::other(e.to_string()))?;
        let until = std::time::Instant::now() + WAL_WAIT;
        loop {
            if super::backup_store::missing_complete_wal(store, &index).is_empty() {
                return Ok(true);
            }
            if std::time::Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Repositories whose copy of the index waits for the uploader (its WAL was not there).
    pub fn deferred(&self) -> Vec<String> {
        self.deferred.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Lists mirror `i`'s chunks of the server `key` belongs to, once per backup.
    fn ensure_listed(&self, i: usize, store: &dyn ObjectStore, key: &str) -> io::Result<()> {
        if self.listed.lock().map(|l| l[i]).unwrap_or(false) {
            return Ok(());
        }
        let Some(at) = key.find("/chunks/") else { return Ok(()) };
        let keys = store.list_all(&key[..at + "/chunks".len()])?;
        if let Ok(mut p) = self.present.lock() {
            p[i].extend(keys);
        }
        if let Ok(mut l) = self.listed.lock() {
            l[i] = true;
        }
        Ok(())
    }

    fn mark_present(&self, i: usize, key: &str) {
        if let Ok(mut p) = self.present.lock() {
            p[i].insert(key.to_string());
        }
    }

    fn is_present(&self, i: usize, key: &str) -> bool {
        self.present.lock().map(|p| p[i].contains(key)).unwrap_or(false)
    }

    /// Before an index goes to mirror `i`: every chunk it references must be there. The
    /// backup reuses chunks of earlier backups without writing them, and an earlier backup may
    /// not be in the repository yet; those are copied from the local catalog now.
    fn complete_chunks(&self, i: usize, store: &dyn ObjectStore, key: &str, index: &[u8]) -> io::Result<()> {
        let id = key.rsplit('/').next().and_then(|n| n.strip_suffix(".json")).unwrap_or_default();
        let index = super::backup_store::decode_index(key, id, index).map_err(|e| io::Error::other(e.to_string()))?;
        let mut keys: Vec<String> = index
            .files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| super::backup_store::chunk_key(&index.server, &c.object)))
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            self.ensure_listed(i, store, &k)?;
            if self.is_present(i, &k) {
                // Perhaps an earlier backup's: with object lock, locked as long as this one
                // needs it (a no-op otherwise).
                store.retain(&k)?;
                continue;
            }
            let data = self.find_chunk(&k, i)?.ok_or_else(|| {
                io::Error::other(format!(
                    "{k}: referenced by {key} but neither the local catalog nor another repository has it"
                ))
            })?;
            store.put(&k, &data)?;
            self.mark_present(i, &k);
        }
        Ok(())
    }
}

impl MirrorStore {
    /// `backups_local: false`: the chunk goes to every healthy mirror and nowhere else; at least
    /// one must take it.
    fn put_once_remote_only(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
        let mut buf = Vec::new();
        fill(&mut buf)?;
        let data = Arc::new(buf);
        if let Ok(mut s) = self.sizes.lock() {
            s.entry(key.to_string()).or_insert(data.len() as u64);
        }
        let stored = std::sync::atomic::AtomicBool::new(false);
        self.each(key, |i, s| {
            self.ensure_listed(i, s, key)?;
            if !self.is_present(i, key) {
                self.enqueue(i, key, &data);
                stored.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            self.mark_present(i, key);
            Ok(())
        });
        if !self.any_healthy() {
            return Err(self.none_left(key));
        }
        Ok(stored.into_inner().then_some(data.len() as u64))
    }
}

impl ObjectStore for MirrorStore {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let is_index = key.ends_with(".json") && Self::mirrored(key);
        if is_index {
            // The index goes last: after every chunk has landed.
            self.drain()?;
        }
        self.primary.put(key, data)?;
        self.each(key, |i, s| {
            if is_index {
                self.complete_chunks(i, s, key, data)?;
                if !self.wal_arrived(s, key, data)? {
                    tracing::info!(repository = %self.mirrors[i].name, index = key,
                        "the backup's WAL is not in the repository yet; the uploader writes its index there once it is");
                    if let Ok(mut d) = self.deferred.lock() {
                        d.push(self.mirrors[i].name.clone());
                    }
                    return Ok(());
                }
            }
            s.put(key, data)
        });
        Ok(())
    }

    fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        let mut buf = Vec::new();
        fill(&mut buf)?;
        self.put(key, &buf)
    }

    /// A chunk: built once in memory (a few MiB at most), stored locally, then sent to each
    /// repository that lacks it.
    fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
        if !self.chunks_local && key.contains("/chunks/") {
            return self.put_once_remote_only(key, fill);
        }
        let mut buf = Vec::new();
        let mut filled = false;
        let stored = self.primary.put_once(key, &mut |w| {
            fill(&mut buf)?;
            filled = true;
            w.write_all(&buf)
        })?;
        // The local catalog had it already when `filled` is false: a repository that lacks it
        // gets the local copy (read once, only if some repository needs it).
        let data: std::cell::OnceCell<Option<Arc<Vec<u8>>>> = std::cell::OnceCell::new();
        if filled {
            let _ = data.set(Some(Arc::new(buf)));
        }
        self.each(key, |i, s| {
            self.ensure_listed(i, s, key)?;
            if !self.is_present(i, key) {
                if let Some(b) = data.get_or_init(|| self.primary.get(key).ok().flatten().map(Arc::new)) {
                    self.enqueue(i, key, b);
                }
            }
            self.mark_present(i, key);
            Ok(())
        });
        Ok(stored)
    }

    fn sync(&self) -> io::Result<()> {
        self.drain()?;
        self.primary.sync()
    }

    /// With `backups_local: false` a chunk's size comes from this backup's own writes, else
    /// from the first healthy mirror that has it (a chunk an earlier backup stored there).
    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        if self.chunks_local || !key.contains("/chunks/") {
            return self.primary.size(key);
        }
        if let Some(n) = self.sizes.lock().ok().and_then(|s| s.get(key).copied()) {
            return Ok(Some(n));
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            if self.healthy(i) {
                if let Some(n) = m.store.size(key)? {
                    return Ok(Some(n));
                }
            }
        }
        self.primary.size(key)
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.primary.get(key)
    }

    fn get_unrecycled(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.primary.get_unrecycled(key)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.primary.list(prefix)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.primary.delete(key)
    }

    fn usage(&self, prefix: &str) -> io::Result<Usage> {
        self.primary.usage(prefix)
    }

    fn capacity(&self) -> io::Result<Option<Capacity>> {
        self.primary.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    /// A backup index that carries its own WAL (nothing to wait for in the repository).
    fn own_wal(chunks: &[&str]) -> crate::catalog::backup_store::BackupIndex {
        let mut i = crate::catalog::backup_store::tests::index("b1", chunks);
        i.wal_source = crate::catalog::backup_store::WalSource::Backup;
        i
    }

    struct Broken;
    impl ObjectStore for Broken {
        fn put_from(&self, _: &str, _: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
            Err(io::Error::other("store down"))
        }
        fn put_once(&self, _: &str, _: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
            Err(io::Error::other("store down"))
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
        fn size(&self, _: &str) -> io::Result<Option<u64>> {
            Err(io::Error::other("store down"))
        }
        fn get(&self, _: &str) -> io::Result<Option<Vec<u8>>> {
            Err(io::Error::other("store down"))
        }
        fn list(&self, _: &str) -> io::Result<Vec<String>> {
            Err(io::Error::other("store down"))
        }
        fn delete(&self, _: &str) -> io::Result<()> {
            Err(io::Error::other("store down"))
        }
        fn usage(&self, _: &str) -> io::Result<Usage> {
            Err(io::Error::other("store down"))
        }
        fn capacity(&self) -> io::Result<Option<Capacity>> {
            Ok(None)
        }
    }

    #[test]
    fn backups_reach_the_mirrors_as_they_are_written_and_a_failing_one_is_dropped() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(a.path()));
        let repo: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(b.path()));
        let m = MirrorStore::start(
            Arc::clone(&local),
            vec![
                Mirror {
                    name: "good".into(),
                    store: Arc::clone(&repo),
                },
                Mirror {
                    name: "down".into(),
                    store: Arc::new(Broken),
                },
            ],
            true,
        );
        assert_eq!(
            m.put_once("main/chunks/ab/abc.zst", &mut |w| w.write_all(b"chunk")).unwrap(),
            Some(5)
        );
        assert_eq!(m.put_once("main/chunks/ab/abc.zst", &mut |w| w.write_all(b"chunk")).unwrap(), None);
        // A chunk an earlier backup stored, reused by this one without a write.
        local.put("main/chunks/ef/efg.zst", b"reused").unwrap();
        m.put("main/backups/b1.running", b"intent").unwrap();
        let index = serde_json::to_vec(&own_wal(&["ab/abc.zst", "ef/efg.zst"])).unwrap();
        m.put("main/backups/b1.json", &index).unwrap();
        assert_eq!(repo.get("main/chunks/ab/abc.zst").unwrap().unwrap(), b"chunk");
        assert_eq!(
            repo.get("main/chunks/ef/efg.zst").unwrap().unwrap(),
            b"reused",
            "completed before the index"
        );
        assert_eq!(repo.get("main/backups/b1.json").unwrap().unwrap(), index);
        assert_eq!(repo.get("main/backups/b1.running").unwrap(), None, "intent records stay local");
        assert_eq!(local.get("main/backups/b1.running").unwrap().unwrap(), b"intent");
        let failed = m.failed();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "down");
        // A chunk the local catalog had already still reaches a mirror that lacks it.
        local.put("main/chunks/cd/cde.zst", b"old").unwrap();
        assert_eq!(m.put_once("main/chunks/cd/cde.zst", &mut |w| w.write_all(b"old")).unwrap(), None);
        m.sync().unwrap();
        assert_eq!(repo.get("main/chunks/cd/cde.zst").unwrap().unwrap(), b"old");
    }

    #[test]
    fn without_local_chunks_they_go_to_the_repositories_only_and_one_must_take_them() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(a.path()));
        let repo: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(b.path()));
        let mirror = |store: Arc<dyn ObjectStore>| Mirror { name: "r".into(), store };
        let m = MirrorStore::start(Arc::clone(&local), vec![mirror(Arc::clone(&repo)), mirror(Arc::new(Broken))], false);
        assert_eq!(
            m.put_once("main/chunks/ab/abc.zst", &mut |w| w.write_all(b"chunk")).unwrap(),
            Some(5)
        );
        assert_eq!(local.get("main/chunks/ab/abc.zst").unwrap(), None, "not stored locally");
        m.sync().unwrap();
        assert_eq!(repo.get("main/chunks/ab/abc.zst").unwrap().unwrap(), b"chunk");
        let index = serde_json::to_vec(&own_wal(&["ab/abc.zst"])).unwrap();
        m.put("main/backups/b1.json", &index).unwrap();
        assert!(local.get("main/backups/b1.json").unwrap().is_some(), "the index stays local too");
        assert!(repo.get("main/backups/b1.json").unwrap().is_some());
        let alone = MirrorStore::start(local, vec![mirror(Arc::new(Broken))], false);
        // A second writer of the same chunk (another file with the same bytes) learns its size
        // although the local catalog does not have it.
        assert_eq!(m.put_once("main/chunks/ab/abc.zst", &mut |w| w.write_all(b"chunk")).unwrap(), None);
        assert_eq!(m.size("main/chunks/ab/abc.zst").unwrap(), Some(5));
        let e = alone.put_once("main/chunks/cd/cde.zst", &mut |w| w.write_all(b"x")).unwrap_err();
        assert!(e.to_string().contains("no repository took the chunk"), "{e}");
    }
}
