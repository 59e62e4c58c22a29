//! The live status of every server, shared by the receivers (writers) and `/status`, `/healthz`
//! and `pgark status` (readers). Serialized as the JSON of `pgark status --json`.

use crate::pg::{Lsn, TimelineId};
use crate::util::time::unix_now;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use crate::receiver::ConnState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub server: String,
    pub state: ConnState,
    /// pgark fsyncs and reports at every commit: configured `synchronous: true`, or the server
    /// names pgark in `synchronous_standby_names` (`receiver::sync_role`).
    pub synchronous: bool,
    pub timeline: Option<TimelineId>,
    pub received_lsn: Option<Lsn>,
    pub flushed_lsn: Option<Lsn>,
    /// The server's WAL end as of its last message.
    pub server_lsn: Option<Lsn>,
    /// `server_lsn - flushed_lsn`.
    pub lag_bytes: Option<u64>,
    pub last_segment: Option<String>,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Unix seconds when this server was added to the running daemon (its start, or the reload
    /// that added or changed it): `/healthz` counts its silence from here until a first message.
    #[serde(default)]
    pub added_at: u64,
    /// Unix seconds when streaming last started, and of the last message received.
    pub streaming_since: Option<u64>,
    pub last_message_at: Option<u64>,
    /// The server's side, from the monitoring connection (see `monitor`).
    #[serde(default)]
    pub monitor: Option<crate::monitor::ServerFacts>,
    #[serde(default)]
    pub monitor_error: Option<String>,
    /// Set while the slot holds back more WAL than `slot_retained_limit`.
    #[serde(default)]
    pub slot_warning: Option<String>,
    /// Unix seconds up to which pgark holds, durably, all WAL the server had sent: the end of
    /// the recovery window.
    #[serde(default)]
    pub wal_durable_at: Option<u64>,
    /// This server's share of the catalog and its WAL ingest rate (see `catalog_watch`).
    #[serde(default)]
    pub catalog: Option<ServerCatalog>,
    /// Start of the newest and of the oldest published base backup (Unix seconds): the oldest
    /// one starts the recovery window.
    #[serde(default)]
    pub oldest_backup_start: Option<u64>,
    #[serde(default)]
    pub newest_backup_end: Option<u64>,
    /// Retention and WAL continuity (see `retention_task`).
    #[serde(default)]
    pub retention: Option<RetentionStatus>,
    /// Who holds the server's backup and restore locks (a backup, prune, restore, verify or
    /// drill), filled in by `pgark status` from the kernel's lock table.
    #[serde(default)]
    pub locks: Vec<crate::catalog::lock::LockHolder>,
    /// Each repository's copy of this server: lag, queue, errors (see `offsite_task`).
    #[serde(default)]
    pub offsite: Vec<crate::offsite::ServerProgress>,
}

/// What retention and the WAL continuity index say of one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetentionStatus {
    /// The earliest point a restore can reach without crossing a WAL gap (Unix seconds, LSN),
    /// and the backup it starts from.
    pub window_start: Option<u64>,
    pub window_start_lsn: Option<Lsn>,
    pub window_backup: Option<String>,
    /// Gaps in the WAL since the oldest backup that nobody acknowledged.
    pub wal_gaps: Vec<String>,
    pub wal_gaps_acknowledged: usize,
    pub last_prune_at: Option<u64>,
    pub last_prune_error: Option<String>,
}

/// One server's share of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCatalog {
    pub wal_bytes: u64,
    pub backup_bytes: u64,
    /// Stored WAL bytes per second over the last minutes (WAL rate times its stored ratio).
    pub wal_ingest_bytes_per_second: f64,
}

/// The catalog's filesystem (see `catalog_watch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub pressure: crate::catalog::space::Level,
    /// Seconds until the filesystem is full at the current WAL ingest rate (`None`: not filling).
    pub full_eta_seconds: Option<f64>,
    /// Unix seconds of the measurement.
    pub at: u64,
}

impl ServerStatus {
    pub fn new(server: &str, synchronous: bool) -> Self {
        ServerStatus {
            server: server.to_string(),
            state: ConnState::Starting,
            synchronous,
            timeline: None,
            received_lsn: None,
            flushed_lsn: None,
            server_lsn: None,
            lag_bytes: None,
            last_segment: None,
            last_error: None,
            reconnects: 0,
            added_at: unix_now(),
            streaming_since: None,
            last_message_at: None,
            monitor: None,
            monitor_error: None,
            slot_warning: None,
            wal_durable_at: None,
            catalog: None,
            oldest_backup_start: None,
            newest_backup_end: None,
            retention: None,
            locks: Vec::new(),
            offsite: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// False when `pgark status` found no daemon and read the catalog instead (then `pid` is 0,
    /// `reason` says why, and each server's `timeline` and `flushed_lsn` come from its
    /// `server.state`).
    #[serde(default = "running")]
    pub daemon_running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub version: String,
    pub pid: u32,
    pub catalog: String,
    #[serde(default)]
    pub catalog_space: Option<CatalogSpace>,
    pub servers: Vec<ServerStatus>,
    /// The daemon's tasks that died (a panic, an early return) and were restarted, newest last
    /// (at most `MAX_TASK_FAILURES`).
    #[serde(default)]
    pub task_failures: Vec<TaskFailure>,
}

fn running() -> bool {
    true
}

/// A task of the daemon that died.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// receiver, archiver, monitor, backup_scheduler, drill_scheduler, verify_scheduler, catalog_watch or http.
    pub task: String,
    /// The server it worked for (empty for the daemon-wide tasks).
    pub server: String,
    pub error: String,
    /// Unix seconds.
    pub at: u64,
}

/// Task failures kept for `/status`.
pub const MAX_TASK_FAILURES: usize = 20;

/// Shared map from server name to status, and the catalog's space.
#[derive(Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<String, ServerStatus>>>,
    catalog: Arc<Mutex<Option<CatalogSpace>>>,
    failures: Arc<Mutex<Vec<TaskFailure>>>,
}

impl StatusBoard {
    /// Records a task that died (shown in `/status`; the server's `last_error` too).
    pub fn task_failed(&self, task: &str, server: &str, error: &str) {
        if let Ok(mut f) = self.failures.lock() {
            if f.len() == MAX_TASK_FAILURES {
                f.remove(0);
            }
            f.push(TaskFailure {
                task: task.to_string(),
                server: server.to_string(),
                error: error.to_string(),
                at: unix_now(),
            });
        }
        if !server.is_empty() {
            self.update(server, |s| {
                s.last_error = Some(format!("the {task} task died ({error}); restarted"))
            });
        }
    }

    pub fn task_failures(&self) -> Vec<TaskFailure> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub fn set_catalog_space(&self, space: CatalogSpace) {
        if let Ok(mut c) = self.catalog.lock() {
            *c = Some(space);
        }
    }

    pub fn catalog_space(&self) -> Option<CatalogSpace> {
        self.catalog.lock().ok().and_then(|c| c.clone())
    }

    pub fn update(&self, server: &str, f: impl FnOnce(&mut ServerStatus)) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(s) = m.get_mut(server) {
                f(s);
            }
        }
    }

    pub fn insert(&self, status: ServerStatus) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(status.server.clone(), status);
        }
    }

    pub fn remove(&self, server: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(server);
        }
    }

    /// The receiver's flushed timeline and position of `server`.
    pub fn flushed(&self, server: &str) -> Option<(TimelineId, Lsn)> {
        let m = self.inner.lock().ok()?;
        let s = m.get(server)?;
        Some((s.timeline?, s.flushed_lsn?))
    }

    pub fn snapshot(&self) -> Vec<ServerStatus> {
        self.inner.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }
}

/// The daemon's receivers, for backups the daemon takes itself.
impl crate::backup::WalProgressSource for StatusBoard {
    fn receiver<'a>(
        &'a self,
        server: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<crate::backup::ReceiverPosition>> + Send + 'a>> {
        let found = self
            .snapshot()
            .into_iter()
            .find(|s| s.server == server)
            .map(|s| crate::backup::ReceiverPosition {
                streaming: s.state == ConnState::Streaming,
                timeline: s.timeline,
                flushed: s.flushed_lsn,
            });
        Box::pin(std::future::ready(found))
    }
}
