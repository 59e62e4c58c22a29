//! `backup_schedule`: when the daemon takes the next backup of a server. Either an interval
//! (`6h`, `1d`: measured from the last successful backup's start, so a restart does not cause an
//! extra backup) or a five-field cron expression in UTC (`0 3 * * *`).

use chrono::{DateTime, TimeZone, Utc};

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(std::time::Duration),
    Cron { text: String, cron: Box<croner::Cron> },
}

impl PartialEq for Schedule {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Cron { text: a, .. }, Schedule::Cron { text: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        if t.split_whitespace().count() == 5 {
            let cron = croner::Cron::new(t)
                .parse()
                .map_err(|e| format!("{t:?} is not a valid cron expression: {e}"))?;
            return Ok(Schedule::Cron {
                text: t.to_string(),
                cron: Box::new(cron),
            });
        }
        match humantime::parse_duration(t) {
            Ok(d) if d >= std::time::Duration::from_secs(60) => Ok(Schedule::Every(d)),
            Ok(_) => Err(format!("{t:?}: an interval must be at least 1m")),
            Err(_) => Err(format!(
                "{t:?}: expected an interval such as 6h or 1d, or a cron expression with five fields such as \"0 3 * * *\" (UTC)"
            )),
        }
    }

    /// When the next backup is due, given the start of the last successful one (if any).
    /// An interval with no backup yet is due now: an unprotected server should not wait.
    pub fn next_due(&self, last_start: Option<u64>, now: u64) -> u64 {
        match self {
            Schedule::Every(d) => last_start.map(|l| l + d.as_secs()).unwrap_or(now),
            Schedule::Cron { cron, .. } => {
                let from = last_start.unwrap_or(now).max(now.saturating_sub(1));
                let from: DateTime<Utc> = Utc.timestamp_opt(from as i64, 0).single().unwrap_or_else(Utc::now);
                cron.find_next_occurrence(&from, false)
                    .map(|t| t.timestamp().max(0) as u64)
                    .unwrap_or(u64::MAX)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_cron() {
        let s = Schedule::parse("6h").unwrap();
        assert_eq!(s.next_due(None, 1000), 1000);
        assert_eq!(s.next_due(Some(100), 1000), 100 + 6 * 3600);
        let c = Schedule::parse("0 3 * * *").unwrap();
        // 2026-11-23 23:00:00 UTC -> next 2026-11-24 03:00:00 UTC.
        let now = 1795474800;
        assert_eq!(c.next_due(None, now), now + 4 * 3600);
        assert!(Schedule::parse("10s").unwrap_err().contains("at least"));
        assert!(Schedule::parse("0 99 * * *").unwrap_err().contains("cron"));
        assert!(Schedule::parse("often").unwrap_err().contains("expected"));
    }
}
