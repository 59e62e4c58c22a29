//! The `repositories:` and `encryption:` sections: off-site copies on object storage, and the
//! keys every object written there is sealed with.
//!
//! ```yaml
//! encryption:
//!   key_file: /etc/pgark/repo.key          # or key_command: "vault kv get -field=key secret/pgark"
//!   old_key_files: [/etc/pgark/repo.key.2026]
//! offsite_partial_interval: 10s
//! repositories:
//!   offsite:
//!     url: s3://bucket/pgark
//!     endpoint: https://s3.example.net      # S3 compatibles; leave out for AWS
//!     region: eu-central-1
//!     access_key_id: AKIA...
//!     secret_access_key_file: /etc/pgark/s3.secret
//!     retention: { redundancy: 4 }
//!     object_lock: true                     # WORM: see catalog::object_lock
//!     object_lock_period: 45d               # default: the retention's span + 7 days
//!     object_lock_mode: compliance          # or governance
//! ```
//!
//! Secrets are read when a repository is opened, not at parse time, so `check-config` works
//! without them and a rotated secret file is picked up by the next command or reload.

use super::retention::RawRetention;
use super::values::parse_duration;
use crate::catalog::chain_store::{ChainStore, Opener};
use crate::catalog::encryption::{Key, Keyring};
use crate::catalog::object_lock::{LockMode, ObjectLock};
use crate::catalog::remote_store::{parse_s3_url, RemoteStore, S3Spec};
use crate::catalog::sealed_store::SealedStore;
use crate::catalog::store::ObjectStore;
use crate::catalog::Catalog;
use crate::retention::Policy;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `--repo local`: the local catalog alone.
pub const LOCAL: &str = "local";

pub const DEFAULT_OFFSITE_PARTIAL_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRepository {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_invalid_certificates: bool,
    pub retention: Option<RawRetention>,
    #[serde(default)]
    pub object_lock: bool,
    pub object_lock_period: Option<String>,
    pub object_lock_mode: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    pub key_file: Option<PathBuf>,
    pub key_command: Option<String>,
    #[serde(default)]
    pub old_key_files: Vec<PathBuf>,
    /// `true`, `false` or `require`.
    pub local: Option<serde_yaml::Value>,
}

/// One repository, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct RepositoryConfig {
    pub name: String,
    pub url: String,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub allow_invalid_certificates: bool,
    /// The repository's own retention (the catalog's keys; no rule: nothing is deleted there).
    pub retention: Policy,
    /// `object_lock: true`: how objects are locked.
    pub object_lock: Option<ObjectLock>,
}

impl RepositoryConfig {
    /// The connection settings, with the secret read from its file.
    pub fn s3_spec(&self) -> Result<S3Spec, String> {
        let secret = match &self.secret_access_key_file {
            Some(p) => Some(
                read_secret(p)
                    .map_err(|m| format!("repositories.{}.secret_access_key_file: {m}", self.name))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(S3Spec {
            name: self.name.clone(),
            url: self.url.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: secret,
            allow_invalid_certificates: self.allow_invalid_certificates,
            object_lock: self.object_lock,
        })
    }
}

/// Where the keys come from, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptionConfig {
    pub key_file: Option<PathBuf>,
    pub key_command: Option<String>,
    pub old_key_files: Vec<PathBuf>,
    /// `local: true`: the local catalog's objects are sealed too (`catalog::local_store_sealing`).
    pub local: bool,
    /// `local: require`: sealed, and objects without an envelope are refused.
    pub local_require: bool,
}

impl EncryptionConfig {
    /// Reads the keys (runs `key_command` if that is the source). Errors name the file or the
    /// command, never the key.
    pub fn keyring(&self) -> Result<Keyring, String> {
        let current = match (&self.key_file, &self.key_command) {
            (Some(p), _) => {
                let text = read_secret(p).map_err(|m| format!("encryption.key_file: {m}"))?;
                Key::parse(&text, &p.display().to_string()).map_err(|e| format!("encryption.key_file: {e}"))?
            }
            (None, Some(cmd)) => {
                let out = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| format!("encryption.key_command: cannot run {cmd:?}: {e}"))?;
                if !out.status.success() {
                    return Err(format!("encryption.key_command: {cmd:?} failed ({})", out.status));
                }
                let text = String::from_utf8(out.stdout)
                    .map_err(|_| format!("encryption.key_command: {cmd:?} printed something that is not text"))?;
                Key::parse(&text, "the output of encryption.key_command").map_err(|e| format!("encryption.key_command: {e}"))?
            }
            (None, None) => return Err("encryption: expected key_file or key_command".into()),
        };
        let mut old = Vec::new();
        for p in &self.old_key_files {
            let text = read_secret(p).map_err(|m| format!("encryption.old_key_files: {m}"))?;
            old.push(Key::parse(&text, &p.display().to_string()).map_err(|e| format!("encryption.old_key_files: {e}"))?);
        }
        Ok(Keyring::new(current, old))
    }
}

/// An open repository: a catalog over its objects (sealed when `encryption` is configured) and
/// the raw store underneath (what `repo copy` moves unchanged).
#[derive(Clone)]
pub struct Repository {
    pub name: String,
    pub config: RepositoryConfig,
    pub catalog: Catalog,
    pub raw: Arc<dyn ObjectStore>,
    pub remote: RemoteStore,
    pub encrypted: bool,
}

impl super::Config {
    /// The repository called `name`, opened (secrets and keys read; nothing sent yet).
    pub fn open_repository(&self, name: &str) -> Result<Repository, String> {
        let config = self
            .repositories
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.repositories.iter().map(|r| r.name.as_str()).collect();
                if known.is_empty() {
                    format!(
                        "{}: no repository {name:?}: the config has no repositories section",
                        self.path.display()
                    )
                } else {
                    format!("{}: no repository {name:?} (configured: {})", self.path.display(), known.join(", "))
                }
            })?
            .clone();
        let ring = match &self.encryption {
            Some(e) => Some(Arc::new(e.keyring().map_err(|m| format!("{}: {m}", self.path.display()))?)),
            None => None,
        };
        let remote = RemoteStore::new(config.s3_spec().map_err(|m| format!("{}: {m}", self.path.display()))?).map_err(|e| e.to_string())?;
        let raw: Arc<dyn ObjectStore> = Arc::new(remote.clone());
        let store: Arc<dyn ObjectStore> = match &ring {
            Some(r) => Arc::new(SealedStore::new(Arc::clone(&raw), Arc::clone(r))),
            None => Arc::clone(&raw),
        };
        let lock_root = crate::catalog::Layout::new(&self.catalog).repository_lock_root(name);
        Ok(Repository {
            name: name.to_string(),
            catalog: Catalog::with_store(lock_root, store),
            raw,
            remote,
            encrypted: ring.is_some(),
            config,
        })
    }

    /// What a reading command (restore, wal-get, list-backups, show-backup) reads:
    /// - `None`: the local catalog first, then each repository in order (`catalog::chain_store`);
    /// - `Some("local")`: the local catalog alone;
    /// - `Some(name)`: that repository alone.
    pub fn read_catalog(&self, repo: Option<&str>) -> Result<Catalog, String> {
        match repo {
            Some(LOCAL) => Ok(Catalog::open(&self.catalog)),
            Some(name) => Ok(self.open_repository(name)?.catalog),
            None if self.repositories.is_empty() => Ok(Catalog::open(&self.catalog)),
            None => {
                let local = Catalog::open(&self.catalog).store();
                let tails: Vec<(String, Opener)> = self
                    .repositories
                    .iter()
                    .map(|r| {
                        let (config, name) = (self.clone(), r.name.clone());
                        let open: Opener = Box::new(move || config.open_repository(&name).map(|r| r.catalog.store()));
                        (r.name.clone(), open)
                    })
                    .collect();
                Ok(Catalog::with_store(&self.catalog, Arc::new(ChainStore::new(local, tails))))
            }
        }
    }

    /// Where complete backups are read (verify, drills, the uploader's chunks): the local
    /// catalog, or with `backups_local: false` the local catalog (which keeps the indexes)
    /// followed by the repositories (which hold the chunks).
    pub fn backup_catalog(&self) -> Catalog {
        if self.backups_local {
            return Catalog::open(&self.catalog);
        }
        self.read_catalog(None).unwrap_or_else(|_| Catalog::open(&self.catalog))
    }

    /// Every repository, opened, in the config's order.
    pub fn open_repositories(&self) -> Result<Vec<Repository>, String> {
        self.repositories.iter().map(|r| self.open_repository(&r.name)).collect()
    }
}

fn read_secret(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// Names become metric labels and directory names: the server-name rules.
fn validate_repository_name(name: &str) -> Result<(), String> {
    if name == LOCAL {
        return Err(format!("{LOCAL:?} is reserved (`--repo local` means the local catalog)"));
    }
    super::values::validate_server_name(name).map_err(|m| m.replacen("server name", "repository name", 1))
}

/// The `repositories` map, in the order written (restore tries them in that order).
/// The margin added to the retention's span when `object_lock_period` is not given: the
/// interval between backups (a backup stays the window's base until the next one is old enough).
pub const DEFAULT_LOCK_MARGIN: Duration = Duration::from_secs(7 * 86_400);

/// The lock period of a repository: `given`, which must cover the retention's span, or that
/// span plus `DEFAULT_LOCK_MARGIN`. The error says what to set.
fn lock_period(policy: &Policy, given: Option<Duration>) -> Result<Duration, String> {
    match (given, policy.span()) {
        (Some(p), Some(s)) if p < s => Err(format!(
            "object_lock_period {} is shorter than the repository's retention keeps backups ({}): a locked object must stay locked as long as retention needs it",
            humantime::format_duration(p),
            humantime::format_duration(s)
        )),
        (Some(p), _) => Ok(p),
        (None, Some(s)) => Ok(s + DEFAULT_LOCK_MARGIN),
        (None, None) => Err(
            "object_lock needs object_lock_period (e.g. 45d) when the repository's retention has no recovery_window or keep_daily/weekly/monthly: how long redundancy keeps a backup depends on how often backups are taken".into(),
        ),
    }
}

/// `object_lock`, `object_lock_period`, `object_lock_mode` of one repository.
fn parse_object_lock(r: &RawRepository, retention: &Policy) -> Result<Option<ObjectLock>, String> {
    if !r.object_lock {
        if r.object_lock_period.is_some() || r.object_lock_mode.is_some() {
            return Err("object_lock_period and object_lock_mode need object_lock: true".into());
        }
        return Ok(None);
    }
    let mode = match r.object_lock_mode.as_deref() {
        None | Some("compliance") => LockMode::Compliance,
        Some("governance") => LockMode::Governance,
        Some(other) => return Err(format!("object_lock_mode: {other:?}: expected compliance or governance")),
    };
    let given = match r.object_lock_period.as_deref() {
        None => None,
        Some(t) => Some(
            parse_duration(Some(t), Duration::ZERO)
                .map_err(|m| format!("object_lock_period: {m}"))
                .and_then(|d| {
                    if d < Duration::from_secs(1) {
                        Err(format!("object_lock_period: {t:?}: at least 1s"))
                    } else {
                        Ok(d)
                    }
                })?,
        ),
    };
    let period = lock_period(retention, given)?;
    Ok(Some(ObjectLock { mode, period }))
}

pub fn parse_repositories(raw: Option<serde_yaml::Mapping>, config_dir: &Path) -> Result<Vec<RepositoryConfig>, String> {
    let Some(map) = raw else { return Ok(vec![]) };
    let mut out: Vec<RepositoryConfig> = Vec::new();
    for (k, v) in map {
        let name = k
            .as_str()
            .ok_or_else(|| "repositories: expected names (strings) as keys".to_string())?
            .to_string();
        validate_repository_name(&name).map_err(|m| format!("repositories.{name}: {m}"))?;
        let key = format!("repositories.{name}");
        let r: RawRepository = serde_yaml::from_value(v).map_err(|e| format!("{key}: {e}"))?;
        let (bucket, prefix) = parse_s3_url(&r.url).map_err(|m| format!("{key}.url: {m}"))?;
        if let Some(e) = &r.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!("{key}.endpoint: {e:?}: expected http://HOST:PORT or https://HOST"));
            }
        }
        if r.secret_access_key_file.is_some() != r.access_key_id.is_some() {
            return Err(format!(
                "{key}: access_key_id and secret_access_key_file go together (without both, the AWS_* environment and instance credentials are used)"
            ));
        }
        if out
            .iter()
            .any(|o| o.url.trim_end_matches('/') == r.url.trim_end_matches('/') && o.endpoint == r.endpoint)
        {
            return Err(format!("{key}.url: {} is already another repository", r.url));
        }
        // Only the repository's own section: the catalog's retention is not inherited (an
        // off-site copy usually keeps longer); without rules nothing is deleted there.
        let retention = super::retention::parse(r.retention.as_ref(), None, &format!("{key}.retention"))?;
        let object_lock = parse_object_lock(&r, &retention).map_err(|m| format!("{key}: {m}"))?;
        out.push(RepositoryConfig {
            name,
            url: r.url.clone(),
            bucket,
            prefix,
            endpoint: r.endpoint,
            region: r.region,
            access_key_id: r.access_key_id,
            secret_access_key_file: r.secret_access_key_file.map(|p| relative_to(config_dir, p)),
            allow_invalid_certificates: r.allow_invalid_certificates,
            retention,
            object_lock,
        });
    }
    Ok(out)
}

pub fn parse_encryption(raw: Option<RawEncryption>, config_dir: &Path) -> Result<Option<EncryptionConfig>, String> {
    let Some(r) = raw else { return Ok(None) };
    if r.key_file.is_some() == r.key_command.is_some() {
        return Err("encryption: expected exactly one of key_file and key_command".into());
    }
    let (local, local_require) = match &r.local {
        None | Some(serde_yaml::Value::Bool(false)) => (false, false),
        Some(serde_yaml::Value::Bool(true)) => (true, false),
        Some(serde_yaml::Value::String(s)) if s == "require" => (true, true),
        Some(other) => {
            return Err(format!(
                "encryption.local: expected true, false or require, got {}",
                serde_yaml::to_string(other).unwrap_or_default().trim()
            ))
        }
    };
    Ok(Some(EncryptionConfig {
        key_file: r.key_file.map(|p| relative_to(config_dir, p)),
        key_command: r.key_command,
        old_key_files: r.old_key_files.into_iter().map(|p| relative_to(config_dir, p)).collect(),
        local,
        local_require,
    }))
}

pub fn parse_partial_interval(text: Option<&str>) -> Result<Duration, String> {
    let d = parse_duration(text, DEFAULT_OFFSITE_PARTIAL_INTERVAL).map_err(|m| format!("offsite_partial_interval: {m}"))?;
    if d < Duration::from_millis(200) {
        return Err("offsite_partial_interval: must be at least 200ms".into());
    }
    Ok(d)
}

fn relative_to(dir: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() {
        dir.join(p)
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos(yaml: &str) -> Result<Vec<RepositoryConfig>, String> {
        let m: serde_yaml::Mapping = serde_yaml::from_str(yaml).unwrap();
        parse_repositories(Some(m), Path::new("/etc"))
    }

    #[test]
    fn object_lock_takes_its_period_from_retention_or_checks_the_given_one() {
        let day = Duration::from_secs(86_400);
        let r = repos("v:\n  url: s3://b/v\n  object_lock: true\n  retention: {recovery_window: 14d, keep_weekly: 4}\n").unwrap();
        assert_eq!(
            r[0].object_lock,
            Some(ObjectLock {
                mode: LockMode::Compliance,
                period: 35 * day
            })
        );
        let r = repos("v:\n  url: s3://b/v\n  object_lock: true\n  object_lock_mode: governance\n  object_lock_period: 30d\n  retention: {redundancy: 2}\n").unwrap();
        assert_eq!(
            r[0].object_lock,
            Some(ObjectLock {
                mode: LockMode::Governance,
                period: 30 * day
            })
        );
        for (yaml, wanted) in [
            (
                "v:\n  url: s3://b/v\n  object_lock: true\n  retention: {redundancy: 2}\n",
                "repositories.v: object_lock needs object_lock_period",
            ),
            (
                "v:\n  url: s3://b/v\n  object_lock: true\n  object_lock_period: 7d\n  retention: {recovery_window: 14d}\n",
                "shorter than",
            ),
            ("v:\n  url: s3://b/v\n  object_lock_period: 7d\n", "need object_lock: true"),
            (
                "v:\n  url: s3://b/v\n  object_lock: true\n  object_lock_mode: strict\n  object_lock_period: 7d\n",
                "expected compliance or governance",
            ),
            (
                "v:\n  url: s3://b/v\n  object_lock: true\n  object_lock_period: soon\n",
                "object_lock_period: \"soon\"",
            ),
        ] {
            let e = repos(yaml).unwrap_err();
            assert!(e.contains(wanted), "{e}");
        }
    }

    #[test]
    fn repositories_keep_their_order_and_check_their_keys() {
        let r = repos("z:\n  url: s3://b/one\na:\n  url: s3://b/two/\n  endpoint: http://127.0.0.1:8333\n  access_key_id: k\n  secret_access_key_file: s\n  retention: {redundancy: 3}\n").unwrap();
        assert_eq!(r.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["z", "a"]);
        assert_eq!(r[1].prefix, "two");
        assert_eq!(r[1].secret_access_key_file.as_deref(), Some(Path::new("/etc/s")));
        assert_eq!(r[1].retention.redundancy, Some(3));
        assert!(repos("a:\n  url: http://x\n").unwrap_err().contains("repositories.a.url"));
        assert!(repos("a:\n  url: s3://b/x\n  endpoint: ftp://x\n")
            .unwrap_err()
            .contains("repositories.a.endpoint"));
        assert!(repos("a:\n  url: s3://b/x\n  access_key_id: k\n")
            .unwrap_err()
            .contains("go together"));
        assert!(repos("a:\n  url: s3://b/x\n  bogus: 1\n").unwrap_err().contains("bogus"));
        assert!(repos("a:\n  url: s3://b/x\nb:\n  url: s3://b/x/\n")
            .unwrap_err()
            .contains("already another repository"));
        assert!(repos("\"a b\":\n  url: s3://b/x\n").unwrap_err().contains("repository name"));
    }

    #[test]
    fn keys_come_from_a_file_or_a_command() {
        let d = tempfile::tempdir().unwrap();
        let k = Key::generate();
        std::fs::write(d.path().join("k"), format!("{}\n", k.to_hex())).unwrap();
        let e = parse_encryption(
            Some(RawEncryption {
                key_file: Some("k".into()),
                ..Default::default()
            }),
            d.path(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.keyring().unwrap().current().id(), k.id());
        let c = EncryptionConfig {
            key_file: None,
            key_command: Some(format!("echo {}", k.to_hex())),
            old_key_files: vec![d.path().join("k")],
            local: false,
            local_require: false,
        };
        assert_eq!(c.keyring().unwrap().ids().len(), 2);
        let bad = EncryptionConfig {
            key_file: None,
            key_command: Some("exit 3".into()),
            old_key_files: vec![],
            local: false,
            local_require: false,
        };
        assert!(bad.keyring().unwrap_err().contains("failed"));
        assert!(parse_encryption(Some(RawEncryption::default()), d.path())
            .unwrap_err()
            .contains("exactly one"));
        let missing = EncryptionConfig {
            key_file: Some(d.path().join("nope")),
            key_command: None,
            old_key_files: vec![],
            local: false,
            local_require: false,
        };
        assert!(missing.keyring().unwrap_err().contains("nope"));
    }
}
