//! The `drill` section: where and how restore drills run (`pgark drill`, `drill.schedule` in
//! `pgark serve`). Written at the top level, and per server as `servers.<name>.drill`, whose keys
//! replace the top level's one by one.

use crate::backup::schedule::Schedule;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a drill waits for the restored cluster to end recovery.
pub const DEFAULT_DRILL_TIMEOUT: Duration = Duration::from_secs(3600);
/// The OS user PostgreSQL runs as in a drill started by root (PostgreSQL refuses root).
pub const DEFAULT_DRILL_OS_USER: &str = "postgres";
/// The directory for drills, beside the catalog, when `drill.path` is not set.
pub const DEFAULT_DRILL_DIR_NAME: &str = "pgark-drills";

/// The section as written (every key optional, so a server's entry can override a few).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub path: Option<PathBuf>,
    pub pg_bindir: Option<PathBuf>,
    pub os_user: Option<String>,
    pub sql: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub schedule: Option<String>,
}

/// One server's drill settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillSettings {
    /// Scratch directories are made under it (`<path>/<server>-<time>-<pid>/`).
    pub path: PathBuf,
    /// PostgreSQL's binaries; `None`: found on the machine for the backup's major.
    pub pg_bindir: Option<PathBuf>,
    /// The OS user PostgreSQL runs as when pgark runs as root.
    pub os_user: String,
    /// Queries that must succeed and return a first row whose first column is true (or, for
    /// other types, not null).
    pub sql: Vec<String>,
    /// Longest wait for the end of recovery.
    pub timeout: Duration,
    /// When `pgark serve` runs a drill (none: never).
    pub schedule: Option<Schedule>,
}

impl DrillSettings {
    /// The defaults for a catalog at `catalog`.
    pub fn defaults(catalog: &Path) -> DrillSettings {
        DrillSettings {
            path: default_path(catalog),
            pg_bindir: None,
            os_user: DEFAULT_DRILL_OS_USER.to_string(),
            sql: Vec::new(),
            timeout: DEFAULT_DRILL_TIMEOUT,
            schedule: None,
        }
    }
}

/// `<parent of the catalog>/pgark-drills`: the same volume as the catalog usually (room for a full
/// restore), never inside the catalog (its usage scans and permissions stay its own), and not
/// the system temp dir (often a small tmpfs). The system temp dir only for a catalog at `/`.
pub fn default_path(catalog: &Path) -> PathBuf {
    match catalog.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(DEFAULT_DRILL_DIR_NAME),
        _ => std::env::temp_dir().join(DEFAULT_DRILL_DIR_NAME),
    }
}

/// `section` with `drill_schedule` (the same key under the name of its siblings
/// `backup_schedule` and `verify_schedule`) folded in as its `schedule`; both set is an error.
pub fn with_schedule_alias(section: Option<RawDrill>, alias: Option<String>, key: &str) -> Result<Option<RawDrill>, String> {
    let Some(t) = alias else { return Ok(section) };
    let mut d = section.unwrap_or_default();
    if d.schedule.is_some() {
        return Err(format!("{key}_schedule and {key}.schedule are both set: keep one"));
    }
    d.schedule = Some(t);
    Ok(Some(d))
}

/// `top` (the `drill` section) overridden key by key by `own` (`servers.<name>.drill`); `key`
/// prefixes errors (`drill` or `servers.<name>.drill`). Relative paths are taken from the config
/// file's directory.
pub fn resolve(
    catalog: &Path,
    config_dir: &Path,
    top: Option<&RawDrill>,
    own: Option<&RawDrill>,
    key: &str,
) -> Result<DrillSettings, String> {
    let mut s = DrillSettings::defaults(catalog);
    let abs = |p: &PathBuf| if p.is_relative() { config_dir.join(p) } else { p.clone() };
    for raw in [top, own].into_iter().flatten() {
        if let Some(p) = &raw.path {
            if p.as_os_str().is_empty() {
                return Err(format!("{key}.path: expected a directory path, got an empty string"));
            }
            s.path = abs(p);
        }
        if let Some(p) = &raw.pg_bindir {
            s.pg_bindir = Some(abs(p));
        }
        if let Some(u) = &raw.os_user {
            if u.trim().is_empty() {
                return Err(format!("{key}.os_user: expected a user name, got an empty string"));
            }
            s.os_user = u.trim().to_string();
        }
        if let Some(q) = &raw.sql {
            if let Some(i) = q.iter().position(|q| q.trim().is_empty()) {
                return Err(format!("{key}.sql[{i}]: expected a query, got an empty string"));
            }
            s.sql = q.clone();
        }
        if raw.timeout.is_some() {
            s.timeout =
                super::values::parse_duration(raw.timeout.as_deref(), DEFAULT_DRILL_TIMEOUT).map_err(|m| format!("{key}.timeout: {m}"))?;
            if s.timeout < Duration::from_secs(1) {
                return Err(format!("{key}.timeout: must be at least 1s"));
            }
        }
        if let Some(t) = &raw.schedule {
            s.schedule = Some(Schedule::parse(t).map_err(|m| format!("{key}.schedule: {m}"))?);
        }
    }
    if s.path.starts_with(catalog) {
        return Err(format!(
            "{key}.path: {} is inside the catalog ({}); put drills elsewhere (a restore there would be counted, walked and permission-checked as catalog data)",
            s.path.display(),
            catalog.display()
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_override_the_top_level_one_by_one() {
        let top = RawDrill {
            os_user: Some("pg".into()),
            timeout: Some("10m".into()),
            sql: Some(vec!["SELECT true".into()]),
            ..Default::default()
        };
        let own = RawDrill {
            timeout: Some("30s".into()),
            path: Some("drills".into()),
            schedule: Some("0 4 * * 0".into()),
            ..Default::default()
        };
        let s = resolve(
            Path::new("/var/lib/pgark"),
            Path::new("/etc"),
            Some(&top),
            Some(&own),
            "servers.main.drill",
        )
        .unwrap();
        assert_eq!(s.os_user, "pg");
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.path, PathBuf::from("/etc/drills"));
        assert_eq!(s.sql, vec!["SELECT true".to_string()]);
        assert!(s.schedule.is_some());
        let d = resolve(Path::new("/var/lib/pgark"), Path::new("/etc"), None, None, "drill").unwrap();
        assert_eq!(d.path, PathBuf::from("/var/lib/pgark-drills"));
        assert_eq!((d.timeout, d.os_user.as_str()), (DEFAULT_DRILL_TIMEOUT, "postgres"));
        for (raw, needle) in [
            (
                RawDrill {
                    timeout: Some("soon".into()),
                    ..Default::default()
                },
                "drill.timeout",
            ),
            (
                RawDrill {
                    schedule: Some("often".into()),
                    ..Default::default()
                },
                "drill.schedule",
            ),
            (
                RawDrill {
                    sql: Some(vec![" ".into()]),
                    ..Default::default()
                },
                "drill.sql[0]",
            ),
            (
                RawDrill {
                    os_user: Some("".into()),
                    ..Default::default()
                },
                "drill.os_user",
            ),
        ] {
            let e = resolve(Path::new("/c"), Path::new("/etc"), Some(&raw), None, "drill").unwrap_err();
            assert!(e.starts_with(needle), "{e}");
        }
    }

    #[test]
    fn parsed_from_yaml_with_errors_naming_the_key() {
        let parse = |t: &str| crate::config::Config::parse(t, Path::new("/etc/pgark.yaml"));
        let c = parse("catalog: /var/lib/pgark\ndrill:\n  timeout: 10m\n  sql: [\"SELECT true\"]\nservers:\n  main:\n    conninfo: host=/tmp\n    drill: {schedule: 7d}\n  other:\n    conninfo: host=/tmp\n    slot: other\n").unwrap();
        let (m, o) = (&c.servers["main"].drill, &c.servers["other"].drill);
        assert_eq!((m.timeout, o.timeout), (Duration::from_secs(600), Duration::from_secs(600)));
        assert!(m.schedule.is_some() && o.schedule.is_none());
        assert_eq!(m.path, PathBuf::from("/var/lib/pgark-drills"));
        let e = parse("catalog: /x\ndrill:\n  timeout: soon\nservers:\n  main:\n    conninfo: host=/tmp\n").unwrap_err();
        assert!(e.to_string().contains(": drill.timeout: "), "{e}");
        let e = parse("catalog: /x\nservers:\n  main:\n    conninfo: host=/tmp\n    drill: {timeout: soon}\n").unwrap_err();
        assert!(e.to_string().contains("servers.main.drill.timeout"), "{e}");
        let e = parse("catalog: /x\ndrill:\n  paht: /y\nservers:\n  main:\n    conninfo: host=/tmp\n").unwrap_err();
        assert!(e.to_string().contains("paht"), "{e}");
    }

    /// `drill_schedule`, named like `backup_schedule`, is `drill.schedule`.
    #[test]
    fn drill_schedule_is_drill_dot_schedule() {
        let parse = |t: &str| crate::config::Config::parse(t, Path::new("/etc/pgark.yaml"));
        let c = parse(
            "catalog: /x
drill_schedule: 7d
servers:
  main:
    conninfo: host=/tmp
  b:
    conninfo: host=/tmp
    slot: b
    drill_schedule: 1d
",
        )
        .unwrap();
        assert!(c.servers["main"].drill.schedule.is_some() && c.servers["b"].drill.schedule.is_some());
        assert_ne!(c.servers["main"].drill.schedule, c.servers["b"].drill.schedule);
        let e = parse(
            "catalog: /x
drill_schedule: 7d
drill:
  schedule: 1d
servers:
  main:
    conninfo: host=/tmp
",
        )
        .unwrap_err();
        assert!(e.to_string().contains("drill_schedule and drill.schedule are both set"), "{e}");
    }
}
