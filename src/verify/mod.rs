//! `pgark verify`: reads back what the catalog holds for a server's backups and proves it can
//! still be restored: every chunk (size, header, CRC-32C, SHA-256 name), every file against
//! PostgreSQL's `backup_manifest`, and every WAL segment from a backup's start to the newest WAL
//! in the catalog (checksum and page headers, following timeline switches). It reports each
//! problem with the backup, file, chunk or segment named, and the point-in-time ranges no longer
//! reachable; the result of each backup is stored beside its index (`record`).
//!
//! Read-only. The server's restore lock is held shared for the whole run, so a delete or prune
//! (which takes it exclusively) never removes what is being read.
//!
//! - `page`: the WAL page-header checker (pure)
//! - `wal`: the timeline path and reading one segment in any stored form
//! - `chunks`: chunk checks, at a bounded read rate; `pool`: the threads they and the WAL run on
//! - `manifest`: verify's own backup_manifest parser and self-check
//! - `record`: problems, and the stored per-backup result

pub mod chunks;
pub mod manifest;
pub mod page;
pub mod pool;
pub mod record;
pub mod wal;

use crate::catalog::backup_store::{self, BackupIndex, BackupStoreError, FileKind, WalSource};
use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::store::ObjectStore;
use crate::catalog::Catalog;
use crate::pg::{Lsn, SegNo, WalFileName, WalSegSize};
use crate::util::progress::Progress;
use chunks::{ChunkOutcome, Throttle};
use record::{Problem, Subject, VerifyRecord};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Default read rate of the daemon's scheduled verify: far below what a catalog disk gives, so
/// WAL streaming (fsync latency) never starves behind it.
pub const DEFAULT_MAX_RATE: u64 = 100_000_000;

/// Which backups to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Newest,
    One(String),
    All,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Threads checking chunks and WAL segments.
    pub jobs: usize,
    /// Bytes read per second over all threads; `None` unlimited.
    pub max_rate: Option<u64>,
    /// Set to stop early (the daemon's shutdown): the run ends with `VerifyError::Stopped`.
    pub stop: Arc<AtomicBool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // Two threads per CPU: while one waits for a read (verify reads what is not in the
            // page cache), the other's decompression and hashing keep the CPU busy. Measured on
            // 2 CPUs with a cold cache: 4 threads 1.29 s, 2 threads 1.47 s (BENCHMARKS.md).
            jobs: std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).clamp(2, 8),
            max_rate: None,
            stop: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// An unknown backup id (`NotFound`) or an unreadable index.
    #[error(transparent)]
    Store(#[from] BackupStoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("server {0} has no backups to verify")]
    NoBackups(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("verify stopped before the end")]
    Stopped,
}

/// One backup's result.
#[derive(Debug, Clone, Serialize)]
pub struct BackupResult {
    pub id: String,
    /// `ok` or `damaged`.
    pub status: &'static str,
    pub problem_count: u64,
    pub problems: Vec<Problem>,
    pub bytes_checked: u64,
    pub seconds: f64,
}

/// What a run found (the `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server: String,
    /// `ok` or `damaged`.
    pub status: &'static str,
    /// Newest first.
    pub backups: Vec<BackupResult>,
    /// Every problem once (WAL shared by several backups is listed once).
    pub problems: Vec<Problem>,
    /// Point-in-time ranges no longer reachable, and backups that cannot be restored, as sentences.
    pub unreachable: Vec<String>,
    pub chunks_checked: u64,
    pub files_checked: u64,
    pub segments_checked: u64,
    /// Stored bytes read (chunks as stored, WAL as stored).
    pub bytes_checked: u64,
    pub seconds: f64,
    pub bytes_per_second: u64,
    /// Newest WAL file the check reached (`None`: no WAL in the catalog).
    pub wal_end: Option<String>,
    /// Segments missing inside gaps an operator acknowledged (not counted as problems).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_missing: Vec<String>,
}

impl Report {
    pub fn problem_count(&self) -> usize {
        self.problems.len()
    }
}

/// A WAL file found missing or damaged.
#[derive(Debug, Clone)]
struct WalDamage {
    segno: SegNo,
    name: String,
    missing: bool,
}

/// Verifies backups of `server` in `catalog` (newest first), stores each backup's result, and
/// returns the report. Holds the server's restore lock (shared) throughout.
pub fn verify(
    catalog: &Catalog,
    server: &str,
    selection: &Selection,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<Report, VerifyError> {
    let _lock = CatalogLock::acquire_restore_reader(catalog.root(), server)?;
    let store = catalog.store();
    let store = store.as_ref();
    let started = Instant::now();
    let ids = backup_store::list_ids(store, server)?;
    let chosen: Vec<String> = match selection {
        Selection::Newest => ids.last().cloned().into_iter().collect(),
        Selection::All => ids.iter().rev().cloned().collect(),
        Selection::One(id) => {
            if !ids.contains(id) {
                return Err(BackupStoreError::NotFound {
                    server: server.to_string(),
                    id: id.clone(),
                }
                .into());
            }
            vec![id.clone()]
        }
    };
    if chosen.is_empty() {
        return Err(VerifyError::NoBackups(server.to_string()));
    }
    let mut run = Run {
        store,
        server,
        opts,
        throttle: Throttle::new(opts.max_rate),
        read: AtomicU64::new(0),
        chunks: HashMap::new(),
        wal_checked: BTreeMap::new(),
        wal: None,
        files_checked: 0,
        acked: crate::catalog::continuity::acknowledged(store, server)?,
        acknowledged_missing: Default::default(),
        pinned: {
            let now = crate::util::time::unix_now();
            crate::catalog::pin::load_all(store, server)?
                .into_iter()
                .filter(|(_, p)| p.active(now))
                .map(|(id, _)| id)
                .collect()
        },
        newest_id: ids.last().cloned(),
    };
    // One index in memory at a time (a large backup's index lists every chunk). The progress
    // total is the first backup and its WAL; with --all the bar grows as older ones follow.
    let mut results = Vec::new();
    let mut begun = false;
    for id in &chosen {
        let idx = match backup_store::load(store, server, id) {
            Ok(i) => i,
            // An index that no longer loads is damage to report, not a reason to stop.
            Err(BackupStoreError::BadIndex { key, reason }) => {
                results.push(BackupResult {
                    id: id.clone(),
                    status: record::status_text(1),
                    problem_count: 1,
                    problems: vec![Problem {
                        subject: Subject::Backup,
                        object: id.clone(),
                        backup: Some(id.clone()),
                        message: format!("its index {key} is damaged: {reason}"),
                    }],
                    bytes_checked: 0,
                    seconds: 0.0,
                });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !begun {
            begun = true;
            run.prepare_wal(&idx)?;
            let chunk_bytes: u64 = idx.files.iter().flat_map(|f| f.chunks.iter()).map(|c| c.stored).sum();
            progress.begin(Some(chunk_bytes + run.wal_estimate(&idx)));
        }
        let (t0, b0) = (Instant::now(), run.read.load(Ordering::Relaxed));
        progress.phase(&format!("{server}: verifying backup {}", idx.id));
        let problems = run.backup(&idx, progress)?;
        let bytes = run.read.load(Ordering::Relaxed) - b0;
        results.push(BackupResult {
            id: idx.id.clone(),
            status: record::status_text(problems.len() as u64),
            problem_count: problems.len() as u64,
            problems,
            bytes_checked: bytes,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    // Every problem once (WAL problems are shared by the backups before them).
    let mut seen = std::collections::HashSet::new();
    let all_problems: Vec<Problem> = results
        .iter()
        .flat_map(|r| r.problems.iter())
        .filter(|p| seen.insert(*p))
        .cloned()
        .collect();
    let unreachable = run.unreachable()?;
    for r in &results {
        let rec = VerifyRecord {
            format: record::RECORD_FORMAT,
            backup: r.id.clone(),
            verified_at: crate::util::time::unix_now(),
            status: r.status.to_string(),
            problem_count: r.problem_count,
            problems: r.problems.iter().take(record::MAX_STORED_PROBLEMS).cloned().collect(),
            unreachable: unreachable.clone(),
            bytes_checked: r.bytes_checked,
            seconds: r.seconds,
        };
        if let Err(e) = record::store(store, server, &rec) {
            progress.phase(&format!("warning: cannot store the verify result of {}: {e}", r.id));
        }
    }
    progress.end();
    let seconds = started.elapsed().as_secs_f64();
    let bytes = run.read.load(Ordering::Relaxed);
    Ok(Report {
        server: server.to_string(),
        status: record::status_text(all_problems.len() as u64),
        backups: results,
        problems: all_problems,
        unreachable,
        chunks_checked: run.chunks.len() as u64,
        files_checked: run.files_checked,
        segments_checked: run.wal_checked.len() as u64,
        bytes_checked: bytes,
        seconds,
        bytes_per_second: (bytes as f64 / seconds.max(0.001)) as u64,
        acknowledged_missing: run.acknowledged_missing.iter().cloned().collect(),
        wal_end: run
            .wal
            .as_ref()
            .and_then(|w| w.end.as_ref().map(|(p, e)| p.file_for(w.seg, *e).format(w.seg))),
    })
}

/// What the WAL check needs, found once per run.
struct WalContext {
    seg: WalSegSize,
    end: Option<(wal::TimelinePath, SegNo)>,
    history_problem: Option<String>,
    expect: page::Expect,
}

struct Run<'a> {
    store: &'a dyn ObjectStore,
    server: &'a str,
    opts: &'a Options,
    throttle: Throttle,
    read: AtomicU64,
    /// Chunks read so far in this run (shared chunks are read once).
    chunks: HashMap<String, ChunkOutcome>,
    /// WAL segments checked so far: the damage found, if any.
    wal_checked: BTreeMap<SegNo, Option<(WalDamage, Problem)>>,
    wal: Option<WalContext>,
    files_checked: u64,
    /// Gaps an operator acknowledged (`pgark verify --acknowledge-gap`): a segment missing
    /// inside one is listed in `Report::acknowledged_missing`, not as a problem.
    acked: Vec<crate::catalog::continuity::AcknowledgedGap>,
    acknowledged_missing: std::collections::BTreeSet<String>,
    /// Backups with an active pin (see `wal_for`), and the newest backup's id.
    pinned: std::collections::BTreeSet<String>,
    newest_id: Option<String>,
}

impl Run<'_> {
    fn stopped(&self) -> Result<(), VerifyError> {
        if self.opts.stop.load(Ordering::Relaxed) {
            return Err(VerifyError::Stopped);
        }
        Ok(())
    }

    /// Lists the WAL and finds the timeline path to its newest file (the newest backup gives
    /// the segment size, major and system identifier: they never change within a server).
    fn prepare_wal(&mut self, newest: &BackupIndex) -> Result<(), VerifyError> {
        let Ok(seg) = WalSegSize::new(newest.wal_segment_size) else {
            return Ok(());
        };
        let listing = wal::list(self.store, self.server, seg)?;
        let (end, history_problem) = wal::newest_path(self.store, self.server, &listing, seg);
        self.wal = Some(WalContext {
            seg,
            end,
            history_problem,
            expect: page::Expect {
                magic: page::page_magic(newest.pg_version / 10000),
                tli: crate::pg::TimelineId(1),
                start: Lsn(0),
                seg_size: seg.bytes(),
                system_identifier: newest.system_identifier.parse().ok(),
            },
        });
        Ok(())
    }

    /// The first segment a backup's WAL check starts at: its start, or (WAL inside the backup)
    /// the segment holding its end (what came before is in the backup itself).
    fn wal_start(&self, idx: &BackupIndex, seg: WalSegSize) -> SegNo {
        match idx.wal_source {
            WalSource::Catalog => seg.segno(idx.start_lsn),
            WalSource::Backup => seg.segno(idx.end_lsn),
        }
    }

    fn wal_estimate(&self, idx: &BackupIndex) -> u64 {
        let Some(w) = &self.wal else { return 0 };
        let Some((_, end)) = &w.end else { return 0 };
        let first = self.wal_start(idx, w.seg).0;
        // Compressed WAL is usually about half its size.
        (end.0 + 1).saturating_sub(first) * w.seg.bytes() / 2
    }

    /// Checks one backup; its problems (WAL problems from its start on included).
    fn backup(&mut self, idx: &BackupIndex, progress: &mut dyn Progress) -> Result<Vec<Problem>, VerifyError> {
        let id = idx.id.as_str();
        let mut problems = Vec::new();
        let mut problem = |subject, object: &str, message: String| {
            problems.push(Problem {
                subject,
                object: object.to_string(),
                backup: Some(id.to_string()),
                message,
            })
        };
        // Chunks not yet read in this run.
        let mut todo: Vec<&backup_store::ChunkRef> = Vec::new();
        let mut queued = std::collections::HashSet::new();
        for f in &idx.files {
            for c in &f.chunks {
                if !self.chunks.contains_key(&c.object) && queued.insert(c.object.as_str()) {
                    todo.push(c);
                }
            }
        }
        let read = &self.read;
        let stop = &self.opts.stop;
        let outcomes = chunks::check_all(self.store, self.server, &todo, self.opts.jobs, &self.throttle, read, stop, || {
            let n = read.load(Ordering::Relaxed);
            progress.update(n, n);
        });
        self.stopped()?;
        for (c, o) in todo.iter().zip(outcomes) {
            // Not stopped, so a missing outcome is a worker that could not start: say so rather
            // than let the chunk pass unchecked.
            let o = o.unwrap_or_else(|| ChunkOutcome {
                crc32c: None,
                problem: Some("could not be checked (no decompression context)".into()),
            });
            self.chunks.insert(c.object.clone(), o);
        }
        // Files: each chunk problem named with the first file using it; each file's CRC from its
        // chunks against the index's record.
        let mut named = std::collections::HashSet::new();
        for f in idx.files.iter().filter(|f| f.kind == FileKind::File) {
            self.files_checked += 1;
            let mut crcs = Vec::with_capacity(f.chunks.len());
            let mut intact = true;
            for c in &f.chunks {
                match self.chunks.get(&c.object) {
                    Some(ChunkOutcome { crc32c: Some(crc), .. }) => crcs.push((*crc, c.size)),
                    Some(ChunkOutcome { problem: why, .. }) => {
                        intact = false;
                        if named.insert(c.object.clone()) {
                            let why = why.clone().unwrap_or_else(|| "damaged".into());
                            problem(Subject::Chunk, &c.object, format!("{why}; used by file {}", f.path));
                        }
                    }
                    None => intact = false,
                }
            }
            let size: u64 = f.chunks.iter().map(|c| c.size).sum();
            if size != f.size {
                problem(
                    Subject::File,
                    &f.path,
                    format!("its chunks hold {size} bytes, the file has {}", f.size),
                );
                continue;
            }
            if intact {
                let got = backup_store::combine_crc(&crcs);
                if let Some(want) = f.crc32c.filter(|w| *w != got) {
                    problem(
                        Subject::File,
                        &f.path,
                        format!("contents have CRC-32C {got:08x}, the index recorded {want:08x}"),
                    );
                }
            }
        }
        // The manifest.
        let key = backup_store::manifest_key(self.server, id);
        match self.store.get(&key)? {
            None => problem(Subject::Backup, id, format!("its backup_manifest ({key}) is missing")),
            Some(bytes) => match manifest::parse(&bytes) {
                Err(e) => problem(Subject::Backup, id, format!("backup_manifest: {e}")),
                Ok(listed) => {
                    let by_path: HashMap<&str, &backup_store::StoredFile> = idx
                        .files
                        .iter()
                        .filter(|f| f.kind == FileKind::File)
                        .map(|f| (f.path.as_str(), f))
                        .collect();
                    // WAL the server appended to the backup itself is not in its manifest.
                    let own_wal =
                        |p: &str| idx.wal_source == WalSource::Backup && p.strip_prefix("pg_wal/").is_some_and(|rest| !rest.contains('/'));
                    // An incremental backup's manifest lists what the server sent: the changed
                    // blocks of a file as `INCREMENTAL.<name>`, the label with its INCREMENTAL
                    // FROM lines. The index holds the rebuilt files (their chunks are checked
                    // above against the CRCs recorded when they were rebuilt).
                    let rebuilt: HashMap<String, String> = if idx.incremental.is_some() {
                        listed
                            .keys()
                            .filter_map(|p| crate::pg::incremental::full_path(p).map(|w| (p.clone(), w)))
                            .chain(std::iter::once(("backup_label".to_string(), "backup_label".to_string())))
                            .collect()
                    } else {
                        HashMap::new()
                    };
                    let wholes: std::collections::HashSet<&str> = rebuilt.values().map(String::as_str).collect();
                    let in_manifest = |p: &str| listed.contains_key(p) || wholes.contains(p);
                    for f in by_path.keys().filter(|p| !in_manifest(p) && !own_wal(p)) {
                        problem(Subject::File, f, "in the backup but not in its backup_manifest".into());
                    }
                    for (path, m) in &listed {
                        if let Some(whole) = rebuilt.get(path) {
                            if !by_path.contains_key(whole.as_str()) {
                                problem(
                                    Subject::File,
                                    whole,
                                    format!("the backup_manifest lists {path} but the backup has no {whole}"),
                                );
                            }
                            continue;
                        }
                        match by_path.get(path.as_str()) {
                            None => problem(Subject::File, path, "listed in the backup_manifest but not in the backup".into()),
                            Some(f) if f.size != m.size => problem(
                                Subject::File,
                                path,
                                format!("{} bytes, the backup_manifest says {}", f.size, m.size),
                            ),
                            Some(f) => {
                                if let (Some(want), Some(got)) = (m.crc32c, f.crc32c) {
                                    if want != got {
                                        problem(
                                            Subject::File,
                                            path,
                                            format!("CRC-32C {got:08x}, the backup_manifest says {want:08x}"),
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            },
        }
        problems.extend(self.wal_for(idx, progress)?);
        Ok(problems)
    }

    /// Checks the WAL from the backup's start to the newest (what earlier backups of this run
    /// checked is not read again); returns the problems in that range.
    fn wal_for(&mut self, idx: &BackupIndex, progress: &mut dyn Progress) -> Result<Vec<Problem>, VerifyError> {
        let Some(w) = &self.wal else {
            return Ok(vec![Problem {
                subject: Subject::Backup,
                object: idx.id.clone(),
                backup: Some(idx.id.clone()),
                message: format!("wal_segment_size {} in the index is not valid", idx.wal_segment_size),
            }]);
        };
        let (seg, end, history_problem, expect_base) = (w.seg, w.end.clone(), w.history_problem.clone(), w.expect);
        let first = self.wal_start(idx, seg);
        let mut out = Vec::new();
        if let Some(h) = &history_problem {
            out.push(Problem {
                subject: Subject::Wal,
                object: "history".into(),
                backup: None,
                message: h.clone(),
            });
        }
        let Some((path, end)) = end else {
            if idx.wal_source == WalSource::Catalog {
                let name = WalFileName::new(idx.start_timeline, first).format(seg);
                let damage = WalDamage {
                    segno: first,
                    name: name.clone(),
                    missing: true,
                };
                let p = Problem {
                    subject: Subject::Wal,
                    object: name,
                    backup: None,
                    message: "missing: the catalog holds no WAL at all".into(),
                };
                self.wal_checked.insert(first, Some((damage, p.clone())));
                out.push(p);
            }
            return Ok(out);
        };
        // The segments not yet checked in this run, as recovery would read them, on the pool.
        let todo: Vec<WalFileName> = (first.0..=end.0)
            .map(SegNo)
            .filter(|n| !self.wal_checked.contains_key(n))
            .map(|n| path.file_for(seg, n))
            .collect();
        let (store, server, read, throttle) = (self.store, self.server, &self.read, &self.throttle);
        let outcomes = pool::map(
            &todo,
            self.opts.jobs,
            || Some(()),
            |_, name| {
                let mut expect = expect_base;
                expect.tli = name.tli;
                expect.start = seg.segment_start(name.segno);
                let o = wal::check_segment(store, server, *name, seg, &expect);
                if let Ok(wal::SegmentOutcome::Ok { stored, .. } | wal::SegmentOutcome::Damaged { stored, .. }) = &o {
                    read.fetch_add(*stored, Ordering::Relaxed);
                    throttle.consumed(*stored);
                }
                o
            },
            &self.opts.stop,
            || {
                let r = read.load(Ordering::Relaxed);
                progress.update(r, r);
            },
        );
        self.stopped()?;
        for (name, o) in todo.iter().zip(outcomes) {
            let text = name.format(seg);
            let found = match o {
                None => Some((false, "could not be checked".to_string())),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(wal::SegmentOutcome::Ok { .. })) => None,
                Some(Ok(wal::SegmentOutcome::Missing)) => {
                    let gap = crate::catalog::continuity::Gap {
                        timeline: name.tli,
                        first: name.segno.0,
                        last: name.segno.0,
                    };
                    if crate::catalog::continuity::is_acknowledged(&self.acked, &gap) {
                        self.acknowledged_missing.insert(text.clone());
                        None
                    } else {
                        Some((true, "missing from the catalog".to_string()))
                    }
                }
                Some(Ok(wal::SegmentOutcome::Damaged { reason, .. })) => Some((false, format!("damaged: {reason}"))),
            };
            let entry = found.map(|(missing, message)| {
                (
                    WalDamage {
                        segno: name.segno,
                        name: text.clone(),
                        missing,
                    },
                    Problem {
                        subject: Subject::Wal,
                        object: text.clone(),
                        backup: None,
                        message,
                    },
                )
            });
            self.wal_checked.insert(name.segno, entry);
        }
        // A pinned backup with newer ones after it restores to its end only: retention prunes
        // the WAL between its end and the next backup it keeps, by design. Past its end, a
        // missing segment is not its problem (the newer backups' own checks cover their WAL).
        let pinned_end = (self.pinned.contains(&idx.id) && self.newest_id.as_deref() != Some(idx.id.as_str()))
            .then(|| seg.segno(Lsn(idx.end_lsn.0.saturating_sub(1))));
        out.extend(
            self.wal_checked
                .range(first..)
                .filter(|(n, _)| pinned_end.is_none_or(|e| **n <= e))
                .filter_map(|(_, e)| e.as_ref().map(|(_, p)| p.clone())),
        );
        Ok(out)
    }

    /// The point-in-time ranges that broken WAL makes unreachable, and the backups it makes
    /// unrestorable, as sentences (every backup of the server is considered, not only those
    /// verified: a later one may still restore).
    fn unreachable(&self) -> Result<Vec<String>, VerifyError> {
        let damage: Vec<&WalDamage> = self.wal_checked.values().flatten().map(|(d, _)| d).collect();
        if damage.is_empty() {
            return Ok(vec![]);
        }
        let Some(w) = &self.wal else { return Ok(vec![]) };
        let seg = w.seg;
        // Start and end of every backup, oldest first.
        let mut backups: Vec<(String, Lsn, Lsn, WalSource)> = Vec::new();
        for id in backup_store::list_ids(self.store, self.server)? {
            if let Ok(i) = backup_store::load(self.store, self.server, &id) {
                backups.push((i.id, i.start_lsn, i.end_lsn, i.wal_source));
            }
        }
        let mut out = Vec::new();
        let mut covered_until: Option<Lsn> = None;
        for d in damage {
            let from = seg.segment_start(d.segno);
            let to = seg.segment_start(d.segno.next());
            for (id, start, end, source) in &backups {
                if *source == WalSource::Catalog && *start < to && *end > from {
                    out.push(format!("backup {id} cannot be restored: it needs WAL {}", d.name));
                }
            }
            if covered_until.is_some_and(|c| c >= to) {
                continue;
            }
            let what = if d.missing { "missing" } else { "damaged" };
            let later: Vec<&(String, Lsn, Lsn, WalSource)> = backups.iter().filter(|b| b.1 >= to).collect();
            match later.first() {
                Some((id, _, end, _)) => {
                    out.push(format!(
                        "WAL {} {what}: no PITR between {from} and {end}; backups {id}{} still restore",
                        d.name,
                        if later.len() > 1 { " and later" } else { "" }
                    ));
                    covered_until = Some(*end);
                }
                None => {
                    out.push(format!(
                        "WAL {} {what}: no PITR between {from} and the end; no backup after it",
                        d.name
                    ));
                    covered_until = Some(Lsn(u64::MAX));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup_store::{ChunkRef, StoredFile, INDEX_FORMAT};
    use crate::catalog::segment_file;
    use crate::pg::TimelineId;
    use crate::util::progress::LogLines;
    use crate::verify::page::tests::{segment, SEG};
    use sha2::{Digest, Sha256};

    /// A backup of one file (one chunk) whose WAL starts in segment `start_seg`.
    fn publish_backup(store: &dyn ObjectStore, id: &str, start_seg: u64, data: &[u8]) {
        let hash = crate::util::hex::to_hex(&Sha256::digest(data));
        let object = backup_store::chunk_object(&hash, true);
        let mut stored = Vec::new();
        let sum = segment_file::compress_into(data, 1, &mut stored).unwrap();
        store.put(&backup_store::chunk_key("main", &object), &stored).unwrap();
        let crc = crc32c::crc32c(data);
        let hex = crate::util::hex::to_hex(&crc.to_le_bytes());
        store
            .put(
                &backup_store::manifest_key("main", id),
                &manifest::tests::manifest(&format!(
                    r#"{{ "Path": "base/1/1", "Size": {}, "Checksum-Algorithm": "CRC32C", "Checksum": "{hex}" }}"#,
                    data.len()
                )),
            )
            .unwrap();
        let idx = BackupIndex {
            format: INDEX_FORMAT,
            id: id.into(),
            server: "main".into(),
            label: "t".into(),
            start_time: 1,
            end_time: 2,
            start_lsn: Lsn(start_seg * SEG + 40),
            end_lsn: Lsn(start_seg * SEG + 5000),
            start_timeline: TimelineId(1),
            end_timeline: TimelineId(1),
            pg_version: 160004,
            system_identifier: "42".into(),
            wal_segment_size: SEG,
            from_standby: false,
            checkpoint: "fast".into(),
            wal_source: WalSource::Catalog,
            compression: "zstd:1".into(),
            original_bytes: data.len() as u64,
            stored_new_bytes: 0,
            stored_total_bytes: 0,
            tablespaces: vec![],
            incremental: None,
            received_bytes: None,
            files: vec![StoredFile {
                path: "base/1/1".into(),
                kind: FileKind::File,
                mode: 0o600,
                mtime: 0,
                size: data.len() as u64,
                crc32c: Some(sum.crc32c),
                stored_bytes: stored.len() as u64,
                link_target: None,
                chunks: vec![ChunkRef {
                    object,
                    size: data.len() as u64,
                    stored: stored.len() as u64,
                    blake3: None,
                    crc32c: None,
                }],
            }],
        };
        backup_store::publish(store, &idx).unwrap();
    }

    fn put_segment(store: &dyn ObjectStore, n: u64) {
        let mut z = Vec::new();
        segment_file::compress_into(&segment(1, n * SEG), 1, &mut z).unwrap();
        let name = WalFileName::new(TimelineId(1), SegNo(n)).format(WalSegSize::new(SEG).unwrap());
        store.put(&format!("main/wal/{name}.zst"), &z).unwrap();
    }

    fn run(catalog: &Catalog, selection: Selection) -> Report {
        verify(catalog, "main", &selection, &Options::default(), &mut LogLines::new("verify")).unwrap()
    }

    #[test]
    fn finds_and_explains_damage() {
        let d = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(d.path());
        let store = catalog.store();
        let store = store.as_ref();
        publish_backup(store, "A", 1, b"the first backup's file");
        publish_backup(store, "B", 4, b"the second backup's file");
        for n in 1..=6 {
            put_segment(store, n);
        }
        let r = run(&catalog, Selection::All);
        assert_eq!((r.status, r.problems.len(), r.segments_checked), ("ok", 0, 6), "{r:?}");
        assert_eq!(r.backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["B", "A"]);
        assert_eq!(record::load(store, "main", "A").unwrap().status, "ok");

        // A missing segment between the backups: A is damaged, B still restores.
        store.delete("main/wal/000000010000000000000002.zst").unwrap();
        let r = run(&catalog, Selection::All);
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert_eq!(r.problems[0].object, "000000010000000000000002");
        let status: Vec<_> = r.backups.iter().map(|b| (b.id.as_str(), b.status)).collect();
        assert_eq!(status, [("B", "ok"), ("A", "damaged")]);
        assert_eq!(
            r.unreachable,
            ["WAL 000000010000000000000002 missing: no PITR between 0/200000 and 0/401388; backups B still restore"]
        );
        // The newest alone is intact.
        assert_eq!(run(&catalog, Selection::Newest).status, "ok");
        put_segment(store, 2);

        // The segment B needs: B cannot be restored, A neither past it; nothing after it.
        store.delete("main/wal/000000010000000000000004.zst").unwrap();
        let r = run(&catalog, Selection::One("A".into()));
        assert!(
            r.unreachable
                .contains(&"backup B cannot be restored: it needs WAL 000000010000000000000004".to_string()),
            "{r:?}"
        );
        assert!(
            r.unreachable
                .iter()
                .any(|u| u.contains("between 0/400000 and the end; no backup after it")),
            "{r:?}"
        );
        put_segment(store, 4);

        // A file not in the manifest, a damaged index: problems, not failures.
        let idx = backup_store::load(store, "main", "A").unwrap();
        let mut extra = idx.clone();
        let mut f = extra.files[0].clone();
        f.path = "base/1/2".into();
        extra.files.push(f);
        backup_store::publish(store, &extra).unwrap();
        store.put(&backup_store::index_key("main", "B"), b"{ not an index").unwrap();
        let r = run(&catalog, Selection::All);
        let named: Vec<(Subject, &str)> = r.problems.iter().map(|p| (p.subject, p.object.as_str())).collect();
        assert!(named.contains(&(Subject::File, "base/1/2")), "{r:?}");
        assert!(named.contains(&(Subject::Backup, "B")), "{r:?}");
        assert!(matches!(
            verify(
                &catalog,
                "main",
                &Selection::One("C".into()),
                &Options::default(),
                &mut LogLines::new("verify")
            ),
            Err(VerifyError::Store(BackupStoreError::NotFound { .. }))
        ));
    }
}
