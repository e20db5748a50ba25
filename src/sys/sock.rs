//! Descriptor flags and socket options.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{self, setsockopt, sockopt, Shutdown};
use nix::sys::time::TimeVal;

use super::os;

/// Switches `O_NONBLOCK`; no second call when it is already as wanted.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(os)?);
    let mut want = flags;
    want.set(OFlag::O_NONBLOCK, on);
    if want != flags {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(want)).map_err(os)?;
    }
    Ok(())
}

/// Disables Nagle on TCP sockets (protocol messages are small and latency
/// bound); on a Unix-domain socket the option does not exist and the
/// failure is harmless.
pub fn set_nodelay(fd: BorrowedFd<'_>) {
    let _ = setsockopt(&fd, sockopt::TcpNoDelay, &true);
}

/// Bounds every blocking read and write; `None` removes the bound. A call
/// that runs out of time fails with `WouldBlock`.
pub fn set_timeouts(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<()> {
    let t = timeout.unwrap_or(Duration::ZERO);
    let tv = TimeVal::new(
        t.as_secs().min(i64::MAX as u64) as libc::time_t,
        t.subsec_micros() as libc::suseconds_t,
    );
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(os)?;
    setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(os)?;
    Ok(())
}

/// Shuts both directions of the connection itself, so that every process
/// holding a copy of the socket sees it end, not only this descriptor.
pub fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    socket::shutdown(fd.as_raw_fd(), Shutdown::Both).map_err(os)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn nonblocking_toggles() {
        let (a, _b) = UnixStream::pair().unwrap();
        let get = || fcntl(a.as_raw_fd(), FcntlArg::F_GETFL).unwrap() & libc::O_NONBLOCK != 0;
        set_nonblocking(a.as_fd(), true).unwrap();
        assert!(get());
        set_nonblocking(a.as_fd(), true).unwrap();
        assert!(get());
        set_nonblocking(a.as_fd(), false).unwrap();
        assert!(!get());
    }

    #[test]
    fn a_read_timeout_ends_a_blocked_read() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        set_timeouts(a.as_fd(), Some(Duration::from_millis(10))).unwrap();
        let err = a.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        set_timeouts(a.as_fd(), None).unwrap();
        let tv: TimeVal = socket::getsockopt(&a, sockopt::ReceiveTimeout).unwrap();
        assert_eq!(tv, TimeVal::new(0, 0), "no bound any more");
    }

    #[test]
    fn nodelay_on_tcp_and_shutdown_reaches_copies() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        set_nodelay(client.as_fd());
        assert!(socket::getsockopt(&client, sockopt::TcpNoDelay).unwrap());
        let copy = client.try_clone().unwrap();
        shutdown(client.as_fd()).unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        drop(copy);
    }
}
