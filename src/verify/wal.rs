//! The WAL side of a verify: which segment files recovery would read from a backup's start to
//! the newest WAL in the catalog (following the newest timeline's history back through its
//! switches), and each of them read, decompressed, checked against its recorded checksum and its
//! page headers (`page`).

use super::page::{self, Expect, Kind};
use crate::catalog::segment_file::{self, SegmentChecksum};
use crate::catalog::store::ObjectStore;
use crate::catalog::wal_store::{PARTIAL_SUFFIX, SUM_SUFFIX, ZST_SUFFIX};
use crate::catalog::Layout;
use crate::pg::{Lsn, SegNo, TimelineHistory, TimelineId, WalFileName, WalSegSize};
use std::collections::BTreeSet;
use std::io;

/// The WAL files of a server's catalog, by name.
#[derive(Debug, Default)]
pub struct WalListing {
    /// Complete segments (plain or `.zst`).
    pub complete: BTreeSet<WalFileName>,
    pub partial: BTreeSet<WalFileName>,
    pub histories: BTreeSet<TimelineId>,
}

/// Lists `<server>/wal/` through the store (read-only: safe beside a running `pgark serve`).
pub fn list(store: &dyn ObjectStore, server: &str, seg: WalSegSize) -> io::Result<WalListing> {
    let mut out = WalListing::default();
    for key in store.list(&Layout::wal_key(server))? {
        let name = key.rsplit('/').next().unwrap_or_default();
        if let Some(tli) = TimelineId::from_history_file_name(name) {
            out.histories.insert(tli);
            continue;
        }
        let (base, ext) = name.split_once('.').unwrap_or((name, ""));
        let Ok(wal) = WalFileName::parse(base, seg) else { continue };
        match ext {
            "" | "zst" => {
                out.complete.insert(wal);
            }
            "partial" => {
                out.partial.insert(wal);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The timelines recovery follows to reach the newest WAL: each with the LSN it begins at
/// (0 for the oldest), oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath {
    pub steps: Vec<(TimelineId, Lsn)>,
}

impl TimelinePath {
    /// A path from the newest timeline's history (`None`: timeline 1, or no history file).
    pub fn new(newest: TimelineId, history: Option<&TimelineHistory>) -> TimelinePath {
        let mut steps = Vec::new();
        let mut begin = Lsn(0);
        for e in history.map(|h| h.entries.as_slice()).unwrap_or_default() {
            if e.parent < newest {
                steps.push((e.parent, begin));
                begin = e.switchpoint;
            }
        }
        steps.push((newest, begin));
        TimelinePath { steps }
    }

    /// The file recovery reads for segment `segno`: the newest timeline on the path that begins
    /// before the segment's end (the segment holding a switchpoint is read from the new timeline).
    pub fn file_for(&self, seg: WalSegSize, segno: SegNo) -> WalFileName {
        let end = seg.segment_start(segno.next());
        let tli = self
            .steps
            .iter()
            .rev()
            .find(|(_, begin)| *begin < end)
            .map(|(t, _)| *t)
            .unwrap_or(self.steps[0].0);
        WalFileName::new(tli, segno)
    }

    pub fn contains(&self, tli: TimelineId) -> bool {
        self.steps.iter().any(|(t, _)| *t == tli)
    }
}

/// Where the WAL path ends: the newest timeline's history read from the catalog, and the last
/// segment on that path that exists (complete or partial). A problem with the history file is
/// returned as text (the path then covers the newest timeline alone).
pub fn newest_path(
    store: &dyn ObjectStore,
    server: &str,
    listing: &WalListing,
    seg: WalSegSize,
) -> (Option<(TimelinePath, SegNo)>, Option<String>) {
    let newest = listing.complete.iter().chain(listing.partial.iter()).map(|n| n.tli).max();
    let Some(newest) = newest else {
        return (None, None);
    };
    let mut problem = None;
    let history = if newest.0 > 1 {
        let key = format!("{}/{}", Layout::wal_key(server), newest.history_file_name());
        match store.get(&key) {
            Ok(Some(bytes)) => match TimelineHistory::parse(&bytes) {
                Ok(h) => Some(h),
                Err(e) => {
                    problem = Some(format!("{} is unreadable: {e}", newest.history_file_name()));
                    None
                }
            },
            Ok(None) => {
                problem = Some(format!(
                    "{} is missing: the WAL of earlier timelines cannot be followed",
                    newest.history_file_name()
                ));
                None
            }
            Err(e) => {
                problem = Some(format!("{}: {e}", newest.history_file_name()));
                None
            }
        }
    } else {
        None
    };
    let path = TimelinePath::new(newest, history.as_ref());
    let end = listing
        .complete
        .iter()
        .chain(listing.partial.iter())
        .filter(|n| path.file_for(seg, n.segno) == **n)
        .map(|n| n.segno)
        .max();
    (end.map(|e| (path, e)), problem)
}

/// The outcome of reading one segment.
#[derive(Debug)]
pub enum SegmentOutcome {
    /// Intact; `stored` bytes read.
    Ok {
        stored: u64,
        partial: bool,
    },
    Missing,
    Damaged {
        stored: u64,
        reason: String,
    },
}

/// Reads segment `name` (the `.zst`, else the plain file with its `.sum` if any, else the
/// `.partial`), checks it against its checksum and its page headers. A running `pgark serve`
/// moves segments forward while we look (`.partial` → plain → `.zst`), so a miss is looked for
/// again before it counts as missing.
pub fn check_segment(
    store: &dyn ObjectStore,
    server: &str,
    name: WalFileName,
    seg: WalSegSize,
    expect: &Expect,
) -> io::Result<SegmentOutcome> {
    for _ in 0..3 {
        if let Some(o) = check_once(store, server, name, seg, expect)? {
            return Ok(o);
        }
    }
    Ok(SegmentOutcome::Missing)
}

fn check_once(
    store: &dyn ObjectStore,
    server: &str,
    name: WalFileName,
    seg: WalSegSize,
    expect: &Expect,
) -> io::Result<Option<SegmentOutcome>> {
    let base = format!("{}/{}", Layout::wal_key(server), name.format(seg));
    let pages = |data: &[u8], kind: Kind| page::check_segment(data, expect, kind).err().map(|e| e.to_string());
    if let Some(stored) = store.get(&format!("{base}{ZST_SUFFIX}"))? {
        let n = stored.len() as u64;
        return Ok(Some(match segment_file::decompress(&stored) {
            Err(e) => SegmentOutcome::Damaged {
                stored: n,
                reason: format!("{ZST_SUFFIX}: {e}"),
            },
            Ok(data) => match pages(&data, Kind::Complete) {
                Some(reason) => SegmentOutcome::Damaged { stored: n, reason },
                None => SegmentOutcome::Ok { stored: n, partial: false },
            },
        }));
    }
    if let Some(plain) = store.get_unrecycled(&base)? {
        let n = plain.len() as u64;
        if let Some(sum) = store.get(&format!("{base}{SUM_SUFFIX}"))? {
            let Some(expected) = SegmentChecksum::from_sum_text(&String::from_utf8_lossy(&sum)) else {
                return Ok(Some(SegmentOutcome::Damaged {
                    stored: n,
                    reason: format!("its {SUM_SUFFIX} file is unreadable"),
                }));
            };
            if let Err(e) = segment_file::verify(&plain, expected) {
                return Ok(Some(SegmentOutcome::Damaged {
                    stored: n,
                    reason: e.to_string(),
                }));
            }
        }
        return Ok(Some(match pages(&plain, Kind::Complete) {
            Some(reason) => SegmentOutcome::Damaged { stored: n, reason },
            None => SegmentOutcome::Ok { stored: n, partial: false },
        }));
    }
    if let Some(partial) = store.get_unrecycled(&format!("{base}{PARTIAL_SUFFIX}"))? {
        let n = partial.len() as u64;
        return Ok(Some(match pages(&partial, Kind::Partial) {
            Some(reason) => SegmentOutcome::Damaged {
                stored: n,
                reason: format!("{PARTIAL_SUFFIX}: {reason}"),
            },
            None => SegmentOutcome::Ok { stored: n, partial: true },
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;
    use crate::pg::HistoryEntry;
    use crate::verify::page::tests::{expect, segment, SEG};

    #[test]
    fn path_follows_switches() {
        let seg = WalSegSize::new(SEG).unwrap();
        let h = TimelineHistory {
            entries: vec![
                HistoryEntry {
                    parent: TimelineId(1),
                    switchpoint: Lsn(3 * SEG + 100),
                },
                HistoryEntry {
                    parent: TimelineId(2),
                    switchpoint: Lsn(6 * SEG),
                },
            ],
        };
        let p = TimelinePath::new(TimelineId(3), Some(&h));
        let tli = |n| p.file_for(seg, SegNo(n)).tli.0;
        assert_eq!([tli(0), tli(2), tli(3), tli(4), tli(5), tli(6), tli(9)], [1, 1, 2, 2, 2, 3, 3]);
    }

    #[test]
    fn segments_in_every_stored_form() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let seg = WalSegSize::new(SEG).unwrap();
        let name = |n| WalFileName::new(TimelineId(1), SegNo(n));
        let e = |n| expect(1, n * SEG);
        // .zst, plain with .sum, plain alone, .partial.
        let mut z = Vec::new();
        segment_file::compress_into(&segment(1, SEG), 1, &mut z).unwrap();
        s.put("main/wal/000000010000000000000001.zst", &z).unwrap();
        let two = segment(1, 2 * SEG);
        s.put("main/wal/000000010000000000000002", &two).unwrap();
        s.put(
            "main/wal/000000010000000000000002.sum",
            SegmentChecksum::of(&two).to_sum_text().as_bytes(),
        )
        .unwrap();
        s.put("main/wal/000000010000000000000003", &segment(1, 3 * SEG)).unwrap();
        s.put("main/wal/000000010000000000000004.partial", &segment(1, 4 * SEG)[..SEG as usize])
            .unwrap();
        for n in 1..=4 {
            let o = check_segment(&s, "main", name(n), seg, &e(n)).unwrap();
            assert!(matches!(o, SegmentOutcome::Ok { .. }), "{n}: {o:?}");
        }
        assert!(matches!(
            check_segment(&s, "main", name(5), seg, &e(5)).unwrap(),
            SegmentOutcome::Missing
        ));
        // Damage: a flipped byte in the .zst, in the plain file with a .sum; a segment copied
        // over the next one's name (its own checksum is fine).
        let mid = z.len() / 2;
        z[mid] ^= 1;
        s.put("main/wal/000000010000000000000001.zst", &z).unwrap();
        let mut bad = two.clone();
        bad[5000] ^= 1;
        s.put("main/wal/000000010000000000000002", &bad).unwrap();
        s.put("main/wal/000000010000000000000003", &two).unwrap();
        for n in 1..=3 {
            let o = check_segment(&s, "main", name(n), seg, &e(n)).unwrap();
            assert!(matches!(o, SegmentOutcome::Damaged { .. }), "{n}: {o:?}");
        }
        let listing = list(&s, "main", seg).unwrap();
        assert_eq!(listing.complete.len(), 3);
        let (path, _) = newest_path(&s, "main", &listing, seg);
        assert_eq!(path.unwrap().1, SegNo(4));
    }
}
