//! One `servers.<name>` entry validated into a `ServerConfig`, and the settings each component
//! takes from it.

use super::raw::RawServer;
use super::values::{parse_compression, parse_duration, parse_size, validate_server_name};
use super::{DEFAULT_RECEIVER_TIMEOUT, DEFAULT_SLOT, DEFAULT_STATUS_INTERVAL, DEFAULT_SYNCHRONOUS};
use crate::backup::settings::{BackupSettings, DEFAULT_BACKUP_STREAM_TIMEOUT, DEFAULT_BACKUP_WAL_TIMEOUT};
use crate::catalog::Compression;
use crate::client::conninfo::ConnInfo;
use crate::client::replication::validate_slot_name;
use std::time::Duration;

/// Validates `servers.<name>`; the error names the key.
pub fn parse(name: &str, s: RawServer, top_retention: Option<&super::retention::RawRetention>) -> Result<ServerConfig, String> {
    let err = |m: String| m;
    let key = |k: &str| format!("servers.{name}.{k}");
    validate_server_name(name).map_err(|m| err(format!("servers.{name}: {m}")))?;
    let conninfo = ConnInfo::parse(&s.conninfo).map_err(|m| err(format!("{}: {m}", key("conninfo"))))?;
    let slot = s.slot.unwrap_or_else(|| DEFAULT_SLOT.to_string());
    validate_slot_name(&slot).map_err(|m| err(format!("{}: {m}", key("slot"))))?;
    let status_interval = parse_duration(s.status_interval.as_deref(), DEFAULT_STATUS_INTERVAL)
        .map_err(|m| err(format!("{}: {m}", key("status_interval"))))?;
    let receiver_timeout = parse_duration(s.receiver_timeout.as_deref(), DEFAULT_RECEIVER_TIMEOUT)
        .map_err(|m| err(format!("{}: {m}", key("receiver_timeout"))))?;
    if status_interval.is_zero() || receiver_timeout <= status_interval {
        return Err(err(format!(
            "{}: must be above zero and below receiver_timeout ({}s)",
            key("status_interval"),
            receiver_timeout.as_secs_f64()
        )));
    }
    let compression = parse_compression(s.compression.as_ref()).map_err(|m| err(format!("{}: {m}", key("compression"))))?;
    let mut backup = BackupSettings::default();
    if let Some(t) = &s.backup_schedule {
        backup.schedule = Some(crate::backup::schedule::Schedule::parse(t).map_err(|m| err(format!("{}: {m}", key("backup_schedule"))))?);
    }
    if let Some(t) = &s.backup_full_every {
        let every = humantime::parse_duration(t.trim())
            .map_err(|_| err(format!("{}: {t:?}: expected a duration such as 7d", key("backup_full_every"))))?;
        if every < Duration::from_secs(3600) {
            return Err(err(format!("{}: {t:?}: must be at least 1h", key("backup_full_every"))));
        }
        if s.backup_schedule.is_none() {
            return Err(err(format!(
                "{}: applies to scheduled backups, but backup_schedule is not set",
                key("backup_full_every")
            )));
        }
        backup.full_every = Some(every);
    }
    if s.backup_compression.is_some() {
        backup.compression =
            parse_compression(s.backup_compression.as_ref()).map_err(|m| err(format!("{}: {m}", key("backup_compression"))))?;
    }
    if let Some(w) = s.backup_workers {
        if !(1..=64).contains(&w) {
            return Err(err(format!("{}: {w}: expected 1 to 64", key("backup_workers"))));
        }
        backup.workers = w;
    }
    match s.backup_checkpoint.as_deref() {
        None | Some("spread") => {}
        Some("fast") => backup.fast_checkpoint = true,
        Some(other) => return Err(err(format!("{}: {other:?}: expected fast or spread", key("backup_checkpoint")))),
    }
    if let Some(v) = &s.backup_min_free {
        backup.min_free = parse_size(v).map_err(|m| err(format!("{}: {m}", key("backup_min_free"))))?;
    }
    let monitor_interval = parse_duration(s.monitor_interval.as_deref(), crate::monitor::DEFAULT_MONITOR_INTERVAL)
        .map_err(|m| err(format!("{}: {m}", key("monitor_interval"))))?;
    if monitor_interval < Duration::from_secs(1) {
        return Err(err(format!("{}: must be at least 1s", key("monitor_interval"))));
    }
    let monitor_conninfo = match s.monitor_conninfo {
        Some(t) => {
            let ci = ConnInfo::parse(&t).map_err(|m| err(format!("{}: {m}", key("monitor_conninfo"))))?;
            Some((t, ci))
        }
        None => None,
    };
    let slot_retained_limit = match &s.slot_retained_limit {
        Some(v) => Some(parse_size(v).map_err(|m| err(format!("{}: {m}", key("slot_retained_limit"))))?),
        None => None,
    };
    backup.wal_timeout = parse_duration(s.backup_wal_timeout.as_deref(), DEFAULT_BACKUP_WAL_TIMEOUT)
        .map_err(|m| err(format!("{}: {m}", key("backup_wal_timeout"))))?;
    backup.stream_timeout = parse_duration(s.backup_stream_timeout.as_deref(), DEFAULT_BACKUP_STREAM_TIMEOUT)
        .map_err(|m| err(format!("{}: {m}", key("backup_stream_timeout"))))?;
    if backup.stream_timeout < Duration::from_secs(1) {
        return Err(err(format!("{}: must be at least 1s", key("backup_stream_timeout"))));
    }
    if let Some(v) = &s.backup_max_rate {
        backup.max_rate_kb = Some(parse_backup_rate(v).map_err(|m| err(format!("{}: {m}", key("backup_max_rate"))))?);
    }
    let retention = super::retention::parse(s.retention.as_ref(), top_retention, &key("retention"))?;
    let verify_schedule = match &s.verify_schedule {
        Some(t) => Some(crate::backup::schedule::Schedule::parse(t).map_err(|m| err(format!("{}: {m}", key("verify_schedule"))))?),
        None => None,
    };
    let verify_max_rate = match &s.verify_max_rate {
        Some(v) => parse_rate(v).map_err(|m| err(format!("{}: {m}", key("verify_max_rate"))))?,
        None => crate::verify::DEFAULT_MAX_RATE,
    };
    Ok(ServerConfig {
        name: name.to_string(),
        conninfo_text: s.conninfo.clone(),
        conninfo,
        slot,
        create_slot: s.create_slot.unwrap_or(true),
        synchronous: s.synchronous.unwrap_or(DEFAULT_SYNCHRONOUS),
        status_interval,
        receiver_timeout,
        compression,
        backup,
        monitor_interval,
        monitor_conninfo,
        slot_retained_limit,
        retention,
        repositories: Vec::new(),
        // Resolved with the top-level `drill` section by `Config::parse`.
        drill: super::drill::DrillSettings::defaults(std::path::Path::new("/")),
        verify_schedule,
        verify_max_rate,
    })
}

/// `backup_max_rate`: bytes per second as `parse_rate` reads them, in the kB/s (1024 bytes) of
/// PostgreSQL's `MAX_RATE`, which accepts 32 to 1048576.
pub fn parse_backup_rate(v: &serde_yaml::Value) -> Result<u32, String> {
    // Rounded up: `32kB` (32000 bytes) is the documented lower bound, 31.25 KiB.
    max_rate_kb(parse_rate(v)?.div_ceil(1024))
}

/// `pgark backup --max-rate`: a plain number is kB/s, as pg_basebackup's `--max-rate` and
/// MAX_RATE itself take; with a unit it is bytes per second, as in the config (`50MB`).
pub fn parse_backup_rate_arg(text: &str) -> Result<u32, String> {
    let text = text.trim().trim_end_matches("/s");
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let kb = text.parse::<u64>().map_err(|e| format!("{text:?}: {e}"))?;
        return max_rate_kb(kb);
    }
    let rate = crate::util::units::parse_size(text)?;
    max_rate_kb(rate.div_ceil(1024))
}

fn max_rate_kb(kb: u64) -> Result<u32, String> {
    if !(32..=1_048_576).contains(&kb) {
        return Err(format!(
            "{kb} kB/s is outside what PostgreSQL's MAX_RATE accepts (32kB/s to 1GiB/s; such as 50MB)"
        ));
    }
    Ok(kb as u32)
}

/// `verify_max_rate`: bytes per second, such as `50MB` (a trailing `/s` is allowed); above zero.
pub fn parse_rate(v: &serde_yaml::Value) -> Result<u64, String> {
    let text = super::values::yaml_scalar(v)?;
    let rate = crate::util::units::parse_size(text.trim().trim_end_matches("/s"))?;
    if rate == 0 {
        return Err("must be above zero (bytes per second, such as 100MB)".into());
    }
    Ok(rate)
}

/// One protected server. `Debug` leaves out the connection strings as written (they may hold a
/// password; the parsed `ConnInfo`s redact theirs).
#[derive(Clone)]
pub struct ServerConfig {
    pub name: String,
    /// The connection string as written (compared on reload).
    pub conninfo_text: String,
    pub conninfo: ConnInfo,
    pub slot: String,
    pub create_slot: bool,
    pub synchronous: bool,
    pub status_interval: Duration,
    pub receiver_timeout: Duration,
    pub compression: Compression,
    pub backup: BackupSettings,
    /// How often server-side facts are read over an ordinary connection.
    pub monitor_interval: Duration,
    /// The monitoring connection, when it differs from `conninfo` (as written, and parsed).
    pub monitor_conninfo: Option<(String, ConnInfo)>,
    /// WAL the slot may hold back on the server before pgark warns.
    pub slot_retained_limit: Option<u64>,
    /// What the catalog keeps of this server (its own keys over the top-level `retention`).
    pub retention: crate::retention::Policy,
    /// The off-site repositories that copy this server (every configured one): the local
    /// prune keeps what they still lack.
    pub repositories: Vec<String>,
    /// Restore drills of this server (`drill`, overridden by `servers.<name>.drill`).
    pub drill: super::drill::DrillSettings,
    /// When the daemon verifies this server's backups and WAL (`verify_schedule`; none: never).
    pub verify_schedule: Option<crate::backup::schedule::Schedule>,
    /// Bytes per second the scheduled verify may read from the catalog.
    pub verify_max_rate: u64,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", &self.name)
            .field("conninfo", &self.conninfo)
            .field("slot", &self.slot)
            .field("create_slot", &self.create_slot)
            .field("synchronous", &self.synchronous)
            .field("status_interval", &self.status_interval)
            .field("receiver_timeout", &self.receiver_timeout)
            .field("compression", &self.compression)
            .field("backup", &self.backup)
            .field("monitor_interval", &self.monitor_interval)
            .field("monitor_conninfo", &self.monitor_conninfo.as_ref().map(|m| &m.1))
            .field("slot_retained_limit", &self.slot_retained_limit)
            .field("retention", &self.retention)
            .field("drill", &self.drill)
            .field("verify_schedule", &self.verify_schedule)
            .field("verify_max_rate", &self.verify_max_rate)
            .finish()
    }
}

/// What a reload compares: a server whose settings changed is restarted. The pattern names every
/// field (no `..`), so a new field cannot be forgotten here. The connection strings compare as
/// written (the parsed forms hold looked-up passwords).
impl PartialEq for ServerConfig {
    fn eq(&self, o: &Self) -> bool {
        let ServerConfig {
            name,
            conninfo_text,
            conninfo: _,
            slot,
            create_slot,
            synchronous,
            status_interval,
            receiver_timeout,
            compression,
            backup,
            monitor_interval,
            monitor_conninfo,
            slot_retained_limit,
            retention,
            repositories,
            drill,
            verify_schedule,
            verify_max_rate,
        } = self;
        *name == o.name
            && *conninfo_text == o.conninfo_text
            && *slot == o.slot
            && *create_slot == o.create_slot
            && *synchronous == o.synchronous
            && *status_interval == o.status_interval
            && *receiver_timeout == o.receiver_timeout
            && *compression == o.compression
            && *backup == o.backup
            && *monitor_interval == o.monitor_interval
            && monitor_conninfo.as_ref().map(|m| &m.0) == o.monitor_conninfo.as_ref().map(|m| &m.0)
            && *slot_retained_limit == o.slot_retained_limit
            && *retention == o.retention
            && *repositories == o.repositories
            && *drill == o.drill
            && *verify_schedule == o.verify_schedule
            && *verify_max_rate == o.verify_max_rate
    }
}

impl ServerConfig {
    /// Whether `other` streams and monitors exactly as this one does: only the periodic tasks'
    /// settings (backups, retention, verify, drills) differ, if anything. A field added later
    /// counts as a streaming setting (restarting the receiver is the safe default).
    pub fn same_streaming(&self, other: &ServerConfig) -> bool {
        let mut a = self.clone();
        a.backup = other.backup.clone();
        a.retention = other.retention.clone();
        a.repositories = other.repositories.clone();
        a.verify_schedule = other.verify_schedule.clone();
        a.verify_max_rate = other.verify_max_rate;
        a.drill = other.drill.clone();
        a == *other
    }

    /// What the monitoring task needs of this server.
    pub fn monitor_settings(&self) -> crate::monitor::Settings {
        crate::monitor::Settings {
            name: self.name.clone(),
            conninfo: crate::monitor::monitoring_conninfo(&self.conninfo, self.monitor_conninfo.as_ref().map(|m| &m.1)),
            slot: self.slot.clone(),
            interval: self.monitor_interval,
            slot_retained_limit: self.slot_retained_limit,
        }
    }

    /// What the receiver needs of this server.
    pub fn receiver_settings(&self) -> crate::receiver::Settings {
        crate::receiver::Settings {
            name: self.name.clone(),
            conninfo: self.conninfo.clone(),
            slot: self.slot.clone(),
            create_slot: self.create_slot,
            synchronous: self.synchronous,
            status_interval: self.status_interval,
            receiver_timeout: self.receiver_timeout,
            compression: self.compression,
        }
    }
}
