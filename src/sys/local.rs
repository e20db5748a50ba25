//! Connecting to a Unix-domain socket within a time bound, and the
//! message-preserving socket pairs between the supervisor and its workers.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::{os, sock};

/// Connects a blocking stream socket to `path`, with `timeout` bounding
/// the connect and every later read and write. Linux bounds a Unix-domain
/// connect that waits for room in a full backlog by the send timeout, so
/// setting it first is enough.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(os)?;
    sock::set_timeouts(fd.as_fd(), Some(timeout))?;
    let addr = UnixAddr::new(path).map_err(os)?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(os)?;
    Ok(fd)
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec: message boundaries
/// are kept, and a closed end reads as end of stream at the other.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(os)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_read_the_peer_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _listener = UnixListener::bind(&path).unwrap();
        let fd = connect(&path, Duration::from_millis(50)).unwrap();
        let mut stream = UnixStream::from(fd);
        let err = stream.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
