//! Waiting for descriptors: `ppoll` over at most two, with an optional
//! timeout and an optional signal mask held only during the wait.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd};
use nix::sys::signal::SigSet;
use nix::sys::time::TimeSpec;

pub use nix::poll::PollFlags as Events;

/// What a wait came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Returned events of the first and the second descriptor (empty for
    /// a second that was not given).
    Ready([Events; 2]),
    /// The timeout passed with nothing happening.
    TimedOut,
    /// A signal arrived; the caller checks its flags and waits again.
    Interrupted,
}

/// Events to wait for: readable if `read`, writable if `write`.
#[inline]
pub fn interest(read: bool, write: bool) -> Events {
    let mut e = Events::empty();
    e.set(Events::POLLIN, read);
    e.set(Events::POLLOUT, write);
    e
}

/// A hang-up or error counts as readable: the read that follows returns
/// the end of stream or the error.
#[inline]
pub fn readable(revents: Events) -> bool {
    revents.intersects(Events::POLLIN | Events::POLLHUP | Events::POLLERR)
}

#[inline]
pub fn writable(revents: Events) -> bool {
    revents.contains(Events::POLLOUT)
}

/// One ppoll(2) over `first` and, if given, `second`. `mask` is the signal
/// mask during the wait (`None` leaves the current one), so a signal
/// blocked outside the wait is delivered inside it and never lost between a
/// check of a flag and the wait. `None` as timeout waits for ever.
#[inline]
pub fn wait_pair(
    first: (BorrowedFd<'_>, Events),
    second: Option<(BorrowedFd<'_>, Events)>,
    timeout: Option<Duration>,
    mask: Option<&SigSet>,
) -> io::Result<Woke> {
    let a = PollFd::new(first.0, first.1);
    // Only the first `count` entries are passed to the kernel; the spare
    // one keeps the array on the stack.
    let (mut fds, count) = match second {
        Some((fd, events)) => ([a, PollFd::new(fd, events)], 2),
        None => ([a, PollFd::new(first.0, Events::empty())], 1),
    };
    let timeout = timeout.map(timespec);
    match ppoll(&mut fds[..count], timeout, mask.copied()) {
        Ok(0) => Ok(Woke::TimedOut),
        Ok(_) => Ok(Woke::Ready([
            returned(fds[0]),
            if count == 2 {
                returned(fds[1])
            } else {
                Events::empty()
            },
        ])),
        Err(Errno::EINTR) => Ok(Woke::Interrupted),
        Err(e) => Err(super::os(e)),
    }
}

/// `wait_pair` for one descriptor.
#[inline]
pub fn wait_one(
    fd: BorrowedFd<'_>,
    events: Events,
    timeout: Option<Duration>,
    mask: Option<&SigSet>,
) -> io::Result<Woke> {
    wait_pair((fd, events), None, timeout, mask)
}

/// A bit the flags type does not know is reported as an error, so that the
/// caller reads (and learns what happened) rather than spinning.
fn returned(fd: PollFd<'_>) -> Events {
    fd.revents().unwrap_or(Events::POLLERR)
}

fn timespec(d: Duration) -> TimeSpec {
    TimeSpec::new(
        d.as_secs().min(i64::MAX as u64) as libc::time_t,
        d.subsec_nanos() as libc::c_long,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::signal;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_timeout_with_nothing_ready() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let woke = wait_pair(
            (a.as_fd(), interest(true, false)),
            Some((c.as_fd(), interest(true, false))),
            Some(Duration::from_millis(1)),
            Some(&signal::nothing_blocked()),
        )
        .unwrap();
        assert_eq!(woke, Woke::TimedOut);
        assert_eq!(
            wait_one(a.as_fd(), Events::POLLIN, Some(Duration::ZERO), None).unwrap(),
            Woke::TimedOut
        );
    }

    #[test]
    fn readiness_of_each_side_is_reported_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        b.write_all(b"x").unwrap();
        // No timeout: data is already there, so this returns at once.
        let woke = wait_pair(
            (a.as_fd(), interest(true, false)),
            Some((c.as_fd(), interest(true, true))),
            None,
            Some(&signal::nothing_blocked()),
        )
        .unwrap();
        let Woke::Ready([first, second]) = woke else {
            panic!("{woke:?}");
        };
        assert!(readable(first) && !writable(first));
        assert!(!readable(second) && writable(second));
        // Only the first given: the second slot is empty.
        let woke = wait_one(c.as_fd(), interest(false, true), None, None).unwrap();
        assert_eq!(woke, Woke::Ready([Events::POLLOUT, Events::empty()]));
    }

    #[test]
    fn a_closed_peer_counts_as_readable() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let Woke::Ready([e, _]) = wait_one(a.as_fd(), interest(true, false), None, None).unwrap()
        else {
            panic!("not ready");
        };
        assert!(readable(e));
    }

    #[test]
    fn interest_sets_exactly_what_is_asked() {
        assert_eq!(interest(false, false), Events::empty());
        assert_eq!(interest(true, false), Events::POLLIN);
        assert_eq!(interest(false, true), Events::POLLOUT);
        assert_eq!(interest(true, true), Events::POLLIN | Events::POLLOUT);
    }

    extern "C" fn ignore(_: libc::c_int) {}

    /// The mask is what makes the pipeline's stop check race-free: a
    /// signal blocked outside the wait is pending, and the wait that
    /// unblocks it returns at once as interrupted.
    #[test]
    fn a_signal_blocked_outside_the_wait_interrupts_it() {
        use nix::sys::signal::{raise, sigaction, SaFlags, SigAction, SigHandler, Signal};
        let act = SigAction::new(
            SigHandler::Handler(ignore),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing.
        let old = unsafe { sigaction(Signal::SIGWINCH, &act) }.unwrap();
        let mut blocked = SigSet::empty();
        blocked.add(Signal::SIGWINCH);
        blocked.thread_block().unwrap();
        // raise() signals the calling thread, where it stays pending.
        raise(Signal::SIGWINCH).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let woke = wait_one(
            a.as_fd(),
            Events::POLLIN,
            Some(Duration::from_secs(60)),
            Some(&signal::nothing_blocked()),
        )
        .unwrap();
        blocked.thread_unblock().unwrap();
        // SAFETY: puts back the disposition read above.
        unsafe { sigaction(Signal::SIGWINCH, &old) }.unwrap();
        assert_eq!(woke, Woke::Interrupted);
    }
}
