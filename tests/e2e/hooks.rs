//! Hooks (`hooks:` in the config) around real backups: the scheduled backup runs pre_backup and
//! post_backup with the documented environment (each hook writes its env to a file), and so
//! does `pgark backup`; a failing post hook is counted and streaming goes on; a hook past its
//! timeout is killed with its children and counted; a failing pre_backup hook vetoes the backup.

use crate::support::{current_flush_lsn, list, pg, pgark, server_yaml, text, wait_until, write_rows, Cluster, Pgark};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The `PGARK_*` lines a hook wrote with `env | grep ^PGARK_ > file`.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn dump_env(file: &Path) -> String {
    format!("env | grep ^PGARK_ > {}", file.display())
}

/// Whether `pid` is gone (or a zombie waiting for its reaper).
fn gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty() || stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'))
}

const SCHEDULED: &str = "synchronous: false\nbackup_schedule: 1h\nbackup_checkpoint: fast";

#[test]
fn hooks_scheduled_and_manual_backups_run_pre_and_post_with_their_environment() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pre, post) = (dir.path().join("pre.env"), dir.path().join("post.env"));
    let top = format!(
        "hooks:\n  pre_backup: \"{}\"\n  post_backup: \"{}\"\n  timeout: 30s",
        dump_env(&pre),
        dump_env(&post)
    );
    let p = Pgark::start_full("", &top, &server_yaml("main", &c.conninfo("postgres"), SCHEDULED), &[]);
    wait_until(Duration::from_secs(120), "the post_backup hook of the scheduled backup", || {
        env_file(&post).contains_key("PGARK_STATUS")
    });
    let backups = list(&p.config);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let id = backups[0]["id"].as_str().unwrap();
    let (pre_env, post_env) = (env_file(&pre), env_file(&post));
    let catalog = p.catalog.display().to_string();
    let config = p.config.display().to_string();
    for (env, hook) in [(&pre_env, "pre_backup"), (&post_env, "post_backup")] {
        assert_eq!(env.get("PGARK_HOOK").map(String::as_str), Some(hook), "{env:?}");
        assert_eq!(env.get("PGARK_SERVER").map(String::as_str), Some("main"), "{env:?}");
        assert_eq!(env.get("PGARK_CATALOG"), Some(&catalog), "{env:?}");
        assert_eq!(env.get("PGARK_CONFIG"), Some(&config), "{env:?}");
        assert_eq!(env.get("PGARK_BACKUP_TRIGGER").map(String::as_str), Some("scheduled"), "{env:?}");
    }
    assert!(
        !pre_env.contains_key("PGARK_STATUS") && !pre_env.contains_key("PGARK_BACKUP_ID"),
        "{pre_env:?}"
    );
    assert_eq!(post_env.get("PGARK_STATUS").map(String::as_str), Some("ok"), "{post_env:?}");
    assert_eq!(post_env.get("PGARK_BACKUP_ID").map(String::as_str), Some(id), "{post_env:?}");
    assert!(!post_env.contains_key("PGARK_ERROR"), "{post_env:?}");
    for hook in ["pre_backup", "post_backup"] {
        p.wait_metric(
            &format!("pgark_hook_runs_total{{server=\"main\",hook=\"{hook}\"}}"),
            "hook runs",
            |v| v == 1.0,
        );
        assert_eq!(
            p.metric(&format!("pgark_hook_failures_total{{server=\"main\",hook=\"{hook}\"}}")),
            Some(0.0)
        );
    }

    // `pgark backup` runs them too.
    std::fs::remove_file(&pre).unwrap();
    std::fs::remove_file(&post).unwrap();
    let o = pgark(&p.config, &["backup", "main", "--json", "--checkpoint", "fast", "--wait", "60s"]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (pre_env, post_env) = (env_file(&pre), env_file(&post));
    assert_eq!(
        pre_env.get("PGARK_BACKUP_TRIGGER").map(String::as_str),
        Some("manual"),
        "{pre_env:?}"
    );
    assert_eq!(
        post_env.get("PGARK_BACKUP_ID").map(String::as_str),
        summary["id"].as_str(),
        "{post_env:?}"
    );
    assert_eq!(post_env.get("PGARK_STATUS").map(String::as_str), Some("ok"), "{post_env:?}");
}

#[test]
fn hooks_failing_post_hook_is_counted_and_streaming_goes_on_and_a_failing_pre_hook_vetoes() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let top = "hooks:\n  post_backup: \"echo post hook says no >&2; exit 7\"";
    let mut p = Pgark::start_full("", top, &server_yaml("main", &c.conninfo("postgres"), SCHEDULED), &[]);
    p.wait_metric(
        "pgark_hook_failures_total{server=\"main\",hook=\"post_backup\"}",
        "the failing post_backup hook to be counted",
        |v| v == 1.0,
    );
    assert_eq!(p.metric("pgark_hook_runs_total{server=\"main\",hook=\"post_backup\"}"), Some(1.0));
    // The backup itself stands, and counts as a success.
    assert_eq!(list(&p.config).len(), 1);
    assert_eq!(p.metric("pgark_backup_failures_total{server=\"main\"}"), Some(0.0));
    let log = p.log_text();
    assert!(log.contains("post hook says no"), "the hook's stderr is logged\n{log}");
    assert!(log.contains("exited with status 7"), "{log}");
    // Streaming goes on.
    write_rows(&c, 300);
    p.wait_flushed("main", current_flush_lsn(&c));
    assert_eq!(p.metric("pgark_up{server=\"main\"}"), Some(1.0));

    // A failing pre_backup hook (here for `pgark backup`, read from the config file) vetoes.
    p.set_top("hooks:\n  pre_backup: \"exit 3\"");
    p.rewrite_servers(&server_yaml("main", &c.conninfo("postgres"), SCHEDULED));
    let o = pgark(&p.config, &["backup", "main", "--checkpoint", "fast", "--wait", "60s"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("vetoed by the pre_backup hook, which exited with status 3"),
        "{}",
        text(&o)
    );
    assert_eq!(list(&p.config).len(), 1, "a vetoed backup must not be taken");
}

#[test]
fn hooks_past_their_timeout_are_killed_with_their_children_and_counted() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sh_pid, sleep_pid) = (dir.path().join("sh.pid"), dir.path().join("sleep.pid"));
    // Per-server hooks: the timeout and the command are the server's own.
    let hooks = format!(
        "hooks:\n  post_backup: \"echo $$ > {}; sleep 300 & echo $! > {}; wait\"\n  timeout: 2s",
        sh_pid.display(),
        sleep_pid.display()
    );
    let server = server_yaml("main", &c.conninfo("postgres"), SCHEDULED) + &hooks.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let p = Pgark::start_full("", "hooks:\n  post_backup: \"exit 0\"\n  timeout: 1h", &server, &[]);
    p.wait_metric(
        "pgark_hook_failures_total{server=\"main\",hook=\"post_backup\"}",
        "the timed-out post_backup hook to be counted",
        |v| v == 1.0,
    );
    let read = |f: &Path| -> i32 {
        std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .parse()
            .unwrap()
    };
    let (sh, sleep) = (read(&sh_pid), read(&sleep_pid));
    wait_until(Duration::from_secs(10), "the hook's shell and its sleep to be gone", || {
        gone(sh) && gone(sleep)
    });
    let log = p.log_text();
    assert!(log.contains("ran longer than its timeout (2s) and was killed"), "{log}");
    p.wait_streaming("main");
}
