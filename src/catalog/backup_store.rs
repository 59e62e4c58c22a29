//! Base backups in the catalog: content-addressed chunks, one index per backup, and the rules that
//! make a backup either wholly visible or not there at all.
//!
//! ```text
//! <server>/chunks/<ab>/<sha256>.zst    file contents, cut into chunks of up to CHUNK_SIZE bytes,
//!                                      named by the SHA-256 of the raw bytes (.raw when stored
//!                                      uncompressed); shared by every backup that has the bytes
//! <server>/backups/<id>.running        intent record while a backup is being taken (pid, time)
//! <server>/backups/<id>.manifest       PostgreSQL's backup_manifest, as received
//! <server>/backups/<id>.json           the backup's index: written last, atomically. A backup
//!                                      exists if and only if this object exists.
//! <server>/backup.lock                 flock: one backup per server at a time
//! ```
//!
//! Chunks are written without an fsync each (a backup has thousands); one `sync` of the store
//! makes them all durable before the index is published. A chunk not referenced by a published
//! index is never trusted for deduplication and is removed by `collect_garbage`, so a crash in
//! the middle of a backup can leave nothing that a later backup or restore would read.

use super::store::ObjectStore;
use crate::fsio::durable;
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegSize};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;

/// Files are cut into chunks this large: big enough that per-object overhead is small, small
/// enough that one 1 GiB relation segment spreads over every compression worker and that a
/// change to a few pages re-stores 4 MiB, not the whole segment.
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;

pub const INDEX_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSource {
    /// The WAL is in the catalog's WAL directory, streamed by `pgark serve`.
    Catalog,
    /// The server appended the WAL to the backup itself (`pg_wal/` files in the backup).
    Backup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Object name under `<server>/chunks/`, e.g. `ab/ab12….zst`.
    pub object: String,
    /// Raw (uncompressed) bytes.
    pub size: u64,
    /// Bytes as stored.
    pub stored: u64,
    /// BLAKE3 of the raw bytes (hex): lets `restore --delta` check an existing copy of the chunk
    /// at several GB/s with a 256-bit hash (SHA-256, the name, is about three times slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// CRC-32C of the raw bytes: lets an incremental backup take the chunk over into a new file
    /// (whose CRC is combined from its chunks') without reading it. Absent in older indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

/// What a stored entry is. The JSON names (`file`, `directory`, `symlink`) are part of the index
/// format; the tar parser's own kind is mapped into this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
}

/// One tablespace of a backup as its index records it (the main data directory has no oid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceRecord {
    pub oid: Option<u32>,
    /// Where it was on the server.
    pub location: Option<String>,
    /// The server's size estimate in bytes.
    pub estimated_bytes: Option<u64>,
    /// Its name in pg_tablespace, when pgark could read it (restore remaps by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Path relative to the data directory; tablespace files under `pg_tblspc/<oid>/`.
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
    /// CRC-32C of the contents (what the backup_manifest check compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
    /// Bytes its chunks take in the catalog (shared chunks counted in full).
    #[serde(default)]
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
}

/// The index of one published backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupIndex {
    pub format: u32,
    pub id: String,
    pub server: String,
    pub label: String,
    /// Unix seconds.
    pub start_time: u64,
    pub end_time: u64,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub start_timeline: TimelineId,
    pub end_timeline: TimelineId,
    /// `server_version_num`, e.g. 150018.
    pub pg_version: u32,
    /// As text: JSON consumers (jq) lose precision on integers above 2^53.
    pub system_identifier: String,
    pub wal_segment_size: u64,
    pub from_standby: bool,
    pub checkpoint: String,
    pub wal_source: WalSource,
    pub compression: String,
    /// Sum of the files' sizes.
    pub original_bytes: u64,
    /// Bytes this backup added to the catalog (new chunks only).
    pub stored_new_bytes: u64,
    /// Bytes of every chunk it references (what it would cost alone).
    pub stored_total_bytes: u64,
    pub tablespaces: Vec<TablespaceRecord>,
    pub files: Vec<StoredFile>,
    /// Set when the server sent only the blocks changed since `parent` (PostgreSQL 17+
    /// incremental backup); the files here are nevertheless whole, rebuilt at backup time, so
    /// the backup restores, verifies and is deleted on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalOrigin>,
    /// Bytes of file data the server sent (absent in older indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_bytes: Option<u64>,
}

/// What an incremental backup was taken against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalOrigin {
    /// The backup whose manifest was sent to the server (UPLOAD_MANIFEST) and whose files
    /// supplied the unchanged blocks.
    pub parent: String,
    /// `INCREMENTAL FROM LSN` of the backup_label: the parent's start.
    pub from_lsn: Lsn,
    /// The newest full backup (taken whole from the server) this one descends from.
    pub full: String,
    /// Files the server sent as changed blocks only, and those blocks' bytes.
    pub incremental_files: u64,
    pub incremental_bytes: u64,
}

impl BackupIndex {
    /// `full` or `incremental`, as `list-backups` shows it.
    pub fn kind(&self) -> &'static str {
        if self.incremental.is_some() {
            "incremental"
        } else {
            "full"
        }
    }

    pub fn file_count(&self) -> usize {
        self.files.iter().filter(|f| f.kind == FileKind::File).count()
    }

    /// WAL segments the backup needs to be consistent: start segment to end segment.
    pub fn required_wal(&self) -> Vec<WalFileName> {
        let Ok(seg) = WalSegSize::new(self.wal_segment_size) else {
            return vec![];
        };
        required_wal(seg, (self.start_lsn, self.start_timeline), (self.end_lsn, self.end_timeline))
    }
}

/// The segments from the start's segment to the one holding the byte before the end (an end
/// exactly on a segment boundary needs nothing of the next segment; PostgreSQL's
/// `XLByteToPrevSeg`). The end segment is on the end timeline, the others on the start's.
pub fn required_wal(seg: WalSegSize, start: (Lsn, TimelineId), end: (Lsn, TimelineId)) -> Vec<WalFileName> {
    let (first, last) = segment_range(seg, start.0, end.0);
    (first..=last)
        .map(|n| WalFileName::new(if n == last { end.1 } else { start.1 }, crate::pg::SegNo(n)))
        .collect()
}

/// First and last segment numbers of the WAL from `start` up to (not including) `end`.
pub fn segment_range(seg: WalSegSize, start: Lsn, end: Lsn) -> (u64, u64) {
    let first = seg.segno(start).0;
    let last = if end.0 > start.0 { seg.segno(Lsn(end.0 - 1)).0 } else { first };
    (first, last.max(first))
}

/// Whether the WAL a backup needs is in the catalog.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WalPresence {
    pub first: String,
    pub last: String,
    pub present: bool,
    /// Segments not found (empty when present).
    pub missing: Vec<String>,
}

pub fn chunks_key(server: &str) -> String {
    format!("{server}/chunks")
}

pub fn chunk_key(server: &str, object: &str) -> String {
    format!("{server}/chunks/{object}")
}

pub fn backups_key(server: &str) -> String {
    format!("{server}/backups")
}

pub fn index_key(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}.json")
}

pub fn manifest_key(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}.manifest")
}

/// The result of the last `pgark verify` of a backup (written by `verify::record`).
pub fn verify_key(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}.verify")
}

pub fn running_key(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}.running")
}

/// The object name of a chunk with this SHA-256 (hex).
pub fn chunk_object(hash_hex: &str, compressed: bool) -> String {
    format!("{}/{hash_hex}.{}", &hash_hex[..2], if compressed { "zst" } else { "raw" })
}

#[derive(Debug, thiserror::Error)]
pub enum BackupStoreError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("backup index {key}: {reason}")]
    BadIndex { key: String, reason: String },
    #[error("server {server} has no backup {id:?}; `pgark list-backups` shows the ids")]
    NotFound { server: String, id: String },
}

/// Ids of the published backups of `server`, oldest first.
pub fn list_ids(store: &dyn ObjectStore, server: &str) -> io::Result<Vec<String>> {
    let mut ids: Vec<String> = store
        .list(&backups_key(server))?
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().and_then(|n| n.strip_suffix(".json")).map(str::to_string))
        .collect();
    ids.sort_by(|a, b| id_order(a).cmp(&id_order(b)));
    Ok(ids)
}

/// Ids are start times (`20261123T231500Z`), with `-2`, `-3`… for a second backup started in
/// the same second. Sorted as names, `…Z-2` would come before `…Z` (`-` sorts before `.json`'s
/// dot, and before nothing at all as text): this key puts it after.
fn id_order(id: &str) -> (&str, u32) {
    match id.rsplit_once('-') {
        Some((base, n)) if n.parse::<u32>().is_ok() => (base, n.parse().unwrap_or(0)),
        _ => (id, 1),
    }
}

pub fn load(store: &dyn ObjectStore, server: &str, id: &str) -> Result<BackupIndex, BackupStoreError> {
    let key = index_key(server, id);
    let bytes = store.get(&key)?.ok_or_else(|| BackupStoreError::NotFound {
        server: server.to_string(),
        id: id.to_string(),
    })?;
    decode_index(&key, id, &bytes)
}

/// Parses a stored index (`key` and `id` for the messages and the identity check).
pub fn decode_index(key: &str, id: &str, bytes: &[u8]) -> Result<BackupIndex, BackupStoreError> {
    let key = key.to_string();
    let idx: BackupIndex = serde_json::from_slice(bytes).map_err(|e| BackupStoreError::BadIndex {
        key: key.clone(),
        reason: format!("not a valid index: {e}"),
    })?;
    if idx.format != INDEX_FORMAT || idx.id != id {
        return Err(BackupStoreError::BadIndex {
            key,
            reason: format!("format {} id {:?} (expected format {INDEX_FORMAT}, id {id:?})", idx.format, idx.id),
        });
    }
    Ok(idx)
}

/// The newest published backup of `server`, if any (one index read).
pub fn newest(store: &dyn ObjectStore, server: &str) -> Result<Option<BackupIndex>, BackupStoreError> {
    match list_ids(store, server)?.last() {
        Some(id) => load(store, server, id).map(Some),
        None => Ok(None),
    }
}

/// What the daemon shows of a backup (metrics, status), without its file list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: String,
    pub start_time: u64,
    pub end_time: u64,
    pub original_bytes: u64,
    pub stored_new_bytes: u64,
}

/// The facts of every published backup of one server, kept between looks: a refresh lists the
/// index objects and reads only those it has not seen (an index is written once and never
/// changed), so the daemon's periodic work costs O(new backups), not O(history) (audit finding
/// 6: it used to parse every index, file lists included, every 15 seconds).
#[derive(Debug, Default)]
pub struct BackupFactsCache {
    known: BTreeMap<String, BackupFacts>,
}

impl BackupFactsCache {
    /// Brings the cache up to date; returns the backups oldest first.
    pub fn refresh(&mut self, store: &dyn ObjectStore, server: &str) -> Result<Vec<BackupFacts>, BackupStoreError> {
        let ordered = list_ids(store, server)?;
        let ids: BTreeSet<String> = ordered.iter().cloned().collect();
        self.known.retain(|id, _| ids.contains(id));
        for id in ids {
            if !self.known.contains_key(&id) {
                let idx = load(store, server, &id)?;
                self.known.insert(
                    id.clone(),
                    BackupFacts {
                        id,
                        start_time: idx.start_time,
                        end_time: idx.end_time,
                        original_bytes: idx.original_bytes,
                        stored_new_bytes: idx.stored_new_bytes,
                    },
                );
            }
        }
        Ok(ordered.iter().filter_map(|id| self.known.get(id).cloned()).collect())
    }
}

/// Every published backup of `server`, oldest first.
pub fn load_all(store: &dyn ObjectStore, server: &str) -> Result<Vec<BackupIndex>, BackupStoreError> {
    list_ids(store, server)?.iter().map(|id| load(store, server, id)).collect()
}

/// Publishes a backup: the manifest was stored earlier; the chunks must already be durable
/// (`ObjectStore::sync`). Writing the index is the single atomic step that makes it exist.
pub fn publish(store: &dyn ObjectStore, index: &BackupIndex) -> io::Result<()> {
    // Compact: an index lists every chunk, and pretty-printing made it about a third larger.
    let json = serde_json::to_vec(index).map_err(io::Error::other)?;
    store.put(&index_key(&index.server, &index.id), &json)?;
    store.delete(&running_key(&index.server, &index.id))
}

/// Removes a published backup: the index first (so it stops existing in one step), then its
/// manifest, pin and verify result; chunks no other backup uses are removed by
/// `collect_garbage`.
pub fn delete(store: &dyn ObjectStore, server: &str, id: &str) -> io::Result<()> {
    store.delete(&index_key(server, id))?;
    match store.delete(&manifest_key(server, id)) {
        // Object lock: written just before the index, it may stay locked a moment longer; the
        // garbage collection removes it once it is not.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => tracing::info!(error = %e, "manifest left for a later prune"),
        other => other?,
    }
    store.delete(&super::pin::key(server, id))?;
    store.delete(&verify_key(server, id))
}

/// What `collect_garbage` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Garbage {
    pub unfinished_backups: usize,
    pub chunks: usize,
    pub bytes: u64,
}

/// Removes what interrupted backups left (intent records, manifests without an index) and every
/// chunk no published backup references. The caller holds the server's backup lock, so no
/// backup is being built meanwhile.
pub fn collect_garbage(store: &dyn ObjectStore, server: &str) -> Result<Garbage, BackupStoreError> {
    let mut g = Garbage::default();
    // Temporary files of killed writers beside the state file (a backup's server.state update).
    for key in store.list(server)? {
        let name = key.rsplit('/').next().unwrap_or_default();
        if durable::is_stale_tmp(name, false) {
            store.delete(&key)?;
        }
    }
    let ids: BTreeSet<String> = list_ids(store, server)?.into_iter().collect();
    for key in store.list(&backups_key(server))? {
        let name = key.rsplit('/').next().unwrap_or_default();
        let companion = name.strip_suffix(".manifest").or_else(|| name.strip_suffix(".keep"));
        let orphan = match (name.strip_suffix(".running"), companion) {
            (Some(_), _) => true,
            (_, Some(id)) => !ids.contains(id),
            // A verify result outlives nothing: orphaned only once its index is gone.
            _ => match name.strip_suffix(".verify") {
                Some(id) => !ids.contains(id),
                None => durable::is_stale_tmp(name, false),
            },
        };
        if orphan && is_locked(store, &key)? {
            continue;
        }
        if orphan {
            tracing::info!(server, object = %key, "removing what an interrupted backup left");
            if name.ends_with(".running") {
                g.unfinished_backups += 1;
            }
            store.delete(&key)?;
        }
    }
    let mut referenced = BTreeSet::new();
    for id in &ids {
        for f in load(store, server, id)?.files {
            referenced.extend(f.chunks.into_iter().map(|c| c.object));
        }
    }
    for dir in store.list(&chunks_key(server))? {
        for key in store.list(&dir)? {
            let object = key.strip_prefix(&format!("{}/", chunks_key(server))).unwrap_or(&key).to_string();
            if !referenced.contains(&object) {
                if is_locked(store, &key)? {
                    continue; // a repository's object lock: collected once it ends
                }
                g.chunks += 1;
                g.bytes += store.size(&key)?.unwrap_or(0);
                store.delete(&key)?;
            }
        }
    }
    Ok(g)
}

/// Whether object lock protects `key` now (never on a store without it: no request made).
fn is_locked(store: &dyn ObjectStore, key: &str) -> io::Result<bool> {
    Ok(store.locked_until(key)?.is_some_and(|t| t > crate::util::time::unix_now() as i64))
}

/// Chunks of the newest published backup, by SHA-256 hex: what a new backup may reuse.
pub fn reusable_chunks(store: &dyn ObjectStore, server: &str) -> Result<BTreeMap<String, ChunkRef>, BackupStoreError> {
    let mut out = BTreeMap::new();
    if let Some(id) = list_ids(store, server)?.last() {
        for f in load(store, server, id)?.files {
            for c in f.chunks {
                if let Some(hash) = c.object.rsplit('/').next().and_then(|n| n.split('.').next()) {
                    out.insert(hash.to_string(), c);
                }
            }
        }
    }
    Ok(out)
}

/// Whether the catalog holds WAL segment `name` of `server`: complete (plain or `.zst`) or as the
/// open `.partial`.
pub fn wal_segment_stored(store: &dyn ObjectStore, server: &str, name: &str) -> bool {
    // In the order a segment's names follow one another (`.partial`, renamed to the plain name
    // at the boundary, `.zst` written before the plain file goes): each name appears before the
    // previous one disappears, so a segment moving on while it is looked for is still found.
    // In another order a boundary between two looks made it seem missing (a CI failure: a
    // backup refused for "WAL ... neither in the catalog nor in the backup").
    [".partial", "", ".zst"]
        .iter()
        .any(|ext| matches!(store.size(&format!("{}/{name}{ext}", super::Layout::wal_key(server))), Ok(Some(_))))
}

/// The complete WAL segments (plain or `.zst`, not a `.partial`) `index` needs that `store`
/// lacks; empty when the backup carries its own WAL. What a repository must hold before the
/// backup's index is written there: an index in a repository means "restorable from here".
pub fn missing_complete_wal(store: &dyn ObjectStore, index: &BackupIndex) -> Vec<String> {
    let Ok(seg) = WalSegSize::new(index.wal_segment_size) else {
        return vec!["(invalid wal_segment_size in the index)".into()];
    };
    if index.wal_source == WalSource::Backup {
        return vec![];
    }
    let dir = super::Layout::wal_key(&index.server);
    index
        .required_wal()
        .iter()
        .map(|n| n.format(seg))
        .filter(|n| {
            !["", ".zst"]
                .iter()
                .any(|ext| matches!(store.size(&format!("{dir}/{n}{ext}")), Ok(Some(_))))
        })
        .collect()
}

/// Checks the catalog's WAL directory for the segments a backup needs. Read-only (safe while
/// `pgark serve` writes): a segment counts if it is complete (plain or `.zst`) or is the open
/// `.partial` the receiver flushed past the backup's end before the backup was published.
pub fn wal_presence(store: &dyn ObjectStore, index: &BackupIndex) -> WalPresence {
    let Ok(seg) = WalSegSize::new(index.wal_segment_size) else {
        return WalPresence {
            first: String::new(),
            last: String::new(),
            present: false,
            missing: vec!["(invalid wal_segment_size in the index)".into()],
        };
    };
    let names: Vec<String> = index.required_wal().iter().map(|n| n.format(seg)).collect();
    if index.wal_source == WalSource::Backup {
        return WalPresence {
            first: names.first().cloned().unwrap_or_default(),
            last: names.last().cloned().unwrap_or_default(),
            present: true,
            missing: vec![],
        };
    }
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !wal_segment_stored(store, &index.server, n))
        .cloned()
        .collect();
    WalPresence {
        first: names.first().cloned().unwrap_or_default(),
        last: names.last().cloned().unwrap_or_default(),
        present: missing.is_empty(),
        missing,
    }
}

/// Whether `idx` is the only backup of its server that can be restored now: deleting it would
/// leave nothing to restore from (the CLI refuses without `--force`; retention never does it).
pub fn is_only_usable(store: &dyn ObjectStore, idx: &BackupIndex) -> Result<bool, BackupStoreError> {
    if !wal_presence(store, idx).present {
        return Ok(false);
    }
    // An index of another backup that does not load counts as not usable (it cannot be restored).
    let others: Vec<BackupIndex> = list_ids(store, &idx.server)?
        .iter()
        .filter(|id| **id != idx.id)
        .filter_map(|id| load(store, &idx.server, id).ok())
        .collect();
    Ok(!others.iter().any(|b| wal_presence(store, b).present))
}

/// A file's CRC-32C from its chunks' CRCs, in order.
pub fn combine_crc(chunks: &[(u32, u64)]) -> u32 {
    chunks
        .iter()
        .fold(0u32, |acc, &(crc, len)| crate::util::crc32c_combine::crc32c_combine(acc, crc, len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    pub fn index(id: &str, chunks: &[&str]) -> BackupIndex {
        BackupIndex {
            format: INDEX_FORMAT,
            id: id.into(),
            server: "main".into(),
            label: "t".into(),
            start_time: 1,
            end_time: 2,
            start_lsn: Lsn(0x2000028),
            end_lsn: Lsn(0x3000100),
            start_timeline: TimelineId(1),
            end_timeline: TimelineId(1),
            pg_version: 150000,
            system_identifier: "1".into(),
            wal_segment_size: 16 * 1024 * 1024,
            from_standby: false,
            checkpoint: "fast".into(),
            wal_source: WalSource::Catalog,
            compression: "zstd:1".into(),
            original_bytes: 10,
            stored_new_bytes: 5,
            stored_total_bytes: 5,
            tablespaces: vec![],
            incremental: None,
            received_bytes: None,
            files: vec![StoredFile {
                path: "f".into(),
                kind: FileKind::File,
                mode: 0o600,
                mtime: 0,
                size: 10,
                crc32c: Some(0),
                stored_bytes: 5,
                link_target: None,
                chunks: chunks
                    .iter()
                    .map(|c| ChunkRef {
                        object: c.to_string(),
                        size: 10,
                        stored: 5,
                        blake3: None,
                        crc32c: None,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn publish_gc_and_delete() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        for obj in ["aa/aa1.zst", "bb/bb2.zst", "cc/cc3.zst"] {
            store.put(&chunk_key("main", obj), b"x").unwrap();
        }
        store.put(&running_key("main", "B"), b"pid").unwrap();
        store.put(&manifest_key("main", "B"), b"{}").unwrap();
        store.put(&manifest_key("main", "A"), b"{}").unwrap();
        store.put(&verify_key("main", "A"), b"{}").unwrap();
        store.put(&verify_key("main", "C"), b"{}").unwrap();
        publish(&store, &index("A", &["aa/aa1.zst"])).unwrap();
        assert_eq!(list_ids(&store, "main").unwrap(), vec!["A"]);
        let g = collect_garbage(&store, "main").unwrap();
        assert_eq!((g.unfinished_backups, g.chunks), (1, 2));
        assert!(store.get(&chunk_key("main", "aa/aa1.zst")).unwrap().is_some());
        assert!(store.get(&manifest_key("main", "B")).unwrap().is_none());
        assert!(
            store.get(&verify_key("main", "A")).unwrap().is_some(),
            "a published backup's verify result is kept"
        );
        assert!(
            store.get(&verify_key("main", "C")).unwrap().is_none(),
            "an orphaned verify result is removed"
        );
        assert!(reusable_chunks(&store, "main").unwrap().contains_key("aa1"));
        delete(&store, "main", "A").unwrap();
        assert!(matches!(load(&store, "main", "A"), Err(BackupStoreError::NotFound { .. })));
        assert!(store.get(&verify_key("main", "A")).unwrap().is_none());
        assert_eq!(collect_garbage(&store, "main").unwrap().chunks, 1);
    }

    /// Audit finding 6: the daemon's periodic refresh reads only indexes it has not seen.
    #[test]
    fn backup_facts_refresh_costs_only_what_is_new() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::catalog::store::counting::CountingStore::new(LocalStore::new(d.path()));
        for id in ["A", "B", "C"] {
            publish(&store, &index(id, &[])).unwrap();
        }
        let mut cache = BackupFactsCache::default();
        let reads = || store.gets();
        assert_eq!(cache.refresh(&store, "main").unwrap().len(), 3);
        let after_first = reads();
        assert_eq!(after_first, 3);
        for _ in 0..10 {
            cache.refresh(&store, "main").unwrap();
        }
        assert_eq!(reads(), after_first, "unchanged indexes were read again");
        publish(&store, &index("D", &[])).unwrap();
        delete(&store, "main", "A").unwrap();
        let ids: Vec<String> = cache.refresh(&store, "main").unwrap().into_iter().map(|f| f.id).collect();
        assert_eq!(ids, vec!["B", "C", "D"]);
        assert_eq!(reads(), after_first + 1, "only the new index is read");
    }

    #[test]
    fn ids_of_one_second_sort_in_the_order_they_were_taken() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        for id in [
            "20261203T054128Z-2",
            "20261203T054128Z-10",
            "20261203T054129Z",
            "20261203T054128Z",
            "20261203T054127Z",
        ] {
            publish(&store, &index(id, &[])).unwrap();
        }
        assert_eq!(
            list_ids(&store, "main").unwrap(),
            vec![
                "20261203T054127Z",
                "20261203T054128Z",
                "20261203T054128Z-2",
                "20261203T054128Z-10",
                "20261203T054129Z"
            ]
        );
    }

    #[test]
    fn wal_presence_names_missing_segments() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let idx = index("A", &[]);
        let p = wal_presence(&store, &idx);
        assert_eq!(p.missing, vec!["000000010000000000000002", "000000010000000000000003"]);
        store.put("main/wal/000000010000000000000002.zst", b"").unwrap();
        store.put("main/wal/000000010000000000000003.partial", b"").unwrap();
        assert!(wal_presence(&store, &idx).present);
    }
}
