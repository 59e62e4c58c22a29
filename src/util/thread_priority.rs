//! The CPU priority (nice value) of pgark's own threads: background work yields the CPU to a
//! thread on a commit's path.
//!
//! On a small machine, the tail of a synchronous acknowledgement is CPU as much as disk: the
//! receiver's thread sleeps in fdatasync, and when the disk is done it waits for a core while
//! archivers compress and asynchronous receivers catch up. Measured on the 2-core CI machine
//! (BENCHMARKS.md, "Analysis of the many-servers run", third session of 2026-12-04): two busy
//! threads at nice 0 make an 8 KiB write + fdatasync 6x slower at p99 with no other I/O at all;
//! at nice 10, not slower. So archivers always run at background priority, and a receiver
//! whose server is not on a commit's path (`SyncRole::on_commit_path`) runs there too.
//!
//! On Linux a nice value belongs to a thread (`setpriority` with a thread id) and is inherited
//! by the threads it starts: a background thread must not be the one to start a process-wide
//! pool. Lowering a priority needs no privilege; raising it back does (`CAP_SYS_NICE`, or an
//! `RLIMIT_NICE` that allows it: systemd's `LimitNICE=`), which `Follower` reports once.

use std::io;

/// How many nice steps below its starting priority background work runs: at nice 10 against
/// nice 0 a thread gets about a tenth of the CPU a foreground one gets, and a foreground thread
/// that wakes preempts it.
pub const BACKGROUND_STEP: i32 = 10;
const NICE_MAX: i32 = 19;

fn thread_id() -> libc::id_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as libc::id_t }
}

fn nice_of(id: libc::id_t) -> io::Result<i32> {
    // getpriority may legitimately return -1, so errno tells an error apart.
    // SAFETY: errno is thread-local; getpriority only reads.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, id);
        match *libc::__errno_location() {
            0 => Ok(n),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The calling thread's nice value.
pub fn current() -> io::Result<i32> {
    nice_of(thread_id())
}

/// The process's own priority: its main thread's nice value (what `nice`, or systemd's
/// `Nice=`, started pgark at). Background is measured from it, not from the calling thread,
/// which may have inherited a background priority from the thread that started it.
pub fn process_base() -> i32 {
    nice_of(std::process::id() as libc::id_t).unwrap_or(0)
}

/// Sets the calling thread's nice value (only this thread's, not the process's).
pub fn set_current(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority on the calling thread's own id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id(), nice) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The background priority for a thread that starts at `base`.
pub fn background_of(base: i32) -> i32 {
    (base + BACKGROUND_STEP).min(NICE_MAX)
}

/// Moves the calling thread to background priority for the rest of its life (archivers). A
/// failure is logged and otherwise ignored: priority is an optimisation, never a reason to stop.
pub fn lower_to_background(what: &str) {
    if let Err(e) = set_current(background_of(process_base())) {
        tracing::debug!(thread = what, error = %e, "cannot lower the thread's CPU priority");
    }
}

/// Keeps a long-lived thread (a receiver) at its starting priority while its work is on a
/// commit's path, and at background priority otherwise. Created on the thread it governs.
#[derive(Debug)]
pub struct Follower {
    base: i32,
    background: bool,
    /// Raising the priority back was refused: stay where we are, do not retry every message.
    stuck: bool,
}

/// Raising a thread's priority back was refused (EACCES or EPERM: no `CAP_SYS_NICE`, and
/// `RLIMIT_NICE` does not allow it).
#[derive(Debug)]
pub struct RaiseRefused {
    pub nice: i32,
    pub error: io::Error,
}

impl Follower {
    pub fn new() -> Follower {
        let base = process_base();
        Follower {
            base,
            // A thread started by a background thread inherited its priority.
            background: current().is_ok_and(|n| n > base),
            stuck: false,
        }
    }

    /// Background or not; a syscall only when that changes. `Err` once, the first time the
    /// priority cannot be raised back; the thread then stays at background priority.
    pub fn follow(&mut self, background: bool) -> Result<(), RaiseRefused> {
        if background == self.background || self.stuck {
            return Ok(());
        }
        let nice = if background { background_of(self.base) } else { self.base };
        match set_current(nice) {
            Ok(()) => {
                self.background = background;
                Ok(())
            }
            Err(error) if !background => {
                self.stuck = true;
                Err(RaiseRefused {
                    nice: background_of(self.base),
                    error,
                })
            }
            // Lowering needs no privilege; if it still fails, stay in the foreground and do
            // not try again at every message.
            Err(_) => {
                self.stuck = true;
                Ok(())
            }
        }
    }

    pub fn is_background(&self) -> bool {
        self.background
    }
}

impl Default for Follower {
    fn default() -> Self {
        Follower::new()
    }
}

thread_local! {
    /// The calling thread's follower, made at its first use; it measures from the process's
    /// priority (`process_base`) and starts from wherever the thread is.
    static THIS_THREAD: std::cell::RefCell<Follower> = std::cell::RefCell::new(Follower::new());
}

/// `Follower::follow` for the calling thread: for code that runs in a loop on a thread of its
/// own (a receiver) but is re-entered, so that it cannot keep the follower itself.
pub fn follow(background: bool) -> Result<(), RaiseRefused> {
    THIS_THREAD.with(|f| f.borrow_mut().follow(background))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_is_ten_steps_down_and_capped() {
        assert_eq!(background_of(0), 10);
        assert_eq!(background_of(5), 15);
        assert_eq!(background_of(15), 19);
        assert_eq!(background_of(-5), 5);
    }

    #[test]
    fn a_follower_changes_only_its_own_thread() {
        let main_before = current().unwrap();
        let seen = std::thread::spawn(|| {
            let start = process_base();
            assert_eq!(current().unwrap(), start);
            let mut f = Follower::new();
            f.follow(true).unwrap();
            let lowered = current().unwrap();
            assert!(f.is_background());
            // A thread started now inherits the background priority.
            let child = std::thread::spawn(current).join().unwrap().unwrap();
            // Raising back works with privilege (the tests may run as root) and is reported
            // once without it.
            let raised = f.follow(false);
            let after = current().unwrap();
            (start, lowered, child, raised.is_ok(), after)
        })
        .join()
        .unwrap();
        let (start, lowered, child, raised, after) = seen;
        assert_eq!(lowered, background_of(start));
        assert_eq!(child, lowered);
        if raised {
            assert_eq!(after, start);
        } else {
            assert_eq!(after, lowered);
        }
        assert_eq!(current().unwrap(), main_before, "only the spawned thread changed");
    }

    #[test]
    fn a_refused_raise_is_reported_once() {
        let mut f = Follower {
            base: -20,
            background: true,
            stuck: false,
        };
        // Nice -20 is refused without CAP_SYS_NICE; as root it is allowed, so only check the
        // unprivileged case's shape when it happens.
        std::thread::spawn(move || {
            if let Err(r) = f.follow(false) {
                assert_eq!(r.nice, background_of(-20));
                assert!(f.follow(false).is_ok(), "reported once");
                assert!(f.is_background());
            }
        })
        .join()
        .unwrap();
    }
}
