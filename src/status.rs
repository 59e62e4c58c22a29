//! The live status of every server, shared by the receivers (writers) and `/status`, `/healthz`
//! and `pgark status` (readers). Serialized as the JSON of `pgark status --json`.

use crate::pg::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub server: String,
    pub state: ConnState,
    pub synchronous: bool,
    pub timeline: Option<TimelineId>,
    pub received_lsn: Option<Lsn>,
    pub flushed_lsn: Option<Lsn>,
    /// The server's WAL end as of its last message.
    pub server_lsn: Option<Lsn>,
    /// `server_lsn - flushed_lsn`.
    pub lag_bytes: Option<u64>,
    pub last_segment: Option<String>,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Unix seconds when streaming last started, and of the last message received.
    pub streaming_since: Option<u64>,
    pub last_message_at: Option<u64>,
    /// The server's side, from the monitoring connection (see `monitor`).
    #[serde(default)]
    pub monitor: Option<crate::monitor::ServerFacts>,
    #[serde(default)]
    pub monitor_error: Option<String>,
}

impl ServerStatus {
    pub fn new(server: &str, synchronous: bool) -> Self {
        ServerStatus {
            server: server.to_string(),
            state: ConnState::Starting,
            synchronous,
            timeline: None,
            received_lsn: None,
            flushed_lsn: None,
            server_lsn: None,
            lag_bytes: None,
            last_segment: None,
            last_error: None,
            reconnects: 0,
            streaming_since: None,
            last_message_at: None,
            monitor: None,
            monitor_error: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub catalog: String,
    pub servers: Vec<ServerStatus>,
}

/// Shared map from server name to status.
#[derive(Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<String, ServerStatus>>>,
}

impl StatusBoard {
    pub fn update(&self, server: &str, f: impl FnOnce(&mut ServerStatus)) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(s) = m.get_mut(server) {
                f(s);
            }
        }
    }

    pub fn insert(&self, status: ServerStatus) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(status.server.clone(), status);
        }
    }

    pub fn remove(&self, server: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(server);
        }
    }

    pub fn snapshot(&self) -> Vec<ServerStatus> {
        self.inner.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
