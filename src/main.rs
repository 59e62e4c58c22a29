//! The `pgark` binary: parse arguments, set up logging, run the command, map the outcome to an
//! exit code. No logic lives here.

use clap::Parser;
use pgark::cli::{exit, Cli, Cmd};
use pgark::service::daemon::DaemonError;

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGARK_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
    let code = runtime.block_on(async {
        match cli.command {
            Cmd::Serve { config, check: true } | Cmd::CheckConfig { config } => pgark::cli::check_config(&config),
            Cmd::Serve { config, check: false } => match pgark::service::daemon::serve_with_signals(config).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: {e}");
                    match e {
                        DaemonError::Config(_) => exit::USAGE,
                        DaemonError::Lock(pgark::catalog::lock::LockError::Held { .. }) => exit::LOCKED,
                        _ => exit::FAILURE,
                    }
                }
            },
            Cmd::Status { config, json } => pgark::cli::status(&config, json).await,
            Cmd::Backup {
                config,
                server,
                label,
                checkpoint,
                max_rate,
                json,
            } => pgark::cli::backup::backup(&config, &server, label, checkpoint, max_rate, json).await,
            Cmd::ListBackups { config, server, json } => pgark::cli::backup::list_backups(&config, server.as_deref(), json),
            Cmd::ShowBackup { config, server, id, json } => pgark::cli::backup::show_backup(&config, &server, &id, json),
            Cmd::DeleteBackup { config, server, id, force } => pgark::cli::backup::delete_backup(&config, &server, &id, force),
            Cmd::Restore(args) => tokio::task::block_in_place(|| pgark::cli::restore::restore(args)),
            Cmd::WalGet {
                config,
                server,
                walfile,
                dest,
            } => pgark::cli::restore::wal_get(&config, &server, &walfile, &dest),
            Cmd::WalPrefetch {
                config,
                server,
                after,
                spool,
                segment_size,
            } => pgark::cli::restore::wal_prefetch(&config, &server, &after, &spool, segment_size),
            Cmd::Demo { duration, metrics_listen } => pgark::cli::demo::run(duration, &metrics_listen).await,
        }
    });
    // Everything that matters has finished or been made crash-safe by now (`serve` bounds its
    // own stop); a blocking task still running must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    std::process::exit(code);
}
