//! One supervised WAL receiver per server: connect, identify, check the system identifier, pick
//! the start position and timeline, make sure the slot exists, stream, follow timeline switches,
//! and reconnect with capped exponential backoff and jitter when anything goes wrong.
//!
//! A failure here never leaves this server's task: other servers are not disturbed.
//!
//! Threading: each receiver runs on its own OS thread with a current-thread tokio runtime
//! (`spawn_on_own_thread`), like PostgreSQL's walreceiver process. File I/O and fsync block that
//! thread directly, which is exactly what it is for: no cross-thread wake-ups on the
//! acknowledgement path, and a slow disk or fsync stall on one server can never delay another's
//! acknowledgements.

pub mod backoff;
pub mod observer;
pub mod pacing;
pub mod settings;
pub mod stream;
pub mod sync_role;
pub mod timeline;

use crate::catalog::archiver::{ArchiveObserver, Archiver, ArchiverHandle};
use crate::catalog::space::SharedLevel;
use crate::catalog::state::{self, StateError};
use crate::catalog::store::ObjectStore;
use crate::catalog::wal_store::{self, SparePool, WalStore};
use crate::catalog::Catalog;
use crate::catalog::Layout;
use crate::client::replication::StartOutcome;
use crate::client::{ClientError, Connection};
use crate::pg::{Lsn, TimelineHistory, TimelineId, WalSegSize};
use crate::protocol::ProtocolError;
pub use observer::{ConnState, DisconnectReason, NoObserver, Positions, ReceiverObserver};
pub use settings::Settings;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use stream::{StreamEnd, StreamOptions};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error(transparent)]
    Client(ClientError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("catalog write failed, flush position held back: {0}")]
    Store(std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Identity(#[from] state::IdentityError),
    #[error("the catalog is on timeline {catalog} but the server is on timeline {server}; was the server restored from an older backup?")]
    TimelineAhead { catalog: TimelineId, server: TimelineId },
    #[error("no message from the server for {0:?} (phase: streaming; receiver_timeout); treating the connection as dead")]
    Timeout(Duration),
}

/// A session ended without error.
enum SessionEnd {
    Cancelled,
    ServerShutdown,
}

/// What survives between sessions of one server: the open WAL store and its archiver.
///
/// Dropping it (the receiver stopping, or unwinding after a panic) stops the archiver after the
/// segment it is working on and joins it, so a restarted receiver never runs a second archiver
/// beside a detached one (audit finding 14); what was queued is found again by the next scan.
struct Spool {
    store: WalStore,
    seg: WalSegSize,
    archiver: Option<ArchiverHandle>,
    /// Everything the archiver needs to be started again.
    archiver_template: Archiver,
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.store.detach_archiver();
        if let Some(a) = self.archiver.take() {
            a.stop_and_join();
        }
    }
}

/// A receiver running on its own thread.
pub struct ReceiverThread {
    handle: std::thread::JoinHandle<()>,
    /// Closed when the thread ends (its sender is dropped, also by unwinding).
    done: tokio::sync::oneshot::Receiver<()>,
}

impl ReceiverThread {
    /// Whether the thread has ended (after cancellation, or for a reason `join_reason` tells).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits (without blocking the caller's runtime) at most `limit` for the receiver to stop;
    /// gives the handle back when it has not.
    pub async fn join_within(mut self, limit: Duration) -> Result<(), ReceiverThread> {
        match tokio::time::timeout(limit, &mut self.done).await {
            Ok(_) => {
                let _ = self.handle.join();
                Ok(())
            }
            Err(_) => Err(self),
        }
    }

    /// Joins an ended thread and says why it ended.
    pub fn join_reason(self) -> String {
        match self.handle.join() {
            Ok(()) => "its thread returned".into(),
            Err(p) => format!("its thread panicked: {}", panic_message(p.as_ref())),
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Starts `run` on a dedicated thread with its own current-thread runtime.
pub fn spawn_on_own_thread(cfg: Settings, env: Env, cancel: CancellationToken) -> std::io::Result<ReceiverThread> {
    let name = format!("recv-{}", cfg.name);
    let span = tracing::info_span!("server", name = %cfg.name);
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let _done = done_tx;
        loop {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(server = %cfg.name, error = %e, "cannot start the receiver's runtime");
                return;
            }
        };
        let attempt = (cfg.clone(), env.clone(), cancel.clone());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(tracing::Instrument::instrument(run(attempt.0, attempt.1, attempt.2), span.clone()))
        }));
        drop(rt);
        let panic = match result {
            Ok(()) => return,
            Err(_) if cancel.is_cancelled() => return,
            Err(p) => panic_message(p.as_ref()),
        };
        // A bug, not an input problem: say so loudly, keep the other servers going, try again.
        tracing::error!(server = %cfg.name, panic = %panic, "the receiver panicked (a bug: please report it with this log); restarting it in 5s");
        env.observer.task_failed("receiver", &format!("panicked: {panic}"));
        env.observer.state(ConnState::Retrying);
        // Sleep in slices: a stop during the pause is seen at once.
        for _ in 0..50 {
            if cancel.is_cancelled() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        }
    })?;
    Ok(ReceiverThread { handle, done })
}

/// What a receiver works with besides its settings: the catalog, the observer of its events, and
/// the catalog's disk-pressure level (for the archiver).
#[derive(Clone)]
pub struct Env {
    pub layout: Layout,
    pub observer: Arc<dyn ReceiverObserver>,
    pub space: SharedLevel,
    /// The daemon's pacing of asynchronous WAL (see `pacing`).
    pub pacer: Arc<pacing::Pacer>,
    /// Whether the server waits for pgark (see `sync_role`), shared with its monitor.
    pub sync_role: Arc<sync_role::SyncRole>,
}

/// Hands the archiver's reports to the receiver's observer.
struct ArchiveEvents(Arc<dyn ReceiverObserver>);

impl ArchiveObserver for ArchiveEvents {
    fn segment_archived(&self, original_bytes: u64, stored_bytes: u64) {
        self.0.segment_archived(original_bytes, stored_bytes);
    }
}

/// Runs the receiver for one server until `cancel` fires. The caller instruments it with the
/// server's span, so every log line names the server.
pub async fn run(cfg: Settings, env: Env, cancel: CancellationToken) {
    let store: Arc<dyn ObjectStore> = Catalog::open(env.layout.root()).store();
    let observer = env.observer.as_ref();
    let mut spool: Option<Spool> = None;
    let mut backoff = backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    observer.started(env.sync_role.acknowledges_each_commit());
    loop {
        fail::fail_point!("receiver-session");
        observer.state(ConnState::Connecting);
        let started = Instant::now();
        let mut streamed = false;
        let result = session(&cfg, &env, &store, &mut spool, &mut streamed, &cancel).await;
        // A session that got to streaming proves the server and the credentials work: the next
        // attempt starts again from the shortest delay (a synchronous standby must come back
        // fast after each network blip, not after a delay grown by earlier ones).
        streamed |= started.elapsed() > Duration::from_secs(30);
        match result {
            Ok(SessionEnd::Cancelled) | Err(ReceiverError::Client(ClientError::Cancelled)) => break,
            Ok(SessionEnd::ServerShutdown) => {
                tracing::info!("server is shutting down; will reconnect");
                observer.session_ended(DisconnectReason::ServerShutdown, "server shut down", false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "replication session ended");
                observer.session_ended(DisconnectReason::from(&e), &e.to_string(), matches!(e, ReceiverError::Store(_)));
            }
        }
        if streamed {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        observer.retrying();
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting after backoff");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    // Stops the archiver after its current segment (the rest is found by the next start's scan).
    drop(spool.take());
    observer.state(ConnState::Stopped);
    tracing::info!("receiver stopped");
}

/// One connection: identify, check, pick the start, stream timeline after timeline. Sets
/// `streamed` once streaming has begun.
async fn session(
    cfg: &Settings,
    env: &Env,
    store: &Arc<dyn ObjectStore>,
    spool: &mut Option<Spool>,
    streamed: &mut bool,
    cancel: &CancellationToken,
) -> Result<SessionEnd, ReceiverError> {
    let server = cfg.name.as_str();
    let (layout, observer) = (&env.layout, env.observer.as_ref());
    let mut conn = tokio::select! {
        _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
        c = Connection::connect(&cfg.conninfo, true) => c.map_err(ReceiverError::Client)?,
    };
    // From here every command and every wait is bounded by receiver_timeout and ends at once on
    // cancellation (a stalled network never holds the receiver or a shutdown).
    conn.set_io_timeout(cfg.receiver_timeout);
    conn.set_cancel(cancel.clone());
    let sys = conn.identify_system().await.map_err(ReceiverError::Client)?;
    let seg = conn.wal_segment_size().await.map_err(ReceiverError::Client)?;
    tracing::info!(peer = %conn.describe(), version = conn.server_version_num, tls = conn.encrypted,
        system_identifier = sys.system_identifier, timeline = %sys.timeline, position = %sys.xlogpos, "connected");

    // Catalogs are never mixed: the system identifier is recorded on first contact.
    let mut st = state::verify_or_record(
        store.as_ref(),
        server,
        &layout.server_dir(server).display().to_string(),
        sys.system_identifier,
        seg.bytes(),
        conn.server_version_num,
        sys.timeline,
    )?;

    let sp = open_spool(cfg, env, store, spool, seg)?;

    if cfg.create_slot {
        // On 15 and later, ask first: creating a slot that exists fails (we take that as "it
        // exists"), but leaves an ERROR line in the server's log at every reconnect.
        let exists = conn.server_major() >= 15
            && conn
                .read_replication_slot(&cfg.slot)
                .await
                .map_err(ReceiverError::Client)?
                .is_some();
        if !exists && conn.create_physical_slot(&cfg.slot).await.map_err(ReceiverError::Client)? {
            tracing::info!(slot = %cfg.slot, "created physical replication slot (RESERVE_WAL)");
        }
    }

    let (mut tli, mut start) = start_point(&mut conn, cfg, layout, &sys, seg).await?;

    let opts = StreamOptions {
        server,
        role: &env.sync_role,
        status_interval: cfg.status_interval,
        receiver_timeout: cfg.receiver_timeout,
        pacer: &env.pacer,
    };
    loop {
        if tli.0 > 1 && !sp.store.has_history(tli) {
            let (name, content) = conn.timeline_history(tli).await.map_err(ReceiverError::Client)?;
            TimelineHistory::parse(&content).map_err(|e| ProtocolError::new(format!("history file {name}: {e}")))?;
            // Through the catalog's store, so that it is sealed under encryption.local.
            let key = format!("{}/{}", Layout::wal_key(server), tli.history_file_name());
            store.put(&key, &content).map_err(ReceiverError::Store)?;
            tracing::info!(file = %name, "stored timeline history file");
        }
        sp.store.begin(tli, start).map_err(ReceiverError::Store)?;
        st.timeline = tli;
        state::save(store.as_ref(), server, &st)?;
        observer.timeline(tli, start);
        tracing::info!(timeline = %tli, start = %start, slot = %cfg.slot, synchronous = env.sync_role.acknowledges_each_commit(), "starting replication");
        let end = match conn
            .start_replication(Some(&cfg.slot), start, tli)
            .await
            .map_err(ReceiverError::Client)?
        {
            StartOutcome::TimelineEnded(end) => end,
            StartOutcome::Streaming => {
                *streamed = true;
                observer.streaming();
                let outcome = stream::stream(&mut conn, &mut sp.store, &opts, observer, cancel).await;
                st.flushed_lsn = sp.store.flush_pos();
                let _ = state::save(store.as_ref(), server, &st);
                match outcome? {
                    StreamEnd::TimelineEnded(end) => end,
                    StreamEnd::ServerShutdown => return Ok(SessionEnd::ServerShutdown),
                    StreamEnd::Cancelled => {
                        conn.close(true).await;
                        return Ok(SessionEnd::Cancelled);
                    }
                }
            }
        };
        if end.next_tli <= tli {
            return Err(ProtocolError::new(format!(
                "server switched from timeline {tli} to {} which is not newer",
                end.next_tli
            ))
            .into());
        }
        if end.next_start > sp.store.write_pos() {
            return Err(ProtocolError::new(format!(
                "timeline {tli} ended at {} but the next timeline starts at {}, past the end of what was streamed",
                sp.store.write_pos(),
                end.next_start
            ))
            .into());
        }
        sp.store.end_timeline().map_err(ReceiverError::Store)?;
        tracing::info!(from = %tli, to = %end.next_tli, switchpoint = %end.next_start, "timeline switch");
        tli = end.next_tli;
        start = seg.align_down(end.next_start);
    }
}

/// Where streaming starts: after what the catalog holds; on a new catalog, where the slot
/// stands (PostgreSQL 15 and later) or the server's current position; moved to a newer
/// timeline when the catalog followed a branch the server abandoned.
async fn start_point(
    conn: &mut Connection,
    cfg: &Settings,
    layout: &Layout,
    sys: &crate::client::replication::SystemInfo,
    seg: WalSegSize,
) -> Result<(TimelineId, Lsn), ReceiverError> {
    let scan = wal_store::scan(&layout.wal_dir(&cfg.name), seg).map_err(ReceiverError::Store)?;
    let (tli, start) = match scan.resume_point(seg) {
        Some(p) => p,
        None => {
            let from_slot = if conn.server_major() >= 15 {
                conn.read_replication_slot(&cfg.slot)
                    .await
                    .map_err(ReceiverError::Client)?
                    .flatten()
            } else {
                None
            };
            match from_slot {
                Some((lsn, slot_tli)) => (slot_tli, seg.align_down(lsn)),
                None => (sys.timeline, seg.align_down(sys.xlogpos)),
            }
        }
    };
    if tli > sys.timeline {
        return Err(ReceiverError::TimelineAhead {
            catalog: tli,
            server: sys.timeline,
        });
    }
    if tli < sys.timeline {
        return branch_point(conn, tli, start, sys.timeline, seg).await;
    }
    Ok((tli, start))
}

/// The catalog is on an older timeline than the server: fetch the server's history and decide
/// where to continue (see `timeline::continue_from`).
async fn branch_point(
    conn: &mut Connection,
    tli: TimelineId,
    start: Lsn,
    server_tli: TimelineId,
    seg: WalSegSize,
) -> Result<(TimelineId, Lsn), ReceiverError> {
    let (name, content) = conn.timeline_history(server_tli).await.map_err(ReceiverError::Client)?;
    let history = TimelineHistory::parse(&content).map_err(|e| ProtocolError::new(format!("history file {name}: {e}")))?;
    let (next, from) = timeline::continue_from(&history, tli, start, server_tli, seg)?;
    if next != tli {
        tracing::warn!(catalog_timeline = %tli, catalog_position = %start, switchpoint = %from, next_timeline = %next,
            "the catalog holds WAL of timeline {tli} beyond the point where the server's history left it (a branch abandoned \
             by a failover); continuing on timeline {next} from the switchpoint; the abandoned WAL stays in the catalog under timeline {tli}");
    }
    Ok((next, from))
}

/// Opens the spool on first contact (the segment size comes from the server) and starts the
/// archiver. At every session it hands the archiver whatever is complete but not archived (a
/// segment whose boundary failed half-way, audit finding 8, or what an earlier run left), and
/// restarts an archiver thread that died (a panic: a bug, logged and counted).
fn open_spool<'a>(
    cfg: &Settings,
    env: &Env,
    store: &Arc<dyn ObjectStore>,
    spool: &'a mut Option<Spool>,
    seg: WalSegSize,
) -> Result<&'a mut Spool, ReceiverError> {
    if let Some(sp) = spool.as_ref() {
        if sp.seg != seg {
            return Err(state::IdentityError::SegmentSizeMismatch {
                server: seg.bytes(),
                catalog: sp.seg.bytes(),
            }
            .into());
        }
    }
    let dir = env.layout.wal_dir(&cfg.name);
    if spool.is_none() {
        crate::fsio::durable::create_dir_durable(&dir).map_err(ReceiverError::Store)?;
        wal_store::sweep_temporary(&dir).map_err(ReceiverError::Store)?;
        let scan = wal_store::scan(&dir, seg).map_err(ReceiverError::Store)?;
        let spares = SparePool::from_scan(&scan);
        let template = Archiver {
            server: cfg.name.clone(),
            compression: cfg.compression,
            seg,
            dir: dir.clone(),
            store: store.clone(),
            key_prefix: Layout::wal_key(&cfg.name),
            spares: spares.clone(),
            space: env.space.clone(),
            events: Arc::new(ArchiveEvents(env.observer.clone())),
            direct: Default::default(),
        };
        let (tx, rx) = mpsc::channel();
        let handle = template.clone().spawn(rx).map_err(ReceiverError::Store)?;
        *spool = Some(Spool {
            store: WalStore::new(dir.clone(), seg, spares, tx),
            seg,
            archiver: Some(handle),
            archiver_template: template,
        });
    }
    let sp = spool.as_mut().expect("set above");
    if sp.archiver.as_ref().is_none_or(|a| a.is_finished()) {
        let why = sp.archiver.take().map(|a| a.join_reason()).unwrap_or_else(|| "not running".into());
        tracing::error!(reason = %why, "the archiver thread stopped (a bug: please report it with this log); restarting it");
        env.observer.task_failed("archiver", &why);
        let (tx, rx) = mpsc::channel();
        sp.archiver = Some(sp.archiver_template.clone().spawn(rx).map_err(ReceiverError::Store)?);
        sp.store.attach_archiver(tx);
    }
    let scan = wal_store::scan(&dir, seg).map_err(ReceiverError::Store)?;
    for name in scan.unarchived(cfg.compression) {
        sp.store.queue_for_archive(name);
    }
    Ok(sp)
}
