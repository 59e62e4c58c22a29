//! `pgark demo`: a throwaway PostgreSQL with pgark as its synchronous standby, a write load, a
//! base backup taken under that load, and, to end, a point-in-time restore into a scratch
//! directory that is started to show the rows up to the chosen point are there and the later ones
//! are not. Ctrl-C (or `--duration`) ends the load; everything is cleaned up.

mod cluster;

use crate::cli::exit;
use crate::client::conninfo::ConnInfo;
use crate::client::Connection;
use crate::config::Config;
use crate::service::daemon::Daemon;
use cluster::{Cluster, ScratchDir};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The restore point the finale recovers to.
const RESTORE_POINT: &str = "pgark_demo";

pub async fn run(duration: Option<u64>, metrics_listen: &str) -> i32 {
    match run_inner(duration, metrics_listen).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("demo failed: {e}");
            exit::FAILURE
        }
    }
}

async fn sql(conn: &mut Connection, query: &str) -> Result<Option<String>, String> {
    let results = conn.simple_query(query).await.map_err(|e| format!("{query}: {e}"))?;
    Ok(results.first().and_then(|r| r.text(0, 0)))
}

async fn connect(cluster: &Cluster) -> Result<Connection, String> {
    let ci = ConnInfo::parse(&format!("{} dbname=postgres", cluster.conninfo()))?;
    Connection::connect(&ci, false)
        .await
        .map_err(|e| format!("connecting to {}: {e}", cluster.socket_dir.display()))
}

async fn run_inner(duration: Option<u64>, metrics_listen: &str) -> Result<(), String> {
    let bindir = cluster::find_bindir()?;
    let work = ScratchDir::new("pgark-demo-")?;
    println!(
        "== pgark demo: PostgreSQL from {}, scratch directory {}",
        bindir.display(),
        work.path().display()
    );
    let primary = tokio::task::block_in_place(|| {
        let c = Cluster::init(
            &bindir,
            work.path(),
            "primary",
            &["synchronous_standby_names = 'pgark'", "synchronous_commit = on"],
        )?;
        c.start()?;
        Ok::<_, String>(c)
    })?;
    println!(
        "== started a throwaway cluster: data {} port {}",
        primary.data.display(),
        primary.port
    );
    let catalog = work.path().join("catalog");
    let config_path = work.path().join("pgark.yaml");
    // As root, restore_command (`pgark wal-get`) runs as the postgres user: the catalog is
    // readable by its group.
    let group = if crate::util::os::running_as_root() {
        "catalog_group: postgres\n"
    } else {
        ""
    };
    let yaml = format!(
        "catalog: {}\n{group}metrics:\n  listen: {metrics_listen}\nservers:\n  demo:\n    conninfo: \"{}\"\n    slot: pgark_demo\n    synchronous: true\n    status_interval: 2s\n",
        catalog.display(),
        primary.conninfo()
    );
    std::fs::write(&config_path, &yaml).map_err(|e| format!("write {}: {e}", config_path.display()))?;
    println!("== config {}:\n{yaml}", config_path.display());
    let config = Config::load(&config_path).map_err(|e| e.to_string())?;
    let d = Daemon::start(config.clone()).await.map_err(|e| e.to_string())?;
    println!(
        "== pgark is streaming into {}; metrics: http://{}/metrics, status: http://{}/status",
        catalog.display(),
        d.metrics_addr,
        d.metrics_addr
    );
    println!("== PostgreSQL waits for pgark's fsync before each COMMIT returns (synchronous_standby_names = 'pgark'). Ctrl-C to stop the load.\n");

    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop2.cancel();
    });
    // Whatever happens from here, pgark and the cluster are stopped cleanly afterwards.
    let outcome = async {
        let mut conn = connect(&primary).await?;
        sql(
            &mut conn,
            "CREATE TABLE IF NOT EXISTS demo_events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), payload text)",
        )
        .await?;
        let backup = load_and_back_up(&mut conn, &d, &config, duration, &stop).await?;
        if let Some(rx) = backup {
            println!("== waiting for the base backup to finish");
            report_backup(rx.await.map_err(|_| "the backup thread ended without an answer")?)?;
        }
        point_in_time_restore(&mut conn, &bindir, work.path(), &config_path).await
    }
    .await;
    println!("\n== stopping: pgark fsyncs and sends a last status update, then the cluster is stopped");
    d.shutdown().await;
    println!("== removing {} (cluster, catalog, restored copy)", work.path().display());
    tokio::task::block_in_place(|| primary.stop("fast"))?;
    outcome
}

type BackupResult = Result<crate::catalog::backup_store::BackupIndex, crate::backup::BackupError>;

/// Commits 500 rows at a time until `duration` or Ctrl-C, takes a base backup after 5 seconds,
/// and prints what pgark reports every 2 seconds. Returns the backup still running, if any.
async fn load_and_back_up(
    conn: &mut Connection,
    d: &Daemon,
    config: &Config,
    duration: Option<u64>,
    stop: &CancellationToken,
) -> Result<Option<tokio::sync::oneshot::Receiver<BackupResult>>, String> {
    let server_cfg = config.servers.get("demo").cloned().ok_or("demo server missing from the config")?;
    let started = Instant::now();
    let mut backup = None;
    let mut backup_started = false;
    let mut committed = 0u64;
    let mut last_report = Instant::now();
    loop {
        let over = duration.is_some_and(|d| started.elapsed() >= Duration::from_secs(d));
        if stop.is_cancelled() || over {
            break;
        }
        let t = Instant::now();
        // Never abandoned half-way (a dropped query would leave its reply for the next one);
        // Ctrl-C is looked at between commits, which take milliseconds.
        sql(
            conn,
            "INSERT INTO demo_events (payload) SELECT md5(random()::text) FROM generate_series(1, 500)",
        )
        .await?;
        committed += 500;
        let commit_ms = t.elapsed().as_secs_f64() * 1000.0;
        if committed % 50_000 == 0 {
            sql(conn, "SELECT pg_switch_wal()").await?;
        }
        if !backup_started && started.elapsed() >= Duration::from_secs(5) {
            backup_started = true;
            println!("== taking a base backup while the load goes on (what `pgark backup --config FILE demo` does)");
            backup = Some(start_backup(d, config, &server_cfg));
        }
        if let Some(rx) = backup.as_mut() {
            if let Ok(result) = rx.try_recv() {
                backup = None;
                report_backup(result)?;
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
    if !backup_started {
        println!("== the load ended before a backup was taken; taking one now");
        backup = Some(start_backup(d, config, &server_cfg));
    }
    Ok(backup)
}

/// A fast-checkpoint backup of the demo server on its own thread. Its own token: Ctrl-C ends
/// the load, not the backup the restore needs.
fn start_backup(d: &Daemon, config: &Config, server_cfg: &crate::config::ServerConfig) -> tokio::sync::oneshot::Receiver<BackupResult> {
    let job = crate::backup::BackupJob {
        server: server_cfg.name.clone(),
        conninfo: server_cfg.conninfo.clone(),
        settings: server_cfg.backup.clone(),
        catalog: config.catalog.clone(),
        label: Some("demo".into()),
        fast_checkpoint: true,
        max_rate_kb: None,
        wal_progress: std::sync::Arc::new(d.board().clone()),
        disk_pressure: crate::catalog::space::DiskThresholds::default(),
        cancel: CancellationToken::new(),
        mirrors: Vec::new(),
        chunks_local: true,
        lock_wait: std::time::Duration::ZERO,
        incremental: crate::backup::IncrementalMode::Off,
    };
    crate::backup::spawn_on_own_thread(job, Box::new(crate::util::progress::LogLines::new("backup")))
}

fn report_backup(result: BackupResult) -> Result<(), String> {
    let b = result.map_err(|e| format!("the base backup failed: {e}"))?;
    println!(
        "== base backup {} done: {} to {}, {} files, {} read, {} stored (zstd, deduplicated); its WAL is durable in the catalog",
        b.id,
        b.start_lsn,
        b.end_lsn,
        b.file_count(),
        crate::util::units::human_bytes(b.original_bytes),
        crate::util::units::human_bytes(b.stored_new_bytes),
    );
    Ok(())
}

/// Marks a point (a restore point) with `kept` rows before it, commits more rows after it, then
/// restores the backup and WAL to that point with `pgark restore`, starts the copy, and counts.
async fn point_in_time_restore(conn: &mut Connection, bindir: &Path, work: &Path, config_path: &Path) -> Result<(), String> {
    let kept = sql(conn, "SELECT count(*) FROM demo_events").await?.unwrap_or_default();
    sql(conn, &format!("SELECT pg_create_restore_point('{RESTORE_POINT}')")).await?;
    sql(
        conn,
        "INSERT INTO demo_events (payload) SELECT 'after the restore point' FROM generate_series(1, 5000)",
    )
    .await?;
    let total = sql(conn, "SELECT count(*) FROM demo_events").await?.unwrap_or_default();
    sql(conn, "SELECT pg_switch_wal()").await?;
    println!(
        "\n== point-in-time recovery: {kept} rows existed at restore point '{RESTORE_POINT}'; 5000 more were committed after it ({total} now)"
    );
    let restored = work.join("restored");
    let data = restored.join("data");
    let mut exe = std::env::current_exe().map_err(|e| format!("finding pgark's own binary: {e}"))?;
    if crate::util::os::running_as_root() {
        // The restored server runs as postgres and calls `pgark wal-get` (restore_command is
        // this binary's path): a copy it can reach, in case the build directory is private
        // (under /root, a 0700 temp dir).
        let copy = work.join("pgark");
        std::fs::copy(&exe, &copy).map_err(|e| format!("copying {} to {}: {e}", exe.display(), copy.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", copy.display()))?;
        exe = copy;
    }
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("restore")
        .arg("--config")
        .arg(config_path)
        .arg("demo")
        .arg("--target-dir")
        .arg(&data);
    cmd.args(["--target-name", RESTORE_POINT, "--target-action", "promote"]);
    if crate::util::os::running_as_root() {
        cmd.args(["--owner", "postgres"]);
    }
    println!(
        "== {} restore --config {} demo --target-dir {} --target-name {RESTORE_POINT} --target-action promote",
        exe.display(),
        config_path.display(),
        data.display()
    );
    let status = tokio::task::block_in_place(|| cmd.status()).map_err(|e| format!("running pgark restore: {e}"))?;
    if !status.success() {
        return Err(format!("pgark restore failed ({status})"));
    }
    let copy = tokio::task::block_in_place(|| {
        let c = Cluster::at(bindir, work, "restored", data.clone())?;
        c.start()?;
        Ok::<_, String>(c)
    })?;
    println!("== started the restored copy on port {}; it replays WAL from the catalog (restore_command = pgark wal-get) up to the restore point", copy.port);
    let mut restored_conn = connect(&copy).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sql(&mut restored_conn, "SELECT pg_is_in_recovery()").await?.as_deref() != Some("f") {
        if Instant::now() > deadline {
            return Err(format!(
                "the restored copy did not finish recovery in 120 s; see {}",
                copy.log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count = sql(&mut restored_conn, "SELECT count(*) FROM demo_events")
        .await?
        .unwrap_or_default();
    let after = sql(
        &mut restored_conn,
        "SELECT count(*) FROM demo_events WHERE payload = 'after the restore point'",
    )
    .await?
    .unwrap_or_default();
    drop(restored_conn);
    tokio::task::block_in_place(|| copy.stop("fast"))?;
    if count != kept || after != "0" {
        return Err(format!(
            "the restored copy holds {count} rows ({after} from after the restore point); expected {kept} and 0"
        ));
    }
    println!("== the restored copy holds exactly the {count} rows committed before the restore point, none of the 5000 after it");
    Ok(())
}
