//! Which WAL the catalog holds, per timeline, as ranges of segment numbers, and the gaps between
//! them: the continuity index that `status`, `list-backups`, `check`, retention and the metrics
//! read. A gap (a slot that was lost and recreated, a segment someone deleted) cuts every
//! point-in-time recovery that would replay through it.
//!
//! The index is built from the WAL directory's names alone (no file is opened or stat'ed), so
//! a file deleted behind pgark's back shows up there, not only what pgark itself wrote. The
//! daemon rebuilds it (`service::retention_task`) when a name in the server's directories
//! changed, and at least every 10 minutes.
//!
//! Gaps an operator has looked at and accepted (`pgark verify --acknowledge-gap`) are recorded
//! in `<server>/wal.gaps`: they stay listed, but no longer count as problems.

use super::store::ObjectStore;
use crate::pg::{SegNo, TimelineHistory, TimelineId, WalFileName, WalSegSize};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;

/// How a WAL object is stored (see `wal_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalObjectKind {
    /// Complete, uncompressed: archived when a `.zst` or `.sum` of it exists, pending otherwise.
    Plain,
    Compressed,
    Sum,
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    pub key: String,
    pub name: WalFileName,
    pub kind: WalObjectKind,
}

/// What the WAL directory holds.
#[derive(Debug, Default, Clone)]
pub struct WalListing {
    pub objects: Vec<WalObject>,
    /// History files present, by timeline.
    pub histories: BTreeMap<TimelineId, String>,
}

/// Lists `<server>/wal/` (names only; temporary and spare files skipped).
pub fn list_wal(store: &dyn ObjectStore, server: &str, seg: WalSegSize) -> io::Result<WalListing> {
    let mut out = WalListing::default();
    for key in store.list(&super::Layout::wal_key(server))? {
        let name = key.rsplit('/').next().unwrap_or_default();
        if let Some(tli) = TimelineId::from_history_file_name(name) {
            out.histories.insert(tli, key.clone());
            continue;
        }
        let (base, ext) = name.split_once('.').unwrap_or((name, ""));
        let kind = match ext {
            "" => WalObjectKind::Plain,
            "zst" => WalObjectKind::Compressed,
            "sum" => WalObjectKind::Sum,
            "partial" => WalObjectKind::Partial,
            _ => continue,
        };
        if let Ok(name) = WalFileName::parse(base, seg) {
            out.objects.push(WalObject { key, name, kind });
        }
    }
    Ok(out)
}

/// Contiguous runs of segments held, per timeline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holdings {
    pub ranges: BTreeMap<TimelineId, Vec<(u64, u64)>>,
}

/// A run of segments missing between two that are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub timeline: TimelineId,
    /// First and last missing segment numbers.
    pub first: u64,
    pub last: u64,
}

impl Gap {
    /// The missing segments as names, `first` to `last`.
    pub fn describe(&self, seg: WalSegSize) -> String {
        let name = |n| WalFileName::new(self.timeline, SegNo(n)).format(seg);
        if self.first == self.last {
            name(self.first)
        } else {
            format!("{} to {}", name(self.first), name(self.last))
        }
    }
}

impl Holdings {
    /// From the names present (complete segments and `.partial`s; `.sum`s add nothing).
    pub fn from_listing(listing: &WalListing) -> Holdings {
        let mut per: BTreeMap<TimelineId, Vec<u64>> = BTreeMap::new();
        for o in &listing.objects {
            if o.kind != WalObjectKind::Sum {
                per.entry(o.name.tli).or_default().push(o.name.segno.0);
            }
        }
        let mut ranges = BTreeMap::new();
        for (tli, mut segs) in per {
            segs.sort_unstable();
            segs.dedup();
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for s in segs {
                match runs.last_mut() {
                    Some((_, last)) if *last + 1 == s => *last = s,
                    _ => runs.push((s, s)),
                }
            }
            ranges.insert(tli, runs);
        }
        Holdings { ranges }
    }

    /// Whether segment `segno` of timeline `tli` is held.
    pub fn holds(&self, tli: TimelineId, segno: u64) -> bool {
        self.ranges
            .get(&tli)
            .is_some_and(|r| r.iter().any(|&(a, b)| (a..=b).contains(&segno)))
    }

    /// The newest segment held, over all timelines.
    pub fn newest(&self) -> Option<WalFileName> {
        self.ranges
            .iter()
            .filter_map(|(t, r)| r.last().map(|&(_, b)| WalFileName::new(*t, SegNo(b))))
            .max_by_key(|n| (n.tli, n.segno))
    }

    /// Every gap along the path recovery follows to the newest timeline: each segment number is
    /// read from the timeline that holds it on that path (from the newest timeline's history:
    /// the switch segment and everything after a switch come from the child), so a gap is
    /// recorded on the timeline recovery would read it from. Without the newest timeline's
    /// history (a catalog of one timeline, or a lost history file), gaps inside each timeline
    /// and between consecutive timelines.
    pub fn gaps(&self, histories: &BTreeMap<TimelineId, TimelineHistory>, seg: WalSegSize) -> Vec<Gap> {
        let Some(newest) = self.ranges.keys().max().copied() else {
            return vec![];
        };
        let path: Vec<(TimelineId, u64)> = match histories.get(&newest) {
            Some(h) if !h.entries.is_empty() => {
                let mut p = Vec::new();
                let mut begin = 0;
                for e in &h.entries {
                    p.push((e.parent, begin));
                    begin = seg.segno(e.switchpoint).0;
                }
                p.push((newest, begin));
                p
            }
            _ if self.ranges.len() == 1 => vec![(newest, 0)],
            _ => return self.gaps_without_history(histories),
        };
        // The timeline recovery reads segment `s` from.
        let tli_of = |s: u64| path.iter().rev().find(|(_, b)| s >= *b).map(|(t, _)| *t).unwrap_or(newest);
        let held_on_path = |s: u64| self.holds(tli_of(s), s);
        let lo = path
            .iter()
            .filter_map(|(t, _)| self.ranges.get(t))
            .flat_map(|r| r.iter().flat_map(|&(a, b)| [a, b]))
            .filter(|&s| held_on_path(s))
            .min();
        let hi = self.ranges.get(&newest).and_then(|r| r.last()).map(|&(_, b)| b);
        let (Some(lo), Some(hi)) = (lo, hi) else { return vec![] };
        let mut out: Vec<Gap> = Vec::new();
        for s in lo..=hi {
            if held_on_path(s) {
                continue;
            }
            let t = tli_of(s);
            match out.last_mut() {
                Some(g) if g.timeline == t && g.last + 1 == s => g.last = s,
                _ => out.push(Gap {
                    timeline: t,
                    first: s,
                    last: s,
                }),
            }
        }
        out
    }

    /// Gaps without a history to follow: inside each timeline, and between a timeline and the
    /// next lower one held (the parent's newest held segment well before the child's first).
    fn gaps_without_history(&self, histories: &BTreeMap<TimelineId, TimelineHistory>) -> Vec<Gap> {
        let mut out = Vec::new();
        for (tli, runs) in &self.ranges {
            for w in runs.windows(2) {
                out.push(Gap {
                    timeline: *tli,
                    first: w[0].1 + 1,
                    last: w[1].0 - 1,
                });
            }
            let Some(&(child_first, _)) = runs.first() else { continue };
            let parent = histories
                .get(tli)
                .and_then(|h| h.entries.last().map(|e| e.parent))
                .or_else(|| self.ranges.range(..*tli).next_back().map(|(t, _)| *t));
            let parent_last = parent.and_then(|p| self.ranges.get(&p)).and_then(|r| r.last()).map(|&(_, b)| b);
            if let (Some(p), Some(pl)) = (parent, parent_last) {
                if pl + 1 < child_first {
                    out.push(Gap {
                        timeline: p,
                        first: pl + 1,
                        last: child_first - 1,
                    });
                }
            }
        }
        out.sort_by_key(|g| (g.first, g.timeline));
        out
    }
}

/// An acknowledged gap, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcknowledgedGap {
    pub gap: Gap,
    /// Unix seconds.
    pub acknowledged_at: u64,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct GapFile {
    format: u32,
    acknowledged: Vec<AcknowledgedGap>,
}

pub fn gaps_key(server: &str) -> String {
    format!("{server}/wal.gaps")
}

/// The gaps acknowledged so far (none when the file does not exist).
pub fn acknowledged(store: &dyn ObjectStore, server: &str) -> io::Result<Vec<AcknowledgedGap>> {
    let key = gaps_key(server);
    match store.get(&key)? {
        None => Ok(vec![]),
        Some(b) => serde_json::from_slice::<GapFile>(&b)
            .map(|f| f.acknowledged)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{key}: {e}"))),
    }
}

/// Records `gap` as acknowledged (idempotent).
pub fn acknowledge(store: &dyn ObjectStore, server: &str, gap: Gap, note: &str, now: u64) -> io::Result<()> {
    let mut list = acknowledged(store, server)?;
    if !list.iter().any(|a| a.gap == gap) {
        list.push(AcknowledgedGap {
            gap,
            acknowledged_at: now,
            note: note.to_string(),
        });
    }
    let json = serde_json::to_vec_pretty(&GapFile {
        format: 1,
        acknowledged: list,
    })
    .map_err(io::Error::other)?;
    store.put(&gaps_key(server), &json)
}

/// Whether an acknowledged gap covers `gap`.
pub fn is_acknowledged(list: &[AcknowledgedGap], gap: &Gap) -> bool {
    list.iter()
        .any(|a| a.gap.timeline == gap.timeline && a.gap.first <= gap.first && a.gap.last >= gap.last)
}

/// The parsed history files of a listing (unreadable ones skipped: they only refine gaps).
pub fn load_histories(store: &dyn ObjectStore, listing: &WalListing) -> BTreeMap<TimelineId, TimelineHistory> {
    listing
        .histories
        .iter()
        .filter_map(|(t, k)| {
            let bytes = store.get(k).ok()??;
            TimelineHistory::parse(&bytes).ok().map(|h| (*t, h))
        })
        .collect()
}

/// The backup whose start is where gaps begin to matter: the oldest one without an active pin
/// (a pinned backup keeps only its own start-to-end WAL, so the WAL retention prunes after it
/// is no gap), else the oldest. `None` without backups.
pub fn floor_backup(
    store: &dyn ObjectStore,
    server: &str,
    now: u64,
) -> Result<Option<super::backup_store::BackupIndex>, super::backup_store::BackupStoreError> {
    let ids = super::backup_store::list_ids(store, server)?;
    let pins = super::pin::load_all(store, server)?;
    let chosen = ids.iter().find(|id| !pins.get(*id).is_some_and(|p| p.active(now))).or(ids.first());
    match chosen {
        Some(id) => super::backup_store::load(store, server, id).map(Some),
        None => Ok(None),
    }
}

/// The continuity of one server's WAL, as the daemon and the commands show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Continuity {
    pub holdings: Holdings,
    /// Gaps at or after `from` (the oldest backup's start segment), acknowledged or not.
    pub gaps: Vec<(Gap, bool)>,
}

impl Continuity {
    /// Reads the WAL directory and the acknowledged gaps; `from` limits the gaps to those
    /// that matter (WAL before the oldest backup is never replayed).
    pub fn load(store: &dyn ObjectStore, server: &str, seg: WalSegSize, from: Option<u64>) -> io::Result<Continuity> {
        let listing = list_wal(store, server, seg)?;
        let holdings = Holdings::from_listing(&listing);
        let acked = acknowledged(store, server)?;
        let gaps = holdings
            .gaps(&load_histories(store, &listing), seg)
            .into_iter()
            .filter(|g| from.is_none_or(|f| g.last >= f))
            .map(|g| (g, is_acknowledged(&acked, &g)))
            .collect();
        Ok(Continuity { holdings, gaps })
    }

    pub fn unacknowledged(&self) -> usize {
        self.gaps.iter().filter(|(_, a)| !a).count()
    }

    /// The first gap after segment `segno` (where a PITR from a backup ending there stops).
    pub fn first_gap_after(&self, segno: u64) -> Option<Gap> {
        self.gaps.iter().map(|(g, _)| *g).find(|g| g.last >= segno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    fn seg() -> WalSegSize {
        WalSegSize::new(16 << 20).unwrap()
    }

    fn put(store: &LocalStore, tli: u32, segno: u64, ext: &str) {
        let n = WalFileName::new(TimelineId(tli), SegNo(segno)).format(seg());
        store.put(&format!("main/wal/{n}{ext}"), b"").unwrap();
    }

    #[test]
    fn ranges_and_gaps_within_and_across_timelines() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        for s in [1, 2, 3] {
            put(&store, 1, s, ".zst");
        }
        put(&store, 1, 4, "");
        put(&store, 1, 4, ".sum");
        put(&store, 1, 7, ".zst");
        put(&store, 1, 8, ".partial");
        put(&store, 2, 10, ".zst");
        put(&store, 2, 11, ".partial");
        store.put("main/wal/00000002.history", b"1\t0/A000000\tpromoted\n").unwrap();
        let c = Continuity::load(&store, "main", seg(), None).unwrap();
        assert_eq!(c.holdings.ranges[&TimelineId(1)], vec![(1, 4), (7, 8)]);
        let gaps: Vec<Gap> = c.gaps.iter().map(|(g, _)| *g).collect();
        assert_eq!(
            gaps,
            vec![
                Gap {
                    timeline: TimelineId(1),
                    first: 5,
                    last: 6
                },
                Gap {
                    timeline: TimelineId(1),
                    first: 9,
                    last: 9
                },
            ]
        );
        assert_eq!(c.holdings.newest(), Some(WalFileName::new(TimelineId(2), SegNo(11))));
        assert_eq!(gaps[0].describe(seg()), "000000010000000000000005 to 000000010000000000000006");
        // Only gaps at or after a backup's start count.
        assert_eq!(Continuity::load(&store, "main", seg(), Some(9)).unwrap().gaps.len(), 1);
        acknowledge(&store, "main", gaps[0], "lost slot on 2026-11-30", 5).unwrap();
        acknowledge(&store, "main", gaps[0], "again", 6).unwrap();
        let c = Continuity::load(&store, "main", seg(), None).unwrap();
        assert_eq!(c.unacknowledged(), 1);
        assert_eq!(acknowledged(&store, "main").unwrap().len(), 1);
        assert_eq!(c.first_gap_after(7).map(|g| g.first), Some(9));
    }

    /// A slot recreated after a failover: timeline 1 ends at the switch (segment 5, its
    /// .partial), timeline 2 is held only from segment 9. Recovery reads 5 to 8 from timeline 2:
    /// that is the gap, on timeline 2. And the child's switch segment alone missing is a gap.
    #[test]
    fn gaps_across_a_switch_are_on_the_timeline_recovery_reads() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        for s in 1..=4 {
            put(&store, 1, s, ".zst");
        }
        put(&store, 1, 5, ".partial");
        put(&store, 2, 9, ".zst");
        put(&store, 2, 10, ".partial");
        store.put("main/wal/00000002.history", b"1\t0/5000100\tpromoted\n").unwrap();
        let gaps = |store: &LocalStore| -> Vec<Gap> {
            Continuity::load(store, "main", seg(), None)
                .unwrap()
                .gaps
                .iter()
                .map(|(g, _)| *g)
                .collect()
        };
        let on2 = |first, last| Gap {
            timeline: TimelineId(2),
            first,
            last,
        };
        assert_eq!(gaps(&store), vec![on2(5, 8)]);
        for s in 5..=8 {
            put(&store, 2, s, ".zst");
        }
        assert!(gaps(&store).is_empty());
        std::fs::remove_file(d.path().join("main/wal/000000020000000000000005.zst")).unwrap();
        assert_eq!(gaps(&store), vec![on2(5, 5)]);
    }
}
