//! A replication connection: socket (TCP or Unix), TLS negotiation, startup, authentication
//! (trust, cleartext, MD5, SCRAM-SHA-256), simple queries and raw CopyBoth traffic.
//!
//! Reading is cancellation-safe: bytes read from the socket stay in the connection's buffer until
//! a whole message is there, so `next_message` can sit in a `select!` next to timers.

use super::conninfo::{ConnInfo, Host, SslMode};
use super::tls;
use super::transport::Transport;
use crate::protocol::backend::{self, AuthRequest, BackendMessage, ServerMessage};
use crate::protocol::scram::ScramClient;
use crate::protocol::ProtocolError;
use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// How long connecting and authenticating may take when the connection string sets no
/// connect_timeout: a daemon must never hang on a black-holed address.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("connection closed by the server")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("server error: {0}")]
    Server(ServerMessage),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("timed out {0}")]
    Timeout(String),
}

impl ClientError {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ClientError::Server(m) => Some(&m.code),
            _ => None,
        }
    }
}

/// One authenticated session with a server.
pub struct Connection {
    io: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// `server_version_num`-style number, e.g. 150018, from the `server_version` parameter.
    pub server_version_num: u32,
    pub encrypted: bool,
    describe: String,
}

/// The rows of one result set, all values as text.
#[derive(Debug, Default, Clone)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

impl QueryResult {
    /// The value at `row`, `col` as UTF-8 text (None for NULL or absent).
    pub fn text(&self, row: usize, col: usize) -> Option<String> {
        self.rows
            .get(row)?
            .get(col)?
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

impl Connection {
    /// Connects and authenticates. `replication` asks for a physical walsender.
    pub async fn connect(ci: &ConnInfo, replication: bool) -> Result<Connection, ClientError> {
        let limit = ci.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let attempt = async {
            match ci.sslmode {
                SslMode::Allow => match Self::connect_once(ci, replication, false).await {
                    Err(ClientError::Auth(_)) | Err(ClientError::Server(_)) => Self::connect_once(ci, replication, true).await,
                    other => other,
                },
                SslMode::Disable => Self::connect_once(ci, replication, false).await,
                _ => Self::connect_once(ci, replication, true).await,
            }
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| ClientError::Timeout(format!("after {}s connecting to {ci}", limit.as_secs())))?
    }

    async fn connect_once(ci: &ConnInfo, replication: bool, try_tls: bool) -> Result<Connection, ClientError> {
        let (io, encrypted): (Transport, bool) = match &ci.host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", ci.port));
                let s = UnixStream::connect(&path).await.map_err(|e| ClientError::Io {
                    context: format!("connecting to Unix socket {}", path.display()),
                    source: e,
                })?;
                if matches!(ci.sslmode, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) {
                    return Err(ClientError::Tls(format!(
                        "sslmode requires TLS but {} is a Unix socket, where TLS is not used",
                        path.display()
                    )));
                }
                (Transport::Unix(s), false)
            }
            Host::Tcp(host) => {
                let s = TcpStream::connect((host.as_str(), ci.port)).await.map_err(|e| ClientError::Io {
                    context: format!("connecting to {host}:{}", ci.port),
                    source: e,
                })?;
                let _ = s.set_nodelay(true);
                if try_tls {
                    Self::negotiate_tls(s, ci, host).await?
                } else {
                    (Transport::Tcp(s), false)
                }
            }
        };
        let mut conn = Connection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            server_version_num: 0,
            encrypted,
            describe: ci.to_string(),
        };
        conn.startup(ci, replication).await?;
        Ok(conn)
    }

    async fn negotiate_tls(mut s: TcpStream, ci: &ConnInfo, host: &str) -> Result<(Transport, bool), ClientError> {
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        s.write_all(&req).await.map_err(|e| ClientError::Io {
            context: format!("sending SSLRequest to {ci}"),
            source: e,
        })?;
        // Exactly one byte: anything the server sends after it must come through TLS (CVE-2021-23222).
        let answer = s.read_u8().await.map_err(|e| ClientError::Io {
            context: format!("reading SSLRequest answer from {ci}"),
            source: e,
        })?;
        match answer {
            b'S' => {
                let config = tls::client_config(ci).map_err(ClientError::Tls)?;
                let name = tls::server_name(host).map_err(ClientError::Tls)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, s)
                    .await
                    .map_err(|e| ClientError::Tls(format!("handshake with {ci}: {e}")))?;
                Ok((Transport::Tls(Box::new(stream)), true))
            }
            b'N' if matches!(ci.sslmode, SslMode::Prefer | SslMode::Allow) => Ok((Transport::Tcp(s), false)),
            b'N' => Err(ClientError::Tls(format!(
                "the server {ci} does not support TLS, but sslmode requires it"
            ))),
            // An ErrorResponse here comes from a pre-7.0-style server or a proxy; its text is not shown (CVE-2024-10977).
            other => Err(ClientError::Tls(format!("unexpected answer 0x{other:02X} to SSLRequest from {ci}"))),
        }
    }

    async fn startup(&mut self, ci: &ConnInfo, replication: bool) -> Result<(), ClientError> {
        let mut params: Vec<(&str, &str)> = vec![("user", &ci.user), ("application_name", &ci.application_name)];
        if replication {
            params.push(("replication", "true"));
        } else if let Some(db) = &ci.dbname {
            params.push(("database", db));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(|e| ClientError::Io {
            context: "encoding startup message".into(),
            source: e,
        })?;
        self.flush().await?;
        let pass_db = if replication {
            "replication".to_string()
        } else {
            ci.dbname.clone().unwrap_or_else(|| ci.user.clone())
        };
        let password = || {
            ci.resolve_password(&pass_db).ok_or_else(|| {
                ClientError::Auth(format!(
                    "the server asked {} for a password but none is configured (password in conninfo, PGPASSWORD, or a .pgpass line)",
                    ci.user
                ))
            })
        };
        let mut scram: Option<ScramClient> = None;
        loop {
            match self.next_message().await? {
                BackendMessage::Authentication(req) => match req {
                    AuthRequest::Ok => break,
                    AuthRequest::CleartextPassword => {
                        frontend::password_message(password()?.as_bytes(), &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                    }
                    AuthRequest::Md5Password { salt } => {
                        let hash = postgres_protocol::authentication::md5_hash(ci.user.as_bytes(), password()?.as_bytes(), salt);
                        frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(ClientError::Auth(format!(
                                "the server offers only SASL mechanisms {mechanisms:?}; pgark speaks SCRAM-SHA-256"
                            )));
                        }
                        let mut client = ScramClient::new("", &password()?);
                        frontend::sasl_initial_response("SCRAM-SHA-256", &client.client_first(), &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                        scram = Some(client);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| ProtocolError::new("SASLContinue without SASL start"))?;
                        let reply = client.client_final(&data).map_err(|e| ClientError::Auth(e.to_string()))?;
                        frontend::sasl_response(&reply, &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                    }
                    AuthRequest::SaslFinal(data) => {
                        let client = scram.as_mut().ok_or_else(|| ProtocolError::new("SASLFinal without SASL start"))?;
                        client.verify_server_final(&data).map_err(|e| ClientError::Auth(e.to_string()))?;
                    }
                    AuthRequest::Unsupported(code) => {
                        return Err(ClientError::Auth(format!(
                            "the server asked for authentication method {code} (GSS/SSPI/Kerberos), which pgark does not support"
                        )));
                    }
                },
                BackendMessage::Error(e) if e.code.starts_with("28") => return Err(ClientError::Auth(e.to_string())),
                BackendMessage::Error(e) => return Err(ClientError::Server(e)),
                BackendMessage::NegotiateProtocolVersion | BackendMessage::Notice(_) => {}
                other => return Err(ProtocolError::new(format!("unexpected {other:?} during authentication")).into()),
            }
        }
        loop {
            match self.next_message().await? {
                BackendMessage::ParameterStatus { name, value } if name == "server_version" => {
                    self.server_version_num = parse_server_version(&value).unwrap_or(0);
                }
                BackendMessage::ParameterStatus { .. } | BackendMessage::BackendKeyData | BackendMessage::Notice(_) => {}
                BackendMessage::ReadyForQuery(_) => return Ok(()),
                BackendMessage::Error(e) => return Err(ClientError::Server(e)),
                other => return Err(ProtocolError::new(format!("unexpected {other:?} after authentication")).into()),
            }
        }
    }

    /// The major version, e.g. 15.
    pub fn server_major(&self) -> u32 {
        self.server_version_num / 10000
    }

    /// A secret-free description of the peer, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Runs one simple-query command and collects every result set until ReadyForQuery.
    /// Replication commands are keyword-case-sensitive: callers pass upper-case keywords.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>, ClientError> {
        frontend::query(sql, &mut self.wbuf).map_err(encode_err)?;
        self.flush().await?;
        let mut results = Vec::new();
        let mut current: Option<QueryResult> = None;
        let mut error = None;
        loop {
            match self.next_message().await? {
                BackendMessage::RowDescription(columns) => current = Some(QueryResult { columns, rows: vec![] }),
                BackendMessage::DataRow(values) => current.get_or_insert_with(QueryResult::default).rows.push(values),
                BackendMessage::CommandComplete(_) | BackendMessage::EmptyQueryResponse => {
                    if let Some(r) = current.take() {
                        results.push(r);
                    }
                }
                BackendMessage::Error(e) => error = Some(e),
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::Notice(_) | BackendMessage::ParameterStatus { .. } | BackendMessage::Other(_) => {}
                other => return Err(ProtocolError::new(format!("unexpected {other:?} in reply to {sql:?}")).into()),
            }
        }
        match error {
            Some(e) => Err(ClientError::Server(e)),
            None => Ok(results),
        }
    }

    /// Sends a simple-query message without waiting for the reply, for commands whose reply is
    /// a stream the caller reads with `next_message` (BASE_BACKUP).
    pub async fn send_query(&mut self, sql: &str) -> Result<(), ClientError> {
        frontend::query(sql, &mut self.wbuf).map_err(encode_err)?;
        self.flush().await
    }

    /// Waits for the next message. Cancellation-safe.
    pub async fn next_message(&mut self) -> Result<BackendMessage, ClientError> {
        loop {
            if let Some(m) = backend::parse(&mut self.rbuf)? {
                return Ok(m);
            }
            self.rbuf.reserve(READ_CHUNK);
            let n = self.io.read_buf(&mut self.rbuf).await.map_err(|e| ClientError::Io {
                context: format!("reading from {}", self.describe),
                source: e,
            })?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// The next message if it is already complete in the buffer, without touching the socket.
    /// `None` means inbound data has paused: the moment to group-fsync.
    pub fn next_buffered(&mut self) -> Result<Option<BackendMessage>, ClientError> {
        Ok(backend::parse(&mut self.rbuf)?)
    }

    /// Streaming hot loop, blocking mode (see `transport`): appends what the socket holds now to
    /// the read buffer without waiting; false when nothing was there (inbound data has paused).
    pub fn fill_now(&mut self) -> Result<bool, ClientError> {
        match self.io.read_now(&mut self.rbuf, READ_CHUNK) {
            Ok(Some(0)) => Err(ClientError::Closed),
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(self.io_error("reading from", e)),
        }
    }

    /// Blocking mode: waits at most `timeout` for the socket to become readable.
    pub fn wait_readable(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        let r = self.io.wait_readable(timeout);
        r.map_err(|e| self.io_error("waiting for", e))
    }

    /// Blocking mode: sends raw frontend bytes (already framed) at once.
    pub fn send_raw_blocking(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        debug_assert!(self.wbuf.is_empty(), "no async write may be pending");
        let r = self.io.write_all_blocking(bytes);
        r.map_err(|e| self.io_error("writing to", e))
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> ClientError {
        if e.kind() == std::io::ErrorKind::InvalidData {
            return ClientError::Tls(format!("{what} {}: {e}", self.describe));
        }
        ClientError::Io {
            context: format!("{what} {}", self.describe),
            source: e,
        }
    }

    /// Queues raw frontend bytes (already framed) and sends everything queued.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.wbuf.extend_from_slice(bytes);
        self.flush().await
    }

    /// Sends CopyDone.
    pub async fn send_copy_done(&mut self) -> Result<(), ClientError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await
    }

    /// Says goodbye politely; errors are irrelevant at this point.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let res = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        res.map_err(|e| ClientError::Io {
            context: format!("writing to {}", self.describe),
            source: e,
        })?;
        self.io.flush().await.map_err(|e| ClientError::Io {
            context: format!("flushing to {}", self.describe),
            source: e,
        })
    }
}

fn encode_err(e: std::io::Error) -> ClientError {
    ClientError::Io {
        context: "encoding a frontend message".into(),
        source: e,
    }
}

/// `"15.18 (Debian 15.18-0+deb12u1)"` → 150018; `"9.6.24"` → 90624; `"18beta1"` → 180000.
pub fn parse_server_version(text: &str) -> Option<u32> {
    let head: String = text.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = head.split('.').filter(|p| !p.is_empty()).map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(|r| r.ok()).unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch = parts.next().and_then(|r| r.ok()).unwrap_or(0);
        Some(major * 10000 + minor * 100 + patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.18 (Debian 15.18-0+deb12u1)"), Some(150018));
        assert_eq!(parse_server_version("13.23"), Some(130023));
        assert_eq!(parse_server_version("18beta1"), Some(180000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("abc"), None);
    }
}
