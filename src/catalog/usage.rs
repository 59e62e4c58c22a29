//! How much of the catalog each server uses (WAL, backups) and how well its WAL compresses
//! there: the inputs of the catalog metrics and of the time-to-full projection.

use super::backup_store;
use super::store::{ObjectStore, Usage};
use super::Layout;
use std::io;

/// One server's share of the catalog.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerUsage {
    pub wal: Usage,
    pub backups: Usage,
    /// Stored bytes per WAL byte for compressed segments (`None` before the first one).
    pub wal_stored_ratio: Option<f64>,
}

pub fn server_usage(store: &dyn ObjectStore, server: &str) -> io::Result<ServerUsage> {
    let wal_key = Layout::wal_key(server);
    let wal = store.usage(&wal_key)?;
    let backups = add(
        store.usage(&backup_store::chunks_key(server))?,
        store.usage(&backup_store::backups_key(server))?,
    );
    let seg = super::state::load(store, server).ok().flatten().map(|s| s.wal_segment_size);
    let mut compressed = Usage::default();
    if let Some(seg) = seg {
        for key in store.list(&wal_key)? {
            if key.ends_with(".zst") {
                if let Some(size) = store.size(&key)? {
                    compressed.objects += 1;
                    compressed.bytes += size;
                }
            }
        }
        return Ok(ServerUsage {
            wal,
            backups,
            wal_stored_ratio: stored_ratio(compressed, seg),
        });
    }
    Ok(ServerUsage {
        wal,
        backups,
        wal_stored_ratio: None,
    })
}

fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        objects: a.objects + b.objects,
        bytes: a.bytes + b.bytes,
    }
}

/// Stored bytes per original byte over `compressed` segments of `segment_size` bytes each.
pub fn stored_ratio(compressed: Usage, segment_size: u64) -> Option<f64> {
    if compressed.objects == 0 || segment_size == 0 {
        return None;
    }
    Some(compressed.bytes as f64 / (compressed.objects as f64 * segment_size as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio() {
        assert_eq!(stored_ratio(Usage::default(), 16 << 20), None);
        let r = stored_ratio(
            Usage {
                objects: 2,
                bytes: 16 << 20,
            },
            16 << 20,
        )
        .unwrap();
        assert!((r - 0.5).abs() < 1e-9);
    }
}
