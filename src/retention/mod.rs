//! Retention: what the catalog keeps (`policy`, pure) and the safe deletion of the rest
//! (`prune`). The daemon prunes after each backup and at least hourly; `pgark prune` does it on
//! demand, with `--dry-run` to see what would go and why.

pub mod policy;
pub mod prune;

pub use policy::{OnCriticalPressure, Policy};
pub use prune::{prune, PruneError, PruneReport};
