//! The HTTP endpoint on `metrics.listen`: `/metrics` (Prometheus text), `/healthz`, `/status`.
//!
//! HTTP/1.1 from hyper, routing from axum, per-request time and concurrency limits from tower.
//! GET only, one request per connection, bounded request size (`MAX_REQUEST`), time
//! (`REQUEST_TIMEOUT` for the whole exchange) and number of connections at once
//! (`MAX_CONNECTIONS`; more are closed at once), so a connection flood on a reachable
//! `metrics.listen` cannot exhaust the file descriptors WAL streaming needs. It never touches
//! the receivers except through the status board.

use crate::service::status::{ConnState, DaemonStatus, StatusBoard};
use crate::util::time::unix_now;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{BoxError, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;

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
            daemon_running: true,
            reason: None,
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

/// The routes: `/metrics`, `/status`, `/healthz`; other paths 404, other methods 405. Each
/// request is bounded in time and in how many run at once (tower's layers).
pub fn router(state: HttpState) -> Router {
    Router::new()
        // GET only (axum would answer HEAD with the GET handler).
        .route("/metrics", get(metrics).head(method_not_allowed))
        .route("/status", get(status).head(method_not_allowed))
        .route("/healthz", get(healthz).head(method_not_allowed))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    (StatusCode::SERVICE_UNAVAILABLE, "timed out\n")
                }))
                .layer(TimeoutLayer::new(REQUEST_TIMEOUT))
                .layer(ConcurrencyLimitLayer::new(MAX_CONNECTIONS)),
        )
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::service::metrics::render(&state.metrics),
    )
}

async fn status(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&state.status()).unwrap_or_default(),
    )
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    let problems = state.health_problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

async fn not_found(method: Method) -> impl IntoResponse {
    if method != Method::GET {
        return method_not_allowed().await.into_response();
    }
    (StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /status\n").into_response()
}

async fn method_not_allowed() -> impl IntoResponse {
    (StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n")
}

/// Accepts connections until `cancel`. The number of open sockets is bounded here, at accept
/// (tower's limit counts requests, not idle sockets): one over `MAX_CONNECTIONS` is closed at
/// once. Each connection serves one request (no keep-alive), with `MAX_REQUEST` bytes of head at
/// most and `REQUEST_TIMEOUT` for the whole exchange, slow reads included.
pub async fn serve(listener: TcpListener, state: HttpState, cancel: CancellationToken) {
    let app = router(state);
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
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
            drop(permit);
        });
    }
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

    #[tokio::test]
    async fn routes_methods_and_status_codes() {
        use tower::ServiceExt;
        let state = HttpState {
            metrics: crate::service::metrics::install(),
            board: StatusBoard::default(),
            catalog: "/c".into(),
            stream_timeout_secs: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(60)),
        };
        let app = router(state);
        for (method, path, code) in [
            ("GET", "/healthz", 200),
            ("GET", "/status", 200),
            ("GET", "/metrics?x=1", 200),
            ("GET", "/nope", 404),
            ("POST", "/metrics", 405),
            ("HEAD", "/status", 405),
            ("POST", "/nope", 405),
        ] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), code, "{method} {path}");
        }
    }
}
