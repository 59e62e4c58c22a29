//! Regression tests for the findings of the 2026-12 durability and security audit that need a
//! real PostgreSQL or the real binary (the others are unit tests next to the code they test):
//! 1 the failover whose switchpoint is the start of pgark's open segment, 3 a volume mounted at
//! `<catalog>/<server>`, 7 catalog permissions, 10 passwords in output, 11 a SCRAM impostor and
//! an HTTP connection flood, 13 a delta restore fsyncs what it kept; and the daemon's
//! supervision of its tasks (a panic in each is logged, counted, shown and restarted).

use crate::support::faults::{self, FaultLog};
use crate::support::*;
use pgark::util::os::running_as_root;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Finding 1. `synchronous_standby_names = 'ANY 1 (pgark, replica1)'`, replica1 stopped right
/// after a segment switch, a few commits acknowledged by pgark alone, the primary stopped,
/// replica1 promoted: its timeline 2 starts exactly at the segment pgark had open. The
/// acknowledged rows stay in the catalog (timeline 1's `.partial`), and a restore along
/// timeline 1 reaches them.
#[test]
fn failover_at_the_start_of_the_open_segment_keeps_acknowledged_wal() {
    // The switchpoint must be exactly a segment start; background WAL slipping in between the
    // switch and the standby's stop moves it, so the scenario is tried a few times.
    for attempt in 1..=4 {
        if failover_scenario(attempt) {
            return;
        }
    }
    panic!("the switchpoint never fell on a segment start in 4 attempts");
}

/// Returns false when the promotion did not branch exactly at a segment start (try again).
fn failover_scenario(attempt: u32) -> bool {
    let bins = pg();
    let primary = Cluster::init_with(
        &bins,
        &[
            "wal_keep_size = 1GB",
            "synchronous_standby_names = 'ANY 1 (pgark, replica1)'",
            "wal_sender_timeout = 5s",
        ],
        &["--wal-segsize=1"],
    )
    .unwrap();
    primary.start().unwrap();
    let mut p = Pgark::start(&server_yaml("main", &primary.conninfo(&primary.superuser), "synchronous: true"));
    p.wait_streaming("main");
    primary.psql("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let replica = start_standby(&primary);
    replica.append_conf("cluster_name = 'replica1'").unwrap();
    replica.stop("fast").unwrap();
    replica.start().unwrap();
    // A backup the restore can start from.
    let o = pgark(&p.config, &["backup", "main", "--checkpoint", "fast", "--wait", "60s"]);
    assert!(o.status.success(), "{}", text(&o));
    primary.psql("INSERT INTO t SELECT generate_series(1, 100)").unwrap();
    // The switch: the new segment starts at S. replica1 receives up to S and stops.
    let switch: pgark::pg::Lsn = primary.psql("SELECT pg_switch_wal()").unwrap().parse().unwrap();
    let seg = seg_size(&primary);
    let s = seg.segment_start(seg.segno(switch).next());
    wait_until(Duration::from_secs(30), "replica1 to receive up to the switch", || {
        replica
            .psql("SELECT pg_last_wal_receive_lsn()")
            .ok()
            .and_then(|l| l.parse::<pgark::pg::Lsn>().ok())
            .is_some_and(|l| l >= s)
    });
    replica.stop("fast").unwrap();
    // Commits acknowledged by pgark alone (ANY 1), in the segment starting at S.
    for id in 1001..=1005 {
        primary.psql(&format!("INSERT INTO t VALUES ({id})")).unwrap();
    }
    let acked_end = current_flush_lsn(&primary);
    p.wait_flushed("main", acked_end);
    primary.stop("immediate").unwrap();
    replica.start().unwrap();
    replica.promote().unwrap();
    wait_until(Duration::from_secs(30), "promotion", || {
        replica.psql("SELECT pg_is_in_recovery()").is_ok_and(|r| r == "f")
    });
    let history = std::fs::read(replica.pg_wal().join("00000002.history")).unwrap();
    let switchpoint = pgark::pg::TimelineHistory::parse(&history)
        .unwrap()
        .switchpoint_of(pgark::pg::TimelineId(1))
        .unwrap();
    if switchpoint != s {
        eprintln!("attempt {attempt}: the switchpoint {switchpoint} is not the segment start {s}; trying again");
        return false;
    }
    let partial_name = format!(
        "{}.partial",
        pgark::pg::WalFileName::new(pgark::pg::TimelineId(1), seg.segno(s)).format(seg)
    );
    let partial = p.wal_dir("main").join(&partial_name);
    assert!(partial.exists(), "{partial_name} missing before the failover");
    // pgark follows the new primary.
    p.rewrite_servers(&server_yaml("main", &replica.conninfo(&replica.superuser), "synchronous: true"));
    p.hup();
    wait_until(Duration::from_secs(60), "pgark on timeline 2", || {
        p.server("main").and_then(|s| s.timeline).is_some_and(|t| t.0 == 2)
    });
    replica.psql("INSERT INTO t VALUES (5000)").unwrap();
    p.wait_flushed("main", current_flush_lsn(&replica));
    assert!(
        partial.exists(),
        "the acknowledged WAL of timeline 1 ({partial_name}) was deleted\n{}",
        tail(&p.log_text())
    );
    assert_eq!(p.term(), 0);
    // A restore along timeline 1 reaches the acknowledged rows.
    open_for_postgres(p.dir.path());
    let bin = Binary::new();
    let (data, tmp, _) = restore(&bin, &p.config, "main", &["--target-timeline", "1"]);
    let r = start_restored(&bins, tmp, data, None);
    let got = r.psql("SELECT count(*) FROM t WHERE id BETWEEN 1001 AND 1005").unwrap();
    assert_eq!(got, "5", "the acknowledged commits are not in the restored cluster");
    true
}

/// Finding 3: with a volume of its own mounted at `<catalog>/<server>`, free space is measured
/// there: a backup that would fill that volume is refused, naming it, although the catalog
/// root's filesystem has room.
#[test]
fn backup_space_is_checked_on_the_servers_own_volume() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let cat = Catalog::new(&server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "backup_checkpoint: fast\nbackup_min_free: 40MiB",
    ));
    std::fs::create_dir_all(cat.catalog.join("main")).unwrap();
    let Some(fs) = MountedFs::at(&cat.catalog.join("main"), "size=48m") else {
        eprintln!("SKIP: cannot mount a tmpfs here (not root)");
        return;
    };
    let o = pgark(&cat.config, &["backup", "main"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("not enough free space") && out.contains(&cat.catalog.join("main").display().to_string()),
        "the refusal does not name the server's volume: {out}"
    );
    drop(fs);
}

/// Walks `dir`: (path, mode, gid) of everything.
fn modes(dir: &Path, out: &mut Vec<(String, u32, u32)>) {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        out.push((e.path().display().to_string(), m.mode() & 0o7777, m.gid()));
        if m.is_dir() {
            modes(&e.path(), out);
        }
    }
}

/// Finding 7: started under umask 022, pgark creates its catalog owner-only (directories 0700,
/// files 0600); with `catalog_group` it is 2750/0640 and owned by that group; `check-config`
/// warns about a catalog others can read.
#[test]
fn catalog_is_private_whatever_the_umask() {
    use std::os::unix::process::CommandExt;
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    // The user's own primary group works without privileges; as root, postgres's.
    let group = if running_as_root() {
        "postgres".to_string()
    } else {
        // SAFETY: getgid has no preconditions.
        unsafe { libc::getgid() }.to_string()
    };
    for group_access in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog");
        let config = dir.path().join("pgark.yaml");
        let metrics_port = ports::reserve();
        let metrics = format!("127.0.0.1:{metrics_port}");
        std::fs::write(
            &config,
            format!(
                "catalog: {}\n{}metrics:\n  listen: {metrics}\nservers:\n{}",
                catalog.display(),
                if group_access {
                    format!("catalog_group: '{group}'\n")
                } else {
                    String::new()
                },
                server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false")
            ),
        )
        .unwrap();
        let mut child = unsafe {
            Command::new(pgark_bin())
                .args(["serve", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // SAFETY: umask is async-signal-safe.
                .pre_exec(|| {
                    libc::umask(0o022);
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        let wal = catalog.join("main/wal");
        wait_until(Duration::from_secs(30), "a stored segment", || {
            std::fs::read_dir(&wal).is_ok_and(|d| d.count() > 1)
        });
        write_rows(&c, 200);
        c.psql("SELECT pg_switch_wal()").unwrap();
        wait_until(Duration::from_secs(30), "a compressed segment", || {
            std::fs::read_dir(&wal).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".zst")))
        });
        let o = Command::new(pgark_bin())
            .args(["backup", "--config"])
            .arg(&config)
            .args(["main", "--checkpoint", "fast"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let _ = child.kill();
        let _ = child.wait();
        let mut all = vec![];
        let root_mode = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&catalog).unwrap().mode() & 0o7777
        };
        modes(&catalog, &mut all);
        assert!(all.len() > 10, "{all:?}");
        let gid = pgark::catalog::perms::group_id(&group).unwrap();
        for (path, mode, g) in &all {
            let is_dir = Path::new(path).is_dir();
            if group_access {
                assert_eq!(*g, gid, "{path}: not in group {group}");
                assert_eq!(mode & 0o027, 0, "{path}: mode {mode:o} lets the group write or others in");
                if is_dir {
                    assert_eq!(mode & 0o2050, 0o2050, "{path}: mode {mode:o}");
                }
            } else {
                assert_eq!(mode & 0o077, 0, "{path}: mode {mode:o} is readable by others under umask 022");
            }
        }
        assert_eq!(root_mode, if group_access { 0o2750 } else { 0o700 });
        // check-config says so when someone opens the catalog up.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&catalog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = pgark(&config, &["check-config"]);
        assert!(o.status.success());
        assert!(text(&o).contains("readable by every user"), "{}", text(&o));
    }
}

/// Finding 10: the passwords of the suite's password-bearing scenarios never appear in any
/// output: logs at debug level, `/status`, `/metrics`, `status --json`, `list-backups --json`,
/// `backup --json`, `check-config` errors, `wal-get` errors (which PostgreSQL writes to its log).
#[test]
fn passwords_never_appear_in_any_output() {
    let (c, _certs) = tls_cluster();
    let secret = "Pw-7f3a91c2-secret";
    let wrong = "Wr0ng-5b1d77e0-secret";
    c.psql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE pw_user LOGIN REPLICATION SUPERUSER PASSWORD '{secret}'"
    ))
    .unwrap();
    c.write_hba(&format!(
        "local all all trust\nhost all pw_user 127.0.0.1/32 scram-sha-256\nhost replication pw_user 127.0.0.1/32 scram-sha-256\nhost replication md5_user 127.0.0.1/32 md5\n{}",
        ""
    ))
    .unwrap();
    c.reload().unwrap();
    let good = format!("postgresql://pw_user:{secret}@127.0.0.1:{}/postgres?sslmode=require", c.port);
    let bad = format!("host=127.0.0.1 port={} user=md5_user password={wrong} sslmode=disable", c.port);
    let yaml = server_yaml("good", &good, "synchronous: false\nmonitor_interval: 1s")
        + &server_yaml("bad", &bad, "synchronous: false\nmonitor_interval: 1s");
    let p = Pgark::start_env(&yaml, &[("PGARK_LOG", "debug")]);
    p.wait_streaming("good");
    wait_until(Duration::from_secs(30), "the bad server's error", || {
        p.server("bad")
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("authentication failed"))
    });
    let mut outputs: Vec<(String, String)> = vec![];
    outputs.push(("/status".into(), p.http_get("/status").1));
    outputs.push(("/metrics".into(), p.metrics_text()));
    outputs.push(("/healthz".into(), p.http_get("/healthz").1));
    for args in [
        vec!["status", "--json"],
        vec!["status"],
        vec!["backup", "good", "--json", "--checkpoint", "fast"],
        vec!["backup", "bad"],
        vec!["list-backups", "--json"],
        vec!["wal-get", "good", "0000000100000000000000FF", "/nonexistent/x"],
        vec!["wal-get", "good", "../../etc/passwd", "/tmp/x"],
        vec!["check-config"],
    ] {
        let o = pgark(&p.config, &args);
        outputs.push((format!("pgark {args:?}"), text(&o)));
    }
    // Configs whose connection string cannot be parsed, with the password inside.
    for conninfo in [
        format!("postgresql://pw_user:{secret}@[::1:5432/db"),
        format!("postgresql://pw_user:{secret}%FF@h/db"),
        format!("host=h password={secret} sslmode=sometimes"),
        format!("host=h password={secret} port=99999"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bad.yaml");
        std::fs::write(
            &cfg,
            format!(
                "catalog: {}\nservers:\n{}",
                dir.path().join("c").display(),
                server_yaml("x", &conninfo, "")
            ),
        )
        .unwrap();
        let o = pgark(&cfg, &["check-config"]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        outputs.push((format!("check-config of {conninfo}"), text(&o)));
    }
    outputs.push(("the daemon's log".into(), p.log_text()));
    for (what, out) in &outputs {
        for pw in [secret, wrong] {
            assert!(!out.contains(pw), "{what} shows a password:\n{out}");
        }
    }
    assert!(outputs.iter().any(|(_, o)| o.contains("pw_user")), "the outputs were not captured");
}

/// What a fake server does wrong.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Impostor {
    /// AuthenticationOk right after the client's first SCRAM message.
    EndsScramEarly,
    /// A SASLFinal with a signature it could not compute.
    ForgesSignature,
    /// An iteration count that would keep the client hashing for minutes.
    HugeIterationCount,
    /// Answers IDENTIFY_SYSTEM with an endless stream of rows.
    EndlessRows,
}

/// Finding 11: a server that ends SCRAM early (AuthenticationOk before proving it knows the
/// password), proves it wrongly (a forged SASLFinal) or asks for an absurd iteration count is
/// refused; one that answers a command with endless rows ends the connection at the row limit
/// instead of exhausting memory.
#[test]
fn impostors_and_hostile_servers_are_refused() {
    for mode in [
        Impostor::EndsScramEarly,
        Impostor::ForgesSignature,
        Impostor::HugeIterationCount,
        Impostor::EndlessRows,
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || fake_server(listener, mode));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ci = pgark::client::ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=u password=pw sslmode=disable")).unwrap();
        let result = rt.block_on(async {
            let mut c = pgark::client::Connection::connect(&ci, true).await?;
            c.identify_system().await
        });
        let msg = result.err().map(|e| e.to_string()).unwrap_or_else(|| panic!("{mode:?}: accepted"));
        let want = match mode {
            Impostor::EndsScramEarly => "without proving",
            Impostor::ForgesSignature => "signature is wrong",
            Impostor::HugeIterationCount => "iteration count",
            Impostor::EndlessRows => "exceeds",
        };
        assert!(msg.contains(want), "{mode:?}: {msg}");
        let _ = server.join();
    }
}

fn read_msg(s: &mut TcpStream, tagged: bool) -> Option<(u8, Vec<u8>)> {
    let mut tag = [0u8; 1];
    if tagged {
        s.read_exact(&mut tag).ok()?;
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    s.read_exact(&mut body).ok()?;
    Some((tag[0], body))
}

fn auth(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    let mut m = vec![b'R'];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend(body);
    m
}

fn fake_server(listener: TcpListener, mode: Impostor) {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _startup = read_msg(&mut s, false);
    if mode == Impostor::EndlessRows {
        s.write_all(&auth(0, b"")).unwrap();
        s.write_all(b"Z\0\0\0\x05I").unwrap();
        let _query = read_msg(&mut s, true);
        let mut desc = 1u16.to_be_bytes().to_vec();
        desc.extend_from_slice(b"systemid\0");
        desc.extend_from_slice(&[0u8; 18]);
        let mut m = vec![b'T'];
        m.extend_from_slice(&((desc.len() + 4) as u32).to_be_bytes());
        m.extend(desc);
        let _ = s.write_all(&m);
        let row = [b'D', 0, 0, 0, 16, 0, 1, 0, 0, 0, 6, b'1', b'2', b'3', b'4', b'5', b'6'];
        let block: Vec<u8> = row.iter().copied().cycle().take(row.len() * 1000).collect();
        for _ in 0..100 {
            if s.write_all(&block).is_err() {
                return;
            }
        }
        return;
    }
    s.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).unwrap();
    let Some((_, initial)) = read_msg(&mut s, true) else { return };
    if mode == Impostor::EndsScramEarly {
        s.write_all(&auth(0, b"")).unwrap();
        s.write_all(b"Z\0\0\0\x05I").unwrap();
        return;
    }
    // SASLInitialResponse: mechanism\0, int32 length, client-first "n,,n=,r=NONCE".
    let text = String::from_utf8_lossy(&initial).into_owned();
    let nonce = text.split("r=").nth(1).unwrap_or_default().trim_end_matches('\0').to_string();
    let iterations = if mode == Impostor::HugeIterationCount { 10_000_000 } else { 4096 };
    let first = format!("r={nonce}server,s=c2FsdHNhbHQ=,i={iterations}");
    s.write_all(&auth(11, first.as_bytes())).unwrap();
    let _final = read_msg(&mut s, true);
    let _ = s.write_all(&auth(12, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    let mut rest = [0u8; 16];
    let _ = s.read(&mut rest);
}

/// Finding 11: a flood of idle connections on the HTTP endpoint never costs pgark more than
/// `MAX_CONNECTIONS` descriptors, streaming goes on, and `/status` answers once it is over.
#[test]
fn http_connection_flood_is_bounded() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false"));
    p.wait_streaming("main");
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", p.pid())).map(|d| d.count()).unwrap_or(0);
    let before = fds();
    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = TcpStream::connect(&p.metrics) {
            flood.push(s);
        }
    }
    // Time passes on purpose: the daemon has had its chance to take on every connection.
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    eprintln!(
        "descriptors: {before} before, {during} during a flood of {} connections",
        flood.len()
    );
    assert!(
        during <= before + pgark::service::http::MAX_CONNECTIONS + 16,
        "the flood cost {} descriptors",
        during - before
    );
    write_rows(&c, 100);
    p.wait_flushed("main", current_flush_lsn(&c));
    drop(flood);
    wait_until(Duration::from_secs(20), "/status after the flood", || p.status().is_some());
}

/// A running cluster with some rows, and a catalog holding one backup of it.
fn cluster_with_a_backup() -> (Cluster, Catalog) {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    write_rows(&c, 500);
    let cat = Catalog::new(&server_yaml("main", &c.conninfo(&c.superuser), "backup_checkpoint: fast"));
    let o = pgark(&cat.config, &["backup", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    (c, cat)
}

/// Finding 13: a delta restore fsyncs every existing file it read and kept (only files the
/// restore record vouches for are not read, and those were made durable by the restore that
/// recorded them).
#[test]
fn delta_restore_fsyncs_the_files_it_kept() {
    let (_c, cat) = cluster_with_a_backup();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("data");
    let t = target.display().to_string();
    let o = pgark(&cat.config, &["restore", "main", "--target-dir", &t]);
    assert!(o.status.success(), "{}", text(&o));
    // Everything is read again (--verify-existing) and found identical: nothing is written.
    let log = tmp.path().join("trace.log");
    let o = Command::new(pgark_bin())
        .args(["restore", "--config"])
        .arg(&cat.config)
        .args(["main", "--target-dir", &t, "--delta", "--verify-existing", "--json"])
        .env("LD_PRELOAD", faults::shim())
        .env("PGARK_FAULTS", "")
        .env("PGARK_FAULT_LOG", &log)
        .env("PGARK_FAULT_TRACE", "fsync")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(stats["stats"]["files_unchanged"].as_u64().unwrap_or(0) > 100, "{stats}");
    let trace = FaultLog::read(&log);
    let synced: std::collections::BTreeSet<&str> = trace.fsynced().into_iter().collect();
    let kept: Vec<String> = files_under(&target)
        .iter()
        .map(|f| f.display().to_string())
        .filter(|f| f.contains("/base/") && !f.ends_with("pg_internal.init"))
        .collect();
    assert!(kept.len() > 100, "{}", kept.len());
    let unsynced: Vec<&String> = kept.iter().filter(|f| !synced.contains(f.as_str())).collect();
    assert!(
        unsynced.is_empty(),
        "{} kept files were not fsynced, e.g. {:?}",
        unsynced.len(),
        &unsynced[..unsynced.len().min(5)]
    );
}

/// `pgark restore` stops cleanly on SIGTERM and SIGINT: within moments, exit 1, the directory
/// left unstartable (the marker, no `pg_control`) and no restore record; `--delta` then finishes
/// it. (Writes are slowed by the fault shim so that the signal lands mid-restore.)
#[test]
fn restore_stops_cleanly_on_a_signal() {
    let (_c, cat) = cluster_with_a_backup();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("data");
    let t = target.display().to_string();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let log = tmp.path().join("faults.log");
        let mut child = Command::new(pgark_bin())
            .args(["restore", "--config"])
            .arg(&cat.config)
            .args(["main", "--target-dir", &t, "--delta", "--verify-existing", "--jobs", "1"])
            .env("LD_PRELOAD", faults::shim())
            .env("PGARK_FAULTS", format!("write:{t}/:1+:slow;fsync:{t}/:1+:slow"))
            .env("PGARK_FAULT_LOG", &log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(30), "the restore to start writing", || {
            target.join("pgark_restore_incomplete").exists()
        });
        // Time passes on purpose: the signal lands well inside the (slowed) writing.
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_exit(&mut child, Duration::from_secs(5), &format!("restore after signal {signal}"));
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        eprintln!(
            "restore stopped {:?} after signal {signal}: {}",
            start.elapsed(),
            err.lines().last().unwrap_or("")
        );
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(err.contains("interrupted"), "{err}");
        assert!(target.join("pgark_restore_incomplete").exists(), "the marker is gone");
        assert!(!target.join("global/pg_control").exists(), "an interrupted restore left pg_control");
    }
    let o = pgark(&cat.config, &["restore", "main", "--target-dir", &t, "--delta"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(target.join("global/pg_control").exists() && !target.join("pgark_restore_incomplete").exists());
}

/// The HTTP endpoint cannot be restarted on its socket: when its task dies the daemon exits 1,
/// saying why, so that systemd restarts it.
#[test]
fn a_dead_http_task_ends_the_daemon_with_exit_1() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let mut p = Pgark::start_env(
        &server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false"),
        &[("FAILPOINTS", "http-serve=panic(injected)")],
    );
    let code = wait_exit(
        p.child.as_mut().unwrap(),
        Duration::from_secs(15),
        "the daemon without its HTTP endpoint",
    )
    .code();
    p.child = None;
    assert_eq!(code, Some(1), "{}", tail(&p.log_text()));
    assert!(p.log_text().contains("the http task of the daemon died"), "{}", tail(&p.log_text()));
}

/// Supervision: a panic in each task of the daemon (receiver, archiver, monitor, backup
/// scheduler, drill scheduler, catalog watch; failpoints of the test build) is logged, counted in
/// `pgark_task_failures_total`, listed in `/status`, and the task restarted: streaming,
/// archiving and monitoring carry on.
#[test]
fn every_task_that_dies_is_reported_and_restarted() {
    let c = Cluster::init_with(&pg(), &[], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let failpoints = "receiver-session=1*panic(injected);archiver-segment=1*panic(injected);monitor-round=1*panic(injected);backup-scheduler=1*panic(injected);drill-scheduler=1*panic(injected);catalog-watch=1*panic(injected)";
    let p = Pgark::start_env(
        &server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false\nmonitor_interval: 1s"),
        &[("FAILPOINTS", failpoints)],
    );
    let start = Instant::now();
    for task in ["receiver", "monitor", "backup_scheduler", "drill_scheduler"] {
        wait_until(Duration::from_secs(30), &format!("the {task} task to be restarted"), || {
            p.metric(&format!("pgark_task_failures_total{{server=\"main\",task=\"{task}\"}}")) == Some(1.0)
        });
    }
    wait_until(Duration::from_secs(30), "the catalog watch to be restarted", || {
        p.metric("pgark_task_failures_total{server=\"\",task=\"catalog_watch\"}") == Some(1.0)
    });
    p.wait_streaming("main");
    // The archiver dies at its first segment; the receiver notices at the next one, restarts it.
    for _ in 0..3 {
        write_rows(&c, 300);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    wait_until(Duration::from_secs(60), "the archiver to be restarted", || {
        p.metric("pgark_task_failures_total{server=\"main\",task=\"archiver\"}") == Some(1.0)
    });
    write_rows(&c, 300);
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    wait_until(Duration::from_secs(60), "segments archived after the restart", || {
        std::fs::read_dir(p.wal_dir("main"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().len() == 24)
            .count()
            == 0
    });
    let status = p.status().unwrap();
    let tasks: Vec<&str> = status.task_failures.iter().map(|f| f.task.as_str()).collect();
    for t in [
        "receiver",
        "archiver",
        "monitor",
        "backup_scheduler",
        "drill_scheduler",
        "catalog_watch",
    ] {
        assert!(tasks.contains(&t), "{t} not in /status task_failures: {tasks:?}");
    }
    assert!(
        status.task_failures.iter().all(|f| f.error.contains("injected")),
        "{:?}",
        status.task_failures
    );
    wait_until(Duration::from_secs(20), "monitoring facts", || {
        p.server("main").is_some_and(|s| s.monitor.is_some())
    });
    assert!(p.log_text().contains("a task of the daemon died"));
    eprintln!("every task restarted within {:?}", start.elapsed());
}
