//! Descriptors at chosen numbers, and closing whole ranges of them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::os;

/// A close-on-exec copy of `src` at exactly `number`, which must be free.
/// The kernel picks the lowest free number at or above `number`; if that
/// is another one, the copy is closed again and the call fails, so that a
/// number somebody else holds is never taken over.
pub fn claim(src: BorrowedFd<'_>, number: RawFd) -> io::Result<OwnedFd> {
    let got = fcntl(src.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(number)).map_err(os)?;
    // SAFETY: F_DUPFD_CLOEXEC succeeded, so `got` is a descriptor it just
    // created in this process; nothing else knows its number yet.
    let copy = unsafe { OwnedFd::from_raw_fd(got) };
    if got != number {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("descriptor {number} is already in use"),
        ));
    }
    Ok(copy)
}

/// Makes `target`'s number refer to what `src` refers to, in one dup3(2):
/// there is no instant at which the number is free for the kernel to hand
/// out. `target` keeps owning the number (close-on-exec), so no unsafe is
/// needed: nobody else can hold it, and no borrow of it is alive.
pub fn replace(target: &mut OwnedFd, src: BorrowedFd<'_>) -> io::Result<()> {
    if src.as_raw_fd() == target.as_raw_fd() {
        return Ok(());
    }
    nix::unistd::dup3(src.as_raw_fd(), target.as_raw_fd(), OFlag::O_CLOEXEC).map_err(os)?;
    Ok(())
}

/// Closes every descriptor in `first..=last` (close_range(2), which `nix`
/// does not wrap). Meant for a process just forked: the `OwnedFd` values it
/// inherited for those numbers are dead from here on and must not be used
/// or dropped, which holds because a forked child leaves through
/// `process::exit_now` and touches only what it kept.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // Through syscall(2) rather than the C library's wrapper, which only
    // glibc 2.34 and later have; the kernel call exists since Linux 5.9.
    // SAFETY: close_range takes no pointers; it only closes numbers in the
    // range, which the caller has declared it no longer uses (see above).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn claim_replace_and_refuse_a_taken_number() {
        crate::pooled_sockets::ensure_fd_limit(3300).unwrap();
        // Far above what the other tests of this process open.
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let mut at = claim(null.as_fd(), 3210).unwrap();
        assert_eq!(at.as_raw_fd(), 3210);
        let taken = claim(null.as_fd(), 3210).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);

        let (ours, mut peer) = UnixStream::pair().unwrap();
        replace(&mut at, ours.as_fd()).unwrap();
        drop(ours);
        assert_eq!(at.as_raw_fd(), 3210, "same number, now the socket");
        let mut sock = UnixStream::from(at);
        sock.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        drop(sock);
        // The number is free again and can be claimed.
        drop(claim(null.as_fd(), 3210).unwrap());
    }

    #[test]
    fn close_range_closes_exactly_the_range() {
        crate::pooled_sockets::ensure_fd_limit(3300).unwrap();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let fds: Vec<OwnedFd> = (3250..3254)
            .map(|n| claim(null.as_fd(), n).unwrap())
            .collect();
        close_range(3251, 3252).unwrap();
        let open = |n: RawFd| fcntl(n, FcntlArg::F_GETFD).is_ok();
        assert!(open(3250) && !open(3251) && !open(3252) && open(3253));
        // The closed ones are gone already; only the others are dropped.
        let mut fds = fds.into_iter();
        let first = fds.next().unwrap();
        let closed: Vec<OwnedFd> = fds.by_ref().take(2).collect();
        std::mem::forget(closed);
        drop(first);
        drop(fds);
        assert!(close_range(5, 4).is_ok(), "an empty range is nothing to do");
    }
}
