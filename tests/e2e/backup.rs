//! Base backups against real PostgreSQL: manifest agreement, restorability checked without
//! pgark's restore code, tablespaces, interruptions, deduplication, old and new BASE_BACKUP
//! syntax, standbys, and bad input.

use crate::support::*;
use pgark::util::os::running_as_root;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Tests 1, 2 and 3: a backup under pgbench load, with a user tablespace, while `pgark serve`
/// streams; files match the manifest, the WAL is in the catalog, and a cluster unpacked by hand
/// and recovered from the catalog's WAL has the primary's data.
#[test]
fn backup_under_load_restores_with_tablespace() {
    let c = Cluster::init(&pg(), &["wal_keep_size = 512MB"]).unwrap();
    c.start().unwrap();
    make_tablespace(&c, "ts1");
    c.psql("CREATE TABLE in_ts (id int, t text) TABLESPACE ts1; INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .unwrap();
    pgbench_init(&c, 5);
    let p = Pgark::start(&server_yaml("main", &c.conninfo("postgres"), "synchronous: false"));
    p.wait_streaming("main");
    let load = pgbench(&c, &["-c", "2", "-T", "15", "-n"]);
    wait_until(Duration::from_secs(30), "the pgbench load to be committing", || {
        c.psql("SELECT count(*) FROM pgbench_history")
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 100)
    });
    let b = backup(&p.config, "main", &["--label", "under load"]);
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["wal_source"], "catalog", "{b}");
    assert_eq!(b["label"], "under load");
    let o = load.wait_with_output().unwrap();
    assert!(o.status.success(), "pgbench: {}", String::from_utf8_lossy(&o.stderr));
    assert!(b["tablespaces"].as_array().unwrap().iter().any(|t| t["oid"].is_number()), "{b}");

    let checked = assert_matches_manifest(&p.catalog, "main", &id);
    assert!(checked > 500, "only {checked} files checked");
    let listed = list(&p.config);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["usable"], true, "{}", listed[0]);
    assert_eq!(listed[0]["wal"]["present"], true);

    // Everything the primary has committed, flushed into the catalog as complete segments.
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    let expect: Vec<String> = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
        "in_ts",
    ]
    .iter()
    .map(|t| table_sum(&c, t))
    .collect();

    let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
    let data = tmp.path().join("data");
    unpack(&p.catalog, "main", &id, &data);
    open_for_postgres(&p.catalog);
    let restored = start_restored(&c.bins, tmp, data, Some(&p.wal_dir("main")));
    let got: Vec<String> = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
        "in_ts",
    ]
    .iter()
    .map(|t| table_sum(&restored, t))
    .collect();
    assert_eq!(got, expect, "restored tables differ from the primary");
    let loc = restored
        .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
        .unwrap();
    assert!(loc.contains("data.ts/"), "tablespace came back at {loc}");
}

/// Test 5 and the daemon's schedule: `pgark serve` takes the first backup by itself
/// (backup_schedule), a second one of the unchanged database adds under 5% of the first's
/// stored size, deleting works and frees chunks, and the metrics show the last backup.
#[test]
fn scheduled_backup_then_dedup_and_delete() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    pgbench_init(&c, 10);
    c.psql("CREATE TABLE rnd AS SELECT g, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 200000) g")
        .unwrap();
    c.psql("VACUUM FREEZE").unwrap();
    let p = Pgark::start(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        "synchronous: false\nbackup_schedule: 1h\nbackup_checkpoint: fast",
    ));
    let mut first = vec![];
    wait_until(Duration::from_secs(120), "the scheduled backup", || {
        first = list(&p.config);
        !first.is_empty()
    });
    let first = &first[0];
    assert!(first["label"].as_str().unwrap().starts_with("scheduled every 1h"), "{first}");
    assert!(
        p.metric("pgark_last_backup_success_timestamp_seconds{server=\"main\"}").is_some(),
        "{}",
        p.metrics_text()
    );

    let second = backup(&p.config, "main", &[]);
    let (a, b) = (
        first["stored_new_bytes"].as_u64().unwrap(),
        second["stored_new_bytes"].as_u64().unwrap(),
    );
    assert!(b * 20 < a, "second backup stored {b} bytes, not under 5% of the first's {a}");
    assert_matches_manifest(&p.catalog, "main", second["id"].as_str().unwrap());

    // Deleting the first keeps every chunk the second needs.
    let id1 = first["id"].as_str().unwrap();
    let o = pgark(&p.config, &["delete-backup", "main", id1]);
    assert!(o.status.success(), "{}", text(&o));
    assert_matches_manifest(&p.catalog, "main", second["id"].as_str().unwrap());
    // The only usable backup is protected.
    let id2 = second["id"].as_str().unwrap();
    let o = pgark(&p.config, &["delete-backup", "main", id2]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("only usable backup"), "{}", text(&o));
    let o = pgark(&p.config, &["delete-backup", "main", id2, "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(list(&p.config).is_empty());
    let chunks = files_under(&p.catalog.join("main/chunks"));
    assert!(chunks.is_empty(), "chunks left after deleting every backup: {chunks:?}");
}

/// What must be true after a backup was interrupted, and once the next one cleaned up.
fn assert_nothing_visible(cat: &Catalog) {
    assert!(list(&cat.config).is_empty(), "an interrupted backup is listed");
    let names: Vec<String> = files_under(&cat.catalog.join("main/backups"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".json")), "{names:?}");
}

fn wait_backup_running(c: &Cluster) {
    wait_until(Duration::from_secs(30), "the backup to stream", || {
        c.psql("SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'streaming database files'")
            .ok()
            .as_deref()
            == Some("1")
    });
}

fn assert_server_not_in_backup(c: &Cluster) {
    wait_until(Duration::from_secs(30), "the server to end its side of the backup", || {
        c.psql("SELECT count(*) FROM pg_stat_progress_basebackup").ok().as_deref() == Some("0")
    });
}

/// Test 4: SIGKILL of pgark, a dropped connection and a server stop in the middle of a backup
/// leave nothing listed; the next backup removes the leftovers and succeeds.
#[test]
fn interrupted_backups_leave_nothing_visible() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((g+1)::text) AS t FROM generate_series(1, 400000) g")
        .unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let spawn_backup = || {
        Command::new(pgark_bin())
            .args(["backup", "--config"])
            .arg(&cat.config)
            .args(["main", "--checkpoint", "fast", "--max-rate", "2048"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // 1. SIGKILL pgark mid-stream, once it has stored some chunks.
    let mut child = spawn_backup();
    wait_backup_running(&c);
    wait_until(Duration::from_secs(30), "the backup to store chunks", || {
        !files_under(&cat.catalog.join("main/chunks")).is_empty()
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert_nothing_visible(&cat);
    let running = files_under(&cat.catalog.join("main/backups"));
    assert!(
        running.iter().any(|p| p.to_string_lossy().ends_with(".running")),
        "intent record expected: {running:?}"
    );
    assert!(
        !files_under(&cat.catalog.join("main/chunks")).is_empty(),
        "the killed backup should have stored chunks"
    );
    assert_server_not_in_backup(&c);

    // 2. The connection dropped (the walsender terminated).
    let child = spawn_backup();
    wait_backup_running(&c);
    c.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender'")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_nothing_visible(&cat);
    // A failed backup cleans up at once, including what the killed one left.
    assert!(files_under(&cat.catalog.join("main/backups")).is_empty());
    assert!(files_under(&cat.catalog.join("main/chunks")).is_empty());

    // 3. The server stops mid-backup.
    let child = spawn_backup();
    wait_backup_running(&c);
    c.stop("fast").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("failed"), "{}", text(&o));
    assert_nothing_visible(&cat);
    c.start().unwrap();

    // Then a backup succeeds and is the only one.
    let b = backup(&cat.config, "main", &[]);
    assert_eq!(b["wal_source"], "backup", "{b}");
    assert_eq!(list(&cat.config).len(), 1);
    assert_matches_manifest(&cat.catalog, "main", b["id"].as_str().unwrap());
    assert_server_not_in_backup(&c);
}

/// A full catalog filesystem ends the backup cleanly, saying how much was needed.
#[test]
fn full_catalog_disk_ends_the_backup_cleanly() {
    if !running_as_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return;
    }
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE rnd AS SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 300000) g")
        .unwrap();
    let cat = Catalog::new(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        "backup_min_free: 1MiB\nbackup_compression: none",
    ));
    std::fs::create_dir_all(&cat.catalog).unwrap();
    let _fs = MountedFs::at(&cat.catalog, "size=40m").expect("mounting a 40 MiB tmpfs as root");
    let o = pgark(&cat.config, &["backup", "main", "--checkpoint", "fast"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("free") && t.contains("need"), "{t}");
    assert!(list(&cat.config).is_empty());
    assert!(
        files_under(&cat.catalog.join("main/chunks")).is_empty(),
        "chunks left after a failed backup"
    );
    assert_server_not_in_backup(&c);
}

/// Test 6: the old (13, 14) and new (15+) BASE_BACKUP syntax, on every major available: the
/// backup matches the manifest and, unpacked by hand, starts and has the data.
#[test]
fn backup_version_matrix() {
    let mut versions = vec![pg()];
    versions.extend(matrix());
    for bins in versions {
        let major = bins.major;
        let c = Cluster::init(&bins, &[]).unwrap();
        c.start().unwrap();
        c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 12345) g").unwrap();
        make_tablespace(&c, "tsv");
        c.psql("CREATE TABLE t2 TABLESPACE tsv AS SELECT g FROM generate_series(1, 777) g")
            .unwrap();
        let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
        let b = backup(&cat.config, "main", &[]);
        assert_eq!(b["pg_version"].as_u64().unwrap() / 10000, major as u64, "{b}");
        let id = b["id"].as_str().unwrap();
        assert_matches_manifest(&cat.catalog, "main", id);
        let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
        let data = tmp.path().join("data");
        unpack(&cat.catalog, "main", id, &data);
        let r = start_restored(&bins, tmp, data, None);
        assert_eq!(r.psql("SELECT count(*) FROM t").unwrap(), "12345", "PostgreSQL {major}");
        assert_eq!(r.psql("SELECT count(*) FROM t2").unwrap(), "777", "PostgreSQL {major}");
        eprintln!("PostgreSQL {major}: backup and hand restore OK");
    }
}

/// Test 7: a backup taken from a hot standby.
#[test]
fn backup_from_a_standby() {
    let primary = Cluster::init(&pg(), &[]).unwrap();
    primary.start().unwrap();
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g").unwrap();
    let standby = start_standby(&primary);
    wait_until(Duration::from_secs(30), "the standby to replay", || {
        standby.psql("SELECT count(*) FROM t").ok().as_deref() == Some("5000")
    });
    let cat = Catalog::new(&server_yaml("replica", &standby.conninfo("postgres"), ""));
    // A standby cannot switch WAL itself; keep the primary producing some so the backup ends.
    let b = backup(&cat.config, "replica", &[]);
    assert_eq!(b["from_standby"], true, "{b}");
    let id = b["id"].as_str().unwrap();
    assert_matches_manifest(&cat.catalog, "replica", id);
    let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
    let data = tmp.path().join("data");
    unpack(&cat.catalog, "replica", id, &data);
    // The copied standby.signal would keep it a standby; start it as a primary.
    let _ = std::fs::remove_file(data.join("standby.signal"));
    let r = start_restored(&primary.bins, tmp, data, None);
    assert_eq!(r.psql("SELECT count(*) FROM t").unwrap(), "5000");
}

/// Test 8: unknown server, unknown backup id, a catalog that cannot be written.
#[test]
fn backup_commands_reject_bad_input() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let o = pgark(&cat.config, &["backup", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("\"nosuch\"") && text(&o).contains("main"), "{}", text(&o));
    let o = pgark(&cat.config, &["show-backup", "main", "20990101T000000Z"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("20990101T000000Z"), "{}", text(&o));
    let o = pgark(&cat.config, &["delete-backup", "main", "nope"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let o = pgark(&cat.config, &["list-backups", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = pgark(&cat.config, &["list-backups"]);
    assert!(o.status.success() && text(&o).contains("no backups"), "{}", text(&o));
    let o = pgark(&cat.config, &["backup", "main", "--max-rate", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = pgark(&cat.config, &["backup", "main", "--max-rate", "1kB"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("MAX_RATE"), "{}", text(&o));

    if running_as_root() {
        // Read-only filesystem: root ignores permission bits, so mount one.
        std::fs::create_dir_all(&cat.catalog).unwrap();
        let ro = MountedFs::at(&cat.catalog, "ro,size=1m").expect("mounting a read-only tmpfs as root");
        let o = pgark(&cat.config, &["backup", "main"]);
        drop(ro);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(&cat.catalog.display().to_string()), "{}", text(&o));
        assert!(
            text(&o).to_lowercase().contains("read-only") || text(&o).contains("not writable"),
            "{}",
            text(&o)
        );
    }

    // backup_max_rate reaches the server as MAX_RATE: the backup cannot be faster than it.
    let rated = Catalog::new(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        "backup_max_rate: 8MB\nbackup_checkpoint: fast",
    ));
    let started = std::time::Instant::now();
    let o = pgark(&rated.config, &["backup", "main", "--json"]);
    let took = started.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", text(&o));
    let sent = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["received_bytes"]
        .as_u64()
        .unwrap();
    let floor = 0.8 * sent as f64 / (8_000_000 / 1024 * 1024) as f64;
    assert!(
        took >= floor,
        "{sent} bytes in {took:.1} s with backup_max_rate 8MB (at least {floor:.1} s expected)"
    );
}
