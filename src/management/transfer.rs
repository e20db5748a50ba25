//! Sending and receiving bytes with file descriptors attached (SCM_RIGHTS).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// At most this many descriptors are accepted with one read; more is an
/// error (the control buffer is sized for it, the extra would be truncated).
pub const MAX_FDS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("sendmsg: {0}")]
    Send(#[source] io::Error),
    #[error("recvmsg: {0}")]
    Recv(#[source] io::Error),
    #[error("ancillary data was truncated (MSG_CTRUNC): descriptors were lost")]
    Truncated,
    #[error("peer closed the connection")]
    Eof,
}

/// Writes all of `bytes`, attaching `fd` to the first byte. Blocking sockets
/// only (a partial write continues without the descriptor, which the kernel
/// has already taken with the first part).
pub fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), TransferError> {
    let mut sent = 0;
    let mut attach = fd.map(|f| f.as_raw_fd());
    while sent < bytes.len() {
        let n = send_once(sock, &bytes[sent..], attach)?;
        attach = None;
        sent += n;
    }
    Ok(())
}

/// One sendmsg call; returns how many bytes went out.
pub fn send_once(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<RawFd>,
) -> Result<usize, TransferError> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: zeroed msghdr is valid; the pointers set below stay alive for
    // the duration of sendmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cbuf`, which is larger than `space`,
        // so CMSG_FIRSTHDR is non-null and the header and one RawFd of data
        // fit inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        }
    }
    loop {
        // SAFETY: `msg` describes live buffers; MSG_NOSIGNAL turns a closed
        // peer into EPIPE instead of killing us with SIGPIPE.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(TransferError::Send(err));
        }
    }
}

/// One recvmsg call into `buf`; descriptors that arrive are appended to
/// `fds` as owned (close-on-exec) descriptors. Returns the byte count;
/// `WouldBlock` comes back as `TransferError::Recv` with that kind.
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, TransferError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: as in send_once.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: pure size computation; the result is below size_of_val(cbuf).
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    debug_assert!(msg.msg_controllen <= std::mem::size_of_val(&cbuf));
    let n = loop {
        // SAFETY: `msg` points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(TransferError::Recv(err));
        }
    };
    // Take ownership of whatever arrived before judging the message, so that
    // nothing leaks even when we reject it.
    // SAFETY: the kernel filled `msg_control` with well-formed cmsg headers up
    // to msg_controllen; CMSG_FIRSTHDR/CMSG_NXTHDR walk only within it, and
    // each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors
    // that are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for k in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.add(k));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        fds.clear();
        return Err(TransferError::Truncated);
    }
    if n == 0 {
        return Err(TransferError::Eof);
    }
    Ok(n)
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
        // The received descriptor is the same socket: bytes written to it
        // come out of its peer.
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

    #[test]
    fn too_many_descriptors_are_truncated_and_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let pairs: Vec<_> = (0..MAX_FDS + 4)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let raw: Vec<RawFd> = pairs.iter().map(|(x, _)| x.as_raw_fd()).collect();
        // Build one SCM_RIGHTS message with more descriptors than we accept.
        let mut cbuf = [0u64; 32];
        let mut byte = [7u8];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        // SAFETY: test-only construction of a valid msghdr over live buffers.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE((raw.len() * 4) as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((raw.len() * 4) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                libc::CMSG_DATA(cmsg) as *mut RawFd,
                raw.len(),
            );
            assert_eq!(libc::sendmsg(a.as_raw_fd(), &msg, 0), 1);
        }
        let mut fds = Vec::new();
        assert!(matches!(
            recv(b.as_fd(), &mut [0u8; 4], &mut fds),
            Err(TransferError::Truncated)
        ));
        assert!(fds.is_empty());
    }
}
