//! A small work queue on scoped threads: each worker takes the next item until the list is
//! done, the first error (or a stop request) ends them all, and the calling thread reports
//! progress meanwhile. Restore uses it for writing chunks and for fsyncing what it wrote.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// How often the calling thread reports progress while the workers run.
const TICK: Duration = Duration::from_millis(100);

/// Runs `work` over `items` on `jobs` threads. Each thread first builds its own state with
/// `init` (buffers, a decompression context). Before each item `stop` may end everything with
/// an error of its own (an interruption). `tick` runs on the calling thread about every 100 ms
/// while the workers run. Returns the first error.
pub fn run<T, W, E>(
    items: &[T],
    jobs: usize,
    init: impl Fn() -> Result<W, E> + Sync,
    work: impl Fn(&mut W, &T) -> Result<(), E> + Sync,
    stop: impl Fn() -> Option<E> + Sync,
    mut tick: impl FnMut(),
) -> Result<(), E>
where
    T: Sync,
    E: Send,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    let jobs = jobs.max(1);
    let fail = |e: E| {
        failed.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
    };
    // Each worker says it is done (also when `work` panics: the guard's drop), so the calling
    // thread returns as soon as the last one ends rather than at its next tick.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    struct Done(mpsc::Sender<()>);
    impl Drop for Done {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (init, work, stop, fail, next, failed) = (&init, &work, &stop, &fail, &next, &failed);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let done = Done(done_tx.clone());
            scope.spawn(move || {
                let _done = done;
                let result = (|| {
                    let mut state = init()?;
                    while !failed.load(Ordering::Relaxed) {
                        if let Some(e) = stop() {
                            return Err(e);
                        }
                        let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        work(&mut state, item)?;
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    fail(e);
                }
            });
        }
        let mut finished = 0;
        while finished < jobs {
            match done_rx.recv_timeout(TICK) {
                Ok(()) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => tick(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn every_item_once_and_the_first_error_stops_the_rest() {
        let items: Vec<u64> = (1..=1000).collect();
        let sum = AtomicU64::new(0);
        super::run(
            &items,
            4,
            || Ok::<_, String>(()),
            |_, i| {
                sum.fetch_add(*i, Ordering::Relaxed);
                Ok(())
            },
            || None,
            || {},
        )
        .unwrap();
        assert_eq!(sum.into_inner(), 500_500);

        let done = AtomicU64::new(0);
        let e = super::run(
            &items,
            3,
            || Ok(()),
            |_, i| {
                done.fetch_add(1, Ordering::Relaxed);
                if *i == 10 {
                    Err(format!("item {i}"))
                } else {
                    Ok(())
                }
            },
            || None,
            || {},
        )
        .unwrap_err();
        assert_eq!(e, "item 10");
        assert!(done.into_inner() < 1000, "the others stopped early");
        let e = super::run(&items, 2, || Ok(()), |_, _| Ok(()), || Some("stopped".to_string()), || {}).unwrap_err();
        assert_eq!(e, "stopped");
    }
}
