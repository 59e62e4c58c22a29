//! Synchronous first: while a synchronous server is committing, the WAL of asynchronous servers
//! is paced so that the synchronous server's acknowledgement latency stays near what it is when
//! nothing else runs.
//!
//! Why: after an outage, a hundred asynchronous servers catch up gigabytes at once. Their writes
//! fill the disk queue that the synchronous server's fdatasync waits in, and their walsenders and
//! receivers take the CPUs its commits need: measured on 2 cores, the synchronous commit p50 went
//! from 0.8 ms to 5.4 ms (p99 2 ms to 360 ms) while 99 servers caught up 6 GB. Every commit on a
//! synchronous primary pays that latency; an asynchronous server only finishes catching up later.
//!
//! How (a delay-based controller, the idea of LEDBAT and of BBR's ProbeRTT):
//! - "Synchronous" means a commit may wait for pgark (`sync_role::SyncRole::on_commit_path`:
//!   the server names pgark in `synchronous_standby_names`; the `synchronous` setting until the
//!   monitor has answered). Receivers of synchronous servers report every acknowledgement's
//!   latency (`sync_ack`); all the others are paced, including a `synchronous: true` server
//!   whose primary does not name pgark.
//! - Each `WINDOW` the median (`QUANTILE`) is compared with the **base**: the lowest median seen
//!   without asynchronous WAL flowing (a quiet window, or a probe) in the last `BASE_MEMORY`.
//!   The median, not the tail: a run controlled on the 90th percentile paced less (its probes
//!   measured a noisier base) and the commit latency came out worse.
//! - Asynchronous receivers reserve every WAL message's bytes (`reserve`) on one shared virtual
//!   clock at the current rate (GCRA) and sleep until their turn, on their own thread: their
//!   socket fills and TCP holds their walsender back, so its CPU is freed too.
//! - Above the target (`TARGET_FACTOR` x base + `TARGET_SLACK`) the rate is cut by
//!   `DECREASE`; at or below it, raised by `INCREASE` (and the pacing ends once the rate is far
//!   above what is asked). Never below `MIN_RATE`: asynchronous servers always make progress,
//!   so their slots do not hold WAL on their primaries forever.
//! - A probe: with no base yet (the daemon started in the middle of a catch-up) or none for
//!   `PROBE_EVERY`, asynchronous WAL stops for `PROBE_LENGTH` and the synchronous latency then
//!   is the base. That costs about 2% of catch-up throughput while pacing.
//! - No synchronous acknowledgement for `SYNC_IDLE`: nobody to protect, no pacing.
//!
//! The flush positions reported are untouched: pacing only delays reading asynchronous WAL.
//! `catchup_pacing: off` in the config turns it off.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the controller looks at the latency and moves the rate.
pub const WINDOW: Duration = Duration::from_millis(200);
/// The percentile of each window's synchronous acknowledgement latencies that is held.
pub const QUANTILE: f64 = 0.5;
/// How long a quiet window's percentile counts as the base.
pub const BASE_MEMORY: Duration = Duration::from_secs(120);
/// A probe is taken when the newest base is older than this.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How long asynchronous WAL stops during a probe.
pub const PROBE_LENGTH: Duration = Duration::from_millis(800);
/// The first part of a probe drains what was queued (the disk's writeback above all): not
/// measured.
pub const PROBE_DRAIN: Duration = Duration::from_millis(400);
/// No synchronous acknowledgement for this long: pacing ends.
pub const SYNC_IDLE: Duration = Duration::from_secs(3);
/// The latency held: base x this + `TARGET_SLACK`.
pub const TARGET_FACTOR: f64 = 1.2;
/// Absorbs timer and scheduling noise below what a commit can feel.
pub const TARGET_SLACK: Duration = Duration::from_micros(100);
/// The rate is never cut below this (bytes per second, all asynchronous servers together).
pub const MIN_RATE: f64 = 8.0 * 1024.0 * 1024.0;
/// Above this the rate is no limit at all.
pub const MAX_RATE: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;
const DECREASE: f64 = 0.7;
const INCREASE: f64 = 1.1;
/// Added on each increase, so that a rate near the floor climbs in seconds, not minutes.
const INCREASE_STEP: f64 = 1024.0 * 1024.0;
/// Samples kept per window (a synchronous server commits at most some thousands a second).
const MAX_SAMPLES: usize = 4096;
/// A wait shorter than this is not worth a sleep.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// What the daemon shows of the pacing (metrics, `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PacingSnapshot {
    /// The rate asynchronous WAL is held to, bytes per second; `None`: not paced.
    pub rate: Option<f64>,
    /// The synchronous latency the pacing holds (target), once a base is known.
    pub target: Option<Duration>,
    /// Total time asynchronous receivers slept for pacing.
    pub paced: Duration,
    /// Probes taken.
    pub probes: u64,
}

/// The controller, without locks or clocks of its own (`now` is passed in), so tests drive it.
#[derive(Debug)]
pub struct Controller {
    rate: Option<f64>,
    /// GCRA: the time the next asynchronous byte may be read.
    next_free: Instant,
    window_start: Instant,
    samples: Vec<Duration>,
    /// Asynchronous bytes asked for in this window.
    async_bytes: u64,
    /// Quiet or probe windows' percentiles: (when, latency).
    bases: VecDeque<(Instant, Duration)>,
    /// A probe under way: (started, ends).
    probe: Option<(Instant, Instant)>,
    last_sync_ack: Option<Instant>,
    paced: Duration,
    probes: u64,
}

impl Controller {
    pub fn new(now: Instant) -> Self {
        Controller {
            rate: None,
            next_free: now,
            window_start: now,
            samples: Vec::new(),
            async_bytes: 0,
            bases: VecDeque::new(),
            probe: None,
            last_sync_ack: None,
            paced: Duration::ZERO,
            probes: 0,
        }
    }

    /// A synchronous server acknowledged WAL that arrived `latency` ago.
    pub fn sync_ack(&mut self, latency: Duration, now: Instant) {
        self.tick(now);
        self.last_sync_ack = Some(now);
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(latency);
        }
    }

    /// An asynchronous receiver read `bytes` of WAL: when it may read on (`None`: at once).
    pub fn reserve(&mut self, bytes: usize, now: Instant) -> Option<Instant> {
        self.tick(now);
        self.async_bytes += bytes as u64;
        let mut start = now.max(self.next_free);
        if let Some((_, until)) = self.probe {
            start = start.max(until);
        }
        match self.rate {
            Some(rate) => self.next_free = start + Duration::from_secs_f64(bytes as f64 / rate),
            None => self.next_free = start,
        }
        let wait = start.saturating_duration_since(now);
        if wait < MIN_SLEEP {
            return None;
        }
        self.paced += wait;
        Some(start)
    }

    /// The lowest quiet percentile remembered.
    pub fn base(&self) -> Option<Duration> {
        self.bases.iter().map(|&(_, m)| m).min()
    }

    pub fn target(&self) -> Option<Duration> {
        self.base().map(|b| b.mul_f64(TARGET_FACTOR) + TARGET_SLACK)
    }

    pub fn snapshot(&self) -> PacingSnapshot {
        PacingSnapshot {
            rate: self.rate,
            target: self.target(),
            paced: self.paced,
            probes: self.probes,
        }
    }

    /// Closes every window that has ended by `now` and moves the rate.
    pub fn tick(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let latency = quantile(&mut self.samples, QUANTILE);
        let observed = self.async_bytes as f64 / elapsed.as_secs_f64();
        let demand = self.async_bytes > 0;
        // A probe begins by draining what was already queued; the rest of it measures.
        let probing = self.probe.is_some_and(|(started, _)| self.window_start >= started + PROBE_DRAIN);
        if self.probe.is_some_and(|(_, until)| now >= until) {
            self.probe = None;
        }
        self.samples.clear();
        self.async_bytes = 0;
        self.window_start = now;
        while self
            .bases
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > BASE_MEMORY)
        {
            self.bases.pop_front();
        }

        let Some(latency) = latency else {
            if self.rate.is_some() && self.last_sync_ack.is_none_or(|t| now.saturating_duration_since(t) >= SYNC_IDLE) {
                tracing::info!(
                    "no synchronous commits for {}s: asynchronous WAL is no longer paced",
                    SYNC_IDLE.as_secs()
                );
                self.rate = None;
                self.next_free = now;
            }
            return;
        };
        if probing || !demand {
            self.bases.push_back((now, latency));
        }
        if !demand || probing || self.probe.is_some() {
            return;
        }
        let base_fresh = self
            .bases
            .back()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) < PROBE_EVERY);
        let Some(target) = self.target().filter(|_| base_fresh) else {
            self.probe = Some((now, now + PROBE_LENGTH));
            self.probes += 1;
            return;
        };
        if latency > target {
            let from = self.rate.unwrap_or(observed);
            let cut = (from * DECREASE).max(MIN_RATE);
            if self.rate.is_none() {
                tracing::info!(
                    "pacing asynchronous WAL to {:.0} MB/s: the synchronous servers' acknowledgement latency (p90) is {:.2} ms, above {:.2} ms",
                    cut / 1e6,
                    latency.as_secs_f64() * 1e3,
                    target.as_secs_f64() * 1e3
                );
            }
            self.rate = Some(cut);
        } else if let Some(rate) = self.rate {
            let raised = rate * INCREASE + INCREASE_STEP;
            self.rate = if raised >= MAX_RATE { None } else { Some(raised) };
            if self.rate.is_none() {
                self.next_free = now;
                tracing::info!("the synchronous servers' latency holds without pacing: asynchronous WAL is no longer paced");
            }
        }
    }
}

/// The `q` quantile of `samples` (reordered), `None` when empty.
fn quantile(samples: &mut [Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let at = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
    Some(*samples.select_nth_unstable(at).1)
}

/// The daemon's one pacer, shared by all receivers.
#[derive(Debug)]
pub struct Pacer {
    /// `catchup_pacing` (changed by a reload).
    enabled: AtomicBool,
    inner: Mutex<Controller>,
    /// When the pacer was made, the clock of `last_sync_ack_ms`.
    epoch: Instant,
    /// Milliseconds since `epoch` of the newest synchronous acknowledgement, plus one (0: none
    /// yet). Without one for `SYNC_IDLE` nothing is paced, so asynchronous receivers skip the
    /// lock altogether: a fleet with no synchronous server pays one atomic load per message.
    last_sync_ack_ms: AtomicU64,
}

impl Pacer {
    pub fn new(enabled: bool) -> Self {
        Pacer {
            enabled: AtomicBool::new(enabled),
            inner: Mutex::new(Controller::new(Instant::now())),
            epoch: Instant::now(),
            last_sync_ack_ms: AtomicU64::new(0),
        }
    }

    /// A pacer that never paces (one-off commands, tests).
    pub fn off() -> Self {
        Pacer::new(false)
    }

    /// Turns pacing on or off (a reload); turned off, waiting receivers go on at once.
    pub fn set_enabled(&self, enabled: bool) {
        if self.enabled.swap(enabled, Ordering::Relaxed) == enabled {
            return;
        }
        if !enabled {
            *self.lock() = Controller::new(Instant::now());
        }
    }

    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Controller> {
        // The controller holds only numbers: a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sync_ack(&self, latency: Duration) {
        if self.enabled() {
            let now = Instant::now();
            let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
            self.last_sync_ack_ms.store(ms, Ordering::Relaxed);
            self.lock().sync_ack(latency, now);
        }
    }

    /// How long an asynchronous receiver that just read `bytes` should wait before reading on.
    pub fn reserve(&self, bytes: usize) -> Duration {
        if !self.enabled() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let last = self.last_sync_ack_ms.load(Ordering::Relaxed);
        let since = (now.saturating_duration_since(self.epoch).as_millis() as u64 + 1).saturating_sub(last);
        if last == 0 || since >= SYNC_IDLE.as_millis() as u64 {
            // Nobody to protect (`tick` ends any pacing the same way; the daemon's snapshot
            // every second runs it).
            return Duration::ZERO;
        }
        match self.lock().reserve(bytes, now) {
            Some(at) => at.saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    pub fn snapshot(&self) -> PacingSnapshot {
        let mut c = self.lock();
        c.tick(Instant::now());
        c.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1024 * 1024;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
    }

    /// Drives `c` for `windows` windows: each window, `acks` synchronous acknowledgements of
    /// `latency` and `bytes` of asynchronous WAL asked for.
    fn drive(c: &mut Controller, t: &mut Instant, windows: usize, acks: usize, latency: Duration, bytes: usize) {
        for _ in 0..windows {
            for i in 0..acks.max(1) {
                let at = *t + WINDOW.mul_f64(i as f64 / acks.max(1) as f64);
                if acks > 0 {
                    c.sync_ack(latency, at);
                }
                if bytes > 0 {
                    c.reserve(bytes / acks.max(1), at);
                }
            }
            *t += WINDOW;
            c.tick(*t);
        }
    }

    #[test]
    fn no_synchronous_server_never_paces() {
        let mut t = Instant::now();
        let mut c = Controller::new(t);
        drive(&mut c, &mut t, 50, 0, Duration::ZERO, 64 * MB);
        assert_eq!(c.snapshot().rate, None);
        assert_eq!(c.reserve(MB, t), None);
        assert_eq!(c.snapshot().probes, 0);
    }

    #[test]
    fn quiet_windows_learn_the_base_and_a_catch_up_that_hurts_is_paced() {
        let mut t = Instant::now();
        let mut c = Controller::new(t);
        // Alone: 0.4 ms acknowledgements, nothing asynchronous.
        drive(&mut c, &mut t, 10, 50, ms(0.4), 0);
        assert_eq!(c.base(), Some(ms(0.4)));
        assert_eq!(c.target(), Some(ms(0.4 * 1.2 + 0.1)));
        // A catch-up starts and the latency quadruples: pacing starts from what was observed.
        drive(&mut c, &mut t, 1, 50, ms(1.6), 100 * MB);
        let first = c.snapshot().rate.expect("paced");
        assert!(first < 500.0 * MB as f64 * 0.71 && first > 300.0 * MB as f64, "{first}");
        // Still too slow: the rate keeps falling, but never below the floor.
        drive(&mut c, &mut t, 40, 50, ms(1.6), 10 * MB);
        assert_eq!(c.snapshot().rate, Some(MIN_RATE));
        // Readers now wait their turn: 16 MB at 8 MB/s is two seconds of the shared clock.
        let now = t;
        let _ = c.reserve(8 * MB, now);
        let wait = c.reserve(8 * MB, now).expect("waits");
        assert!(
            wait.duration_since(now) >= Duration::from_millis(990),
            "{:?}",
            wait.duration_since(now)
        );
    }

    #[test]
    fn latency_back_at_target_raises_the_rate_until_pacing_ends() {
        let mut t = Instant::now();
        let mut c = Controller::new(t);
        drive(&mut c, &mut t, 10, 50, ms(0.4), 0);
        drive(&mut c, &mut t, 1, 50, ms(2.0), 100 * MB);
        assert!(c.snapshot().rate.is_some());
        // Within target again: multiplicative increase, and no limit at all in the end. (A probe
        // comes every PROBE_EVERY; the quiet percentile it finds keeps the base.)
        let mut windows = 0;
        while c.snapshot().rate.is_some() {
            drive(&mut c, &mut t, 1, 50, ms(0.45), MB);
            windows += 1;
            assert!(windows < 1000, "the rate never came back");
        }
        assert!(windows < 200, "{windows} windows");
    }

    #[test]
    fn no_base_yet_probes_and_stops_asynchronous_wal_meanwhile() {
        let mut t = Instant::now();
        let mut c = Controller::new(t);
        // Started in the middle of a catch-up: no quiet window ever seen.
        drive(&mut c, &mut t, 1, 50, ms(3.0), 100 * MB);
        assert_eq!(c.snapshot().probes, 1);
        assert_eq!(c.base(), None);
        // During the probe, asynchronous readers wait for its end.
        let wait = c.reserve(MB, t).expect("held during the probe");
        assert!(wait.duration_since(t) >= PROBE_LENGTH - WINDOW);
        // The probe's later windows see the synchronous latency alone (asynchronous receivers
        // woken by earlier turns still ask: that does not make them noisy).
        drive(&mut c, &mut t, 4, 50, ms(0.5), MB);
        assert_eq!(c.base(), Some(ms(0.5)));
        // Then the catch-up, still hurting, is paced.
        drive(&mut c, &mut t, 1, 50, ms(3.0), 100 * MB);
        assert!(c.snapshot().rate.is_some());
    }

    #[test]
    fn the_probe_comes_back_while_pacing_lasts() {
        let mut t = Instant::now();
        let mut c = Controller::new(t);
        drive(&mut c, &mut t, 10, 50, ms(0.4), 0);
        let windows = (PROBE_EVERY.as_millis() / WINDOW.as_millis()) as usize + 10;
        drive(&mut c, &mut t, windows, 50, ms(1.0), 10 * MB);
        assert_eq!(c.snapshot().probes, 1);
    }

    #[test]
    fn synchronous_server_idle_ends_pacing() {
        let mut t = Instant::now();
        let mut c = Controller::new(t);
        drive(&mut c, &mut t, 10, 50, ms(0.4), 0);
        drive(&mut c, &mut t, 5, 50, ms(3.0), 100 * MB);
        assert!(c.snapshot().rate.is_some());
        let idle = (SYNC_IDLE.as_millis() / WINDOW.as_millis()) as usize + 1;
        drive(&mut c, &mut t, idle, 0, Duration::ZERO, 100 * MB);
        assert_eq!(c.snapshot().rate, None);
        assert_eq!(c.reserve(64 * MB, t), None);
    }

    #[test]
    fn turned_off_by_a_reload_nobody_waits_and_turned_on_it_starts_afresh() {
        let p = Pacer::new(true);
        {
            let mut c = p.lock();
            let mut t = Instant::now();
            drive(&mut c, &mut t, 10, 50, ms(0.4), 0);
            drive(&mut c, &mut t, 5, 50, ms(3.0), 100 * MB);
            assert!(c.snapshot().rate.is_some());
        }
        p.set_enabled(false);
        assert_eq!(p.reserve(64 * MB), Duration::ZERO);
        assert_eq!(p.snapshot().rate, None);
        p.set_enabled(true);
        assert_eq!(p.snapshot(), PacingSnapshot::default());
    }

    #[test]
    fn without_a_synchronous_acknowledgement_readers_skip_the_controller() {
        let p = Pacer::new(true);
        {
            let mut c = p.lock();
            let mut t = Instant::now();
            drive(&mut c, &mut t, 10, 50, ms(0.4), 0);
            drive(&mut c, &mut t, 40, 50, ms(3.0), 10 * MB);
            assert_eq!(c.snapshot().rate, Some(MIN_RATE));
        }
        // The controller is pacing (on its driven clock), but this pacer has never seen a
        // synchronous acknowledgement: nobody waits.
        assert_eq!(p.reserve(64 * MB), Duration::ZERO);
        // Once one comes, readers take their turn on the shared clock again.
        p.sync_ack(ms(0.4));
        assert!(p.reserve(64 * MB) > Duration::ZERO);
    }

    #[test]
    fn a_disabled_pacer_never_waits() {
        let p = Pacer::off();
        for _ in 0..100 {
            p.sync_ack(Duration::from_millis(50));
            assert_eq!(p.reserve(64 * MB), Duration::ZERO);
        }
    }
}
