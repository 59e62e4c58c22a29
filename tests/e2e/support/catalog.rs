//! The catalog seen from outside pgark's code: a config and catalog for commands run without a
//! daemon, backups listed, taken and read back with nothing but their index and zstd, and the
//! stored WAL compared with the server's.

use super::cli::{pgark, text};
use super::pgcluster::chown_postgres;
use super::ports::{self, Port};
use pgark::catalog::segment_file;
use pgark::pg::{WalFileName, WalSegSize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A config file and catalog for commands run without `pgark serve`.
pub struct Catalog {
    /// Kept for its lifetime: the directory goes when the test ends.
    pub _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub catalog: PathBuf,
    /// The config's `metrics.listen` port, reserved while the config exists.
    _metrics_port: Port,
}

impl Catalog {
    pub fn new(servers_yaml: &str) -> Catalog {
        let dir = tempfile::Builder::new().prefix("pgark-bk-").tempdir().unwrap();
        let catalog = dir.path().join("catalog");
        let config = dir.path().join("pgark.yaml");
        let port = ports::reserve();
        std::fs::write(
            &config,
            format!(
                "catalog: {}\n{}metrics:\n  listen: 127.0.0.1:{port}\nservers:\n{servers_yaml}",
                catalog.display(),
                super::catalog_group_yaml(),
            ),
        )
        .unwrap();
        Catalog {
            _dir: dir,
            config,
            catalog,
            _metrics_port: port,
        }
    }
}

/// Runs `pgark backup SERVER --json ...`, asserts success, returns the printed summary.
pub fn backup(config: &Path, server: &str, extra: &[&str]) -> Value {
    // A scheduled backup whose index is already listed may hold its lock a moment longer
    // (the daemon prunes after it): waited for, as a cron job beside the daemon would.
    let mut args = vec!["backup", server, "--json", "--checkpoint", "fast", "--wait", "60s"];
    args.extend_from_slice(extra);
    let o = pgark(config, &args);
    assert!(o.status.success(), "pgark backup failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("backup --json output: {e}: {}", text(&o)))
}

/// `pgark list-backups --json`.
pub fn list(config: &Path) -> Vec<Value> {
    let o = pgark(config, &["list-backups", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

/// A backup's index, parsed here (not with pgark's reader).
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

/// Every stored file decompresses to bytes whose size and CRC-32C match PostgreSQL's own
/// backup_manifest (parsed here, independently of pgark's parser). Returns how many files.
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

/// Unpacks a backup into `dest` with nothing but the index and zstd; tablespaces go to
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
    for p in [dest.to_path_buf(), ts_root] {
        if p.exists() {
            chown_postgres(&p).unwrap();
        }
    }
}

/// Every file under `dir` (recursively; directories themselves left out). Empty when `dir`
/// does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The original bytes of a completed segment in the catalog (decompressed and verified).
pub fn stored_segment(wal_dir: &Path, name: &str) -> Option<Vec<u8>> {
    if let Ok(b) = std::fs::read(wal_dir.join(format!("{name}.zst"))) {
        return Some(segment_file::decompress(&b).unwrap_or_else(|e| panic!("{name}.zst: {e}")));
    }
    std::fs::read(wal_dir.join(name)).ok()
}

/// Every completed segment in the catalog, as (name, parsed).
pub fn completed_segments(wal_dir: &Path, seg: WalSegSize) -> Vec<(String, WalFileName)> {
    let mut out: Vec<(String, WalFileName)> = std::fs::read_dir(wal_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_string();
            let base = n.strip_suffix(".zst").unwrap_or(&n).to_string();
            let w = WalFileName::parse(&base, seg).ok()?;
            Some((base, w))
        })
        .collect();
    out.sort_by_key(|(_, w)| (w.tli, w.segno));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Compares every completed segment in the catalog with the server's own file. Returns how
/// many were compared; panics on the first difference.
pub fn assert_byte_exact(wal_dir: &Path, pg_wal: &Path, seg: WalSegSize) -> usize {
    let mut compared = 0;
    for (name, _) in completed_segments(wal_dir, seg) {
        let ours = stored_segment(wal_dir, &name).unwrap();
        let Ok(theirs) = std::fs::read(pg_wal.join(&name)) else { continue };
        assert_eq!(ours.len(), theirs.len(), "{name}: size differs");
        if ours != theirs {
            let at = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap();
            panic!("{name}: stored segment differs from the server's at byte {at}");
        }
        compared += 1;
    }
    compared
}

/// Checks that the completed segments of each timeline form a run with no hole.
pub fn assert_no_gap(wal_dir: &Path, seg: WalSegSize) {
    let segs = completed_segments(wal_dir, seg);
    for w in segs.windows(2) {
        if w[0].1.tli == w[1].1.tli {
            assert_eq!(w[0].1.segno.0 + 1, w[1].1.segno.0, "gap between {} and {}", w[0].0, w[1].0);
        }
    }
}
