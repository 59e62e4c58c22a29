//! Byte-exactness across segment switches, on PostgreSQL 15 and every major of the matrix.

use crate::support::*;
use std::time::Duration;

fn byte_exact_on(bins: &PgBinaries) {
    eprintln!("byte-exact test on PostgreSQL {} ({})", bins.major, bins.bindir.display());
    let c = Cluster::init_with(bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true"));
    p.wait_streaming("main");
    for _ in 0..6 {
        write_rows(&c, 300);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    write_rows(&c, 50);
    let target = current_flush_lsn(&c);
    p.wait_flushed("main", target);
    let mut p = p;
    assert_eq!(p.term(), 0, "SIGTERM must exit 0");
    let seg = seg_size(&c);
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared >= 5, "only {compared} segments compared on PostgreSQL {}", bins.major);
    assert_no_gap(&p.wal_dir("main"), seg);
    // Every archived segment carries a checksum that verifies (decompression checks it).
    let zst = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".zst"))
        .count();
    assert!(zst >= 5, "segments were not compressed: {zst}");
}

#[test]
fn byte_exact_pg15() {
    byte_exact_on(&pg());
}

#[test]
fn byte_exact_version_matrix() {
    for bins in matrix() {
        byte_exact_on(&bins);
    }
}

#[test]
fn uncompressed_catalog_records_checksums() {
    let bins = pg();
    let c = Cluster::init_with(&bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let mut p = Pgark::start(&server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "compression: none\nsynchronous: false",
    ));
    p.wait_streaming("main");
    for _ in 0..3 {
        write_rows(&c, 200);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    p.wait_flushed("main", current_flush_lsn(&c));
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    assert!(assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg) >= 3);
    for (name, _) in completed_segments(&p.wal_dir("main"), seg) {
        let sum = std::fs::read_to_string(p.wal_dir("main").join(format!("{name}.sum"))).unwrap();
        let sum = pgark::catalog::segment_file::SegmentChecksum::from_sum_text(&sum).unwrap();
        let data = std::fs::read(p.wal_dir("main").join(&name)).unwrap();
        pgark::catalog::segment_file::verify(&data, sum).unwrap();
    }
}

/// Idle receivers sleep until WAL comes or their status update is due (here every 30 s); a
/// SIGTERM wakes them through their cancellation eventfd (`util::cancel_fd`), not a periodic
/// check. Twice: the daemon exits 0 in well under the 4 s after which it would abandon a
/// receiver, and none is abandoned.
#[test]
fn idle_receivers_wake_for_sigterm_at_once() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let ci = c.conninfo(&c.superuser);
    let servers = ["a", "b", "c"]
        .iter()
        .map(|n| format!("  {n}:\n    conninfo: \"{ci}\"\n    slot: pgark_{n}\n    synchronous: false\n    status_interval: 30s\n"))
        .collect::<String>();
    let mut p = Pgark::start(&servers);
    for round in 0..2 {
        for n in ["a", "b", "c"] {
            p.wait_streaming(n);
        }
        // Idle on purpose: every receiver is asleep in poll(2) when the signal comes.
        std::thread::sleep(Duration::from_secs(3));
        let (code, took) = p.term_timed();
        assert_eq!(code, 0, "round {round}: exit code\n{}", tail(&p.log_text()));
        assert!(took < Duration::from_secs(2), "round {round}: SIGTERM took {took:?}");
        assert!(
            !p.log_text().contains("did not stop in time"),
            "round {round}: a receiver was abandoned\n{}",
            tail(&p.log_text())
        );
        eprintln!("idle receivers: SIGTERM round {round} stopped in {took:?}");
        if round == 0 {
            p.spawn();
        }
    }
}

/// The nice value in a `/proc/.../stat` text: after the ")" that ends the name, state is field
/// 3 and nice field 19.
fn nice_in(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16)?.parse().ok())
}

/// Each thread of `pid` whose name starts with `prefix`: (name, nice value).
fn thread_nice(pid: i32, prefix: &str) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let (true, Some(n)) = (comm.starts_with(prefix), nice_in(&stat)) {
            out.push((comm.trim().to_string(), n));
        }
    }
    out
}

/// Background work yields the CPU to a synchronous acknowledgement (`util::thread_priority`):
/// every archiver, and the receiver of a server that does not wait for pgark, run 10 nice steps
/// down; the receiver of a server that names pgark stays at pgark's priority. When the second
/// server starts naming pgark too, its receiver comes back up (as root, or with LimitNICE), or
/// says in the log why it cannot.
#[test]
fn background_work_runs_at_a_lower_cpu_priority() {
    let c = Cluster::init(&pg(), &["synchronous_standby_names = 'fg'"]).unwrap();
    c.start().unwrap();
    let ci = c.conninfo(&c.superuser);
    let servers = server_yaml(
        "fg",
        &format!("{ci} application_name=fg"),
        "synchronous: true\nmonitor_interval: 1s",
    ) + &server_yaml(
        "bg",
        &format!("{ci} application_name=bg"),
        "synchronous: false\nmonitor_interval: 1s",
    );
    let p = Pgark::start(&servers);
    p.wait_streaming("fg");
    p.wait_streaming("bg");
    // The main thread's: what pgark was started at.
    let base = nice_in(&std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap()).unwrap();
    let nice_of = |name: &str| thread_nice(p.pid(), name).first().map(|t| t.1);
    // Ten steps down, capped at 19 (when the tests themselves run under `nice`).
    let background = (base + 10).min(19);
    // A receiver follows its role at its next WAL message: keep WAL coming.
    wait_until(Duration::from_secs(30), "recv-bg at background priority", || {
        write_rows(&c, 20);
        nice_of("recv-bg") == Some(background)
    });
    assert_eq!(
        nice_of("recv-fg"),
        Some(base),
        "the synchronous server's receiver: {:?}",
        thread_nice(p.pid(), "")
    );
    let archivers = thread_nice(p.pid(), "archiver-");
    assert_eq!(archivers.len(), 2, "{archivers:?}");
    assert!(archivers.iter().all(|(_, n)| *n == background), "archivers: {archivers:?}");

    // Now bg's commits may wait for pgark too: its receiver comes back to pgark's priority.
    c.psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (fg, bg)'").unwrap();
    c.psql("SELECT pg_reload_conf()").unwrap();
    // Raising it back needs CAP_SYS_NICE or an RLIMIT_NICE that allows it (root in a container
    // may lack the first, a user may have the second): either it comes back, or it says why not.
    wait_until(Duration::from_secs(30), "recv-bg back in the foreground (or the warning)", || {
        write_rows(&c, 20);
        nice_of("recv-bg") == Some(base) || p.log_text().contains("cannot raise its CPU priority back")
    });
    assert_eq!(nice_of("recv-fg"), Some(base));
}
