//! How backups are shown: the summary `list-backups` and `show-backup` print (and `--json`).

use crate::catalog::backup_store::{self, BackupIndex, WalPresence};
use crate::catalog::store::ObjectStore;
use serde::Serialize;

/// What `list-backups --json` and `show-backup --json` print for one backup (the index without
/// its file list, plus whether it is usable now).
#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub server: String,
    pub id: String,
    pub label: String,
    /// `ok` when usable for a restore; `wal-missing` when WAL it needs is gone from the catalog.
    pub status: &'static str,
    pub usable: bool,
    pub start_time: String,
    pub end_time: String,
    pub duration_seconds: u64,
    pub start_lsn: String,
    pub end_lsn: String,
    pub timeline: u32,
    pub end_timeline: u32,
    pub pg_version: u32,
    pub system_identifier: String,
    pub from_standby: bool,
    pub checkpoint: String,
    pub compression: String,
    pub original_bytes: u64,
    pub stored_new_bytes: u64,
    pub stored_total_bytes: u64,
    pub file_count: usize,
    pub wal_source: backup_store::WalSource,
    pub wal: WalPresence,
    pub tablespaces: Vec<crate::catalog::backup_store::TablespaceRecord>,
    /// When `pgark verify` (or the daemon's scheduled verify) last checked it (UTC), or `never`.
    pub verified_at: String,
    /// That verify's result: `ok`, `damaged`, or `never`.
    pub verify_status: String,
}

pub fn summarize(store: &dyn ObjectStore, idx: &BackupIndex) -> BackupSummary {
    let wal = backup_store::wal_presence(store, idx);
    let verified = crate::verify::record::load(store, &idx.server, &idx.id);
    BackupSummary {
        server: idx.server.clone(),
        id: idx.id.clone(),
        label: idx.label.clone(),
        status: if wal.present { "ok" } else { "wal-missing" },
        usable: wal.present,
        start_time: crate::util::time::format_utc(idx.start_time),
        end_time: crate::util::time::format_utc(idx.end_time),
        duration_seconds: idx.end_time.saturating_sub(idx.start_time),
        start_lsn: idx.start_lsn.to_string(),
        end_lsn: idx.end_lsn.to_string(),
        timeline: idx.start_timeline.0,
        end_timeline: idx.end_timeline.0,
        pg_version: idx.pg_version,
        system_identifier: idx.system_identifier.clone(),
        from_standby: idx.from_standby,
        checkpoint: idx.checkpoint.clone(),
        compression: idx.compression.clone(),
        original_bytes: idx.original_bytes,
        stored_new_bytes: idx.stored_new_bytes,
        stored_total_bytes: idx.stored_total_bytes,
        file_count: idx.file_count(),
        wal_source: idx.wal_source,
        wal,
        tablespaces: idx.tablespaces.clone(),
        verified_at: verified
            .as_ref()
            .map_or_else(|| "never".to_string(), |v| crate::util::time::format_utc(v.verified_at)),
        verify_status: verified.map_or_else(|| "never".to_string(), |v| v.status),
    }
}
