//! A repository on object storage (the S3 API), as an `ObjectStore`: the same keys as the local
//! catalog, under the repository's prefix in its bucket. The S3 protocol itself is the
//! `object_store` crate's; this module only adapts its async API to the synchronous trait the
//! catalog's readers and writers use, and gives every error the repository's name and the key.
//!
//! The async calls run on one runtime shared by every repository and never shut down: the
//! calling thread waits on a channel, so the trait can be used from any thread, also from inside
//! the daemon's own runtime (where `block_on` would panic), and no runtime is ever dropped in an
//! async context.
//!
//! Writes are verified: a single PUT's ETag is the MD5 of the body on S3 and its compatibles, and
//! it is compared with the MD5 of what was sent; when a store answers with another kind of ETag,
//! the object's size is read back instead.
//!
//! With object lock (`catalog::object_lock`), objects written once go up with a retention
//! (`catalog::s3_raw` makes those requests), a locked object is never deleted (the delete is
//! refused before it is sent: on a versioned bucket S3 would accept it as a delete marker and
//! hide the object), and a deletion removes every version of the key, so nothing unlocked
//! lingers as a hidden version.

use super::object_lock::{self, ObjectLock};
use super::s3_raw::S3Raw;
use super::store::{Capacity, ObjectStore, Usage};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, PutPayload, RetryConfig};
use std::io::{self, Write};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where and how to reach a repository (from the `repositories:` config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Spec {
    /// The repository's name in the config, for messages.
    pub name: String,
    /// `s3://bucket/prefix`.
    pub url: String,
    pub bucket: String,
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible store; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// A per-repository key pair; without it the standard `AWS_*` variables and the instance or
    /// web-identity credentials the library finds.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Accept a certificate that does not verify (a test store with a self-signed one).
    pub allow_invalid_certificates: bool,
    /// Write objects with a retention (`object_lock: true`).
    pub object_lock: Option<ObjectLock>,
}

/// Splits `s3://bucket/some/prefix` into bucket and prefix (without slashes at either end).
pub fn parse_s3_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{url:?}: expected s3://BUCKET/PREFIX (only the S3 API is supported)"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "{url:?}: {bucket:?} is not a bucket name (lowercase letters, digits, '-' and '.')"
        ));
    }
    let prefix = prefix.trim_matches('/').to_string();
    if prefix.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{url:?}: the prefix may not contain . or .. components"));
    }
    Ok((bucket.to_string(), prefix))
}

/// How long one request may take before it counts as failed (a stalled store must not hang
/// an upload or a restore forever).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pgark-s3")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the object-storage runtime: {e}"))
    })
}

/// Runs `fut` on the shared runtime and waits for it, from any thread.
fn wait<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| io::Error::other("the object-storage runtime dropped a request"))
}

/// An S3 repository.
#[derive(Clone)]
pub struct RemoteStore {
    spec: Arc<S3Spec>,
    s3: Arc<dyn object_store::ObjectStore>,
    /// Signed requests `object_store` does not make (object lock).
    raw: Arc<S3Raw>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteStore({})", self.spec.url)
    }
}

impl RemoteStore {
    /// Builds the client (nothing is sent yet).
    pub fn new(spec: S3Spec) -> io::Result<RemoteStore> {
        let options = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_allow_http(spec.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")))
            .with_allow_invalid_certificates(spec.allow_invalid_certificates);
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&spec.bucket)
            .with_client_options(options.clone())
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            });
        if let Some(e) = &spec.endpoint {
            // A custom endpoint is an S3 compatible (SeaweedFS, MinIO, Ceph): path-style requests.
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        if let Some(r) = &spec.region {
            b = b.with_region(r);
        }
        if let (Some(id), Some(secret)) = (&spec.access_key_id, &spec.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let s3 = b.build().map_err(|e| io::Error::other(format!("repository {}: {e}", spec.name)))?;
        let raw = S3Raw::new(
            &spec.name,
            &options,
            Arc::clone(s3.credentials()),
            spec.endpoint.as_deref(),
            spec.region.as_deref(),
            &spec.bucket,
        )?;
        Ok(RemoteStore {
            spec: Arc::new(spec),
            s3: Arc::new(s3),
            raw: Arc::new(raw),
        })
    }

    pub fn spec(&self) -> &S3Spec {
        &self.spec
    }

    fn path(&self, key: &str) -> ObjectPath {
        debug_assert!(!key.split('/').any(|c| c == ".."), "key {key:?} escapes the repository");
        if self.spec.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.spec.prefix))
        }
    }

    /// The key of an object path (the prefix taken off).
    fn key_of(&self, p: &ObjectPath) -> String {
        let s = p.as_ref();
        if self.spec.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.spec.prefix)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| s.to_string())
        }
    }

    fn err(&self, op: &str, key: &str, e: object_store::Error) -> io::Error {
        io::Error::other(format!("repository {} ({}): {op} {key}: {e}", self.spec.name, self.spec.url))
    }

    /// Stores `data` under `key` and checks what the store received. With object lock, an
    /// object written once goes up locked; one rewritten in place leaves no older version.
    fn put_verified(&self, key: &str, data: Vec<u8>) -> io::Result<()> {
        use md5::{Digest, Md5};
        let digest = hex(&Md5::digest(&data));
        let len = data.len() as u64;
        let (s3, path) = (Arc::clone(&self.s3), self.path(key));
        let e_tag = match self.spec.object_lock {
            Some(lock) if object_lock::is_locked_kind(key) => {
                let (raw, path) = (Arc::clone(&self.raw), path.to_string());
                let until = chrono::Utc::now() + lock.period;
                wait(async move { raw.put_locked(&path, data, lock.mode, until).await })??
            }
            _ => {
                let res = wait(async move { s3.put(&path, PutPayload::from(data)).await })?.map_err(|e| self.err("PUT", key, e))?;
                if self.spec.object_lock.is_some() {
                    self.delete_versions(key, false)?;
                }
                res.e_tag
            }
        };
        match e_tag.as_deref().map(|t| t.trim_matches('"').to_ascii_lowercase()) {
            Some(t) if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
                if t != digest {
                    return Err(io::Error::other(format!(
                        "repository {}: PUT {key}: the store holds other bytes than were sent (ETag {t}, MD5 {digest})",
                        self.spec.name
                    )));
                }
            }
            _ => match self.size(key)? {
                Some(n) if n == len => {}
                other => {
                    return Err(io::Error::other(format!(
                        "repository {}: PUT {key}: {len} bytes sent, the store has {other:?}",
                        self.spec.name
                    )))
                }
            },
        }
        Ok(())
    }

    /// Every object under `prefix`, at any depth: key, size and last-modified time.
    pub fn list_recursive(&self, prefix: &str) -> io::Result<Vec<(String, u64, i64)>> {
        let (s3, path) = (Arc::clone(&self.s3), self.path(prefix.trim_end_matches('/')));
        let items = wait(async move {
            let mut out = Vec::new();
            let mut stream = s3.list(Some(&path));
            while let Some(m) = stream.next().await {
                out.push(m?);
            }
            Ok::<_, object_store::Error>(out)
        })?
        .map_err(|e| self.err("LIST", prefix, e))?;
        let mut out: Vec<(String, u64, i64)> = items
            .iter()
            .map(|m| (self.key_of(&m.location), m.size, m.last_modified.timestamp()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes the versions of `key` (all of them, or only the older ones): on a versioned
    /// bucket a plain DELETE only hides an object behind a delete marker.
    fn delete_versions(&self, key: &str, all: bool) -> io::Result<()> {
        for v in self.versions(key)? {
            if all || !v.latest {
                self.delete_version(key, &v.id)?;
            }
        }
        Ok(())
    }

    /// Every version (and delete marker) of `key` on a versioned bucket.
    pub fn versions(&self, key: &str) -> io::Result<Vec<super::s3_raw::Version>> {
        let (raw, path) = (Arc::clone(&self.raw), self.path(key).to_string());
        wait(async move { raw.versions(&path).await })?
    }

    /// Deletes one version of `key` for good (the store refuses a locked one).
    pub fn delete_version(&self, key: &str, version: &str) -> io::Result<()> {
        let (raw, path, version) = (Arc::clone(&self.raw), self.path(key).to_string(), version.to_string());
        wait(async move { raw.delete_version(&path, &version).await })?
    }

    /// The bucket's object lock configuration: `None` when it is not enabled, else the default
    /// retention rule if one is set (`pgark check`).
    pub fn bucket_lock(&self) -> io::Result<Option<Option<String>>> {
        let raw = Arc::clone(&self.raw);
        wait(async move { raw.bucket_lock().await })?
    }

    /// Whether the bucket answers (a LIST of at most one key under the prefix).
    pub fn probe(&self) -> io::Result<()> {
        let (s3, path) = (Arc::clone(&self.s3), self.path(""));
        wait(async move { s3.list_with_delimiter(Some(&path)).await.map(|_| ()) })?.map_err(|e| self.err("LIST", "", e))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl ObjectStore for RemoteStore {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.put_verified(key, data.to_vec())
    }

    /// Objects pgark writes are bounded (a chunk, a compressed segment, an index): built in
    /// memory, then sent in one request, which S3 makes visible atomically.
    fn put_from(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        let mut buf = Vec::new();
        fill(&mut buf)?;
        self.put_verified(key, buf)
    }

    fn put_once(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Option<u64>> {
        if self.size(key)?.is_some() {
            return Ok(None);
        }
        let mut buf = Vec::new();
        fill(&mut buf)?;
        let n = buf.len() as u64;
        self.put_verified(key, buf)?;
        Ok(Some(n))
    }

    /// A PUT is durable when it returns.
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let (s3, path) = (Arc::clone(&self.s3), self.path(key));
        match wait(async move { s3.head(&path).await })? {
            Ok(m) => Ok(Some(m.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("HEAD", key, e)),
        }
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let (s3, path) = (Arc::clone(&self.s3), self.path(key));
        let got = wait(async move {
            match s3.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(e) => Err(e),
            }
        })?;
        match got {
            Ok(b) => Ok(b.map(|b| b.to_vec())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("GET", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (s3, path) = (Arc::clone(&self.s3), self.path(prefix.trim_end_matches('/')));
        let res = wait(async move { s3.list_with_delimiter(Some(&path)).await })?.map_err(|e| self.err("LIST", prefix, e))?;
        let mut out: Vec<String> = res
            .common_prefixes
            .iter()
            .chain(res.objects.iter().map(|o| &o.location))
            .map(|p| self.key_of(p))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn list_all(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self.list_recursive(prefix)?.into_iter().map(|(k, _, _)| k).collect())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        if self.spec.object_lock.is_some() {
            if let Some(until) = self.locked_until(key)?.filter(|&t| t > crate::util::time::unix_now() as i64) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "repository {}: {key} is locked until {} (object lock); not deleted",
                        self.spec.name,
                        crate::util::time::format_utc(until as u64)
                    ),
                ));
            }
            return self.delete_versions(key, true);
        }
        let (s3, path) = (Arc::clone(&self.s3), self.path(key));
        match wait(async move { s3.delete(&path).await })? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err("DELETE", key, e)),
        }
    }

    fn locked_until(&self, key: &str) -> io::Result<Option<i64>> {
        if self.spec.object_lock.is_none() || !object_lock::is_locked_kind(key) {
            return Ok(None);
        }
        let (raw, path) = (Arc::clone(&self.raw), self.path(key).to_string());
        Ok(wait(async move { raw.retained_until(&path).await })??.map(|t| t.timestamp()))
    }

    fn retain(&self, key: &str) -> io::Result<()> {
        let Some(lock) = self.spec.object_lock.filter(|_| object_lock::is_locked_kind(key)) else {
            return Ok(());
        };
        let now = crate::util::time::unix_now() as i64;
        if !object_lock::needs_relock(&lock, self.locked_until(key)?, now) {
            return Ok(());
        }
        let (raw, path) = (Arc::clone(&self.raw), self.path(key).to_string());
        let until = chrono::Utc::now() + lock.period;
        wait(async move { raw.extend(&path, lock.mode, until).await })?
    }

    fn usage(&self, prefix: &str) -> io::Result<Usage> {
        let items = self.list_recursive(prefix)?;
        Ok(Usage {
            objects: items.len() as u64,
            bytes: items.iter().map(|(_, n, _)| n).sum(),
        })
    }

    fn capacity(&self) -> io::Result<Option<Capacity>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(parse_s3_url("s3://b/p/q/").unwrap(), ("b".into(), "p/q".into()));
        assert_eq!(parse_s3_url("s3://bucket").unwrap(), ("bucket".into(), "".into()));
        assert!(parse_s3_url("gs://b/p").unwrap_err().contains("s3://BUCKET/PREFIX"));
        assert!(parse_s3_url("s3:///p").is_err());
        assert!(parse_s3_url("s3://Bad_Bucket/p").unwrap_err().contains("bucket name"));
        assert!(parse_s3_url("s3://b/../x").is_err());
    }
}
