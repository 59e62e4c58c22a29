//! How a backup learns that the WAL it needs is durable in the catalog: it asks whoever runs the
//! receiver for its flush position. The daemon answers from its status board, `pgark backup`
//! asks a running daemon over HTTP; the backup knows neither.

use crate::pg::{Lsn, TimelineId};
use std::future::Future;
use std::pin::Pin;

/// Where the receiver of one server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverPosition {
    /// The receiver is connected and streaming right now.
    pub streaming: bool,
    pub timeline: Option<TimelineId>,
    /// WAL durable in the catalog up to here.
    pub flushed: Option<Lsn>,
}

/// A source of receiver positions. `None`: no receiver for that server is known (no daemon, or a
/// daemon on another catalog).
pub trait WalProgressSource: Send + Sync {
    fn receiver<'a>(&'a self, server: &'a str) -> Pin<Box<dyn Future<Output = Option<ReceiverPosition>> + Send + 'a>>;
}
