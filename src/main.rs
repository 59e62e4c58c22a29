//! The `pgark` binary: parse arguments, set up logging and the runtime, run the command (`cli`),
//! exit with its code. No logic lives here.

use clap::Parser;
use pgark::cli::{exit, Cli};

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGARK_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: not in the journal, a log file, or PostgreSQL's log (where
    // `pgark wal-get`, a restore_command, writes).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    // Test builds only (the `failpoints` feature): FAILPOINTS=name=action;... from the tests.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    init_tracing(cli.log_format == "json");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let code = runtime.block_on(pgark::cli::run(cli));
    // Everything that matters has finished or been made crash-safe by now (`serve` bounds its
    // own stop); a blocking task still running must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    std::process::exit(code);
}
