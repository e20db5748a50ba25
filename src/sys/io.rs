//! Reading and writing through borrowed descriptors: single calls for the
//! pipelines, which judge `WouldBlock` and `Interrupted` themselves, and the
//! loops that write a whole message, which every other writer shares.
//!
//! A pooled server socket is one open file shared by the supervisor and
//! every worker, so its `O_NONBLOCK` flag belongs to nobody: the pipelines
//! and the exchanges on idle connections say per call whether they wait
//! (`MSG_DONTWAIT`, and poll(2) with a bound when they must), and never
//! spend a system call switching the flag.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{self, MsgFlags};

use super::{os, poll};

/// One read(2). `Ok(0)` is end of stream; `WouldBlock` and `Interrupted`
/// come back as errors for the caller to judge.
#[inline]
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(fd.as_raw_fd(), buf).map_err(os)
}

/// One send(2) with `MSG_NOSIGNAL`, so a vanished peer is `BrokenPipe`
/// rather than a SIGPIPE. On a non-blocking socket a full send buffer is
/// `WouldBlock`; nothing is retried.
#[inline]
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    socket::send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(os)
}

/// One send(2) with `MSG_NOSIGNAL` that never waits, whatever the socket's
/// flags: a full send buffer is `WouldBlock`. The pipelines' sends, and a
/// process that must not block (the supervisor) writing a few bytes as a
/// courtesy.
#[inline]
pub fn send_nowait(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    socket::send(
        fd.as_raw_fd(),
        buf,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(os)
}

/// One recv(2) that never waits, whatever the socket's flags: nothing
/// there yet is `WouldBlock`, `Ok(0)` is end of stream. The pipelines'
/// reads, and any reader that shares the open file with other processes
/// and so must not change its flags.
#[inline]
pub fn recv_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    socket::recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(os)
}

/// Sends all of `bytes` without depending on the socket's `O_NONBLOCK`
/// flag (`MSG_DONTWAIT`), waiting in poll(2) while the socket is full, for
/// no longer than `limit` each time: for a socket whose open file other
/// processes share, whose flags are therefore left alone. A wait that runs
/// out is `TimedOut`.
pub fn send_all_within(fd: BorrowedFd<'_>, bytes: &[u8], limit: Duration) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        match send_nowait(fd, &bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_within(fd, poll::Events::POLLOUT, limit)?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One recv(2) that does not depend on the socket's flags, waiting in
/// poll(2) for no longer than `limit` when nothing has arrived yet. As
/// much as is there and fits is read in one call. `Ok(0)` is end of
/// stream; a wait that runs out is `TimedOut`.
pub fn recv_within(fd: BorrowedFd<'_>, buf: &mut [u8], limit: Duration) -> io::Result<usize> {
    receive_within(fd, buf, limit, MsgFlags::empty())
}

/// `recv_within` that leaves what it copies in the socket (`MSG_PEEK`):
/// for a reader that must take no byte past the last message it owns.
pub fn peek_within(fd: BorrowedFd<'_>, buf: &mut [u8], limit: Duration) -> io::Result<usize> {
    receive_within(fd, buf, limit, MsgFlags::MSG_PEEK)
}

fn receive_within(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    limit: Duration,
    flags: MsgFlags,
) -> io::Result<usize> {
    loop {
        match socket::recv(fd.as_raw_fd(), buf, flags | MsgFlags::MSG_DONTWAIT).map_err(os) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_within(fd, poll::Events::POLLIN, limit)?
            }
            other => return other,
        }
    }
}

/// Waits until `fd` may be ready for `events` (or has an error or a
/// hang-up, which the next call reports), for at most `limit`. A signal
/// ends the wait early; the caller's next attempt finds out what changed.
/// A wait that runs out is `TimedOut`.
pub fn wait_within(fd: BorrowedFd<'_>, events: poll::Events, limit: Duration) -> io::Result<()> {
    match poll::wait_one(fd, events, Some(limit), None)? {
        poll::Woke::TimedOut => Err(io::ErrorKind::TimedOut.into()),
        poll::Woke::Ready(_) | poll::Woke::Interrupted => Ok(()),
    }
}

/// Writes all of `bytes` to a blocking socket, repeating interrupted and
/// partial sends. `WouldBlock` here means a send timeout ran out
/// (`sock::set_timeouts`) and is returned as the error it is.
pub fn write_all(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        match send(fd, &bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bytes` to a non-blocking socket, waiting in poll(2)
/// whenever the socket is full: for the few messages pgcorral itself sends
/// in the middle of a relayed session.
pub fn write_all_waiting(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        match send(fd, &bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Whatever poll reports (room, an error, a signal), the next
                // send finds out what it means.
                poll::wait_one(fd, poll::Events::POLLOUT, None, None)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One write(2) to a descriptor known only by number (the log file, whose
/// number is swapped atomically on reopen), repeated only when interrupted.
/// A short write is returned as is: a log line must go out in one call so
/// that lines of different processes never interleave.
pub fn write_raw(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe a live, initialized slice
        // that the kernel only reads. write(2) does not take ownership of
        // `fd`, and a number that is not open fails with EBADF.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `Read`/`Write` over a borrowed socket, so that code written against the
/// std traits (the protocol readers) serves TCP and Unix-domain clients
/// alike. `read_exact` and `write_all` of the traits repeat interrupted
/// calls.
pub struct FdIo<'a>(pub BorrowedFd<'a>);

impl io::Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(self.0, buf)
    }
}

impl io::Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        write_all(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::sock;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn read_and_send_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(send(a.as_fd(), b"ping").unwrap(), 4);
        let mut buf = [0u8; 8];
        assert_eq!(read(b.as_fd(), &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ping");
        drop(a);
        assert_eq!(read(b.as_fd(), &mut buf).unwrap(), 0, "end of stream");
    }

    #[test]
    fn a_full_nonblocking_socket_would_block_and_a_closed_peer_is_epipe() {
        let (a, b) = UnixStream::pair().unwrap();
        sock::set_nonblocking(a.as_fd(), true).unwrap();
        let chunk = [0u8; 64 * 1024];
        let err = loop {
            match send(a.as_fd(), &chunk) {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let mut nothing = [0u8; 1];
        assert_eq!(
            read(a.as_fd(), &mut nothing).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(b);
        // No SIGPIPE (the test process would die of it): an error instead.
        assert_eq!(
            send(a.as_fd(), b"x").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    /// A message far larger than the socket buffer goes out in many partial
    /// sends, each resumed where the last stopped.
    fn large_message() -> Vec<u8> {
        (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect()
    }

    fn read_everything(mut peer: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        })
    }

    #[test]
    fn write_all_survives_partial_writes() {
        let (a, b) = UnixStream::pair().unwrap();
        let reader = read_everything(b);
        let msg = large_message();
        write_all(a.as_fd(), &msg).unwrap();
        drop(a);
        assert!(reader.join().unwrap() == msg);
    }

    #[test]
    fn write_all_waiting_waits_for_room_on_a_nonblocking_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        sock::set_nonblocking(a.as_fd(), true).unwrap();
        let reader = read_everything(b);
        let msg = large_message();
        write_all_waiting(a.as_fd(), &msg).unwrap();
        drop(a);
        assert!(reader.join().unwrap() == msg);
    }

    #[test]
    fn a_send_timeout_is_an_error_not_a_hang() {
        let (a, _b) = UnixStream::pair().unwrap();
        sock::set_timeouts(a.as_fd(), Some(std::time::Duration::from_millis(20))).unwrap();
        let err = write_all(a.as_fd(), &large_message()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    /// The bounded helpers work on blocking and non-blocking sockets alike
    /// and leave the flag as it was; a peek leaves the bytes for the next
    /// read; a wait that runs out is `TimedOut`, not a hang.
    #[test]
    fn bounded_helpers_ignore_the_flag_and_time_out() {
        let limit = std::time::Duration::from_millis(20);
        for blocking in [true, false] {
            let (a, b) = UnixStream::pair().unwrap();
            a.set_nonblocking(!blocking).unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(
                recv_within(a.as_fd(), &mut buf, limit).unwrap_err().kind(),
                io::ErrorKind::TimedOut
            );
            send_all_within(b.as_fd(), b"abc", limit).unwrap();
            assert_eq!(peek_within(a.as_fd(), &mut buf, limit).unwrap(), 3);
            assert_eq!(recv_within(a.as_fd(), &mut buf[..2], limit).unwrap(), 2);
            assert_eq!(&buf[..2], b"ab");
            assert_eq!(recv_within(a.as_fd(), &mut buf, limit).unwrap(), 1);
            // A full socket: the send waits for room, then gives up.
            let err = send_all_within(a.as_fd(), &large_message(), limit).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            let flags = nix::fcntl::fcntl(a.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
            assert_eq!(flags & libc::O_NONBLOCK != 0, !blocking);
            // Room made by a reader: everything arrives.
            let reader = read_everything(b);
            let msg = large_message();
            send_all_within(a.as_fd(), &msg, std::time::Duration::from_secs(20)).unwrap();
            drop(a);
            let got = reader.join().unwrap();
            assert!(got.ends_with(&msg));
        }
    }

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn note(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    /// A signal handler without SA_RESTART makes a blocked send return
    /// EINTR (or a short count); both loops must resume and deliver every
    /// byte exactly once. SIGURG is used because nothing else in the test
    /// process cares about it and its default action is to ignore it.
    #[test]
    fn write_loops_resume_across_signals() {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let act = SigAction::new(SigHandler::Handler(note), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(Signal::SIGURG, &act) }.unwrap();
        for waiting in [false, true] {
            INTERRUPTED.store(false, Ordering::SeqCst);
            let (a, mut b) = UnixStream::pair().unwrap();
            if waiting {
                sock::set_nonblocking(a.as_fd(), true).unwrap();
            }
            let msg = large_message();
            let expect = msg.clone();
            let writer = std::thread::spawn(move || {
                let r = if waiting {
                    write_all_waiting(a.as_fd(), &msg)
                } else {
                    write_all(a.as_fd(), &msg)
                };
                drop(a);
                r
            });
            // The writer is blocked on a full socket until we read; signal
            // it until it has seen one, then drain.
            let pthread = {
                use std::os::unix::thread::JoinHandleExt;
                writer.as_pthread_t()
            };
            let mut first = [0u8; 1];
            b.read_exact(&mut first).unwrap();
            while !INTERRUPTED.load(Ordering::SeqCst) {
                // SAFETY: the thread is alive until it is joined below.
                unsafe { libc::pthread_kill(pthread, libc::SIGURG) };
                std::thread::yield_now();
            }
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).unwrap();
            writer.join().unwrap().unwrap();
            assert_eq!(first[0], expect[0]);
            assert!(rest == expect[1..], "every byte once, in order");
        }
        let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: restoring the default disposition installs no code.
        unsafe { sigaction(Signal::SIGURG, &dfl) }.unwrap();
    }
}
