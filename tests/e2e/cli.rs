//! The command line: bad configs (exit 2, message names the key), the catalog lock (exit 4,
//! stale lock taken over), `pgark status` (exit 0 / 3, --json), SIGHUP reload.

use crate::support::*;
use std::time::Duration;

/// `pgark ARGS...`: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = pgark_args(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("cat");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            format!("catalog: {}\nservers:\n  a:\n    conninfo: host=/tmp\n    slto: x\n", cat.display()),
            "slto",
        ),
        (
            "unknown top key",
            format!("catalog: {}\nserver:\n  a: {{}}\n", cat.display()),
            "server",
        ),
        (
            "wrong type",
            format!(
                "catalog: {}\nservers:\n  a:\n    conninfo: host=/tmp\n    synchronous: perhaps\n",
                cat.display()
            ),
            "synchronous",
        ),
        (
            "missing conninfo",
            format!("catalog: {}\nservers:\n  a:\n    slot: x\n", cat.display()),
            "conninfo",
        ),
        (
            "missing catalog",
            "servers:\n  a:\n    conninfo: host=/tmp\n".to_string(),
            "catalog",
        ),
        (
            "bad slot",
            format!(
                "catalog: {}\nservers:\n  a:\n    conninfo: host=/tmp\n    slot: No-Good\n",
                cat.display()
            ),
            "servers.a.slot",
        ),
        (
            "bad application_name",
            format!(
                "catalog: {}\nservers:\n  a:\n    conninfo: \"host=/tmp application_name=''\"\n",
                cat.display()
            ),
            "application_name",
        ),
        (
            "bad conninfo key",
            format!("catalog: {}\nservers:\n  a:\n    conninfo: hostt=/tmp\n", cat.display()),
            "hostt",
        ),
        (
            "duplicate server",
            format!(
                "catalog: {}\nservers:\n  a:\n    conninfo: host=/tmp\n  a:\n    conninfo: host=/x\n",
                cat.display()
            ),
            "duplicate",
        ),
        (
            "same slot twice",
            format!(
                "catalog: {}\nservers:\n  a:\n    conninfo: host=/tmp\n  b:\n    conninfo: host=/tmp\n",
                cat.display()
            ),
            "servers.b",
        ),
        (
            "bad compression",
            format!(
                "catalog: {}\nservers:\n  a:\n    conninfo: host=/tmp\n    compression: zstd:99\n",
                cat.display()
            ),
            "compression",
        ),
        (
            "bad listen",
            format!(
                "catalog: {}\nmetrics:\n  listen: everywhere\nservers:\n  a:\n    conninfo: host=/tmp\n",
                cat.display()
            ),
            "metrics.listen",
        ),
        (
            "unwritable catalog",
            "catalog: /proc/pgark-cannot-exist\nservers:\n  a:\n    conninfo: host=/tmp\n".to_string(),
            "catalog",
        ),
        ("not yaml", "catalog: [unclosed\n".to_string(), "line"),
    ];
    for (what, text, needle) in cases {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, &text).unwrap();
        for args in [vec!["check-config", "--config"], vec!["serve", "--config"]] {
            let mut a = args.clone();
            a.push(f.to_str().unwrap());
            let (code, _, err) = run(&a);
            assert_eq!(code, 2, "{what} ({args:?}): exit {code}, stderr {err}");
            assert!(err.contains(f.to_str().unwrap()), "{what}: message does not name the file: {err}");
            assert!(err.contains(needle), "{what}: message does not name {needle:?}: {err}");
        }
    }
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent/pgark.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/pgark.yaml"), "{err}");
    let f = dir.path().join("good.yaml");
    std::fs::write(&f, format!("catalog: {}\nservers:\n  a:\n    conninfo: host=/tmp\n", cat.display())).unwrap();
    let (code, out, _) = run(&["serve", "--check", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn lock_status_and_reload() {
    let bins = pg();
    let c = Cluster::init(&bins, &[]).unwrap();
    c.start().unwrap();
    let mut p = Pgark::start(&server_yaml("one", &c.conninfo(&c.superuser), ""));
    p.wait_streaming("one");

    // A second daemon on the same catalog is refused while the first lives.
    let (code, _, err) = run(&["serve", "--config", p.config.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("pid {}", p.pid())), "{err}");

    // pgark status: streaming → 0, JSON document, all fields present.
    let (code, out, _) = run(&["status", "--config", p.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("one") && out.contains("streaming"), "{out}");
    let (code, out, _) = run(&["status", "--json", "--config", p.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["servers"][0]["state"], "streaming");
    assert!(v["servers"][0]["flushed_lsn"].is_string());
    let metrics = p.metrics_text();
    for m in [
        "pgark_wal_received_bytes_total",
        "pgark_wal_flushed_lsn_bytes",
        "pgark_up",
        "pgark_fsync_duration_seconds_bucket",
        "pgark_build_info",
    ] {
        assert!(metrics.contains(m), "{m} missing from /metrics");
    }
    assert_eq!(p.http_get("/healthz").0, 200);

    // SIGHUP: add a server; the unchanged one is not interrupted.
    let c2 = Cluster::init(&bins, &[]).unwrap();
    c2.start().unwrap();
    p.rewrite_servers(&(server_yaml("one", &c.conninfo(&c.superuser), "") + &server_yaml("two", &c2.conninfo(&c2.superuser), "")));
    p.hup();
    p.wait_streaming("two");
    assert_eq!(p.server("one").unwrap().reconnects, 0);
    assert_eq!(p.server("one").unwrap().state, pgark::service::status::ConnState::Streaming);
    // A broken config on reload is refused and the daemon keeps running.
    std::fs::write(&p.config, "catalog: [broken").unwrap();
    p.hup();
    wait_until(Duration::from_secs(20), "the reload failure in the log", || {
        p.log_text().contains("config reload failed")
    });
    assert!(p.server("two").is_some());
    // Remove a server.
    p.rewrite_servers(&server_yaml("two", &c2.conninfo(&c2.superuser), ""));
    p.hup();
    wait_until(Duration::from_secs(20), "server one to be removed", || p.server("one").is_none());
    // Its series leave /metrics with it; the other server's stay.
    let metrics = p.metrics_text();
    assert!(!metrics.contains("server=\"one\""), "a removed server's series remain:\n{metrics}");
    assert_eq!(metric_value(&metrics, "pgark_up{server=\"two\"}"), Some(1.0), "{metrics}");

    // SIGKILL leaves a stale lock: the next start takes it over.
    p.kill9();
    let (code, out, _) = run(&["status", "--config", p.config.to_str().unwrap()]);
    assert_eq!(code, 3, "status must fail when the daemon is down: {out}");
    assert!(out.contains("not running"), "{out}");
    p.spawn();
    p.wait_streaming("two");
    assert!(p.log_text().contains("stale"), "stale lock take-over not logged");
    assert_eq!(p.term(), 0);
}

#[test]
fn refuses_a_different_cluster_in_the_same_catalog() {
    let bins = pg();
    let a = Cluster::init(&bins, &[]).unwrap();
    a.start().unwrap();
    let mut p = Pgark::start(&server_yaml("main", &a.conninfo(&a.superuser), ""));
    p.wait_streaming("main");
    assert_eq!(p.term(), 0);
    let b = Cluster::init(&bins, &[]).unwrap();
    b.start().unwrap();
    p.rewrite_servers(&server_yaml("main", &b.conninfo(&b.superuser), ""));
    p.spawn();
    wait_until(Duration::from_secs(30), "system identifier refusal", || {
        p.server("main")
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("system identifier"))
    });
    let err = p.server("main").unwrap().last_error.unwrap();
    let sys_a = a.psql("SELECT system_identifier FROM pg_control_system()").unwrap();
    let sys_b = b.psql("SELECT system_identifier FROM pg_control_system()").unwrap();
    assert!(
        err.contains(&sys_a) && err.contains(&sys_b),
        "both identifiers must be named: {err}"
    );
}

/// A metrics port another process holds: `pgark serve` exits 1 naming the address and the key.
#[test]
fn metrics_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgark.yaml");
    std::fs::write(
        &cfg,
        format!(
            "catalog: {}\nmetrics:\n  listen: {addr}\nservers:\n  main:\n    conninfo: host=/nonexistent\n",
            dir.path().join("catalog").display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr) && err.contains("metrics.listen"), "{err}");
}

/// `pgark keygen` prints a key file's contents: 64 hexadecimal characters and a newline, new
/// every time, that the key parser accepts; the key id goes to stderr.
#[test]
fn keygen_prints_a_fresh_key() {
    let a = pgark_args(&["keygen"]);
    let b = pgark_args(&["keygen"]);
    assert!(a.status.success(), "{}", text(&a));
    let (ka, kb) = (
        String::from_utf8(a.stdout.clone()).unwrap(),
        String::from_utf8(b.stdout.clone()).unwrap(),
    );
    assert_eq!(ka.len(), 65, "{ka:?}");
    assert!(ka.ends_with('\n') && ka.trim_end().bytes().all(|c| c.is_ascii_hexdigit()), "{ka:?}");
    assert_ne!(ka, kb);
    let key = pgark::catalog::encryption::Key::parse(&ka, "stdout").unwrap();
    assert!(String::from_utf8_lossy(&a.stderr).contains(&format!("key id {}", key.id())));
}
