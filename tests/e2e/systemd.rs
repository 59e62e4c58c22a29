//! systemd's notify protocol for real: a Unix datagram socket as NOTIFY_SOCKET, `pgark serve`
//! with WATCHDOG_USEC. READY=1, STATUS= lines, RELOADING=1 around a SIGHUP, periodic
//! WATCHDOG=1; a receiver stuck in fdatasync (the disk-fault shim's `hang`: the receiver thread
//! is alive but blocked, as on a dead disk) stops the pings, and they resume when it is
//! released; STOPPING=1 on SIGTERM. The shipped unit passes `systemd-analyze verify`.

use crate::support::faultproxy::FaultProxy;
use crate::support::faults::shim;
use crate::support::{pg, server_yaml, wait_until, write_rows, Cluster, Pgark};
use pgark::service::status::ConnState;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every datagram received, with its arrival time.
type Received = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(path: &Path) -> Received {
    let sock = UnixDatagram::bind(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            if Arc::strong_count(&g) == 1 {
                return;
            }
            if let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                g.lock().unwrap().push((Instant::now(), text));
            }
        }
    });
    got
}

/// Messages that contain `line` as one of their lines, since `since`.
fn count(got: &Received, line: &str, since: Instant) -> usize {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(t, m)| *t >= since && m.lines().any(|l| l == line))
        .count()
}

fn any_since(got: &Received, since: Instant, f: impl Fn(&str) -> bool) -> bool {
    got.lock().unwrap().iter().any(|(t, m)| *t >= since && m.lines().any(&f))
}

fn dump(got: &Received) -> String {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.replace('\n', " | "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn systemd_notify_ready_status_watchdog_and_stuck_receiver() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify.sock");
    let gate = dir.path().join("hang");
    let fault_log = dir.path().join("faults.log");
    let got = listen(&sock);
    let t0 = Instant::now();
    let env = [
        ("NOTIFY_SOCKET", sock.to_str().unwrap()),
        // 3 s: pings every 1.5 s; a streaming receiver silent for 3 s (three of its 1 s status
        // intervals) is stuck.
        ("WATCHDOG_USEC", "3000000"),
        ("LD_PRELOAD", shim().to_str().unwrap()),
        // Every fdatasync of the receiver's open segment hangs while the gate file exists.
        ("PGARK_FAULTS", "fsync:.partial$:1+:hang"),
        ("PGARK_FAULT_HANG_WHILE", gate.to_str().unwrap()),
        ("PGARK_FAULT_LOG", fault_log.to_str().unwrap()),
    ];
    let mut p = Pgark::start_full("", "", &server_yaml("main", &c.conninfo("postgres"), "synchronous: false"), &env);
    wait_until(Duration::from_secs(20), "READY=1", || count(&got, "READY=1", t0) >= 1);
    p.wait_streaming("main");
    wait_until(Duration::from_secs(20), "STATUS= streaming 1/1", || {
        any_since(&got, t0, |l| l.starts_with("STATUS=streaming 1/1 server"))
    });

    // Pings every 1.5 s while healthy.
    let t1 = Instant::now();
    write_rows(&c, 200);
    std::thread::sleep(Duration::from_secs(5));
    let pings = count(&got, "WATCHDOG=1", t1);
    assert!(pings >= 3, "{pings} watchdog pings in 5s\n{}", dump(&got));

    // A reload is announced.
    let t2 = Instant::now();
    p.hup();
    wait_until(Duration::from_secs(10), "RELOADING=1 then READY=1", || {
        count(&got, "RELOADING=1", t2) >= 1 && count(&got, "READY=1", t2) >= 1
    });
    assert!(any_since(&got, t2, |l| l.starts_with("MONOTONIC_USEC=")), "{}", dump(&got));

    // The receiver's next fdatasync hangs: its thread is alive but reports nothing.
    std::fs::write(&gate, b"").unwrap();
    write_rows(&c, 200);
    wait_until(Duration::from_secs(20), "the receiver's fdatasync to hang", || {
        std::fs::read_to_string(&fault_log).unwrap_or_default().contains("INJECT hang")
    });
    let hung = Instant::now();
    // Within the stall limit (3 s) and a ping interval (1.5 s) the pings stop.
    std::thread::sleep(Duration::from_secs(5));
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let late = count(&got, "WATCHDOG=1", quiet_from);
    assert_eq!(late, 0, "watchdog pings went on while the receiver was stuck\n{}", dump(&got));
    assert!(count(&got, "WATCHDOG=1", hung) <= 4, "{}", dump(&got));
    assert!(p.log_text().contains("holding back the systemd watchdog ping"), "{}", p.log_text());
    assert!(
        any_since(&got, hung, |l| l.starts_with("STATUS=watchdog: server main") && l.contains("stuck")),
        "{}",
        dump(&got)
    );

    // Released (the disk answers again): the receiver reports and the pings resume.
    std::fs::remove_file(&gate).unwrap();
    let released = Instant::now();
    wait_until(Duration::from_secs(10), "watchdog pings to resume", || {
        count(&got, "WATCHDOG=1", released) >= 2
    });

    let t3 = Instant::now();
    assert_eq!(p.term(), 0, "{}", p.log_text());
    wait_until(Duration::from_secs(5), "STOPPING=1", || count(&got, "STOPPING=1", t3) >= 1);
}

/// A network black hole is not a stuck pgark: the receiver times out and reconnects (and says
/// so), so the pings go on and systemd does not restart a pgark that could do nothing better.
#[test]
fn systemd_watchdog_keeps_pinging_through_a_network_blackhole() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", c.port));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify.sock");
    let got = listen(&sock);
    // Pings every 2 s; systemd would act after 4 s without one.
    let env = [("NOTIFY_SOCKET", sock.to_str().unwrap()), ("WATCHDOG_USEC", "4000000")];
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} sslmode=disable connect_timeout=3",
        proxy.port, c.superuser
    );
    let p = Pgark::start_full(
        "",
        "",
        &server_yaml("main", &conninfo, "synchronous: false\nreceiver_timeout: 3s"),
        &env,
    );
    p.wait_streaming("main");
    proxy.down();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    // The receiver noticed (it is no longer streaming) ...
    assert!(p.server("main").is_some_and(|s| s.state != ConnState::Streaming));
    // ... and the pings never stopped: one every 2 s, never 4 s (the watchdog timeout) apart.
    let times: Vec<Instant> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, m)| *t >= down && m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(times.len() >= 4, "{} pings in 10s of network outage\n{}", times.len(), dump(&got));
    let longest_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(
        longest_gap < Duration::from_millis(3500),
        "a {longest_gap:?} gap between pings\n{}",
        dump(&got)
    );
    assert!(!p.log_text().contains("holding back the systemd watchdog ping"), "{}", p.log_text());
    proxy.heal();
    p.wait_streaming("main");
}

/// The shipped unit file is valid for systemd (when systemd-analyze is installed).
#[test]
fn systemd_unit_file_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/pgark.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=pgark",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=\n",
        "LimitNOFILE=",
        "LimitNICE=20",
        "ExecReload=",
    ] {
        assert!(text.contains(key), "{} lacks {key:?}", unit.display());
    }
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: skipping the verify step");
        return;
    };
    if !out.status.success() {
        eprintln!("systemd-analyze does not run here: skipping the verify step");
        return;
    }
    // The unit names /usr/local/bin/pgark: verify a copy that points at the binary under test
    // (verify checks that ExecStart= exists and is executable).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pgark.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/pgark", env!("CARGO_BIN_EXE_pgark"))).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Outside a booted systemd (a container), verify may complain about the environment, not
    // the unit; only lines naming the unit file count.
    let about_unit: Vec<&str> = err.lines().filter(|l| l.contains("pgark.service")).collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify: {err}");
}
