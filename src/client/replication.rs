//! Typed replication commands over a `Connection`: IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY,
//! CREATE_REPLICATION_SLOT, READ_REPLICATION_SLOT and START_REPLICATION, in the syntax every
//! major from 13 to 18 accepts (keywords upper-case; the legacy slot syntax works everywhere).

use super::connection::{ClientError, Connection, QueryResult};
use crate::pg::{Lsn, TimelineId, WalSegSize};
use crate::protocol::backend::BackendMessage;
use crate::protocol::ProtocolError;

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_identifier: u64,
    pub timeline: TimelineId,
    /// The server's flush position (on a standby: its receive/replay position).
    pub xlogpos: Lsn,
}

/// What START_REPLICATION led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// CopyBoth mode: WAL follows.
    Streaming,
    /// The requested timeline ended exactly at the start point: no COPY, go to `next_tli`.
    TimelineEnded(TimelineEnd),
}

/// The row the server sends when a historic timeline has been streamed to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineEnd {
    pub next_tli: TimelineId,
    pub next_start: Lsn,
}

fn one_row(results: &[QueryResult], command: &str) -> Result<QueryResult, ClientError> {
    results
        .iter()
        .find(|r| !r.rows.is_empty())
        .cloned()
        .ok_or_else(|| ProtocolError::new(format!("{command} returned no row")).into())
}

fn parse_field<T: std::str::FromStr>(r: &QueryResult, col: usize, command: &str, what: &str) -> Result<T, ClientError> {
    let text = r
        .text(0, col)
        .ok_or_else(|| ProtocolError::new(format!("{command}: {what} is missing")))?;
    text.trim()
        .parse()
        .map_err(|_| ProtocolError::new(format!("{command}: {what} {text:?} is malformed")).into())
}

/// Slot names PostgreSQL accepts: 1 to 63 of `[a-z0-9_]`. Checked before we build a command.
pub fn validate_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(format!("slot name {name:?}: expected 1 to 63 characters from a-z, 0-9 and _"));
    }
    Ok(())
}

impl Connection {
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ClientError> {
        let r = one_row(&self.simple_query("IDENTIFY_SYSTEM").await?, "IDENTIFY_SYSTEM")?;
        let tli: u32 = parse_field(&r, 1, "IDENTIFY_SYSTEM", "timeline")?;
        if tli == 0 {
            return Err(ProtocolError::new("IDENTIFY_SYSTEM: timeline 0").into());
        }
        Ok(SystemInfo {
            system_identifier: parse_field(&r, 0, "IDENTIFY_SYSTEM", "systemid")?,
            timeline: TimelineId(tli),
            xlogpos: parse_field(&r, 2, "IDENTIFY_SYSTEM", "xlogpos")?,
        })
    }

    /// `SHOW name` (the name is a fixed identifier chosen by us, never user input).
    pub async fn show(&mut self, name: &str) -> Result<String, ClientError> {
        let r = one_row(&self.simple_query(&format!("SHOW {name}")).await?, "SHOW")?;
        r.text(0, 0)
            .ok_or_else(|| ProtocolError::new(format!("SHOW {name} returned NULL")).into())
    }

    pub async fn wal_segment_size(&mut self) -> Result<WalSegSize, ClientError> {
        let text = self.show("wal_segment_size").await?;
        WalSegSize::from_show(&text).map_err(|e| ProtocolError::new(e.to_string()).into())
    }

    /// The history file of `tli`: its name and raw bytes (bytea on 13, text on 14+; the payload
    /// is the raw file either way).
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Vec<u8>), ClientError> {
        let results = self.simple_query(&format!("TIMELINE_HISTORY {}", tli.0)).await?;
        let r = one_row(&results, "TIMELINE_HISTORY")?;
        let name = r
            .text(0, 0)
            .ok_or_else(|| ProtocolError::new("TIMELINE_HISTORY: filename is NULL"))?;
        if name != tli.history_file_name() {
            return Err(ProtocolError::new(format!("TIMELINE_HISTORY {tli} returned file {name:?}")).into());
        }
        let content = r.rows[0]
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| ProtocolError::new("TIMELINE_HISTORY: content is NULL"))?;
        Ok((name, content.to_vec()))
    }

    /// Creates a persistent physical slot with RESERVE_WAL. Returns false if it already existed.
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<bool, ClientError> {
        validate_slot_name(slot).map_err(ProtocolError::new)?;
        match self
            .simple_query(&format!("CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL"))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.sqlstate() == Some("42710") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// READ_REPLICATION_SLOT (15+): `Ok(None)` when the slot does not exist; the inner option is
    /// None when it exists but has reserved no WAL yet.
    pub async fn read_replication_slot(&mut self, slot: &str) -> Result<Option<Option<(Lsn, TimelineId)>>, ClientError> {
        validate_slot_name(slot).map_err(ProtocolError::new)?;
        let r = one_row(
            &self.simple_query(&format!("READ_REPLICATION_SLOT {slot}")).await?,
            "READ_REPLICATION_SLOT",
        )?;
        if r.text(0, 0).is_none() {
            return Ok(None);
        }
        match (r.text(0, 1), r.text(0, 2)) {
            (Some(lsn), Some(tli)) => {
                let lsn: Lsn = lsn
                    .parse()
                    .map_err(|_| ProtocolError::new(format!("READ_REPLICATION_SLOT: restart_lsn {lsn:?}")))?;
                let tli: u32 = tli
                    .parse()
                    .map_err(|_| ProtocolError::new(format!("READ_REPLICATION_SLOT: restart_tli {tli:?}")))?;
                Ok(Some(Some((lsn, TimelineId(tli)))))
            }
            _ => Ok(Some(None)),
        }
    }

    /// Sends START_REPLICATION and waits for CopyBoth (or the no-COPY end-of-timeline answer).
    pub async fn start_replication(&mut self, slot: Option<&str>, start: Lsn, tli: TimelineId) -> Result<StartOutcome, ClientError> {
        let slot_clause = match slot {
            Some(s) => {
                validate_slot_name(s).map_err(ProtocolError::new)?;
                format!("SLOT {s} ")
            }
            None => String::new(),
        };
        let sql = format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {}", tli.0);
        let mut q = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(&sql, &mut q).map_err(|e| ClientError::Io {
            context: "encoding START_REPLICATION".into(),
            source: e,
        })?;
        self.set_phase("START_REPLICATION");
        self.send_raw(&q).await?;
        loop {
            match self.next_message().await? {
                BackendMessage::CopyBothResponse => return Ok(StartOutcome::Streaming),
                BackendMessage::RowDescription(_) => {
                    // The timeline already ended at `start`: the next-timeline row follows at once.
                    return self.finish_timeline().await.map(StartOutcome::TimelineEnded);
                }
                BackendMessage::Error(e) => {
                    self.drain_until_ready().await;
                    return Err(ClientError::Server(e));
                }
                BackendMessage::Notice(_) | BackendMessage::ParameterStatus { .. } => {}
                other => return Err(ProtocolError::new(format!("unexpected {other:?} in reply to START_REPLICATION")).into()),
            }
        }
    }

    async fn drain_until_ready(&mut self) {
        let limit = std::time::Duration::from_secs(5);
        let _ = tokio::time::timeout(limit, async {
            while let Ok(m) = self.next_message().await {
                if matches!(m, BackendMessage::ReadyForQuery(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// After the server's CopyDone and our answering CopyDone: reads the next-timeline row, the
    /// CommandCompletes and ReadyForQuery.
    pub async fn finish_timeline(&mut self) -> Result<TimelineEnd, ClientError> {
        self.set_phase("end-of-timeline exchange");
        let mut end = None;
        loop {
            match self.next_message().await? {
                BackendMessage::RowDescription(_) | BackendMessage::CommandComplete(_) | BackendMessage::Notice(_) => {}
                BackendMessage::CopyData(_) => {} // WAL the server had queued before its CopyDone; already complete up to the switch
                BackendMessage::DataRow(vals) => {
                    let text = |i: usize| vals.get(i).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
                    let tli: u32 = text(0)
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| ProtocolError::new("end of timeline: next timeline id is malformed"))?;
                    let lsn: Lsn = text(1)
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| ProtocolError::new("end of timeline: next start position is malformed"))?;
                    end = Some(TimelineEnd {
                        next_tli: TimelineId(tli),
                        next_start: lsn,
                    });
                }
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::Error(e) => return Err(ClientError::Server(e)),
                BackendMessage::CopyDone => {}
                other => return Err(ProtocolError::new(format!("unexpected {other:?} at the end of a timeline")).into()),
            }
        }
        end.ok_or_else(|| ProtocolError::new("the server ended the timeline without naming the next one").into())
    }
}
