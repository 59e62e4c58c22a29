//! The tests' one HTTP client: a plain `GET` over a fresh connection (pgark's endpoint,
//! Prometheus' API), with a chunked body decoded.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `GET path` on `addr` (`host:port`); `timeout` bounds the connect and each read. Returns the
/// status code and the body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("GET {addr}{path}: {what}"));
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| bad("the address resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    if !chunked {
        return Ok((code, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or_else(|| bad("a truncated chunk"))?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("a bad chunk size"))?;
        if n == 0 {
            break;
        }
        out.push_str(after.get(..n).ok_or_else(|| bad("a truncated chunk"))?);
        rest = after.get(n + 2..).ok_or_else(|| bad("a truncated chunk"))?;
    }
    Ok((code, out))
}
