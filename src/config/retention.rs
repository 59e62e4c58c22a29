//! The `retention:` section: a top-level default every server inherits, key by key, and may
//! override under `servers.<name>.retention`.

use super::values::parse_duration;
use crate::retention::{OnCriticalPressure, Policy};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub redundancy: Option<u32>,
    pub recovery_window: Option<String>,
    pub min_redundancy: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub on_critical_pressure: Option<String>,
}

impl RawRetention {
    /// `self` (the server's keys) over `defaults` (the top-level section), key by key.
    fn over(&self, defaults: &RawRetention) -> RawRetention {
        RawRetention {
            redundancy: self.redundancy.or(defaults.redundancy),
            recovery_window: self.recovery_window.clone().or_else(|| defaults.recovery_window.clone()),
            min_redundancy: self.min_redundancy.or(defaults.min_redundancy),
            keep_daily: self.keep_daily.or(defaults.keep_daily),
            keep_weekly: self.keep_weekly.or(defaults.keep_weekly),
            keep_monthly: self.keep_monthly.or(defaults.keep_monthly),
            on_critical_pressure: self.on_critical_pressure.clone().or_else(|| defaults.on_critical_pressure.clone()),
        }
    }
}

/// The policy of one server: its own keys over the top-level ones. `prefix` names the section in
/// messages (`servers.main.retention`).
pub fn parse(server: Option<&RawRetention>, top: Option<&RawRetention>, prefix: &str) -> Result<Policy, String> {
    let empty = RawRetention::default();
    let raw = server.unwrap_or(&empty).over(top.unwrap_or(&empty));
    let at_least_one = |key: &str, v: Option<u32>| -> Result<Option<u32>, String> {
        match v {
            Some(0) => Err(format!(
                "{prefix}.{key}: 0: expected 1 or more (leave the key out to turn the rule off)"
            )),
            v => Ok(v),
        }
    };
    let recovery_window = match raw.recovery_window.as_deref() {
        None => None,
        Some(t) => {
            let d = parse_duration(Some(t), Duration::ZERO)
                .map_err(|_| format!("{prefix}.recovery_window: {t:?}: expected a duration such as 14d, 36h or 4w"))?;
            if d < Duration::from_secs(60) {
                return Err(format!("{prefix}.recovery_window: {t:?}: expected at least 1m"));
            }
            Some(d)
        }
    };
    let on_critical_pressure = match raw.on_critical_pressure.as_deref() {
        None | Some("alert") => OnCriticalPressure::Alert,
        Some("prune") => OnCriticalPressure::Prune,
        Some(other) => return Err(format!("{prefix}.on_critical_pressure: {other:?}: expected alert or prune")),
    };
    Ok(Policy {
        redundancy: at_least_one("redundancy", raw.redundancy)?,
        recovery_window,
        min_redundancy: at_least_one("min_redundancy", raw.min_redundancy)?.unwrap_or(crate::retention::policy::DEFAULT_MIN_REDUNDANCY),
        keep_daily: at_least_one("keep_daily", raw.keep_daily)?,
        keep_weekly: at_least_one("keep_weekly", raw.keep_weekly)?,
        keep_monthly: at_least_one("keep_monthly", raw.keep_monthly)?,
        on_critical_pressure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawRetention {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn server_keys_override_the_default_key_by_key() {
        let top = raw("redundancy: 3\nrecovery_window: 14d\nkeep_daily: 7\n");
        let server = raw("redundancy: 5\non_critical_pressure: prune\n");
        let p = parse(Some(&server), Some(&top), "servers.main.retention").unwrap();
        assert_eq!(p.redundancy, Some(5));
        assert_eq!(p.recovery_window, Some(Duration::from_secs(14 * 86400)));
        assert_eq!(p.keep_daily, Some(7));
        assert_eq!(p.min_redundancy, 1);
        assert_eq!(p.on_critical_pressure, OnCriticalPressure::Prune);
        assert!(!parse(None, None, "retention").unwrap().has_rules());
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse(Some(&raw("redundancy: 0")), None, "servers.main.retention").unwrap_err();
        assert!(e.starts_with("servers.main.retention.redundancy: 0"), "{e}");
        let e = parse(None, Some(&raw("recovery_window: soon")), "retention").unwrap_err();
        assert!(e.contains("retention.recovery_window: \"soon\""), "{e}");
        let e = parse(None, Some(&raw("on_critical_pressure: panic")), "retention").unwrap_err();
        assert!(e.contains("expected alert or prune"), "{e}");
        assert!(serde_yaml::from_str::<RawRetention>("redundancy: 2\nkeep_yearly: 1").is_err());
    }
}
