//! Checking stored chunks: each read once, on a few threads, at a bounded read rate.
//!
//! A chunk is intact when its stored size is the index's, its skippable-frame header claims the
//! index's raw size, it decompresses to bytes of that size and CRC-32C (zstd's own frame checksum
//! too), and the SHA-256 of those bytes is its name (and their BLAKE3 the index's, when recorded).

use crate::catalog::backup_store::{chunk_key, ChunkRef, CHUNK_SIZE};
use crate::catalog::segment_file;
use crate::catalog::store::ObjectStore;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What checking one chunk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// CRC-32C of the raw bytes, when intact (for the file CRCs).
    pub crc32c: Option<u32>,
    /// Why not, when not.
    pub problem: Option<String>,
}

/// Limits the bytes read per second over all threads (`None`: unlimited). Each reader adds what
/// it read, then sleeps until the total is within the rate since the start of the accounting.
/// Time spent not reading (parsing a manifest, a pause) earns at most one second of credit, so
/// the rate holds over any stretch longer than a second, not just on average.
pub struct Throttle {
    rate: Option<u64>,
    /// Start of the accounting, and the bytes read since.
    state: Mutex<(Instant, u64)>,
}

/// The most read-ahead credit idle time earns.
const MAX_CREDIT: Duration = Duration::from_secs(1);

impl Throttle {
    pub fn new(bytes_per_second: Option<u64>) -> Throttle {
        Throttle {
            rate: bytes_per_second.filter(|r| *r > 0),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn consumed(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let wait = {
            let Ok(mut st) = self.state.lock() else { return };
            let now = Instant::now();
            let elapsed = now.duration_since(st.0);
            let due = Duration::from_secs_f64(st.1 as f64 / rate as f64);
            if elapsed > due + MAX_CREDIT {
                // Idle for a while: start again with one second of credit.
                *st = (now - MAX_CREDIT, 0);
            }
            st.1 += bytes;
            let due = Duration::from_secs_f64(st.1 as f64 / rate as f64);
            due.saturating_sub(now.duration_since(st.0))
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Checks one chunk; `buf` is a reusable buffer, `dctx` a reusable decompressor.
pub fn check_one(
    store: &dyn ObjectStore,
    server: &str,
    c: &ChunkRef,
    dctx: &mut zstd::bulk::Decompressor<'static>,
    buf: &mut Vec<u8>,
) -> (ChunkOutcome, u64) {
    let bad = |p: String| ChunkOutcome {
        crc32c: None,
        problem: Some(p),
    };
    let key = chunk_key(server, &c.object);
    let stored = match store.get(&key) {
        Ok(Some(b)) => b,
        Ok(None) => return (bad("missing from the catalog".into()), 0),
        Err(e) => return (bad(format!("cannot be read: {e}")), 0),
    };
    let n = stored.len() as u64;
    if n != c.stored {
        return (bad(format!("{n} bytes stored, the index says {}", c.stored)), n);
    }
    if c.size > (4 * CHUNK_SIZE) as u64 {
        return (bad(format!("the index claims {} raw bytes, more than any chunk", c.size)), n);
    }
    // The CRC-32C the header check already computed over the decompressed bytes (raw chunks
    // have no header: computed below).
    let mut crc = None;
    let raw: &[u8] = if c.object.ends_with(".zst") {
        match segment_file::read_header(&stored) {
            Err(e) => return (bad(format!("header: {e}")), n),
            Ok(h) if h.size != c.size => {
                return (bad(format!("header says {} raw bytes, the index {}", h.size, c.size)), n);
            }
            Ok(_) => {}
        }
        buf.resize(c.size as usize, 0);
        match segment_file::decompress_into(&stored, dctx, buf) {
            Ok(sum) => crc = Some(sum.crc32c),
            Err(e) => return (bad(e.to_string()), n),
        }
        &buf[..]
    } else {
        if n != c.size {
            return (bad(format!("{n} raw bytes, the index says {}", c.size)), n);
        }
        &stored[..]
    };
    let hash = crate::util::hex::to_hex(&Sha256::digest(raw));
    let name = c.object.rsplit('/').next().and_then(|f| f.split('.').next()).unwrap_or_default();
    if hash != name {
        return (bad(format!("the SHA-256 of its contents is {hash}, not its name")), n);
    }
    // The index's BLAKE3 is not recomputed: the SHA-256 above already proves the bytes are the
    // chunk's, and a wrong BLAKE3 in an index could only make `restore --delta` rewrite a file
    // (it compares an existing copy against it), never trust a wrong one. Skipping it is 10%
    // of verify's CPU (profiled, BENCHMARKS.md).
    (
        ChunkOutcome {
            crc32c: Some(crc.unwrap_or_else(|| crc32c::crc32c(raw))),
            problem: None,
        },
        n,
    )
}

/// Checks `chunks` on `jobs` threads; the outcomes in the same order. `read` counts the stored
/// bytes read as they are (for progress), `stop` ends the work early (the rest are `None`).
#[allow(clippy::too_many_arguments)]
pub fn check_all(
    store: &dyn ObjectStore,
    server: &str,
    chunks: &[&ChunkRef],
    jobs: usize,
    throttle: &Throttle,
    read: &AtomicU64,
    stop: &AtomicBool,
    tick: impl FnMut(),
) -> Vec<Option<ChunkOutcome>> {
    super::pool::map(
        chunks,
        jobs,
        || Some((zstd::bulk::Decompressor::new().ok()?, Vec::with_capacity(CHUNK_SIZE))),
        |(dctx, buf), c| {
            let (o, n) = check_one(store, server, c, dctx, buf);
            read.fetch_add(n, Ordering::Relaxed);
            throttle.consumed(n);
            o
        },
        stop,
        tick,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup_store::chunk_object;
    use crate::catalog::store::LocalStore;

    fn put_chunk(s: &LocalStore, data: &[u8], compressed: bool) -> ChunkRef {
        let hash = crate::util::hex::to_hex(&Sha256::digest(data));
        let object = chunk_object(&hash, compressed);
        let bytes = if compressed {
            let mut v = Vec::new();
            segment_file::compress_into(data, 1, &mut v).unwrap();
            v
        } else {
            data.to_vec()
        };
        s.put(&chunk_key("main", &object), &bytes).unwrap();
        ChunkRef {
            object,
            size: data.len() as u64,
            stored: bytes.len() as u64,
            blake3: Some(blake3::hash(data).to_hex().to_string()),
            crc32c: None,
        }
    }

    #[test]
    fn intact_damaged_and_missing_chunks() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 97) as u8).collect();
        let z = put_chunk(&s, &data, true);
        let r = put_chunk(&s, &data[..5000], false);
        let mut gone = put_chunk(&s, b"gone", true);
        gone.object = "00/00.zst".into();
        let mut flipped = put_chunk(&s, &data[..60_000], true);
        let path = d.path().join("main/chunks").join(&flipped.object);
        let mut b = std::fs::read(&path).unwrap();
        let at = b.len() - 20;
        b[at] ^= 1;
        std::fs::write(&path, &b).unwrap();
        flipped.blake3 = None;
        let read = AtomicU64::new(0);
        let out = check_all(
            &s,
            "main",
            &[&z, &r, &gone, &flipped],
            2,
            &Throttle::new(None),
            &read,
            &AtomicBool::new(false),
            || {},
        );
        assert_eq!(out[0].as_ref().unwrap().crc32c, Some(crc32c::crc32c(&data)));
        assert_eq!(out[1].as_ref().unwrap().crc32c, Some(crc32c::crc32c(&data[..5000])));
        assert!(out[2].as_ref().unwrap().problem.as_ref().unwrap().contains("missing"));
        assert!(out[3].as_ref().unwrap().problem.is_some());
        assert!(read.load(Ordering::Relaxed) > 5000);
    }

    #[test]
    fn the_throttle_holds_the_rate_after_idle_time() {
        let t = Throttle::new(Some(10_000_000));
        let start = Instant::now();
        t.consumed(1_000_000); // 0.1 s at 10 MB/s
        assert!(start.elapsed() < Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(1300));
        // 1.3 s idle earns one second (10 MB), not 1.3 s: 20 MB more takes about 1 s.
        let again = Instant::now();
        t.consumed(20_000_000);
        let took = again.elapsed();
        assert!(took > Duration::from_millis(800) && took < Duration::from_millis(1500), "{took:?}");
        Throttle::new(None).consumed(u64::MAX);
    }
}
