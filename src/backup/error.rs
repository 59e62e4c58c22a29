//! What can go wrong in a backup, typed so that callers branch (the CLI maps these to exit
//! codes in `cli::exit`).

use super::manifest::ManifestError;
use super::pipeline::PipelineError;
use super::tar;
use crate::catalog::backup_store;
use crate::catalog::lock::LockError;
use crate::catalog::state::IdentityError;
use crate::client::ClientError;
use crate::pg::{Lsn, TimelineId};
use crate::protocol::basebackup::BackupReplyError;
use std::path::PathBuf;
use std::time::Duration;

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
    Manifest(#[from] ManifestError),
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
    #[error("{server}: no incremental backup possible: {reason}")]
    IncrementalUnavailable { server: String, reason: String },
}

impl From<tar::TarError> for BackupError {
    fn from(e: tar::TarError) -> Self {
        BackupError::Tar {
            server: String::new(),
            source: e,
        }
    }
}

/// Names the server in a tar error raised without it.
pub(super) fn with_server(e: BackupError, server: &str) -> BackupError {
    match e {
        BackupError::Tar { source, .. } => BackupError::Tar {
            server: server.to_string(),
            source,
        },
        other => other,
    }
}

pub(super) fn tar_err(server: &str, reason: &str) -> BackupError {
    BackupError::Tar {
        server: server.to_string(),
        source: tar::TarError {
            offset: 0,
            reason: reason.to_string(),
        },
    }
}
