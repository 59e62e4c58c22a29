//! Server-side monitoring against real PostgreSQL: sync state, slot retention, lag, pg_wal size.

use crate::common::*;
use pgark::pgcluster::Cluster;
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

    // Under load, received bytes grow and the lag comes back to near zero.
    let before = metric(&p, "pgark_wal_received_bytes_total").unwrap_or(0.0);
    write_rows(&c, 3000);
    wait_metric(&p, "pgark_wal_received_bytes_total", "received bytes to grow", |v| v > before + 1e6);
    wait_metric(&p, "pgark_replication_lag_bytes", "the lag to return near zero", |v| v < 1e6);
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
            .is_some_and(|c| c.pressure == pgark::pressure::Level::Critical)
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
    let now = pgark::status::unix_now() as f64;
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
