//! The drill record: what one restore drill (`pgark drill`, or `drill.schedule` in `pgark serve`)
//! found, kept in the catalog as `<server>/drills/<unix start time>.json` so that the daemon's
//! metrics, `pgark drill --json` consumers and an auditor see every recent drill, whoever ran it.
//!
//! Written once, atomically (`ObjectStore::put`), after the drill has ended; the oldest are
//! removed so that `KEEP` remain. A record is a report, never an input to a restore: an
//! unreadable one is skipped.

use crate::catalog::store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::io;

/// The record's format; a reader skips records of another format.
pub const FORMAT: u32 = 1;
/// How many records of a server are kept.
pub const KEEP: usize = 50;

/// One check run against the restored cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// `connect <db>`, `pg_amcheck`, `sql[<i>]`.
    pub name: String,
    pub ok: bool,
    /// What it found (the error, or why it was skipped).
    pub detail: String,
    /// Not run (pg_amcheck missing from the binaries): neither a success nor a failure.
    #[serde(default)]
    pub skipped: bool,
}

/// Where recovery ended, as the restored PostgreSQL reported it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RecoveredPoint {
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<String>,
    /// The timeline after promotion.
    pub timeline: Option<u32>,
    /// `pg_last_xact_replay_timestamp()`: the last replayed commit.
    pub last_commit_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub format: u32,
    pub server: String,
    /// Unix seconds; also the record's name.
    pub started_at: u64,
    pub finished_at: u64,
    pub success: bool,
    /// The step that failed (`binaries`, `access`, `restore`, `start`, `recovery`, `connect`, `amcheck`,
    /// `sql`, `interrupted`), with its error and the end of PostgreSQL's log.
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub log_tail: Option<String>,
    /// The backup restored (none when the drill failed before choosing one).
    pub backup_id: Option<String>,
    /// The recovery target as asked (`end of WAL`, `time …`, `lsn …`).
    pub target: String,
    pub pg_major: Option<u32>,
    pub pg_bindir: Option<String>,
    pub recovered: RecoveredPoint,
    pub checks: Vec<CheckRecord>,
    /// Writing the files.
    pub restore_seconds: Option<f64>,
    /// From PostgreSQL's start to the end of recovery.
    pub recovery_seconds: Option<f64>,
    /// From the start of the drill to the end of recovery: the measured recovery time (RTO),
    /// checks and cleanup not included.
    pub total_seconds: Option<f64>,
    /// The scratch directory (kept only with `--keep`).
    pub scratch_dir: String,
    pub kept: bool,
}

/// Store key of a server's drill records.
pub fn dir_key(server: &str) -> String {
    format!("{server}/drills")
}

/// Store key of the record of the drill started at `started_at`.
pub fn key(server: &str, started_at: u64) -> String {
    format!("{}/{started_at}.json", dir_key(server))
}

/// Start times of the server's records, oldest first.
pub fn list(store: &dyn ObjectStore, server: &str) -> io::Result<Vec<u64>> {
    let mut times: Vec<u64> = store
        .list(&dir_key(server))?
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".json")?.parse().ok())
        .collect();
    times.sort_unstable();
    Ok(times)
}

/// One record; `None` when absent, unreadable or of another format (logged).
pub fn load(store: &dyn ObjectStore, server: &str, started_at: u64) -> Option<DrillRecord> {
    let key = key(server, started_at);
    let bytes = match store.get(&key) {
        Ok(b) => b?,
        Err(e) => {
            tracing::warn!(record = %key, error = %e, "cannot read a drill record");
            return None;
        }
    };
    match serde_json::from_slice::<DrillRecord>(&bytes) {
        Ok(r) if r.format == FORMAT => Some(r),
        Ok(r) => {
            tracing::info!(record = %key, format = r.format, "skipping a drill record of another format");
            None
        }
        Err(e) => {
            tracing::warn!(record = %key, error = %e, "skipping an unreadable drill record");
            None
        }
    }
}

/// The newest record, and the newest successful one.
pub fn latest(store: &dyn ObjectStore, server: &str) -> io::Result<(Option<DrillRecord>, Option<DrillRecord>)> {
    let mut newest = None;
    for t in list(store, server)?.into_iter().rev() {
        let Some(r) = load(store, server, t) else { continue };
        if r.success {
            return Ok((newest.or_else(|| Some(r.clone())), Some(r)));
        }
        newest.get_or_insert(r);
    }
    Ok((newest, None))
}

/// Stores the record atomically, then removes the oldest beyond `KEEP` (a failure to remove
/// them is logged: it costs space only).
pub fn save(store: &dyn ObjectStore, record: &DrillRecord) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    store.put(&key(&record.server, record.started_at), &bytes)?;
    let times = list(store, &record.server)?;
    for t in times.iter().take(times.len().saturating_sub(KEEP)) {
        if let Err(e) = store.delete(&key(&record.server, *t)) {
            tracing::warn!(server = %record.server, error = %e, "cannot remove an old drill record");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    fn record(t: u64, success: bool) -> DrillRecord {
        DrillRecord {
            format: FORMAT,
            server: "main".into(),
            started_at: t,
            finished_at: t + 5,
            success,
            failed_step: (!success).then(|| "restore".into()),
            error: None,
            log_tail: None,
            backup_id: Some("20261201T000000Z".into()),
            target: "end of WAL".into(),
            pg_major: Some(15),
            pg_bindir: None,
            recovered: RecoveredPoint::default(),
            checks: vec![],
            restore_seconds: Some(1.0),
            recovery_seconds: Some(2.0),
            total_seconds: Some(3.5),
            scratch_dir: "/x".into(),
            kept: false,
        }
    }

    #[test]
    fn keeps_the_newest_and_finds_the_last_success() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        assert_eq!(latest(&store, "main").unwrap(), (None, None));
        for t in 0..(KEEP as u64 + 3) {
            save(&store, &record(1000 + t, t % 2 == 0)).unwrap();
        }
        let times = list(&store, "main").unwrap();
        assert_eq!(times.len(), KEEP);
        assert_eq!(times[0], 1003);
        let (newest, success) = latest(&store, "main").unwrap();
        assert_eq!(newest.unwrap().started_at, 1000 + KEEP as u64 + 2);
        assert_eq!(success.unwrap().started_at, 1000 + KEEP as u64 + 2);
        save(&store, &record(5000, false)).unwrap();
        store.put(&key("main", 6000), b"{garbage").unwrap();
        let (newest, success) = latest(&store, "main").unwrap();
        assert_eq!(newest.unwrap().started_at, 5000, "the unreadable record is skipped");
        assert!(success.unwrap().success);
        assert_eq!(latest(&store, "other").unwrap(), (None, None));
    }
}
