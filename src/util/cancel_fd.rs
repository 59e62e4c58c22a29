//! A cancellation token made pollable: an eventfd that becomes readable when the token fires.
//!
//! Why: a receiver sleeps in `poll(2)` on its socket, on its own thread. Without a descriptor to
//! wake it, it had to wake every 500 ms just to look at the token: with 100 idle servers that was
//! 200 wake-ups a second and most of an idle daemon's CPU. The token's waiter (`cancelled_owned`)
//! is polled once with a waker that writes the eventfd; tokio_util wakes it from whichever thread
//! cancels, so the receiver's poll returns at once.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct CancelFd {
    fd: Arc<OwnedFd>,
    /// Kept alive (and pinned) so that its waker stays registered with the token.
    _waiter: Pin<Box<WaitForCancellationFutureOwned>>,
}

struct EventFdWaker(Arc<OwnedFd>);

impl Wake for EventFdWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        signal(self.0.as_raw_fd());
    }
}

/// Adds 1 to the eventfd's counter (making it readable); a full counter is readable already.
fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to a descriptor we own.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

impl CancelFd {
    pub fn new(token: &CancellationToken) -> std::io::Result<CancelFd> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just created and owned by nobody else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let mut waiter = Box::pin(token.clone().cancelled_owned());
        let waker = Waker::from(Arc::new(EventFdWaker(fd.clone())));
        if waiter.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
            signal(fd.as_raw_fd());
        }
        Ok(CancelFd { fd, _waiter: waiter })
    }

    /// The descriptor to poll for `POLLIN`: readable once the token has fired.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }

    #[test]
    fn becomes_readable_when_cancelled_from_another_thread() {
        let token = CancellationToken::new();
        let c = CancelFd::new(&token).unwrap();
        assert!(!readable(c.raw(), 50));
        let t = token.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            t.cancel();
        });
        let start = Instant::now();
        assert!(readable(c.raw(), 5000));
        assert!(start.elapsed() < Duration::from_secs(2));
        canceller.join().unwrap();
    }

    #[test]
    fn a_parent_cancelled_wakes_a_child_token_and_a_fired_token_is_readable_at_once() {
        let parent = CancellationToken::new();
        let child = parent.child_token();
        let c = CancelFd::new(&child).unwrap();
        parent.cancel();
        assert!(readable(c.raw(), 1000));
        let fired = CancelFd::new(&child).unwrap();
        assert!(readable(fired.raw(), 0));
    }
}
