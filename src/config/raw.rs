//! The YAML as written, before validation (unknown keys refused).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub catalog: PathBuf,
    #[serde(default)]
    pub catalog_group: Option<String>,
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub disk_pressure: Option<RawDiskPressure>,
    /// The default retention of every server (see `config::retention`).
    #[serde(default)]
    pub retention: Option<super::retention::RawRetention>,
    #[serde(default)]
    pub hooks: Option<RawHooks>,
    #[serde(default)]
    pub drill: Option<super::drill::RawDrill>,
    /// The same as `drill.schedule` (named like `backup_schedule` and `verify_schedule`).
    #[serde(default)]
    pub drill_schedule: Option<String>,
    /// Default of every server's `verify_schedule`.
    #[serde(default)]
    pub verify_schedule: Option<String>,
    /// Default of every server's `verify_max_rate`.
    #[serde(default)]
    pub verify_max_rate: Option<serde_yaml::Value>,
    /// Off-site repositories, in the order restores try them (see `config::repositories`).
    #[serde(default)]
    pub repositories: Option<serde_yaml::Mapping>,
    #[serde(default)]
    pub encryption: Option<super::repositories::RawEncryption>,
    #[serde(default)]
    pub offsite_partial_interval: Option<String>,
    /// `false`: backup chunks go to the repositories only (see `config::repositories`).
    #[serde(default)]
    pub backups_local: Option<bool>,
    /// `false`: asynchronous servers' WAL is never paced for the synchronous ones.
    #[serde(default)]
    pub catchup_pacing: Option<bool>,
    #[serde(deserialize_with = "unique_servers")]
    pub servers: BTreeMap<String, RawServer>,
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
pub struct RawMetrics {
    pub listen: Option<String>,
    pub healthz_stream_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiskPressure {
    pub catalog_free_warning: Option<serde_yaml::Value>,
    pub catalog_free_critical: Option<serde_yaml::Value>,
    pub check_interval: Option<String>,
    pub usage_interval: Option<String>,
}

/// One server as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub conninfo: String,
    pub slot: Option<String>,
    pub create_slot: Option<bool>,
    pub synchronous: Option<bool>,
    pub status_interval: Option<String>,
    pub receiver_timeout: Option<String>,
    pub compression: Option<serde_yaml::Value>,
    pub backup_schedule: Option<String>,
    pub backup_full_every: Option<String>,
    pub backup_compression: Option<serde_yaml::Value>,
    pub backup_workers: Option<usize>,
    pub backup_checkpoint: Option<String>,
    pub backup_min_free: Option<serde_yaml::Value>,
    pub backup_wal_timeout: Option<String>,
    pub backup_stream_timeout: Option<String>,
    pub backup_max_rate: Option<serde_yaml::Value>,
    pub monitor_interval: Option<String>,
    pub monitor_conninfo: Option<String>,
    pub slot_retained_limit: Option<serde_yaml::Value>,
    pub verify_schedule: Option<String>,
    pub verify_max_rate: Option<serde_yaml::Value>,
    pub retention: Option<super::retention::RawRetention>,
    /// Taken out before the server is parsed (see `config::hooks`).
    #[serde(default)]
    pub hooks: Option<RawHooks>,
    #[serde(default)]
    pub drill: Option<super::drill::RawDrill>,
    /// The same as `drill.schedule` (named like `backup_schedule` and `verify_schedule`).
    #[serde(default)]
    pub drill_schedule: Option<String>,
}

/// A `hooks` section as written (top level or per server).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub pre_backup: Option<String>,
    pub post_backup: Option<String>,
    pub post_drill: Option<String>,
    pub on_verify_failure: Option<String>,
    pub timeout: Option<String>,
}
