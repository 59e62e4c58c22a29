//! Recovery targets: parsed and validated from the command line, turned into PostgreSQL's
//! `recovery_target_*` settings. Pure: no I/O.

use crate::pg::{Lsn, TimelineId};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// Replay all available WAL.
    End,
    Immediate,
    Time {
        unix_micros: i64,
    },
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineTarget {
    Latest,
    Current,
    Id(TimelineId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryTarget {
    pub kind: TargetKind,
    pub timeline: TimelineTarget,
    pub inclusive: Option<bool>,
    /// pause, promote or shutdown.
    pub action: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{option}: {message}")]
pub struct TargetError {
    pub option: String,
    pub message: String,
}

fn err(option: &str, message: String) -> TargetError {
    TargetError {
        option: option.to_string(),
        message,
    }
}

/// Parses a time like `2026-11-23 23:15:00`, `2026-11-23 23:15:00.5+01`, `2026-11-23T23:15:00Z`.
/// Without a zone the local time zone of this machine applies (and the written setting carries an
/// explicit UTC offset, so the server's `timezone` setting cannot change its meaning).
pub fn parse_time(text: &str) -> Result<i64, TargetError> {
    let t = text.trim();
    let expected = "expected a time such as '2026-11-23 23:15:00', '2026-11-23 23:15:00.250+01' or '2026-11-23T22:15:00Z'";
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    // ISO 8601's `T` between date and time (only there: `UTC` has one too).
    let norm = if t.len() > 10 && t.as_bytes()[10] == b'T' {
        format!("{} {}", &t[..10], &t[11..])
    } else {
        t.to_string()
    };
    // Offsets as PostgreSQL prints them: +01, +0100, +01:00, or Z / UTC.
    let (body, zone) = split_zone(&norm);
    let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]
        .iter()
        .find_map(|f| {
            NaiveDateTime::parse_from_str(body, f)
                .ok()
                .or_else(|| chrono::NaiveDate::parse_from_str(body, f).ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
        })
        .ok_or_else(|| err("--target-time", format!("{text:?}: {expected}")))?;
    let micros = match zone {
        Some(off) => FixedOffset::east_opt(off)
            .and_then(|z| z.from_local_datetime(&naive).single())
            .ok_or_else(|| err("--target-time", format!("{text:?}: bad time zone offset")))?
            .timestamp_micros(),
        None => Local
            .from_local_datetime(&naive)
            .earliest()
            .ok_or_else(|| err("--target-time", format!("{text:?} does not exist in the local time zone")))?
            .timestamp_micros(),
    };
    Ok(micros)
}

/// Splits a trailing zone (`Z`, `UTC`, `+01`, `-0530`, `+01:00`) into seconds east of UTC.
fn split_zone(s: &str) -> (&str, Option<i32>) {
    let s = s.trim();
    for z in [" UTC", "Z", " GMT"] {
        if let Some(b) = s.strip_suffix(z) {
            return (b.trim(), Some(0));
        }
    }
    if let Some(pos) = s.rfind(['+', '-']) {
        // Only a sign after the time part (position > 10 skips the date's dashes).
        if pos > 10 {
            let (body, zone) = s.split_at(pos);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(|c| c.is_ascii_digit()).collect();
            let (h, m) = match digits.len() {
                1 | 2 => (digits.parse::<i32>().ok(), Some(0)),
                4 => (digits[..2].parse::<i32>().ok(), digits[2..].parse::<i32>().ok()),
                _ => (None, None),
            };
            if let (Some(h), Some(m)) = (h, m) {
                return (body.trim(), Some(sign * (h * 3600 + m * 60)));
            }
        }
    }
    (s, None)
}

/// UTC text with an explicit offset, the form written into `recovery_target_time`.
pub fn format_time(unix_micros: i64) -> String {
    Utc.timestamp_micros(unix_micros)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        .unwrap_or_default()
}

/// The `--target-*` options as given.
#[derive(Debug, Default, Clone, Copy)]
pub struct TargetOptions<'a> {
    pub time: Option<&'a str>,
    pub lsn: Option<&'a str>,
    pub xid: Option<&'a str>,
    pub name: Option<&'a str>,
    pub immediate: bool,
    pub timeline: Option<&'a str>,
    pub inclusive: Option<&'a str>,
    pub action: Option<&'a str>,
}

impl RecoveryTarget {
    /// Builds a target from the restore options; at most one target kind may be given.
    pub fn from_options(o: TargetOptions<'_>) -> Result<RecoveryTarget, TargetError> {
        let TargetOptions {
            time,
            lsn,
            xid,
            name,
            immediate,
            timeline,
            inclusive,
            action,
        } = o;
        let given = [time.is_some(), lsn.is_some(), xid.is_some(), name.is_some(), immediate]
            .iter()
            .filter(|g| **g)
            .count();
        if given > 1 {
            return Err(err(
                "--target-*",
                "give at most one of --target-time, --target-lsn, --target-xid, --target-name, --target-immediate".into(),
            ));
        }
        let kind = if let Some(t) = time {
            TargetKind::Time {
                unix_micros: parse_time(t)?,
            }
        } else if let Some(l) = lsn {
            TargetKind::Lsn(
                l.trim()
                    .parse()
                    .map_err(|_| err("--target-lsn", format!("{l:?}: expected an LSN such as 0/3000060")))?,
            )
        } else if let Some(x) = xid {
            let v: u64 = x
                .trim()
                .parse()
                .map_err(|_| err("--target-xid", format!("{x:?}: expected a transaction id (a number)")))?;
            if v < 3 {
                return Err(err("--target-xid", format!("{v}: normal transaction ids start at 3")));
            }
            TargetKind::Xid(v)
        } else if let Some(n) = name {
            if n.is_empty() || n.len() >= 64 {
                return Err(err(
                    "--target-name",
                    format!("{n:?}: expected a restore point name of 1 to 63 bytes"),
                ));
            }
            TargetKind::Name(n.to_string())
        } else if immediate {
            TargetKind::Immediate
        } else {
            TargetKind::End
        };
        let timeline = match timeline.map(str::trim) {
            None | Some("latest") => TimelineTarget::Latest,
            Some("current") => TimelineTarget::Current,
            Some(n) => {
                TimelineTarget::Id(TimelineId(n.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
                    err("--target-timeline", format!("{n:?}: expected latest, current or a timeline number"))
                })?))
            }
        };
        let inclusive = match inclusive.map(str::trim) {
            None => None,
            Some("true" | "on" | "yes") => Some(true),
            Some("false" | "off" | "no") => Some(false),
            Some(o) => return Err(err("--target-inclusive", format!("{o:?}: expected true or false"))),
        };
        if inclusive.is_some() && !matches!(kind, TargetKind::Time { .. } | TargetKind::Lsn(_) | TargetKind::Xid(_)) {
            return Err(err(
                "--target-inclusive",
                "applies only to --target-time, --target-lsn and --target-xid".into(),
            ));
        }
        let action = match action.map(str::trim) {
            None => None,
            Some(a @ ("pause" | "promote" | "shutdown")) => Some(a.to_string()),
            Some(o) => return Err(err("--target-action", format!("{o:?}: expected pause, promote or shutdown"))),
        };
        if action.is_some() && kind == TargetKind::End {
            return Err(err(
                "--target-action",
                "needs a recovery target (--target-time, --target-lsn, ...)".into(),
            ));
        }
        Ok(RecoveryTarget {
            kind,
            timeline,
            inclusive,
            action,
        })
    }

    /// `postgresql.conf` settings for this target (values unquoted; the writer quotes them).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut s = Vec::new();
        match &self.kind {
            TargetKind::End => {}
            TargetKind::Immediate => s.push(("recovery_target", "immediate".to_string())),
            TargetKind::Time { unix_micros } => s.push(("recovery_target_time", format_time(*unix_micros))),
            TargetKind::Lsn(l) => s.push(("recovery_target_lsn", l.to_string())),
            TargetKind::Xid(x) => s.push(("recovery_target_xid", x.to_string())),
            TargetKind::Name(n) => s.push(("recovery_target_name", n.clone())),
        }
        s.push((
            "recovery_target_timeline",
            match self.timeline {
                TimelineTarget::Latest => "latest".to_string(),
                TimelineTarget::Current => "current".to_string(),
                TimelineTarget::Id(t) => t.0.to_string(),
            },
        ));
        if let Some(i) = self.inclusive {
            s.push(("recovery_target_inclusive", if i { "on" } else { "off" }.to_string()));
        }
        if let Some(a) = &self.action {
            s.push(("recovery_target_action", a.clone()));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let base = Utc.with_ymd_and_hms(2026, 11, 23, 22, 15, 0).unwrap().timestamp_micros();
        assert_eq!(parse_time("2026-11-23T22:15:00Z").unwrap(), base);
        assert_eq!(parse_time("2026-11-23 23:15:00+01").unwrap(), base);
        assert_eq!(parse_time("2026-11-23 23:15:00+01:00").unwrap(), base);
        assert_eq!(parse_time("2026-11-23 22:15:00 UTC").unwrap(), base);
        assert_eq!(parse_time("2026-11-23 22:15:00.25Z").unwrap(), base + 250_000);
        assert_eq!(parse_time("2026-11-23 17:45:00-0430").unwrap(), base);
        assert!(parse_time("2026-11-23 22:15:00").is_ok());
        assert!(parse_time("yesterday").unwrap_err().message.contains("expected a time"));
        assert!(parse_time("2026-13-40 10:00").is_err());
        assert_eq!(format_time(base + 250_000), "2026-11-23 22:15:00.250000+00");
    }

    fn t(time: Option<&str>, lsn: Option<&str>, xid: Option<&str>, tl: Option<&str>) -> Result<RecoveryTarget, TargetError> {
        RecoveryTarget::from_options(TargetOptions {
            time,
            lsn,
            xid,
            timeline: tl,
            ..Default::default()
        })
    }

    #[test]
    fn options() {
        assert_eq!(
            t(None, Some("0/3000060"), None, None).unwrap().kind,
            TargetKind::Lsn(Lsn(0x3000060))
        );
        assert_eq!(t(None, Some("nope"), None, None).unwrap_err().option, "--target-lsn");
        assert_eq!(t(None, None, Some("x"), None).unwrap_err().option, "--target-xid");
        assert!(t(Some("2026-11-23 10:00:00Z"), Some("0/1"), None, None).is_err());
        assert_eq!(t(None, None, None, Some("3")).unwrap().timeline, TimelineTarget::Id(TimelineId(3)));
        assert_eq!(t(None, None, None, Some("zero")).unwrap_err().option, "--target-timeline");
        let r = RecoveryTarget::from_options(TargetOptions {
            xid: Some("1234"),
            inclusive: Some("false"),
            action: Some("promote"),
            ..Default::default()
        })
        .unwrap();
        let s = r.settings();
        assert!(s.contains(&("recovery_target_xid", "1234".into())) && s.contains(&("recovery_target_inclusive", "off".into())));
        assert!(RecoveryTarget::from_options(TargetOptions {
            action: Some("promote"),
            ..Default::default()
        })
        .is_err());
    }
}
