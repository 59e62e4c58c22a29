//! The storage side of a backup: file data cut into chunks, hashed, compressed and stored on a
//! pool of worker threads, so that compression never holds back the network stream (the stream
//! only waits when every worker is busy and the small queue is full: backpressure, not loss).
//!
//! Each chunk is named by the SHA-256 of its raw bytes. A chunk the previous backup already
//! stored (or one this backup stored a moment ago) is referenced, not compressed or written again.
//! Each chunk's CRC-32C is computed on the way; a file's CRC is combined from its chunks' in order
//! and is what the backup_manifest check compares.

use crate::catalog::backup_store::{self, ChunkRef};
use crate::catalog::segment_file;
use crate::catalog::store::ObjectStore;
use crate::catalog::Compression;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

struct Job {
    file: usize,
    chunk: usize,
    data: Vec<u8>,
}

/// What a worker reports for one chunk.
#[derive(Debug)]
pub struct ChunkDone {
    pub file: usize,
    pub chunk: usize,
    pub crc32c: u32,
    pub chunk_ref: ChunkRef,
    /// Stored now (false: reused an existing chunk).
    pub new: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("storing a backup chunk: {0}")]
    Io(#[from] io::Error),
    #[error("the catalog filesystem ({path}) is down to {free} bytes free, below the {reserve}-byte reserve kept for WAL streaming; the backup had stored {written} bytes and needed about {needed} more")]
    NoSpace {
        path: PathBuf,
        free: u64,
        reserve: u64,
        written: u64,
        needed: u64,
    },
}

/// Settings shared by the workers.
pub struct PipelineConfig {
    pub server: String,
    pub compression: Compression,
    pub workers: usize,
    /// Chunks a new backup may reuse, by SHA-256 hex.
    pub reusable: BTreeMap<String, ChunkRef>,
    /// The server's directory in the catalog (`<catalog>/<server>`: free space is checked on the
    /// filesystem the chunks go to, also when a volume is mounted there) and the space to leave
    /// free.
    pub catalog_root: PathBuf,
    pub min_free: u64,
    /// Expected bytes still to store, for the out-of-space message.
    pub estimated_total: u64,
}

struct Shared {
    cfg: PipelineConfig,
    store: Arc<dyn ObjectStore>,
    /// Chunks stored by this backup so far, by hash.
    stored_now: Mutex<HashMap<String, ChunkRef>>,
    failed: AtomicBool,
    stored_bytes: AtomicU64,
    raw_bytes: AtomicU64,
}

pub struct Pipeline {
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Result<ChunkDone, PipelineError>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &std::path::Path) -> io::Result<u64> {
    crate::catalog::store::filesystem_capacity(path).map(|c| c.free)
}

impl Pipeline {
    pub fn start(cfg: PipelineConfig, store: Arc<dyn ObjectStore>) -> Pipeline {
        let workers = cfg.workers.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
        let (res_tx, res_rx) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let shared = Arc::new(Shared {
            cfg,
            store,
            stored_now: Mutex::new(HashMap::new()),
            failed: AtomicBool::new(false),
            stored_bytes: AtomicU64::new(0),
            raw_bytes: AtomicU64::new(0),
        });
        let handles = (0..workers)
            .map(|i| {
                let rx = Arc::clone(&job_rx);
                let tx = res_tx.clone();
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("pgark-backup-{i}"))
                    .spawn(move || worker(&shared, &rx, &tx))
                    .expect("spawning a backup worker thread")
            })
            .collect();
        Pipeline {
            jobs: Some(job_tx),
            results: res_rx,
            workers: handles,
            shared,
        }
    }

    /// Queues one chunk; blocks while every worker is busy (backpressure on the network read).
    /// Returns false if the pipeline has failed (the caller then collects the error with `finish`).
    pub fn submit(&self, file: usize, chunk: usize, data: Vec<u8>) -> bool {
        if self.shared.failed.load(Ordering::Relaxed) {
            return false;
        }
        match &self.jobs {
            Some(tx) => tx.send(Job { file, chunk, data }).is_ok(),
            None => false,
        }
    }

    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Bytes written to the catalog so far (new chunks only).
    pub fn stored_bytes(&self) -> u64 {
        self.shared.stored_bytes.load(Ordering::Relaxed)
    }

    /// Waits for every queued chunk and returns their results, or the first error.
    pub fn finish(mut self) -> Result<Vec<ChunkDone>, PipelineError> {
        drop(self.jobs.take());
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for r in self.results.try_iter() {
            match r {
                Ok(d) => out.push(d),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.failed.store(true, Ordering::Relaxed);
        drop(self.jobs.take());
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(shared: &Shared, jobs: &Mutex<Receiver<Job>>, results: &mpsc::Sender<Result<ChunkDone, PipelineError>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Err(_) => return,
        };
        if shared.failed.load(Ordering::Relaxed) {
            continue; // drain without work once something failed
        }
        let r = store_chunk(shared, job);
        if r.is_err() {
            shared.failed.store(true, Ordering::Relaxed);
        }
        if results.send(r).is_err() {
            return;
        }
    }
}

fn store_chunk(shared: &Shared, job: Job) -> Result<ChunkDone, PipelineError> {
    let crc = crc32c::crc32c(&job.data);
    let hash = crate::util::hex::to_hex(&Sha256::digest(&job.data));
    shared.raw_bytes.fetch_add(job.data.len() as u64, Ordering::Relaxed);
    let compressed = matches!(shared.cfg.compression, Compression::Zstd(_));
    let object = backup_store::chunk_object(&hash, compressed);
    let blake = blake3::hash(&job.data).to_hex().to_string();
    let reuse = |c: &ChunkRef| c.object == object && c.size == job.data.len() as u64;
    if let Some(c) = shared.cfg.reusable.get(&hash).filter(|c| reuse(c)) {
        let mut c = c.clone();
        c.blake3 = Some(blake);
        return Ok(done(&job, crc, c, false));
    }
    if let Some(c) = shared.stored_now.lock().ok().and_then(|m| m.get(&hash).cloned()) {
        return Ok(done(&job, crc, c, false));
    }
    let free = free_space(&shared.cfg.catalog_root)?;
    if free < shared.cfg.min_free + 2 * job.data.len() as u64 {
        let written = shared.stored_bytes.load(Ordering::Relaxed);
        let raw = shared.raw_bytes.load(Ordering::Relaxed);
        return Err(PipelineError::NoSpace {
            path: shared.cfg.catalog_root.clone(),
            free,
            reserve: shared.cfg.min_free,
            written,
            needed: estimate_remaining(shared.cfg.estimated_total, raw, written),
        });
    }
    let mut stored = 0u64;
    let key = backup_store::chunk_key(&shared.cfg.server, &object);
    let level = match shared.cfg.compression {
        Compression::Zstd(l) => Some(l),
        Compression::None => None,
    };
    // A chunk that exists already is never rewritten (audit finding 2): every chunk in the
    // catalog is referenced by a published, durable backup (garbage collection, under the backup
    // lock, removed any other before this backup started).
    let put = shared.store.put_once(&key, &mut |w| {
        let mut counter = crate::util::io::CountingWriter::new(w);
        match level {
            Some(l) => {
                segment_file::compress_into(&job.data, l, &mut counter)?;
            }
            None => io::Write::write_all(&mut counter, &job.data)?,
        }
        stored = counter.count();
        Ok(())
    });
    let put = match put {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            let existing = shared.store.size(&key)?.unwrap_or(0);
            let c = ChunkRef {
                object,
                size: job.data.len() as u64,
                stored: existing,
                blake3: Some(blake),
                crc32c: None,
            };
            if let Ok(mut m) = shared.stored_now.lock() {
                m.insert(hash, c.clone());
            }
            return Ok(done(&job, crc, c, false));
        }
        Err(e) => Err(e),
    };
    if let Err(e) = put {
        // Errors carry path context (so no raw errno); the kind survives.
        if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
            let written = shared.stored_bytes.load(Ordering::Relaxed);
            let raw = shared.raw_bytes.load(Ordering::Relaxed);
            return Err(PipelineError::NoSpace {
                path: shared.cfg.catalog_root.clone(),
                free: free_space(&shared.cfg.catalog_root).unwrap_or(0),
                reserve: shared.cfg.min_free,
                written,
                needed: estimate_remaining(shared.cfg.estimated_total, raw, written),
            });
        }
        return Err(e.into());
    }
    shared.stored_bytes.fetch_add(stored, Ordering::Relaxed);
    let c = ChunkRef {
        object,
        size: job.data.len() as u64,
        stored,
        blake3: Some(blake),
        crc32c: None,
    };
    if let Ok(mut m) = shared.stored_now.lock() {
        m.insert(hash, c.clone());
    }
    Ok(done(&job, crc, c, true))
}

/// Remaining stored bytes, scaled by the compression seen so far.
fn estimate_remaining(estimated_raw_total: u64, raw_so_far: u64, stored_so_far: u64) -> u64 {
    if raw_so_far == 0 {
        return estimated_raw_total;
    }
    let left = estimated_raw_total.saturating_sub(raw_so_far);
    (left as f64 * stored_so_far as f64 / raw_so_far as f64) as u64
}

fn done(job: &Job, crc32c: u32, mut chunk_ref: ChunkRef, new: bool) -> ChunkDone {
    chunk_ref.crc32c = Some(crc32c);
    ChunkDone {
        file: job.file,
        chunk: job.chunk,
        crc32c,
        chunk_ref,
        new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    #[test]
    fn stores_dedups_and_combines_crcs() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(d.path()));
        let cfg = || PipelineConfig {
            server: "main".into(),
            compression: Compression::Zstd(1),
            workers: 2,
            reusable: BTreeMap::new(),
            catalog_root: d.path().to_path_buf(),
            min_free: 0,
            estimated_total: 0,
        };
        let p = Pipeline::start(cfg(), Arc::clone(&store));
        let a = vec![7u8; 1000];
        let b: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        assert!(p.submit(0, 0, a.clone()));
        assert!(p.submit(0, 1, b.clone()));
        assert!(p.submit(1, 0, a.clone()));
        let mut res = p.finish().unwrap();
        res.sort_by_key(|r| (r.file, r.chunk));
        assert_eq!(res.len(), 3);
        assert_eq!(res[0].chunk_ref, res[2].chunk_ref, "identical chunks share one object");
        let whole: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        assert_eq!(
            crate::catalog::backup_store::combine_crc(&[(res[0].crc32c, 1000), (res[1].crc32c, 3000)]),
            crc32c::crc32c(&whole)
        );
        assert_eq!(crate::catalog::backup_store::combine_crc(&[]), crc32c::crc32c(b""));
        let stored = store
            .get(&backup_store::chunk_key("main", &res[1].chunk_ref.object))
            .unwrap()
            .unwrap();
        assert_eq!(segment_file::decompress(&stored).unwrap(), b);
        // A second run with the first one's chunks as reusable stores nothing new.
        let mut c = cfg();
        c.reusable = res
            .iter()
            .map(|r| (r.chunk_ref.object[3..67].to_string(), r.chunk_ref.clone()))
            .collect();
        let p = Pipeline::start(c, store);
        assert!(p.submit(0, 0, b));
        let again = p.finish().unwrap();
        assert!(!again[0].new);
    }

    /// Audit finding 2: a chunk already in the catalog (an older backup's, not the newest's, so
    /// not in `reusable`) is referenced, never written again over the durable copy.
    #[test]
    fn an_existing_chunk_is_never_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(d.path()));
        let cfg = || PipelineConfig {
            server: "main".into(),
            compression: Compression::Zstd(1),
            workers: 1,
            reusable: BTreeMap::new(),
            catalog_root: d.path().to_path_buf(),
            min_free: 0,
            estimated_total: 0,
        };
        let data = vec![3u8; 10_000];
        let p = Pipeline::start(cfg(), Arc::clone(&store));
        assert!(p.submit(0, 0, data.clone()));
        let first = p.finish().unwrap().remove(0);
        assert!(first.new);
        let path = d.path().join("main/chunks").join(&first.chunk_ref.object);
        let ino = std::fs::metadata(&path).unwrap().ino();
        let p = Pipeline::start(cfg(), Arc::clone(&store));
        assert!(p.submit(0, 0, data));
        let again = p.finish().unwrap().remove(0);
        assert!(!again.new, "counted as newly stored");
        assert_eq!(again.chunk_ref.stored, first.chunk_ref.stored);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino, "the durable chunk was replaced");
    }

    #[test]
    fn refuses_to_eat_the_wal_reserve() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(d.path()));
        let p = Pipeline::start(
            PipelineConfig {
                server: "main".into(),
                compression: Compression::None,
                workers: 1,
                reusable: BTreeMap::new(),
                catalog_root: d.path().to_path_buf(),
                min_free: u64::MAX / 4,
                estimated_total: 100,
            },
            store,
        );
        p.submit(0, 0, vec![1, 2, 3]);
        assert!(matches!(p.finish(), Err(PipelineError::NoSpace { .. })));
    }
}
