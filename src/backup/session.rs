//! The BASE_BACKUP session: connect and identify the server, then read the reply to its end,
//! feeding each tablespace's tar stream to `Receive` and the storage pipeline.

use super::changed_blocks::ChangedBlocks;
use super::error::{tar_err, with_server, BackupError};
use super::pipeline::{self, Pipeline, PipelineConfig};
use super::receive::{Receive, MAX_MANIFEST_BYTES};
use super::space::check_free_space;
use super::tar::TarParser;
use super::BackupJob;
use crate::catalog::backup_store::{self, BackupIndex, TablespaceRecord};
use crate::catalog::state;
use crate::catalog::store::ObjectStore;
use crate::catalog::Layout;
use crate::client::replication::SystemInfo;
use crate::client::{ClientError, Connection};
use crate::pg::{Lsn, TimelineId, WalSegSize};
use crate::protocol::basebackup::{BackupEvent, BackupReplyError, BaseBackupReader, BaseBackupRequest};
use crate::util::progress::Progress;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connected, identified server whose catalog identity has been checked.
pub struct Session {
    pub conn: Connection,
    pub sys: SystemInfo,
    pub seg: WalSegSize,
    pub pg_version: u32,
}

/// Maps a client error to the backup's, naming the server (a cancel stays a cancel).
pub fn client_error(server: &str) -> impl Fn(ClientError) -> BackupError + '_ {
    move |source| match source {
        ClientError::Cancelled => BackupError::Cancelled,
        source => BackupError::Client {
            server: server.to_string(),
            source: Box::new(source),
        },
    }
}

/// Connects, identifies the server, checks it against the catalog (`server.state`), and writes
/// the backup's `.running` intent record.
pub async fn open(job: &BackupJob, store: &Arc<dyn ObjectStore>, id: &str, start_time: u64) -> Result<Session, BackupError> {
    let server = job.server.as_str();
    let mut conn = tokio::select! {
        _ = job.cancel.cancelled() => return Err(BackupError::Cancelled),
        c = Connection::connect(&job.conninfo, true) => c.map_err(|source| BackupError::Connect { server: server.to_string(), source: Box::new(source) })?,
    };
    // Every wait for the server is bounded (backup_stream_timeout) and ends on cancellation.
    conn.set_io_timeout(job.settings.stream_timeout);
    conn.set_cancel(job.cancel.clone());
    let sys = conn.identify_system().await.map_err(client_error(server))?;
    let seg = conn.wal_segment_size().await.map_err(client_error(server))?;
    let pg_version = conn.server_version_num;
    state::verify_or_record(
        store.as_ref(),
        server,
        &Layout::new(&job.catalog).server_dir(server).display().to_string(),
        sys.system_identifier,
        seg.bytes(),
        pg_version,
        sys.timeline,
    )?;
    let intent = serde_json::json!({ "id": id, "pid": std::process::id(), "started": start_time, "label": job.label });
    store.put(&backup_store::running_key(server, id), intent.to_string().as_bytes())?;
    Ok(Session {
        conn,
        sys,
        seg,
        pg_version,
    })
}

/// What the server sent, stored as chunks.
pub struct Received {
    pub rx: Receive,
    pub tablespaces: Vec<TablespaceRecord>,
    pub manifest: Vec<u8>,
    pub start: (Lsn, TimelineId),
    pub end: (Lsn, TimelineId),
    pub chunks: Vec<pipeline::ChunkDone>,
}

/// What the backup's data goes to, known before the stream starts.
pub struct Target<'a> {
    pub id: &'a str,
    pub store: &'a Arc<dyn ObjectStore>,
    /// `<catalog>/<server>`: its filesystem is the one checked for space.
    pub server_dir: &'a Path,
    /// The newest published backup (its compression ratio predicts this one's size).
    pub previous: Option<BackupIndex>,
    /// Tablespace names by oid, for the index.
    pub names: BTreeMap<u32, String>,
}

/// Sends BASE_BACKUP and reads the reply to its end (then closes the connection): tablespaces, each archive's files into
/// chunks, the manifest, start and end positions. The storage workers' own error (out of space,
/// EIO) ends the stream and is the one returned.
pub async fn receive(
    mut conn: Connection,
    job: &BackupJob,
    request: &BaseBackupRequest,
    target: &Target<'_>,
    progress: &mut dyn Progress,
) -> Result<Received, BackupError> {
    let (cfg, server, id) = (&job.settings, job.server.as_str(), target.id);
    let client = client_error(server);
    let reusable = backup_store::reusable_chunks(target.store.as_ref(), server)?;
    // With a spread checkpoint the server says nothing until its checkpoint is done, which may
    // take up to checkpoint_timeout (times checkpoint_completion_target), after one already
    // under way: wait twice that more for the first message. A fast checkpoint must finish
    // within backup_stream_timeout.
    let first_wait = if job.fast_checkpoint {
        cfg.stream_timeout
    } else {
        let checkpoint = conn.show("checkpoint_timeout").await.map_err(&client)?;
        cfg.stream_timeout + 2 * parse_pg_duration(&checkpoint).unwrap_or(Duration::from_secs(3600))
    };
    conn.send_query(&request.command(conn.server_version_num)).await.map_err(&client)?;
    conn.set_phase("BASE_BACKUP: waiting for the server's checkpoint");
    conn.set_io_timeout(first_wait);

    let mut reader = BaseBackupReader::new(conn.server_version_num);
    let mut rx = Receive::new(server);
    if request.incremental {
        let ring = target
            .server_dir
            .parent()
            .and_then(crate::catalog::local_store_sealing::keyring_for);
        tracing::debug!(server = %server, id, dir = %target.server_dir.display(), encrypted = ring.is_some(), "the changed blocks go to a scratch file until the rebuild");
        rx.changed = Some(ChangedBlocks::create(target.server_dir, ring.as_deref(), cfg.min_free)?);
    }
    let mut tablespaces: Vec<TablespaceRecord> = Vec::new();
    let mut parser: Option<TarParser> = None;
    let mut pipeline: Option<Pipeline> = None;
    let mut manifest = Vec::new();
    let (mut start, mut end) = (None, None);
    let mut done = false;
    let mut last_progress = Instant::now();
    while !reader.is_finished() {
        let msg = conn.next_message().await.map_err(&client)?;
        if start.is_none() {
            conn.set_phase("BASE_BACKUP stream");
            conn.set_io_timeout(cfg.stream_timeout);
        }
        let events = reader.on_message(msg).map_err(|source| match source {
            // Refused before any data (WAL summaries missing or off, a manifest it cannot use):
            // the caller may take a full backup instead.
            BackupReplyError::Server(e) if request.incremental && tablespaces.is_empty() => BackupError::IncrementalUnavailable {
                server: server.to_string(),
                reason: format!("the server refused it: {e}"),
            },
            source => BackupError::Reply {
                server: server.to_string(),
                source: Box::new(source),
            },
        })?;
        for ev in events {
            match ev {
                BackupEvent::Start { lsn, timeline } => {
                    tracing::info!(server = %server, id, start_lsn = %lsn, timeline = %timeline, "backup started on the server");
                    start = Some((lsn, timeline));
                }
                BackupEvent::Tablespaces(ts) => {
                    let estimate: u64 = ts.iter().filter_map(|t| t.estimated_bytes).sum();
                    check_free_space(target.server_dir, estimate, target.previous.as_ref(), cfg.min_free)?;
                    progress.begin(Some(estimate));
                    pipeline = Some(Pipeline::start(
                        PipelineConfig {
                            server: server.to_string(),
                            compression: cfg.compression,
                            workers: cfg.workers,
                            reusable: reusable.clone(),
                            catalog_root: target.server_dir.to_path_buf(),
                            min_free: cfg.min_free,
                            estimated_total: estimate,
                        },
                        Arc::clone(target.store),
                    ));
                    tablespaces = ts
                        .into_iter()
                        .map(|t| TablespaceRecord {
                            oid: t.oid,
                            location: t.location,
                            estimated_bytes: t.estimated_bytes,
                            name: t.oid.and_then(|o| target.names.get(&o).cloned()),
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
                        return Err(tar_err(server, "archive data outside an archive"));
                    };
                    let pushed = p.push(&d, &mut |ev| rx.on_tar(pl, ev));
                    if pl.has_failed() {
                        // The workers' own error (out of space, EIO) is collected below.
                        break;
                    }
                    pushed.map_err(|e| with_server(e, server))?;
                    if last_progress.elapsed() >= Duration::from_millis(200) {
                        progress.update(rx.bytes, pl.stored_bytes());
                        last_progress = Instant::now();
                    }
                }
                BackupEvent::ArchiveEnd => {
                    if let Some(p) = parser.take() {
                        p.finish().map_err(|source| BackupError::Tar {
                            server: server.to_string(),
                            source,
                        })?;
                    }
                }
                BackupEvent::Progress(_) => {}
                BackupEvent::ManifestData(d) => {
                    if manifest.len() + d.len() > MAX_MANIFEST_BYTES {
                        return Err(tar_err(server, &format!("the backup_manifest exceeds {MAX_MANIFEST_BYTES} bytes")));
                    }
                    manifest.extend_from_slice(&d)
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
    let pipeline = pipeline.ok_or_else(|| tar_err(server, "no tablespace list before the data"))?;
    if pipeline.has_failed() {
        // The workers' error says why (out of space, I/O); the connection closes on return.
        pipeline.finish()?;
        return Err(BackupError::Io(std::io::Error::other("the storage workers failed")));
    }
    let (Some(start), Some(end), true) = (start, end, done) else {
        return Err(tar_err(server, "the reply ended before the backup completed"));
    };
    conn.terminate().await;
    if let Some(changed) = rx.changed.as_mut() {
        changed.finish_writing()?;
    }
    let stored_bytes = pipeline.stored_bytes();
    progress.update(rx.bytes, stored_bytes);
    progress.phase(&format!("{server}: received {} bytes; storing and checking", rx.bytes));
    let chunks = pipeline.finish()?;
    Ok(Received {
        rx,
        tablespaces,
        manifest,
        start,
        end,
        chunks,
    })
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

#[cfg(test)]
mod tests {
    #[test]
    fn pg_durations() {
        use std::time::Duration;
        assert_eq!(super::parse_pg_duration("5min"), Some(Duration::from_secs(300)));
        assert_eq!(super::parse_pg_duration("300s"), Some(Duration::from_secs(300)));
        assert_eq!(super::parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(super::parse_pg_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(super::parse_pg_duration("soon"), None);
    }
}
