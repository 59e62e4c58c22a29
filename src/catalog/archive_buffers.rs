//! The archivers' working memory, shared by every server of the process.
//!
//! Archiving a segment takes a set of buffers: the segment read into memory (16 MiB by
//! default), its compressed form and a zstd context, about 33 MiB. Each server's archiver used
//! to keep its own set for its lifetime, so memory grew with the number of servers and stayed
//! after they went idle (20 servers: about 500 MB). Here at most `limit` segments are archived
//! at once, one per CPU (compression is CPU-bound: more at once only adds memory), each with a
//! set leased from this pool and returned after the segment, and a set no archiver has used for
//! `IDLE` is freed. Memory follows the work, not the number of servers.
//!
//! An archiver waiting for a lease waits for another server's segment (tens of milliseconds):
//! archiving runs off the receive path, so acknowledgements never wait for it.

use super::archiver::Buffers;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// A buffer set unused this long is freed.
pub const IDLE: Duration = Duration::from_secs(10);

/// Buffer sets, at most `limit` leased at once.
pub struct BufferPool {
    state: Mutex<State>,
    returned: Condvar,
    limit: usize,
}

#[derive(Default)]
struct State {
    leased: usize,
    /// Returned sets, with when they were returned (oldest first).
    free: Vec<(Instant, Buffers)>,
}

/// A leased set; returned to the pool when dropped.
pub struct Lease<'a> {
    pool: &'a BufferPool,
    buffers: Buffers,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Buffers;
    fn deref(&self) -> &Buffers {
        &self.buffers
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Buffers {
        &mut self.buffers
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let buffers = std::mem::take(&mut self.buffers);
        let mut s = self.pool.lock();
        s.leased -= 1;
        s.free.push((Instant::now(), buffers));
        drop(s);
        self.pool.returned.notify_one();
    }
}

impl BufferPool {
    pub fn new(limit: usize) -> BufferPool {
        BufferPool {
            state: Mutex::new(State::default()),
            returned: Condvar::new(),
            limit: limit.max(1),
        }
    }

    /// The process's pool: one set per CPU, at most 8.
    pub fn shared() -> &'static BufferPool {
        static POOL: OnceLock<BufferPool> = OnceLock::new();
        POOL.get_or_init(|| BufferPool::new(std::thread::available_parallelism().map_or(2, |n| n.get()).min(8)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two counters and a list: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A set of buffers (the most recently returned, whose memory is warm), waiting while
    /// `limit` are leased.
    pub fn lease(&self) -> Lease<'_> {
        let mut s = self.lock();
        while s.leased >= self.limit {
            s = self.returned.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.leased += 1;
        let buffers = s.free.pop().map(|(_, b)| b).unwrap_or_default();
        Lease { pool: self, buffers }
    }

    /// Frees the sets nobody has used for `idle`.
    pub fn trim(&self, idle: Duration) {
        let freed: Vec<(Instant, Buffers)> = {
            let mut s = self.lock();
            let now = Instant::now();
            let keep = s
                .free
                .iter()
                .position(|(t, _)| now.duration_since(*t) < idle)
                .unwrap_or(s.free.len());
            s.free.drain(..keep).collect()
        };
        if !freed.is_empty() {
            drop(freed); // outside the lock: freeing 33 MiB takes a moment
            crate::util::memory::release_freed();
        }
    }

    /// Sets leased now, and sets held free.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.leased, s.free.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn at_most_limit_are_leased_and_idle_sets_are_freed() {
        let pool = Arc::new(BufferPool::new(2));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (pool, most) = (Arc::clone(&pool), Arc::clone(&most));
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _l = pool.lease();
                        most.fetch_max(pool.counts().0, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::Relaxed), 2, "never more than the limit at once");
        let (leased, free) = pool.counts();
        assert_eq!(leased, 0);
        assert!((1..=2).contains(&free), "{free} sets kept for reuse");
        pool.trim(Duration::from_secs(3600));
        assert_eq!(pool.counts().1, free, "recently used sets stay");
        std::thread::sleep(Duration::from_millis(20));
        pool.trim(Duration::from_millis(10));
        assert_eq!(pool.counts(), (0, 0), "idle sets are freed");
    }
}
