//! Random reads of one backup file as the catalog stores it: the chunk holding each range is
//! fetched, decompressed (which checks its size and CRC-32C) and kept until a read needs
//! another, so a front-to-back pass decompresses every chunk once.

use super::backup_store::{chunk_key, ChunkRef, StoredFile, CHUNK_SIZE};
use super::segment_file;
use super::store::ObjectStore;
use crate::pg::incremental::ReadAt;
use std::io;

pub struct StoredFileReader<'a> {
    store: &'a dyn ObjectStore,
    server: &'a str,
    file: &'a StoredFile,
    /// Offset of each chunk in the file.
    starts: Vec<u64>,
    cached: Option<(usize, Vec<u8>)>,
}

impl<'a> StoredFileReader<'a> {
    pub fn new(store: &'a dyn ObjectStore, server: &'a str, file: &'a StoredFile) -> Self {
        let mut at = 0;
        let starts = file
            .chunks
            .iter()
            .map(|c| {
                let s = at;
                at += c.size;
                s
            })
            .collect();
        StoredFileReader {
            store,
            server,
            file,
            starts,
            cached: None,
        }
    }

    /// The raw bytes of chunk `i`, checked against the size the index records.
    pub fn chunk(&mut self, i: usize) -> io::Result<&[u8]> {
        if self.cached.as_ref().is_none_or(|(n, _)| *n != i) {
            let c = self.file.chunks.get(i).ok_or_else(|| self.damaged(format!("no chunk {i}")))?;
            let data = read_chunk(self.store, self.server, c).map_err(|e| self.damaged(e.to_string()))?;
            self.cached = Some((i, data));
        }
        Ok(self.cached.as_ref().map(|(_, d)| d.as_slice()).unwrap_or_default())
    }

    fn damaged(&self, why: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{} in the catalog: {why}", self.file.path))
    }
}

impl ReadAt for StoredFileReader<'_> {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = self.starts.partition_point(|&s| s <= at).saturating_sub(1);
            let start = self.starts.get(i).copied().unwrap_or(0);
            if at >= self.file.size {
                return Err(self.damaged(format!("read at {at} past its end ({} bytes)", self.file.size)));
            }
            let data = self.chunk(i)?;
            let from = (at - start) as usize;
            let n = (buf.len() - done).min(data.len().saturating_sub(from));
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("chunk {i} is short at {at}")));
            }
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

/// One chunk's raw bytes: decompressed and checked (size, and CRC-32C when recorded).
pub fn read_chunk(store: &dyn ObjectStore, server: &str, c: &ChunkRef) -> io::Result<Vec<u8>> {
    let key = chunk_key(server, &c.object);
    if c.size > 4 * CHUNK_SIZE as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk {key} is listed with {} bytes, more than any chunk", c.size),
        ));
    }
    let stored = store
        .get(&key)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("chunk {key} is missing from the catalog")))?;
    let data = if c.object.ends_with(".zst") {
        segment_file::decompress(&stored).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("chunk {key}: {e}")))?
    } else {
        stored
    };
    if data.len() as u64 != c.size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk {key} holds {} bytes, {} expected", data.len(), c.size),
        ));
    }
    if let Some(want) = c.crc32c {
        let got = crc32c::crc32c(&data);
        if got != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunk {key} has CRC-32C {got:08x}, {want:08x} recorded"),
            ));
        }
    }
    Ok(data)
}
