//! The stored files of a backup, put together from what the storage workers returned: each
//! file's chunks in order, its CRC-32C (combined from the chunks'), and the bytes it takes.

use super::error::{tar_err, BackupError};
use super::pipeline::ChunkDone;
use super::receive::FileBuild;
use crate::catalog::backup_store::{combine_crc, FileKind, StoredFile};

/// The files, and the bytes new to the catalog (each file records the bytes it references).
#[derive(Debug)]
pub struct Assembled {
    pub files: Vec<StoredFile>,
    pub stored_new: u64,
}

/// Puts each chunk result at its place; a file missing a chunk is an error (never a silently
/// short file).
pub fn assemble(server: &str, built: Vec<FileBuild>, results: Vec<ChunkDone>) -> Result<Assembled, BackupError> {
    let mut per_file: Vec<Vec<Option<ChunkDone>>> = built.iter().map(|f| (0..f.chunk_count).map(|_| None).collect()).collect();
    let mut stored_new = 0u64;
    for r in results {
        if r.new {
            stored_new += r.chunk_ref.stored;
        }
        let slot = per_file
            .get_mut(r.file)
            .and_then(|f| f.get_mut(r.chunk))
            .ok_or_else(|| tar_err(server, &format!("chunk {} of file {} was never sent", r.chunk, r.file)))?;
        *slot = Some(r);
    }
    let mut files = Vec::with_capacity(built.len());
    for (fb, chunks) in built.into_iter().zip(per_file) {
        let mut sf = fb.stored;
        if sf.kind == FileKind::File && !fb.changed_blocks {
            let chunks: Vec<ChunkDone> = chunks
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| tar_err(server, &format!("{}: a chunk was lost in the pipeline", sf.path)))?;
            sf.crc32c = Some(combine_crc(
                &chunks.iter().map(|c| (c.crc32c, c.chunk_ref.size)).collect::<Vec<_>>(),
            ));
            sf.stored_bytes = chunks.iter().map(|c| c.chunk_ref.stored).sum::<u64>();
            sf.chunks = chunks.into_iter().map(|c| c.chunk_ref).collect();
        }
        files.push(sf);
    }
    Ok(Assembled { files, stored_new })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup_store::ChunkRef;

    fn file(path: &str, kind: FileKind, chunk_count: usize) -> FileBuild {
        FileBuild {
            stored: StoredFile {
                path: path.into(),
                kind,
                mode: 0o600,
                mtime: 0,
                size: 0,
                crc32c: None,
                stored_bytes: 0,
                link_target: None,
                chunks: vec![],
            },
            chunk_count,
            changed_blocks: false,
        }
    }

    fn done(file: usize, chunk: usize, data: &[u8], new: bool) -> ChunkDone {
        ChunkDone {
            file,
            chunk,
            crc32c: crc32c::crc32c(data),
            chunk_ref: ChunkRef {
                object: format!("{file}-{chunk}"),
                size: data.len() as u64,
                stored: data.len() as u64 / 2,
                blake3: None,
                crc32c: None,
            },
            new,
        }
    }

    #[test]
    fn chunks_in_order_whatever_order_they_finished_in() {
        let built = vec![file("base/1", FileKind::File, 2), file("base", FileKind::Directory, 0)];
        let a = assemble("main", built, vec![done(0, 1, b"world", true), done(0, 0, b"hello ", false)]).unwrap();
        let f = &a.files[0];
        assert_eq!(f.chunks.iter().map(|c| c.object.as_str()).collect::<Vec<_>>(), ["0-0", "0-1"]);
        assert_eq!(f.crc32c, Some(crc32c::crc32c(b"hello world")));
        assert_eq!(a.stored_new, 2);
        assert_eq!(a.files.iter().map(|f| f.stored_bytes).sum::<u64>(), 5);
        assert_eq!(a.files[1].crc32c, None, "a directory has no contents");
    }

    #[test]
    fn a_missing_or_unknown_chunk_is_an_error() {
        let e = assemble("main", vec![file("base/1", FileKind::File, 2)], vec![done(0, 0, b"x", true)]).unwrap_err();
        assert!(e.to_string().contains("base/1: a chunk was lost"), "{e}");
        let e = assemble("main", vec![file("base/1", FileKind::File, 1)], vec![done(0, 5, b"x", true)]).unwrap_err();
        assert!(e.to_string().contains("never sent"), "{e}");
    }
}
