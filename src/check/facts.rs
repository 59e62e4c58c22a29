//! What `pgark check` looks at, gathered once per server: the catalog (writable, permissions,
//! free space, newest WAL file, newest backup, whether `pgark serve` holds it), a replication
//! connection (IDENTIFY_SYSTEM) and the monitoring connection (the monitor's own round, the
//! replication role's attributes and a few server settings).
//!
//! Every network step is bounded by the check's timeout: the connection's `connect_timeout`
//! is lowered to it, every wait for the server is limited to it, and the whole gathering of a
//! server is cut off at twice that. Nothing here writes to the server; the one catalog write is
//! the writability probe (a file created through `fsio::durable` and removed again).

use crate::catalog::backup_store;
use crate::catalog::drill_record::{self, DrillRecord};
use crate::catalog::space::DiskThresholds;
use crate::catalog::state::ServerState;
use crate::catalog::store::Capacity;
use crate::catalog::Catalog;
use crate::client::conninfo::ConnInfo;
use crate::client::replication::SystemInfo;
use crate::client::Connection;
use crate::config::{Config, ServerConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything the checks of one server read.
#[derive(Debug, Clone)]
pub struct Facts {
    pub server: String,
    pub config_file: PathBuf,
    pub catalog: PathBuf,
    pub catalog_group: Option<String>,
    pub thresholds: DiskThresholds,
    pub cfg: ServerConfig,
    /// Unix seconds when the facts were gathered.
    pub now: u64,
    /// `Ok(Some(pid))` while a `pgark serve` holds the catalog lock.
    pub daemon: Result<Option<String>, String>,
    /// The writability probe: where it wrote, or why it could not.
    pub writable: Result<PathBuf, String>,
    /// Mode bits of the catalog root (None when it does not exist).
    pub root_mode: Option<u32>,
    /// What `catalog::perms::check` says of the root.
    pub perms_problems: Vec<String>,
    pub capacity: Result<Capacity, String>,
    /// The newest file of the server's WAL directory: its name and mtime (Unix seconds).
    pub newest_wal: Result<Option<(String, u64)>, String>,
    /// The newest published backup: id and start (Unix seconds).
    pub newest_backup: Result<Option<(String, u64)>, String>,
    /// A backup of this server is being taken (an intent record exists).
    pub backup_running: bool,
    pub state: Result<Option<ServerState>, String>,
    pub replication: Result<Replication, String>,
    pub sql: Result<Sql, String>,
    /// The retention policy's verdict and the WAL continuity, from the catalog.
    pub retention: Result<RetentionFacts, String>,
    /// The verify results stored beside the backups (`pgark verify`, `verify_schedule`), newest
    /// verify first.
    pub verifies: Result<Vec<crate::verify::record::VerifyRecord>, String>,
    /// The newest restore drill and the newest successful one (`pgark drill`, `drill.schedule`).
    pub drills: Result<(Option<DrillRecord>, Option<DrillRecord>), String>,
    /// What each configured repository holds of this server.
    pub repositories: Vec<RepositoryFacts>,
    /// The local catalog's encryption (`encryption.local`), from a sample of its objects.
    pub local_keys: Result<LocalKeyFacts, String>,
}

/// Which keys the local catalog's objects need, from every backup index, the server state, the
/// oldest and newest compressed segment (as stored, read without opening them) and the trailer
/// of each segment file in the spool (`.partial` and not yet archived).
#[derive(Debug, Clone, Default)]
pub struct LocalKeyFacts {
    /// `encryption.local: true` (or `require`) in the config.
    pub configured: bool,
    /// `encryption.local: require`: plaintext objects are refused.
    pub require: bool,
    /// Ids of the keys that sealed the objects looked at.
    pub key_ids: std::collections::BTreeSet<String>,
    /// Objects looked at that are not sealed (written before `encryption.local`).
    pub plaintext: usize,
    pub looked_at: usize,
    /// Ids of the configured keyring that reads the catalog (empty without a key).
    pub keyring: Vec<String>,
    /// Encrypted `.partial` files the receiver moved aside, unreadable without any key
    /// (`wal_store::UNREADABLE_SUFFIX`).
    pub unreadable: Vec<String>,
}

/// Reads the sample of `local_keys` (blocking).
fn local_keys(config: &Config, server: &str) -> Result<LocalKeyFacts, String> {
    let raw = Catalog::open_as_stored(&config.catalog).store();
    let raw = raw.as_ref();
    let err = |e: std::io::Error| e.to_string();
    let mut sample: Vec<String> = backup_store::list_ids(raw, server)
        .map_err(err)?
        .iter()
        .map(|id| backup_store::index_key(server, id))
        .collect();
    sample.push(crate::catalog::state::key(server));
    let wal: Vec<String> = raw
        .list(&crate::catalog::Layout::wal_key(server))
        .map_err(err)?
        .into_iter()
        .filter(|k| k.ends_with(crate::catalog::wal_store::ZST_SUFFIX))
        .collect();
    sample.extend(wal.first().cloned());
    sample.extend(wal.last().cloned());
    sample.dedup();
    // Every file of the spool under a segment name (the open `.partial`, one per ended
    // timeline, completed segments the archiver has not compressed yet) names its key in a
    // trailer: 17 bytes read each. Plaintext ones are not counted (the spool is exempt from
    // `require`), and spares are not needed.
    let spool = raw.list(&crate::catalog::Layout::wal_key(server)).map_err(err)?;
    let partials: Vec<String> = spool
        .iter()
        .filter(|k| crate::catalog::local_store_sealing::is_spool_key(k) && !k.contains("/.spare."))
        .cloned()
        .collect();
    let unreadable: Vec<String> = spool
        .into_iter()
        .filter(|k| k.contains(crate::catalog::wal_store::UNREADABLE_SUFFIX))
        .collect();
    let configured = config.encryption.as_ref().is_some_and(|e| e.local);
    let mut f = LocalKeyFacts {
        configured,
        require: config.encryption.as_ref().is_some_and(|e| e.local_require),
        unreadable,
        keyring: match crate::catalog::local_store_sealing::reading_keyring_for(&config.catalog) {
            Some(ring) => ring.ids().iter().map(|i| i.to_string()).collect(),
            None => Vec::new(),
        },
        ..Default::default()
    };
    for k in &sample {
        let Some(data) = raw.get(k).map_err(err)? else { continue };
        f.looked_at += 1;
        match crate::catalog::encryption::key_id_of(&data) {
            Some(id) => {
                f.key_ids.insert(id.to_string());
            }
            None => f.plaintext += 1,
        }
    }
    for k in &partials {
        if let Some(id) = crate::catalog::spool_cipher::key_id_of_file(&config.catalog.join(k)).map_err(err)? {
            f.looked_at += 1;
            f.key_ids.insert(id.to_string());
        }
    }
    Ok(f)
}

/// One repository as `check` sees it.
#[derive(Debug, Clone)]
pub struct RepositoryFacts {
    pub name: String,
    /// What it holds, or why it could not be read (unreachable, refused credentials, no key).
    pub holds: Result<RepositoryHoldings, String>,
    /// The uploader's last mark for this server (see `catalog::offsite_mark`).
    pub mark: Option<crate::catalog::offsite_mark::OffsiteMark>,
}

#[derive(Debug, Clone, Default)]
pub struct RepositoryHoldings {
    pub backups: usize,
    pub newest_backup: Option<String>,
    pub wal_objects: usize,
    /// Key ids that sealed the objects looked at (every index, the oldest and the newest WAL
    /// object), and the ids the configured keyring has.
    pub key_ids: std::collections::BTreeSet<String>,
    pub keyring: Vec<String>,
    pub encrypted: bool,
    /// `object_lock` as configured, with what the bucket says: `None` when not configured.
    pub lock: Option<LockFacts>,
}

/// Object lock as a repository's bucket and newest backup show it.
#[derive(Debug, Clone)]
pub struct LockFacts {
    pub configured: crate::catalog::object_lock::ObjectLock,
    /// `None`: object lock is not enabled on the bucket; else its default retention rule.
    pub bucket: Option<Option<String>>,
    /// Until when the newest backup's index is locked (Unix seconds).
    pub newest_index_until: Option<i64>,
}

/// What retention and the WAL continuity index say of one server (a dry run: nothing deleted).
#[derive(Debug, Clone, Default)]
pub struct RetentionFacts {
    pub has_rules: bool,
    pub min_redundancy: u32,
    /// `retention.recovery_window` in seconds.
    pub recovery_window: Option<u64>,
    /// Backups that can be restored.
    pub usable: usize,
    /// Backups the policy lets go that are still there (nobody pruned).
    pub overdue_backups: Vec<String>,
    pub overdue_wal_files: usize,
    /// The earliest point a restore reaches without crossing a gap (Unix seconds).
    pub window_start: Option<u64>,
    /// Gaps in the WAL since the oldest backup, and whether each is acknowledged.
    pub gaps: Vec<(String, bool)>,
}

/// Retention facts of `server` from the catalog.
fn retention(catalog: &Catalog, server: &str, cfg: &ServerConfig, now: u64) -> Result<RetentionFacts, String> {
    use crate::retention::policy::Mode;
    let policy = &cfg.retention;
    let hold = crate::catalog::offsite_mark::OffsiteHold::load(catalog.store().as_ref(), server, &cfg.repositories);
    let report = crate::retention::prune(catalog, server, policy, now, Mode::Normal, true, &hold).map_err(|e| e.to_string())?;
    let store = catalog.store();
    let backups = backup_store::load_all(store.as_ref(), server).map_err(|e| e.to_string())?;
    let usable = backups
        .iter()
        .filter(|b| backup_store::wal_presence(store.as_ref(), b).present)
        .count();
    let floor = crate::catalog::continuity::floor_backup(store.as_ref(), server, now).map_err(|e| e.to_string())?;
    let gaps = match floor.as_ref() {
        Some(first) => {
            let seg = crate::pg::WalSegSize::new(first.wal_segment_size).map_err(|e| e.to_string())?;
            let c = crate::catalog::continuity::Continuity::load(store.as_ref(), server, seg, Some(seg.segno(first.start_lsn).0))
                .map_err(|e| e.to_string())?;
            c.gaps.iter().map(|(g, a)| (g.describe(seg), *a)).collect()
        }
        None => vec![],
    };
    Ok(RetentionFacts {
        has_rules: policy.has_rules(),
        min_redundancy: policy.min_redundancy,
        recovery_window: policy.recovery_window.map(|w| w.as_secs()),
        usable,
        overdue_backups: report.backups.iter().map(|b| b.id.clone()).collect(),
        overdue_wal_files: report.wal.iter().map(|w| w.files).sum(),
        window_start: report.window_before.map(|w| w.from_time),
        gaps,
    })
}

/// What the replication connection found.
#[derive(Debug, Clone)]
pub struct Replication {
    pub system: SystemInfo,
    pub server_version_num: u32,
}

/// What the monitoring connection found.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    /// The monitor's round (slot, sync state, synchronous_standby_names).
    pub monitor: crate::monitor::ServerFacts,
    pub server_version_num: u32,
    /// The replication connection's role may replicate (REPLICATION or superuser); None when no
    /// such role exists.
    pub role_replication: Option<bool>,
    pub replication_user: String,
    /// The monitoring connection's role is a member of pg_monitor (or a superuser).
    pub pg_monitor: bool,
    pub monitoring_user: String,
    /// `pg_settings` rows: name -> (setting, unit). Absent settings are absent (older majors).
    pub settings: BTreeMap<String, (String, Option<String>)>,
}

impl Sql {
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.get(name).map(|(s, _)| s.as_str())
    }

    /// A time setting in seconds (`pg_settings` gives the value in its unit: ms, s, min, h, d).
    pub fn seconds(&self, name: &str) -> Option<u64> {
        let (v, unit) = self.settings.get(name)?;
        let v: f64 = v.trim().parse().ok()?;
        let factor = match unit.as_deref() {
            Some("ms") => 0.001,
            Some("s") | None => 1.0,
            Some("min") => 60.0,
            Some("h") => 3600.0,
            Some("d") => 86400.0,
            Some(_) => return None,
        };
        Some((v * factor) as u64)
    }
}

/// Settings `pgark check` reads from `pg_settings`.
const SETTINGS: [&str; 6] = [
    "data_checksums",
    "summarize_wal",
    "archive_timeout",
    "synchronized_standby_slots",
    "idle_replication_slot_timeout",
    "server_version_num",
];

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `ci` with `connect_timeout` at most `limit`.
fn bounded(ci: &ConnInfo, limit: Duration) -> ConnInfo {
    let mut ci = ci.clone();
    ci.connect_timeout = Some(ci.connect_timeout.map_or(limit, |t| t.min(limit)));
    ci
}

/// Gathers the facts of server `name` (which `config` defines).
pub async fn gather(config: &Config, name: &str, timeout: Duration) -> Facts {
    let cfg = config.servers[name].clone();
    let catalog = Catalog::open(&config.catalog);
    let root = config.catalog.clone();
    let store = catalog.store();
    let layout = catalog.layout().clone();

    let repl_ci = bounded(&cfg.conninfo, timeout);
    let mon_ci = bounded(&cfg.monitor_settings().conninfo, timeout);
    let cut = timeout * 2;
    let elapsed = |what: &str| format!("no answer within {}s ({what}; --timeout)", cut.as_secs());
    let (replication, sql) = tokio::join!(
        async {
            tokio::time::timeout(cut, replication(&repl_ci, timeout))
                .await
                .unwrap_or_else(|_| Err(elapsed("replication connection")))
        },
        async {
            tokio::time::timeout(cut, sql(&mon_ci, &cfg, timeout))
                .await
                .unwrap_or_else(|_| Err(elapsed("monitoring connection")))
        }
    );

    let root_mode = std::fs::metadata(&root).ok().map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    });
    let running_key = backup_store::backups_key(name);
    Facts {
        server: name.to_string(),
        config_file: config.path.clone(),
        catalog: root.clone(),
        catalog_group: config.catalog_group.clone(),
        thresholds: config.disk_pressure,
        now: crate::util::time::unix_now(),
        daemon: crate::catalog::lock::CatalogLock::serve_lock_holder(&root).map_err(|e| e.to_string()),
        writable: probe_writable(&root, &layout.server_dir(name)),
        root_mode,
        perms_problems: crate::catalog::perms::check(&root, config.catalog_group.as_deref()),
        capacity: catalog.capacity(Some(name)).map_err(|e| e.to_string()),
        newest_wal: newest_wal(&layout.wal_dir(name)),
        newest_backup: backup_store::newest(store.as_ref(), name)
            .map(|b| b.map(|b| (b.id, b.start_time)))
            .map_err(|e| e.to_string()),
        backup_running: store
            .list(&running_key)
            .map(|keys| keys.iter().any(|k| k.ends_with(".running")))
            .unwrap_or(false),
        state: crate::catalog::state::load(store.as_ref(), name).map_err(|e| e.to_string()),
        replication,
        sql,
        retention: retention(&catalog, name, &cfg, crate::util::time::unix_now()),
        drills: drill_record::latest(store.as_ref(), name).map_err(|e| e.to_string()),
        repositories: {
            let (cloned, server) = (config.clone(), name.to_string());
            let all = tokio::task::spawn_blocking(move || repositories(&cloned, &server));
            tokio::time::timeout(cut, all).await.ok().and_then(|r| r.ok()).unwrap_or_else(|| {
                config
                    .repositories
                    .iter()
                    .map(|r| RepositoryFacts {
                        name: r.name.clone(),
                        holds: Err(elapsed("repository")),
                        mark: None,
                    })
                    .collect()
            })
        },
        local_keys: {
            let (cloned, server) = (config.clone(), name.to_string());
            tokio::task::spawn_blocking(move || local_keys(&cloned, &server))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        },
        verifies: backup_store::list_ids(store.as_ref(), name)
            .map(|ids| {
                let mut v: Vec<_> = ids
                    .iter()
                    .filter_map(|id| crate::verify::record::load(store.as_ref(), name, id))
                    .collect();
                v.sort_by_key(|r| std::cmp::Reverse(r.verified_at));
                v
            })
            .map_err(|e| e.to_string()),
        cfg,
    }
}

/// Each repository's holdings of `server` (blocking: object-storage requests).
fn repositories(config: &Config, server: &str) -> Vec<RepositoryFacts> {
    let local = Catalog::open(&config.catalog).store();
    config
        .repositories
        .iter()
        .map(|r| RepositoryFacts {
            name: r.name.clone(),
            mark: crate::catalog::offsite_mark::load(local.as_ref(), server, &r.name).ok().flatten(),
            holds: config.open_repository(&r.name).and_then(|repo| {
                let raw = repo.raw.as_ref();
                let err = |e: std::io::Error| e.to_string();
                let ids = backup_store::list_ids(raw, server).map_err(err)?;
                let wal: Vec<String> = raw
                    .list(&crate::catalog::Layout::wal_key(server))
                    .map_err(err)?
                    .into_iter()
                    .filter(|k| !k.ends_with(".partial.zst"))
                    .collect();
                let mut sample: Vec<String> = ids.iter().map(|id| backup_store::index_key(server, id)).collect();
                sample.extend(wal.first().cloned());
                sample.extend(wal.last().cloned());
                let mut key_ids = std::collections::BTreeSet::new();
                for k in &sample {
                    if let Some(id) = raw.get(k).map_err(err)?.as_deref().and_then(crate::catalog::encryption::key_id_of) {
                        key_ids.insert(id.to_string());
                    }
                }
                let keyring = match &config.encryption {
                    Some(e) => e.keyring()?.ids().iter().map(|i| i.to_string()).collect(),
                    None => Vec::new(),
                };
                let lock = match r.object_lock {
                    None => None,
                    Some(configured) => Some(LockFacts {
                        configured,
                        bucket: repo.remote.bucket_lock().map_err(err)?,
                        newest_index_until: match ids.last() {
                            Some(id) => raw.locked_until(&backup_store::index_key(server, id)).map_err(err)?,
                            None => None,
                        },
                    }),
                };
                Ok(RepositoryHoldings {
                    backups: ids.len(),
                    newest_backup: ids.last().cloned(),
                    wal_objects: wal.len(),
                    key_ids,
                    keyring,
                    encrypted: repo.encrypted,
                    lock,
                })
            }),
        })
        .collect()
}

/// Creates and removes a probe file where the server's data goes (its directory, else the
/// catalog root), through the crash-safe writer every catalog write uses.
fn probe_writable(root: &std::path::Path, server_dir: &std::path::Path) -> Result<PathBuf, String> {
    if !root.is_dir() {
        return Err(format!(
            "catalog {} does not exist (pgark serve creates it at its first start; check the catalog key and the path's permissions)",
            root.display()
        ));
    }
    let dir = if server_dir.is_dir() { server_dir } else { root };
    let probe = dir.join(format!(".check-probe.{}", std::process::id()));
    crate::fsio::durable::write_atomic(&probe, b"pgark check\n").map_err(|e| e.to_string())?;
    std::fs::remove_file(&probe).map_err(|e| format!("remove {}: {e}", probe.display()))?;
    Ok(dir.to_path_buf())
}

/// The newest WAL file (completed, compressed or `.partial`) by mtime; spares, checksums and
/// temporary files do not count.
fn newest_wal(dir: &std::path::Path) -> Result<Option<(String, u64)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("list {}: {e}", dir.display())),
    };
    let mut newest: Option<(String, u64)> = None;
    for entry in entries {
        let entry = entry.map_err(|e| format!("list {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = name.split('.').next().unwrap_or_default();
        let counts = base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit()) && {
            let rest = &name[24..];
            rest.is_empty() || rest == ".zst" || rest == ".partial"
        };
        if !counts {
            continue;
        }
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| format!("stat {}: {e}", entry.path().display()))?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if newest.as_ref().is_none_or(|(_, t)| mtime > *t) {
            newest = Some((name, mtime));
        }
    }
    Ok(newest)
}

/// Connects in replication mode and asks IDENTIFY_SYSTEM, as the receiver does first.
async fn replication(ci: &ConnInfo, timeout: Duration) -> Result<Replication, String> {
    let mut conn = Connection::connect(ci, true).await.map_err(|e| e.to_string())?;
    conn.set_io_timeout(timeout);
    let system = conn.identify_system().await.map_err(|e| e.to_string());
    let server_version_num = conn.server_version_num;
    conn.terminate().await;
    Ok(Replication {
        system: system?,
        server_version_num,
    })
}

/// The monitor's round, then the role's attributes and the settings, over the monitoring
/// connection.
async fn sql(ci: &ConnInfo, cfg: &ServerConfig, timeout: Duration) -> Result<Sql, String> {
    let cancel = CancellationToken::new();
    let monitor = crate::monitor::round(ci, &cfg.slot, timeout, &cancel)
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = Connection::connect(ci, false).await.map_err(|e| e.to_string())?;
    conn.set_io_timeout(timeout);
    let role_q = format!(
        "SELECT r.rolreplication OR r.rolsuper, pg_has_role(current_user, 'pg_monitor', 'MEMBER'), current_user \
         FROM (SELECT 1) one LEFT JOIN pg_roles r ON r.rolname = {}",
        quote_literal(&cfg.conninfo.user)
    );
    let settings_q = format!(
        "SELECT name, setting, unit FROM pg_settings WHERE name IN ({})",
        SETTINGS.iter().map(|s| quote_literal(s)).collect::<Vec<_>>().join(", ")
    );
    let role = conn.simple_query(&role_q).await;
    let settings = match &role {
        Ok(_) => Some(conn.simple_query(&settings_q).await),
        Err(_) => None,
    };
    conn.terminate().await;
    let role = role.map_err(|e| e.to_string())?;
    let role = role.into_iter().next().ok_or("the role query returned nothing")?;
    let settings = settings.unwrap_or_else(|| Ok(vec![])).map_err(|e| e.to_string())?;
    let mut out = Sql {
        monitor,
        role_replication: role.text(0, 0).map(|v| v == "t"),
        pg_monitor: role.text(0, 1).as_deref() == Some("t"),
        monitoring_user: role.text(0, 2).unwrap_or_default(),
        replication_user: cfg.conninfo.user.clone(),
        ..Default::default()
    };
    if let Some(r) = settings.into_iter().next() {
        for row in 0..r.rows.len() {
            if let (Some(n), Some(v)) = (r.text(row, 0), r.text(row, 1)) {
                out.settings.insert(n, (v, r.text(row, 2)));
            }
        }
    }
    out.server_version_num = out.setting("server_version_num").and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(out)
}
