//! The prune intent record, `<server>/prune.intent`: what a prune is about to delete, written
//! (atomically, durably) before the first deletion and removed after the last. A prune killed in
//! between leaves it behind, and the next prune of the server finishes the job: it deletes what
//! the record names and the policy still lets go (a backup pinned in the meantime stays: that
//! part is undone), so a crash never leaves a half-pruned catalog for long, and never one where a
//! backup exists without the WAL it needs (backups go first, their WAL after).

use super::store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::io;

const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneIntent {
    pub format: u32,
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
    /// Backup ids, oldest first.
    pub backups: Vec<String>,
    /// WAL object keys.
    pub wal: Vec<String>,
}

impl PruneIntent {
    pub fn new(started_at: u64, backups: Vec<String>, wal: Vec<String>) -> PruneIntent {
        PruneIntent {
            format: FORMAT,
            pid: std::process::id(),
            started_at,
            backups,
            wal,
        }
    }
}

pub fn key(server: &str) -> String {
    format!("{server}/prune.intent")
}

pub fn save(store: &dyn ObjectStore, server: &str, intent: &PruneIntent) -> io::Result<()> {
    let json = serde_json::to_vec(intent).map_err(io::Error::other)?;
    store.put(&key(server), &json)?;
    store.sync()
}

/// The record an interrupted prune left, if any. An unreadable record is an error naming it: the
/// operator decides (remove it to prune from scratch).
pub fn load(store: &dyn ObjectStore, server: &str) -> io::Result<Option<PruneIntent>> {
    let k = key(server);
    match store.get(&k)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("prune intent record {k}: {e}; remove it to prune from scratch"),
            )
        }),
    }
}

pub fn remove(store: &dyn ObjectStore, server: &str) -> io::Result<()> {
    store.delete(&key(server))?;
    store.sync()
}
