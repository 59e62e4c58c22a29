//! The hot loop of one START_REPLICATION session: frames in, WAL written, fsyncs grouped,
//! status updates out.
//!
//! Group fsync: messages already in the read buffer are drained without awaiting the socket;
//! when the buffer runs dry (inbound data paused) or the server asks for a reply, one fdatasync
//! covers everything written so far, and in synchronous mode the flush position is reported at
//! once. In asynchronous mode fsync happens at segment ends and on the status interval.
//! The flush position sent is always `WalStore::flush_pos`, which only fdatasync advances.
//!
//! Catch-up: while pgark is more than `CATCHUP_DEFER_BYTES` behind the server's WAL end, the
//! pause-triggered fsync is deferred until pgark is near the tip, a segment ends, the server asks
//! for a reply, or the status interval passes. A commit whose WAL is already received then waits
//! at most for the next few megabytes to arrive (tens of milliseconds); in exchange a
//! multi-gigabyte catch-up does not pay one fsync per socket read. Correctness is unaffected: the
//! flush position reported is still only what fdatasync covered.
//!
//! Blocking I/O: the loop runs on the receiver's own thread and uses the connection's blocking
//! calls (`Connection::fill_now`, `wait_readable`, `send_raw_blocking`; see
//! `client::transport`): `recv` until the socket is empty, fsync, `send` the reply, sleep in
//! `poll(2)` on the socket, as pg_receivewal does. Timers (status interval, keepalive ping,
//! silence limit, idle release) are deadlines checked around that poll, not runtime timers.
//!
//! Cancellation: the poll also watches the token's eventfd (`util::cancel_fd`), so an idle
//! receiver sleeps until its next deadline and still stops at once (a link without one is
//! woken every `CANCEL_CHECK`); on cancel the loop fsyncs, sends a last status update and
//! CopyDone.
//!
//! Whether commits wait for pgark is `sync_role`: the `synchronous` setting until the monitor
//! has seen what the server says, then the server's word (a server that names pgark in
//! `synchronous_standby_names` gets an fsync and a report at every pause even with
//! `synchronous: false`).
//!
//! Pacing: a receiver no commit waits for waits its turn after each WAL message while a
//! synchronous server needs the disk and CPUs (`pacing`); a synchronous one reports each
//! acknowledgement's latency to it.

use super::observer::{Positions, ReceiverObserver};
use super::pacing::Pacer;
use super::sync_role::SyncRole;
use super::ReceiverError;
use crate::catalog::wal_store::{WalSink, WalStore};
use crate::client::replication::TimelineEnd;
use crate::client::{ClientError, Connection};
use crate::pg::{Lsn, WalSegSize};
use crate::protocol::backend::BackendMessage;
use crate::protocol::replication::{self, ReplicationMessage};
use crate::protocol::ProtocolError;
use crate::util::thread_priority;
use crate::util::time::unix_now;
use bytes::BytesMut;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The blocking side of the replication connection, as the hot loop uses it. `Connection` is
/// the real one; the unit tests below script the server's messages.
pub trait ReplicationLink {
    /// A complete message already in the read buffer, if any.
    fn next_buffered(&mut self) -> Result<Option<BackendMessage>, ClientError>;
    /// Reads what the kernel has without waiting; `false` when there was nothing.
    fn fill_now(&mut self) -> Result<bool, ClientError>;
    /// Sleeps until readable (`true`) or `timeout` passes (`false`).
    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, ClientError>;
    /// Sends a status update; `last` (stopping) bounds it briefly and ignores cancellation.
    fn send(&mut self, bytes: &[u8], last: bool) -> Result<(), ClientError>;
    /// The stream has been idle a while: give back buffers sized for a flow of WAL.
    fn release_idle(&mut self) {}
    /// Whether `wait_readable` ends by itself on cancellation (else the loop wakes every
    /// `CANCEL_CHECK` to look).
    fn wakes_on_cancel(&self) -> bool {
        false
    }
}

impl ReplicationLink for Connection {
    fn next_buffered(&mut self) -> Result<Option<BackendMessage>, ClientError> {
        Connection::next_buffered(self)
    }
    fn fill_now(&mut self) -> Result<bool, ClientError> {
        Connection::fill_now(self)
    }
    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        Connection::wait_readable(self, timeout)
    }
    fn release_idle(&mut self) {
        Connection::release_idle(self)
    }
    fn wakes_on_cancel(&self) -> bool {
        Connection::wakes_on_cancel(self)
    }
    fn send(&mut self, bytes: &[u8], last: bool) -> Result<(), ClientError> {
        if last {
            self.send_raw_blocking_final(bytes)
        } else {
            self.send_raw_blocking(bytes)
        }
    }
}

/// Lag beyond which a pause does not trigger an fsync (see the module comment).
pub const CATCHUP_DEFER_BYTES: u64 = 4 * 1024 * 1024;

/// Longest sleep in `poll` before the cancel token is looked at again, where the connection
/// cannot wake on cancellation itself (`ReplicationLink::wakes_on_cancel`; a real connection
/// can, through an eventfd: an idle receiver then sleeps until its next status update). Also
/// the longest single pacing sleep.
const CANCEL_CHECK: Duration = Duration::from_millis(500);

/// No WAL for this long: the receiver gives back its buffers sized for a flow of WAL (the
/// stage and the read buffer, about 1.3 MiB) until WAL comes again.
const IDLE_RELEASE: Duration = Duration::from_secs(10);

pub struct StreamOptions<'a> {
    pub server: &'a str,
    /// Whether commits wait for pgark (as configured, and as the server says: `sync_role`).
    pub role: &'a SyncRole,
    pub status_interval: Duration,
    pub receiver_timeout: Duration,
    /// Asynchronous receivers wait here after each WAL message; synchronous ones report their
    /// acknowledgement latency to it (see `pacing`).
    pub pacer: &'a Pacer,
}

#[derive(Debug)]
pub enum StreamEnd {
    /// The server finished this timeline; continue on the next.
    TimelineEnded(TimelineEnd),
    /// The server is shutting down (`COPY 0` without CopyDone).
    ServerShutdown,
    Cancelled,
}

struct Loop<'a, L: ReplicationLink, S: WalSink> {
    conn: &'a mut L,
    store: &'a mut S,
    opts: &'a StreamOptions<'a>,
    observer: &'a dyn ReceiverObserver,
    seg: WalSegSize,
    last_reported: (Lsn, Lsn),
    /// When the oldest not-yet-acknowledged WAL arrived (for the ack latency metric).
    unacked_since: Option<Instant>,
    server_wal_end: Lsn,
    /// (server WAL end, Unix seconds) as messages told them, oldest first: once the flush
    /// position passes a mark, pgark holds everything the server had sent by then.
    marks: std::collections::VecDeque<(Lsn, u64)>,
    /// The newest such time: the end of the recovery window.
    durable_at: Option<u64>,
    out: BytesMut,
    /// Unix seconds of the last message received (for status and /healthz; reported with the
    /// next status update, not written to the board per message).
    last_message_at: Option<u64>,
    /// Cancellation has fired: the last status update goes out regardless, briefly bounded.
    stopping: bool,
}

/// Marks kept while the flush position is behind (older ones are dropped: only precision on a
/// long catch-up is lost, never correctness).
const MAX_MARKS: usize = 256;

impl<L: ReplicationLink, S: WalSink> Loop<'_, L, S> {
    /// Whether the server has so much more WAL than we wrote that fsyncing on every pause would
    /// cost more throughput than the few milliseconds of acknowledgement it could save.
    fn catching_up(&self) -> bool {
        self.server_wal_end.saturating_sub(self.store.write_pos()) > CATCHUP_DEFER_BYTES
    }

    /// Notes that the server's WAL ended at `end` now.
    fn mark(&mut self, end: Lsn) {
        let now = unix_now();
        match self.marks.back_mut() {
            Some(last) if last.0 == end => last.1 = now,
            Some(last) if last.0 > end => {}
            _ => {
                if self.marks.len() == MAX_MARKS {
                    self.marks.pop_front();
                }
                self.marks.push_back((end, now));
            }
        }
    }

    /// Moves the end of the recovery window to the newest mark the flush position covers.
    fn advance_durable(&mut self) {
        let flush = self.store.flush_pos();
        let mut newest = None;
        while let Some(&(end, at)) = self.marks.front() {
            if end > flush {
                break;
            }
            newest = Some(at);
            self.marks.pop_front();
        }
        if let Some(at) = newest {
            if self.durable_at.is_none_or(|d| at > d) {
                self.durable_at = Some(at);
                self.observer.durable_until(at);
            }
        }
    }

    /// fdatasync what was written (blocking this receiver's own thread) and record how long it took.
    fn flush(&mut self) -> Result<(), ReceiverError> {
        let took = self.store.sync().map_err(ReceiverError::Store)?;
        if let Some(d) = took {
            self.observer.fsync(d);
        }
        Ok(())
    }

    /// Sends a status update at once (write = received, flush = fdatasynced), then the
    /// bookkeeping: the reply is the latency-critical part.
    fn report(&mut self, reply_requested: bool) -> Result<(), ReceiverError> {
        let (write, flush) = (self.store.write_pos(), self.store.flush_pos());
        self.out.clear();
        // The write position reported is what the kernel has, not what is still staged in
        // pgark's buffer (audit finding 12); flush is what fdatasync covered.
        let written = self.store.written_pos();
        replication::status_update_frame(written, flush, replication::pg_now(), reply_requested, &mut self.out);
        self.conn.send(&self.out, self.stopping).map_err(ReceiverError::Client)?;
        if flush > self.last_reported.1 {
            if let Some(t) = self.unacked_since.take() {
                let latency = t.elapsed();
                self.observer.acked(latency);
                if self.opts.role.on_commit_path() {
                    self.opts.pacer.sync_ack(latency);
                }
            }
            if self.store.has_unflushed() {
                self.unacked_since = Some(Instant::now());
            }
        }
        self.last_reported = (write, flush);
        self.advance_durable();
        self.observer.positions(&Positions {
            write,
            flush,
            server_end: self.server_wal_end,
            last_message_at: self.last_message_at,
        });
        Ok(())
    }

    /// Inbound data has paused: one fsync for everything received so far (synchronous mode,
    /// unless catching up), and the flush position reported if it moved.
    fn on_pause(&mut self) -> Result<(), ReceiverError> {
        if self.opts.role.acknowledges_each_commit() && self.store.has_unflushed() && !self.catching_up() {
            self.store.densify().map_err(ReceiverError::Store)?;
            self.flush()?;
            self.report(false)
        } else if self.store.flush_pos() > self.last_reported.1 {
            self.report(false)
        } else {
            Ok(())
        }
    }

    /// Asynchronous WAL waits its turn while a synchronous server needs the disk and CPUs (see
    /// `pacing`); the socket fills meanwhile and TCP holds the walsender back. Sleeps at most
    /// `CANCEL_CHECK` at a time, so cancellation and the status interval still hold.
    fn pace(&mut self, bytes: usize) {
        let wait = self.opts.pacer.reserve(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait.min(CANCEL_CHECK));
        }
    }

    fn on_wal(&mut self, start: Lsn, data: &[u8]) -> Result<(), ReceiverError> {
        let expected = self.store.write_pos();
        if start != expected {
            return Err(ProtocolError::new(format!(
                "XLogData starts at {start} but the stream is at {expected}: {} of {} bytes",
                if start > expected { "a gap" } else { "an overlap" },
                start.0.abs_diff(expected.0)
            ))
            .into());
        }
        if self.unacked_since.is_none() {
            self.unacked_since = Some(Instant::now());
        }
        let catching_up = self.catching_up();
        self.store.set_zero_fill(!catching_up);
        let completed = self.store.write(start, data).map_err(ReceiverError::Store)?;
        self.observer.wal_received(data.len() as u64);
        for name in completed {
            let file = name.format(self.seg);
            tracing::info!(segment = %file, "segment complete");
            self.observer.segment_completed(&file);
        }
        Ok(())
    }
}

/// Runs the blocking loop over any link and sink.
fn run_loop<L: ReplicationLink, S: WalSink>(
    conn: &mut L,
    store: &mut S,
    opts: &StreamOptions<'_>,
    observer: &dyn ReceiverObserver,
    cancel: &CancellationToken,
) -> Result<LoopEnd, ReceiverError> {
    let seg = store.seg();
    let start = (store.write_pos(), store.flush_pos());
    let mut lp = Loop {
        conn,
        store,
        opts,
        observer,
        seg,
        last_reported: start,
        unacked_since: None,
        server_wal_end: start.0,
        marks: Default::default(),
        durable_at: None,
        out: BytesMut::with_capacity(64),
        last_message_at: None,
        stopping: false,
    };
    lp.run(cancel)
}

/// How the blocking loop ended.
#[derive(Debug, PartialEq, Eq)]
enum LoopEnd {
    CopyDone,
    ServerShutdown,
    Cancelled,
}

/// Streams until the timeline ends, the server shuts down, cancellation, or an error. The
/// streaming itself blocks this (the receiver's own) thread; only the end of a timeline, which
/// reads ordinary query results, goes back to the async connection.
pub async fn stream(
    conn: &mut Connection,
    store: &mut WalStore,
    opts: &StreamOptions<'_>,
    observer: &dyn ReceiverObserver,
    cancel: &CancellationToken,
) -> Result<StreamEnd, ReceiverError> {
    conn.set_phase("streaming");
    match run_loop(conn, store, opts, observer, cancel)? {
        LoopEnd::CopyDone => {
            // End of a historic timeline: durable and answered already; read the next timeline
            // (bounded by the connection's I/O timeout, named "end-of-timeline exchange").
            conn.set_phase("end-of-timeline exchange");
            conn.send_copy_done().await.map_err(ReceiverError::Client)?;
            let end = conn.finish_timeline().await.map_err(ReceiverError::Client)?;
            Ok(StreamEnd::TimelineEnded(end))
        }
        LoopEnd::ServerShutdown => Ok(StreamEnd::ServerShutdown),
        // The caller says goodbye (CopyDone, Terminate) with a short bound.
        LoopEnd::Cancelled => Ok(StreamEnd::Cancelled),
    }
}

impl<L: ReplicationLink, S: WalSink> Loop<'_, L, S> {
    /// Cancellation: fsync what was received and send a last status update (where the
    /// connection still works; a stalled network costs at most a moment, never the shutdown).
    fn stop(&mut self) -> Result<LoopEnd, ReceiverError> {
        self.stopping = true;
        self.flush()?;
        if let Err(e) = self.report(false) {
            tracing::info!(error = %e, "could not send the last status update while stopping");
        }
        Ok(LoopEnd::Cancelled)
    }

    fn run(&mut self, cancel: &CancellationToken) -> Result<LoopEnd, ReceiverError> {
        let interval = self.opts.status_interval;
        let mut next_status = Instant::now() + interval;
        let mut last_recv = Instant::now();
        let mut pinged = false;
        // No WAL for `IDLE_RELEASE`: the buffers sized for a flow of it are given back once.
        let mut last_wal = Instant::now();
        let mut released = false;
        // Report our position straight away: a synchronous standby must be known to the server.
        self.report(false)?;
        loop {
            let msg = match self.conn.next_buffered().map_err(ReceiverError::Client)? {
                Some(m) => m,
                // Drain the kernel's socket buffer without waiting, as pg_receivewal does: WAL
                // that has already arrived joins this fsync group instead of forcing another.
                None if self.conn.fill_now().map_err(ReceiverError::Client)? => continue,
                None => {
                    self.on_pause()?;
                    // Sleep until the socket is readable or a deadline passes.
                    loop {
                        if cancel.is_cancelled() {
                            return self.stop();
                        }
                        let now = Instant::now();
                        if now >= next_status {
                            self.flush()?;
                            // Ask for a reply: the server's keepalive then tells its WAL end,
                            // which moves the recovery window's end forward on an idle server too.
                            self.report(true)?;
                            next_status = now + interval;
                        }
                        if !released && now.duration_since(last_wal) >= IDLE_RELEASE {
                            released = true;
                            tracing::debug!(server = %self.opts.server, "no WAL for {}s: gave back its write buffers until WAL flows again", IDLE_RELEASE.as_secs());
                            self.conn.release_idle();
                            self.store.release_idle();
                            crate::util::memory::release_freed();
                        }
                        let silence_limit = last_recv + self.opts.receiver_timeout;
                        if now >= silence_limit {
                            return Err(ReceiverError::Timeout(self.opts.receiver_timeout));
                        }
                        let ping_at = last_recv + self.opts.receiver_timeout / 2;
                        if !pinged && now >= ping_at {
                            pinged = true;
                            self.report(true)?;
                        }
                        let mut wake = next_status.min(silence_limit);
                        if !self.conn.wakes_on_cancel() {
                            wake = wake.min(now + CANCEL_CHECK);
                        }
                        if !released {
                            wake = wake.min(last_wal + IDLE_RELEASE);
                        }
                        if !pinged {
                            wake = wake.min(ping_at);
                        }
                        if self
                            .conn
                            .wait_readable(wake.saturating_duration_since(now))
                            .map_err(ReceiverError::Client)?
                        {
                            break;
                        }
                    }
                    continue;
                }
            };
            last_recv = Instant::now();
            self.last_message_at = Some(unix_now());
            pinged = false;
            match msg {
                BackendMessage::CopyData(payload) => match replication::decode(payload)? {
                    ReplicationMessage::XLogData {
                        start,
                        server_wal_end,
                        data,
                    } => {
                        self.server_wal_end = self.server_wal_end.max(server_wal_end);
                        (last_wal, released) = (last_recv, false);
                        self.on_wal(start, &data)?;
                        let on_commit_path = self.opts.role.on_commit_path();
                        // Off a commit's path, this thread's CPU goes to those on it first.
                        if let Err(r) = thread_priority::follow(!on_commit_path) {
                            tracing::warn!(server = %self.opts.server, nice = r.nice, error = %r.error,
                                "this server's commits now wait for pgark, but its receiver cannot raise its CPU priority back from background (it needs CAP_SYS_NICE, or LimitNICE= in the systemd unit): its acknowledgements may be slower while other servers catch up; restart pgark to start it in the foreground");
                        }
                        if !on_commit_path {
                            self.pace(data.len());
                        }
                        self.mark(Lsn(start.0.saturating_add(data.len() as u64)));
                    }
                    ReplicationMessage::Keepalive {
                        server_wal_end,
                        reply_requested,
                    } => {
                        self.server_wal_end = self.server_wal_end.max(server_wal_end);
                        self.observer.keepalive(self.server_wal_end);
                        self.mark(server_wal_end);
                        self.advance_durable();
                        if reply_requested {
                            if self.opts.role.acknowledges_each_commit() {
                                self.flush()?;
                            }
                            self.report(false)?;
                        }
                    }
                },
                BackendMessage::CopyDone => {
                    // End of a historic timeline: make it durable and answer.
                    self.flush()?;
                    self.report(false)?;
                    return Ok(LoopEnd::CopyDone);
                }
                BackendMessage::CommandComplete(_) => {
                    self.flush()?;
                    let _ = self.report(false);
                    return Ok(LoopEnd::ServerShutdown);
                }
                BackendMessage::Error(e) => return Err(ReceiverError::Client(ClientError::Server(e))),
                BackendMessage::Notice(n) => tracing::info!(notice = %n, "server notice"),
                BackendMessage::ParameterStatus { .. } => {}
                other => return Err(ProtocolError::new(format!("unexpected {other:?} while streaming")).into()),
            }
            // While data flows without a pause (a catch-up), cancellation and the status
            // interval still hold.
            if cancel.is_cancelled() {
                return self.stop();
            }
            if last_recv >= next_status {
                self.flush()?;
                self.report(false)?;
                next_status = last_recv + interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The hot loop against a scripted server and an in-memory WAL sink: group fsync, the
    //! flush position never ahead of fsync, catch-up deferral, keepalive replies, the end of a
    //! timeline, gaps, and the silence limit.

    use super::*;
    use crate::pg::{SegNo, TimelineId, WalFileName};
    use crate::receiver::NoObserver;
    use bytes::{Buf, BufMut, Bytes};
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const SEG: u64 = 1 << 20;

    /// What the script does next.
    enum Step {
        Msg(BackendMessage),
        /// The socket runs dry once (inbound data pauses).
        Pause,
    }

    /// One status update as the server would read it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Frame {
        write: u64,
        flush: u64,
        reply_requested: bool,
        last: bool,
    }

    struct ScriptedServer {
        steps: VecDeque<Step>,
        sent: Vec<Frame>,
        /// The sink's durable position, to check every report against.
        durable: Arc<AtomicU64>,
        /// Cancel the loop once the script is played (else let time pass: the silence tests).
        cancel_when_done: Option<CancellationToken>,
    }

    impl ScriptedServer {
        fn new(steps: Vec<Step>, durable: Arc<AtomicU64>, cancel: Option<CancellationToken>) -> Self {
            ScriptedServer {
                steps: steps.into(),
                sent: Vec::new(),
                durable,
                cancel_when_done: cancel,
            }
        }
    }

    impl ReplicationLink for ScriptedServer {
        fn next_buffered(&mut self) -> Result<Option<BackendMessage>, ClientError> {
            match self.steps.pop_front() {
                Some(Step::Msg(m)) => Ok(Some(m)),
                Some(Step::Pause) | None => Ok(None),
            }
        }
        fn fill_now(&mut self) -> Result<bool, ClientError> {
            Ok(false)
        }
        fn wait_readable(&mut self, timeout: Duration) -> Result<bool, ClientError> {
            if !self.steps.is_empty() {
                return Ok(true);
            }
            match &self.cancel_when_done {
                Some(c) => c.cancel(),
                None => std::thread::sleep(timeout),
            }
            Ok(false)
        }
        fn send(&mut self, bytes: &[u8], last: bool) -> Result<(), ClientError> {
            let mut b = bytes;
            assert_eq!((b.get_u8(), b.get_u32(), b.get_u8()), (b'd', 38, b'r'));
            let (write, flush, _apply, _time) = (b.get_u64(), b.get_u64(), b.get_u64(), b.get_i64());
            let frame = Frame {
                write,
                flush,
                reply_requested: b.get_u8() == 1,
                last,
            };
            let durable = self.durable.load(Ordering::SeqCst);
            assert!(flush <= durable, "reported flush {flush:#x} is ahead of fsync ({durable:#x})");
            assert!(write >= flush, "write {write:#x} behind flush {flush:#x}");
            self.sent.push(frame);
            Ok(())
        }
    }

    /// WAL kept in memory; `sync` is the only thing that moves the flush position.
    struct MemorySink {
        start: u64,
        data: Vec<u8>,
        flushed: u64,
        durable: Arc<AtomicU64>,
        syncs: usize,
    }

    impl MemorySink {
        fn at(start: u64) -> Self {
            MemorySink {
                start,
                data: Vec::new(),
                flushed: start,
                durable: Arc::new(AtomicU64::new(start)),
                syncs: 0,
            }
        }
        fn end(&self) -> u64 {
            self.start + self.data.len() as u64
        }
    }

    impl WalSink for MemorySink {
        fn seg(&self) -> WalSegSize {
            WalSegSize::new(SEG).unwrap()
        }
        fn write_pos(&self) -> Lsn {
            Lsn(self.end())
        }
        fn flush_pos(&self) -> Lsn {
            Lsn(self.flushed)
        }
        fn written_pos(&self) -> Lsn {
            Lsn(self.end())
        }
        fn has_unflushed(&self) -> bool {
            self.end() > self.flushed
        }
        fn set_zero_fill(&mut self, _: bool) {}
        fn write(&mut self, start: Lsn, data: &[u8]) -> std::io::Result<Vec<WalFileName>> {
            assert_eq!(start.0, self.end(), "the loop checks contiguity before writing");
            let before = self.end();
            self.data.extend_from_slice(data);
            Ok((before / SEG..self.end() / SEG)
                .map(|s| WalFileName::new(TimelineId(1), SegNo(s)))
                .collect())
        }
        fn densify(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<Option<Duration>> {
            if !self.has_unflushed() {
                return Ok(None);
            }
            self.syncs += 1;
            self.flushed = self.end();
            self.durable.store(self.flushed, Ordering::SeqCst);
            Ok(Some(Duration::from_micros(1)))
        }
    }

    fn xlog(start: u64, len: usize, server_end: u64) -> Step {
        let mut p = bytes::BytesMut::new();
        p.put_u8(b'w');
        p.put_u64(start);
        p.put_u64(server_end);
        p.put_i64(0);
        p.extend_from_slice(&vec![0x5a; len]);
        Step::Msg(BackendMessage::CopyData(p.freeze()))
    }

    fn keepalive(server_end: u64, reply: bool) -> Step {
        let mut p = bytes::BytesMut::new();
        p.put_u8(b'k');
        p.put_u64(server_end);
        p.put_i64(0);
        p.put_u8(reply as u8);
        Step::Msg(BackendMessage::CopyData(Bytes::from(p)))
    }

    fn options(synchronous: bool) -> StreamOptions<'static> {
        static OFF: std::sync::LazyLock<Pacer> = std::sync::LazyLock::new(Pacer::off);
        static SYNC: SyncRole = SyncRole::new(true);
        static ASYNC: SyncRole = SyncRole::new(false);
        StreamOptions {
            server: "main",
            role: if synchronous { &SYNC } else { &ASYNC },
            status_interval: Duration::from_secs(3600),
            receiver_timeout: Duration::from_secs(3600),
            pacer: &OFF,
        }
    }

    /// Plays `steps` to the end (then cancels) and returns the result, the frames and the sink.
    fn play(steps: Vec<Step>, synchronous: bool) -> (Result<LoopEnd, ReceiverError>, Vec<Frame>, MemorySink) {
        let mut sink = MemorySink::at(0x100_0000);
        let cancel = CancellationToken::new();
        let mut server = ScriptedServer::new(steps, sink.durable.clone(), Some(cancel.clone()));
        let r = run_loop(&mut server, &mut sink, &options(synchronous), &NoObserver, &cancel);
        (r, server.sent, sink)
    }

    const S: u64 = 0x100_0000;

    #[test]
    fn a_pause_fsyncs_the_group_once_then_reports_it_flushed() {
        let (r, sent, sink) = play(vec![xlog(S, 100, S + 200), xlog(S + 100, 100, S + 200), Step::Pause], true);
        assert_eq!(r.unwrap(), LoopEnd::Cancelled);
        // The first report names the start (a synchronous standby must be known at once).
        assert_eq!(sent[0].flush, S);
        // One fsync for both messages, then the flush reported at once, before the stop's.
        assert_eq!(sink.syncs, 1);
        let acked = sent.iter().find(|f| f.flush == S + 200).expect("the flush was reported");
        assert!(!acked.last, "reported at the pause, not only when stopping: {sent:?}");
    }

    #[test]
    fn asynchronous_mode_does_not_fsync_at_a_pause() {
        let (r, sent, sink) = play(vec![xlog(S, 100, S + 100), Step::Pause], false);
        assert_eq!(r.unwrap(), LoopEnd::Cancelled);
        assert!(sent.iter().filter(|f| !f.last).all(|f| f.flush == S), "{sent:?}");
        // Stopping makes it durable and says so.
        assert_eq!(sink.syncs, 1);
        assert_eq!(sent.last().map(|f| (f.flush, f.last)), Some((S + 100, true)));
    }

    #[test]
    fn catching_up_defers_the_pause_fsync_until_near_the_tip() {
        let far = S + 100 + CATCHUP_DEFER_BYTES + 1;
        let (_, sent, _) = play(vec![xlog(S, 100, far), Step::Pause], true);
        assert!(
            sent.iter().filter(|f| !f.last).all(|f| f.flush == S),
            "no fsync while far behind: {sent:?}"
        );
        // Near the tip, the same pause fsyncs and reports.
        let (_, sent, _) = play(vec![xlog(S, 100, S + 100 + CATCHUP_DEFER_BYTES), Step::Pause], true);
        assert!(sent.iter().any(|f| f.flush == S + 100 && !f.last), "{sent:?}");
    }

    #[test]
    fn a_keepalive_asking_for_a_reply_is_answered_after_fsync_in_synchronous_mode() {
        let (_, sent, _) = play(vec![xlog(S, 100, S + 100), keepalive(S + 100, true)], true);
        assert!(sent.iter().any(|f| f.flush == S + 100 && !f.last), "{sent:?}");
        // Asynchronous: answered at once, with what is durable (nothing new).
        let (_, sent, _) = play(vec![xlog(S, 100, S + 100), keepalive(S + 100, true)], false);
        assert_eq!(sent.iter().filter(|f| !f.last).count(), 2, "the start and the reply: {sent:?}");
        assert!(sent.iter().filter(|f| !f.last).all(|f| f.flush == S), "{sent:?}");
    }

    #[test]
    fn the_end_of_a_timeline_is_made_durable_and_answered() {
        let (r, sent, sink) = play(vec![xlog(S, 100, S + 100), Step::Msg(BackendMessage::CopyDone)], false);
        assert_eq!(r.unwrap(), LoopEnd::CopyDone);
        assert_eq!(sink.syncs, 1);
        assert_eq!(sent.last().map(|f| f.flush), Some(S + 100));
    }

    #[test]
    fn a_server_shutdown_is_told_apart_from_an_error() {
        let (r, _, sink) = play(
            vec![xlog(S, 100, S + 100), Step::Msg(BackendMessage::CommandComplete("COPY 0".into()))],
            false,
        );
        assert_eq!(r.unwrap(), LoopEnd::ServerShutdown);
        assert_eq!(sink.syncs, 1, "what was received is made durable");
    }

    #[test]
    fn a_gap_or_an_overlap_ends_the_session_naming_both_positions() {
        let (r, _, sink) = play(vec![xlog(S, 100, S + 300), xlog(S + 150, 100, S + 300)], true);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("a gap of 50 bytes") && e.contains("0/1000096"), "{e}");
        assert_eq!(sink.data.len(), 100, "nothing after the gap was written");
        let (r, _, _) = play(vec![xlog(S, 100, S + 300), xlog(S + 50, 100, S + 300)], true);
        assert!(r.unwrap_err().to_string().contains("an overlap of 50 bytes"));
    }

    #[test]
    fn a_completed_segment_is_reported() {
        struct Segments(std::sync::Mutex<Vec<String>>);
        impl ReceiverObserver for Segments {
            fn started(&self, _: bool) {}
            fn state(&self, _: crate::receiver::ConnState) {}
            fn streaming(&self) {}
            fn session_ended(&self, _: crate::receiver::DisconnectReason, _: &str, _: bool) {}
            fn retrying(&self) {}
            fn timeline(&self, _: TimelineId, _: Lsn) {}
            fn positions(&self, _: &Positions) {}
            fn keepalive(&self, _: Lsn) {}
            fn wal_received(&self, _: u64) {}
            fn fsync(&self, _: Duration) {}
            fn acked(&self, _: Duration) {}
            fn segment_completed(&self, file: &str) {
                self.0.lock().unwrap().push(file.to_string());
            }
            fn segment_archived(&self, _: u64, _: u64) {}
            fn durable_until(&self, _: u64) {}
            fn task_failed(&self, _: &'static str, _: &str) {}
        }
        let seen = Segments(Default::default());
        let mut sink = MemorySink::at(S);
        let cancel = CancellationToken::new();
        let steps = vec![xlog(S, SEG as usize - 10, S + SEG + 10), xlog(S + SEG - 10, 20, S + SEG + 10)];
        let mut server = ScriptedServer::new(steps, sink.durable.clone(), Some(cancel.clone()));
        run_loop(&mut server, &mut sink, &options(true), &seen, &cancel).unwrap();
        assert_eq!(*seen.0.lock().unwrap(), ["000000010000000000000010"]);
    }

    #[test]
    fn silence_pings_at_half_the_timeout_then_ends_the_session() {
        let mut sink = MemorySink::at(S);
        let cancel = CancellationToken::new();
        let mut server = ScriptedServer::new(vec![], sink.durable.clone(), None);
        let opts = StreamOptions {
            receiver_timeout: Duration::from_millis(300),
            ..options(true)
        };
        let r = run_loop(&mut server, &mut sink, &opts, &NoObserver, &cancel);
        assert!(matches!(r, Err(ReceiverError::Timeout(_))), "{:?}", r.err());
        assert!(
            server.sent.iter().any(|f| f.reply_requested),
            "a ping asked for a reply: {:?}",
            server.sent
        );
    }
}
