//! `pgark serve`: lock the catalog, start one supervised receiver per server and the HTTP
//! endpoint, then react to signals: SIGTERM/SIGINT stop cleanly (fsync, last status update,
//! exit 0), SIGHUP reloads the config and restarts only the servers whose settings changed.

use crate::catalog::lock::{CatalogLock, LockError};
use crate::catalog::Layout;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::http::{self, HttpState};
use crate::pressure::DiskThresholds;
use crate::status::{ServerStatus, StatusBoard};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot listen on {addr} for metrics: {source} (is another process using the port? change metrics.listen)")]
    Listen { addr: String, source: std::io::Error },
}

/// Requests the daemon loop reacts to (from signals, or from the demo/tests in-process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Reload,
}

struct Running {
    config: ServerConfig,
    cancel: CancellationToken,
    thread: Option<crate::receiver::ReceiverThread>,
    backups: JoinHandle<()>,
}

/// A started daemon (lock held, HTTP bound, receivers running).
pub struct Daemon {
    config: Config,
    layout: Layout,
    board: StatusBoard,
    servers: BTreeMap<String, Running>,
    http_cancel: CancellationToken,
    http_task: JoinHandle<()>,
    healthz_stream_timeout: Arc<AtomicU64>,
    watch_cancel: CancellationToken,
    /// The disk-pressure thresholds, updated on reload, read by the catalog watch and the
    /// backup schedulers.
    disk_pressure: tokio::sync::watch::Sender<DiskThresholds>,
    _lock: CatalogLock,
    pub metrics_addr: String,
}

impl Daemon {
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        config.check_catalog_writable()?;
        let lock = CatalogLock::acquire(&config.catalog)?;
        let metrics = crate::metrics::install();
        crate::metrics::register_daemon();
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
        let mut d = Daemon {
            config: config.clone(),
            layout,
            board,
            servers: BTreeMap::new(),
            http_cancel,
            http_task,
            healthz_stream_timeout,
            watch_cancel: CancellationToken::new(),
            disk_pressure: tokio::sync::watch::channel(config.disk_pressure).0,
            _lock: lock,
            metrics_addr,
        };
        tokio::spawn(crate::catalog_watch::run(
            d.layout.clone(),
            d.disk_pressure.subscribe(),
            d.board.clone(),
            d.watch_cancel.clone(),
        ));
        for s in config.servers.values() {
            d.spawn_server(s.clone());
        }
        Ok(d)
    }

    fn spawn_server(&mut self, cfg: ServerConfig) {
        let cancel = CancellationToken::new();
        self.board.insert(ServerStatus::new(&cfg.name, cfg.synchronous));
        crate::metrics::register_server(&cfg.name);
        let thread = match crate::receiver::spawn_on_own_thread(cfg.clone(), self.layout.clone(), self.board.clone(), cancel.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(server = %cfg.name, error = %e, "cannot start a receiver thread");
                self.board
                    .update(&cfg.name, |s| s.last_error = Some(format!("cannot start a receiver thread: {e}")));
                None
            }
        };
        if let Err(e) = crate::basebackup::clean_interrupted(self.layout.root(), &cfg.name) {
            tracing::warn!(server = %cfg.name, error = %e, "could not clean up after interrupted backups");
        }
        tokio::spawn(crate::monitor::run(cfg.clone(), self.board.clone(), cancel.clone()));
        let backups = tokio::spawn(crate::basebackup::scheduler::run(
            cfg.clone(),
            self.layout.root().to_path_buf(),
            self.disk_pressure.subscribe(),
            self.board.clone(),
            cancel.clone(),
        ));
        self.servers.insert(
            cfg.name.clone(),
            Running {
                config: cfg,
                cancel,
                thread,
                backups,
            },
        );
    }

    async fn stop_server(&mut self, name: &str) {
        if let Some(r) = self.servers.remove(name) {
            r.cancel.cancel();
            if let Some(t) = r.thread {
                t.join().await;
            }
            let _ = r.backups.await;
            self.board.remove(name);
        }
    }

    pub fn board(&self) -> &StatusBoard {
        &self.board
    }

    /// Re-reads the config file. A bad new config is logged and the running one kept.
    pub async fn reload(&mut self) {
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running configuration");
                return;
            }
        };
        if new.catalog != self.config.catalog || new.metrics_listen != self.config.metrics_listen {
            tracing::warn!("catalog and metrics.listen changes take effect only after a restart");
        }
        let names: Vec<String> = self.servers.keys().cloned().collect();
        for name in names {
            match new.servers.get(&name) {
                None => {
                    tracing::info!(server = %name, "server removed from the config; stopping its receiver");
                    self.stop_server(&name).await;
                    crate::metrics::retire_server(&name);
                }
                Some(c) if *c != self.servers[&name].config => {
                    tracing::info!(server = %name, "server settings changed; restarting its receiver");
                    self.stop_server(&name).await;
                    self.spawn_server(c.clone());
                }
                Some(_) => {}
            }
        }
        for (name, c) in &new.servers {
            if !self.servers.contains_key(name) {
                tracing::info!(server = %name, "server added to the config; starting its receiver");
                self.spawn_server(c.clone());
            }
        }
        let keep = (self.config.catalog.clone(), self.config.metrics_listen.clone());
        let pressure_changed = new.disk_pressure != self.config.disk_pressure;
        self.healthz_stream_timeout
            .store(new.healthz_stream_timeout.as_secs(), Ordering::Relaxed);
        self.config = new;
        (self.config.catalog, self.config.metrics_listen) = keep;
        if pressure_changed {
            tracing::info!("disk_pressure thresholds changed; applying them");
            self.disk_pressure.send_replace(self.config.disk_pressure);
        }
    }

    /// Stops every receiver (each fsyncs and sends a last status update) and the HTTP endpoint.
    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.servers.keys().cloned().collect();
        for r in self.servers.values() {
            r.cancel.cancel();
        }
        for name in names {
            self.stop_server(&name).await;
        }
        self.watch_cancel.cancel();
        self.http_cancel.cancel();
        let _ = (&mut self.http_task).await;
        tracing::info!("pgark serve stopped");
    }
}

/// Runs until `stop` fires, applying `Control` requests as they come.
pub async fn run(config: Config, stop: CancellationToken, mut control: tokio::sync::mpsc::Receiver<Control>) -> Result<(), DaemonError> {
    let mut daemon = Daemon::start(config).await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            c = control.recv() => match c {
                Some(Control::Reload) => daemon.reload().await,
                None => { stop.cancelled().await; break; }
            },
        }
    }
    daemon.shutdown().await;
    Ok(())
}

/// `pgark serve`: wires SIGTERM/SIGINT to `stop` and SIGHUP to a reload.
pub async fn serve_with_signals(config_path: PathBuf) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = Config::load(&config_path)?;
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let listen = |kind| {
        signal(kind).map_err(|e| DaemonError::Listen {
            addr: "signal handler".into(),
            source: e,
        })
    };
    let mut term = listen(SignalKind::terminate())?;
    let mut int = listen(SignalKind::interrupt())?;
    let mut hup = listen(SignalKind::hangup())?;
    let stop2 = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); stop2.cancel(); return; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); stop2.cancel(); return; }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading the config"); let _ = tx.send(Control::Reload).await; }
            }
        }
    });
    run(config, stop, rx).await
}
