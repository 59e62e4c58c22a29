//! Pins: a backup the operator asked to keep (`pgark keep`, `pgark backup --keep`), stored as
//! `<server>/backups/<id>.keep` beside its index. Retention never deletes a pinned backup nor the
//! WAL from its start to its end; the WAL after its end is pruned like any other (a pinned
//! backup restores to its end, not to any later point, once that WAL is older than every backup
//! the rules keep).

use super::backup_store::backups_key;
use super::store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;

const FORMAT: u32 = 1;

/// How long a pin lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "until")]
pub enum PinUntil {
    Forever,
    /// Unix seconds; the pin lapses after this.
    Time(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub format: u32,
    pub until: PinUntil,
    /// Unix seconds when it was set.
    pub set_at: u64,
}

impl Pin {
    pub fn new(until: PinUntil, now: u64) -> Pin {
        Pin {
            format: FORMAT,
            until,
            set_at: now,
        }
    }

    /// Whether the pin still holds at `now`.
    pub fn active(&self, now: u64) -> bool {
        match self.until {
            PinUntil::Forever => true,
            PinUntil::Time(t) => now <= t,
        }
    }
}

pub fn key(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}.keep")
}

/// Stores (or replaces) the pin of a published backup.
pub fn save(store: &dyn ObjectStore, server: &str, id: &str, pin: &Pin) -> io::Result<()> {
    let json = serde_json::to_vec(pin).map_err(io::Error::other)?;
    store.put(&key(server, id), &json)
}

pub fn remove(store: &dyn ObjectStore, server: &str, id: &str) -> io::Result<()> {
    store.delete(&key(server, id))
}

/// The pin of one backup, if any (an unreadable pin file counts as a pin forever).
pub fn load(store: &dyn ObjectStore, server: &str, id: &str) -> io::Result<Option<Pin>> {
    Ok(store
        .get(&key(server, id))?
        .map(|bytes| serde_json::from_slice::<Pin>(&bytes).unwrap_or_else(|_| Pin::new(PinUntil::Forever, 0))))
}

/// Every pin of `server`'s backups, by backup id (lapsed ones included: the caller decides).
/// A pin file that cannot be parsed counts as a pin forever: keeping a backup too long is the
/// safe mistake.
pub fn load_all(store: &dyn ObjectStore, server: &str) -> io::Result<BTreeMap<String, Pin>> {
    let mut out = BTreeMap::new();
    for k in store.list(&backups_key(server))? {
        let Some(id) = k.rsplit('/').next().and_then(|n| n.strip_suffix(".keep")) else {
            continue;
        };
        let pin = match store.get(&k)? {
            Some(bytes) => serde_json::from_slice::<Pin>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(object = %k, error = %e, "unreadable pin record; treating the backup as pinned forever");
                Pin::new(PinUntil::Forever, 0)
            }),
            None => continue,
        };
        out.insert(id.to_string(), pin);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    #[test]
    fn save_load_remove_and_lapse() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        save(&store, "main", "A", &Pin::new(PinUntil::Time(100), 1)).unwrap();
        save(&store, "main", "B", &Pin::new(PinUntil::Forever, 1)).unwrap();
        store.put(&key("main", "C"), b"not json").unwrap();
        let all = load_all(&store, "main").unwrap();
        assert_eq!(all.len(), 3);
        assert!(all["A"].active(100) && !all["A"].active(101));
        assert!(all["B"].active(u64::MAX));
        assert!(all["C"].active(u64::MAX), "an unreadable pin keeps the backup");
        remove(&store, "main", "A").unwrap();
        assert!(!load_all(&store, "main").unwrap().contains_key("A"));
    }
}
