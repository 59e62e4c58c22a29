//! Where to continue when the catalog is on an older timeline than the server: a pure decision
//! over the server's timeline history.

use crate::pg::{Lsn, TimelineHistory, TimelineId, WalSegSize};
use crate::protocol::ProtocolError;

/// The catalog is on timeline `tli` at `start`; the server is on `server_tli` with `history`.
/// Streaming the old timeline from `start` works while `start` lies before the point where the
/// server's history left it. If the catalog already holds WAL past that point (it followed a
/// primary that was then abandoned by a failover to a standby that was behind), continue on the
/// next timeline from the switchpoint instead, as PostgreSQL's walreceiver does; the abandoned
/// WAL stays in the catalog under its own timeline.
pub fn continue_from(
    history: &TimelineHistory,
    tli: TimelineId,
    start: Lsn,
    server_tli: TimelineId,
    seg: WalSegSize,
) -> Result<(TimelineId, Lsn), ProtocolError> {
    let Some(idx) = history.entries.iter().position(|e| e.parent == tli) else {
        return Err(ProtocolError::new(format!(
            "the catalog is on timeline {tli}, which is not in the history of the server's timeline {server_tli}: \
             this server did not descend from the one the catalog followed"
        )));
    };
    let switchpoint = history.entries[idx].switchpoint;
    if start <= switchpoint {
        return Ok((tli, start));
    }
    let next = history.entries.get(idx + 1).map(|e| e.parent).unwrap_or(server_tli);
    Ok((next, seg.align_down(switchpoint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(text: &str) -> TimelineHistory {
        TimelineHistory::parse(text.as_bytes()).unwrap()
    }

    const SEG: WalSegSize = WalSegSize::DEFAULT;

    #[test]
    fn before_the_switchpoint_the_old_timeline_goes_on() {
        let h = history("1\t0/5000000\tno recovery target specified\n");
        assert_eq!(
            continue_from(&h, TimelineId(1), Lsn(0x4000000), TimelineId(2), SEG).unwrap(),
            (TimelineId(1), Lsn(0x4000000))
        );
        // Exactly at the switchpoint: still the old timeline (it ends there).
        assert_eq!(
            continue_from(&h, TimelineId(1), Lsn(0x5000000), TimelineId(2), SEG).unwrap(),
            (TimelineId(1), Lsn(0x5000000))
        );
    }

    #[test]
    fn past_the_switchpoint_the_next_timeline_from_its_segment_start() {
        let h = history("1\t0/5000100\tx\n");
        assert_eq!(
            continue_from(&h, TimelineId(1), Lsn(0x6000000), TimelineId(2), SEG).unwrap(),
            (TimelineId(2), Lsn(0x5000000))
        );
    }

    #[test]
    fn several_switches_pick_the_child_of_the_catalogs_timeline() {
        let h = history("1\t0/3000000\tx\n2\t0/5000000\tx\n");
        assert_eq!(
            continue_from(&h, TimelineId(2), Lsn(0x7000000), TimelineId(3), SEG).unwrap(),
            (TimelineId(3), Lsn(0x5000000))
        );
        assert_eq!(
            continue_from(&h, TimelineId(1), Lsn(0x4000000), TimelineId(3), SEG).unwrap(),
            (TimelineId(2), Lsn(0x3000000))
        );
    }

    #[test]
    fn a_timeline_outside_the_history_is_refused() {
        let h = history("1\t0/3000000\tx\n");
        let e = continue_from(&h, TimelineId(4), Lsn(0x1000000), TimelineId(2), SEG).unwrap_err();
        assert!(e.to_string().contains("not in the history"), "{e}");
    }
}
