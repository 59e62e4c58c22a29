//! systemd integration of `pgark serve` (`Type=notify`): READY=1 once the daemon serves,
//! STATUS= lines when the one-line summary changes, RELOADING=1/READY=1 around a SIGHUP reload,
//! STOPPING=1 on shutdown, and WATCHDOG=1 pings at half of `WATCHDOG_USEC` only while the daemon
//! is alive and making progress. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! Liveness (why the watchdog can restart a stuck pgark): a receiver bumps a per-server
//! heartbeat counter (`Heartbeat`, a relaxed atomic add in `ServerTelemetry`: no lock, no
//! syscall on the acknowledgement path) on every event it reports. While a server streams, its
//! receiver reports at least every `status_interval` (a status update, even on an idle server),
//! so a streaming receiver whose counter has not moved for longer than the stall limit (the
//! watchdog timeout, and at least twice its `status_interval`) is stuck: its thread is alive but
//! blocked (a hung fsync on a dead disk, a wedged syscall). The pings then stop and systemd
//! restarts pgark. A receiver that is waiting before a reconnect, or connecting (bounded by its
//! own timeouts), is not expected to report. Network trouble never stops the pings: a silent
//! server makes the receiver time out and reconnect, which it reports.
//!
//! The pings are sent from the daemon's own loop, so a wedged async runtime stops them too;
//! every receiver thread and every daemon task must also be running (supervision restarts a
//! dead one first).

use sd_notify::NotifyState;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A receiver's event counter, shared between its telemetry (writer) and the watchdog (reader).
#[derive(Clone, Default, Debug)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// One event reported. A relaxed add: safe on the acknowledgement path.
    #[inline]
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the watchdog learns of one server (or, with an empty name, of the daemon-wide tasks)
/// at one tick.
#[derive(Debug, Clone)]
pub struct Probe {
    pub server: String,
    /// The receiver thread is running (always true for the daemon-wide probe).
    pub receiver_alive: bool,
    /// Every task of this server (monitor, backup scheduler), or of the daemon (HTTP, catalog
    /// watch), is running. Holds the name of the first that is not.
    pub dead_task: Option<&'static str>,
    /// The receiver is streaming, so it must report at least every `status_interval`.
    pub streaming: bool,
    pub heartbeat: u64,
    pub status_interval: Duration,
}

/// Per-server heartbeat bookkeeping: when each counter last moved.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: BTreeMap<String, (u64, Instant)>,
}

impl Liveness {
    /// `Ok` when every probe is alive and progressing at `now`; else why not (for the log).
    /// `watchdog` is the systemd watchdog timeout (`WATCHDOG_USEC`).
    pub fn check(&mut self, probes: &[Probe], now: Instant, watchdog: Duration) -> Result<(), String> {
        self.seen.retain(|k, _| probes.iter().any(|p| &p.server == k));
        let mut problem = None;
        for p in probes {
            let entry = self.seen.entry(p.server.clone()).or_insert((p.heartbeat, now));
            // The stall clock runs only while streaming; it restarts at every event.
            if entry.0 != p.heartbeat || !p.streaming {
                *entry = (p.heartbeat, now);
            }
            let who = if p.server.is_empty() {
                "the daemon".to_string()
            } else {
                format!("server {}", p.server)
            };
            let why = if !p.receiver_alive {
                Some(format!("{who}: its receiver thread is not running"))
            } else if let Some(t) = p.dead_task {
                Some(format!("{who}: its {t} task is not running"))
            } else {
                let limit = stall_limit(watchdog, p.status_interval);
                let quiet = now.saturating_duration_since(entry.1);
                (p.streaming && quiet > limit).then(|| {
                    format!(
                        "{who}: its receiver is streaming but has reported nothing for {}s (limit {}s): stuck",
                        quiet.as_secs(),
                        limit.as_secs()
                    )
                })
            };
            if problem.is_none() {
                problem = why;
            }
        }
        problem.map_or(Ok(()), Err)
    }
}

/// How long a streaming receiver may stay silent: the watchdog timeout, and at least two of its
/// status intervals (it reports once per interval), so that a short `WatchdogSec=` cannot
/// restart a healthy pgark.
pub fn stall_limit(watchdog: Duration, status_interval: Duration) -> Duration {
    watchdog.max(status_interval * 2)
}

/// The daemon's side of the notify protocol.
pub struct Notifier {
    enabled: bool,
    /// `WATCHDOG_USEC`, when systemd asks for pings.
    watchdog: Option<Duration>,
    last_status: String,
    liveness: Liveness,
    /// The reason pings are held back, logged once per episode.
    withheld: Option<String>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and `WATCHDOG_PID`: a watchdog meant for
    /// another process is ignored).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = if enabled {
            sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
        } else {
            None
        };
        if let Some(w) = watchdog {
            tracing::info!(watchdog_ms = w.as_millis() as u64, "systemd watchdog enabled");
        }
        Notifier {
            enabled,
            watchdog,
            last_status: String::new(),
            liveness: Liveness::default(),
            withheld: None,
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        let sent = match std::env::var_os("NOTIFY_SOCKET") {
            // An abstract socket ("@name"), which sd-notify 0.5 does not address.
            Some(path) if path.as_encoded_bytes().starts_with(b"@") => send_abstract(&path.as_encoded_bytes()[1..], states),
            _ => sd_notify::notify(states),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }

    /// The daemon serves: catalog locked, receivers started, HTTP listening.
    pub fn ready(&mut self, status: String) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.last_status = status;
    }

    /// A SIGHUP reload begins (with the monotonic time systemd's `Type=notify-reload` wants).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Sends `STATUS=` when the summary changed.
    pub fn status(&mut self, status: String) {
        if status != self.last_status {
            self.send(&[NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    /// How often to call `watchdog`: half of `WATCHDOG_USEC` (as sd_watchdog_enabled(3)
    /// advises), or `None` without a watchdog.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| (w / 2).max(Duration::from_millis(10)))
    }

    /// Pings when every probe is alive and progressing; otherwise holds the ping back (logged
    /// once) so that systemd restarts pgark.
    pub fn watchdog(&mut self, probes: &[Probe], now: Instant) {
        let Some(timeout) = self.watchdog else { return };
        match self.liveness.check(probes, now, timeout) {
            Ok(()) => {
                if let Some(why) = self.withheld.take() {
                    tracing::info!(was = %why, "the daemon makes progress again; systemd watchdog pings resume");
                }
                self.send(&[NotifyState::Watchdog]);
            }
            Err(why) => {
                if self.withheld.is_none() {
                    tracing::error!(reason = %why, "holding back the systemd watchdog ping: systemd will restart pgark");
                    self.send(&[NotifyState::Status(&format!("watchdog: {why}"))]);
                    self.last_status.clear();
                }
                self.withheld = Some(why);
            }
        }
    }
}

/// Sends the states to the abstract Unix socket `name`, as sd_notify(3) does for `@name`.
fn send_abstract(name: &[u8], states: &[NotifyState]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// The one-line `STATUS=`: "streaming 2/3 servers (not streaming: b); last backup main
/// 2026-12-03 05:00:00 UTC".
pub fn summary(servers: &[crate::service::status::ServerStatus]) -> String {
    use crate::service::status::ConnState;
    let streaming = servers.iter().filter(|s| s.state == ConnState::Streaming).count();
    let mut out = format!(
        "streaming {streaming}/{} server{}",
        servers.len(),
        if servers.len() == 1 { "" } else { "s" }
    );
    let down: Vec<&str> = servers
        .iter()
        .filter(|s| s.state != ConnState::Streaming)
        .map(|s| s.server.as_str())
        .collect();
    if !down.is_empty() && streaming > 0 {
        out.push_str(&format!(" (not streaming: {})", down.join(", ")));
    }
    if let Some(last) = servers.iter().filter_map(|s| s.newest_backup_end.map(|t| (t, &s.server))).max() {
        out.push_str(&format!("; last backup {} {}", last.1, crate::util::time::format_utc(last.0)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(server: &str, streaming: bool, heartbeat: u64) -> Probe {
        Probe {
            server: server.into(),
            receiver_alive: true,
            dead_task: None,
            streaming,
            heartbeat,
            status_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_streaming_receiver_that_stops_reporting_is_stuck() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(4);
        assert!(l.check(&[probe("a", true, 1)], t0, w).is_ok());
        assert!(l.check(&[probe("a", true, 5)], t0 + Duration::from_secs(3), w).is_ok());
        // No event for 4s is still within the limit; for 5s it is not.
        assert!(l.check(&[probe("a", true, 5)], t0 + Duration::from_secs(7), w).is_ok());
        let e = l.check(&[probe("a", true, 5)], t0 + Duration::from_secs(8), w).unwrap_err();
        assert!(e.contains("server a") && e.contains("stuck"), "{e}");
        // It reports again: alive.
        assert!(l.check(&[probe("a", true, 6)], t0 + Duration::from_secs(9), w).is_ok());
    }

    #[test]
    fn a_receiver_not_streaming_need_not_report() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        assert!(l.check(&[probe("a", false, 1)], t0, w).is_ok());
        assert!(l.check(&[probe("a", false, 1)], t0 + Duration::from_secs(60), w).is_ok());
        // The clock starts when it streams.
        assert!(l.check(&[probe("a", true, 1)], t0 + Duration::from_secs(61), w).is_ok());
        assert!(l.check(&[probe("a", true, 1)], t0 + Duration::from_secs(64), w).is_err());
    }

    #[test]
    fn dead_threads_and_tasks_stop_the_pings() {
        let mut l = Liveness::default();
        let now = Instant::now();
        let mut p = probe("a", false, 0);
        p.receiver_alive = false;
        assert!(l.check(&[p], now, Duration::from_secs(10)).unwrap_err().contains("receiver thread"));
        let mut p = probe("", false, 0);
        p.dead_task = Some("http");
        assert!(l
            .check(&[p], now, Duration::from_secs(10))
            .unwrap_err()
            .contains("the daemon: its http task"));
    }

    #[test]
    fn the_stall_limit_covers_two_status_intervals() {
        assert_eq!(
            stall_limit(Duration::from_secs(3), Duration::from_secs(10)),
            Duration::from_secs(20)
        );
        assert_eq!(
            stall_limit(Duration::from_secs(30), Duration::from_secs(10)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn abstract_socket_datagrams_arrive() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgark-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        send_abstract(name.as_bytes(), &[NotifyState::Ready, NotifyState::Status("x y")]).unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x y\n");
    }

    #[test]
    fn summary_line() {
        use crate::service::status::{ConnState, ServerStatus};
        let mut a = ServerStatus::new("a", true);
        a.state = ConnState::Streaming;
        a.newest_backup_end = Some(1_800_000_000);
        let b = ServerStatus::new("b", true);
        let s = summary(&[a, b]);
        assert!(s.starts_with("streaming 1/2 servers (not streaming: b); last backup a 20"), "{s}");
    }
}
