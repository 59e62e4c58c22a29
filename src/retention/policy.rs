//! The retention policy and the pure decision it makes: given the backups of one server (their
//! times, whether they can be restored, their pins) and the time now, which stay and why, and
//! which may go. No I/O: `prune` reads the catalog, asks this, and deletes.
//!
//! Rules (each optional; a backup goes only when every rule lets it go):
//! - `redundancy: N` keeps the newest N usable backups;
//! - `recovery_window: W` keeps what restores to any point of the last W: the newest usable
//!   backup that ended at or before the window's start, and every backup after it;
//! - `keep_daily/weekly/monthly: N` keep the newest usable backup of each of the last N days /
//!   ISO weeks / months (UTC) that have one (days without a backup do not count);
//! - `min_redundancy: M` (default 1) keeps the newest M usable backups whatever the rules say;
//! - a pin keeps its backup until it lapses.
//!
//! With no rule set the policy keeps everything. A backup that cannot be restored (WAL it needs
//! is missing) counts for no rule; it goes once it is older than every backup kept, never while
//! it sits between them (a missing file is sometimes a read error that goes away).

use serde::Serialize;
use std::time::Duration;

/// What pgark does when the catalog's free space reaches the critical level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCriticalPressure {
    /// Alert only (the default): nothing is deleted early.
    #[default]
    Alert,
    /// Prune down to `min_redundancy` (pins still hold), logging each deletion.
    Prune,
}

/// One server's retention settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub redundancy: Option<u32>,
    pub recovery_window: Option<Duration>,
    pub min_redundancy: u32,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub on_critical_pressure: OnCriticalPressure,
}

pub const DEFAULT_MIN_REDUNDANCY: u32 = 1;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            redundancy: None,
            recovery_window: None,
            min_redundancy: DEFAULT_MIN_REDUNDANCY,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            on_critical_pressure: OnCriticalPressure::Alert,
        }
    }
}

impl Policy {
    /// How long the time-based rules keep a backup: the recovery window or the longest GFS
    /// span (a month counted as 31 days). `None` with only `redundancy`: how long that keeps a
    /// backup depends on how often backups are taken. (An object lock must last this long.)
    pub fn span(&self) -> Option<Duration> {
        let day = 86_400u64;
        [
            self.recovery_window,
            self.keep_daily.map(|n| Duration::from_secs(u64::from(n) * day)),
            self.keep_weekly.map(|n| Duration::from_secs(u64::from(n) * 7 * day)),
            self.keep_monthly.map(|n| Duration::from_secs(u64::from(n) * 31 * day)),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Whether any rule is set (without one, nothing is ever pruned by the policy).
    pub fn has_rules(&self) -> bool {
        self.redundancy.is_some()
            || self.recovery_window.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
    }
}

/// What the policy needs to know of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: String,
    /// Unix seconds.
    pub start_time: u64,
    pub end_time: u64,
    /// The backup and the WAL from its start to its end are in the catalog.
    pub usable: bool,
    /// An active pin: `Some(None)` forever, `Some(Some(t))` until t.
    pub pinned: Option<Option<u64>>,
}

/// Why a backup stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "detail")]
pub enum Reason {
    /// Among the newest `redundancy` usable backups.
    Redundancy,
    /// Needed for the recovery window.
    Window,
    /// Among the newest `min_redundancy` usable backups.
    MinRedundancy,
    /// Pinned (until this unix time, or forever).
    Pin(Option<u64>),
    /// The newest backup of this day (YYYY-MM-DD).
    Daily(String),
    /// The newest backup of this ISO week (YYYY-Www).
    Weekly(String),
    /// The newest backup of this month (YYYY-MM).
    Monthly(String),
    /// Not restorable, but newer than the oldest backup kept.
    UnusableInside,
    /// No rule is set: everything stays.
    NoPolicy,
    /// No backup counts as restorable: nothing is deleted until one does.
    NoRestorable,
    /// An off-site repository does not have it yet (named): it stays until uploaded.
    Offsite(String),
    /// In a repository with object lock: its index is locked until this unix time.
    Locked(i64),
}

impl Reason {
    pub fn label(&self) -> String {
        match self {
            Reason::Redundancy => "redundancy".into(),
            Reason::Window => "window".into(),
            Reason::MinRedundancy => "min_redundancy".into(),
            Reason::Pin(None) => "pin".into(),
            Reason::Pin(Some(t)) => format!("pin until {}", crate::util::time::format_utc(*t)),
            Reason::Daily(d) => format!("daily {d}"),
            Reason::Weekly(w) => format!("weekly {w}"),
            Reason::Monthly(m) => format!("monthly {m}"),
            Reason::UnusableInside => "unusable, inside the kept range".into(),
            Reason::NoPolicy => "no retention policy".into(),
            Reason::NoRestorable => "no restorable backup: nothing is deleted".into(),
            Reason::Offsite(r) => format!("not yet in repository {r}"),
            Reason::Locked(t) => format!("object lock until {}", crate::util::time::format_utc((*t).max(0) as u64)),
        }
    }

    /// Whether this reason keeps the WAL after the backup too (a pin keeps only start to end).
    pub fn keeps_following_wal(&self) -> bool {
        !matches!(self, Reason::Pin(_))
    }
}

/// The policy's verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub id: String,
    /// Empty: the backup may go.
    pub kept_by: Vec<Reason>,
    /// Why it may go (empty when kept).
    pub prune_reason: String,
}

impl Verdict {
    pub fn keep(&self) -> bool {
        !self.kept_by.is_empty()
    }

    /// Kept by something that also keeps the WAL after it (a rule, not only a pin).
    pub fn anchors_wal(&self) -> bool {
        self.kept_by.iter().any(Reason::keeps_following_wal)
    }
}

/// How hard to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The policy as configured.
    Normal,
    /// Critical disk pressure with `on_critical_pressure: prune`: only `min_redundancy` and pins.
    Critical,
}

/// Decides for each backup (given oldest first) whether it stays, and why.
pub fn decide(policy: &Policy, backups: &[BackupFacts], now: u64, mode: Mode) -> Vec<Verdict> {
    let mut kept: Vec<Vec<Reason>> = vec![Vec::new(); backups.len()];
    let active = policy.has_rules() || mode == Mode::Critical;
    // Usable backups, newest first, by index.
    let usable: Vec<usize> = (0..backups.len()).rev().filter(|&i| backups[i].usable).collect();
    if !active {
        for k in &mut kept {
            k.push(Reason::NoPolicy);
        }
    }
    for &i in usable.iter().take(policy.min_redundancy as usize) {
        kept[i].push(Reason::MinRedundancy);
    }
    if mode == Mode::Normal && active {
        if let Some(n) = policy.redundancy {
            for &i in usable.iter().take(n as usize) {
                kept[i].push(Reason::Redundancy);
            }
        }
        if let Some(w) = policy.recovery_window {
            let start = now.saturating_sub(w.as_secs());
            let mut base_found = false;
            for &i in &usable {
                if backups[i].end_time > start {
                    kept[i].push(Reason::Window);
                } else if !base_found {
                    kept[i].push(Reason::Window);
                    base_found = true;
                }
            }
        }
        gfs(policy.keep_daily, &usable, backups, &mut kept, |t| {
            let d = day(t);
            (d, Reason::Daily(format_day(d)))
        });
        gfs(policy.keep_weekly, &usable, backups, &mut kept, |t| {
            let w = iso_week(t);
            (w.0 as i64 * 100 + w.1 as i64, Reason::Weekly(format!("{}-W{:02}", w.0, w.1)))
        });
        gfs(policy.keep_monthly, &usable, backups, &mut kept, |t| {
            let (y, m) = year_month(t);
            (y as i64 * 12 + m as i64, Reason::Monthly(format!("{y}-{m:02}")))
        });
    }
    for (i, b) in backups.iter().enumerate() {
        if let Some(until) = b.pinned {
            if until.is_none_or(|t| now <= t) {
                kept[i].push(Reason::Pin(until));
            }
        }
    }
    // An unusable backup goes only when it is older than a usable backup that stays; when none
    // stays (no backup counts as restorable: WAL unreadable, a volume not mounted), nothing is
    // deleted at all: that is a problem to report, not a reason to empty the catalog.
    let oldest_usable_kept = (0..backups.len()).find(|&i| backups[i].usable && kept[i].iter().any(Reason::keeps_following_wal));
    let from = oldest_usable_kept.unwrap_or(0);
    for i in from..backups.len() {
        if !backups[i].usable && kept[i].is_empty() {
            kept[i].push(if oldest_usable_kept.is_some() {
                Reason::UnusableInside
            } else {
                Reason::NoRestorable
            });
        }
    }
    backups
        .iter()
        .zip(kept)
        .map(|(b, kept_by)| {
            let prune_reason = if !kept_by.is_empty() {
                String::new()
            } else if !b.usable {
                "not restorable (WAL it needs is missing) and older than every backup kept".into()
            } else if mode == Mode::Critical {
                format!("critical disk pressure: pruning down to min_redundancy ({})", policy.min_redundancy)
            } else {
                "no rule keeps it".into()
            };
            Verdict {
                id: b.id.clone(),
                kept_by,
                prune_reason,
            }
        })
        .collect()
}

/// Keeps the newest usable backup of each of the last `n` periods that have one.
fn gfs(
    n: Option<u32>,
    usable_newest_first: &[usize],
    backups: &[BackupFacts],
    kept: &mut [Vec<Reason>],
    period: impl Fn(u64) -> (i64, Reason),
) {
    let Some(n) = n else { return };
    let mut seen = Vec::new();
    for &i in usable_newest_first {
        let (key, reason) = period(backups[i].start_time);
        if seen.contains(&key) {
            continue;
        }
        if seen.len() >= n as usize {
            break;
        }
        seen.push(key);
        kept[i].push(reason);
    }
}

fn day(t: u64) -> i64 {
    (t / 86_400) as i64
}

fn civil(days: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(days * 86_400, 0)
        .map(|d| d.date_naive())
        .unwrap_or_default()
}

fn format_day(days: i64) -> String {
    civil(days).format("%Y-%m-%d").to_string()
}

fn iso_week(t: u64) -> (i32, u32) {
    use chrono::Datelike;
    let w = civil(day(t)).iso_week();
    (w.year(), w.week())
}

fn year_month(t: u64) -> (i32, u32) {
    use chrono::Datelike;
    let d = civil(day(t));
    (d.year(), d.month())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2026-11-02 00:00 UTC, a Monday.
    const MONDAY: u64 = 1_793_577_600;

    fn b(id: &str, start: u64, usable: bool) -> BackupFacts {
        BackupFacts {
            id: id.into(),
            start_time: start,
            end_time: start + 600,
            usable,
            pinned: None,
        }
    }

    fn kept(v: &[Verdict]) -> Vec<&str> {
        v.iter().filter(|v| v.keep()).map(|v| v.id.as_str()).collect()
    }

    /// One backup a day at 01:00 for `n` days from MONDAY.
    fn daily(n: u64) -> Vec<BackupFacts> {
        (0..n).map(|d| b(&format!("d{d:02}"), MONDAY + d * DAY + 3600, true)).collect()
    }

    #[test]
    fn monday_constant_is_a_monday() {
        assert_eq!(format_day(day(MONDAY)), "2026-11-02");
        assert_eq!(iso_week(MONDAY), (2026, 45));
    }

    #[test]
    fn no_rules_keeps_everything() {
        let v = decide(&Policy::default(), &daily(5), MONDAY + 10 * DAY, Mode::Normal);
        assert_eq!(kept(&v).len(), 5);
        assert!(v
            .iter()
            .all(|v| v.kept_by == vec![Reason::NoPolicy] || v.kept_by.contains(&Reason::NoPolicy)));
    }

    #[test]
    fn redundancy_keeps_the_newest_usable() {
        let p = Policy {
            redundancy: Some(2),
            ..Policy::default()
        };
        let mut backups = daily(5);
        backups[4].usable = false; // the newest cannot be restored
        let v = decide(&p, &backups, MONDAY + 10 * DAY, Mode::Normal);
        assert_eq!(
            kept(&v),
            vec!["d02", "d03", "d04"],
            "the unusable newest stays (inside), two usable kept"
        );
        assert_eq!(v[4].kept_by, vec![Reason::UnusableInside]);
        assert_eq!(v[0].prune_reason, "no rule keeps it");
    }

    #[test]
    fn recovery_window_keeps_the_base_before_its_start() {
        let p = Policy {
            recovery_window: Some(Duration::from_secs(3 * DAY)),
            ..Policy::default()
        };
        // Now: day 10 12:00. Window starts day 7 12:00: backups of days 8, 9 inside; day 7
        // (01:10 end) is the newest that ended before the start.
        let v = decide(&p, &daily(10), MONDAY + 10 * DAY + 12 * 3600, Mode::Normal);
        assert_eq!(kept(&v), vec!["d07", "d08", "d09"]);
        // Several rules: a backup goes only when every rule lets it go.
        let both = Policy { redundancy: Some(5), ..p };
        let v = decide(&both, &daily(10), MONDAY + 10 * DAY + 12 * 3600, Mode::Normal);
        assert_eq!(kept(&v), vec!["d05", "d06", "d07", "d08", "d09"]);
    }

    #[test]
    fn gfs_counts_periods_that_have_backups() {
        let p = Policy {
            keep_daily: Some(3),
            keep_weekly: Some(2),
            keep_monthly: Some(2),
            ..Policy::default()
        };
        // Two backups a day for 40 days.
        let mut backups = Vec::new();
        for d in 0..40 {
            backups.push(b(&format!("{d:02}a"), MONDAY + d * DAY + 3600, true));
            backups.push(b(&format!("{d:02}b"), MONDAY + d * DAY + 13 * 3600, true));
        }
        let v = decide(&p, &backups, MONDAY + 41 * DAY, Mode::Normal);
        let k = kept(&v);
        // Daily: the newest of days 39, 38, 37. Weekly: newest of this ISO week (day 39 is a
        // Friday: 2026-12-11) and the one before (its Sunday, day 34). Monthly: December (day
        // 39) and November (day 28 = 2026-11-30).
        assert_eq!(k, vec!["28b", "34b", "37b", "38b", "39b"]);
        let reasons: Vec<String> = v
            .iter()
            .find(|v| v.id == "39b")
            .unwrap()
            .kept_by
            .iter()
            .map(Reason::label)
            .collect();
        assert_eq!(
            reasons,
            vec!["min_redundancy", "daily 2026-12-11", "weekly 2026-W50", "monthly 2026-12"]
        );
    }

    #[test]
    fn pins_hold_until_they_lapse_and_min_redundancy_is_a_floor() {
        let p = Policy {
            redundancy: Some(1),
            min_redundancy: 2,
            ..Policy::default()
        };
        let mut backups = daily(5);
        backups[0].pinned = Some(None);
        backups[1].pinned = Some(Some(MONDAY)); // lapsed
        let v = decide(&p, &backups, MONDAY + 10 * DAY, Mode::Normal);
        assert_eq!(kept(&v), vec!["d00", "d03", "d04"]);
        assert!(!v[0].anchors_wal(), "a pin keeps only the backup's own WAL");
        assert!(v[3].anchors_wal());
    }

    #[test]
    fn critical_pressure_prunes_to_min_redundancy_but_keeps_pins() {
        let p = Policy {
            redundancy: Some(4),
            on_critical_pressure: OnCriticalPressure::Prune,
            ..Policy::default()
        };
        let mut backups = daily(5);
        backups[1].pinned = Some(None);
        let v = decide(&p, &backups, MONDAY + 10 * DAY, Mode::Critical);
        assert_eq!(kept(&v), vec!["d01", "d04"]);
        assert!(v[2].prune_reason.starts_with("critical disk pressure"));
    }

    /// A WAL directory that reads as empty (a volume not mounted) makes every backup unusable:
    /// retention must then delete nothing.
    #[test]
    fn no_restorable_backup_means_nothing_is_deleted() {
        let p = Policy {
            redundancy: Some(1),
            ..Policy::default()
        };
        let mut backups = daily(3);
        for b in &mut backups {
            b.usable = false;
        }
        let v = decide(&p, &backups, MONDAY + 10 * DAY, Mode::Normal);
        assert_eq!(kept(&v).len(), 3);
        assert!(v.iter().all(|v| v.kept_by == vec![Reason::NoRestorable]));
        assert_eq!(kept(&decide(&p, &backups, MONDAY + 10 * DAY, Mode::Critical)).len(), 3);
    }

    #[test]
    fn unusable_backups_older_than_every_kept_one_go() {
        let p = Policy {
            redundancy: Some(1),
            ..Policy::default()
        };
        let mut backups = daily(3);
        backups[0].usable = false;
        let v = decide(&p, &backups, MONDAY + 10 * DAY, Mode::Normal);
        assert_eq!(kept(&v), vec!["d02"]);
        assert!(v[0].prune_reason.starts_with("not restorable"));
    }
}
