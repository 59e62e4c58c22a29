//! Server-side facts, read over an ordinary SQL connection on an interval: the server's WAL
//! position, what pgark's slot holds back (`restart_lsn`, `wal_status`, `safe_wal_size`), whether
//! the server treats pgark as a synchronous standby (`pg_stat_replication.sync_state`, and whether
//! `synchronous_standby_names` names it at all), and the size of `pg_wal`.
//!
//! This is what answers "is my RPO at risk, and is my primary about to fill pg_wal because of
//! this slot?". A failing monitoring connection is reported (metric, status, log) and never
//! touches streaming. The connection uses pgark's own client, so TLS, `.pgpass` and SCRAM behave
//! exactly as for the replication connection; a role with `pg_monitor` is enough.

use crate::client::conninfo::ConnInfo;
use crate::client::Connection;
use crate::pg::Lsn;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the server is asked.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(15);

/// What the monitoring of one server needs (built by `config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    /// The ordinary (not replication) connection, see `monitoring_conninfo`.
    pub conninfo: ConnInfo,
    /// The slot whose retention is watched.
    pub slot: String,
    pub interval: Duration,
    /// WAL the slot may hold back on the server before pgark warns.
    pub slot_retained_limit: Option<u64>,
}

/// What the last successful round found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerFacts {
    /// `pg_current_wal_lsn()` (on a standby: the last replayed LSN).
    pub current_lsn: Option<Lsn>,
    pub in_recovery: bool,
    pub slot_exists: bool,
    pub slot_active: Option<bool>,
    pub slot_restart_lsn: Option<Lsn>,
    /// `current_lsn - restart_lsn`: the WAL the slot keeps on the server.
    pub slot_retained_bytes: Option<u64>,
    /// reserved, extended, unreserved or lost.
    pub slot_wal_status: Option<String>,
    pub slot_safe_wal_size_bytes: Option<i64>,
    /// `pg_stat_replication.sync_state` for pgark's application_name (async, potential, sync, quorum).
    pub sync_state: Option<String>,
    /// pgark's walsender is there, but the server hides its state (`sync_state`, the lags) from
    /// a monitoring role without `pg_read_all_stats` (`pg_monitor` has it).
    #[serde(default)]
    pub walsender_state_hidden: bool,
    /// `pg_stat_replication.sync_priority` (0 for an asynchronous standby).
    #[serde(default)]
    pub sync_priority: Option<i64>,
    /// `pg_stat_replication` write/flush/replay lag in seconds, as the server measures it (0 when
    /// the server has cleared it after an idle period).
    #[serde(default)]
    pub write_lag_seconds: Option<f64>,
    #[serde(default)]
    pub flush_lag_seconds: Option<f64>,
    #[serde(default)]
    pub replay_lag_seconds: Option<f64>,
    /// Whether `synchronous_standby_names` names pgark's application_name (or is `*`).
    pub named_in_synchronous_standby_names: bool,
    pub synchronous_standby_names: String,
    pub pg_wal_bytes: Option<u64>,
    pub max_slot_wal_keep_size: Option<String>,
    /// Unix seconds of this round.
    pub at: u64,
}

/// Whether `synchronous_standby_names` lists `app` (or `*`), in any of its forms:
/// `a, b`, `FIRST 2 (a, b)`, `2 (a, b)`, `ANY 1 (a, "B")`. Unquoted names compare
/// case-insensitively, double-quoted ones exactly, as PostgreSQL does.
pub fn names_standby(setting: &str, app: &str) -> bool {
    let s = setting.trim();
    if s.is_empty() {
        return false;
    }
    let list = match (s.find('('), s.rfind(')')) {
        (Some(a), Some(b)) if b > a => &s[a + 1..b],
        _ => s,
    };
    list.split(',').map(str::trim).filter(|n| !n.is_empty()).any(|n| {
        if n == "*" {
            true
        } else if let Some(q) = n.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            q.replace("\"\"", "\"") == app
        } else {
            n.eq_ignore_ascii_case(app)
        }
    })
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The one query of a round: a single row, so one round trip. Among walsenders with pgark's
/// application_name (a base backup has one too) the streaming one is taken.
pub fn query(slot: &str, app: &str) -> String {
    format!(
        "SELECT pg_is_in_recovery(), \
         CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
         s.restart_lsn, s.active, s.wal_status, s.safe_wal_size, \
         r.sync_state, r.sync_priority, \
         extract(epoch FROM r.write_lag), extract(epoch FROM r.flush_lag), extract(epoch FROM r.replay_lag), \
         current_setting('synchronous_standby_names'), current_setting('max_slot_wal_keep_size'), r.pid \
         FROM (SELECT 1) one \
         LEFT JOIN pg_replication_slots s ON s.slot_name = {slot_lit} \
         LEFT JOIN LATERAL (SELECT * FROM pg_stat_replication WHERE application_name = {app_lit} \
           ORDER BY (state = 'streaming') DESC, sync_priority DESC LIMIT 1) r ON true",
        app_lit = quote_literal(app),
        slot_lit = quote_literal(slot)
    )
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitoring connection: {0}")]
    Client(#[from] crate::client::ClientError),
    #[error("monitoring query returned no row")]
    NoRow,
}

/// How long the server may take to answer one monitoring query, at most (connecting is bounded
/// by `connect_timeout`): twice `monitor_interval`, between 2 and 30 seconds.
pub fn query_timeout(interval: Duration) -> Duration {
    (interval * 2).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// One round: connect, ask, disconnect (a connection per round costs little at this interval and
/// never holds a backend slot idle). Every wait is bounded and ends on `cancel`.
pub async fn round(ci: &ConnInfo, slot: &str, query_timeout: Duration, cancel: &CancellationToken) -> Result<ServerFacts, MonitorError> {
    let mut conn = tokio::select! {
        _ = cancel.cancelled() => return Err(MonitorError::Client(crate::client::ClientError::Cancelled)),
        c = Connection::connect(ci, false) => c?,
    };
    conn.set_io_timeout(query_timeout);
    conn.set_cancel(cancel.clone());
    let results = conn.simple_query(&query(slot, &ci.application_name)).await;
    // pg_ls_waldir() needs pg_monitor: asked apart, so that without it the other facts still come.
    let waldir = match &results {
        Ok(_) => conn.simple_query("SELECT sum(size) FROM pg_ls_waldir()").await.ok(),
        Err(_) => None,
    };
    conn.terminate().await;
    let pg_wal_bytes = waldir
        .and_then(|r| r.first().and_then(|r| r.text(0, 0)))
        .and_then(|v| v.parse().ok());
    let r = results?.into_iter().next().ok_or(MonitorError::NoRow)?;
    if r.rows.is_empty() {
        return Err(MonitorError::NoRow);
    }
    let t = |c: usize| r.text(0, c);
    let lsn = |c: usize| t(c).and_then(|v| v.parse::<Lsn>().ok());
    let current = lsn(1);
    let restart = lsn(2);
    let ssn = t(11).unwrap_or_default();
    let has_walsender = t(6).is_some();
    let lag = |c: usize| match t(c).and_then(|v| v.parse::<f64>().ok()) {
        Some(v) => Some(v),
        None if has_walsender => Some(0.0),
        None => None,
    };
    Ok(ServerFacts {
        in_recovery: t(0).as_deref() == Some("t"),
        current_lsn: current,
        slot_exists: t(3).is_some(),
        slot_active: t(3).map(|v| v == "t"),
        slot_restart_lsn: restart,
        slot_retained_bytes: match (current, restart) {
            (Some(c), Some(r)) => Some(c.saturating_sub(r)),
            _ => None,
        },
        slot_wal_status: t(4),
        slot_safe_wal_size_bytes: t(5).and_then(|v| v.parse().ok()),
        sync_state: t(6),
        walsender_state_hidden: t(13).is_some() && !has_walsender,
        sync_priority: t(7).and_then(|v| v.parse().ok()),
        write_lag_seconds: lag(8),
        flush_lag_seconds: lag(9),
        replay_lag_seconds: lag(10),
        named_in_synchronous_standby_names: names_standby(&ssn, &ci.application_name),
        synchronous_standby_names: ssn,
        max_slot_wal_keep_size: t(12),
        pg_wal_bytes,
        at: crate::util::time::unix_now(),
    })
}

/// Settings for a server's monitoring connection: `monitor_conninfo` if set, else the replication
/// connection string (used without `replication`); to the `postgres` database unless it names one.
///
/// Derived from the replication connection, the password is looked up in `.pgpass` for the
/// monitoring database first (libpq's rule) and, when no line matches, taken from the line the
/// replication connection uses (database `replication`): the same role, so a `.pgpass` written
/// for streaming alone is enough.
pub fn monitoring_conninfo(replication: &ConnInfo, monitor: Option<&ConnInfo>) -> ConnInfo {
    let derived = monitor.is_none();
    let mut ci = monitor.unwrap_or(replication).clone();
    // pg_stat_replication is searched for the replication connection's name.
    ci.application_name = replication.application_name.clone();
    if ci.dbname.is_none() {
        ci.dbname = Some("postgres".into());
    }
    if derived && ci.password.is_none() {
        let db = ci.dbname.clone().unwrap_or_default();
        if ci.resolve_password(&db).is_none() {
            ci.password = replication.resolve_password("replication");
        }
    }
    ci
}

/// The warning to show while the slot holds back more WAL on the server than `limit`.
pub fn slot_limit_warning(facts: &ServerFacts, limit: Option<u64>) -> Option<String> {
    let (retained, limit) = (facts.slot_retained_bytes?, limit?);
    (retained > limit).then(|| {
        format!(
            "the slot holds {} of WAL on the server, over slot_retained_limit ({}): pgark is behind or was away; \
             check that it streams, and the server's pg_wal space",
            crate::util::units::human_bytes(retained),
            crate::util::units::human_bytes(limit)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_standby_names_forms() {
        assert!(names_standby("pgark", "pgark"));
        assert!(names_standby("PGARK", "pgark"));
        assert!(names_standby("FIRST 1 (s1, pgark)", "pgark"));
        assert!(names_standby("2 (s1, pgark)", "pgark"));
        assert!(names_standby("ANY 1 (s1, \"pgark\")", "pgark"));
        assert!(!names_standby("ANY 1 (s1, \"PGARK\")", "pgark"));
        assert!(names_standby("*", "pgark"));
        assert!(!names_standby("", "pgark"));
        assert!(!names_standby("s1, s2", "pgark"));
        assert!(!names_standby("FIRST 1 (pgark_other)", "pgark"));
    }

    #[test]
    fn derived_monitoring_connection_uses_the_replication_pgpass_line() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let pass = d.path().join("pgpass");
        let config = |pgpass: &str| {
            std::fs::write(&pass, pgpass).unwrap();
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
            let ci = ConnInfo::parse(&format!("host=db1 port=5432 user=pgark passfile={}", pass.display())).unwrap();
            monitoring_conninfo(&ci, None)
        };
        // Only the streaming line: the monitoring connection takes its password.
        let ci = config("db1:5432:replication:pgark:streaming-secret\n");
        assert_eq!(ci.password.as_deref(), Some("streaming-secret"));
        assert_eq!(ci.dbname.as_deref(), Some("postgres"));
        // A line for the monitoring database wins, as libpq would pick it.
        let ci = config("db1:5432:postgres:pgark:monitor-secret\ndb1:5432:replication:pgark:streaming-secret\n");
        assert_eq!(ci.resolve_password("postgres").as_deref(), Some("monitor-secret"));
        assert_eq!(ci.password, None, "looked up at connect time, not copied");
    }

    #[test]
    fn slot_limit() {
        let facts = ServerFacts {
            slot_retained_bytes: Some(2000),
            ..Default::default()
        };
        assert!(slot_limit_warning(&facts, None).is_none());
        assert!(slot_limit_warning(&facts, Some(5000)).is_none());
        assert!(slot_limit_warning(&facts, Some(1000)).unwrap().contains("slot_retained_limit"));
    }

    #[test]
    fn query_quotes_names() {
        let q = query("pg'ark", "a'b");
        assert!(q.contains("'pg''ark'") && q.contains("'a''b'"));
    }
}
