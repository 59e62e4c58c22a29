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
