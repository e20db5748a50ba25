//! Signal dispositions and masks, and the one signal handler pgcorral
//! installs (a worker's SIGQUIT).
//!
//! Installing a handler is unsafe because the handler may run between any
//! two instructions of the program, so it may only do async-signal-safe
//! things. That is why the handler itself lives here rather than being
//! passed in: `on_quit` below is the only code that ever runs as one, and
//! it touches only atomics, send(2) and _exit(2).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::{self, MsgFlags};

use super::os;

/// Gives `signals` their default disposition (what a child inherited from a
/// parent that handled them differently is undone).
pub fn set_default(signals: &[Signal]) -> io::Result<()> {
    for &sig in signals {
        // SAFETY: SIG_DFL installs no code of ours.
        unsafe { signal::signal(sig, SigHandler::SigDfl) }.map_err(os)?;
    }
    Ok(())
}

/// Ignores `sig`; for SIGPIPE, so that a vanished peer is an error return.
pub fn ignore(sig: Signal) -> io::Result<()> {
    // SAFETY: SIG_IGN installs no code of ours.
    unsafe { signal::signal(sig, SigHandler::SigIgn) }.map_err(os)?;
    Ok(())
}

/// The empty set: as a wait mask, nothing blocked during the wait.
pub fn nothing_blocked() -> SigSet {
    SigSet::empty()
}

/// Replaces the signal mask of the calling thread.
pub fn set_mask(set: &SigSet) -> io::Result<()> {
    set.thread_set_mask().map_err(os)
}

/// Blocks or unblocks one signal for the calling thread.
pub fn set_blocked(sig: Signal, blocked: bool) -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(sig);
    if blocked {
        set.thread_block()
    } else {
        set.thread_unblock()
    }
    .map_err(os)
}

/// Raised by the quit handler; the code that deferred the quit polls it.
pub static QUIT: AtomicBool = AtomicBool::new(false);
/// While set, the handler only raises `QUIT`.
static DEFERRED: AtomicBool = AtomicBool::new(false);
static FAREWELL_FD: AtomicI32 = AtomicI32::new(-1);
/// Built before the handler is installed and never freed, so the handler
/// neither allocates nor reads freed memory.
static FAREWELL: OnceLock<&'static [u8]> = OnceLock::new();

extern "C" fn on_quit(_: libc::c_int) {
    QUIT.store(true, Ordering::SeqCst);
    if DEFERRED.load(Ordering::SeqCst) {
        return;
    }
    let fd = FAREWELL_FD.load(Ordering::SeqCst);
    if let Some(msg) = FAREWELL.get() {
        if fd >= 0 {
            // Best effort: never waits, and the process ends either way.
            let _ = socket::send(fd, msg, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT);
        }
    }
    super::process::exit_now(0);
}

/// Installs the quit handler for `sig`: it raises `QUIT`, and unless the
/// quit is deferred (`defer_quit`), sends `farewell` to `fd` without
/// waiting and ends the process with status 0. No `SA_RESTART`, so a
/// blocked wait returns `Interrupted` and the flag is seen. Only the first
/// farewell given in a process is kept.
pub fn install_quit_handler(sig: Signal, fd: RawFd, farewell: &'static [u8]) -> io::Result<()> {
    let _ = FAREWELL.set(farewell);
    FAREWELL_FD.store(fd, Ordering::SeqCst);
    let act = SigAction::new(
        SigHandler::Handler(on_quit),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: `on_quit` is async-signal-safe: it only uses atomics, a
    // OnceLock read of a 'static slice, send(2) and _exit(2).
    unsafe { signal::sigaction(sig, &act) }.map_err(os)?;
    Ok(())
}

/// Points the quit handler's farewell at another descriptor (-1: none),
/// without touching dispositions or masks: one store, for a process that
/// serves one peer after another.
pub fn set_farewell_fd(fd: RawFd) {
    FAREWELL_FD.store(fd, Ordering::SeqCst);
}

/// While deferred, the quit handler only raises `QUIT` and returns; the
/// caller is then responsible for noticing it (with the signal blocked
/// outside its waits, see `poll::wait_pair`).
pub fn defer_quit(deferred: bool) {
    DEFERRED.store(deferred, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_shows_in_the_thread_mask() {
        // SIGUSR2 is used by no other test of this process.
        let blocked = || SigSet::thread_get_mask().unwrap().contains(Signal::SIGUSR2);
        set_blocked(Signal::SIGUSR2, true).unwrap();
        assert!(blocked());
        set_blocked(Signal::SIGUSR2, false).unwrap();
        assert!(!blocked());
        let mut only = SigSet::empty();
        only.add(Signal::SIGUSR2);
        set_mask(&only).unwrap();
        assert!(blocked());
        set_mask(&nothing_blocked()).unwrap();
        assert!(!blocked());
    }

    /// Runs in a forked child (the handler ends the process): sends the
    /// farewell and exits 0 at once, or, deferred, only raises the flag.
    #[test]
    fn the_quit_handler_says_farewell_and_exits_or_only_raises_the_flag() {
        use nix::sys::wait::{waitpid, WaitStatus};
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        static BYE: &[u8] = b"bye";
        for deferred in [false, true] {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let fd = ours.as_raw_fd();
            let pid = crate::sys::process::fork_child(|| {
                if install_quit_handler(Signal::SIGQUIT, fd, BYE).is_err() {
                    return 10;
                }
                defer_quit(deferred);
                if signal::raise(Signal::SIGQUIT).is_err() {
                    return 11;
                }
                // Reached only when deferred: the handler returned.
                if QUIT.load(Ordering::SeqCst) {
                    3
                } else {
                    12
                }
            })
            .unwrap();
            drop(ours);
            let status = waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
            let mut said = Vec::new();
            theirs.read_to_end(&mut said).unwrap();
            if deferred {
                assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 3));
                assert!(said.is_empty());
            } else {
                assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
                assert_eq!(said, BYE);
            }
        }
    }
}
