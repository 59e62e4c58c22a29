//! The CLI's one way of talking to a running `pgark serve`: `GET /status` on its
//! `metrics.listen`, bounded in time. `pgark status` prints the answer; `pgark backup` learns
//! the receiver's flush position from it (`backup::WalProgressSource`).

use crate::backup::{ReceiverPosition, WalProgressSource};
use crate::service::status::{ConnState, DaemonStatus};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time to connect, and then to read the whole answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A `/status` answer larger than this is refused (a wrong address answering endlessly).
const MAX_RESPONSE: u64 = 64 << 20;

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

/// A minimal HTTP/1.1 GET (the daemon answers with `Connection: close`): (status code, body).
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let timed_out = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} {addr}"));
    let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connecting to"))??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut resp = Vec::new();
    tokio::time::timeout(READ_TIMEOUT, (&mut s).take(MAX_RESPONSE).read_to_end(&mut resp))
        .await
        .map_err(|_| timed_out("reading from"))??;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
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
