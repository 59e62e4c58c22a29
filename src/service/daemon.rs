//! `pgark serve`: lock the catalog, start one supervised receiver per server and the HTTP
//! endpoint, then react to signals: SIGTERM/SIGINT stop cleanly (fsync, last status update,
//! exit 0), SIGHUP reloads the config and restarts only the servers whose settings changed.
//!
//! Supervision: every task of the daemon is named and watched (`check_tasks`, once a second). A
//! task that ends while nobody asked it to (a panic: a bug; an early return) is logged, counted
//! in `pgark_task_failures_total{server,task}`, listed in `/status` (`task_failures`) and
//! restarted; only the HTTP endpoint, whose socket cannot be handed over, makes the daemon exit
//! non-zero instead. Nothing dies silently.
//!
//! Bounded stop: `shutdown` cancels everything at once and waits at most `STOP_WAIT` for all
//! receivers together (each fsyncs and sends a last status update; every network wait they
//! could be in ends on cancellation). A receiver that has not stopped by then is abandoned: the
//! catalog is crash-safe, so exiting is like a crash of that one thread, never a loss of what was
//! acknowledged. A reload never blocks the signal loop: servers being stopped are reaped by the
//! supervision tick, and a changed server starts again only once its old receiver has stopped.

use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::space::DiskThresholds;
use crate::catalog::space::SharedLevel;
use crate::catalog::Layout;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::receiver::ReceiverThread;
use crate::service::hooks::Hooks;
use crate::service::http::{self, HttpState};
use crate::service::status::{ServerStatus, StatusBoard};
use crate::service::systemd::{Heartbeat, Notifier, Probe};
use crate::service::telemetry::ServerTelemetry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a stop waits for the receivers (SIGTERM ends `pgark serve` within 5 s).
pub const STOP_WAIT: Duration = Duration::from_secs(4);
/// How often the daemon looks at its tasks.
const SUPERVISION_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot listen on {addr} for metrics: {source} (is another process using the port? change metrics.listen)")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the {0} task of the daemon died: {1}; exiting so that a supervisor (systemd) restarts pgark")]
    TaskDied(&'static str, String),
}

/// Requests the daemon loop reacts to (from signals, or from the demo/tests in-process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Reload,
}

/// The tasks of one server.
struct Running {
    config: ServerConfig,
    cancel: CancellationToken,
    receiver: Option<ReceiverThread>,
    monitor: Option<JoinHandle<()>>,
    backups: Option<JoinHandle<()>>,
    /// Bumped by the receiver's telemetry at each event (kept across receiver restarts): the
    /// systemd watchdog's sign of life (see `service::systemd`).
    heartbeat: Heartbeat,
    drills: Option<JoinHandle<()>>,
    verifies: Option<JoinHandle<()>>,
    /// A child of `cancel` for the periodic tasks alone (backups, retention, verify, drills):
    /// a reload that changes only their settings restarts them, not the receiver.
    tasks_cancel: CancellationToken,
    /// Whether the server waits for pgark: read by the receiver, updated by the monitor.
    sync_role: Arc<crate::receiver::sync_role::SyncRole>,
}

/// A server whose tasks were told to stop (removed, or changed by a reload), and what starts in
/// its place once they have.
struct Stopping {
    running: Running,
    since: Instant,
    replacement: Option<ServerConfig>,
    warned: bool,
}

/// A started daemon (lock held, HTTP bound, receivers running).
pub struct Daemon {
    config: Config,
    layout: Layout,
    board: StatusBoard,
    servers: BTreeMap<String, Running>,
    stopping: Vec<Stopping>,
    http_cancel: CancellationToken,
    /// Taken when it is awaited (a finished handle must not be polled again).
    http_task: Option<JoinHandle<()>>,
    healthz_stream_timeout: Arc<AtomicU64>,
    watch_cancel: CancellationToken,
    watch_task: JoinHandle<()>,
    /// The disk-pressure thresholds, updated on reload, read by the catalog watch and the
    /// backup schedulers.
    disk_pressure: tokio::sync::watch::Sender<DiskThresholds>,
    /// The catalog's disk-pressure level as the catalog watch last measured it, for the archivers.
    space_level: SharedLevel,
    /// The hook runner (its config replaced on reload), for the backup, verify and drill tasks.
    hooks: Hooks,
    /// The uploaders to the off-site repositories (restarted by a reload that changes them).
    offsite: Option<crate::service::offsite_task::Offsite>,
    /// Paces asynchronous WAL while synchronous servers commit (`catchup_pacing`).
    pacer: Arc<crate::receiver::pacing::Pacer>,
    _lock: CatalogLock,
    pub metrics_addr: String,
}

impl Daemon {
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        config.check_catalog_writable()?;
        for w in crate::catalog::perms::check(&config.catalog, config.catalog_group.as_deref()) {
            tracing::warn!("{w}");
        }
        let lock = CatalogLock::acquire(&config.catalog)?;
        let metrics = crate::service::metrics::install();
        crate::service::metrics::register_daemon();
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen)
            .await
            .map_err(|e| DaemonError::Listen {
                addr: config.metrics_listen.clone(),
                source: e,
            })?;
        let metrics_addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| config.metrics_listen.clone());
        let board = StatusBoard::default();
        let http_cancel = CancellationToken::new();
        let healthz_stream_timeout = Arc::new(AtomicU64::new(config.healthz_stream_timeout.as_secs()));
        let state = HttpState {
            metrics,
            board: board.clone(),
            catalog: config.catalog.display().to_string(),
            stream_timeout_secs: healthz_stream_timeout.clone(),
        };
        let http_task = tokio::spawn(http::serve(listener, state, http_cancel.clone()));
        tracing::info!(catalog = %config.catalog.display(), metrics = %metrics_addr, servers = config.servers.len(), "pgark serve started");
        let layout = Layout::new(&config.catalog);
        let disk_pressure = tokio::sync::watch::channel(config.disk_pressure).0;
        let watch_cancel = CancellationToken::new();
        let space_level = SharedLevel::default();
        let watch_task = spawn_catalog_watch(&layout, &disk_pressure, &board, &space_level, &watch_cancel);
        let mut d = Daemon {
            config: config.clone(),
            layout,
            board,
            servers: BTreeMap::new(),
            stopping: Vec::new(),
            http_cancel,
            http_task: Some(http_task),
            healthz_stream_timeout,
            watch_cancel,
            watch_task,
            disk_pressure,
            space_level,
            hooks: Hooks::new(&config),
            offsite: None,
            pacer: Arc::new(crate::receiver::pacing::Pacer::new(config.catchup_pacing)),
            _lock: lock,
            metrics_addr,
        };
        for s in config.servers.values() {
            d.spawn_server(s.clone());
        }
        d.offsite = Some(crate::service::offsite_task::Offsite::start(&config, &d.board));
        Ok(d)
    }

    fn spawn_server(&mut self, cfg: ServerConfig) {
        let cancel = CancellationToken::new();
        self.board.insert(ServerStatus::new(&cfg.name, cfg.synchronous));
        crate::service::metrics::register_server(&cfg.name);
        let mut r = Running {
            sync_role: Arc::new(crate::receiver::sync_role::SyncRole::new(cfg.synchronous)),
            config: cfg,
            tasks_cancel: cancel.child_token(),
            cancel,
            receiver: None,
            monitor: None,
            backups: None,
            heartbeat: Heartbeat::default(),
            drills: None,
            verifies: None,
        };
        r.receiver = self.spawn_receiver(&r);
        r.monitor = Some(self.spawn_monitor(&r));
        r.backups = Some(self.spawn_backups(&r));
        r.drills = Some(self.spawn_drills(&r));
        r.verifies = Some(self.spawn_verifies(&r));
        self.servers.insert(r.config.name.clone(), r);
    }

    fn spawn_receiver(&self, r: &Running) -> Option<ReceiverThread> {
        let cfg = &r.config;
        let env = crate::receiver::Env {
            layout: self.layout.clone(),
            observer: Arc::new(ServerTelemetry::with_heartbeat(&cfg.name, self.board.clone(), r.heartbeat.clone())),
            space: self.space_level.clone(),
            pacer: self.pacer.clone(),
            sync_role: r.sync_role.clone(),
        };
        match crate::receiver::spawn_on_own_thread(cfg.receiver_settings(), env, r.cancel.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(server = %cfg.name, error = %e, "cannot start a receiver thread; trying again in a moment");
                self.board
                    .update(&cfg.name, |s| s.last_error = Some(format!("cannot start a receiver thread: {e}")));
                None
            }
        }
    }

    fn spawn_monitor(&self, r: &Running) -> JoinHandle<()> {
        tokio::spawn(crate::service::monitor_task::run(
            r.config.monitor_settings(),
            self.board.clone(),
            r.sync_role.clone(),
            r.cancel.clone(),
        ))
    }

    fn spawn_backups(&self, r: &Running) -> JoinHandle<()> {
        tokio::spawn(crate::service::scheduler::run(
            r.config.clone(),
            self.layout.root().to_path_buf(),
            self.disk_pressure.subscribe(),
            self.board.clone(),
            self.hooks.clone(),
            r.tasks_cancel.clone(),
            (self.mirrors(), self.config.backups_local),
        ))
    }

    /// The repositories scheduled backups are written to as they are taken.
    fn mirrors(&self) -> Vec<(String, crate::catalog::Catalog)> {
        match self.config.open_repositories() {
            Ok(r) => r.into_iter().map(|r| (r.name, r.catalog)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "scheduled backups go to the local catalog only until the repositories can be opened");
                Vec::new()
            }
        }
    }

    /// What the systemd watchdog checks (see `service::systemd`): each server's receiver thread,
    /// tasks and heartbeat, and the daemon-wide tasks. Servers being stopped are left out.
    pub fn probes(&self) -> Vec<Probe> {
        let states: BTreeMap<String, bool> = self
            .board
            .snapshot()
            .into_iter()
            .map(|s| (s.server, s.state == crate::service::status::ConnState::Streaming))
            .collect();
        let mut out = vec![Probe {
            server: String::new(),
            receiver_alive: true,
            dead_task: if self.http_task.as_ref().is_none_or(|h| h.is_finished()) {
                Some("http")
            } else if self.watch_task.is_finished() {
                Some("catalog_watch")
            } else {
                None
            },
            streaming: false,
            heartbeat: 0,
            status_interval: Duration::ZERO,
        }];
        for (name, r) in &self.servers {
            out.push(Probe {
                server: name.clone(),
                receiver_alive: r.receiver.as_ref().is_some_and(|t| !t.is_finished()),
                dead_task: if r.monitor.as_ref().is_none_or(|h| h.is_finished()) {
                    Some("monitor")
                } else if r.backups.as_ref().is_none_or(|h| h.is_finished()) {
                    Some("backup_scheduler")
                } else if r.drills.as_ref().is_none_or(|h| h.is_finished()) {
                    Some("drill_scheduler")
                } else if r.verifies.as_ref().is_none_or(|h| h.is_finished()) {
                    Some("verify_scheduler")
                } else {
                    None
                },
                streaming: states.get(name).copied().unwrap_or(false),
                heartbeat: r.heartbeat.count(),
                status_interval: r.config.status_interval,
            });
        }
        out
    }

    fn spawn_verifies(&self, r: &Running) -> JoinHandle<()> {
        tokio::spawn(crate::service::verify_task::run(
            r.config.clone(),
            self.config.backup_catalog(),
            self.hooks.clone(),
            r.tasks_cancel.clone(),
        ))
    }

    fn spawn_drills(&self, r: &Running) -> JoinHandle<()> {
        let (catalog, config) = (self.layout.root().to_path_buf(), self.config.path.clone());
        tokio::spawn(crate::service::drill_task::run(
            r.config.clone(),
            catalog,
            self.config.backup_catalog(),
            config,
            self.hooks.clone(),
            r.tasks_cancel.clone(),
        ))
    }

    /// Restarts a server's periodic tasks (backups and retention, verify, drills) with `cfg`,
    /// leaving its receiver and monitor running: a synchronous standby's acknowledgements do
    /// not pause for a change of retention. The old tasks wind down on their own (a backup they
    /// were taking is abandoned, as on any stop; the backup lock keeps the new scheduler from
    /// starting another beside it).
    fn restart_periodic(&mut self, name: &str, cfg: ServerConfig) {
        let Some(mut r) = self.servers.remove(name) else { return };
        r.tasks_cancel.cancel();
        let old: Vec<JoinHandle<()>> = [r.backups.take(), r.drills.take(), r.verifies.take()]
            .into_iter()
            .flatten()
            .collect();
        tokio::spawn(async move {
            for h in old {
                let _ = h.await;
            }
        });
        r.config = cfg;
        r.tasks_cancel = r.cancel.child_token();
        r.backups = Some(self.spawn_backups(&r));
        r.drills = Some(self.spawn_drills(&r));
        r.verifies = Some(self.spawn_verifies(&r));
        self.servers.insert(name.to_string(), r);
    }

    pub fn board(&self) -> &StatusBoard {
        &self.board
    }

    /// Tells a server's tasks to stop; the supervision tick reaps them (and starts
    /// `replacement` once they are gone).
    fn begin_stop(&mut self, name: &str, replacement: Option<ServerConfig>) {
        if let Some(r) = self.servers.remove(name) {
            r.cancel.cancel();
            self.stopping.push(Stopping {
                running: r,
                since: Instant::now(),
                replacement,
                warned: false,
            });
        }
    }

    /// Re-reads the config file. A bad new config is logged and the running one kept. Never
    /// waits for a receiver to stop (see the module comment).
    pub async fn reload(&mut self) {
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running configuration");
                return;
            }
        };
        if new.catalog != self.config.catalog
            || new.metrics_listen != self.config.metrics_listen
            || new.catalog_group != self.config.catalog_group
        {
            tracing::warn!("catalog, catalog_group and metrics.listen changes take effect only after a restart");
        }
        let names: Vec<String> = self.servers.keys().cloned().collect();
        for name in names {
            match new.servers.get(&name) {
                None => {
                    tracing::info!(server = %name, "server removed from the config; stopping its receiver");
                    self.begin_stop(&name, None);
                }
                Some(c) if *c != self.servers[&name].config => {
                    if c.same_streaming(&self.servers[&name].config) {
                        tracing::info!(server = %name, "backup, retention, verify or drill settings changed; restarting those tasks (streaming goes on)");
                        self.restart_periodic(&name, c.clone());
                    } else {
                        tracing::info!(server = %name, "server settings changed; restarting its receiver");
                        self.begin_stop(&name, Some(c.clone()));
                    }
                }
                Some(_) => {}
            }
        }
        for (name, c) in &new.servers {
            let pending = self.stopping.iter().any(|s| &s.running.config.name == name);
            if !self.servers.contains_key(name) && !pending {
                tracing::info!(server = %name, "server added to the config; starting its receiver");
                self.spawn_server(c.clone());
            }
        }
        // A server removed and added back before its old tasks stopped starts once they have.
        for s in self.stopping.iter_mut() {
            s.replacement = new.servers.get(&s.running.config.name).cloned();
        }
        let keep = (
            self.config.catalog.clone(),
            self.config.metrics_listen.clone(),
            self.config.catalog_group.clone(),
        );
        let pressure_changed = new.disk_pressure != self.config.disk_pressure;
        if self.offsite.as_ref().is_none_or(|o| o.changed_by(&new)) {
            tracing::info!("repositories, keys or servers changed; restarting the uploaders");
            if let Some(o) = self.offsite.take() {
                o.stop().await;
            }
            // A repository no longer configured: its off-site series leave /metrics (its lag
            // would otherwise stay frozen there, and alert for ever).
            for old in &self.config.repositories {
                if !new.repositories.iter().any(|r| r.name == old.name) {
                    crate::service::metrics::retire_repository(&old.name);
                }
            }
            for r in &new.repositories {
                crate::service::metrics::revive_repository(&r.name);
            }
            self.offsite = Some(crate::service::offsite_task::Offsite::start(&new, &self.board));
        }
        self.hooks.update(&new.hooks);
        if new.catchup_pacing != self.config.catchup_pacing {
            tracing::info!(catchup_pacing = new.catchup_pacing, "catchup_pacing changed; applying it");
            self.pacer.set_enabled(new.catchup_pacing);
        }
        self.healthz_stream_timeout
            .store(new.healthz_stream_timeout.as_secs(), Ordering::Relaxed);
        self.config = new;
        (self.config.catalog, self.config.metrics_listen, self.config.catalog_group) = keep;
        if pressure_changed {
            tracing::info!("disk_pressure thresholds changed; applying them");
            self.disk_pressure.send_replace(self.config.disk_pressure);
        }
    }

    /// The supervision tick: restarts tasks that died, reaps servers that finished stopping.
    /// An error means the daemon must exit.
    pub async fn check_tasks(&mut self) -> Result<(), DaemonError> {
        if let Some(h) = self.http_task.take_if(|h| h.is_finished()) {
            let why = join_reason(h.await);
            crate::service::metrics::task_failed("", "http");
            return Err(DaemonError::TaskDied("http", why));
        }
        if self.watch_task.is_finished() && !self.watch_cancel.is_cancelled() {
            let why = join_reason((&mut self.watch_task).await);
            self.task_died("", "catalog_watch", &why);
            self.watch_task = spawn_catalog_watch(
                &self.layout,
                &self.disk_pressure,
                &self.board,
                &self.space_level,
                &self.watch_cancel,
            );
        }
        let names: Vec<String> = self.servers.keys().cloned().collect();
        for name in names {
            let Some(mut r) = self.servers.remove(&name) else { continue };
            if !r.cancel.is_cancelled() {
                if r.receiver.as_ref().is_none_or(|t| t.is_finished()) {
                    let why = r
                        .receiver
                        .take()
                        .map(|t| t.join_reason())
                        .unwrap_or_else(|| "it could not be started".into());
                    self.task_died(&name, "receiver", &why);
                    r.receiver = self.spawn_receiver(&r);
                }
                if r.monitor.as_ref().is_none_or(|h| h.is_finished()) {
                    let why = match r.monitor.take() {
                        Some(h) => join_reason(h.await),
                        None => "not running".into(),
                    };
                    self.task_died(&name, "monitor", &why);
                    r.monitor = Some(self.spawn_monitor(&r));
                }
                if r.backups.as_ref().is_none_or(|h| h.is_finished()) {
                    let why = match r.backups.take() {
                        Some(h) => join_reason(h.await),
                        None => "not running".into(),
                    };
                    self.task_died(&name, "backup_scheduler", &why);
                    r.backups = Some(self.spawn_backups(&r));
                }
                if r.drills.as_ref().is_none_or(|h| h.is_finished()) {
                    let why = match r.drills.take() {
                        Some(h) => join_reason(h.await),
                        None => "not running".into(),
                    };
                    self.task_died(&name, "drill_scheduler", &why);
                    r.drills = Some(self.spawn_drills(&r));
                }
                if r.verifies.as_ref().is_none_or(|h| h.is_finished()) {
                    let why = match r.verifies.take() {
                        Some(h) => join_reason(h.await),
                        None => "not running".into(),
                    };
                    self.task_died(&name, "verify_scheduler", &why);
                    r.verifies = Some(self.spawn_verifies(&r));
                }
            }
            self.servers.insert(name, r);
        }
        let mut still = Vec::new();
        for mut s in std::mem::take(&mut self.stopping) {
            if stopped(&mut s.running).await {
                let name = s.running.config.name.clone();
                match s.replacement {
                    Some(cfg) if !self.servers.contains_key(&name) => self.spawn_server(cfg),
                    _ => {
                        self.board.remove(&name);
                        crate::service::metrics::retire_server(&name);
                    }
                }
            } else {
                if !s.warned && s.since.elapsed() > Duration::from_secs(30) {
                    s.warned = true;
                    tracing::error!(server = %s.running.config.name, "its receiver has not stopped 30s after it was told to (a bug?); its replacement waits for it");
                }
                still.push(s);
            }
        }
        self.stopping = still;
        Ok(())
    }

    fn task_died(&self, server: &str, task: &'static str, why: &str) {
        tracing::error!(server, task, reason = %why, "a task of the daemon died (a bug: please report it with this log); restarting it");
        crate::service::metrics::task_failed(server, task);
        self.board.task_failed(task, server, why);
    }

    /// Stops every receiver (each fsyncs and sends a last status update) and the HTTP endpoint,
    /// within `STOP_WAIT` (see the module comment).
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + STOP_WAIT;
        let mut all: Vec<Running> = std::mem::take(&mut self.servers).into_values().collect();
        all.extend(std::mem::take(&mut self.stopping).into_iter().map(|s| s.running));
        for r in &all {
            r.cancel.cancel();
        }
        self.watch_cancel.cancel();
        let waits = all.into_iter().map(|mut r| async move {
            let name = r.config.name.clone();
            let left = deadline.saturating_duration_since(Instant::now());
            let receiver_done = match r.receiver.take() {
                Some(t) => t.join_within(left).await.is_ok(),
                None => true,
            };
            for h in [r.monitor.take(), r.backups.take(), r.drills.take(), r.verifies.take()]
                .into_iter()
                .flatten()
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, h).await.is_err() {
                    tracing::warn!(server = %name, "a task did not stop in time; leaving it");
                }
            }
            if !receiver_done {
                tracing::warn!(server = %name, wait_seconds = STOP_WAIT.as_secs(),
                    "the receiver did not stop in time; exiting anyway (the catalog is crash-safe: nothing acknowledged is lost)");
            }
        });
        let offsite = self.offsite.take();
        let offsite_stop = async move {
            if let Some(o) = offsite {
                o.stop().await;
            }
        };
        futures_join_all(waits).await;
        offsite_stop.await;
        self.http_cancel.cancel();
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(200));
        if let Some(h) = self.http_task.take() {
            let _ = tokio::time::timeout(left, h).await;
        }
        tracing::info!("pgark serve stopped");
    }
}

/// Whether a stopping server's tasks have all ended (joining them when they have).
async fn stopped(r: &mut Running) -> bool {
    let receiver = r.receiver.as_ref().is_none_or(|t| t.is_finished());
    let monitor = r.monitor.as_ref().is_none_or(|h| h.is_finished());
    let backups = r.backups.as_ref().is_none_or(|h| h.is_finished());
    let drills = r.drills.as_ref().is_none_or(|h| h.is_finished());
    let verifies = r.verifies.as_ref().is_none_or(|h| h.is_finished());
    if !(receiver && monitor && backups && drills && verifies) {
        return false;
    }
    if let Some(t) = r.receiver.take() {
        let _ = t.join_within(Duration::from_millis(100)).await;
    }
    for h in [r.monitor.take(), r.backups.take(), r.drills.take(), r.verifies.take()]
        .into_iter()
        .flatten()
    {
        let _ = h.await;
    }
    true
}

/// Runs futures concurrently and waits for all of them (a tiny join_all, so that the stop of
/// one slow server never delays another's).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(futs: impl IntoIterator<Item = F>) {
    let handles: Vec<JoinHandle<()>> = futs.into_iter().map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

fn join_reason(r: Result<(), tokio::task::JoinError>) -> String {
    match r {
        Ok(()) => "it returned early".into(),
        Err(e) if e.is_panic() => format!("it panicked: {}", crate::receiver::panic_message(e.into_panic().as_ref())),
        Err(e) => format!("it was cancelled: {e}"),
    }
}

fn spawn_catalog_watch(
    layout: &Layout,
    thresholds: &tokio::sync::watch::Sender<DiskThresholds>,
    board: &StatusBoard,
    level: &SharedLevel,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(crate::service::catalog_watch::run(
        layout.clone(),
        thresholds.subscribe(),
        board.clone(),
        level.clone(),
        cancel.clone(),
    ))
}

/// Runs until `stop` fires, applying `Control` requests as they come and supervising the tasks.
pub async fn run(config: Config, stop: CancellationToken, mut control: tokio::sync::mpsc::Receiver<Control>) -> Result<(), DaemonError> {
    let mut daemon = Daemon::start(config).await?;
    let mut notify = Notifier::from_env();
    notify.ready(crate::service::systemd::summary(&daemon.board.snapshot()));
    let mut tick = tokio::time::interval(SUPERVISION_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without a systemd watchdog this arm never fires.
    let mut ping = tokio::time::interval(notify.ping_interval().unwrap_or(Duration::from_secs(3600)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watchdog = notify.ping_interval().is_some();
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            c = control.recv() => match c {
                Some(Control::Reload) => {
                    notify.reloading();
                    daemon.reload().await;
                    notify.ready(crate::service::systemd::summary(&daemon.board.snapshot()));
                }
                None => { stop.cancelled().await; break; }
            },
            _ = tick.tick() => {
                if let Err(e) = daemon.check_tasks().await {
                    tracing::error!(error = %e, "stopping");
                    outcome = Err(e);
                    break;
                }
                notify.status(crate::service::systemd::summary(&daemon.board.snapshot()));
                crate::service::metrics::catchup_pacing(&daemon.pacer.snapshot());
            }
            _ = ping.tick(), if watchdog => notify.watchdog(&daemon.probes(), Instant::now()),
        }
    }
    notify.stopping();
    daemon.shutdown().await;
    outcome
}

/// `pgark serve`: wires SIGTERM/SIGINT to `stop` and SIGHUP to a reload.
pub async fn serve_with_signals(config_path: PathBuf) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = Config::load(&config_path)?;
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let listen = |kind| signal(kind).map_err(DaemonError::Signals);
    let mut term = listen(SignalKind::terminate())?;
    let mut int = listen(SignalKind::interrupt())?;
    let mut hup = listen(SignalKind::hangup())?;
    let stop2 = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); stop2.cancel(); return; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); stop2.cancel(); return; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    if tx.try_send(Control::Reload).is_err() {
                        tracing::info!("a reload is already pending");
                    }
                }
            }
        }
    });
    run(config, stop, rx).await
}
