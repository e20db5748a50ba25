//! Forking and leaving.

use std::io;
use std::os::fd::AsRawFd;

use nix::unistd::ForkResult;

use super::os;

/// Forks; the child runs `child` and exits with the status it returns (2
/// if it panics), never returning into the caller's frames. The parent
/// gets the child's pid, and drops `child` unused: whatever it captured by
/// value (a client socket) is closed in the parent, as it should be.
///
/// Only for processes that never start a thread: pgcorral's supervisor,
/// and the binaries before they start one.
pub fn fork_child(child: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: fork is unsafe because a child of a multi-threaded process
    // may only call async-signal-safe functions (a lock held by a thread
    // that does not exist in the child would never be released). Every
    // caller is single-threaded by design (the supervisor never starts a
    // thread), so the child is a complete copy and may do anything. It
    // leaves through _exit below, so no destructor of the parent's objects
    // runs in it against descriptors it closed.
    match unsafe { nix::unistd::fork() }.map_err(os)? {
        ForkResult::Parent { child } => Ok(child.as_raw()),
        ForkResult::Child => {
            let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(2);
            exit_now(status)
        }
    }
}

/// Ends the process at once with `status` (_exit(2)): no destructors, no
/// atexit handlers, no flushing of buffers shared with the parent. Safe to
/// call from a signal handler.
pub fn exit_now(status: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; it is
    // async-signal-safe.
    unsafe { libc::_exit(status) }
}

/// Detaches from the terminal: the parent exits at once, the child leads a
/// new session with its standard streams on /dev/null. Before any thread.
pub fn detach() -> io::Result<()> {
    // SAFETY: as in `fork_child`; the caller has not started a thread, and
    // the parent leaves through _exit without running anything.
    match unsafe { nix::unistd::fork() }.map_err(os)? {
        ForkResult::Parent { .. } => exit_now(0),
        ForkResult::Child => {}
    }
    nix::unistd::setsid().map_err(os)?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(os)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::Pid;

    /// The child does nothing that takes a lock (the test harness has
    /// threads, so the child of this test may not).
    #[test]
    fn the_child_exits_with_its_status() {
        let pid = fork_child(|| 7).unwrap();
        match waitpid(Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, code) => assert_eq!(code, 7),
            other => panic!("{other:?}"),
        }
    }

    /// `detach` in a forked child: that child exits 0 at once, and the
    /// grandchild that goes on leads its own session with its standard
    /// streams on /dev/null. It reports over a pipe and exits.
    #[test]
    fn detach_leaves_a_session_leader_on_dev_null() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let (mut report, tell) = std::os::unix::net::UnixStream::pair().unwrap();
        // `move`: the parent's copy of `tell` goes with the unused closure,
        // so a grandchild that dies without reporting is end of stream.
        let pid = fork_child(move || {
            if detach().is_err() {
                return 1;
            }
            let me = nix::unistd::getpid();
            let leads = nix::unistd::getsid(None).map(|s| s == me).unwrap_or(false);
            let on_null = (0..3).all(|fd| {
                std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .map(|p| p == std::path::Path::new("/dev/null"))
                    .unwrap_or(false)
            });
            let _ = crate::sys::io::write_all(tell.as_fd(), &[u8::from(leads), u8::from(on_null)]);
            0
        })
        .unwrap();
        match waitpid(Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, code) => assert_eq!(code, 0, "the parent side exits 0"),
            other => panic!("{other:?}"),
        }
        let mut got = [0u8; 2];
        report.read_exact(&mut got).unwrap();
        assert_eq!(got, [1, 1], "session leader, streams on /dev/null");
    }
}
