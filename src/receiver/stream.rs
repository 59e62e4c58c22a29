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
//! `poll(2)` on the one descriptor, as pg_receivewal does. Timers (status interval, keepalive
//! ping, silence limit) are deadlines checked around that poll, not runtime timers.
//!
//! Cancellation: the poll sleeps at most `CANCEL_CHECK` at a time and the token is checked on
//! every wake; on cancel the loop fsyncs, sends a last status update and CopyDone.

use super::observer::{Positions, ReceiverObserver};
use super::ReceiverError;
use crate::catalog::wal_store::WalStore;
use crate::client::replication::TimelineEnd;
use crate::client::Connection;
use crate::pg::{Lsn, WalSegSize};
use crate::protocol::backend::BackendMessage;
use crate::protocol::replication::{self, ReplicationMessage};
use crate::protocol::ProtocolError;
use crate::util::time::unix_now;
use bytes::BytesMut;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Lag beyond which a pause does not trigger an fsync (see the module comment).
pub const CATCHUP_DEFER_BYTES: u64 = 4 * 1024 * 1024;

/// Longest sleep in `poll` before the cancel token is looked at again (the shutdown delay).
const CANCEL_CHECK: Duration = Duration::from_millis(100);

pub struct StreamOptions<'a> {
    pub server: &'a str,
    pub synchronous: bool,
    pub status_interval: Duration,
    pub receiver_timeout: Duration,
}

#[derive(Debug)]
pub enum StreamEnd {
    /// The server finished this timeline; continue on the next.
    TimelineEnded(TimelineEnd),
    /// The server is shutting down (`COPY 0` without CopyDone).
    ServerShutdown,
    Cancelled,
}

struct Loop<'a> {
    conn: &'a mut Connection,
    store: &'a mut WalStore,
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

impl Loop<'_> {
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
        if self.stopping {
            self.conn.send_raw_blocking_final(&self.out).map_err(ReceiverError::Client)?;
        } else {
            self.conn.send_raw_blocking(&self.out).map_err(ReceiverError::Client)?;
        }
        if flush > self.last_reported.1 {
            if let Some(t) = self.unacked_since.take() {
                self.observer.acked(t.elapsed());
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
        if self.opts.synchronous && self.store.has_unflushed() && !self.catching_up() {
            self.store.densify().map_err(ReceiverError::Store)?;
            self.flush()?;
            self.report(false)
        } else if self.store.flush_pos() > self.last_reported.1 {
            self.report(false)
        } else {
            Ok(())
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

/// How the blocking loop ended.
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
    lp.conn.set_phase("streaming");
    match lp.run(cancel)? {
        LoopEnd::CopyDone => {
            // End of a historic timeline: durable and answered already; read the next timeline
            // (bounded by the connection's I/O timeout, named "end-of-timeline exchange").
            lp.conn.set_phase("end-of-timeline exchange");
            lp.conn.send_copy_done().await.map_err(ReceiverError::Client)?;
            let end = lp.conn.finish_timeline().await.map_err(ReceiverError::Client)?;
            Ok(StreamEnd::TimelineEnded(end))
        }
        LoopEnd::ServerShutdown => Ok(StreamEnd::ServerShutdown),
        // The caller says goodbye (CopyDone, Terminate) with a short bound.
        LoopEnd::Cancelled => Ok(StreamEnd::Cancelled),
    }
}

impl Loop<'_> {
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
                        let silence_limit = last_recv + self.opts.receiver_timeout;
                        if now >= silence_limit {
                            return Err(ReceiverError::Timeout(self.opts.receiver_timeout));
                        }
                        let ping_at = last_recv + self.opts.receiver_timeout / 2;
                        if !pinged && now >= ping_at {
                            pinged = true;
                            self.report(true)?;
                        }
                        let mut wake = next_status.min(silence_limit).min(now + CANCEL_CHECK);
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
                        self.on_wal(start, &data)?;
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
                            if self.opts.synchronous {
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
                BackendMessage::Error(e) => return Err(ReceiverError::Client(crate::client::ClientError::Server(e))),
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
