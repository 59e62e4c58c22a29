//! `pgark check` against real PostgreSQL: all OK on a healthy synchronous setup with the daemon
//! running, then FAILED (exit 9) for each misconfiguration a test can produce: the server no
//! longer naming pgark as synchronous standby, a catalog readable by others, a dropped slot, a
//! `lost` slot, a role without REPLICATION, a closed port and a silent one (fast, bounded by
//! `--timeout`), no backup while a schedule is set, and on PostgreSQL 17/18 pgark's slot in
//! `synchronized_standby_slots`, a short `idle_replication_slot_timeout` and checksums off.

use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `pgark check --json ARGS`; the exit code and the results.
fn check(config: &Path, args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let o = pgark(config, &all);
    let results: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("pgark check --json output: {e}: {}", text(&o)));
    (o.status.code().unwrap_or(-1), results)
}

/// The result of `name` for `server`.
fn result<'a>(results: &'a [Value], server: &str, name: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["server"] == server && r["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} for {server} in {results:#?}"))
}

/// Asserts the level of `server`'s check `name`; returns its detail.
fn assert_level(results: &[Value], server: &str, name: &str, level: &str) -> String {
    let r = result(results, server, name);
    assert_eq!(r["level"], level, "{server} {name}: {r}");
    assert_eq!(r["ok"], level != "failed", "{r}");
    r["detail"].as_str().unwrap_or_default().to_string()
}

/// Disk-pressure thresholds the test machine's disk always satisfies.
const SMALL_THRESHOLDS: &str = "disk_pressure:\n  catalog_free_warning: 2MiB\n  catalog_free_critical: 1MiB";

/// Waits until a new session sees `setting` = `value` (a reload is asynchronous).
fn wait_setting(c: &Cluster, setting: &str, value: &str) {
    wait_until(Duration::from_secs(20), &format!("{setting} = {value:?}"), || {
        c.psql(&format!("SHOW {setting}")).map(|v| v == value).unwrap_or(false)
    });
}

/// One synchronous primary, checksums on, pgark streaming with a backup: every check OK. Then
/// one misconfiguration after another on the same cluster, each found and named.
#[test]
fn check_healthy_then_each_misconfiguration() {
    let c = Cluster::init_with(
        &pg(),
        &["synchronous_standby_names = 'pgark'"],
        &["--wal-segsize=1", "--data-checksums"],
    )
    .unwrap();
    c.start().unwrap();
    let mut p = Pgark::start_full(
        "",
        &format!("{SMALL_THRESHOLDS}\nretention:\n  redundancy: 2"),
        &server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true\nbackup_schedule: 1d"),
        &[],
    );
    p.wait_streaming("main");
    // The schedule takes the first backup at once (no backup yet).
    wait_until(Duration::from_secs(60), "the scheduled first backup", || {
        !list(&p.config).is_empty()
    });
    wait_until(Duration::from_secs(20), "pg_stat_replication to show pgark as sync", || {
        c.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgark' AND state = 'streaming'")
            .map(|v| v == "sync")
            .unwrap_or(false)
    });

    // Healthy: everything OK, exit 0; the human form is aligned, one line per check.
    let (code, results) = check(&p.config, &[]);
    let not_ok: Vec<&Value> = results.iter().filter(|r| r["level"] != "ok").collect();
    assert!(not_ok.is_empty(), "not OK on a healthy setup: {not_ok:#?}");
    assert_eq!(code, 0);
    for name in [
        "config",
        "catalog_writable",
        "catalog_permissions",
        "catalog_space",
        "daemon",
        "replication_connection",
        "monitoring_connection",
        "role_replication",
        "role_pg_monitor",
        "slot",
        "synchronous",
        "wal_recent",
        "backup_age",
        "synchronized_standby_slots",
        "idle_replication_slot_timeout",
        "data_checksums",
    ] {
        result(&results, "main", name);
    }
    assert!(assert_level(&results, "main", "synchronous", "ok").contains("sync"));
    let o = pgark(&p.config, &["check", "main"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("main ")).collect();
    assert_eq!(lines.len(), results.len(), "{out}");
    let level_col = |l: &str| l.find(" OK ").unwrap_or(usize::MAX);
    assert!(lines.iter().all(|l| level_col(l) == level_col(lines[0])), "aligned:\n{out}");

    // synchronous: true, but synchronous_standby_names no longer names pgark.
    c.psql("ALTER SYSTEM SET synchronous_standby_names = 'someone_else'").unwrap();
    c.reload().unwrap();
    wait_setting(&c, "synchronous_standby_names", "someone_else");
    let (code, results) = check(&p.config, &[]);
    let d = assert_level(&results, "main", "synchronous", "failed");
    assert!(d.contains("synchronous_standby_names"), "{d}");
    assert_eq!(code, 9);
    c.psql("ALTER SYSTEM RESET synchronous_standby_names").unwrap();
    c.reload().unwrap();
    wait_setting(&c, "synchronous_standby_names", "pgark");

    // The catalog readable by others.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p.catalog).unwrap().permissions().mode();
    std::fs::set_permissions(&p.catalog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, results) = check(&p.config, &[]);
    let d = assert_level(&results, "main", "catalog_permissions", "failed");
    assert!(d.contains("chmod o-rwx"), "{d}");
    assert_eq!(code, 9);
    std::fs::set_permissions(&p.catalog, std::fs::Permissions::from_mode(mode)).unwrap();

    // The daemon stopped: warnings only, so exit 0.
    assert_eq!(p.term(), 0);
    let (code, results) = check(&p.config, &[]);
    assert_level(&results, "main", "daemon", "warning");
    assert!(assert_level(&results, "main", "synchronous", "warning").contains("not running"));
    assert_eq!(code, 0, "{results:#?}");

    // The slot dropped while pgark is down (commits must not wait for pgark from here on).
    c.psql("ALTER SYSTEM SET synchronous_standby_names = ''").unwrap();
    c.reload().unwrap();
    wait_setting(&c, "synchronous_standby_names", "");
    c.psql("SELECT pg_drop_replication_slot('pgark_main')").unwrap();
    let (code, results) = check(&p.config, &[]);
    assert!(assert_level(&results, "main", "slot", "failed").contains("does not exist"));
    assert_eq!(code, 9);

    // A lost slot: the server removed WAL the slot needed (max_slot_wal_keep_size).
    c.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'").unwrap();
    c.reload().unwrap();
    wait_setting(&c, "max_slot_wal_keep_size", "1MB");
    c.psql("SELECT pg_create_physical_replication_slot('pgark_main', true)").unwrap();
    wait_until(Duration::from_secs(60), "the slot to be lost", || {
        write_rows(&c, 2000);
        c.psql("SELECT pg_switch_wal()").unwrap();
        c.psql("CHECKPOINT").unwrap();
        c.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgark_main'")
            .unwrap()
            == "lost"
    });
    let (code, results) = check(&p.config, &[]);
    assert!(assert_level(&results, "main", "slot", "failed").contains("wal_status lost"));
    assert_eq!(code, 9);
}

/// One cluster, no daemon, four servers checked concurrently in one run: a role without
/// REPLICATION, a closed port, a port that never answers (bounded by --timeout) and a schedule
/// without any backup. Also: one server by name, an unknown one and a bad config (exit 2).
#[test]
fn check_fails_each_broken_server_concurrently_and_fast() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE ROLE norepl LOGIN").unwrap();
    // Without pg_monitor the monitor's pg_ls_waldir() is refused (it is asked apart for that).
    c.expect_log("permission denied for function pg_ls_waldir");
    let closed = crate::support::ports::reserve();
    // Accepts connections (the kernel's backlog) and never answers: a stalled network.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let servers = [
        server_yaml("norepl", &c.conninfo("norepl"), "synchronous: false"),
        server_yaml(
            "down",
            &format!("host=127.0.0.1 port={} user=pgark sslmode=disable", closed.get()),
            "synchronous: false",
        ),
        server_yaml(
            "stalled",
            &format!("host=127.0.0.1 port={silent_port} user=pgark sslmode=disable"),
            "synchronous: false",
        ),
        server_yaml("sched", &c.conninfo(&c.superuser), "synchronous: false\nbackup_schedule: 1d"),
    ]
    .concat();
    let cat = Catalog::new(&servers);

    let start = Instant::now();
    let (code, results) = check(&cat.config, &["--timeout", "2s"]);
    let took = start.elapsed();
    assert_eq!(code, 9, "{results:#?}");
    assert!(
        took < Duration::from_secs(8),
        "check took {took:?}: servers must be checked concurrently and bounded"
    );
    assert!(assert_level(&results, "norepl", "role_replication", "failed").contains("REPLICATION"));
    assert_level(&results, "norepl", "replication_connection", "failed");
    assert_level(&results, "norepl", "role_pg_monitor", "warning");
    assert_level(&results, "down", "replication_connection", "failed");
    assert_level(&results, "down", "monitoring_connection", "failed");
    assert!(assert_level(&results, "down", "slot", "warning").starts_with("not checked"));
    assert!(assert_level(&results, "stalled", "replication_connection", "failed").contains("timed out"));
    assert!(assert_level(&results, "sched", "backup_age", "failed").contains("backup_schedule"));
    assert_level(&results, "sched", "replication_connection", "ok");
    // Servers in config order, each with every check.
    let order: Vec<&str> = results.iter().map(|r| r["server"].as_str().unwrap()).collect();
    let mut dedup = order.clone();
    dedup.dedup();
    assert_eq!(dedup, ["down", "norepl", "sched", "stalled"]);

    // The closed port alone fails at once.
    let start = Instant::now();
    let (code, results) = check(&cat.config, &["down"]);
    assert!(start.elapsed() < Duration::from_secs(3), "a refused connection must fail fast");
    assert_eq!(code, 9);
    assert!(results.iter().all(|r| r["server"] == "down"));

    // Usage errors: exit 2 with the message.
    let o = pgark(&cat.config, &["check", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no server named"), "{}", text(&o));
    let bad = cat.config.with_file_name("bad.yaml");
    std::fs::write(&bad, "catalog: /x\nservers: {}\n").unwrap();
    let o = pgark(&bad, &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("servers"), "{}", text(&o));
    drop(silent);
}

/// PostgreSQL 17 and 18: pgark's slot in synchronized_standby_slots fails; on 18 a short
/// idle_replication_slot_timeout warns; checksums off warns.
#[test]
fn check_version_specific_settings() {
    for bins in matrix().into_iter().filter(|b| b.major >= 17) {
        let major = bins.major;
        let initdb: &[&str] = if major >= 18 { &["--no-data-checksums"] } else { &[] };
        let c = Cluster::init_with(&bins, &[], initdb).unwrap();
        c.start().unwrap();
        c.psql("SELECT pg_create_physical_replication_slot('pgark_main', true)").unwrap();
        c.psql("ALTER SYSTEM SET synchronized_standby_slots = 'pgark_main'").unwrap();
        if major >= 18 {
            c.psql("ALTER SYSTEM SET idle_replication_slot_timeout = '1h'").unwrap();
        }
        c.reload().unwrap();
        wait_setting(&c, "synchronized_standby_slots", "pgark_main");
        let cat = Catalog::new(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false"));
        let (code, results) = check(&cat.config, &[]);
        assert_eq!(code, 9, "PostgreSQL {major}: {results:#?}");
        let d = assert_level(&results, "main", "synchronized_standby_slots", "failed");
        assert!(d.contains("logical walsenders wait"), "{d}");
        assert!(assert_level(&results, "main", "data_checksums", "warning").contains("pg_checksums"));
        if major >= 18 {
            let d = assert_level(&results, "main", "idle_replication_slot_timeout", "warning");
            assert!(d.contains("1h"), "{d}");
        } else {
            assert_level(&results, "main", "idle_replication_slot_timeout", "ok");
        }
    }
}

/// pgark streaming as a role without pg_monitor, named in synchronous_standby_names: the server
/// shows its walsender but hides its state (sync_state, lags). Check says so and how to fix it
/// (a warning naming GRANT pg_monitor), not "no walsender"; commits still go through pgark.
#[test]
fn check_names_a_walsender_state_the_server_hides() {
    let c = Cluster::init_with(&pg(), &["synchronous_standby_names = 'pgark'"], &[]).unwrap();
    c.start().unwrap();
    c.psql("SET synchronous_commit = local; CREATE ROLE rep LOGIN REPLICATION").unwrap();
    c.expect_log("permission denied for function pg_ls_waldir");
    let p = Pgark::start(&server_yaml("main", &c.conninfo("rep"), "synchronous: true"));
    p.wait_streaming("main");
    c.psql("CREATE TABLE t AS SELECT 1").unwrap();
    let (_, results) = check(&p.config, &[]);
    let d = assert_level(&results, "main", "synchronous", "warning");
    assert!(d.contains("hides its sync_state") && d.contains("GRANT pg_monitor TO rep"), "{d}");
    assert!(assert_level(&results, "main", "role_pg_monitor", "warning").contains("pgark's own included"));
}
