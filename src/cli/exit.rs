//! Exit codes: the one place that knows their numbers (documented in `docs/exit-codes.md`), and
//! the mapping from each domain's typed errors to them.
//!
//! `wal-get` keeps its own 0/1/126 (`restore::wal_get`): that is PostgreSQL's `restore_command`
//! contract, not a pgark convention.

use crate::backup::BackupError;
use crate::catalog::lock::LockError;
use crate::restore::{plan::PlanError, RestoreError};
use crate::service::daemon::DaemonError;

pub const OK: i32 = 0;
/// A runtime failure: I/O, connection, a daemon task that died.
pub const FAILURE: i32 = 1;
/// Bad usage or a bad config file.
pub const USAGE: i32 = 2;
/// `pgark status`: a server is not streaming, or the daemon is not running.
pub const NOT_STREAMING: i32 = 3;
/// The catalog is locked by another running `pgark serve`, or a backup of that server is
/// already running.
pub const LOCKED: i32 = 4;
/// The backup id does not exist.
pub const NOT_FOUND: i32 = 5;
/// Refused to protect the catalog (deleting the only usable backup without --force).
pub const REFUSED: i32 = 6;
/// `restore`: no backup and WAL in the catalog can reach the recovery target.
pub const UNREACHABLE: i32 = 7;
/// `backup`: not started because the catalog's free space is below
/// `disk_pressure.catalog_free_critical`.
pub const DISK_PRESSURE: i32 = 8;
/// `verify`, `check`, `drill`: something is damaged, missing or misconfigured (each problem is
/// printed), or the drill failed.
pub const DAMAGED: i32 = 9;
/// `backup --incremental=require`: the server or the catalog cannot give an incremental backup
/// (PostgreSQL before 17, summarize_wal off, WAL summaries missing, no parent backup).
pub const NO_INCREMENTAL: i32 = 10;

/// `pgark backup`.
pub fn for_backup(e: &BackupError) -> i32 {
    match e {
        BackupError::Locked(_) => LOCKED,
        BackupError::DiskPressure { .. } => DISK_PRESSURE,
        BackupError::IncrementalUnavailable { .. } => NO_INCREMENTAL,
        _ => FAILURE,
    }
}

/// `pgark restore`.
pub fn for_restore(e: &RestoreError) -> i32 {
    match e {
        RestoreError::Usage(_) | RestoreError::Target(_) => USAGE,
        RestoreError::Plan(PlanError::UnknownBackup(_)) => NOT_FOUND,
        RestoreError::Plan(_) => UNREACHABLE,
        _ => FAILURE,
    }
}

/// `pgark serve`.
pub fn for_daemon(e: &DaemonError) -> i32 {
    match e {
        DaemonError::Config(_) => USAGE,
        DaemonError::Lock(LockError::Held { .. }) => LOCKED,
        _ => FAILURE,
    }
}
