//! The uploader of one repository: copies every server's WAL and backups from the local catalog
//! into it, on a thread of its own, and says how far behind the repository is.
//!
//! Each pass, per server:
//! 1. complete WAL objects (`.zst`, or a plain segment with its `.sum`) and `.history` files
//!    the repository lacks go up, oldest name first, each under its catalog name (so nothing is
//!    ever uploaded twice under different names), sealed when encryption is configured, and
//!    verified (`RemoteStore` compares the store's ETag with the MD5 of what was sent);
//! 2. the open segment goes up as `<segment>.partial.zst` (zeros after the flushed position)
//!    every `partial_interval`, so the repository trails by seconds, not by a segment; it is
//!    deleted once the complete segment is there;
//! 3. backups the repository lacks go up: chunks it does not have, then the manifest, then the
//!    index last, as in the local catalog, under the repository's backup lock (a prune of the
//!    repository must not collect chunks whose index is not there yet);
//! 4. the server's mark (`catalog::offsite_mark`) is saved, for the local prune.
//!
//! What is still to upload is always recomputed from the local catalog, so the queue survives a
//! restart and cannot lose an entry; it is bounded by the local catalog, whose prune keeps what
//! a repository lacks. A failing server backs off (1 s doubling to a minute) and says why in
//! its progress; the next pass lists the repository again, so nothing is assumed uploaded that
//! an outage may have lost.

use super::lag::LagTracker;
use crate::catalog::backup_store::{self, BackupIndex};
use crate::catalog::continuity::{list_wal, WalObjectKind};
use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::offsite_mark::{self, OffsiteMark};
use crate::catalog::store::ObjectStore;
use crate::catalog::{segment_file, state, Catalog, Layout};
use crate::pg::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize};
use crate::util::time::unix_now;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The receiver's flushed timeline and position of a server (`None`: not streaming).
pub type FlushedFn = Arc<dyn Fn() -> Option<(TimelineId, Lsn)> + Send + Sync>;

/// One server the uploader copies.
#[derive(Clone)]
pub struct Source {
    pub server: String,
    pub flushed: FlushedFn,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub partial_interval: Duration,
    /// Uploads in flight at once.
    pub workers: usize,
}

pub const DEFAULT_WORKERS: usize = 4;
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The repository is listed again this often even without errors (objects deleted there by
/// someone else, a `repo copy` into it).
const RELIST_EVERY: Duration = Duration::from_secs(3600);
const IDLE_POLL: Duration = Duration::from_millis(250);

/// What one server's copy in one repository looks like (`pgark status`, the metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerProgress {
    pub repository: String,
    /// Bytes of WAL the local catalog has durably and the repository not, and how old the
    /// oldest of them is: what a restore from the repository alone would lose now.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// The repository's WAL position on the current timeline.
    pub remote_lsn: Option<Lsn>,
    /// Objects (and their bytes) waiting to go up.
    pub queued_objects: u64,
    pub queued_bytes: u64,
    /// Backups the repository has of this server.
    pub backups: usize,
    pub uploaded_objects_total: u64,
    pub uploaded_bytes_total: u64,
    pub upload_errors_total: u64,
    /// The last failure, when it happened and when the next try is (Unix seconds); cleared by
    /// a pass that succeeds.
    pub last_error: Option<String>,
    pub failing_since: Option<u64>,
    pub retry_at: Option<u64>,
    pub last_upload_at: Option<u64>,
}

/// Progress of every server, keyed by server name; shared with the daemon.
pub type Progress = Arc<Mutex<BTreeMap<String, ServerProgress>>>;

/// Per-server memory of what the repository has.
#[derive(Default)]
struct Known {
    listed_at: Option<Instant>,
    /// WAL file names in the repository (`X.zst`, `X`, `X.sum`, `N.history`, `X.partial.zst`).
    wal: BTreeSet<String>,
    backups: BTreeSet<String>,
    /// Chunk object names; listed when a backup is first to be uploaded.
    chunks: Option<BTreeSet<String>>,
    /// The partial object last uploaded: its segment and the position it holds.
    partial: Option<(WalFileName, Lsn)>,
    next_partial: Option<Instant>,
    /// The state file's timeline last uploaded.
    state_timeline: Option<TimelineId>,
    lag: LagTracker,
    mark: Option<OffsiteMark>,
    mark_saved_at: Option<Instant>,
    backoff: Option<(Instant, Duration)>,
}

pub struct Uploader {
    pub repository: String,
    local: Catalog,
    /// Where a backup's chunks are read: the local catalog, or with `backups_local: false` the
    /// local catalog followed by the other repositories.
    chunks: Arc<dyn ObjectStore>,
    repo: Catalog,
    sources: Vec<Source>,
    settings: Settings,
    progress: Progress,
    stop: Arc<AtomicBool>,
}

impl Uploader {
    pub fn new(
        repository: &str,
        local: Catalog,
        chunks: Arc<dyn ObjectStore>,
        repo: Catalog,
        sources: Vec<Source>,
        settings: Settings,
    ) -> Uploader {
        let progress: Progress = Arc::new(Mutex::new(
            sources
                .iter()
                .map(|s| {
                    (
                        s.server.clone(),
                        ServerProgress {
                            repository: repository.to_string(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        ));
        Uploader {
            repository: repository.to_string(),
            local,
            chunks,
            repo,
            sources,
            settings,
            progress,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn progress(&self) -> Progress {
        Arc::clone(&self.progress)
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Runs until the stop flag is set.
    pub fn run(self) {
        let mut known: BTreeMap<String, Known> = BTreeMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            let mut busy = false;
            for src in &self.sources {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = known.entry(src.server.clone()).or_default();
                if k.backoff.is_some_and(|(at, _)| Instant::now() < at) {
                    continue;
                }
                match self.pass(src, k) {
                    Ok(did) => {
                        busy |= did;
                        k.backoff = None;
                        self.update(&src.server, |p| {
                            p.last_error = None;
                            p.failing_since = None;
                            p.retry_at = None;
                        });
                    }
                    Err(e) => {
                        let wait = k.backoff.map_or(BACKOFF_FIRST, |(_, d)| (d * 2).min(BACKOFF_MAX));
                        k.backoff = Some((Instant::now() + wait, wait));
                        // After a failure nothing is assumed about the repository: list it again.
                        k.listed_at = None;
                        let first = self
                            .progress
                            .lock()
                            .map(|p| p.get(&src.server).is_none_or(|p| p.last_error.is_none()))
                            .unwrap_or(true);
                        if first {
                            tracing::warn!(server = %src.server, repository = %self.repository, error = %e, retry_in = ?wait, "upload to the repository failed; the local catalog keeps everything until it succeeds");
                        } else {
                            tracing::debug!(server = %src.server, repository = %self.repository, error = %e, retry_in = ?wait, "upload still failing");
                        }
                        let now = unix_now();
                        self.update(&src.server, |p| {
                            p.upload_errors_total += 1;
                            p.last_error = Some(e.to_string());
                            p.failing_since.get_or_insert(now);
                            p.retry_at = Some(now + wait.as_secs().max(1));
                        });
                    }
                }
            }
            if !busy {
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    fn update(&self, server: &str, f: impl FnOnce(&mut ServerProgress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(p.entry(server.to_string()).or_default());
        }
    }

    /// One pass over one server; true when something was uploaded.
    fn pass(&self, src: &Source, k: &mut Known) -> io::Result<bool> {
        let server = src.server.as_str();
        let local = self.local.store();
        let repo = self.repo.store();
        let Some(st) = state::load(local.as_ref(), server).map_err(|e| io::Error::other(e.to_string()))? else {
            return Ok(false); // nothing streamed yet
        };
        let seg = WalSegSize::new(st.wal_segment_size).map_err(|e| io::Error::other(format!("{server}: {e}")))?;
        let flushed = (src.flushed)();
        // When the repository cannot be listed, the queue and the lag are still computed from
        // what was known of it, so that `status` shows them growing during an outage.
        let mut unreachable = None;
        if k.listed_at.is_none_or(|t| t.elapsed() > RELIST_EVERY) {
            let listed = repo
                .list(&Layout::wal_key(server))
                .and_then(|wal| Ok((wal, backup_store::list_ids(repo.as_ref(), server)?)));
            match listed {
                Ok((wal, backups)) => {
                    k.wal = names(wal);
                    k.backups = backups.into_iter().collect();
                    k.chunks = None;
                    k.listed_at = Some(Instant::now());
                }
                Err(e) => unreachable = Some(e),
            }
        }
        if unreachable.is_none() {
            self.refresh_state(
                server,
                flushed.map(|(t, _)| t).unwrap_or(st.timeline),
                k,
                local.as_ref(),
                repo.as_ref(),
            )?;
        }

        // 1. Complete WAL and history files.
        let listing = list_wal(local.as_ref(), server, seg)?;
        let has = |kind: WalObjectKind, n: &WalFileName| listing.objects.iter().any(|o| o.kind == kind && o.name == *n);
        let mut todo: Vec<String> = Vec::new();
        let mut complete: BTreeSet<String> = BTreeSet::new();
        for o in &listing.objects {
            let base = o.name.format(seg);
            let file = match o.kind {
                WalObjectKind::Compressed => format!("{base}.zst"),
                // Uncompressed catalogs: the plain file once its `.sum` is there (the archiver
                // is done with it), then the `.sum`.
                WalObjectKind::Plain if has(WalObjectKind::Sum, &o.name) && !has(WalObjectKind::Compressed, &o.name) => base.clone(),
                WalObjectKind::Sum if !has(WalObjectKind::Compressed, &o.name) => format!("{base}.sum"),
                _ => continue,
            };
            complete.insert(base.clone());
            if !k.wal.contains(&file) {
                todo.push(file);
            }
        }
        for key in listing.histories.values() {
            let file = key.rsplit('/').next().unwrap_or_default().to_string();
            if !k.wal.contains(&file) {
                todo.push(file);
            }
        }
        // Oldest first; a history file before the segments of its timeline.
        todo.sort_by_key(|f| (f[..8].to_string(), !f.ends_with(".history"), f.clone()));
        todo.dedup();
        let queued_bytes: u64 = todo
            .iter()
            .take(256)
            .map(|f| local.size(&format!("{}/{f}", Layout::wal_key(server))).ok().flatten().unwrap_or(0))
            .sum();
        self.update(server, |p| {
            p.queued_objects = todo.len() as u64;
            p.queued_bytes = queued_bytes;
        });
        if let Some(e) = unreachable {
            self.report_lag(server, seg, flushed, k);
            return Err(e);
        }
        let wal_dir = Layout::wal_key(server);
        let keys: Vec<String> = todo.iter().map(|f| format!("{wal_dir}/{f}")).collect();
        let (done, failed) = copy_objects(
            local.as_ref(),
            repo.as_ref(),
            &keys,
            self.settings.workers,
            &self.stop,
            &|_, bytes| self.count(server, bytes),
        );
        let mut did = !done.is_empty();
        for &(i, _) in &done {
            k.wal.insert(todo[i].clone());
        }
        // A complete segment replaces its partial object.
        let stale: Vec<String> = k
            .wal
            .iter()
            .filter_map(|f| f.strip_suffix(".partial.zst"))
            .filter(|b| k.wal.contains(&format!("{b}.zst")) || k.wal.contains(*b))
            .map(str::to_string)
            .collect();
        for b in stale {
            repo.delete(&format!("{wal_dir}/{b}.partial.zst"))?;
            k.wal.remove(&format!("{b}.partial.zst"));
        }
        // Not uploaded: what failed, and (compressed catalogs) a completed segment the archiver
        // has not compressed yet, which may be older than ones it has (one it cannot read).
        let unarchived = listing
            .objects
            .iter()
            .filter(|o| o.kind == WalObjectKind::Plain && !has(WalObjectKind::Compressed, &o.name) && !has(WalObjectKind::Sum, &o.name))
            .map(|o| o.name.format(seg))
            .min();
        let missing_from = todo
            .iter()
            .enumerate()
            .filter(|(i, f)| !done.iter().any(|(d, _)| d == i) && !f.ends_with(".history"))
            .map(|(_, f)| f[..24].to_string())
            .chain(unarchived)
            .min();
        if let Some(e) = failed {
            self.report_lag(server, seg, flushed, k);
            self.save_mark(server, k, missing_from, complete.iter().next_back().cloned())?;
            return Err(e);
        }

        // 2. The open segment, as a partial object.
        if k.next_partial.is_none_or(|t| Instant::now() >= t) {
            k.next_partial = Some(Instant::now() + self.settings.partial_interval);
            if let Some((tli, pos)) = flushed {
                did |= self.upload_partial(server, seg, tli, pos, k, local.as_ref(), repo.as_ref())?;
            }
        }
        // The lag as of the WAL just uploaded, before a backup's chunks (which may take long).
        self.report_lag(server, seg, flushed, k);

        // 3. Backups.
        for id in backup_store::list_ids(local.as_ref(), server)? {
            if k.backups.contains(&id) || self.stop.load(Ordering::Relaxed) {
                continue;
            }
            match self.upload_backup(server, &id, k, local.as_ref(), repo.as_ref()) {
                Ok(true) => did = true,
                Ok(false) => {}
                Err(e) => {
                    self.report_lag(server, seg, flushed, k);
                    self.save_mark(server, k, missing_from, complete.iter().next_back().cloned())?;
                    return Err(e);
                }
            }
        }

        // 4. Lag and the mark.
        self.report_lag(server, seg, flushed, k);
        let backups = k.backups.len();
        self.update(server, |p| p.backups = backups);
        self.save_mark(server, k, missing_from, complete.iter().next_back().cloned())?;
        Ok(did)
    }

    /// What the server's state file says (segment size, system identifier): a restore on a
    /// fresh machine needs it. Uploaded first, and again when the timeline changes.
    fn refresh_state(
        &self,
        server: &str,
        timeline: TimelineId,
        k: &mut Known,
        local: &dyn ObjectStore,
        repo: &dyn ObjectStore,
    ) -> io::Result<()> {
        if k.state_timeline != Some(timeline) {
            if let Some(bytes) = local.get(&state::key(server))? {
                repo.put(&state::key(server), &bytes)?;
                k.state_timeline = Some(timeline);
            }
        }
        Ok(())
    }

    fn report_lag(&self, server: &str, seg: WalSegSize, flushed: Option<(TimelineId, Lsn)>, k: &mut Known) {
        let Some((tli, local_pos)) = flushed else { return };
        let remote = remote_position(k, seg, tli);
        let now = Instant::now();
        k.lag.sample(now, local_pos);
        let (bytes, age) = k.lag.lag(now, local_pos, remote);
        self.update(server, |p| {
            p.lag_bytes = Some(bytes);
            p.lag_seconds = Some(age.as_secs_f64());
            p.remote_lsn = Some(remote);
        });
    }

    fn count(&self, server: &str, bytes: u64) {
        let now = unix_now();
        self.update(server, |p| {
            p.uploaded_objects_total += 1;
            p.uploaded_bytes_total += bytes;
            p.last_upload_at = Some(now);
        });
    }

    /// Saves the mark when it changed (and at least every minute, so its time says it is alive).
    fn save_mark(&self, server: &str, k: &mut Known, missing_from: Option<String>, seen_until: Option<String>) -> io::Result<()> {
        let mark = OffsiteMark {
            format: offsite_mark::FORMAT,
            repository: self.repository.clone(),
            wal_missing_from: missing_from,
            wal_seen_until: seen_until,
            backups: k.backups.iter().cloned().collect(),
            written_at: unix_now(),
        };
        let same = k.mark.as_ref().is_some_and(|m| {
            OffsiteMark {
                written_at: 0,
                ..m.clone()
            } == OffsiteMark {
                written_at: 0,
                ..mark.clone()
            }
        });
        if same && k.mark_saved_at.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return Ok(());
        }
        offsite_mark::save(self.local.store().as_ref(), server, &mark)?;
        k.mark = Some(mark);
        k.mark_saved_at = Some(Instant::now());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_partial(
        &self,
        server: &str,
        seg: WalSegSize,
        tli: TimelineId,
        pos: Lsn,
        k: &mut Known,
        local: &dyn ObjectStore,
        repo: &dyn ObjectStore,
    ) -> io::Result<bool> {
        let offset = seg.offset(pos);
        if offset == 0 || k.partial.is_some_and(|(_, p)| p >= pos) {
            return Ok(false); // at a boundary the open segment holds nothing yet
        }
        let name = WalFileName::new(tli, seg.segno(pos));
        let base = name.format(seg);
        if k.wal.contains(&format!("{base}.zst")) || k.wal.contains(&base) {
            return Ok(false);
        }
        let wal_dir = Layout::wal_key(server);
        let Some(mut data) = local.get_unrecycled(&format!("{wal_dir}/{base}.partial"))? else {
            return Ok(false); // completed meanwhile: the next pass uploads the segment
        };
        // Only what was flushed when the position was read: the rest may be mid-write.
        let cut = (offset as usize).min(data.len());
        data[cut..].fill(0);
        let mut stored = Vec::with_capacity(cut / 2 + 64);
        segment_file::compress_into(&data, 1, &mut stored)?;
        let key = format!("{wal_dir}/{base}.partial.zst");
        repo.put(&key, &stored)?;
        self.count(server, stored.len() as u64);
        k.wal.insert(format!("{base}.partial.zst"));
        // The previous partial object, of an earlier segment, whose complete form may not be
        // uploaded yet: it stays until that segment is there.
        k.partial = Some((name, pos));
        Ok(true)
    }

    /// Uploads one backup; false when the repository's backup lock is held (a prune of it runs).
    fn upload_backup(&self, server: &str, id: &str, k: &mut Known, local: &dyn ObjectStore, repo: &dyn ObjectStore) -> io::Result<bool> {
        let _lock = match CatalogLock::acquire_backup(self.repo.root(), server) {
            Ok(l) => l,
            Err(LockError::BackupRunning { .. }) => return Ok(false),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        // Written there while it was taken (see `catalog::mirror_store`): nothing to do.
        if repo.size(&backup_store::index_key(server, id))?.is_some() {
            k.backups.insert(id.to_string());
            return Ok(true);
        }
        let index: BackupIndex = match backup_store::load(local, server, id) {
            Ok(i) => i,
            // Deleted meanwhile (a critical-pressure prune): nothing to upload.
            Err(backup_store::BackupStoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        // An index in a repository means "restorable from there": not before its WAL is.
        if let Ok(seg) = WalSegSize::new(index.wal_segment_size) {
            if index.wal_source == backup_store::WalSource::Catalog
                && index
                    .required_wal()
                    .iter()
                    .map(|n| n.format(seg))
                    .any(|n| !k.wal.contains(&format!("{n}.zst")) && !k.wal.contains(&n))
            {
                return Ok(false);
            }
        }
        if k.chunks.is_none() {
            let prefix = backup_store::chunks_key(server);
            let mut set = BTreeSet::new();
            for dir in repo.list(&prefix)? {
                for key in repo.list(&dir)? {
                    if let Some(obj) = key.strip_prefix(&format!("{prefix}/")) {
                        set.insert(obj.to_string());
                    }
                }
            }
            k.chunks = Some(set);
        }
        let have = k.chunks.get_or_insert_with(BTreeSet::new);
        let referenced: BTreeSet<String> = index.files.iter().flat_map(|f| f.chunks.iter().map(|c| c.object.clone())).collect();
        // Chunks the repository has already are reused by this backup: with object lock,
        // their lock must last as long as this backup may be kept (a no-op otherwise).
        for o in referenced.iter().filter(|o| have.contains(*o)) {
            repo.retain(&backup_store::chunk_key(server, o))?;
        }
        let objects: Vec<String> = referenced.into_iter().filter(|o| !have.contains(o)).collect();
        let keys: Vec<String> = objects.iter().map(|o| backup_store::chunk_key(server, o)).collect();
        self.update(server, |p| p.queued_objects += keys.len() as u64 + 1);
        let (done, failed) = copy_objects(self.chunks.as_ref(), repo, &keys, self.settings.workers, &self.stop, &|_, bytes| {
            self.count(server, bytes)
        });
        for &(i, _) in &done {
            have.insert(objects[i].clone());
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if self.stop.load(Ordering::Relaxed) {
            return Ok(true);
        }
        // A chunk missing locally (the backup deleted meanwhile) must not leave an index in the
        // repository that references nothing.
        if done.len() < keys.len() {
            let missing = keys
                .iter()
                .enumerate()
                .find(|(i, _)| !done.iter().any(|(d, _)| d == i))
                .map(|(_, k)| k.clone());
            return Err(io::Error::other(format!(
                "backup {id}: {} is missing from the local catalog; not publishing it in the repository",
                missing.unwrap_or_default()
            )));
        }
        let manifest = backup_store::manifest_key(server, id);
        if let Some(m) = local.get(&manifest)? {
            repo.put(&manifest, &m)?;
        }
        fail::fail_point!("offsite-before-index");
        backup_store::publish(repo, &index)?;
        tracing::info!(server, repository = %self.repository, backup = id, chunks = done.len(), "backup uploaded to the repository");
        k.backups.insert(id.to_string());
        Ok(true)
    }
}

/// File names of keys.
fn names(keys: Vec<String>) -> BTreeSet<String> {
    keys.into_iter().filter_map(|k| k.rsplit('/').next().map(str::to_string)).collect()
}

/// The repository's WAL position on timeline `tli`: the end of its newest complete segment
/// there, or the partial object's position if that is further.
fn remote_position(k: &Known, seg: WalSegSize, tli: TimelineId) -> Lsn {
    let complete = k
        .wal
        .iter()
        .filter(|f| f.len() == 24 || (f.len() == 28 && f.ends_with(".zst")))
        .filter_map(|f| WalFileName::parse(&f[..24], seg).ok())
        .filter(|n| n.tli == tli)
        .map(|n| seg.segment_start(SegNo(n.segno.0 + 1)))
        .max()
        .unwrap_or(Lsn(0));
    match k.partial {
        Some((n, p)) if n.tli == tli && p > complete => p,
        _ => complete,
    }
}

/// Copies `keys` from `from` to `to` with `workers` in flight; the indexes copied (with their
/// byte counts) and the first error. A key that vanished locally (recycled, pruned) is skipped.
/// `on_done` is told of each object as it lands (the progress counters move during a long batch).
pub(crate) fn copy_objects(
    from: &dyn ObjectStore,
    to: &dyn ObjectStore,
    keys: &[String],
    workers: usize,
    stop: &AtomicBool,
    on_done: &(dyn Fn(usize, u64) + Sync),
) -> (Vec<(usize, u64)>, Option<io::Error>) {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    let failed: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, keys.len().max(1)) {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) || failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { return };
                let got = if key.ends_with(".zst") || key.ends_with(".sum") || key.ends_with(".history") || key.contains("/chunks/") {
                    from.get(key)
                } else {
                    from.get_unrecycled(key)
                };
                let result = got.and_then(|b| match b {
                    Some(b) => to.put(key, &b).map(|()| Some(b.len() as u64)),
                    None => Ok(None),
                });
                match result {
                    Ok(Some(n)) => {
                        on_done(i, n);
                        if let Ok(mut d) = done.lock() {
                            d.push((i, n));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_default();
    done.sort();
    (done, failed.into_inner().unwrap_or(None))
}
