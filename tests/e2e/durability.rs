//! Durability under process death: SIGKILL of the primary (RPO=0 proof), SIGKILL of pgark under
//! load, a cut connection and a server restart. Each ends by proving nothing acknowledged was lost.

use crate::common::*;
use crate::pgcluster::{free_port, running_as_root, Cluster, PgBinaries};
use pgark::pg::WalSegSize;
use std::collections::HashSet;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Concurrent writers recording every id whose COMMIT returned success.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    pub fn start(c: &Cluster, n: usize) -> Writers {
        c.psql("CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, pad text)")
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for w in 0..n {
            let (stop, acked) = (stop.clone(), acked.clone());
            let (sock, port, user) = (c.socket_dir.clone(), c.port, c.superuser.clone());
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let (client, conn) = match tokio_postgres::Config::new()
                        .host_path(&sock)
                        .port(port)
                        .user(&user)
                        .dbname("postgres")
                        .connect(tokio_postgres::NoTls)
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => panic!("writer {w} cannot connect: {e}"),
                    };
                    tokio::spawn(conn);
                    let base = (w as i64 + 1) * 1_000_000_000 + rand_base();
                    let mut i = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let id = base + i;
                        let r = tokio::time::timeout(
                            Duration::from_secs(120),
                            client.execute("INSERT INTO acked VALUES ($1, repeat(md5(random()::text), 8))", &[&id]),
                        )
                        .await;
                        match r {
                            Ok(Ok(_)) => acked.lock().unwrap().push(id),
                            Ok(Err(e)) => {
                                if !stop.load(Ordering::Relaxed) {
                                    eprintln!("writer {w} stopped: {e}");
                                }
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                });
            }));
        }
        Writers { stop, acked, threads }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let v = self.acked.lock().unwrap().clone();
        v
    }
}

fn rand_base() -> i64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 1000) as i64
        * 1_000_000
}

fn chown_postgres(path: &Path) {
    if running_as_root() {
        assert!(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap()
            .success());
    }
}

/// Builds a cluster from a `pg_basebackup -X none` copy plus only the WAL in pgark's catalog
/// (complete segments decompressed, and the newest partial under its full name), starts it and
/// returns it. PostgreSQL replays the catalog's WAL from pg_wal during crash recovery.
pub fn recover_from_catalog(bins: &PgBinaries, backup: &Path, wal_dir: &Path, seg: WalSegSize) -> Cluster {
    let dir = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(Command::new("cp").arg("-a").arg(backup).arg(&data).status().unwrap().success());
    let pg_wal = data.join("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    for (name, _) in completed_segments(wal_dir, seg) {
        std::fs::write(pg_wal.join(&name), stored_segment(wal_dir, &name).unwrap()).unwrap();
    }
    let newest_partial = std::fs::read_dir(wal_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".partial").map(str::to_string))
        .max();
    if let Some(p) = newest_partial {
        std::fs::copy(wal_dir.join(format!("{p}.partial")), pg_wal.join(&p)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = free_port();
    let r = Cluster::from_data_dir(bins, dir, data, port).unwrap();
    r.append_conf(&format!(
        "port = {port}\nunix_socket_directories = '{}'\nsynchronous_standby_names = ''\n",
        r.socket_dir.display()
    ))
    .unwrap();
    chown_postgres(r.base_dir());
    r.start().unwrap();
    r
}

/// A primary with pgark as its only synchronous standby (1 MiB segments), pgark streaming.
/// Asserts that every acknowledged id is in the `acked` table of the recovered cluster `r`.
pub fn assert_all_acked_present(r: &Cluster, acked: &[i64], when: &str) {
    let present: HashSet<i64> = r
        .psql("SELECT id FROM acked")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<&i64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged commits lost {when}: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

pub fn sync_primary_with_pgark(extra_conf: &[&str]) -> (Cluster, Pgark) {
    let mut conf = vec!["synchronous_standby_names = 'pgark'"];
    conf.extend_from_slice(extra_conf);
    let c = Cluster::init_with(&pg(), &conf, &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true"));
    p.wait_streaming("main");
    (c, p)
}

fn rpo_round(kill_after: Duration) {
    let bins = pg();
    let (c, mut p) = sync_primary_with_pgark(&["synchronous_commit = on"]);
    c.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)").unwrap();
    let backup = c.base_dir().join("backup");
    pg_basebackup(&c, &backup, &["-X", "none"]);
    let writers = Writers::start(&c, 8);
    std::thread::sleep(kill_after);
    eprintln!(
        "rpo: killing the primary after {kill_after:?} ({} commits acknowledged so far)",
        writers.count()
    );
    c.kill9().unwrap();
    let acked = writers.finish();
    eprintln!("rpo: writers stopped with {} acknowledged commits", acked.len());
    // pgark dies too: only what it fsynced before acknowledging may count.
    p.kill9();
    assert!(acked.len() > 20, "too few commits before the kill: {}", acked.len());
    let seg = seg_size_offline(&p);
    let r = recover_from_catalog(&bins, &backup, &p.wal_dir("main"), seg);
    assert_all_acked_present(&r, &acked, &format!("after SIGKILL of the primary at {kill_after:?}"));
    eprintln!(
        "RPO=0 round (kill after {kill_after:?}): all {} acknowledged commits recovered from the catalog",
        acked.len()
    );
}

fn seg_size_offline(p: &Pgark) -> WalSegSize {
    let store = pgark::catalog::store::LocalStore::new(&p.catalog);
    let st = pgark::catalog::state::load(&store, "main").unwrap().unwrap();
    WalSegSize::new(st.wal_segment_size).unwrap()
}

#[test]
fn rpo_zero_sigkill_primary_several_kill_points() {
    for ms in [600u64, 1700, 3100] {
        rpo_round(Duration::from_millis(ms));
    }
}

#[test]
fn sigkill_pgark_under_load_resumes_without_gap() {
    let (c, mut p) = sync_primary_with_pgark(&["wal_keep_size = 1GB"]);
    let writers = Writers::start(&c, 4);
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1200 + round * 700));
        p.kill9();
        let before = writers.count();
        std::thread::sleep(Duration::from_millis(800));
        // Synchronous commit: with pgark gone, commits block on the primary.
        assert!(writers.count() <= before + 8, "commits went on without the synchronous standby");
        p.spawn();
        p.wait_streaming("main");
        let start = std::time::Instant::now();
        while writers.count() <= before + 20 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "commits did not continue after pgark restarted ({} acked, {before} before the kill)\nreplication: {}\nwaiting: {}",
                writers.count(),
                c.psql(
                    "SELECT application_name, state, sent_lsn, flush_lsn, sync_state, pg_current_wal_flush_lsn() FROM pg_stat_replication"
                )
                .unwrap_or_default(),
                c.psql("SELECT wait_event, left(query, 40) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let acked = writers.finish();
    // A slow machine may write less than three segments during the rounds; make sure the
    // comparison below always spans segment boundaries crossed after the restarts.
    for _ in 0..2 {
        c.psql("CREATE TABLE IF NOT EXISTS switch_marker (i int); INSERT INTO switch_marker VALUES (1); SELECT pg_switch_wal()")
            .unwrap();
    }
    let target = current_flush_lsn(&c);
    p.wait_flushed("main", target);
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared >= 3, "only {compared} segments compared");
    assert_no_gap(&p.wal_dir("main"), seg);
    // No duplicates: one final form per segment, at most one open partial per timeline.
    let partials = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    assert!(partials <= 1, "{partials} partial segments on one timeline");
    let count: usize = c.psql("SELECT count(*) FROM acked").unwrap().parse().unwrap();
    assert!(count >= acked.len());
}

/// A TCP proxy whose connections can be cut at will.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                c2.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let (mut a, mut b) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(Shutdown::Both);
                });
                let (mut a, mut b) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { port, conns }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn connection_cut_and_server_restart_continue_without_gap() {
    let bins = pg();
    let c = Cluster::init_with(&bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let proxy = Proxy::start(c.port);
    let conninfo = format!("host=127.0.0.1 port={} user={} sslmode=disable", proxy.port, c.superuser);
    let mut p = Pgark::start(&server_yaml("main", &conninfo, "synchronous: true"));
    p.wait_streaming("main");
    for _ in 0..2 {
        write_rows(&c, 400);
        proxy.cut();
        write_rows(&c, 400);
        c.psql("SELECT pg_switch_wal()").unwrap();
        p.wait_streaming("main");
    }
    wait_until(Duration::from_secs(30), "reconnects to be counted", || {
        p.server("main").is_some_and(|s| s.reconnects >= 2)
    });
    write_rows(&c, 100);
    c.stop("fast").unwrap();
    c.start().unwrap();
    write_rows(&c, 300);
    c.psql("SELECT pg_switch_wal()").unwrap();
    write_rows(&c, 50);
    p.wait_streaming("main");
    p.wait_flushed("main", current_flush_lsn(&c));
    // The disconnects are counted by reason: the cuts as network, the restart as a shutdown.
    let (_, metrics) = p.http_get("/metrics");
    let count = |reason: &str| -> f64 {
        let prefix = format!("pgark_disconnects_total{{server=\"main\",reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("network") + count("timeout") >= 2.0, "cuts not counted:\n{metrics}");
    assert!(count("server_shutdown") >= 1.0, "the restart not counted:\n{metrics}");
    assert!(
        metrics.contains("pgark_connection_state{server=\"main\",state=\"streaming\"} 1"),
        "{metrics}"
    );
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared >= 3, "only {compared} segments compared");
    assert_no_gap(&p.wal_dir("main"), seg);
    assert!(p.log_text().contains("replication session ended"), "disconnects were not logged");
}

#[test]
fn disk_full_holds_back_acknowledgement_and_recovers() {
    let Some(fs) = SmallFs::mount("24m") else {
        eprintln!("SKIP disk_full_holds_back_acknowledgement_and_recovers: cannot mount a tmpfs here (needs root and mount permission)");
        return;
    };
    let (c, mut p) = sync_primary_with_pgark(&["wal_keep_size = 1GB"]);
    let catalog = fs.dir.path().join("catalog");
    // Point the daemon at the small filesystem.
    p.term();
    let text = std::fs::read_to_string(&p.config).unwrap();
    let text = text.replace(
        &format!("catalog: {}", p.catalog.display()),
        &format!("catalog: {}", catalog.display()),
    );
    std::fs::write(&p.config, text).unwrap();
    p.catalog = catalog.clone();
    p.spawn();
    p.wait_streaming("main");
    let writers = Writers::start(&c, 2);
    wait_until(Duration::from_secs(30), "some commits", || writers.count() > 50);
    // Fill the filesystem: the next segment boundary cannot get a file.
    let ballast = fs.dir.path().join("ballast");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", ballast.display()))
        .stderr(std::process::Stdio::null())
        .status();
    wait_until(Duration::from_secs(60), "the disk-full error in status", || {
        p.server("main")
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("No space left"))
    });
    let (_, metrics) = p.http_get("/metrics");
    assert!(metrics.contains("pgark_wal_store_errors_total"), "store errors not in /metrics");
    // While the catalog cannot store WAL, nothing more is acknowledged: commits stall.
    std::thread::sleep(Duration::from_millis(1500));
    let stalled = writers.count();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        writers.count() <= stalled + 4,
        "commits were acknowledged while the catalog was full ({stalled} -> {})",
        writers.count()
    );
    // Space returns: pgark carries on by itself.
    std::fs::remove_file(&ballast).unwrap();
    wait_until(Duration::from_secs(60), "commits to resume after space returned", || {
        writers.count() > stalled + 50
    });
    let acked = writers.finish();
    p.wait_flushed("main", current_flush_lsn(&c));
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    assert!(assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg) >= 1);
    assert_no_gap(&p.wal_dir("main"), seg);
    let leftovers: Vec<_> = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "half-written files left: {leftovers:?}");
    let count: usize = c.psql("SELECT count(*) FROM acked").unwrap().parse().unwrap();
    assert!(count >= acked.len());
}
