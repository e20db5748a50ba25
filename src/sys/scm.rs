//! Bytes with descriptors attached (SCM_RIGHTS) over Unix-domain sockets.
//!
//! Sending goes through `nix::sys::socket::sendmsg`. Receiving is written
//! here against libc because `nix`'s `RecvMsg::cmsgs` refuses to walk a
//! control buffer the kernel marked truncated: the descriptors that did
//! arrive with such a message would stay open in this process with nobody
//! owning them, and a peer could fill the descriptor table that way.

use std::io;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// At most this many descriptors travel with one message; the receiving
/// control buffer is sized for it, and more is reported as truncation.
pub const MAX_FDS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ScmError {
    #[error("sendmsg: {0}")]
    Send(#[source] io::Error),
    #[error("recvmsg: {0}")]
    Recv(#[source] io::Error),
    #[error("ancillary data was truncated (MSG_CTRUNC): descriptors were lost")]
    Truncated,
    #[error("{0} descriptors in one message, at most {MAX_FDS} travel together")]
    TooMany(usize),
}

/// One sendmsg(2) of `bytes` with `fds` attached to the first byte;
/// interrupted calls are repeated. Returns how many bytes went out (fewer
/// than asked on a full non-blocking socket; the descriptors went with the
/// first part). `MSG_NOSIGNAL`: a vanished peer is an error, not SIGPIPE.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize, ScmError> {
    if fds.len() > MAX_FDS {
        return Err(ScmError::TooMany(fds.len()));
    }
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    for (slot, fd) in raw.iter_mut().zip(fds) {
        *slot = fd.as_raw_fd();
    }
    let rights = [ControlMessage::ScmRights(&raw[..fds.len()])];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(bytes)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ScmError::Send(super::os(e))),
        }
    }
}

/// One recvmsg(2) into `buf` with `MSG_CMSG_CLOEXEC`; interrupted calls are
/// repeated. Descriptors that arrive are appended to `fds` as owned
/// descriptors. `Ok(0)` is end of stream; `WouldBlock` comes back as
/// `ScmError::Recv` of that kind. A truncated control message is an error,
/// and the descriptors that came with it are closed.
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, ScmError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut cbuf = [0u64; 16];
    // SAFETY: an all-zero msghdr is a valid value (null pointers, zero
    // lengths); the pointers set below outlive the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    msg.msg_controllen = (space as usize).min(std::mem::size_of_val(&cbuf));
    let n = loop {
        // SAFETY: `msg` describes `buf` and `cbuf` with their true lengths,
        // both live and exclusively borrowed for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(ScmError::Recv(err));
        }
    };
    let before = fds.len();
    // Take ownership of whatever arrived before judging the message, so
    // that nothing leaks even when it is rejected.
    // SAFETY: the kernel filled `msg_control` with well-formed cmsg headers
    // up to the msg_controllen it set (on truncation it writes only whole
    // descriptors that it installed); CMSG_FIRSTHDR/CMSG_NXTHDR walk only
    // within it. Each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4
    // descriptors that are new in this process and owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for k in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.add(k));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Closes what came with this message; earlier ones are the
        // caller's to judge.
        fds.truncate(before);
        return Err(ScmError::Truncated);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// The received descriptor is the same socket: bytes written to it come
    /// out of the peer of the one sent.
    fn same_socket(got: OwnedFd, peer: &mut UnixStream, tag: u8) {
        let mut got = UnixStream::from(got);
        got.write_all(&[tag]).unwrap();
        let mut one = [0u8; 1];
        peer.read_exact(&mut one).unwrap();
        assert_eq!(one[0], tag);
    }

    #[test]
    fn one_descriptor_travels_with_its_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut p, q) = UnixStream::pair().unwrap();
        assert_eq!(send(a.as_fd(), b"hello", &[q.as_fd()]).unwrap(), 5);
        drop(q);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let flags = nix::fcntl::fcntl(fds[0].as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "received close-on-exec");
        same_socket(fds.pop().unwrap(), &mut p, b'x');
    }

    #[test]
    fn several_descriptors_arrive_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut pairs: Vec<_> = (0..MAX_FDS).map(|_| UnixStream::pair().unwrap()).collect();
        let sent: Vec<BorrowedFd<'_>> = pairs.iter().map(|(_, q)| q.as_fd()).collect();
        assert_eq!(send(a.as_fd(), b"!", &sent).unwrap(), 1);
        drop(sent);
        let mut fds = Vec::new();
        assert_eq!(recv(b.as_fd(), &mut [0u8; 4], &mut fds).unwrap(), 1);
        assert_eq!(fds.len(), MAX_FDS);
        for (i, (fd, (p, _))) in fds.into_iter().zip(pairs.iter_mut()).enumerate() {
            same_socket(fd, p, i as u8);
        }
        // Bytes without descriptors leave `fds` alone.
        send(a.as_fd(), b"plain", &[]).unwrap();
        let mut fds = Vec::new();
        assert_eq!(recv(b.as_fd(), &mut [0u8; 8], &mut fds).unwrap(), 5);
        assert!(fds.is_empty());
        let too_many: Vec<_> = (0..=MAX_FDS).map(|_| a.as_fd()).collect();
        assert!(matches!(
            send(a.as_fd(), b"x", &too_many),
            Err(ScmError::TooMany(n)) if n == MAX_FDS + 1
        ));
    }

    #[test]
    fn end_of_stream_is_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut fds = Vec::new();
        assert_eq!(recv(b.as_fd(), &mut [0u8; 4], &mut fds).unwrap(), 0);
    }

    #[test]
    fn would_block_on_an_empty_nonblocking_socket() {
        let (_a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut fds = Vec::new();
        match recv(b.as_fd(), &mut [0u8; 4], &mut fds) {
            Err(ScmError::Recv(e)) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_many_descriptors_are_truncated_and_the_arrived_ones_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let pairs: Vec<_> = (0..MAX_FDS + 4)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let raw: Vec<RawFd> = pairs.iter().map(|(x, _)| x.as_raw_fd()).collect();
        // One SCM_RIGHTS message with more descriptors than are accepted.
        let sent = sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&[7])],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert_eq!(sent, 1);
        // An earlier descriptor the caller holds in the same vector stays.
        let (kept, _) = UnixStream::pair().unwrap();
        let mut fds: Vec<OwnedFd> = vec![kept.into()];
        assert!(matches!(
            recv(b.as_fd(), &mut [0u8; 4], &mut fds),
            Err(ScmError::Truncated)
        ));
        assert_eq!(fds.len(), 1, "only the earlier descriptor is left");
        // With our own copies closed, each peer sees end of stream only if
        // no copy survived the rejected message anywhere in this process.
        for (x, y) in pairs {
            drop(x);
            y.set_nonblocking(true).unwrap();
            assert_eq!((&y).read(&mut [0u8; 1]).unwrap(), 0, "a copy leaked");
        }
    }
}
