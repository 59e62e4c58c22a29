//! Restores: `pgark restore` into a new directory, and the one way the tests start a restored or
//! recovered data directory as a cluster (`start_restored`).

use super::catalog::{completed_segments, stored_segment};
use super::cli::{text, Binary};
use super::pgcluster::{chown_postgres, Cluster, PgBinaries};
use super::wait_until;
use pgark::pg::WalSegSize;
use pgark::util::os::running_as_root;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `pgark restore ... --json` into a new directory; returns (data dir, its tempdir, output).
pub fn restore(bin: &Binary, config: &Path, server: &str, extra: &[&str]) -> (PathBuf, tempfile::TempDir, Value) {
    let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut args = vec!["restore", server, "--target-dir", data.to_str().unwrap(), "--json"];
    if running_as_root() {
        args.extend(["--owner", "postgres"]);
    }
    args.extend_from_slice(extra);
    let o = bin.run(config, &args);
    assert!(o.status.success(), "pgark restore failed: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("restore --json: {e}: {}", text(&o)));
    (data, tmp, v)
}

/// Starts a restored data directory `data` (inside `tmp`) as a new cluster on a port of its own,
/// as a primary (no synchronous standby, no archiving), and waits until it accepts connections
/// and has left recovery. With `restore_from`, a catalog's WAL directory, it first does archive
/// recovery (`recovery.signal`) with a `restore_command` that reads that directory with nothing
/// but the shell and zstd (not pgark's code); without it, the directory recovers as it is (from
/// its own pg_wal, or with the recovery settings `pgark restore` wrote).
pub fn start_restored(bins: &PgBinaries, tmp: tempfile::TempDir, data: PathBuf, restore_from: Option<&Path>) -> Cluster {
    let c = Cluster::from_data_dir(bins, tmp, data.clone()).unwrap();
    let mut conf = "synchronous_standby_names = ''\narchive_mode = off\n".to_string();
    if let Some(wal_dir) = restore_from {
        let script = c.base_dir().join("restore_wal.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nd='{}'\nif [ -f \"$d/$1.zst\" ]; then exec zstd -dcq \"$d/$1.zst\" > \"$2\"; elif [ -f \"$d/$1\" ]; then exec cp \"$d/$1\" \"$2\"; fi\nexit 1\n",
                wal_dir.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        conf.push_str(&format!("restore_command = '{} %f %p'\n", script.display()));
        std::fs::write(data.join("recovery.signal"), b"").unwrap();
    }
    c.append_conf(&conf).unwrap();
    chown_postgres(c.base_dir()).unwrap();
    c.start()
        .unwrap_or_else(|e| panic!("restored cluster did not start: {e}\n{}", c.log_tail()));
    wait_until(Duration::from_secs(120), "the restored cluster to finish recovery", || {
        c.psql("SELECT pg_is_in_recovery()").ok().as_deref() == Some("f")
    });
    c
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
    start_restored(bins, dir, data, None)
}

/// Lets the `postgres` user read `path` (restore_command runs as that user): as root, everything
/// under it readable and every directory above it searchable.
pub fn open_for_postgres(path: &Path) {
    if running_as_root() {
        let mut p = path.to_path_buf();
        assert!(Command::new("chmod").args(["-R", "a+rX"]).arg(&p).status().unwrap().success());
        while let Some(parent) = p.parent() {
            let _ = Command::new("chmod").arg("a+x").arg(parent).status();
            p = parent.to_path_buf();
        }
    }
}
