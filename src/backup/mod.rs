//! Taking a base backup: BASE_BACKUP over a replication connection, the tar stream parsed file
//! by file into content-addressed chunks (`pipeline`), every file checked against PostgreSQL's
//! backup_manifest, the WAL the backup needs made durable in the catalog, then one atomic publish.
//!
//! Order of a backup, and what a failure at each step leaves:
//! 1. take `<server>/backup.lock`; remove what earlier interrupted backups left;
//! 2. connect, check the system identifier against the catalog, write the `.running` intent record;
//! 3. stream and store chunks (no fsync each); check the manifest;
//! 4. make sure the WAL from start to end LSN is durable: wait for `pgark serve` to flush it, or,
//!    when no receiver streams this server, have the server append it to the backup (WAL option);
//! 5. sync the store, then write the index: the backup now exists.
//!
//! A failure (or a kill) anywhere before 5 leaves no index, so nothing is listed; the chunks and
//! the intent record are removed at once, or by the next backup or `pgark serve` start. Closing
//! the connection makes the server abort its side of the backup.

pub mod manifest;
pub mod pipeline;
pub mod schedule;
pub mod settings;
pub mod tar;
pub mod wal_wait;

use crate::catalog::backup_store::{self, BackupIndex, FileKind, StoredFile, TablespaceRecord, WalSource};
use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::state::{self, IdentityError};
use crate::catalog::store::ObjectStore;
use crate::catalog::Catalog;
use crate::catalog::{Compression, Layout};
use crate::client::conninfo::ConnInfo;
use crate::client::{ClientError, Connection};
use crate::pg::{Lsn, TimelineId, WalSegSize};
use crate::protocol::basebackup::{BackupEvent, BackupReplyError, BaseBackupReader, BaseBackupRequest};
use crate::util::progress::Progress;
use crate::util::time::unix_now;
use pipeline::{Pipeline, PipelineConfig, PipelineError};
pub use settings::BackupSettings;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tar::{EntryKind, TarEvent, TarParser};
use tokio_util::sync::CancellationToken;
pub use wal_wait::{ReceiverPosition, WalProgressSource};

/// Everything one backup needs.
pub struct BackupJob {
    /// The server's name in the config.
    pub server: String,
    /// Its replication connection.
    pub conninfo: ConnInfo,
    pub settings: BackupSettings,
    pub catalog: PathBuf,
    pub label: Option<String>,
    pub fast_checkpoint: bool,
    pub max_rate_kb: Option<u32>,
    /// Where the receiver stands (the daemon's board, or a running daemon asked over HTTP).
    pub wal_progress: Arc<dyn WalProgressSource>,
    /// Refuse to start while the catalog's free space is at the critical level.
    pub disk_pressure: crate::catalog::space::DiskThresholds,
    pub cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("connecting to {server}: {source}")]
    Connect { server: String, source: Box<ClientError> },
    #[error("{server}: {source}")]
    Client { server: String, source: Box<ClientError> },
    #[error("{server}: BASE_BACKUP failed: {source}")]
    Reply { server: String, source: Box<BackupReplyError> },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Store(#[from] backup_store::BackupStoreError),
    #[error("catalog I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("{server}: the tar stream is malformed: {source}")]
    Tar { server: String, source: tar::TarError },
    #[error("not enough free space in the catalog ({path}): about {needed} bytes needed (estimate {estimate} bytes, compression ratio {ratio:.2}) plus the {reserve}-byte reserve, {free} free")]
    NoSpace {
        path: PathBuf,
        needed: u64,
        estimate: u64,
        ratio: f64,
        reserve: u64,
        free: u64,
    },
    #[error("{server}: the WAL the backup needs (up to {end_lsn} on timeline {timeline}) did not reach the catalog within {waited:?}: pgark serve flushed up to {flushed}. Is it streaming this server? The backup is not kept.")]
    WalTimeout {
        server: String,
        end_lsn: Lsn,
        timeline: TimelineId,
        waited: Duration,
        flushed: String,
    },
    #[error("{server}: WAL segment {segment}, which the backup needs, is neither in the catalog nor in the backup")]
    WalMissing { server: String, segment: String },
    #[error("backup cancelled")]
    Cancelled,
    #[error("{server}: backup not started: {reason}")]
    DiskPressure { server: String, reason: String },
}

/// A new backup id: the UTC start time, e.g. `20261123T231500Z`, made unique in the catalog.
fn new_id(store: &dyn ObjectStore, server: &str) -> std::io::Result<String> {
    let base = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let taken: Vec<String> = store.list(&backup_store::backups_key(server))?;
    let exists = |id: &str| {
        taken
            .iter()
            .any(|k| k.rsplit('/').next().is_some_and(|n| n.split('.').next() == Some(id)))
    };
    let mut id = base.clone();
    let mut n = 1;
    while exists(&id) {
        n += 1;
        id = format!("{base}-{n}");
    }
    Ok(id)
}

/// Removes what interrupted backups of `server` left, if no backup of it is running. Called by
/// `pgark serve` at start; `take_backup` does the same under its lock.
pub fn clean_interrupted(catalog: &std::path::Path, server: &str) -> Result<(), BackupError> {
    let lock = match CatalogLock::acquire_backup(catalog, server) {
        Ok(l) => l,
        Err(LockError::BackupRunning { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let store = Catalog::open(catalog).store();
    let g = backup_store::collect_garbage(store.as_ref(), server)?;
    if g != backup_store::Garbage::default() {
        tracing::info!(
            server,
            unfinished_backups = g.unfinished_backups,
            chunks = g.chunks,
            bytes = g.bytes,
            "removed what interrupted backups left"
        );
    }
    drop(lock);
    Ok(())
}

/// Runs `take_backup` on its own OS thread with a current-thread runtime (like a receiver): the
/// network read blocks on the storage workers for backpressure, which must never stall a shared
/// runtime. The returned handle resolves when the backup ends.
pub fn spawn_on_own_thread(
    job: BackupJob,
    mut progress: Box<dyn Progress>,
) -> tokio::sync::oneshot::Receiver<Result<BackupIndex, BackupError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = format!("pgark-backup-{}", job.server);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(take_backup(&job, progress.as_mut())),
            Err(e) => Err(BackupError::Io(e)),
        };
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a backup thread");
    }
    rx
}

/// Takes one backup; see the module docs for the steps.
pub async fn take_backup(job: &BackupJob, progress: &mut dyn Progress) -> Result<BackupIndex, BackupError> {
    let server = job.server.clone();
    let store: Arc<dyn ObjectStore> = Catalog::open(&job.catalog).store();
    let _lock = CatalogLock::acquire_backup(&job.catalog, &server)?;
    // The filesystem the backup goes to: `<catalog>/<server>`, which may be a volume of its own.
    let server_dir = Layout::new(&job.catalog).server_dir(&server);
    let cap = Catalog::open(&job.catalog).capacity(Some(&server))?;
    job.disk_pressure
        .check_backup_allowed(cap)
        .map_err(|reason| BackupError::DiskPressure {
            server: server.clone(),
            reason,
        })?;
    let g = backup_store::collect_garbage(store.as_ref(), &server)?;
    if g.unfinished_backups > 0 || g.chunks > 0 {
        tracing::info!(server = %server, unfinished_backups = g.unfinished_backups, chunks = g.chunks, bytes = g.bytes,
            "removed what interrupted backups left");
    }
    let id = new_id(store.as_ref(), &server)?;
    let result = run(job, &id, &store, &server_dir, progress).await;
    if result.is_err() {
        // Remove this attempt's intent record and chunks now rather than at the next start.
        if let Err(e) = store.delete(&backup_store::running_key(&server, &id)) {
            tracing::warn!(server = %server, error = %e, "could not remove the failed backup's intent record");
        }
        // Stopping (a signal, the daemon's shutdown) must be quick: the next backup or daemon
        // start removes the chunks instead.
        let cancelled = matches!(result, Err(BackupError::Cancelled));
        if !cancelled {
            if let Err(e) = backup_store::collect_garbage(store.as_ref(), &server) {
                tracing::warn!(server = %server, error = %e, "could not remove the failed backup's chunks; the next backup will");
            }
        }
    }
    result
}

/// The largest `backup_manifest` accepted (PostgreSQL writes about 200 bytes per file): a
/// hostile or broken server cannot make a backup allocate without bound.
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024 * 1024;
/// The largest `backup_label` kept in memory (it is a few hundred bytes).
const MAX_LABEL_BYTES: usize = 64 * 1024;

struct FileBuild {
    stored: StoredFile,
    chunk_count: usize,
}

/// The state of the stream being parsed.
struct Receive {
    server: String,
    files: Vec<FileBuild>,
    prefix: String,
    current: Option<usize>,
    buf: Vec<u8>,
    bytes: u64,
    backup_label: Vec<u8>,
}

impl Receive {
    fn on_tar(&mut self, pipeline: &Pipeline, ev: TarEvent<'_>) -> Result<(), BackupError> {
        match ev {
            TarEvent::Entry(e) => {
                let path = format!("{}{}", self.prefix, e.path);
                self.files.push(FileBuild {
                    stored: StoredFile {
                        path,
                        kind: match e.kind {
                            EntryKind::File => FileKind::File,
                            EntryKind::Directory => FileKind::Directory,
                            EntryKind::Symlink => FileKind::Symlink,
                        },
                        mode: e.mode,
                        mtime: e.mtime,
                        size: e.size,
                        crc32c: None,
                        stored_bytes: 0,
                        link_target: e.link_target,
                        chunks: vec![],
                    },
                    chunk_count: 0,
                });
                self.current = (e.kind == EntryKind::File).then(|| self.files.len() - 1);
            }
            TarEvent::Data(d) => {
                self.bytes += d.len() as u64;
                let Some(i) = self.current else { return Ok(()) };
                if self.files[i].stored.path == "backup_label" && self.backup_label.len() + d.len() <= MAX_LABEL_BYTES {
                    self.backup_label.extend_from_slice(d);
                }
                let mut d = d;
                while !d.is_empty() {
                    if self.buf.capacity() == 0 {
                        let left = self.files[i].stored.size as usize;
                        self.buf.reserve_exact(left.clamp(1, backup_store::CHUNK_SIZE));
                    }
                    let take = (backup_store::CHUNK_SIZE - self.buf.len()).min(d.len());
                    self.buf.extend_from_slice(&d[..take]);
                    d = &d[take..];
                    if self.buf.len() == backup_store::CHUNK_SIZE {
                        self.submit(pipeline, i)?;
                    }
                }
            }
            TarEvent::EntryEnd => {
                if let Some(i) = self.current.take() {
                    if !self.buf.is_empty() {
                        self.submit(pipeline, i)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn submit(&mut self, pipeline: &Pipeline, file: usize) -> Result<(), BackupError> {
        let data = std::mem::take(&mut self.buf);
        let n = self.files[file].chunk_count;
        self.files[file].chunk_count += 1;
        if !pipeline.submit(file, n, data) {
            return Err(BackupError::Io(std::io::Error::other(format!(
                "{}: the storage workers stopped",
                self.server
            ))));
        }
        Ok(())
    }
}

impl From<tar::TarError> for BackupError {
    fn from(e: tar::TarError) -> Self {
        BackupError::Tar {
            server: String::new(),
            source: e,
        }
    }
}

async fn run(
    job: &BackupJob,
    id: &str,
    store: &Arc<dyn ObjectStore>,
    server_dir: &std::path::Path,
    progress: &mut dyn Progress,
) -> Result<BackupIndex, BackupError> {
    let cfg = &job.settings;
    let server = job.server.clone();
    let started = Instant::now();
    let start_time = unix_now();
    let client = |source| match source {
        ClientError::Cancelled => BackupError::Cancelled,
        source => BackupError::Client {
            server: server.clone(),
            source: Box::new(source),
        },
    };
    let mut conn = tokio::select! {
        _ = job.cancel.cancelled() => return Err(BackupError::Cancelled),
        c = Connection::connect(&job.conninfo, true) => c.map_err(|source| BackupError::Connect { server: server.clone(), source: Box::new(source) })?,
    };
    // Every wait for the server is bounded (backup_stream_timeout) and ends on cancellation.
    conn.set_io_timeout(cfg.stream_timeout);
    conn.set_cancel(job.cancel.clone());
    let sys = conn.identify_system().await.map_err(client)?;
    let seg = conn.wal_segment_size().await.map_err(client)?;
    let pg_version = conn.server_version_num;
    let layout = Layout::new(&job.catalog);
    state::verify_or_record(
        store.as_ref(),
        &server,
        &layout.server_dir(&server).display().to_string(),
        sys.system_identifier,
        seg.bytes(),
        conn.server_version_num,
        sys.timeline,
    )?;
    let intent = serde_json::json!({ "id": id, "pid": std::process::id(), "started": start_time, "label": job.label });
    store.put(&backup_store::running_key(&server, id), intent.to_string().as_bytes())?;

    let names = tablespace_names(&server, &job.conninfo).await;
    let streaming = job.wal_progress.receiver(&server).await.is_some_and(|p| p.streaming);
    if streaming {
        tracing::info!(server = %server, id, "pgark serve streams this server: the backup will use the catalog's WAL");
    } else {
        tracing::info!(server = %server, id, "no pgark serve streams this server: asking the server to include the backup's WAL in it");
    }
    let label = job.label.clone().unwrap_or_else(|| format!("pgark {id}"));
    let request = BaseBackupRequest {
        label: label.clone(),
        fast_checkpoint: job.fast_checkpoint,
        include_wal: !streaming,
        max_rate_kb: job.max_rate_kb,
    };
    let previous = backup_store::newest(store.as_ref(), &server)?;
    let reusable = backup_store::reusable_chunks(store.as_ref(), &server)?;
    progress.phase(&format!(
        "{server}: starting backup {id} ({} checkpoint)",
        if job.fast_checkpoint { "fast" } else { "spread" }
    ));
    // With a spread checkpoint the server says nothing until its checkpoint is done, which may
    // take up to checkpoint_timeout (times checkpoint_completion_target), after one already
    // under way: wait twice that more for the first message. A fast checkpoint must finish
    // within backup_stream_timeout.
    let first_wait = if job.fast_checkpoint {
        cfg.stream_timeout
    } else {
        let checkpoint = conn.show("checkpoint_timeout").await.map_err(client)?;
        cfg.stream_timeout + 2 * parse_pg_duration(&checkpoint).unwrap_or(Duration::from_secs(3600))
    };
    conn.send_query(&request.command(conn.server_version_num)).await.map_err(client)?;
    conn.set_phase("BASE_BACKUP: waiting for the server's checkpoint");
    conn.set_io_timeout(first_wait);

    let mut reader = BaseBackupReader::new(conn.server_version_num);
    let mut rx = Receive {
        server: server.clone(),
        files: Vec::new(),
        prefix: String::new(),
        current: None,
        buf: Vec::new(),
        bytes: 0,
        backup_label: Vec::new(),
    };
    let mut tablespaces: Vec<TablespaceRecord> = Vec::new();
    let mut parser: Option<TarParser> = None;
    let mut pipeline: Option<Pipeline> = None;
    let mut manifest_bytes = Vec::new();
    let (mut start, mut end) = (None, None);
    let mut done = false;
    let mut last_progress = Instant::now();
    while !reader.is_finished() {
        let msg = conn.next_message().await.map_err(client)?;
        if start.is_none() {
            conn.set_phase("BASE_BACKUP stream");
            conn.set_io_timeout(cfg.stream_timeout);
        }
        let events = reader.on_message(msg).map_err(|source| BackupError::Reply {
            server: server.clone(),
            source: Box::new(source),
        })?;
        for ev in events {
            match ev {
                BackupEvent::Start { lsn, timeline } => {
                    tracing::info!(server = %server, id, start_lsn = %lsn, timeline = %timeline, "backup started on the server");
                    start = Some((lsn, timeline));
                }
                BackupEvent::Tablespaces(ts) => {
                    let estimate: u64 = ts.iter().filter_map(|t| t.estimated_bytes).sum();
                    check_free_space(server_dir, estimate, previous.as_ref(), cfg.min_free)?;
                    progress.begin(Some(estimate));
                    pipeline = Some(Pipeline::start(
                        PipelineConfig {
                            server: server.clone(),
                            compression: cfg.compression,
                            workers: cfg.workers,
                            reusable: reusable.clone(),
                            catalog_root: server_dir.to_path_buf(),
                            min_free: cfg.min_free,
                            estimated_total: estimate,
                        },
                        Arc::clone(store),
                    ));
                    tablespaces = ts
                        .into_iter()
                        .map(|t| TablespaceRecord {
                            oid: t.oid,
                            location: t.location,
                            estimated_bytes: t.estimated_bytes,
                            name: t.oid.and_then(|o| names.get(&o).cloned()),
                        })
                        .collect();
                }
                BackupEvent::ArchiveBegin { tablespace } => {
                    rx.prefix = match tablespaces.get(tablespace).and_then(|t| t.oid) {
                        Some(oid) => format!("pg_tblspc/{oid}/"),
                        None => String::new(),
                    };
                    parser = Some(TarParser::new());
                }
                BackupEvent::ArchiveData(d) => {
                    let (Some(p), Some(pl)) = (parser.as_mut(), pipeline.as_ref()) else {
                        return Err(tar_err(&server, "archive data outside an archive"));
                    };
                    let pushed = p.push(&d, &mut |ev| rx.on_tar(pl, ev));
                    if pl.has_failed() {
                        // The workers' own error (out of space, EIO) is collected below.
                        break;
                    }
                    pushed.map_err(|e| with_server(e, &server))?;
                    if last_progress.elapsed() >= Duration::from_millis(200) {
                        progress.update(rx.bytes, pl.stored_bytes());
                        last_progress = Instant::now();
                    }
                }
                BackupEvent::ArchiveEnd => {
                    if let Some(p) = parser.take() {
                        p.finish().map_err(|source| BackupError::Tar {
                            server: server.clone(),
                            source,
                        })?;
                    }
                }
                BackupEvent::Progress(_) => {}
                BackupEvent::ManifestData(d) => {
                    if manifest_bytes.len() + d.len() > MAX_MANIFEST_BYTES {
                        return Err(tar_err(&server, &format!("the backup_manifest exceeds {MAX_MANIFEST_BYTES} bytes")));
                    }
                    manifest_bytes.extend_from_slice(&d)
                }
                BackupEvent::End { lsn, timeline } => end = Some((lsn, timeline)),
                BackupEvent::Warning(m) => tracing::warn!(server = %server, id, "server: {m}"),
                BackupEvent::Done => done = true,
            }
        }
        if pipeline.as_ref().is_some_and(|p| p.has_failed()) {
            break;
        }
    }
    let pipeline = pipeline.ok_or_else(|| tar_err(&server, "no tablespace list before the data"))?;
    if pipeline.has_failed() {
        // The workers' error says why (out of space, I/O); the connection closes on return.
        pipeline.finish()?;
        return Err(BackupError::Io(std::io::Error::other("the storage workers failed")));
    }
    let (Some((start_lsn, start_tli)), Some((end_lsn, end_tli)), true) = (start, end, done) else {
        return Err(tar_err(&server, "the reply ended before the backup completed"));
    };
    conn.terminate().await;
    progress.update(rx.bytes, pipeline.stored_bytes());
    progress.phase(&format!("{server}: received {} bytes; storing and checking", rx.bytes));

    // Assemble the files from the chunk results.
    let results = pipeline.finish()?;
    let mut per_file: Vec<Vec<Option<pipeline::ChunkDone>>> = rx.files.iter().map(|f| (0..f.chunk_count).map(|_| None).collect()).collect();
    let mut stored_new = 0u64;
    for r in results {
        if r.new {
            stored_new += r.chunk_ref.stored;
        }
        let (f, c) = (r.file, r.chunk);
        per_file[f][c] = Some(r);
    }
    let mut files = Vec::with_capacity(rx.files.len());
    let mut stored_total = 0u64;
    for (fb, chunks) in rx.files.into_iter().zip(per_file) {
        let mut sf = fb.stored;
        if sf.kind == FileKind::File {
            let chunks: Vec<pipeline::ChunkDone> = chunks
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| tar_err(&server, &format!("{}: a chunk was lost in the pipeline", sf.path)))?;
            sf.crc32c = Some(crate::catalog::backup_store::combine_crc(
                &chunks.iter().map(|c| (c.crc32c, c.chunk_ref.size)).collect::<Vec<_>>(),
            ));
            sf.stored_bytes = chunks.iter().map(|c| c.chunk_ref.stored).sum::<u64>();
            stored_total += sf.stored_bytes;
            sf.chunks = chunks.into_iter().map(|c| c.chunk_ref).collect();
        }
        files.push(sf);
    }

    // PostgreSQL's manifest: every file must match it.
    let manifest = manifest::Manifest::parse(&manifest_bytes)?;
    if let Some(m) = manifest.system_identifier.filter(|m| *m != sys.system_identifier) {
        return Err(manifest::ManifestError(format!("System-Identifier {m} is not the server's {}", sys.system_identifier)).into());
    }
    let in_wal_dir = |p: &str| p.strip_prefix("pg_wal/").is_some_and(|rest| !rest.contains('/'));
    let checked = manifest::check(
        &manifest,
        files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .filter(|f| !(request.include_wal && in_wal_dir(&f.path) && !manifest.files.contains_key(&f.path)))
            .map(|f| manifest::ReceivedFile {
                path: &f.path,
                size: f.size,
                crc32c: f.crc32c.unwrap_or(0),
            }),
    )?;
    tracing::info!(server = %server, id, files = checked, "every file matches the server's backup_manifest");
    store.put(&backup_store::manifest_key(&server, id), &manifest_bytes)?;

    // The WAL from start to end must be durable before the backup may exist.
    let wal_source = if streaming {
        progress.phase(&format!("{server}: waiting for pgark serve to flush WAL up to {end_lsn}"));
        wait_for_wal(job, &server, end_lsn, end_tli).await?;
        // The receiver may have started after this backup's start (a new catalog): every
        // segment from the start must be there, not just the end.
        for name in required_segments(seg, start_lsn, start_tli, end_lsn, end_tli) {
            if !backup_store::wal_segment_stored(store.as_ref(), &server, &name) {
                return Err(BackupError::WalMissing { server, segment: name });
            }
        }
        WalSource::Catalog
    } else {
        for name in required_segments(seg, start_lsn, start_tli, end_lsn, end_tli) {
            if !files.iter().any(|f| f.path == format!("pg_wal/{name}")) {
                return Err(BackupError::WalMissing { server, segment: name });
            }
        }
        WalSource::Backup
    };

    store.sync()?;
    let label_text = String::from_utf8_lossy(&rx.backup_label).into_owned();
    let index = BackupIndex {
        format: backup_store::INDEX_FORMAT,
        id: id.to_string(),
        server: server.clone(),
        label,
        start_time,
        end_time: unix_now(),
        start_lsn,
        end_lsn,
        start_timeline: start_tli,
        end_timeline: end_tli,
        pg_version,
        system_identifier: sys.system_identifier.to_string(),
        wal_segment_size: seg.bytes(),
        from_standby: label_text.lines().any(|l| l.trim() == "BACKUP FROM: standby"),
        checkpoint: if job.fast_checkpoint { "fast" } else { "spread" }.into(),
        wal_source,
        compression: compression_name(cfg.compression),
        original_bytes: files.iter().map(|f| f.size).sum(),
        stored_new_bytes: stored_new,
        stored_total_bytes: stored_total,
        tablespaces,
        files,
    };
    if let Err(e) = backup_store::publish(store.as_ref(), &index) {
        // A publish that failed half-way (the index renamed, its directory fsync failed) must
        // not leave a backup that looks published while the command reports failure.
        let _ = store.delete(&backup_store::index_key(&server, id));
        return Err(e.into());
    }
    let elapsed = started.elapsed();
    progress.end();
    tracing::info!(server = %server, id, start_lsn = %start_lsn, end_lsn = %end_lsn, original_bytes = index.original_bytes,
        stored_new_bytes = index.stored_new_bytes, seconds = format!("{:.1}", elapsed.as_secs_f64()), "backup complete");
    Ok(index)
}

/// A PostgreSQL duration setting as SHOW prints it (`5min`, `300s`, `1h`, `1d`, `500ms`).
fn parse_pg_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = t[..split].parse().ok()?;
    let unit = match &t[split..] {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n.saturating_mul(unit)))
}

fn with_server(e: BackupError, server: &str) -> BackupError {
    match e {
        BackupError::Tar { source, .. } => BackupError::Tar {
            server: server.to_string(),
            source,
        },
        other => other,
    }
}

fn tar_err(server: &str, reason: &str) -> BackupError {
    BackupError::Tar {
        server: server.to_string(),
        source: tar::TarError {
            offset: 0,
            reason: reason.to_string(),
        },
    }
}

pub fn compression_name(c: Compression) -> String {
    match c {
        Compression::None => "none".into(),
        Compression::Zstd(l) => format!("zstd:{l}"),
    }
}

/// Segment names from the start LSN's segment to the one holding the byte before the end LSN
/// (an end exactly on a segment boundary needs nothing of the next segment; PostgreSQL's
/// `XLByteToPrevSeg`).
fn required_segments(seg: WalSegSize, start: Lsn, start_tli: TimelineId, end: Lsn, end_tli: TimelineId) -> Vec<String> {
    let (first, last) = backup_store::segment_range(seg, start, end);
    (first..=last)
        .map(|n| {
            let tli = if n == last { end_tli } else { start_tli };
            crate::pg::WalFileName::new(tli, crate::pg::SegNo(n)).format(seg)
        })
        .collect()
}

/// Refuses to start when the catalog cannot hold the backup: the server's size estimate scaled
/// by the previous backup's compression ratio (half the estimate for a first backup), plus the
/// reserve kept for WAL streaming.
fn check_free_space(catalog: &std::path::Path, estimate: u64, previous: Option<&BackupIndex>, reserve: u64) -> Result<(), BackupError> {
    let ratio = match previous {
        Some(p) if p.original_bytes > 0 => (p.stored_total_bytes as f64 / p.original_bytes as f64).clamp(0.01, 1.0),
        _ => 0.5,
    };
    let needed = (estimate as f64 * ratio) as u64;
    let free = pipeline::free_space(catalog)?;
    if free < needed + reserve {
        return Err(BackupError::NoSpace {
            path: catalog.to_path_buf(),
            needed,
            estimate,
            ratio,
            reserve,
            free,
        });
    }
    Ok(())
}

/// Tablespace names by oid, read over an ordinary connection (BASE_BACKUP sends only oids), so
/// that a restore can remap tablespaces by name. Best effort: a role or pg_hba.conf that allows
/// only replication connections just means names are not recorded.
async fn tablespace_names(server: &str, conninfo: &ConnInfo) -> std::collections::BTreeMap<u32, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut ci = conninfo.clone();
    if ci.dbname.is_none() {
        ci.dbname = Some("postgres".into());
    }
    let attempt = async {
        let mut c = Connection::connect(&ci, false).await?;
        let r = c.simple_query("SELECT oid, spcname FROM pg_catalog.pg_tablespace").await;
        c.terminate().await;
        r
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(results)) => {
            for r in results {
                for i in 0..r.rows.len() {
                    if let (Some(oid), Some(name)) = (r.text(i, 0).and_then(|o| o.parse().ok()), r.text(i, 1)) {
                        out.insert(oid, name);
                    }
                }
            }
        }
        Ok(Err(e)) => tracing::debug!(server = %server, error = %e, "tablespace names not recorded"),
        Err(_) => tracing::debug!(server = %server, "tablespace names not recorded: timed out"),
    }
    out
}

async fn wait_for_wal(job: &BackupJob, server: &str, end_lsn: Lsn, end_tli: TimelineId) -> Result<(), BackupError> {
    let started = Instant::now();
    let mut last = String::from("nothing");
    loop {
        if let Some(ReceiverPosition {
            timeline: tli,
            flushed: Some(flushed),
            ..
        }) = job.wal_progress.receiver(server).await
        {
            last = format!("{flushed} on timeline {}", tli.map(|t| t.to_string()).unwrap_or_default());
            if flushed >= end_lsn && tli.is_some_and(|t| t >= end_tli) {
                tracing::info!(server, end_lsn = %end_lsn, flushed = %flushed, "the backup's WAL is durable in the catalog");
                return Ok(());
            }
        }
        if started.elapsed() >= job.settings.wal_timeout {
            return Err(BackupError::WalTimeout {
                server: server.to_string(),
                end_lsn,
                timeline: end_tli,
                waited: job.settings.wal_timeout,
                flushed: last,
            });
        }
        tokio::select! {
            _ = job.cancel.cancelled() => return Err(BackupError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
