//! What a receiver tells the world, in its own words: connection states, positions, segments,
//! timings. The receiver knows nothing of Prometheus or `/status`; the daemon's telemetry
//! (`service::telemetry`) turns each event into board updates and metrics together, and the
//! tests record them.
//!
//! The calls are synchronous and made inline on the receiver's own thread, on the
//! acknowledgement path: an implementation must not block (atomics and a short mutex).

use super::ReceiverError;
use crate::client::ClientError;
use crate::pg::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A receiver's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    Starting,
    Connecting,
    Streaming,
    /// Waiting before the next attempt; `last_error` says why.
    Retrying,
    Stopped,
}

/// Why a replication session ended (the `reason` label of `pgark_disconnects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    ServerShutdown,
    Network,
    Timeout,
    Tls,
    Auth,
    ServerError,
    Protocol,
    /// A catalog write failed (the flush position was held back).
    Catalog,
    /// The server is not the one the catalog belongs to, or is behind it.
    Identity,
}

impl DisconnectReason {
    /// Every reason, for creating the counters at zero.
    pub const ALL: [DisconnectReason; 9] = [
        DisconnectReason::ServerShutdown,
        DisconnectReason::Network,
        DisconnectReason::Timeout,
        DisconnectReason::Tls,
        DisconnectReason::Auth,
        DisconnectReason::ServerError,
        DisconnectReason::Protocol,
        DisconnectReason::Catalog,
        DisconnectReason::Identity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ServerShutdown => "server_shutdown",
            DisconnectReason::Network => "network",
            DisconnectReason::Timeout => "timeout",
            DisconnectReason::Tls => "tls",
            DisconnectReason::Auth => "auth",
            DisconnectReason::ServerError => "server_error",
            DisconnectReason::Protocol => "protocol",
            DisconnectReason::Catalog => "catalog",
            DisconnectReason::Identity => "identity",
        }
    }
}

impl From<&ReceiverError> for DisconnectReason {
    fn from(e: &ReceiverError) -> Self {
        match e {
            // A cancelled session is a stop, not a disconnect; it is never reported as one.
            ReceiverError::Client(ClientError::Io { .. } | ClientError::Closed(_) | ClientError::Cancelled) => DisconnectReason::Network,
            ReceiverError::Client(ClientError::Timeout(_)) | ReceiverError::Timeout(_) => DisconnectReason::Timeout,
            ReceiverError::Client(ClientError::Tls(_)) => DisconnectReason::Tls,
            ReceiverError::Client(ClientError::Auth(_)) => DisconnectReason::Auth,
            ReceiverError::Client(ClientError::Server(_)) => DisconnectReason::ServerError,
            ReceiverError::Client(ClientError::Protocol(_)) | ReceiverError::Protocol(_) => DisconnectReason::Protocol,
            ReceiverError::Store(_) | ReceiverError::State(_) => DisconnectReason::Catalog,
            ReceiverError::Identity(_) | ReceiverError::TimelineAhead { .. } => DisconnectReason::Identity,
        }
    }
}

/// Where the stream stands, reported with each status update (not per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// Received (written to the kernel).
    pub write: Lsn,
    /// Durable (fdatasynced), what was acknowledged as flushed.
    pub flush: Lsn,
    /// The server's WAL end as of its last message.
    pub server_end: Lsn,
    /// Unix seconds of the last message received, if one came since the last report.
    pub last_message_at: Option<u64>,
}

/// The receiver's events. See the module comment for the rules an implementation follows.
pub trait ReceiverObserver: Send + Sync {
    /// The receiver starts, in synchronous mode or not.
    fn started(&self, synchronous: bool);
    /// A state other than streaming (connecting, stopped, retrying after a panic).
    fn state(&self, state: ConnState);
    /// Streaming has begun: the server and the credentials work.
    fn streaming(&self);
    /// A session ended; `error` says what happened, for the status. `store_failed`: a write to
    /// the WAL store failed (the flush position was held back).
    fn session_ended(&self, reason: DisconnectReason, error: &str, store_failed: bool);
    /// Waiting before the next attempt.
    fn retrying(&self);
    /// Streaming (re)starts on `timeline` at `start`.
    fn timeline(&self, timeline: TimelineId, start: Lsn);
    fn positions(&self, p: &Positions);
    /// A keepalive told the server's WAL end.
    fn keepalive(&self, server_end: Lsn);
    /// Hot path: bytes of WAL received.
    fn wal_received(&self, bytes: u64);
    fn fsync(&self, took: Duration);
    /// Time from WAL's arrival to the status update that reported it flushed.
    fn acked(&self, latency: Duration);
    fn segment_completed(&self, file: &str);
    /// A segment reached its stored form (from the archiver thread).
    fn segment_archived(&self, original_bytes: u64, stored_bytes: u64);
    /// Everything the server had sent by this Unix time is durable: the recovery window's end.
    fn durable_until(&self, unix: u64);
    /// A task of this receiver (`receiver`, `archiver`) died and is restarted.
    fn task_failed(&self, task: &'static str, why: &str);
}

/// An observer that ignores everything (for tests and tools that need none).
pub struct NoObserver;

impl ReceiverObserver for NoObserver {
    fn started(&self, _: bool) {}
    fn state(&self, _: ConnState) {}
    fn streaming(&self) {}
    fn session_ended(&self, _: DisconnectReason, _: &str, _: bool) {}
    fn retrying(&self) {}
    fn timeline(&self, _: TimelineId, _: Lsn) {}
    fn positions(&self, _: &Positions) {}
    fn keepalive(&self, _: Lsn) {}
    fn wal_received(&self, _: u64) {}
    fn fsync(&self, _: Duration) {}
    fn acked(&self, _: Duration) {}
    fn segment_completed(&self, _: &str) {}
    fn segment_archived(&self, _: u64, _: u64) {}
    fn durable_until(&self, _: u64) {}
    fn task_failed(&self, _: &'static str, _: &str) {}
}
