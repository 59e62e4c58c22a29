//! The one place where domain events become status-board updates and Prometheus metrics,
//! together: each receiver gets a `ServerTelemetry` as its `ReceiverObserver`.
//!
//! The hot-path metric handles are looked up once per server (each lookup allocates the label
//! and hashes the key), and every method is non-blocking (atomics and the board's short mutex),
//! as the acknowledgement path requires.

use crate::pg::{Lsn, TimelineId};
use crate::receiver::{ConnState, DisconnectReason, Positions, ReceiverObserver};
use crate::service::metrics::{self, StreamMetrics};
use crate::service::status::StatusBoard;
use crate::service::systemd::Heartbeat;
use crate::util::time::unix_now;
use std::time::Duration;

/// One server's reporting: its board entry and its metrics.
pub struct ServerTelemetry {
    server: String,
    board: StatusBoard,
    /// Created when streaming first starts: the stream's gauges do not exist (rather than read
    /// 0) for a server that never streamed.
    stream: std::sync::OnceLock<StreamMetrics>,
    /// Bumped on every event but the per-message ones: the systemd watchdog's sign of life
    /// (`service::systemd`); a relaxed atomic add, no lock, no syscall.
    heartbeat: Heartbeat,
}

impl ServerTelemetry {
    pub fn new(server: &str, board: StatusBoard) -> Self {
        Self::with_heartbeat(server, board, Heartbeat::default())
    }

    /// Reporting that also bumps `heartbeat` (kept by the daemon across receiver restarts).
    pub fn with_heartbeat(server: &str, board: StatusBoard, heartbeat: Heartbeat) -> Self {
        ServerTelemetry {
            server: server.to_string(),
            board,
            stream: std::sync::OnceLock::new(),
            heartbeat,
        }
    }

    /// The stream's metric handles (created at the first streaming session).
    fn m(&self) -> &StreamMetrics {
        self.stream.get_or_init(|| StreamMetrics::new(&self.server))
    }

    fn set_state(&self, state: ConnState) {
        metrics::connection_state(&self.server, state);
        metrics::set_up(&self.server, state == ConnState::Streaming);
        self.board.update(&self.server, |s| s.state = state);
    }
}

impl ReceiverObserver for ServerTelemetry {
    fn started(&self, synchronous: bool) {
        self.heartbeat.beat();
        metrics::synchronous_mode(&self.server, synchronous);
        metrics::set_up(&self.server, false);
    }

    fn state(&self, state: ConnState) {
        self.heartbeat.beat();
        self.set_state(state);
    }

    fn streaming(&self) {
        self.heartbeat.beat();
        self.m();
        self.set_state(ConnState::Streaming);
        self.board.update(&self.server, |s| {
            s.streaming_since = Some(unix_now());
            s.last_error = None;
        });
    }

    fn session_ended(&self, reason: DisconnectReason, error: &str, store_failed: bool) {
        self.heartbeat.beat();
        metrics::set_up(&self.server, false);
        if store_failed {
            metrics::store_error(&self.server);
        }
        metrics::disconnected(&self.server, reason.as_str());
        self.board.update(&self.server, |s| s.last_error = Some(error.to_string()));
    }

    fn retrying(&self) {
        self.heartbeat.beat();
        metrics::reconnect(&self.server);
        metrics::connection_state(&self.server, ConnState::Retrying);
        self.board.update(&self.server, |s| {
            s.state = ConnState::Retrying;
            s.reconnects += 1;
            s.streaming_since = None;
        });
    }

    fn timeline(&self, timeline: TimelineId, start: Lsn) {
        self.heartbeat.beat();
        metrics::timeline(&self.server, timeline.0);
        self.board.update(&self.server, |s| {
            s.timeline = Some(timeline);
            s.received_lsn = Some(start);
            s.flushed_lsn = Some(start);
        });
    }

    fn positions(&self, p: &Positions) {
        self.heartbeat.beat();
        self.m().wal_positions(p.write.0, p.flush.0);
        let lag = p.server_end.saturating_sub(p.flush);
        self.board.update(&self.server, |s| {
            s.received_lsn = Some(p.write);
            s.flushed_lsn = Some(p.flush);
            s.server_lsn = Some(p.server_end);
            s.lag_bytes = Some(lag);
            if p.last_message_at.is_some() {
                s.last_message_at = p.last_message_at;
            }
        });
    }

    fn keepalive(&self, server_end: Lsn) {
        self.heartbeat.beat();
        self.m().server_wal_end(server_end.0);
    }

    fn wal_received(&self, bytes: u64) {
        self.m().wal_received(bytes);
    }

    fn fsync(&self, took: Duration) {
        self.m().fsync_duration(took);
    }

    fn acked(&self, latency: Duration) {
        self.m().ack_latency(latency);
    }

    fn segment_completed(&self, file: &str) {
        self.heartbeat.beat();
        metrics::segment_completed(&self.server);
        self.board.update(&self.server, |s| s.last_segment = Some(file.to_string()));
    }

    fn segment_archived(&self, original_bytes: u64, stored_bytes: u64) {
        metrics::segment_archived(&self.server, original_bytes, stored_bytes);
    }

    fn durable_until(&self, unix: u64) {
        self.heartbeat.beat();
        self.m().recovery_window_end(unix);
        self.board.update(&self.server, |s| s.wal_durable_at = Some(unix));
    }

    fn task_failed(&self, task: &'static str, why: &str) {
        metrics::task_failed(&self.server, task);
        self.board.task_failed(task, &self.server, why);
    }
}
