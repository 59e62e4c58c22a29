//! `pgark repo copy`: one repository's backups and WAL into another, as stored: compressed,
//! and sealed when encrypted (an object's key is its name inside the repository, the same in
//! both, so sealed bytes open in either with the same keyring). Nothing is decompressed,
//! re-compressed, decrypted or re-encrypted.
//!
//! Order as for every writer of a catalog: WAL and the state file first, then per backup the
//! chunks the target lacks, the manifest, and the index last, under the target's backup lock
//! (a prune of the target must not collect chunks whose index is not there yet). Objects the
//! target has already are skipped, so an interrupted copy is finished by running it again.

use super::upload::copy_objects;
use crate::catalog::backup_store;
use crate::catalog::lock::CatalogLock;
use crate::catalog::store::ObjectStore;
use crate::catalog::{state, Catalog, Layout};
use serde::Serialize;
use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::AtomicBool;

/// One side of a copy: the raw (sealed) store, and the directory its locks are taken in.
pub struct Side<'a> {
    pub name: &'a str,
    pub raw: &'a dyn ObjectStore,
    pub catalog: &'a Catalog,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CopyReport {
    pub server: String,
    pub wal_objects: usize,
    pub backups: Vec<String>,
    pub chunks: usize,
    pub bytes: u64,
    /// Backups the target had already.
    pub backups_present: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Locked(String),
}

const WORKERS: usize = 4;

/// Copies everything of `server` that `to` lacks.
pub fn copy_server(from: &Side, to: &Side, server: &str) -> Result<CopyReport, CopyError> {
    let stop = AtomicBool::new(false);
    let mut report = CopyReport {
        server: server.to_string(),
        ..Default::default()
    };
    if let Some(b) = from.raw.get(&state::key(server))? {
        to.raw.put(&state::key(server), &b)?;
    }
    let wal_dir = Layout::wal_key(server);
    let have: BTreeSet<String> = to.raw.list(&wal_dir)?.into_iter().collect();
    let wal: Vec<String> = from
        .raw
        .list(&wal_dir)?
        .into_iter()
        // A partial object is a snapshot that changes: copied only while the target has no
        // complete form of that segment.
        .filter(|k| !have.contains(k))
        .filter(|k| match k.strip_suffix(".partial.zst") {
            Some(base) => !have.contains(&format!("{base}.zst")) && !have.contains(base),
            None => true,
        })
        .collect();
    let (done, failed) = copy_objects(from.raw, to.raw, &wal, WORKERS, &stop, &|_, _| {});
    report.wal_objects = done.len();
    report.bytes += done.iter().map(|(_, n)| n).sum::<u64>();
    if let Some(e) = failed {
        return Err(e.into());
    }
    let present: BTreeSet<String> = backup_store::list_ids(to.raw, server)?.into_iter().collect();
    let ids = backup_store::list_ids(from.raw, server)?;
    if ids.iter().all(|id| present.contains(id)) {
        report.backups_present = ids.len();
        return Ok(report);
    }
    let _lock =
        CatalogLock::acquire_backup(to.catalog.root(), server).map_err(|e| CopyError::Locked(format!("repository {}: {e}", to.name)))?;
    let chunk_dir = backup_store::chunks_key(server);
    let mut chunks: BTreeSet<String> = BTreeSet::new();
    for dir in to.raw.list(&chunk_dir)? {
        chunks.extend(to.raw.list(&dir)?);
    }
    for id in ids {
        if present.contains(&id) {
            report.backups_present += 1;
            continue;
        }
        // The index is read through the source's sealed view only to learn its chunks: the
        // raw bytes are what is copied.
        let index_key = backup_store::index_key(server, &id);
        let index = match backup_store::load(from.catalog.store().as_ref(), server, &id) {
            Ok(i) => i,
            Err(e) => return Err(io::Error::other(format!("repository {}: {e}", from.name)).into()),
        };
        let mut keys: Vec<String> = index
            .files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| backup_store::chunk_key(server, &c.object)))
            .filter(|k| !chunks.contains(k))
            .collect();
        keys.sort();
        keys.dedup();
        let (done, failed) = copy_objects(from.raw, to.raw, &keys, WORKERS, &stop, &|_, _| {});
        report.chunks += done.len();
        report.bytes += done.iter().map(|(_, n)| n).sum::<u64>();
        for (i, _) in &done {
            chunks.insert(keys[*i].clone());
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        let manifest = backup_store::manifest_key(server, &id);
        if let Some(m) = from.raw.get(&manifest)? {
            to.raw.put(&manifest, &m)?;
        }
        let raw_index = from
            .raw
            .get(&index_key)?
            .ok_or_else(|| io::Error::other(format!("repository {}: {index_key} vanished during the copy", from.name)))?;
        to.raw.put(&index_key, &raw_index)?;
        report.bytes += raw_index.len() as u64;
        report.backups.push(id);
    }
    Ok(report)
}
