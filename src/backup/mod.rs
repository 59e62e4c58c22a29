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

mod assemble;
mod changed_blocks;
pub mod error;
pub mod incremental;
pub mod manifest;
pub mod pipeline;
mod receive;
pub mod schedule;
mod session;
pub mod settings;
mod space;
mod tablespaces;
pub mod tar;
mod verify;
pub mod wal_wait;

use crate::catalog::backup_store::{self, BackupIndex};
use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::mirror_store::{Mirror, MirrorStore};
use crate::catalog::store::ObjectStore;
use crate::catalog::{Catalog, Compression, Layout};
use crate::client::conninfo::ConnInfo;
use crate::protocol::basebackup::BaseBackupRequest;
use crate::util::progress::Progress;
use crate::util::time::unix_now;
pub use error::BackupError;
pub use incremental::IncrementalMode;
pub use settings::BackupSettings;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
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
    /// Repositories the backup is written to while it is taken (name and catalog; see
    /// `catalog::mirror_store`).
    pub mirrors: Vec<(String, Catalog)>,
    /// Chunks stored in the local catalog too (`backups_local`); false: in the mirrors only.
    pub chunks_local: bool,
    /// How long to wait while another backup or a prune of the server holds its lock
    /// (`pgark backup --wait`); zero: refuse at once.
    pub lock_wait: std::time::Duration,
    /// Only the blocks changed since the newest backup (PostgreSQL 17+; see `incremental`).
    pub incremental: IncrementalMode,
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

/// The server's backup lock, waiting up to `job.lock_wait` (polled; flock has no timeout)
/// while another backup or a prune holds it. Cancellation ends the wait.
async fn backup_lock_waiting(job: &BackupJob) -> Result<CatalogLock, BackupError> {
    let deadline = std::time::Instant::now() + job.lock_wait;
    let mut told = false;
    loop {
        match CatalogLock::acquire_backup(&job.catalog, &job.server) {
            Err(e @ LockError::BackupRunning { .. }) if std::time::Instant::now() < deadline => {
                if !told {
                    tracing::info!(server = %job.server, wait = %humantime::format_duration(job.lock_wait), "{e}; waiting for it (--wait)");
                    told = true;
                }
                tokio::select! {
                    _ = job.cancel.cancelled() => return Err(BackupError::Cancelled),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                }
            }
            other => return other.map_err(Into::into),
        }
    }
}

/// Takes one backup; see the module docs for the steps.
pub async fn take_backup(job: &BackupJob, progress: &mut dyn Progress) -> Result<BackupIndex, BackupError> {
    let server = job.server.clone();
    let local: Arc<dyn ObjectStore> = Catalog::open(&job.catalog).store();
    let _lock = backup_lock_waiting(job).await?;
    // Each repository's backup lock too: a prune of the repository must not collect the
    // chunks this backup writes there before its index lands. One that is held (a prune is
    // running) gets the backup from the uploader afterwards.
    let mut _mirror_locks = Vec::new();
    let mut mirrors = Vec::new();
    for (name, repo) in &job.mirrors {
        match CatalogLock::acquire_backup(repo.root(), &server) {
            Ok(l) => {
                _mirror_locks.push(l);
                mirrors.push(Mirror {
                    name: name.clone(),
                    store: repo.store(),
                });
            }
            Err(e) => {
                tracing::info!(server = %server, repository = %name, reason = %e, "not writing this backup to the repository while it is taken; the uploader copies it afterwards")
            }
        }
    }
    if !job.chunks_local && mirrors.is_empty() {
        return Err(BackupError::Io(std::io::Error::other(
            "backups_local is false but no repository can be written to now (see the messages above); the backup is not started",
        )));
    }
    let mirror = (!mirrors.is_empty()).then(|| MirrorStore::start(Arc::clone(&local), mirrors, job.chunks_local));
    let store: Arc<dyn ObjectStore> = match &mirror {
        Some(m) => Arc::clone(m) as Arc<dyn ObjectStore>,
        None => Arc::clone(&local),
    };
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
    let mut result = run(job, &id, &store, &server_dir, job.incremental, progress).await;
    if let (IncrementalMode::Auto, Err(BackupError::IncrementalUnavailable { reason, .. })) = (job.incremental, &result) {
        tracing::info!(server = %server, id, "{reason}; taking a full backup instead of an incremental one");
        progress.phase(&format!("{server}: no incremental backup possible; taking a full one"));
        result = run(job, &id, &store, &server_dir, IncrementalMode::Off, progress).await;
    }
    if let (Some(m), Ok(_)) = (&mirror, &result) {
        let failed = m.failed();
        for (name, why) in &failed {
            tracing::warn!(server = %server, repository = %name, error = %why, "the backup is not in the repository yet; the uploader copies it when the repository answers");
        }
        let deferred = m.deferred();
        let written: Vec<&str> = job
            .mirrors
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !failed.iter().any(|(f, _)| f == n) && !deferred.iter().any(|d| d == n))
            .collect();
        if !written.is_empty() {
            tracing::info!(server = %server, id, repositories = ?written, "the backup was written to the repositories as it was taken");
        }
    }
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

/// Makes `conn` ready for `BASE_BACKUP ( INCREMENTAL )`: a parent in the catalog, WAL
/// summaries on, the parent's manifest sent. `IncrementalUnavailable` says why not.
async fn prepare_incremental(
    conn: &mut crate::client::Connection,
    job: &BackupJob,
    store: &dyn ObjectStore,
    sys: &crate::client::replication::SystemInfo,
    pg_version: u32,
) -> Result<incremental::Parent, BackupError> {
    let server = job.server.as_str();
    let unavailable = |reason: String| BackupError::IncrementalUnavailable {
        server: server.to_string(),
        reason,
    };
    let parent = incremental::choose_parent(store, server, pg_version, sys.system_identifier, job.chunks_local).map_err(unavailable)?;
    let summarize = conn.show("summarize_wal").await.map_err(session::client_error(server))?;
    if summarize != "on" {
        return Err(unavailable(
            "summarize_wal is off on the server; turn it on with ALTER SYSTEM SET summarize_wal = on and SELECT pg_reload_conf()".into(),
        ));
    }
    match conn.upload_manifest(&parent.manifest).await {
        Ok(()) => Ok(parent),
        Err(crate::client::ClientError::Server(e)) => Err(unavailable(format!(
            "the server refused the manifest of backup {}: {e}",
            parent.index.id
        ))),
        Err(e) => Err(session::client_error(server)(e)),
    }
}

/// Steps 2 to 5 of the module comment, under the lock taken by `take_backup`.
async fn run(
    job: &BackupJob,
    id: &str,
    store: &Arc<dyn ObjectStore>,
    server_dir: &std::path::Path,
    mode: IncrementalMode,
    progress: &mut dyn Progress,
) -> Result<BackupIndex, BackupError> {
    let (cfg, server) = (&job.settings, job.server.as_str());
    let started = Instant::now();
    let start_time = unix_now();
    let session::Session {
        mut conn,
        sys,
        seg,
        pg_version,
    } = session::open(job, store, id, start_time).await?;
    let parent = match mode {
        IncrementalMode::Off => None,
        IncrementalMode::Auto | IncrementalMode::Require => {
            Some(prepare_incremental(&mut conn, job, store.as_ref(), &sys, pg_version).await?)
        }
    };
    let names = tablespaces::tablespace_names(server, &job.conninfo).await;
    let streaming = job.wal_progress.receiver(server).await.is_some_and(|p| p.streaming);
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
        incremental: parent.is_some(),
    };
    let target = session::Target {
        id,
        store,
        server_dir,
        previous: backup_store::newest(store.as_ref(), server)?,
        names,
    };
    progress.phase(&format!(
        "{server}: starting {} backup {id} ({} checkpoint)",
        if parent.is_some() { "incremental" } else { "full" },
        if job.fast_checkpoint { "fast" } else { "spread" }
    ));
    let mut got = session::receive(conn, job, &request, &target, progress).await?;
    let assembled = assemble::assemble(server, got.rx.files, got.chunks)?;

    // PostgreSQL's manifest: every file must match it.
    let manifest = manifest::Manifest::parse(&got.manifest)?;
    let checked = verify::against_manifest(&manifest, sys.system_identifier, &assembled.files, request.include_wal)?;
    tracing::info!(server = %server, id, files = checked, "every file matches the server's backup_manifest");
    store.put(&backup_store::manifest_key(server, id), &got.manifest)?;
    let (files, stored_new, origin) = match &parent {
        None => (assembled.files, assembled.stored_new, None),
        Some(p) => {
            progress.phase(&format!(
                "{server}: rebuilding whole files from the changed blocks over backup {}",
                p.index.id
            ));
            let reusable = backup_store::reusable_chunks(store.as_ref(), server)?;
            let cfg = pipeline::PipelineConfig {
                server: server.to_string(),
                compression: cfg.compression,
                workers: cfg.workers,
                reusable,
                catalog_root: server_dir.to_path_buf(),
                min_free: cfg.min_free,
                estimated_total: 0,
            };
            let changed = got
                .rx
                .changed
                .take()
                .ok_or_else(|| BackupError::Io(std::io::Error::other("an incremental backup kept no changed blocks")))?;
            let r = incremental::rebuild(server, &p.index, assembled.files, &changed, store, cfg, &job.cancel)?;
            drop(changed);
            let from_lsn = crate::pg::incremental::incremental_from(&got.rx.backup_label)
                .map(|(l, _)| l)
                .unwrap_or(p.index.start_lsn);
            tracing::info!(server = %server, id, parent = %p.index.id, changed_files = r.incremental_files, changed_bytes = r.incremental_bytes,
                received_bytes = got.rx.bytes, rebuilt_new_bytes = r.stored_new, "incremental backup: the server sent the changed blocks; every file is whole again");
            let origin = backup_store::IncrementalOrigin {
                parent: p.index.id.clone(),
                from_lsn,
                full: p.index.incremental.as_ref().map_or_else(|| p.index.id.clone(), |i| i.full.clone()),
                incremental_files: r.incremental_files,
                incremental_bytes: r.incremental_bytes,
            };
            (r.files, assembled.stored_new + r.stored_new, Some(origin))
        }
    };

    // The WAL from start to end must be durable before the backup may exist.
    let wal_source = verify::wal_is_durable(job, store.as_ref(), seg, got.start, got.end, streaming, &files, progress).await?;

    store.sync()?;
    let label_text = String::from_utf8_lossy(&got.rx.backup_label).into_owned();
    let index = BackupIndex {
        format: backup_store::INDEX_FORMAT,
        id: id.to_string(),
        server: server.to_string(),
        label,
        start_time,
        end_time: unix_now(),
        start_lsn: got.start.0,
        end_lsn: got.end.0,
        start_timeline: got.start.1,
        end_timeline: got.end.1,
        pg_version,
        system_identifier: sys.system_identifier.to_string(),
        wal_segment_size: seg.bytes(),
        from_standby: label_text.lines().any(|l| l.trim() == "BACKUP FROM: standby"),
        checkpoint: if job.fast_checkpoint { "fast" } else { "spread" }.into(),
        wal_source,
        compression: compression_name(cfg.compression),
        original_bytes: files
            .iter()
            .filter(|f| f.kind == backup_store::FileKind::File)
            .map(|f| f.size)
            .sum(),
        stored_new_bytes: stored_new,
        stored_total_bytes: files.iter().map(|f| f.stored_bytes).sum(),
        tablespaces: got.tablespaces,
        files,
        incremental: origin,
        received_bytes: Some(got.rx.bytes),
    };
    if let Err(e) = backup_store::publish(store.as_ref(), &index) {
        // A publish that failed half-way (the index renamed, its directory fsync failed) must
        // not leave a backup that looks published while the command reports failure.
        let _ = store.delete(&backup_store::index_key(server, id));
        return Err(e.into());
    }
    progress.end();
    tracing::info!(server = %server, id, start_lsn = %index.start_lsn, end_lsn = %index.end_lsn, original_bytes = index.original_bytes,
        stored_new_bytes = index.stored_new_bytes, seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "backup complete");
    Ok(index)
}

/// How the index names a compression setting (`none`, `zstd:3`).
pub fn compression_name(c: Compression) -> String {
    match c {
        Compression::None => "none".into(),
        Compression::Zstd(l) => format!("zstd:{l}"),
    }
}
