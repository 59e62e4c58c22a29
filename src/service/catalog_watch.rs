//! The daemon's catalog watch: every `disk_pressure.check_interval` (15 s), the free space of the catalog's filesystem
//! against the disk-pressure thresholds (logged once per change of level), each server's share
//! of the catalog, its WAL ingest rate, and the projected time until the filesystem is full.
//!
//! The usage walk (every `disk_pressure.usage_interval`) keeps what it found between rounds
//! (`catalog::usage::UsageCache`): it lists only directories that changed and stats only new
//! or in-place-growing files, so its cost follows the catalog's changes, not its size.
//!
//! Ingest rate: how fast each server's flushed LSN advanced over the last `RATE_WINDOW`, times
//! the stored/original ratio of its compressed segments. The LSN is monotonic and exact, so the
//! rate is smooth even when segments are rare; the ratio turns raw WAL into catalog bytes. The
//! projection counts WAL only: base backups are periodic, bounded by `backup_min_free`, and
//! stopped at the critical level.

use crate::catalog::space::{DiskThresholds, Level};
use crate::catalog::store::Capacity;
use crate::catalog::usage;
use crate::catalog::Catalog;
use crate::catalog::Layout;
use crate::service::status::{CatalogSpace, ServerCatalog, StatusBoard};
use crate::util::time::unix_now;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How far back the ingest rate looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Flushed-LSN samples of one server, oldest first, spanning at most `RATE_WINDOW`.
#[derive(Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// Records `lsn` at `at`; a position that went backwards (a new catalog, a restored
    /// server) starts the window over.
    pub fn record(&mut self, at: Instant, lsn: u64) {
        if self.samples.back().is_some_and(|&(_, l)| lsn < l) {
            self.samples.clear();
        }
        self.samples.push_back((at, lsn));
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window (0 with fewer than two samples).
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, l0)), Some(&(t1, l1))) if t1 > t0 => (l1 - l0) as f64 / t1.duration_since(t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Seconds until `free` bytes are used up at `rate` bytes per second (`None` when not filling).
pub fn full_eta(free: u64, rate: f64) -> Option<f64> {
    (rate > 0.0).then(|| free as f64 / rate)
}

/// What the watch carries from round to round.
struct Watch {
    layout: Layout,
    board: StatusBoard,
    shared: crate::catalog::space::SharedLevel,
    windows: BTreeMap<String, RateWindow>,
    level: Level,
    failing: bool,
    usage: Vec<(String, usage::ServerUsage)>,
    last_walk: Option<Instant>,
    /// What the last walk found, so the next one looks at what changed only (taken while a
    /// walk runs on the blocking pool).
    cache: Option<usage::UsageCache>,
}

/// Measures the catalog every `disk_pressure.check_interval`, publishing to the board, the
/// metrics and `shared` (the level the archivers act on), until `cancel`.
pub async fn run(
    layout: Layout,
    thresholds: tokio::sync::watch::Receiver<DiskThresholds>,
    board: StatusBoard,
    shared: crate::catalog::space::SharedLevel,
    cancel: CancellationToken,
) {
    let mut w = Watch {
        layout,
        board,
        shared,
        windows: BTreeMap::new(),
        level: Level::Ok,
        failing: false,
        usage: Vec::new(),
        last_walk: None,
        cache: Some(usage::UsageCache::default()),
    };
    loop {
        fail::fail_point!("catalog-watch");
        let thresholds = *thresholds.borrow();
        w.round(&thresholds).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(thresholds.check_interval) => {}
        }
    }
}

impl Watch {
    async fn round(&mut self, thresholds: &DiskThresholds) {
        let names = self.sample_rates();
        let same_servers = self.usage.len() == names.len() && self.usage.iter().zip(&names).all(|((a, _), b)| a == b);
        let now = Instant::now();
        let walk = !same_servers || self.last_walk.is_none_or(|w| now.duration_since(w) >= thresholds.usage_interval);
        if walk {
            self.last_walk = Some(now);
        }
        let (cap, per_server) = self.measure(names, walk).await;
        let mut errors = Vec::new();
        match per_server {
            Some(Ok(p)) => self.usage = p,
            Some(Err(e)) => errors.push(format!("walking the catalog for its usage: {e}")),
            None => {}
        }
        let total_rate = self.publish_usage();
        match cap {
            Ok(Some(cap)) => self.publish_space(cap, total_rate, thresholds),
            Ok(None) => {}
            Err(e) => errors.push(format!("measuring free space: {e}")),
        }
        self.report(errors);
    }

    /// Records each server's flushed LSN for its ingest rate; returns the servers' names.
    fn sample_rates(&mut self) -> Vec<String> {
        let servers = self.board.snapshot();
        let now = Instant::now();
        for s in &servers {
            if let Some(l) = s.flushed_lsn {
                self.windows.entry(s.server.clone()).or_default().record(now, l.0);
            }
        }
        self.windows.retain(|name, _| servers.iter().any(|s| &s.server == name));
        servers.into_iter().map(|s| s.server).collect()
    }

    /// Free space (one statvfs) and, when due, the usage walk, off the async threads. They are
    /// reported apart: a walk that fails (an unreadable file) must not freeze the pressure level.
    async fn measure(&mut self, names: Vec<String>, walk: bool) -> Measured {
        let root = self.layout.root().to_path_buf();
        let mut cache = self.cache.take().unwrap_or_default();
        let measured = tokio::task::spawn_blocking(move || {
            let catalog = Catalog::open(&root);
            let store = catalog.store();
            let cap = store.capacity();
            let layout = Layout::new(&root);
            let per_server = walk.then(|| {
                cache.begin_round();
                let r = names
                    .into_iter()
                    .map(|n| usage::server_usage_cached(&mut cache, &layout, store.as_ref(), &n).map(|u| (n, u)))
                    .collect::<std::io::Result<Vec<_>>>();
                cache.end_round();
                tracing::debug!(stats = cache.stats, "catalog usage walked (only what changed was looked at)");
                r
            });
            ((cap, per_server), cache)
        })
        .await;
        match measured {
            Ok((m, cache)) => {
                self.cache = Some(cache);
                m
            }
            Err(e) => {
                tracing::error!(error = %e, "catalog measurement task failed");
                (Err(std::io::Error::other("measurement task failed")), None)
            }
        }
    }

    /// Each server's share and stored ingest rate; returns the total rate.
    fn publish_usage(&self) -> f64 {
        let mut total_rate = 0.0;
        for (name, u) in &self.usage {
            let raw_rate = self.windows.get(name).map(RateWindow::rate).unwrap_or(0.0);
            let c = ServerCatalog {
                wal_bytes: u.wal.bytes,
                backup_bytes: u.backups.bytes,
                wal_ingest_bytes_per_second: raw_rate * u.wal_stored_ratio.unwrap_or(1.0),
            };
            total_rate += c.wal_ingest_bytes_per_second;
            crate::service::metrics::server_catalog(name, &c);
            self.board.update(name, |s| s.catalog = Some(c));
        }
        total_rate
    }

    /// The pressure level (logged once per change), the projection, to every reader.
    fn publish_space(&mut self, cap: Capacity, total_rate: f64, thresholds: &DiskThresholds) {
        let new_level = thresholds.level(cap);
        if new_level != self.level {
            log_level_change(self.level, new_level, cap.free, thresholds);
            self.level = new_level;
        }
        let space = CatalogSpace {
            free_bytes: cap.free,
            total_bytes: cap.total,
            pressure: new_level,
            full_eta_seconds: full_eta(cap.free, total_rate),
            at: unix_now(),
        };
        crate::service::metrics::catalog_space(
            &space,
            thresholds.catalog_free_warning.bytes(cap.total),
            thresholds.catalog_free_critical.bytes(cap.total),
        );
        self.shared.set(space.pressure);
        self.board.set_catalog_space(space);
    }

    /// Logs the first failure of a series; counts every one.
    fn report(&mut self, errors: Vec<String>) {
        if errors.is_empty() {
            self.failing = false;
            return;
        }
        if !self.failing {
            tracing::warn!(catalog = %self.layout.root().display(), errors = ?errors, "cannot measure the catalog's space and usage");
            self.failing = true;
        }
        crate::service::metrics::catalog_checks_failed();
    }
}

type Measured = (
    std::io::Result<Option<Capacity>>,
    Option<std::io::Result<Vec<(String, usage::ServerUsage)>>>,
);

fn log_level_change(old: Level, new: Level, free: u64, t: &DiskThresholds) {
    let free = crate::util::units::human_bytes(free);
    match new {
        Level::Critical => tracing::error!(
            free = %free, critical = %t.catalog_free_critical,
            "catalog free space is CRITICAL: new base backups are not started; WAL streaming continues while space lasts. Free space in the catalog now"
        ),
        Level::Warning if old < Level::Warning => tracing::warn!(
            free = %free, warning = %t.catalog_free_warning,
            "catalog free space is low (warning level); plan more space or fewer backups"
        ),
        _ => tracing::info!(free = %free, level = ?new, "catalog free space improved"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::default();
        assert_eq!(w.rate(), 0.0);
        w.record(t0, 1000);
        assert_eq!(w.rate(), 0.0);
        w.record(t0 + Duration::from_secs(10), 11_000);
        assert!((w.rate() - 1000.0).abs() < 1e-6);
        // Old samples leave the window; the rate follows the recent slope.
        for i in 1..=100u64 {
            w.record(t0 + Duration::from_secs(10 + i * 15), 11_000 + i * 15 * 10);
        }
        assert!((w.rate() - 10.0).abs() < 1e-6, "{}", w.rate());
        // Going backwards restarts.
        w.record(t0 + Duration::from_secs(5000), 5);
        assert_eq!(w.rate(), 0.0);
    }

    #[test]
    fn eta() {
        assert_eq!(full_eta(1000, 0.0), None);
        assert_eq!(full_eta(1000, 10.0), Some(100.0));
    }
}
