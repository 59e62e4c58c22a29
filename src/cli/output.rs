//! How backups are shown: the summary `list-backups` and `show-backup` print (and `--json`).

use crate::catalog::backup_store::{self, BackupIndex, WalPresence};
use crate::catalog::continuity::Continuity;
use crate::catalog::store::ObjectStore;
use crate::catalog::Catalog;
use crate::pg::WalSegSize;
use crate::retention::policy::{Mode, Verdict};
use crate::retention::prune::RecoveryWindow;
use serde::Serialize;
use std::collections::BTreeMap;

/// What retention and the WAL continuity index say about one server's backups (read-only: a
/// dry run of the policy, no lock taken).
#[derive(Default)]
pub struct RetentionView {
    verdicts: BTreeMap<String, Verdict>,
    /// Id of the oldest backup a rule (not only a pin) keeps.
    oldest_anchor: Option<String>,
    continuity: Option<(Continuity, WalSegSize)>,
    pub window: Option<RecoveryWindow>,
    /// Gaps in the WAL since the oldest backup, as text, with "(acknowledged)" where so.
    pub gaps: Vec<String>,
}

impl RetentionView {
    /// `repositories`: whose upload progress holds the prune back (none for a repository's own
    /// catalog).
    pub fn load(catalog: &Catalog, server: &str, policy: &crate::retention::Policy, repositories: &[String]) -> RetentionView {
        let now = crate::util::time::unix_now();
        let hold = crate::catalog::offsite_mark::OffsiteHold::load(catalog.store().as_ref(), server, repositories);
        let report = match crate::retention::prune(catalog, server, policy, now, Mode::Normal, true, &hold) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warning: {server}: cannot evaluate the retention policy: {e}");
                return RetentionView::default();
            }
        };
        let store = catalog.store();
        let first = crate::catalog::continuity::floor_backup(store.as_ref(), server, now).ok().flatten();
        let continuity = first.as_ref().and_then(|b| {
            let seg = WalSegSize::new(b.wal_segment_size).ok()?;
            Continuity::load(store.as_ref(), server, seg, Some(seg.segno(b.start_lsn).0))
                .ok()
                .map(|c| (c, seg))
        });
        let gaps = continuity
            .as_ref()
            .map(|(c, seg)| {
                c.gaps
                    .iter()
                    .map(|(g, acked)| format!("{}{}", g.describe(*seg), if *acked { " (acknowledged)" } else { "" }))
                    .collect()
            })
            .unwrap_or_default();
        RetentionView {
            oldest_anchor: report.verdicts.iter().find(|v| v.anchors_wal()).map(|v| v.id.clone()),
            verdicts: report.verdicts.into_iter().map(|v| (v.id.clone(), v)).collect(),
            continuity,
            window: report.window_before,
            gaps,
        }
    }
}

/// What `list-backups --json` and `show-backup --json` print for one backup (the index without
/// its file list, plus whether it is usable now).
#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub server: String,
    pub id: String,
    pub label: String,
    /// `ok` when usable for a restore; `wal-missing` when WAL it needs is gone from the catalog.
    pub status: &'static str,
    pub usable: bool,
    pub start_time: String,
    pub end_time: String,
    pub duration_seconds: u64,
    pub start_lsn: String,
    pub end_lsn: String,
    pub timeline: u32,
    pub end_timeline: u32,
    pub pg_version: u32,
    pub system_identifier: String,
    pub from_standby: bool,
    pub checkpoint: String,
    pub compression: String,
    pub original_bytes: u64,
    pub stored_new_bytes: u64,
    pub stored_total_bytes: u64,
    pub file_count: usize,
    pub wal_source: backup_store::WalSource,
    pub wal: WalPresence,
    pub tablespaces: Vec<crate::catalog::backup_store::TablespaceRecord>,
    /// Why retention keeps it (`redundancy`, `window`, `pin`, `daily 2026-12-01`, …); empty when
    /// the next prune deletes it.
    pub kept_by: Vec<String>,
    /// Why the next prune deletes it (absent when kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_reason: Option<String>,
    /// How far a point-in-time restore from it can go.
    pub pitr: String,
    /// When `pgark verify` (or the daemon's scheduled verify) last checked it (UTC), or `never`.
    pub verified_at: String,
    /// That verify's result: `ok`, `damaged`, or `never`.
    pub verify_status: String,
    /// `full`, or `incremental` (the server sent only the blocks changed since `parent`; the
    /// backup is nevertheless whole: restoring it needs no other backup).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub parent: Option<String>,
    /// Bytes of file data the server sent (absent for backups taken before pgark recorded it).
    pub received_bytes: Option<u64>,
}

pub fn summarize(store: &dyn ObjectStore, idx: &BackupIndex, view: &RetentionView) -> BackupSummary {
    let wal = backup_store::wal_presence(store, idx);
    let verdict = view.verdicts.get(&idx.id);
    let pin_only = verdict.is_some_and(|v| v.keep() && !v.anchors_wal());
    let before_anchor = view.oldest_anchor.as_ref().is_some_and(|a| idx.id < *a);
    let pitr = if !wal.present {
        "none: WAL it needs is missing".to_string()
    } else if pin_only && before_anchor {
        "to its end only (pinned; the WAL after it is pruned)".to_string()
    } else {
        match &view.continuity {
            Some((c, seg)) => match c.first_gap_after(seg.segno(idx.end_lsn).0) {
                Some(g) => format!("up to the WAL gap at {}", g.describe(*seg)),
                None => "to the newest WAL".to_string(),
            },
            None => "to the newest WAL".to_string(),
        }
    };
    let verified = crate::verify::record::load(store, &idx.server, &idx.id);
    BackupSummary {
        server: idx.server.clone(),
        id: idx.id.clone(),
        label: idx.label.clone(),
        status: if wal.present { "ok" } else { "wal-missing" },
        usable: wal.present,
        start_time: crate::util::time::format_utc(idx.start_time),
        end_time: crate::util::time::format_utc(idx.end_time),
        duration_seconds: idx.end_time.saturating_sub(idx.start_time),
        start_lsn: idx.start_lsn.to_string(),
        end_lsn: idx.end_lsn.to_string(),
        timeline: idx.start_timeline.0,
        end_timeline: idx.end_timeline.0,
        pg_version: idx.pg_version,
        system_identifier: idx.system_identifier.clone(),
        from_standby: idx.from_standby,
        checkpoint: idx.checkpoint.clone(),
        compression: idx.compression.clone(),
        original_bytes: idx.original_bytes,
        stored_new_bytes: idx.stored_new_bytes,
        stored_total_bytes: idx.stored_total_bytes,
        kind: idx.kind(),
        parent: idx.incremental.as_ref().map(|i| i.parent.clone()),
        received_bytes: idx.received_bytes,
        file_count: idx.file_count(),
        wal_source: idx.wal_source,
        wal,
        tablespaces: idx.tablespaces.clone(),
        kept_by: verdict.map(|v| v.kept_by.iter().map(|r| r.label()).collect()).unwrap_or_default(),
        prune_reason: verdict.filter(|v| !v.keep()).map(|v| v.prune_reason.clone()),
        pitr,
        verified_at: verified
            .as_ref()
            .map_or_else(|| "never".to_string(), |v| crate::util::time::format_utc(v.verified_at)),
        verify_status: verified.map_or_else(|| "never".to_string(), |v| v.status),
    }
}
