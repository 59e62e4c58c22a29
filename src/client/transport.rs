//! The socket under a connection (TCP, Unix, or TLS over TCP), usable two ways: as a tokio
//! stream for connecting, authenticating and the replication commands, and with plain blocking
//! system calls for the streaming hot loop.
//!
//! Why both: while streaming WAL as a synchronous standby every commit on the primary waits for
//! one cycle of receive, write, fdatasync and reply, so the cycle is latency-critical. On its own
//! thread the receiver does best exactly what pg_receivewal does: `recv` until the socket is
//! empty, fsync, `send` the reply, and sleep in `poll(2)` on that one descriptor. Through the
//! async runtime every cycle also registered timers, took the reactor's locks and woke once more
//! for a spurious write-readiness edge after each reply.
//!
//! The blocking calls use the descriptor directly (never the runtime's cached readiness), so the
//! tokio side stays valid: afterwards it may see a stale readiness, which it handles as any
//! spurious wake-up (a read that returns `WouldBlock`). TLS goes through the same rustls session
//! object the tokio stream uses, so its state never diverges.

use bytes::{BufMut, BytesMut};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pub enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    fn fd(&self) -> RawFd {
        match self {
            Transport::Tcp(s) => s.as_raw_fd(),
            Transport::Unix(s) => s.as_raw_fd(),
            Transport::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }

    /// Appends what is available now to `buf` (reserving `chunk` bytes of room) without
    /// waiting: `Ok(None)` when nothing is, `Ok(Some(0))` at end of stream.
    pub fn read_now(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<Option<usize>> {
        let fd = self.fd();
        match self {
            Transport::Tcp(_) | Transport::Unix(_) => {
                buf.reserve(chunk);
                let spare = buf.chunk_mut();
                let n = recv_now(fd, spare.as_mut_ptr(), spare.len())?;
                if let Some(n) = n {
                    // SAFETY: recv initialized exactly n bytes of the spare capacity.
                    unsafe { buf.advance_mut(n) };
                }
                Ok(n)
            }
            Transport::Tls(s) => {
                let session = s.get_mut().1;
                let mut plain = [0u8; 16 * 1024];
                loop {
                    // Plaintext rustls already decrypted comes first.
                    match session.reader().read(&mut plain) {
                        Ok(n) => {
                            buf.extend_from_slice(&plain[..n]);
                            return Ok(Some(n));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    match session.read_tls(&mut FdIo(fd)) {
                        Ok(0) => return Ok(Some(0)),
                        Ok(_) => {
                            session
                                .process_new_packets()
                                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                            // An alert or key update to answer goes out at once.
                            let wait = WriteWait {
                                limit: TLS_ANSWER_LIMIT,
                                stop: &|| false,
                            };
                            while session.wants_write() {
                                write_tls_blocking(session, fd, &wait)?;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Writes all of `bytes`, blocking this thread until the kernel took them. While the peer
    /// does not read (a full send buffer), waits at most `limit` for room, and gives up at once
    /// when `stop` says so (checked every `STOP_CHECK`): a stalled network never holds a
    /// shutdown.
    pub fn write_all_blocking(&mut self, bytes: &[u8], limit: Duration, stop: &dyn Fn() -> bool) -> io::Result<()> {
        let fd = self.fd();
        let wait = WriteWait { limit, stop };
        match self {
            Transport::Tcp(_) | Transport::Unix(_) => send_all(fd, bytes, &wait),
            Transport::Tls(s) => {
                let session = s.get_mut().1;
                session.writer().write_all(bytes)?;
                while session.wants_write() {
                    write_tls_blocking(session, fd, &wait)?;
                }
                Ok(())
            }
        }
    }

    /// Waits until the socket is readable, at most `timeout`: true when it is, false on timeout
    /// or a signal. Callers drain with `read_now` first (TLS plaintext included: `read_now`
    /// returns `None` only when rustls holds none either).
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_fd(self.fd(), libc::POLLIN, timeout)
    }

    /// As `wait_readable`, but also ends (false) as soon as `wake` is readable: the receiver's
    /// cancellation (`util::cancel_fd`), so that it needs no periodic wake-up to notice it.
    pub fn wait_readable_or(&self, wake: RawFd, timeout: Duration) -> io::Result<bool> {
        let mut p = [
            libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        Ok(poll_fds(&mut p, timeout)? && p[0].revents != 0)
    }
}

/// How long an answer rustls owes the server mid-read (an alert, a key update) may wait for room.
const TLS_ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// Applies TCP keepalives and `TCP_USER_TIMEOUT` (libpq's `keepalives*` and `tcp_user_timeout`)
/// to a fresh TCP socket, and disables Nagle: status updates go out at once. Keepalives find a
/// half-open connection while the link is idle; the user timeout finds one while pgark is the one
/// sending (its status updates stay unacknowledged).
pub fn configure_tcp(s: &TcpStream, ci: &super::conninfo::ConnInfo) -> io::Result<()> {
    let sock = socket2::SockRef::from(s);
    sock.set_tcp_nodelay(true)?;
    match ci.keepalives {
        Some(k) => sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count),
        )?,
        None => sock.set_keepalive(false)?,
    }
    sock.set_tcp_user_timeout(ci.tcp_user_timeout)
}

/// `recv(MSG_DONTWAIT)` of at most `len` bytes into `ptr`.
fn recv_now(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: the caller gives `len` writable bytes at `ptr`; recv writes at most that many.
        let n = unsafe { libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// How often a blocked send looks at its stop condition.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How long a blocked send may wait for the peer to read, and what ends the wait early.
struct WriteWait<'a> {
    limit: Duration,
    stop: &'a dyn Fn() -> bool,
}

impl WriteWait<'_> {
    /// Waits until `fd` is writable: an error when the limit passes or `stop` says so.
    fn writable(&self, fd: RawFd) -> io::Result<()> {
        let start = std::time::Instant::now();
        loop {
            if (self.stop)() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "stopped while the server was not reading",
                ));
            }
            let left = self.limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the server has not read what pgark sent for {}s", self.limit.as_secs()),
                ));
            }
            if poll_fd(fd, libc::POLLOUT, left.min(STOP_CHECK))? {
                return Ok(());
            }
        }
    }
}

fn send_all(fd: RawFd, mut bytes: &[u8], wait: &WriteWait<'_>) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: send reads at most bytes.len() bytes from a valid slice. MSG_NOSIGNAL: a closed
        // peer is an error, not SIGPIPE.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => wait.writable(fd)?,
            _ => return Err(e),
        }
    }
    Ok(())
}

fn write_tls_blocking(session: &mut rustls::ClientConnection, fd: RawFd, wait: &WriteWait<'_>) -> io::Result<()> {
    match session.write_tls(&mut FdIo(fd)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait.writable(fd),
        Err(e) => Err(e),
    }
}

/// `poll(2)` on one descriptor: true when `events` are ready (or an error or hang-up is, which
/// the next read or write then reports), false on timeout or a signal.
fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    poll_fds(&mut [libc::pollfd { fd, events, revents: 0 }], timeout)
}

/// `poll(2)` on `fds`: true when any is ready, false on timeout or a signal.
fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid slice of pollfds of the length given.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0)
}

/// Non-blocking `Read`/`Write` on a raw descriptor, for rustls' `read_tls`/`write_tls`.
struct FdIo(RawFd);

impl Read for FdIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_now(self.0, buf.as_mut_ptr(), buf.len())?.ok_or_else(|| io::ErrorKind::WouldBlock.into())
    }
}

impl Write for FdIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: as in send_all.
            let n = unsafe { libc::send(self.0, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
