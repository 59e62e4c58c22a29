//! Concurrent writers that record every acknowledged commit, and the RPO=0 check against a
//! recovered cluster.

use super::daemon::Pgark;
use super::pgcluster::Cluster;
use super::{pg, server_yaml};
use std::collections::HashSet;
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
    /// `n` writers inserting into `acked` (created if needed) until `finish`.
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

    /// Commits acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writers; returns every acknowledged id.
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

/// A primary with pgark as its only synchronous standby (1 MiB segments), pgark streaming.
pub fn sync_primary_with_pgark(extra_conf: &[&str]) -> (Cluster, Pgark) {
    let mut conf = vec!["synchronous_standby_names = 'pgark'"];
    conf.extend_from_slice(extra_conf);
    let c = Cluster::init_with(&pg(), &conf, &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true"));
    p.wait_streaming("main");
    (c, p)
}
