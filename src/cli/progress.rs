//! The terminal side of progress reporting: a bar with bytes, rate and ETA (from the server's
//! size estimate) when stderr is a terminal, log lines otherwise (daemon, CI, pipes).

use crate::util::progress::{LogLines, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Picks the bar when stderr is a terminal, log lines otherwise.
pub fn for_terminal(what: &'static str) -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar {
            bar: None,
            // A verify only reads: no "stored" figure to show.
            show_stored: what != "verify",
        })
    } else {
        Box::new(LogLines::new(what))
    }
}

struct Bar {
    bar: Option<ProgressBar>,
    show_stored: bool,
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
            if self.show_stored {
                b.set_message(format!("stored {}", indicatif::HumanBytes(stored)));
            }
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
