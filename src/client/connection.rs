//! A replication connection: socket (TCP or Unix), TLS negotiation, startup, authentication
//! (trust, cleartext, MD5, SCRAM-SHA-256 with channel binding), simple queries and raw CopyBoth
//! traffic.
//!
//! Bounded time, always cancellable: connecting (TCP, TLS, startup, authentication) is bounded by
//! `connect_timeout`; after that every wait for the server (`next_message`) and every write
//! (`flush`) is bounded by the connection's I/O timeout (`set_io_timeout`, the receiver uses
//! `receiver_timeout`) and ends at once when its cancellation token fires (`set_cancel`). A
//! timeout names the phase the connection was in (`IDENTIFY_SYSTEM`, `START_REPLICATION`, the
//! BASE_BACKUP stream, ...), so logs say where a network stalled. After a timeout or a
//! cancellation the connection is broken: a half-read message may be lost, so every later call
//! fails at once.
//!
//! Limits against a hostile or broken peer: frames are capped (`protocol::backend::MAX_FRAME`),
//! and so are the rows and bytes one simple query may return (`MAX_QUERY_ROWS`,
//! `MAX_QUERY_BYTES`). When the server asked for SCRAM, authentication succeeds only after its
//! signature was verified: an AuthenticationOk in the middle of the exchange is refused.
//!
//! Reading is cancellation-safe: bytes read from the socket stay in the connection's buffer until
//! a whole message is there.

use super::conninfo::{ChannelBindingMode, ConnInfo, Host, SslMode};
use super::tls;
use super::transport::{self, Transport};
use crate::protocol::backend::{self, AuthRequest, BackendMessage, ServerMessage};
use crate::protocol::ProtocolError;
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

/// How long connecting and authenticating may take when the connection string sets no
/// connect_timeout: a daemon must never hang on a black-holed address.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server may stay silent while pgark waits for an answer, unless the caller sets
/// another limit (`set_io_timeout`).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Messages (rows, notices) one simple query's answer may hold: pgark's own queries return one
/// row (a few for the tablespace list).
pub const MAX_QUERY_ROWS: usize = 10_000;
/// Bytes of values one simple query may return (a timeline history file is the largest).
pub const MAX_QUERY_BYTES: usize = 32 * 1024 * 1024;

/// How long the goodbye (CopyDone, Terminate) may take on a connection being closed.
const GOODBYE_LIMIT: Duration = Duration::from_secs(2);

const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The server (or the network) closed the connection; says where and in which phase.
    #[error("connection closed by the server ({0})")]
    Closed(String),
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
    #[error("cancelled (pgark is stopping)")]
    Cancelled,
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
    /// The `tls-server-end-point` binding data of the server's certificate (TLS only).
    channel_binding: Option<Result<Vec<u8>, String>>,
    io_timeout: Duration,
    cancel: CancellationToken,
    /// `cancel` as a descriptor, made on the first blocking wait (`wait_readable`).
    cancel_fd: Option<crate::util::cancel_fd::CancelFd>,
    /// What the connection is doing, for timeout messages and logs.
    phase: String,
    /// Set after a timeout or cancellation: the stream may be mid-message.
    broken: bool,
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

/// Where a connection attempt is, for the message when `connect_timeout` passes.
struct ConnectPhase(Mutex<&'static str>);

impl ConnectPhase {
    fn set(&self, p: &'static str) {
        if let Ok(mut g) = self.0.lock() {
            *g = p;
        }
    }
    fn get(&self) -> &'static str {
        self.0.lock().map(|g| *g).unwrap_or("connecting")
    }
}

impl Connection {
    /// Connects and authenticates. `replication` asks for a physical walsender. Bounded by
    /// `connect_timeout` (default `DEFAULT_CONNECT_TIMEOUT`) as a whole: TCP connect, TLS,
    /// startup and authentication.
    pub async fn connect(ci: &ConnInfo, replication: bool) -> Result<Connection, ClientError> {
        let limit = ci.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let phase = ConnectPhase(Mutex::new("TCP connect"));
        let attempt = async {
            match ci.sslmode {
                SslMode::Allow => match Self::connect_once(ci, replication, false, &phase).await {
                    Err(ClientError::Auth(_)) | Err(ClientError::Server(_)) => Self::connect_once(ci, replication, true, &phase).await,
                    other => other,
                },
                SslMode::Disable => Self::connect_once(ci, replication, false, &phase).await,
                _ => Self::connect_once(ci, replication, true, &phase).await,
            }
        };
        tokio::time::timeout(limit, attempt).await.map_err(|_| {
            ClientError::Timeout(format!(
                "after {}s connecting to {ci} (phase: {}; connect_timeout)",
                limit.as_secs(),
                phase.get()
            ))
        })?
    }

    async fn connect_once(ci: &ConnInfo, replication: bool, try_tls: bool, phase: &ConnectPhase) -> Result<Connection, ClientError> {
        phase.set("TCP connect");
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
                transport::configure_tcp(&s, ci).map_err(|e| ClientError::Io {
                    context: format!(
                        "setting TCP keepalives and tcp_user_timeout on the connection to {host}:{}",
                        ci.port
                    ),
                    source: e,
                })?;
                if try_tls {
                    phase.set("TLS negotiation");
                    Self::negotiate_tls(s, ci, host).await?
                } else {
                    (Transport::Tcp(s), false)
                }
            }
        };
        let channel_binding = match &io {
            Transport::Tls(s) => Some(match s.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => tls::tls_server_end_point(cert.as_ref()),
                None => Err("the server sent no certificate".to_string()),
            }),
            _ => None,
        };
        let mut conn = Connection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            server_version_num: 0,
            encrypted,
            describe: ci.to_string(),
            channel_binding,
            // Inside connect_timeout, which bounds the whole attempt.
            io_timeout: Duration::MAX,
            cancel: CancellationToken::new(),
            cancel_fd: None,
            phase: "startup".into(),
            broken: false,
        };
        conn.startup(ci, replication, phase).await?;
        conn.io_timeout = DEFAULT_IO_TIMEOUT;
        conn.phase = "idle".into();
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

    /// Picks the SCRAM mechanism and channel binding as libpq does for `channel_binding`.
    fn scram_start(&self, ci: &ConnInfo, mechanisms: &[String], password: &str) -> Result<(&'static str, ScramSha256), ClientError> {
        let offers = |m: &str| mechanisms.iter().any(|x| x == m);
        let mode = ci.channel_binding;
        if mode != ChannelBindingMode::Disable && offers(sasl::SCRAM_SHA_256_PLUS) {
            if let Some(data) = &self.channel_binding {
                match data {
                    Ok(hash) => {
                        return Ok((
                            sasl::SCRAM_SHA_256_PLUS,
                            ScramSha256::new(password.as_bytes(), ChannelBinding::tls_server_end_point(hash.clone())),
                        ))
                    }
                    Err(e) if mode == ChannelBindingMode::Require => {
                        return Err(ClientError::Auth(format!("channel_binding=require, but {e}")))
                    }
                    Err(_) => {}
                }
            }
        }
        if mode == ChannelBindingMode::Require {
            return Err(ClientError::Auth(if self.encrypted {
                "channel_binding=require, but the server does not offer SCRAM-SHA-256-PLUS".into()
            } else {
                "channel_binding=require needs a TLS connection (sslmode)".into()
            }));
        }
        if !offers(sasl::SCRAM_SHA_256) {
            return Err(ClientError::Auth(format!(
                "the server offers only SASL mechanisms {mechanisms:?}; pgark speaks SCRAM-SHA-256"
            )));
        }
        // "y": we could bind but the server did not offer it (a downgrade is then detected by
        // a server that does support it); "n": no TLS, or binding disabled.
        let cb = if self.encrypted && mode != ChannelBindingMode::Disable && self.channel_binding.as_ref().is_some_and(|r| r.is_ok()) {
            ChannelBinding::unrequested()
        } else {
            ChannelBinding::unsupported()
        };
        Ok((sasl::SCRAM_SHA_256, ScramSha256::new(password.as_bytes(), cb)))
    }

    async fn startup(&mut self, ci: &ConnInfo, replication: bool, phase: &ConnectPhase) -> Result<(), ClientError> {
        phase.set("startup");
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
        let require_binding = ci.channel_binding == ChannelBindingMode::Require;
        let no_binding =
            || ClientError::Auth("channel_binding=require, but the server authenticated pgark without SCRAM channel binding".into());
        // SCRAM state: None before, Some(false) while the server has not proven itself,
        // Some(true) once its signature was verified.
        let mut scram: Option<ScramSha256> = None;
        let mut server_proven: Option<bool> = None;
        let mut bound = false;
        phase.set("authentication");
        loop {
            match self.next_message().await? {
                BackendMessage::Authentication(req) => match req {
                    AuthRequest::Ok => {
                        if server_proven == Some(false) {
                            return Err(ClientError::Auth(
                                "the server ended SCRAM authentication without proving it knows the password (possible impostor)".into(),
                            ));
                        }
                        if require_binding && !bound {
                            return Err(no_binding());
                        }
                        break;
                    }
                    AuthRequest::CleartextPassword => {
                        if require_binding {
                            return Err(no_binding());
                        }
                        frontend::password_message(password()?.as_bytes(), &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                    }
                    AuthRequest::Md5Password { salt } => {
                        if require_binding {
                            return Err(no_binding());
                        }
                        let hash = postgres_protocol::authentication::md5_hash(ci.user.as_bytes(), password()?.as_bytes(), salt);
                        frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        if scram.is_some() {
                            return Err(ProtocolError::new("a second SASL start during authentication").into());
                        }
                        let (mechanism, client) = self.scram_start(ci, &mechanisms, &password()?)?;
                        bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
                        frontend::sasl_initial_response(mechanism, client.message(), &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                        scram = Some(client);
                        server_proven = Some(false);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let mut client = scram.take().ok_or_else(|| ProtocolError::new("SASLContinue without SASL start"))?;
                        // PBKDF2 with the server's iteration count (capped by postgres-protocol):
                        // off the async worker.
                        let (client, r) = tokio::task::spawn_blocking(move || {
                            let r = client.update(&data);
                            (client, r)
                        })
                        .await
                        .map_err(|e| ClientError::Auth(format!("SCRAM computation failed: {e}")))?;
                        r.map_err(|e| ClientError::Auth(format!("SCRAM: {e}")))?;
                        frontend::sasl_response(client.message(), &mut self.wbuf).map_err(encode_err)?;
                        self.flush().await?;
                        scram = Some(client);
                    }
                    AuthRequest::SaslFinal(data) => {
                        let client = scram.as_mut().ok_or_else(|| ProtocolError::new("SASLFinal without SASL start"))?;
                        client.finish(&data).map_err(|e| {
                            ClientError::Auth(format!(
                                "the server's SCRAM signature is wrong ({e}): it does not know the password (possible impostor)"
                            ))
                        })?;
                        server_proven = Some(true);
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
        phase.set("waiting for the server to be ready");
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

    /// Limits every later wait for the server (and every write) to `limit` of silence.
    pub fn set_io_timeout(&mut self, limit: Duration) {
        self.io_timeout = limit;
    }

    pub fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    /// Every later wait ends with `ClientError::Cancelled` as soon as `cancel` fires.
    pub fn set_cancel(&mut self, cancel: CancellationToken) {
        self.cancel = cancel;
        self.cancel_fd = None;
    }

    /// Names what the connection is doing now (shown when a wait times out).
    pub fn set_phase(&mut self, phase: impl Into<String>) {
        self.phase = phase.into();
    }

    pub fn phase(&self) -> &str {
        &self.phase
    }

    /// The major version, e.g. 15.
    pub fn server_major(&self) -> u32 {
        self.server_version_num / 10000
    }

    /// A secret-free description of the peer, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Runs one simple-query command and collects every result set until ReadyForQuery, at most
    /// `MAX_QUERY_ROWS` rows and `MAX_QUERY_BYTES` bytes of values. Replication commands are
    /// keyword-case-sensitive: callers pass upper-case keywords.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>, ClientError> {
        self.phase = query_phase(sql);
        frontend::query(sql, &mut self.wbuf).map_err(encode_err)?;
        self.flush().await?;
        let mut results = Vec::new();
        let mut current: Option<QueryResult> = None;
        let mut error = None;
        let (mut messages, mut bytes) = (0usize, 0usize);
        loop {
            let msg = self.next_message().await?;
            // Every message counts (rows, notices, anything): an answer that never ends is cut
            // off, not merely one with too many rows.
            messages += 1;
            if let BackendMessage::DataRow(values) = &msg {
                bytes += values.iter().map(|v| v.as_ref().map_or(0, |b| b.len())).sum::<usize>();
            }
            if messages > MAX_QUERY_ROWS || bytes > MAX_QUERY_BYTES {
                self.broken = true;
                return Err(ProtocolError::new(format!(
                    "the answer to {} exceeds {MAX_QUERY_ROWS} messages or {MAX_QUERY_BYTES} bytes",
                    self.phase
                ))
                .into());
            }
            match msg {
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
                other => return Err(ProtocolError::new(format!("unexpected {other:?} in reply to {}", self.phase)).into()),
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
        self.phase = query_phase(sql);
        frontend::query(sql, &mut self.wbuf).map_err(encode_err)?;
        self.flush().await
    }

    /// Waits for the next message, at most the I/O timeout of silence, and not past
    /// cancellation. Cancellation-safe as a future (bytes stay buffered).
    pub async fn next_message(&mut self) -> Result<BackendMessage, ClientError> {
        self.usable()?;
        loop {
            if let Some(m) = backend::parse(&mut self.rbuf)? {
                return Ok(m);
            }
            self.rbuf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => None,
                r = tokio::time::timeout(self.io_timeout, self.io.read_buf(&mut self.rbuf)) => Some(r),
            };
            let n = match read {
                None => {
                    self.broken = true;
                    return Err(ClientError::Cancelled);
                }
                Some(Err(_)) => {
                    self.broken = true;
                    return Err(self.timeout_error("waiting for"));
                }
                Some(Ok(r)) => r.map_err(|e| ClientError::Io {
                    context: format!("reading from {} ({})", self.describe, self.phase),
                    source: e,
                })?,
            };
            if n == 0 {
                return Err(ClientError::Closed(format!("{}, phase: {}", self.describe, self.phase)));
            }
        }
    }

    fn timeout_error(&self, what: &str) -> ClientError {
        ClientError::Timeout(format!(
            "after {}s {what} {} (phase: {})",
            self.io_timeout.as_secs(),
            self.describe,
            self.phase
        ))
    }

    fn usable(&self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Io {
                context: format!("{} ({})", self.describe, self.phase),
                source: std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the connection was abandoned after a timeout or cancellation",
                ),
            });
        }
        Ok(())
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
            Ok(Some(0)) => Err(ClientError::Closed(format!("{}, phase: {}", self.describe, self.phase))),
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(self.io_error("reading from", e)),
        }
    }

    /// The stream has been idle a while: drop the read buffer's capacity (256 KiB or more,
    /// reserved again by the next read) unless it holds unread bytes.
    pub fn release_idle(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    /// Blocking mode: waits at most `timeout` for the socket to become readable.
    pub fn wait_readable(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        if self.cancel_fd.is_none() {
            match crate::util::cancel_fd::CancelFd::new(&self.cancel) {
                Ok(c) => self.cancel_fd = Some(c),
                Err(e) => tracing::debug!(error = %e, "no eventfd for cancellation; polling for it instead"),
            }
        }
        let r = match &self.cancel_fd {
            Some(c) => self.io.wait_readable_or(c.raw(), timeout),
            None => self.io.wait_readable(timeout),
        };
        r.map_err(|e| self.io_error("waiting for", e))
    }

    /// Whether `wait_readable` ends by itself when the cancellation token fires.
    pub fn wakes_on_cancel(&self) -> bool {
        self.cancel_fd.is_some()
    }

    /// Blocking mode: sends raw frontend bytes (already framed) at once. While the server does
    /// not read, waits at most the I/O timeout, and ends at once on cancellation.
    pub fn send_raw_blocking(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        debug_assert!(self.wbuf.is_empty(), "no async write may be pending");
        self.usable()?;
        let cancel = self.cancel.clone();
        let r = self.io.write_all_blocking(bytes, self.io_timeout, &|| cancel.is_cancelled());
        r.map_err(|e| {
            self.broken = true;
            match e.kind() {
                std::io::ErrorKind::Interrupted => ClientError::Cancelled,
                std::io::ErrorKind::TimedOut => ClientError::Timeout(format!("writing to {} ({}): {e}", self.describe, self.phase)),
                _ => self.io_error("writing to", e),
            }
        })
    }

    /// Blocking mode, while stopping: sends a last message (the final status update) even though
    /// the cancellation token has fired, waiting at most `GOODBYE_LIMIT` for a server that does
    /// not read.
    pub fn send_raw_blocking_final(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.usable()?;
        let r = self.io.write_all_blocking(bytes, GOODBYE_LIMIT, &|| false);
        r.map_err(|e| {
            self.broken = true;
            self.io_error("writing to", e)
        })
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

    /// `UPLOAD_MANIFEST` (PostgreSQL 17+): sends a prior backup's backup_manifest in COPY IN,
    /// so that the next `BASE_BACKUP ( INCREMENTAL )` on this connection sends only what changed
    /// since it. The server's refusal (it cannot parse the manifest) is `ClientError::Server`.
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<(), ClientError> {
        self.send_query("UPLOAD_MANIFEST").await?;
        let mut error = None;
        loop {
            match self.next_message().await? {
                BackendMessage::CopyInResponse => break,
                BackendMessage::Error(e) => error = Some(e),
                BackendMessage::ReadyForQuery(_) => {
                    return Err(match error {
                        Some(e) => ClientError::Server(e),
                        None => ProtocolError::new("UPLOAD_MANIFEST ended without COPY IN").into(),
                    })
                }
                BackendMessage::Notice(_) | BackendMessage::ParameterStatus { .. } => {}
                other => return Err(ProtocolError::new(format!("unexpected {other:?} in reply to UPLOAD_MANIFEST")).into()),
            }
        }
        self.phase = "UPLOAD_MANIFEST: sending the prior backup's manifest".into();
        for part in manifest.chunks(64 * 1024) {
            frontend::CopyData::new(part).map_err(encode_err)?.write(&mut self.wbuf);
            if self.wbuf.len() >= 256 * 1024 {
                self.flush().await?;
            }
        }
        frontend::copy_done(&mut self.wbuf);
        self.flush().await?;
        loop {
            match self.next_message().await? {
                BackendMessage::Error(e) => error = Some(e),
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::CommandComplete(_) | BackendMessage::Notice(_) | BackendMessage::ParameterStatus { .. } => {}
                other => return Err(ProtocolError::new(format!("unexpected {other:?} after UPLOAD_MANIFEST")).into()),
            }
        }
        match error {
            Some(e) => Err(ClientError::Server(e)),
            None => Ok(()),
        }
    }

    /// Sends CopyDone.
    pub async fn send_copy_done(&mut self) -> Result<(), ClientError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await
    }

    /// Says goodbye politely: CopyDone first when `in_copy`, then Terminate. Never waits longer
    /// than `GOODBYE_LIMIT`, and runs even after cancellation (it is part of stopping); errors
    /// are irrelevant at this point.
    pub async fn close(mut self, in_copy: bool) {
        if self.broken {
            return;
        }
        if in_copy {
            frontend::copy_done(&mut self.wbuf);
        }
        frontend::terminate(&mut self.wbuf);
        let bytes = std::mem::take(&mut self.wbuf);
        let _ = tokio::time::timeout(GOODBYE_LIMIT, async {
            self.io.write_all(&bytes).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        })
        .await;
    }

    /// Says goodbye politely (Terminate), within `GOODBYE_LIMIT`.
    pub async fn terminate(self) {
        self.close(false).await
    }

    /// Writes what is queued, at most the I/O timeout, and not past cancellation.
    async fn flush(&mut self) -> Result<(), ClientError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.usable()?;
        let bytes = std::mem::take(&mut self.wbuf);
        let written = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            r = tokio::time::timeout(self.io_timeout, async {
                self.io.write_all(&bytes).await?;
                self.io.flush().await
            }) => Some(r),
        };
        match written {
            None => {
                self.broken = true;
                Err(ClientError::Cancelled)
            }
            Some(Err(_)) => {
                self.broken = true;
                Err(self.timeout_error("writing to"))
            }
            Some(Ok(r)) => r.map_err(|e| ClientError::Io {
                context: format!("writing to {} ({})", self.describe, self.phase),
                source: e,
            }),
        }
    }
}

/// The phase name of a command: its first words (`SHOW wal_segment_size`, `IDENTIFY_SYSTEM`).
fn query_phase(sql: &str) -> String {
    let mut words = sql.split_whitespace();
    let first = words.next().unwrap_or_default();
    match first {
        "SHOW" | "TIMELINE_HISTORY" => format!("{first} {}", words.next().unwrap_or_default()),
        _ => first.chars().take(40).collect(),
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
