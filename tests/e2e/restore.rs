//! Restore and point-in-time recovery with `pgark restore` and `pgark wal-get` against real
//! PostgreSQL: targets, RPO=0 end to end, timelines, tablespaces, delta, corruption, bad input.

use crate::support::*;
use pgark::util::os::running_as_root;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn ids(c: &Cluster) -> String {
    c.psql("SELECT coalesce(min(id), 0) || '-' || coalesce(max(id), 0) || '/' || count(*) FROM t")
        .unwrap()
}

fn insert(c: &Cluster, from: i32, to: i32) -> String {
    // Returns the transaction id that inserted the batch.
    c.psql(&format!(
        "BEGIN; INSERT INTO t SELECT g FROM generate_series({from}, {to}) g; SELECT txid_current(); COMMIT"
    ))
    .unwrap()
}

fn flush_all(c: &Cluster, p: &Pgark) {
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(c));
}

/// Test 1: time, LSN, xid (exclusive) and restore point targets recover exactly the rows
/// committed up to the target.
#[test]
fn pitr_to_time_lsn_xid_and_name() {
    let bin = Binary::new();
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t (id int)").unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo("postgres"), "synchronous: false"));
    p.wait_streaming("main");
    backup(&p.config, "main", &[]);
    insert(&c, 1, 100);
    // Time passes on purpose: the target time lies more than a second from either batch's commit.
    std::thread::sleep(Duration::from_millis(1100));
    let time_a = c
        .psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    insert(&c, 101, 200);
    let lsn_b = c.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    let xid_c = insert(&c, 201, 300);
    c.psql("SELECT pg_create_restore_point('before_d')").unwrap();
    insert(&c, 301, 400);
    flush_all(&c, &p);
    open_for_postgres(p.dir.path());

    let cases: [(&[&str], &str); 4] = [
        (&["--target-time", &time_a, "--target-action", "promote"], "1-100/100"),
        (&["--target-lsn", &lsn_b, "--target-action", "promote"], "1-200/200"),
        (
            &["--target-xid", &xid_c, "--target-inclusive", "false", "--target-action", "promote"],
            "1-200/200",
        ),
        (&["--target-name", "before_d", "--target-action", "promote"], "1-300/300"),
    ];
    for (args, want) in cases {
        let (data, tmp, out) = restore(&bin, &p.config, "main", args);
        assert!(out["plan"]["why"].as_str().unwrap().contains("backup"), "{out}");
        let r = start_restored(&c.bins, tmp, data, None);
        assert_eq!(ids(&r), want, "restore with {args:?}");
    }
}

/// Test 2: the RPO=0 proof with pgark only: pgark is the synchronous standby, writers record
/// every acknowledged id, the primary is SIGKILLed; `pgark restore` and a plain start bring back
/// every acknowledged id (wal-get serves the open partial segment).
#[test]
fn rpo_zero_with_pgark_restore_only() {
    let bin = Binary::new();
    let (c, p) = sync_primary_with_pgark(&["synchronous_commit = on"]);
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    backup(&p.config, "main", &[]);
    let writers = Writers::start(&c, 8);
    wait_until(Duration::from_secs(60), "a few hundred acknowledged commits", || {
        writers.count() >= 300
    });
    c.kill9().unwrap();
    let acked = writers.finish();
    assert!(acked.len() > 100, "only {} commits before the kill", acked.len());
    open_for_postgres(p.dir.path());
    let (data, tmp, out) = restore(&bin, &p.config, "main", &[]);
    assert_eq!(out["stats"]["files_unchanged"], 0);
    let r = start_restored(&c.bins, tmp, data, None);
    assert_all_acked_present(&r, &acked, "after SIGKILL of the primary and pgark restore");
}

/// Test 3: a backup taken on timeline 1 restored with --target-timeline latest follows the
/// promotion onto timeline 2 and has the rows written after it.
#[test]
fn restore_across_a_timeline_switch() {
    let bin = Binary::new();
    let primary = Cluster::init(&pg(), &[]).unwrap();
    primary.start().unwrap();
    primary.psql("CREATE TABLE t (id int)").unwrap();
    insert(&primary, 1, 10);
    let standby = start_standby(&primary);
    let p = Pgark::start(&server_yaml("main", &standby.conninfo("postgres"), "synchronous: false"));
    p.wait_streaming("main");
    wait_until(Duration::from_secs(30), "the standby to replay", || {
        standby.psql("SELECT count(*) FROM t").ok().as_deref() == Some("10")
    });
    backup(&p.config, "main", &[]);
    insert(&primary, 11, 20);
    wait_until(Duration::from_secs(30), "the standby to replay", || {
        standby.psql("SELECT count(*) FROM t").ok().as_deref() == Some("20")
    });
    primary.stop("fast").unwrap();
    standby.promote().unwrap();
    wait_until(Duration::from_secs(30), "promotion", || {
        standby.psql("SELECT pg_is_in_recovery()").ok().as_deref() == Some("f")
    });
    insert(&standby, 21, 30);
    wait_until(Duration::from_secs(60), "pgark on timeline 2", || {
        p.server("main").and_then(|s| s.timeline).map(|t| t.0) == Some(2)
    });
    standby.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&standby));
    open_for_postgres(p.dir.path());
    let (data, tmp, _) = restore(&bin, &p.config, "main", &["--target-timeline", "latest"]);
    let r = start_restored(&standby.bins, tmp, data, None);
    assert_eq!(ids(&r), "1-30/30");
    let wal = r.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
    assert!(
        wal.starts_with("00000003"),
        "the restored cluster should have promoted onto timeline 3, writes {wal}"
    );
}

/// Test 4 and 5: tablespace remapping, and a delta restore that rewrites only what changed and
/// ends up identical to a full restore.
#[test]
fn tablespace_remap_and_delta_restore() {
    let bin = Binary::new();
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    make_tablespace(&c, "ts1");
    c.psql("CREATE TABLE t (id int) TABLESPACE ts1").unwrap();
    c.psql("CREATE TABLE big AS SELECT g, md5(g::text) AS m FROM generate_series(1, 200000) g")
        .unwrap();
    insert(&c, 1, 1000);
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let b1 = backup(&cat.config, "main", &[]);
    let b1 = b1["id"].as_str().unwrap().to_string();
    open_for_postgres(&cat.catalog);
    open_for_postgres(&cat.config);

    // Full restore of backup 1 with the tablespace moved.
    let tsdir = tempfile::Builder::new().prefix("pgark-ts-").tempdir().unwrap();
    let newloc = tsdir.path().join("ts1");
    let map = format!("ts1={}", newloc.display());
    let (data_a, tmp_a, _) = restore(&bin, &cat.config, "main", &[&b1, "--tablespace", &map]);
    chown_postgres(tsdir.path()).unwrap();
    let a = start_restored(&c.bins, tmp_a, data_a.clone(), None);
    assert_eq!(
        a.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
            .unwrap(),
        newloc.display().to_string()
    );
    assert_eq!(ids(&a), "1-1000/1000");
    a.stop("fast").unwrap();

    // A small change, a second backup, and a delta restore onto the stopped copy.
    c.psql("UPDATE big SET m = 'changed' WHERE g <= 100").unwrap();
    insert(&c, 1001, 1010);
    let b2 = backup(&cat.config, "main", &[]);
    let b2 = b2["id"].as_str().unwrap().to_string();
    // A directory of the old copy replaced by a symlink to elsewhere: the delta restore must
    // replace the link with a directory and never write through it.
    let elsewhere = tempfile::Builder::new().prefix("pgark-elsewhere-").tempdir().unwrap();
    let moved = elsewhere.path().join("pg_xact");
    std::fs::rename(data_a.join("pg_xact"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, data_a.join("pg_xact")).unwrap();
    let outside_before = files_under(elsewhere.path())
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect::<Vec<_>>();
    let mut args = vec![
        "restore",
        "main",
        &b2,
        "--target-dir",
        data_a.to_str().unwrap(),
        "--tablespace",
        &map,
        "--delta",
        "--json",
    ];
    if running_as_root() {
        args.extend(["--owner", "postgres"]);
    }
    let o = bin.run(&cat.config, &args);
    assert!(o.status.success(), "{}", text(&o));
    let delta: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        std::fs::symlink_metadata(data_a.join("pg_xact")).unwrap().is_dir(),
        "the planted link was kept"
    );
    let outside_after = files_under(elsewhere.path())
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(outside_before, outside_after, "the delta restore wrote through a symlink");
    let st = &delta["stats"];
    let (written, unchanged) = (st["files_written"].as_u64().unwrap(), st["files_unchanged"].as_u64().unwrap());
    assert!(
        unchanged > 500 && written * 5 < unchanged,
        "delta rewrote {written} files, kept {unchanged}: {st}"
    );

    let (data_b, _tmp_b, _) = restore(
        &bin,
        &cat.config,
        "main",
        &[&b2, "--tablespace", &format!("ts1={}", tsdir.path().join("ts1b").display())],
    );
    let tree = |root: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = files_under(root)
            .into_iter()
            .filter(|p| !p.starts_with(root.join("pg_tblspc")))
            .map(|p| (p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let (ta, tb) = (tree(&data_a), tree(&data_b));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "delta and full restore hold different files");
    for ((n, x), (_, y)) in ta.iter().zip(tb.iter()) {
        if n != "postgresql.auto.conf" {
            assert!(x == y, "{n} differs between the delta and the full restore");
        }
    }
    assert_eq!(tree(&newloc), tree(&tsdir.path().join("ts1b")), "tablespace contents differ");
}

/// Runs `pgark restore --delta --json` of `backup` into `data`; returns the stats.
fn delta_into(bin: &Binary, config: &Path, backup: &str, data: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "restore",
        "main",
        backup,
        "--target-dir",
        data.to_str().unwrap(),
        "--delta",
        "--json",
    ];
    if running_as_root() {
        args.extend(["--owner", "postgres"]);
    }
    args.extend_from_slice(extra);
    let o = bin.run(config, &args);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["stats"].clone()
}

/// The restore record: a delta restore into a directory pgark restored trusts only files that
/// nobody touched since. A changed byte is found even when the file keeps its size and its
/// modification time is put back (`touch -r`: the ctime still moves), in a large file and in a
/// small one; `--verify-existing` reads everything; the result equals a fresh full restore.
#[test]
fn delta_trusts_only_files_untouched_since_the_last_restore() {
    let bin = Binary::new();
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE big AS SELECT g, md5(g::text) AS m FROM generate_series(1, 200000) g")
        .unwrap();
    c.psql("CREATE TABLE small AS SELECT 1 AS x").unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let b = backup(&cat.config, "main", &[]);
    let id = b["id"].as_str().unwrap().to_string();
    let rel = |table: &str| {
        let path = c.psql(&format!("SELECT pg_relation_filepath('{table}')")).unwrap();
        PathBuf::from(path)
    };
    let (big, small) = (rel("big"), rel("small"));
    let (data, _tmp, _) = restore(&bin, &cat.config, "main", &[&id]);
    assert!(
        std::fs::metadata(data.join(&big)).unwrap().len() > 8 << 20,
        "big spans several chunks"
    );

    // Nothing changed: every file is vouched for by the record, nothing but the recovery
    // settings and pg_control is written.
    let st = delta_into(&bin, &cat.config, &id, &data, &[]);
    let trusted = st["files_trusted"].as_u64().unwrap();
    assert!(trusted > 500, "{st}");
    assert!(st["bytes_written"].as_u64().unwrap() < 64 << 10, "{st}");

    // One byte changed inside each file, size kept, mtime put back.
    let flip = |path: &Path, offset: u64| {
        use std::os::unix::fs::FileExt;
        let reference = tempfile::NamedTempFile::new().unwrap();
        Command::new("touch").arg("-r").arg(path).arg(reference.path()).status().unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], offset).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(20));
        assert!(Command::new("touch")
            .arg("-r")
            .arg(reference.path())
            .arg(path)
            .status()
            .unwrap()
            .success());
    };
    flip(&data.join(&big), 6 << 20);
    flip(&data.join(&small), 100);
    let st = delta_into(&bin, &cat.config, &id, &data, &[]);
    assert!(st["files_trusted"].as_u64().unwrap() <= trusted - 2, "{st}");
    assert!(st["files_written"].as_u64().unwrap() >= 4, "both damaged files rewritten: {st}");
    let (fresh, _tmp2, _) = restore(&bin, &cat.config, "main", &[&id]);
    for f in [&big, &small] {
        assert!(
            std::fs::read(data.join(f)).unwrap() == std::fs::read(fresh.join(f)).unwrap(),
            "{} differs from a fresh restore after the delta",
            f.display()
        );
    }

    // A cluster that crashed (a stale postmaster.pid): after a crash file times on disk can
    // be older than the bytes, so the record is not used.
    let st = delta_into(&bin, &cat.config, &id, &data, &[]);
    assert!(st["files_trusted"].as_u64().unwrap() > 500, "{st}");
    std::fs::write(data.join("postmaster.pid"), "999999\n").unwrap();
    let st = delta_into(&bin, &cat.config, &id, &data, &[]);
    assert_eq!(st["files_trusted"].as_u64(), Some(0), "the record was trusted after a crash: {st}");
    assert!(!data.join("postmaster.pid").exists(), "the backup has no postmaster.pid: removed");

    // --verify-existing reads every file, whatever the record says.
    let st = delta_into(&bin, &cat.config, &id, &data, &["--verify-existing"]);
    assert_eq!(st["files_trusted"].as_u64(), Some(0), "{st}");
    assert!(st["files_unchanged"].as_u64().unwrap() > 500, "{st}");
}

/// The restore record under a crash: a `pgark restore --delta` killed (SIGKILL) while it writes
/// leaves no record behind (it is removed before anything is written), so the next delta reads
/// and checks every file instead of trusting the old record, and ends with the backup's exact
/// contents.
#[test]
fn restore_killed_mid_write_leaves_no_record_to_trust() {
    let bin = Binary::new();
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    // Enough incompressible data that the restore takes a while to write.
    c.psql(
        "CREATE TABLE big AS SELECT g, md5(g::text) || md5((g + 1)::text) || md5(random()::text) AS m FROM generate_series(1, 1500000) g",
    )
    .unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let id = backup(&cat.config, "main", &[])["id"].as_str().unwrap().to_string();
    let (data, _tmp, _) = restore(&bin, &cat.config, "main", &[&id]);
    let records = cat.catalog.join("main").join("restores");
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        1,
        "a finished restore leaves its record"
    );

    // Damage the big file's first chunk in place (same size), so a trusting delta would keep it.
    let big = data.join(c.psql("SELECT pg_relation_filepath('big')").unwrap());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.write_all_at(b"damaged", 8192 * 3).unwrap();
    }
    // A delta restore with --verify-existing (it reads everything, so it is slow enough to be
    // caught writing) is killed once it has started on the files.
    let mut args = vec![
        "restore",
        "main",
        &id,
        "--target-dir",
        data.to_str().unwrap(),
        "--delta",
        "--verify-existing",
        "--jobs",
        "1",
    ];
    if running_as_root() {
        args.extend(["--owner", "postgres"]);
    }
    let (cmd, rest) = args.split_first().unwrap();
    let mut child = Command::new(&bin.path)
        .arg(cmd)
        .arg("--config")
        .arg(&cat.config)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = data.join(pgark::restore::extract::MARKER);
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the restore never started writing");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the restore finished before it could be killed; the test needs more data"
    );
    assert!(marker.exists(), "the marker stays after a kill");
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        0,
        "a killed restore left a record to trust"
    );

    // The next delta trusts nothing, finds the damage and restores the backup exactly.
    let st = delta_into(&bin, &cat.config, &id, &data, &[]);
    assert_eq!(st["files_trusted"].as_u64(), Some(0), "{st}");
    let (fresh, _tmp2, _) = restore(&bin, &cat.config, "main", &[&id]);
    let rel = big.strip_prefix(&data).unwrap();
    assert!(
        std::fs::read(&big).unwrap() == std::fs::read(fresh.join(rel)).unwrap(),
        "the damaged file was not repaired"
    );
    assert!(!marker.exists());
}

/// Test 6 and 7: a damaged chunk stops the restore naming the file; wal-get of a missing segment
/// writes nothing; unknown backup, unreachable target, malformed input, non-empty target.
#[test]
fn restore_refuses_damage_and_bad_input() {
    let bin = Binary::new();
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 50000) g").unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let b = backup(&cat.config, "main", &[]);
    let id = b["id"].as_str().unwrap().to_string();
    let dir = tempfile::Builder::new().prefix("pgark-bad-").tempdir().unwrap();
    let target = dir.path().join("data");
    let t = target.to_str().unwrap();
    let code = |args: &[&str]| {
        let o = bin.run(&cat.config, args);
        (o.status.code(), text(&o))
    };

    let (c5, m) = code(&["restore", "main", "20990101T000000Z", "--target-dir", t]);
    assert_eq!(c5, Some(5), "{m}");
    let (c7, m) = code(&["restore", "main", "--target-dir", t, "--target-time", "2001-01-01 00:00:00+00"]);
    assert_eq!(c7, Some(7), "{m}");
    assert!(m.contains("Reachable"), "{m}");
    let (c7, m) = code(&["restore", "main", "--target-dir", t, "--target-lsn", "FF/0"]);
    assert_eq!(c7, Some(7), "{m}");
    let (c2, m) = code(&["restore", "main", "--target-dir", t, "--target-time", "next tuesday"]);
    assert_eq!(c2, Some(2), "{m}");
    assert!(m.contains("--target-time"), "{m}");
    let (c2, m) = code(&["restore", "main", "--target-dir", t, "--target-lsn", "0/XYZ"]);
    assert_eq!(c2, Some(2), "{m}");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("something"), b"x").unwrap();
    let (c2, m) = code(&["restore", "main", "--target-dir", t]);
    assert_eq!(c2, Some(2), "{m}");
    assert!(m.contains("not empty") && m.contains("--delta"), "{m}");
    std::fs::remove_file(target.join("something")).unwrap();

    // wal-get: absent -> 1 and nothing written.
    let dest = dir.path().join("seg");
    let (c1, m) = code(&["wal-get", "main", "0000000100000000000000FF", dest.to_str().unwrap()]);
    assert_eq!(c1, Some(1), "{m}");
    assert!(!dest.exists());

    // A restore holds <server>/restore.lock shared: delete-backup is refused while one runs
    // (a shared holder here stands in for it), and a restore waits while delete-backup holds it.
    let lock_path = cat.catalog.join("main/restore.lock");
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    let flock = |op| {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this test owns.
        assert_eq!(unsafe { libc::flock(lock_file.as_raw_fd(), op) }, 0);
    };
    flock(libc::LOCK_SH);
    let (c4, m) = code(&["delete-backup", "main", &id]);
    assert_eq!(c4, Some(4), "{m}");
    assert!(m.contains("of server main is reading its backups"), "{m}");
    flock(libc::LOCK_EX);
    let waiting_dir = dir.path().join("waiting");
    let mut waiting = std::process::Command::new(&bin.path)
        .args(["restore", "--config"])
        .arg(&cat.config)
        .args(["main", "--target-dir"])
        .arg(&waiting_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Time passes on purpose: for 2 s the restore must neither finish nor write.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "restore ran while delete-backup held the lock"
    );
    assert!(
        !waiting_dir.join("PG_VERSION").exists(),
        "restore wrote while delete-backup held the lock"
    );
    flock(libc::LOCK_UN);
    assert!(waiting.wait().unwrap().success(), "the restore should go on once the lock is free");
    assert!(waiting_dir.join("global/pg_control").exists());

    // Damage the largest chunk of the relation: the restore stops and names the file.
    let idx: Value = serde_json::from_slice(&std::fs::read(cat.catalog.join(format!("main/backups/{id}.json"))).unwrap()).unwrap();
    let rel = idx["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "file")
        .max_by_key(|f| f["size"].as_u64().unwrap())
        .unwrap();
    let victim = rel["path"].as_str().unwrap().to_string();
    let obj = rel["chunks"][0]["object"].as_str().unwrap();
    let chunk = cat.catalog.join(format!("main/chunks/{obj}"));
    let mut bytes = std::fs::read(&chunk).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&chunk, &bytes).unwrap();
    let (c1, m) = code(&["restore", "main", "--target-dir", t]);
    assert_eq!(c1, Some(1), "{m}");
    assert!(m.contains(&victim), "the message should name {victim}: {m}");
    assert!(target.join("pgark_restore_incomplete").exists(), "marker expected");
    assert!(
        !target.join("global/pg_control").exists(),
        "pg_control must not be there after a failed restore"
    );
    let listed = files_under(&target);
    assert!(!listed.is_empty());
}
