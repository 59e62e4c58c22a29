//! The tar stream of one tablespace turned into files and content-addressed chunks: each file's
//! data is cut into `CHUNK_SIZE` pieces handed to the storage pipeline as they arrive. An
//! incremental backup's `INCREMENTAL.*` files go to `changed_blocks` instead, until the rebuild.

use super::changed_blocks::ChangedBlocks;
use super::error::BackupError;
use super::pipeline::Pipeline;
use super::tar::{EntryKind, TarEvent};
use crate::catalog::backup_store::{self, FileKind, StoredFile};

/// The largest `backup_manifest` accepted (PostgreSQL writes about 200 bytes per file): a
/// hostile or broken server cannot make a backup allocate without bound.
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024 * 1024;
/// The largest `backup_label` kept in memory (it is a few hundred bytes).
const MAX_LABEL_BYTES: usize = 64 * 1024;

pub(super) struct FileBuild {
    pub stored: StoredFile,
    pub chunk_count: usize,
    /// Kept in `Receive::changed` rather than stored as chunks (its CRC-32C is set already).
    pub changed_blocks: bool,
}

/// The state of the stream being parsed.
pub(super) struct Receive {
    pub server: String,
    pub files: Vec<FileBuild>,
    /// `pg_tblspc/<oid>/` while a tablespace's archive is read; empty for the data directory.
    pub prefix: String,
    current: Option<usize>,
    buf: Vec<u8>,
    /// Bytes of file data received.
    pub bytes: u64,
    /// The `backup_label` file's contents (to tell a backup taken from a standby).
    pub backup_label: Vec<u8>,
    /// An incremental backup's `INCREMENTAL.*` files, kept until the rebuild.
    pub changed: Option<ChangedBlocks>,
    /// The current file goes to `changed`.
    to_changed: bool,
}

impl Receive {
    pub fn new(server: &str) -> Self {
        Receive {
            server: server.to_string(),
            files: Vec::new(),
            prefix: String::new(),
            current: None,
            buf: Vec::new(),
            bytes: 0,
            backup_label: Vec::new(),
            changed: None,
            to_changed: false,
        }
    }

    pub fn on_tar(&mut self, pipeline: &Pipeline, ev: TarEvent<'_>) -> Result<(), BackupError> {
        match ev {
            TarEvent::Entry(e) => {
                let path = format!("{}{}", self.prefix, e.path);
                self.files.push(FileBuild {
                    stored: StoredFile {
                        path,
                        kind: match e.kind {
                            EntryKind::File => FileKind::File,
                            EntryKind::Directory => FileKind::Directory,
                            EntryKind::Symlink => FileKind::Symlink,
                        },
                        mode: e.mode,
                        mtime: e.mtime,
                        size: e.size,
                        crc32c: None,
                        stored_bytes: 0,
                        link_target: e.link_target,
                        chunks: vec![],
                    },
                    chunk_count: 0,
                    changed_blocks: false,
                });
                let is_file = e.kind == EntryKind::File;
                self.current = is_file.then(|| self.files.len() - 1);
                self.to_changed = false;
                if let Some(changed) = self.changed.as_mut() {
                    let path = &self.files[self.files.len() - 1].stored.path;
                    if is_file && crate::pg::incremental::full_path(path).is_some() {
                        changed.begin(&self.server, path, e.size)?;
                        self.to_changed = true;
                    }
                }
            }
            TarEvent::Data(d) => {
                self.bytes += d.len() as u64;
                let Some(i) = self.current else { return Ok(()) };
                if self.files[i].stored.path == "backup_label" && self.backup_label.len() + d.len() <= MAX_LABEL_BYTES {
                    self.backup_label.extend_from_slice(d);
                }
                if self.to_changed {
                    if let Some(changed) = self.changed.as_mut() {
                        return changed.append(d);
                    }
                }
                let mut d = d;
                while !d.is_empty() {
                    if self.buf.capacity() == 0 {
                        let left = self.files[i].stored.size as usize;
                        self.buf.reserve_exact(left.clamp(1, backup_store::CHUNK_SIZE));
                    }
                    let take = (backup_store::CHUNK_SIZE - self.buf.len()).min(d.len());
                    self.buf.extend_from_slice(&d[..take]);
                    d = &d[take..];
                    if self.buf.len() == backup_store::CHUNK_SIZE {
                        self.submit(pipeline, i)?;
                    }
                }
            }
            TarEvent::EntryEnd => {
                if let Some(i) = self.current.take() {
                    if std::mem::take(&mut self.to_changed) {
                        let crc = self.changed.as_mut().and_then(ChangedBlocks::end);
                        let f = &mut self.files[i];
                        f.changed_blocks = true;
                        f.stored.crc32c = crc;
                    } else if !self.buf.is_empty() {
                        self.submit(pipeline, i)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn submit(&mut self, pipeline: &Pipeline, file: usize) -> Result<(), BackupError> {
        let data = std::mem::take(&mut self.buf);
        let n = self.files[file].chunk_count;
        self.files[file].chunk_count += 1;
        if !pipeline.submit(file, n, data) {
            return Err(BackupError::Io(std::io::Error::other(format!(
                "{}: the storage workers stopped",
                self.server
            ))));
        }
        Ok(())
    }
}
