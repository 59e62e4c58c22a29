//! Retention against real PostgreSQL: each rule and their combination (what remains, and that a
//! point-in-time restore inside the window still works while one before it is refused), pins,
//! a prune killed midway and finished by the next, the daemon pruning by itself (after
//! backups and at the critical disk level), and WAL gaps seen at once.

use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DAY: u64 = 86_400;

fn now() -> u64 {
    pgark::util::time::unix_now()
}

/// Moves a backup's recorded times (its index is plain JSON): backups days apart without
/// waiting days. Retention reads only these times; restore targets below are LSNs and names.
fn set_times(catalog: &Path, id: &str, start: u64) {
    let path = catalog.join("main/backups").join(format!("{id}.json"));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["start_time"] = start.into();
    v["end_time"] = (start + 60).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn ids_of(list: &[Value]) -> Vec<String> {
    list.iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

fn prune_json(config: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["prune", "main", "--json"];
    args.extend_from_slice(extra);
    let o = pgark(config, &args);
    assert!(o.status.success(), "pgark prune: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("prune --json: {e}: {}", text(&o)));
    v[0].clone()
}

fn wal_names(p: &Pgark) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() >= 24 && !n.contains(".history") && !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn segment_of(name: &str) -> String {
    name[..24].to_string()
}

fn insert(c: &Cluster, from: i32, to: i32) {
    c.psql(&format!("INSERT INTO t SELECT g FROM generate_series({from}, {to}) g"))
        .unwrap();
}

fn rows(c: &Cluster) -> String {
    c.psql("SELECT coalesce(min(id), 0) || '-' || coalesce(max(id), 0) || '/' || count(*) FROM t")
        .unwrap()
}

/// A primary (1 MB segments, so backups leave whole segments between them) streamed by
/// `pgark serve` without any retention policy, with table `t`.
fn primary_with_pgark() -> (Cluster, Pgark) {
    let c = Cluster::init_with(&pg(), &[], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t (id int)").unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo("postgres"), "synchronous: false"));
    p.wait_streaming("main");
    (c, p)
}

fn switch_and_flush(c: &Cluster, p: &Pgark) {
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(c));
}

fn set_policy(p: &mut Pgark, c: &Cluster, retention: &str) {
    p.set_top(&format!(
        "retention:\n{}",
        retention.lines().map(|l| format!("  {l}\n")).collect::<String>()
    ));
    p.rewrite_servers(&server_yaml("main", &c.conninfo("postgres"), "synchronous: false"));
}

/// Four backups days apart; a window rule, a pin, its release, then redundancy with GFS days:
/// each time exactly the promised backups and WAL remain, the pinned backup restores to its
/// end, a PITR inside the window works and one before it exits 7.
#[test]
fn rules_pins_and_pitr_after_pruning() {
    let bin = Binary::new();
    let (c, mut p) = primary_with_pgark();
    let b0 = backup(&p.config, "main", &[])["id"].as_str().unwrap().to_string();
    insert(&c, 1, 100);
    let lsn_after_b0 = c.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    switch_and_flush(&c, &p);
    let b1 = backup(&p.config, "main", &[])["id"].as_str().unwrap().to_string();
    insert(&c, 101, 200);
    switch_and_flush(&c, &p);
    let b2 = backup(&p.config, "main", &[])["id"].as_str().unwrap().to_string();
    insert(&c, 201, 300);
    let lsn_after_b2 = c.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    switch_and_flush(&c, &p);
    let b3 = backup(&p.config, "main", &["--keep", "30d"])["id"].as_str().unwrap().to_string();
    insert(&c, 301, 400);
    switch_and_flush(&c, &p);
    let t = now();
    for (id, age) in [(&b0, 10 * DAY), (&b1, 5 * DAY), (&b2, 2 * DAY), (&b3, 3600)] {
        set_times(&p.catalog, id, t - age);
    }
    let o = pgark(&p.config, &["keep", "main", &b0, "--forever"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = pgark(&p.config, &["keep", "main", "nosuchbackup"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let o = pgark(&p.config, &["keep", "main", &b0, "--until", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--until \"soon\""), "{}", text(&o));

    // Window of 3 days: b1 (5 days old) is the newest that ended before the window's start.
    set_policy(&mut p, &c, "recovery_window: 3d");
    let before = wal_names(&p);
    let dry = prune_json(&p.config, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["backups"].as_array().unwrap().len(), 0, "{dry}");
    let doomed_wal = dry["wal"].as_array().unwrap().clone();
    assert!(!doomed_wal.is_empty(), "WAL between the pinned b0 and b1 should go: {dry}");
    assert_eq!(wal_names(&p), before, "a dry run deletes nothing");
    let text_out = text(&pgark(&p.config, &["prune", "main", "--dry-run"]));
    assert!(text_out.contains("would delete WAL timeline 1"), "{text_out}");
    assert!(
        text_out.contains("recovery window before:") && text_out.contains("recovery window after:"),
        "{text_out}"
    );
    assert!(text_out.contains(&format!("keep backup {b0}: pin")), "{text_out}");

    let done = prune_json(&p.config, &[]);
    assert_eq!(done["dry_run"], false);
    let after = wal_names(&p);
    for r in &doomed_wal {
        let (first, last) = (r["first"].as_str().unwrap(), r["last"].as_str().unwrap());
        assert!(
            !after
                .iter()
                .any(|n| segment_of(n).as_str() >= first && segment_of(n).as_str() <= last),
            "{first}..{last} still there: {after:?}"
        );
    }
    let list1 = list(&p.config);
    assert_eq!(ids_of(&list1), vec![b0.clone(), b1.clone(), b2.clone(), b3.clone()]);
    assert!(
        list1.iter().all(|b| b["usable"] == true),
        "pruning cut a kept backup's WAL: {list1:?}"
    );
    assert_eq!(list1[0]["kept_by"], serde_json::json!(["pin"]), "{}", list1[0]);
    assert!(list1[0]["pitr"].as_str().unwrap().contains("to its end only"), "{}", list1[0]);
    assert!(list1[1]["kept_by"].as_array().unwrap().contains(&"window".into()), "{}", list1[1]);
    assert!(
        list1[3]["kept_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("pin until")),
        "{}",
        list1[3]
    );
    let human = text(&pgark(&p.config, &["list-backups"]));
    assert!(human.contains("recovery window: from") && human.contains("KEPT BY"), "{human}");
    // The WAL pruned after the pinned b0 is by design: no gap, and verify passes.
    assert!(!human.contains("WAL gaps"), "{human}");
    let o = pgark(&p.config, &["verify", "main", "--all"]);
    assert!(o.status.success(), "{}", text(&o));

    // The pinned backup still restores to its end (an empty table: it predates every row).
    open_for_postgres(p.dir.path());
    let (data, tmp, _) = restore(&bin, &p.config, "main", &[&b0, "--target-immediate", "--target-action", "promote"]);
    let r = start_restored(&c.bins, tmp, data, None);
    assert_eq!(rows(&r), "0-0/0");
    drop(r);

    // Released, b0 goes; its WAL stays while the restore of b0 above may still replay it (a
    // restore's lease, 24 hours), and goes with the next prune once b0 is gone.
    let b0_start = backup_index_start_segment(&p, &b0);
    let o = pgark(&p.config, &["keep", "main", &b0, "--release"]);
    assert!(o.status.success(), "{}", text(&o));
    let done = prune_json(&p.config, &[]);
    assert_eq!(done["backups"][0]["id"], b0.as_str(), "{done}");
    assert_eq!(done["backups"][0]["reason"], "no rule keeps it");
    assert!(done["bytes_freed"].as_u64().unwrap() > 0, "{done}");
    assert_eq!(ids_of(&list(&p.config)), vec![b1.clone(), b2.clone(), b3.clone()]);
    assert!(
        wal_names(&p).iter().any(|n| segment_of(n) == b0_start),
        "the restore's lease kept {b0_start}"
    );

    // Redundancy 1 and two GFS days (b3 and b2 are on different days), b3 pinned anyway: b1 goes.
    set_policy(&mut p, &c, "redundancy: 1\nkeep_daily: 2");
    let done = prune_json(&p.config, &[]);
    assert_eq!(done["backups"].as_array().unwrap().len(), 1, "{done}");
    assert_eq!(done["backups"][0]["id"], b1.as_str());
    let left = list(&p.config);
    assert_eq!(ids_of(&left), vec![b2.clone(), b3.clone()]);
    assert!(left[0]["kept_by"][0].as_str().unwrap().starts_with("daily "), "{}", left[0]);
    // No WAL older than b2's start segment is left (b2 is the oldest backup kept by a rule).
    let b2_first = index(&p.catalog, "main", &b2);
    let seg = pgark::pg::WalSegSize::new(b2_first["wal_segment_size"].as_u64().unwrap()).unwrap();
    let start: pgark::pg::Lsn = b2_first["start_lsn"].as_str().unwrap().parse().unwrap();
    let first_needed = pgark::pg::WalFileName::new(pgark::pg::TimelineId(1), seg.segno(start)).format(seg);
    assert!(
        wal_names(&p).iter().all(|n| segment_of(n) >= first_needed),
        "{:?} vs {first_needed}",
        wal_names(&p)
    );

    // A PITR inside the window works; one before the oldest backup is refused with exit 7.
    let (data, tmp, out) = restore(
        &bin,
        &p.config,
        "main",
        &["--target-lsn", &lsn_after_b2, "--target-action", "promote"],
    );
    assert_eq!(out["plan"]["backup_id"], b2.as_str(), "{out}");
    let r = start_restored(&c.bins, tmp, data, None);
    assert_eq!(rows(&r), "1-300/300");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("x");
    let o = pgark(
        &p.config,
        &[
            "restore",
            "main",
            "--target-dir",
            target.to_str().unwrap(),
            "--target-lsn",
            &lsn_after_b0,
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
}

/// A prune killed by SIGKILL after its first deletion leaves its intent record; the next
/// prune finishes the job (and says so), and no chunk is left that no backup references.
#[test]
fn prune_killed_midway_is_finished_by_the_next() {
    let (c, mut p) = primary_with_pgark();
    let mut ids = Vec::new();
    for i in 0..3 {
        insert(&c, i * 10 + 1, i * 10 + 10);
        c.psql(&format!(
            "CREATE TABLE filler{i} AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g"
        ))
        .unwrap();
        switch_and_flush(&c, &p);
        ids.push(backup(&p.config, "main", &[])["id"].as_str().unwrap().to_string());
    }
    set_policy(&mut p, &c, "redundancy: 1");
    let mut child = Command::new(pgark_bin())
        .args(["prune", "main", "--config"])
        .arg(&p.config)
        .env("FAILPOINTS", "prune-after-backup=sleep(60000)")
        .env("PGARK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let index_of = |id: &str| p.catalog.join("main/backups").join(format!("{id}.json"));
    wait_until(Duration::from_secs(30), "the first backup's index to be deleted", || {
        !index_of(&ids[0]).exists()
    });
    // The prune is now asleep between its first and its second deletion, holding the locks:
    // `pgark status` names it; a backup is refused meanwhile. Then kill it there.
    let st = text(&pgark(&p.config, &["status"]));
    assert!(
        st.contains(&format!("lock: backup.lock (exclusive) held by pid {}", child.id())) && st.contains("prune main"),
        "{st}"
    );
    let o = pgark(&p.config, &["backup", "main"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // `--wait` waits, then gives up with the same refusal.
    let t = std::time::Instant::now();
    let o = pgark(&p.config, &["backup", "main", "--wait", "1s"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        t.elapsed() >= Duration::from_secs(1) && text(&o).contains("waiting for it"),
        "{}",
        text(&o)
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let intent = p.catalog.join("main/prune.intent");
    assert!(intent.exists(), "no intent record after the kill");
    let rec: Value = serde_json::from_slice(&std::fs::read(&intent).unwrap()).unwrap();
    assert_eq!(rec["backups"], serde_json::json!([ids[0], ids[1]]), "{rec}");
    assert!(index_of(&ids[1]).exists(), "the kill came after the first deletion only");

    let out = text(&pgark(&p.config, &["prune", "main"]));
    assert!(out.contains("finishing an interrupted prune"), "{out}");
    assert!(!intent.exists(), "intent record left after the finishing prune");
    assert_eq!(ids_of(&list(&p.config)), vec![ids[2].clone()]);
    // Every chunk left is referenced by the remaining backup.
    let idx = index(&p.catalog, "main", &ids[2]);
    let referenced: std::collections::BTreeSet<String> = idx["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["chunks"].as_array().cloned().unwrap_or_default())
        .map(|c| c["object"].as_str().unwrap().to_string())
        .collect();
    let chunks = p.catalog.join("main/chunks");
    for f in files_under(&chunks) {
        let rel = f.strip_prefix(&chunks).unwrap().to_string_lossy().into_owned();
        assert!(referenced.contains(&rel), "orphan chunk {rel}");
    }
}

/// `pgark serve` prunes by itself after a backup (also one `pgark backup` took), publishes the
/// recovery window, and sees a deleted WAL segment as a gap at once (status, list-backups,
/// metric); at the critical disk level with `on_critical_pressure: prune` it prunes down to
/// `min_redundancy`.
#[test]
fn the_daemon_prunes_sees_gaps_and_prunes_under_pressure() {
    let c = Cluster::init_with(&pg(), &[], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t (id int)").unwrap();
    let servers = server_yaml("main", &c.conninfo("postgres"), "synchronous: false");
    let top = "retention:\n  redundancy: 2\ndisk_pressure:\n  check_interval: 1s";
    let mut p = Pgark::start_full("", top, &servers, &[]);
    p.wait_streaming("main");
    let mut ids = Vec::new();
    for i in 0..3 {
        insert(&c, i * 10 + 1, i * 10 + 10);
        switch_and_flush(&c, &p);
        ids.push(backup(&p.config, "main", &[])["id"].as_str().unwrap().to_string());
    }
    wait_until(Duration::from_secs(120), "the daemon to prune the oldest backup", || {
        ids_of(&list(&p.config)).len() == 2
    });
    assert_eq!(ids_of(&list(&p.config)), ids[1..].to_vec());
    p.wait_metric("pgark_pruned_backups_total{server=\"main\"}", "the prune metric", |v| v >= 1.0);
    assert!(p.metric("pgark_pruned_bytes_total{server=\"main\"}").unwrap() > 0.0);
    assert_eq!(
        p.metric("pgark_prune_runs_total{server=\"main\",result=\"ok\"}").map(|v| v >= 1.0),
        Some(true),
        "{}",
        p.metrics_text()
    );
    p.wait_metric("pgark_recovery_window_start_seconds{server=\"main\"}", "the recovery window", |v| {
        v > 0.0
    });
    assert!(p.log_text().contains("retention: deleting backup"), "{}", tail(&p.log_text()));

    // A segment deleted behind pgark's back: a gap, at once.
    for i in 0..3 {
        insert(&c, 100 + i * 10, 109 + i * 10);
        switch_and_flush(&c, &p);
    }
    p.wait_metric("pgark_wal_gaps{server=\"main\"}", "the gap metric", |v| v == 0.0);
    let newest = backup_index_end_segment(&p, &ids[2]);
    let victim = wal_names(&p)
        .into_iter()
        .filter(|n| n.ends_with(".zst") && segment_of(n) > newest)
        .nth(1)
        .expect("a compressed segment after the newest backup");
    std::fs::remove_file(p.wal_dir("main").join(&victim)).unwrap();
    p.wait_metric("pgark_wal_gaps{server=\"main\"}", "the gap to show", |v| v == 1.0);
    let st = text(&pgark(&p.config, &["status"]));
    assert!(st.contains("WAL GAP") && st.contains(&segment_of(&victim)), "{st}");
    let l = list(&p.config);
    assert!(l[1]["pitr"].as_str().unwrap().contains(&segment_of(&victim)), "{}", l[1]);
    let o = pgark(&p.config, &["check", "main", "--json"]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    let checks: Value = serde_json::from_slice(&o.stdout).unwrap();
    let gap = checks.as_array().unwrap().iter().find(|c| c["check"] == "wal_gaps").unwrap();
    assert_eq!(gap["level"], "failed", "{gap}");
    assert!(gap["detail"].as_str().unwrap().contains(&segment_of(&victim)), "{gap}");

    // verify names the missing segment (exit 9) and runs the on_verify_failure hook; once the
    // gap is acknowledged it no longer counts: verify passes, the metric moves.
    let env_file = p.dir.path().join("verify_hook.env");
    p.set_top(&format!(
        "{top}\nhooks:\n  on_verify_failure: \"env | grep ^PGARK_ > {}\"",
        env_file.display()
    ));
    p.rewrite_servers(&servers);
    let o = pgark(&p.config, &["verify", "main"]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(text(&o).contains(&segment_of(&victim)), "{}", text(&o));
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains("PGARK_HOOK=on_verify_failure") && env.contains("PGARK_VERIFY_PROBLEMS=1"),
        "{env}"
    );
    let o = pgark(&p.config, &["verify", "main", "--acknowledge-gap", "000000010000000000000FFF"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no WAL gap of main holds this segment"), "{}", text(&o));
    let o = pgark(
        &p.config,
        &[
            "verify",
            "main",
            "--acknowledge-gap",
            &segment_of(&victim),
            "--note",
            "deleted by the test",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    p.wait_metric("pgark_wal_gaps{server=\"main\"}", "the acknowledged gap to stop counting", |v| {
        v == 0.0
    });
    assert_eq!(p.metric("pgark_wal_gaps_acknowledged{server=\"main\"}"), Some(1.0));
    let o = pgark(&p.config, &["verify", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("acknowledged WAL gaps"), "{}", text(&o));
    let st = text(&pgark(&p.config, &["status"]));
    assert!(!st.contains("WAL GAP") && st.contains("acknowledged WAL gaps: 1"), "{st}");

    // Critical pressure (every byte free counts as too little) with prune: down to one backup.
    p.set_top("retention:\n  redundancy: 2\n  on_critical_pressure: prune\ndisk_pressure:\n  check_interval: 1s\n  catalog_free_warning: 99%\n  catalog_free_critical: 99%");
    let streaming_since = p.server("main").and_then(|s| s.streaming_since);
    p.rewrite_servers(&servers);
    p.hup();
    wait_until(Duration::from_secs(60), "the pressure prune", || {
        ids_of(&list(&p.config)).len() == 1
    });
    assert_eq!(ids_of(&list(&p.config)), vec![ids[2].clone()]);
    assert!(p.log_text().contains("critical disk pressure"), "{}", tail(&p.log_text()));
    // A reload that changes only retention restarts the periodic tasks, not the receiver.
    let log = p.log_text();
    assert!(log.contains("restarting those tasks (streaming goes on)"), "{}", tail(&log));
    assert!(!log.contains("restarting its receiver"), "{}", tail(&log));
    assert_eq!(p.server("main").and_then(|s| s.streaming_since), streaming_since);
}

/// The segment name holding the start of backup `id`.
fn backup_index_start_segment(p: &Pgark, id: &str) -> String {
    let idx = index(&p.catalog, "main", id);
    let seg = pgark::pg::WalSegSize::new(idx["wal_segment_size"].as_u64().unwrap()).unwrap();
    let start: pgark::pg::Lsn = idx["start_lsn"].as_str().unwrap().parse().unwrap();
    pgark::pg::WalFileName::new(
        pgark::pg::TimelineId(idx["start_timeline"].as_u64().unwrap() as u32),
        seg.segno(start),
    )
    .format(seg)
}

/// The segment name holding the end of backup `id`.
fn backup_index_end_segment(p: &Pgark, id: &str) -> String {
    let idx = index(&p.catalog, "main", id);
    let seg = pgark::pg::WalSegSize::new(idx["wal_segment_size"].as_u64().unwrap()).unwrap();
    let end: pgark::pg::Lsn = idx["end_lsn"].as_str().unwrap().parse().unwrap();
    pgark::pg::WalFileName::new(pgark::pg::TimelineId(idx["end_timeline"].as_u64().unwrap() as u32), seg.segno(end)).format(seg)
}

/// A backup index that no longer parses: list-backups still lists the others (exit 1, the
/// damaged one named), prune stops with an error that says how to get past it, and
/// `delete-backup --force` removes it; then retention runs again.
#[test]
fn an_unreadable_index_is_named_and_can_be_removed() {
    let (c, mut p) = primary_with_pgark();
    let mut ids = Vec::new();
    for i in 0..2 {
        insert(&c, i * 10 + 1, i * 10 + 10);
        switch_and_flush(&c, &p);
        ids.push(backup(&p.config, "main", &[])["id"].as_str().unwrap().to_string());
    }
    std::fs::write(p.catalog.join("main/backups").join(format!("{}.json", ids[0])), b"{not json").unwrap();
    set_policy(&mut p, &c, "redundancy: 1");
    let o = pgark(&p.config, &["list-backups", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let listed: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids_of(&listed), vec![ids[1].clone()]);
    assert!(text(&o).contains(&format!("--force main {}", ids[0])), "{}", text(&o));
    let o = pgark(&p.config, &["prune", "main"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("retention stops here until it is removed"), "{}", text(&o));
    let o = pgark(&p.config, &["delete-backup", "main", &ids[0]]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--force removes the backup"), "{}", text(&o));
    let o = pgark(&p.config, &["delete-backup", "main", &ids[0], "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = pgark(&p.config, &["prune", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ids_of(&list(&p.config)), vec![ids[1].clone()]);
}
