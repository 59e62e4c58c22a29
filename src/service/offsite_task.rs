//! The daemon's side of off-site copies: one uploader thread per repository (see
//! `offsite::upload`), fed the receivers' flushed positions from the status board, and a task
//! that publishes their progress every second to `/status` (`offsite` of each server) and to
//! the metrics. Restarted as a whole by a reload that changes repositories, keys or servers.

use crate::config::Config;
use crate::offsite::{FlushedFn, Progress, ServerProgress, Settings, Source, Uploader, DEFAULT_WORKERS};
use crate::service::status::StatusBoard;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PUBLISH_EVERY: Duration = Duration::from_secs(1);

struct Running {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The uploaders of every repository.
pub struct Offsite {
    running: Vec<Running>,
    cancel: CancellationToken,
    publisher: Option<tokio::task::JoinHandle<()>>,
    /// What they were started from: a reload that changes it restarts them.
    basis: Basis,
}

#[derive(PartialEq)]
struct Basis {
    repositories: Vec<crate::config::repositories::RepositoryConfig>,
    encryption: Option<crate::config::repositories::EncryptionConfig>,
    servers: Vec<String>,
    partial_interval: Duration,
}

fn basis(config: &Config) -> Basis {
    Basis {
        repositories: config.repositories.clone(),
        encryption: config.encryption.clone(),
        servers: config.servers.keys().cloned().collect(),
        partial_interval: config.offsite_partial_interval,
    }
}

impl Offsite {
    pub fn start(config: &Config, board: &StatusBoard) -> Offsite {
        let local = crate::catalog::Catalog::open(&config.catalog);
        let mut running = Vec::new();
        let mut progress: Vec<Progress> = Vec::new();
        for r in &config.repositories {
            let repo = match config.open_repository(&r.name) {
                Ok(repo) => repo,
                Err(e) => {
                    tracing::error!(repository = %r.name, error = %e, "cannot open the repository; nothing is uploaded to it until the config is fixed and reloaded");
                    let p: Progress = Default::default();
                    if let Ok(mut m) = p.lock() {
                        for s in config.servers.keys() {
                            m.insert(
                                s.clone(),
                                ServerProgress {
                                    repository: r.name.clone(),
                                    last_error: Some(e.clone()),
                                    ..Default::default()
                                },
                            );
                        }
                    }
                    progress.push(p);
                    continue;
                }
            };
            let sources = config
                .servers
                .keys()
                .map(|s| {
                    let (board, server) = (board.clone(), s.clone());
                    let flushed: FlushedFn = Arc::new(move || board.flushed(&server));
                    Source {
                        server: s.clone(),
                        flushed,
                    }
                })
                .collect();
            let up = Uploader::new(
                &r.name,
                local.clone(),
                repo.catalog.clone(),
                sources,
                Settings {
                    partial_interval: config.offsite_partial_interval,
                    workers: DEFAULT_WORKERS,
                },
            );
            progress.push(up.progress());
            let stop = up.stop_flag();
            let thread = std::thread::Builder::new()
                .name(format!("pgark-upload-{}", r.name))
                .spawn(move || up.run());
            match thread {
                Ok(t) => {
                    tracing::info!(repository = %r.name, url = %r.url, encrypted = repo.encrypted, "uploading to the repository");
                    running.push(Running {
                        name: r.name.clone(),
                        stop,
                        thread: Some(t),
                    });
                }
                Err(e) => tracing::error!(repository = %r.name, error = %e, "cannot start the uploader thread"),
            }
        }
        let cancel = CancellationToken::new();
        let publisher = (!progress.is_empty()).then(|| tokio::spawn(publish(progress, board.clone(), cancel.clone())));
        Offsite {
            running,
            cancel,
            publisher,
            basis: basis(config),
        }
    }

    /// Whether `new` changes what the uploaders were started from.
    pub fn changed_by(&self, new: &Config) -> bool {
        self.basis != basis(new)
    }

    /// Stops every uploader: each finishes the object it is sending (bounded by the request
    /// timeout) and exits.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        for r in &self.running {
            r.stop.store(true, Ordering::Relaxed);
        }
        for mut r in std::mem::take(&mut self.running) {
            if let Some(t) = r.thread.take() {
                let name = r.name.clone();
                let joined = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || t.join())).await;
                if joined.is_err() {
                    tracing::warn!(repository = %name, "the uploader did not stop in time; leaving it");
                }
            }
        }
        if let Some(p) = self.publisher.take() {
            let _ = p.await;
        }
    }
}

async fn publish(progress: Vec<Progress>, board: StatusBoard, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut per_server: std::collections::BTreeMap<String, Vec<ServerProgress>> = Default::default();
        for p in &progress {
            let Ok(m) = p.lock() else { continue };
            for (server, sp) in m.iter() {
                crate::service::metrics::offsite(server, sp);
                per_server.entry(server.clone()).or_default().push(sp.clone());
            }
        }
        for (server, list) in per_server {
            board.update(&server, |s| s.offsite = list);
        }
    }
}
