//! PostgreSQL value types with no I/O: LSNs, timelines, WAL segment sizes and file names.
//!
//! Every coordinate is a newtype so that a segment number can never be passed where an LSN is
//! expected, and every parser returns a typed error naming the text it refused.

pub mod incremental;
pub mod lsn;
pub mod manifest;
pub mod segment;
pub mod timeline;

pub use lsn::Lsn;
pub use segment::{SegNo, WalFileKind, WalFileName, WalSegSize};
pub use timeline::{HistoryEntry, TimelineHistory, TimelineId};

/// A value that could not be parsed, with the text and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: expected {expected}")]
pub struct ParseError {
    pub what: &'static str,
    pub text: String,
    pub expected: &'static str,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, text: &str, expected: &'static str) -> Self {
        ParseError {
            what,
            text: text.to_string(),
            expected,
        }
    }
}
