//! A fake server (only for malformed-message tests): a gap in the XLogData stream and garbage
//! bytes each end that connection with a clear message, and the daemon lives on.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn row(cols: &[&str], vals: &[Option<&str>]) -> Vec<u8> {
    let mut t = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        t.extend(cstr(c));
        t.extend_from_slice(&[0u8; 18]);
    }
    let mut d = (vals.len() as u16).to_be_bytes().to_vec();
    for v in vals {
        match v {
            Some(s) => {
                d.extend_from_slice(&(s.len() as i32).to_be_bytes());
                d.extend_from_slice(s.as_bytes());
            }
            None => d.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    [msg(b'T', &t), msg(b'D', &d), msg(b'C', &cstr("SELECT")), msg(b'Z', b"I")].concat()
}

fn read_frontend(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

fn xlogdata(start: u64, n: usize) -> Vec<u8> {
    let mut p = vec![b'w'];
    p.extend_from_slice(&start.to_be_bytes());
    p.extend_from_slice(&(start + n as u64).to_be_bytes());
    p.extend_from_slice(&0i64.to_be_bytes());
    p.extend(std::iter::repeat_n(0u8, n));
    msg(b'd', &p)
}

/// Serves one connection: startup, then the replication commands, then `misbehave`. Only
/// replication connections count as attempts (pgark's monitoring connection also comes here and
/// gets an error for its query).
fn serve(mut s: TcpStream, attempts: Arc<AtomicUsize>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    s.read_exact(&mut rest).unwrap();
    if rest[..4] == 80877103u32.to_be_bytes() {
        s.write_all(b"N").unwrap();
        s.read_exact(&mut len).unwrap();
        rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut rest).unwrap();
    }
    let replication = rest.windows(17).any(|w| w == b"replication\0true\0");
    let attempt = if replication {
        attempts.fetch_add(1, Ordering::SeqCst)
    } else {
        usize::MAX
    };
    let mut hello = msg(b'R', &0u32.to_be_bytes());
    hello.extend(msg(b'S', &[cstr("server_version"), cstr("15.0")].concat()));
    hello.extend(msg(b'Z', b"I"));
    s.write_all(&hello).unwrap();
    while let Some((tag, body)) = read_frontend(&mut s) {
        if tag != b'Q' {
            continue;
        }
        let q = String::from_utf8_lossy(&body[..body.len() - 1]).to_string();
        let reply = if q == "IDENTIFY_SYSTEM" {
            row(
                &["systemid", "timeline", "xlogpos", "dbname"],
                &[Some("4242"), Some("1"), Some("0/1000000"), None],
            )
        } else if q.starts_with("SHOW wal_segment_size") {
            row(&["wal_segment_size"], &[Some("16MB")])
        } else if q.starts_with("CREATE_REPLICATION_SLOT") {
            row(
                &["slot_name", "consistent_point", "snapshot_name", "output_plugin"],
                &[Some("pgark_fake"), Some("0/0"), None, None],
            )
        } else if q.starts_with("READ_REPLICATION_SLOT") {
            row(&["slot_type", "restart_lsn", "restart_tli"], &[None, None, None])
        } else if q.starts_with("START_REPLICATION") {
            let mut out = msg(b'W', &[0, 0, 0]);
            out.extend(xlogdata(0x1000000, 100));
            if attempt % 2 == 0 {
                out.extend(xlogdata(0x1000100, 100)); // gap: 0/1000064 expected
            } else {
                out.extend_from_slice(b"\xFF\x00\x00\x00\x08garbage!");
            }
            s.write_all(&out).unwrap();
            // Wait until the client hangs up.
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            return;
        } else {
            msg(b'E', &[cstr("SERROR"), cstr("C42601"), cstr("Munexpected"), vec![0]].concat())
        };
        s.write_all(&reply).unwrap();
    }
}

#[test]
fn malformed_stream_ends_the_connection_not_the_daemon() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a2 = attempts.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let a = a2.clone();
            std::thread::spawn(move || serve(s, a));
        }
    });
    let bins = pg();
    let real = Cluster::init(&bins, &[]).unwrap();
    real.start().unwrap();
    let yaml = server_yaml(
        "fake",
        &format!("host=127.0.0.1 port={port} user=x sslmode=prefer"),
        "synchronous: true",
    ) + &server_yaml("real", &real.conninfo(&real.superuser), "");
    let mut p = Pgark::start(&yaml);
    p.wait_streaming("real");
    wait_until(Duration::from_secs(30), "two fake sessions", || {
        attempts.load(Ordering::SeqCst) >= 3
    });
    let log = p.log_text();
    assert!(
        log.contains("gap") && log.contains("0/1000100") && log.contains("0/1000064"),
        "gap not reported with both LSNs:\n{}",
        tail(&log)
    );
    assert!(
        log.contains("unknown message type byte 0xFF"),
        "garbage not reported:\n{}",
        tail(&log)
    );
    assert!(!log.contains("panicked"), "{}", tail(&log));
    let fake = p.server("fake").unwrap();
    assert!(fake.flushed_lsn.unwrap_or_default() <= pgark::pg::Lsn(0x1000000 + 100));
    write_rows(&real, 20);
    p.wait_flushed("real", current_flush_lsn(&real));
    assert_eq!(p.server("real").unwrap().reconnects, 0);
    assert_eq!(p.term(), 0);
}
