//! The command line: argument parsing (clap) and the dispatch to one file per command. The
//! commands print for people by default and JSON with `--json`; `exit` is the one place exit
//! codes live.

pub mod backup;
pub mod backups;
pub mod check;
pub mod daemon_client;
pub mod demo;
pub mod drill;
pub mod exit;
pub mod keygen;
pub mod output;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod serve;
pub mod status;
pub mod verify;
pub mod wal_get;

use crate::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pgark",
    version,
    about = "PostgreSQL backup service: streams WAL over the replication protocol into a catalog, with durable synchronous acknowledgement (RPO=0)"
)]
pub struct Cli {
    /// Log format: text (default) or json. The level comes from PGARK_LOG (e.g. debug, or pgark=debug).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Parsed once at start; the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon: stream WAL from every configured server into the catalog.
    #[command(
        after_help = "Examples:\n  pgark serve --config /etc/pgark.yaml\n  pgark serve --config /etc/pgark.yaml --check\n\nSignals: SIGTERM/SIGINT stop cleanly (exit 0), SIGHUP reloads the config."
    )]
    Serve {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Validate the config (and that the catalog is writable), then exit.
        #[arg(long)]
        check: bool,
    },
    /// Validate a config file without starting anything.
    #[command(after_help = "Example:\n  pgark check-config --config /etc/pgark.yaml")]
    CheckConfig {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show, per server, whether it is streaming, its timeline, LSNs, last segment and lag.
    #[command(
        after_help = "Exit status: 0 when every server streams, 3 when one does not or the daemon is not running.\n\nExamples:\n  pgark status --config /etc/pgark.yaml\n  pgark status --config /etc/pgark.yaml --json | jq '.servers[].lag_bytes'"
    )]
    Status {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON (the same document as GET /status).
        #[arg(long)]
        json: bool,
    },
    /// Diagnose every server (or one): catalog, connections, role, slot, synchronous state, WAL
    /// and backup freshness, server settings; one line per check with what to do when not OK.
    #[command(
        after_help = "Each check is OK, WARNING (passes) or FAILED. Exit status: 0 nothing failed (warnings allowed), 9 a check failed, 2 bad usage or a config that cannot be loaded. Usable as a Nagios/Icinga probe: see docs/operations.md.\n\nExamples:\n  pgark check --config /etc/pgark.yaml\n  pgark check --config /etc/pgark.yaml main --timeout 5s\n  pgark check --config /etc/pgark.yaml --json | jq '.[] | select(.level != \"ok\")'"
    )]
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Only this server.
        server: Option<String>,
        /// Print a JSON list of {server, check, ok, level, detail}.
        #[arg(long)]
        json: bool,
        /// How long each server's connections may take (servers are checked concurrently).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Take a base backup of one server now (pgark serve may keep running on the same catalog).
    #[command(
        after_help = "The backup is published only when complete: every file checked against PostgreSQL's backup_manifest and the WAL from its start to its end durable in the catalog (streamed by pgark serve, or included in the backup when no receiver streams the server).\n\nWith --incremental (PostgreSQL 17+, summarize_wal = on) the server sends only the blocks changed since the newest backup, and pgark rebuilds whole files from them: the backup restores, verifies and can be deleted on its own, like a full one. When an incremental is not possible it takes a full backup and says why; --incremental=require fails instead (exit 10).\n\nExit status: 0 done, 1 failed (nothing kept), 2 bad usage or config, 4 another backup or a prune of this server is running (after --wait, if given), 10 --incremental=require and no incremental backup possible.\n\nExamples:\n  pgark backup --config /etc/pgark.yaml main\n  pgark backup --config /etc/pgark.yaml main --incremental\n  pgark backup --config /etc/pgark.yaml main --label before-upgrade --checkpoint fast\n  pgark backup --config /etc/pgark.yaml main --max-rate 50MB --json\n  pgark backup --config /etc/pgark.yaml main --wait 1h   # from cron, beside the daemon's schedule"
    )]
    Backup {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The server's name in the config.
        server: String,
        /// A label stored with the backup (default: "pgark <id>").
        #[arg(long)]
        label: Option<String>,
        /// fast: checkpoint immediately; spread: let the server spread it (the config's backup_checkpoint by default).
        #[arg(long, value_parser = ["fast", "spread"])]
        checkpoint: Option<String>,
        /// Limit the server's send rate: kB/s as a plain number (32 to 1048576), or with a unit per second (50MB); the config's backup_max_rate by default.
        #[arg(long, value_name = "RATE", value_parser = crate::config::parse_backup_rate_arg)]
        max_rate: Option<u32>,
        /// Pin the backup: `forever`, a time (2027-01-31) or a duration (90d); see `pgark keep`.
        #[arg(long, value_name = "UNTIL")]
        keep: Option<String>,
        /// Print the finished backup as JSON.
        #[arg(long)]
        json: bool,
        /// If another backup or a prune of this server is running (the daemon prunes right
        /// after each scheduled backup), wait up to this long for it (e.g. 30s, 2h) instead of
        /// refusing at once with exit 4.
        #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
        wait: Option<std::time::Duration>,
        /// Send only the blocks changed since the newest backup (PostgreSQL 17+): `auto` (the
        /// default when given without a value) falls back to a full backup, `require` fails.
        #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "auto", value_parser = ["auto", "require", "off"])]
        incremental: Option<String>,
    },
    /// List the backups in the catalog: id, status, times, LSNs, sizes.
    #[command(
        after_help = "STATUS is ok when the backup and all the WAL it needs are in the catalog, wal-missing otherwise.\n\nExamples:\n  pgark list-backups --config /etc/pgark.yaml\n  pgark list-backups --config /etc/pgark.yaml main --json | jq '.[] | select(.usable) | .id'"
    )]
    ListBackups {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// List this repository's backups (`local`: the local catalog's); default: the local
        /// catalog's and every repository's.
        #[arg(long, value_name = "NAME")]
        repo: Option<String>,
        /// Only this server.
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one backup in detail: WAL range and whether it is present, versions, sizes, tablespaces.
    #[command(
        after_help = "Exit status: 0 shown, 5 no such backup.\n\nExample:\n  pgark show-backup --config /etc/pgark.yaml main 20261123T231500Z --json"
    )]
    ShowBackup {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Look in this repository (`local`: the local catalog); default: local, then each repository.
        #[arg(long, value_name = "NAME")]
        repo: Option<String>,
        server: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete one backup and the stored chunks no other backup uses.
    #[command(
        after_help = "Refuses (exit 6) to delete the only usable backup of a server unless --force.\n\nExample:\n  pgark delete-backup --config /etc/pgark.yaml main 20261123T231500Z"
    )]
    DeleteBackup {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        server: String,
        id: String,
        /// Delete even the only usable backup.
        #[arg(long)]
        force: bool,
    },
    /// Apply the retention policy now: delete the backups and WAL it no longer keeps.
    #[command(
        after_help = "With --dry-run nothing is deleted: each backup and WAL range that would go is listed with the reason,\nwith the recovery window before and after. pgark serve prunes after each backup and at least hourly.\nA prune never runs beside a backup, restore, verify or drill of the same server (exit 4, try later);\none killed midway is finished by the next.\n\nExit status: 0 done, 1 failed, 2 bad usage or config, 4 a backup, restore, verify or drill of the server is running.\n\nExamples:\n  pgark prune --config /etc/pgark.yaml --dry-run\n  pgark prune --config /etc/pgark.yaml main\n  pgark prune --config /etc/pgark.yaml main --dry-run --json | jq '.[].backups'"
    )]
    Prune {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Apply this repository's own retention to it instead of the local catalog's.
        #[arg(long, value_name = "NAME")]
        repo: Option<String>,
        /// Only this server.
        server: Option<String>,
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pin a backup so retention keeps it (with the WAL from its start to its end), or release the pin.
    #[command(
        after_help = "A pinned backup restores to its end; the WAL after it is pruned like any other once it is older than\nevery backup the rules keep.\n\nExit status: 0 done, 2 bad usage, 5 no such backup.\n\nExamples:\n  pgark keep --config /etc/pgark.yaml main 20261123T231500Z --forever\n  pgark keep --config /etc/pgark.yaml main 20261123T231500Z --until 2027-06-30\n  pgark keep --config /etc/pgark.yaml main 20261123T231500Z --until 90d\n  pgark keep --config /etc/pgark.yaml main 20261123T231500Z --release"
    )]
    Keep {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        server: String,
        id: String,
        /// Until this time (2027-01-31, '2027-01-31 12:00:00+00') or for this long (90d).
        #[arg(long, value_name = "TIME", conflicts_with_all = ["forever", "release"])]
        until: Option<String>,
        /// Until released (the default).
        #[arg(long, conflicts_with = "release")]
        forever: bool,
        /// Remove the pin.
        #[arg(long)]
        release: bool,
    },
    /// Read back backups and the WAL after them: every chunk, every file against the
    /// backup_manifest, every WAL segment to the newest; say what is damaged or missing.
    #[command(
        after_help = "Checks the newest backup by default, one backup by id, or --all (chunks shared by several backups are read once).\nEach backup's result is stored beside it and shown by list-backups and show-backup (verified_at, verify_status).\n\nExit status: 0 everything intact, 9 something damaged or missing (each problem is printed, with the\npoint-in-time ranges no longer reachable), 2 bad usage or config, 5 no such backup (or no backup at all).\n\nExamples:\n  pgark verify --config /etc/pgark.yaml main\n  pgark verify --config /etc/pgark.yaml main 20261123T231500Z\n  pgark verify --config /etc/pgark.yaml main --all --json | jq '.problems[]'\n  pgark verify --config /etc/pgark.yaml main --acknowledge-gap 000000010000000000000007 --note 'slot lost on 2026-11-30'"
    )]
    Verify {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Verify what this repository holds instead of the local catalog.
        #[arg(long, value_name = "NAME")]
        repo: Option<String>,
        /// The server's name in the config.
        server: String,
        /// The backup to verify (default: the newest).
        id: Option<String>,
        /// Verify every backup of the server.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Instead of verifying: record the WAL gap that holds this segment (a name from
        /// `pgark status` or `list-backups`) as known, so it no longer alerts; it stays listed.
        #[arg(long, value_name = "SEGMENT", conflicts_with_all = ["id", "all"])]
        acknowledge_gap: Option<String>,
        /// Why the gap is acceptable (stored with the acknowledgement).
        #[arg(long, value_name = "TEXT", requires = "acknowledge_gap")]
        note: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a directory, with the recovery settings for point-in-time recovery.
    #[command(
        after_help = "Without a backup id pgark picks the newest backup that can reach the target and says which.\nAfterwards, starting PostgreSQL on the directory is all that is left: restore_command (pgark wal-get),\nthe target settings and recovery.signal (or standby.signal) are written.\n\nExit status: 0 restored, 1 failed (the directory is left unstartable), 2 bad input (options, non-empty\ntarget without --delta, running postmaster), 5 no such backup, 7 the target cannot be reached.\n\nExamples:\n  pgark restore --config /etc/pgark.yaml main --target-dir /srv/pg/restored\n  pgark restore --config /etc/pgark.yaml main --target-dir /srv/pg/restored --target-time '2026-11-23 14:05:00+00'\n  pgark restore --config /etc/pgark.yaml main 20261123T231500Z --target-dir /srv/pg/restored --target-lsn 0/5000060 --target-action promote\n  pgark restore --config /etc/pgark.yaml main --target-dir /srv/pg/data --delta --owner postgres\n  pgark restore --config /etc/pgark.yaml main --target-dir /srv/pg/replica --standby --tablespace ts1=/srv/pg/ts1"
    )]
    Restore(crate::cli::restore::RestoreArgs),
    /// Restore drill: restore a backup into a scratch directory, start PostgreSQL on it, check it, remove it, record the result.
    #[command(
        after_help = "Restores (the newest backup that reaches the target, or --backup) into a scratch directory,\nstarts PostgreSQL of the backup's major there on a private Unix socket (no TCP, no archiving, no\nreplication), waits for the end of recovery, connects to every database, runs pg_amcheck --all and\nthe drill.sql queries, stops it and removes the directory. The result is recorded in the catalog\n(<server>/drills/<time>.json) with the restore, recovery and total seconds (a measured RTO).\n\nExit status: 0 the drill passed, 9 it failed (the step, its error and PostgreSQL's log are printed),\n2 bad usage or config, 4 another drill is running, 5 no such backup, 7 the target cannot be reached.\n\nExamples:\n  pgark drill --config /etc/pgark.yaml main\n  pgark drill --config /etc/pgark.yaml main --backup 20261123T231500Z --json\n  pgark drill --config /etc/pgark.yaml main --target-time '2026-11-23 14:05:00+00' --keep"
    )]
    Drill(crate::cli::drill::DrillArgs),
    /// PostgreSQL's restore_command: copy one WAL segment or history file from the catalog into DEST.
    #[command(
        after_help = "Exit status: 0 served, 1 not in the catalog, 126 damaged or unreadable (PostgreSQL then stops recovery\ninstead of ending it early).\n\nExample (postgresql.conf; pgark restore writes this for you):\n  restore_command = 'pgark wal-get --config /etc/pgark.yaml main \"%f\" \"%p\"'"
    )]
    WalGet {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Read this repository alone (`local`: the local catalog alone); default: the local
        /// catalog, then each repository in order.
        #[arg(long, value_name = "NAME")]
        repo: Option<String>,
        server: String,
        /// The file recovery asks for (%f).
        walfile: String,
        /// Where to put it (%p).
        dest: PathBuf,
    },
    /// Internal: started by wal-get to decompress the next segments ahead of recovery.
    #[command(hide = true)]
    WalPrefetch {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "NAME")]
        repo: Option<String>,
        server: String,
        after: String,
        spool: PathBuf,
        segment_size: u64,
    },
    /// Work with off-site repositories (see `repositories:` in the config).
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Print a new random 256-bit encryption key (64 hexadecimal characters) for a key file.
    #[command(
        after_help = "The key id (the first 8 bytes of its SHA-256) goes to stderr; it is what encrypted objects record.\nKeep a copy of the key away from the backups: without it nothing encrypted with it can be read.\n\nExample:\n  (umask 077 && pgark keygen > /etc/pgark/repo.key)"
    )]
    Keygen,
    /// Start a throwaway PostgreSQL with pgark as its synchronous standby, write data, take a
    /// backup, then restore to a point in time and show the rows are there.
    #[command(
        after_help = "Ctrl-C ends the write load early; the point-in-time restore follows, then everything is removed.\n\nExamples:\n  pgark demo\n  pgark demo --duration 120\n  pgark demo --duration 0   # load until Ctrl-C"
    )]
    Demo {
        /// Seconds of write load before the restore (0: until Ctrl-C).
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        duration: u64,
        /// Address for /metrics, /healthz and /status.
        #[arg(long, default_value = "127.0.0.1:9187")]
        metrics_listen: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RepoCmd {
    /// Copy backups and WAL that repository B lacks from repository A, as stored (compressed,
    /// and encrypted when configured: nothing is re-compressed or re-encrypted).
    #[command(
        after_help = "Objects B has already are skipped, so an interrupted copy is finished by running it again.\n\nExit status: 0 copied, 1 failed (what was copied stays), 2 bad usage, 4 a prune of B is running.\n\nExamples:\n  pgark repo copy --config /etc/pgark.yaml --from offsite --to archive\n  pgark repo copy --config /etc/pgark.yaml --from offsite --to archive main --json"
    )]
    Copy {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "NAME")]
        from: String,
        #[arg(long, value_name = "NAME")]
        to: String,
        /// Only this server.
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one command to its end; the exit code (see `exit`).
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Cmd::Serve { config, check: true } | Cmd::CheckConfig { config } => serve::check_config(&config),
        Cmd::Serve { config, check: false } => serve::serve(config).await,
        Cmd::Status { config, json } => status::status(&config, json).await,
        Cmd::Check {
            config,
            server,
            json,
            timeout,
        } => check::check(&config, server.as_deref(), json, timeout).await,
        Cmd::Backup {
            config,
            server,
            label,
            checkpoint,
            max_rate,
            keep,
            json,
            wait,
            incremental,
        } => {
            let options = backup::BackupOptions {
                label,
                checkpoint,
                max_rate_kb: max_rate,
                keep,
                json,
                lock_wait: wait.unwrap_or_default(),
                incremental: incremental
                    .as_deref()
                    .map(crate::backup::IncrementalMode::parse)
                    .transpose()
                    .unwrap_or_default()
                    .unwrap_or_default(),
            };
            backup::backup(&config, &server, options).await
        }
        Cmd::Prune {
            config,
            repo,
            server,
            dry_run,
            json,
        } => prune::prune(&config, repo.as_deref(), server.as_deref(), dry_run, json),
        Cmd::Keep {
            config,
            server,
            id,
            until,
            forever: _,
            release,
        } => prune::keep(&config, &server, &id, until.as_deref(), release),
        Cmd::ListBackups {
            config,
            repo,
            server,
            json,
        } => backups::list_backups(&config, repo.as_deref(), server.as_deref(), json),
        Cmd::ShowBackup {
            config,
            repo,
            server,
            id,
            json,
        } => backups::show_backup(&config, repo.as_deref(), &server, &id, json),
        Cmd::DeleteBackup { config, server, id, force } => backups::delete_backup(&config, &server, &id, force),
        Cmd::Drill(args) => drill::drill(args).await,
        Cmd::Verify {
            config,
            server,
            acknowledge_gap: Some(segment),
            note,
            ..
        } => verify::acknowledge_gap(&config, &server, &segment, note.as_deref().unwrap_or("")),
        Cmd::Verify {
            config,
            repo,
            server,
            id,
            all,
            json,
            ..
        } => tokio::task::block_in_place(|| verify::verify(&config, repo.as_deref(), &server, id, all, json)),
        Cmd::Restore(args) => tokio::task::block_in_place(|| restore::restore(args)),
        Cmd::WalGet {
            config,
            repo,
            server,
            walfile,
            dest,
        } => wal_get::wal_get(&config, repo.as_deref(), &server, &walfile, &dest),
        Cmd::WalPrefetch {
            config,
            repo,
            server,
            after,
            spool,
            segment_size,
        } => wal_get::wal_prefetch(&config, repo.as_deref(), &server, &after, &spool, segment_size),
        Cmd::Keygen => keygen::keygen(),
        Cmd::Repo(RepoCmd::Copy {
            config,
            from,
            to,
            server,
            json,
        }) => tokio::task::block_in_place(|| repo::copy(&config, &from, &to, server.as_deref(), json)),
        Cmd::Demo { duration, metrics_listen } => demo::run((duration > 0).then_some(duration), &metrics_listen).await,
    }
}

/// `--timeout`: a duration such as `10s` or `500ms`, at least 100 ms.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d >= std::time::Duration::from_millis(100) => Ok(d),
        Ok(_) => Err(format!("{text:?}: at least 100ms")),
        Err(_) => Err(format!("{text:?}: expected a duration such as 10s")),
    }
}

/// Loads the config; the error is the exit code (the message is printed).
pub(crate) fn load_config(path: &std::path::Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

/// The catalog a command works on: `--repo NAME` (a repository), `--repo local`, or without it
/// the local catalog, followed by every repository in order when `chain` (reading commands).
pub(crate) fn catalog_for(config: &Config, repo: Option<&str>, chain: bool) -> Result<crate::catalog::Catalog, i32> {
    let repo = match repo {
        None if !chain => Some(crate::config::repositories::LOCAL),
        r => r,
    };
    config.read_catalog(repo).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

/// The retention policy that applies to `server` in the catalog `--repo` names, and the
/// repositories whose uploads hold it back (only the local catalog's prune waits for them).
pub(crate) fn policy_for(config: &Config, server: &str, repo: Option<&str>) -> (crate::retention::Policy, Vec<String>) {
    match repo.and_then(|r| config.repositories.iter().find(|c| c.name == r)) {
        Some(r) => (r.retention.clone(), Vec::new()),
        None => (
            config.servers[server].retention.clone(),
            config.servers[server].repositories.clone(),
        ),
    }
}

/// Checks that the config defines `server`.
pub(crate) fn known_server(config: &Config, server: &str) -> Result<(), i32> {
    if config.servers.contains_key(server) {
        return Ok(());
    }
    let known: Vec<&str> = config.servers.keys().map(String::as_str).collect();
    eprintln!(
        "error: {}: no server named {server:?}; the config defines: {}",
        config.path.display(),
        known.join(", ")
    );
    Err(exit::USAGE)
}
