//! TCP ports for test servers (PostgreSQL clusters, `pgark serve`'s metrics endpoint,
//! Prometheus) without races.
//!
//! A port is handed out below Linux's ephemeral range (where no outgoing connection's local
//! port can land) and claimed by an `flock`ed lock file, `/tmp/pgark-test-ports/<port>.lock`,
//! that the [`Port`] holds for as long as it lives: parallel tests in one process and parallel
//! test processes never get the same port. A port something else listens on (a server leaked by
//! an earlier run, another program) fails the bind check and is skipped.
//!
//! The lock is held by the test process only (Rust opens files close-on-exec): the child that
//! binds the port (postgres, pgark) does not inherit it, and a crashed test run releases its
//! ports with its descriptors.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the lock files live: one directory shared by every test process on the machine.
pub const LOCK_DIR: &str = "/tmp/pgark-test-ports";

/// The lowest port handed out.
const FIRST: u16 = 20000;
/// One past the highest port handed out, unless the ephemeral range starts lower.
const LAST: u16 = 32000;

/// A TCP port on 127.0.0.1 reserved for this test: nothing else in any test process gets it
/// while this value lives. Keep it alive as long as the server that binds the port.
#[derive(Debug)]
pub struct Port {
    port: u16,
    _lock: File,
}

impl Port {
    pub fn get(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.port)
    }
}

/// The start of the kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn lock_dir() -> PathBuf {
    let dir = PathBuf::from(LOCK_DIR);
    if std::fs::create_dir_all(&dir).is_ok() {
        // Shared by every user's test runs (sticky, like /tmp). Fails harmlessly when another
        // user made it.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    dir
}

/// Claims `port` if no one holds its lock and nothing listens on it.
pub fn claim(port: u16) -> Option<Port> {
    try_claim(&lock_dir(), port)
}

fn try_claim(dir: &std::path::Path, port: u16) -> Option<Port> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(dir.join(format!("{port}.lock")))
        // A lock file another user created: reading is enough for flock.
        .or_else(|_| File::open(dir.join(format!("{port}.lock"))))
        .ok()?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return None;
    }
    // Ours now; skip it if something outside the scheme is listening there.
    TcpListener::bind(("127.0.0.1", port)).ok()?;
    Some(Port { port, _lock: file })
}

/// A free port, reserved (see [`Port`]). Panics when the whole range is taken.
pub fn reserve() -> Port {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let last = LAST.min(ephemeral_start());
    assert!(last > FIRST, "the ephemeral port range starts at {last}, leaving no room below it");
    let span = u32::from(last - FIRST);
    let dir = lock_dir();
    // Processes start at different places (by pid), so that parallel runs rarely contend.
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let i = (base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))) % span;
        if let Some(p) = try_claim(&dir, FIRST + i as u16) {
            return p;
        }
    }
    panic!("no free port in {FIRST}..{last}: every one is locked under {LOCK_DIR} or in use");
}
