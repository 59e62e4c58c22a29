//! How a long operation (a backup, a restore) reports progress, and the plain implementation
//! for logs: a line at most every 10 seconds. The terminal bar lives with the CLI.

use std::time::{Duration, Instant};

pub trait Progress: Send {
    /// The backup's data starts; `total` is the server's estimate in bytes.
    fn begin(&mut self, total: Option<u64>);
    /// Bytes received so far and bytes newly stored.
    fn update(&mut self, received: u64, stored: u64);
    /// A step worth telling the user about.
    fn phase(&mut self, message: &str);
    fn end(&mut self);
}

/// Progress as log lines, at most one every 10 seconds.
pub struct LogLines {
    /// What progresses, for the log line: `backup`, `restore`.
    what: &'static str,
    total: Option<u64>,
    started: Option<Instant>,
    last: Option<Instant>,
}

impl LogLines {
    pub fn new(what: &'static str) -> Self {
        LogLines {
            what,
            total: None,
            started: None,
            last: None,
        }
    }
}

impl Progress for LogLines {
    fn begin(&mut self, total: Option<u64>) {
        self.total = total;
        self.started = Some(Instant::now());
        self.last = Some(Instant::now());
    }
    fn update(&mut self, received: u64, stored: u64) {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(10)) {
            return;
        }
        self.last = Some(now);
        let secs = self.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0).max(0.001);
        let pct = self
            .total
            .filter(|t| *t > 0)
            .map(|t| format!(" ({:.0}%)", received as f64 * 100.0 / t as f64));
        tracing::info!(
            "{} progress: {} received{}, {} stored, {:.1} MB/s",
            self.what,
            received,
            pct.unwrap_or_default(),
            stored,
            received as f64 / secs / 1e6
        );
    }
    fn phase(&mut self, message: &str) {
        tracing::info!("{message}");
    }
    fn end(&mut self) {}
}
