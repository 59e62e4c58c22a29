//! How a running backup reports progress: a bar with bytes, rate and ETA (from the server's size
//! estimate) on a terminal, a log line every few seconds otherwise (daemon, CI, pipes).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
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

/// Picks the bar when stderr is a terminal, log lines otherwise.
pub fn for_terminal() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar { bar: None })
    } else {
        Box::new(LogLines::default())
    }
}

struct Bar {
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn begin(&mut self, total: Option<u64>) {
        let bar = ProgressBar::new(total.unwrap_or(0));
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }
    fn update(&mut self, received: u64, stored: u64) {
        if let Some(b) = &self.bar {
            if received > b.length().unwrap_or(0) {
                b.set_length(received);
            }
            b.set_position(received);
            b.set_message(format!("stored {}", indicatif::HumanBytes(stored)));
        }
    }
    fn phase(&mut self, message: &str) {
        match &self.bar {
            Some(b) => b.println(message),
            None => eprintln!("{message}"),
        }
    }
    fn end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Progress as log lines, at most one every 10 seconds.
#[derive(Default)]
pub struct LogLines {
    total: Option<u64>,
    started: Option<Instant>,
    last: Option<Instant>,
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
            "backup progress: {} received{}, {} stored, {:.1} MB/s",
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
