//! Durability under process death: SIGKILL of the primary (RPO=0 proof), SIGKILL of pgark under
//! load, a cut connection and a server restart. Each ends by proving nothing acknowledged was lost.

use crate::support::faultproxy::{Fault, FaultProxy, Trigger};
use crate::support::*;
use pgark::pg::WalSegSize;
use std::process::Command;
use std::time::Duration;

fn rpo_round(kill_after: Duration) {
    let bins = pg();
    let (c, mut p) = sync_primary_with_pgark(&["synchronous_commit = on"]);
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let backup = c.base_dir().join("backup");
    pg_basebackup(&c, &backup, &["-X", "none"]);
    let writers = Writers::start(&c, 8);
    // Time passes on purpose: the kill lands at a different moment of the load each round.
    std::thread::sleep(kill_after);
    eprintln!(
        "rpo: killing the primary after {kill_after:?} ({} commits acknowledged so far)",
        writers.count()
    );
    c.kill9().unwrap();
    let acked = writers.finish();
    eprintln!("rpo: writers stopped with {} acknowledged commits", acked.len());
    // pgark dies too: only what it fsynced before acknowledging may count.
    p.kill9();
    assert!(acked.len() > 20, "too few commits before the kill: {}", acked.len());
    let seg = seg_size_offline(&p);
    let r = recover_from_catalog(&bins, &backup, &p.wal_dir("main"), seg);
    assert_all_acked_present(&r, &acked, &format!("after SIGKILL of the primary at {kill_after:?}"));
    eprintln!(
        "RPO=0 round (kill after {kill_after:?}): all {} acknowledged commits recovered from the catalog",
        acked.len()
    );
}

fn seg_size_offline(p: &Pgark) -> WalSegSize {
    let store = pgark::catalog::store::LocalStore::new(&p.catalog);
    let st = pgark::catalog::state::load(&store, "main").unwrap().unwrap();
    WalSegSize::new(st.wal_segment_size).unwrap()
}

#[test]
fn rpo_zero_sigkill_primary_several_kill_points() {
    for ms in [600u64, 1700, 3100] {
        rpo_round(Duration::from_millis(ms));
    }
}

/// A receiver idle for 10 s gives back its write stage (1 MiB to 64 KiB) and read buffer; the
/// load that follows grows them again. SIGKILL of the primary and of pgark in the middle of that
/// load: every acknowledged commit is in the catalog.
#[test]
fn idle_release_then_load_then_sigkill_loses_nothing() {
    let bins = pg();
    let (c, mut p) = sync_primary_with_pgark(&["synchronous_commit = on"]);
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let backup = c.base_dir().join("backup");
    pg_basebackup(&c, &backup, &["-X", "none"]);
    // Long enough for a 10 s window without WAL (the bgwriter logs a standby snapshot once
    // more after the backup, then stays quiet).
    std::thread::sleep(Duration::from_secs(22));
    let writers = Writers::start(&c, 8);
    std::thread::sleep(Duration::from_millis(1500));
    c.kill9().unwrap();
    let acked = writers.finish();
    p.kill9();
    assert!(acked.len() > 20, "too few commits before the kill: {}", acked.len());
    assert!(
        p.log_text().contains("gave back its write buffers"),
        "the receiver never released its buffers while idle\n{}",
        p.log_text()
    );
    let seg = seg_size_offline(&p);
    let r = recover_from_catalog(&bins, &backup, &p.wal_dir("main"), seg);
    assert_all_acked_present(&r, &acked, "after an idle release, then SIGKILL under load");
    eprintln!(
        "idle release, then {} acknowledged commits: all recovered from the catalog",
        acked.len()
    );
}

#[test]
fn sigkill_pgark_under_load_resumes_without_gap() {
    let (c, mut p) = sync_primary_with_pgark(&["wal_keep_size = 1GB"]);
    let writers = Writers::start(&c, 4);
    for round in 0..3 {
        // Time passes on purpose: each round kills pgark at another moment of the load.
        std::thread::sleep(Duration::from_millis(1200 + round * 700));
        p.kill9();
        let before = writers.count();
        // On purpose too: 800 ms in which no commit may be acknowledged.
        std::thread::sleep(Duration::from_millis(800));
        // Synchronous commit: with pgark gone, commits block on the primary.
        assert!(writers.count() <= before + 8, "commits went on without the synchronous standby");
        p.spawn();
        p.wait_streaming("main");
        let start = std::time::Instant::now();
        while writers.count() <= before + 20 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "commits did not continue after pgark restarted ({} acked, {before} before the kill)\nreplication: {}\nwaiting: {}",
                writers.count(),
                c.psql(
                    "SELECT application_name, state, sent_lsn, flush_lsn, sync_state, pg_current_wal_flush_lsn() FROM pg_stat_replication"
                )
                .unwrap_or_default(),
                c.psql("SELECT wait_event, left(query, 40) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let acked = writers.finish();
    // A slow machine may write less than three segments during the rounds; make sure the
    // comparison below always spans segment boundaries crossed after the restarts.
    for _ in 0..2 {
        c.psql("CREATE TABLE IF NOT EXISTS switch_marker (i int); INSERT INTO switch_marker VALUES (1); SELECT pg_switch_wal()")
            .unwrap();
    }
    let target = current_flush_lsn(&c);
    p.wait_flushed("main", target);
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared >= 3, "only {compared} segments compared");
    assert_no_gap(&p.wal_dir("main"), seg);
    // No duplicates: one final form per segment, at most one open partial per timeline.
    let partials = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    assert!(partials <= 1, "{partials} partial segments on one timeline");
    let count: usize = c.psql("SELECT count(*) FROM acked").unwrap().parse().unwrap();
    assert!(count >= acked.len());
}

#[test]
fn connection_cut_and_server_restart_continue_without_gap() {
    let bins = pg();
    let c = Cluster::init_with(&bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", c.port));
    let conninfo = format!("host=127.0.0.1 port={} user={} sslmode=disable", proxy.port, c.superuser);
    let mut p = Pgark::start(&server_yaml("main", &conninfo, "synchronous: true"));
    p.wait_streaming("main");
    for _ in 0..2 {
        write_rows(&c, 400);
        // Cut: both sockets of every open connection shut down.
        proxy.arm(Trigger::Now, Fault::Close);
        write_rows(&c, 400);
        c.psql("SELECT pg_switch_wal()").unwrap();
        p.wait_streaming("main");
    }
    wait_until(Duration::from_secs(30), "reconnects to be counted", || {
        p.server("main").is_some_and(|s| s.reconnects >= 2)
    });
    write_rows(&c, 100);
    // WAL written after the second cut is flushed: pgark streams again (not in its backoff), so
    // the restart below ends a session and is counted as a shutdown.
    p.wait_flushed("main", current_flush_lsn(&c));
    c.stop("fast").unwrap();
    c.start().unwrap();
    write_rows(&c, 300);
    c.psql("SELECT pg_switch_wal()").unwrap();
    write_rows(&c, 50);
    p.wait_streaming("main");
    p.wait_flushed("main", current_flush_lsn(&c));
    // The disconnects are counted by reason: the cuts as network, the restart as a shutdown.
    let metrics = p.metrics_text();
    let count = |reason: &str| -> f64 {
        metric_value(&metrics, &format!("pgark_disconnects_total{{server=\"main\",reason=\"{reason}\"}}")).unwrap_or(0.0)
    };
    assert!(count("network") + count("timeout") >= 2.0, "cuts not counted:\n{metrics}");
    assert!(count("server_shutdown") >= 1.0, "the restart not counted:\n{metrics}");
    assert_eq!(
        metric_value(&metrics, "pgark_connection_state{server=\"main\",state=\"streaming\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared >= 3, "only {compared} segments compared");
    assert_no_gap(&p.wal_dir("main"), seg);
    assert!(p.log_text().contains("replication session ended"), "disconnects were not logged");
}

#[test]
fn disk_full_holds_back_acknowledgement_and_recovers() {
    let Some(fs) = SmallFs::mount("24m") else {
        eprintln!("SKIP disk_full_holds_back_acknowledgement_and_recovers: cannot mount a tmpfs here (needs root and mount permission)");
        return;
    };
    let (c, mut p) = sync_primary_with_pgark(&["wal_keep_size = 1GB"]);
    let catalog = fs.dir.path().join("catalog");
    // Point the daemon at the small filesystem.
    p.term();
    let text = std::fs::read_to_string(&p.config).unwrap();
    let text = text.replace(
        &format!("catalog: {}", p.catalog.display()),
        &format!("catalog: {}", catalog.display()),
    );
    std::fs::write(&p.config, text).unwrap();
    p.catalog = catalog.clone();
    p.spawn();
    p.wait_streaming("main");
    let writers = Writers::start(&c, 2);
    wait_until(Duration::from_secs(30), "some commits", || writers.count() > 50);
    // Fill the filesystem: the next segment boundary cannot get a file.
    let ballast = fs.dir.path().join("ballast");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", ballast.display()))
        .stderr(std::process::Stdio::null())
        .status();
    wait_until(Duration::from_secs(60), "the disk-full error in status", || {
        p.server("main")
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("No space left"))
    });
    assert!(
        p.metric("pgark_wal_store_errors_total{server=\"main\"}").is_some_and(|v| v >= 1.0),
        "store errors not in /metrics:\n{}",
        p.metrics_text()
    );
    // While the catalog cannot store WAL, nothing more is acknowledged: commits stall. Time
    // passes on purpose: 1.5 s for commits already on their way, then 2 s without new ones.
    std::thread::sleep(Duration::from_millis(1500));
    let stalled = writers.count();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        writers.count() <= stalled + 4,
        "commits were acknowledged while the catalog was full ({stalled} -> {})",
        writers.count()
    );
    // Space returns: pgark carries on by itself.
    std::fs::remove_file(&ballast).unwrap();
    wait_until(Duration::from_secs(60), "commits to resume after space returned", || {
        writers.count() > stalled + 50
    });
    let acked = writers.finish();
    p.wait_flushed("main", current_flush_lsn(&c));
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    assert!(assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg) >= 1);
    assert_no_gap(&p.wal_dir("main"), seg);
    let leftovers: Vec<_> = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "half-written files left: {leftovers:?}");
    let count: usize = c.psql("SELECT count(*) FROM acked").unwrap().parse().unwrap();
    assert!(count >= acked.len());
}

/// Synchronous first (`receiver::pacing`): commits run on a synchronous primary while a second,
/// asynchronous server (`synchronous: false`) streams WAL without a pause (pgbench -i, then pgbench). No window is quiet
/// for the pacer, so within `PROBE_EVERY` it probes: asynchronous WAL stops briefly to measure
/// the synchronous latency alone. The asynchronous WAL still arrives whole, byte for byte and
/// without a gap. Then SIGKILL of the synchronous primary and of pgark: every acknowledged commit
/// is in the catalog.
#[test]
fn paced_catch_up_beside_a_synchronous_server_loses_nothing() {
    let bins = pg();
    let s = Cluster::init_with(&bins, &["synchronous_commit = on"], &["--wal-segsize=1"]).unwrap();
    s.start().unwrap();
    s.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let backup = s.base_dir().join("backup");
    pg_basebackup(&s, &backup, &["-X", "none"]);
    s.psql("ALTER SYSTEM SET synchronous_standby_names = 'pgark'").unwrap();
    s.reload().unwrap();
    let bulk = Cluster::init(&bins, &["max_wal_size = 2GB"]).unwrap();
    bulk.start().unwrap();

    let servers = server_yaml("main", &s.conninfo(&s.superuser), "synchronous: true")
        + &server_yaml("bulk", &bulk.conninfo(&bulk.superuser), "synchronous: false");
    let mut p = Pgark::start(&servers);
    p.wait_streaming("main");
    p.wait_streaming("bulk");
    let writers = Writers::start(&s, 4);
    pgbench_init(&bulk, 10);
    let mut load = pgbench(&bulk, &["-c", "2", "-T", "60"]);
    p.wait_metric(
        "pgark_async_pacing_probes_total",
        "a probe while bulk streams without a pause beside the synchronous main",
        |v| v >= 1.0,
    );
    let _ = load.kill();
    let _ = load.wait();
    bulk.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("bulk", current_flush_lsn(&bulk));
    let before = writers.count();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(writers.count() > before, "commits stopped");
    s.kill9().unwrap();
    let acked = writers.finish();
    p.kill9();
    assert!(acked.len() > 20, "too few commits before the kill: {}", acked.len());

    let bulk_seg = seg_size(&bulk);
    let compared = assert_byte_exact(&p.wal_dir("bulk"), &bulk.pg_wal(), bulk_seg);
    assert!(compared >= 5, "only {compared} of bulk's segments compared");
    assert_no_gap(&p.wal_dir("bulk"), bulk_seg);
    let r = recover_from_catalog(&bins, &backup, &p.wal_dir("main"), seg_size_offline(&p));
    assert_all_acked_present(&r, &acked, "after a paced catch-up beside the synchronous server");
    eprintln!(
        "paced stream: {compared} segments of bulk byte-exact; {} acknowledged commits on main all recovered",
        acked.len()
    );
}

/// A server that names pgark in `synchronous_standby_names` while pgark is configured
/// `synchronous: false` (and reports every 10 s): once the monitor has seen it, pgark fsyncs and
/// reports at every commit, so commits do not wait for the status interval; it says so in its log
/// and in check; and a SIGKILL of the primary loses no acknowledged commit.
#[test]
fn a_server_waiting_for_an_asynchronous_pgark_gets_every_commit_acknowledged() {
    let bins = pg();
    let c = Cluster::init_with(&bins, &["synchronous_standby_names = 'pgark'"], &[]).unwrap();
    c.start().unwrap();
    let yaml = server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false\nmonitor_interval: 1s")
        .replace("status_interval: 1s", "status_interval: 10s");
    let mut p = Pgark::start(&yaml);
    p.wait_streaming("main");
    wait_until(Duration::from_secs(30), "pgark to see that the server waits for it", || {
        p.log_text().contains("names pgark in synchronous_standby_names, but")
    });
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let backup = c.base_dir().join("backup");
    pg_basebackup(&c, &backup, &["-X", "none"]);
    let seg = seg_size(&c);
    let writers = Writers::start(&c, 2);
    std::thread::sleep(Duration::from_secs(5));
    // Each commit would otherwise wait for the next status update (10 s).
    let n = writers.count();
    assert!(n > 100, "only {n} commits in 5 s: commits wait for pgark's status interval");
    let check = pgark(&p.config, &["check", "main", "--json"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("set synchronous: true"), "check does not warn: {}", text(&check));
    c.kill9().unwrap();
    let acked = writers.finish();
    p.kill9();
    let r = recover_from_catalog(&bins, &backup, &p.wal_dir("main"), seg);
    assert_all_acked_present(&r, &acked, "with synchronous: false named by the server");
    eprintln!(
        "{} commits acknowledged at every commit by a pgark configured asynchronous",
        acked.len()
    );
}
