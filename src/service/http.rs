//! The HTTP endpoint on `metrics.listen`: `/metrics` (Prometheus text), `/healthz`, `/status`.
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per connection, bounded request
//! size (`MAX_REQUEST`), time (`REQUEST_TIMEOUT` for the whole exchange) and number of
//! connections at once (`MAX_CONNECTIONS`; more are closed at once), so a connection flood on a
//! reachable `metrics.listen` cannot exhaust the file descriptors WAL streaming needs. It never
//! touches the receivers except through the status board.

use crate::service::status::{ConnState, DaemonStatus, StatusBoard};
use crate::util::time::unix_now;
use metrics_exporter_prometheus::PrometheusHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const MAX_REQUEST: usize = 8192;
/// Connections served at once; Prometheus and `pgark status` need one or two.
pub const MAX_CONNECTIONS: usize = 32;
/// Time for one whole exchange (read the request, write the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub board: StatusBoard,
    pub catalog: String,
    /// `metrics.healthz_stream_timeout` in seconds (updated on reload).
    pub stream_timeout_secs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl HttpState {
    pub fn status(&self) -> DaemonStatus {
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            catalog: self.catalog.clone(),
            catalog_space: self.board.catalog_space(),
            servers: self.board.snapshot(),
            task_failures: self.board.task_failures(),
        }
    }

    /// Reasons the daemon is unhealthy; empty when healthy.
    pub fn health_problems(&self) -> Vec<String> {
        let now = unix_now();
        let limit = self.stream_timeout_secs.load(std::sync::atomic::Ordering::Relaxed);
        self.board
            .snapshot()
            .into_iter()
            .filter(|s| s.state != ConnState::Streaming)
            .filter(|s| now.saturating_sub(s.last_message_at.unwrap_or(s.added_at)) > limit)
            .map(|s| {
                format!(
                    "{}: not streaming for over {limit}s ({})",
                    s.server,
                    s.last_error.unwrap_or_else(|| format!("{:?}", s.state))
                )
            })
            .collect()
    }
}

pub async fn serve(listener: TcpListener, state: HttpState, cancel: CancellationToken) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged = false;
    loop {
        fail::fail_point!("http-serve");
        let (sock, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(limit = MAX_CONNECTIONS, "too many HTTP connections at once; closing the extra ones");
                refused_logged = true;
            }
            drop(sock);
            continue;
        };
        refused_logged = false;
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(sock, state)).await;
            drop(permit);
        });
    }
}

async fn handle(mut sock: TcpStream, state: HttpState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(buf.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", crate::service::metrics::render(&state.metrics)),
        ("GET", "/status") => (
            200,
            "application/json",
            serde_json::to_string_pretty(&state.status()).unwrap_or_default(),
        ),
        ("GET", "/healthz") => {
            let problems = state.health_problems();
            if problems.is_empty() {
                (200, "text/plain", "ok\n".to_string())
            } else {
                (503, "text/plain", problems.join("\n") + "\n")
            }
        }
        ("GET", _) => (404, "text/plain", "not found: try /metrics, /healthz or /status\n".to_string()),
        _ => (405, "text/plain", "only GET is supported\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::status::ServerStatus;

    #[test]
    fn healthz_counts_silence_from_when_the_server_was_added() {
        let board = StatusBoard::default();
        let state = HttpState {
            metrics: crate::service::metrics::install(),
            board: board.clone(),
            catalog: "/c".into(),
            stream_timeout_secs: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(60)),
        };
        // Just added (by a reload to a daemon running for hours): not yet unhealthy.
        board.insert(ServerStatus::new("new", true));
        assert!(state.health_problems().is_empty());
        // Never streamed, and added longer ago than the limit: unhealthy.
        board.update("new", |s| s.added_at = unix_now() - 120);
        let problems = state.health_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("new: not streaming for over 60s"));
        // Streaming: healthy whatever the times.
        board.update("new", |s| s.state = ConnState::Streaming);
        assert!(state.health_problems().is_empty());
    }
}
