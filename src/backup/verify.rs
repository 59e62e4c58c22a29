//! The checks a backup passes before it may exist: every file against PostgreSQL's
//! `backup_manifest`, and every WAL segment from its start to its end durable (in the catalog,
//! or inside the backup when no receiver streams the server).

use super::error::BackupError;
use super::manifest::{self, Manifest, ManifestError};
use super::{wal_wait, BackupJob};
use crate::catalog::backup_store::{self, FileKind, StoredFile, WalSource};
use crate::catalog::store::ObjectStore;
use crate::pg::{Lsn, TimelineId, WalSegSize};
use crate::util::progress::Progress;

/// Checks the received files against the server's manifest; returns how many were checked.
/// WAL the server appended to the backup (`include_wal`) is not in the manifest.
pub fn against_manifest(
    manifest: &Manifest,
    system_identifier: u64,
    files: &[StoredFile],
    include_wal: bool,
) -> Result<usize, BackupError> {
    if let Some(m) = manifest.system_identifier.filter(|m| *m != system_identifier) {
        return Err(ManifestError(format!("System-Identifier {m} is not the server's {system_identifier}")).into());
    }
    let in_wal_dir = |p: &str| p.strip_prefix("pg_wal/").is_some_and(|rest| !rest.contains('/'));
    Ok(manifest::check(
        manifest,
        files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .filter(|f| !(include_wal && in_wal_dir(&f.path) && !manifest.files.contains_key(&f.path)))
            .map(|f| manifest::ReceivedFile {
                path: &f.path,
                size: f.size,
                crc32c: f.crc32c.unwrap_or(0),
            }),
    )?)
}

/// Where the backup's WAL is, once every segment from `start` to `end` is known durable: the
/// catalog (waiting for the receiver to flush up to `end`), or the backup itself.
#[allow(clippy::too_many_arguments)]
pub async fn wal_is_durable(
    job: &BackupJob,
    store: &dyn ObjectStore,
    seg: WalSegSize,
    start: (Lsn, TimelineId),
    end: (Lsn, TimelineId),
    streaming: bool,
    files: &[StoredFile],
    progress: &mut dyn Progress,
) -> Result<WalSource, BackupError> {
    let server = job.server.as_str();
    let required = backup_store::required_wal(seg, start, end);
    if streaming {
        progress.phase(&format!("{server}: waiting for pgark serve to flush WAL up to {}", end.0));
        wal_wait::wait_for_wal(job, server, end.0, end.1).await?;
        // The receiver may have started after this backup's start (a new catalog): every
        // segment from the start must be there, not just the end.
        for name in required {
            let name = name.format(seg);
            if !backup_store::wal_segment_stored(store, server, &name) {
                return Err(BackupError::WalMissing {
                    server: server.to_string(),
                    segment: name,
                });
            }
        }
        Ok(WalSource::Catalog)
    } else {
        for name in required {
            let name = name.format(seg);
            if !files.iter().any(|f| f.path == format!("pg_wal/{name}")) {
                return Err(BackupError::WalMissing {
                    server: server.to_string(),
                    segment: name,
                });
            }
        }
        Ok(WalSource::Backup)
    }
}
