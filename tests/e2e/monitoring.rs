//! Server-side monitoring against real PostgreSQL: sync state, slot retention, lag, pg_wal size.

use crate::common::*;
use crate::pgcluster::Cluster;
use std::time::Duration;

fn metric(p: &Pgark, name: &str) -> Option<f64> {
    let (code, text) = p.http_get("/metrics");
    assert_eq!(code, 200);
    let prefix = format!("{name}{{server=\"main\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_metric(p: &Pgark, name: &str, what: &str, ok: impl Fn(f64) -> bool) {
    wait_until(Duration::from_secs(60), what, || metric(p, name).is_some_and(&ok));
}

/// Test 1 and 2: the metrics move as they should under load, across a pgark outage, and when
/// the server stops naming pgark in synchronous_standby_names.
#[test]
fn slot_lag_and_sync_state_metrics() {
    let c = Cluster::init(&pg(), &["synchronous_standby_names = 'FIRST 1 (pgark)'"]).unwrap();
    c.start().unwrap();
    let mut p = Pgark::start(&server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "synchronous: true\nmonitor_interval: 1s",
    ));
    p.wait_streaming("main");
    wait_metric(&p, "pgark_sync_standby", "pgark reported as the synchronous standby", |v| v == 1.0);
    assert_eq!(metric(&p, "pgark_sync_standby_named"), Some(1.0));
    assert_eq!(metric(&p, "pgark_monitor_up"), Some(1.0));
    assert!(metric(&p, "pgark_server_pg_wal_bytes").unwrap() > 0.0);
    assert!(metric(&p, "pgark_server_current_lsn_bytes").unwrap() > 0.0);
    let status = p.status().unwrap();
    let facts = status.servers[0].monitor.clone().expect("monitor facts in /status");
    assert_eq!(facts.slot_wal_status.as_deref(), Some("reserved"));
    assert_eq!(facts.sync_state.as_deref(), Some("sync"));

    // Under a load running while the metrics are read, received bytes and the server's position
    // grow; after it, the lag measured after the load's last commit is near zero.
    let before = metric(&p, "pgark_wal_received_bytes_total").unwrap_or(0.0);
    let lsn_before = metric(&p, "pgark_server_current_lsn_bytes").unwrap();
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            for _ in 0..20 {
                write_rows(&c, 500);
            }
        });
        wait_metric(
            &p,
            "pgark_wal_received_bytes_total",
            "received bytes to grow during the load",
            |v| v > before + 1e6,
        );
        wait_metric(&p, "pgark_server_current_lsn_bytes", "the server's position to move", |v| {
            v > lsn_before
        });
        load.join().unwrap();
    });
    let end = current_flush_lsn(&c).0 as f64;
    wait_until(Duration::from_secs(60), "a lag sample taken after the load, near zero", || {
        metric(&p, "pgark_server_current_lsn_bytes").is_some_and(|v| v >= end)
            && metric(&p, "pgark_replication_lag_bytes").is_some_and(|v| v < 1e6)
    });
    wait_metric(&p, "pgark_slot_retained_bytes", "the slot to hold back little", |v| v < 32e6);

    // pgark away: the server keeps the WAL for the slot; back: the retention shrinks.
    c.psql("ALTER SYSTEM SET synchronous_standby_names = ''").unwrap();
    c.reload().unwrap();
    wait_metric(&p, "pgark_sync_standby_named", "the setting change to be seen", |v| v == 0.0);
    wait_metric(&p, "pgark_sync_standby", "pgark no longer synchronous", |v| v == 0.0);
    p.kill9();
    for _ in 0..3 {
        write_rows(&c, 2000);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    let retained: f64 = c
        .psql("SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgark_main'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retained > 16e6,
        "the slot should retain the WAL written while pgark was away ({retained})"
    );
    p.spawn();
    p.wait_streaming("main");
    wait_metric(&p, "pgark_slot_retained_bytes", "retention to shrink after pgark came back", |v| {
        v < retained / 2.0
    });
}

fn metric_line(p: &Pgark, series: &str) -> Option<f64> {
    let (_, text) = p.http_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Disk pressure: at the critical level `pgark backup` is refused (exit 8) and scheduled backups
/// are held back while WAL streaming goes on; a reload with lower thresholds lets backups run
/// again. Also: the catalog metrics, the recovery window's end on an idle server, and the
/// configurable /healthz limit.
#[test]
fn disk_pressure_holds_back_backups_not_streaming() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let servers = server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "synchronous: false\nbackup_schedule: 1m\nbackup_checkpoint: fast\nmonitor_interval: 1s",
    );
    // Larger than any disk: always critical.
    let mut p = Pgark::start_full(
        "  healthz_stream_timeout: 3s",
        "disk_pressure:\n  catalog_free_warning: 2000TB\n  catalog_free_critical: 1000TB",
        &servers,
        &[],
    );
    p.wait_streaming("main");
    wait_until(Duration::from_secs(40), "the critical level in /status", || {
        p.status()
            .and_then(|s| s.catalog_space)
            .is_some_and(|c| c.pressure == pgark::catalog::space::Level::Critical)
    });
    assert_eq!(metric_line(&p, "pgark_catalog_pressure"), Some(2.0));
    assert!(metric_line(&p, "pgark_catalog_free_bytes").unwrap() > 0.0);
    assert_eq!(metric_line(&p, "pgark_catalog_free_critical_bytes"), Some(1e15));

    // Streaming goes on.
    write_rows(&c, 2000);
    let target = current_flush_lsn(&c);
    p.wait_flushed("main", target);
    wait_until(
        Duration::from_secs(90),
        "the catalog's WAL size metric (walked every minute)",
        || metric_line(&p, "pgark_catalog_size_bytes{server=\"main\",kind=\"wal\"}").is_some_and(|v| v > 1e6),
    );

    // Backups are not: the CLI exits 8 naming the setting; the scheduler holds back, once logged.
    let o = crate::backup::pgark(&p.config, &["backup", "main", "--checkpoint", "fast"]);
    assert_eq!(o.status.code(), Some(8), "{}", crate::backup::text(&o));
    assert!(
        crate::backup::text(&o).contains("catalog_free_critical"),
        "{}",
        crate::backup::text(&o)
    );
    wait_until(Duration::from_secs(40), "the held-back log line", || {
        p.log_text().contains("held back")
    });
    assert!(p.log_text().contains("CRITICAL"));
    assert!(
        crate::backup::list(&p.config).is_empty(),
        "no backup may be taken at the critical level"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(p.log_text().matches("held back").count(), 1, "logged once per change");
    // No backup yet: the recovery window has no start (absent, not NaN).
    let (_, metrics) = p.http_get("/metrics");
    assert!(!metrics.contains("pgark_recovery_window_start_seconds{"), "{metrics}");
    assert!(!metrics.contains("NaN"), "{metrics}");

    // The recovery window's end follows the clock on an idle server (keepalive replies).
    let now = pgark::util::time::unix_now() as f64;
    wait_until(Duration::from_secs(20), "the recovery window end near now", || {
        metric_line(&p, "pgark_recovery_window_end_seconds{server=\"main\"}").is_some_and(|v| v >= now)
    });

    // Lower thresholds on reload: back to ok, and the scheduled backup runs.
    p.set_top("disk_pressure:\n  catalog_free_warning: 2MB\n  catalog_free_critical: 1MB");
    p.rewrite_servers(&servers);
    p.hup();
    wait_until(Duration::from_secs(40), "level ok after the reload", || {
        metric_line(&p, "pgark_catalog_pressure") == Some(0.0)
    });
    wait_until(Duration::from_secs(90), "the scheduled backup after the reload", || {
        !crate::backup::list(&p.config).is_empty()
    });
    wait_until(Duration::from_secs(40), "the recovery window start", || {
        metric_line(&p, "pgark_recovery_window_start_seconds{server=\"main\"}").is_some_and(|v| v > 0.0)
    });

    // /healthz turns 503 once the server has been away for longer than healthz_stream_timeout.
    assert_eq!(p.http_get("/healthz").0, 200);
    c.stop("fast").unwrap();
    wait_until(Duration::from_secs(30), "/healthz 503", || p.http_get("/healthz").0 == 503);
    let (_, body) = p.http_get("/healthz");
    assert!(body.contains("main"), "{body}");
}

/// Generates at least `bytes` of WAL on `c` (rows of ~1 kB incompressible text).
fn write_wal(c: &Cluster, bytes: u64) {
    let start = current_flush_lsn(c);
    while current_flush_lsn(c).0 - start.0 < bytes {
        write_rows(c, 4000);
    }
}

fn pressure(p: &Pgark) -> Option<pgark::catalog::space::Level> {
    p.status().and_then(|s| s.catalog_space).map(|c| c.pressure)
}

/// Issue test 4: the catalog on a small filesystem (a 256 MiB tmpfs) fills with WAL; the warning
/// and then the critical level fire (logged once each, the metric, the status), base backups are
/// refused at the critical level, the time-to-full projection is finite while WAL flows, and WAL
/// streaming goes on throughout.
#[test]
fn small_catalog_filesystem_crosses_both_levels_while_streaming_goes_on() {
    let Some(fs) = SmallFs::mount("256m") else {
        eprintln!("SKIP small_catalog_filesystem_crosses_both_levels_while_streaming_goes_on: cannot mount a size-limited tmpfs here (needs root and mount permission)");
        return;
    };
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    // Uncompressed, so that each 16 MiB segment takes 16 MiB of the filesystem.
    let servers = server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "synchronous: true\ncompression: none\nmonitor_interval: 1s",
    );
    let catalog = fs.path().join("catalog");
    // 256 MiB: warning below 166 MiB free (about 90 MiB used), critical below 90 MiB free.
    let p = Pgark::start_in(
        Some(&catalog),
        "",
        "disk_pressure:\n  catalog_free_warning: 65%\n  catalog_free_critical: 35%",
        &servers,
        &[],
    );
    p.wait_streaming("main");
    wait_until(Duration::from_secs(40), "the ok level in /status", || {
        pressure(&p) == Some(pgark::catalog::space::Level::Ok)
    });
    assert_eq!(metric_line(&p, "pgark_catalog_pressure"), Some(0.0));
    let total = metric_line(&p, "pgark_catalog_total_bytes").unwrap();
    assert!((200e6..300e6).contains(&total), "the tmpfs's size, not the root disk's: {total}");

    // About 100 MiB of WAL: the warning level.
    write_wal(&c, 100 << 20);
    p.wait_flushed("main", current_flush_lsn(&c));
    wait_until(Duration::from_secs(40), "the warning level", || {
        pressure(&p) == Some(pgark::catalog::space::Level::Warning)
    });
    assert_eq!(metric_line(&p, "pgark_catalog_pressure"), Some(1.0));
    assert!(p.log_text().contains("catalog free space is low (warning level)"));
    // The ingest rate needs two samples of the flushed LSN (one every 15 s) that differ: WAL
    // keeps trickling in while we wait (about 100 kB a poll).
    wait_until(
        Duration::from_secs(60),
        "a finite time-to-full: the filesystem fills at a known rate",
        || {
            write_rows(&c, 100);
            metric_line(&p, "pgark_catalog_full_eta_seconds").is_some_and(|eta| eta.is_finite() && eta > 0.0)
        },
    );

    // About 80 MiB more: the critical level. Backups are refused; streaming continues.
    write_wal(&c, 80 << 20);
    p.wait_flushed("main", current_flush_lsn(&c));
    wait_until(Duration::from_secs(40), "the critical level", || {
        pressure(&p) == Some(pgark::catalog::space::Level::Critical)
    });
    assert_eq!(metric_line(&p, "pgark_catalog_pressure"), Some(2.0));
    let log = p.log_text();
    assert!(log.contains("catalog free space is CRITICAL"), "{}", tail(&log));
    assert_eq!(log.matches("warning level").count(), 1, "the warning is logged once");
    assert_eq!(log.matches("is CRITICAL").count(), 1, "the critical level is logged once");
    let o = crate::backup::pgark(&p.config, &["backup", "main", "--checkpoint", "fast"]);
    assert_eq!(o.status.code(), Some(8), "{}", crate::backup::text(&o));
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_pgark"))
        .args(["status", "--config"])
        .arg(&p.config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&cli.stdout);
    assert!(shown.to_lowercase().contains("critical"), "pgark status shows the level: {shown}");

    // Streaming goes on at the critical level: a synchronous commit still returns, across a
    // segment boundary; no spare segment is zero-filled ahead of need any more.
    write_wal(&c, 20 << 20);
    c.psql("INSERT INTO filler (t) VALUES ('after critical')").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    std::thread::sleep(Duration::from_secs(4));
    let spares: Vec<_> = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".spare."))
        .collect();
    assert!(spares.is_empty(), "spares prepared at the critical level: {spares:?}");
    let s = p.server("main").unwrap();
    assert_eq!(s.reconnects, 0, "streaming was never interrupted: {s:?}");
    assert_eq!(s.state, pgark::service::status::ConnState::Streaming);
}

/// A primary where the superuser streams over the Unix socket (trust) and a role `mon` (with
/// pg_monitor) must give its password, `right`, over TCP. Returns the cluster and `mon`'s
/// connection string with `password`.
fn cluster_with_monitor_role(conf: &[&str], password: &str) -> (Cluster, String) {
    let c = Cluster::init(&pg(), conf).unwrap();
    c.start().unwrap();
    // Local commits: a synchronous standby named in `conf` is not running yet.
    c.psql("SET synchronous_commit = local; SET password_encryption = 'scram-sha-256'; CREATE ROLE mon LOGIN PASSWORD 'right'; GRANT pg_monitor TO mon")
        .unwrap();
    let su = &c.superuser;
    c.write_hba(&format!(
        "local all {su} trust\nlocal replication {su} trust\nhost all mon 127.0.0.1/32 scram-sha-256\n"
    ))
    .unwrap();
    c.reload().unwrap();
    let monitor = format!(
        "host=127.0.0.1 port={} user=mon password={password} dbname=postgres sslmode=disable",
        c.port
    );
    (c, monitor)
}

/// The slot's retention seen by pgark while its receiver cannot stream (the replication login
/// fails) and the monitoring connection works: `pgark_slot_retained_bytes` shows the WAL the
/// server keeps for the slot, crossing `slot_retained_limit` is logged once, sets the metric
/// and shows in status; once streaming works again (a SIGHUP with the right connection string)
/// the retention shrinks and the warning clears (metric and status).
#[test]
fn slot_retention_over_the_limit_while_the_receiver_is_down() {
    let (c, monitor) = cluster_with_monitor_role(&[], "right");
    let extra = format!("synchronous: false\nmonitor_interval: 1s\nslot_retained_limit: 24MiB\nmonitor_conninfo: \"{monitor}\"");
    let good = server_yaml("main", &c.conninfo(&c.superuser), &extra);
    let p = Pgark::start(&good);
    p.wait_streaming("main");
    wait_metric(&p, "pgark_slot_retained_over_limit", "the slot under the limit", |v| v == 0.0);
    assert_eq!(metric(&p, "pgark_slot_retained_limit_bytes"), Some(24.0 * 1048576.0));

    // The receiver cannot log in any more (no pg_hba line for this role); monitoring still can.
    p.rewrite_servers(&server_yaml("main", &c.conninfo("nobody"), &extra));
    p.hup();
    wait_until(Duration::from_secs(30), "the receiver failing to log in", || {
        p.server("main")
            .is_some_and(|s| s.state != pgark::service::status::ConnState::Streaming && s.last_error.is_some())
    });
    for _ in 0..3 {
        write_rows(&c, 4000);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    wait_metric(&p, "pgark_slot_retained_bytes", "the retention seen growing", |v| {
        v > 24.0 * 1048576.0
    });
    wait_metric(&p, "pgark_slot_retained_over_limit", "the limit crossed", |v| v == 1.0);
    let warning = p.server("main").and_then(|s| s.slot_warning);
    assert!(
        warning.as_deref().is_some_and(|w| w.contains("slot_retained_limit")),
        "status: {warning:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(p.log_text().matches("over slot_retained_limit").count(), 1, "logged once");

    // Streaming again: the slot advances, the warning clears.
    p.rewrite_servers(&good);
    p.hup();
    p.wait_streaming("main");
    wait_metric(&p, "pgark_slot_retained_over_limit", "back under the limit", |v| v == 0.0);
    wait_metric(&p, "pgark_slot_retained_bytes", "the retention shrunk", |v| v < 24.0 * 1048576.0);
    assert!(p.server("main").is_some_and(|s| s.slot_warning.is_none()));
}

/// Issue test 5: a monitoring connection that cannot log in (wrong password) is reported in
/// status and metrics and retried, and streaming is never disturbed; once the password is
/// right on the server, the next round succeeds without any change to pgark.
#[test]
fn failing_monitoring_connection_never_disturbs_streaming() {
    let (c, monitor) = cluster_with_monitor_role(&["synchronous_standby_names = 'pgark'"], "wrong");
    let su = &c.superuser;
    let p = Pgark::start(&server_yaml(
        "main",
        &c.conninfo(su),
        &format!("synchronous: true\nmonitor_interval: 1s\nmonitor_conninfo: \"{monitor}\""),
    ));
    p.wait_streaming("main");
    wait_until(Duration::from_secs(30), "the monitoring error in /status", || {
        p.server("main")
            .and_then(|s| s.monitor_error)
            .is_some_and(|e| e.contains("password authentication failed"))
    });
    assert_eq!(metric(&p, "pgark_monitor_up"), Some(0.0));
    wait_metric(&p, "pgark_monitor_errors_total", "more than one failed round", |v| v >= 2.0);
    // The server-side facts are unknown: absent, not stale or made up.
    for name in ["pgark_sync_standby", "pgark_server_current_lsn_bytes", "pgark_slot_retained_bytes"] {
        assert_eq!(metric(&p, name), None, "{name} while monitoring fails");
    }
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_pgark"))
        .args(["status", "--config"])
        .arg(&p.config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&cli.stdout);
    assert!(shown.contains("password authentication failed"), "pgark status shows it: {shown}");
    assert_eq!(cli.status.code(), Some(0), "streaming, so status exits 0: {shown}");

    // Synchronous commits go through pgark all along.
    write_rows(&c, 2000);
    p.wait_flushed("main", current_flush_lsn(&c));
    assert_eq!(p.server("main").unwrap().reconnects, 0, "streaming was disturbed");

    // The password is fixed on the server: the next round succeeds, nothing restarted.
    c.psql("SET password_encryption = 'scram-sha-256'; ALTER ROLE mon PASSWORD 'wrong'")
        .unwrap();
    wait_metric(&p, "pgark_monitor_up", "a successful round after the fix", |v| v == 1.0);
    wait_until(Duration::from_secs(30), "the error cleared in /status", || {
        p.server("main").is_some_and(|s| s.monitor_error.is_none() && s.monitor.is_some())
    });
    assert_eq!(metric(&p, "pgark_sync_standby"), Some(1.0));
    assert_eq!(p.server("main").unwrap().reconnects, 0);
}
