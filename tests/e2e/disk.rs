//! Disk faults injected into the real pgark binary with the LD_PRELOAD shim (`faultfs.c`): EIO on
//! write and on fsync in the WAL writer, the archiver, the preparation of encrypted spool files, a
//! backup's chunk writes and its index publish. After each: nothing acknowledged that is not
//! durable (the RPO=0 proof), no descriptor fsynced again after its fsync failed, the session
//! restarts and rewrites, nothing partial is published, and status, logs and metrics say what
//! happened.

use crate::support::faults::{fault_env, FaultLog};
use crate::support::*;
use std::time::Duration;

/// After the faults: streaming came back by itself, commits go on, and no descriptor whose
/// fsync failed was fsynced again (that retry would trust lost data).
fn commits_go_on_without_refsync(p: &Pgark, writers: &Writers, fault_log: &std::path::Path) {
    p.wait_streaming("main");
    let before = writers.count();
    wait_until(Duration::from_secs(60), "commits after the faults", || {
        writers.count() > before + 50
    });
    let faults = FaultLog::read(fault_log);
    assert!(
        faults.refsyncs().is_empty(),
        "a descriptor was fsynced again after EIO: {:?}",
        faults.refsyncs()
    );
}

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
    commits_go_on_without_refsync(&p, &writers, &fault_log);

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

/// EIO on a chunk's write, its early writeback (`sync_file_range`) and fsync, on the index's
/// fsync and on the directory fsync after the index was renamed into place: each backup fails,
/// says why, and leaves nothing listed and no chunk or intent record behind; then a backup
/// without faults succeeds.
#[test]
fn eio_in_a_backup_publishes_nothing() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    write_rows(&c, 3000);
    // Hex digests compress to about half: chunks large enough to be written behind in pieces.
    c.psql("CREATE TABLE noise AS SELECT md5(g::text) || md5(random()::text) AS h FROM generate_series(1, 60000) g")
        .unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo(&c.superuser), "backup_checkpoint: fast"));
    let dir = tempfile::tempdir().unwrap();
    for (i, rule) in [
        "write:/chunks/:3:eio",
        "range:/chunks/:2:eio",
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

/// With `encryption.local: true`, every file that becomes a `.partial` is first given its trailer
/// (key id, fresh nonce) and fdatasynced: by the receiver for a new file, by the archiver when it
/// recycles a segment into a spare. EIO on those writes and fdatasyncs, while 4 writers commit
/// with pgark as the only synchronous standby: the receiver's boundary fails and restarts, a
/// spare the archiver could not prepare is prepared again when used, no descriptor is fsynced
/// again after its fsync failed, and the catalog alone restores every acknowledged commit.
#[test]
fn eio_preparing_an_encrypted_spool_file_loses_nothing() {
    let dir = tempfile::Builder::new().prefix("pgark-key-").tempdir().unwrap();
    let key = dir.path().join("local.key");
    std::fs::write(&key, format!("{}\n", pgark::catalog::encryption::Key::generate().to_hex())).unwrap();
    let top = format!("encryption:\n  key_file: {}\n  local: true\n", key.display());
    let bins = pg();
    let c = Cluster::init_with(&bins, &["synchronous_standby_names = 'pgark'"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let server = server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true");
    let fault_log = dir.path().join("faults.log");
    // A new file (temporary names `<segment>.partial.<pid>.<n>.tmp`): the first write of its zero
    // fill, then, on the next attempt, the fdatasync after its trailer (the 2nd, after the zero
    // fill's). A recycled spare (`.spare.*`): the 2nd trailer write and the 3rd fdatasync.
    let rules = "write:.partial.:1:eio;fsync:.partial.:2:eio;write:.spare.:2:eio;fsync:.spare.:3:eio";
    let env = fault_env(rules, &fault_log);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut p = Pgark::start_full("", &top, &server, &env);
    p.wait_streaming("main");
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let o = pgark(&p.config, &["backup", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    let writers = Writers::start(&c, 4);
    wait_until(Duration::from_secs(120), "all four faults to fire", || {
        if FaultLog::read(&fault_log).injected() < 4 {
            // Segments complete faster than the writers alone fill them.
            let _ = c.psql("SELECT pg_switch_wal()");
            return false;
        }
        true
    });
    let log = p.log_text();
    assert!(log.contains("Input/output error"), "{}", tail(&log));
    assert!(
        log.contains("could not prepare a spare segment"),
        "the archiver's failure was not reported:\n{}",
        tail(&log)
    );
    commits_go_on_without_refsync(&p, &writers, &fault_log);
    // Every `.partial` is in the encrypted form (a failed preparation never took the name).
    let wal = p.wal_dir("main");
    for e in std::fs::read_dir(&wal).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".partial") {
            let b = std::fs::read(e.path()).unwrap();
            assert_eq!(b.len(), (1 << 20) + 4096, "{name}");
            assert_eq!(&b[1 << 20..(1 << 20) + 8], b"PGARKSPL", "{name}");
        }
    }
    c.kill9().unwrap();
    let acked = writers.finish();
    p.kill9();
    let bin = Binary::new();
    let (data, tmp, _) = restore(&bin, &p.config, "main", &[]);
    open_for_postgres(p.dir.path());
    open_for_postgres(dir.path());
    let r = start_restored(&bins, tmp, data, None);
    assert_all_acked_present(&r, &acked, "after EIO preparing encrypted spool files");
    eprintln!("EIO x4 in spool preparation: all {} acknowledged commits recovered", acked.len());
}
