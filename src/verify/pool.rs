//! A small work pool on scoped threads for verify: each worker takes the next item until the
//! list is done or `stop` is set, and the calling thread reports progress meanwhile. Unlike the
//! restore pool (a sibling module, so copied in spirit, not imported), nothing stops at the
//! first bad item: a verify wants every outcome.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How often the calling thread runs `tick` while the workers run.
const TICK: Duration = Duration::from_millis(100);

/// Runs `work` over `items` on `jobs` threads, each with its own state from `init` (buffers, a
/// decompression context). Returns the outcomes in the items' order; `None` for an item not done
/// (`stop` was set, or its worker could not start).
pub fn map<T, S, R>(
    items: &[T],
    jobs: usize,
    init: impl Fn() -> Option<S> + Sync,
    work: impl Fn(&mut S, &T) -> R + Sync,
    stop: &AtomicBool,
    mut tick: impl FnMut(),
) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
{
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let jobs = jobs.clamp(1, items.len().max(1));
    let live = AtomicUsize::new(jobs);
    let (init, work, results, next, live) = (&init, &work, &results, &next, &live);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(move || {
                // Counts itself out however it ends (a panic too), so the caller stops waiting.
                struct Out<'a>(&'a AtomicUsize);
                impl Drop for Out<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                let _out = Out(live);
                let Some(mut state) = init() else { return };
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    let r = work(&mut state, item);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
        while live.load(Ordering::Relaxed) > 0 {
            tick();
            std::thread::sleep(TICK);
        }
    });
    results.iter().map(|m| m.lock().ok().and_then(|mut r| r.take())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_in_order_and_stop_ends_early() {
        let items: Vec<u64> = (0..1000).collect();
        let out = map(&items, 3, || Some(()), |_, i| i * 2, &AtomicBool::new(false), || {});
        assert_eq!(out, items.iter().map(|i| Some(i * 2)).collect::<Vec<_>>());
        let out = map(&items, 2, || Some(()), |_, i| *i, &AtomicBool::new(true), || {});
        assert!(out.iter().all(Option::is_none));
        let out = map(&items, 2, || None::<()>, |_, i| *i, &AtomicBool::new(false), || {});
        assert!(out.iter().all(Option::is_none), "no worker could start");
        assert!(map(&[] as &[u8], 4, || Some(()), |_, _| 1, &AtomicBool::new(false), || {}).is_empty());
    }
}
