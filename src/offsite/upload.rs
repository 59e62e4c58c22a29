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
//! What is still to upload is derived from listings of the local catalog (listed again whenever
//! a name in its WAL or backups directory changed: `catalog::dir_watch`), never kept on disk, so
//! the queue survives a restart and cannot lose an entry; it is bounded by the local catalog,
//! whose prune keeps what a repository lacks. A failing server backs off (1 s doubling to a minute) and says why in
//! its progress; the next pass lists the repository again, so nothing is assumed uploaded that
//! an outage may have lost.

use super::lag::LagTracker;
use crate::catalog::backup_store::{self, BackupIndex};
use crate::catalog::continuity::{list_wal, WalObjectKind};
use crate::catalog::dir_watch::DirWatch;
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
    /// The local WAL directory, and what its last listing left to upload: listed again only
    /// when its names may have changed (or the repository was listed again), so an idle pass
    /// costs a stat, not a listing of every segment the catalog keeps.
    wal_watch: Option<DirWatch>,
    wal_plan: Option<WalPlan>,
    /// The local backups directory, and whether a backup was left for a later pass (its WAL
    /// not up yet, the repository's lock held).
    backups_watch: Option<DirWatch>,
    backups_pending: bool,
    /// A partial object may have become stale (a segment or a partial was uploaded, the
    /// repository listed): the repository's names are looked through for it.
    stale_partials_due: bool,
}

/// What a listing of the local WAL directory leaves to do.
#[derive(Debug, Default, PartialEq)]
struct WalPlan {
    /// Complete WAL objects and history files the repository lacked then, oldest first (a
    /// history file before the segments of its timeline).
    todo: Vec<String>,
    /// The newest complete segment (its base name).
    last_complete: Option<String>,
    /// The oldest completed segment the archiver has not compressed or summed yet (it may be
    /// older than ones it has: one it cannot read).
    oldest_unarchived: Option<String>,
}

impl WalPlan {
    /// From `<server>/wal/`'s names: what is complete, and what of it `in_repo` lacks.
    fn list(local: &dyn ObjectStore, server: &str, seg: WalSegSize, in_repo: &BTreeSet<String>) -> io::Result<WalPlan> {
        #[derive(Default)]
        struct Kinds {
            plain: bool,
            compressed: bool,
            sum: bool,
        }
        let listing = list_wal(local, server, seg)?;
        let mut by_name: BTreeMap<WalFileName, Kinds> = BTreeMap::new();
        for o in &listing.objects {
            let k = by_name.entry(o.name).or_default();
            match o.kind {
                WalObjectKind::Plain => k.plain = true,
                WalObjectKind::Compressed => k.compressed = true,
                WalObjectKind::Sum => k.sum = true,
                WalObjectKind::Partial => {}
            }
        }
        let mut plan = WalPlan::default();
        let want = |file: String, plan: &mut WalPlan| {
            if !in_repo.contains(&file) {
                plan.todo.push(file);
            }
        };
        for (name, k) in &by_name {
            let base = name.format(seg);
            if k.compressed {
                want(format!("{base}.zst"), &mut plan);
            } else if k.sum {
                // Uncompressed catalogs: the plain file once its `.sum` is there (the archiver
                // is done with it), then the `.sum`.
                if k.plain {
                    want(base.clone(), &mut plan);
                }
                want(format!("{base}.sum"), &mut plan);
            } else {
                if k.plain && plan.oldest_unarchived.as_ref().is_none_or(|o| base < *o) {
                    plan.oldest_unarchived = Some(base);
                }
                continue;
            }
            if plan.last_complete.as_ref().is_none_or(|l| base > *l) {
                plan.last_complete = Some(base);
            }
        }
        for key in listing.histories.values() {
            want(key.rsplit('/').next().unwrap_or_default().to_string(), &mut plan);
        }
        plan.todo.sort_by_key(|f| (f[..8].to_string(), !f.ends_with(".history"), f.clone()));
        plan.todo.dedup();
        Ok(plan)
    }
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
        let mut relisted = false;
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
                    relisted = true;
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

        // 1. Complete WAL and history files: the local directory is listed again only when its
        // names may have changed or the repository was listed again; otherwise what the last
        // listing left is what is still to do.
        let wal_watch = k
            .wal_watch
            .get_or_insert_with(|| DirWatch::new(vec![self.local.root().join(Layout::wal_key(server))]));
        if wal_watch.changed()? || relisted || k.wal_plan.is_none() {
            match WalPlan::list(local.as_ref(), server, seg, &k.wal) {
                Ok(plan) => k.wal_plan = Some(plan),
                Err(e) => {
                    wal_watch.forget();
                    return Err(e);
                }
            }
        }
        let plan = k.wal_plan.as_mut().expect("listed above");
        plan.todo.retain(|f| !k.wal.contains(f));
        let todo = plan.todo.clone();
        let (last_complete, unarchived) = (plan.last_complete.clone(), plan.oldest_unarchived.clone());
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
        // A complete segment replaces its partial object (the repository's names are looked
        // through only when one may have become stale).
        if std::mem::take(&mut k.stale_partials_due) || relisted || !done.is_empty() {
            let stale: Vec<String> = k
                .wal
                .iter()
                .filter_map(|f| f.strip_suffix(".partial.zst"))
                .filter(|b| k.wal.contains(&format!("{b}.zst")) || k.wal.contains(*b))
                .map(str::to_string)
                .collect();
            for b in stale {
                if let Err(e) = repo.delete(&format!("{wal_dir}/{b}.partial.zst")) {
                    k.stale_partials_due = true;
                    return Err(e);
                }
                k.wal.remove(&format!("{b}.partial.zst"));
            }
        }
        // Not uploaded: what failed, and (compressed catalogs) a completed segment the archiver
        // has not compressed yet, which may be older than ones it has (one it cannot read).
        let missing_from = todo
            .iter()
            .enumerate()
            .filter(|(i, f)| !done.iter().any(|(d, _)| d == i) && !f.ends_with(".history"))
            .map(|(_, f)| f[..24].to_string())
            .chain(unarchived)
            .min();
        if let Some(e) = failed {
            self.report_lag(server, seg, flushed, k);
            self.save_mark(server, k, missing_from, last_complete.clone())?;
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

        // 3. Backups: the local ones are listed again when the directory changed, the repository
        // was listed again, or one was left for later.
        let backups_watch = k
            .backups_watch
            .get_or_insert_with(|| DirWatch::new(vec![self.local.root().join(backup_store::backups_key(server))]));
        let look = backups_watch.changed()? || relisted || k.backups_pending;
        let ids = if look {
            backup_store::list_ids(local.as_ref(), server).inspect_err(|_| backups_watch.forget())?
        } else {
            Vec::new()
        };
        for id in &ids {
            if k.backups.contains(id) || self.stop.load(Ordering::Relaxed) {
                continue;
            }
            match self.upload_backup(server, id, k, local.as_ref(), repo.as_ref()) {
                Ok(true) => did = true,
                Ok(false) => {}
                Err(e) => {
                    k.backups_pending = true;
                    self.report_lag(server, seg, flushed, k);
                    self.save_mark(server, k, missing_from, last_complete.clone())?;
                    return Err(e);
                }
            }
        }

        if look {
            k.backups_pending = ids.iter().any(|id| !k.backups.contains(id));
        }

        // 4. Lag and the mark.
        self.report_lag(server, seg, flushed, k);
        let backups = k.backups.len();
        self.update(server, |p| p.backups = backups);
        self.save_mark(server, k, missing_from, last_complete.clone())?;
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
        k.stale_partials_due = true;
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
    // Names sort by timeline, then segment (`%08X%08X%08X`): the newest complete segment of
    // `tli` is near the top of its range, found without walking every name (this runs at every
    // pass, and a repository holds a week of segments).
    let prefix = format!("{:08X}", tli.0);
    let complete = k
        .wal
        .range(prefix.clone()..format!("{prefix}~"))
        .rev()
        .filter(|f| f.len() == 24 || (f.len() == 28 && f.ends_with(".zst")))
        .find_map(|f| WalFileName::parse(&f[..24], seg).ok().filter(|n| n.tli == tli))
        .map(|n| seg.segment_start(SegNo(n.segno.0 + 1)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::dir_watch::DirWatch;
    use crate::catalog::state::ServerState;
    use crate::catalog::store::counting::CountingStore;
    use crate::catalog::store::LocalStore;

    fn segment(n: u64) -> String {
        WalFileName::new(TimelineId(1), SegNo(n)).format(WalSegSize::DEFAULT)
    }

    /// An idle pass costs a stat of the local WAL and backups directories, not a listing of
    /// every segment the catalog keeps; a change of names is seen by the next pass.
    #[test]
    fn an_idle_pass_lists_nothing_again() {
        let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let local = Arc::new(CountingStore::new(LocalStore::new(l.path())));
        let state = ServerState {
            system_identifier: 1,
            wal_segment_size: WalSegSize::DEFAULT.bytes(),
            server_version_num: 150000,
            timeline: TimelineId(1),
            flushed_lsn: Lsn(0),
            updated_at: 0,
        };
        state::save(local.as_ref(), "main", &state).unwrap();
        for n in 1..=3 {
            local.put(&format!("main/wal/{}.zst", segment(n)), b"wal").unwrap();
        }
        let repo_store = Arc::new(LocalStore::new(r.path()));
        let up = Uploader::new(
            "r",
            Catalog::with_store(l.path(), local.clone()),
            local.clone(),
            Catalog::with_store(r.path(), repo_store.clone()),
            vec![Source {
                server: "main".into(),
                flushed: Arc::new(|| None),
            }],
            Settings {
                partial_interval: Duration::from_secs(10),
                workers: 1,
            },
        );
        let mut k = Known {
            wal_watch: Some(DirWatch::new(vec![l.path().join("main/wal")]).with_racy_secs(0)),
            backups_watch: Some(DirWatch::new(vec![l.path().join("main/backups")]).with_racy_secs(0)),
            ..Known::default()
        };
        let src = up.sources[0].clone();
        assert!(up.pass(&src, &mut k).unwrap());
        let uploaded = |n| repo_store.size(&format!("main/wal/{}.zst", segment(n))).unwrap().is_some();
        assert!((1..=3).all(uploaded));
        let (wal_lists, backup_lists) = (local.lists_of("main/wal"), local.lists_of("main/backups"));
        for _ in 0..5 {
            assert!(!up.pass(&src, &mut k).unwrap());
        }
        assert_eq!(local.lists_of("main/wal"), wal_lists, "an idle pass listed the WAL again");
        assert_eq!(
            local.lists_of("main/backups"),
            backup_lists,
            "an idle pass listed the backups again"
        );
        // A new segment (in a clock tick of its own): the next pass lists and uploads it.
        std::thread::sleep(Duration::from_millis(30));
        local.put(&format!("main/wal/{}.zst", segment(4)), b"wal").unwrap();
        assert!(up.pass(&src, &mut k).unwrap());
        assert!(uploaded(4));
        assert_eq!(local.lists_of("main/wal"), wal_lists + 1);
        let mark = offsite_mark::load(local.as_ref(), "main", "r").unwrap().unwrap();
        assert_eq!(mark.wal_seen_until, Some(segment(4)));
        assert_eq!(mark.wal_missing_from, None);
    }

    /// The repository's position on a timeline: the end of its newest complete segment there,
    /// found from the top of the timeline's names (partials, sums and histories skipped).
    #[test]
    fn remote_position_from_the_newest_name_of_the_timeline() {
        let seg = WalSegSize::DEFAULT;
        let tli2 = |n| WalFileName::new(TimelineId(2), SegNo(n)).format(seg);
        let mut k = Known::default();
        for f in [
            "00000001.history".to_string(),
            "00000002.history".to_string(),
            format!("{}.zst", segment(7)),
            format!("{}.zst", segment(9)),
            format!("{}.partial.zst", segment(10)),
            format!("{}.sum", segment(11)),
            tli2(12),
            format!("{}.sum", tli2(12)),
            format!("{}.partial.zst", tli2(13)),
        ] {
            k.wal.insert(f);
        }
        assert_eq!(remote_position(&k, seg, TimelineId(1)), seg.segment_start(SegNo(10)));
        assert_eq!(remote_position(&k, seg, TimelineId(2)), seg.segment_start(SegNo(13)));
        assert_eq!(remote_position(&k, seg, TimelineId(3)), Lsn(0));
        k.partial = Some((
            WalFileName::new(TimelineId(1), SegNo(10)),
            Lsn(seg.segment_start(SegNo(10)).0 + 100),
        ));
        assert_eq!(remote_position(&k, seg, TimelineId(1)), Lsn(seg.segment_start(SegNo(10)).0 + 100));
    }

    /// What a listing leaves to do: compressed segments, a plain one only once its `.sum` is
    /// there, histories before their timeline's segments; the oldest unarchived segment.
    #[test]
    fn the_plan_of_a_listing() {
        let l = tempfile::tempdir().unwrap();
        let local = LocalStore::new(l.path());
        let put = |name: &str| local.put(&format!("main/wal/{name}"), b"x").unwrap();
        put(&format!("{}.zst", segment(1)));
        put(&segment(2)); // completed, not archived yet
        put(&format!("{}.zst", segment(3)));
        put(&format!("{}.partial", segment(4)));
        put("00000002.history");
        let s5 = WalFileName::new(TimelineId(2), SegNo(5)).format(WalSegSize::DEFAULT);
        put(&s5);
        put(&format!("{s5}.sum"));
        let in_repo: BTreeSet<String> = [format!("{}.zst", segment(1))].into();
        let plan = WalPlan::list(&local, "main", WalSegSize::DEFAULT, &in_repo).unwrap();
        assert_eq!(
            plan,
            WalPlan {
                todo: vec![
                    format!("{}.zst", segment(3)),
                    "00000002.history".into(),
                    s5.clone(),
                    format!("{s5}.sum")
                ],
                last_complete: Some(s5),
                oldest_unarchived: Some(segment(2)),
            }
        );
    }
}
