//! The daemon's monitoring task of one server: runs `monitor::round` every `monitor_interval`,
//! compares the slot's retention with its limit, logs transitions, and publishes the facts to
//! the status board and the metrics.

use crate::monitor::{query_timeout, round, slot_limit_warning, MonitorError, ServerFacts, Settings};
use crate::receiver::sync_role::{Seen, SyncRole};
use crate::service::status::StatusBoard;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The per-server monitoring task of the daemon: a round every `interval`, its facts and
/// failures to the board and the metrics.
pub async fn run(cfg: Settings, board: StatusBoard, role: Arc<SyncRole>, cancel: CancellationToken) {
    let ci = &cfg.conninfo;
    let server = cfg.name.clone();
    let mut failing = false;
    let mut over_limit = false;
    crate::service::metrics::slot_retained_limit(&server, cfg.slot_retained_limit);
    loop {
        fail::fail_point!("monitor-round");
        // Each step is bounded on its own (connect_timeout, query_timeout, named in the error);
        // this outer bound is a safety net.
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(120), round(ci, &cfg.slot, query_timeout(cfg.interval), &cancel)) => r,
        };
        match outcome {
            Ok(Ok(facts)) => {
                if failing {
                    tracing::info!(server = %server, "monitoring connection works again");
                    failing = false;
                }
                let flushed = board
                    .snapshot()
                    .into_iter()
                    .find(|s| s.server == server)
                    .and_then(|s| s.flushed_lsn);
                crate::service::metrics::server_facts(&server, &facts, flushed);
                observe_sync_role(&server, &role, &facts);
                let per_commit = role.acknowledges_each_commit();
                crate::service::metrics::synchronous_mode(&server, per_commit);
                board.update(&server, |s| s.synchronous = per_commit);
                let warning = slot_limit_warning(&facts, cfg.slot_retained_limit);
                if warning.is_some() != over_limit {
                    over_limit = warning.is_some();
                    match &warning {
                        Some(w) => tracing::warn!(server = %server, "{w}"),
                        None => tracing::info!(server = %server, "the slot's retained WAL is back under slot_retained_limit"),
                    }
                }
                crate::service::metrics::slot_over_limit(&server, over_limit);
                board.update(&server, |s| {
                    s.monitor = Some(facts);
                    s.monitor_error = None;
                    s.slot_warning = warning;
                });
            }
            Ok(Err(MonitorError::Client(crate::client::ClientError::Cancelled))) => return,
            Ok(Err(e)) => {
                report_failure(&server, &board, &mut failing, e.to_string());
            }
            Err(_) => report_failure(&server, &board, &mut failing, "timed out after 120s".into()),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}

/// Tells the receiver whether the server waits for pgark, and says so in the log when that is not
/// what the configuration says.
fn observe_sync_role(server: &str, role: &SyncRole, facts: &ServerFacts) {
    let seen = Seen::from_server(facts.named_in_synchronous_standby_names, facts.sync_state.as_deref());
    let Some(before) = role.observe(seen) else { return };
    let waits = |s: Seen| s >= Seen::Named;
    if !role.configured() && waits(seen) && !waits(before) {
        tracing::warn!(
            server,
            synchronous_standby_names = %facts.synchronous_standby_names,
            sync_state = facts.sync_state.as_deref().unwrap_or("-"),
            "the server names pgark in synchronous_standby_names, but this server is configured synchronous: false: pgark now fsyncs and reports at every commit, as with synchronous: true, so that the server's commits do not wait for a segment to fill; set synchronous: true in the config"
        );
    } else if !role.configured() && !waits(seen) && waits(before) {
        tracing::info!(
            server,
            "the server no longer names pgark in synchronous_standby_names: back to asynchronous acknowledgements (synchronous: false)"
        );
    } else if role.configured() && before != Seen::Unknown && (seen == Seen::Synchronous) != (before == Seen::Synchronous) {
        if seen == Seen::Synchronous {
            tracing::info!(
                server,
                "pgark is the server's synchronous standby again: its acknowledgement latency is what catch-up pacing holds"
            );
        } else {
            tracing::info!(server, sync_state = facts.sync_state.as_deref().unwrap_or("-"), "pgark is not the server's synchronous standby now: its WAL is paced like the asynchronous servers' during a catch-up (it still fsyncs at every pause)");
        }
    }
}

fn report_failure(server: &str, board: &StatusBoard, failing: &mut bool, e: String) {
    if !*failing {
        tracing::warn!(server, error = %e, "monitoring query failed (streaming is not affected); grant pg_monitor to pgark's role for slot and pg_wal facts");
        *failing = true;
    }
    crate::service::metrics::monitor_failed(server);
    board.update(server, |s| s.monitor_error = Some(e));
}
