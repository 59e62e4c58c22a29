//! Network faults between pgark and a real PostgreSQL, through the TCP fault proxy: a stall in
//! every phase of a replication session, reset, close, one direction cut, trickle; the base
//! backup stalled before, during and at the end of its stream; the monitoring connection
//! stalled. Each must be detected within its timeout and logged with the phase, streaming must
//! come back by itself, the catalog must stay byte-exact and every acknowledged commit durable,
//! and SIGTERM must end pgark within 5 s while the network is stalled.

use crate::support::faultproxy::{self, Fault, FaultProxy, Trigger};
use crate::support::*;
use pgark::service::status::ConnState;
use std::time::{Duration, Instant};

/// Waits until the log holds `needle` in a line written after `from` (a byte offset): returns
/// how long that took.
fn wait_log(p: &Pgark, from: usize, needle: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let log = p.log_text();
        if log.get(from..).is_some_and(|l| l.contains(needle)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no {needle:?} in the log within {limit:?}:\n{}",
            tail(log.get(from..).unwrap_or(""))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn proxied(c: &Cluster, proxy: &FaultProxy) -> String {
    proxied_with(c, proxy, "disable")
}

/// With `sslmode=prefer` the server (no TLS configured) answers the SSLRequest with `N`.
fn proxied_with(c: &Cluster, proxy: &FaultProxy, sslmode: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={} sslmode={sslmode} connect_timeout=3",
        proxy.port, c.superuser
    )
}

const RECEIVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Stalls the network (both ways, sockets left open) at each phase of a replication session,
/// with pgark as the synchronous standby and writers committing all along; then reset, close,
/// one-way cuts and trickle while streaming. Every stall is found within receiver_timeout (or
/// connect_timeout) with its phase in the log; SIGTERM while stalled ends pgark within 5 s;
/// streaming resumes by itself; at the end the catalog is byte-exact and holds every
/// acknowledged commit.
#[test]
fn receiver_detects_every_network_fault_and_loses_nothing() {
    let bins = pg();
    let c = Cluster::init_with(
        &bins,
        &["synchronous_standby_names = 'pgark'", "wal_sender_timeout = 5s"],
        &["--wal-segsize=1"],
    )
    .unwrap();
    c.start().unwrap();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", c.port));
    let mut p = Pgark::start(&server_yaml(
        "main",
        &proxied_with(&c, &proxy, "prefer"),
        "synchronous: true\nreceiver_timeout: 3s\nmonitor_interval: 1s",
    ));
    p.wait_streaming("main");
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let backup = c.base_dir().join("backup");
    pg_basebackup(&c, &backup, &["-X", "none"]);
    let writers = Writers::start(&c, 4);

    // The slot step: from PostgreSQL 15 the receiver looks its slot up (READ_REPLICATION_SLOT)
    // and creates it only when missing; before 15 it always sends CREATE_REPLICATION_SLOT.
    let slot_step = if c.bins.major >= 15 {
        "READ_REPLICATION_SLOT"
    } else {
        "CREATE_REPLICATION_SLOT"
    };
    let slot_phase = format!("phase: {slot_step}");
    let phases: Vec<(&str, Trigger)> = vec![
        ("phase: streaming", Trigger::Now),
        ("phase: TLS negotiation", Trigger::ClientBytes(faultproxy::SSL_REQUEST.to_vec())),
        ("connect_timeout", Trigger::ClientSends("replication\0true".into())),
        ("phase: IDENTIFY_SYSTEM", Trigger::ClientSends("IDENTIFY_SYSTEM".into())),
        ("phase: SHOW wal_segment_size", Trigger::ClientSends("SHOW wal_segment_size".into())),
        (slot_phase.as_str(), Trigger::ClientSends(slot_step.into())),
        ("phase: START_REPLICATION", Trigger::ClientSends("START_REPLICATION".into())),
    ];
    for (i, (phase, trigger)) in phases.into_iter().enumerate() {
        let mark = p.log_text().len();
        let fired_before = proxy.fired();
        if trigger == Trigger::Now {
            proxy.arm(Trigger::Now, Fault::Stall);
        } else {
            proxy.arm(trigger.clone(), Fault::Stall);
            // Make pgark reconnect, so that the next session meets the armed stall.
            proxy.arm(Trigger::Now, Fault::Reset);
            wait_until(Duration::from_secs(20), "the armed stall to fire", || {
                proxy.fired() >= fired_before + 2
            });
        }
        let took = wait_log(&p, mark, phase, Duration::from_secs(15));
        eprintln!("stall in {phase:?} detected after {took:?}");
        assert!(took <= RECEIVER_TIMEOUT + Duration::from_secs(3), "{phase}: found after {took:?}");
        if i % 3 == 0 {
            // SIGTERM while the network is stalled (new connections stall too).
            proxy.down();
            let (code, stop) = p.term_timed();
            assert_eq!(code, 0, "{phase}: exit code after SIGTERM\n{}", tail(&p.log_text()));
            assert!(stop < Duration::from_secs(5), "{phase}: SIGTERM took {stop:?}");
            eprintln!("SIGTERM while stalled in {phase:?}: stopped in {stop:?}");
            proxy.heal();
            p.spawn();
        } else {
            proxy.heal();
        }
        p.wait_streaming("main");
    }

    // Other faults while streaming.
    for (fault, sign) in [
        (Fault::Reset, "replication session ended"),
        (Fault::Close, "replication session ended"),
        (Fault::CutToClient, "receiver_timeout"),
        (Fault::CutToServer, "replication session ended"),
        (Fault::Trickle, "receiver_timeout"),
    ] {
        let mark = p.log_text().len();
        let reconnects = p.server("main").map(|s| s.reconnects).unwrap_or(0);
        // Time passes on purpose: the new session streams a moment before the next fault.
        std::thread::sleep(Duration::from_millis(500));
        proxy.arm(Trigger::Now, fault);
        let took = wait_log(&p, mark, sign, Duration::from_secs(20));
        eprintln!("{fault:?} while streaming: detected after {took:?}");
        proxy.heal();
        wait_until(Duration::from_secs(30), "a new session", || {
            p.server("main")
                .is_some_and(|s| s.reconnects > reconnects && s.state == ConnState::Streaming)
        });
    }

    // Writers kept committing through all of it (each commit waited for pgark's flush).
    let before = writers.count();
    wait_until(Duration::from_secs(30), "commits after the last fault", || {
        writers.count() > before + 20
    });
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    let seg = seg_size(&c);
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared >= 1, "nothing compared");
    assert_no_gap(&p.wal_dir("main"), seg);
    // The RPO=0 proof: the primary dies, only the catalog's WAL is left.
    c.kill9().unwrap();
    let acked = writers.finish();
    p.kill9();
    assert!(acked.len() > 100, "only {} commits", acked.len());
    let r = recover_from_catalog(&bins, &backup, &p.wal_dir("main"), seg);
    assert_all_acked_present(&r, &acked, "after every network fault");
    eprintln!("all {} acknowledged commits recovered from the catalog", acked.len());
}

/// The end-of-timeline exchange (CopyDone, the next timeline's row) stalled: pgark, streaming
/// from a standby that is promoted, finds it within receiver_timeout and then follows the new
/// timeline with no gap. And a first contact with a server on timeline 2 stalled at
/// TIMELINE_HISTORY and (PostgreSQL 15+) READ_REPLICATION_SLOT.
#[test]
fn stalls_at_the_end_of_a_timeline_and_at_first_contact() {
    let bins = pg();
    let primary = Cluster::init_with(&bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    primary.start().unwrap();
    let standby = start_standby(&primary);
    standby.append_conf("wal_sender_timeout = 5s").unwrap();
    standby.reload().unwrap();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", standby.port));
    let p = Pgark::start(&server_yaml(
        "replica",
        &proxied(&standby, &proxy),
        "synchronous: false\nreceiver_timeout: 3s",
    ));
    p.wait_streaming("replica");
    write_rows(&primary, 100);
    primary.psql("SELECT pg_switch_wal()").unwrap();
    let mark = p.log_text().len();
    proxy.arm(Trigger::ServerMessage(b'c'), Fault::Stall);
    standby.promote().unwrap();
    let took = wait_log(&p, mark, "phase: end-of-timeline exchange", Duration::from_secs(20));
    eprintln!("end-of-timeline stall detected after {took:?}");
    proxy.heal();
    wait_until(Duration::from_secs(60), "pgark on timeline 2", || {
        p.server("replica").and_then(|s| s.timeline).is_some_and(|t| t.0 == 2)
    });
    write_rows(&standby, 100);
    standby.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("replica", current_flush_lsn(&standby));
    let seg = seg_size(&standby);
    assert_no_gap(&p.wal_dir("replica"), seg);
    assert!(p.wal_dir("replica").join("00000002.history").exists());

    // First contact with the (now timeline 2) server: TIMELINE_HISTORY, then
    // READ_REPLICATION_SLOT (15+: the catalog is empty) stalled.
    let mut triggers = vec!["TIMELINE_HISTORY"];
    if bins.major >= 15 {
        triggers.push("READ_REPLICATION_SLOT");
    }
    for command in triggers {
        let proxy = FaultProxy::start(&format!("127.0.0.1:{}", standby.port));
        proxy.arm(Trigger::ClientSends(command.into()), Fault::Stall);
        standby
            .psql("SELECT pg_create_physical_replication_slot('pgark_fresh', true)")
            .unwrap();
        let fresh = Pgark::start(&format!(
            "  fresh:\n    conninfo: \"{}\"\n    slot: pgark_fresh\n    status_interval: 1s\n    synchronous: false\n    receiver_timeout: 3s\n",
            proxied(&standby, &proxy)
        ));
        let took = wait_log(&fresh, 0, &format!("phase: {command}"), Duration::from_secs(20));
        eprintln!("{command} stall detected after {took:?}");
        proxy.heal();
        fresh.wait_streaming("fresh");
        drop(fresh);
        wait_until(
            Duration::from_secs(20),
            "the killed daemon's walsender to let go of its slot",
            || {
                standby
                    .psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pgark_fresh'")
                    .is_ok_and(|a| a == "f")
            },
        );
        standby.psql("SELECT pg_drop_replication_slot('pgark_fresh')").unwrap();
    }
}

/// `pgark backup` through a stalled network: before the stream (the BASE_BACKUP command never
/// answered), during it, and at its end (after the server's CopyDone). Each fails within
/// backup_stream_timeout naming the phase, publishes nothing and leaves nothing behind; SIGTERM
/// while stalled ends it within 5 s; with the network back a backup succeeds.
#[test]
fn base_backup_through_a_stalled_network() {
    let bins = pg();
    let c = Cluster::init(&bins, &[]).unwrap();
    c.start().unwrap();
    write_rows(&c, 2000);
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", c.port));
    let cat = Catalog::new(&server_yaml(
        "main",
        &proxied(&c, &proxy),
        "backup_stream_timeout: 3s\nbackup_checkpoint: fast",
    ));
    let listed = |cat: &Catalog| -> usize {
        let o = pgark(&cat.config, &["list-backups", "main", "--json"]);
        serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout)
            .map(|v| v.len())
            .unwrap_or(0)
    };
    for (i, (what, trigger, phase)) in [
        (
            "before the stream",
            Trigger::ClientSends("BASE_BACKUP".into()),
            "phase: BASE_BACKUP: waiting",
        ),
        ("during the stream", Trigger::ServerBytes(3 << 20), "phase: BASE_BACKUP stream"),
        ("at its end", Trigger::ServerMessage(b'c'), "phase: BASE_BACKUP stream"),
    ]
    .into_iter()
    .enumerate()
    {
        proxy.arm(trigger, Fault::Stall);
        let start = Instant::now();
        let o = pgark(&cat.config, &["backup", "main"]);
        let took = start.elapsed();
        let out = text(&o);
        eprintln!("backup stalled {what}: failed after {took:?}");
        assert_eq!(o.status.code(), Some(1), "{what}: {out}");
        assert!(out.contains(phase), "{what}: the error does not name {phase:?}: {out}");
        assert!(took < Duration::from_secs(15), "{what}: took {took:?}");
        assert_eq!(listed(&cat), 0, "{what}: a failed backup is listed");
        assert_eq!(proxy.fired(), i + 1, "{what}: the fault did not fire");
        proxy.heal();
    }
    let chunks = cat.catalog.join("main/chunks");
    let leftover = files_under(&chunks).len();
    assert_eq!(leftover, 0, "failed backups left {leftover} chunks");

    // SIGTERM while the stream is stalled.
    proxy.arm(Trigger::ServerBytes(3 << 20), Fault::Stall);
    let mut child = std::process::Command::new(pgark_bin())
        .args(["backup", "--config"])
        .arg(&cat.config)
        .arg("main")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "the stall", || proxy.fired() == 4);
    // Time passes on purpose: pgark sits in the stalled stream a moment before the signal.
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(5), "pgark backup after SIGTERM");
    eprintln!("pgark backup stopped {:?} after SIGTERM ({status})", start.elapsed());
    assert!(!status.success());
    assert_eq!(listed(&cat), 0);
    proxy.heal();
    let o = pgark(&cat.config, &["backup", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(listed(&cat), 1);
}

/// The monitoring connection stalled mid-query: reported in status (with the phase) within
/// twice monitor_interval, streaming undisturbed, and back once the network heals.
#[test]
fn stalled_monitoring_connection_is_reported_and_streaming_goes_on() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", c.port));
    // Streaming goes directly; only the monitoring connection passes the proxy.
    let p = Pgark::start(&server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        &format!(
            "synchronous: false\nmonitor_interval: 1s\nmonitor_conninfo: \"{} dbname=postgres\"",
            proxied(&c, &proxy)
        ),
    ));
    p.wait_streaming("main");
    wait_until(Duration::from_secs(20), "a monitoring round", || {
        p.server("main").is_some_and(|s| s.monitor.is_some())
    });
    proxy.arm(Trigger::ClientSends("pg_is_in_recovery".into()), Fault::Stall);
    let start = Instant::now();
    wait_until(Duration::from_secs(15), "the monitoring error", || {
        p.server("main")
            .and_then(|s| s.monitor_error)
            .is_some_and(|e| e.contains("timed out") && e.contains("phase: SELECT"))
    });
    eprintln!("monitoring stall reported after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(8));
    let s = p.server("main").unwrap();
    assert_eq!(s.state, ConnState::Streaming, "streaming was disturbed");
    proxy.heal();
    wait_until(Duration::from_secs(20), "monitoring to recover", || {
        p.server("main").is_some_and(|s| s.monitor_error.is_none())
    });
}
