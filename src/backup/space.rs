//! Whether the catalog can hold a backup before it starts.

use super::error::BackupError;
use super::pipeline;
use crate::catalog::backup_store::BackupIndex;

/// Refuses to start when the catalog cannot hold the backup: the server's size estimate scaled
/// by the previous backup's compression ratio (half the estimate for a first backup), plus the
/// reserve kept for WAL streaming.
pub fn check_free_space(catalog: &std::path::Path, estimate: u64, previous: Option<&BackupIndex>, reserve: u64) -> Result<(), BackupError> {
    let ratio = match previous {
        Some(p) if p.original_bytes > 0 => (p.stored_total_bytes as f64 / p.original_bytes as f64).clamp(0.01, 1.0),
        _ => 0.5,
    };
    let needed = (estimate as f64 * ratio) as u64;
    let free = pipeline::free_space(catalog)?;
    if free < needed + reserve {
        return Err(BackupError::NoSpace {
            path: catalog.to_path_buf(),
            needed,
            estimate,
            ratio,
            reserve,
            free,
        });
    }
    Ok(())
}
