//! Background archiving of completed segments, off the receive path.
//!
//! For each segment that reached its final name: read it (once, directly), record its CRC-32C, and either
//! publish `<name>.zst` atomically (then recycle the plain file as a spare for the receiver) or,
//! with compression off, publish `<name>.sum`. When idle it also keeps one zero-filled spare ready
//! so that the receiver, acknowledging at the tip, never has to zero-fill a segment at a boundary. Failures (a full disk) are logged and retried;
//! the plain segment stays until its archived form is durable. A segment the receiver encrypted
//! (`spool_cipher`, `encryption.local`) is decrypted as it is read, then sealed by the store.

use super::local_store_sealing;
use super::segment_file;
use super::space::{Level, SharedLevel};
use super::spool_cipher;
use super::store::ObjectStore;
use super::wal_store::{create_zero_filled, full_size, prepare_spool_file, SparePool, SUM_SUFFIX, ZST_SUFFIX};
use super::Compression;
use crate::fsio::direct::{self, AlignedBuf, DirectSupport};
use crate::pg::{WalFileName, WalSegSize};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Spares kept at most; more archived files are simply removed.
const MAX_SPARES: usize = 2;
/// Segments up to this size are read into memory once; larger ones are streamed.
const MAX_BUFFERED_SEGMENT: usize = 64 << 20;
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// After a completed segment, the archiver waits this long for the next one before it prepares
/// a spare (a receiver at the tip, not catching up); idle, its wait doubles up to
/// `IDLE_WAIT_MAX`. Stopping never waits for it: the receiver drops the channel first.
const IDLE_WAIT_FIRST: Duration = Duration::from_secs(1);
const IDLE_WAIT_MAX: Duration = Duration::from_secs(8);

#[derive(Clone)]
pub struct Archiver {
    pub server: String,
    pub compression: Compression,
    pub seg: WalSegSize,
    /// The spool directory holding plain segments.
    pub dir: PathBuf,
    pub store: Arc<dyn ObjectStore>,
    /// Store key of the spool directory, e.g. `main/wal`.
    pub key_prefix: String,
    pub spares: SparePool,
    /// The catalog's disk-pressure level: at the critical level no new spare is zero-filled
    /// (16 MiB of space taken ahead of need); recycled ones, which take no new space, still are used.
    pub space: SharedLevel,
    /// Told of every segment archived.
    pub events: Arc<dyn ArchiveObserver>,
    pub direct: DirectSupport,
}

/// What the archiver reports (the receiver passes its observer on).
pub trait ArchiveObserver: Send + Sync {
    /// A segment of `original_bytes` is stored in `stored_bytes`.
    fn segment_archived(&self, original_bytes: u64, stored_bytes: u64);
}

/// A running archiver thread.
pub struct ArchiverHandle {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl ArchiverHandle {
    /// Whether the thread has ended (it only does when stopped, or by a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the archiver after the segment it is working on (what is still queued stays plain
    /// and is found by the next scan) and waits for it.
    pub fn stop_and_join(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }

    /// Joins an ended thread and says why it ended (the panic message, if any).
    pub fn join_reason(self) -> String {
        match self.thread.join() {
            Ok(()) => "it returned".into(),
            Err(p) => format!(
                "it panicked: {}",
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default()
            ),
        }
    }
}

impl Archiver {
    /// Runs on its own thread until stopped, or every sender of `rx` is gone and the queue is
    /// empty. A name queued twice (a rescan) is archived once.
    pub fn spawn(self, rx: mpsc::Receiver<WalFileName>) -> std::io::Result<ArchiverHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("archiver-{}", self.server))
            .spawn(move || self.run(rx, &flag))?;
        Ok(ArchiverHandle { thread, stop })
    }

    fn run(self, rx: mpsc::Receiver<WalFileName>, stop: &AtomicBool) {
        // Archiving is never on a commit's path: its CPU (a read, a CRC and zstd over every
        // segment) yields to the receivers that are (`util::thread_priority`).
        crate::util::thread_priority::lower_to_background("archiver");
        let mut queue: VecDeque<WalFileName> = VecDeque::new();
        let mut queued: HashSet<WalFileName> = HashSet::new();
        let mut disconnected = false;
        let mut idle_wait = IDLE_WAIT_FIRST;
        // Segments that failed in a row: a segment that cannot be read (encrypted with a key no
        // longer configured) moves to the back of the queue, so that it does not hold back the
        // ones after it; the wait comes once all of them have failed.
        let mut failed_in_row = 0usize;
        // Buffers are leased per segment from the process's pool (`archive_buffers`): memory
        // follows the work, not the number of servers.
        let pool = super::archive_buffers::BufferPool::shared();
        fn enqueue(queue: &mut VecDeque<WalFileName>, queued: &mut HashSet<WalFileName>, n: WalFileName) {
            if queued.insert(n) {
                queue.push_back(n);
            }
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            while let Ok(n) = rx.try_recv() {
                enqueue(&mut queue, &mut queued, n);
            }
            if let Some(&name) = queue.front() {
                let result = self.archive(name, &mut pool.lease());
                match result {
                    Ok(()) => {
                        queue.pop_front();
                        queued.remove(&name);
                        failed_in_row = 0;
                    }
                    Err(e) => {
                        tracing::warn!(server = %self.server, segment = %name.format(self.seg), error = %e,
                            "archiving a completed segment failed; it stays uncompressed and will be retried");
                        if disconnected {
                            return;
                        }
                        // Only a failure of this segment's own (InvalidData: it cannot be
                        // decrypted, a damaged trailer) lets the next ones go first; a failure
                        // every segment would meet (a full disk) waits at the head.
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            queue.rotate_left(1);
                            failed_in_row += 1;
                            if failed_in_row < queue.len() {
                                continue;
                            }
                        }
                        failed_in_row = 0;
                        let until = std::time::Instant::now() + RETRY_AFTER;
                        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                continue;
            }
            if disconnected {
                return;
            }
            match rx.recv_timeout(idle_wait) {
                Ok(n) => {
                    idle_wait = IDLE_WAIT_FIRST;
                    enqueue(&mut queue, &mut queued, n)
                }
                // A second without a completed segment: the receiver is at the tip, not catching
                // up, so prepare a spare now rather than compete with a catch-up for the disk.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.ensure_spare();
                    pool.trim(super::archive_buffers::IDLE);
                    crate::util::memory::release_pending();
                    // Idle: wake less and less often (100 archivers waking every second cost
                    // an idle daemon about half a percent of a core for nothing).
                    idle_wait = (idle_wait * 2).min(IDLE_WAIT_MAX);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
            }
        }
    }

    fn ensure_spare(&self) {
        self.prepare_found_spares();
        if !self.spares.is_empty() || !self.dir.is_dir() {
            return;
        }
        if self.space.get() == Level::Critical {
            return;
        }
        let path = self.spares.new_name(&self.dir);
        // With `encryption.local`, its trailer too, here rather than at the segment boundary.
        let ring = local_store_sealing::keyring_for_spool(&self.dir);
        let made =
            create_zero_filled(&path, self.seg.bytes(), &self.direct).and_then(|()| prepare_spool_file(&path, self.seg, ring.as_deref()));
        match made {
            Ok(cipher) => self.spares.add_prepared(path, cipher),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(server = %self.server, error = %e, "could not prepare a spare segment")
            }
        }
    }

    /// With `encryption.local`, gives the spares a scan found after a restart (or prepared
    /// before a rotation) a fresh trailer now, while idle, so that the receiver's next segment
    /// boundaries only rename; a plaintext one (from before encryption) is removed.
    fn prepare_found_spares(&self) {
        let Some(ring) = local_store_sealing::keyring_for_spool(&self.dir) else {
            return;
        };
        while let Some(path) = self.spares.take_unprepared(ring.current().id()) {
            let plaintext = std::fs::metadata(&path).is_ok_and(|m| m.len() == self.seg.bytes());
            let done = if plaintext {
                crate::fsio::durable::durable_remove(&path)
            } else {
                prepare_spool_file(&path, self.seg, Some(&ring)).map(|c| self.spares.add_prepared(path.clone(), c))
            };
            if let Err(e) = done {
                // Left as it is: the receiver prepares it when it uses it.
                tracing::warn!(server = %self.server, spare = %path.display(), error = %e, "could not prepare a spare segment");
                self.spares.add(path);
                return;
            }
        }
    }

    /// Makes an archived plain segment a spare for the receiver (or removes it). With
    /// `encryption.local` it gets a fresh trailer here, off the receiver's path; a plaintext
    /// one (from before encryption was on) is removed rather than recycled, so that no
    /// encrypted `.partial` keeps old WAL in plaintext past its data.
    fn recycle(&self, plain: &std::path::Path) -> std::io::Result<()> {
        use crate::fsio::durable::ctx;
        let ring = local_store_sealing::keyring_for_spool(&self.dir);
        let encrypted = std::fs::metadata(plain).is_ok_and(|m| spool_cipher::sealed_len(m.len()));
        if self.spares.len() >= MAX_SPARES || (ring.is_some() && !encrypted) {
            return crate::fsio::durable::durable_remove(plain);
        }
        let spare = self.spares.new_name(&self.dir);
        std::fs::rename(plain, &spare).map_err(ctx("recycle", plain))?;
        match ring {
            Some(r) => match prepare_spool_file(&spare, self.seg, Some(&r)) {
                Ok(c) => self.spares.add_prepared(spare, c),
                // Still a spare: prepared again when it is used.
                Err(e) => {
                    tracing::warn!(server = %self.server, error = %e, "could not prepare a spare segment");
                    self.spares.add(spare)
                }
            },
            None => self.spares.add(spare),
        }
        Ok(())
    }

    /// Archives one segment; idempotent, so a crash at any point is repaired by doing it again.
    /// The segment is read once, directly (not through the page cache), into `work`'s buffer,
    /// which is reused from segment to segment, and compressed in one call; segments larger than `MAX_BUFFERED_SEGMENT` are
    /// streamed twice instead (checksum, then compression) so memory stays small.
    pub fn archive(&self, name: WalFileName, work: &mut Buffers) -> std::io::Result<()> {
        fail::fail_point!("archiver-segment");
        use crate::fsio::durable::ctx;
        let file_name = name.format(self.seg);
        let plain = self.dir.join(&file_name);
        let open = || std::fs::File::open(&plain).map_err(ctx("open", &plain));
        let size = self.seg.bytes() as usize;
        let ring = local_store_sealing::reading_keyring_for_spool(&self.dir);
        // The segment's bytes (decrypted when the receiver encrypted them), for the streamed path.
        let open_plain = || -> std::io::Result<spool_cipher::DecryptingReader<std::fs::File>> {
            let f = open()?;
            let len = f.metadata().map_err(ctx("stat", &plain))?.len();
            let cipher = spool_cipher::of_file(&f, len, ring.as_deref(), &plain)?;
            Ok(spool_cipher::DecryptingReader::new(f, size as u64, cipher))
        };
        let in_memory = if size <= MAX_BUFFERED_SEGMENT {
            // The set may have served a server with smaller segments (the pool is shared).
            if work.input.as_ref().is_some_and(|b| b.capacity() < size) {
                work.input = None;
            }
            let b = work.input.get_or_insert_with(|| AlignedBuf::new(size));
            match open() {
                Ok(f) => {
                    let len = f.metadata().map_err(ctx("stat", &plain))?.len();
                    if !full_size(len, self.seg) {
                        return Err(std::io::Error::other(format!(
                            "{} has {len} bytes, expected {size} (or {} encrypted)",
                            plain.display(),
                            size as u64 + spool_cipher::TRAILER_LEN
                        )));
                    }
                    let cipher = spool_cipher::of_file(&f, len, ring.as_deref(), &plain)?;
                    let read = direct::read_at(&self.direct, &plain, &f, &mut b.as_mut_slice()[..size], 0).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            std::io::Error::other(format!("{} is shorter than a {size}-byte segment", plain.display()))
                        } else {
                            ctx("read", &plain)(e)
                        }
                    });
                    read?;
                    if let Some(c) = cipher {
                        c.apply(0, &mut b.as_mut_slice()[..size]);
                    }
                    Some(b.slice(size))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let sum = match in_memory {
            Some(bytes) => segment_file::SegmentChecksum::of(bytes),
            None => match open_plain() {
                Ok(mut f) => segment_file::checksum_stream(&mut f).map_err(ctx("read", &plain))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        if sum.size != self.seg.bytes() {
            return Err(std::io::Error::other(format!(
                "{} has {} bytes, expected {}",
                plain.display(),
                sum.size,
                self.seg.bytes()
            )));
        }
        match self.compression {
            Compression::Zstd(level) => {
                let key = format!("{}/{file_name}{ZST_SUFFIX}", self.key_prefix);
                let counted = match in_memory {
                    // One call over the whole segment, into a reused aligned buffer, stored directly.
                    Some(bytes) => {
                        let c = match &mut work.compressor {
                            Some((l, c)) if *l == level => c,
                            slot => &mut slot.insert((level, segment_file::compressor(level)?)).1,
                        };
                        let bound = segment_file::stored_bound(size);
                        if work.out.as_ref().is_some_and(|b| b.capacity() < bound) {
                            work.out = None;
                        }
                        let out = work.out.get_or_insert_with(|| AlignedBuf::new(bound));
                        let n = segment_file::compress_to_slice(bytes, sum, c, out.as_mut_slice())?;
                        self.store.put(&key, out.slice(n))?;
                        n as u64
                    }
                    None => {
                        let mut counted = 0u64;
                        self.store.put_from(&key, &mut |w| {
                            let mut out = crate::util::io::CountingWriter::new(w);
                            let mut input = std::io::BufReader::with_capacity(1 << 20, open_plain()?);
                            let result = segment_file::compress_stream(&mut input, sum, level, &mut out);
                            counted = out.count();
                            result
                        })?;
                        counted
                    }
                };
                self.events.segment_archived(sum.size, counted);
                self.recycle(&plain)?;
            }
            Compression::None => {
                self.store.put(
                    &format!("{}/{file_name}{SUM_SUFFIX}", self.key_prefix),
                    sum.to_sum_text().as_bytes(),
                )?;
                self.events.segment_archived(sum.size, sum.size);
            }
        }
        tracing::debug!(server = %self.server, segment = %file_name, "segment archived");
        Ok(())
    }
}

/// What archiving a segment works in, reused from segment to segment (leased from
/// `archive_buffers`): the segment read into memory, its compressed form, the zstd context
/// (with its level).
#[derive(Default)]
pub struct Buffers {
    input: Option<AlignedBuf>,
    out: Option<AlignedBuf>,
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::LocalStore;

    struct Quiet;
    impl ArchiveObserver for Quiet {
        fn segment_archived(&self, _: u64, _: u64) {}
    }

    /// The pool hands one set to servers of every segment size: a set sized for 1 MiB
    /// segments grows for a 16 MiB one, and a larger set serves a smaller segment.
    #[test]
    fn one_buffer_set_serves_servers_with_different_segment_sizes() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(d.path()));
        let mut work = Buffers::default();
        for (server, bytes) in [("small", 1u64 << 20), ("big", 16 << 20), ("small2", 1 << 20)] {
            let seg = WalSegSize::new(bytes).unwrap();
            let dir = d.path().join(server).join("wal");
            std::fs::create_dir_all(&dir).unwrap();
            let name = WalFileName::parse("000000010000000000000003", seg).unwrap();
            let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8 ^ server.len() as u8).collect();
            std::fs::write(dir.join(name.format(seg)), &data).unwrap();
            let a = Archiver {
                server: server.into(),
                compression: Compression::Zstd(1),
                seg,
                dir: dir.clone(),
                store: Arc::clone(&store),
                key_prefix: format!("{server}/wal"),
                spares: SparePool::default(),
                space: SharedLevel::default(),
                events: Arc::new(Quiet),
                direct: Default::default(),
            };
            a.archive(name, &mut work).unwrap();
            let stored = store
                .get(&format!("{server}/wal/{}{ZST_SUFFIX}", name.format(seg)))
                .unwrap()
                .unwrap();
            assert_eq!(segment_file::decompress(&stored).unwrap(), data, "{server}");
        }
    }

    /// `encryption.local`: the receiver writes its spool encrypted (no plaintext on disk, a
    /// trailer of its own per file, a fresh nonce for a recycled spare), the store and the
    /// archiver read it as plaintext, and a `.partial` opened again keeps its keystream.
    #[test]
    fn with_encryption_local_the_spool_is_encrypted_and_everything_reads_it_back() {
        use super::super::encryption::{Key, Keyring};
        use super::super::local_store_sealing;
        use super::super::wal_store::WalStore;
        use crate::pg::{Lsn, TimelineId};
        let d = tempfile::tempdir().unwrap();
        let ring = Arc::new(Keyring::new(Key::generate(), vec![]));
        local_store_sealing::register(d.path(), Some(Arc::clone(&ring)), false);
        let store = local_store_sealing::store_for(d.path());
        let bytes = 1u64 << 20;
        let seg = WalSegSize::new(bytes).unwrap();
        let dir = d.path().join("main").join("wal");
        let spares = SparePool::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = WalStore::new(dir.clone(), seg, spares.clone(), tx);
        w.begin(TimelineId(1), Lsn(0)).unwrap();
        let marker = b"a row no spool file may show";
        let mut data: Vec<u8> = (0..3 * bytes as usize + 5000)
            .map(|i| marker[i % marker.len()] ^ (i / 4096 % 2) as u8)
            .collect();
        // WAL pages as readers of a `.partial` recognise them: magic, page address.
        for page in (0..data.len()).step_by(8192) {
            data[page..page + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            if page + 16 <= data.len() {
                data[page + 8..page + 16].copy_from_slice(&(page as u64).to_le_bytes());
            }
        }
        let mut pos = 0usize;
        for len in [1usize, 4095, 4096, 5000, 3, 70_000].iter().cycle() {
            let end = (pos + len).min(bytes as usize + 4000);
            w.write(Lsn(pos as u64), &data[pos..end]).unwrap();
            pos = end;
            w.sync().unwrap();
            if pos == bytes as usize + 4000 {
                break;
            }
        }
        let first = WalFileName::parse("000000010000000000000000", seg).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![first]);
        let partial_key = "main/wal/000000010000000000000001.partial";
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap();
            let raw = std::fs::read(f.path()).unwrap();
            assert_eq!(raw.len() as u64, bytes + spool_cipher::TRAILER_LEN, "{:?}", f.file_name());
            assert!(
                !raw.windows(marker.len()).any(|x| x == marker),
                "{:?} holds plaintext",
                f.file_name()
            );
        }
        assert_eq!(
            store.get_unrecycled("main/wal/000000010000000000000000").unwrap().unwrap(),
            data[..bytes as usize]
        );
        assert_eq!(store.size("main/wal/000000010000000000000000").unwrap(), Some(bytes));
        let open = store.get(partial_key).unwrap().unwrap();
        assert_eq!(open.len() as u64, bytes);
        assert_eq!(open[..4000], data[bytes as usize..pos]);
        // Past what was written a reader gets zeros, not this file's keystream.
        assert!(open[4096..].iter().all(|&b| b == 0), "unwritten bytes decrypted");
        let first_trailer = std::fs::read(dir.join("000000010000000000000000")).unwrap()[bytes as usize..].to_vec();

        // The archiver decrypts, the store seals; the file becomes a spare.
        let a = Archiver {
            server: "main".into(),
            compression: Compression::Zstd(1),
            seg,
            dir: dir.clone(),
            store: Arc::clone(&store),
            key_prefix: "main/wal".into(),
            spares: spares.clone(),
            space: SharedLevel::default(),
            events: Arc::new(Quiet),
            direct: Default::default(),
        };
        a.archive(first, &mut Buffers::default()).unwrap();
        let stored = store.get("main/wal/000000010000000000000000.zst").unwrap().unwrap();
        assert_eq!(segment_file::decompress(&stored).unwrap(), data[..bytes as usize]);
        assert_eq!(spares.len(), 1);
        // Plaintext from before encryption was on is removed, never recycled.
        let before = WalFileName::parse("000000010000000000000009", seg).unwrap();
        std::fs::write(dir.join("000000010000000000000009"), &data[..bytes as usize]).unwrap();
        a.archive(before, &mut Buffers::default()).unwrap();
        assert_eq!(spares.len(), 1);
        assert!(!dir.join("000000010000000000000009").exists());

        // Opened again (a reconnect): streamed again from the segment start, the same keystream.
        drop(w);
        let (tx, _rx2) = std::sync::mpsc::channel();
        let mut w = WalStore::new(dir.clone(), seg, spares.clone(), tx);
        w.begin(TimelineId(1), Lsn(bytes)).unwrap();
        let end = 3 * bytes as usize;
        w.write(Lsn(bytes), &data[bytes as usize..end]).unwrap();
        w.sync().unwrap();
        assert_eq!(spares.len(), 0, "the spare became the next .partial");
        // The recycled file (now segment 2) got a new nonce when the archiver prepared it.
        let recycled_trailer = std::fs::read(dir.join("000000010000000000000002")).unwrap()[bytes as usize..].to_vec();
        assert_eq!(recycled_trailer[..17], first_trailer[..17], "same magic, format, key");
        assert_ne!(recycled_trailer[17..41], first_trailer[17..41], "a nonce used again");
        assert_eq!(
            store.get("main/wal/000000010000000000000001").unwrap().unwrap(),
            data[bytes as usize..2 * bytes as usize]
        );
        assert_eq!(
            store.get("main/wal/000000010000000000000002").unwrap().unwrap(),
            data[2 * bytes as usize..end]
        );
        let recycled = store.get("main/wal/000000010000000000000003.partial").unwrap().unwrap();
        assert_eq!(recycled.len() as u64, bytes);

        // `encryption.local` turned off, the key file kept: what was encrypted still reads and
        // archives; nothing new is encrypted.
        drop(w);
        local_store_sealing::register_reader(d.path(), Arc::clone(&ring));
        assert!(local_store_sealing::keyring_for(d.path()).is_none());
        a.archive(
            WalFileName::parse("000000010000000000000001", seg).unwrap(),
            &mut Buffers::default(),
        )
        .unwrap();
        let stored = store.get("main/wal/000000010000000000000001.zst").unwrap().unwrap();
        assert!(!crate::catalog::encryption::is_sealed(
            &std::fs::read(dir.join("000000010000000000000001.zst")).unwrap()
        ));
        assert_eq!(segment_file::decompress(&stored).unwrap(), data[bytes as usize..2 * bytes as usize]);

        // Without any key the spool is named, not read as garbage; the receiver does not stop
        // on an encrypted `.partial` it cannot read: it is moved aside, the segment written anew.
        local_store_sealing::register(d.path(), None, false);
        let (tx, _rx3) = std::sync::mpsc::channel();
        let mut w = WalStore::new(dir.clone(), seg, SparePool::default(), tx);
        // A key source configured that does not open it: an error to fix, nothing moved.
        local_store_sealing::register_key_source(d.path(), true);
        let e = w.begin(TimelineId(1), Lsn(3 * bytes)).unwrap_err().to_string();
        assert!(e.contains("encryption.local") && e.contains("receiver cannot go on"), "{e}");
        assert!(!dir.join("000000010000000000000003.partial.unreadable").exists());
        local_store_sealing::register_key_source(d.path(), false);
        w.begin(TimelineId(1), Lsn(3 * bytes)).unwrap();
        assert!(dir.join("000000010000000000000003.partial.unreadable").exists());
        let fresh = std::fs::metadata(dir.join("000000010000000000000003.partial")).unwrap();
        assert_eq!(fresh.len(), bytes, "a plaintext .partial without encryption");
        drop(w);
        let e = store.get("main/wal/000000010000000000000002").unwrap_err().to_string();
        assert!(e.contains("encryption.local"), "{e}");
        let e = a.archive(
            WalFileName::parse("000000010000000000000002", seg).unwrap(),
            &mut Buffers::default(),
        );
        assert!(e.unwrap_err().to_string().contains("encryption.local"));
    }

    /// Spares a scan found are prepared by the idle archiver under `encryption.local`:
    /// encrypted ones get a fresh trailer, plaintext ones are removed.
    #[test]
    fn found_spares_are_prepared_while_idle() {
        use super::super::encryption::{Key, Keyring};
        use super::super::local_store_sealing;
        let d = tempfile::tempdir().unwrap();
        let ring = Arc::new(Keyring::new(Key::generate(), vec![]));
        local_store_sealing::register(d.path(), Some(Arc::clone(&ring)), false);
        let bytes = 1u64 << 20;
        let seg = WalSegSize::new(bytes).unwrap();
        let dir = d.path().join("main").join("wal");
        std::fs::create_dir_all(&dir).unwrap();
        let spares = SparePool::default();
        let (old, plain) = (spares.new_name(&dir), spares.new_name(&dir));
        let mut stale = vec![7u8; bytes as usize];
        stale.extend_from_slice(&spool_cipher::SpoolCipher::fresh(&ring).trailer());
        std::fs::write(&old, &stale).unwrap();
        std::fs::write(&plain, vec![7u8; bytes as usize]).unwrap();
        spares.add(old.clone());
        spares.add(plain.clone());
        let a = Archiver {
            server: "main".into(),
            compression: Compression::Zstd(1),
            seg,
            dir: dir.clone(),
            store: local_store_sealing::store_for(d.path()),
            key_prefix: "main/wal".into(),
            spares: spares.clone(),
            space: SharedLevel::default(),
            events: Arc::new(Quiet),
            direct: Default::default(),
        };
        a.ensure_spare();
        assert!(!plain.exists(), "a plaintext spare is removed");
        let fresh = std::fs::read(&old).unwrap();
        assert_ne!(
            fresh[bytes as usize + 17..bytes as usize + 41],
            stale[bytes as usize + 17..bytes as usize + 41],
            "a new nonce"
        );
        assert_eq!(spares.take_unprepared(ring.current().id()), None, "every spare is prepared");
        assert_eq!(spares.len(), 1);
        local_store_sealing::register(d.path(), None, false);
    }
}
