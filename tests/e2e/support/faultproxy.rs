//! A TCP fault proxy between pgark and PostgreSQL, for the network fault-injection tests.
//!
//! It forwards bytes both ways and, when armed, injects a fault on a connection at a chosen
//! moment: when the client sends a command (a substring of what pgark sends: `IDENTIFY_SYSTEM`,
//! `START_REPLICATION`, `BASE_BACKUP`…), after the server has sent a number of bytes, after the
//! server sends a message with a given tag (`c`: CopyDone), or at once. Faults: stall both ways
//! with both sockets left open (a half-open connection: nothing is read or forwarded any more),
//! reset (RST), close (FIN), cut one direction only, or trickle (one byte every 50 ms). While the
//! proxy is "down", new connections are accepted and then stalled, as by a black-holing
//! middlebox. Server->client framing is followed (connections must not use TLS: `sslmode=disable`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// On every connection now open, and on the next one.
    Now,
    /// When the client's bytes contain this text (before forwarding them).
    ClientSends(String),
    /// When the client's bytes contain these bytes (the SSLRequest, say).
    ClientBytes(Vec<u8>),
    /// After the server has sent this many bytes on a connection.
    ServerBytes(u64),
    /// After forwarding a server message with this tag.
    ServerMessage(u8),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    Stall,
    Reset,
    Close,
    CutToServer,
    CutToClient,
    Trickle,
}

#[derive(Default)]
struct Conn {
    client: Option<TcpStream>,
    server: Option<TcpStream>,
    /// Each direction: stalled (nothing read or forwarded) and trickling.
    stall_c2s: AtomicBool,
    stall_s2c: AtomicBool,
    trickle: AtomicBool,
    s2c_bytes: AtomicU64,
    closed: AtomicBool,
    /// The client sent an SSLRequest: the server's one-byte answer comes before any framing.
    ssl_answer_pending: AtomicBool,
}

impl Conn {
    fn apply(&self, f: Fault) {
        match f {
            Fault::Stall => {
                self.stall_c2s.store(true, Ordering::SeqCst);
                self.stall_s2c.store(true, Ordering::SeqCst);
            }
            Fault::CutToServer => self.stall_c2s.store(true, Ordering::SeqCst),
            Fault::CutToClient => self.stall_s2c.store(true, Ordering::SeqCst),
            Fault::Trickle => self.trickle.store(true, Ordering::SeqCst),
            Fault::Reset => {
                if let Some(c) = &self.client {
                    reset(c);
                }
                if let Some(s) = &self.server {
                    reset(s);
                }
                self.closed.store(true, Ordering::SeqCst);
            }
            Fault::Close => self.close(),
        }
    }

    fn close(&self) {
        for s in [&self.client, &self.server].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// RST instead of FIN: linger 0, then close.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

struct Shared {
    upstream: String,
    armed: Mutex<Option<(Trigger, Fault)>>,
    /// Log of faults injected: (trigger, fault), oldest first.
    fired: Mutex<Vec<(Trigger, Fault)>>,
    down: AtomicBool,
    conns: Mutex<Vec<Arc<Conn>>>,
    stop: AtomicBool,
}

impl Shared {
    /// Fires the armed fault on `c` if `matches` says the trigger is met.
    fn check(&self, c: &Conn, matches: impl Fn(&Trigger) -> bool) -> bool {
        let mut armed = self.armed.lock().unwrap();
        if let Some((t, f)) = armed.clone() {
            if matches(&t) {
                *armed = None;
                self.fired.lock().unwrap().push((t, f));
                c.apply(f);
                return true;
            }
        }
        false
    }
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 forwarding to `upstream` (host:port).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            armed: Mutex::new(None),
            fired: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        handle(&sh, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FaultProxy { port, shared }
    }

    /// Arms one fault: it fires once, on the first connection where `trigger` is met.
    pub fn arm(&self, trigger: Trigger, fault: Fault) {
        if trigger == Trigger::Now {
            for c in self
                .shared
                .conns
                .lock()
                .unwrap()
                .iter()
                .filter(|c| !c.closed.load(Ordering::SeqCst))
            {
                c.apply(fault);
            }
            self.shared.fired.lock().unwrap().push((trigger, fault));
            return;
        }
        *self.shared.armed.lock().unwrap() = Some((trigger, fault));
    }

    /// Whether the armed fault has fired.
    pub fn fired(&self) -> usize {
        self.shared.fired.lock().unwrap().len()
    }

    /// The network goes down: every open connection stalls, and new ones are accepted and
    /// stalled.
    pub fn down(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        for c in self.shared.conns.lock().unwrap().iter() {
            c.apply(Fault::Stall);
        }
    }

    /// The network is back: connections that were stalled, cut or trickling are dropped (as the
    /// server side would have timed them out), new ones pass.
    pub fn heal(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
        *self.shared.armed.lock().unwrap() = None;
        for c in self.shared.conns.lock().unwrap().iter() {
            if c.stall_c2s.load(Ordering::SeqCst) || c.stall_s2c.load(Ordering::SeqCst) || c.trickle.load(Ordering::SeqCst) {
                reset_conn(c);
            }
        }
    }
}

fn reset_conn(c: &Conn) {
    c.apply(Fault::Reset);
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self.shared.conns.lock().unwrap().iter() {
            c.close();
        }
    }
}

fn handle(sh: &Arc<Shared>, client: TcpStream) {
    let server = match TcpStream::connect(&sh.upstream) {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn {
        client: client.try_clone().ok(),
        server: server.try_clone().ok(),
        ..Default::default()
    });
    if sh.down.load(Ordering::SeqCst) {
        conn.apply(Fault::Stall);
    }
    sh.conns.lock().unwrap().push(conn.clone());
    let (sh1, c1) = (sh.clone(), conn.clone());
    let (cr, sw) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || pump(&sh1, &c1, cr, sw, true));
    let (sh2, c2) = (sh.clone(), conn);
    std::thread::spawn(move || pump(&sh2, &c2, server, client, false));
}

/// One direction. `c2s`: client to server. Holds (reads nothing) while stalled.
fn pump(sh: &Shared, conn: &Conn, mut from: TcpStream, mut to: TcpStream, c2s: bool) {
    let stalled = || if c2s { &conn.stall_c2s } else { &conn.stall_s2c };
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    // Server->client framing: bytes left of the current message, its tag.
    let mut frame_left: u64 = 0;
    let mut header: Vec<u8> = Vec::new();
    loop {
        if conn.closed.load(Ordering::SeqCst) || sh.stop.load(Ordering::SeqCst) {
            return;
        }
        if stalled().load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => {
                conn.close();
                return;
            }
        };
        let data = &buf[..n];
        if c2s {
            let text = String::from_utf8_lossy(data);
            if data.starts_with(&SSL_REQUEST) {
                conn.ssl_answer_pending.store(true, Ordering::SeqCst);
            }
            sh.check(conn, |t| match t {
                Trigger::ClientSends(p) => text.contains(p.as_str()),
                Trigger::ClientBytes(b) => data.windows(b.len()).any(|w| w == b.as_slice()),
                _ => false,
            });
            if stalled().load(Ordering::SeqCst) || conn.closed.load(Ordering::SeqCst) {
                // The command never reaches the server.
                continue;
            }
            if write_out(conn, &mut to, data).is_err() {
                return;
            }
            continue;
        }
        // Server to client: forward piece by piece (header, body) so that a trigger lands on a
        // message boundary.
        let mut at = 0;
        if conn.ssl_answer_pending.swap(false, Ordering::SeqCst) {
            if write_out(conn, &mut to, &data[..1]).is_err() {
                return;
            }
            at = 1;
        }
        while at < data.len() {
            if stalled().load(Ordering::SeqCst) || conn.closed.load(Ordering::SeqCst) {
                break;
            }
            let left = data.len() - at;
            let take = if header.len() < 5 {
                let k = (5 - header.len()).min(left);
                header.extend_from_slice(&data[at..at + k]);
                if header.len() == 5 {
                    frame_left = (u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as u64).saturating_sub(4);
                }
                k
            } else {
                let k = (frame_left as usize).min(left);
                frame_left -= k as u64;
                k
            };
            if write_out(conn, &mut to, &data[at..at + take]).is_err() {
                return;
            }
            at += take;
            let total = conn.s2c_bytes.fetch_add(take as u64, Ordering::SeqCst) + take as u64;
            let mut finished_tag = None;
            if header.len() == 5 && frame_left == 0 {
                finished_tag = Some(header[0]);
                header.clear();
            }
            sh.check(conn, |t| match t {
                Trigger::ServerBytes(b) => total >= *b,
                Trigger::ServerMessage(tag) => finished_tag == Some(*tag),
                _ => false,
            });
        }
    }
}

/// The SSLRequest message: length 8, code 80877103.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn write_out(conn: &Conn, to: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    if conn.trickle.load(Ordering::SeqCst) {
        for b in data {
            if conn.closed.load(Ordering::SeqCst) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            to.write_all(std::slice::from_ref(b))?;
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(());
    }
    to.write_all(data)
}
