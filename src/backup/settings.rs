//! How base backups of one server are taken: the settings the config builds, with their defaults.

use crate::catalog::Compression;
use std::time::Duration;

/// Base backups compress better per CPU second at level 3 than WAL does, and a backup is not on
/// the commit path; pgBackRest's zst default is 3 too.
pub const DEFAULT_BACKUP_ZSTD_LEVEL: i32 = 3;
/// Space a backup leaves free on the catalog's filesystem, so WAL streaming (the RPO=0 path)
/// never runs out because of a backup.
pub const DEFAULT_BACKUP_MIN_FREE: u64 = 256 * 1024 * 1024;
pub const DEFAULT_BACKUP_WAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Silence of the server during a base backup after which the backup is abandoned: generous
/// (a server reading a large file from a slow disk), but finite. A spread checkpoint before the
/// first message gets the server's `checkpoint_timeout` on top.
pub const DEFAULT_BACKUP_STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// How base backups of one server are taken.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSettings {
    pub schedule: Option<super::schedule::Schedule>,
    pub compression: Compression,
    /// Compression workers (default: the number of CPUs).
    pub workers: usize,
    pub fast_checkpoint: bool,
    pub min_free: u64,
    pub wal_timeout: Duration,
    /// Longest silence of the server during the BASE_BACKUP stream.
    pub stream_timeout: Duration,
    /// `backup_full_every`: scheduled backups are incremental (PostgreSQL 17+) except when the
    /// newest full backup started longer ago than this. None: every scheduled backup is full.
    pub full_every: Option<Duration>,
    /// `backup_max_rate`: the server's send rate limit (`MAX_RATE`), in kB/s; `pgark backup
    /// --max-rate` overrides it. None: unlimited.
    pub max_rate_kb: Option<u32>,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            schedule: None,
            compression: Compression::Zstd(DEFAULT_BACKUP_ZSTD_LEVEL),
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            fast_checkpoint: false,
            min_free: DEFAULT_BACKUP_MIN_FREE,
            wal_timeout: DEFAULT_BACKUP_WAL_TIMEOUT,
            stream_timeout: DEFAULT_BACKUP_STREAM_TIMEOUT,
            full_every: None,
            max_rate_kb: None,
        }
    }
}
