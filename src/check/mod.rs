//! `pgark check`: a diagnosis of every configured server, as a list of named checks, each
//! passing (`ok`), passing with a `warning`, or `failed`, with what to do when not ok.
//!
//! The work is split in two so that each check is a small pure function that unit tests can
//! feed: `facts` gathers everything once per server (the catalog, a replication connection, the
//! monitoring connection), every network step bounded by the `--timeout`, servers concurrently;
//! `checks` turns those facts into results. A new check is one function and one line in
//! `checks::CHECKS`.
//!
//! This module owns the diagnosis only: printing, exit codes and the command line are `cli`'s.

pub mod checks;
pub mod facts;

use crate::config::Config;
use serde::Serialize;
use std::time::Duration;

/// How long one server's connections may take by default (`pgark check --timeout`): a stalled
/// network must not hang a monitoring probe.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a check came out. A warning passes (the exit code stays 0); a failure does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warning,
    Failed,
}

impl Level {
    /// `OK`, `WARNING`, `FAILED`: the human output's column.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Failed => "FAILED",
        }
    }
}

/// One line of the report (also the `--json` schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub server: String,
    pub check: String,
    /// False exactly when `level` is `failed` (a warning passes).
    pub ok: bool,
    pub level: Level,
    /// What was found and, when not ok, what to do.
    pub detail: String,
}

/// What one check function returns; `run` adds the server and the check's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub level: Level,
    pub detail: String,
}

impl Outcome {
    pub fn ok(detail: impl Into<String>) -> Outcome {
        Outcome {
            level: Level::Ok,
            detail: detail.into(),
        }
    }
    pub fn warning(detail: impl Into<String>) -> Outcome {
        Outcome {
            level: Level::Warning,
            detail: detail.into(),
        }
    }
    pub fn failed(detail: impl Into<String>) -> Outcome {
        Outcome {
            level: Level::Failed,
            detail: detail.into(),
        }
    }
}

/// Runs every check on every server of `config` (or only `only`), the servers concurrently,
/// each server's connections bounded by `timeout`. Results come in config order, then in the
/// order of `checks::CHECKS`.
pub async fn run(config: &Config, only: Option<&str>, timeout: Duration) -> Vec<CheckResult> {
    let mut tasks = tokio::task::JoinSet::new();
    let names: Vec<String> = config
        .servers
        .keys()
        .filter(|n| only.is_none_or(|o| o == n.as_str()))
        .cloned()
        .collect();
    for (i, name) in names.iter().enumerate() {
        let config = config.clone();
        let name = name.clone();
        tasks.spawn(async move { (i, facts::gather(&config, &name, timeout).await) });
    }
    let mut gathered: Vec<(usize, facts::Facts)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(f) => gathered.push(f),
            // A panic in one server's gathering is a bug; the other servers are still reported.
            Err(e) => tracing::error!(error = %e, "a check task failed"),
        }
    }
    gathered.sort_by_key(|(i, _)| *i);
    let mut out = Vec::new();
    for (_, f) in &gathered {
        out.extend(evaluate(f));
    }
    out
}

/// Every check of `checks::CHECKS` on one server's facts.
pub fn evaluate(f: &facts::Facts) -> Vec<CheckResult> {
    checks::CHECKS
        .iter()
        .map(|(name, check)| {
            let o = check(f);
            CheckResult {
                server: f.server.clone(),
                check: (*name).to_string(),
                ok: o.level != Level::Failed,
                level: o.level,
                detail: o.detail,
            }
        })
        .collect()
}

/// Whether any result failed (`pgark check` then exits with `exit::DAMAGED`).
pub fn any_failed(results: &[CheckResult]) -> bool {
    results.iter().any(|r| r.level == Level::Failed)
}
