//! BASE_BACKUP, sans IO: the command text each major needs, and a reader that turns the reply's
//! messages into one version-independent sequence of events.
//!
//! 13 and 14 take the keyword form and send one CopyOut per tablespace, then one for the manifest.
//! 15+ take the parenthesized options (the keyword form is a syntax error there) and send a single
//! CopyOut whose CopyData payloads are tagged: `n` new archive, `d` data, `p` progress, `m`
//! manifest follows. Both end with the end position as a result set. The backup counts as done
//! only at the final CommandComplete: the server may still send an ERROR after all the data
//! (for example a page checksum failure).

use super::backend::{BackendMessage, ServerMessage};
use super::ProtocolError;
use crate::pg::{Lsn, TimelineId};
use bytes::{Buf, Bytes};

/// What the client asks for.
#[derive(Debug, Clone)]
pub struct BaseBackupRequest {
    pub label: String,
    pub fast_checkpoint: bool,
    /// Ask the server to append the WAL the backup needs to the base archive.
    pub include_wal: bool,
    /// Server-side throttle in kB/s (32 to 1048576).
    pub max_rate_kb: Option<u32>,
    /// Only what changed since the manifest sent by UPLOAD_MANIFEST (17+).
    pub incremental: bool,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl BaseBackupRequest {
    /// The command for a server of `server_version_num` (e.g. 140011 or 170002).
    pub fn command(&self, server_version_num: u32) -> String {
        let label = quote(&self.label);
        if server_version_num < 150000 {
            let mut c = format!("BASE_BACKUP LABEL {label} PROGRESS NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'");
            if self.fast_checkpoint {
                c.push_str(" FAST");
            }
            if self.include_wal {
                c.push_str(" WAL");
            }
            if let Some(r) = self.max_rate_kb {
                c.push_str(&format!(" MAX_RATE {r}"));
            }
            c
        } else {
            let mut opts = vec![
                format!("LABEL {label}"),
                "PROGRESS".to_string(),
                format!("CHECKPOINT '{}'", if self.fast_checkpoint { "fast" } else { "spread" }),
                "WAIT false".to_string(),
                "MANIFEST 'yes'".to_string(),
                "MANIFEST_CHECKSUMS 'CRC32C'".to_string(),
            ];
            if self.include_wal {
                opts.push("WAL".to_string());
            }
            if let Some(r) = self.max_rate_kb {
                opts.push(format!("MAX_RATE {r}"));
            }
            if self.incremental {
                opts.push("INCREMENTAL".to_string());
            }
            format!("BASE_BACKUP ({})", opts.join(", "))
        }
    }
}

/// One tablespace as announced before the data. The main data directory has no oid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceInfo {
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// The server's size estimate in bytes (from kB), if it sent one.
    pub estimated_bytes: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BackupEvent {
    Start {
        lsn: Lsn,
        timeline: TimelineId,
    },
    Tablespaces(Vec<TablespaceInfo>),
    /// A new archive begins; `tablespace` indexes the list sent in `Tablespaces`.
    ArchiveBegin {
        tablespace: usize,
    },
    ArchiveData(Bytes),
    ArchiveEnd,
    /// Bytes done so far over the whole backup (15+ only).
    Progress(u64),
    ManifestData(Bytes),
    End {
        lsn: Lsn,
        timeline: TimelineId,
    },
    Warning(ServerMessage),
    /// The final CommandComplete: the backup succeeded on the server.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    StartRow,
    Tablespaces,
    /// Waiting for the next CopyOut (13/14) or the single one (15+).
    BetweenCopies,
    /// Inside the 13/14 CopyOut for tablespace i.
    LegacyArchive(usize),
    LegacyManifest,
    /// Inside the 15+ CopyOut; `in_manifest` after an `m` message.
    Modern {
        in_archive: bool,
        in_manifest: bool,
    },
    EndRow,
    Complete,
    Finished,
}

pub struct BaseBackupReader {
    modern: bool,
    phase: Phase,
    tablespaces: Vec<TablespaceInfo>,
    next_archive: usize,
    start_seen: bool,
    end: Option<(Lsn, TimelineId)>,
}

fn perr(m: impl Into<String>) -> ProtocolError {
    ProtocolError::new(format!("BASE_BACKUP reply: {}", m.into()))
}

fn text(v: &Option<Bytes>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn position_row(row: &[Option<Bytes>]) -> Result<(Lsn, TimelineId), ProtocolError> {
    let lsn_text = row.first().and_then(text).ok_or_else(|| perr("position row without an LSN"))?;
    let lsn: Lsn = lsn_text.parse().map_err(|_| perr(format!("position {lsn_text:?} is not an LSN")))?;
    let tli_text = row.get(1).and_then(text).ok_or_else(|| perr("position row without a timeline"))?;
    let tli: u32 = tli_text
        .parse()
        .map_err(|_| perr(format!("timeline {tli_text:?} is not a number")))?;
    Ok((lsn, TimelineId(tli)))
}

impl BaseBackupReader {
    pub fn new(server_version_num: u32) -> Self {
        BaseBackupReader {
            modern: server_version_num >= 150000,
            phase: Phase::StartRow,
            tablespaces: Vec::new(),
            next_archive: 0,
            start_seen: false,
            end: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Feeds one message; returns the events it produced. An ErrorResponse becomes `Err` with the
    /// server's message (the caller maps it to a backup failure).
    pub fn on_message(&mut self, msg: BackendMessage) -> Result<Vec<BackupEvent>, BackupReplyError> {
        use BackendMessage as M;
        let mut out = Vec::new();
        match (self.phase, msg) {
            (_, M::Error(e)) => return Err(BackupReplyError::Server(e)),
            (_, M::Notice(n)) => out.push(BackupEvent::Warning(n)),
            (_, M::ParameterStatus { .. }) => {}
            (Phase::StartRow, M::RowDescription(_)) => {}
            (Phase::StartRow, M::DataRow(row)) => {
                let (lsn, timeline) = position_row(&row)?;
                self.start_seen = true;
                out.push(BackupEvent::Start { lsn, timeline });
            }
            (Phase::StartRow, M::CommandComplete(_)) if self.start_seen => self.phase = Phase::Tablespaces,
            (Phase::Tablespaces, M::RowDescription(_)) => {}
            (Phase::Tablespaces, M::DataRow(row)) => {
                let oid = match text(row.first().unwrap_or(&None)) {
                    None => None,
                    Some(t) => Some(
                        t.parse::<u32>()
                            .map_err(|_| perr(format!("tablespace oid {t:?} is not a number")))?,
                    ),
                };
                let location = text(row.get(1).unwrap_or(&None));
                let estimated_bytes = text(row.get(2).unwrap_or(&None))
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(|kb| kb * 1024);
                self.tablespaces.push(TablespaceInfo {
                    oid,
                    location,
                    estimated_bytes,
                });
            }
            (Phase::Tablespaces, M::CommandComplete(_)) => {
                if self.tablespaces.is_empty() {
                    return Err(perr("no tablespaces announced").into());
                }
                out.push(BackupEvent::Tablespaces(self.tablespaces.clone()));
                self.phase = Phase::BetweenCopies;
            }
            (Phase::BetweenCopies, M::CopyOutResponse) => {
                if self.modern {
                    self.phase = Phase::Modern {
                        in_archive: false,
                        in_manifest: false,
                    };
                } else if self.next_archive < self.tablespaces.len() {
                    out.push(BackupEvent::ArchiveBegin {
                        tablespace: self.next_archive,
                    });
                    self.phase = Phase::LegacyArchive(self.next_archive);
                    self.next_archive += 1;
                } else {
                    self.phase = Phase::LegacyManifest;
                }
            }
            (Phase::LegacyArchive(_), M::CopyData(d)) => out.push(BackupEvent::ArchiveData(d)),
            (Phase::LegacyArchive(_), M::CopyDone) => {
                out.push(BackupEvent::ArchiveEnd);
                self.phase = Phase::BetweenCopies;
            }
            (Phase::LegacyManifest, M::CopyData(d)) => out.push(BackupEvent::ManifestData(d)),
            (Phase::LegacyManifest, M::CopyDone) => self.phase = Phase::EndRow,
            (Phase::BetweenCopies, M::RowDescription(_)) if !self.modern && self.next_archive == self.tablespaces.len() => {
                self.phase = Phase::EndRow
            }
            (Phase::Modern { in_archive, in_manifest }, M::CopyData(mut d)) => {
                if d.is_empty() {
                    return Err(perr("empty CopyData").into());
                }
                let kind = d.get_u8();
                match kind {
                    b'n' => {
                        if in_manifest {
                            return Err(perr("new archive after the manifest").into());
                        }
                        if in_archive {
                            out.push(BackupEvent::ArchiveEnd);
                        }
                        if self.next_archive >= self.tablespaces.len() {
                            return Err(perr(format!("more archives than the {} tablespaces announced", self.tablespaces.len())).into());
                        }
                        out.push(BackupEvent::ArchiveBegin {
                            tablespace: self.next_archive,
                        });
                        self.next_archive += 1;
                        self.phase = Phase::Modern {
                            in_archive: true,
                            in_manifest: false,
                        };
                    }
                    b'd' if in_manifest => out.push(BackupEvent::ManifestData(d)),
                    b'd' if in_archive => out.push(BackupEvent::ArchiveData(d)),
                    b'd' => return Err(perr("data before any archive").into()),
                    b'p' => {
                        if d.len() < 8 {
                            return Err(perr("short progress message").into());
                        }
                        out.push(BackupEvent::Progress(d.get_u64()));
                    }
                    b'm' => {
                        if in_archive {
                            out.push(BackupEvent::ArchiveEnd);
                        }
                        self.phase = Phase::Modern {
                            in_archive: false,
                            in_manifest: true,
                        };
                    }
                    other => return Err(perr(format!("unknown CopyData type 0x{other:02X}")).into()),
                }
            }
            (Phase::Modern { in_archive, .. }, M::CopyDone) => {
                if in_archive {
                    out.push(BackupEvent::ArchiveEnd);
                }
                self.phase = Phase::EndRow;
            }
            (Phase::EndRow, M::RowDescription(_)) => {}
            (Phase::EndRow, M::DataRow(row)) => {
                let (lsn, timeline) = position_row(&row)?;
                self.end = Some((lsn, timeline));
                out.push(BackupEvent::End { lsn, timeline });
            }
            (Phase::EndRow, M::CommandComplete(_)) if self.end.is_some() => self.phase = Phase::Complete,
            (Phase::Complete, M::CommandComplete(_)) => {
                if self.next_archive != self.tablespaces.len() {
                    return Err(perr(format!(
                        "{} archives received for {} tablespaces",
                        self.next_archive,
                        self.tablespaces.len()
                    ))
                    .into());
                }
                out.push(BackupEvent::Done);
            }
            (Phase::Complete, M::ReadyForQuery(_)) => self.phase = Phase::Finished,
            (phase, other) => return Err(perr(format!("unexpected {} while in {phase:?}", describe(&other))).into()),
        }
        Ok(out)
    }
}

fn describe(m: &BackendMessage) -> String {
    match m {
        BackendMessage::CopyData(d) => format!("CopyData of {} bytes", d.len()),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupReplyError {
    #[error("the server reported: {0}")]
    Server(ServerMessage),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendMessage as M;

    fn row(v: &[Option<&str>]) -> M {
        M::DataRow(v.iter().map(|x| x.map(|s| Bytes::from(s.to_string()))).collect())
    }

    fn cd(kind: u8, rest: &[u8]) -> M {
        let mut v = vec![kind];
        v.extend_from_slice(rest);
        M::CopyData(Bytes::from(v))
    }

    fn feed(r: &mut BaseBackupReader, msgs: Vec<M>) -> Vec<BackupEvent> {
        msgs.into_iter().flat_map(|m| r.on_message(m).unwrap()).collect()
    }

    fn head() -> Vec<M> {
        vec![
            M::RowDescription(vec!["recptr".into(), "tli".into()]),
            row(&[Some("0/2000028"), Some("1")]),
            M::CommandComplete("SELECT".into()),
            M::RowDescription(vec![]),
            row(&[Some("16394"), Some("/ts"), Some("2")]),
            row(&[None, None, Some("100")]),
            M::CommandComplete("SELECT".into()),
        ]
    }

    fn tail() -> Vec<M> {
        vec![
            M::RowDescription(vec![]),
            row(&[Some("0/2000100"), Some("1")]),
            M::CommandComplete("SELECT".into()),
            M::CommandComplete("BASE_BACKUP".into()),
            M::ReadyForQuery(b'I'),
        ]
    }

    fn summarize(evs: &[BackupEvent]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                BackupEvent::ArchiveData(d) => format!("data {}", d.len()),
                BackupEvent::ManifestData(d) => format!("manifest {}", d.len()),
                BackupEvent::Tablespaces(t) => format!("ts {}", t.len()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn commands_per_version() {
        let r = BaseBackupRequest {
            label: "it's".into(),
            fast_checkpoint: true,
            include_wal: false,
            max_rate_kb: Some(64),
            incremental: false,
        };
        let old = r.command(140011);
        assert!(
            old.starts_with("BASE_BACKUP LABEL 'it''s' PROGRESS NOWAIT MANIFEST 'yes'")
                && old.contains(" FAST")
                && old.contains("MAX_RATE 64")
        );
        let new = r.command(170000);
        assert!(
            new.starts_with("BASE_BACKUP (LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAIT false"),
            "{new}"
        );
        assert!(!new.contains("INCREMENTAL"));
        let incr = BaseBackupRequest { incremental: true, ..r }.command(170000);
        assert!(incr.ends_with(", INCREMENTAL)"), "{incr}");
    }

    #[test]
    fn legacy_and_modern_replies_give_the_same_events() {
        let mut legacy = head();
        legacy.extend([M::CopyOutResponse, M::CopyData(Bytes::from_static(b"ts")), M::CopyDone]);
        legacy.extend([M::CopyOutResponse, M::CopyData(Bytes::from_static(b"base")), M::CopyDone]);
        legacy.extend([M::CopyOutResponse, M::CopyData(Bytes::from_static(b"{}")), M::CopyDone]);
        legacy.extend(tail());
        let mut modern = head();
        modern.push(M::CopyOutResponse);
        modern.extend([cd(b'n', b"16394.tar\0/ts\0"), cd(b'd', b"ts"), cd(b'p', &7u64.to_be_bytes())]);
        modern.extend([
            cd(b'n', b"base.tar\0\0"),
            cd(b'd', b"base"),
            cd(b'm', b""),
            cd(b'd', b"{}"),
            M::CopyDone,
        ]);
        modern.extend(tail());
        let mut a = BaseBackupReader::new(140000);
        let ea = summarize(&feed(&mut a, legacy));
        let mut b = BaseBackupReader::new(150000);
        let eb: Vec<String> = summarize(&feed(&mut b, modern))
            .into_iter()
            .filter(|s| !s.starts_with("Progress"))
            .collect();
        assert_eq!(ea, eb);
        assert!(a.is_finished() && b.is_finished());
        assert_eq!(ea.last().unwrap(), "Done");
        assert!(ea.contains(&"ArchiveBegin { tablespace: 1 }".to_string()));
    }

    #[test]
    fn errors_and_garbage() {
        let mut r = BaseBackupReader::new(150000);
        feed(&mut r, head());
        r.on_message(M::CopyOutResponse).unwrap();
        assert!(r.on_message(cd(b'd', b"x")).is_err());
        let mut r = BaseBackupReader::new(150000);
        feed(&mut r, head());
        r.on_message(M::CopyOutResponse).unwrap();
        assert!(matches!(r.on_message(cd(b'z', b"")), Err(BackupReplyError::Protocol(_))));
        let mut r = BaseBackupReader::new(150000);
        let e = M::Error(ServerMessage {
            message: "checksum verification failure during base backup".into(),
            ..Default::default()
        });
        assert!(matches!(r.on_message(e), Err(BackupReplyError::Server(_))));
        let mut r = BaseBackupReader::new(150000);
        assert!(r.on_message(M::CopyDone).is_err());
    }
}
