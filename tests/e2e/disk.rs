//! Disk faults injected into the real pgark binary with the LD_PRELOAD shim (`faultfs.c`): EIO
//! on write and on fsync in the WAL writer, the archiver, a backup's chunk writes and its index
//! publish. After each: nothing acknowledged that is not durable (the RPO=0 proof), no
//! descriptor fsynced again after its fsync failed, the session restarts and rewrites, nothing
//! partial is published, and status, logs and metrics say what happened.

use crate::support::faults::{fault_env, FaultLog};
use crate::support::*;
use std::time::Duration;

/// EIO on the WAL writer's fdatasync and pwrite, and on the archiver's compressed-segment write
/// and fsync, while 4 writers commit with pgark as the only synchronous standby.
#[test]
fn eio_in_the_wal_writer_and_the_archiver_loses_nothing() {
    let bins = pg();
    let c = Cluster::init_with(&bins, &["synchronous_standby_names = 'pgark'"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let mut p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true"));
    p.wait_streaming("main");
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let backup = c.base_dir().join("backup");
    pg_basebackup(&c, &backup, &["-X", "none"]);

    // The same daemon again, now with faults: the 20th fdatasync and the 60th write of a WAL
    // segment, the 3rd write and the 5th fsync of a compressed segment being built.
    let fault_log = p.dir.path().join("faults.log");
    let rules = "fsync:/wal/0:20:eio;write:/wal/0:60:eio;write:.zst.:3:eio;fsync:.zst.:5:eio";
    p.term();
    p.set_env(&fault_env(rules, &fault_log));
    p.spawn();
    p.wait_streaming("main");
    let writers = Writers::start(&c, 4);
    wait_until(Duration::from_secs(120), "all four faults to fire", || {
        FaultLog::read(&fault_log).injected() == 4
    });
    let log = p.log_text();
    let store_errors = log.matches("catalog write failed").count();
    assert!(store_errors >= 2, "the WAL writer's failures were not reported:\n{}", tail(&log));
    assert!(log.contains("Input/output error"), "{}", tail(&log));
    wait_until(Duration::from_secs(60), "the archiver to report its failures", || {
        p.log_text().matches("archiving a completed segment failed").count() >= 2
    });
    assert!(p.metric("pgark_wal_store_errors_total{server=\"main\"}").unwrap_or(0.0) >= 2.0);
    assert!(
        p.metric("pgark_disconnects_total{server=\"main\",reason=\"catalog\"}")
            .unwrap_or(0.0)
            >= 2.0
    );
    // Streaming came back by itself and commits go on.
    p.wait_streaming("main");
    let before = writers.count();
    wait_until(Duration::from_secs(60), "commits after the faults", || {
        writers.count() > before + 50
    });
    let faults = FaultLog::read(&fault_log);
    assert!(
        faults.refsyncs().is_empty(),
        "a descriptor was fsynced again after EIO: {:?}",
        faults.refsyncs()
    );

    // Every completed segment ends up archived (the failed ones retried), byte-exact.
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    let wal = p.wal_dir("main");
    wait_until(Duration::from_secs(60), "every completed segment compressed", || {
        std::fs::read_dir(&wal)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.len() == 24)
            .count()
            == 0
    });
    let seg = seg_size(&c);
    assert!(assert_byte_exact(&wal, &c.pg_wal(), seg) >= 1);
    assert_no_gap(&wal, seg);
    c.kill9().unwrap();
    let acked = writers.finish();
    p.kill9();
    let r = recover_from_catalog(&bins, &backup, &wal, seg);
    assert_all_acked_present(&r, &acked, "after EIO in the WAL writer and the archiver");
    eprintln!("EIO x4: all {} acknowledged commits recovered", acked.len());
}

/// EIO on a chunk's write and fsync, on the index's fsync and on the directory fsync after the
/// index was renamed into place: each backup fails, says why, and leaves nothing listed and no
/// chunk or intent record behind; then a backup without faults succeeds.
#[test]
fn eio_in_a_backup_publishes_nothing() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    write_rows(&c, 3000);
    let cat = Catalog::new(&server_yaml("main", &c.conninfo(&c.superuser), "backup_checkpoint: fast"));
    let dir = tempfile::tempdir().unwrap();
    for (i, rule) in [
        "write:/chunks/:3:eio",
        "fsync:/chunks/:2:eio",
        "fsync:.json.:1:eio",
        "fsync:/main/backups$:3:eio",
    ]
    .iter()
    .enumerate()
    {
        let log = dir.path().join(format!("faults-{i}.log"));
        let o = pgark_with(&cat.config, &["backup", "main"], &fault_env(rule, &log));
        let out = text(&o);
        let faults = FaultLog::read(&log);
        assert_eq!(faults.injected(), 1, "{rule}: the fault did not fire\n{out}");
        assert_eq!(o.status.code(), Some(1), "{rule}: {out}");
        assert!(out.contains("Input/output error"), "{rule}: the error is not named: {out}");
        assert!(faults.refsyncs().is_empty(), "{rule}: {:?}", faults.refsyncs());
        let list = pgark(&cat.config, &["list-backups", "main", "--json"]);
        assert_eq!(
            String::from_utf8_lossy(&list.stdout).trim(),
            "[]",
            "{rule}: a failed backup is listed"
        );
        let left: Vec<String> = files_under(&cat.catalog.join("main"))
            .iter()
            .map(|f| f.display().to_string())
            .filter(|f| f.contains("/chunks/") || f.contains("/backups/"))
            .collect();
        assert!(left.is_empty(), "{rule}: the failed backup left {left:?}");
        eprintln!("{rule}: backup failed cleanly");
    }
    let o = pgark(&cat.config, &["backup", "main"]);
    assert!(o.status.success(), "{}", text(&o));
}
