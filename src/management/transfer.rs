//! Management messages with file descriptors attached (SCM_RIGHTS), over
//! the system-call layer's `scm`.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys::scm::{self, ScmError};

/// At most this many descriptors are accepted with one read; more is an
/// error (the control buffer is sized for it, the extra would be truncated).
pub const MAX_FDS: usize = scm::MAX_FDS;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("peer closed the connection")]
    Eof,
    /// The socket calls' own failures, with the descriptors' fate.
    #[error(transparent)]
    Scm(#[from] ScmError),
}

/// Writes all of `bytes`, attaching `fd` to the first byte. Blocking sockets
/// only (a partial write continues without the descriptor, which the kernel
/// has already taken with the first part).
pub fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), TransferError> {
    let sent = send_once(sock, bytes, fd)?;
    if sent < bytes.len() {
        crate::sys::io::write_all(sock, &bytes[sent..]).map_err(ScmError::Send)?;
    }
    Ok(())
}

/// One sendmsg call; returns how many bytes went out.
pub fn send_once(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> Result<usize, TransferError> {
    let fds: &[BorrowedFd<'_>] = match &fd {
        Some(f) => std::slice::from_ref(f),
        None => &[],
    };
    Ok(scm::send(sock, bytes, fds)?)
}

/// One recvmsg call into `buf`; descriptors that arrive are appended to
/// `fds` as owned (close-on-exec) descriptors. Returns the byte count;
/// `WouldBlock` comes back as `ScmError::Recv` with that kind.
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, TransferError> {
    match scm::recv(sock, buf, fds)? {
        0 if !buf.is_empty() => Err(TransferError::Eof),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_descriptor_travels_with_its_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut p, q) = UnixStream::pair().unwrap();
        send(a.as_fd(), b"hello", Some(q.as_fd())).unwrap();
        drop(q);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let mut got = UnixStream::from(fds.pop().unwrap());
        got.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        p.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
    }

    #[test]
    fn eof_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut fds = Vec::new();
        assert!(matches!(
            recv(b.as_fd(), &mut [0u8; 4], &mut fds),
            Err(TransferError::Eof)
        ));
    }

    /// A message longer than the socket buffer: the descriptor goes with
    /// the first part, the rest follows, and the peer gets every byte.
    #[test]
    fn a_long_message_keeps_its_descriptor_and_its_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_p, q) = UnixStream::pair().unwrap();
        let msg: Vec<u8> = (0..1024 * 1024u32).map(|i| i as u8).collect();
        let expect = msg.clone();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; expect.len()];
            let mut fds = Vec::new();
            let mut at = 0;
            while at < got.len() {
                at += recv(b.as_fd(), &mut got[at..], &mut fds).unwrap();
            }
            assert!(got == expect);
            fds.len()
        });
        send(a.as_fd(), &msg, Some(q.as_fd())).unwrap();
        assert_eq!(reader.join().unwrap(), 1);
    }
}
