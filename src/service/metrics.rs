//! Every metric pgark exports, in one place. Prometheus naming: one `pgark_` prefix, base units,
//! counters end in `_total`, LSNs as numeric gauges (bytes), one `server` label.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Series that no longer mean anything (a server removed by a reload, a limit no longer
/// configured). The `metrics` crate cannot delete a series, so `render` leaves them out.
static RETIRED: Mutex<Vec<Retired>> = Mutex::new(Vec::new());

/// Repositories removed by a reload: every series with their `repository` label is left out.
static RETIRED_REPOSITORIES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Hides every series of repository `name` from `/metrics` (a reload removed it).
pub fn retire_repository(name: &str) {
    let mut r = RETIRED_REPOSITORIES.lock().unwrap_or_else(|p| p.into_inner());
    if !r.iter().any(|x| x == name) {
        r.push(name.to_string());
    }
}

/// Shows repository `name`'s series again (a reload added it back).
pub fn revive_repository(name: &str) {
    RETIRED_REPOSITORIES.lock().unwrap_or_else(|p| p.into_inner()).retain(|x| x != name);
}

/// One retired series family: every metric of `server`, or only `metric` of it.
#[derive(Clone, PartialEq, Debug)]
struct Retired {
    metric: Option<&'static str>,
    server: String,
}

fn retired() -> std::sync::MutexGuard<'static, Vec<Retired>> {
    RETIRED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hides every series of `server` from `/metrics` (it was removed from the config).
pub fn retire_server(server: &str) {
    let mut r = retired();
    r.retain(|x| x.server != server);
    r.push(Retired {
        metric: None,
        server: server.to_string(),
    });
}

/// Hides one metric of `server` until it is set again.
fn retire(metric: &'static str, server: &str) {
    let entry = Retired {
        metric: Some(metric),
        server: server.to_string(),
    };
    let mut r = retired();
    if !r.contains(&entry) {
        r.push(entry);
    }
}

fn revive(metric: Option<&'static str>, server: &str) {
    retired().retain(|x| !(x.server == server && (metric.is_none() || x.metric == metric)));
}

/// The Prometheus text exposition, without retired series.
pub fn render(handle: &PrometheusHandle) -> String {
    let text = handle.render();
    let r = retired().clone();
    let repositories = RETIRED_REPOSITORIES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if r.is_empty() && repositories.is_empty() {
        return text;
    }
    // By server, so each line costs one lookup: with 100 servers the exposition has over ten
    // thousand lines, and matching each against every retired entry took 200 ms a scrape.
    let mut by_server: std::collections::HashMap<&str, Vec<Option<&'static str>>> = std::collections::HashMap::new();
    for x in &r {
        by_server.entry(x.server.as_str()).or_default().push(x.metric);
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if !line.starts_with('#') && (sample_retired(line, &by_server) || of_repository(line, &repositories)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether a sample line carries a `repository` label naming one of `repositories`.
fn of_repository(line: &str, repositories: &[String]) -> bool {
    if repositories.is_empty() {
        return false;
    }
    let Some((_, rest)) = line.split_once('{') else {
        return false;
    };
    let labels = rest.split_once('}').map_or("", |(l, _)| l);
    labels
        .split(',')
        .find_map(|l| l.strip_prefix("repository=\"").and_then(|v| v.strip_suffix('"')))
        .is_some_and(|name| repositories.iter().any(|r| r == name))
}

/// Whether a sample line (`name{labels} value`) belongs to a retired family. Histogram lines
/// (`_bucket`, `_sum`, `_count`) belong to their histogram.
fn sample_retired(line: &str, by_server: &std::collections::HashMap<&str, Vec<Option<&'static str>>>) -> bool {
    let Some((name, rest)) = line.split_once('{') else {
        return false;
    };
    let labels = rest.split_once('}').map_or("", |(l, _)| l);
    let Some(server) = labels
        .split(',')
        .find_map(|l| l.strip_prefix("server=\"").and_then(|v| v.strip_suffix('"')))
    else {
        return false;
    };
    let Some(metrics) = by_server.get(server) else {
        return false;
    };
    metrics.iter().any(|m| {
        m.is_none_or(|m| {
            name == m
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(m))
        })
    })
}

/// Buckets for fsync and acknowledgement latency, in seconds: 50µs to 5s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the global recorder (once per process) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            describe_from_docs();
            gauge!("pgark_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Creates a server's counters at zero, so that `increase()` and `rate()` have a series to work on
/// before the first event (Prometheus sees no series for a counter never incremented).
pub fn register_server(server: &str) {
    revive(None, server);
    for name in [
        "pgark_wal_received_bytes_total",
        "pgark_reconnects_total",
        "pgark_wal_segments_completed_total",
        "pgark_wal_segments_archived_total",
        "pgark_wal_archived_original_bytes_total",
        "pgark_wal_archived_stored_bytes_total",
        "pgark_wal_store_errors_total",
        "pgark_backups_total",
        "pgark_backup_failures_total",
        "pgark_monitor_errors_total",
    ] {
        counter!(name, "server" => server.to_string()).increment(0);
    }
    for reason in crate::receiver::DisconnectReason::ALL {
        counter!("pgark_disconnects_total", "server" => server.to_string(), "reason" => reason.as_str()).increment(0);
    }
    for task in SERVER_TASKS {
        counter!("pgark_task_failures_total", "server" => server.to_string(), "task" => *task).increment(0);
    }
    connection_state(server, crate::service::status::ConnState::Starting);
    for kind in crate::service::hooks::HookKind::ALL {
        counter!("pgark_hook_runs_total", "server" => server.to_string(), "hook" => kind.as_str()).increment(0);
        counter!("pgark_hook_failures_total", "server" => server.to_string(), "hook" => kind.as_str()).increment(0);
    }
}

/// A hook command was started (`service::hooks`).
pub fn hook_run(server: &str, hook: &'static str) {
    counter!("pgark_hook_runs_total", "server" => server.to_string(), "hook" => hook).increment(1);
}

/// A hook failed: non-zero exit, killed at its timeout, or could not be started.
pub fn hook_failed(server: &str, hook: &'static str) {
    counter!("pgark_hook_failures_total", "server" => server.to_string(), "hook" => hook).increment(1);
}

/// The daemon's tasks per server (the `task` label of `pgark_task_failures_total`).
pub const SERVER_TASKS: &[&str] = &[
    "receiver",
    "archiver",
    "monitor",
    "backup_scheduler",
    "drill_scheduler",
    "verify_scheduler",
];
/// The daemon's tasks for the whole catalog (counted with `server=""`).
pub const DAEMON_TASKS: &[&str] = &["catalog_watch", "http"];

/// A task of the daemon died (a panic or an early return) and was restarted.
pub fn task_failed(server: &str, task: &'static str) {
    counter!("pgark_task_failures_total", "server" => server.to_string(), "task" => task).increment(1);
}

/// A session ended; `reason` is a `receiver::DisconnectReason` label.
pub fn disconnected(server: &str, reason: &'static str) {
    counter!("pgark_disconnects_total", "server" => server.to_string(), "reason" => reason).increment(1);
}

/// The receiver's connection state: one series per state, 1 for the current one.
pub fn connection_state(server: &str, state: crate::service::status::ConnState) {
    use crate::service::status::ConnState::*;
    for (name, st) in [
        ("starting", Starting),
        ("connecting", Connecting),
        ("streaming", Streaming),
        ("retrying", Retrying),
        ("stopped", Stopped),
    ] {
        gauge!("pgark_connection_state", "server" => server.to_string(), "state" => name).set(if st == state { 1.0 } else { 0.0 });
    }
}

/// The metric tables of `docs/metrics.md` (`| `name{labels}` | type | meaning |`), the single source of each
/// metric's HELP text.
const METRICS_DOC: &str = include_str!("../../docs/metrics.md");

/// (name, type, meaning) for every metric row of `docs/metrics.md`.
pub fn documented_metrics() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in METRICS_DOC.lines() {
        let cells: Vec<&str> = line.split(" | ").map(|c| c.trim_matches(|c: char| c == '|' || c == ' ')).collect();
        if cells.len() != 3 || !cells[0].starts_with("`pgark_") {
            continue;
        }
        let meaning = cells[2].replace('`', "");
        for name in cells[0].split(", ") {
            let name = name.trim_matches('`');
            let name = name.split('{').next().unwrap_or(name);
            out.push((name.to_string(), cells[1].to_string(), meaning.clone()));
        }
    }
    out
}

fn describe_from_docs() {
    for (name, kind, help) in documented_metrics() {
        match kind.as_str() {
            "counter" => metrics::describe_counter!(name, help),
            "histogram" => metrics::describe_histogram!(name, help),
            _ => metrics::describe_gauge!(name, help),
        }
    }
}

/// One server's hot-path metric handles, looked up once per streaming session instead of once
/// per commit (each lookup allocates the label and hashes the key).
pub struct StreamMetrics {
    received: metrics::Counter,
    fsync: metrics::Histogram,
    ack: metrics::Histogram,
    received_lsn: metrics::Gauge,
    flushed_lsn: metrics::Gauge,
    server_sent_lsn: metrics::Gauge,
    recovery_window_end: metrics::Gauge,
}

impl StreamMetrics {
    pub fn new(server: &str) -> Self {
        let s = || server.to_string();
        StreamMetrics {
            received: counter!("pgark_wal_received_bytes_total", "server" => s()),
            fsync: histogram!("pgark_fsync_duration_seconds", "server" => s()),
            ack: histogram!("pgark_ack_latency_seconds", "server" => s()),
            received_lsn: gauge!("pgark_wal_received_lsn_bytes", "server" => s()),
            flushed_lsn: gauge!("pgark_wal_flushed_lsn_bytes", "server" => s()),
            server_sent_lsn: gauge!("pgark_server_sent_lsn_bytes", "server" => s()),
            recovery_window_end: gauge!("pgark_recovery_window_end_seconds", "server" => s()),
        }
    }

    pub fn wal_received(&self, bytes: u64) {
        self.received.increment(bytes);
    }

    pub fn fsync_duration(&self, d: Duration) {
        self.fsync.record(d.as_secs_f64());
    }

    pub fn ack_latency(&self, d: Duration) {
        self.ack.record(d.as_secs_f64());
    }

    pub fn wal_positions(&self, received: u64, flushed: u64) {
        self.received_lsn.set(received as f64);
        self.flushed_lsn.set(flushed as f64);
    }

    pub fn server_wal_end(&self, lsn: u64) {
        self.server_sent_lsn.set(lsn as f64);
    }

    /// End of the recovery window: the time up to which pgark holds all the server's WAL durably.
    pub fn recovery_window_end(&self, unix: u64) {
        self.recovery_window_end.set(unix as f64);
    }
}

pub fn set_up(server: &str, up: bool) {
    gauge!("pgark_up", "server" => server.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub fn timeline(server: &str, tli: u32) {
    gauge!("pgark_timeline", "server" => server.to_string()).set(tli as f64);
}

pub fn reconnect(server: &str) {
    counter!("pgark_reconnects_total", "server" => server.to_string()).increment(1);
}

pub fn segment_completed(server: &str) {
    counter!("pgark_wal_segments_completed_total", "server" => server.to_string()).increment(1);
}

pub fn segment_archived(server: &str, original: u64, stored: u64) {
    counter!("pgark_wal_segments_archived_total", "server" => server.to_string()).increment(1);
    counter!("pgark_wal_archived_original_bytes_total", "server" => server.to_string()).increment(original);
    counter!("pgark_wal_archived_stored_bytes_total", "server" => server.to_string()).increment(stored);
}

pub fn store_error(server: &str) {
    counter!("pgark_wal_store_errors_total", "server" => server.to_string()).increment(1);
}

pub fn synchronous_mode(server: &str, on: bool) {
    gauge!("pgark_synchronous_mode", "server" => server.to_string()).set(if on { 1.0 } else { 0.0 });
}

pub fn backup_succeeded(server: &str, end_unix: u64, duration: Duration, original: u64, stored_new: u64) {
    backup_succeeded_gauges(server, end_unix, duration, original, stored_new);
    counter!("pgark_backups_total", "server" => server.to_string()).increment(1);
}

/// The newest successful backup's facts (also refreshed from the catalog for backups other
/// processes took).
pub fn backup_succeeded_gauges(server: &str, end_unix: u64, duration: Duration, original: u64, stored_new: u64) {
    let s = server.to_string();
    gauge!("pgark_last_backup_success_timestamp_seconds", "server" => s.clone()).set(end_unix as f64);
    gauge!("pgark_backup_duration_seconds", "server" => s.clone()).set(duration.as_secs_f64());
    gauge!("pgark_backup_last_original_bytes", "server" => s.clone()).set(original as f64);
    gauge!("pgark_backup_last_stored_bytes", "server" => s).set(stored_new as f64);
}

pub fn backup_failed(server: &str) {
    counter!("pgark_backup_failures_total", "server" => server.to_string()).increment(1);
}

/// The results `pgark_verify_runs_total` counts.
pub const VERIFY_RESULTS: &[&str] = &["ok", "damaged", "failed"];

/// A server with a `verify_schedule`: its verify counters at 0, and the last successful verify
/// found in the catalog (`None`: never).
pub fn register_verify(server: &str, last_success: Option<u64>) {
    for result in VERIFY_RESULTS {
        counter!("pgark_verify_runs_total", "server" => server.to_string(), "result" => *result).increment(0);
    }
    if let Some(t) = last_success {
        gauge!("pgark_verify_last_success_timestamp_seconds", "server" => server.to_string()).set(t as f64);
    }
}

/// A scheduled verify ended: `ok` and `damaged` with the problems it found (and, when `ok`, its
/// end time), `failed` when it could not run to its end (the problem gauge keeps its value).
pub fn verify_finished(server: &str, result: &'static str, problems: Option<u64>, ended_unix: u64) {
    counter!("pgark_verify_runs_total", "server" => server.to_string(), "result" => result).increment(1);
    if let Some(p) = problems {
        gauge!("pgark_verify_problems", "server" => server.to_string()).set(p as f64);
    }
    if result == "ok" {
        gauge!("pgark_verify_last_success_timestamp_seconds", "server" => server.to_string()).set(ended_unix as f64);
    }
}

pub fn backups_in_catalog(server: &str, count: usize, stored_bytes: u64) {
    gauge!("pgark_backups", "server" => server.to_string()).set(count as f64);
    gauge!("pgark_backup_catalog_stored_bytes", "server" => server.to_string()).set(stored_bytes as f64);
}

/// Every gauge a monitoring round sets. While the facts are unknown (the monitoring connection
/// fails) they are absent, never their last value: an alert must not act on what the server said
/// an hour ago. `pgark_monitor_up` says why they are missing.
const SERVER_FACT_GAUGES: &[&str] = &[
    "pgark_server_current_lsn_bytes",
    "pgark_replication_lag_bytes",
    "pgark_slot_retained_bytes",
    "pgark_slot_safe_wal_size_bytes",
    "pgark_slot_exists",
    "pgark_slot_active",
    "pgark_slot_wal_status",
    "pgark_slot_retained_over_limit",
    "pgark_server_pg_wal_bytes",
    "pgark_server_write_lag_seconds",
    "pgark_server_flush_lag_seconds",
    "pgark_server_replay_lag_seconds",
    "pgark_sync_priority",
    "pgark_sync_standby",
    "pgark_sync_standby_named",
];

/// Sets a per-server gauge, or hides it while its value is unknown (NULL on the server: a lost
/// slot has no `restart_lsn`, an unlimited `max_slot_wal_keep_size` no `safe_wal_size`).
fn set_or_absent(name: &'static str, server: &str, value: Option<f64>) {
    match value {
        Some(v) => {
            revive(Some(name), server);
            gauge!(name, "server" => server.to_string()).set(v);
        }
        None => retire(name, server),
    }
}

/// The server-side facts of one monitoring round (see `monitor`). `flushed` is pgark's own flush
/// position, for the replication lag.
pub fn server_facts(server: &str, f: &crate::monitor::ServerFacts, flushed: Option<crate::pg::Lsn>) {
    let bool = |b: bool| Some(if b { 1.0 } else { 0.0 });
    let current = f.current_lsn;
    set_or_absent("pgark_server_current_lsn_bytes", server, current.map(|c| c.0 as f64));
    let lag = current.zip(flushed).map(|(c, fl)| c.saturating_sub(fl) as f64);
    set_or_absent("pgark_replication_lag_bytes", server, lag);
    set_or_absent("pgark_slot_retained_bytes", server, f.slot_retained_bytes.map(|r| r as f64));
    set_or_absent(
        "pgark_slot_safe_wal_size_bytes",
        server,
        f.slot_safe_wal_size_bytes.map(|v| v as f64),
    );
    set_or_absent("pgark_slot_exists", server, bool(f.slot_exists));
    set_or_absent("pgark_slot_active", server, bool(f.slot_active == Some(true)));
    revive(Some("pgark_slot_wal_status"), server);
    for state in ["reserved", "extended", "unreserved", "lost"] {
        let on = f.slot_wal_status.as_deref() == Some(state);
        gauge!("pgark_slot_wal_status", "server" => server.to_string(), "state" => state).set(if on { 1.0 } else { 0.0 });
    }
    set_or_absent("pgark_server_pg_wal_bytes", server, f.pg_wal_bytes.map(|b| b as f64));
    set_or_absent("pgark_server_write_lag_seconds", server, f.write_lag_seconds);
    set_or_absent("pgark_server_flush_lag_seconds", server, f.flush_lag_seconds);
    set_or_absent("pgark_server_replay_lag_seconds", server, f.replay_lag_seconds);
    set_or_absent("pgark_sync_priority", server, Some(f.sync_priority.unwrap_or(0) as f64));
    let sync = matches!(f.sync_state.as_deref(), Some("sync") | Some("quorum"));
    set_or_absent("pgark_sync_standby", server, bool(sync));
    set_or_absent("pgark_sync_standby_named", server, bool(f.named_in_synchronous_standby_names));
    gauge!("pgark_monitor_up", "server" => server.to_string()).set(1.0);
}

/// A failed monitoring round: the server-side facts become unknown (absent).
pub fn monitor_failed(server: &str) {
    for name in SERVER_FACT_GAUGES {
        retire(name, server);
    }
    gauge!("pgark_monitor_up", "server" => server.to_string()).set(0.0);
    counter!("pgark_monitor_errors_total", "server" => server.to_string()).increment(1);
}

/// The configured `slot_retained_limit` (absent when none is set, also after a reload removed
/// it) and whether it is exceeded.
pub fn slot_retained_limit(server: &str, limit: Option<u64>) {
    const NAME: &str = "pgark_slot_retained_limit_bytes";
    match limit {
        Some(l) => {
            revive(Some(NAME), server);
            gauge!(NAME, "server" => server.to_string()).set(l as f64);
        }
        None => retire(NAME, server),
    }
    slot_over_limit(server, false);
}

pub fn slot_over_limit(server: &str, over: bool) {
    set_or_absent("pgark_slot_retained_over_limit", server, Some(if over { 1.0 } else { 0.0 }));
}

/// The catalog's filesystem, the disk-pressure levels in bytes, the current level (0 ok,
/// 1 warning, 2 critical) and the projected seconds to full (+Inf when not filling).
pub fn catalog_space(space: &crate::service::status::CatalogSpace, warning_bytes: u64, critical_bytes: u64) {
    gauge!("pgark_catalog_free_bytes").set(space.free_bytes as f64);
    gauge!("pgark_catalog_total_bytes").set(space.total_bytes as f64);
    gauge!("pgark_catalog_free_warning_bytes").set(warning_bytes as f64);
    gauge!("pgark_catalog_free_critical_bytes").set(critical_bytes as f64);
    gauge!("pgark_catalog_pressure").set(space.pressure.as_number());
    gauge!("pgark_catalog_full_eta_seconds").set(space.full_eta_seconds.unwrap_or(f64::INFINITY));
}

pub fn catalog_checks_failed() {
    counter!("pgark_catalog_check_errors_total").increment(1);
}

/// Creates the daemon-wide counters at zero.
pub fn register_daemon() {
    counter!("pgark_catalog_check_errors_total").increment(0);
    for task in DAEMON_TASKS {
        counter!("pgark_task_failures_total", "server" => "", "task" => *task).increment(0);
    }
}

/// The pacing of asynchronous WAL for the synchronous servers (see `receiver::pacing`).
pub fn catchup_pacing(p: &crate::receiver::pacing::PacingSnapshot) {
    gauge!("pgark_async_pacing_active").set(if p.rate.is_some() { 1.0 } else { 0.0 });
    gauge!("pgark_async_pacing_rate_bytes_per_second").set(p.rate.unwrap_or(0.0));
    gauge!("pgark_async_pacing_target_seconds").set(p.target.map_or(0.0, |t| t.as_secs_f64()));
    counter!("pgark_async_paced_seconds_total").absolute(p.paced.as_secs());
    counter!("pgark_async_pacing_probes_total").absolute(p.probes);
}

/// One server's share of the catalog (`kind`: wal or backups) and its WAL ingest rate.
pub fn server_catalog(server: &str, c: &crate::service::status::ServerCatalog) {
    let s = || server.to_string();
    gauge!("pgark_catalog_size_bytes", "server" => s(), "kind" => "wal").set(c.wal_bytes as f64);
    gauge!("pgark_catalog_size_bytes", "server" => s(), "kind" => "backups").set(c.backup_bytes as f64);
    gauge!("pgark_wal_ingest_bytes_per_second", "server" => s()).set(c.wal_ingest_bytes_per_second);
}

/// Start of the recovery window: the end of the oldest restorable backup with unbroken WAL after
/// it (absent when there is none: nothing can be restored, and a NaN would draw as a bogus point
/// in Grafana).
pub fn recovery_window_start(server: &str, start_unix: Option<u64>) {
    const NAME: &str = "pgark_recovery_window_start_seconds";
    match start_unix {
        Some(t) => {
            revive(Some(NAME), server);
            gauge!(NAME, "server" => server.to_string()).set(t as f64);
        }
        None => retire(NAME, server),
    }
}

/// One prune's outcome.
pub fn pruned(server: &str, backups: usize, bytes: u64, result: &'static str) {
    counter!("pgark_prune_runs_total", "server" => server.to_string(), "result" => result).increment(1);
    counter!("pgark_pruned_backups_total", "server" => server.to_string()).increment(backups as u64);
    counter!("pgark_pruned_bytes_total", "server" => server.to_string()).increment(bytes);
}

/// One repository's copy of one server (`offsite_task`, every second).
pub fn offsite(server: &str, p: &crate::offsite::ServerProgress) {
    let labels = [("server", server.to_string()), ("repository", p.repository.clone())];
    if let Some(b) = p.lag_bytes {
        gauge!("pgark_offsite_lag_bytes", &labels).set(b as f64);
    }
    if let Some(s) = p.lag_seconds {
        gauge!("pgark_offsite_lag_seconds", &labels).set(s);
    }
    gauge!("pgark_offsite_queued_objects", &labels).set(p.queued_objects as f64);
    gauge!("pgark_offsite_queued_bytes", &labels).set(p.queued_bytes as f64);
    gauge!("pgark_offsite_backups", &labels).set(p.backups as f64);
    gauge!("pgark_offsite_failing", &labels).set(if p.last_error.is_some() { 1.0 } else { 0.0 });
    counter!("pgark_offsite_uploaded_objects_total", &labels).absolute(p.uploaded_objects_total);
    counter!("pgark_offsite_uploaded_bytes_total", &labels).absolute(p.uploaded_bytes_total);
    counter!("pgark_offsite_upload_errors_total", &labels).absolute(p.upload_errors_total);
}

/// Gaps in the server's WAL since its oldest backup.
pub fn wal_gaps(server: &str, open: usize, acknowledged: usize) {
    gauge!("pgark_wal_gaps", "server" => server.to_string()).set(open as f64);
    gauge!("pgark_wal_gaps_acknowledged", "server" => server.to_string()).set(acknowledged as f64);
}

/// The results of `pgark_drill_runs_total`: passed, failed (a record says where), or could not
/// start (no usable backup yet, another drill running, bad drill settings).
pub const DRILL_RESULTS: &[&str] = &["success", "failure", "error"];

/// Creates a server's drill counters at zero.
pub fn register_drill(server: &str) {
    for result in DRILL_RESULTS {
        counter!("pgark_drill_runs_total", "server" => server.to_string(), "result" => *result).increment(0);
    }
}

/// A scheduled drill ended with `result` (one of `DRILL_RESULTS`).
pub fn drill_run(server: &str, result: &'static str) {
    counter!("pgark_drill_runs_total", "server" => server.to_string(), "result" => result).increment(1);
}

/// The last successful drill of a server (also ones `pgark drill` ran): when it ended, and its
/// measured recovery time.
pub fn drill_last_success(server: &str, finished_unix: u64, rto_seconds: f64) {
    gauge!("pgark_drill_last_success_timestamp_seconds", "server" => server.to_string()).set(finished_unix as f64);
    gauge!("pgark_drill_rto_seconds", "server" => server.to_string()).set(rto_seconds);
}

#[cfg(test)]
mod tests {
    #[test]
    fn retired_series_are_left_out_by_name_and_server() {
        use super::sample_retired;
        let all: std::collections::HashMap<&str, Vec<Option<&'static str>>> = [("a", vec![None])].into();
        let one: std::collections::HashMap<&str, Vec<Option<&'static str>>> = [("a", vec![Some("pgark_fsync_duration_seconds")])].into();
        assert!(sample_retired("pgark_up{server=\"a\"} 1", &all));
        assert!(sample_retired("pgark_lag_bytes{repository=\"x\",server=\"a\"} 1", &all));
        assert!(!sample_retired("pgark_up{server=\"ab\"} 1", &all));
        assert!(!sample_retired("pgark_catalog_free_bytes 10", &all));
        assert!(sample_retired(
            "pgark_fsync_duration_seconds_bucket{server=\"a\",le=\"0.5\"} 3",
            &one
        ));
        assert!(sample_retired("pgark_fsync_duration_seconds_count{server=\"a\"} 3", &one));
        assert!(!sample_retired("pgark_fsync_duration_seconds_count{server=\"b\"} 3", &one));
        assert!(!sample_retired("pgark_up{server=\"a\"} 1", &one));
    }

    #[test]
    fn series_of_a_removed_repository_are_left_out() {
        use super::of_repository;
        let gone = vec!["old".to_string()];
        assert!(of_repository("pgark_offsite_lag_bytes{server=\"a\",repository=\"old\"} 5", &gone));
        assert!(!of_repository(
            "pgark_offsite_lag_bytes{server=\"a\",repository=\"older\"} 5",
            &gone
        ));
        assert!(!of_repository("pgark_up{server=\"a\"} 1", &gone));
        assert!(!of_repository("pgark_offsite_lag_bytes{server=\"a\",repository=\"old\"} 5", &[]));
    }

    /// Every metric name in this file is documented in `docs/metrics.md`.
    #[test]
    fn every_metric_is_in_the_readme() {
        let source = include_str!("metrics.rs");
        let mut names: Vec<&str> = source
            .split('"')
            .filter(|s| s.starts_with("pgark_") && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() > 40, "found only {names:?}");
        let documented = super::documented_metrics();
        for n in names.iter().filter(|n| **n != "pgark_") {
            assert!(
                documented.iter().any(|(d, _, _)| d == n),
                "{n} is not in docs/metrics.md's metric tables"
            );
        }
        for (name, kind, _) in &documented {
            assert!(["counter", "gauge", "histogram"].contains(&kind.as_str()), "{name}: type {kind:?}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
        }
    }
}
