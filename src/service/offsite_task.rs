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
/// A repository with a retention of its own is pruned this often (and when it gains a backup).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

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
    /// The repositories' own retention, one task per repository that has rules.
    prunes: Vec<tokio::task::JoinHandle<()>>,
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
        let cancel = CancellationToken::new();
        let mut prunes = Vec::new();
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
                config.backup_catalog().store(),
                repo.catalog.clone(),
                sources,
                Settings {
                    partial_interval: config.offsite_partial_interval,
                    workers: DEFAULT_WORKERS,
                },
            );
            progress.push(up.progress());
            let stop = up.stop_flag();
            if crate::retention::Policy::default() != r.retention {
                prunes.push(tokio::spawn(prune_repository(
                    repo.catalog.clone(),
                    r.name.clone(),
                    r.retention.clone(),
                    config.servers.keys().cloned().collect(),
                    up.progress(),
                    cancel.clone(),
                )));
            }
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
        let publisher = (!progress.is_empty()).then(|| tokio::spawn(publish(progress, board.clone(), cancel.clone())));
        Offsite {
            running,
            cancel,
            publisher,
            prunes,
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
        for p in std::mem::take(&mut self.prunes) {
            let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
        }
    }
}

/// Applies a repository's retention to each server: hourly, and when the repository gains a
/// backup. A prune refused by the lock (a backup or upload is writing there) waits for the
/// next turn.
async fn prune_repository(
    repo: crate::catalog::Catalog,
    name: String,
    policy: crate::retention::Policy,
    servers: Vec<String>,
    progress: Progress,
    cancel: CancellationToken,
) {
    let mut seen: Option<usize> = None;
    let mut next = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let backups: usize = progress.lock().map(|p| p.values().map(|s| s.backups).sum()).unwrap_or(0);
        let grew = seen.is_some_and(|s| backups > s);
        seen = Some(backups);
        if !grew && tokio::time::Instant::now() < next {
            continue;
        }
        next = tokio::time::Instant::now() + PRUNE_EVERY;
        for server in &servers {
            let (repo, policy, server) = (repo.clone(), policy.clone(), server.clone());
            let now = crate::util::time::unix_now();
            let r = tokio::task::spawn_blocking(move || {
                let hold = crate::catalog::offsite_mark::OffsiteHold::none();
                crate::retention::prune(&repo, &server, &policy, now, crate::retention::policy::Mode::Normal, false, &hold)
                    .map(|r| (server, r))
            })
            .await;
            match r {
                Ok(Ok((server, r))) if !r.backups.is_empty() || !r.wal.is_empty() => {
                    tracing::info!(server = %server, repository = %name, backups = r.backups.len(), wal_ranges = r.wal.len(), bytes = r.bytes_freed, "repository retention applied");
                }
                Ok(Ok(_)) => {}
                Ok(Err(crate::retention::prune::PruneError::Locked(_))) => next = tokio::time::Instant::now() + Duration::from_secs(60),
                Ok(Err(e)) => tracing::warn!(repository = %name, error = %e, "repository retention failed; retrying within the hour"),
                Err(e) => tracing::error!(repository = %name, error = %e, "the repository prune task failed (a bug)"),
            }
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
