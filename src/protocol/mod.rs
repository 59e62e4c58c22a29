//! The PostgreSQL wire protocol, sans IO: bytes in, typed messages out. No sockets, no files.
//!
//! `backend` frames and decodes what the server sends, `replication` the CopyBoth payloads of
//! streaming replication, `basebackup` the BASE_BACKUP reply. SCRAM is postgres-protocol's
//! `authentication::sasl` (with channel binding). Frontend messages are written
//! with `postgres_protocol::message::frontend`, whose writers back-patch lengths.

pub mod backend;
pub mod basebackup;
pub mod replication;

/// The server sent something that does not follow the protocol. The connection that carried it
/// must be closed; the daemon carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol violation: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    pub fn new(msg: impl Into<String>) -> Self {
        ProtocolError(msg.into())
    }
}
