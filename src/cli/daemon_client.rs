//! The CLI's one way of talking to a running `pgark serve`: `GET /status` on its
//! `metrics.listen` with hyper's HTTP/1.1 client, bounded in time and size. `pgark status` prints the answer; `pgark backup` learns
//! the receiver's flush position from it (`backup::WalProgressSource`).

use crate::backup::{ReceiverPosition, WalProgressSource};
use crate::service::status::{ConnState, DaemonStatus};
use axum::body::Body;
use axum::http::{header, Request};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpStream;

/// Time to connect, and then to read the whole answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A `/status` answer larger than this is refused (a wrong address answering endlessly).
const MAX_RESPONSE: usize = 64 << 20;

/// Why the daemon's status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DaemonClientError {
    #[error("no daemon answers on {addr}: {source}")]
    Unreachable { addr: String, source: std::io::Error },
    #[error("{addr} answered HTTP {code} to GET /status")]
    Status { addr: String, code: u16 },
    #[error("{addr} answered GET /status with something that is not pgark's status: {source}")]
    NotPgark { addr: String, source: serde_json::Error },
}

/// GET `path` from `addr` (hyper's HTTP/1.1 client): (status code, body).
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let timed_out = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} {addr}"));
    let http = |e: &dyn std::fmt::Display| std::io::Error::other(format!("{addr}: {e}"));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connecting to"))??;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        let conn = tokio::spawn(conn);
        let request = Request::get(path)
            .header(header::HOST, addr)
            .body(Body::empty())
            .map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let code = response.status().as_u16();
        let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_RESPONSE)
            .await
            .map_err(|e| http(&e))?;
        conn.abort();
        Ok::<_, std::io::Error>((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(READ_TIMEOUT, exchange)
        .await
        .map_err(|_| timed_out("reading from"))?
}

/// The running daemon's `/status`.
pub async fn daemon_status(addr: &str) -> Result<DaemonStatus, DaemonClientError> {
    let (code, body) = get(addr, "/status").await.map_err(|source| DaemonClientError::Unreachable {
        addr: addr.to_string(),
        source,
    })?;
    if code != 200 {
        return Err(DaemonClientError::Status {
            addr: addr.to_string(),
            code,
        });
    }
    serde_json::from_str(&body).map_err(|source| DaemonClientError::NotPgark {
        addr: addr.to_string(),
        source,
    })
}

/// A running daemon on `addr`, asked about its receivers; only a daemon on the same catalog counts.
pub struct DaemonHttp {
    pub addr: String,
    pub catalog: PathBuf,
}

impl WalProgressSource for DaemonHttp {
    fn receiver<'a>(&'a self, server: &'a str) -> Pin<Box<dyn Future<Output = Option<ReceiverPosition>> + Send + 'a>> {
        Box::pin(async move {
            let st = daemon_status(&self.addr).await.ok()?;
            if std::path::Path::new(&st.catalog) != self.catalog {
                return None;
            }
            st.servers.into_iter().find(|s| s.server == server).map(|s| ReceiverPosition {
                streaming: s.state == ConnState::Streaming,
                timeline: s.timeline,
                flushed: s.flushed_lsn,
            })
        })
    }
}
