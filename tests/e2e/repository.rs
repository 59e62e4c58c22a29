//! Off-site repositories on a real S3 API (SeaweedFS, credentials enforced): the host-loss
//! restore from a repository alone, encryption at rest, a store outage during synchronous
//! streaming, and the commands that work against a repository.

use crate::support::cli::{text, Binary};
use crate::support::daemon::Pgark;
use crate::support::pgcluster::Cluster;
use crate::support::restore::{open_for_postgres, restore, start_restored};
use crate::support::seaweed::{Seaweed, SECRET_KEY};
use crate::support::writers::{assert_all_acked_present, Writers};
use crate::support::{pg, server_yaml, wait_until};
use pgark::catalog::encryption::{self, Key, Keyring};
use pgark::catalog::remote_store::RemoteStore;
use pgark::catalog::store::ObjectStore;
use pgark::offsite::ServerProgress;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Key and secret files for a test, readable by the postgres user (wal-get runs as it).
struct Secrets {
    dir: tempfile::TempDir,
    key: PathBuf,
    secret: PathBuf,
}

impl Secrets {
    fn new() -> Secrets {
        let dir = tempfile::Builder::new().prefix("pgark-secrets-").tempdir().unwrap();
        let key = dir.path().join("repo.key");
        std::fs::write(&key, format!("{}\n", Key::generate().to_hex())).unwrap();
        let secret = dir.path().join("s3.secret");
        std::fs::write(&secret, SECRET_KEY).unwrap();
        open_for_postgres(dir.path());
        Secrets { dir, key, secret }
    }
}

fn repo_yaml(sw: &Seaweed, name: &str, bucket: &str, prefix: &str, secret: &Path, extra: &str) -> String {
    sw.repo_yaml(name, bucket, prefix, secret, extra)
}

/// The raw (sealed) objects of a repository.
fn raw_store(sw: &Seaweed, bucket: &str, prefix: &str) -> RemoteStore {
    RemoteStore::new(sw.s3_spec(bucket, prefix, SECRET_KEY)).unwrap()
}

/// The `repositories` entry of `pgark check main --json` with `config`.
fn repositories_check(bin: &Binary, config: &Path) -> serde_json::Value {
    let o = bin.run(config, &["check", "main", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "repositories")
        .unwrap()
        .clone()
}

/// A config beside the daemon's (`name` in its directory): the same catalog, key and server,
/// with `repos` as its `repositories:` body.
fn side_config(p: &Pgark, secrets: &Secrets, name: &str, repos: &str, server: &str) -> PathBuf {
    let path = p.dir.path().join(name);
    std::fs::write(
        &path,
        format!(
            "catalog: {}\nencryption:\n  key_file: {}\nrepositories:\n{repos}servers:\n{server}",
            p.catalog.display(),
            secrets.key.display()
        ),
    )
    .unwrap();
    path
}

fn offsite(p: &Pgark, repo: &str) -> Option<ServerProgress> {
    p.server("main")?.offsite.into_iter().find(|o| o.repository == repo)
}

fn wait_caught_up(p: &Pgark, repo: &str, backups: usize) {
    wait_until(Duration::from_secs(120), "the repository to catch up", || {
        offsite(p, repo).is_some_and(|o| o.lag_bytes == Some(0) && o.queued_objects == 0 && o.backups >= backups && o.last_error.is_none())
    });
}

fn utc_now(c: &Cluster) -> String {
    c.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
        .unwrap()
}

/// The host-loss case: serve, a backup and writers on a synchronous primary; once the
/// repository's lag is zero the whole local catalog is deleted, and a fresh config (a new, empty
/// catalog) restores from the repository alone: every acknowledged row is there, and a
/// point-in-time restore inside the repository's window stops where it should. Along the way:
/// no object holds plaintext, a flipped byte and a wrong key are refused by wal-get (126), and
/// an old key in the keyring still reads what it sealed.
#[test]
fn host_loss_restore_from_the_repository_alone() {
    let Some(sw) = Seaweed::start() else { return };
    sw.create_bucket("pgark-hostloss");
    let secrets = Secrets::new();
    let top = format!(
        "encryption:\n  key_file: {}\noffsite_partial_interval: 500ms\nrepositories:\n{}",
        secrets.key.display(),
        repo_yaml(&sw, "offsite", "pgark-hostloss", "site1", &secrets.secret, "")
    );
    let bin = Binary::new();
    let c = Cluster::init_with(&pg(), &["synchronous_standby_names = 'pgark'"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let server = server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true");
    let mut p = Pgark::start_full("", &top, &server, &[]);
    p.wait_streaming("main");
    c.psql("CREATE TABLE marks (label text, at timestamptz default now())").unwrap();
    let w = Writers::start(&c, 4);
    std::thread::sleep(Duration::from_secs(2));
    let o = bin.run(&p.config, &["backup", "main", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    c.psql("INSERT INTO marks VALUES ('secret-marker-before-the-target')").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let target = utc_now(&c);
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("INSERT INTO marks VALUES ('after-the-target')").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let acked = w.finish();
    assert!(acked.len() > 100, "only {} rows acknowledged", acked.len());
    // No segment switch: the last commits reach the repository in the partial object.
    wait_caught_up(&p, "offsite", 1);

    // Nothing in the bucket is readable without the key.
    let raw = raw_store(&sw, "pgark-hostloss", "site1");
    let objects = raw.list_recursive("main").unwrap();
    assert!(
        objects.iter().any(|(k, _, _)| k.ends_with(".partial.zst")),
        "no partial object: {objects:?}"
    );
    assert!(objects.iter().any(|(k, _, _)| k.contains("/chunks/")), "{objects:?}");
    for (k, _, _) in &objects {
        let b = raw.get(k).unwrap().unwrap();
        assert!(encryption::is_sealed(&b), "{k} is not encrypted");
        assert!(!b.windows(14).any(|x| x == b"secret-marker-"), "{k} holds plaintext");
    }

    // The backup host is lost: pgark and its whole catalog.
    p.kill9();
    std::fs::remove_dir_all(&p.catalog).unwrap();
    let fresh = tempfile::Builder::new().prefix("pgark-fresh-").tempdir().unwrap();
    let fresh_config = fresh.path().join("pgark.yaml");
    std::fs::write(
        &fresh_config,
        format!("catalog: {}\n{top}\nservers:\n{server}", fresh.path().join("catalog").display()),
    )
    .unwrap();
    open_for_postgres(fresh.path());
    let listed = bin.run(&fresh_config, &["list-backups", "--repo", "offsite", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1), "{listed}");

    let (data, tmp, _) = restore(&bin, &fresh_config, "main", &[]);
    open_for_postgres(fresh.path());
    let r = start_restored(&c.bins, tmp, data, None);
    assert_all_acked_present(&r, &acked, "after restoring from the repository alone");
    assert_eq!(r.psql("SELECT count(*) FROM marks").unwrap(), "2");

    let (data, tmp, _) = restore(
        &bin,
        &fresh_config,
        "main",
        &["--repo", "offsite", "--target-time", &target, "--target-action", "promote"],
    );
    open_for_postgres(fresh.path());
    let r2 = start_restored(&c.bins, tmp, data, None);
    assert_eq!(
        r2.psql("SELECT string_agg(label, ',') FROM marks").unwrap(),
        "secret-marker-before-the-target"
    );

    // A flipped byte: wal-get refuses the segment (126), naming it.
    let seg = objects
        .iter()
        .map(|(k, _, _)| k)
        .find(|k| k.ends_with(".zst") && !k.ends_with(".partial.zst") && k.contains("/wal/"))
        .unwrap()
        .clone();
    let name = seg.rsplit('/').next().unwrap().trim_end_matches(".zst").to_string();
    let dest = fresh.path().join("wal-out");
    let ok = bin.run(
        &fresh_config,
        &["wal-get", "--repo", "offsite", "main", &name, dest.to_str().unwrap()],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let mut b = raw.get(&seg).unwrap().unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    raw.put(&seg, &b).unwrap();
    let bad = bin.run(
        &fresh_config,
        &["wal-get", "--repo", "offsite", "main", &name, dest.to_str().unwrap()],
    );
    assert_eq!(bad.status.code(), Some(126), "{}", text(&bad));
    assert!(
        text(&bad).contains(&seg) && text(&bad).contains("authentication failed"),
        "{}",
        text(&bad)
    );
    b[mid] ^= 0x40;
    raw.put(&seg, &b).unwrap();

    // A wrong key: 126, saying which key the object needs.
    let other_key = fresh.path().join("other.key");
    std::fs::write(&other_key, Key::generate().to_hex()).unwrap();
    let wrong_config = fresh.path().join("wrong.yaml");
    let text_of = |key_lines: &str| {
        format!(
            "catalog: {}\nencryption:\n{key_lines}repositories:\n{}servers:\n{server}",
            fresh.path().join("catalog").display(),
            repo_yaml(&sw, "offsite", "pgark-hostloss", "site1", &secrets.secret, "")
        )
    };
    std::fs::write(&wrong_config, text_of(&format!("  key_file: {}\n", other_key.display()))).unwrap();
    let wrong = bin.run(
        &wrong_config,
        &["wal-get", "--repo", "offsite", "main", &name, dest.to_str().unwrap()],
    );
    assert_eq!(wrong.status.code(), Some(126), "{}", text(&wrong));
    assert!(text(&wrong).contains("not in the keyring"), "{}", text(&wrong));
    // Rotation: the new key current, the old one kept for reading.
    std::fs::write(
        &wrong_config,
        text_of(&format!(
            "  key_file: {}\n  old_key_files: [{}]\n",
            other_key.display(),
            secrets.key.display()
        )),
    )
    .unwrap();
    let rotated = bin.run(
        &wrong_config,
        &["wal-get", "--repo", "offsite", "main", &name, dest.to_str().unwrap()],
    );
    assert_eq!(rotated.status.code(), Some(0), "{}", text(&rotated));
    let ring = Keyring::new(Key::parse(&std::fs::read_to_string(&secrets.key).unwrap(), "k").unwrap(), vec![]);
    assert!(encryption::open(&ring, &seg, &raw.get(&seg).unwrap().unwrap()).is_ok());
    drop(secrets.dir);
}

/// The object store goes away while a synchronous primary commits: acknowledgements never stop
/// (the local catalog is the hot tier), the queue grows and says why, and when the store comes
/// back it drains; the repository then holds every segment once, under its own name, with no
/// partial object left for a complete segment, and no gap.
#[test]
fn store_outage_queues_and_drains_without_stopping_acknowledgements() {
    let Some(mut sw) = Seaweed::start() else { return };
    sw.create_bucket("pgark-outage");
    let secrets = Secrets::new();
    let top = format!(
        "offsite_partial_interval: 500ms\nrepositories:\n{}",
        repo_yaml(&sw, "offsite", "pgark-outage", "", &secrets.secret, "")
    );
    let c = Cluster::init_with(&pg(), &["synchronous_standby_names = 'pgark'"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let p = Pgark::start_full("", &top, &server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true"), &[]);
    p.wait_streaming("main");
    wait_caught_up(&p, "offsite", 0);

    sw.stop();
    let w = Writers::start(&c, 4);
    let before = w.count();
    wait_until(Duration::from_secs(60), "uploads to fail", || {
        offsite(&p, "offsite").is_some_and(|o| o.last_error.is_some())
    });
    c.psql("SELECT pg_switch_wal()").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    c.psql("SELECT pg_switch_wal()").unwrap();
    wait_until(Duration::from_secs(30), "objects to queue", || {
        offsite(&p, "offsite").is_some_and(|o| o.queued_objects >= 2 && o.lag_bytes.unwrap_or(0) > 0)
    });
    assert!(w.count() > before + 50, "commits stopped while the store was down");
    let st = pgark_status_text(&p);
    assert!(st.contains("offsite"), "{st}");

    sw.restart();
    let acked = w.finish();
    c.psql("SELECT pg_switch_wal()").unwrap();
    wait_caught_up(&p, "offsite", 0);
    assert!(
        p.metric("pgark_offsite_upload_errors_total{server=\"main\",repository=\"offsite\"}")
            .unwrap()
            > 0.0
    );
    assert_eq!(
        p.metric("pgark_offsite_lag_bytes{server=\"main\",repository=\"offsite\"}"),
        Some(0.0)
    );

    let raw = raw_store(&sw, "pgark-outage", "");
    let remote: Vec<String> = raw
        .list("main/wal")
        .unwrap()
        .into_iter()
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    let local: Vec<String> = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".zst"))
        .collect();
    for n in &local {
        assert!(remote.contains(n), "{n} is not in the repository: {remote:?}");
    }
    let mut segments: Vec<&str> = remote
        .iter()
        .filter(|n| n.len() == 28 && n.ends_with(".zst"))
        .map(|n| &n[..24])
        .collect();
    segments.sort();
    for pair in segments.windows(2) {
        let (a, b) = (
            u64::from_str_radix(&pair[0][16..], 16).unwrap(),
            u64::from_str_radix(&pair[1][16..], 16).unwrap(),
        );
        assert_eq!(b, a + 1, "gap between {} and {}", pair[0], pair[1]);
    }
    for n in remote.iter().filter_map(|n| n.strip_suffix(".partial.zst")) {
        assert!(!segments.contains(&n), "{n} has both a partial and a complete object");
    }
    assert!(acked.len() > 100);
    drop(secrets);
}

fn pgark_status_text(p: &Pgark) -> String {
    text(&crate::support::cli::pgark(&p.config, &["status"]))
}

/// Two repositories with retentions of their own, pruned and verified where they are, and
/// `repo copy` into a third one that the daemon does not upload to.
#[test]
fn repositories_keep_their_own_retention_verify_and_copy() {
    let Some(sw) = Seaweed::start() else { return };
    sw.create_bucket("pgark-two");
    let secrets = Secrets::new();
    let repos = format!(
        "{}{}",
        repo_yaml(&sw, "near", "pgark-two", "near", &secrets.secret, "retention: {redundancy: 1}"),
        repo_yaml(&sw, "far", "pgark-two", "far", &secrets.secret, "retention: {redundancy: 2}")
    );
    let top = format!("encryption:\n  key_file: {}\nrepositories:\n{repos}", secrets.key.display());
    let c = Cluster::init_with(&pg(), &[], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let server = server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false");
    let p = Pgark::start_full("", &top, &server, &[]);
    p.wait_streaming("main");
    c.psql("CREATE TABLE t (id int)").unwrap();
    let bin = Binary::new();
    for i in 0..3 {
        c.psql(&format!("INSERT INTO t SELECT generate_series(1, 1000) + {i} * 1000"))
            .unwrap();
        let o = bin.run(&p.config, &["backup", "main"]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("written to the repositories as it was taken"), "{}", text(&o));
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    let count = |config: &Path, repo: &str| -> usize {
        let o = bin.run(config, &["list-backups", "--repo", repo, "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };

    let repo_check = repositories_check(&bin, &p.config);
    assert_eq!(repo_check["level"], "ok", "{repo_check}");
    let key_id = Key::parse(&std::fs::read_to_string(&secrets.key).unwrap(), "k")
        .unwrap()
        .id()
        .to_string();
    assert!(repo_check["detail"].as_str().unwrap().contains(&key_id), "{repo_check}");

    // The daemon applies each repository's own retention once it gains backups.
    wait_until(Duration::from_secs(60), "the repositories' retention", || {
        count(&p.config, "near") == 1 && count(&p.config, "far") == 2
    });
    wait_caught_up(&p, "near", 1);
    wait_caught_up(&p, "far", 2);
    let o = bin.run(&p.config, &["prune", "--repo", "far", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["backups"].as_array().map(|a| a.len()), Some(0), "nothing left to prune: {r}");
    assert_eq!(count(&p.config, "local"), 3, "the local catalog has no retention rule");

    let v = bin.run(&p.config, &["verify", "--repo", "far", "main", "--all"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));

    // A third repository, known only to this config: the copy target.
    let cli_config = side_config(
        &p,
        &secrets,
        "copy.yaml",
        &format!("{repos}{}", repo_yaml(&sw, "archive", "pgark-two", "archive", &secrets.secret, "")),
        &server,
    );
    let copy = || {
        crate::support::cli::pgark_args(&[
            "repo",
            "copy",
            "--config",
            cli_config.to_str().unwrap(),
            "--from",
            "far",
            "--to",
            "archive",
            "--json",
        ])
    };
    let o = copy();
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["backups"].as_array().unwrap().len(), 2, "{r}");
    assert!(
        r[0]["chunks"].as_u64().unwrap() > 0 && r[0]["wal_objects"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(count(&cli_config, "archive"), 2);
    let again = copy();
    let r: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        (r[0]["chunks"].as_u64(), r[0]["backups_present"].as_u64()),
        (Some(0), Some(2)),
        "{r}"
    );
    let v = bin.run(&cli_config, &["verify", "--repo", "archive", "main", "--all"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "copied sealed objects open in the new place: {}",
        text(&v)
    );

    // A damaged chunk in one repository is found there (exit 9), and named.
    let raw = raw_store(&sw, "pgark-two", "archive");
    let chunk = raw
        .list_recursive("main/chunks")
        .unwrap()
        .into_iter()
        .map(|(k, _, _)| k)
        .next()
        .unwrap();
    let mut b = raw.get(&chunk).unwrap().unwrap();
    let last = b.len() - 1;
    b[last] ^= 1;
    raw.put(&chunk, &b).unwrap();
    let v = bin.run(&cli_config, &["verify", "--repo", "archive", "main", "--all"]);
    assert_eq!(v.status.code(), Some(9), "{}", text(&v));
    let chunk_name = chunk.rsplit('/').next().unwrap();
    assert!(text(&v).contains(chunk_name), "{}", text(&v));
}

/// pgark SIGKILLed while it uploads a backup to a repository it was just given (a reload adds
/// the repository to a catalog that has a backup): the chunks are there, the index is not, and
/// the repository lists no backup (nothing half-uploaded is visible). Restarted, it finishes the
/// upload, and the repository's copy verifies.
#[test]
fn sigkill_during_a_backup_upload_leaves_nothing_half_visible() {
    let Some(sw) = Seaweed::start() else { return };
    sw.create_bucket("pgark-kill");
    let secrets = Secrets::new();
    let c = Cluster::init_with(&pg(), &[], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
        .unwrap();
    let server = server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false");
    let mut p = Pgark::start_env(&server, &[("FAILPOINTS", "offsite-before-index=sleep(600000)")]);
    p.wait_streaming("main");
    let bin = Binary::new();
    let o = bin.run(&p.config, &["backup", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    // The repository arrives by a reload: the uploader has a backup to catch up on.
    p.set_top(&format!(
        "repositories:\n{}",
        repo_yaml(&sw, "offsite", "pgark-kill", "", &secrets.secret, "")
    ));
    p.rewrite_servers(&server);
    p.hup();
    let raw = raw_store(&sw, "pgark-kill", "");
    wait_until(
        Duration::from_secs(60),
        "the backup's chunks and manifest in the repository",
        || {
            raw.list("main/backups")
                .unwrap_or_default()
                .iter()
                .any(|k| k.ends_with(".manifest"))
        },
    );
    p.kill9();
    assert!(!raw.list_recursive("main/chunks").unwrap().is_empty());
    let listed = bin.run(&p.config, &["list-backups", "--repo", "offsite", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]", "{}", text(&listed));

    p.set_env(&[]);
    p.spawn();
    wait_caught_up(&p, "offsite", 1);
    let v = bin.run(&p.config, &["verify", "--repo", "offsite", "main", "--all"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
}

/// `backups_local: false`: a backup's chunks go to the repository only (the local catalog keeps
/// its index, the WAL as always); verify and restore without `--repo` read the chunks from
/// there, and a repository that cannot be written refuses the backup rather than keeping it
/// nowhere.
#[test]
fn backups_kept_only_in_the_repository() {
    let Some(mut sw) = Seaweed::start() else { return };
    sw.create_bucket("pgark-remote-only");
    let secrets = Secrets::new();
    let top = format!(
        "backups_local: false\nencryption:\n  key_file: {}\nrepositories:\n{}",
        secrets.key.display(),
        repo_yaml(&sw, "offsite", "pgark-remote-only", "", &secrets.secret, "")
    );
    let c = Cluster::init_with(&pg(), &[], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g").unwrap();
    let p = Pgark::start_full("", &top, &server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false"), &[]);
    p.wait_streaming("main");
    let bin = Binary::new();
    let o = bin.run(&p.config, &["backup", "main"]);
    assert!(o.status.success(), "{}", text(&o));
    let local_chunks = p.catalog.join("main/chunks");
    let n = std::fs::read_dir(&local_chunks).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "chunks were stored locally");
    let raw = raw_store(&sw, "pgark-remote-only", "");
    assert!(!raw.list_recursive("main/chunks").unwrap().is_empty());
    let v = bin.run(&p.config, &["verify", "main"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    c.psql("INSERT INTO t VALUES (-1)").unwrap();
    c.psql("SELECT pg_switch_wal()").unwrap();
    wait_caught_up(&p, "offsite", 1);
    open_for_postgres(p.dir.path());
    let (data, tmp, _) = restore(&bin, &p.config, "main", &[]);
    open_for_postgres(p.dir.path());
    let r = start_restored(&c.bins, tmp, data, None);
    assert_eq!(r.psql("SELECT count(*) FROM t").unwrap(), "50001");

    sw.stop();
    let o = bin.run(&p.config, &["backup", "main"]);
    assert!(
        !o.status.success(),
        "a backup with no repository to hold it succeeded: {}",
        text(&o)
    );
    assert!(text(&o).contains("no repository took the chunk"), "{}", text(&o));
}

/// `object_lock: true` on a bucket created with object lock: what a restore needs goes up
/// locked (the store itself refuses to delete a version of it), retention keeps a backup whose
/// lock has not ended instead of trying to delete it, and deletes it (every version, nothing
/// hidden left) once the lock ends. The open segment's partial object, rewritten in place, is
/// not locked and keeps no older versions. `check` reports the lock, and fails for a bucket
/// without object lock.
#[test]
fn object_lock_keeps_backups_until_the_lock_ends() {
    let Some(sw) = Seaweed::start() else { return };
    sw.create_locked_bucket("pgark-vault");
    sw.create_bucket("pgark-plain");
    let secrets = Secrets::new();
    let lock = "retention: {redundancy: 1}\nobject_lock: true\nobject_lock_period: 40s";
    let top = format!(
        "encryption:\n  key_file: {}\noffsite_partial_interval: 500ms\nrepositories:\n{}",
        secrets.key.display(),
        repo_yaml(&sw, "vault", "pgark-vault", "v", &secrets.secret, lock)
    );
    let c = Cluster::init_with(&pg(), &[], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let server = server_yaml("main", &c.conninfo(&c.superuser), "synchronous: false");
    let p = Pgark::start_full("", &top, &server, &[]);
    p.wait_streaming("main");
    let bin = Binary::new();
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id").unwrap();
    let o = bin.run(&p.config, &["backup", "main", "--json", "--wait", "60s"]);
    assert!(o.status.success(), "{}", text(&o));
    let first: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = first["id"].as_str().unwrap().to_string();
    c.psql("SELECT pg_switch_wal()").unwrap();
    wait_caught_up(&p, "vault", 1);

    // Locked in the store, not only in pgark's bookkeeping: the store refuses to delete the
    // index's version, which S3 would otherwise do for anyone with the credentials.
    let mut spec = sw.s3_spec("pgark-vault", "v", SECRET_KEY);
    spec.object_lock = None; // the raw requests, without pgark's own guard
    let raw = RemoteStore::new(spec).unwrap();
    let index_key = format!("main/backups/{first}.json");
    let versions = raw.versions(&index_key).unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let refused = raw.delete_version(&index_key, &versions[0].id).unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    let wal = raw.list("main/wal").unwrap();
    let segment = wal.iter().find(|k| k.ends_with(".zst") && !k.contains(".partial")).unwrap();
    let v = raw.versions(segment).unwrap();
    assert!(raw.delete_version(segment, &v[0].id).is_err(), "a WAL segment must be locked too");
    // The partial, rewritten every 500 ms, is not locked and keeps one version.
    c.psql("INSERT INTO t SELECT generate_series(1001, 1100)").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    if let Some(partial) = raw.list("main/wal").unwrap().iter().find(|k| k.ends_with(".partial.zst")) {
        let v = raw.versions(partial).unwrap();
        assert!(v.len() <= 2, "older versions of {partial} are trimmed: {v:?}");
    }

    let check = || repositories_check(&bin, &p.config);
    let r = check();
    assert_eq!(r["level"], "ok", "{r}");
    assert!(r["detail"].as_str().unwrap().contains("object lock COMPLIANCE for 40s"), "{r}");

    // A second backup: retention (redundancy 1) lets the first go, but its lock holds it.
    let o = bin.run(&p.config, &["backup", "main", "--json", "--wait", "60s"]);
    assert!(o.status.success(), "{}", text(&o));
    c.psql("SELECT pg_switch_wal()").unwrap();
    wait_caught_up(&p, "vault", 2);
    let prune = || -> serde_json::Value {
        // The daemon prunes the repository too when it gains a backup: wait for its turn.
        let o = bin.run(&p.config, &["prune", "--repo", "vault", "--json"]);
        assert!(o.status.success() || o.status.code() == Some(4), "{}", text(&o));
        if o.status.code() == Some(4) {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mut locking = sw.s3_spec("pgark-vault", "v", SECRET_KEY);
    locking.object_lock = Some(pgark::catalog::object_lock::ObjectLock {
        mode: pgark::catalog::object_lock::LockMode::Compliance,
        period: Duration::from_secs(40),
    });
    let until = RemoteStore::new(locking)
        .unwrap()
        .locked_until(&index_key)
        .unwrap()
        .expect("the index is locked");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    assert!(until > now() && until <= now() + 41, "locked until {until}");
    let r = loop {
        let r = prune();
        if !r.is_null() {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "object lock test: the first backup's lock has {} s left at the prune",
        until - now()
    );
    if now() + 2 < until {
        let held = r[0]["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == first.as_str())
            .unwrap()
            .clone();
        assert!(held["kept_by"].to_string().contains("\"locked\""), "{r}");
        assert!(r[0]["backups"].as_array().unwrap().is_empty(), "{r}");
        assert!(raw.get(&index_key).unwrap().is_some(), "a locked backup stays listed");
    }

    // Once the 40 s have passed, retention deletes it: every version, no delete marker left.
    wait_until(Duration::from_secs(120), "the first backup to leave the repository", || {
        let _ = prune();
        raw.versions(&index_key).unwrap().is_empty()
    });
    let o = bin.run(&p.config, &["list-backups", "--repo", "vault", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let v = bin.run(&p.config, &["verify", "--repo", "vault", "main", "--all"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));

    // `check` fails for a bucket without object lock.
    let plain = side_config(
        &p,
        &secrets,
        "plain.yaml",
        &repo_yaml(&sw, "vault", "pgark-plain", "v", &secrets.secret, lock),
        &server,
    );
    let r = repositories_check(&bin, &plain);
    assert_eq!(r["level"], "failed", "{r}");
    assert!(r["detail"].as_str().unwrap().contains("does not have object lock enabled"), "{r}");
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `encryption.local: true` on a synchronous server: every object the local catalog stores
/// (compressed segments, backup chunks and indexes, the server state, records) is sealed and
/// holds no plaintext row; only the receiver's spool is not. After SIGKILL of pgark, a restore
/// from that catalog holds every acknowledged commit; a flipped byte is refused by wal-get
/// (126, naming the object); a config without `local: true` says the catalog is encrypted;
/// a rotated key (the old one kept for reading) still reads it all, and writes with the new.
#[test]
fn local_catalog_sealed_at_rest_restores_and_refuses_tampering() {
    let secrets = Secrets::new();
    let top = format!("encryption:\n  key_file: {}\n  local: true\n", secrets.key.display());
    let bin = Binary::new();
    let c = Cluster::init_with(&pg(), &["synchronous_standby_names = 'pgark'"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let server = server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true");
    let mut p = Pgark::start_full("", &top, &server, &[]);
    p.wait_streaming("main");
    c.psql("CREATE TABLE marks (label text)").unwrap();
    let w = Writers::start(&c, 4);
    for _ in 0..3 {
        c.psql("INSERT INTO marks SELECT 'secret-marker-' || g FROM generate_series(1, 2000) g")
            .unwrap();
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    let o = bin.run(&p.config, &["backup", "main", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    c.psql("INSERT INTO marks VALUES ('secret-marker-after-the-backup')").unwrap();
    c.psql("SELECT pg_switch_wal()").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let acked = w.finish();
    assert!(acked.len() > 50, "only {} rows acknowledged", acked.len());
    let wal = p.wal_dir("main");
    wait_until(Duration::from_secs(30), "a compressed segment", || {
        std::fs::read_dir(&wal)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".zst"))
    });

    // At rest: objects sealed, the spool encrypted by the receiver, no plaintext row anywhere.
    let spool = |name: &str| {
        let base = name.trim_end_matches(".partial");
        (base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit())) || name.starts_with(".spare.")
    };
    let (mut sealed, mut kinds, mut partials) = (0, std::collections::BTreeSet::new(), 0);
    for f in files_under(&p.catalog.join("main")) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let rel = f.strip_prefix(&p.catalog).unwrap().display().to_string();
        if name.ends_with(".lock") {
            continue;
        }
        let b = std::fs::read(&f).unwrap();
        if spool(&name) {
            assert!(!b.windows(14).any(|x| x == b"secret-marker-"), "spool file {rel} holds plaintext");
            if name.ends_with(".partial") {
                // A segment of 1 MiB and the 4 KiB trailer of the spool cipher.
                assert_eq!(b.len(), (1 << 20) + 4096, "{rel}");
                assert_eq!(&b[1 << 20..(1 << 20) + 8], b"PGARKSPL", "{rel}");
                partials += 1;
            }
            continue;
        }
        assert!(encryption::is_sealed(&b), "{rel} is not encrypted");
        assert!(!b.windows(14).any(|x| x == b"secret-marker-"), "{rel} holds plaintext");
        sealed += 1;
        kinds.insert(rel.split('/').nth(1).unwrap_or("").to_string());
        if name.ends_with(".zst") {
            kinds.insert("zst".into());
        }
    }
    for k in ["wal", "zst", "backups", "chunks", "server.state"] {
        assert!(kinds.contains(k), "no sealed {k} object (found {kinds:?}, {sealed} objects)");
    }
    assert!(partials > 0, "no .partial in the spool");
    let v = bin.run(&p.config, &["verify", "main"]);
    assert!(v.status.success(), "verify of the sealed catalog: {}", text(&v));
    let key_id = Key::parse(&std::fs::read_to_string(&secrets.key).unwrap(), "k").unwrap().id();
    let o = bin.run(&p.config, &["check", "main", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let local = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "local_encryption")
        .unwrap();
    assert_eq!(local["level"], "ok", "{local}");
    assert!(local["detail"].as_str().unwrap().contains(&key_id.to_string()), "{local}");

    // pgark dies; the catalog alone restores every acknowledged commit.
    p.kill9();
    let (data, tmp, _) = restore(&bin, &p.config, "main", &[]);
    open_for_postgres(p.dir.path());
    let r = start_restored(&c.bins, tmp, data, None);
    assert_all_acked_present(&r, &acked, "after restoring from the sealed local catalog");
    assert_eq!(r.psql("SELECT count(*) FROM marks").unwrap(), "6001");
    drop(r);

    // pgark starts again: it opens the encrypted `.partial` it was killed in and goes on in the
    // same keystream (a synchronous commit returns only once it is fsynced there).
    p.spawn();
    p.wait_streaming("main");
    c.psql("INSERT INTO marks VALUES ('secret-marker-after-the-restart')").unwrap();
    let v = bin.run(&p.config, &["verify", "main"]);
    assert!(v.status.success(), "verify after the restart: {}", text(&v));
    for f in files_under(&wal) {
        let b = std::fs::read(&f).unwrap();
        assert!(!b.windows(14).any(|x| x == b"secret-marker-"), "{} holds plaintext", f.display());
    }
    p.kill9();

    // A flipped byte in a sealed segment: wal-get refuses it (126), naming it.
    let zst = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "zst"))
        .unwrap();
    let name = zst.file_stem().unwrap().to_string_lossy().to_string();
    let dest = p.dir.path().join("wal-out");
    let ok = bin.run(&p.config, &["wal-get", "main", &name, dest.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let mut b = std::fs::read(&zst).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&zst, &b).unwrap();
    let bad = bin.run(&p.config, &["wal-get", "main", &name, dest.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(126), "{}", text(&bad));
    assert!(
        text(&bad).contains(&name) && text(&bad).contains("authentication failed"),
        "{}",
        text(&bad)
    );
    b[mid] ^= 0x40;
    std::fs::write(&zst, &b).unwrap();

    // The same catalog under a config without local: true: with the key file kept, it still
    // reads; without any key, named, not misread.
    let config_text = std::fs::read_to_string(&p.config).unwrap();
    let plain_config = p.dir.path().join("plain.yaml");
    std::fs::write(&plain_config, config_text.replace("  local: true\n", "")).unwrap();
    let listed = bin.run(&plain_config, &["list-backups", "main"]);
    assert!(listed.status.success(), "{}", text(&listed));
    std::fs::write(&plain_config, config_text.replace(&top, "")).unwrap();
    let listed = bin.run(&plain_config, &["list-backups", "main"]);
    assert!(!listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains("encryption.local"), "{}", text(&listed));

    // Rotation: a new current key, the old one kept for reading.
    let new_key = p.dir.path().join("new.key");
    std::fs::write(&new_key, format!("{}\n", Key::generate().to_hex())).unwrap();
    std::fs::write(
        &p.config,
        config_text.replace(
            &format!("  key_file: {}\n", secrets.key.display()),
            &format!("  key_file: {}\n  old_key_files: [{}]\n", new_key.display(), secrets.key.display()),
        ),
    )
    .unwrap();
    let ok = bin.run(&p.config, &["wal-get", "main", &name, dest.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    p.spawn();
    p.wait_streaming("main");
    // The restarted daemon may hold the backup lock a moment (its first prune).
    let (mut last, mut ok) = (String::new(), false);
    wait_until(Duration::from_secs(60), "a backup after the rotation", || {
        let o = bin.run(&p.config, &["backup", "main", "--json"]);
        (last, ok) = (text(&o), o.status.success());
        ok || !last.contains("already running")
    });
    assert!(ok, "backup after the rotation: {last}");
    let v = bin.run(&p.config, &["verify", "main"]);
    assert!(v.status.success(), "verify across keys: {}", text(&v));
    let new_id = Key::parse(&std::fs::read_to_string(&new_key).unwrap(), "k").unwrap().id();
    let newest = files_under(&p.catalog.join("main").join("backups"))
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).unwrap())
        .unwrap();
    assert_eq!(
        encryption::key_id_of(&std::fs::read(&newest).unwrap()),
        Some(new_id),
        "{}",
        newest.display()
    );

    // `local: require` on a catalog sealed from the start: everything still reads; a plaintext
    // object put in place of a sealed one is refused by name (under `true` it would be read).
    let rotated = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, rotated.replace("  local: true\n", "  local: require\n")).unwrap();
    let v = bin.run(&p.config, &["verify", "main"]);
    assert!(v.status.success(), "verify under local: require: {}", text(&v));
    let history_like = p.catalog.join("main").join("wal").join("00000009.history");
    std::fs::write(&history_like, "8\t0/9000000\tplanted\n").unwrap();
    let planted = bin.run(&p.config, &["wal-get", "main", "00000009.history", dest.to_str().unwrap()]);
    assert_eq!(planted.status.code(), Some(126), "{}", text(&planted));
    assert!(
        text(&planted).contains("00000009.history") && text(&planted).contains("require"),
        "{}",
        text(&planted)
    );
    std::fs::remove_file(&history_like).unwrap();
    drop(secrets.dir);
}
