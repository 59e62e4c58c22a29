//! How far a repository trails the local catalog, in bytes and in seconds: what a restore from
//! that repository alone would lose right now.
//!
//! Bytes are the local flush position less the repository's. Seconds are the age of the oldest
//! WAL the repository lacks: the tracker samples the local flush position over time, and the
//! lag is how long ago the local catalog first held a byte beyond the repository's position.

use crate::pg::Lsn;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples older than this are dropped: a lag longer than that is reported as at least this.
const HORIZON: Duration = Duration::from_secs(24 * 3600);
const MAX_SAMPLES: usize = 4096;

#[derive(Debug, Default)]
pub struct LagTracker {
    /// (when, local flush position), oldest first, positions increasing.
    samples: VecDeque<(Instant, Lsn)>,
}

impl LagTracker {
    /// Records the local flush position at `now`.
    pub fn sample(&mut self, now: Instant, local: Lsn) {
        if self.samples.back().is_some_and(|&(_, l)| l >= local) {
            return;
        }
        self.samples.push_back((now, local));
        while self.samples.len() > MAX_SAMPLES || self.samples.front().is_some_and(|&(t, _)| now.duration_since(t) > HORIZON) {
            // Thin out rather than forget: keep the oldest, drop the second.
            if self.samples.len() > 2 {
                self.samples.remove(1);
            } else {
                self.samples.pop_front();
            }
        }
    }

    /// Lag of a repository holding WAL up to `remote`, given the local flush position `local`.
    pub fn lag(&mut self, now: Instant, local: Lsn, remote: Lsn) -> (u64, Duration) {
        let bytes = local.0.saturating_sub(remote.0);
        if bytes == 0 {
            // Everything up to `remote` is there: older samples no longer matter.
            while self.samples.len() > 1 && self.samples.front().is_some_and(|&(_, l)| l <= remote) {
                self.samples.pop_front();
            }
            return (0, Duration::ZERO);
        }
        // The first sample beyond the remote position: the local catalog held that WAL since then.
        let since = self.samples.iter().find(|&&(_, l)| l > remote).map(|&(t, _)| t).unwrap_or(now);
        (bytes, now.duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_missing_wal() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = LagTracker::default();
        l.sample(t0, Lsn(100));
        l.sample(t0 + s(1), Lsn(200));
        l.sample(t0 + s(2), Lsn(300));
        assert_eq!(l.lag(t0 + s(2), Lsn(300), Lsn(300)), (0, Duration::ZERO));
        l.sample(t0 + s(3), Lsn(400));
        l.sample(t0 + s(4), Lsn(500));
        // The repository has up to 300: the WAL after it arrived at t0+3.
        assert_eq!(l.lag(t0 + s(10), Lsn(500), Lsn(300)), (200, s(7)));
        assert_eq!(l.lag(t0 + s(10), Lsn(500), Lsn(450)), (50, s(6)));
        // Never sampled beyond: counts from now.
        assert_eq!(l.lag(t0 + s(10), Lsn(600), Lsn(500)), (100, Duration::ZERO));
    }

    #[test]
    fn samples_stay_bounded() {
        let t0 = Instant::now();
        let mut l = LagTracker::default();
        for i in 0..10_000u64 {
            l.sample(t0 + Duration::from_millis(i), Lsn(i + 1));
        }
        assert!(l.samples.len() <= MAX_SAMPLES);
        assert_eq!(l.samples.front().unwrap().1, Lsn(1), "the oldest sample is kept");
    }
}
