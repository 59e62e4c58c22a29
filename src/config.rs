//! The YAML configuration: parsed, validated, with defaults as named constants.
//!
//! Every error names the file, the key and what was expected, and maps to exit code 2.

use crate::backup::settings::{BackupSettings, DEFAULT_BACKUP_STREAM_TIMEOUT, DEFAULT_BACKUP_WAL_TIMEOUT};
use crate::catalog::space::{DiskThresholds, Threshold, DEFAULT_CHECK_INTERVAL, DEFAULT_USAGE_INTERVAL};
use crate::catalog::{Compression, DEFAULT_ZSTD_LEVEL};
use crate::client::conninfo::{ConnInfo, Host};
use crate::client::replication::validate_slot_name;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9187";
pub const DEFAULT_SLOT: &str = "pgark";
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_RECEIVER_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SYNCHRONOUS: bool = true;
pub const DEFAULT_HEALTHZ_STREAM_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    catalog: PathBuf,
    #[serde(default)]
    catalog_group: Option<String>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    disk_pressure: Option<RawDiskPressure>,
    #[serde(deserialize_with = "unique_servers")]
    servers: BTreeMap<String, RawServer>,
}

/// Deserializes the `servers` map, refusing a name given twice (YAML would keep the last one).
fn unique_servers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, RawServer>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, RawServer>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of server names to server settings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                if out.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!("servers.{name}: duplicate server name")));
                }
                let v: RawServer = map.next_value()?;
                out.insert(name, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    healthz_stream_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiskPressure {
    catalog_free_warning: Option<serde_yaml::Value>,
    catalog_free_critical: Option<serde_yaml::Value>,
    check_interval: Option<String>,
    usage_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    conninfo: String,
    slot: Option<String>,
    create_slot: Option<bool>,
    synchronous: Option<bool>,
    status_interval: Option<String>,
    receiver_timeout: Option<String>,
    compression: Option<serde_yaml::Value>,
    backup_schedule: Option<String>,
    backup_compression: Option<serde_yaml::Value>,
    backup_workers: Option<usize>,
    backup_checkpoint: Option<String>,
    backup_min_free: Option<serde_yaml::Value>,
    backup_wal_timeout: Option<String>,
    backup_stream_timeout: Option<String>,
    monitor_interval: Option<String>,
    monitor_conninfo: Option<String>,
    slot_retained_limit: Option<serde_yaml::Value>,
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
            .finish()
    }
}

impl PartialEq for ServerConfig {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.conninfo_text == o.conninfo_text
            && self.slot == o.slot
            && self.create_slot == o.create_slot
            && self.synchronous == o.synchronous
            && self.status_interval == o.status_interval
            && self.receiver_timeout == o.receiver_timeout
            && self.compression == o.compression
            && self.backup == o.backup
            && self.monitor_interval == o.monitor_interval
            && self.monitor_conninfo.as_ref().map(|m| &m.0) == o.monitor_conninfo.as_ref().map(|m| &m.0)
            && self.slot_retained_limit == o.slot_retained_limit
    }
}

impl ServerConfig {
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

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub catalog: PathBuf,
    /// The group that may read the catalog (`catalog_group`): catalog directories 2750 owned by
    /// it and files 0640; without it 0700 and 0600.
    pub catalog_group: Option<String>,
    pub metrics_listen: String,
    /// `/healthz` answers 503 when a server has not streamed for longer than this.
    pub healthz_stream_timeout: Duration,
    pub disk_pressure: DiskThresholds,
    pub servers: BTreeMap<String, ServerConfig>,
}

impl Config {
    /// Reads and validates a config file (without touching the catalog).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read the config file: {e}")))?;
        let config = Self::parse(&text, path)?;
        // Every command that loads a config may write to its catalog (or to a restored data
        // directory): files it creates are never readable by others (see catalog::perms).
        crate::catalog::perms::apply_umask(config.catalog_group.is_some());
        Ok(config)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| err(describe_yaml_error(&e)))?;
        if raw.catalog.as_os_str().is_empty() {
            return Err(err("catalog: expected a directory path, got an empty string".into()));
        }
        let catalog = if raw.catalog.is_relative() {
            path.parent().unwrap_or(Path::new(".")).join(&raw.catalog)
        } else {
            raw.catalog.clone()
        };
        let (listen, healthz) = raw.metrics.map(|m| (m.listen, m.healthz_stream_timeout)).unwrap_or_default();
        let metrics_listen = match listen {
            Some(l) => {
                l.parse::<std::net::SocketAddr>().map_err(|_| {
                    err(format!(
                        "metrics.listen: {l:?} is not an address: expected IP:PORT, like 127.0.0.1:9187"
                    ))
                })?;
                l
            }
            None => DEFAULT_METRICS_LISTEN.to_string(),
        };
        let healthz_stream_timeout = parse_duration(healthz.as_deref(), DEFAULT_HEALTHZ_STREAM_TIMEOUT)
            .map_err(|m| err(format!("metrics.healthz_stream_timeout: {m}")))?;
        if healthz_stream_timeout < Duration::from_secs(1) {
            return Err(err("metrics.healthz_stream_timeout: must be at least 1s".into()));
        }
        let mut disk_pressure = DiskThresholds::default();
        if let Some(d) = raw.disk_pressure {
            if let Some(v) = &d.catalog_free_warning {
                disk_pressure.catalog_free_warning = yaml_scalar(v)
                    .and_then(|t| Threshold::parse(&t))
                    .map_err(|m| err(format!("disk_pressure.catalog_free_warning: {m}")))?;
            }
            if let Some(v) = &d.catalog_free_critical {
                disk_pressure.catalog_free_critical = yaml_scalar(v)
                    .and_then(|t| Threshold::parse(&t))
                    .map_err(|m| err(format!("disk_pressure.catalog_free_critical: {m}")))?;
            }
            disk_pressure.check_interval = parse_duration(d.check_interval.as_deref(), DEFAULT_CHECK_INTERVAL)
                .map_err(|m| err(format!("disk_pressure.check_interval: {m}")))?;
            disk_pressure.usage_interval = parse_duration(d.usage_interval.as_deref(), DEFAULT_USAGE_INTERVAL)
                .map_err(|m| err(format!("disk_pressure.usage_interval: {m}")))?;
            for (key, v) in [
                ("check_interval", disk_pressure.check_interval),
                ("usage_interval", disk_pressure.usage_interval),
            ] {
                if v < Duration::from_millis(100) {
                    return Err(err(format!("disk_pressure.{key}: must be at least 100ms")));
                }
            }
            if let (Threshold::Percent(w), Threshold::Percent(c)) =
                (disk_pressure.catalog_free_warning, disk_pressure.catalog_free_critical)
            {
                if c > w {
                    return Err(err(format!(
                        "disk_pressure.catalog_free_critical: {c}% is above catalog_free_warning ({w}%); expected critical <= warning"
                    )));
                }
            }
            if let (Threshold::Bytes(w), Threshold::Bytes(c)) = (disk_pressure.catalog_free_warning, disk_pressure.catalog_free_critical) {
                if c > w {
                    return Err(err(format!(
                        "disk_pressure.catalog_free_critical: {c} bytes is above catalog_free_warning ({w} bytes); expected critical <= warning"
                    )));
                }
            }
        }
        if raw.servers.is_empty() {
            return Err(err("servers: expected at least one server".into()));
        }
        let mut servers = BTreeMap::new();
        for (name, s) in raw.servers {
            let key = |k: &str| format!("servers.{name}.{k}");
            validate_server_name(&name).map_err(|m| err(format!("servers.{name}: {m}")))?;
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
                backup.schedule =
                    Some(crate::backup::schedule::Schedule::parse(t).map_err(|m| err(format!("{}: {m}", key("backup_schedule"))))?);
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
            servers.insert(
                name.clone(),
                ServerConfig {
                    name: name.clone(),
                    conninfo_text: s.conninfo,
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
                },
            );
        }
        let mut seen: BTreeMap<(String, u16, String), String> = BTreeMap::new();
        for s in servers.values() {
            let host = match &s.conninfo.host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(d) => d.display().to_string(),
            };
            if let Some(other) = seen.insert((host.clone(), s.conninfo.port, s.slot.clone()), s.name.clone()) {
                return Err(err(format!(
                    "servers.{}: same server ({host}:{}) and slot {:?} as servers.{other}; two entries would fight over one slot",
                    s.name, s.conninfo.port, s.slot
                )));
            }
        }
        if let Some(g) = &raw.catalog_group {
            crate::catalog::perms::group_id(g).map_err(|m| err(format!("catalog_group: {m}")))?;
        }
        Ok(Config {
            path: path.to_path_buf(),
            catalog,
            catalog_group: raw.catalog_group.clone(),
            metrics_listen,
            healthz_stream_timeout,
            disk_pressure,
            servers,
        })
    }

    /// Checks that the catalog directory exists (creating it, owner-only or with
    /// `catalog_group`) and is writable, and sets the umask every catalog write relies on.
    pub fn check_catalog_writable(&self) -> Result<(), ConfigError> {
        let err = |m: String| ConfigError {
            file: self.path.display().to_string(),
            message: m,
        };
        crate::catalog::perms::prepare_root(&self.catalog, self.catalog_group.as_deref())
            .map_err(|e| err(format!("catalog: cannot create {}: {e}", self.catalog.display())))?;
        let probe = self.catalog.join(format!(".write-probe.{}.tmp", std::process::id()));
        std::fs::write(&probe, b"probe").map_err(|e| err(format!("catalog: {} is not writable: {e}", self.catalog.display())))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }
}

fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(l) if !msg.contains("line") => format!("{msg} (line {}, column {})", l.line(), l.column()),
        _ => msg,
    }
}

/// Server names become directory names and metric labels: keep them plain.
pub fn validate_server_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "server name {name:?}: expected 1 to 63 characters from A-Z, a-z, 0-9, _ and - (not starting with -)"
        ))
    }
}

fn parse_duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t.trim()).map_err(|_| format!("{t:?}: expected a duration such as 10s, 500ms or 1m")),
    }
}

/// A YAML number or string as text (sizes and thresholds may be written either way).
fn yaml_scalar(v: &serde_yaml::Value) -> Result<String, String> {
    match v {
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        serde_yaml::Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "{}: expected a size such as 256MiB, 1GiB, 500MB or a number of bytes",
            serde_yaml::to_string(other).unwrap_or_default().trim()
        )),
    }
}

/// `0`, `512MB`, `1GiB`, `256MiB`, or a plain number of bytes, written as a YAML number or string.
fn parse_size(v: &serde_yaml::Value) -> Result<u64, String> {
    yaml_scalar(v).and_then(|t| crate::util::units::parse_size(&t))
}

fn parse_compression(v: Option<&serde_yaml::Value>) -> Result<Compression, String> {
    use serde_yaml::Value;
    let expected = "expected none, zstd, or zstd:LEVEL with LEVEL from 1 to 19";
    match v {
        None => Ok(Compression::Zstd(DEFAULT_ZSTD_LEVEL)),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd(DEFAULT_ZSTD_LEVEL)),
            other => match other.strip_prefix("zstd:").and_then(|l| l.parse::<i32>().ok()) {
                Some(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(format!("{other:?}: {expected}")),
            },
        },
        Some(Value::Bool(false)) => Ok(Compression::None),
        Some(other) => Err(format!("{}: {expected}", serde_yaml::to_string(other).unwrap_or_default().trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pgark.yaml"))
    }

    const GOOD: &str = "catalog: /var/lib/pgark\nmetrics:\n  listen: 127.0.0.1:9999\nservers:\n  main:\n    conninfo: host=/tmp port=5432 user=rep\n    synchronous: true\n    compression: zstd:5\n    status_interval: 5s\n";

    #[test]
    fn good_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.metrics_listen, "127.0.0.1:9999");
        let m = &c.servers["main"];
        assert_eq!(m.slot, "pgark");
        assert_eq!(m.compression, Compression::Zstd(5));
        assert_eq!(m.status_interval, Duration::from_secs(5));
        assert!(m.create_slot && m.synchronous);
        assert_eq!(m.backup, BackupSettings::default());
        let b = parse("catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_schedule: 0 3 * * *\n    backup_min_free: 1GiB\n    backup_checkpoint: fast\n    backup_compression: none\n").unwrap();
        let b = &b.servers["main"].backup;
        assert_eq!((b.min_free, b.fast_checkpoint, b.compression), (1 << 30, true, Compression::None));
        assert!(b.schedule.is_some());
    }

    #[test]
    fn shipped_example_is_valid() {
        let c = Config::parse(include_str!("../config.example.yaml"), Path::new("config.example.yaml")).unwrap();
        let m = &c.servers["main"];
        assert_eq!(
            (m.synchronous, m.create_slot, m.compression),
            (true, true, Compression::Zstd(DEFAULT_ZSTD_LEVEL))
        );
        assert_eq!(m.status_interval, DEFAULT_STATUS_INTERVAL);
        assert_eq!(m.receiver_timeout, DEFAULT_RECEIVER_TIMEOUT);
        assert_eq!(c.disk_pressure, DiskThresholds::default());
        assert_eq!(c.healthz_stream_timeout, DEFAULT_HEALTHZ_STREAM_TIMEOUT);
    }

    #[test]
    fn monitoring_keys() {
        let c = parse("catalog: /x\nmetrics:\n  healthz_stream_timeout: 30s\ndisk_pressure:\n  catalog_free_warning: 20GiB\n  catalog_free_critical: 2%\nservers:\n  main:\n    conninfo: host=/tmp\n    slot_retained_limit: 10GiB\n    monitor_conninfo: host=/tmp user=mon\n").unwrap();
        assert_eq!(c.metrics_listen, DEFAULT_METRICS_LISTEN);
        assert_eq!(c.healthz_stream_timeout, Duration::from_secs(30));
        assert_eq!(c.disk_pressure.catalog_free_warning, Threshold::Bytes(20 << 30));
        assert_eq!(c.disk_pressure.catalog_free_critical, Threshold::Percent(2.0));
        let m = &c.servers["main"];
        assert_eq!(m.slot_retained_limit, Some(10 << 30));
        assert_eq!(m.monitor_conninfo.as_ref().map(|(_, ci)| ci.user.as_str()), Some("mon"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    slto: a\n", "slto"),
            ("catalog: /x\nservers:\n  main:\n    slot: a\n", "conninfo"),
            ("servers:\n  main:\n    conninfo: host=/tmp\n", "catalog"),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    slot: Bad-Slot\n",
                "servers.main.slot",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    synchronous: maybe\n",
                "synchronous",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp application_name=\n",
                "servers.main.conninfo",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    compression: lz4\n",
                "servers.main.compression",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    status_interval: soon\n",
                "servers.main.status_interval",
            ),
            (
                "catalog: /x\nmetrics:\n  listen: nowhere\nservers:\n  main:\n    conninfo: host=/tmp\n",
                "metrics.listen",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n  main:\n    conninfo: host=/tmp\n",
                "duplicate",
            ),
            (
                "catalog: /x\nservers:\n  a:\n    conninfo: host=/tmp\n  b:\n    conninfo: host=/tmp\n",
                "servers.b",
            ),
            ("catalog: /x\nservers:\n  'bad/name':\n    conninfo: host=/tmp\n", "bad/name"),
            ("catalog: /x\nservers: {}\n", "servers"),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_schedule: sometimes\n",
                "servers.main.backup_schedule",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_min_free: lots\n",
                "servers.main.backup_min_free",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_checkpoint: now\n",
                "servers.main.backup_checkpoint",
            ),
            (
                "catalog: /x\ndisk_pressure:\n  catalog_free_warning: 5%\n  catalog_free_critical: 10%\nservers:\n  main:\n    conninfo: host=/tmp\n",
                "disk_pressure.catalog_free_critical",
            ),
            (
                "catalog: /x\ndisk_pressure:\n  catalog_free_warning: plenty\nservers:\n  main:\n    conninfo: host=/tmp\n",
                "disk_pressure.catalog_free_warning",
            ),
            (
                "catalog: /x\nmetrics:\n  healthz_stream_timeout: never\nservers:\n  main:\n    conninfo: host=/tmp\n",
                "metrics.healthz_stream_timeout",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    slot_retained_limit: big\n",
                "servers.main.slot_retained_limit",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    monitor_conninfo: sslmode=sometimes\n",
                "servers.main.monitor_conninfo",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/pgark.yaml: "), "{e}");
            assert!(e.contains(needle), "error for {text:?} should mention {needle:?}: {e}");
        }
    }
}
