//! Which backup a restore starts from, decided up front from the catalog's facts. Pure: the
//! caller gathers the usable backups and the newest WAL, this says which backup or why none can
//! reach the target (with the reachable range in the message).

use super::target::{format_time, RecoveryTarget, TargetKind, TimelineTarget};
use crate::catalog::backup_store::BackupIndex;
use crate::pg::{Lsn, TimelineHistory, TimelineId};
use std::collections::BTreeMap;

/// What the catalog can offer.
pub struct Catalog<'a> {
    /// Usable backups (WAL present), oldest first.
    pub backups: &'a [BackupIndex],
    /// Newest WAL in the catalog: timeline and the LSN up to which it is stored.
    pub wal_end: Option<(TimelineId, Lsn)>,
    /// Parsed history files by timeline.
    pub histories: &'a BTreeMap<TimelineId, TimelineHistory>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backup_id: String,
    pub why: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("server {server} has no usable backup (a backup with all the WAL it needs); take one with `pgark backup`")]
    NoBackup { server: String },
    #[error("{0}")]
    Unreachable(String),
    #[error("no backup {0:?}; `pgark list-backups` shows the ids")]
    UnknownBackup(String),
    #[error("backup {id} is not usable: {why}")]
    NotUsable { id: String, why: String },
}

/// Whether a backup on `tli` ending at `end` lies on the path to timeline `target`: the same
/// timeline, or an ancestor whose switch to the next timeline came after the backup's end.
fn on_path(histories: &BTreeMap<TimelineId, TimelineHistory>, target: TimelineId, tli: TimelineId, end: Lsn) -> bool {
    if tli == target {
        return true;
    }
    match histories.get(&target) {
        Some(h) => h.switchpoint_of(tli).is_some_and(|sw| end <= sw),
        None => false,
    }
}

fn describe(b: &BackupIndex) -> String {
    format!("{} (ends {} at {})", b.id, b.end_lsn, format_time(b.end_time as i64 * 1_000_000))
}

/// Picks the backup: the requested one (checked against the target), or the newest that can
/// reach the target.
pub fn choose(server: &str, cat: &Catalog<'_>, requested: Option<&str>, target: &RecoveryTarget) -> Result<Choice, PlanError> {
    let target_tli = match target.timeline {
        TimelineTarget::Id(t) => {
            let known = cat.histories.contains_key(&t)
                || cat.backups.iter().any(|b| b.end_timeline == t)
                || cat.wal_end.is_some_and(|(w, _)| w == t);
            if !known {
                let mut tls: Vec<String> = cat.histories.keys().map(|t| t.to_string()).collect();
                tls.extend(cat.backups.iter().map(|b| b.end_timeline.to_string()));
                tls.sort();
                tls.dedup();
                return Err(PlanError::Unreachable(format!(
                    "timeline {t} is unknown to the catalog (known timelines: {})",
                    tls.join(", ")
                )));
            }
            Some(t)
        }
        TimelineTarget::Latest => cat.wal_end.map(|(t, _)| t),
        TimelineTarget::Current => None,
    };
    let candidates: Vec<&BackupIndex> = cat
        .backups
        .iter()
        .filter(|b| target_tli.is_none_or(|t| on_path(cat.histories, t, b.end_timeline, b.end_lsn)))
        .collect();
    if let Some((_, wal_end)) = cat.wal_end {
        if let TargetKind::Lsn(l) = target.kind {
            if l > wal_end {
                return Err(PlanError::Unreachable(format!(
                    "target LSN {l} is past the newest WAL in the catalog ({wal_end}); reachable LSNs end there"
                )));
            }
        }
    }
    let fits = |b: &BackupIndex| match &target.kind {
        TargetKind::Time { unix_micros } => (b.end_time as i64) * 1_000_000 <= *unix_micros,
        TargetKind::Lsn(l) => b.end_lsn <= *l,
        _ => true,
    };
    if let Some(id) = requested.filter(|r| *r != "latest") {
        let b = cat
            .backups
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| PlanError::UnknownBackup(id.to_string()))?;
        if !fits(b) {
            return Err(PlanError::NotUsable {
                id: id.to_string(),
                why: format!("it ends after the target ({}); choose an older backup", describe(b)),
            });
        }
        return Ok(Choice {
            backup_id: b.id.clone(),
            why: "the backup you named".into(),
        });
    }
    if cat.backups.is_empty() {
        return Err(PlanError::NoBackup {
            server: server.to_string(),
        });
    }
    match candidates.iter().rev().find(|b| fits(b)) {
        Some(b) => Ok(Choice {
            backup_id: b.id.clone(),
            why: match &target.kind {
                TargetKind::Time { .. } | TargetKind::Lsn(_) => format!("the newest backup that ends before the target: {}", describe(b)),
                _ => format!("the newest usable backup: {}", describe(b)),
            },
        }),
        None => {
            let oldest = candidates
                .first()
                .copied()
                .or(cat.backups.first())
                .map(describe)
                .unwrap_or_default();
            let end = cat
                .wal_end
                .map(|(t, l)| format!("{l} on timeline {t}"))
                .unwrap_or_else(|| "unknown".into());
            Err(PlanError::Unreachable(match &target.kind {
                TargetKind::Time { unix_micros } => format!(
                    "no backup ends before the target time {}; the oldest is {oldest}. Reachable: from that backup's end to the newest WAL ({end})",
                    format_time(*unix_micros)
                ),
                TargetKind::Lsn(l) => format!(
                    "no backup ends before the target LSN {l}; the oldest is {oldest}. Reachable: from that backup's end to the newest WAL ({end})"
                ),
                _ => format!("no backup lies on the path to the target timeline; the oldest is {oldest}"),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup_store::{tests::index, BackupIndex};

    fn backup(id: &str, end_time: u64, end: u64, tli: u32) -> BackupIndex {
        let mut b = index(id, &[]);
        b.end_time = end_time;
        b.end_lsn = Lsn(end);
        b.end_timeline = TimelineId(tli);
        b.start_timeline = TimelineId(tli);
        b
    }

    fn target(kind: TargetKind) -> RecoveryTarget {
        RecoveryTarget {
            kind,
            timeline: TimelineTarget::Latest,
            inclusive: None,
            action: None,
        }
    }

    #[test]
    fn picks_the_newest_backup_before_the_target() {
        let backups = vec![backup("A", 100, 0x1000, 1), backup("B", 200, 0x2000, 1)];
        let h = BTreeMap::new();
        let cat = Catalog {
            backups: &backups,
            wal_end: Some((TimelineId(1), Lsn(0x9000))),
            histories: &h,
        };
        let pick = |k| choose("main", &cat, None, &target(k));
        assert_eq!(pick(TargetKind::End).unwrap().backup_id, "B");
        assert_eq!(pick(TargetKind::Lsn(Lsn(0x1800))).unwrap().backup_id, "A");
        assert_eq!(pick(TargetKind::Time { unix_micros: 150_000_000 }).unwrap().backup_id, "A");
        assert_eq!(pick(TargetKind::Time { unix_micros: 250_000_000 }).unwrap().backup_id, "B");
        let e = pick(TargetKind::Time { unix_micros: 50_000_000 }).unwrap_err().to_string();
        assert!(e.contains("no backup ends before") && e.contains("Reachable"), "{e}");
        let e = pick(TargetKind::Lsn(Lsn(0xA000))).unwrap_err().to_string();
        assert!(e.contains("past the newest WAL"), "{e}");
        assert!(matches!(
            choose("main", &cat, Some("B"), &target(TargetKind::Lsn(Lsn(0x1800)))),
            Err(PlanError::NotUsable { .. })
        ));
        assert!(matches!(
            choose("main", &cat, Some("Z"), &target(TargetKind::End)),
            Err(PlanError::UnknownBackup(_))
        ));
        let mut t = target(TargetKind::End);
        t.timeline = TimelineTarget::Id(TimelineId(7));
        assert!(choose("main", &cat, None, &t)
            .unwrap_err()
            .to_string()
            .contains("timeline 7 is unknown"));
    }

    #[test]
    fn follows_the_timeline_path() {
        // Timeline 2 branched from 1 at 0x1800: backup B (on 1, ending after the switch) is not on
        // timeline 2's path, A is.
        let backups = vec![backup("A", 100, 0x1000, 1), backup("B", 200, 0x2000, 1)];
        let mut h = BTreeMap::new();
        h.insert(
            TimelineId(2),
            TimelineHistory::parse(b"1\t0/1800\tno recovery target specified\n").unwrap(),
        );
        let cat = Catalog {
            backups: &backups,
            wal_end: Some((TimelineId(2), Lsn(0x9000))),
            histories: &h,
        };
        assert_eq!(choose("main", &cat, None, &target(TargetKind::End)).unwrap().backup_id, "A");
    }
}
