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
//! Cancellation: the cancel token is checked in the only await that can block for long; on
//! cancel the loop fsyncs, sends a last status update and CopyDone.

use super::ReceiverError;
use crate::catalog::wal_store::WalStore;
use crate::client::replication::TimelineEnd;
use crate::client::Connection;
use crate::pg::{Lsn, WalSegSize};
use crate::protocol::backend::BackendMessage;
use crate::protocol::replication::{self, ReplicationMessage};
use crate::protocol::ProtocolError;
use crate::status::{unix_now, StatusBoard};
use bytes::BytesMut;
use futures::FutureExt;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Lag beyond which a pause does not trigger an fsync (see the module comment).
pub const CATCHUP_DEFER_BYTES: u64 = 4 * 1024 * 1024;

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
    board: &'a StatusBoard,
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
    metrics: crate::metrics::StreamMetrics,
    out: BytesMut,
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
                self.metrics.recovery_window_end(at);
                self.board.update(self.opts.server, |s| s.wal_durable_at = Some(at));
            }
        }
    }

    /// fdatasync what was written (blocking this receiver's own thread) and record how long it took.
    fn flush(&mut self) -> Result<(), ReceiverError> {
        let took = self.store.sync().map_err(ReceiverError::Store)?;
        if let Some(d) = took {
            self.metrics.fsync_duration(d);
        }
        Ok(())
    }

    async fn report(&mut self, reply_requested: bool) -> Result<(), ReceiverError> {
        let (write, flush) = (self.store.write_pos(), self.store.flush_pos());
        self.out.clear();
        replication::status_update_frame(write, flush, replication::pg_now(), reply_requested, &mut self.out);
        self.conn.send_raw(&self.out).await.map_err(ReceiverError::Client)?;
        if flush > self.last_reported.1 {
            if let Some(t) = self.unacked_since.take() {
                self.metrics.ack_latency(t.elapsed());
            }
            if self.store.has_unflushed() {
                self.unacked_since = Some(Instant::now());
            }
        }
        self.last_reported = (write, flush);
        self.advance_durable();
        self.metrics.wal_positions(write.0, flush.0);
        let lag = self.server_wal_end.saturating_sub(flush);
        self.board.update(self.opts.server, |s| {
            s.received_lsn = Some(write);
            s.flushed_lsn = Some(flush);
            s.server_lsn = Some(self.server_wal_end);
            s.lag_bytes = Some(lag);
        });
        Ok(())
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
        self.metrics.wal_received(data.len() as u64);
        for name in completed {
            let file = name.format(self.seg);
            tracing::info!(segment = %file, "segment complete");
            crate::metrics::segment_completed(self.opts.server);
            self.board.update(self.opts.server, |s| s.last_segment = Some(file.clone()));
        }
        Ok(())
    }
}

/// Streams until the timeline ends, the server shuts down, cancellation, or an error.
pub async fn stream(
    conn: &mut Connection,
    store: &mut WalStore,
    opts: &StreamOptions<'_>,
    board: &StatusBoard,
    cancel: &CancellationToken,
) -> Result<StreamEnd, ReceiverError> {
    let seg = store.seg();
    let start = (store.write_pos(), store.flush_pos());
    let mut lp = Loop {
        conn,
        store,
        opts,
        board,
        seg,
        last_reported: start,
        unacked_since: None,
        server_wal_end: start.0,
        marks: Default::default(),
        durable_at: None,
        metrics: crate::metrics::StreamMetrics::new(opts.server),
        out: BytesMut::with_capacity(64),
    };
    let mut status_tick = tokio::time::interval(opts.status_interval);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status_tick.tick().await;
    let mut last_recv = Instant::now();
    let mut pinged = false;
    // Report our position straight away: a synchronous standby must be known to the server.
    lp.report(false).await?;
    loop {
        let buffered = match lp.conn.next_buffered().map_err(ReceiverError::Client)? {
            Some(m) => Some(m),
            // Drain the kernel's socket buffer without waiting, as pg_receivewal does: WAL that
            // has already arrived joins this fsync group instead of forcing another fsync.
            None => lp.conn.next_message().now_or_never().transpose().map_err(ReceiverError::Client)?,
        };
        let msg = match buffered {
            Some(m) => m,
            None => {
                // Inbound data has paused: one fsync for everything received so far.
                if opts.synchronous && lp.store.has_unflushed() && !lp.catching_up() {
                    lp.store.densify().map_err(ReceiverError::Store)?;
                    lp.flush()?;
                    lp.report(false).await?;
                } else if lp.store.flush_pos() > lp.last_reported.1 {
                    lp.report(false).await?;
                }
                let silence_limit = last_recv + opts.receiver_timeout;
                let ping_at = last_recv + opts.receiver_timeout / 2;
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        lp.flush()?;
                        lp.report(false).await?;
                        let _ = lp.conn.send_copy_done().await;
                        return Ok(StreamEnd::Cancelled);
                    }
                    _ = status_tick.tick() => {
                        lp.flush()?;
                        // Ask for a reply: the server's keepalive then tells its WAL end, which
                        // moves the recovery window's end forward on an idle server too.
                        lp.report(true).await?;
                        continue;
                    }
                    _ = tokio::time::sleep_until(ping_at.into()), if !pinged => {
                        pinged = true;
                        lp.report(true).await?;
                        continue;
                    }
                    _ = tokio::time::sleep_until(silence_limit.into()) => {
                        return Err(ReceiverError::Timeout(opts.receiver_timeout));
                    }
                    m = lp.conn.next_message() => m.map_err(ReceiverError::Client)?,
                }
            }
        };
        last_recv = Instant::now();
        pinged = false;
        match msg {
            BackendMessage::CopyData(payload) => match replication::decode(payload)? {
                ReplicationMessage::XLogData {
                    start,
                    server_wal_end,
                    data,
                } => {
                    lp.server_wal_end = lp.server_wal_end.max(server_wal_end);
                    lp.on_wal(start, &data)?;
                    lp.mark(Lsn(start.0.saturating_add(data.len() as u64)));
                }
                ReplicationMessage::Keepalive {
                    server_wal_end,
                    reply_requested,
                } => {
                    lp.server_wal_end = lp.server_wal_end.max(server_wal_end);
                    lp.metrics.server_wal_end(lp.server_wal_end.0);
                    lp.mark(server_wal_end);
                    lp.advance_durable();
                    if reply_requested {
                        if opts.synchronous {
                            lp.flush()?;
                        }
                        lp.report(false).await?;
                    }
                }
            },
            BackendMessage::CopyDone => {
                // End of a historic timeline: make it durable, answer, read the next timeline.
                lp.flush()?;
                lp.report(false).await?;
                lp.conn.send_copy_done().await.map_err(ReceiverError::Client)?;
                let end = lp.conn.finish_timeline().await.map_err(ReceiverError::Client)?;
                return Ok(StreamEnd::TimelineEnded(end));
            }
            BackendMessage::CommandComplete(_) => {
                lp.flush()?;
                let _ = lp.report(false).await;
                return Ok(StreamEnd::ServerShutdown);
            }
            BackendMessage::Error(e) => return Err(ReceiverError::Client(crate::client::ClientError::Server(e))),
            BackendMessage::Notice(n) => tracing::info!(notice = %n, "server notice"),
            BackendMessage::ParameterStatus { .. } => {}
            other => return Err(ProtocolError::new(format!("unexpected {other:?} while streaming")).into()),
        }
        lp.board.update(opts.server, |s| s.last_message_at = Some(unix_now()));
    }
}
