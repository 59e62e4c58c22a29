//! `pgark verify` against real PostgreSQL: a clean catalog verifies (exit 0) on every major;
//! a flipped byte in a chunk, in a compressed and in a plain segment, a missing segment and a
//! segment under another's name are each found (exit 9, the object named); the `--json` shape;
//! the stored result in list-backups; the daemon's scheduled verify and its metrics.

use crate::support::*;
use pgark::pg::WalSegSize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `pgark verify --json ...`: exit code, the parsed report (when it printed one), and the text.
fn verify(config: &Path, args: &[&str]) -> (Option<i32>, Option<Value>, String) {
    let mut a = vec!["verify"];
    a.extend_from_slice(args);
    a.push("--json");
    let o = pgark(config, &a);
    (o.status.code(), serde_json::from_slice(&o.stdout).ok(), text(&o))
}

/// Switches segments `n` times with some WAL in each, then waits until pgark flushed it all and
/// every completed segment of the server is archived in the form `compressed` says.
fn make_segments(c: &Cluster, p: &Pgark, server: &str, n: usize, compressed: bool) {
    for _ in 0..n {
        write_rows(c, 200);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    p.wait_flushed(server, current_flush_lsn(c));
    let wal = p.wal_dir(server);
    let seg = seg_size(c);
    wait_until(Duration::from_secs(60), "completed segments archived", || {
        completed_segments(&wal, seg).iter().all(|(name, _)| {
            if compressed {
                wal.join(format!("{name}.zst")).exists() && !wal.join(name).exists()
            } else {
                wal.join(format!("{name}.sum")).exists()
            }
        })
    });
}

/// Completed segments from the backup's start segment on (names), oldest first.
fn segments_after(wal: &Path, seg: WalSegSize, start_lsn: &str) -> Vec<String> {
    let start = seg.segno(start_lsn.parse().unwrap());
    completed_segments(wal, seg)
        .into_iter()
        .filter(|(_, w)| w.segno >= start)
        .map(|(n, _)| n)
        .collect()
}

/// Flips one byte in the middle of `path`; returns the original content.
fn flip(path: &Path) -> Vec<u8> {
    let orig = std::fs::read(path).unwrap();
    let mut b = orig.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(path, &b).unwrap();
    orig
}

fn assert_damaged(config: &Path, server: &str, object: &str, what: &str) -> Value {
    let (code, json, t) = verify(config, &[server]);
    assert_eq!(code, Some(9), "{what}: {t}");
    let json = json.unwrap_or_else(|| panic!("{what}: no JSON: {t}"));
    assert_eq!(json["status"], "damaged", "{what}: {json}");
    let problems = json["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["object"].as_str() == Some(object)),
        "{what}: {object} not named in {json}"
    );
    json
}

/// The clean catalog and each kind of damage, on one cluster streamed into two servers of one
/// daemon (`main` compressed, `plain` with `compression: none`), and the daemon's scheduled
/// verify of `main` with its metrics.
#[test]
fn verify_finds_each_kind_of_damage() {
    let c = Cluster::init(&pg(), &["wal_keep_size = 256MB"]).unwrap();
    c.start().unwrap();
    let conn = c.conninfo("postgres");
    let mut p = Pgark::start(&format!(
        "{}{}",
        server_yaml("main", &conn, "synchronous: false\nverify_schedule: 1h\nverify_max_rate: 200MB"),
        server_yaml("plain", &conn, "synchronous: false\ncompression: none")
    ));
    p.wait_streaming("main");
    p.wait_streaming("plain");
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 100000) g")
        .unwrap();
    let b = backup(&p.config, "main", &[]);
    let id = b["id"].as_str().unwrap().to_string();
    let bp = backup(&p.config, "plain", &[]);
    make_segments(&c, &p, "main", 4, true);
    make_segments(&c, &p, "plain", 0, false);

    // The scheduled verify (due at once: never verified) runs and sets the metrics.
    p.wait_metric(
        "pgark_verify_runs_total{server=\"main\",result=\"ok\"}",
        "a scheduled verify of main",
        |v| v >= 1.0,
    );
    assert_eq!(p.metric("pgark_verify_problems{server=\"main\"}"), Some(0.0));
    assert!(p.metric("pgark_verify_last_success_timestamp_seconds{server=\"main\"}").unwrap() > 1.7e9);
    assert_eq!(p.metric("pgark_verify_runs_total{server=\"main\",result=\"damaged\"}"), Some(0.0));
    assert_eq!(
        p.metric("pgark_verify_runs_total{server=\"plain\",result=\"ok\"}"),
        None,
        "no verify_schedule, no verify"
    );

    // Clean: exit 0, and the --json shape.
    let (code, json, t) = verify(&p.config, &["main"]);
    assert_eq!(code, Some(0), "{t}");
    let json = json.unwrap();
    assert_eq!(json["server"], "main");
    assert_eq!(json["status"], "ok");
    assert_eq!(json["backups"][0]["id"], id.as_str());
    assert_eq!(json["backups"][0]["status"], "ok");
    assert_eq!(json["problems"].as_array().unwrap().len(), 0, "{json}");
    assert_eq!(json["unreachable"].as_array().unwrap().len(), 0, "{json}");
    assert!(json["chunks_checked"].as_u64().unwrap() > 10, "{json}");
    assert!(json["files_checked"].as_u64().unwrap() > 500, "{json}");
    assert!(json["segments_checked"].as_u64().unwrap() >= 5, "{json}");
    assert!(json["bytes_checked"].as_u64().unwrap() > 1_000_000, "{json}");
    assert!(json["bytes_per_second"].as_u64().is_some() && json["seconds"].as_f64().is_some());
    let (code, _, t) = verify(&p.config, &["plain", "--all"]);
    assert_eq!(code, Some(0), "{t}");
    // Plain text: a summary line with bytes and throughput.
    let o = pgark(&p.config, &["verify", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("everything intact") && text(&o).contains("/s)"), "{}", text(&o));

    // The stored result, in list-backups and show-backup.
    let listed = list(&p.config);
    let mine = listed.iter().find(|b| b["id"] == id.as_str() && b["server"] == "main").unwrap();
    assert_eq!(mine["verify_status"], "ok", "{mine}");
    assert_ne!(mine["verified_at"], "never", "{mine}");
    assert!(p.catalog.join(format!("main/backups/{id}.verify")).exists());
    let o = pgark(&p.config, &["show-backup", "main", &id]);
    assert!(text(&o).contains("verified:           ok"), "{}", text(&o));

    // Usage and unknown backups.
    let (code, _, t) = verify(&p.config, &["main", "20990101T000000Z"]);
    assert_eq!(code, Some(5), "{t}");
    let (code, _, t) = verify(&p.config, &["main", &id, "--all"]);
    assert_eq!(code, Some(2), "{t}");
    let (code, _, t) = verify(&p.config, &["nosuch"]);
    assert_eq!(code, Some(2), "{t}");

    // Beside live streaming (segments completing, compressed, recycled under the verify's
    // eyes): still intact, never a false alarm.
    pgbench_init(&c, 2);
    let load = pgbench(&c, &["-c", "2", "-T", "12", "-n"]);
    for _ in 0..3 {
        let (code, _, t) = verify(&p.config, &["main"]);
        assert_eq!(code, Some(0), "verify during load: {t}");
        let (code, _, t) = verify(&p.config, &["plain"]);
        assert_eq!(code, Some(0), "verify during load: {t}");
    }
    assert!(load.wait_with_output().unwrap().status.success());

    // From here on nothing may move under the test: the daemon stops.
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    let wal = p.wal_dir("main");
    let segs = segments_after(&wal, seg, b["start_lsn"].as_str().unwrap());
    assert!(segs.len() >= 4, "{segs:?}");

    // A flipped byte in a chunk: the chunk named, with a file that uses it.
    let index = index(&p.catalog, "main", &id);
    let chunk = index["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["chunks"].as_array().and_then(|c| c.first()))
        .find(|c| c["stored"].as_u64().unwrap() > 1000)
        .unwrap()["object"]
        .as_str()
        .unwrap()
        .to_string();
    let chunk_path = p.catalog.join("main/chunks").join(&chunk);
    let orig = flip(&chunk_path);
    let json = assert_damaged(&p.config, "main", &chunk, "flipped chunk byte");
    assert_eq!(json["backups"][0]["status"], "damaged");
    let listed = list(&p.config);
    let mine = listed.iter().find(|b| b["id"] == id.as_str() && b["server"] == "main").unwrap();
    assert_eq!(mine["verify_status"], "damaged", "{mine}");
    std::fs::write(&chunk_path, orig).unwrap();

    // A flipped byte in a compressed segment.
    let victim = segs[1].clone();
    let zst = wal.join(format!("{victim}.zst"));
    let orig = flip(&zst);
    assert_damaged(&p.config, "main", &victim, "flipped .zst byte");
    std::fs::write(&zst, orig).unwrap();

    // A missing segment: named, with the point-in-time range lost.
    let moved: PathBuf = p.dir.path().join("moved.zst");
    std::fs::rename(&zst, &moved).unwrap();
    let json = assert_damaged(&p.config, "main", &victim, "missing segment");
    let unreachable = json["unreachable"].to_string();
    assert!(unreachable.contains("no PITR between") && unreachable.contains(&victim), "{json}");
    assert!(json["problems"].to_string().contains("missing"), "{json}");

    // A segment under another's name: the one before it copied over the missing one's name.
    std::fs::copy(wal.join(format!("{}.zst", segs[0])), &zst).unwrap();
    let json = assert_damaged(&p.config, "main", &victim, "segment under a wrong name");
    assert!(json["problems"].to_string().contains("xlp_pageaddr"), "{json}");
    std::fs::rename(&moved, &zst).unwrap();

    // A flipped byte in a plain segment (compression: none, checked against its .sum).
    let plain_wal = p.wal_dir("plain");
    let psegs = segments_after(&plain_wal, seg, bp["start_lsn"].as_str().unwrap());
    let pvictim = psegs.last().unwrap().clone();
    let ppath = plain_wal.join(&pvictim);
    let orig = flip(&ppath);
    let json = assert_damaged(&p.config, "plain", &pvictim, "flipped plain segment byte");
    assert!(json["problems"].to_string().contains("crc32c"), "{json}");
    std::fs::write(&ppath, orig).unwrap();

    // Everything put back: intact again, and so recorded.
    let (code, _, t) = verify(&p.config, &["main", "--all"]);
    assert_eq!(code, Some(0), "{t}");
    let (code, _, t) = verify(&p.config, &["plain"]);
    assert_eq!(code, Some(0), "{t}");
    let listed = list(&p.config);
    assert!(listed.iter().all(|b| b["verify_status"] == "ok"), "{listed:?}");
}

/// A clean catalog verifies on every PostgreSQL major (the page magic differs per major).
#[test]
fn verify_clean_catalog_version_matrix() {
    let mut versions = vec![pg()];
    versions.extend(matrix());
    for bins in versions {
        let major = bins.major;
        let c = Cluster::init(&bins, &[]).unwrap();
        c.start().unwrap();
        let p = Pgark::start(&server_yaml("main", &c.conninfo("postgres"), "synchronous: false"));
        p.wait_streaming("main");
        let b = backup(&p.config, "main", &[]);
        make_segments(&c, &p, "main", 2, true);
        let (code, json, t) = verify(&p.config, &["main"]);
        assert_eq!(code, Some(0), "PostgreSQL {major}: {t}");
        let json = json.unwrap();
        assert_eq!(json["backups"][0]["id"], b["id"], "PostgreSQL {major}");
        assert!(json["segments_checked"].as_u64().unwrap() >= 3, "PostgreSQL {major}: {json}");
        eprintln!(
            "PostgreSQL {major}: {} segments, {} chunks verified",
            json["segments_checked"], json["chunks_checked"]
        );
        c.check_log();
    }
}

/// Across a promotion: the WAL check follows the history file from the backup's timeline 1 onto
/// timeline 2 (the segment holding the switchpoint read from timeline 2); without the history
/// file it cannot, and says so.
#[test]
fn verify_follows_a_timeline_switch() {
    let primary = Cluster::init(&pg(), &[]).unwrap();
    primary.start().unwrap();
    primary
        .psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
        .unwrap();
    let standby = start_standby(&primary);
    let mut p = Pgark::start(&server_yaml("main", &standby.conninfo("postgres"), "synchronous: false"));
    p.wait_streaming("main");
    let b = backup(&p.config, "main", &[]);
    write_rows(&primary, 200);
    primary.psql("SELECT pg_switch_wal()").unwrap();
    // Asked by LSN: a query on the table could reach the standby before its creation is
    // replayed, and leave an ERROR in the standby's log.
    let written = primary.psql("SELECT pg_current_wal_lsn()").unwrap();
    wait_until(Duration::from_secs(30), "the standby to replay", || {
        standby
            .psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn"))
            .ok()
            .as_deref()
            == Some("t")
    });
    primary.stop("fast").unwrap();
    standby.promote().unwrap();
    wait_until(Duration::from_secs(30), "promotion", || {
        standby.psql("SELECT pg_is_in_recovery()").ok().as_deref() == Some("f")
    });
    wait_until(Duration::from_secs(60), "pgark on timeline 2", || {
        p.server("main").and_then(|s| s.timeline).map(|t| t.0) == Some(2)
    });
    make_segments(&standby, &p, "main", 2, true);
    // A promotion is no gap: the continuity index follows the history like recovery does.
    let listed = text(&pgark(&p.config, &["list-backups"]));
    assert!(!listed.contains("WAL gaps"), "{listed}");
    assert_eq!(p.term(), 0);

    let (code, json, t) = verify(&p.config, &["main"]);
    assert_eq!(code, Some(0), "{t}");
    let json = json.unwrap();
    assert_eq!(json["backups"][0]["id"], b["id"]);
    assert!(json["wal_end"].as_str().unwrap().starts_with("00000002"), "{json}");

    let history = p.wal_dir("main").join("00000002.history");
    let kept = p.dir.path().join("history");
    std::fs::rename(&history, &kept).unwrap();
    let json = assert_damaged(&p.config, "main", "history", "history file missing");
    assert!(json["problems"].to_string().contains("00000002.history is missing"), "{json}");
    std::fs::rename(&kept, &history).unwrap();
    let (code, _, t) = verify(&p.config, &["main"]);
    assert_eq!(code, Some(0), "{t}");
}

/// A backup that carries its own WAL (no `pgark serve` streamed the server): nothing in the
/// catalog's WAL directory to check, and that is not a problem.
#[test]
fn verify_a_backup_with_its_own_wal() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let b = backup(&cat.config, "main", &[]);
    assert_eq!(b["wal_source"], "backup");
    let (code, json, t) = verify(&cat.config, &["main", "--all"]);
    assert_eq!(code, Some(0), "{t}");
    let json = json.unwrap();
    assert_eq!(json["segments_checked"], 0, "{json}");
    assert!(json["files_checked"].as_u64().unwrap() > 500, "{json}");
    let listed = list(&cat.config);
    assert_eq!(listed[0]["verify_status"], "ok");
}
