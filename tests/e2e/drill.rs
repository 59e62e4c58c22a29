//! Restore drills (`pgark drill`, `drill.schedule` in `pgark serve`) against real PostgreSQL: a
//! passing drill with its durations and record, a damaged backup, missing binaries, and the
//! scheduled drill's metrics.

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A primary with table `t` holding rows 1..=100, pgark streaming it (asynchronously), a backup,
/// then rows 101..=200 written after the backup and flushed into the catalog.
fn primary_with_backup(server_extra: &str, top: &str) -> (Cluster, Pgark) {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
        .unwrap();
    let extra = format!("synchronous: false\n{server_extra}");
    let p = Pgark::start_full("", top, &server_yaml("main", &c.conninfo("postgres"), &extra), &[]);
    p.wait_streaming("main");
    backup(&p.config, "main", &[]);
    c.psql("INSERT INTO t SELECT generate_series(101, 200)").unwrap();
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    (c, p)
}

fn drill_json(config: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["drill", "main", "--json"];
    args.extend_from_slice(extra);
    let o = pgark(config, &args);
    let out = text(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v, out)
}

fn records(catalog: &Path) -> Vec<PathBuf> {
    let mut r: Vec<PathBuf> = std::fs::read_dir(catalog.join("main/drills"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    r.sort();
    r
}

const SQL_TOP: &str = "drill:\n  sql:\n    - \"SELECT EXISTS (SELECT 1 FROM t WHERE id = 42)\"\n    - \"SELECT count(*) = 200 FROM t\"";

/// A drill after a backup and writes passes: the rows written before the backup (drill.sql) and
/// after it (replayed from the catalog's WAL) are there, the JSON has the three durations, the
/// scratch directory is gone and the record is in the catalog.
#[test]
fn drill_passes_and_is_recorded() {
    let (c, p) = primary_with_backup("", SQL_TOP);
    // As root, PostgreSQL runs as postgres and its restore_command reads the config and catalog.
    open_for_postgres(p.dir.path());
    let lsn_200 = c.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    let (code, v, out) = drill_json(&p.config, &[]);
    assert_eq!(code, 0, "drill should pass: {out}");
    assert_eq!(v["success"], true, "{v}");
    for k in ["restore_seconds", "recovery_seconds", "total_seconds"] {
        assert!(v[k].as_f64().is_some_and(|s| s > 0.0), "{k} in {v}");
    }
    assert!(v["total_seconds"].as_f64() >= v["recovery_seconds"].as_f64(), "{v}");
    assert!(v["recovered"]["replay_lsn"].as_str().is_some(), "{v}");
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"connect postgres") && names.contains(&"pg_amcheck"), "{names:?}");
    assert_eq!(checks.iter().filter(|c| c["name"].as_str().unwrap().starts_with("sql[")).count(), 2);
    assert!(checks.iter().all(|c| c["ok"] == true), "{v}");
    let scratch = PathBuf::from(v["scratch_dir"].as_str().unwrap());
    assert!(
        scratch.starts_with(p.dir.path().join("pgark-drills")),
        "default drill.path: {scratch:?}"
    );
    assert!(!scratch.exists(), "the scratch directory must be removed");
    let recs = records(&p.catalog);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(v["target"], "end of WAL");
    let stored: Value = serde_json::from_slice(&std::fs::read(&recs[0]).unwrap()).unwrap();
    assert_eq!(stored, v, "the record in the catalog is what --json printed");
    assert_eq!(stored["format"], 1);
    // No restore record left behind for the throwaway directory.
    assert!(!p.catalog.join("main/restores").exists() || std::fs::read_dir(p.catalog.join("main/restores")).unwrap().next().is_none());

    // To a target LSN: the rows written after it are not there (the second query counts 200).
    c.psql("INSERT INTO t SELECT generate_series(201, 300)").unwrap();
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    let (code, v, out) = drill_json(&p.config, &["--target-lsn", &lsn_200]);
    assert_eq!(code, 0, "drill to {lsn_200} should pass: {out}");
    assert_eq!(v["target"], format!("recovery_target_lsn = {lsn_200}"), "{v}");
    assert_eq!(v["recovered"]["timeline"], 2, "promoted at the target: {v}");

    // A query that finds nothing fails the drill (exit 9), with the step named.
    p.rewrite_servers(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        "synchronous: false\ndrill: {sql: [\"SELECT id FROM t WHERE id = 100000\"]}",
    ));
    let o = pgark(&p.config, &["drill", "main"]);
    let out = text(&o);
    eprintln!("{out}");
    assert_eq!(o.status.code(), Some(9), "{out}");
    for line in [
        "restore: ",
        "start: postgres on socket",
        "recovery: ended after",
        "check pg_amcheck: ok",
        "drill FAILED at step sql",
    ] {
        assert!(out.contains(line), "human output should have {line:?}: {out}");
    }
    let recs = records(&p.catalog);
    let v: Value = serde_json::from_slice(&std::fs::read(recs.last().unwrap()).unwrap()).unwrap();
    assert_eq!(v["failed_step"], "sql", "{v}");
    assert!(v["error"].as_str().unwrap().contains("no row"), "{v}");
}

/// A drill of a damaged backup fails with exit 9 at the restore step, removes its directory and
/// records the failure; binaries of the backup's major missing fail it at `binaries`, naming the
/// major.
#[test]
fn drill_fails_on_damage_and_missing_binaries() {
    let (c, p) = primary_with_backup("", "");
    open_for_postgres(p.dir.path());
    if pgark::util::os::running_as_root() {
        // PostgreSQL's user cannot read the config: found before anything is restored.
        use std::os::unix::fs::PermissionsExt;
        let mode = |m| std::fs::set_permissions(&p.config, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o600);
        let (code, v, out) = drill_json(&p.config, &[]);
        mode(0o644);
        assert_eq!(code, 9, "{out}");
        assert_eq!(v["failed_step"], "access", "{v}");
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains("user postgres cannot run its restore_command") && err.contains("catalog_group"),
            "{err}"
        );
        assert_eq!(v["restore_seconds"], Value::Null, "nothing restored: {v}");
    }
    let empty = tempfile::tempdir().unwrap();
    p.rewrite_servers(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        &format!("synchronous: false\ndrill: {{pg_bindir: {}}}", empty.path().display()),
    ));
    let (code, v, out) = drill_json(&p.config, &[]);
    assert_eq!(code, 9, "{out}");
    assert_eq!(v["failed_step"], "binaries", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains(&format!("no PostgreSQL {} server binaries", pg().major)), "{err}");
    assert!(err.contains("drill.pg_bindir"), "{err}");
    assert!(!PathBuf::from(v["scratch_dir"].as_str().unwrap()).exists());

    p.rewrite_servers(&server_yaml("main", &c.conninfo("postgres"), "synchronous: false"));
    // Flip a byte in the middle of the largest chunk.
    let mut chunks: Vec<(u64, PathBuf)> = files_under(&p.catalog.join("main/chunks"))
        .into_iter()
        .map(|f| (std::fs::metadata(&f).unwrap().len(), f))
        .collect();
    chunks.sort();
    let (len, victim) = chunks.last().unwrap().clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[(len / 2) as usize] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let (code, v, out) = drill_json(&p.config, &[]);
    assert_eq!(code, 9, "{out}");
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["failed_step"], "restore", "{v}");
    assert!(
        !PathBuf::from(v["scratch_dir"].as_str().unwrap()).exists(),
        "removed also on failure"
    );
    let failed = if pgark::util::os::running_as_root() { 3 } else { 2 };
    assert_eq!(records(&p.catalog).len(), failed, "every failed drill is recorded");
    // `pgark check` reports the failed drill, with the step.
    let o = pgark(&p.config, &["check", "main", "--json"]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    let checks: Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = checks.as_array().unwrap().iter().find(|c| c["check"] == "drill").unwrap();
    assert_eq!(d["level"], "failed", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("step restore"), "{d}");
    // An unknown backup is a usage matter, not a failed drill: exit 5, nothing recorded.
    let o = pgark(&p.config, &["drill", "main", "--backup", "20000101T000000Z"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert_eq!(records(&p.catalog).len(), failed);
}

/// `drill.schedule` in `pgark serve`: the due drill runs and sets the metrics.
#[test]
fn drill_scheduled_in_serve_sets_metrics() {
    let (c, p) = primary_with_backup("", "");
    open_for_postgres(p.dir.path());
    assert_eq!(p.metric("pgark_drill_runs_total{server=\"main\",result=\"success\"}"), Some(0.0));
    let env_file = p.dir.path().join("post_drill.env");
    p.rewrite_servers(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        &format!(
            "synchronous: false\ndrill: {{schedule: 1h}}\nhooks: {{post_drill: \"env | grep ^PGARK_ > {}\"}}",
            env_file.display()
        ),
    ));
    p.hup();
    wait_until(Duration::from_secs(120), "the scheduled drill to pass", || {
        p.metric("pgark_drill_runs_total{server=\"main\",result=\"success\"}") == Some(1.0)
    });
    let last = p.metric("pgark_drill_last_success_timestamp_seconds{server=\"main\"}").unwrap();
    assert!(last > 1.7e9, "{last}");
    let rto = p.metric("pgark_drill_rto_seconds{server=\"main\"}").unwrap();
    assert!(rto > 0.0, "{rto}");
    assert_eq!(records(&p.catalog).len(), 1);
    // The post_drill hook ran with the drill's outcome and its record.
    // The shell creates the file before `env | grep` has written to it.
    wait_until(Duration::from_secs(30), "the post_drill hook", || {
        std::fs::read_to_string(&env_file).is_ok_and(|e| e.contains("PGARK_DRILL_REPORT="))
    });
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("PGARK_HOOK=post_drill") && env.contains("PGARK_STATUS=ok"), "{env}");
    let report = env.lines().find_map(|l| l.strip_prefix("PGARK_DRILL_REPORT=")).unwrap();
    assert!(Path::new(report).exists(), "{env}");
}

/// SIGTERM while a scheduled drill runs a long check: `pgark serve` still stops within 5 s, the
/// drill's PostgreSQL is stopped (not left running), its directory removed and the drill
/// recorded as interrupted.
#[test]
fn a_running_drill_does_not_hold_up_the_daemon_stop() {
    let (c, mut p) = primary_with_backup("", "");
    open_for_postgres(p.dir.path());
    p.rewrite_servers(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        "synchronous: false\ndrill: {schedule: 1h, sql: [\"SELECT pg_sleep(120) IS NOT NULL\"]}",
    ));
    p.hup();
    wait_until(Duration::from_secs(120), "the drill to reach its sql check", || {
        p.log_text().contains("drill: check pg_amcheck")
    });
    let scratch: PathBuf = std::fs::read_dir(p.dir.path().join("pgark-drills"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a scratch directory");
    let pm: i32 = std::fs::read_to_string(scratch.join("data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (code, took) = p.term_timed();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "pgark serve took {took:?} to stop during a drill");
    // SAFETY: signal 0 only checks whether the process exists.
    wait_until(Duration::from_secs(10), "the drill's PostgreSQL to be stopped", || unsafe {
        libc::kill(pm, 0) != 0
    });
    assert!(
        !scratch.exists(),
        "the interrupted drill removed its directory before the daemon exited"
    );
    let recs = records(&p.catalog);
    let v: Value = serde_json::from_slice(&std::fs::read(recs.last().unwrap()).unwrap()).unwrap();
    assert_eq!(v["failed_step"], "interrupted", "{v}");
}
