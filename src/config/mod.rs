//! The YAML configuration: parsed, validated, with defaults as named constants.
//!
//! Every error names the file, the key and what was expected, and maps to exit code 2.

pub mod drill;
pub mod hooks;
mod raw;
pub mod repositories;
mod retention;
mod server;
mod values;

use crate::catalog::space::{DiskThresholds, Threshold, DEFAULT_CHECK_INTERVAL, DEFAULT_USAGE_INTERVAL};
use crate::client::conninfo::Host;
use raw::{RawConfig, RawDiskPressure};
pub use server::{parse_backup_rate_arg, ServerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use values::validate_server_name;
use values::{describe_yaml_error, parse_duration, yaml_scalar};

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
    /// The `hooks` sections (top level and per server; see `config::hooks`).
    pub hooks: hooks::HooksConfig,
    /// Off-site repositories, in the order restores try them.
    pub repositories: Vec<repositories::RepositoryConfig>,
    /// Where the encryption keys come from; `None`: repositories hold plaintext.
    pub encryption: Option<repositories::EncryptionConfig>,
    /// How often the open segment is uploaded as a partial object.
    pub offsite_partial_interval: Duration,
    /// Whether backup chunks are stored in the local catalog too (`backups_local`, default
    /// true); false: only in the repositories, the local catalog keeps each backup's index.
    pub backups_local: bool,
    /// Whether asynchronous servers' WAL is paced while a synchronous server commits, to hold
    /// its acknowledgement latency (`catchup_pacing`, default true; see `receiver::pacing`).
    pub catchup_pacing: bool,
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
        config.register_local_encryption()?;
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
        let disk_pressure = parse_disk_pressure(raw.disk_pressure).map_err(err)?;
        if raw.servers.is_empty() {
            return Err(err("servers: expected at least one server".into()));
        }
        // The top-level verify settings are checked under their own key, then are every
        // server's default.
        if let Some(t) = &raw.verify_schedule {
            crate::backup::schedule::Schedule::parse(t).map_err(|m| err(format!("verify_schedule: {m}")))?;
        }
        if let Some(v) = &raw.verify_max_rate {
            server::parse_rate(v).map_err(|m| err(format!("verify_max_rate: {m}")))?;
        }
        let mut servers = BTreeMap::new();
        let mut hook_config = hooks::HooksConfig {
            global: hooks::parse("hooks", raw.hooks).map_err(err)?,
            servers: BTreeMap::new(),
        };
        let config_dir = path.parent().unwrap_or(Path::new("."));
        // The top-level section alone first, so that its errors name `drill.<key>`.
        let top_drill = drill::with_schedule_alias(raw.drill.clone(), raw.drill_schedule.clone(), "drill").map_err(err)?;
        drill::resolve(&catalog, config_dir, top_drill.as_ref(), None, "drill").map_err(err)?;
        for (name, mut s) in raw.servers {
            s.verify_schedule = s.verify_schedule.or_else(|| raw.verify_schedule.clone());
            s.verify_max_rate = s.verify_max_rate.or_else(|| raw.verify_max_rate.clone());
            let own = hooks::parse(&format!("servers.{name}.hooks"), s.hooks.take()).map_err(err)?;
            if own != hooks::HookCommands::default() {
                hook_config.servers.insert(name.clone(), own);
            }
            let own_drill =
                drill::with_schedule_alias(s.drill.take(), s.drill_schedule.take(), &format!("servers.{name}.drill")).map_err(err)?;
            let mut server = server::parse(&name, s, raw.retention.as_ref()).map_err(err)?;
            server.drill = drill::resolve(
                &catalog,
                config_dir,
                top_drill.as_ref(),
                own_drill.as_ref(),
                &format!("servers.{name}.drill"),
            )
            .map_err(err)?;
            servers.insert(name, server);
        }
        one_entry_per_slot(&servers).map_err(err)?;
        let repositories = repositories::parse_repositories(raw.repositories, config_dir).map_err(err)?;
        for s in servers.values_mut() {
            s.repositories = repositories.iter().map(|r| r.name.clone()).collect();
        }
        let encryption = repositories::parse_encryption(raw.encryption, config_dir).map_err(err)?;
        let offsite_partial_interval = repositories::parse_partial_interval(raw.offsite_partial_interval.as_deref()).map_err(err)?;
        if encryption.as_ref().is_some_and(|e| e.local) {
            if let Some((name, _)) = servers.iter().find(|(_, s)| s.compression == crate::catalog::Compression::None) {
                return Err(err(format!(
                    "servers.{name}.compression: none cannot be combined with encryption.local: true \
                     (uncompressed segments stay where the receiver wrote them, unsealed); use zstd"
                )));
            }
        }
        let backups_local = raw.backups_local.unwrap_or(true);
        if !backups_local && repositories.is_empty() {
            return Err(err(
                "backups_local: false keeps backup data only in the repositories, but no repository is configured".into(),
            ));
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
            hooks: hook_config,
            repositories,
            encryption,
            offsite_partial_interval,
            backups_local,
            catchup_pacing: raw.catchup_pacing.unwrap_or(true),
        })
    }

    /// With `encryption.local: true`, reads the keys now and registers them for the catalog, so
    /// that every `Catalog::open` of it in this process seals (`catalog::local_store_sealing`);
    /// without, registers plaintext (a reload may turn it off). A key that cannot be read is a
    /// config error: no command can use an encrypted catalog without it.
    pub fn register_local_encryption(&self) -> Result<(), ConfigError> {
        let ring = match self.encryption.as_ref().filter(|e| e.local) {
            Some(e) => Some(std::sync::Arc::new(e.keyring().map_err(|m| ConfigError {
                file: self.path.display().to_string(),
                message: format!("{m} (encryption.local: true needs the key to open the catalog)"),
            })?)),
            None => None,
        };
        let require = self.encryption.as_ref().is_some_and(|e| e.local_require);
        // `local` off with a key file: what was sealed while it was on still reads (an
        // encrypted `.partial` the receiver reopens, a segment waiting for the archiver). Not
        // with `key_command`, which would then run at every `wal-get` for nothing.
        let reader = match self.encryption.as_ref().filter(|e| !e.local && e.key_file.is_some()) {
            Some(e) => e
                .keyring()
                .map_err(
                    |m| tracing::debug!(error = %m, "the key file does not read here; sealed objects of the local catalog will not open"),
                )
                .ok(),
            None => None,
        };
        crate::catalog::local_store_sealing::register_key_source(
            &self.catalog,
            self.encryption
                .as_ref()
                .is_some_and(|e| e.key_file.is_some() || e.key_command.is_some()),
        );
        match (ring, reader) {
            (None, Some(r)) => crate::catalog::local_store_sealing::register_reader(&self.catalog, std::sync::Arc::new(r)),
            (ring, _) => crate::catalog::local_store_sealing::register(&self.catalog, ring, require),
        }
        Ok(())
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

/// The `disk_pressure` section.
fn parse_disk_pressure(raw: Option<RawDiskPressure>) -> Result<DiskThresholds, String> {
    let err = |m: String| m;
    let mut disk_pressure = DiskThresholds::default();
    if let Some(d) = raw {
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
        if let (Threshold::Percent(w), Threshold::Percent(c)) = (disk_pressure.catalog_free_warning, disk_pressure.catalog_free_critical) {
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
    Ok(disk_pressure)
}

/// Two entries for one server and slot would fight over it.
fn one_entry_per_slot(servers: &BTreeMap<String, ServerConfig>) -> Result<(), String> {
    let err = |m: String| m;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::settings::BackupSettings;
    use crate::catalog::{Compression, DEFAULT_ZSTD_LEVEL};

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
        let c = Config::parse(include_str!("../../config.example.yaml"), Path::new("config.example.yaml")).unwrap();
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
    fn backup_max_rate_in_postgres_units_and_bounds() {
        let c = parse(
            "catalog: /x\nservers:\n  a:\n    conninfo: host=/tmp\n    backup_max_rate: 100MB\n  b:\n    conninfo: host=/tmp port=5433\n",
        )
        .unwrap();
        assert_eq!(c.servers["a"].backup.max_rate_kb, Some(97_657));
        assert_eq!(c.servers["b"].backup.max_rate_kb, None);
        for rate in ["1kB", "2GiB", "0", "fast"] {
            let text = format!("catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_max_rate: {rate}\n");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("servers.main.backup_max_rate"), "{rate}: {e}");
        }
    }

    #[test]
    fn backup_max_rate_on_the_command_line_plain_kb_or_with_a_unit() {
        assert_eq!(parse_backup_rate_arg("50000"), Ok(50_000));
        assert_eq!(parse_backup_rate_arg("32"), Ok(32));
        assert_eq!(parse_backup_rate_arg("100MB"), Ok(97_657));
        assert_eq!(parse_backup_rate_arg("50000/s"), Ok(50_000), "a plain number is kB/s, with /s too");
        assert_eq!(parse_backup_rate_arg("32kB"), Ok(32), "the documented lower bound");
        assert_eq!(parse_backup_rate_arg("1GiB/s"), Ok(1_048_576));
        for bad in ["5", "1048577", "2GiB", "fast", "", "-3"] {
            let e = parse_backup_rate_arg(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn verify_keys_with_a_top_level_default() {
        let c = parse("catalog: /x\nverify_schedule: 1d\nverify_max_rate: 50MB\nservers:\n  a:\n    conninfo: host=/tmp\n  b:\n    conninfo: host=/tmp port=5433\n    verify_schedule: 0 4 * * *\n    verify_max_rate: 1GiB\n").unwrap();
        let (a, b) = (&c.servers["a"], &c.servers["b"]);
        assert_eq!(
            a.verify_schedule,
            Some(crate::backup::schedule::Schedule::Every(Duration::from_secs(86400)))
        );
        assert_eq!(a.verify_max_rate, 50_000_000);
        assert!(matches!(b.verify_schedule, Some(crate::backup::schedule::Schedule::Cron { .. })));
        assert_eq!(b.verify_max_rate, 1 << 30);
        let d = parse(GOOD).unwrap();
        assert_eq!(d.servers["main"].verify_schedule, None);
        assert_eq!(d.servers["main"].verify_max_rate, crate::verify::DEFAULT_MAX_RATE);
        for (text, needle) in [
            (
                "catalog: /x\nverify_schedule: often\nservers:\n  main:\n    conninfo: host=/tmp\n",
                "/etc/pgark.yaml: verify_schedule",
            ),
            (
                "catalog: /x\nverify_max_rate: fast\nservers:\n  main:\n    conninfo: host=/tmp\n",
                "/etc/pgark.yaml: verify_max_rate",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    verify_schedule: 5s\n",
                "servers.main.verify_schedule",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    verify_max_rate: 0\n",
                "servers.main.verify_max_rate",
            ),
            (
                "catalog: /x\nencryption:\n  key_file: /k\n  local: true\nservers:\n  main:\n    conninfo: host=/tmp\n    compression: none\n",
                "servers.main.compression: none cannot be combined with encryption.local",
            ),
            (
                "catalog: /x\nencryption:\n  key_file: /k\n  local: always\nservers:\n  main:\n    conninfo: host=/tmp\n",
                "encryption.local: expected true, false or require, got always",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn encryption_local_reads_the_key_at_load_and_seals_the_catalog() {
        let d = tempfile::tempdir().unwrap();
        let (catalog, key, file) = (d.path().join("catalog"), d.path().join("k"), d.path().join("pgark.yaml"));
        let text = format!(
            "catalog: {}\nencryption:\n  key_file: {}\n  local: true\nservers:\n  main:\n    conninfo: host=/tmp\n",
            catalog.display(),
            key.display()
        );
        std::fs::write(&file, &text).unwrap();
        let e = Config::load(&file).unwrap_err().to_string();
        assert!(e.contains("encryption.key_file") && e.contains("encryption.local"), "{e}");
        std::fs::write(&key, format!("{}\n", crate::catalog::encryption::Key::generate().to_hex())).unwrap();
        Config::load(&file).unwrap();
        crate::catalog::Catalog::open(&catalog)
            .store()
            .put("main/server.state", b"x")
            .unwrap();
        assert!(crate::catalog::encryption::is_sealed(
            &std::fs::read(catalog.join("main/server.state")).unwrap()
        ));
        // Off again (a reload) with the key file kept: new objects are plaintext, sealed ones
        // still read.
        std::fs::write(&file, text.replace("  local: true\n", "")).unwrap();
        Config::load(&file).unwrap();
        let store = crate::catalog::Catalog::open(&catalog).store();
        store.put("main/other", b"y").unwrap();
        assert_eq!(std::fs::read(catalog.join("main/other")).unwrap(), b"y");
        assert_eq!(store.get("main/server.state").unwrap().unwrap(), b"x");
        // Without any key: sealed ones are refused by name.
        let no_key = format!("catalog: {}\nservers:\n  main:\n    conninfo: host=/tmp\n", catalog.display());
        std::fs::write(&file, no_key).unwrap();
        Config::load(&file).unwrap();
        assert!(store.get("main/server.state").unwrap_err().to_string().contains("encryption.local"));
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
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_full_every: 7d\n",
                "servers.main.backup_full_every",
            ),
            (
                "catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_schedule: 1d\n    backup_full_every: 10m\n",
                "servers.main.backup_full_every",
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
