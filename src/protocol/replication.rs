//! CopyBoth payloads of physical streaming: XLogData and keepalives from the server, standby
//! status updates from us. Timestamps are microseconds since 2000-01-01 UTC.

use super::ProtocolError;
use crate::pg::Lsn;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// Largest XLogData payload a server sends (16 × XLOG_BLCKSZ); we allow some slack for
/// non-default block sizes but refuse anything absurd.
pub const MAX_XLOGDATA: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `'w'`: WAL bytes starting at `start`. `data` is a zero-copy slice of the frame.
    XLogData { start: Lsn, server_wal_end: Lsn, data: Bytes },
    /// `'k'`: the server is alive; `reply_requested` demands an immediate status update.
    Keepalive { server_wal_end: Lsn, reply_requested: bool },
}

/// Decodes one CopyData payload received during START_REPLICATION.
pub fn decode(mut payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let kind = payload
        .first()
        .copied()
        .ok_or_else(|| ProtocolError::new("empty CopyData message during streaming"))?;
    match kind {
        b'w' => {
            if payload.len() < 25 {
                return Err(ProtocolError::new(format!(
                    "XLogData header is {} bytes, expected at least 25",
                    payload.len()
                )));
            }
            payload.advance(1);
            let start = Lsn(payload.get_u64());
            let server_wal_end = Lsn(payload.get_u64());
            let _send_time = payload.get_i64();
            if payload.len() > MAX_XLOGDATA {
                return Err(ProtocolError::new(format!(
                    "XLogData at {start} carries {} bytes, more than the {MAX_XLOGDATA} accepted",
                    payload.len()
                )));
            }
            if start.checked_add(payload.len() as u64).is_none() {
                return Err(ProtocolError::new(format!(
                    "XLogData at {start} runs past the end of the LSN space"
                )));
            }
            Ok(ReplicationMessage::XLogData {
                start,
                server_wal_end,
                data: payload,
            })
        }
        b'k' => {
            if payload.len() != 18 {
                return Err(ProtocolError::new(format!("keepalive is {} bytes, expected 18", payload.len())));
            }
            payload.advance(1);
            let server_wal_end = Lsn(payload.get_u64());
            let _send_time = payload.get_i64();
            let reply_requested = payload.get_u8() != 0;
            Ok(ReplicationMessage::Keepalive {
                server_wal_end,
                reply_requested,
            })
        }
        other => Err(ProtocolError::new(format!("unknown streaming message type 0x{other:02X}"))),
    }
}

/// Now, as a PostgreSQL timestamp.
pub fn pg_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.as_micros() as i64 - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000
}

/// A standby status update (`'r'`), wrapped in a CopyData frame ready to send.
///
/// `apply` is always invalid (0): pgark stores WAL, it never replays it.
pub fn status_update_frame(write: Lsn, flush: Lsn, now: i64, reply_requested: bool, out: &mut BytesMut) {
    out.put_u8(b'd');
    out.put_u32(4 + 34);
    out.put_u8(b'r');
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(0);
    out.put_i64(now);
    out.put_u8(reply_requested as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_xlogdata_without_copy() {
        let mut p = BytesMut::new();
        p.put_u8(b'w');
        p.put_u64(0x1000);
        p.put_u64(0x2000);
        p.put_i64(5);
        p.extend_from_slice(b"WAL!");
        match decode(p.freeze()).unwrap() {
            ReplicationMessage::XLogData {
                start,
                server_wal_end,
                data,
            } => {
                assert_eq!(start, Lsn(0x1000));
                assert_eq!(server_wal_end, Lsn(0x2000));
                assert_eq!(&data[..], b"WAL!");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_keepalive() {
        let mut p = BytesMut::new();
        p.put_u8(b'k');
        p.put_u64(77);
        p.put_i64(0);
        p.put_u8(1);
        assert_eq!(
            decode(p.freeze()).unwrap(),
            ReplicationMessage::Keepalive {
                server_wal_end: Lsn(77),
                reply_requested: true
            }
        );
    }

    #[test]
    fn refuses_malformed_payloads() {
        let mut too_far = BytesMut::new();
        too_far.put_u8(b'w');
        too_far.put_u64(u64::MAX - 1);
        too_far.put_u64(0);
        too_far.put_i64(0);
        too_far.extend_from_slice(b"abc");
        let cases: Vec<Bytes> = vec![
            Bytes::new(),
            Bytes::from_static(b"w\0\0"),
            Bytes::from_static(b"k\0\0\0\0\0\0\0\0\0"),
            Bytes::from_static(b"z"),
            too_far.freeze(),
        ];
        for c in cases {
            assert!(decode(c.clone()).is_err(), "{c:?}");
        }
    }

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        status_update_frame(Lsn(0x10), Lsn(0x8), 42, true, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&out[6..14], &0x10u64.to_be_bytes());
        assert_eq!(&out[14..22], &0x8u64.to_be_bytes());
        assert_eq!(&out[22..30], &0u64.to_be_bytes());
        assert_eq!(out[38], 1);
    }

    #[test]
    fn pg_epoch() {
        // 2000-01-01 is 946684800 s after 1970-01-01; now is well past it.
        assert!(pg_now() > 700_000_000 * 1_000_000);
    }
}
