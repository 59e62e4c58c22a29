//! Cascading replication and promotion: pgark streams from a standby, the standby is promoted,
//! pgark stores the history file and follows it onto the new timeline with no gap.

use crate::support::*;
use std::time::Duration;

#[test]
fn cascading_standby_promotion_follows_new_timeline() {
    let bins = pg();
    let primary = Cluster::init_with(&bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    primary.start().unwrap();
    write_rows(&primary, 50);

    let standby = start_standby(&primary);

    let mut p = Pgark::start(&server_yaml("replica", &standby.conninfo(&standby.superuser), "synchronous: false"));
    p.wait_streaming("replica");
    for _ in 0..3 {
        write_rows(&primary, 200);
        primary.psql("SELECT pg_switch_wal()").unwrap();
    }
    write_rows(&primary, 30);
    let target = current_flush_lsn(&primary);
    wait_until(Duration::from_secs(60), "standby to replay", || {
        current_flush_lsn(&standby) >= target
    });
    p.wait_flushed("replica", target);

    standby.promote().unwrap();
    primary.stop("fast").unwrap();
    for _ in 0..3 {
        write_rows(&standby, 200);
        standby.psql("SELECT pg_switch_wal()").unwrap();
    }
    write_rows(&standby, 30);
    let target = current_flush_lsn(&standby);
    wait_until(Duration::from_secs(60), "pgark on timeline 2", || {
        p.server("replica").and_then(|s| s.timeline).is_some_and(|t| t.0 == 2)
    });
    p.wait_flushed("replica", target);
    assert_eq!(p.term(), 0);

    let wal = p.wal_dir("replica");
    let history = std::fs::read(wal.join("00000002.history")).expect("history file stored");
    assert_eq!(history, std::fs::read(standby.pg_wal().join("00000002.history")).unwrap());
    let seg = seg_size(&standby);
    let compared = assert_byte_exact(&wal, &standby.pg_wal(), seg);
    assert!(compared >= 5, "only {compared} segments compared");
    assert_no_gap(&wal, seg);
    let segs = completed_segments(&wal, seg);
    assert!(
        segs.iter().any(|(_, w)| w.tli.0 == 1) && segs.iter().any(|(_, w)| w.tli.0 == 2),
        "{segs:?}"
    );
    // No gap across the switch: timeline 2 begins at the segment holding the switchpoint, and
    // timeline 1 is complete up to it (its last segment kept as .partial, or complete).
    let h = pgark::pg::TimelineHistory::parse(&history).unwrap();
    let switch = h.switchpoint_of(pgark::pg::TimelineId(1)).unwrap();
    let switch_seg = seg.segno(switch);
    let first_tli2 = segs.iter().filter(|(_, w)| w.tli.0 == 2).map(|(_, w)| w.segno).min().unwrap();
    assert_eq!(first_tli2, switch_seg, "timeline 2 does not start at the switchpoint's segment");
    let last_tli1 = segs.iter().filter(|(_, w)| w.tli.0 == 1).map(|(_, w)| w.segno).max().unwrap();
    let partial_tli1 = wal.join(format!(
        "{}.partial",
        pgark::pg::WalFileName::new(pgark::pg::TimelineId(1), switch_seg).format(seg)
    ));
    assert!(
        last_tli1.0 + 1 == switch_seg.0 || (last_tli1 == switch_seg),
        "timeline 1 stops at {last_tli1:?}, switch in {switch_seg:?}"
    );
    assert!(
        partial_tli1.exists() || last_tli1 == switch_seg,
        "timeline 1's last segment was not kept"
    );
    assert!(p.log_text().contains("timeline switch"));
}

/// Failover to a standby that was behind: the catalog holds old-timeline WAL past the new
/// timeline's switchpoint. pgark continues on the new timeline from the switchpoint.
#[test]
fn failover_to_a_lagging_standby_continues_from_the_switchpoint() {
    let bins = pg();
    let primary = Cluster::init_with(&bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    primary.start().unwrap();
    write_rows(&primary, 50);
    let standby = start_standby(&primary);

    let mut p = Pgark::start(&server_yaml("main", &primary.conninfo(&primary.superuser), "synchronous: false"));
    p.wait_streaming("main");
    write_rows(&primary, 200);
    primary.psql("SELECT pg_switch_wal()").unwrap();
    let replayed = current_flush_lsn(&primary);
    wait_until(Duration::from_secs(60), "standby to replay", || {
        current_flush_lsn(&standby) >= replayed
    });
    // The standby stops; the primary goes on and pgark stores WAL the standby never sees.
    standby.stop("fast").unwrap();
    for _ in 0..2 {
        write_rows(&primary, 300);
        primary.psql("SELECT pg_switch_wal()").unwrap();
    }
    let abandoned = current_flush_lsn(&primary);
    p.wait_flushed("main", abandoned);
    primary.stop("immediate").unwrap();
    // Failover to the lagging standby, and point pgark at it.
    standby.start().unwrap();
    standby.promote().unwrap();
    wait_until(Duration::from_secs(30), "promotion", || {
        standby.psql("SELECT pg_is_in_recovery()").is_ok_and(|r| r == "f")
    });
    p.rewrite_servers(&server_yaml("main", &standby.conninfo(&standby.superuser), "synchronous: false"));
    p.hup();
    for _ in 0..2 {
        write_rows(&standby, 200);
        standby.psql("SELECT pg_switch_wal()").unwrap();
    }
    let target = current_flush_lsn(&standby);
    wait_until(Duration::from_secs(60), "pgark on timeline 2", || {
        p.server("main").and_then(|s| s.timeline).is_some_and(|t| t.0 == 2)
    });
    p.wait_flushed("main", target);
    assert_eq!(p.term(), 0);
    assert!(
        p.log_text().contains("abandoned"),
        "the branch was not reported:\n{}",
        tail(&p.log_text())
    );
    let wal = p.wal_dir("main");
    let history = std::fs::read(wal.join("00000002.history")).expect("history file stored");
    let switch = pgark::pg::TimelineHistory::parse(&history)
        .unwrap()
        .switchpoint_of(pgark::pg::TimelineId(1))
        .unwrap();
    assert!(
        switch < abandoned,
        "the test did not create an abandoned branch ({switch} >= {abandoned})"
    );
    let seg = seg_size(&standby);
    let segs = completed_segments(&wal, seg);
    let first_tli2 = segs
        .iter()
        .filter(|(_, w)| w.tli.0 == 2)
        .map(|(_, w)| w.segno)
        .min()
        .expect("timeline 2 segments");
    assert_eq!(first_tli2, seg.segno(switch), "timeline 2 must start at the switchpoint's segment");
    // Timeline 2 matches the new primary byte for byte; the abandoned timeline-1 WAL is kept.
    let tli2_compared = segs
        .iter()
        .filter(|(_, w)| w.tli.0 == 2)
        .filter(|(name, _)| {
            let ours = stored_segment(&wal, name).unwrap();
            std::fs::read(standby.pg_wal().join(name))
                .map(|theirs| assert_eq!(ours, theirs, "{name} differs"))
                .is_ok()
        })
        .count();
    assert!(tli2_compared >= 1);
    assert!(
        segs.iter().any(|(_, w)| w.tli.0 == 1 && w.segno > seg.segno(switch)),
        "abandoned WAL should stay in the catalog"
    );
}
