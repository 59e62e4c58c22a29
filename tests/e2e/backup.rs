//! Base backups against real PostgreSQL: manifest agreement, restorability checked without
//! pgark's restore code, tablespaces, interruptions, deduplication, old and new BASE_BACKUP
//! syntax, standbys, and bad input.

use crate::common::*;
use crate::pgcluster::{free_port, running_as_root, Cluster, PgBinaries};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A config file and catalog for commands run without `pgark serve`.
pub struct Catalog {
    /// Kept for its lifetime: the directory goes when the test ends.
    pub _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub catalog: PathBuf,
}

impl Catalog {
    pub fn new(servers_yaml: &str) -> Catalog {
        let dir = tempfile::Builder::new().prefix("pgark-bk-").tempdir().unwrap();
        let catalog = dir.path().join("catalog");
        let config = dir.path().join("pgark.yaml");
        std::fs::write(
            &config,
            format!(
                "catalog: {}\n{}metrics:\n  listen: 127.0.0.1:{}\nservers:\n{servers_yaml}",
                catalog.display(),
                crate::common::catalog_group_yaml(),
                free_port()
            ),
        )
        .unwrap();
        Catalog {
            _dir: dir,
            config,
            catalog,
        }
    }
}

pub fn pgark(config: &Path, args: &[&str]) -> Output {
    let (cmd, rest) = args.split_first().unwrap();
    Command::new(env!("CARGO_BIN_EXE_pgark"))
        .arg(cmd)
        .arg("--config")
        .arg(config)
        .args(rest)
        .env("PGARK_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `pgark backup SERVER --json ...`, asserts success, returns the printed summary.
pub fn backup(config: &Path, server: &str, extra: &[&str]) -> Value {
    let mut args = vec!["backup", server, "--json", "--checkpoint", "fast"];
    args.extend_from_slice(extra);
    let o = pgark(config, &args);
    assert!(o.status.success(), "pgark backup failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("backup --json output: {e}: {}", text(&o)))
}

pub fn list(config: &Path) -> Vec<Value> {
    let o = pgark(config, &["list-backups", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

pub fn index(catalog: &Path, server: &str, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(catalog.join(format!("{server}/backups/{id}.json"))).unwrap()).unwrap()
}

/// The bytes of one stored file, read from its chunks with plain zstd (not pgark's code).
pub fn file_bytes(catalog: &Path, server: &str, f: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for c in f["chunks"].as_array().into_iter().flatten() {
        let obj = c["object"].as_str().unwrap();
        let raw = std::fs::read(catalog.join(format!("{server}/chunks/{obj}"))).unwrap();
        if obj.ends_with(".zst") {
            out.extend(zstd::decode_all(&raw[..]).unwrap());
        } else {
            out.extend(raw);
        }
    }
    out
}

/// Test 1: every stored file decompresses to bytes whose size and CRC-32C match PostgreSQL's own
/// backup_manifest (parsed here, independently of pgark's parser).
pub fn assert_matches_manifest(catalog: &Path, server: &str, id: &str) -> usize {
    let idx = index(catalog, server, id);
    let manifest: Value = serde_json::from_slice(&std::fs::read(catalog.join(format!("{server}/backups/{id}.manifest"))).unwrap()).unwrap();
    let mut expected: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for f in manifest["Files"].as_array().unwrap() {
        expected.insert(
            f["Path"].as_str().unwrap().to_string(),
            (f["Size"].as_u64().unwrap(), f["Checksum"].as_str().unwrap_or("").to_string()),
        );
    }
    let mut checked = 0;
    for f in idx["files"].as_array().unwrap() {
        if f["kind"] != "file" {
            continue;
        }
        let path = f["path"].as_str().unwrap();
        let data = file_bytes(catalog, server, f);
        let Some((size, sum)) = expected.get(path) else {
            assert!(path.starts_with("pg_wal/"), "{path} is stored but not in the manifest");
            continue;
        };
        assert_eq!(data.len() as u64, *size, "{path}: size");
        let crc: String = crc32c::crc32c(&data).to_le_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&crc, sum, "{path}: CRC-32C against the manifest");
        checked += 1;
    }
    assert_eq!(checked, expected.len(), "every manifest file must be stored");
    checked
}

/// Test 2: unpacks a backup into `dest` with nothing but the index and zstd; tablespaces go to
/// `<dest>.ts/<oid>` and the pg_tblspc links point there.
pub fn unpack(catalog: &Path, server: &str, id: &str, dest: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let idx = index(catalog, server, id);
    let ts_root = PathBuf::from(format!("{}.ts", dest.display()));
    std::fs::create_dir_all(dest).unwrap();
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = |path: &str| -> PathBuf {
        match path.strip_prefix("pg_tblspc/").and_then(|r| r.split_once('/')) {
            Some((oid, rest)) => ts_root.join(oid).join(rest),
            None => dest.join(path),
        }
    };
    for f in idx["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        match f["kind"].as_str().unwrap() {
            "directory" => std::fs::create_dir_all(target(path)).unwrap(),
            "symlink" => {
                let oid = path.strip_prefix("pg_tblspc/").unwrap();
                let loc = ts_root.join(oid);
                std::fs::create_dir_all(&loc).unwrap();
                std::fs::create_dir_all(dest.join("pg_tblspc")).unwrap();
                std::os::unix::fs::symlink(&loc, dest.join(path)).unwrap();
            }
            _ => {
                let t = target(path);
                std::fs::create_dir_all(t.parent().unwrap()).unwrap();
                std::fs::write(&t, file_bytes(catalog, server, f)).unwrap();
                std::fs::set_permissions(&t, std::fs::Permissions::from_mode(f["mode"].as_u64().unwrap() as u32)).unwrap();
            }
        }
    }
    if running_as_root() {
        for p in [dest.to_path_buf(), ts_root] {
            if p.exists() {
                assert!(Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&p)
                    .status()
                    .unwrap()
                    .success());
            }
        }
    }
}

/// Starts a restored data directory as a new cluster (recovering from the catalog's WAL when
/// `restore_from` is given) and waits until it accepts connections and has left recovery.
pub fn start_restored(bins: &PgBinaries, tmp: tempfile::TempDir, data: PathBuf, restore_from: Option<&Path>) -> Cluster {
    let port = free_port();
    let c = Cluster::from_data_dir(bins, tmp, data.clone(), port).unwrap();
    let mut conf = format!(
        "port = {port}\nunix_socket_directories = '{}'\nsynchronous_standby_names = ''\narchive_mode = off\n",
        c.socket_dir.display()
    );
    if let Some(wal_dir) = restore_from {
        // A restore_command that reads the catalog with nothing but the shell and zstd.
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
    if running_as_root() {
        assert!(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(c.base_dir())
            .status()
            .unwrap()
            .success());
    }
    c.start()
        .unwrap_or_else(|e| panic!("restored cluster did not start: {e}\n{}", c.log_tail()));
    wait_until(Duration::from_secs(120), "the restored cluster to finish recovery", || {
        c.psql("SELECT pg_is_in_recovery()").ok().as_deref() == Some("f")
    });
    c
}

/// Lets the `postgres` user read the catalog (restore_command runs as that user).
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

const CHECKSUM_SQL: &str = "SELECT md5(string_agg(md5(t::text), '' ORDER BY t::text)) FROM ";

pub fn table_sum(c: &Cluster, table: &str) -> String {
    c.psql(&format!("{CHECKSUM_SQL} {table} t")).unwrap()
}

pub fn pgbench(c: &Cluster, args: &[&str]) -> std::process::Child {
    Command::new(c.bins.client("pgbench"))
        .arg("-h")
        .arg(&c.socket_dir)
        .args(["-p", &c.port.to_string(), "-U", &c.superuser])
        .args(args)
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn pgbench_init(c: &Cluster, scale: u32) {
    let o = pgbench(c, &["-i", "-q", "-s", &scale.to_string()]).wait_with_output().unwrap();
    assert!(o.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&o.stderr));
}

/// A tablespace directory the server can own.
pub fn make_tablespace(c: &Cluster, name: &str) -> PathBuf {
    let dir = c.base_dir().join(format!("ts_{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    if running_as_root() {
        assert!(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success());
    }
    c.psql(&format!("CREATE TABLESPACE {name} LOCATION '{}'", dir.display())).unwrap();
    dir
}

/// Tests 1, 2 and 3: a backup under pgbench load, with a user tablespace, while `pgark serve`
/// streams; files match the manifest, the WAL is in the catalog, and a cluster unpacked by hand
/// and recovered from the catalog's WAL has the primary's data.
#[test]
fn backup_under_load_restores_with_tablespace() {
    let c = Cluster::init(&pg(), &["wal_keep_size = 512MB"]).unwrap();
    c.start().unwrap();
    make_tablespace(&c, "ts1");
    c.psql("CREATE TABLE in_ts (id int, t text) TABLESPACE ts1; INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .unwrap();
    pgbench_init(&c, 5);
    let p = Pgark::start(&server_yaml("main", &c.conninfo("postgres"), "synchronous: false"));
    p.wait_streaming("main");
    let load = pgbench(&c, &["-c", "2", "-T", "15", "-n"]);
    std::thread::sleep(Duration::from_secs(2));
    let b = backup(&p.config, "main", &["--label", "under load"]);
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["wal_source"], "catalog", "{b}");
    assert_eq!(b["label"], "under load");
    let o = load.wait_with_output().unwrap();
    assert!(o.status.success(), "pgbench: {}", String::from_utf8_lossy(&o.stderr));
    assert!(b["tablespaces"].as_array().unwrap().iter().any(|t| t["oid"].is_number()), "{b}");

    let checked = assert_matches_manifest(&p.catalog, "main", &id);
    assert!(checked > 500, "only {checked} files checked");
    let listed = list(&p.config);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["usable"], true, "{}", listed[0]);
    assert_eq!(listed[0]["wal"]["present"], true);

    // Everything the primary has committed, flushed into the catalog as complete segments.
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    c.psql("SELECT pg_switch_wal()").unwrap();
    p.wait_flushed("main", current_flush_lsn(&c));
    let expect: Vec<String> = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
        "in_ts",
    ]
    .iter()
    .map(|t| table_sum(&c, t))
    .collect();

    let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
    let data = tmp.path().join("data");
    unpack(&p.catalog, "main", &id, &data);
    open_for_postgres(&p.catalog);
    let restored = start_restored(&c.bins, tmp, data, Some(&p.wal_dir("main")));
    let got: Vec<String> = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
        "in_ts",
    ]
    .iter()
    .map(|t| table_sum(&restored, t))
    .collect();
    assert_eq!(got, expect, "restored tables differ from the primary");
    let loc = restored
        .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
        .unwrap();
    assert!(loc.contains("data.ts/"), "tablespace came back at {loc}");
}

/// Test 5 and the daemon's schedule: `pgark serve` takes the first backup by itself
/// (backup_schedule), a second one of the unchanged database adds under 5% of the first's
/// stored size, deleting works and frees chunks, and the metrics show the last backup.
#[test]
fn scheduled_backup_then_dedup_and_delete() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    pgbench_init(&c, 10);
    c.psql("CREATE TABLE rnd AS SELECT g, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 200000) g")
        .unwrap();
    c.psql("VACUUM FREEZE").unwrap();
    let p = Pgark::start(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        "synchronous: false\nbackup_schedule: 1h\nbackup_checkpoint: fast",
    ));
    let mut first = vec![];
    wait_until(Duration::from_secs(120), "the scheduled backup", || {
        first = list(&p.config);
        !first.is_empty()
    });
    let first = &first[0];
    assert!(first["label"].as_str().unwrap().starts_with("scheduled every 1h"), "{first}");
    let (code, metrics) = p.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("pgark_last_backup_success_timestamp_seconds{server=\"main\"}"),
        "{metrics}"
    );

    let second = backup(&p.config, "main", &[]);
    let (a, b) = (
        first["stored_new_bytes"].as_u64().unwrap(),
        second["stored_new_bytes"].as_u64().unwrap(),
    );
    assert!(b * 20 < a, "second backup stored {b} bytes, not under 5% of the first's {a}");
    assert_matches_manifest(&p.catalog, "main", second["id"].as_str().unwrap());

    // Deleting the first keeps every chunk the second needs.
    let id1 = first["id"].as_str().unwrap();
    let o = pgark(&p.config, &["delete-backup", "main", id1]);
    assert!(o.status.success(), "{}", text(&o));
    assert_matches_manifest(&p.catalog, "main", second["id"].as_str().unwrap());
    // The only usable backup is protected.
    let id2 = second["id"].as_str().unwrap();
    let o = pgark(&p.config, &["delete-backup", "main", id2]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("only usable backup"), "{}", text(&o));
    let o = pgark(&p.config, &["delete-backup", "main", id2, "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(list(&p.config).is_empty());
    let chunks = walk_files(&p.catalog.join("main/chunks"));
    assert!(chunks.is_empty(), "chunks left after deleting every backup: {chunks:?}");
}

pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// What must be true after a backup was interrupted, and once the next one cleaned up.
fn assert_nothing_visible(cat: &Catalog) {
    assert!(list(&cat.config).is_empty(), "an interrupted backup is listed");
    let names: Vec<String> = walk_files(&cat.catalog.join("main/backups"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".json")), "{names:?}");
}

fn wait_backup_running(c: &Cluster) {
    wait_until(Duration::from_secs(30), "the backup to stream", || {
        c.psql("SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'streaming database files'")
            .ok()
            .as_deref()
            == Some("1")
    });
}

fn assert_server_not_in_backup(c: &Cluster) {
    wait_until(Duration::from_secs(30), "the server to end its side of the backup", || {
        c.psql("SELECT count(*) FROM pg_stat_progress_basebackup").ok().as_deref() == Some("0")
    });
}

/// Test 4: SIGKILL of pgark, a dropped connection and a server stop in the middle of a backup
/// leave nothing listed; the next backup removes the leftovers and succeeds.
#[test]
fn interrupted_backups_leave_nothing_visible() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((g+1)::text) AS t FROM generate_series(1, 400000) g")
        .unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let spawn_backup = || {
        Command::new(env!("CARGO_BIN_EXE_pgark"))
            .args(["backup", "--config"])
            .arg(&cat.config)
            .args(["main", "--checkpoint", "fast", "--max-rate", "2048"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // 1. SIGKILL pgark mid-stream.
    let mut child = spawn_backup();
    wait_backup_running(&c);
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    assert_nothing_visible(&cat);
    let running = walk_files(&cat.catalog.join("main/backups"));
    assert!(
        running.iter().any(|p| p.to_string_lossy().ends_with(".running")),
        "intent record expected: {running:?}"
    );
    assert!(
        !walk_files(&cat.catalog.join("main/chunks")).is_empty(),
        "the killed backup should have stored chunks"
    );
    assert_server_not_in_backup(&c);

    // 2. The connection dropped (the walsender terminated).
    let child = spawn_backup();
    wait_backup_running(&c);
    c.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender'")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_nothing_visible(&cat);
    // A failed backup cleans up at once, including what the killed one left.
    assert!(walk_files(&cat.catalog.join("main/backups")).is_empty());
    assert!(walk_files(&cat.catalog.join("main/chunks")).is_empty());

    // 3. The server stops mid-backup.
    let child = spawn_backup();
    wait_backup_running(&c);
    c.stop("fast").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("failed"), "{}", text(&o));
    assert_nothing_visible(&cat);
    c.start().unwrap();

    // Then a backup succeeds and is the only one.
    let b = backup(&cat.config, "main", &[]);
    assert_eq!(b["wal_source"], "backup", "{b}");
    assert_eq!(list(&cat.config).len(), 1);
    assert_matches_manifest(&cat.catalog, "main", b["id"].as_str().unwrap());
    assert_server_not_in_backup(&c);
}

/// A full catalog filesystem ends the backup cleanly, saying how much was needed.
#[test]
fn full_catalog_disk_ends_the_backup_cleanly() {
    if !running_as_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return;
    }
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE rnd AS SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 300000) g")
        .unwrap();
    let cat = Catalog::new(&server_yaml(
        "main",
        &c.conninfo("postgres"),
        "backup_min_free: 1MiB\nbackup_compression: none",
    ));
    std::fs::create_dir_all(&cat.catalog).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&cat.catalog)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(cat.catalog.clone());
    let o = pgark(&cat.config, &["backup", "main", "--checkpoint", "fast"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("free") && t.contains("need"), "{t}");
    assert!(list(&cat.config).is_empty());
    assert!(
        walk_files(&cat.catalog.join("main/chunks")).is_empty(),
        "chunks left after a failed backup"
    );
    assert_server_not_in_backup(&c);
}

/// Test 6: the old (13, 14) and new (15+) BASE_BACKUP syntax, on every major available: the
/// backup matches the manifest and, unpacked by hand, starts and has the data.
#[test]
fn backup_version_matrix() {
    let mut versions = vec![pg()];
    versions.extend(matrix());
    for bins in versions {
        let major = bins.major;
        let c = Cluster::init(&bins, &[]).unwrap();
        c.start().unwrap();
        c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 12345) g").unwrap();
        make_tablespace(&c, "tsv");
        c.psql("CREATE TABLE t2 TABLESPACE tsv AS SELECT g FROM generate_series(1, 777) g")
            .unwrap();
        let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
        let b = backup(&cat.config, "main", &[]);
        assert_eq!(b["pg_version"].as_u64().unwrap() / 10000, major as u64, "{b}");
        let id = b["id"].as_str().unwrap();
        assert_matches_manifest(&cat.catalog, "main", id);
        let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
        let data = tmp.path().join("data");
        unpack(&cat.catalog, "main", id, &data);
        let r = start_restored(&bins, tmp, data, None);
        assert_eq!(r.psql("SELECT count(*) FROM t").unwrap(), "12345", "PostgreSQL {major}");
        assert_eq!(r.psql("SELECT count(*) FROM t2").unwrap(), "777", "PostgreSQL {major}");
        eprintln!("PostgreSQL {major}: backup and hand restore OK");
    }
}

/// Test 7: a backup taken from a hot standby.
#[test]
fn backup_from_a_standby() {
    let primary = Cluster::init(&pg(), &[]).unwrap();
    primary.start().unwrap();
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g").unwrap();
    let standby = start_standby(&primary);
    wait_until(Duration::from_secs(30), "the standby to replay", || {
        standby.psql("SELECT count(*) FROM t").ok().as_deref() == Some("5000")
    });
    let cat = Catalog::new(&server_yaml("replica", &standby.conninfo("postgres"), ""));
    // A standby cannot switch WAL itself; keep the primary producing some so the backup ends.
    let b = backup(&cat.config, "replica", &[]);
    assert_eq!(b["from_standby"], true, "{b}");
    let id = b["id"].as_str().unwrap();
    assert_matches_manifest(&cat.catalog, "replica", id);
    let tmp = tempfile::Builder::new().prefix("pgark-restore-").tempdir().unwrap();
    let data = tmp.path().join("data");
    unpack(&cat.catalog, "replica", id, &data);
    // The copied standby.signal would keep it a standby; start it as a primary.
    let _ = std::fs::remove_file(data.join("standby.signal"));
    let r = start_restored(&primary.bins, tmp, data, None);
    assert_eq!(r.psql("SELECT count(*) FROM t").unwrap(), "5000");
}

/// Test 8: unknown server, unknown backup id, a catalog that cannot be written.
#[test]
fn backup_commands_reject_bad_input() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let cat = Catalog::new(&server_yaml("main", &c.conninfo("postgres"), ""));
    let o = pgark(&cat.config, &["backup", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("\"nosuch\"") && text(&o).contains("main"), "{}", text(&o));
    let o = pgark(&cat.config, &["show-backup", "main", "20990101T000000Z"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("20990101T000000Z"), "{}", text(&o));
    let o = pgark(&cat.config, &["delete-backup", "main", "nope"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let o = pgark(&cat.config, &["list-backups", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = pgark(&cat.config, &["list-backups"]);
    assert!(o.status.success() && text(&o).contains("no backups"), "{}", text(&o));
    let o = pgark(&cat.config, &["backup", "main", "--max-rate", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    if running_as_root() {
        // Read-only filesystem: root ignores permission bits, so mount one.
        std::fs::create_dir_all(&cat.catalog).unwrap();
        assert!(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(&cat.catalog)
            .status()
            .unwrap()
            .success());
        let o = pgark(&cat.config, &["backup", "main"]);
        let _ = Command::new("umount").arg(&cat.catalog).status();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(&cat.catalog.display().to_string()), "{}", text(&o));
        assert!(
            text(&o).to_lowercase().contains("read-only") || text(&o).contains("not writable"),
            "{}",
            text(&o)
        );
    }
}
