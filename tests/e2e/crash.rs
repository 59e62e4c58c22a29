//! SIGKILL of the real pgark binary at seeded random points, by the fault shim (`kill`: before a
//! chosen system call, `killafter`: right after it), in five areas: a segment boundary, the
//! compression and publish of a segment, a backup's chunk writes and index publish,
//! delete-backup, and a delta restore. After each kill the invariant checker (`invariants`)
//! proves the catalog whole, and the next operation must succeed.
//!
//! `PGARK_CRASH_TRIALS` trials per area (50 by default, as CI runs them); the seed is printed
//! and `PGARK_CRASH_SEED` replays a run.

use crate::support::faults::{fault_env, FaultLog};
use crate::support::invariants;
use crate::support::*;
use pgark::util::os::running_as_root;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn trials() -> usize {
    std::env::var("PGARK_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(50)
}

/// The seed of this run (printed; `PGARK_CRASH_SEED` replays one), different per area.
fn seeded(area: &str) -> StdRng {
    let seed = std::env::var("PGARK_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("crash trials {area}: seed {seed} (replay with PGARK_CRASH_SEED={seed})");
    StdRng::seed_from_u64(seed ^ area.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)))
}

/// A random kill rule among `points` (op, pattern, highest N).
fn kill_rule(rng: &mut StdRng, points: &[(&str, &str, u32)]) -> String {
    let (op, pattern, max) = points[rng.gen_range(0..points.len())];
    let n = rng.gen_range(1..=max);
    let action = if rng.gen_bool(0.5) { "kill" } else { "killafter" };
    format!("{op}:{pattern}:{n}:{action}")
}

fn assert_invariants(
    catalog: &Path,
    server: &str,
    seg: pgark::pg::WalSegSize,
    pg_wal: Option<&Path>,
    context: &str,
) -> invariants::Checked {
    match invariants::check(catalog, server, seg, pg_wal) {
        Ok(c) => c,
        Err(problems) => panic!("{context}: the catalog is damaged:\n  {}", problems.join("\n  ")),
    }
}

/// The environment of a trial's command: `PGARK_LOG=warn` and the fault rules `env`.
fn quiet(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut all = vec![("PGARK_LOG".to_string(), "warn".to_string())];
    all.extend_from_slice(env);
    all
}

fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(libc::SIGKILL)
}

/// Segment boundaries and the compression and publish of segments: `pgark serve` killed at a
/// random system call of either (two areas, `trials()` each), while the server switches
/// segments; after each kill the catalog is whole and byte-exact with the server's WAL; at the
/// end a clean daemon streams everything and the catalog matches the server completely.
#[test]
fn sigkill_at_segment_boundaries_and_during_compression() {
    let c = Cluster::init_with(&pg(), &["wal_keep_size = 2GB"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let seg = seg_size(&c);
    let mut p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false"));
    p.wait_streaming("main");
    p.kill9();
    c.psql("CREATE TABLE crash (id serial, t text)").unwrap();
    let boundary: &[(&str, &str, u32)] = &[
        ("fsync", ".partial", 12),
        ("rename", ".partial", 6),
        ("rename", ".spare.", 6),
        ("fsync", "/main/wal$", 12),
        ("open", ".partial", 6),
    ];
    let compression: &[(&str, &str, u32)] = &[
        ("write", ".zst.", 8),
        ("fsync", ".zst.", 6),
        ("rename", ".zst.", 6),
        ("unlink", "/wal/0", 6),
        ("rename", "/wal/0000", 6),
    ];
    let fault_log = p.dir.path().join("faults.log");
    let mut fired = 0;
    for (area, points) in [("segment boundary", boundary), ("compression and publish", compression)] {
        let mut rng = seeded(area);
        for t in 0..trials() {
            let rule = kill_rule(&mut rng, points);
            let _ = std::fs::remove_file(&fault_log);
            p.set_env(&fault_env(&rule, &fault_log));
            p.spawn();
            // Boundaries and completed segments until the kill (or 4 s: the point was not reached).
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(4) && p.child.as_mut().is_some_and(|ch| ch.try_wait().ok().flatten().is_none()) {
                c.psql("INSERT INTO crash (t) SELECT md5(g::text) FROM generate_series(1, 200) g; SELECT pg_switch_wal()")
                    .unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
            let died = p.child.as_mut().is_some_and(|ch| ch.try_wait().ok().flatten().is_some());
            if died {
                fired += 1;
                p.child = None;
            } else {
                p.kill9();
            }
            let context = format!("{area} trial {t} ({rule}, {})", if died { "killed" } else { "not reached" });
            assert!(
                died == (FaultLog::read(&fault_log).injected() > 0),
                "{context}: the shim and the process disagree"
            );
            assert_invariants(&p.catalog, "main", seg, Some(&c.pg_wal()), &context);
        }
    }
    eprintln!("segment trials: {fired} kills");
    assert!(fired >= trials(), "too few kill points were reached: {fired}");
    // The next operation: a clean daemon catches up with everything, byte-exact.
    p.set_env(&[]);
    p.spawn();
    p.wait_streaming("main");
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared > 10, "only {compared} segments compared");
    assert_no_gap(&p.wal_dir("main"), seg);
    let leftovers: Vec<String> = files_under(&p.wal_dir("main"))
        .iter()
        .map(|f| f.display().to_string())
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files survived a clean start: {leftovers:?}");
    assert_invariants(&p.catalog, "main", seg, Some(&c.pg_wal()), "after the clean catch-up");
}

/// A backup's chunk writes and index publish, then delete-backup: `pgark backup` and `pgark
/// delete-backup` killed at random system calls; every listed backup verifies after each kill,
/// the next backup or delete succeeds, and at the end every listed backup restores and the
/// newest one starts as a cluster.
#[test]
fn sigkill_during_backups_and_deletes() {
    let bins = pg();
    let c = Cluster::init(&bins, &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE crash (id serial, t text)").unwrap();
    let cat = Catalog::new(&server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "backup_checkpoint: fast\nbackup_workers: 2",
    ));
    let seg = seg_size(&c);
    let dir = tempfile::tempdir().unwrap();
    let fault_log = dir.path().join("faults.log");
    let change = |n: u32| {
        c.psql(&format!("INSERT INTO crash (t) SELECT md5(g::text) FROM generate_series(1, {n}) g"))
            .unwrap();
    };
    let listed = || -> Vec<String> {
        let o = pgark_with(&cat.config, &["list-backups", "main", "--json"], &quiet(&[]));
        let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.iter().filter_map(|b| b["id"].as_str().map(str::to_string)).collect()
    };
    let backup_points: &[(&str, &str, u32)] = &[
        ("write", "/chunks/", 40),
        ("fsync", "/chunks/", 30),
        ("rename", "/chunks/", 30),
        ("fsync", ".json.", 1),
        ("rename", ".json.", 1),
        ("fsync", "/main/backups$", 4),
        ("unlink", ".running", 1),
        ("write", ".manifest.", 2),
    ];
    let mut rng = seeded("backup");
    let mut fired = 0;
    for t in 0..trials() {
        change(500);
        let rule = kill_rule(&mut rng, backup_points);
        let _ = std::fs::remove_file(&fault_log);
        let o = pgark_with(&cat.config, &["backup", "main"], &quiet(&fault_env(&rule, &fault_log)));
        let was_killed = killed(&o);
        fired += usize::from(was_killed);
        assert!(was_killed || o.status.success(), "backup trial {t} ({rule}): {}", text(&o));
        let context = format!("backup trial {t} ({rule})");
        assert_invariants(&cat.catalog, "main", seg, None, &context);
        // Keep the catalog small: at most 3 backups.
        while listed().len() > 3 {
            let oldest = listed()[0].clone();
            let o = pgark_with(&cat.config, &["delete-backup", "main", &oldest], &quiet(&[]));
            assert!(o.status.success(), "{}", text(&o));
        }
    }
    eprintln!("backup trials: {fired} kills");
    assert!(fired * 2 >= trials(), "too few kill points were reached: {fired}");

    let delete_points: &[(&str, &str, u32)] = &[
        ("unlink", "/chunks/", 40),
        ("unlink", ".json", 1),
        ("unlink", ".manifest", 1),
        ("fsync", "/main/backups$", 2),
        ("fsync", "/chunks/", 20),
    ];
    let mut rng = seeded("delete-backup");
    let mut fired = 0;
    for t in 0..trials() {
        while listed().len() < 3 {
            change(2000);
            let o = pgark_with(&cat.config, &["backup", "main"], &quiet(&[]));
            assert!(o.status.success(), "{}", text(&o));
        }
        let ids = listed();
        let victim = ids[rng.gen_range(0..ids.len() - 1)].clone();
        let rule = kill_rule(&mut rng, delete_points);
        let _ = std::fs::remove_file(&fault_log);
        let o = pgark_with(
            &cat.config,
            &["delete-backup", "main", &victim],
            &quiet(&fault_env(&rule, &fault_log)),
        );
        let was_killed = killed(&o);
        fired += usize::from(was_killed);
        assert!(was_killed || o.status.success(), "delete trial {t} ({rule}): {}", text(&o));
        let context = format!("delete-backup trial {t} of {victim} ({rule})");
        let checked = assert_invariants(&cat.catalog, "main", seg, None, &context);
        assert!(checked.backups >= 2, "{context}: other backups went too");
    }
    eprintln!("delete-backup trials: {fired} kills");
    assert!(fired * 2 >= trials(), "too few kill points were reached: {fired}");

    // The next operations succeed, and what is listed restores: each backup's files, and the
    // newest as a running cluster.
    change(100);
    let o = pgark_with(&cat.config, &["backup", "main"], &quiet(&[]));
    assert!(o.status.success(), "{}", text(&o));
    let leftovers: Vec<String> = files_under(&cat.catalog.join("main"))
        .iter()
        .map(|f| f.display().to_string())
        .filter(|f| f.contains(".running") || f.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "a backup left {leftovers:?}");
    let bin = Binary::new();
    open_for_postgres(&cat.catalog);
    open_for_postgres(&cat.config);
    let ids = listed();
    for (i, id) in ids.iter().enumerate() {
        let (data, tmp, _) = restore(&bin, &cat.config, "main", &[id.as_str()]);
        if i + 1 == ids.len() {
            let r = start_restored(&bins, tmp, data, None);
            let n: i64 = r.psql("SELECT count(*) FROM crash").unwrap().parse().unwrap();
            assert!(n > 0);
        }
    }
}

/// A delta restore killed at a random system call inside the target directory: the directory is
/// never startable half-written (no pg_control, or a complete restore), and the next delta
/// restore repairs it; the last one starts as a cluster with the backup's data.
#[test]
fn sigkill_during_delta_restores() {
    let bins = pg();
    let c = Cluster::init(&bins, &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE crash (id serial, t text); INSERT INTO crash (t) SELECT md5(g::text) FROM generate_series(1, 20000) g")
        .unwrap();
    let want = c.psql("SELECT md5(string_agg(t, '' ORDER BY id)) FROM crash").unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo(&c.superuser), "backup_checkpoint: fast"));
    let o = pgark_with(&cat.config, &["backup", "main"], &quiet(&[]));
    assert!(o.status.success(), "{}", text(&o));
    open_for_postgres(&cat.catalog);
    open_for_postgres(&cat.config);
    let bin = Binary::new();
    let tmp = tempfile::Builder::new().prefix("pgark-crash-restore-").tempdir().unwrap();
    let target = tmp.path().join("data");
    let target_s = target.display().to_string();
    let owner: Vec<&str> = if running_as_root() { vec!["--owner", "postgres"] } else { vec![] };
    let restore_args = |delta: bool| -> Vec<String> {
        let mut a = vec!["restore".to_string(), "main".into(), "--target-dir".into(), target_s.clone()];
        if delta {
            a.push("--delta".into());
        }
        a.extend(owner.iter().map(|s| s.to_string()));
        a
    };
    let run = |args: &[String], env: &[(String, String)]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        bin.run_with(&cat.config, &refs, &quiet(env))
    };
    let o = run(&restore_args(false), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let points: Vec<(&str, String, u32)> = vec![
        ("write", format!("{target_s}/"), 60),
        ("fsync", format!("{target_s}/"), 60),
        ("rename", "pg_control".into(), 1),
        ("unlink", format!("{target_s}/"), 5),
        ("unlink", "pgark_restore_incomplete".into(), 1),
    ];
    let points: Vec<(&str, &str, u32)> = points.iter().map(|(o, p, n)| (*o, p.as_str(), *n)).collect();
    let mut rng = seeded("delta restore");
    let dir = tempfile::tempdir().unwrap();
    let fault_log = dir.path().join("faults.log");
    let mut fired = 0;
    let files: Vec<std::path::PathBuf> = walk_data_files(&target);
    for t in 0..trials() {
        // Damage a few files so the delta has writing to do.
        for _ in 0..3 {
            let f = &files[rng.gen_range(0..files.len())];
            if let Ok(mut b) = std::fs::read(f) {
                if !b.is_empty() {
                    let i = rng.gen_range(0..b.len());
                    b[i] ^= 0x55;
                    let _ = std::fs::write(f, &b);
                }
            }
        }
        let rule = kill_rule(&mut rng, &points);
        let _ = std::fs::remove_file(&fault_log);
        let o = run(&restore_args(true), &fault_env(&rule, &fault_log));
        let was_killed = killed(&o);
        fired += usize::from(was_killed);
        assert!(was_killed || o.status.success(), "delta trial {t} ({rule}): {}", text(&o));
        let control = target.join("global/pg_control").exists();
        let marker = target.join("pgark_restore_incomplete").exists();
        if control && marker {
            // Killed between publishing pg_control and removing the marker: the directory must
            // already be complete, which the next delta (reading everything) confirms below.
            eprintln!("delta trial {t} ({rule}): killed after pg_control was published");
        }
        assert!(!marker || was_killed, "delta trial {t}: a finished restore left its marker");
        // The next operation: a delta without faults repairs everything.
        if t % 5 == 4 || was_killed {
            let o = run(&restore_args(true), &[]);
            assert!(o.status.success(), "delta after trial {t} ({rule}): {}", text(&o));
            assert!(target.join("global/pg_control").exists() && !target.join("pgark_restore_incomplete").exists());
        }
    }
    eprintln!("delta restore trials: {fired} kills");
    assert!(fired * 2 >= trials(), "too few kill points were reached: {fired}");
    let o = run(&restore_args(true), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = start_restored(&bins, tmp, target, None);
    assert_eq!(r.psql("SELECT md5(string_agg(t, '' ORDER BY id)) FROM crash").unwrap(), want);
}

fn walk_data_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            let f = p.display().to_string();
            f.contains("/base/") || (f.contains("/global/") && !f.ends_with("pg_control"))
        })
        .collect()
}
