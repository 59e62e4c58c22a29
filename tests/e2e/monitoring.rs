//! Server-side monitoring against real PostgreSQL: sync state, slot retention, lag, pg_wal size.

use crate::support::*;
use pgark::catalog::space::Level;
use pgark::service::status::ConnState;
use std::time::Duration;

/// The series `name` of server `main`.
fn main_series(name: &str) -> String {
    format!("{name}{{server=\"main\"}}")
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
    p.wait_metric(
        &main_series("pgark_sync_standby"),
        "pgark reported as the synchronous standby",
        |v| v == 1.0,
    );
    assert_eq!(p.metric(&main_series("pgark_sync_standby_named")), Some(1.0));
    assert_eq!(p.metric(&main_series("pgark_monitor_up")), Some(1.0));
    assert!(p.metric(&main_series("pgark_server_pg_wal_bytes")).unwrap() > 0.0);
    assert!(p.metric(&main_series("pgark_server_current_lsn_bytes")).unwrap() > 0.0);
    let status = p.status().unwrap();
    let facts = status.servers[0].monitor.clone().expect("monitor facts in /status");
    assert_eq!(facts.slot_wal_status.as_deref(), Some("reserved"));
    assert_eq!(facts.sync_state.as_deref(), Some("sync"));

    // Under a load running while the metrics are read, received bytes and the server's position
    // grow; after it, the lag measured after the load's last commit is near zero.
    let before = p.metric(&main_series("pgark_wal_received_bytes_total")).unwrap_or(0.0);
    let lsn_before = p.metric(&main_series("pgark_server_current_lsn_bytes")).unwrap();
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            for _ in 0..20 {
                write_rows(&c, 500);
            }
        });
        p.wait_metric(
            &main_series("pgark_wal_received_bytes_total"),
            "received bytes to grow during the load",
            |v| v > before + 1e6,
        );
        p.wait_metric(
            &main_series("pgark_server_current_lsn_bytes"),
            "the server's position to move",
            |v| v > lsn_before,
        );
        load.join().unwrap();
    });
    let end = current_flush_lsn(&c).0 as f64;
    wait_until(Duration::from_secs(60), "a lag sample taken after the load, near zero", || {
        p.metric(&main_series("pgark_server_current_lsn_bytes")).is_some_and(|v| v >= end)
            && p.metric(&main_series("pgark_replication_lag_bytes")).is_some_and(|v| v < 1e6)
    });
    p.wait_metric(&main_series("pgark_slot_retained_bytes"), "the slot to hold back little", |v| {
        v < 32e6
    });

    // pgark away: the server keeps the WAL for the slot; back: the retention shrinks.
    c.psql("ALTER SYSTEM SET synchronous_standby_names = ''").unwrap();
    c.reload().unwrap();
    p.wait_metric(&main_series("pgark_sync_standby_named"), "the setting change to be seen", |v| {
        v == 0.0
    });
    p.wait_metric(&main_series("pgark_sync_standby"), "pgark no longer synchronous", |v| v == 0.0);
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
    p.wait_metric(
        &main_series("pgark_slot_retained_bytes"),
        "retention to shrink after pgark came back",
        |v| v < retained / 2.0,
    );
}

/// `disk_pressure:` settings that measure free space every second and walk the catalog's usage
/// every 2 s (the defaults, 15 s and 1 min, would make these tests wait for minutes).
const FAST_DISK_CHECKS: &str = "  check_interval: 1s\n  usage_interval: 2s";

/// Thresholds larger than any disk: the level is always critical.
const ALWAYS_CRITICAL: &str = "  catalog_free_warning: 2000TB\n  catalog_free_critical: 1000TB";

/// The `disk_pressure:` section with `thresholds` (lines indented by 2) and fast checks.
fn disk_pressure(thresholds: &str) -> String {
    format!("disk_pressure:\n{thresholds}\n{FAST_DISK_CHECKS}")
}

/// A started cluster and pgark streaming it as `main` (asynchronously, with `extra` server
/// keys), with the `disk_pressure:` thresholds `thresholds` checked every second; also returns
/// the `servers:` YAML (for a reload).
fn streaming_under_pressure(thresholds: &str, extra: &str) -> (Cluster, Pgark, String) {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let servers = server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        &format!("synchronous: false\nmonitor_interval: 1s\n{extra}"),
    );
    let p = Pgark::start_full("", &disk_pressure(thresholds), &servers, &[]);
    p.wait_streaming("main");
    (c, p, servers)
}

fn wait_level(p: &Pgark, level: Level) {
    wait_until(Duration::from_secs(20), &format!("the {level:?} level in /status"), || {
        p.status().and_then(|s| s.catalog_space).is_some_and(|c| c.pressure == level)
    });
}

/// Disk pressure at the critical level shows in /status and in the catalog metrics, and WAL
/// streaming goes on: WAL is flushed and the catalog's WAL usage is measured.
#[test]
fn critical_disk_pressure_is_reported_and_streaming_goes_on() {
    let (c, p, _) = streaming_under_pressure(ALWAYS_CRITICAL, "");
    wait_level(&p, Level::Critical);
    assert_eq!(p.metric("pgark_catalog_pressure"), Some(2.0));
    assert!(p.metric("pgark_catalog_free_bytes").unwrap() > 0.0);
    assert_eq!(p.metric("pgark_catalog_free_critical_bytes"), Some(1e15));
    write_rows(&c, 2000);
    p.wait_flushed("main", current_flush_lsn(&c));
    wait_until(
        Duration::from_secs(20),
        "the catalog's WAL size metric (walked every usage_interval, 2 s)",
        || {
            p.metric("pgark_catalog_size_bytes{server=\"main\",kind=\"wal\"}")
                .is_some_and(|v| v > 1e6)
        },
    );
    let s = p.server("main").unwrap();
    assert_eq!(s.state, ConnState::Streaming, "{s:?}");
}

/// At the critical level `pgark backup` is refused with exit 8, naming the setting, and takes
/// nothing.
#[test]
fn pgark_backup_is_refused_with_exit_8_at_the_critical_level() {
    let (_c, p, _) = streaming_under_pressure(ALWAYS_CRITICAL, "");
    wait_level(&p, Level::Critical);
    let o = pgark(&p.config, &["backup", "main", "--checkpoint", "fast", "--wait", "60s"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(text(&o).contains("catalog_free_critical"), "{}", text(&o));
    assert!(list(&p.config).is_empty(), "no backup may be taken at the critical level");
}

/// At the critical level a due scheduled backup is held back, and that is logged once (not at
/// every poll of the scheduler).
#[test]
fn scheduled_backups_are_held_back_at_the_critical_level_logged_once() {
    let (_c, p, _) = streaming_under_pressure(ALWAYS_CRITICAL, "backup_schedule: 1m\nbackup_checkpoint: fast");
    wait_level(&p, Level::Critical);
    wait_until(Duration::from_secs(20), "the held-back log line", || {
        p.log_text().contains("held back")
    });
    assert!(p.log_text().contains("CRITICAL"));
    assert!(list(&p.config).is_empty(), "no backup may be taken at the critical level");
    // Time passes on purpose: three more polls of the scheduler (every check_interval, 1 s),
    // none of which may log again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(p.log_text().matches("held back").count(), 1, "logged once per change");
    assert!(list(&p.config).is_empty(), "no backup may be taken at the critical level");
}

/// A reload with lower thresholds brings the level back to ok, and the scheduled backup that
/// was held back runs; the recovery window then has a start.
#[test]
fn reload_with_lower_thresholds_lets_the_held_back_backup_run() {
    let (_c, mut p, servers) = streaming_under_pressure(ALWAYS_CRITICAL, "backup_schedule: 1m\nbackup_checkpoint: fast");
    wait_level(&p, Level::Critical);
    wait_until(Duration::from_secs(20), "the held-back log line", || {
        p.log_text().contains("held back")
    });
    assert!(list(&p.config).is_empty(), "no backup may be taken at the critical level");
    p.set_top(&disk_pressure("  catalog_free_warning: 2MB\n  catalog_free_critical: 1MB"));
    p.rewrite_servers(&servers);
    p.hup();
    wait_until(Duration::from_secs(20), "level ok after the reload", || {
        p.metric("pgark_catalog_pressure") == Some(0.0)
    });
    wait_until(Duration::from_secs(60), "the scheduled backup after the reload", || {
        !list(&p.config).is_empty()
    });
    wait_until(Duration::from_secs(20), "the recovery window start", || {
        p.metric("pgark_recovery_window_start_seconds{server=\"main\"}")
            .is_some_and(|v| v > 0.0)
    });
}

/// Without a backup the recovery window has no start (the series is absent, not NaN), and its
/// end follows the clock on an idle server (keepalive replies).
#[test]
fn recovery_window_end_follows_the_clock_on_an_idle_server() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false"));
    p.wait_streaming("main");
    let metrics = p.metrics_text();
    assert!(!metrics.contains("pgark_recovery_window_start_seconds{"), "{metrics}");
    assert!(!metrics.contains("NaN"), "{metrics}");
    let now = pgark::util::time::unix_now() as f64;
    wait_until(Duration::from_secs(20), "the recovery window end near now", || {
        p.metric("pgark_recovery_window_end_seconds{server=\"main\"}")
            .is_some_and(|v| v >= now)
    });
}

/// `/healthz` turns 503, naming the server, once the server has been away for longer than
/// `metrics.healthz_stream_timeout`.
#[test]
fn healthz_turns_503_after_the_stream_timeout() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let p = Pgark::start_full(
        "  healthz_stream_timeout: 3s",
        "",
        &server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false"),
        &[],
    );
    p.wait_streaming("main");
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

fn pressure(p: &Pgark) -> Option<Level> {
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
        &disk_pressure("  catalog_free_warning: 65%\n  catalog_free_critical: 35%"),
        &servers,
        &[],
    );
    p.wait_streaming("main");
    wait_until(Duration::from_secs(20), "the ok level in /status", || {
        pressure(&p) == Some(Level::Ok)
    });
    assert_eq!(p.metric("pgark_catalog_pressure"), Some(0.0));
    let total = p.metric("pgark_catalog_total_bytes").unwrap();
    assert!((200e6..300e6).contains(&total), "the tmpfs's size, not the root disk's: {total}");

    // About 100 MiB of WAL: the warning level.
    write_wal(&c, 100 << 20);
    p.wait_flushed("main", current_flush_lsn(&c));
    wait_until(Duration::from_secs(20), "the warning level", || {
        pressure(&p) == Some(Level::Warning)
    });
    assert_eq!(p.metric("pgark_catalog_pressure"), Some(1.0));
    assert!(p.log_text().contains("catalog free space is low (warning level)"));
    // The ingest rate needs two samples of the flushed LSN (one every check_interval, 1 s) that
    // differ: WAL keeps trickling in while we wait (about 100 kB a poll).
    wait_until(
        Duration::from_secs(30),
        "a finite time-to-full: the filesystem fills at a known rate",
        || {
            write_rows(&c, 100);
            p.metric("pgark_catalog_full_eta_seconds")
                .is_some_and(|eta| eta.is_finite() && eta > 0.0)
        },
    );

    // About 80 MiB more: the critical level. Backups are refused; streaming continues.
    write_wal(&c, 80 << 20);
    p.wait_flushed("main", current_flush_lsn(&c));
    wait_until(Duration::from_secs(20), "the critical level", || {
        pressure(&p) == Some(Level::Critical)
    });
    assert_eq!(p.metric("pgark_catalog_pressure"), Some(2.0));
    let log = p.log_text();
    assert!(log.contains("catalog free space is CRITICAL"), "{}", tail(&log));
    assert_eq!(log.matches("warning level").count(), 1, "the warning is logged once");
    assert_eq!(log.matches("is CRITICAL").count(), 1, "the critical level is logged once");
    let o = pgark(&p.config, &["backup", "main", "--checkpoint", "fast", "--wait", "60s"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    let cli = pgark_args(&["status", "--config", p.config.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&cli.stdout);
    assert!(shown.to_lowercase().contains("critical"), "pgark status shows the level: {shown}");

    // Streaming goes on at the critical level: a synchronous commit still returns, across a
    // segment boundary; no spare segment is zero-filled ahead of need any more.
    write_wal(&c, 20 << 20);
    c.psql("INSERT INTO filler (t) VALUES ('after critical')").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    // Time passes on purpose: room for a spare segment to be prepared, if pgark still did that.
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
    assert_eq!(s.state, ConnState::Streaming);
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
    p.wait_metric(&main_series("pgark_slot_retained_over_limit"), "the slot under the limit", |v| {
        v == 0.0
    });
    assert_eq!(p.metric(&main_series("pgark_slot_retained_limit_bytes")), Some(24.0 * 1048576.0));

    // The receiver cannot log in any more (no pg_hba line for this role); monitoring still can.
    p.rewrite_servers(&server_yaml("main", &c.conninfo("nobody"), &extra));
    p.hup();
    wait_until(Duration::from_secs(30), "the receiver failing to log in", || {
        p.server("main")
            .is_some_and(|s| s.state != ConnState::Streaming && s.last_error.is_some())
    });
    for _ in 0..3 {
        write_rows(&c, 4000);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    p.wait_metric(&main_series("pgark_slot_retained_bytes"), "the retention seen growing", |v| {
        v > 24.0 * 1048576.0
    });
    p.wait_metric(&main_series("pgark_slot_retained_over_limit"), "the limit crossed", |v| v == 1.0);
    let warning = p.server("main").and_then(|s| s.slot_warning);
    assert!(
        warning.as_deref().is_some_and(|w| w.contains("slot_retained_limit")),
        "status: {warning:?}"
    );
    // Time passes on purpose: three more monitoring rounds (monitor_interval, 1 s), none of
    // which may log the warning again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(p.log_text().matches("over slot_retained_limit").count(), 1, "logged once");

    // Streaming again: the slot advances, the warning clears.
    p.rewrite_servers(&good);
    p.hup();
    p.wait_streaming("main");
    p.wait_metric(&main_series("pgark_slot_retained_over_limit"), "back under the limit", |v| v == 0.0);
    p.wait_metric(&main_series("pgark_slot_retained_bytes"), "the retention shrunk", |v| {
        v < 24.0 * 1048576.0
    });
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
    assert_eq!(p.metric(&main_series("pgark_monitor_up")), Some(0.0));
    p.wait_metric(&main_series("pgark_monitor_errors_total"), "more than one failed round", |v| {
        v >= 2.0
    });
    // The server-side facts are unknown: absent, not stale or made up.
    for name in ["pgark_sync_standby", "pgark_server_current_lsn_bytes", "pgark_slot_retained_bytes"] {
        assert_eq!(p.metric(&main_series(name)), None, "{name} while monitoring fails");
    }
    let cli = pgark_args(&["status", "--config", p.config.to_str().unwrap()]);
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
    p.wait_metric(&main_series("pgark_monitor_up"), "a successful round after the fix", |v| v == 1.0);
    wait_until(Duration::from_secs(30), "the error cleared in /status", || {
        p.server("main").is_some_and(|s| s.monitor_error.is_none() && s.monitor.is_some())
    });
    assert_eq!(p.metric(&main_series("pgark_sync_standby")), Some(1.0));
    assert_eq!(p.server("main").unwrap().reconnects, 0);
}
