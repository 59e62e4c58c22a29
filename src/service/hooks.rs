//! The operator's hook commands (`hooks` in the config; see docs/configuration.md#hooks): runs
//! one with `/bin/sh -c`, its documented `PGARK_*` environment, a timeout that kills its whole
//! process group, its output logged (capped), and every run and failure counted
//! (`pgark_hook_runs_total`, `pgark_hook_failures_total`).
//!
//! Hooks run as async child processes (tokio::process) on the task that raised the event (the
//! backup scheduler, `pgark backup`, a drill or verify task), never on a receiver thread: a slow
//! or hung hook delays only that task, never streaming.
//!
//! A failing `pre_backup` hook (non-zero exit, timeout, or a command that cannot start) vetoes
//! the backup: `HookOutcome::vetoes` says so, the caller logs it and does not start the backup.

use crate::config::hooks::{HookSet, HooksConfig};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Bytes of each of a hook's stdout and stderr that are logged; the rest is counted, not kept.
pub const OUTPUT_CAP: usize = 4096;
/// After a hook ended, how long its output pipes may stay open (held by a process that left
/// its group) before they are abandoned.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    PreBackup,
    PostBackup,
    PostDrill,
    OnVerifyFailure,
}

impl HookKind {
    pub const ALL: [HookKind; 4] = [
        HookKind::PreBackup,
        HookKind::PostBackup,
        HookKind::PostDrill,
        HookKind::OnVerifyFailure,
    ];

    /// The config key, the `hook` metric label and `PGARK_HOOK`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::PreBackup => "pre_backup",
            HookKind::PostBackup => "post_backup",
            HookKind::PostDrill => "post_drill",
            HookKind::OnVerifyFailure => "on_verify_failure",
        }
    }

    fn command(self, set: &HookSet) -> Option<&str> {
        match self {
            HookKind::PreBackup => set.pre_backup.as_deref(),
            HookKind::PostBackup => set.post_backup.as_deref(),
            HookKind::PostDrill => set.post_drill.as_deref(),
            HookKind::OnVerifyFailure => set.on_verify_failure.as_deref(),
        }
    }
}

/// What happened, for a hook's environment. Build it with the constructors: each sets the
/// variables documented for its hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    pub kind: HookKind,
    pub server: String,
    /// `PGARK_*` variables besides PGARK_HOOK, PGARK_SERVER, PGARK_CATALOG, PGARK_CONFIG.
    pub vars: Vec<(String, String)>,
}

impl HookEvent {
    fn new(kind: HookKind, server: &str) -> Self {
        HookEvent {
            kind,
            server: server.to_string(),
            vars: Vec::new(),
        }
    }

    /// Adds `PGARK_<name>=<value>` (for the callers of `post_drill` and `on_verify_failure`
    /// that have more to tell).
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.push((format!("PGARK_{name}"), value.into()));
        self
    }

    /// Before a backup starts. `trigger`: `scheduled` or `manual` (PGARK_BACKUP_TRIGGER).
    pub fn pre_backup(server: &str, trigger: &str) -> Self {
        Self::new(HookKind::PreBackup, server).var("BACKUP_TRIGGER", trigger)
    }

    /// After a backup ended: `Ok(id)` or `Err(error)`.
    pub fn post_backup(server: &str, trigger: &str, result: Result<&str, &str>) -> Self {
        let e = Self::new(HookKind::PostBackup, server).var("BACKUP_TRIGGER", trigger);
        match result {
            Ok(id) => e.var("STATUS", "ok").var("BACKUP_ID", id),
            Err(err) => e.var("STATUS", "failed").var("ERROR", err),
        }
    }

    /// The `post_drill` event of a finished drill (`None` for one a stop interrupted: no hook),
    /// with its record's path in the catalog (`PGARK_DRILL_REPORT`) and its total seconds.
    pub fn drill_finished(catalog: &std::path::Path, rec: &crate::catalog::drill_record::DrillRecord) -> Option<Self> {
        if rec.failed_step.as_deref() == Some("interrupted") {
            return None;
        }
        let error = format!(
            "{}: {}",
            rec.failed_step.as_deref().unwrap_or("drill"),
            rec.error.as_deref().unwrap_or("failed")
        );
        let result = if rec.success { Ok(()) } else { Err(error.as_str()) };
        let mut e = Self::post_drill(&rec.server, rec.backup_id.as_deref(), result)
            .var("DRILL_DURATION_SECONDS", format!("{:.1}", rec.total_seconds.unwrap_or_default()));
        // A sealed record (encryption.local) is no file a hook could read.
        if crate::catalog::local_store_sealing::keyring_for(catalog).is_none() {
            let key = crate::catalog::drill_record::key(&rec.server, rec.started_at);
            e = e.var("DRILL_REPORT", catalog.join(key).display().to_string());
        }
        Some(e)
    }

    /// After a restore drill of `backup_id`: `Ok(())` or `Err(error)`. Callers add
    /// `.var("DRILL_REPORT", path)` and `.var("DRILL_DURATION_SECONDS", n)` when they have them.
    pub fn post_drill(server: &str, backup_id: Option<&str>, result: Result<(), &str>) -> Self {
        // Called by the drill task (`drill_finished`) and `pgark drill`, once a drill has ended,
        // passed or failed (not when a stop interrupted it).
        let mut e = Self::new(HookKind::PostDrill, server);
        if let Some(id) = backup_id {
            e = e.var("BACKUP_ID", id);
        }
        match result {
            Ok(()) => e.var("STATUS", "ok"),
            Err(err) => e.var("STATUS", "failed").var("ERROR", err),
        }
    }

    /// The `on_verify_failure` event of a verify run that found problems (`None` when it found
    /// none): the damaged backups, the count, the first problem, and `PGARK_VERIFY_REPORT`, the
    /// stored result of the newest damaged backup (`<catalog>/<server>/backups/<id>.verify`).
    pub fn verify_found(catalog: &std::path::Path, report: &crate::verify::Report) -> Option<Self> {
        if report.problems.is_empty() {
            return None;
        }
        let damaged: Vec<String> = report.backups.iter().filter(|b| b.status != "ok").map(|b| b.id.clone()).collect();
        let summary = report.problems.first().map(|p| p.to_string()).unwrap_or_default();
        let mut e = Self::on_verify_failure(&report.server, &damaged, report.problems.len(), &summary);
        let sealed = crate::catalog::local_store_sealing::keyring_for(catalog).is_some();
        if let Some(id) = damaged.first().filter(|_| !sealed) {
            let key = crate::catalog::backup_store::verify_key(&report.server, id);
            e = e.var("VERIFY_REPORT", catalog.join(key).display().to_string());
        }
        Some(e)
    }

    /// A verify found problems: the damaged backups' ids (space-separated in PGARK_BACKUP_ID),
    /// how many problems (PGARK_VERIFY_PROBLEMS) and a summary (PGARK_ERROR). Callers add
    /// `.var("VERIFY_REPORT", path)` when a report file exists.
    pub fn on_verify_failure(server: &str, backup_ids: &[String], problems: usize, summary: &str) -> Self {
        Self::new(HookKind::OnVerifyFailure, server)
            .var("STATUS", "failed")
            .var("BACKUP_ID", backup_ids.join(" "))
            .var("VERIFY_PROBLEMS", problems.to_string())
            .var("ERROR", summary)
    }
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// No command is configured for this hook and server.
    NotConfigured,
    Succeeded,
    /// Exited non-zero (or was killed by a signal: `code` is `None`).
    Failed {
        code: Option<i32>,
    },
    /// Ran past the timeout; its process group was killed.
    TimedOut(Duration),
    /// `/bin/sh` could not be started.
    NotStarted(String),
}

impl HookOutcome {
    /// A hook that ran and did not succeed.
    pub fn failed(&self) -> bool {
        !matches!(self, HookOutcome::NotConfigured | HookOutcome::Succeeded)
    }

    /// For `pre_backup`: the backup must not start.
    pub fn vetoes(&self) -> bool {
        self.failed()
    }

    /// For the log and the veto message.
    pub fn describe(&self) -> String {
        match self {
            HookOutcome::NotConfigured => "not configured".into(),
            HookOutcome::Succeeded => "succeeded".into(),
            HookOutcome::Failed { code: Some(c) } => format!("exited with status {c}"),
            HookOutcome::Failed { code: None } => "was killed by a signal".into(),
            HookOutcome::TimedOut(t) => format!("ran longer than its timeout ({}s) and was killed", t.as_secs()),
            HookOutcome::NotStarted(e) => format!("could not be started: {e}"),
        }
    }
}

/// The hook runner: the current `hooks` config (replaced on reload) and the facts every hook
/// gets. Cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    config: Arc<RwLock<HooksConfig>>,
    catalog: PathBuf,
    config_path: PathBuf,
}

impl Hooks {
    pub fn new(config: &crate::config::Config) -> Hooks {
        Hooks {
            config: Arc::new(RwLock::new(config.hooks.clone())),
            catalog: config.catalog.clone(),
            config_path: config.path.clone(),
        }
    }

    /// A reload: the next hook run uses `hooks`.
    pub fn update(&self, hooks: &HooksConfig) {
        if let Ok(mut c) = self.config.write() {
            *c = hooks.clone();
        }
    }

    /// The hooks in effect for `server`.
    pub fn for_server(&self, server: &str) -> HookSet {
        match self.config.read() {
            Ok(c) => c.for_server(server),
            Err(p) => p.into_inner().for_server(server),
        }
    }

    /// Runs the hook for `event`, if one is configured, to its end or its timeout. Never
    /// panics and never returns an error: the outcome says what happened, and a failure is
    /// already logged and counted.
    pub async fn run(&self, event: HookEvent) -> HookOutcome {
        let set = self.for_server(&event.server);
        let Some(command) = event.kind.command(&set).map(str::to_string) else {
            return HookOutcome::NotConfigured;
        };
        let (server, hook) = (event.server.clone(), event.kind.as_str());
        crate::service::metrics::hook_run(&server, hook);
        let started = Instant::now();
        let outcome = run_command(&command, &self.env(&event), set.timeout, &server, hook).await;
        let took_ms = started.elapsed().as_millis() as u64;
        if outcome.failed() {
            crate::service::metrics::hook_failed(&server, hook);
            tracing::error!(server = %server, hook, command = %command, took_ms, "hook {}", outcome.describe());
        } else {
            tracing::info!(server = %server, hook, took_ms, "hook succeeded");
        }
        outcome
    }

    fn env(&self, event: &HookEvent) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGARK_HOOK".to_string(), event.kind.as_str().to_string()),
            ("PGARK_SERVER".to_string(), event.server.clone()),
            ("PGARK_CATALOG".to_string(), self.catalog.display().to_string()),
            ("PGARK_CONFIG".to_string(), absolute(&self.config_path).display().to_string()),
        ];
        env.extend(event.vars.iter().cloned());
        env
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs `/bin/sh -c command` in its own process group; on timeout kills the group.
async fn run_command(command: &str, env: &[(String, String)], timeout: Duration, server: &str, hook: &str) -> HookOutcome {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that the timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        // systemd's notify socket is pgark's: a hook must not speak for it.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return HookOutcome::NotStarted(format!("/bin/sh: {e}")),
    };
    // Kills the group if this future is dropped before the hook ended (a stop of the daemon
    // cancels the task that runs it): nothing of a hook outlives an abandoned run.
    let mut group = GroupKill(child.id().and_then(|p| i32::try_from(p).ok()));
    let out = child.stdout.take().map(|s| tokio::spawn(read_capped(s)));
    let err = child.stderr.take().map(|s| tokio::spawn(read_capped(s)));
    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => HookOutcome::Succeeded,
        Ok(Ok(st)) => HookOutcome::Failed { code: st.code() },
        Ok(Err(e)) => HookOutcome::NotStarted(format!("waiting for it: {e}")),
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            HookOutcome::TimedOut(timeout)
        }
    };
    // The hook ended by itself: what it left running in the background is its business.
    group.0 = None;
    for (stream, task) in [("stdout", out), ("stderr", err)] {
        let Some(mut task) = task else { continue };
        match tokio::time::timeout(PIPE_GRACE, &mut task).await {
            Ok(Ok((text, more))) if !text.is_empty() => {
                let text = String::from_utf8_lossy(&text);
                let text = text.trim_end();
                if more > 0 {
                    tracing::info!(server, hook, stream, "hook output: {text} [… {more} more bytes not logged]");
                } else {
                    tracing::info!(server, hook, stream, "hook output: {text}");
                }
            }
            Ok(_) => {}
            Err(_) => task.abort(),
        }
    }
    outcome
}

/// A hook's process group (its shell's pid), killed on `kill` or on drop while still set.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals the process group the hook's shell
            // leads (`process_group(0)`); no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe to its end, keeping the first `OUTPUT_CAP` bytes; returns them and how many
/// more there were.
async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut more = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                more += (n - room) as u64;
            }
        }
    }
    (kept, more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hooks::HookCommands;

    fn hooks(cmds: HookCommands, dir: &Path) -> Hooks {
        Hooks {
            config: Arc::new(RwLock::new(HooksConfig {
                global: cmds,
                servers: Default::default(),
            })),
            catalog: dir.to_path_buf(),
            config_path: dir.join("pgark.yaml"),
        }
    }

    #[tokio::test]
    async fn runs_with_its_environment_and_reports_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let h = hooks(
            HookCommands {
                post_backup: Some(format!("env | grep ^PGARK_ | sort > {}; exit 3", out.display())),
                ..Default::default()
            },
            dir.path(),
        );
        let r = h.run(HookEvent::post_backup("main", "manual", Ok("20261203T050000"))).await;
        assert_eq!(r, HookOutcome::Failed { code: Some(3) });
        assert!(r.vetoes());
        let env = std::fs::read_to_string(&out).unwrap();
        for want in [
            "PGARK_HOOK=post_backup",
            "PGARK_SERVER=main",
            "PGARK_STATUS=ok",
            "PGARK_BACKUP_ID=20261203T050000",
            "PGARK_BACKUP_TRIGGER=manual",
        ] {
            assert!(env.lines().any(|l| l == want), "{want} missing from {env}");
        }
        assert_eq!(h.run(HookEvent::pre_backup("main", "manual")).await, HookOutcome::NotConfigured);
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let h = hooks(
            HookCommands {
                pre_backup: Some(format!("sleep 30 & echo $! > {}; wait", pidfile.display())),
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            },
            dir.path(),
        );
        let t = Instant::now();
        let r = h.run(HookEvent::pre_backup("main", "scheduled")).await;
        assert_eq!(r, HookOutcome::TimedOut(Duration::from_secs(1)));
        assert!(t.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild (sleep) was in the group: gone, or a zombie waiting for its reaper.
        let gone = (0..50).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = state.rsplit(')').next().is_some_and(|s| !s.trim_start().starts_with('Z'));
            if alive {
                std::thread::sleep(Duration::from_millis(100));
            }
            !alive
        });
        assert!(gone, "the hook's child {pid} survived the timeout");
    }

    #[test]
    fn server_keys_override_the_top_level_ones() {
        let mut c = HooksConfig::default();
        c.global.pre_backup = Some("a".into());
        c.global.post_backup = Some("b".into());
        c.servers.insert(
            "x".into(),
            HookCommands {
                post_backup: Some(String::new()),
                timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        );
        let x = c.for_server("x");
        assert_eq!((x.pre_backup.as_deref(), x.post_backup.as_deref()), (Some("a"), None));
        assert_eq!(x.timeout, Duration::from_secs(5));
        assert_eq!(c.for_server("y").post_backup.as_deref(), Some("b"));
        assert_eq!(c.for_server("y").timeout, crate::config::hooks::DEFAULT_HOOK_TIMEOUT);
    }
}
