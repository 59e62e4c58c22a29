//! `pgark demo`: a throwaway PostgreSQL with pgark as its synchronous standby, a small write
//! load, and a running commentary. Ctrl-C (or `--duration`) stops everything and cleans up.

use crate::cli::exit;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::pgcluster::{Cluster, PgBinaries};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub async fn run(duration: Option<u64>, metrics_listen: &str) -> i32 {
    match run_inner(duration, metrics_listen).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("demo failed: {e}");
            exit::FAILURE
        }
    }
}

async fn run_inner(duration: Option<u64>, metrics_listen: &str) -> Result<(), String> {
    let bins = PgBinaries::find()?;
    println!("== pgark demo: PostgreSQL {} from {}", bins.major, bins.bindir.display());
    let cluster = tokio::task::block_in_place(|| {
        let c = Cluster::init(&bins, &["synchronous_standby_names = 'pgark'", "synchronous_commit = on"])?;
        c.start()?;
        Ok::<_, String>(c)
    })?;
    println!(
        "== started a throwaway cluster: data {} port {} (socket dir {})",
        cluster.data.display(),
        cluster.port,
        cluster.socket_dir.display()
    );
    let work = tempfile::Builder::new()
        .prefix("pgark-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let catalog = work.path().join("catalog");
    let config_path = work.path().join("pgark.yaml");
    let yaml = format!(
        "catalog: {}\nmetrics:\n  listen: {metrics_listen}\nservers:\n  demo:\n    conninfo: \"{}\"\n    slot: pgark_demo\n    synchronous: true\n    status_interval: 2s\n",
        catalog.display(),
        cluster.conninfo(&cluster.superuser)
    );
    std::fs::write(&config_path, &yaml).map_err(|e| e.to_string())?;
    println!("== config {}:\n{yaml}", config_path.display());
    let config = Config::load(&config_path).map_err(|e| e.to_string())?;
    let server_cfg = config.servers.get("demo").cloned().ok_or("demo server missing from the config")?;
    let d = Daemon::start(config).await.map_err(|e| e.to_string())?;
    println!(
        "== pgark is streaming into {}; metrics: http://{}/metrics, status: http://{}/status",
        catalog.display(),
        d.metrics_addr,
        d.metrics_addr
    );
    println!("== PostgreSQL waits for pgark's fsync before each COMMIT returns (synchronous_standby_names = 'pgark'). Ctrl-C to stop.\n");

    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop2.cancel();
    });
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(&cluster.socket_dir)
        .port(cluster.port)
        .user(&cluster.superuser)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to the demo cluster: {e}"))?;
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS demo_events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), payload text)")
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut backup: Option<tokio::sync::oneshot::Receiver<_>> = None;
    let mut backup_started = false;
    let mut committed = 0u64;
    let mut last_report = Instant::now();
    loop {
        if stop.is_cancelled() || duration.is_some_and(|d| started.elapsed() >= Duration::from_secs(d)) {
            break;
        }
        let t = Instant::now();
        let insert = client.execute(
            "INSERT INTO demo_events (payload) SELECT md5(random()::text) FROM generate_series(1, 500)",
            &[],
        );
        tokio::select! {
            r = insert => { r.map_err(|e| e.to_string())?; }
            _ = stop.cancelled() => break,
        }
        committed += 500;
        let commit_ms = t.elapsed().as_secs_f64() * 1000.0;
        if committed % 50_000 == 0 {
            let _ = client.execute("SELECT pg_switch_wal()", &[]).await;
        }
        if !backup_started && started.elapsed() >= Duration::from_secs(5) {
            backup_started = true;
            println!(
                "== taking a base backup while the load goes on (what `pgark backup --config {} demo` does)",
                config_path.display()
            );
            backup = Some(crate::basebackup::spawn_on_own_thread(
                crate::basebackup::BackupJob {
                    server: server_cfg.clone(),
                    catalog: catalog.clone(),
                    label: Some("demo".into()),
                    fast_checkpoint: true,
                    max_rate_kb: None,
                    wal_watch: crate::basebackup::WalWatch::Board(d.board().clone()),
                    disk_pressure: crate::pressure::DiskThresholds::default(),
                    cancel: stop.child_token(),
                },
                Box::new(crate::basebackup::progress::LogLines::default()),
            ));
        }
        if let Some(rx) = backup.as_mut() {
            if let Ok(result) = rx.try_recv() {
                backup = None;
                match result {
                    Ok(b) => println!(
                        "== base backup {} done: {} to {}, {} files, {} read, {} stored (zstd, deduplicated); its WAL is durable in the catalog",
                        b.id,
                        b.start_lsn,
                        b.end_lsn,
                        b.file_count(),
                        crate::backup_commands::human_bytes(b.original_bytes),
                        crate::backup_commands::human_bytes(b.stored_new_bytes),
                    ),
                    Err(e) => println!("== base backup failed: {e}"),
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            for s in d.board().snapshot() {
                println!(
                    "[{:>5.1}s] {} rows committed (last commit {commit_ms:.1} ms) | pgark {}: {:?}, timeline {}, flushed {}, last segment {}",
                    started.elapsed().as_secs_f64(),
                    committed,
                    s.server,
                    s.state,
                    s.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    s.flushed_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    s.last_segment.clone().unwrap_or_else(|| "-".into())
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(rx) = backup.take() {
        let _ = rx.await;
    }
    println!("\n== stopping: pgark fsyncs and sends a last status update, then the cluster is stopped");
    drop(client);
    d.shutdown().await;
    let files = std::fs::read_dir(catalog.join("demo/wal")).map(|r| r.count()).unwrap_or(0);
    println!(
        "== the catalog held {files} WAL files; removing {} and the cluster",
        work.path().display()
    );
    tokio::task::block_in_place(|| cluster.stop("fast"))?;
    Ok(())
}
